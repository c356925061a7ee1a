"""MLM loading from local shards that also hold images, against stock webdataset.

    BIOSCAN_BENCH_STRICT=1 pytest benchmarks/test_bench_mlm_loader.py -s

Both read the same shards (``.dna`` + ``.jpg`` + ``.json`` per sample) and yield
MLM batches of 256 (input ids, attention mask, labels as tensors, 50% masking):

- bioscan-io: ``make_loader(folder, "mlm")`` in one process (``num_workers=0``, so
  the figure is the rate of one worker process): compiled header walk that jumps
  over the images, batch-level shuffle by index, one tokenizer call per batch;
- baseline: ``webdataset.WebDataset`` iteration (Python tar parsing) plus the
  per-sequence Python tokenizer of the BarcodeBERT kind, collated to tensors.

Targets (SPEC 6; asserted only with BIOSCAN_BENCH_STRICT=1): at least 200,000
samples/s per worker process, and at least 50x the baseline.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import sharded_dataset
import torch
import webdataset as wds
from baselines import BarcodeBertStyle

from bioscan_io.loader import make_loader
from bioscan_io.format import read_manifest, read_members

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
N_RECORDS = int(os.environ.get("BIOSCAN_BENCH_RECORDS", "4000"))
BATCH = 256
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return sharded_dataset(tmp_path_factory, "bench-mlm", N_RECORDS, seed=5)


def _bioscan_epoch(loader, epoch: int) -> int:
    loader.set_epoch(epoch)
    return sum(len(batch["processid"]) for batch in loader)


def _baseline_epoch(urls, tok: BarcodeBertStyle) -> int:
    n, buf = 0, []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        buf.append((sample["__key__"], tok(sample["dna"].decode())))
        if len(buf) == BATCH:
            n += _collate(buf)
            buf = []
    return n + (_collate(buf) if buf else 0)


def _collate(buf) -> int:
    ids = torch.tensor([t[1][0] for t in buf])
    att = torch.tensor([t[1][1] for t in buf])
    labels = torch.tensor([t[1][2] for t in buf])
    assert ids.shape == att.shape == labels.shape
    return len(buf)


def _rate(benchmark, n: int) -> float:
    if benchmark.stats is None:  # --benchmark-disable
        return float("nan")
    return n / benchmark.stats.stats.min


def test_baseline_webdataset_python_tokenizer(benchmark, folder):
    urls = [str(folder / s["name"]) for s in read_manifest(folder)["shards"]]
    tok = BarcodeBertStyle()
    n = benchmark.pedantic(_baseline_epoch, args=(urls, tok), rounds=2)
    assert n == N_RECORDS
    RESULTS["baseline"] = _rate(benchmark, n)


def test_bioscan_mlm_loader(benchmark, folder):
    loader = make_loader(folder, "mlm", batch_size=BATCH, num_workers=0, seed=0)
    epochs = iter(range(1000))
    n = benchmark.pedantic(lambda: _bioscan_epoch(loader, next(epochs)), rounds=10, warmup_rounds=1)
    assert n == N_RECORDS
    rate = RESULTS["bioscan"] = _rate(benchmark, n)
    if "baseline" in RESULTS:
        ratio = rate / RESULTS["baseline"]
        print(f"\nMLM loading, {N_RECORDS} samples with images, batch {BATCH}, one process: "
              f"bioscan-io {rate:,.0f} samples/s; webdataset + Python tokenizer "
              f"{RESULTS['baseline']:,.0f} samples/s; ratio {ratio:.0f}x")
        if STRICT:
            assert rate >= 200_000, rate
            assert ratio >= 50, ratio


def test_bioscan_mlm_loader_with_workers(folder):
    """Two worker processes, timed over a whole epoch after the workers started."""
    loader = make_loader(folder, "mlm", batch_size=BATCH, num_workers=2, seed=0)
    _bioscan_epoch(loader, 0)  # start the persistent workers
    started = time.perf_counter()
    n = sum(_bioscan_epoch(loader, e) for e in range(1, 6))
    print(f"\nMLM loading, 2 workers: {n / (time.perf_counter() - started):,.0f} samples/s")
    assert n == 5 * N_RECORDS


def _scan_all(urls) -> int:
    return sum(len(read_members(u, 0, c, ("dna",))[1]["dna"]) for u, c in urls)


def _stock_scan_all(urls) -> int:
    n = 0
    for u, _ in urls:
        with open(u, "rb") as f:
            n += sum(1 for m in wds.tariterators.tar_file_iterator(f) if m["fname"].endswith(".dna"))
    return n


def test_tar_scan(benchmark, folder):
    """The compiled header walk alone, next to webdataset's tar iterator, same shards."""
    urls = [(str(folder / s["name"]), s["count"]) for s in read_manifest(folder)["shards"]]
    started = time.perf_counter()
    assert _stock_scan_all(urls) == N_RECORDS
    stock = N_RECORDS / (time.perf_counter() - started)
    n = benchmark.pedantic(_scan_all, args=(urls,), rounds=10, warmup_rounds=1)
    assert n == N_RECORDS
    rate = _rate(benchmark, n)
    print(f"\ntar scan (.dna of every sample): compiled {rate:,.0f} samples/s; "
          f"webdataset tar iterator {stock:,.0f} samples/s; ratio {rate / stock:.0f}x")

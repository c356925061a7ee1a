"""Sharding throughput next to ``tar cf`` of the same image files, in the same run.

    pytest benchmarks/test_bench_shard.py --benchmark-columns=min,median,rounds -s

The sharder reads the metadata, checks every image, shuffles, and writes
``.dna`` + ``.jpg`` + ``.json`` per record with a sha256 of each shard; ``tar cf``
only packs the image files. Both are timed on warm page cache.

Sharding straight from the published zip archive is timed against sharding from
the extracted folder, rounds interleaved, same records and workers; the target
(asserted only with ``BIOSCAN_BENCH_STRICT=1``) is no worse throughput::

    BIOSCAN_BENCH_STRICT=1 pytest benchmarks/test_bench_shard.py -s -q -k zip
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bioscan_io import synth
from bioscan_io.schema import IMAGES_DIR
from bioscan_io.format import read_manifest
from bioscan_io.shard import shard_split

N_RECORDS = int(os.environ.get("BIOSCAN_BENCH_RECORDS", "4000"))
RESULTS: dict[str, float] = {}
STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
#: Zip over folder throughput: "no worse", less 5% for run-to-run noise.
TARGET_ZIP_VS_FOLDER = 0.95
ZIP_ROUNDS = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-shard")
    synth.generate(root, n_records=N_RECORDS, seed=11, workers=2)
    return root


def _fresh_dir():
    path = Path(tempfile.mkdtemp(prefix="bench-out-"))
    return (path,), {}


def _records_per_s(benchmark) -> float:
    if benchmark.stats is None:  # --benchmark-disable
        return float("nan")
    return N_RECORDS / benchmark.stats.stats.min


def test_tar_cf_images(benchmark, root):
    images = root / IMAGES_DIR

    def run(out):
        subprocess.run(["tar", "cf", str(out / "images.tar"), "-C", str(images), "."], check=True)
        shutil.rmtree(out)

    benchmark.pedantic(run, setup=_fresh_dir, rounds=3)
    RESULTS["tar"] = _records_per_s(benchmark)


@pytest.mark.parametrize("workers", [1, 2])
def test_bioscan_shard(benchmark, root, workers):
    def run(out):
        s = shard_split(root, "all", out=out, maxcount=250, workers=workers, progress=False, log=lambda m: None)
        assert s.records == N_RECORDS
        shutil.rmtree(out)

    benchmark.pedantic(run, setup=_fresh_dir, rounds=3)
    rate = _records_per_s(benchmark)
    RESULTS[f"shard{workers}"] = rate
    if "tar" in RESULTS:
        print(f"\nbioscan-shard ({workers} worker(s)): {rate:,.0f} records/s; "
              f"tar cf: {RESULTS['tar']:,.0f} files/s; ratio {rate / RESULTS['tar']:.2f}x")


@pytest.fixture
def smoke(request) -> bool:
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="module")
def archives(root, tmp_path_factory) -> list[Path]:
    """The root's images packed as the published ``BIOSCAN_5M_cropped_256.zip`` (stored members)."""
    return synth.pack_images(root, tmp_path_factory.mktemp("bench-shard-zip"))


def _time_shard(root: Path, images, workers: int) -> tuple[float, list[str]]:
    """Seconds to shard every record (from ``images``, or the root's folder) and the shards' sha256."""
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    try:
        start = time.perf_counter()
        s = shard_split(root, "all", out=out, images=images, maxcount=250, workers=workers, progress=False,
                        log=lambda m: None)
        seconds = time.perf_counter() - start
        assert s.records == N_RECORDS
        return seconds, [x["sha256"] for x in read_manifest(s.folder)["shards"]]
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_zip_vs_folder(root, archives, smoke, workers):
    """bioscan-shard from the zip archive vs from the extracted folder, same records and workers, interleaved."""
    sources = {"folder": None, "zip": archives}
    times = {kind: [] for kind in sources}
    shas = {kind: _time_shard(root, images, workers)[1] for kind, images in sources.items()}  # warm-up
    assert shas["zip"] == shas["folder"]
    for _ in range(1 if smoke else ZIP_ROUNDS):
        for kind, images in sources.items():
            times[kind].append(_time_shard(root, images, workers)[0])
    rate = {kind: N_RECORDS / min(t) for kind, t in times.items()}
    ratio = rate["zip"] / rate["folder"]
    medians = statistics.median(times["folder"]) / statistics.median(times["zip"])
    print(f"\nbioscan-shard, {N_RECORDS} records, {workers} worker(s), best of {len(times['zip'])}: "
          f"from zip {rate['zip']:,.0f} records/s, from folder {rate['folder']:,.0f} records/s; "
          f"zip/folder {ratio:.2f}x (medians {medians:.2f}x)")
    if STRICT:
        assert ratio >= TARGET_ZIP_VS_FOLDER, f"zip {ratio:.2f}x of folder throughput < {TARGET_ZIP_VS_FOLDER}x"

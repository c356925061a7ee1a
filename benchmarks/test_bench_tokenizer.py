"""Throughput of the compiled k-mer tokenizer + MLM masking, and its speed-up.

The baseline is a per-sequence pure-Python tokenizer of the BarcodeBERT kind:
Python slicing into k-mers, a dict look-up per k-mer, padding, then per-sequence
random masking with BarcodeBERT's labels (``id - 2`` at maskable positions). It
returns Python lists, so it is, if anything, faster than BarcodeBERT's own
pipeline (which also builds a torch tensor per sample).

Targets (asserted only with ``BIOSCAN_BENCH_STRICT=1``; CI runs this file as a
smoke test with ``--benchmark-disable``): at least 1,000,000 barcodes/s on one
core, and at least 150x the baseline measured in the same run::

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_tokenizer.py -s -q
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pytest
from baselines import K, MASK_PROB, MAX_LEN, BarcodeBertStyle

from bioscan_io.tokenizer import KmerTokenizer

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
BATCH = 4096
TARGET_RATE = 1_000_000
TARGET_SPEEDUP = 150.0


def make_barcodes(n: int, seed: int = 0) -> list[str]:
    """660-base random ACGT barcodes; one in five has a run of N or an ambiguity code."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    out = []
    for i in range(n):
        b = letters[rng.integers(0, 4, MAX_LEN)].copy()
        if i % 5 == 0:
            start = int(rng.integers(0, MAX_LEN - 20))
            b[start : start + int(rng.integers(1, 20))] = ord("N")
            b[int(rng.integers(0, MAX_LEN))] = ord("R")
        out.append(b.tobytes().decode())
    return out


@pytest.fixture(scope="module")
def barcodes() -> list[str]:
    return make_barcodes(BATCH)


@pytest.fixture(scope="module")
def arrow_batch(barcodes):
    pids = pa.array([f"BIOUG{100000 + i}-A{i % 97:02d}" for i in range(BATCH)])
    return pa.array(barcodes, type=pa.string()), pids


def _outputs(dtype):
    T = MAX_LEN // K
    return tuple(np.empty((BATCH, T), dtype=dtype) for _ in range(3))


def _mlm(tok, seqs, pids, out, epoch=0):
    return tok.encode_mlm(
        seqs, pids, seed=0, epoch=epoch, mask_prob=MASK_PROB, label_mode="barcodebert",
        random_offset=True, out=out,
    )


# --------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_bench_mlm_arrow(benchmark, arrow_batch, dtype):
    """4096 barcodes from an Arrow column: tokenize + mask into reused arrays."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    out = _outputs(dtype)
    benchmark(_mlm, tok, seqs, pids, out)
    benchmark.extra_info["barcodes_per_call"] = BATCH


def test_bench_mlm_arrow_fresh_arrays(benchmark, arrow_batch):
    """The same, allocating the output arrays on every call."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    benchmark(lambda: tok.encode_mlm(seqs, pids, mask_prob=MASK_PROB, label_mode="barcodebert",
                                     random_offset=True, dtype=np.int32))


def test_bench_mlm_list_of_str(benchmark, barcodes, arrow_batch):
    """From a Python list of str (one join + encode per call)."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    pids = arrow_batch[1].to_pylist()
    out = _outputs(np.int32)
    benchmark(_mlm, tok, barcodes, pids, out)


def test_bench_encode_only(benchmark, arrow_batch):
    """Tokenization alone (no masking)."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    out = _outputs(np.int32)[:2]
    benchmark(tok.encode, arrow_batch[0], out=out)


def test_bench_python_baseline(benchmark, barcodes):
    """The per-sequence pure-Python baseline, on 256 barcodes per call."""
    base = BarcodeBertStyle()
    benchmark(base.batch, barcodes[:256])


# --------------------------------------------------------------------------- the targets


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_throughput_and_speedup(barcodes, arrow_batch):
    """Barcodes/s of batched tokenize + mask on one core, and the speed-up over the baseline."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    base = BarcodeBertStyle()
    n_base = 1024 if STRICT else 128
    reps = (40, 7) if STRICT else (3, 1)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:  # one core, as the target says
        os.sched_setaffinity(0, {max(affinity)})
    try:
        results = {}
        for name, dtype in (("int32", np.int32), ("int64", np.int64)):
            out = _outputs(dtype)
            _mlm(tok, seqs, pids, out)  # warm-up
            results[name] = BATCH / _best_seconds(lambda: _mlm(tok, seqs, pids, out), reps[0])
        base.batch(barcodes[:64])
        base_rate = n_base / _best_seconds(lambda: base.batch(barcodes[:n_base]), reps[1])
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    rate = results["int32"]
    speedup = rate / base_rate
    print(
        f"\ntokenize+mask, k={K}, {MAX_LEN}-base barcodes, batches of {BATCH}, one core:\n"
        f"  compiled int32: {results['int32']:,.0f} barcodes/s\n"
        f"  compiled int64: {results['int64']:,.0f} barcodes/s\n"
        f"  pure-Python BarcodeBERT-style baseline: {base_rate:,.0f} barcodes/s\n"
        f"  speed-up (int32): {speedup:.0f}x, (int64): {results['int64'] / base_rate:.0f}x"
    )
    # Sanity in every mode: the fast path really masks, at the requested rate.
    d = _mlm(tok, seqs, pids, _outputs(np.int32))
    maskable = d["labels"] != -100
    assert abs((d["input_ids"][maskable] == 0).mean() - MASK_PROB) < 0.01
    if STRICT:
        assert rate >= TARGET_RATE, f"{rate:,.0f} barcodes/s < {TARGET_RATE:,}"
        assert speedup >= TARGET_SPEEDUP, f"speed-up {speedup:.0f}x < {TARGET_SPEEDUP:.0f}x"

"""What ``make_loader(check_sha256=True)`` costs: a process's first epoch with and without it (issue 15).

    python -m pytest benchmarks/test_bench_sha256.py -s -q

The loader benchmarks' generated split (``conftest.loader_split``: 20,000 records
with ``cropped_256`` images, 1,000-sample shards with their indexes),
``num_workers=0``. The check hashes each shard once per process, the first time
the process reads it, so it costs only a process's first epoch: each round
empties the process's record of checked shards and of open indexes (as a new
worker process starts), then times one epoch with the check and one without, in
alternating order. Files stay in the page cache, so the hashing is the cost.
Reported, not asserted: it is a price to know, not a target.
"""

from __future__ import annotations

import statistics
import time

import pytest

ROUNDS = 7
WORKLOADS = {"mlm": dict(task="mlm", batch_size=256), "image": dict(task="classify", modality="image", batch_size=64)}


def _first_epoch(split: str, check: bool, kw: dict) -> tuple[float, int]:
    from bioscan_io.format import index
    from bioscan_io.loader import make_loader

    index._OPEN.clear()
    index._VERIFIED.clear()  # a new process has hashed nothing
    loader = make_loader(split, check_sha256=check, **kw)
    t0 = time.perf_counter()
    n = sum(len(b["processid"]) for b in loader)
    return time.perf_counter() - t0, n


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_check_sha256_cost(loader_split, workload):
    split, kw = str(loader_split["split"]), WORKLOADS[workload]
    rounds = 1 if loader_split["smoke"] else ROUNDS
    _first_epoch(split, True, kw)  # warm the page cache
    times = {True: [], False: []}
    for r in range(rounds):
        for check in ((True, False) if r % 2 else (False, True)):
            seconds, n = _first_epoch(split, check, kw)
            times[check].append(seconds)
    size = sum(p.stat().st_size for p in loader_split["split"].glob("*.tar")) / 1e6
    ratio = statistics.median(a / b for a, b in zip(times[True], times[False]))
    print(f"\nfirst epoch of a process, {workload} ({n:,} samples, {size:,.0f} MB of shards), {rounds} rounds:"
          f"\n  without the check  {statistics.median(times[False]) * 1e3:8.1f} ms (median)"
          f"\n  check_sha256=True  {statistics.median(times[True]) * 1e3:8.1f} ms (median)"
          f"\n  ratio {ratio:.2f}x (median of per-round ratios); later epochs of the process: no cost")
    assert n == loader_split["n"]

"""Peak memory of one loader worker process, per task.

    pytest benchmarks/test_bench_memory.py -s

Each task runs in a fresh process with ``num_workers=1`` (batch 256, the default
shuffle buffer: whole shard segments without images, 1,000 samples with images;
prefetch 2) over one epoch of generated shards; the worker's peak resident set is
read from ``getrusage(RUSAGE_CHILDREN)`` once it has exited. Memory is bounded by
configuration: the block read and shuffled together (``shuffle_buffer``), the
batch and the prefetch depth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import sharded_dataset


N_RECORDS = int(os.environ.get("BIOSCAN_BENCH_RECORDS", "3000"))
TASKS = [("mlm", {}), ("classify", {"modality": "dna"}), ("classify", {"modality": "image"}),
         ("clip", {}), ("embed", {})]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return sharded_dataset(tmp_path_factory, "bench-mem", N_RECORDS, seed=9)


def _peak(folder, task: str, kw: dict) -> dict:
    script = textwrap.dedent(f"""
        import json, resource
        from bioscan_io.loader import make_loader
        loader = make_loader({str(folder)!r}, {task!r}, batch_size=256, num_workers=1,
                             persistent_workers=False, **{kw!r})
        n = sum(len(b["processid"]) for b in loader)
        del loader
        kib = 1024
        print(json.dumps({{"samples": n,
                          "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
                          "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_per_worker(folder):
    print(f"\npeak RSS, one epoch of {N_RECORDS} samples, batch 256, 1 worker:")
    for task, kw in TASKS:
        r = _peak(folder, task, kw)
        assert r["samples"] == N_RECORDS
        label = task + (f" ({kw['modality']})" if kw else "")
        print(f"  {label:20s} worker {r['worker'] / 2**20:6.0f} MiB   main {r['main'] / 2**20:6.0f} MiB")

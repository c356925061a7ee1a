"""Sharding throughput next to ``tar cf`` of the same image files, in the same run.

    pytest benchmarks/test_bench_shard.py --benchmark-columns=min,median,rounds -s

The sharder reads the metadata, checks every image, shuffles, and writes
``.dna`` + ``.jpg`` + ``.json`` per record with a sha256 of each shard; ``tar cf``
only packs the image files. Both are timed on warm page cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bioscan_io import synth
from bioscan_io.schema import IMAGES_DIR
from bioscan_io.shard import shard_split

N_RECORDS = int(os.environ.get("BIOSCAN_BENCH_RECORDS", "4000"))
RESULTS: dict[str, float] = {}


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

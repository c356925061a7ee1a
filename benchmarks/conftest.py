"""Shared benchmark data: generated datasets sharded into one split folder, and the smoke flag."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bioscan_io import synth
from bioscan_io.shard import shard_split

#: Records of the loader benchmarks' split (test_bench_loader.py, test_bench_resume.py), and of its smoke run.
LOADER_RECORDS = int(os.environ.get("BIOSCAN_BENCH_RECORDS", "20000"))
LOADER_SMOKE_RECORDS = 600


def generate_split(base: Path, n_records: int, seed: int, maxcount: int = 1000) -> tuple[Path, Path]:
    """Generate ``n_records`` (cropped_256, with images) in ``base/root`` and shard them all into ``base/shards``.

    Returns the dataset root and the split folder (``base/shards/all``: the shards,
    each with its index, and the manifest).
    """
    root, out = base / "root", base / "shards"
    synth.generate(root, n_records=n_records, seed=seed, workers=2)
    shard_split(root, "all", out=out, maxcount=maxcount, progress=False, log=lambda m: None)
    return root, out / "all"


def sharded_dataset(tmp_path_factory, name: str, n_records: int, seed: int, maxcount: int = 1000) -> Path:
    """Generate ``n_records`` (cropped_256, with images) and shard them all; the split folder."""
    return generate_split(tmp_path_factory.mktemp(f"{name}-data"), n_records, seed, maxcount)[1]


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    """True under ``--benchmark-disable`` (the quick smoke run): small data, one round, nothing asserted."""
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="session")
def loader_split(smoke):
    """The loader benchmarks' split: ``BIOSCAN_BENCH_RECORDS`` (20,000) generated records, seed 5.

    Sharded by ``bioscan-shard`` in 1,000-sample shards with their indexes (600
    records in 4 shards for the smoke run). Generated once per pytest session, in
    a folder of its own (not pytest's ``tmp_path``, whose old folders another
    pytest session on the machine may delete while this one runs), removed after.
    """
    n = LOADER_SMOKE_RECORDS if smoke else LOADER_RECORDS
    base = Path(tempfile.mkdtemp(prefix="bioscan-bench-loader-"))
    root, split = generate_split(base, n, seed=5, maxcount=min(1000, -(-n // 4)))
    yield {"n": n, "base": base, "root": root, "split": split, "shards": sorted(str(p) for p in split.glob("*.tar")),
           "smoke": smoke}
    shutil.rmtree(base, ignore_errors=True)

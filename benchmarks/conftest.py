"""Shared benchmark data: a generated dataset sharded into one split folder."""

from __future__ import annotations

from pathlib import Path

from bioscan_io import synth
from bioscan_io.shard import shard_split


def sharded_dataset(tmp_path_factory, name: str, n_records: int, seed: int, maxcount: int = 1000) -> Path:
    """Generate ``n_records`` (cropped_256, with images) and shard them all; the split folder."""
    root = tmp_path_factory.mktemp(f"{name}-data")
    synth.generate(root, n_records=n_records, seed=seed, workers=2)
    out = tmp_path_factory.mktemp(f"{name}-shards")
    shard_split(root, "all", out=out, maxcount=maxcount, progress=False, log=lambda m: None)
    return out / "all"

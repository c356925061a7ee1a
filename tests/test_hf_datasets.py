"""Hugging Face ``datasets`` reads the shards as they are: ``load_dataset("webdataset", data_files=...)``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bioscan_io.format import read_manifest, read_members
from bioscan_io.shard import shard_split

datasets = pytest.importorskip("datasets")


def test_load_dataset_webdataset_yields_every_sample_intact(dataset_small, tmp_path):
    split = Path(shard_split(dataset_small, "val", out=tmp_path / "shards", maxcount=7, progress=False,
                             log=lambda m: None).folder)
    manifest = read_manifest(split)
    files = [str(split / s["name"]) for s in manifest["shards"]]
    assert len(files) > 1
    ds = datasets.load_dataset("webdataset", data_files={"val": files}, split="val", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == manifest["num_samples"]
    expected = {}
    for path, entry in zip(files, manifest["shards"]):
        keys, values, _, error = read_members(path, 0, entry["count"], ("dna", "json", "jpg"))
        assert error is None
        for i, key in enumerate(keys.to_pylist()):
            expected[key] = {ext: values[ext][i].as_py() for ext in values}
    assert sorted(ds["__key__"]) == sorted(expected)
    for row in ds:
        want = expected[row["__key__"]]
        assert row["dna"] == want["dna"]  # the barcode's bytes
        assert row["json"] == json.loads(want["json"])  # every record field, parsed
        image = row["jpg"]  # decoded by datasets (PIL): the same JPEG
        from PIL import Image

        assert image.format == "JPEG" and image.size == Image.open(io.BytesIO(want["jpg"])).size

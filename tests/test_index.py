"""The per-shard index: equal to its tar and the metadata; version-1 splits still load; never wrong data."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from bioscan_io.format import (FORMAT_VERSION, MANIFEST, MEMBERS, RECORD_FIELDS, build_index, index_from_shard,
                               index_name, open_index, read_labels, read_manifest, write_index, write_json)
from bioscan_io.loader import make_loader
from bioscan_io.metadata import read_metadata
from bioscan_io.schema import METADATA_CSV, RANKS, BioscanError
from bioscan_io.shard import shard_split
from bioscan_io.verify import verify_split
from conftest import cli

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def out(dataset_small, tmp_path_factory) -> Path:
    """The 400-record dataset: 'all' in 14 shards, each with its index."""
    out = tmp_path_factory.mktemp("index-shards")
    shard_split(dataset_small, "all", out=out, maxcount=30, **QUIET)
    return out


@pytest.fixture
def split(out, tmp_path) -> Path:
    """A copy of the split folder (and labels.json) that a test may damage."""
    shutil.copytree(out / "all", tmp_path / "all")
    shutil.copy(out / "labels.json", tmp_path / "labels.json")
    return tmp_path / "all"


def strip_indexes(folder: Path) -> dict:
    """Make ``folder`` a version-1 split: no index files, none in the manifest."""
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        (folder / entry.pop("index")["name"]).unlink()
    manifest["format_version"] = 1
    write_json(folder / MANIFEST, manifest)
    return manifest


def epoch(folder, task: str, **kw) -> list[dict]:
    loader = make_loader(folder, task=task, batch_size=16, seed=3, epoch=1, **kw)
    return list(loader)


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_index_equals_the_tar_and_the_metadata(out, dataset_small):
    manifest = read_manifest(out / "all")
    assert manifest["format_version"] == FORMAT_VERSION == 2
    labels = read_labels((out / "labels.json").read_text())
    table = read_metadata(dataset_small / METADATA_CSV)
    rows = {pid: i for i, pid in enumerate(table.column("processid").to_pylist())}
    seen = 0
    for entry in manifest["shards"]:
        shard = out / "all" / entry["name"]
        index = open_index(str(out / "all" / entry["index"]["name"]))
        assert entry["index"]["name"] == index_name(entry["name"]) and len(index) == entry["count"]
        data = shard.read_bytes()
        with tarfile.open(shard) as tar:  # stock tarfile: every member, where it lies
            members = {m.name: (m.offset_data, m.size) for m in tar}
        meta = table.take(pa.array([rows[p] for p in index.column("processid").to_pylist()])).to_pylist()
        for row, record in zip(index.to_pylist(), meta):
            pid = row["processid"]
            for ext in MEMBERS:
                assert (row[f"{ext}_offset"], row[f"{ext}_size"]) == members[f"{pid}.{ext}"]
            dna = data[row["dna_offset"]:row["dna_offset"] + row["dna_size"]].decode()
            assert row["dna"] == dna == (record["dna_barcode"] or "")
            assert json.loads(data[row["json_offset"]:row["json_offset"] + row["json_size"]])["processid"] == pid
            for field in RECORD_FIELDS:
                assert row[field] == record[field], (pid, field)
            for rank in RANKS:
                expected = labels[rank].index(record[rank]) if record[rank] is not None else -1
                assert row[f"{rank}_index"] == expected, (pid, rank)
        seen += len(index)
    assert seen == manifest["num_samples"]


def test_index_rebuilt_from_the_shard_is_byte_identical(out, tmp_path):
    manifest = read_manifest(out / "all")
    labels = read_labels((out / "labels.json").read_text())
    for entry in manifest["shards"][:3]:
        rebuilt = index_from_shard(str(out / "all" / entry["name"]), entry, labels)
        written = write_index(tmp_path / entry["index"]["name"], rebuilt)
        assert written == entry["index"]
        assert (tmp_path / written["name"]).read_bytes() == (out / "all" / written["name"]).read_bytes()


@pytest.mark.parametrize("task, kw", [("mlm", {}), ("classify", {"modality": "image"}), ("classify", {}),
                                      ("clip", {}), ("embed", {})])
def test_version_1_split_loads_identically(split, tmp_path, task, kw, caplog):
    indexed = epoch(split, task, **kw)
    old = tmp_path / "v1" / "all"
    shutil.copytree(split, old)
    shutil.copy(split.parent / "labels.json", old.parent / "labels.json")
    strip_indexes(old)
    with caplog.at_level(logging.WARNING, logger="bioscan_io"):
        walked = epoch(old, task, **kw)
    assert_same_batches(indexed, walked)
    notices = [r.getMessage() for r in caplog.records if "format version 1" in r.getMessage()]
    assert len(notices) == 1 and "bioscan-io index" in notices[0]


def test_index_command_upgrades_a_version_1_split(split):
    original = read_manifest(split)
    strip_indexes(split)
    assert verify_split(split).ok  # a version-1 split is still sound
    run = subprocess.run(cli("index", str(split)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert read_manifest(split) == original  # the same index entries, byte for byte (sha256)
    report = verify_split(split)
    assert report.ok, report.lines()


def test_index_command_errors(split, tmp_path):
    (split.parent / "labels.json").unlink()
    run = subprocess.run(cli("index", str(split)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert f"no labels.json at {split.parent / 'labels.json'}" in run.stderr


def _rewrite_entry(folder: Path, i: int, table: pa.Table) -> None:
    """Replace shard ``i``'s index by ``table`` and list it in the manifest, as a damaged run might."""
    manifest = read_manifest(folder)
    entry = manifest["shards"][i]
    entry["index"] = write_index(folder / entry["index"]["name"], table)
    write_json(folder / MANIFEST, manifest)


def test_corrupt_index_is_a_named_error(split):
    entry = read_manifest(split)["shards"][0]
    path = split / entry["index"]["name"]
    data = bytearray(path.read_bytes())
    at = data.index(b"ACG")  # inside a barcode: still a readable Arrow file
    data[at] = ord("T")
    path.write_bytes(bytes(data))
    with pytest.raises(BioscanError, match=rf"shard index .*{entry['index']['name']} is corrupt: sha256"):
        epoch(split, "mlm")
    # A loader refuses the shard whole: verify counts its records as missing too (what on_error="skip" loses).
    kinds = [p.kind for p in verify_split(split).problems]
    assert set(kinds) == {"index_mismatch", "missing_record"} and kinds.count("missing_record") == entry["count"]
    path.write_bytes(bytes(data[:100]))  # cut short
    with pytest.raises(BioscanError, match=rf"{entry['index']['name']} has 100 bytes"):
        epoch(split, "mlm")
    path.unlink()
    with pytest.raises(BioscanError, match=rf"{entry['index']['name']} is missing"):
        epoch(split, "mlm")
    kinds = [p.kind for p in verify_split(split).problems]
    assert set(kinds) == {"missing_index", "missing_record"} and kinds.count("missing_record") == entry["count"]


def test_index_changed_in_place_after_a_read_is_checked_again(split):
    """A process keeps the indexes it checked open; one written over since, its mtime put back, is refused."""
    assert epoch(split, "mlm")  # every index read and checked: kept open by this process
    entry = read_manifest(split)["shards"][0]
    path = split / entry["index"]["name"]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[data.index(b"ACG")] = ord("T")
    time.sleep(0.05)  # the kernel stamps files with a coarse clock: let the change time move on
    with open(path, "r+b") as f:  # in place: the same inode and size
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same modification time
    with pytest.raises(BioscanError, match=rf"shard index .*{entry['index']['name']} is corrupt: sha256"):
        epoch(split, "mlm")


def test_stale_index_is_a_named_error(split):
    manifest = read_manifest(split)
    other = open_index(str(split / manifest["shards"][1]["index"]["name"]))
    _rewrite_entry(split, 0, other)  # another shard's index, listed with its right sha256
    with pytest.raises(BioscanError, match="does not describe all-000000.tar"):
        epoch(split, "mlm")
    assert "index_mismatch" in {p.kind for p in verify_split(split).problems}


def test_wrong_offsets_are_a_named_error(split):
    entry = read_manifest(split)["shards"][0]
    index = open_index(str(split / entry["index"]["name"]))
    shifted = index.set_column(index.schema.get_field_index("jpg_offset"), "jpg_offset",
                               pa.array(index.column("jpg_offset").to_numpy() + 512))
    _rewrite_entry(split, 0, shifted)
    with pytest.raises(BioscanError, match="no member .*jpg at byte .*, where its index puts it .*stale index"):
        epoch(split, "classify", modality="image")
    problems = verify_split(split).problems
    assert [p.kind for p in problems] == ["index_mismatch"] + ["missing_record"] * entry["count"]
    assert "jpg_offset" in problems[0].detail  # every image lost to a loader reading images, as verify counts
    assert all("a loader does not find where the index puts it" in p.detail for p in problems[1:])


def test_count_mismatch_is_a_named_error(split):
    entry = read_manifest(split)["shards"][0]
    index = open_index(str(split / entry["index"]["name"]))
    _rewrite_entry(split, 0, index.slice(0, len(index) - 1))
    with pytest.raises(BioscanError, match="does not describe all-000000.tar"):
        epoch(split, "embed")


def test_build_index_keeps_absent_members(tmp_path):
    labels = {rank: ["a"] for rank in RANKS}
    records = pa.table({f: pa.array(["a", None], pa.string()) for f in RECORD_FIELDS})
    spans = {ext: (np.array([512, -1]), np.array([4, 0])) for ext in MEMBERS}
    table = build_index(["p1", "p2"], spans, ["ACGT", ""], records,
                        labels, {"shard": "x.tar", "shard_bytes": 10240, "shard_sha256": "0" * 64})
    assert table.column("jpg_offset").to_pylist() == [512, -1]
    assert table.column("species_index").to_pylist() == [0, -1]


# ----------------------------------------------------------------------------- damage the index path meets


def _spoil_jpeg_in_place(split: Path) -> tuple[str, str]:
    """Overwrite one image in its tar past its first 200 bytes (same size): ``(shard name, victim)``."""
    entry = read_manifest(split)["shards"][0]
    index = open_index(str(split / entry["index"]["name"])).to_pylist()
    victim = index[3]
    shard = split / entry["name"]
    data = bytearray(shard.read_bytes())
    at, size = victim["jpg_offset"], victim["jpg_size"]
    garbage = (b"\x00garbage" * size)[:size - 200]
    data[at + 200:at + size] = garbage  # as test_bad_data's corrupt JPEG, but the same size
    shard.write_bytes(bytes(data))
    return entry["name"], victim["processid"]


def test_damaged_image_with_an_index(split):
    shard, victim = _spoil_jpeg_in_place(split)
    with pytest.raises(BioscanError) as err:
        epoch(split, "classify", modality="image")
    assert shard in str(err.value) and victim in str(err.value)
    loader = make_loader(split, task="classify", modality="image", batch_size=16, on_error="skip")
    seen = [pid for batch in loader for pid in batch["processid"]]
    assert loader.skipped == 1 and victim not in seen and len(seen) == read_manifest(split)["num_samples"]
    assert epoch(split, "mlm")  # the barcodes come from the index: the image is no concern of MLM's


def test_shard_changed_since_indexed(split):
    entry = read_manifest(split)["shards"][0]
    shard = split / entry["name"]
    shard.write_bytes(shard.read_bytes()[:-10240])  # one tar record shorter
    with pytest.raises(BioscanError, match=rf"shard .*{entry['name']} has changed since it was indexed"):
        epoch(split, "classify", modality="image")
    loader = make_loader(split, task="classify", modality="image", batch_size=16, on_error="skip")
    n = sum(len(batch["processid"]) for batch in loader)
    assert loader.skipped == entry["count"] and n == read_manifest(split)["num_samples"]

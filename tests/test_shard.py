"""Sharding: every record of a split in exactly one shard, nothing lost or changed."""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from bioscan_io.metadata import label_indices
from bioscan_io.schema import (
    COLUMN_KINDS,
    COLUMNS,
    METADATA_CSV,
    RANKS,
    SPLITS,
    BioscanError,
    image_relpath,
)
from bioscan_io.format import LABELS, MANIFEST, read_manifest
from bioscan_io.shard import shard_split

from conftest import cli, link_copy


def csv_records(root: Path) -> list[dict]:
    """The metadata CSV read independently of bioscan_io: csv module, typed by hand."""
    typers = {"str": str, "category": str, "float": float, "uint8": int, "Int64": int}
    with open(root / METADATA_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append({c: (typers[COLUMN_KINDS[c]](row[c]) if row[c] != "" else None) for c in COLUMNS})
    return out


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Members of a shard grouped by key, read with the standard library."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def sharded_5k(dataset_5k, tmp_path_factory):
    """Every split of the 5k dataset, sharded small so each split spans several shards."""
    out = tmp_path_factory.mktemp("shards5k")
    for split in SPLITS:
        shard_split(dataset_5k, split, out=out, maxcount=200, maxsize=1 << 30, workers=2, progress=False, log=lambda m: None)
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_shards_hold_each_record_of_the_split_once_unchanged(dataset_5k, sharded_5k, split):
    expected = {r["processid"]: r for r in csv_records(dataset_5k) if r["split"] == split}
    folder = sharded_5k / split
    manifest = read_manifest(folder)
    assert manifest["num_samples"] == len(expected)
    seen: list[str] = []
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        data = path.read_bytes()
        assert len(data) == shard["bytes"]
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        samples = tar_samples(path)
        assert len(samples) == shard["count"]
        for key, sample in samples.items():
            rec = expected[key]
            assert set(sample) == {"dna", "jpg", "json"}
            assert json.loads(sample["json"]) == rec  # every column, typed, null for missing
            assert list(json.loads(sample["json"])) == list(COLUMNS)
            assert sample["dna"].decode() == (rec["dna_barcode"] or "")  # full barcode, untruncated
            src = dataset_5k / image_relpath(key, rec["split"], rec["chunk"])
            assert sample["jpg"] == src.read_bytes()
        seen.extend(samples)
    assert len(seen) == len(set(seen))
    assert set(seen) == set(expected)


def test_shards_read_by_stock_tar_and_webdataset(dataset_5k, sharded_5k):
    for split in SPLITS:
        folder = sharded_5k / split
        manifest = read_manifest(folder)
        urls = [str(folder / s["name"]) for s in manifest["shards"]]
        for url, shard in zip(urls, manifest["shards"]):
            names = subprocess.run(["tar", "tf", url], check=True, capture_output=True, text=True).stdout.split()
            assert len(names) == 3 * shard["count"]
        keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
        assert len(keys) == manifest["num_samples"] == len(set(keys))
        for sample in wds.WebDataset(urls[:1], shardshuffle=False).decode():
            assert isinstance(sample["json"], dict) and isinstance(sample["dna"], bytes)
            break


def test_barcodes_longer_than_660_are_kept_whole(dataset_5k, sharded_5k):
    long = {r["processid"]: r["dna_barcode"] for r in csv_records(dataset_5k)
            if r["split"] == "pretrain" and r["dna_barcode"] and len(r["dna_barcode"]) > 660}
    assert long, "the generator should make barcodes longer than 660"
    folder = sharded_5k / "pretrain"
    found = {}
    for shard in read_manifest(folder)["shards"]:
        for key, sample in tar_samples(folder / shard["name"]).items():
            if key in long:
                found[key] = sample["dna"].decode()
    assert found == long


def test_shards_mix_records_by_seed(dataset_5k, sharded_5k):
    folder = sharded_5k / "pretrain"
    first = list(tar_samples(folder / read_manifest(folder)["shards"][0]["name"]))
    file_order = [r["processid"] for r in csv_records(dataset_5k) if r["split"] == "pretrain"]
    assert first != file_order[: len(first)]


def test_label_index_from_labels_json_equals_pandas_category_codes(dataset_5k, tmp_path):
    """The rule of the official loader: pandas category codes over the WHOLE csv."""
    shard_split(dataset_5k, "all", out=tmp_path, maxcount=1000, workers=2, progress=False, log=lambda m: None)
    labels = json.loads((tmp_path / LABELS).read_text())["ranks"]
    records = {}
    folder = tmp_path / "all"
    for shard in read_manifest(folder)["shards"]:
        for key, sample in tar_samples(folder / shard["name"]).items():
            records[key] = json.loads(sample["json"])
    df = pd.read_csv(dataset_5k / METADATA_CSV, dtype="category")
    assert len(records) == len(df)
    pids = df["processid"].astype(str).tolist()
    for rank in RANKS:
        ours = label_indices(labels[rank], [records[p][rank] for p in pids])
        theirs = df[rank].cat.codes.to_numpy().astype(np.int64)
        np.testing.assert_array_equal(ours, theirs, err_msg=rank)
        assert (ours >= 0).any() or rank in ("species",)


def test_same_inputs_give_byte_identical_shards(dataset_small, tmp_path):
    kw = dict(out=None, maxcount=50, progress=False, log=lambda m: None)
    a = shard_split(dataset_small, "train", **{**kw, "out": tmp_path / "a"}, workers=1)
    b = shard_split(dataset_small, "train", **{**kw, "out": tmp_path / "b"}, workers=2)
    ma, mb = read_manifest(a.folder), read_manifest(b.folder)
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    c = shard_split(dataset_small, "train", **{**kw, "out": tmp_path / "c"}, seed=1, workers=2)
    assert [s["sha256"] for s in read_manifest(c.folder)["shards"]] != [s["sha256"] for s in ma["shards"]]


def test_shard_bounds_by_count_and_bytes(dataset_small, tmp_path):
    s = shard_split(dataset_small, "all", out=tmp_path / "n", maxcount=37, progress=False, log=lambda m: None)
    counts = [x["count"] for x in read_manifest(s.folder)["shards"]]
    assert max(counts) == 37 and sum(counts) == 400
    s = shard_split(dataset_small, "all", out=tmp_path / "b", maxsize=300_000, progress=False, log=lambda m: None)
    sizes = [x["bytes"] for x in read_manifest(s.folder)["shards"]]
    assert len(sizes) > 1
    # The plan estimates the JSON and tar padding; shards stay within 10% of the bound.
    assert max(sizes) <= 300_000 * 1.1


def test_unions_and_aliases(dataset_small, tmp_path):
    records = csv_records(dataset_small)
    for name, splits in [("seen", {"train", "val", "test"}), ("validation", {"val"}),
                         ("train+key_unseen", {"train", "key_unseen"})]:
        s = shard_split(dataset_small, name, out=tmp_path, progress=False, log=lambda m: None)
        assert s.records == sum(r["split"] in splits for r in records)
    assert (tmp_path / "seen" / MANIFEST).is_file()
    assert (tmp_path / "val" / MANIFEST).is_file()


def test_kill_mid_run_then_rerun_completes_without_loss(dataset_5k, tmp_path):
    out = tmp_path / "out"
    args = cli("shard", "--root", str(dataset_5k), "--split", "all", "--out", str(out),
               "--maxcount", "40", "--workers", "2", "--no-progress")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = out / "all"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if folder.is_dir() and len(list(folder.glob("all-*.tar"))) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(folder.glob("all-*.tar")))
    assert not (folder / MANIFEST).exists(), "the kill should land mid-run"
    time.sleep(0.2)  # workers die with their parent (PR_SET_PDEATHSIG)

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    reused = int(rerun.stdout.split(" already done")[0].rsplit("written, ", 1)[1])
    assert reused >= min(done_before, 3)

    manifest = read_manifest(folder)
    keys: list[str] = []
    for shard in manifest["shards"]:
        data = (folder / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        samples = tar_samples(folder / shard["name"])
        assert len(samples) == shard["count"]
        keys.extend(samples)
    assert len(keys) == len(set(keys)) == 5000
    assert set(keys) == {r["processid"] for r in csv_records(dataset_5k)}
    for shard in manifest["shards"]:  # each shard's index, whole, as the manifest lists it
        data = (folder / shard["index"]["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["index"]["sha256"]
    files = [s["name"] for s in manifest["shards"]] + [s["index"]["name"] for s in manifest["shards"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST] + files)


def test_missing_images_skipped_on_request_and_reported(dataset_small, tmp_path):
    root = tmp_path / "root"
    link_copy(dataset_small, root)
    records = [r for r in csv_records(root) if r["split"] == "test"]
    gone = sorted(r["processid"] for r in records[:2])
    for pid in gone:
        (root / image_relpath(pid, "test", None)).unlink()
    s = shard_split(root, "test", out=tmp_path / "o", skip_missing=True, progress=False, log=lambda m: None)
    assert s.skipped == gone and s.records == len(records) - 2
    assert (Path(s.folder) / "missing_images.txt").read_text().split() == gone
    assert read_manifest(s.folder)["skipped_missing_image"] == gone


# ----------------------------------------------------------------------------- bad input


def _run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cli("shard", "--no-progress", *args), capture_output=True, text=True, cwd=cwd, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bioscan-io shard: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def editable_root(dataset_small, tmp_path) -> Path:
    root = tmp_path / "root"
    link_copy(dataset_small, root)
    return root


def _edit_csv(root: Path, edit) -> Path:
    path = root / METADATA_CSV
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(df).to_csv(path, index=False)
    return path


def test_error_missing_root(tmp_path):
    _assert_one_line_error(_run_cli("--root", str(tmp_path / "nowhere"), "--out", str(tmp_path)), "dataset root not found", "nowhere")


def test_error_unknown_split(dataset_small, tmp_path):
    _assert_one_line_error(_run_cli("--root", str(dataset_small), "--split", "trian", "--out", str(tmp_path)), "unknown split 'trian'")
    _assert_one_line_error(_run_cli("--root", str(dataset_small), "--split", "train+nope", "--out", str(tmp_path)), "'nope'")


def test_error_missing_column(editable_root, tmp_path):
    path = _edit_csv(editable_root, lambda df: df.drop(columns=["dna_bin"]))
    _assert_one_line_error(_run_cli("--root", str(editable_root), "--out", str(tmp_path)), "missing column", "dna_bin", str(path))


def test_error_missing_image_names_the_processid(editable_root, tmp_path):
    rec = next(r for r in csv_records(editable_root) if r["split"] == "train")
    (editable_root / image_relpath(rec["processid"], "train", rec["chunk"])).unlink()
    proc = _run_cli("--root", str(editable_root), "--split", "train", "--out", str(tmp_path))
    _assert_one_line_error(proc, rec["processid"], "--skip-missing")
    assert not list((tmp_path / "train").glob("*.tar")) if (tmp_path / "train").exists() else True


def test_error_duplicate_processid(editable_root, tmp_path):
    def dup(df):
        df.loc[5, "processid"] = df.loc[4, "processid"]
        return df

    dup_pid = pd.read_csv(editable_root / METADATA_CSV, dtype=str).loc[4, "processid"]
    _edit_csv(editable_root, dup)
    _assert_one_line_error(_run_cli("--root", str(editable_root), "--out", str(tmp_path)), "duplicate processid", dup_pid)


def test_error_unknown_split_value_in_metadata(editable_root, tmp_path):
    def bad(df):
        df.loc[9, "split"] = "training"
        return df

    _edit_csv(editable_root, bad)
    _assert_one_line_error(_run_cli("--root", str(editable_root), "--out", str(tmp_path)), "record 10", "'training'")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage", b"", b"processid,sampleid\n1,2\n"])
def test_error_unreadable_csv(editable_root, tmp_path, content):
    (editable_root / METADATA_CSV).write_bytes(content)
    _assert_one_line_error(_run_cli("--root", str(editable_root), "--out", str(tmp_path)), str(editable_root / METADATA_CSV))


def test_error_csv_value_of_wrong_type(editable_root, tmp_path):
    def bad(df):
        df.loc[3, "coord-lat"] = "north"
        return df

    _edit_csv(editable_root, bad)
    _assert_one_line_error(_run_cli("--root", str(editable_root), "--out", str(tmp_path)), "coord-lat")


def test_error_folder_of_another_run(dataset_small, tmp_path):
    assert _run_cli("--root", str(dataset_small), "--split", "val", "--out", str(tmp_path)).returncode == 0
    proc = _run_cli("--root", str(dataset_small), "--split", "val", "--out", str(tmp_path), "--seed", "5")
    _assert_one_line_error(proc, "--overwrite")
    assert _run_cli("--root", str(dataset_small), "--split", "val", "--out", str(tmp_path), "--seed", "5", "--overwrite").returncode == 0
    assert read_manifest(tmp_path / "val")["seed"] == 5


def test_jsonld_gives_the_same_shards_as_csv(dataset_small, tmp_path):
    from bioscan_io.schema import METADATA_JSONLD

    a = shard_split(dataset_small, "test", out=tmp_path / "csv", progress=False, log=lambda m: None)
    b = shard_split(dataset_small, "test", out=tmp_path / "jsonld", metadata=dataset_small / METADATA_JSONLD,
                    progress=False, log=lambda m: None)
    shas = lambda s: [x["sha256"] for x in read_manifest(s.folder)["shards"]]  # noqa: E731
    assert shas(a) == shas(b)


def test_shards_written_through_a_pipe_command(dataset_small, tmp_path):
    """``out="pipe:CMD"``: each file goes to CMD's stdin, {name} its path; the result loads as from disk."""
    from bioscan_io.loader import make_loader

    local = tmp_path / "local"
    shard_split(dataset_small, "val", out=local, maxcount=10, progress=False, log=lambda m: None)
    target = tmp_path / "piped"
    url = f"pipe:mkdir -p \"$(dirname {target}/{{name}})\" && cat > {target}/{{name}}"
    messages = []
    summary = shard_split(dataset_small, "val", out=url, maxcount=10, staging=tmp_path / "staging",
                          progress=False, log=messages.append)
    assert summary.folder == url and any(m.startswith("uploaded 2 shards of 2") for m in messages), messages
    for path in sorted((local / "val").glob("*.tar")) + sorted((local / "val").glob("*.idx.arrow")) + \
            [local / "val" / MANIFEST, local / LABELS]:
        assert (target / path.relative_to(local)).read_bytes() == path.read_bytes()
    assert not (tmp_path / "staging" / "val").exists()  # the staging copy goes once uploaded
    pids = [p for b in make_loader(target / "val", "embed", batch_size=8) for p in b["processid"]]
    assert sorted(pids) == sorted(p for b in make_loader(local / "val", "embed", batch_size=8)
                                  for p in b["processid"])
    with pytest.raises(BioscanError, match=r"needs \{name\}"):
        shard_split(dataset_small, "val", out="pipe:cat > /dev/null", maxcount=10, staging=tmp_path / "s2",
                    progress=False, log=lambda m: None)
    with pytest.raises(BioscanError, match=r"writing val/val-000000\.idx\.arrow failed"):  # an index goes first
        shard_split(dataset_small, "val", out="pipe:exit 3 # {name}", maxcount=10, staging=tmp_path / "s3",
                    progress=False, log=lambda m: None)

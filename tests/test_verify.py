"""bioscan-io verify: good shards pass; each kind of damage is caught and named.

Every test corrupts its own copy of one sharded split (the dataset_small train
split, 48 records in two shards). Where a test means to show that only a later
check can catch a change, it rewrites the shard and the manifest's size, sha256
and counts too, so the earlier checks pass.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bioscan_io.schema import METADATA_CSV, BioscanError, image_relpath
from bioscan_io.format import MANIFEST, TarSink, index_from_shard, read_labels, read_manifest, write_index
from bioscan_io.shard import shard_split
from bioscan_io.verify import verify_split

from conftest import cli


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def good_split(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify_shards")
    shard_split(dataset_small, "train", out=out, maxcount=40, progress=False, log=lambda m: None)
    folder = out / "train"
    assert len(read_manifest(folder)["shards"]) >= 2, "the tests need a split spanning several shards"
    return folder


@pytest.fixture
def split(good_split, tmp_path) -> Path:
    """A private copy of the good split folder (and labels.json beside it), to damage."""
    folder = tmp_path / "train"
    shutil.copytree(good_split, folder)
    shutil.copy(good_split.parent / "labels.json", tmp_path / "labels.json")
    return folder


def shard_path(folder: Path, i: int) -> Path:
    return folder / read_manifest(folder)["shards"][i]["name"]


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def write_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as f:
        tar = TarSink(f)
        for name, data in members:
            tar.add(name, data)
        tar.close()


def keys_of(path: Path) -> list[str]:
    return list(dict.fromkeys(name.split(".", 1)[0] for name, _ in read_members(path)))


def refresh_manifest(folder: Path) -> None:
    """Make the manifest describe the shards as they now are (size, sha256, count, total, indexes)."""
    manifest = read_manifest(folder)
    labels = read_labels((folder.parent / "labels.json").read_text())
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        keys = [name.split(".", 1)[0] for name, _ in read_members(path)]
        # Samples as webdataset groups them: runs of one key.
        entry["count"] = sum(1 for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k)
        try:  # as `bioscan-io index` would
            table = index_from_shard(str(path), entry, labels)
            entry["index"] = write_index(folder / entry["index"]["name"], table)
        except BioscanError:
            pass  # a shard the walk cannot index keeps its old index
    manifest["num_samples"] = sum(e["count"] for e in manifest["shards"])
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def payload_offset(path: Path, name: str) -> tuple[int, int]:
    """Byte offset and size of a member's payload in a shard."""
    with tarfile.open(path) as tar:
        m = tar.getmember(name)
        return m.offset_data, m.size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def kinds(report) -> list[str]:
    return sorted({p.kind for p in report.problems})


def only(report, kind: str):
    """The report's problems, asserting they are all of one kind."""
    assert kinds(report) == [kind], [p.line() for p in report.problems]
    return report.problems


def run_verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli("verify", "--no-progress", *args), capture_output=True, text=True, timeout=120)


def verify_json(*args: str) -> tuple[int, dict]:
    proc = run_verify("--json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


# ----------------------------------------------------------------------------- good shards


def test_good_shards_pass(good_split, dataset_small):
    manifest = read_manifest(good_split)
    report = verify_split(good_split, images=True)
    assert report.ok, [p.line() for p in report.problems]
    assert report.samples == manifest["num_samples"] and report.shards == len(manifest["shards"])

    code, doc = verify_json(str(good_split), "--images")
    assert code == 0
    assert doc == {"folder": str(good_split), "ok": True, "samples": manifest["num_samples"],
                   "shards": len(manifest["shards"]), "metadata": doc["metadata"], "problems": []}
    proc = run_verify(str(good_split), "--root", str(dataset_small))
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        f"verify: {good_split}: OK ({manifest['num_samples']} samples in {len(manifest['shards'])} shards)"
    ]


# ----------------------------------------------------------------------------- damage each check catches


def test_deleted_sample_is_a_missing_record(split):
    path = shard_path(split, 0)
    gone = keys_of(path)[5]
    write_members(path, [(n, d) for n, d in read_members(path) if not n.startswith(gone + ".")])
    refresh_manifest(split)

    [problem] = only(verify_split(split), "missing_record")
    assert problem.key == gone
    code, doc = verify_json(str(split))
    assert code == 1 and doc["ok"] is False
    assert [(p["kind"], p["key"]) for p in doc["problems"]] == [("missing_record", gone)]


def test_duplicated_sample_across_shards(split):
    first, second = shard_path(split, 0), shard_path(split, 1)
    dup = keys_of(first)[3]
    copied = [(n, d) for n, d in read_members(first) if n.startswith(dup + ".")]
    write_members(second, read_members(second) + copied)
    refresh_manifest(split)

    [problem] = only(verify_split(split), "duplicate_sample")
    assert (problem.key, problem.shard) == (dup, second.name)
    assert first.name in problem.detail


def test_duplicated_sample_within_a_shard(split):
    path = shard_path(split, 1)
    members = read_members(path)
    write_members(path, members + members[:3])
    refresh_manifest(split)
    [problem] = only(verify_split(split), "duplicate_sample")
    assert problem.key == members[0][0].split(".")[0]


def test_changed_field_names_record_and_column(split):
    path = shard_path(split, 1)
    members = read_members(path)
    name, raw = next((n, d) for n, d in members if n.endswith(".json"))
    record = json.loads(raw)
    record["country"] = "Atlantis"
    members = [(n, json.dumps(record).encode() if n == name else d) for n, d in members]
    write_members(path, members)
    refresh_manifest(split)

    [problem] = only(verify_split(split), "field_mismatch")
    assert problem.key == record["processid"] and problem.shard == path.name
    assert problem.detail.startswith("country:") and "Atlantis" in problem.detail
    code, doc = verify_json(str(split))
    assert code == 1 and [p["kind"] for p in doc["problems"]] == ["field_mismatch"]


def test_float_field_compared_exactly_and_typed(split):
    path = shard_path(split, 0)
    members = read_members(path)
    edited = {}
    for i, (n, d) in enumerate(members):
        rec = json.loads(d) if n.endswith(".json") else None
        if rec and isinstance(rec["coord-lat"], float) and "coord-lat" not in edited:
            rec["coord-lat"] = rec["coord-lat"] + 1e-12
            edited["coord-lat"] = rec["processid"]
        elif rec and isinstance(rec["inferred_ranks"], int) and "inferred_ranks" not in edited:
            rec["inferred_ranks"] = float(rec["inferred_ranks"])  # 3.0 is not the uint8 3
            edited["inferred_ranks"] = rec["processid"]
        else:
            continue
        members[i] = (n, json.dumps(rec).encode())
    write_members(path, members)
    refresh_manifest(split)
    problems = only(verify_split(split), "field_mismatch")
    assert sorted((p.key, p.detail.split(":")[0]) for p in problems) == sorted((k, c) for c, k in edited.items())


def test_bit_flip_in_image_changes_the_sha256(split):
    path = shard_path(split, 0)
    jpg = next(n for n, _ in read_members(path) if n.endswith(".jpg"))
    offset, size = payload_offset(path, jpg)
    flip_byte(path, offset + size // 2)

    [problem] = only(verify_split(split), "sha256_mismatch")
    assert problem.shard == path.name
    code, doc = verify_json(str(split))
    assert code == 1 and [(p["kind"], p["shard"]) for p in doc["problems"]] == [("sha256_mismatch", path.name)]


def test_bit_flip_with_manifest_updated_caught_by_jpeg_marker_and_images(split):
    path = shard_path(split, 0)
    jpg = next(n for n, _ in read_members(path) if n.endswith(".jpg"))
    key = jpg.split(".")[0]
    offset, size = payload_offset(path, jpg)
    flip_byte(path, offset + size - 1)  # the EOI marker's D9
    refresh_manifest(split)

    [problem] = only(verify_split(split), "bad_jpeg")
    assert (problem.key, problem.shard) == (key, path.name)
    assert kinds(verify_split(split, images=True)) == ["bad_jpeg", "image_mismatch"]


def test_bit_flip_inside_the_image_caught_only_with_images(split, dataset_small):
    path = shard_path(split, 1)
    jpg = next(n for n, _ in read_members(path) if n.endswith(".jpg"))
    offset, size = payload_offset(path, jpg)
    flip_byte(path, offset + size // 2)
    refresh_manifest(split)

    assert verify_split(split).ok  # the bytes still look like a whole JPEG
    [problem] = only(verify_split(split, images=True), "image_mismatch")
    assert problem.key == jpg.split(".")[0]
    code, doc = verify_json(str(split), "--images", "--root", str(dataset_small))
    assert code == 1 and [p["kind"] for p in doc["problems"]] == ["image_mismatch"]


def test_truncated_shard(split):
    path = shard_path(split, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    report = verify_split(split)
    assert {"size_mismatch", "truncated_tar"} <= set(kinds(report))
    assert {p.shard for p in report.problems if p.kind in ("size_mismatch", "truncated_tar")} == {path.name}
    proc = run_verify(str(split))
    assert proc.returncode == 1
    assert any(line.startswith(f"truncated_tar: {path.name}") for line in proc.stdout.splitlines()), proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith(" problems")


def test_shard_cut_on_a_member_boundary_lacks_its_end_marker(split):
    # tarfile reads such a file as a complete, shorter archive; only the missing
    # end-of-archive marker shows the cut, once the manifest agrees with the file.
    path = shard_path(split, 0)
    members = read_members(path)
    cut = payload_offset(path, members[30][0])[0] - 512  # the header of member 30
    path.write_bytes(path.read_bytes()[:cut])
    refresh_manifest(split)
    report = verify_split(split)
    assert "truncated_tar" in kinds(report) and set(kinds(report)) <= {"truncated_tar", "missing_record"}
    assert "end-of-archive" in next(p for p in report.problems if p.kind == "truncated_tar").detail


def test_corrupt_header_in_the_middle(split):
    path = shard_path(split, 0)
    members = read_members(path)
    header = payload_offset(path, members[9][0])[0] - 512
    flip_byte(path, header + 130)  # inside the size field: the checksum no longer matches
    refresh_manifest(split)
    report = verify_split(split)
    [problem] = [p for p in report.problems if p.kind == "corrupt_tar"]
    assert problem.shard == path.name and members[8][0] in problem.detail


def test_missing_member_and_bad_json(split):
    path = shard_path(split, 0)
    members = read_members(path)
    no_dna = members[0][0].split(".")[0]
    bad = members[5][0].split(".")[0]
    members = [(n, b"{not json" if n == bad + ".json" else d) for n, d in members if n != no_dna + ".dna"]
    write_members(path, members)
    refresh_manifest(split)  # the shard cannot be indexed again: its old index stays listed
    report = verify_split(split)
    found = [(p.kind, p.key) for p in report.problems if p.kind != "missing_record"]
    assert found == [("missing_member", no_dna), ("bad_json", bad)]
    # A loader refuses the old index (it describes the tar before the edit): every record of the shard is lost.
    lost = [p for p in report.problems if p.kind == "missing_record"]
    assert len(lost) == read_manifest(split)["shards"][0]["count"]
    assert all(p.shard == path.name and "which a loader skips whole: shard index" in p.detail for p in lost)


def test_dna_and_key_mismatch(split):
    path = shard_path(split, 1)
    members = read_members(path)
    dna_key = members[0][0].split(".")[0]
    json_name, raw = next((n, d) for n, d in members[3:] if n.endswith(".json"))
    record = json.loads(raw)
    renamed = record["processid"]
    record["processid"] = "XXXX000-00"
    members = [(n, b"ACGT" if n == dna_key + ".dna" else json.dumps(record).encode() if n == json_name else d)
               for n, d in members]
    write_members(path, members)
    refresh_manifest(split)
    report = verify_split(split)
    assert [(p.kind, p.key) for p in report.problems] == [
        ("dna_mismatch", dna_key), ("key_mismatch", renamed), ("field_mismatch", renamed)]


def test_records_skipped_for_a_missing_image_are_not_missing(split):
    path = shard_path(split, 0)
    gone = keys_of(path)[2]
    write_members(path, [(n, d) for n, d in read_members(path) if not n.startswith(gone + ".")])
    refresh_manifest(split)
    manifest = read_manifest(split)
    manifest["skipped_missing_image"] = [gone]
    (split / MANIFEST).write_text(json.dumps(manifest))
    (split / "missing_images.txt").write_text(gone + "\n")
    assert verify_split(split).ok


def test_malformed_manifest(split):
    manifest = read_manifest(split)
    manifest["format_version"] = 99
    manifest["shards"][1]["sha256"] = "not a digest"
    (split / MANIFEST).write_text(json.dumps(manifest))
    report = verify_split(split)
    assert kinds(report) == ["bad_manifest", "missing_record"]  # shard 1 is left unread
    assert [p.shard for p in report.problems if p.kind == "bad_manifest"] == [None, manifest["shards"][1]["name"]]


def test_extra_shard(split):
    shutil.copy(shard_path(split, 1), split / "train-000099.tar")
    [problem] = only(verify_split(split), "extra_shard")
    assert problem.shard == "train-000099.tar"
    code, doc = verify_json(str(split))
    assert code == 1 and [(p["kind"], p["shard"]) for p in doc["problems"]] == [("extra_shard", "train-000099.tar")]


def test_missing_shard_and_human_output_is_capped(split):
    path = shard_path(split, 0)
    lost = keys_of(path)
    path.unlink()
    report = verify_split(split)
    assert kinds(report) == ["missing_record", "missing_shard"]
    assert {p.key for p in report.problems if p.kind == "missing_record"} == set(lost)

    proc = run_verify(str(split))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"missing_shard: {path.name}")
    assert f"... and {len(report.problems) - 20} more" in lines
    assert lines[-1] == f"verify: {split}: {len(report.problems)} problems"


def test_sample_of_another_split_is_unknown(split, dataset_small):
    with open(dataset_small / METADATA_CSV, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "val")
    pid = row["processid"]
    record = json.loads(next(d for n, d in read_members(shard_path(split, 0)) if n.endswith(".json")))
    record.update(processid=pid, split="val")
    image = (dataset_small / image_relpath(pid, "val", None)).read_bytes()
    path = shard_path(split, 1)
    sample = [(pid + ".dna", (record["dna_barcode"] or "").encode()), (pid + ".jpg", image),
              (pid + ".json", json.dumps(record).encode())]
    write_members(path, read_members(path) + sample)
    refresh_manifest(split)
    [problem] = only(verify_split(split), "unknown_record")
    assert problem.key == pid and "'val'" in problem.detail


def test_other_metadata_is_reported_and_still_compared(split, dataset_small, tmp_path):
    src = dataset_small / METADATA_CSV
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    changed = next(r for r in rows if r["split"] == "train")
    changed["province_state"] = "Nowhere"
    other = tmp_path / "other.csv"
    with open(other, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = verify_split(split, metadata=other)
    assert kinds(report) == ["field_mismatch", "metadata_changed"]
    [field] = [p for p in report.problems if p.kind == "field_mismatch"]
    assert field.key == changed["processid"] and field.detail.startswith("province_state:")


# ----------------------------------------------------------------------------- usage errors


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioscan-io verify: error: "), proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_usage_errors_exit_2_with_one_line(split, tmp_path):
    assert_one_line_error(run_verify(str(tmp_path / "nowhere")), "not found", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_verify(str(empty), "--json"), "no shard manifest", str(empty))
    assert_one_line_error(run_verify(str(split), "--metadata", str(tmp_path / "gone.csv")), "gone.csv")
    (tmp_path / "bad.csv").write_bytes(b"processid,sampleid\n1,2\n")
    assert_one_line_error(run_verify(str(split), "--metadata", str(tmp_path / "bad.csv")), "missing column")
    with pytest.raises(Exception, match="split folder not found"):
        verify_split(tmp_path / "nowhere")



def test_padding_after_the_end_of_image_marker_is_not_damage(split):
    """Bytes after EOI (as some cameras write) pass verify, and the loader decodes the image the same."""
    import random

    from bioscan_io import images as im

    path = shard_path(split, 0)
    members = read_members(path)
    name, original = next((n, d) for n, d in members if n.endswith(".jpg"))
    padded = original + b"\x00" * 20
    write_members(path, [(n, padded if n == name else d) for n, d in members])
    refresh_manifest(split)
    assert "bad_jpeg" not in kinds(verify_split(split))
    for data in (original, padded):
        assert im.has_eoi(data)
    same = [im.stack([im.decode_train(d, 64, random.Random(1))]) for d in (original, padded)]
    assert (same[0] == same[1]).all()
    # Past the slack it is a cut or overwritten tail.
    write_members(path, [(n, original + b"\x00" * 40 if n == name else d) for n, d in members])
    refresh_manifest(split)
    [problem] = only(verify_split(split), "bad_jpeg")
    assert problem.key == name.split(".")[0] and "none in its last 32 bytes" in problem.detail

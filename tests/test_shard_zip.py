"""Sharding straight from the published zip archives: the same shards as from the folders."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from bioscan_io import synth
from bioscan_io.schema import DATASET_DIR, METADATA_CSV, PACKAGES, BioscanError
from bioscan_io.format import LABELS, MISSING_REPORT, read_manifest
from bioscan_io.shard import shard_split
from bioscan_io.sources import find_archives, index_archive

from conftest import cli

QUIET = dict(progress=False, log=lambda m: None)
SHARDING = dict(maxcount=50, workers=2, **QUIET)


def zip_root(dataset: Path, dest: Path) -> Path:
    """A dataset root holding the metadata but no image folder (the archives go beside it)."""
    shutil.copytree(dataset / DATASET_DIR / "metadata", dest / DATASET_DIR / "metadata")
    return dest


def shard_digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard file in a split folder, read back from disk."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def without_source(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "source"}


@pytest.fixture(scope="module")
def from_folder(dataset_small, tmp_path_factory) -> Path:
    """Every record of the small dataset sharded from the extracted folders."""
    out = tmp_path_factory.mktemp("from-folder")
    shard_split(dataset_small, "all", out=out, **SHARDING)
    return out


def assert_same_shards(a: Path, b: Path) -> None:
    """Two ``out`` folders hold the same shard bytes, labels and manifest apart from its source."""
    assert shard_digests(a / "all") == shard_digests(b / "all")
    assert len(shard_digests(a / "all")) > 1
    assert without_source(read_manifest(a / "all")) == without_source(read_manifest(b / "all"))
    assert (a / LABELS).read_bytes() == (b / LABELS).read_bytes()


@pytest.mark.parametrize("parts, where, prefix, compression", [
    (1, ".", True, zipfile.ZIP_STORED),  # BIOSCAN_5M_cropped_256.zip beside bioscan5m/
    (3, DATASET_DIR, True, zipfile.ZIP_STORED),  # .01/.02/.03 parts inside bioscan5m/
    (2, ".", False, zipfile.ZIP_DEFLATED),  # no bioscan5m/ prefix, compressed members
])
def test_archives_found_at_root_give_identical_shards(dataset_small, from_folder, tmp_path, parts, where, prefix,
                                                      compression):
    root = zip_root(dataset_small, tmp_path / "root")
    archives = synth.pack_images(dataset_small, root / where, parts=parts, prefix=prefix, compression=compression)
    assert len(archives) == parts
    summary = shard_split(root, "all", out=tmp_path / "out", **SHARDING)
    assert summary.records == 400
    assert_same_shards(from_folder, tmp_path / "out")
    source = read_manifest(tmp_path / "out" / "all")["source"]
    assert source["images"] == [str(a.resolve()) for a in archives]
    assert "images" not in read_manifest(from_folder / "all")["source"]


def test_images_option_takes_archives_or_a_folder(dataset_small, from_folder, tmp_path):
    archives = synth.pack_images(dataset_small, tmp_path / "downloads", parts=2)
    root = zip_root(dataset_small, tmp_path / "root")
    shard_split(root, "all", out=tmp_path / "zip", images=archives, workers=1, maxcount=50, **QUIET)
    assert_same_shards(from_folder, tmp_path / "zip")
    shard_split(root, "all", out=tmp_path / "dir", images=dataset_small, **SHARDING)
    assert_same_shards(from_folder, tmp_path / "dir")


def test_cli_with_images(dataset_small, from_folder, tmp_path):
    archives = synth.pack_images(dataset_small, tmp_path / "downloads", parts=2)
    proc = subprocess.run(cli("shard", "--root", str(dataset_small), "--split", "all", "--out", str(tmp_path / "out"),
                              "--maxcount", "50", "--workers", "2", "--no-progress",
                              "--images", *map(str, archives)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "400 records" in proc.stdout
    assert_same_shards(from_folder, tmp_path / "out")
    assert read_manifest(tmp_path / "out" / "all")["source"]["images"] == [str(a.resolve()) for a in archives]


def _drop_member(archive: Path, suffix: str) -> None:
    """Rewrite an archive without the member whose name ends with ``suffix``."""
    tmp = archive.with_suffix(".tmp")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith(suffix):
                dst.writestr(info, src.read(info))
    tmp.replace(archive)


def _test_records(root: Path) -> list[str]:
    with open(root / METADATA_CSV, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(",")
        rows = [line.rstrip("\n").split(",") for line in f]
    pid, split = header.index("processid"), header.index("split")
    return sorted(r[pid] for r in rows if r[split] == "test")


def test_missing_image_in_archive_named_or_skipped(dataset_small, tmp_path):
    root = zip_root(dataset_small, tmp_path / "root")
    (archive,) = synth.pack_images(dataset_small, root)
    pids = _test_records(root)
    gone = pids[3]
    _drop_member(archive, f"/test/{gone}.jpg")
    with pytest.raises(BioscanError, match=f"{gone}.*--skip-missing") as err:
        shard_split(root, "test", out=tmp_path / "a", **QUIET)
    assert archive.name in str(err.value)
    s = shard_split(root, "test", out=tmp_path / "b", skip_missing=True, **QUIET)
    assert s.skipped == [gone] and s.records == len(pids) - 1
    assert (Path(s.folder) / MISSING_REPORT).read_text().split() == [gone]


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_truncated_archive_is_a_clear_error(dataset_small, tmp_path):
    (archive,) = synth.pack_images(dataset_small, tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # a download cut short
    proc = subprocess.run(cli("shard", "--root", str(dataset_small), "--split", "val", "--out", str(tmp_path / "o"),
                              "--no-progress", "--images", str(archive)), capture_output=True, text=True, timeout=300)
    _one_line_error(proc, str(archive), "truncated")


def test_damaged_member_is_a_clear_error(dataset_small, tmp_path):
    (archive,) = synth.pack_images(dataset_small, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        info = next(i for i in zf.infolist() if "/val/" in i.filename and i.filename.endswith(".jpg"))
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # one flipped bit pattern in its data
    archive.write_bytes(bytes(data))
    pid = info.filename.rsplit("/", 1)[1][: -len(".jpg")]
    with pytest.raises(BioscanError, match="CRC") as err:
        shard_split(dataset_small, "val", out=tmp_path / "o", images=[archive], **QUIET)
    assert str(archive) in str(err.value) and pid in str(err.value)


def test_not_a_zip_and_missing_archive(dataset_small, tmp_path):
    fake = tmp_path / "BIOSCAN_5M_cropped_256.zip"
    fake.write_bytes(b"<html>download quota exceeded</html>")
    with pytest.raises(BioscanError, match="not a zip archive") as err:
        shard_split(dataset_small, "val", out=tmp_path / "o", images=fake, **QUIET)
    assert str(fake) in str(err.value)
    with pytest.raises(BioscanError, match="not found.*nowhere.zip"):
        shard_split(dataset_small, "val", out=tmp_path / "o", images=[tmp_path / "nowhere.zip"], **QUIET)


def test_discovery_matches_the_official_names_of_the_package(tmp_path):
    names = ["BIOSCAN_5M_cropped_256.zip", "BIOSCAN_5M_cropped.01.zip", "BIOSCAN_5M_cropped.02.zip",
             "BIOSCAN_5M_original_full.01.zip", "BIOSCAN_5M_original_full.05.zip",
             "BIOSCAN_5M_original_256_train.zip", "BIOSCAN_5M_original_256_pretrain.01.zip",
             "BIOSCAN_5M_Insect_Dataset_metadata_MultiTypes.zip", "BIOSCAN_5M_cropped_256.zip.part"]
    (tmp_path / DATASET_DIR).mkdir()
    for i, name in enumerate(names):
        (tmp_path / (DATASET_DIR if i % 2 else ".") / name).touch()
    found = {p: sorted(a.name for a in find_archives(tmp_path, p)) for p in PACKAGES}
    assert found == {
        "original_full": ["BIOSCAN_5M_original_full.01.zip", "BIOSCAN_5M_original_full.05.zip"],
        "cropped": ["BIOSCAN_5M_cropped.01.zip", "BIOSCAN_5M_cropped.02.zip"],
        "original_256": ["BIOSCAN_5M_original_256_pretrain.01.zip", "BIOSCAN_5M_original_256_train.zip"],
        "cropped_256": ["BIOSCAN_5M_cropped_256.zip"],
    }


def test_zip64_archive_with_more_than_65535_members(tmp_path):
    """Past 65,535 members the entry count lives in the zip64 end record only."""
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(70_000):
            zf.writestr(f"bioscan5m/images/cropped_256/pretrain/{i % 256:02x}/P{i}.jpg", str(i))
        zf.writestr("bioscan5m/images/cropped/val/P1.jpg", b"other package")
    keys, members = index_archive(str(path), "cropped_256")
    assert len(keys) == 70_000 and keys[69_999].as_py() == "pretrain/6f/P69999.jpg"
    assert members["size"][69_999] == len("69999")
    with zipfile.ZipFile(path) as zf:
        assert members["offset"][12_345] == zf.getinfo("bioscan5m/images/cropped_256/pretrain/39/P12345.jpg").header_offset


def test_packing_is_reproducible(dataset_small, tmp_path):
    a = synth.pack_images(dataset_small, tmp_path / "a", parts=2)
    b = synth.pack_images(dataset_small, tmp_path / "b", parts=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    names = []
    for path in a:
        with zipfile.ZipFile(path) as zf:
            names.append([n for n in zf.namelist() if n.endswith(".jpg")])
    assert all(n.startswith("bioscan5m/images/cropped_256/") for n in names[0] + names[1])
    assert len(names[0]) == len(names[1]) == 200  # the members cut in two, in name order
    assert names[0][-1] < names[1][0]


def test_verify_images_reads_the_archives_the_shards_came_from(dataset_small, tmp_path):
    """``bioscan-io verify --images`` compares each .jpg with its member of the recorded archives."""
    from bioscan_io.verify import verify_split

    root = zip_root(dataset_small, tmp_path / "root")
    [archive] = synth.pack_images(dataset_small, tmp_path / "downloads", parts=1)
    shard_split(root, "val", out=tmp_path / "out", images=[archive], **SHARDING)
    report = verify_split(tmp_path / "out" / "val", images=True)
    assert report.ok and report.samples == read_manifest(tmp_path / "out" / "val")["num_samples"]
    # Another archive whose image of one record differs: named as a mismatch.
    with zipfile.ZipFile(archive) as src:
        names = src.namelist()
        victim = next(n for n in names if "/val/" in n and n.endswith(".jpg"))
        changed = tmp_path / "changed" / archive.name
        changed.parent.mkdir()
        with zipfile.ZipFile(changed, "w", zipfile.ZIP_STORED) as dst:
            for name in names:
                data = src.read(name)
                if name == victim:  # one bit flipped inside the image
                    data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
                dst.writestr(name, data)
    manifest_path = tmp_path / "out" / "val" / "manifest.json"
    manifest = read_manifest(tmp_path / "out" / "val")
    manifest["source"]["images"] = [str(changed)]
    manifest_path.write_text(json.dumps(manifest))
    problems = [p for p in verify_split(tmp_path / "out" / "val", images=True).problems
                if p.kind == "image_mismatch"]
    assert [p.key for p in problems] == [Path(victim).stem]
    assert "changed" in problems[0].detail

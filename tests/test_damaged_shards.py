"""Issue 25, nothing silently wrong: damage the loader used to hide or miscount.

* an index file that cannot be read is one line naming it, and ``on_error``
  applies to it (permissions: run as an unprivileged user, as root reads every
  file whatever its mode);
* ``loader.skipped`` and ``bioscan-io verify``'s ``missing_record`` count the
  same samples for every damage to a shard, to the sample; where the manifest's
  own count is wrong, they differ by exactly that error;
* a deleted, cut or garbage-appended tar is warned about when a loader opens the
  split, also by the tasks that read only the index (and are served exact data).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from bioscan_io.format import MANIFEST, read_manifest, write_json
from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split

from conftest import private_copy
from test_index import strip_indexes
from bioscan_io.verify import verify_split

QUIET = dict(progress=False, log=lambda m: None)
#: Run as an unprivileged user: root reads files whatever their mode.
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def good(dataset_small, tmp_path_factory) -> Path:
    """The train split of dataset_small in shards of 40 samples (40 and 8), with indexes."""
    out = tmp_path_factory.mktemp("damaged")
    return Path(shard_split(dataset_small, "train", out=out, maxcount=40, **QUIET).folder)


@pytest.fixture
def split(good, tmp_path) -> Path:
    """A private copy of the split folder (and labels.json beside it) to damage."""
    return private_copy(good, tmp_path)


def first(split: Path) -> tuple[Path, dict]:
    """The first shard (40 samples) and its manifest entry."""
    entry = read_manifest(split)["shards"][0]
    assert entry["count"] == 40
    return split / entry["name"], entry


def served(split: Path, task: str = "embed", **kw) -> tuple:
    """One epoch with ``on_error="skip"``: the loader and the distinct records it served (valid rows)."""
    loader = make_loader(split, task, batch_size=8, on_error="skip", **kw)
    keys = set()
    for batch in loader:
        valid = batch["valid"].tolist() if "valid" in batch else [True] * len(batch["processid"])
        keys.update(k for k, ok in zip(batch["processid"], valid) if ok)
    return loader, keys


def records(split: Path) -> set:
    keys = set()
    for entry in read_manifest(split)["shards"]:
        with tarfile.open(split / entry["name"]) as tar:
            keys.update(m.name.split(".", 1)[0] for m in tar)
    return keys


def missing(split: Path) -> set:
    return {p.key for p in verify_split(split).problems if p.kind == "missing_record"}


# ----------------------------------------------------------------------------- 6. an index that cannot be read


def _world_readable(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


@pytest.fixture
def unprivileged() -> list[str]:
    if UNPRIVILEGED and shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run as an unprivileged user")
    probe = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", "import bioscan_io.loader"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"bioscan_io does not import as an unprivileged user: {probe.stderr.strip()[-200:]}")
    return UNPRIVILEGED


#: Run as the unprivileged user: the index must be unreadable to it, then each worker count and policy.
_LOCKED_SCRIPT = textwrap.dedent("""
    import json, sys
    from bioscan_io import make_loader
    from bioscan_io.schema import BioscanError
    folder, index = sys.argv[1:]
    try:
        open(index, "rb")
        sys.exit("the index is readable: the test would prove nothing")
    except PermissionError:
        pass
    for workers in (0, 2):
        for policy in ("raise", "skip"):
            loader = make_loader(folder, "mlm", batch_size=8, num_workers=workers, on_error=policy)
            try:
                n = sum(len(batch["processid"]) for batch in loader)
                print(json.dumps([workers, policy, n, loader.skipped, sorted({m for _, m in loader.errors})]))
            except BioscanError as exc:
                print(json.dumps([workers, policy, "BioscanError: " + str(exc)]))
""")


def test_an_unreadable_index_is_one_line_and_skippable(split, unprivileged):
    folder = Path(tempfile.mkdtemp(prefix="bioscan-locked-index-"))
    try:
        shutil.copytree(split.parent, folder / "shards")
        _world_readable(folder)
        copy = folder / "shards" / "train"
        index = copy / read_manifest(copy)["shards"][0]["index"]["name"]
        index.chmod(0o000)
        (folder / "run.py").write_text(_LOCKED_SCRIPT)
        (folder / "run.py").chmod(0o644)
        proc = subprocess.run([*unprivileged, sys.executable, str(folder / "run.py"), str(copy), str(index)],
                              capture_output=True, text=True, timeout=300)
    finally:
        _world_readable(folder)
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    line = f"cannot read shard index {index}: Permission denied"
    total = read_manifest(split)["num_samples"]
    assert [json.loads(row) for row in proc.stdout.splitlines()] == [
        [0, "raise", f"BioscanError: {line}"], [0, "skip", total, 40, [line]],
        [2, "raise", f"BioscanError: {line}"], [2, "skip", total, 40, [line]],
    ]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["garbage", "cut short"])
def test_an_index_that_is_not_arrow_is_one_line_and_skippable(split, damage):
    _, entry = first(split)
    index = split / entry["index"]["name"]
    data = index.read_bytes()
    index.write_bytes(b"\x00garbage" * (len(data) // 8) if damage == "garbage" else data[:len(data) // 3])
    with pytest.raises(BioscanError, match=rf"^shard index {index} (is corrupt: sha256|has \d+ bytes, the manifest)"):
        list(make_loader(split, "mlm", batch_size=8))
    loader, keys = served(split, "mlm")
    assert loader.skipped == 40 and len(keys) == read_manifest(split)["num_samples"] - 40
    assert all(str(index) in message for _, message in loader.errors)


# ----------------------------------------------------------------------------- 7. skip counts and verify's agree


def _cut_half(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])


def _cut_end_marker(shard: Path) -> None:
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    shard.write_bytes(shard.read_bytes()[:last.offset_data + -(-last.size // 512) * 512])


def _garbage_appended(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes() + b"garbage!" * 200)


def _flip(shard: Path, member: int, at: int) -> None:
    """Flip a bit ``at`` bytes into the header of ``member`` (in tar order): its checksum fails."""
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[member].offset
    data = bytearray(shard.read_bytes())
    data[offset + at] ^= 0x01
    shard.write_bytes(bytes(data))


#: (id, damage to the first shard's tar, records lost to a loader that reads the tar = missing in verify).
TAR_DAMAGE = [
    ("cut in half", _cut_half, 40),
    ("end marker cut", _cut_end_marker, 40),
    ("garbage appended", _garbage_appended, 40),
    ("bad .dna header", lambda shard: _flip(shard, 30, 130), 0),  # sample 10's size field; its payload intact
    ("bad .jpg header name", lambda shard: _flip(shard, 31, 2), 1),  # sample 10's image is not where named
]


@pytest.mark.parametrize("damage,lost", [row[1:] for row in TAR_DAMAGE], ids=[row[0] for row in TAR_DAMAGE])
def test_skip_and_verify_lose_the_same_records(split, damage, lost):
    """With indexes: a tar of another size is skipped whole by the tasks that read images (and verify
    counts its records missing); a damaged header loses only the sample whose image it names."""
    shard, _ = first(split)
    every = records(split)
    damage(shard)
    loader, keys = served(split, "embed")
    gone = missing(split)
    assert loader.skipped == lost and len(gone) == lost
    assert gone == every - keys


def _whole_before(shard: Path, end: int) -> int:
    """Samples of the shard whose members all end before byte ``end``."""
    with tarfile.open(shard) as tar:
        ends = {}
        for m in tar:
            key = m.name.split(".", 1)[0]
            ends[key] = max(ends.get(key, 0), m.offset_data + m.size)
    return sum(1 for last in ends.values() if last <= end)


@pytest.mark.parametrize("damage", ["cut in half", "bad .dna header"])
def test_skip_and_verify_lose_the_same_records_without_an_index(split, damage):
    """Through the tar headers: the samples from the fault on, for both (the whole sample before it is read)."""
    strip_indexes(split)
    shard, _ = first(split)
    every = records(split)
    lost = 40 - _whole_before(shard, shard.stat().st_size // 2) if damage == "cut in half" else 30
    dict((row[0], row[1]) for row in TAR_DAMAGE)[damage](shard)
    loader, keys = served(split, "embed")
    gone = missing(split)
    assert loader.skipped == lost and len(gone) == lost and gone == every - keys


def _recount(split: Path, delta: int) -> None:
    manifest = read_manifest(split)
    manifest["shards"][0]["count"] += delta
    manifest["num_samples"] += delta
    write_json(split / MANIFEST, manifest)


#: (id, format version 1, the manifest's count minus the shard's, skipped, missing in verify).
COUNTS = [
    ("index, 3 more", False, 3, 43, 40),  # the index describes 40: the shard is refused, its 43 promised lost
    ("index, 3 fewer", False, -3, 37, 40),
    ("headers, 3 more", True, 3, 3, 0),  # 40 served, the 3 promised past them are not there
    ("headers, 3 fewer", True, -3, 0, 3),  # 37 served as promised, 3 past them never read
]


@pytest.mark.parametrize("v1,delta,skipped,lost", [row[1:] for row in COUNTS], ids=[row[0] for row in COUNTS])
def test_a_wrong_count_in_the_manifest(split, v1, delta, skipped, lost):
    """``skipped`` counts the samples the manifest promised that were not served; verify counts records.

    They differ by exactly the manifest's error, which verify reports as ``count_mismatch``.
    """
    if v1:
        strip_indexes(split)
    shard, _ = first(split)
    every = records(split)
    _recount(split, delta)
    loader, keys = served(split, "mlm", shuffle=False)
    report = verify_split(split)
    gone = {p.key for p in report.problems if p.kind == "missing_record"}
    assert loader.skipped == skipped and len(gone) == lost and gone == every - keys
    assert skipped - lost == delta
    [count] = [p for p in report.problems if p.kind == "count_mismatch"]
    assert count.detail == f"40 samples, the manifest says {40 + delta}"
    with pytest.raises(BioscanError, match=shard.name):  # never silent: the default policy raises
        list(make_loader(split, "mlm", batch_size=8, shuffle=False))
    if v1 and delta < 0:
        assert loader.errors == [(0, f"shard {shard} holds more samples than the 37 its manifest lists: those past "
                                     f"them are not loaded (bioscan-io verify {split} says how)")]


# ----------------------------------------------------------------------------- 8. damage index-only tasks never see


def _batches(split: Path, task: str, **kw) -> list[dict]:
    return list(make_loader(split, task, batch_size=8, seed=1, **kw))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if isinstance(x[key], torch.Tensor) else x[key] == y[key], key


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bioscan_io" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", ["cut", "deleted"])
def test_damaged_tar_under_mlm_warns_and_serves_exact_data(split, damage, caplog):
    shard, entry = first(split)
    expected = _batches(split, "mlm")
    if damage == "cut":
        _cut_half(shard)
        what = f"has {shard.stat().st_size} bytes, the manifest says {entry['bytes']}"
    else:
        shard.unlink()
        what = "is missing"
    with caplog.at_level(logging.WARNING, logger="bioscan_io"):
        got = _batches(split, "mlm")
        _batches(split, "mlm")  # once per process
    _assert_same(got, expected)
    assert _warnings(caplog) == [f"shard {shard} {what} (`bioscan-io verify {split}` says what is wrong); "
                                 "this task reads only its index, which serves its samples unchanged"]


def test_cut_tar_under_an_image_task(split, caplog):
    shard, entry = first(split)
    _cut_half(shard)
    with caplog.at_level(logging.WARNING, logger="bioscan_io"):
        with pytest.raises(BioscanError, match=rf"^shard {shard} has changed since it was indexed: "):
            _batches(split, "classify", modality="image")
        loader, keys = served(split, "classify", modality="image")
    assert loader.skipped == 40 and len(keys) == read_manifest(split)["num_samples"] - 40
    assert _warnings(caplog)[0] == (
        f"shard {shard} has {shard.stat().st_size} bytes, the manifest says {entry['bytes']} (`bioscan-io verify "
        f"{split}` says what is wrong); this loader reads its tar (images, check_sha256): on_error raises, or skips "
        "all its samples")


def test_deleted_tar_with_check_sha256_is_one_line(split):
    """check_sha256 reads the tar for every task: a deleted one is the shard's error, not an OSError."""
    shard, entry = first(split)
    shard.unlink()
    with pytest.raises(BioscanError, match=rf"^cannot read shard {shard}: No such file or directory$"):
        _batches(split, "mlm", check_sha256=True)
    loader, keys = served(split, "mlm", check_sha256=True)
    assert loader.skipped == 40 and len(keys) == read_manifest(split)["num_samples"] - 40

"""Loader policies for corrupt data: raise naming shard and sample, or skip and count exactly."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.format import TarSink, read_manifest
from bioscan_io.shard import shard_split
from test_index import strip_indexes

QUIET = dict(progress=False, log=lambda m: None)
BATCH = 8


@pytest.fixture(scope="module")
def good(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-data")
    s = shard_split(dataset_small, "train", out=out, maxcount=10, **QUIET)
    return Path(s.folder)


@pytest.fixture
def split(good, tmp_path) -> Path:
    """A private copy of the split folder (and labels.json beside it) to corrupt.

    Without its indexes (a format version 1 split), so that the loader reads every
    member through the tar headers, as it does stock shard lists: the damage
    below is what that reader meets. What the index path meets is in test_index.py.
    """
    dst = tmp_path / "shards" / "train"
    shutil.copytree(good, dst)
    shutil.copy(good.parent / "labels.json", dst.parent / "labels.json")
    strip_indexes(dst)
    return dst


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def rewrite(path: Path, edit) -> None:
    """Rewrite a shard with ``edit(name, data)`` -> (name, data) or None to drop a member."""
    out = []
    for name, data in members(path):
        new = edit(name, data)
        if new is not None:
            out.append(new)
    with open(path, "wb") as f:
        sink = TarSink(f)
        for name, data in out:
            sink.add(name, data)
        sink.close()


def first_shard(split: Path) -> tuple[Path, list[str]]:
    shard = split / read_manifest(split)["shards"][0]["name"]
    keys = []
    for name, _ in members(shard):
        key = name.split(".", 1)[0]
        if key not in keys:
            keys.append(key)
    return shard, keys


def run(split: Path, task: str, on_error: str, **kw):
    loader = make_loader(split, task, batch_size=BATCH, on_error=on_error, **kw)
    seen, batches = [], 0
    for batch in loader:
        seen.extend(batch["processid"])
        batches += 1
    return loader, seen, batches


def check_skip(split: Path, task: str, lost: int | None = None, shard_keys=(), **kw) -> set:
    """Skip policy: the epoch finishes with every planned batch, and the count is exact.

    Returns the distinct keys delivered; with ``lost=None`` the exact count is
    checked against the keys of ``shard_keys`` that never arrived.
    """
    total = read_manifest(split)["num_samples"]
    loader, seen, batches = run(split, task, "skip", **kw)
    delivered = set(seen)
    if lost is None:
        lost = len(set(shard_keys) - delivered)
    assert loader.skipped == lost, loader.errors
    assert len(delivered) == total - lost  # every good sample arrives
    assert batches == len(loader) and len(seen) == total  # good samples stand in: DDP-safe counts
    return delivered


CASES = {
    "corrupt JPEG": ("jpg", lambda data: data[:200] + b"\x00garbage" * 50),
    "bad JSON": ("json", lambda data: b'{"processid": "x", broken'),
    "rank that is not a string": ("json", lambda data: json.dumps({**json.loads(data), "species": 5}).encode()),
    "JSON that is not an object": ("json", lambda data: b"[1, 2]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_member(split, case):
    ext, spoil = CASES[case]
    shard, keys = first_shard(split)
    victim = keys[3]
    rewrite(shard, lambda name, data: (name, spoil(data)) if name == f"{victim}.{ext}" else (name, data))
    kw = {"modality": "image"} if ext == "jpg" else {}
    with pytest.raises(BioscanError) as err:
        run(split, "classify", "raise", **kw)
    assert shard.name in str(err.value) and victim in str(err.value)
    check_skip(split, "classify", 1, **kw)


@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_sample_missing_a_member(split, task):
    shard, keys = first_shard(split)
    victim = keys[5]
    rewrite(shard, lambda name, data: None if name == f"{victim}.dna" else (name, data))
    with pytest.raises(BioscanError, match=rf"{shard.name}: sample {victim} has no \.dna member"):
        run(split, task, "raise")
    check_skip(split, task, 1)


@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_truncated_tar(split, task):
    shard, keys = first_shard(split)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 700])
    with pytest.raises(BioscanError, match=shard.name):
        run(split, task, "raise")
    delivered = check_skip(split, task, shard_keys=keys)
    # Samples before the cut still arrive; the rest of the shard is counted as lost.
    assert 0 < len(delivered & set(keys)) < len(keys)


@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_corrupt_header(split, task):
    shard, keys = first_shard(split)
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x21  # the first member's name: its header checksum fails
    shard.write_bytes(bytes(data))
    with pytest.raises(BioscanError, match=shard.name):
        run(split, task, "raise")
    check_skip(split, task, len(keys))


@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_manifest_that_does_not_match_its_shards(split, task):
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["shards"][0]["count"] += 3
    manifest["num_samples"] += 3
    (split / "manifest.json").write_text(json.dumps(manifest))
    shard = split / manifest["shards"][0]["name"]
    with pytest.raises(BioscanError, match=rf"{shard.name} ends after sample"):
        run(split, task, "raise", shuffle=False)
    check_skip(split, task, 3, shuffle=False)


def test_bad_policy_name(split):
    with pytest.raises(BioscanError, match="on_error"):
        make_loader(split, "mlm", on_error="ignore")


def test_skips_reach_the_main_process_from_workers(split):
    shard, keys = first_shard(split)
    rewrite(shard, lambda name, data: None if name == f"{keys[0]}.dna" else (name, data))
    loader = make_loader(split, "mlm", batch_size=BATCH, num_workers=2, on_error="skip")
    n = sum(len(b["processid"]) for b in loader)
    assert loader.skipped == 1 and n == read_manifest(split)["num_samples"]
    assert keys[0] in loader.errors[0][1]


def _without_quantization_tables(jpeg: bytes) -> bytes:
    """A JPEG whose headers parse but whose pixels cannot be decoded (no DQT segment)."""
    out, i = bytearray(jpeg[:2]), 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            return bytes(out + jpeg[i:])
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker != 0xDB:
            out += jpeg[i:i + 2 + length]
        i += 2 + length
    raise AssertionError("no start of scan")


@pytest.mark.parametrize("train", [True, False])
def test_jpeg_damage_only_the_decoder_sees(split, train):
    """Images are decoded while the batch is stacked: the policy must hold there too."""
    shard, keys = first_shard(split)
    victim = keys[2]
    rewrite(shard, lambda name, data: (name, _without_quantization_tables(data)) if name == f"{victim}.jpg"
            else (name, data))
    with pytest.raises(BioscanError) as err:
        run(split, "clip", "raise", train=train)
    assert shard.name in str(err.value) and victim in str(err.value)
    check_skip(split, "clip", 1, train=train)


def _damage(split: Path) -> int:
    """Remove one shard (tar and index) and cut another to zero bytes; the samples they held."""
    entries = read_manifest(split)["shards"]
    for i, entry in enumerate(entries[1:3]):
        for name in (entry["name"], entry.get("index", {}).get("name")):
            if name and (split / name).exists():
                if i == 0:
                    (split / name).unlink()
                else:
                    (split / name).write_bytes(b"")
    return entries[1]["count"] + entries[2]["count"]


def _padding_in(split: Path, seed: int, world: int, damaged: set, epoch: int = 0) -> int:
    """Padding positions of the epoch (repeats from the stream's start) that fall in ``damaged`` shards."""
    from bioscan_io import plan

    entries = read_manifest(split)["shards"]
    counts = [e["count"] for e in entries]
    total = sum(counts)
    order = plan.shard_order(len(counts), seed, epoch, True)
    extra = plan.segments(counts, order, total, world * -(-total // world))
    return sum(seg.stop - seg.start for seg in extra if entries[seg.shard]["name"] in damaged)


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("task,kw", [("mlm", {}), ("classify", {"modality": "image"})])
def test_skip_never_kills_a_rank(good, tmp_path, indexed, task, kw):
    """3 ranks x 2 workers over a split with a missing and a zero-byte shard: full batches, exact counts."""
    split = tmp_path / "shards" / "train"
    shutil.copytree(good, split)
    shutil.copy(good.parent / "labels.json", split.parent / "labels.json")
    if not indexed:
        strip_indexes(split)
    lost = _damage(split)
    damaged = {e["name"] for e in read_manifest(split)["shards"][1:3]}
    total = read_manifest(split)["num_samples"]
    for seed in (0, 1, 2):
        skipped = 0
        for rank in range(3):
            loader = make_loader(split, task, batch_size=8, num_workers=2, seed=seed, rank=rank, world_size=3,
                                 on_error="skip", **kw)
            sizes = [len(b["processid"]) for b in loader]
            assert len(sizes) == len(loader)
            assert sum(sizes) == -(-total // 3)
            skipped += loader.skipped
        assert skipped == lost + _padding_in(split, seed, 3, damaged), seed


def test_a_split_with_no_readable_sample_raises_on_every_rank(split):
    for entry in read_manifest(split)["shards"]:
        (split / entry["name"]).write_bytes(b"")
        if entry.get("index"):
            (split / entry["index"]["name"]).write_bytes(b"")
    for rank in range(2):
        loader = make_loader(split, "mlm", batch_size=8, rank=rank, world_size=2, on_error="skip")
        with pytest.raises(BioscanError, match=r"no sample of the split at .* could be read"):
            list(loader)


def test_skip_under_torchrun_no_rank_raises(good, tmp_path):
    """gloo, 3 ranks x 2 workers, a missing and a zero-byte shard, two epochs (two shard orders)."""
    from test_loader import _torchrun

    split = tmp_path / "shards" / "train"
    shutil.copytree(good, split)
    shutil.copy(good.parent / "labels.json", split.parent / "labels.json")
    lost = _damage(split)
    damaged = {e["name"] for e in read_manifest(split)["shards"][1:3]}
    results = _torchrun(split, tmp_path / "out", 3, 2, batch=BATCH, task="mlm:skip")
    for epoch in range(2):
        assert len({r["epochs"][epoch]["batches"] for r in results} | {r["len"] for r in results}) == 1
        skipped = sum(r["epochs"][epoch]["skipped"] for r in results)
        assert skipped == lost + _padding_in(split, 3, 3, damaged, epoch)

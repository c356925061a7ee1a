"""The compiled tar walk gives exactly what stock webdataset reads, or a clear error."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from bioscan_io.distributed import Segment
from bioscan_io.format import block_bounds, local_blocks, read_manifest, scan
from bioscan_io.loader import ErrorPolicy, read_blocks
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split


@pytest.fixture(scope="module")
def shard(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tarscan")
    s = shard_split(dataset_small, "all", out=out, maxcount=150, progress=False, log=lambda m: None)
    return Path(s.folder) / read_manifest(s.folder)["shards"][0]["name"]


def read_column(path: str, start: int, stop: int, ext: str):
    """``(block, keys missing the member, error)``: one member of samples ``start <= i < stop``, in one block."""
    block, missing, error = next(local_blocks(path, start, stop, (ext,)))
    return block, [key for key, _ in missing], error


def stock(path) -> list[dict]:
    return list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))


def test_ranges_equal_stock_webdataset(shard):
    samples = stock(shard)
    rng = np.random.default_rng(0)
    ranges = [(0, len(samples)), (0, 1), (len(samples) - 1, len(samples)), (10, 10)]
    ranges += [tuple(sorted(rng.integers(0, len(samples) + 1, 2))) for _ in range(20)]
    for start, stop in ranges:
        block, missing, error = read_column(str(shard), int(start), int(stop), "dna")
        assert missing == [] and error is None
        assert block["__key__"].to_pylist() == [s["__key__"] for s in samples[start:stop]]
        assert block["dna"].to_pylist() == [s["dna"] for s in samples[start:stop]]
        jpg, _, _ = read_column(str(shard), int(start), int(stop), "jpg")
        assert jpg["jpg"].to_pylist() == [s["jpg"] for s in samples[start:stop]]


def _pax_shard(path: Path, n: int) -> None:
    """A shard as Python's tarfile writes it with long (pax) names."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            key = f"{'x' * 120}{i:04d}"
            for ext, data in (("dna", b"ACGT" * (i + 1)), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_pax_headers_fall_back_to_the_python_reader(tmp_path):
    path = tmp_path / "pax.tar"
    _pax_shard(path, 5)
    assert scan(str(path), 0, 5, ("dna",)) is None
    (block,) = read_blocks([Segment(0, 1, 4)], [str(path)], ("dna",), ErrorPolicy("raise"))
    want = stock(path)[1:4]
    assert block["__key__"].to_pylist() == [s["__key__"] for s in want]
    assert block["dna"].to_pylist() == [s["dna"] for s in want]


def test_corrupt_header_is_named(shard, tmp_path):
    data = bytearray(shard.read_bytes())
    bad = tmp_path / "bad.tar"
    data[512 * 3 + 3] ^= 0x40  # a name byte of a later header: its checksum no longer holds
    bad.write_bytes(bytes(data))
    block, _, error = read_column(str(bad), 0, 100, "dna")
    assert re.search(r"bad\.tar: corrupt header \(bad checksum\) at byte", str(error))
    assert len(block["dna"]) == 1  # the sample before the bad header


def test_truncated_shard_is_named(shard, tmp_path):
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    assert re.search(r"cut\.tar: truncated member", str(read_column(str(cut), 0, 150, "dna")[2]))
    cut.write_bytes(data[: len(data) // 2 // 512 * 512])
    assert "cut.tar" in str(read_column(str(cut), 0, 150, "dna")[2])


def test_fewer_samples_than_asked(shard):
    n = len(stock(shard))
    block, _, error = read_column(str(shard), 0, n + 5, "dna")
    assert f"ends after sample {n}" in str(error) and len(block["dna"]) == n


def test_sample_without_the_member(tmp_path):
    path = tmp_path / "gap.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, exts in (("a", ("dna", "json")), ("b", ("json",)), ("c", ("dna",))):
            for ext in exts:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = 4
                tar.addfile(info, io.BytesIO(b"ACGT"))
    block, missing, _ = read_column(str(path), 0, 3, "dna")
    assert missing == ["b"] and block["__key__"].to_pylist() == ["a", "c"]
    with pytest.raises(BioscanError, match="sample b has no .dna member"):
        list(read_blocks([Segment(0, 0, 3)], [str(path)], ("dna",), ErrorPolicy("raise")))


def _pax_or(shard: Path, tmp_path: Path, pax: bool) -> Path:
    """The project's shard (compiled walk), or a 23-sample pax shard (the Python reader)."""
    if not pax:
        return shard
    path = tmp_path / "pax.tar"
    _pax_shard(path, 23)
    return path


@pytest.mark.parametrize("pax", [False, True])
def test_blocks_are_bounded_and_complete(shard, tmp_path, pax):
    """A segment is read in blocks of at most ``max_rows`` samples, together exactly the segment."""
    path = _pax_or(shard, tmp_path, pax)
    want = stock(path)[2:21]
    blocks = list(read_blocks([Segment(0, 2, 21)], [str(path)], ("dna", "json"), ErrorPolicy("raise"), max_rows=4))
    assert [len(b["__key__"]) for b in blocks] == [4, 4, 4, 4, 3]
    assert [k for b in blocks for k in b["__key__"].to_pylist()] == [s["__key__"] for s in want]
    assert [d for b in blocks for d in b["json"].to_pylist()] == [s["json"] for s in want]
    assert all(b["__shard__"].to_pylist() == [0] * len(b["__key__"]) for b in blocks)


def test_block_bounds_respect_rows_and_bytes():

    sizes = np.array([5, 5, 50, 5, 5, 5, 100, 1])
    assert block_bounds(sizes, None, None) == [(0, 8)]
    assert block_bounds(sizes, 3, None) == [(0, 3), (3, 6), (6, 8)]
    # At most 20 bytes a block, but never an empty block: a larger sample stands alone.
    assert block_bounds(sizes, None, 20) == [(0, 2), (2, 3), (3, 6), (6, 7), (7, 8)]
    assert block_bounds(sizes, 2, 20) == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    assert block_bounds(np.zeros(0, np.int64), 4, 20) == [(0, 0)]


@pytest.mark.parametrize("pax", [False, True])
def test_blocks_are_bounded_in_bytes(shard, tmp_path, pax):
    path = _pax_or(shard, tmp_path, pax)
    want = stock(path)[:20]
    limit = 3 * max(len(s["dna"]) for s in want)
    blocks = list(read_blocks([Segment(0, 0, 20)], [str(path)], ("dna",), ErrorPolicy("raise"), max_bytes=limit))
    assert len(blocks) > 1
    assert all(sum(len(d) for d in b["dna"].to_pylist()) <= limit for b in blocks)
    assert [k for b in blocks for k in b["__key__"].to_pylist()] == [s["__key__"] for s in want]

"""The compiled tar walk gives exactly what stock webdataset reads, or a clear error."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from bioscan_io.format import read_manifest, scan, take_local
from bioscan_io.reader import ErrorPolicy, ShardSet, read_rows
from bioscan_io.storage import LocalCopies
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split


@pytest.fixture(scope="module")
def shard(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tarscan")
    s = shard_split(dataset_small, "all", out=out, maxcount=150, progress=False, log=lambda m: None)
    return Path(s.folder) / read_manifest(s.folder)["shards"][0]["name"]


def read_column(path: str, start: int, stop: int, ext: str):
    """``(block, keys missing the member, error)``: one member of samples ``start <= i < stop``, in one block."""
    block, kept, missing, error = take_local(path, np.arange(start, stop), (ext,))
    assert len(kept) == len(block["__key__"])
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
    block, _ = rows_of(path, [1, 2, 3], ("dna",), ErrorPolicy("raise"))
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
        rows_of(path, [0, 1, 2], ("dna",), ErrorPolicy("raise"))


def _pax_or(shard: Path, tmp_path: Path, pax: bool) -> Path:
    """The project's shard (compiled walk), or a 23-sample pax shard (the Python reader)."""
    if not pax:
        return shard
    path = tmp_path / "pax.tar"
    _pax_shard(path, 23)
    return path


def rows_of(path: Path, rows, exts, errors: ErrorPolicy):
    """The loader's read of ``rows`` of one shard (no index): ``(block, kept)``."""
    shards = ShardSet([str(path)], [len(rows)])
    copies = LocalCopies()
    try:
        return read_rows(shards, 0, np.asarray(rows), exts, errors, copies)
    finally:
        copies.close()


@pytest.mark.parametrize("pax", [False, True])
def test_rows_in_any_order_with_repeats(shard, tmp_path, pax):
    """Rows are read in the order asked, repeats included, from one walk over their range."""
    path = _pax_or(shard, tmp_path, pax)
    want = stock(path)
    rows = np.array([7, 2, 19, 2, 11, 3, 20, 2])
    block, kept = rows_of(path, rows, ("dna", "json"), ErrorPolicy("raise"))
    assert kept.tolist() == list(range(len(rows)))
    assert block["__key__"].to_pylist() == [want[r]["__key__"] for r in rows]
    assert block["json"].to_pylist() == [want[r]["json"] for r in rows]
    assert block["__shard__"].to_pylist() == [0] * len(rows)


def test_rows_past_the_end_are_lost_to_the_error(shard):
    n = len(stock(shard))
    errors = ErrorPolicy("skip")
    block, kept = rows_of(shard, [n + 3, 0, n, 5], ("dna",), errors)
    assert kept.tolist() == [1, 3] and len(block["dna"]) == 2
    (lost, message), = errors.drain()
    assert lost == 2 and f"ends after sample {n}" in message

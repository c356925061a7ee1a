"""Fuzzing every parser the project owns: tar reading (compiled and Python) and metadata.

Random, truncated and bit-flipped inputs must end in a result or a clear
``BioscanError`` naming the file — never a crash, another exception or a hang.
The CI run is short; the long run is::

    BIOSCAN_FUZZ_N=20000 pytest tests/test_fuzz_parsers.py -q

(the tokenizer's own fuzzing is tests/test_tokenizer_fuzz.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bioscan_io.format import TarReader, read_manifest, take_local
from bioscan_io.reader import ErrorPolicy, ShardSet, read_rows
from bioscan_io.storage import LocalCopies
from bioscan_io.metadata import read_metadata
from bioscan_io.schema import METADATA_CSV, METADATA_JSONLD, BioscanError
from bioscan_io.shard import shard_split

N = int(os.environ.get("BIOSCAN_FUZZ_N", "300"))


def mutations(data: bytes, rng: np.random.Generator, n: int):
    """Truncations, bit flips, byte runs and random bytes derived from ``data``."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield data[: int(rng.integers(0, len(data) + 1))]
        elif kind == 1:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 8))):
                pos = int(rng.integers(0, len(b)))
                b[pos] ^= 1 << int(rng.integers(0, 8))
            yield bytes(b)
        elif kind == 2:
            b = bytearray(data)
            pos = int(rng.integers(0, len(b)))
            b[pos:pos + int(rng.integers(1, 600))] = bytes([int(rng.integers(0, 256))]) * int(rng.integers(1, 600))
            yield bytes(b)
        else:
            yield rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def small_shard(dataset_small, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("fuzz-shard")
    s = shard_split(dataset_small, "val", out=out, maxcount=6, progress=False, log=lambda m: None)
    return (Path(s.folder) / read_manifest(s.folder)["shards"][0]["name"]).read_bytes()


def test_tar_readers_survive_mutated_shards(small_shard, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "fuzz.tar"
    errors = ErrorPolicy("skip")
    for data in mutations(small_shard, rng, N):
        path.write_bytes(data)
        block, kept, missing, error = take_local(str(path), np.arange(6), ("dna",))
        assert len(block["dna"]) == len(kept) and len(kept) + len(missing) <= 6
        assert error is None or "fuzz.tar" in str(error)
        rows = rng.permutation(6)
        block, kept = read_rows(ShardSet([str(path)], [6]), 0, rows, ("dna", "json"), errors, LocalCopies())
        lost = sum(n for n, _ in errors.drain())
        assert len(block["__key__"]) == len(kept) and len(kept) + lost == 6  # every sample delivered or counted
        reader = TarReader(str(path))
        samples = list(reader.samples(0, 6, frozenset(["dna", "json"])))
        assert len(samples) <= 6
        assert reader.error() is None or "fuzz.tar" in str(reader.error())


def test_metadata_reader_survives_mutated_files(dataset_small, tmp_path):
    rng = np.random.default_rng(2)
    csv_text = (dataset_small / METADATA_CSV).read_bytes()
    jsonld = (dataset_small / METADATA_JSONLD).read_bytes()
    # Keep the files small so that many mutations run quickly.
    head = b"\n".join(csv_text.split(b"\n")[:40]) + b"\n"
    json_head = jsonld[:20000]
    for name, data in (("m.csv", head), ("m.jsonld", json_head)):
        path = tmp_path / name
        for mutated in mutations(data, rng, N // 3):
            path.write_bytes(mutated)
            try:
                table = read_metadata(path)
            except BioscanError as exc:
                assert str(path) in str(exc)
            else:
                assert table.num_columns == 23


def test_cached_metadata_reader_survives_mutated_csv(dataset_small, tmp_path):
    rng = np.random.default_rng(3)
    head = b"\n".join((dataset_small / METADATA_CSV).read_bytes().split(b"\n")[:30]) + b"\n"
    for i, mutated in enumerate(mutations(head, rng, max(N // 10, 8))):
        path = tmp_path / f"m{i}.csv"
        path.write_bytes(mutated)
        try:
            read_metadata(path, cache_dir=tmp_path / "cache")
        except BioscanError as exc:
            assert str(path) in str(exc)
        assert not list((tmp_path / "cache").glob("*.tmp-*"))
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_image_decoder_survives_mutated_jpegs(dataset_small):
    """images.py parses JPEG headers itself (size, rows to decode): fuzz it with the decoder."""
    import random

    from bioscan_io import images as im

    jpeg = next((dataset_small / "bioscan5m" / "images" / "cropped_256" / "val").glob("*.jpg")).read_bytes()
    rng = np.random.default_rng(4)
    for i, data in enumerate(mutations(jpeg, rng, N)):
        try:
            if i % 2:
                prepared = im.decode_train(data, 64, random.Random(i), where="fuzz.jpg")
            else:
                prepared = im.decode_eval(data, 64, 72, where="fuzz.jpg")
            batch = im.stack([prepared])
            assert tuple(batch.shape) == (1, 3, 64, 64)
        except BioscanError as exc:
            assert "fuzz.jpg" in str(exc)

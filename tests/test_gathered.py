"""Gathered columns: rows of Arrow arrays read in place give what the same rows taken (copied) give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from bioscan_io.gathered import Column, Gathered, concat
from bioscan_io.loader import make_loader
from bioscan_io.shard import shard_split
from bioscan_io.tokenizer import KmerTokenizer, processid_keys
from bioscan_io.vocab_tokenizer import VocabTokenizer

RNG = np.random.default_rng(5)


def _barcodes(n: int) -> pa.Array:
    values = ["".join(RNG.choice(list("ACGTN-"), size=RNG.integers(0, 700))) for _ in range(n)]
    values[3] = None  # a null reads as an empty barcode
    return pa.array(values, pa.string())


@pytest.fixture(scope="module")
def arrays():
    dna, ids = _barcodes(300), pa.array([f"ID{i:05d}-{i % 7}" for i in range(300)], pa.string())
    rows = RNG.permutation(300)[:250]
    return dna, ids, rows


@pytest.mark.parametrize("kept", [False, True])
def test_tokens_and_masks_equal_those_of_the_taken_rows(arrays, kept):
    dna, ids, rows = arrays
    taken = pa.array(rows, pa.int64())
    seqs = Gathered.of(Column(dna) if kept else dna, rows)
    keys = Gathered.of(Column(ids) if kept else ids, rows)
    tok = KmerTokenizer(k=4, max_len=660)
    got = tok.encode_mlm(seqs, keys, seed=3, epoch=2, mask_ratios=(0.8, 0.1, 0.1), random_offset=True)
    want = tok.encode_mlm(dna.take(taken), ids.take(taken), seed=3, epoch=2, mask_ratios=(0.8, 0.1, 0.1),
                          random_offset=True)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert all(np.array_equal(a, b) for a, b in zip(tok.encode(seqs), tok.encode(dna.take(taken))))
    assert np.array_equal(processid_keys(keys), processid_keys(ids.take(taken)))


@pytest.mark.parametrize("kind", [pa.string(), pa.large_binary()])
def test_a_kept_column_of_a_slice_reads_its_own_rows(arrays, kind):
    _, ids, _ = arrays
    part = ids.cast(kind).slice(7, 100)  # offsets into its parent's buffers
    rows = RNG.permutation(100)[:60]
    (chunk,) = Gathered.of(Column(part), rows).chunks("x")
    got = [bytes(chunk.data[a:z]) for a, z in zip(chunk.starts, chunk.ends)]
    assert got == [v.encode() for v in ids.slice(7, 100).take(pa.array(rows)).to_pylist()]


def test_a_vocabulary_tokenizer_reads_them_too(arrays):
    dna, ids, rows = arrays
    tok = VocabTokenizer(["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T"], max_len=100)
    got = tok.encode_mlm(Gathered.of(dna, rows), Gathered.of(Column(ids), rows), seed=1)
    want = tok.encode_mlm(dna.take(pa.array(rows)), ids.take(pa.array(rows)), seed=1)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_take_filter_and_concat_are_pyarrows(arrays):
    _, ids, rows = arrays
    other = pa.chunked_array([pa.array(["x", "y"], pa.large_string()), pa.array(["z"], pa.large_string())])
    joined = concat([Gathered.of(ids, rows[:10]), other, Gathered.of(Column(ids), rows[10:20])])
    want = ids.take(pa.array(rows[:10])).to_pylist() + ["x", "y", "z"] + ids.take(pa.array(rows[10:20])).to_pylist()
    assert len(joined) == 23 and joined.to_pylist() == want
    assert joined.to_arrow().type == pa.string() and joined.to_arrow().to_pylist() == want  # cast to the first
    pick = np.array([22, 0, 11, 11, 12, 3])
    assert joined.take(pa.array(pick)).to_pylist() == [want[i] for i in pick]
    mask = RNG.random(23) < 0.5
    assert joined.filter(pa.array(mask)).to_pylist() == [w for w, m in zip(want, mask) if m]
    empty = joined.take(np.zeros(0, np.int64))
    assert len(empty) == 0 and empty.to_arrow().type == pa.string() and empty.chunks("x")[0].starts.size == 0


def test_python_strings_are_those_of_the_taken_rows(arrays):
    """to_pylist makes each row's str from its bytes (compiled): what take + to_pylist gives, every kind of piece
    -- kept columns and bare arrays, large strings, empty and non-ASCII rows, a slice, nulls and binary (Arrow's
    own conversion)."""
    dna, ids, rows = arrays
    odd = pa.array(["", "é-ü", "BIOUG1234-A01", "", "日本", "x"] * 20, pa.large_string()).slice(3, 100)
    pick = RNG.permutation(100)[:60]
    parts = [Gathered.of(Column(ids), rows), Gathered.of(ids, rows[:40]), Gathered.of(odd, pick), Gathered.of(odd)]
    for part in parts:
        arrow, taken = part.pieces[0].array, part.pieces[0].rows
        want = (arrow if taken is None else arrow.take(pa.array(taken))).to_pylist()
        assert part.to_pylist() == want
    nulls = Gathered.of(dna, rows)  # row 3 is null: None, as Arrow says
    assert nulls.to_pylist() == dna.take(pa.array(rows)).to_pylist() and None in nulls.to_pylist()
    binary = pa.array([b"\xff\x00", b"ab"], pa.binary())
    assert Gathered.of(binary, np.array([1, 0])).to_pylist() == [b"ab", b"\xff\x00"]


def test_the_string_kernel_refuses_rows_outside_its_data():
    from bioscan_io import _kmer

    data = np.frombuffer(b"abcdef", np.uint8)
    assert _kmer.utf8_strings(data, np.array([0, 2, 6]), np.array([2, 6, 6])) == ["ab", "cdef", ""]
    for starts, ends in (([0], [7]), ([-1], [2]), ([3], [2])):
        with pytest.raises(IndexError, match="outside the 6 bytes"):
            _kmer.utf8_strings(data, np.array(starts), np.array(ends))
    with pytest.raises(UnicodeDecodeError):
        _kmer.utf8_strings(np.frombuffer(b"\xff", np.uint8), np.array([0]), np.array([1]))


@pytest.mark.parametrize("bad", [[-1], [300], [0, 5, 1000]])
def test_rows_outside_the_array_are_refused(arrays, bad):
    dna, _, _ = arrays
    with pytest.raises(IndexError):
        Gathered.of(dna, np.array(bad))
    with pytest.raises(IndexError):
        Gathered.of(dna, np.arange(5)).take(np.array(bad))


class ArrowOnly:
    """A tokenizer of the user's own: KmerTokenizer's interface, and it has never heard of Gathered."""

    def __init__(self):
        self.inner = KmerTokenizer(k=4)
        self.n_tokens = self.inner.n_tokens

    def encode(self, seqs, **kw):
        assert isinstance(seqs, (pa.Array, pa.ChunkedArray))
        return self.inner.encode(seqs, **kw)

    def encode_mlm(self, seqs, processids, **kw):
        assert isinstance(seqs, (pa.Array, pa.ChunkedArray)) and isinstance(processids, (pa.Array, pa.ChunkedArray))
        return self.inner.encode_mlm(seqs, processids, **kw)


def test_a_users_tokenizer_gets_arrow_arrays(dataset_small, tmp_path):
    shard_split(dataset_small, "all", out=tmp_path, maxcount=60, progress=False, log=lambda m: None)
    for task in ("mlm", "classify"):
        ours = list(make_loader(tmp_path / "all", task, batch_size=50, seed=2, epoch=1))
        theirs = list(make_loader(tmp_path / "all", task, batch_size=50, seed=2, epoch=1, tokenizer=ArrowOnly()))
        assert len(ours) == len(theirs) > 1
        for a, b in zip(ours, theirs):
            assert a["processid"] == b["processid"]
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))

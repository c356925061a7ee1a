"""Hypothesis strategies and helpers shared by the tokenizer tests (imported by them)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

# Bytes a barcode file can hold, and worse: bases, N, lowercase, IUPAC codes, gap,
# controls, non-ASCII (alone or as UTF-8 lead/continuation bytes).
BASES = b"ACGT"
ODD = b"Nacgtn" + b"RYKMSWBDHVU-.* " + bytes([0, 1, 0x7F, 0x80, 0xC3, 0xA9, 0xFF])

_symbol = st.one_of(
    st.sampled_from(list(BASES)),
    st.sampled_from(list(BASES)),
    st.sampled_from(list(BASES)),
    st.sampled_from(list(ODD)),
)
_run = st.tuples(_symbol, st.integers(1, 12)).map(lambda r: bytes([r[0]]) * r[1])


@st.composite
def sequence(draw, max_len: int, k: int) -> bytes:
    """One sequence, biased towards the lengths where the rules change."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        s = draw(st.binary(max_size=3 * max_len + 2 * k + 4))
    elif kind == 1:
        s = bytes(draw(st.lists(_symbol, max_size=3 * max_len + 2 * k + 4)))
    else:
        s = b"".join(draw(st.lists(_run, max_size=max(1, (3 * max_len) // 6 + 2))))
    edges = [0, 1, k - 1, k, k + 1, max_len - 1, max_len, max_len + 1, max_len + k, 3 * max_len + 7]
    if draw(st.booleans()):
        target = max(0, draw(st.sampled_from(edges)))
        fill = draw(st.sampled_from([b"A", b"C", b"G", b"T", b"N", b"ACGT"]))
        s = (s + fill * (target + 1))[:target]
    return s


@st.composite
def batch(draw, k: int, max_len_max: int = 48) -> dict:
    """A batch of sequences with its tokenizer settings."""
    max_len = draw(st.one_of(st.integers(0, max_len_max), st.sampled_from([k - 1, k, 2 * k, 4 * k + 1])))
    max_len = max(0, max_len)
    seqs = draw(st.lists(sequence(max_len, k), min_size=0, max_size=6))
    offsets = None
    if draw(st.booleans()):
        offsets = draw(st.lists(st.integers(0, 2 * k + 3), min_size=len(seqs), max_size=len(seqs)))
    return {
        "k": k,
        "max_len": max_len,
        "seqs": seqs,
        "offsets": offsets,
        "n_as_base": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.int32, np.int64])),
        "form": draw(st.sampled_from(["bytes", "str", "object", "arrow_binary", "arrow_string", "chunked"])),
    }


def as_form(seqs: list, form: str):
    """The same sequences in one of the input forms the tokenizer accepts.

    Returns (values to tokenize, the equivalent list for the reference): str forms
    decode bytes as Latin-1, so non-ASCII bytes become 2-byte UTF-8 characters on
    both sides.
    """
    if form == "bytes":
        return list(seqs), list(seqs)
    if form in ("str", "arrow_string"):
        strs = [s.decode("latin-1") for s in seqs]
        return (strs if form == "str" else pa.array(strs, type=pa.string())), strs
    if form == "object":
        arr = np.empty(len(seqs), dtype=object)
        arr[:] = list(seqs)
        return arr, list(seqs)
    if form == "arrow_binary":
        return pa.array(list(seqs), type=pa.binary()), list(seqs)
    if form == "chunked":
        half = len(seqs) // 2
        return pa.chunked_array([seqs[:half], seqs[half:]], type=pa.large_binary()), list(seqs)
    raise ValueError(form)


def test_forms_hold_the_same_sequences():
    seqs = [b"ACGT", b"", b"\xff\xc3N", b"acgt"]
    for form in ("bytes", "str", "object", "arrow_binary", "arrow_string", "chunked"):
        values, ref = as_form(seqs, form)
        assert len(values) == len(ref) == len(seqs)

"""KmerTokenizer.encode, vocabulary and inputs, checked against bioscan_io.testing.oracle."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioscan_io.schema import MAX_NUCLEOTIDES, BioscanError
from bioscan_io.testing import oracle as ref
from bioscan_io.tokenizer import IGNORE_INDEX, MASK_ID, UNK_ID, KmerTokenizer, processid_keys
from test_tokenizer_strategies import as_form, batch

ALL_K = list(range(1, 9))
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def check_against_reference(b: dict) -> None:
    tok = KmerTokenizer(k=b["k"], max_len=b["max_len"], n_as_base=b["n_as_base"])
    values, seqs = as_form(b["seqs"], b["form"])
    ids, att = tok.encode(values, offsets=b["offsets"], dtype=b["dtype"])
    want_ids, want_att = ref.encode(seqs, b["k"], b["max_len"], b["offsets"], b["n_as_base"])
    n, T = len(seqs), b["max_len"] // b["k"]
    assert ids.shape == att.shape == (n, T)
    assert ids.dtype == att.dtype == np.dtype(b["dtype"])
    assert ids.tolist() == want_ids
    assert att.tolist() == want_att


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("k", ALL_K)
@PROPERTY
@given(data=st.data())
def test_encode_matches_reference(k, data):
    check_against_reference(data.draw(batch(k)))


@pytest.mark.parametrize("k", [1, 3, 4, 8])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_encode_matches_reference_at_full_length(k, data):
    b = data.draw(batch(k, max_len_max=0))
    b["max_len"] = MAX_NUCLEOTIDES
    b["seqs"] = [s * (MAX_NUCLEOTIDES // max(1, len(s)) + 1) if s else s for s in b["seqs"]]
    b["seqs"] += [b"ACGT" * 165, b"ACGT" * 200, b"ACGTN" * 131 + b"A"]
    if b["offsets"] is not None:
        b["offsets"] += [0, 1, 2]
    check_against_reference(b)


def test_every_byte_in_every_position_k4():
    # The k = 4 path decodes bases by arithmetic, not by table: try all 256 bytes
    # at each of the four places of a 4-mer, and all 256 ACGT 4-mers.
    acgt = [("".join(p)).encode() for p in itertools.product("ACGT", repeat=4)]
    odd = [b"ACGT"[:i] + bytes([v]) + b"ACGT"[i + 1 :] for i in range(4) for v in range(256)]
    odd += [bytes([v, v, v, v]) for v in range(256)]
    seqs = acgt + odd
    for n_as_base in (False, True):
        tok = KmerTokenizer(k=4, max_len=4, n_as_base=n_as_base)
        ids, att = tok.encode(seqs)
        want, _ = ref.encode(seqs, 4, 4, n_as_base=n_as_base)
        assert ids.tolist() == want
    assert KmerTokenizer(k=4, max_len=4).encode(acgt)[0][:, 0].tolist() == list(range(2, 258))


# --------------------------------------------------------------------------- the rules


def test_known_values():
    tok = KmerTokenizer()
    assert (tok.k, tok.max_len, tok.n_tokens, tok.vocab_size) == (4, 660, 165, 258)
    ids, att = tok.encode(["AAAAAAACGT"])
    assert ids[0, :3].tolist() == [2, 3, 1]  # AAAA, AAAC, GTNN (padding is N)
    assert att[0, :3].tolist() == [1, 1, 0]
    assert (ids[0, 3:] == UNK_ID).all() and (att[0, 2:] == 0).all()


@pytest.mark.parametrize("k,max_len", [(4, 660), (4, 10), (3, 10), (5, 12), (1, 3)])
def test_attention_at_exact_and_over_length(k, max_len):
    tok = KmerTokenizer(k=k, max_len=max_len)
    T = max_len // k
    exact, _ = tok.encode(["A" * max_len]), None
    assert exact[1].tolist() == [[1] * T]
    over = tok.encode(["A" * (max_len + 1)])
    assert over[1].tolist() == [[1] * T]
    assert over[0].tolist() == [[2] * T]
    short = tok.encode(["A" * (max_len - 1)])
    n_att = (max_len - 1) // k
    assert short[1].tolist() == [[1] * n_att + [0] * (T - n_att)]


def test_offsets_shift_the_reading_frame():
    tok = KmerTokenizer(k=4, max_len=8)
    ids, att = tok.encode(["TAAAACCCC", "TTAAAACCCC", "A", "ACGT"], offsets=[1, 2, 5, 4])
    assert ids.tolist() == [[2, 87], [2, 87], [1, 1], [1, 1]]
    assert att.tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]


def test_max_len_below_k_gives_no_tokens():
    tok = KmerTokenizer(k=8, max_len=7)
    ids, att = tok.encode(["ACGTACGTACGT", ""])
    assert ids.shape == att.shape == (2, 0)
    d = tok.encode_mlm(["ACGTACGTACGT"], ["p"])
    assert d["labels"].shape == (1, 0)


def test_n_as_base_vocabulary_and_padding():
    tok = KmerTokenizer(k=2, max_len=8, n_as_base=True)
    assert tok.vocab_size == 2 + 25
    assert tok.vocab[:6] == ["[MASK]", "[UNK]", "AA", "AC", "AG", "AT"]
    assert tok.vocab[18:] == ["AN", "CN", "GN", "TN", "NA", "NC", "NG", "NT", "NN"]
    ids, att = tok.encode(["ANNAcg"])
    assert [tok.id_to_token(i) for i in ids[0]] == ["AN", "NA", "[UNK]", "NN"]
    assert att.tolist() == [[1, 1, 1, 0]]
    assert tok.pad_id == tok.token_to_id("NN") == 26


def test_empty_batch_and_empty_sequences():
    tok = KmerTokenizer(k=3, max_len=9)
    ids, att = tok.encode([])
    assert ids.shape == (0, 3)
    ids, att = tok.encode(["", None, b""])
    assert (ids == UNK_ID).all() and (att == 0).all()


# --------------------------------------------------------------------------- vocabulary


# k = 8 with N as a base (390,627 tokens) is covered by test_vocabulary_k8_n_as_base_ids.
@pytest.mark.parametrize(
    "k,n_as_base", [(k, nb) for k in ALL_K for nb in (False, True) if (k, nb) != (8, True)]
)
def test_vocabulary_matches_reference(k, n_as_base):
    tok = KmerTokenizer(k=k, max_len=k, n_as_base=n_as_base)
    vocab = ref.vocabulary(k, n_as_base)
    assert tok.vocab == vocab
    assert tok.vocab_size == len(vocab)
    for i in list(range(min(len(vocab), 300))) + [len(vocab) - 1]:
        assert tok.id_to_token(i) == vocab[i]
        assert tok.token_to_id(vocab[i]) == i
    # encode agrees with the vocabulary too
    some = vocab[2:][:: max(1, len(vocab) // 97)]
    ids, _ = tok.encode(some)
    assert ids[:, 0].tolist() == [vocab.index(t) for t in some]


def test_vocabulary_k8_n_as_base_ids():
    tok = KmerTokenizer(k=8, max_len=8, n_as_base=True)
    assert tok.vocab_size == 2 + 5**8
    assert tok.token_to_id("AAAAAAAA") == 2
    assert tok.token_to_id("TTTTTTTT") == 2 + 4**8 - 1
    assert tok.token_to_id("AAAAAAAN") == 2 + 4**8
    assert tok.token_to_id("NNNNNNNN") == tok.vocab_size - 1 == tok.pad_id
    assert tok.id_to_token(2 + 4**8) == "AAAAAAAN"


def test_special_ids_match_barcodebert():
    # One definition (the kernel's, re-exported by the tokenizer and read by the
    # oracle), so the specification's values are pinned here, not compared.
    assert (MASK_ID, UNK_ID, IGNORE_INDEX) == (0, 1, -100)


def test_token_to_id_and_decode():
    tok = KmerTokenizer()
    assert tok.token_to_id("AAAA") == 2 and tok.token_to_id("AAAC") == 3
    assert tok.token_to_id("[MASK]") == MASK_ID and tok.token_to_id("[UNK]") == UNK_ID
    assert tok.token_to_id("acgt") == UNK_ID and tok.token_to_id("NNNN") == UNK_ID
    with pytest.raises(BioscanError):
        tok.token_to_id("ACG")
    with pytest.raises(BioscanError):
        tok.id_to_token(258)
    with pytest.raises(BioscanError):
        tok.id_to_token(-1)
    ids, _ = tok.encode(["ACGTTTTTNNNN"])
    assert tok.decode(ids[0, :4]) == ["ACGT", "TTTT", "[UNK]", "[UNK]"]
    assert tok.decode(ids[:, :2]) == [["ACGT", "TTTT"]]
    assert tok.decode([0, 1]) == ["[MASK]", "[UNK]"]
    with pytest.raises(BioscanError):
        tok.decode([-100])


# --------------------------------------------------------------------------- input forms


def _arrow_cases():
    seqs = ["ACGTACGT", None, "", "ACGTNNNNACGT", "acgtACGT", "TTTTGGGGCCCCAAAA", "AC"]
    arr = pa.array(seqs, type=pa.string())
    yield "string", arr
    yield "large_string", pa.array(seqs, type=pa.large_string())
    yield "binary", pa.array([None if s is None else s.encode() for s in seqs], type=pa.binary())
    yield "large_binary", pa.array(seqs, type=pa.large_binary())
    yield "dictionary", pa.array(seqs).dictionary_encode()
    yield "chunked", pa.chunked_array([seqs[:3], seqs[3:]])
    if hasattr(pa, "string_view"):
        yield "string_view", pa.array(seqs, type=pa.string_view())


@pytest.mark.parametrize("name,arr", list(_arrow_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_arrow_inputs(name, arr):
    tok = KmerTokenizer(k=4, max_len=16)
    want = tok.encode(["ACGTACGT", "", "", "ACGTNNNNACGT", "acgtACGT", "TTTTGGGGCCCCAAAA", "AC"])
    got = tok.encode(arr)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_arrow_slices_use_the_right_offsets():
    seqs = [("ACGT" * (i % 7)) + "TTTT" * (i % 3) for i in range(50)]
    arr = pa.array(seqs)
    tok = KmerTokenizer(k=4, max_len=24)
    for start, stop in [(0, 50), (1, 50), (13, 37), (49, 50), (20, 20)]:
        got = tok.encode(arr.slice(start, stop - start))
        want = tok.encode(seqs[start:stop])
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    chunked = pa.chunked_array([arr.slice(3, 10), arr.slice(30, 5), arr.slice(0, 0)])
    got = tok.encode(chunked)
    want = tok.encode(seqs[3:13] + seqs[30:35])
    assert np.array_equal(got[0], want[0])


def test_arrow_input_is_not_copied(monkeypatch):
    arr = pa.array(["ACGT" * 200] * 3)
    seen = {}
    import bioscan_io._kmer as kernel

    real = kernel.encode_batch

    def spy(data, *args):
        seen["data"] = data
        return real(data, *args)

    monkeypatch.setattr(kernel, "encode_batch", spy)
    KmerTokenizer().encode(arr)
    data_buf = arr.buffers()[2]
    assert np.asarray(seen["data"]).ctypes.data == data_buf.address


def test_list_forms_agree():
    tok = KmerTokenizer(k=3, max_len=12)
    strs = ["ACGTAC", "NNACGT", "é-ACGTACGTACGT", ""]
    forms = [
        strs,
        tuple(strs),
        [s.encode() for s in strs],
        [bytearray(s.encode()) for s in strs],
        np.array(strs, dtype=object),
        np.array(strs),  # fixed-width unicode
        [strs[0], strs[1].encode(), strs[2], None],
        (s for s in strs),
    ]
    want = tok.encode(strs)
    for f in forms:
        got = tok.encode(f)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), type(f)


def test_non_ascii_str_is_tokenized_as_utf8():
    tok = KmerTokenizer(k=2, max_len=6)
    ids, _ = tok.encode(["éACGT"])  # é is two UTF-8 bytes: [UNK], then AC, GT
    assert tok.decode(ids[0]) == ["[UNK]", "AC", "GT"]
    # lone surrogates cannot be UTF-8 but must not crash either
    ids, _ = tok.encode(["\udcffACGT"])
    assert ids.shape == (1, 3)


# --------------------------------------------------------------------------- outputs


def test_out_arrays_are_filled_in_place():
    tok = KmerTokenizer(k=4, max_len=16)
    big = np.full((5, 10), 7, dtype=np.int32)
    ids, att = big[1:4, 1:5], big[1:4, 5:9]
    got = tok.encode(["ACGT", "TTTTT", ""], out=(ids, att))
    assert got[0] is ids and got[1] is att
    assert (big[0] == 7).all() and (big[4] == 7).all() and (big[:, 0] == 7).all() and (big[:, 9] == 7).all()
    assert np.array_equal(ids, tok.encode(["ACGT", "TTTTT", ""], dtype=np.int32)[0])


def test_torch_tensors_share_memory():
    torch = pytest.importorskip("torch")
    tok = KmerTokenizer(k=4, max_len=16)
    ids, att = tok.encode(["ACGTACGT"], return_tensors="pt")
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64
    d = tok.encode_mlm(["ACGTACGT"], ["x"], return_tensors="pt", dtype=torch.int32)
    assert d["labels"].dtype == torch.int32
    out = (torch.zeros(1, 4, dtype=torch.int32), torch.zeros(1, 4, dtype=torch.int32))
    tok.encode(["ACGTACGT"], out=out)
    assert out[0].tolist() == [[29, 29, 1, 1]] and out[1].tolist() == [[1, 1, 0, 0]]
    arr = np.empty((1, 4), dtype=np.int64)
    t, _ = tok.encode(["ACGT"], out=(arr, np.empty((1, 4), np.int64)), return_tensors="pt")
    assert t.data_ptr() == arr.ctypes.data


def test_one_column_out_with_odd_stride():
    tok = KmerTokenizer(k=4, max_len=4)
    big = np.zeros((3, 4), dtype=np.int64)
    ids, att = big[:, 0:1], big[:, 2:3]
    tok.encode(["ACGT", "AAAA", "N"], out=(ids[:, ::-1], att))
    assert ids[:, 0].tolist() == [29, 2, 1] and att[:, 0].tolist() == [1, 1, 0]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=0), dict(k=9), dict(k=2.0), dict(k=True), dict(max_len=-1), dict(max_len=2**31), dict(max_len="660")],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(BioscanError):
        KmerTokenizer(**kwargs)


def test_bad_encode_arguments():
    tok = KmerTokenizer(k=4, max_len=8)
    bad_calls = [
        lambda: tok.encode("ACGT"),
        lambda: tok.encode(b"ACGT"),
        lambda: tok.encode(["ACGT", 5]),
        lambda: tok.encode(123),
        lambda: tok.encode(np.zeros(3)),
        lambda: tok.encode(np.array([["A"]])),
        lambda: tok.encode(pa.array([1, 2])),
        lambda: tok.encode(["ACGT"], offsets=[-1]),
        lambda: tok.encode(["ACGT"], offsets=[0, 1]),
        lambda: tok.encode(["ACGT"], offsets=[0.5]),
        lambda: tok.encode(["ACGT"], dtype=np.float32),
        lambda: tok.encode(["ACGT"], dtype=np.int16),
        lambda: tok.encode(["ACGT"], return_tensors="tf"),
        lambda: tok.encode(["ACGT"], out=np.empty((1, 2))),
        lambda: tok.encode(["ACGT"], out=(np.empty((1, 2), np.int64),)),
        lambda: tok.encode(["ACGT"], out=(np.empty((1, 3), np.int64), np.empty((1, 3), np.int64))),
        lambda: tok.encode(["ACGT"], out=(np.empty((1, 2), np.int64), np.empty((1, 2), np.int32))),
        lambda: tok.encode(["ACGT"], out=(np.empty((1, 4), np.int64)[:, ::2], np.empty((1, 2), np.int64))),
        lambda: tok.encode(["ACGT"], out=([[0, 0]], np.empty((1, 2), np.int64))),
        lambda: tok.encode(["ACGT"], dtype=np.int32, out=(np.empty((1, 2), np.int64), np.empty((1, 2), np.int64))),
    ]
    ro = np.empty((1, 2), np.int64)
    ro.flags.writeable = False
    bad_calls.append(lambda: tok.encode(["ACGT"], out=(ro, np.empty((1, 2), np.int64))))
    for call in bad_calls:
        with pytest.raises(BioscanError):
            call()


def test_corrupt_row_offsets_are_refused(monkeypatch):
    # pyarrow validates arrays it builds, so fake what a corrupt one would give.
    import bioscan_io.buffers as B

    def corrupt(values, what):
        data = np.frombuffer(b"ACGTACGT", dtype=np.uint8)
        return [B.Chunk(data, np.array([0, 4], np.int64), np.array([4, 100], np.int64))]

    monkeypatch.setattr(B, "_chunks_from_arrow", corrupt)
    with pytest.raises(BioscanError, match="outside"):
        KmerTokenizer().encode(pa.array(["ACGT", "ACGT"]))


def test_processid_keys():
    keys = processid_keys(["BIOUG001-A01", b"BIOUG001-A01", "", None])
    assert keys.dtype == np.uint64
    assert keys.tolist() == [ref.fnv1a64(b"BIOUG001-A01")] * 2 + [ref.fnv1a64(b"")] * 2
    assert processid_keys(pa.array(["x", None])).tolist() == [ref.fnv1a64(b"x"), ref.fnv1a64(b"")]
    assert processid_keys(keys) is keys or np.array_equal(processid_keys(keys), keys)


def test_missing_extension_says_how_to_build():
    code = (
        "import sys; sys.modules['bioscan_io._kmer'] = None\n"
        "try:\n"
        "    import bioscan_io.tokenizer\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install -e ." in out and "build_ext --inplace" in out

"""Masking recipes (mask / random / keep) of KmerTokenizer.encode_mlm, against the oracle."""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioscan_io.schema import BioscanError
from bioscan_io.testing import oracle as ref
from bioscan_io.tokenizer import IGNORE_INDEX, MASK_ID, KmerTokenizer
from test_tokenizer_mlm import barcodes, pids
from test_tokenizer_strategies import as_form, batch

ALL_K = list(range(1, 9))
BERT = (0.8, 0.1, 0.1)
# Corner recipes, and thirds (whose sum is not exactly 1 in floating point).
RECIPES = [(1.0, 0.0, 0.0), BERT, (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0),
           (0.5, 0.0, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.9, 0.0, 0.1)]


@st.composite
def recipe(draw) -> tuple:
    """A masking recipe: a corner one, or random shares summing to 1."""
    if draw(st.booleans()):
        return draw(st.sampled_from(RECIPES))
    a = draw(st.floats(0, 1))
    b = draw(st.floats(0, 1)) * (1 - a)
    return (a, b, max(0.0, 1 - a - b))

# --------------------------------------------------------------------------- golden digests

# sha256 of encode_mlm's outputs over GOLDEN_GRID, per k, recorded at 100965e (before
# mask_ratios existed) from the compiled kernel: the default recipe (1, 0, 0) must keep
# giving these bits, so that masks of runs started before recipes existed do not change.
GOLDEN_DIGESTS = {
    1: "da4ce9da0fa092f5272502d2ee751b83e83372ebbbc52c3172aa0727df52868e",
    2: "91b93de21eeda466f60984bbe00aa32ea38e42071e7f3a5857da313372d61ff5",
    3: "984e737ab28d83b2840a593b0f2f1bf97a20b0f06bf1bfe7db234682cc61460d",
    4: "f2a22fd58e0acd2ad2a65e33a489e6c1b061f87ff453a058c0dcfe7aa7167748",
    5: "11c5aa4f58f1f09e2e39614d47f531e8262ffbccf413615eb603a543b7e7e118",
    6: "2805a95c817694a70bd9b721f6644adc92b5cee65a165cb6355f5669407c065e",
    7: "d693a1e6e31dd423ff3eb82cd6a550fce065c75470f158a9ba07190fe01fc4e3",
    8: "fd7dc69736e7f532516642b925dc98657d57acf80435405edda044f3a2a9e4c3",
}

GOLDEN_GRID = [
    dict(n_as_base=nab, max_len=max_len, label_mode=mode, mask_prob=p, offsets=offs, dtype=dtype)
    for nab in (False, True)
    for max_len in (660, 45)
    for mode in ("masked", "barcodebert")
    for p in (0.0, 0.15, 1 / 3, 0.5, 1.0)
    for offs in ("none", "random", "given")
    for dtype in (np.int32, np.int64)
]


@functools.lru_cache(maxsize=None)
def golden_batch() -> tuple[list[bytes], list[str]]:
    """24 sequences made with the oracle's generator (stable whatever numpy's version)."""
    alphabet = b"ACGTACGTACGTACGTACGTACGTACGTNNacgRY-\xc3\xa9"
    lengths = [0, 1, 3, 4, 5, 7, 8, 9, 31, 44, 45, 46, 100, 333, 659, 660, 661, 663, 700, 1000,
               660, 660, 658, 2]
    seqs, pids = [], []
    for i, n in enumerate(lengths):
        key = ref.sample_key(f"golden-{i}", 0, 0)
        seqs.append(bytes(alphabet[ref.rand(key, j) % len(alphabet)] for j in range(n)))
        pids.append(f"BIOUG{7000 + i}-G{i:02d}")
    return seqs, pids


def golden_digest(k: int, **recipe) -> str:
    """sha256 over every GOLDEN_GRID output at this k (``recipe``: extra encode_mlm arguments)."""
    seqs, pids = golden_batch()
    given = [i % (2 * k + 1) for i in range(len(seqs))]
    toks = {(m, nab): KmerTokenizer(k=k, max_len=m, n_as_base=nab) for m in (660, 45) for nab in (False, True)}
    h = hashlib.sha256()
    for g in GOLDEN_GRID:
        tok = toks[g["max_len"], g["n_as_base"]]
        d = tok.encode_mlm(
            seqs, pids, seed=2**63 + 12345, epoch=3, mask_prob=g["mask_prob"],
            label_mode=g["label_mode"], random_offset=g["offsets"] == "random",
            offsets=given if g["offsets"] == "given" else None, dtype=g["dtype"], **recipe,
        )
        for name in ("input_ids", "attention_mask", "labels"):
            h.update(np.ascontiguousarray(d[name]).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("k", ALL_K)
def test_default_recipe_is_bit_identical_to_before_recipes(k):
    assert golden_digest(k) == GOLDEN_DIGESTS[k]


@pytest.mark.parametrize("k", ALL_K)
def test_explicit_default_recipe_is_the_default(k):
    want = GOLDEN_DIGESTS[k]
    assert golden_digest(k, mask_ratios=(1.0, 0.0, 0.0)) == want
    assert golden_digest(k, mask_ratios=[1, 0, 0]) == want
    # A recipe other than the default does change the outputs (the digest can fail).
    assert golden_digest(k, mask_ratios=BERT) != want


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("k", ALL_K)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    seed=st.integers(0, 2**64 - 1),
    p=st.one_of(st.sampled_from([0.15, 0.5, 1.0]), st.floats(0, 1)),
    ratios=recipe(),
    label_mode=st.sampled_from(["masked", "barcodebert"]),
    offset_mode=st.sampled_from(["none", "random", "given"]),
)
def test_recipes_match_the_oracle(k, data, seed, p, ratios, label_mode, offset_mode):
    b = data.draw(batch(k))
    processids = data.draw(st.lists(st.text(max_size=8), min_size=len(b["seqs"]), max_size=len(b["seqs"])))
    tok = KmerTokenizer(k=k, max_len=b["max_len"], n_as_base=b["n_as_base"])
    values, seqs = as_form(b["seqs"], b["form"])
    offsets = b["offsets"] if offset_mode == "given" else None
    kw = dict(seed=seed, epoch=7, mask_prob=p, mask_ratios=ratios, label_mode=label_mode,
              random_offset=offset_mode == "random", offsets=offsets)
    got = tok.encode_mlm(values, processids, dtype=b["dtype"], **kw)
    want = ref.encode_mlm(seqs, processids, k, b["max_len"], n_as_base=b["n_as_base"], **kw)
    assert got["input_ids"].tolist() == want[0]
    assert got["attention_mask"].tolist() == want[1]
    assert got["labels"].tolist() == want[2]


@pytest.mark.parametrize("k", [1, 4, 6])
@pytest.mark.parametrize("n_as_base", [False, True])
def test_long_rows_match_the_oracle(k, n_as_base):
    # Rows of several kernel blocks (512 tokens), the k=4 fast path's among them.
    tok = KmerTokenizer(k=k, max_len=1300, n_as_base=n_as_base)
    seqs, ids = barcodes(6, seed=k, length=1400, n_rate=0.05), pids(6)
    for label_mode in ("masked", "barcodebert"):
        kw = dict(seed=5, epoch=1, mask_prob=0.4, mask_ratios=BERT, label_mode=label_mode)
        got = tok.encode_mlm(seqs, ids, **kw)
        want = ref.encode_mlm(seqs, ids, k, 1300, n_as_base=n_as_base, **kw)
        assert got["input_ids"].tolist() == want[0]
        assert got["labels"].tolist() == want[2]


# --------------------------------------------------------------------------- behaviour


def _bert_batch(k: int, label_mode: str = "masked", ratios=BERT, n: int = 1500, **kw):
    tok = KmerTokenizer(k=k, **kw)
    seqs, ids = barcodes(n, seed=k), pids(n)
    plain, att = tok.encode(seqs)
    d = tok.encode_mlm(seqs, ids, seed=3, epoch=1, mask_prob=0.5, mask_ratios=ratios, label_mode=label_mode)
    default = tok.encode_mlm(seqs, ids, seed=3, epoch=1, mask_prob=0.5, label_mode=label_mode)
    return tok, plain, d, default


@pytest.mark.parametrize("k", [1, 4, 5])
def test_the_selection_does_not_depend_on_the_recipe(k):
    for ratios in RECIPES:
        tok, plain, d, default = _bert_batch(k, ratios=ratios, n=300)
        # masked labels: the original id at exactly the positions the default masks
        assert np.array_equal(d["labels"], default["labels"])
        selected = default["labels"] != IGNORE_INDEX
        assert np.array_equal(d["input_ids"][~selected], plain[~selected])
        _, _, bb, bb_default = _bert_batch(k, "barcodebert", ratios=ratios, n=300)
        assert np.array_equal(bb["labels"], bb_default["labels"])
        # barcodebert mode changes the same positions the same way
        assert np.array_equal(bb["input_ids"], d["input_ids"])


@pytest.mark.parametrize("k", [1, 4, 5])
def test_shares_follow_the_ratios(k):
    tok, plain, d, _ = _bert_batch(k)
    selected = d["labels"] != IGNORE_INDEX
    got, orig = d["input_ids"][selected], plain[selected]
    n, n_kmers = got.size, tok.vocab_size - 2
    masked, kept = got == MASK_ID, got == orig
    replaced = ~masked & ~kept
    # a random k-mer equals the original once in n_kmers draws: it then reads as kept
    expect = {"mask": 0.8, "replaced": 0.1 * (1 - 1 / n_kmers), "kept": 0.1 * (1 + 1 / n_kmers)}
    for name, m in (("mask", masked), ("replaced", replaced), ("kept", kept)):
        q = expect[name]
        assert abs(m.sum() - n * q) < 5 * math.sqrt(n * q * (1 - q)), (name, m.sum(), n * q)
    assert got[replaced].min() >= 2 and got[replaced].max() < tok.vocab_size


@pytest.mark.parametrize("k", [1, 4, 5])
def test_random_tokens_are_uniform_over_the_kmers(k):
    # All random: every selected position holds one draw (the original included).
    tok, _, d, _ = _bert_batch(k, ratios=(0.0, 1.0, 0.0))
    selected = d["labels"] != IGNORE_INDEX
    drawn = d["input_ids"][selected]
    n_kmers = tok.vocab_size - 2
    assert drawn.min() >= 2 and drawn.max() < tok.vocab_size
    counts = np.bincount(drawn - 2, minlength=n_kmers)
    expected = drawn.size / n_kmers
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # chi-square with n_kmers - 1 degrees of freedom: mean n - 1, sd sqrt(2 (n - 1))
    assert chi2 < (n_kmers - 1) + 6 * math.sqrt(2 * (n_kmers - 1)) + 10, chi2


def test_keep_only_and_random_only():
    _, plain, keep, default = _bert_batch(4, ratios=(0, 0, 1), n=200)
    assert np.array_equal(keep["input_ids"], plain)
    assert np.array_equal(keep["labels"], default["labels"])
    _, plain, rnd, default = _bert_batch(4, ratios=(0, 1, 0), n=200)
    selected = default["labels"] != IGNORE_INDEX
    assert not (rnd["input_ids"] == MASK_ID).any()
    assert (rnd["input_ids"][selected] != plain[selected]).mean() > 0.98


@pytest.mark.parametrize(
    "ratios",
    [(0.5, 0.5), (0.8, 0.1, 0.2), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5), (1, 0, 0, 0),
     "abc", 5, (0.8, "x", 0.2), (1.0 + 1e-6, 0, 0), (float("inf"), 0, 0)],
)
def test_bad_ratios_are_one_line(ratios):
    tok = KmerTokenizer(k=4, max_len=8)
    with pytest.raises(BioscanError) as exc:
        tok.encode_mlm(["ACGTACGT"], ["x"], mask_ratios=ratios)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("mask_ratios must be three non-negative numbers")


def test_ratios_summing_to_one_within_rounding_are_accepted():
    tok = KmerTokenizer(k=4, max_len=8)
    for ratios in [(0.7, 0.2, 0.1), (1 / 3,) * 3, (1 - 1e-10, 0, 0), np.array([0.8, 0.1, 0.1]), None]:
        tok.encode_mlm(["ACGTACGT"], ["x"], mask_ratios=ratios)


@pytest.mark.parametrize("k", [3, 4])
def test_thresholds_are_strict_at_the_boundary(k):
    # Shares chosen so that a position's draw u equals a threshold exactly:
    # u < ceil(r * 2**32) is then false, one share more is true.
    tok = KmerTokenizer(k=k, max_len=40)
    seq, pid = ["ACGT" * 10], ["boundary"]
    plain = tok.encode(seq)[0][0]
    sel = tok.encode_mlm(seq, pid, mask_prob=1.0)["labels"][0] != IGNORE_INDEX
    t = int(np.flatnonzero(sel)[0])
    key = ref.sample_key(pid[0], 0, 0)
    w = ref.rand(key, ref.RECIPE_COUNTER + t)
    u, r, r1 = w >> 32, (w >> 32) / 2**32, ((w >> 32) + 1) / 2**32  # exact: u < 2**53
    n_kmers = tok.vocab_size - 2
    replaced = 2 + (((w & 0xFFFFFFFF) * n_kmers) >> 32)
    cases = [
        ((r, 0.0, 1 - r), ref.KEEP, plain[t]),
        ((r1, 0.0, 1 - r1), ref.MASK, MASK_ID),
        ((0.0, r, 1 - r), ref.KEEP, plain[t]),
        ((0.0, r1, 1 - r1), ref.RANDOM, replaced),
    ]
    for ratios, action, want in cases:
        assert ref.mask_action(key, t, ratios, n_kmers)[0] == action
        got = tok.encode_mlm(seq, pid, mask_prob=1.0, mask_ratios=ratios)["input_ids"][0, t]
        assert got == want, (ratios, action)
    assert u > 0

"""KmerTokenizer.encode_mlm: masks, labels, offsets and their determinism."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioscan_io.schema import BioscanError
from bioscan_io.testing import oracle as ref
from bioscan_io.tokenizer import IGNORE_INDEX, MASK_ID, UNK_ID, KmerTokenizer, processid_keys
from test_tokenizer_strategies import as_form, batch

ALL_K = list(range(1, 9))


def barcodes(n: int, seed: int = 0, length: int = 660, n_rate: float = 0.02) -> list[str]:
    """Random ACGT barcodes with scattered N and a few short ones."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGTN", dtype=np.uint8)
    p = [(1 - n_rate) / 4] * 4 + [n_rate]
    out = []
    for i in range(n):
        size = length if i % 10 else int(rng.integers(0, length))
        out.append(letters[rng.choice(5, size=size, p=p)].tobytes().decode())
    return out


def pids(n: int, start: int = 0) -> list[str]:
    return [f"BIOUG{100000 + i}-A{i % 97:02d}" for i in range(start, start + n)]


def mlm(tok, seqs, ids, **kw):
    return tok.encode_mlm(seqs, ids, **kw)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("k", ALL_K)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    seed=st.integers(0, 2**64 - 1),
    epoch=st.integers(0, 2**64 - 1),
    p=st.one_of(st.sampled_from([0.0, 0.15, 0.5, 1.0, 1e-9, 1 - 1e-9]), st.floats(0, 1)),
    label_mode=st.sampled_from(["masked", "barcodebert"]),
    offset_mode=st.sampled_from(["none", "random", "given"]),
)
def test_encode_mlm_matches_reference(k, data, seed, epoch, p, label_mode, offset_mode):
    b = data.draw(batch(k))
    processids = data.draw(
        st.lists(st.text(max_size=12), min_size=len(b["seqs"]), max_size=len(b["seqs"]))
    )
    tok = KmerTokenizer(k=k, max_len=b["max_len"], n_as_base=b["n_as_base"])
    values, seqs = as_form(b["seqs"], b["form"])
    offsets = b["offsets"] if offset_mode == "given" else None
    got = tok.encode_mlm(
        values, processids, seed=seed, epoch=epoch, mask_prob=p, label_mode=label_mode,
        random_offset=offset_mode == "random", offsets=offsets, dtype=b["dtype"],
    )
    want = ref.encode_mlm(
        seqs, processids, k, b["max_len"], seed=seed, epoch=epoch, mask_prob=p,
        label_mode=label_mode, random_offset=offset_mode == "random", offsets=offsets,
        n_as_base=b["n_as_base"],
    )
    assert got["input_ids"].tolist() == want[0]
    assert got["attention_mask"].tolist() == want[1]
    assert got["labels"].tolist() == want[2]


@pytest.mark.parametrize("k", [1, 4, 5])
@pytest.mark.parametrize("p", [0.15, 0.3, 0.999])
def test_ties_on_the_top_byte_match_reference(k, p):
    # thr's low 24 bits are not 0 for these p, so positions whose top byte ties the
    # threshold's (1 in 256) take the second hash; make sure there are some.
    tok = KmerTokenizer(k=k, max_len=660)
    seqs = barcodes(60, seed=k, n_rate=0.0)
    ids = pids(60)
    got = tok.encode_mlm(seqs, ids, seed=11, epoch=3, mask_prob=p)
    want = ref.encode_mlm(seqs, ids, k, 660, seed=11, epoch=3, mask_prob=p)
    assert got["input_ids"].tolist() == want[0]
    assert got["labels"].tolist() == want[2]
    thr_hi = math.ceil(p * 2**32) >> 24
    keys = [ref.sample_key(i, 11, 3) for i in ids[:10]]
    ties = sum(
        (ref.rand(key, t // 8) >> (8 * (t % 8))) & 0xFF == thr_hi
        for key in keys for t in range(660 // k)
    )
    assert ties > 0


def test_random_offsets_match_reference_and_are_uniform():
    ids = pids(4000)
    for k in (1, 3, 4, 8):
        tok = KmerTokenizer(k=k)
        offs = tok.random_offsets(ids, seed=5, epoch=9)
        want = [ref.offset_draw(ref.sample_key(i, 5, 9), k) for i in ids[:300]]
        assert offs[:300].tolist() == want
        counts = np.bincount(offs, minlength=k)
        assert len(counts) == k
        expected = len(ids) / k
        assert np.all(np.abs(counts - expected) < 6 * math.sqrt(expected))
    assert KmerTokenizer(k=4).random_offsets(ids, 5, 9).tolist() != KmerTokenizer(k=4).random_offsets(ids, 5, 10).tolist()


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("p", [0.01, 0.15, 0.5, 0.8])
def test_mask_rate_is_within_statistical_bounds(p):
    tok = KmerTokenizer()
    seqs = barcodes(1500, seed=1)
    d = tok.encode_mlm(seqs, pids(1500), seed=2, epoch=0, mask_prob=p)
    maskable = d["labels"] != IGNORE_INDEX
    maskable |= (d["input_ids"] >= 2) & (d["attention_mask"] == 1)
    n = int(maskable.sum())
    masked = int((d["input_ids"] == MASK_ID).sum())
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(masked - n * p) < 5 * sigma, (masked, n * p, sigma)
    # per position too: no position is favoured (first, middle and last tokens)
    for t in (0, 82, 163):
        col = maskable[:, t]
        m = int((d["input_ids"][col, t] == MASK_ID).sum())
        assert abs(m - col.sum() * p) < 5 * math.sqrt(col.sum() * p * (1 - p)) + 1


def test_mask_prob_zero_and_one():
    tok = KmerTokenizer(k=4, max_len=40)
    seqs = ["ACGTNNNNACGTACGTacgtACGTAC", "", "ACGT" * 20]
    plain, att = tok.encode(seqs)
    zero = tok.encode_mlm(seqs, pids(3), mask_prob=0.0)
    assert np.array_equal(zero["input_ids"], plain)
    assert (zero["labels"] == IGNORE_INDEX).all()
    one = tok.encode_mlm(seqs, pids(3), mask_prob=1.0)
    maskable = (plain >= 2) & (att == 1)
    assert np.array_equal(one["input_ids"] == MASK_ID, maskable)
    assert np.array_equal(one["labels"][maskable], plain[maskable])


@pytest.mark.parametrize("label_mode", ["masked", "barcodebert"])
@pytest.mark.parametrize("n_as_base", [False, True])
def test_unk_and_padding_are_never_masked_and_labels_are_right(label_mode, n_as_base):
    tok = KmerTokenizer(k=4, max_len=660, n_as_base=n_as_base)
    seqs = barcodes(400, seed=3, n_rate=0.2)
    seqs = [s[: len(s) // 2] + "acgtRY" + s[len(s) // 2 :] for s in seqs]
    plain, att = tok.encode(seqs)
    d = tok.encode_mlm(seqs, pids(400), seed=7, mask_prob=0.5, label_mode=label_mode)
    ids, labels = d["input_ids"], d["labels"]
    assert np.array_equal(d["attention_mask"], att)
    masked = ids == MASK_ID
    maskable = (plain >= 2) & (att == 1)
    assert not (masked & ~maskable).any()
    assert (plain[~maskable] == ids[~maskable]).all()
    assert (plain[att == 0] != MASK_ID).all() and (plain == UNK_ID).any() and (att == 0).any()
    assert np.array_equal(ids[~masked], plain[~masked])
    if label_mode == "masked":
        assert np.array_equal(labels[masked], plain[masked])
        assert (labels[~masked] == IGNORE_INDEX).all()
    else:
        assert np.array_equal(labels[maskable], plain[maskable] - 2)
        assert (labels[~maskable] == IGNORE_INDEX).all()
    if n_as_base:  # k-mers with N are real tokens here, and maskable
        has_n = maskable & (plain >= 2 + 4**4)
        assert has_n.any() and (masked & has_n).any()


# --------------------------------------------------------------------------- determinism


def _digest(d: dict) -> str:
    h = hashlib.sha256()
    for name in ("input_ids", "attention_mask", "labels"):
        h.update(np.ascontiguousarray(d[name], dtype=np.int64).tobytes())
    return h.hexdigest()


def test_mask_does_not_depend_on_batch_order_or_composition():
    tok = KmerTokenizer()
    seqs, ids = barcodes(200, seed=4), pids(200)
    kw = dict(seed=3, epoch=2, mask_prob=0.5, random_offset=True)
    full = tok.encode_mlm(seqs, ids, **kw)
    rng = np.random.default_rng(0)
    order = rng.permutation(200)
    shuffled = tok.encode_mlm([seqs[i] for i in order], [ids[i] for i in order], **kw)
    for name in full:
        assert np.array_equal(shuffled[name], full[name][order])
    # as part of other batches, alone, as Arrow, as int32, chunked
    others, other_ids = barcodes(30, seed=99), pids(30, start=5000)
    mixed = tok.encode_mlm(others[:10] + seqs[50:60] + others[10:], other_ids[:10] + ids[50:60] + other_ids[10:], **kw)
    alone = tok.encode_mlm(seqs[57:58], ids[57:58], **kw)
    arrow = tok.encode_mlm(pa.array(seqs), pa.array(ids), dtype=np.int32, **kw)
    chunked = tok.encode_mlm(pa.chunked_array([seqs[:77], seqs[77:]]), pa.chunked_array([ids[:5], ids[5:]]), **kw)
    prehashed = tok.encode_mlm(seqs, processid_keys(ids), **kw)
    for name in full:
        assert np.array_equal(mixed[name][10:20], full[name][50:60])
        assert np.array_equal(alone[name][0], full[name][57])
        assert np.array_equal(arrow[name], full[name])
        assert np.array_equal(chunked[name], full[name])
        assert np.array_equal(prehashed[name], full[name])


def test_seed_and_epoch_change_the_mask():
    tok = KmerTokenizer()
    seqs, ids = barcodes(20, seed=5, n_rate=0), pids(20)
    a = tok.encode_mlm(seqs, ids, seed=1, epoch=0)["input_ids"]
    b = tok.encode_mlm(seqs, ids, seed=1, epoch=1)["input_ids"]
    c = tok.encode_mlm(seqs, ids, seed=2, epoch=0)["input_ids"]
    assert (a != b).mean() > 0.3 and (a != c).mean() > 0.3
    # ... and so does the processid, even for the same sequence
    same = tok.encode_mlm([seqs[0]] * 2, ["id-a", "id-b"])["input_ids"]
    assert (same[0] != same[1]).mean() > 0.3


_SCRIPT = """
import hashlib, json, sys
import numpy as np
from bioscan_io.tokenizer import KmerTokenizer
spec = json.loads(sys.argv[1])
tok = KmerTokenizer(k=spec["k"])
d = tok.encode_mlm(spec["seqs"], spec["ids"], seed=spec["seed"], epoch=spec["epoch"],
                   random_offset=True, label_mode="barcodebert")
h = hashlib.sha256()
for name in ("input_ids", "attention_mask", "labels"):
    h.update(np.ascontiguousarray(d[name], dtype=np.int64).tobytes())
print(h.hexdigest())
"""


def test_mask_is_the_same_in_another_process():
    seqs, ids = barcodes(40, seed=6), pids(40)
    spec = {"k": 4, "seqs": seqs, "ids": ids, "seed": 12345678901234567890, "epoch": 17}
    here = KmerTokenizer(k=4).encode_mlm(
        seqs, ids, seed=spec["seed"], epoch=17, random_offset=True, label_mode="barcodebert"
    )
    digests = set()
    for hashseed in ("0", "1"):  # Python's own str hashing must play no part
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT, json.dumps(spec)],
            capture_output=True, text=True, check=True, env=env,
        )
        digests.add(out.stdout.strip())
    assert digests == {_digest(here)}


def _worker(args):
    seqs, ids = args
    d = KmerTokenizer().encode_mlm(seqs, ids, seed=9, epoch=1)
    return {k: v.tolist() for k, v in d.items()}


def test_mask_is_the_same_across_worker_processes():
    seqs, ids = barcodes(64, seed=8), pids(64)
    here = KmerTokenizer().encode_mlm(seqs, ids, seed=9, epoch=1)
    ctx = multiprocessing.get_context("spawn")
    parts = [(seqs[i::3], ids[i::3]) for i in range(3)]  # another split, another order
    with ctx.Pool(2) as pool:
        results = pool.map(_worker, parts)
    for i, r in enumerate(results):
        for name in here:
            assert r[name] == here[name][i::3].tolist()


# --------------------------------------------------------------------------- errors


def test_bad_mlm_arguments():
    tok = KmerTokenizer(k=4, max_len=8)
    s, p = ["ACGTACGT"], ["x"]
    bad = [
        dict(seed=-1), dict(seed=2**64), dict(seed=1.5), dict(epoch=-1),
        dict(mask_prob=-0.1), dict(mask_prob=1.5), dict(mask_prob=float("nan")), dict(mask_prob="a"),
        dict(label_mode="hf"), dict(random_offset=True, offsets=[0]), dict(return_tensors="jax"),
        dict(out=(np.empty((1, 2), np.int64),) * 2),
    ]
    for kw in bad:
        with pytest.raises(BioscanError):
            tok.encode_mlm(s, p, **kw)
    with pytest.raises(BioscanError):
        tok.encode_mlm(s, ["x", "y"])
    with pytest.raises(BioscanError):
        tok.encode_mlm(s, "x")
    with pytest.raises(BioscanError):
        tok.encode_mlm(s, np.zeros((1, 1), np.uint64))

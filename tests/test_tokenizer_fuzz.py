"""Fuzzing the compiled tokenizer: random bytes, lengths, settings and layouts.

Every batch is written into views of larger arrays filled with a sentinel, and
the guard rows/columns around the views must come back untouched: the kernel
never writes out of bounds. Invariants are checked on every row and a few rows
per batch are compared with the pure-Python reference.

CI runs a short version. The long one (a million inputs or more)::

    BIOSCAN_FUZZ_N=1000000 python -m pytest tests/test_tokenizer_fuzz.py -q -s
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from bioscan_io.testing import oracle as ref
from bioscan_io.tokenizer import IGNORE_INDEX, KmerTokenizer

FUZZ_N = int(os.environ.get("BIOSCAN_FUZZ_N", "100000"))
FUZZ_SEED = int(os.environ.get("BIOSCAN_FUZZ_SEED", "20240611"))
GUARD = 3
SENTINEL = -777

_ALPHABETS = [
    np.frombuffer(b"ACGT", np.uint8),
    np.frombuffer(b"ACGTACGTACGTN", np.uint8),
    np.frombuffer(b"ACGTNacgtnRYKMSWBDHV-", np.uint8),
    np.arange(256, dtype=np.uint8),
]


def _random_batch(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray]:
    """n random sequences as (data, offsets[n + 1]), built without a Python loop."""
    kind = rng.integers(0, 4)
    if kind == 0:
        lens = rng.integers(0, 40, n)
    elif kind == 1:
        lens = rng.integers(600, 700, n)
    elif kind == 2:
        lens = rng.geometric(1 / 200, n) - 1
    else:
        lens = np.where(rng.random(n) < 0.05, rng.integers(0, 5000, n), rng.integers(0, 1400, n))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    alphabet = _ALPHABETS[rng.integers(0, len(_ALPHABETS))]
    data = alphabet[rng.integers(0, len(alphabet), int(offsets[-1]))]
    if rng.random() < 0.5:  # runs of N, as in real barcodes
        for start in rng.integers(0, max(1, len(data)), 1 + len(data) // 500):
            data[start : start + rng.integers(1, 30)] = ord("N")
    return data.tobytes(), offsets


def _guarded(n: int, T: int, dtype, count: int, rng) -> tuple[list, list]:
    bigs, views = [], []
    for _ in range(count):
        big = np.full((n + 2 * GUARD, T + 2 * GUARD), SENTINEL, dtype=dtype)
        if rng.random() < 0.3:  # rows walked backwards: a negative row stride
            view = big[GUARD + n - 1 : GUARD - 1 if GUARD else None : -1, GUARD : GUARD + T]
        else:
            view = big[GUARD : GUARD + n, GUARD : GUARD + T]
        bigs.append(big)
        views.append(view)
    return bigs, views


def _guards_intact(big: np.ndarray, n: int, T: int) -> bool:
    inner = np.zeros(big.shape, dtype=bool)
    inner[GUARD : GUARD + n, GUARD : GUARD + T] = True
    return bool((big[~inner] == SENTINEL).all())


def _inputs(data: bytes, offsets: np.ndarray, rng) -> tuple[object, list]:
    """The batch in a random form, with the list the reference reads."""
    n = len(offsets) - 1
    seqs = [data[offsets[i] : offsets[i + 1]] for i in range(n)]
    form = rng.integers(0, 3)
    if form == 0:
        return seqs, seqs
    # Arrow, sliced out of a larger array with nulls around and inside it.
    arr = pa.array([b"pre"] + seqs + [b"post"], type=pa.large_binary() if form == 2 else pa.binary())
    nulls = rng.random(n + 2) < 0.05
    if nulls.any():
        arr = pa.array(
            [None if z else v for z, v in zip(nulls, [b"pre"] + seqs + [b"post"])], type=arr.type
        )
        seqs = [None if z else s for z, s in zip(nulls[1:-1], seqs)]
    return arr.slice(1, n), seqs


def _fuzz(total: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    done = batches = compared = 0
    tokenizers: dict = {}
    while done < total:
        n = int(min(total - done, rng.integers(1, 2500)))
        k = int(rng.integers(1, 9))
        max_len = int(rng.choice([0, 1, 7, 8, 64, 100, 659, 660, 661, 1024, int(rng.integers(0, 1500))]))
        n_as_base = bool(rng.random() < 0.3)
        key = (k, max_len, n_as_base)
        if key not in tokenizers:
            tokenizers[key] = KmerTokenizer(k=k, max_len=max_len, n_as_base=n_as_base)
        tok = tokenizers[key]
        T = tok.n_tokens
        dtype = np.int32 if rng.random() < 0.5 else np.int64
        data, offs = _random_batch(rng, n)
        values, seqs = _inputs(data, offs, rng)
        mlm = rng.random() < 0.6
        offset_mode = rng.integers(0, 3)
        offsets = None
        if offset_mode == 1:
            offsets = rng.integers(0, 3 * k + 1, n)
            offsets[rng.random(n) < 0.01] = 2**62  # far past every sequence
        if mlm:
            bigs, views = _guarded(n, T, dtype, 3, rng)
            pids = [b"P%d" % i for i in rng.integers(0, 10**9, n)]
            seed_, epoch = int(rng.integers(0, 2**63)), int(rng.integers(0, 1000))
            p = float(rng.choice([0.0, 0.15, 0.5, 1.0, rng.random()]))
            label_mode = "masked" if rng.random() < 0.5 else "barcodebert"
            d = tok.encode_mlm(values, pids, seed=seed_, epoch=epoch, mask_prob=p, label_mode=label_mode,
                               random_offset=offset_mode == 2, offsets=offsets, out=tuple(views))
            ids, att, labels = d["input_ids"], d["attention_mask"], d["labels"]
        else:
            bigs, views = _guarded(n, T, dtype, 2, rng)
            ids, att = tok.encode(values, offsets=offsets, out=tuple(views))
            labels = None
        for big in bigs:
            assert _guards_intact(big, n, T), ("out-of-bounds write", key, dtype)
        assert ((att == 0) | (att == 1)).all()
        assert ((ids >= 0) & (ids < tok.vocab_size)).all()
        if T > 1:
            assert (np.diff(att, axis=1) <= 0).all()  # attended positions come first
        if labels is not None:
            ok = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < tok.vocab_size))
            assert ok.all()
            assert (ids[att == 0] != 0).all() and (labels[att == 0] == IGNORE_INDEX).all()
        else:
            assert (ids != 0).all()
        for i in rng.integers(0, n, 2):
            s = seqs[i]
            if labels is None:
                o = 0 if offsets is None else int(offsets[i])
                want = ref.encode_one(s, k, max_len, o, n_as_base)
                got = (ids[i].tolist(), att[i].tolist())
            else:
                want = ref.encode_mlm_one(
                    s, pids[i], k, max_len, seed=seed_, epoch=epoch, mask_prob=p,
                    label_mode=label_mode, random_offset=offset_mode == 2,
                    offset=0 if offsets is None else int(offsets[i]), n_as_base=n_as_base,
                )
                got = (ids[i].tolist(), att[i].tolist(), labels[i].tolist())
            assert got == tuple(want), (key, i)
            compared += 1
        done += n
        batches += 1
    return {"inputs": done, "batches": batches, "compared": compared}


def test_fuzz_no_crash_no_out_of_bounds_write():
    t0 = time.perf_counter()
    stats = _fuzz(FUZZ_N, FUZZ_SEED)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\nfuzz: {stats}")
    assert stats["inputs"] == FUZZ_N


def test_fuzz_processids_of_any_bytes():
    rng = np.random.default_rng(FUZZ_SEED + 1)
    tok = KmerTokenizer(k=4, max_len=40)
    for _ in range(20):
        data, offs = _random_batch(rng, 300)
        pids = [data[offs[i] : offs[i + 1]][:50] for i in range(300)]
        seqs = [b"ACGT" * 10] * 300
        d = tok.encode_mlm(seqs, pa.array(pids, type=pa.binary()), seed=1)
        for i in rng.integers(0, 300, 3):
            want = ref.encode_mlm_one(seqs[i], pids[i], 4, 40, seed=1)
            assert d["input_ids"][i].tolist() == want[0]

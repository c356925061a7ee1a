"""Throughput of the compiled k-mer tokenizer + MLM masking, and its speed-up.

The baseline is a per-sequence pure-Python tokenizer of the BarcodeBERT kind:
Python slicing into k-mers, a dict look-up per k-mer, padding, then per-sequence
random masking with BarcodeBERT's labels (``id - 2`` at maskable positions). It
returns Python lists, so it is, if anything, faster than BarcodeBERT's own
pipeline (which also builds a torch tensor per sample).

Targets (asserted only with ``BIOSCAN_BENCH_STRICT=1``; CI runs this file as a
smoke test with ``--benchmark-disable``): at least 1,000,000 barcodes/s on one
core, and at least 150x the baseline measured in the same run::

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_tokenizer.py -s -q

Other vocabularies and recipes, next to the k=4 kernel in the same run
(:func:`test_vocabularies_and_recipes_next_to_k4`, nothing asserted): the
k=1 kernel (character level), :class:`~bioscan_io.vocab_tokenizer.VocabTokenizer`
over a character vocabulary and over a ~4k-token BPE trained here on the same
kind of barcodes (as BarcodeMAE's BPE variants), and BERT's 80/10/10 recipe.
All on one core (``TOKENIZERS_PARALLELISM=false`` while timing).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pytest
from baselines import K, MASK_PROB, MAX_LEN, BarcodeBertStyle

from bioscan_io.tokenizer import KmerTokenizer

try:
    import tokenizers
except ImportError:  # the hf extra; the vocabulary benchmarks are skipped without it
    tokenizers = None

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
BATCH = 4096
TARGET_RATE = 1_000_000
TARGET_SPEEDUP = 150.0
BERT_RECIPE = (0.8, 0.1, 0.1)
CHARS = ["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T", "N"]
BPE_VOCAB = 4096
# Token positions of a BPE row: a 4k BPE of random 660-base barcodes gives ~140 tokens.
BPE_MAX_TOKENS = 256


def make_barcodes(n: int, seed: int = 0) -> list[str]:
    """660-base random ACGT barcodes; one in five has a run of N or an ambiguity code."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    out = []
    for i in range(n):
        b = letters[rng.integers(0, 4, MAX_LEN)].copy()
        if i % 5 == 0:
            start = int(rng.integers(0, MAX_LEN - 20))
            b[start : start + int(rng.integers(1, 20))] = ord("N")
            b[int(rng.integers(0, MAX_LEN))] = ord("R")
        out.append(b.tobytes().decode())
    return out


@pytest.fixture(scope="module")
def barcodes() -> list[str]:
    return make_barcodes(BATCH)


@pytest.fixture(scope="module")
def arrow_batch(barcodes):
    pids = pa.array([f"BIOUG{100000 + i}-A{i % 97:02d}" for i in range(BATCH)])
    return pa.array(barcodes, type=pa.string()), pids


def _outputs(dtype):
    T = MAX_LEN // K
    return tuple(np.empty((BATCH, T), dtype=dtype) for _ in range(3))


def _mlm(tok, seqs, pids, out, epoch=0):
    return tok.encode_mlm(
        seqs, pids, seed=0, epoch=epoch, mask_prob=MASK_PROB, label_mode="barcodebert",
        random_offset=True, out=out,
    )


# --------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_bench_mlm_arrow(benchmark, arrow_batch, dtype):
    """4096 barcodes from an Arrow column: tokenize + mask into reused arrays."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    out = _outputs(dtype)
    benchmark(_mlm, tok, seqs, pids, out)
    benchmark.extra_info["barcodes_per_call"] = BATCH


def test_bench_mlm_arrow_fresh_arrays(benchmark, arrow_batch):
    """The same, allocating the output arrays on every call."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    benchmark(lambda: tok.encode_mlm(seqs, pids, mask_prob=MASK_PROB, label_mode="barcodebert",
                                     random_offset=True, dtype=np.int32))


def test_bench_mlm_list_of_str(benchmark, barcodes, arrow_batch):
    """From a Python list of str (one join + encode per call)."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    pids = arrow_batch[1].to_pylist()
    out = _outputs(np.int32)
    benchmark(_mlm, tok, barcodes, pids, out)


def test_bench_encode_only(benchmark, arrow_batch):
    """Tokenization alone (no masking)."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    out = _outputs(np.int32)[:2]
    benchmark(tok.encode, arrow_batch[0], out=out)


def test_bench_python_baseline(benchmark, barcodes):
    """The per-sequence pure-Python baseline, on 256 barcodes per call."""
    base = BarcodeBertStyle()
    benchmark(base.batch, barcodes[:256])


# --------------------------------------------------------------------------- the targets


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_throughput_and_speedup(barcodes, arrow_batch):
    """Barcodes/s of batched tokenize + mask on one core, and the speed-up over the baseline."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    base = BarcodeBertStyle()
    n_base = 1024 if STRICT else 128
    reps = (40, 7) if STRICT else (3, 1)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:  # one core, as the target says
        os.sched_setaffinity(0, {max(affinity)})
    try:
        results = {}
        for name, dtype in (("int32", np.int32), ("int64", np.int64)):
            out = _outputs(dtype)
            _mlm(tok, seqs, pids, out)  # warm-up
            results[name] = BATCH / _best_seconds(lambda: _mlm(tok, seqs, pids, out), reps[0])
        base.batch(barcodes[:64])
        base_rate = n_base / _best_seconds(lambda: base.batch(barcodes[:n_base]), reps[1])
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    rate = results["int32"]
    speedup = rate / base_rate
    print(
        f"\ntokenize+mask, k={K}, {MAX_LEN}-base barcodes, batches of {BATCH}, one core:\n"
        f"  compiled int32: {results['int32']:,.0f} barcodes/s\n"
        f"  compiled int64: {results['int64']:,.0f} barcodes/s\n"
        f"  pure-Python BarcodeBERT-style baseline: {base_rate:,.0f} barcodes/s\n"
        f"  speed-up (int32): {speedup:.0f}x, (int64): {results['int64'] / base_rate:.0f}x"
    )
    # Sanity in every mode: the fast path really masks, at the requested rate.
    d = _mlm(tok, seqs, pids, _outputs(np.int32))
    maskable = d["labels"] != -100
    assert abs((d["input_ids"][maskable] == 0).mean() - MASK_PROB) < 0.01
    if STRICT:
        assert rate >= TARGET_RATE, f"{rate:,.0f} barcodes/s < {TARGET_RATE:,}"
        assert speedup >= TARGET_SPEEDUP, f"speed-up {speedup:.0f}x < {TARGET_SPEEDUP:.0f}x"


# --------------------------------------------------------------------------- other vocabularies


@pytest.fixture(scope="module")
def bpe_tokenizer(barcodes, smoke):
    """A BPE of ~4k tokens trained with BpeTrainer on 2,000 of the barcodes (300 and 512 tokens when smoke)."""
    if tokenizers is None:
        pytest.skip("tokenizers is not installed (pip install tokenizers)")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=512 if smoke else BPE_VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    tok.train_from_iterator(barcodes[: 300 if smoke else 2000], trainer=trainer)
    return tok


def _vocab_tokenizers(bpe_tokenizer) -> dict:
    """The tokenizers compared, by name, each with its rows' width."""
    from bioscan_io.vocab_tokenizer import VocabTokenizer

    return {
        "k=4 kernel": KmerTokenizer(k=K, max_len=MAX_LEN),
        "k=1 kernel": KmerTokenizer(k=1, max_len=MAX_LEN),
        "VocabTokenizer chars": VocabTokenizer(CHARS, max_len=MAX_LEN),
        f"VocabTokenizer BPE {bpe_tokenizer.get_vocab_size()}": VocabTokenizer(
            bpe_tokenizer, max_len=MAX_LEN, max_tokens=BPE_MAX_TOKENS),
    }


def _mlm_plain(tok, seqs, pids, out, ratios=(1.0, 0.0, 0.0)):
    # Settings every tokenizer takes: no random reading frame, Hugging Face labels.
    return tok.encode_mlm(seqs, pids, seed=0, epoch=0, mask_prob=MASK_PROB, mask_ratios=ratios,
                          label_mode="masked", out=out)


def _out(tok, n: int = BATCH):
    return tuple(np.empty((n, tok.n_tokens), dtype=np.int32) for _ in range(3))


@pytest.mark.parametrize("name", ["k=1 kernel", "VocabTokenizer chars", "VocabTokenizer BPE"])
def test_bench_mlm_other_vocabularies(benchmark, arrow_batch, bpe_tokenizer, name):
    """4096 barcodes from an Arrow column, tokenized and masked over another vocabulary."""
    toks = _vocab_tokenizers(bpe_tokenizer)
    tok = next(t for n, t in toks.items() if n.startswith(name))
    seqs, pids = arrow_batch
    out = _out(tok)
    benchmark(_mlm_plain, tok, seqs, pids, out)
    benchmark.extra_info["barcodes_per_call"] = BATCH


def test_bench_mlm_bert_recipe(benchmark, arrow_batch):
    """k=4, BERT's 80/10/10 recipe (compare test_bench_mlm_arrow, the default all-[MASK])."""
    tok = KmerTokenizer(k=K, max_len=MAX_LEN)
    seqs, pids = arrow_batch
    out = _outputs(np.int32)
    benchmark(_mlm_plain, tok, seqs, pids, out, BERT_RECIPE)


def test_vocabularies_and_recipes_next_to_k4(arrow_batch, bpe_tokenizer, smoke):
    """Barcodes/s of each vocabulary and of the 80/10/10 recipe, and their ratio to the k=4 kernel."""
    toks = _vocab_tokenizers(bpe_tokenizer)
    seqs, pids = arrow_batch
    n = 256 if smoke else BATCH
    seqs, pids = seqs[:n], pids[:n]
    reps = {"kernel": 2 if smoke else 30, "vocab": 1 if smoke else 5}
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers at each call: one thread
    if affinity:
        os.sched_setaffinity(0, {max(affinity)})
    rates = {}
    try:
        cases = [(name, tok, (1.0, 0.0, 0.0)) for name, tok in toks.items()]
        cases.insert(1, ("k=4 kernel, recipe 80/10/10", toks["k=4 kernel"], BERT_RECIPE))
        for name, tok, ratios in cases:
            out = _out(tok, n)
            _mlm_plain(tok, seqs, pids, out, ratios)  # warm-up
            r = reps["kernel" if "kernel" in name else "vocab"]
            rates[name] = n / _best_seconds(lambda: _mlm_plain(tok, seqs, pids, out, ratios), r)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
        if parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    base = rates["k=4 kernel"]
    lines = [f"  {name:34s} {rate:>12,.0f} barcodes/s  {rate / base:8.4f}x k=4" for name, rate in rates.items()]
    print(f"\ntokenize+mask (p={MASK_PROB}, labels 'masked', int32), {MAX_LEN}-base barcodes, batches of {n}, "
          f"one core:\n" + "\n".join(lines))
    # Sanity in every mode: each really masks, at the requested rate.
    for name, tok in toks.items():
        d = _mlm_plain(tok, seqs, pids, _out(tok, n), BERT_RECIPE)
        selected = d["labels"] != -100
        maskable = selected | ((d["attention_mask"] == 1) & (d["labels"] == -100)
                               & np.isin(d["input_ids"], getattr(tok, "maskable_ids", np.arange(2, tok.vocab_size))))
        assert abs(selected.sum() / maskable.sum() - MASK_PROB) < 0.05, name

"""The cost of text tokens in ``clip`` batches, against CLIBD's per-sample tokenizer calls.

CLIBD (bioscan-ml/clibd, bioscanclip/util/dataset.py, ``Dataset_for_CL.__getitem__``)
tokenizes each sample's "order family genus species" on its own::

    tokens = tokenizer([text], padding="max_length", max_length=20, truncation=True)
    input_ids = torch.tensor(tokens["input_ids"][0])   # and token_type_ids, attention_mask

and its DataLoader stacks the three tensors of a batch (``default_collate``).
Its open PR #34 found that this slowed its data loading. Here the same strings
go through the same tokenizer:

- ``CLIBD per sample``: the lines above per string, then ``default_collate``;
- ``bioscan-io TextTokens (transformers)``: :class:`bioscan_io.text.TextTokens`
  over the same ``transformers`` tokenizer, one call per batch (CLIBD's call,
  ``return_tensors="np"``), then ``torch.from_numpy`` as the loader does;
- ``bioscan-io TextTokens (tokenizers)``: the same over its Rust backend
  (``tokenizers.Tokenizer``): one ``encode_batch`` per batch;

and, in the loader, ``make_loader(split, "clip")`` with and without a text
tokenizer (``num_workers=0``, CLIBD's augmentation): what the text tokens add
to a batch that also decodes and augments its images.

The tokenizer is a BERT-style uncased WordPiece trained here on the generated
names (no download; CLIBD's is prajjwal1/bert-small's 30,522-token vocabulary,
the same kind of model). Batches of 500 strings, CLIBD's batch per process.
Timings interleave the pipelines round by round and print the median of
per-round ratios (``rounds.py``); nothing is asserted::

    python -m pytest benchmarks/test_bench_text.py -s -q

``BIOSCAN_BENCH_TEXT_RECORDS`` (records of the generated split, default 2,000),
``BIOSCAN_BENCH_ROUNDS`` (default 5). Needs ``tokenizers`` and ``transformers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import generate_split
from rounds import LoaderEpochs, fmt, interleaved, paired

from bioscan_io.loader import make_loader
from bioscan_io.text import CLIBD_TEXT_MAX_LEN, TextTokens

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

N_RECORDS = int(os.environ.get("BIOSCAN_BENCH_TEXT_RECORDS", "2000"))
ROUNDS = int(os.environ.get("BIOSCAN_BENCH_ROUNDS", "5"))
SMOKE_RECORDS, BATCH, VOCAB = 200, 500, 8000


def wordpiece(texts: list[str]) -> tokenizers.Tokenizer:
    """An uncased BERT WordPiece ([CLS] text [SEP]) trained on ``texts``."""
    from tokenizers import normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece

    tok = tokenizers.Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                             show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return tok


class Strings:
    """One epoch = every string once, in batches of ``BATCH``; ``make(chunk)`` makes one batch's tensors."""

    def __init__(self, name: str, texts: list[str], make):
        self.name, self.texts, self.make = name, texts, make
        self.epoch()  # warm

    def epoch(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        n = 0
        for start in range(0, len(self.texts), BATCH):
            out = self.make(self.texts[start:start + BATCH])
            n += len(next(iter(out.values())))
        return time.perf_counter() - t0, n

    def close(self):
        pass


def clibd_per_sample(hf):
    """CLIBD's __getitem__ lines per string, then the DataLoader's default_collate."""
    collate = torch.utils.data.default_collate

    def make(chunk):
        rows = []
        for text in chunk:
            tokens = hf([text], padding="max_length", max_length=CLIBD_TEXT_MAX_LEN, truncation=True)
            rows.append({name: torch.tensor(tokens[name][0])
                         for name in ("input_ids", "token_type_ids", "attention_mask")})
        return collate(rows)
    return make


def ours(tokenizer):
    text = TextTokens(tokenizer, CLIBD_TEXT_MAX_LEN)

    def make(chunk):
        return {name: torch.from_numpy(a) for name, a in text(chunk).items()}
    return make


@pytest.fixture(scope="module")
def split(smoke):
    """A generated split (cropped_256 images) and the clip text of its records, in loader order."""
    base = Path(tempfile.mkdtemp(prefix="bioscan-bench-text-"))
    n = SMOKE_RECORDS if smoke else N_RECORDS
    try:
        _, folder = generate_split(base, n, seed=41, maxcount=500)
        texts = [t for b in make_loader(folder, "clip", batch_size=BATCH, train=False) for t in b["text"]]
        yield folder, texts
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tokenizer_pair(split):
    """(tokenizers.Tokenizer, the transformers BertTokenizerFast over it)."""
    rust = wordpiece(split[1])
    hf = transformers.BertTokenizerFast(tokenizer_object=rust, do_lower_case=True)
    return rust, hf


@pytest.fixture
def one_core():
    """Tokenizers on one thread (as in a DataLoader worker), torch too."""
    before_env, before = os.environ.get("TOKENIZERS_PARALLELISM"), torch.get_num_threads()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if before_env is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before_env


@pytest.mark.parametrize("side", ["clibd", "ours"])
def test_bench_text_tokens(benchmark, split, tokenizer_pair, smoke, one_core, side):
    rust, hf = tokenizer_pair
    pipe = Strings(side, split[1], clibd_per_sample(hf) if side == "clibd" else ours(hf))
    benchmark.pedantic(pipe.epoch, rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info["strings_per_epoch"] = len(split[1])


def test_text_tokens_per_batch(split, tokenizer_pair, smoke, one_core):
    """Per-batch cost of text tokens: CLIBD's per-sample calls vs one call per batch."""
    rust, hf = tokenizer_pair
    texts = split[1]
    pipes = {"clibd": Strings("CLIBD per sample + default_collate", texts, clibd_per_sample(hf)),
             "ours_hf": Strings("bioscan-io TextTokens (transformers)", texts, ours(hf)),
             "ours_rust": Strings("bioscan-io TextTokens (tokenizers)", texts, ours(rust))}
    t = interleaved(pipes, 1 if smoke else ROUNDS)
    n, batches = len(texts), -(-len(texts) // BATCH)
    print(f"\nText tokens, {n} strings in batches of {BATCH}, max_length {CLIBD_TEXT_MAX_LEN}, one core:")
    for key, pipe in pipes.items():
        print(fmt(pipe.name, t[key], n, "str/s") + f"  {1e3 * min(t[key]) / batches:6.2f} ms/batch")
    for key in ("ours_hf", "ours_rust"):
        print(f"  {pipes[key].name} vs CLIBD per sample: {1 / paired(t, key, 'clibd'):.1f}x "
              "(median of per-round ratios)")


def test_text_tokens_in_clip_batches(split, tokenizer_pair, smoke, one_core):
    """make_loader("clip", recipe="clibd") with and without a text tokenizer: what the tokens add."""
    folder, texts = split
    rust, hf = tokenizer_pair

    def loader(text_tokenizer):
        return LoaderEpochs(make_loader(folder, "clip", recipe="clibd", batch_size=BATCH, seed=1,
                                        text_tokenizer=text_tokenizer))
    pipes = {"plain": loader(None), "text": loader(hf)}
    try:
        t = interleaved(pipes, 1 if smoke else ROUNDS)
    finally:
        for p in pipes.values():
            p.close()
    n, batches = len(texts), -(-len(texts) // BATCH)
    print(f"\nclip batches (recipe clibd, {BATCH} samples, num_workers=0), {n} samples:")
    print(fmt("without text tokens", t["plain"], n) + f"  {1e3 * min(t['plain']) / batches:7.1f} ms/batch")
    print(fmt("with text tokens (transformers)", t["text"], n) + f"  {1e3 * min(t['text']) / batches:7.1f} ms/batch")
    print(f"  time with / without: {paired(t, 'text', 'plain'):.3f} (median of per-round ratios)")

"""Model-family recipes through make_loader: text tokens in clip batches, recipe options, tokenizer objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioscan_io.loader import make_loader
from bioscan_io.recipes import RECIPES
from bioscan_io.schema import METADATA_CSV, BioscanError
from bioscan_io.shard import shard_split
from bioscan_io.text import TextTokens
from bioscan_io.tokenizer import KmerTokenizer

tokenizers = pytest.importorskip("tokenizers")

QUIET = dict(progress=False, log=lambda m: None)
TEXT_KEYS = ("text_input_ids", "text_attention_mask")


@pytest.fixture(scope="module")
def shards(dataset_small, tmp_path_factory) -> Path:
    """The 400-record dataset's 'all' split in 4 shards."""
    out = tmp_path_factory.mktemp("recipe-shards")
    shard_split(dataset_small, "all", out=out, maxcount=100, **QUIET)
    return out / "all"


def wordpiece(words) -> "tokenizers.Tokenizer":
    """A small uncased BERT-style WordPiece tokenizer, its vocabulary built here (no download)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for word in sorted({w.lower() for w in words}):
        vocab.append(word[:3])
        vocab += [f"##{word[i:i + 3]}" for i in range(3, len(word), 3)]
    vocab = list(dict.fromkeys(vocab))
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    return tok


@pytest.fixture(scope="module")
def text_tokenizer(shards):
    texts = [t for batch in make_loader(shards, "clip", batch_size=100, train=False) for t in batch["text"]]
    # Half the words only, so that [UNK] occurs too.
    words = sorted({w for t in texts for w in t.split()})
    return wordpiece(words[::2])


def reference(tok, texts, max_len):
    """The tokenizer's own output, one call per string, cut to max_len (keeping [SEP] last) and padded."""
    ids, masks = [], []
    for text in texts:
        row = tok.encode(text).ids
        if len(row) > max_len:
            row = row[:max_len - 1] + row[-1:]
        ids.append(row + [tok.token_to_id("[PAD]")] * (max_len - len(row)))
        masks.append([1] * len(row) + [0] * (max_len - len(row)))
    return np.array(ids), np.array(masks)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_clip_batches_carry_the_tokenizers_own_text_tokens(shards, text_tokenizer, num_workers):
    loader = make_loader(shards, "clip", batch_size=64, num_workers=num_workers, seed=3,
                         text_tokenizer=text_tokenizer, text_max_len=8)
    seen = 0
    for batch in loader:
        ids, att = reference(text_tokenizer, batch["text"], 8)
        assert batch["text_input_ids"].dtype == torch.int64
        np.testing.assert_array_equal(batch["text_input_ids"].numpy(), ids)
        np.testing.assert_array_equal(batch["text_attention_mask"].numpy(), att)
        seen += len(batch["text"])
    assert seen == 400
    assert (ids == text_tokenizer.token_to_id("[UNK]")).any()  # the vocabulary lacks some words
    assert text_tokenizer.padding is None and text_tokenizer.truncation is None  # the user's object unchanged


def test_transformers_fast_tokenizer_is_called_as_clibd_calls_it(shards, text_tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=text_tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    batch = next(iter(make_loader(shards, "clip", batch_size=50, text_tokenizer=hf)))
    want = hf(batch["text"], padding="max_length", max_length=20, truncation=True)  # CLIBD's call, default length
    np.testing.assert_array_equal(batch["text_input_ids"].numpy(), want["input_ids"])
    np.testing.assert_array_equal(batch["text_attention_mask"].numpy(), want["attention_mask"])
    # Whatever else the tokenizer returns comes along (transformers 5 leaves token_type_ids out by default).
    assert ("text_token_type_ids" in batch) == ("token_type_ids" in want)
    if "token_type_ids" in want:
        np.testing.assert_array_equal(batch["text_token_type_ids"].numpy(), want["token_type_ids"])


def test_any_callable_over_strings(shards):
    def chars(texts):
        ids = [[ord(c) for c in t[:12].ljust(12)] for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * 12 for _ in texts]}

    batch = next(iter(make_loader(shards, "clip", batch_size=10, text_tokenizer=chars)))
    assert batch["text_input_ids"].shape == (10, 12)
    assert [bytes(r.tolist()).decode().rstrip() for r in batch["text_input_ids"]] == [t[:12].rstrip() for t in
                                                                                      batch["text"]]


@pytest.mark.parametrize("bad, message", [
    (lambda texts: [[1, 2]] * len(texts), "must return a mapping with 'input_ids' and 'attention_mask'"),
    (lambda texts: {"input_ids": [[1], [1, 2]] * (len(texts) // 2), "attention_mask": [[1]] * len(texts)},
     "not a rectangular integer array"),
    (lambda texts: {"input_ids": [[1]], "attention_mask": [[1]]}, "has shape (1, 1); expected (10, length)"),
    (lambda texts: 1 / 0, "text_tokenizer failed on a batch of 10 strings"),
])
def test_bad_text_tokenizer_is_one_line(shards, bad, message):
    with pytest.raises(BioscanError, match="^[^\n]*$") as err:
        next(iter(make_loader(shards, "clip", batch_size=10, text_tokenizer=bad)))
    assert message in str(err.value)


def test_text_tokenizer_is_refused_outside_clip_and_when_not_a_tokenizer(shards):
    with pytest.raises(BioscanError, match="text_tokenizer is for task 'clip'"):
        make_loader(shards, "mlm", text_tokenizer=lambda texts: {})
    with pytest.raises(BioscanError, match="text_tokenizer must be a tokenizers.Tokenizer"):
        make_loader(shards, "clip", text_tokenizer="bert-base-uncased")
    with pytest.raises(BioscanError, match="text_max_len must be an integer >= 1"):
        make_loader(shards, "clip", text_tokenizer=lambda t: {}, text_max_len=0)


def test_text_tokens_nbytes_bound_the_batch():
    tt = TextTokens(lambda texts: {}, max_len=20)
    assert tt.nbytes(256) == 3 * 256 * 20 * 8


# --------------------------------------------------------------------------- recipes


def test_recipe_options_replace_defaults_and_caller_options_win(shards):
    bb = make_loader(shards, "mlm", recipe="barcodebert", batch_size=40, seed=1)
    cfg = bb.dataset.task.tokens
    assert (cfg.k, cfg.max_len, cfg.mask_prob, cfg.label_mode, cfg.random_offset) == (4, 660, 0.5, "barcodebert",
                                                                                      True)
    mae = make_loader(shards, "mlm", recipe="barcodemae", k=4, batch_size=40)
    assert mae.dataset.task.tokens.k == 4  # the caller's k, over BarcodeMAE's 6
    assert make_loader(shards, "mlm", recipe="barcodemae").dataset.task.tokens.k == 6
    plain = make_loader(shards, "mlm").dataset.task.tokens
    assert (plain.k, plain.label_mode, plain.random_offset, plain.mask_ratios) == (4, "masked", False, (1.0, 0.0, 0.0))
    clibd = make_loader(shards, "clip", recipe="clibd").dataset.task.images
    assert (clibd.pre_resize, clibd.rotate, clibd.hflip, clibd.vflip, clibd.size, clibd.resize) == (256, 45.0, True,
                                                                                                     True, 224, 256)


def test_recipe_batches_equal_the_tokenizer_with_the_recipes_settings(shards, barcodes):
    loader = make_loader(shards, "mlm", recipe="barcodebert", batch_size=50, seed=2)
    batch = next(iter(loader))
    tok = KmerTokenizer(k=4, max_len=660)
    dna = [barcodes[p] for p in batch["processid"]]
    ref = tok.encode_mlm(dna, batch["processid"], seed=2, epoch=0, mask_prob=0.5, label_mode="barcodebert",
                         random_offset=True)
    for key in ("input_ids", "attention_mask", "labels"):
        np.testing.assert_array_equal(batch[key].numpy(), ref[key])


def test_mask_ratios_reach_the_kernel(shards, barcodes):
    loader = make_loader(shards, "mlm", batch_size=50, seed=4, mask_ratios=(0.8, 0.1, 0.1))
    batch = next(iter(loader))
    ref = KmerTokenizer().encode_mlm([barcodes[p] for p in batch["processid"]], batch["processid"], seed=4,
                                     mask_ratios=(0.8, 0.1, 0.1))
    np.testing.assert_array_equal(batch["input_ids"].numpy(), ref["input_ids"])
    np.testing.assert_array_equal(batch["labels"].numpy(), ref["labels"])
    selected = ref["labels"] != -100
    assert 0 < (ref["input_ids"][selected] != 0).mean() < 0.35  # some selected positions are not [MASK]


def test_a_tokenizer_object_replaces_k(shards, barcodes):
    tok = KmerTokenizer(k=6, max_len=600)
    loader = make_loader(shards, "classify", batch_size=30, tokenizer=tok)
    batch = next(iter(loader))
    ids, _ = tok.encode([barcodes[p] for p in batch["processid"]])
    np.testing.assert_array_equal(batch["input_ids"].numpy(), ids)
    with pytest.raises(BioscanError, match="tokenizer or k"):
        make_loader(shards, "classify", tokenizer=tok, k=6)
    with pytest.raises(BioscanError, match="must have KmerTokenizer's interface"):
        make_loader(shards, "classify", tokenizer="bpe.json")


def test_recipe_refusals_are_one_line(shards):
    with pytest.raises(BioscanError, match=r"recipe must be one of 'barcodebert'.*got 'bert'"):
        make_loader(shards, "mlm", recipe="bert")
    with pytest.raises(BioscanError, match="recipe for BarcodeBERT .* not 'clip'"):
        make_loader(shards, "clip", recipe="barcodebert")
    with pytest.raises(BioscanError, match=r"mask_ratios must be three non-negative numbers \(mask, random, keep\) summing to 1"):
        make_loader(shards, "mlm", mask_ratios=(0.8, 0.1))


def test_every_recipe_option_is_a_loader_option_with_a_source():
    from bioscan_io.options import LOADER_OPTIONS, check_options

    for name, recipe in RECIPES.items():
        assert set(recipe.options) | set(recipe.built) <= set(LOADER_OPTIONS), name
        assert set(recipe.sources) == set(recipe.options) | set(recipe.built), name
        check_options(dict(recipe.options_for(recipe.tasks[0])))


@pytest.fixture(scope="module")
def barcodes(dataset_small) -> dict[str, str]:
    """processid -> barcode, from the metadata the shards were made of."""
    df = pd.read_csv(dataset_small / METADATA_CSV, dtype=str, keep_default_na=False)
    return dict(zip(df["processid"], df["dna_barcode"]))


def test_a_vocabulary_tokenizer_serves_mlm_and_refuses_kmer_reading_frames(shards, barcodes):
    from bioscan_io.vocab_tokenizer import VocabTokenizer

    chars = VocabTokenizer(["[MASK]", "[UNK]", "[PAD]", "A", "C", "G", "T", "N"], max_len=660)
    batch = next(iter(make_loader(shards, "mlm", batch_size=40, seed=5, tokenizer=chars, mask_ratios=(0.8, 0.1, 0.1))))
    ref = chars.encode_mlm([barcodes[p] for p in batch["processid"]], batch["processid"], seed=5,
                           mask_ratios=(0.8, 0.1, 0.1))
    np.testing.assert_array_equal(batch["input_ids"].numpy(), ref["input_ids"])
    np.testing.assert_array_equal(batch["labels"].numpy(), ref["labels"])
    with pytest.raises(BioscanError, match="random_offset=True .* needs a k-mer tokenizer, not VocabTokenizer"):
        make_loader(shards, "mlm", recipe="barcodemae", tokenizer=chars)
    make_loader(shards, "mlm", recipe="barcodemae", tokenizer=chars, random_offset=False)  # the way out it names


def test_barcodemamba_recipe_pads_characters_on_the_left_with_n(shards, barcodes):
    loader = make_loader(shards, "embed", recipe="barcodemamba", modality="dna", batch_size=20)
    batch = next(iter(loader))
    ids, att = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert ids.shape == (20, 660)
    table = {c: i for i, c in enumerate(("[MASK]", "[SEP]", "[UNK]", "A", "C", "G", "T", "N"))}
    for row, mask, pid in zip(ids, att, batch["processid"]):
        seq = barcodes[pid][:660]
        want = [table["N"]] * (660 - len(seq)) + [table.get(c, table["[UNK]"]) for c in seq]
        assert row.tolist() == want  # BarcodeMamba's ids: N-padded on the left, no special tokens
        assert mask.tolist() == [0] * (660 - len(seq)) + [1] * len(seq)
    with pytest.raises(BioscanError, match="recipe 'barcodemamba', which sets a tokenizer, or k"):
        make_loader(shards, "embed", recipe="barcodemamba", k=6)


def test_the_top_level_api_names_resolve():
    import bioscan_io

    for name in bioscan_io.__all__:
        assert getattr(bioscan_io, name) is not None, name
    assert bioscan_io.RECIPES is RECIPES

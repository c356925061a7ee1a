"""VocabTokenizer: user vocabularies (BPE, characters, token lists) against tokenizers' own encode + the oracle."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")

from bioscan_io.schema import BioscanError  # noqa: E402
from bioscan_io.testing import oracle as ref  # noqa: E402
from bioscan_io.tokenizer import IGNORE_INDEX, KmerTokenizer  # noqa: E402
from bioscan_io.vocab_tokenizer import PADDING_SIDES, VocabTokenizer  # noqa: E402
from test_tokenizer_mlm import barcodes, pids  # noqa: E402
from test_tokenizer_recipes import RECIPES, recipe  # noqa: E402
from test_tokenizer_strategies import as_form, sequence  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = ["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T", "N"]
# KmerTokenizer(k=1)'s vocabulary: no [PAD], so rows are padded with [UNK] as there.
KMER1 = ["[MASK]", "[UNK]", "A", "C", "G", "T"]
MULTI = ["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T", "AC", "GT", "ACG", "TTT", "NN"]


def train_bpe(vocab_size: int = 300, n: int = 300, length: int = 300) -> tokenizers.Tokenizer:
    """A BPE model trained on generated barcodes with BpeTrainer (no download)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(barcodes(n, seed=42, length=length, n_rate=0.03), trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def bpe() -> tokenizers.Tokenizer:
    return train_bpe()


def _bpe_with_cls(bpe: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer.from_str(bpe.to_str())
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return tok


def sources(bpe) -> dict:
    """The vocabularies under test: (what VocabTokenizer takes, the equivalent tokenizers.Tokenizer)."""
    out = {}
    for name, tokens in (("chars", CHARS), ("kmer1", KMER1), ("multi", MULTI)):
        out[name] = (tokens, VocabTokenizer(tokens)._tok)  # the model it builds is the reference's model
    out["bpe"] = (bpe, bpe)
    cls = _bpe_with_cls(bpe)
    out["bpe_cls"] = (cls, cls)
    return out


# --------------------------------------------------------------------------- the reference


def reference(hf: tokenizers.Tokenizer, seqs, processids, max_len, n_tokens, offsets=None,
              add_special_tokens=True, padding_side="right", **mlm):
    """tokenizers' own per-sequence encode, padded, then the oracle's masking rule (mlm given)."""
    hf = tokenizers.Tokenizer.from_str(hf.to_str())
    hf.no_padding()
    hf.enable_truncation(n_tokens)
    index = hf.get_vocab(with_added_tokens=True)
    special = {i for i, a in hf.get_added_tokens_decoder().items() if a.special} | {
        index[t] for t in ("[PAD]", "[UNK]", "[MASK]") if t in index}
    maskable = sorted(set(range(max(index.values()) + 1)) - special)
    pad = index.get("[PAD]", index.get("[UNK]"))
    rows = []
    for i, s in enumerate(seqs):
        o = 0 if offsets is None else offsets[i]
        text = ref.as_bytes(s)[o:][:max_len].decode("utf-8", "replace")
        got = hf.encode(text, add_special_tokens=add_special_tokens).ids
        ids = got + [pad] * (n_tokens - len(got))
        att = [1] * len(got) + [0] * (n_tokens - len(got))
        if padding_side == "left":
            ids, att = ids[len(got):] + ids[:len(got)], att[len(got):] + att[:len(got)]
        if mlm:
            key = ref.sample_key(processids[i], mlm["seed"], mlm["epoch"])
            masked, labels = ref.mask_row(ids, att, key, maskable, index["[MASK]"], mlm["mask_prob"],
                                          mlm["mask_ratios"], mlm["label_mode"])
            rows.append((masked, att, labels))
        else:
            rows.append((ids, att))
    return [list(col) for col in zip(*rows)] if rows else None


KINDS = ["chars", "kmer1", "multi", "bpe", "bpe_cls"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    seed=st.integers(0, 2**64 - 1),
    p=st.one_of(st.sampled_from([0.15, 0.5, 1.0]), st.floats(0, 1)),
    ratios=recipe(),
    label_mode=st.sampled_from(["masked", "barcodebert"]),
    dtype=st.sampled_from([np.int32, np.int64]),
    form=st.sampled_from(["bytes", "str", "object", "arrow_binary", "arrow_string", "chunked"]),
)
def test_encode_mlm_matches_tokenizers_and_the_oracle(bpe, kind, data, seed, p, ratios, label_mode, dtype, form):
    source, hf = sources(bpe)[kind]
    max_len = data.draw(st.integers(0, 40), "max_len")
    extra = hf.num_special_tokens_to_add(False)  # the least max_tokens (test_bad_sources_are_one_line)
    max_tokens = data.draw(st.one_of(st.none(), st.integers(extra, 30)), "max_tokens")
    seqs = data.draw(st.lists(sequence(max_len, 3), max_size=6), "seqs")
    offsets = data.draw(st.one_of(st.none(), st.lists(st.integers(0, 50), min_size=len(seqs), max_size=len(seqs))))
    processids = data.draw(st.lists(st.text(max_size=8), min_size=len(seqs), max_size=len(seqs)))
    side = data.draw(st.sampled_from(PADDING_SIDES), "padding_side")
    tok = VocabTokenizer(source, max_len=max_len, max_tokens=max_tokens, padding_side=side)
    values, ref_seqs = as_form(seqs, form)
    mlm = dict(seed=seed, epoch=3, mask_prob=p, mask_ratios=ratios, label_mode=label_mode)
    got = tok.encode_mlm(values, processids, offsets=offsets, dtype=dtype, **mlm)
    want = reference(hf, ref_seqs, processids, max_len, tok.n_tokens, offsets, padding_side=side, **mlm)
    if want is None:
        assert got["input_ids"].shape == (0, tok.n_tokens)
        return
    assert got["input_ids"].tolist() == want[0]
    assert got["attention_mask"].tolist() == want[1]
    assert got["labels"].tolist() == want[2]
    plain = tok.encode(values, offsets=offsets, dtype=dtype)
    assert plain[1].tolist() == want[1]


@pytest.mark.parametrize("kind", KINDS)
def test_long_barcodes_match_the_oracle(bpe, kind):
    source, hf = sources(bpe)[kind]
    seqs, ids = barcodes(12, seed=3, length=1200, n_rate=0.03), pids(12)
    tok = VocabTokenizer(source, max_len=1100)  # rows of several kernel blocks (512 positions)
    for label_mode in ("masked", "barcodebert"):
        mlm = dict(seed=9, epoch=1, mask_prob=0.5, mask_ratios=(0.8, 0.1, 0.1), label_mode=label_mode)
        got = tok.encode_mlm(pa.array(seqs), ids, **mlm)
        want = reference(hf, seqs, ids, 1100, tok.n_tokens, **mlm)
        assert got["input_ids"].tolist() == want[0]
        assert got["attention_mask"].tolist() == want[1]
        assert got["labels"].tolist() == want[2]


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("ratios", RECIPES)
@pytest.mark.parametrize("label_mode", ["masked", "barcodebert"])
def test_character_vocabulary_is_kmer_tokenizer_k1(ratios, label_mode):
    # Same ids, same maskable tokens, same keys: the two must agree bit for bit.
    seqs = barcodes(40, seed=5, length=200, n_rate=0.1)
    seqs = [s[:50] + "acgR" + s[50:] for s in seqs]
    kw = dict(seed=4, epoch=2, mask_prob=0.4, mask_ratios=ratios, label_mode=label_mode)
    a = VocabTokenizer(KMER1, max_len=180).encode_mlm(seqs, pids(40), **kw)
    b = KmerTokenizer(k=1, max_len=180).encode_mlm(seqs, pids(40), **kw)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_bpe_masking_shares_and_special_tokens(bpe):
    tok = VocabTokenizer(_bpe_with_cls(bpe), max_len=660, max_tokens=300)
    seqs = barcodes(400, seed=8)
    plain, att = tok.encode(seqs)
    d = tok.encode_mlm(seqs, pids(400), seed=1, mask_prob=0.5, mask_ratios=(0.8, 0.1, 0.1))
    cls, sep, mask = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    assert (plain[:, 0] == cls).all() and (plain == sep).sum() == 400
    lens = att.sum(axis=1)
    assert lens.max() < 300 and lens.min() >= 2  # room to spare: nothing was cut
    maskable = np.isin(plain, tok.maskable_ids) & (att == 1)
    selected = d["labels"] != IGNORE_INDEX
    assert not (selected & ~maskable).any()
    assert np.array_equal(d["labels"][selected], plain[selected])
    assert np.array_equal(d["input_ids"][~selected], plain[~selected])
    n = selected.sum()
    assert abs(n - 0.5 * maskable.sum()) < 5 * math.sqrt(maskable.sum() * 0.25)
    got, orig = d["input_ids"][selected], plain[selected]
    for share, m in ((0.8, got == mask), (0.1, (got != mask) & (got != orig))):
        assert abs(m.sum() - n * share) < 5 * math.sqrt(n * share * (1 - share)) + n / len(tok.maskable_ids)
    assert np.isin(got[got != mask], tok.maskable_ids).all()


def test_mask_does_not_depend_on_batch_order(bpe):
    tok = VocabTokenizer(bpe, max_tokens=200)
    seqs, ids = barcodes(60, seed=2), pids(60)
    full = tok.encode_mlm(seqs, ids, seed=3, epoch=1, mask_ratios=(0.8, 0.1, 0.1))
    order = np.random.default_rng(0).permutation(60)
    shuffled = tok.encode_mlm([seqs[i] for i in order], [ids[i] for i in order], seed=3, epoch=1,
                              mask_ratios=(0.8, 0.1, 0.1), dtype=np.int32, return_tensors="pt")
    for name in full:
        assert np.array_equal(shuffled[name].numpy(), full[name][order])


def test_file_folder_object_and_pickle_agree(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(str(path))
    seqs, ids = barcodes(20, seed=6), pids(20)
    kw = dict(seed=1, epoch=0, mask_ratios=(0.8, 0.1, 0.1))
    want = VocabTokenizer(bpe, max_tokens=200).encode_mlm(seqs, ids, **kw)
    for source in (str(path), path, tmp_path):
        tok = VocabTokenizer(source, max_tokens=200)
        again = pickle.loads(pickle.dumps(tok))  # DataLoader workers get a pickled copy
        for t in (tok, again):
            got = t.encode_mlm(seqs, ids, **kw)
            for name in want:
                assert np.array_equal(got[name], want[name])
    # the caller's tokenizer is not changed (truncation and padding are set on a copy)
    assert bpe.truncation is None and bpe.padding is None


def test_transformers_fast_tokenizer_is_taken(bpe):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe)
    seqs = barcodes(5, seed=1)
    a = VocabTokenizer(fast, max_tokens=200).encode(seqs)
    b = VocabTokenizer(bpe, max_tokens=200).encode(seqs)
    assert np.array_equal(a[0], b[0])


def test_vocabulary_lookups_and_outputs():
    tok = VocabTokenizer(CHARS, max_len=5)
    assert (tok.vocab_size, tok.pad_id, tok.n_tokens, tok.vocab) == (8, 0, 5, CHARS)
    assert tok.token_to_id("G") == 5 and tok.id_to_token(7) == "N"
    assert tok.maskable_ids.tolist() == [3, 4, 5, 6, 7]
    ids, att = tok.encode(["ACGTNACGT", "AC", None, b"\xffA"])
    assert ids.tolist() == [[3, 4, 5, 6, 7], [3, 4, 0, 0, 0], [0] * 5, [1, 3, 0, 0, 0]]
    assert att.tolist() == [[1] * 5, [1, 1, 0, 0, 0], [0] * 5, [1, 1, 0, 0, 0]]
    assert tok.decode(ids[1]) == ["A", "C", "[PAD]", "[PAD]", "[PAD]"]
    out = (np.zeros((4, 5), np.int32), np.zeros((4, 5), np.int32), np.zeros((4, 5), np.int32))
    d = tok.encode_mlm(["ACGTN"] * 4, ["a", "b", "c", "d"], mask_prob=1.0, out=out)
    assert d["input_ids"] is out[0] and (out[0] == 2).all() and out[2].tolist() == [[3, 4, 5, 6, 7]] * 4
    assert VocabTokenizer(MULTI, max_len=9).encode(["ACGTTTNNA"])[0].tolist() == [[9, 10, 11, 3, 0, 0, 0, 0, 0]]


# --------------------------------------------------------------------------- bad input


def _one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_sources_are_one_line(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    cases = [
        (tmp_path / "missing.json", ("missing.json", "not found")),
        (tmp_path, ("tokenizer.json", "not found")),
        (bad_json, ("bad.json", "not a Hugging Face tokenizer.json")),
        (42, ("VocabTokenizer takes", "int")),
        (["A", "C", "A"], ("'A'", "twice")),
        (["A", ""], ("non-empty",)),
        ([], ("non-empty",)),
        (["[PAD]", "AC", "GT"], ("[UNK]",)),
        (["A", "C"], ("neither [PAD] nor [UNK]",)),
    ]
    for source, words in cases:
        with pytest.raises(BioscanError) as exc:
            VocabTokenizer(source)
        _one_line(exc, *words)
    for kw, words in ((dict(max_len=-1), ("max_len",)), (dict(max_tokens=1.5), ("max_tokens",)),
                      (dict(padding_side="start"), ("padding_side", "start"))):
        with pytest.raises(BioscanError) as exc:
            VocabTokenizer(CHARS, **kw)
        _one_line(exc, *words)


def test_max_tokens_holds_the_post_processor_tokens(bpe):
    with_cls = _bpe_with_cls(bpe)
    with pytest.raises(BioscanError) as exc:
        VocabTokenizer(with_cls, max_tokens=1)
    _one_line(exc, "max_tokens must be at least 2", "got 1")
    tok = VocabTokenizer(with_cls, max_len=660, max_tokens=2)
    ids, att = tok.encode(["ACGT", ""])
    assert ids.tolist() == [[2, 3]] * 2 and att.tolist() == [[1, 1]] * 2
    assert VocabTokenizer(with_cls, max_len=10).n_tokens == 12
    assert VocabTokenizer(with_cls, max_len=10, add_special_tokens=False).n_tokens == 10


def test_bad_mlm_arguments_are_one_line():
    no_mask = VocabTokenizer(["[PAD]", "[UNK]", "A", "C"])
    with pytest.raises(BioscanError) as exc:
        no_mask.encode_mlm(["AC"], ["x"])
    _one_line(exc, "[MASK]")
    no_mask.encode(["AC"])  # encoding needs no [MASK]
    tok = VocabTokenizer(CHARS, max_len=8)
    cases = [
        (dict(mask_ratios=(0.5, 0.5)), "mask_ratios"),
        (dict(mask_ratios=(0.8, 0.1, 0.2)), "mask_ratios"),
        (dict(mask_prob=2), "mask_prob"),
        (dict(label_mode="hf"), "label_mode"),
        (dict(random_offset=True), "random_offset"),
        (dict(seed=-1), "seed"),
        (dict(offsets=[-1]), "offsets"),
        (dict(dtype=np.float32), "dtype"),
        (dict(return_tensors="tf"), "return_tensors"),
    ]
    for kw, word in cases:
        with pytest.raises(BioscanError) as exc:
            tok.encode_mlm(["ACGT"], ["x"], **kw)
        _one_line(exc, word)
    with pytest.raises(BioscanError) as exc:
        tok.encode_mlm(["ACGT"], ["x", "y"])
    _one_line(exc, "2 processids for 1 sequences")
    for call, word in ((lambda: tok.token_to_id("Q"), "'Q'"), (lambda: tok.id_to_token(8), "8"),
                       (lambda: tok.decode([[0, 99]]), "ids")):
        with pytest.raises(BioscanError) as exc:
            call()
        _one_line(exc, word)


def test_import_without_tokenizers_says_how_to_install():
    code = "import sys; sys.modules['tokenizers'] = None; import bioscan_io.vocab_tokenizer"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "pip install tokenizers" in last
    assert "During handling" not in out.stderr  # one error, not a chain


@pytest.mark.parametrize("tokens", [CHARS, KMER1, CHARS + ["é", "u"]], ids=["chars", "kmer1", "non_ascii"])
@pytest.mark.parametrize("side", PADDING_SIDES)
def test_character_lists_by_byte_table_equal_the_tokenizer(tokens, side):
    tok = VocabTokenizer(tokens, max_len=200, padding_side=side)
    assert tok._byte_ids is not None  # a plain list of characters: looked up by byte
    ascii_ = bytes(b for b in range(128) if b != ord("["))
    batches = [
        [ascii_, b"ACGTNNNNACGT", b"", b"acgtu", b"A" * 250],  # the table alone
        [b"AC[PAD]GT[MASK]", b"ACGT\xc3\xa9N", b"\xff\xfeAC", ascii_],  # the tokenizer's cases: whole batch to it
    ]
    for seqs in batches:
        got = tok.encode(seqs)
        want = reference(tok._tok, seqs, None, 200, tok.n_tokens, padding_side=side)
        assert got[0].tolist() == want[0]
        assert got[1].tolist() == want[1]
    assert VocabTokenizer(MULTI)._byte_ids is None  # multi-character tokens: the tokenizer segments

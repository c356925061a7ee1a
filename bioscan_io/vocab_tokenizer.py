"""A tokenizer over a user vocabulary (BPE, characters...) with the k-mer tokenizer's interface.

:class:`VocabTokenizer` segments barcodes with a Hugging Face ``tokenizers``
model -- a BPE trained on barcodes (as BarcodeMAE's BPE variants are), any
``tokenizer.json``, or a plain list of tokens such as a character vocabulary --
and has :class:`bioscan_io.tokenizer.KmerTokenizer`'s interface (``n_tokens``,
``vocab_size``, ``pad_id``, ``vocab``, ``encode``, ``encode_mlm``, ``decode``,
``token_to_id``, ``id_to_token``), so the loader and training code take either.

A batch is one ``encode_batch`` call (segmentation runs in Rust), then the ids
are written into preallocated ``(n, n_tokens)`` arrays, padded with the pad id,
attention 1 on every token the tokenizer gave (special ones included). Masking
runs in the compiled kernel ``bioscan_io._kmer.mask_rows`` with the k-mer
tokenizer's selection rule, keys and recipes (:mod:`bioscan_io.testing.oracle`):
the same ``(seed, epoch, processid, position)`` gives the same draws whatever
the vocabulary.

Special tokens are looked up by name: ``[PAD]`` pads (``[UNK]`` when there is no
``[PAD]``), ``[MASK]`` is what masking writes. The tokenizer's special tokens
(its added tokens marked special, its unknown token, and ``[PAD]``/``[MASK]``)
are never masked; every other token is *maskable*.

``tokenizers`` is an optional dependency (``pip install tokenizers``).
"""

from __future__ import annotations

import itertools
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tokenizers
except ImportError:
    raise ImportError(
        "bioscan_io.vocab_tokenizer needs Hugging Face tokenizers: pip install tokenizers "
        "(or pip install 'bioscan-io[hf]')"
    ) from None

from . import _kmer
from .buffers import as_tensors, check_return_tensors, chunk_bounds, output_arrays, row_offsets
from .schema import MAX_NUCLEOTIDES, BioscanError
from .tokenizer import (
    DEFAULT_MASK_RATIOS,
    IGNORE_INDEX,
    MASK_TOKEN,
    UNK_TOKEN,
    _check_length,
    _masking,
    _sample_keys,
    decode_ids,
    seq_chunks,
)

__all__ = ["PAD_TOKEN", "PADDING_SIDES", "VocabTokenizer"]

PAD_TOKEN = "[PAD]"
PADDING_SIDES = ("right", "left")
# Hugging Face's file name in a saved tokenizer's folder (save_pretrained).
_TOKENIZER_FILE = "tokenizer.json"


def _is_special_name(token: str) -> bool:
    """Whether a token of a plain list is special: written in brackets, like ``[CLS]``."""
    return len(token) > 2 and token[0] == "[" and token[-1] == "]"


def _from_tokens(tokens: list, unk_token: str) -> tokenizers.Tokenizer:
    """A ``tokenizers`` model over a plain list of tokens (id = place in the list).

    Single-character tokens: a BPE model without merges, one token per character
    (each character outside the list is ``[UNK]``). Longer ones: a Unigram model
    with equal scores, that is the segmentation into the fewest tokens (a run of
    characters outside the list is one ``[UNK]``). Tokens in brackets are special.
    """
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise BioscanError("vocab list must hold non-empty strings, one token per id")
    if len(set(tokens)) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise BioscanError(f"vocab list holds {dup!r} twice")
    special = [t for t in tokens if _is_special_name(t)]
    regular = [t for t in tokens if not _is_special_name(t)]
    index = {t: i for i, t in enumerate(tokens)}
    unk = unk_token if unk_token in index else None
    if all(len(t) == 1 for t in regular):
        model = tokenizers.models.BPE(vocab=index, merges=[], unk_token=unk)
    else:
        if unk is None:
            raise BioscanError(f"vocab list of multi-character tokens needs an {unk_token} token")
        unigram = tokenizers.models.Unigram([(t, -1.0) for t in tokens], unk_id=index[unk], byte_fallback=False)
        model = unigram  # type: ignore[assignment]  # both are tokenizers Models
    tok = tokenizers.Tokenizer(model)
    tok.add_special_tokens(special)  # already in the vocabulary: ids unchanged
    return tok


def _byte_table(source: Any, unk_token: str) -> np.ndarray | None:
    """For a plain list of single characters with an unknown token: byte -> id, -1 for the tokenizer's bytes.

    Such a vocabulary (:func:`_from_tokens`: one token per character, each
    other character ``[UNK]``) needs no tokenizer for ASCII text, which is
    most of the time: a table lookup gives the same ids ~50x faster. Non-ASCII
    bytes (multi-byte characters, bad UTF-8) and ``[`` (the tokenizer matches
    special tokens written in the text) are left to the tokenizer.
    """
    if not isinstance(source, (list, tuple)) or unk_token not in source:
        return None
    index = {t: i for i, t in enumerate(source)}
    regular = [t for t in source if not _is_special_name(t)]
    if not all(len(t) == 1 for t in regular):
        return None
    table = np.full(256, -1, dtype=np.int64)
    table[:128] = index[unk_token]
    for t in regular:
        if ord(t) < 128:
            table[ord(t)] = index[t]
    if len(regular) < len(source):
        table[ord("[")] = -1
    return table


def _load(source: Any, unk_token: str) -> tokenizers.Tokenizer:
    """A private copy of the tokenizer ``source`` describes."""
    if isinstance(source, tokenizers.Tokenizer):
        return tokenizers.Tokenizer.from_str(source.to_str())
    backend = getattr(source, "backend_tokenizer", None)  # a transformers fast tokenizer
    if isinstance(backend, tokenizers.Tokenizer):
        return tokenizers.Tokenizer.from_str(backend.to_str())
    if isinstance(source, (list, tuple)):
        return _from_tokens(list(source), unk_token)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / _TOKENIZER_FILE
        if not path.is_file():
            raise BioscanError(f"tokenizer file {path} not found")
        try:
            return tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BioscanError(f"{path} is not a Hugging Face tokenizer.json ({reason})") from None
    raise BioscanError(
        "VocabTokenizer takes a tokenizers.Tokenizer, a tokenizer.json path or a list of tokens, "
        f"got {type(source).__name__}"
    )


class VocabTokenizer:
    """Batched tokenizer over a user vocabulary, with MLM masking.

    Parameters
    ----------
    source : tokenizers.Tokenizer, str or path, or list of str
        A Hugging Face ``tokenizers.Tokenizer`` (copied; a ``transformers`` fast
        tokenizer's ``backend_tokenizer`` too), the path of a ``tokenizer.json``
        (or of the folder holding one), or the tokens in id order (e.g.
        ``["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T", "N"]``; tokens in
        brackets are special).
    max_len : int, default 660 (``MAX_NUCLEOTIDES``)
        Bytes (nucleotides) of each sequence kept before tokenization, as for
        :class:`~bioscan_io.tokenizer.KmerTokenizer`.
    max_tokens : int, optional
        Token positions per row (``n_tokens``); longer rows are truncated by the
        tokenizer (which keeps the special tokens its post-processor adds). By
        default ``max_len`` plus those special tokens: room for one token per base.
    add_special_tokens : bool, default True
        Apply the tokenizer's post-processor (e.g. ``[CLS] ... [SEP]``), as
        Hugging Face's ``encode`` does; nothing changes when it has none.
    mask_token, unk_token, pad_token : str
        The names of the special tokens (``[MASK]``, ``[UNK]``, ``[PAD]``).
    padding_side : {"right", "left"}, default "right"
        Where the pad ids go: after the tokens, or before them (as BarcodeMamba
        pads, with ``pad_token="N"``). Masking draws are keyed by column, so the
        same sequence is masked differently under the two.

    Examples
    --------
    >>> tok = VocabTokenizer(["[PAD]", "[UNK]", "[MASK]", "A", "C", "G", "T"], max_len=6)
    >>> ids, att = tok.encode(["ACGTN"])
    >>> ids.tolist(), att.tolist()
    ([[3, 4, 5, 6, 1, 0]], [[1, 1, 1, 1, 1, 0]])
    """

    #: Reads :class:`~bioscan_io.gathered.Gathered` columns in place (the loader
    #: hands other tokenizers an Arrow copy of the rows).
    reads_gathered = True

    def __init__(
        self,
        source: Any,
        max_len: int = MAX_NUCLEOTIDES,
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
        mask_token: str = MASK_TOKEN,
        unk_token: str = UNK_TOKEN,
        pad_token: str = PAD_TOKEN,
        padding_side: str = "right",
    ):
        self.max_len = _check_length(max_len, "max_len")
        if padding_side not in PADDING_SIDES:
            raise BioscanError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.padding_side = padding_side
        self.add_special_tokens = bool(add_special_tokens)
        self._tok = _load(source, unk_token)
        self._byte_ids = _byte_table(source, unk_token)
        extra = self._tok.num_special_tokens_to_add(False) if self.add_special_tokens else 0
        self.n_tokens = self.max_len + extra if max_tokens is None else _check_length(max_tokens, "max_tokens")
        if self.n_tokens < extra:  # tokenizers' truncation keeps them all
            raise BioscanError(f"max_tokens must be at least {extra}, the special tokens the tokenizer's "
                               f"post-processor adds to every row; got {self.n_tokens}")
        # Rows are padded here, into the caller's arrays; the tokenizer only cuts.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.n_tokens)
        self._build_tables(mask_token, unk_token, pad_token)
        self._vocab_array: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"VocabTokenizer({type(self._tok.model).__name__}, vocab_size={self.vocab_size}, "
                f"max_len={self.max_len}, n_tokens={self.n_tokens})")

    # ----------------------------------------------------------------- tables

    def _build_tables(self, mask_token: str, unk_token: str, pad_token: str) -> None:
        index = self._tok.get_vocab(with_added_tokens=True)
        if not index:
            raise BioscanError("the tokenizer's vocabulary is empty")
        self.vocab_size = max(index.values()) + 1
        tokens: list = [None] * self.vocab_size
        for token, i in index.items():
            tokens[i] = token
        self._tokens = tokens
        special = {i for i, added in self._tok.get_added_tokens_decoder().items() if added.special}
        model_unk = getattr(self._tok.model, "unk_token", None)
        if isinstance(model_unk, str) and model_unk in index:
            special.add(index[model_unk])
        named = {name: index.get(name) for name in (mask_token, unk_token, pad_token)}
        special.update(i for i in named.values() if i is not None)
        self.mask_id = named[mask_token]
        self.unk_id = named[unk_token]
        self.pad_id = named[pad_token] if named[pad_token] is not None else self.unk_id
        if self.pad_id is None:
            raise BioscanError(f"the vocabulary has neither {pad_token} nor {unk_token} to pad rows with")
        self._mask_token = mask_token
        # A position is maskable when it holds a token that is neither special
        # nor a hole in the ids; the random token of a recipe is one of those.
        maskable = np.array([t is not None for t in tokens], dtype=np.uint8)
        maskable[sorted(special)] = 0
        self._maskable = maskable
        self._replace_ids = np.flatnonzero(maskable).astype(np.int32)
        # BarcodeBERT-style labels: a maskable token's rank among them (id - 2 for k-mers).
        classes = np.full(self.vocab_size, IGNORE_INDEX, dtype=np.int32)
        classes[self._replace_ids] = np.arange(len(self._replace_ids), dtype=np.int32)
        self._classes = classes

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab(self) -> list:
        """All tokens, indexed by id (None where the tokenizer has no token of that id)."""
        return list(self._tokens)

    @property
    def maskable_ids(self) -> np.ndarray:
        """Ids of the maskable tokens, increasing (the random tokens of a recipe)."""
        return self._replace_ids.copy()

    def id_to_token(self, i: int) -> str:
        """The token of id ``i``.

        Raises
        ------
        BioscanError
            If ``i`` is not an id of this vocabulary.
        """
        try:
            i = operator.index(i)
        except TypeError:
            raise BioscanError(f"token id must be an integer, got {type(i).__name__}") from None
        if not 0 <= i < self.vocab_size or self._tokens[i] is None:
            raise BioscanError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return self._tokens[i]

    def token_to_id(self, token: str) -> int:
        """The id of a token of the vocabulary.

        Raises
        ------
        BioscanError
            If ``token`` is not in the vocabulary.
        """
        i = self._tok.token_to_id(token) if isinstance(token, str) else None
        if i is None:
            raise BioscanError(f"{token!r} is not in the vocabulary")
        return i

    def decode(self, ids: Any) -> list:
        """Tokens of ids: a list of str for one row, a list of lists for a batch.

        Parameters
        ----------
        ids : array-like or torch.Tensor of int, 1-D or 2-D
            Ids as returned by :meth:`encode` (labels' -100 is not an id).
        """
        if self._vocab_array is None:
            self._vocab_array = np.array(self._tokens, dtype=object)
        return decode_ids(ids, self._vocab_array)

    # ----------------------------------------------------------------- encoding

    def _rows(self, seqs: Any, offsets: Any) -> list[memoryview]:
        """Each sequence's bytes ``[o, o + max_len)``, as views."""
        chunks = seq_chunks(seqs, "seqs")
        n = sum(len(c) for c in chunks)
        offs = row_offsets(offsets, n)
        rows: list[memoryview] = []
        for c, (r0, r1) in zip(chunks, chunk_bounds(chunks)):
            starts = c.starts + offs[r0:r1] if len(offs) else c.starts
            starts = np.minimum(starts, c.ends)
            ends = np.minimum(c.ends, starts + self.max_len)
            view = memoryview(c.data)  # type: ignore[arg-type]  # numpy arrays are buffers
            rows += [view[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
        return rows

    def _segment(self, rows: list[memoryview], dtype) -> tuple[np.ndarray, np.ndarray]:
        """Tokens per row and all rows' ids end to end: the byte table, else the tokenizer."""
        if self._byte_ids is not None:
            cut = [r[:self.n_tokens] for r in rows]  # one token per byte, no special tokens
            flat = self._byte_ids[np.frombuffer(b"".join(cut), dtype=np.uint8)]
            if not flat.size or flat.min() >= 0:
                return np.fromiter(map(len, cut), dtype=np.int64, count=len(cut)), flat.astype(dtype)
        texts = [str(r, "utf-8", "replace") for r in rows]  # bad bytes as U+FFFD
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets: faster
        encodings = encode(texts, add_special_tokens=self.add_special_tokens)
        lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=dtype, count=int(lens.sum()))
        return lens, flat

    def _fill(self, rows: list[memoryview], ids: np.ndarray, att: np.ndarray) -> None:
        """Token ids of ``rows`` into rows of ``ids``, padded on ``padding_side``; attention 1 on tokens."""
        if self.n_tokens == 0 or not rows:
            ids[...] = self.pad_id
            att[...] = 0
            return
        lens, flat = self._segment(rows, ids.dtype)
        if flat.size and flat.max() >= self.vocab_size:
            raise BioscanError(f"the tokenizer gave id {int(flat.max())}, outside its vocabulary of {self.vocab_size}")
        columns = np.arange(self.n_tokens)
        real = columns < lens[:, None] if self.padding_side == "right" else columns >= self.n_tokens - lens[:, None]
        ids[...] = self.pad_id
        ids[real] = flat
        att[...] = real

    def encode(
        self,
        seqs: Any,
        offsets: Any = None,
        dtype: Any = None,
        return_tensors: str | None = None,
        out: Any = None,
    ) -> tuple:
        """Token ids and attention mask of a batch of sequences.

        Parameters
        ----------
        seqs : list of str or bytes, numpy array, or pyarrow string/binary (Chunked)Array
            The sequences; ``None`` / nulls are empty sequences.
        offsets : array-like of int, optional
            Per-sequence offset in bytes: ``s[o:o + max_len]`` is tokenized.
        dtype : int32 or int64, optional
            Output dtype; int64 by default, or that of ``out``.
        return_tensors : {None, "np", "pt"}
            numpy arrays (None, "np") or torch tensors sharing their memory ("pt").
        out : tuple of 2 arrays, optional
            ``(ids, attention_mask)`` of shape ``(len(seqs), n_tokens)`` to write
            into (any row stride, contiguous rows).

        Returns
        -------
        (ids, attention_mask)
            Arrays of shape ``(len(seqs), n_tokens)``: the tokens, then the pad id
            with attention 0.
        """
        check_return_tensors(return_tensors)
        rows = self._rows(seqs, offsets)
        ids, att = output_arrays(len(rows), self.n_tokens, dtype, out, ("ids", "attention_mask"))
        self._fill(rows, ids, att)
        return as_tensors((ids, att), return_tensors)

    def encode_mlm(
        self,
        seqs: Any,
        processids: Any,
        seed: int = 0,
        epoch: int = 0,
        mask_prob: float = 0.5,
        mask_ratios: Any = DEFAULT_MASK_RATIOS,
        label_mode: str = "masked",
        random_offset: bool = False,
        offsets: Any = None,
        dtype: Any = None,
        return_tensors: str | None = None,
        out: Any = None,
    ) -> dict:
        """Tokenize and mask a batch for masked-language-model training.

        The rule of :meth:`bioscan_io.tokenizer.KmerTokenizer.encode_mlm`, over
        this vocabulary: each maskable token (attended, not special) is selected
        with probability ``mask_prob`` by a draw of ``(seed, epoch, processid,
        position)``; a selected one becomes ``[MASK]``, a random maskable token,
        or stays, in the shares ``mask_ratios``.

        Parameters
        ----------
        seqs, processids, seed, epoch, mask_prob, mask_ratios
            As for :meth:`bioscan_io.tokenizer.KmerTokenizer.encode_mlm`.
        label_mode : {"masked", "barcodebert"}
            ``"masked"``: the original id at every selected position, -100
            elsewhere. ``"barcodebert"``: at every maskable position, the token's
            rank among the maskable tokens (:attr:`maskable_ids`), -100 elsewhere.
        random_offset : bool, default False
            Must be False: random reading frames are a k-mer notion.
        offsets, dtype, return_tensors
            As for :meth:`encode`.
        out : tuple of 3 arrays, optional
            ``(input_ids, attention_mask, labels)`` to write into.

        Returns
        -------
        dict
            ``input_ids``, ``attention_mask`` and ``labels``, each of shape
            ``(len(seqs), n_tokens)``.
        """
        check_return_tensors(return_tensors)
        m = _masking(seed, epoch, mask_prob, mask_ratios, label_mode)
        if random_offset:
            raise BioscanError("random_offset is for k-mer reading frames; VocabTokenizer takes offsets= only")
        if self.mask_id is None:
            raise BioscanError(f"the vocabulary has no {self._mask_token} token, which encode_mlm writes")
        rows = self._rows(seqs, offsets)
        keys = _sample_keys(processids, m.seed, m.epoch, len(rows))
        ids, att, labels = output_arrays(
            len(rows), self.n_tokens, dtype, out, ("input_ids", "attention_mask", "labels")
        )
        self._fill(rows, ids, att)
        _kmer.mask_rows(keys, m.thr, *m.recipe, self.mask_id, self._maskable, self._replace_ids,
                        self._classes, m.mode, ids, att, labels)
        ids, att, labels = as_tensors((ids, att, labels), return_tensors)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

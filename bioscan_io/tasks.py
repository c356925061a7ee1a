"""The tasks of the BIOSCAN-5M paper as data: what each reads and how it makes a batch.

A task is one entry of :data:`TASKS`, a :class:`TaskSpec`: the modalities it
serves, the ``.json`` record fields it turns into batch columns (labels, text),
whether its barcodes are masked for MLM, and its defaults. Adding a task is
adding an entry. :class:`Task` is a spec with the user's settings bound: the
tokenizer (:class:`TokenizerConfig`), the images (:class:`ImageConfig`), the
labels, and the one ``collate`` that turns a block of rows into a batch.

=========  ===================================================================
task       batch keys
=========  ===================================================================
mlm        processid, input_ids, attention_mask, labels
classify   processid, label, and input_ids + attention_mask (``modality="dna"``)
           or image (``modality="image"``)
clip       processid, image, input_ids, attention_mask, text, and with a text
           tokenizer text_input_ids + text_attention_mask (:mod:`bioscan_io.text`)
embed      processid, ``<rank>_index`` for every rank, and input_ids +
           attention_mask and/or image (``modality``)
=========  ===================================================================

With ``pad=False`` (``embed``'s default) every batch also holds ``valid``: a
bool tensor, False on the padding rows that give every rank the same batches.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import get_worker_info

from . import handover
from . import images as im
from .gathered import Gathered
from .schema import MAX_NUCLEOTIDES, MISSING_LABEL, MISSING_RANK_TEXT, RANKS, TEXT_RANKS, BioscanError
from .text import TextTokens
from .tokenizer import DEFAULT_MASK_RATIOS, KmerTokenizer

__all__ = ["MODALITIES", "TaskSpec", "TASKS", "TokenizerConfig", "ImageConfig", "Task", "choose_modalities"]

#: What a task can read of a sample, and the member each needs.
MODALITIES = {"dna": "dna", "image": "jpg"}


@dataclass(frozen=True)
class TaskSpec:
    """One task: its modalities, the record columns it adds, and its defaults.

    Attributes
    ----------
    modalities : tuple of str
        Default modalities (of :data:`MODALITIES`).
    choose : {None, "one", "any"}
        Whether ``modality=`` may change them: not at all, to exactly one, or to any.
    fields : callable or None
        ``fields(task)``: the ``.json`` fields the batches need (None: the record is not read).
    columns : callable or None
        ``columns(task, table)``: the batch columns made from those fields.
    masked : bool
        Barcodes are tokenized with MLM masking (``labels`` in the batch).
    needs_labels : bool
        The task needs ``labels.json`` (label indices).
    train, pad : bool
        Defaults of ``make_loader``'s ``train`` and ``pad``.
    """

    modalities: tuple[str, ...]
    choose: str | None = None
    fields: Callable | None = None
    columns: Callable | None = None
    masked: bool = False
    needs_labels: bool = False
    train: bool = True
    pad: bool = True


def _label_column(task: Task, table: pa.Table) -> dict:
    return {"label": task.label_index(table, task.label_rank)}


def _rank_columns(task: Task, table: pa.Table) -> dict:
    return {f"{rank}_index": task.label_index(table, rank) for rank in RANKS}


def _text_column(task: Task, table: pa.Table) -> dict:
    """CLIP text: "order family genus species", a missing rank as ``not_classified``."""
    parts = [pc.if_else(pc.fill_null(pc.equal(table[r], ""), True), MISSING_RANK_TEXT, table[r]) for r in TEXT_RANKS]
    return {"text": pc.binary_join_element_wise(*parts, " ").combine_chunks()}


#: The tasks of the BIOSCAN-5M paper, by name.
TASKS = {
    "mlm": TaskSpec(("dna",), masked=True),
    "classify": TaskSpec(("dna",), choose="one", fields=lambda task: (task.label_rank,), columns=_label_column,
                         needs_labels=True),
    "clip": TaskSpec(("image", "dna"), fields=lambda task: TEXT_RANKS, columns=_text_column),
    "embed": TaskSpec(("dna", "image"), choose="any", fields=lambda task: RANKS, columns=_rank_columns,
                      needs_labels=True, train=False, pad=False),
}


def choose_modalities(name: str, modality) -> tuple[str, ...]:
    """The modalities of task ``name`` given the user's ``modality`` (None: the task's default)."""
    spec = TASKS[name]
    if modality is None or spec.choose is None:
        return spec.modalities
    chosen = (modality,) if isinstance(modality, str) else tuple(modality)
    bad = [m for m in chosen if m not in MODALITIES]
    if bad or not chosen or (spec.choose == "one" and len(chosen) != 1):
        how = "one of" if spec.choose == "one" else "any of"
        raise BioscanError(f"modality for {name!r} must be {how} 'dna', 'image'; got {modality!r}")
    return chosen


def _from_options(cls, options: dict):
    """The config of ``make_loader``'s (resolved) options: its fields by name."""
    return cls(**{name: options[name] for name in cls.__dataclass_fields__ if name in options})


@dataclass
class TokenizerConfig:
    """How barcodes are tokenized and masked (:class:`~bioscan_io.tokenizer.KmerTokenizer`, or ``tokenizer``).

    The tokenizer is built (and its settings checked) when the config is made.
    """

    k: int = 4
    max_len: int = MAX_NUCLEOTIDES
    n_as_base: bool = False
    mask_prob: float = 0.5
    label_mode: str = "masked"
    random_offset: bool = False
    token_dtype: torch.dtype = torch.int64
    mask_ratios: tuple = DEFAULT_MASK_RATIOS
    tokenizer: Any = None  # KmerTokenizer's interface (VocabTokenizer...); resolved by TokenizerConfig

    from_options = classmethod(_from_options)

    def __post_init__(self):
        if self.tokenizer is None:
            self.tokenizer = KmerTokenizer(k=self.k, max_len=self.max_len, n_as_base=self.n_as_base)
        elif not all(hasattr(self.tokenizer, name) for name in ("encode", "encode_mlm", "n_tokens")):
            raise BioscanError("tokenizer must have KmerTokenizer's interface (encode, encode_mlm, n_tokens), "
                               f"got {type(self.tokenizer).__name__}")
        if self.random_offset and not hasattr(self.tokenizer, "random_offsets"):
            raise BioscanError(f"random_offset=True (k-mer reading frames; a recipe may set it) needs a k-mer "
                               f"tokenizer, not {type(self.tokenizer).__name__}: pass random_offset=False")
        self.mask_ratios = tuple(float(r) for r in self.mask_ratios)

    @functools.cached_property
    def np_dtype(self):
        # Cached: comparing torch dtypes costs microseconds, asked for every batch.
        return np.int64 if self.token_dtype == torch.int64 else np.int32


@dataclass(frozen=True)
class ImageConfig:
    """How images are cropped, augmented and handed out (:mod:`bioscan_io.images`)."""

    size: int = 224
    resize: int = 256
    dtype: str = "uint8"
    hflip: bool = True
    vflip: bool = False
    pre_resize: int | None = None
    rotate: float = 0.0

    @classmethod
    def from_options(cls, options: dict) -> ImageConfig:
        return cls(size=options["image_size"], dtype=options["image_dtype"],
                   **{name: options[name] for name in ("resize", "hflip", "vflip", "pre_resize", "rotate")})


def _sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """Per-sample generator: augmentation depends on (seed, epoch, processid) only."""
    digest = hashlib.blake2b(f"{seed}|{epoch}|{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclass
class Task:
    """A task with the user's settings bound: what it reads, and how it makes a batch of a block of rows."""

    name: str
    modalities: tuple[str, ...]
    train: bool
    seed: int
    tokens: TokenizerConfig = field(default_factory=TokenizerConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    label_rank: str = "species"
    labels: dict | None = None
    text: TextTokens | None = None
    _values: dict = field(default_factory=dict, repr=False)
    #: Reused memory for the image batches made without workers (``num_workers=0``).
    _buffers: handover.BatchBuffers = field(default_factory=handover.BatchBuffers, repr=False, compare=False)
    #: The same for the token tensors (groups of batches without images), apart: a batch of both holds one of each.
    _token_buffers: handover.BatchBuffers = field(default_factory=handover.BatchBuffers, repr=False, compare=False)

    def __post_init__(self):
        self.spec = TASKS[self.name]
        if self.labels is not None:
            self._values = {r: pa.array(vals, pa.string()) for r, vals in self.labels.items()}

    @functools.cached_property
    def members(self) -> frozenset[str]:
        """The tar members each sample is read for."""
        wanted = {MODALITIES[m] for m in self.modalities}
        if self.spec.columns is not None:
            wanted.add("json")
        return frozenset(wanted)

    @property
    def record_fields(self) -> tuple[str, ...]:
        """The fields of the ``.json`` record the batches need."""
        return self.spec.fields(self) if self.spec.fields else ()

    def record_columns(self, table: pa.Table) -> dict:
        """Label indices (per labels.json; -1 for a missing or unknown name) or CLIP text, as columns."""
        return self.spec.columns(self, table) if self.spec.columns else {}

    def label_index(self, table: pa.Table, rank: str) -> pa.Array:
        found = pc.index_in(table[rank], value_set=self._values[rank])
        return pc.fill_null(found, MISSING_LABEL).cast(pa.int64()).combine_chunks()

    def collate(self, block: dict, epoch: int, urls: list[str], errors) -> dict:
        """A batch from a block of rows: one tokenizer call, images decoded straight into the batch."""
        keys = block["__key__"].to_pylist()
        batch: dict = {"processid": keys}
        stand_ins = 0
        if "image" in self.modalities:
            batch["image"], index = self._images(block, keys, epoch, urls, errors)
            if index is not None:  # bad images skipped: good samples of the batch stand in
                block = {k: v.take(pa.array(index)) for k, v in block.items()}
                batch["processid"] = block["__key__"].to_pylist()
                stand_ins = len(index) - len(set(index))
        if "__valid__" in block:  # pad=False: padding rows (and stand-ins) are marked, not dropped
            valid = handover.empty_array((len(batch["processid"]),), np.bool_)
            valid[:] = block["__valid__"].to_numpy(zero_copy_only=False)
            if stand_ins:
                valid[len(valid) - stand_ins:] = False
            batch["valid"] = torch.from_numpy(valid)
        if "dna" in self.modalities:
            batch.update(self._tokens(block, epoch))
        names = [name for name in ("label", *(f"{rank}_index" for rank in RANKS)) if name in block]
        if names:
            labels = handover.empty_array((len(names), len(keys)), np.int64)
            for row, name in zip(labels, names):
                row[:] = block[name].to_numpy()
            batch.update(zip(names, torch.from_numpy(labels)))
        if "text" in block:
            batch["text"] = block["text"].to_pylist()
            if self.text is not None:
                batch.update(self._text_tokens(batch["text"]))
        return batch

    def _tokens(self, block: dict, epoch: int) -> dict:
        """``input_ids`` and ``attention_mask`` (and MLM ``labels``) of the block's barcodes."""
        cfg, tokenizer = self.tokens, self.tokens.tokenizer
        names = self.token_names
        out = self._token_array((len(names), len(block["__key__"]), tokenizer.n_tokens))
        seqs, ids = block["dna"], block["__key__"]
        if not getattr(tokenizer, "reads_gathered", False):  # a tokenizer of the user's own: Arrow arrays
            seqs, ids = (c.to_arrow() if isinstance(c, Gathered) else c for c in (seqs, ids))
        if not self.spec.masked:
            tokenizer.encode(seqs, out=tuple(out))
        else:
            tokenizer.encode_mlm(
                seqs, ids, seed=self.seed, epoch=epoch, mask_prob=cfg.mask_prob,
                label_mode=cfg.label_mode, random_offset=cfg.random_offset, mask_ratios=cfg.mask_ratios,
                out=tuple(out),
            )
        return dict(zip(names, torch.from_numpy(out)))

    def _token_array(self, shape: tuple) -> np.ndarray:
        """The array the token tensors are made in: a hand-over slot in a worker, else a reused buffer.

        Without workers a group of MLM batches is 16 MB of tokens: new memory for
        each is faulted in again (5-30% of an MLM epoch at ``num_workers=0``,
        measured for issue 27), so they are made in
        :class:`~bioscan_io.handover.BatchBuffers`, each reused once the batches
        made in it are gone. The tokenizer writes every element, so what a
        buffer held before never shows.
        """
        dtype = self.tokens.np_dtype
        if get_worker_info() is None:
            reused = self._token_buffers.empty(shape, self.tokens.token_dtype)
            if reused is not None:
                return reused.numpy()
        return handover.empty_array(shape, dtype)

    def _text_tokens(self, texts: list[str]) -> dict:
        """``text_input_ids``, ``text_attention_mask`` (...) of the batch's strings: one tokenizer call."""
        assert self.text is not None  # called only when the task has text
        got = self.text(texts)
        first = next(iter(got.values()))
        out = handover.empty_array((len(got), *first.shape), np.int64)
        for row, value in zip(out, got.values()):
            row[:] = value
        return dict(zip(got, torch.from_numpy(out)))

    @property
    def token_names(self) -> tuple[str, ...]:
        """The token tensors of a batch, made as the rows of one array."""
        return ("input_ids", "attention_mask", "labels") if self.spec.masked else ("input_ids", "attention_mask")

    def batch_nbytes(self, batch_size: int) -> int:
        """Most bytes of a batch's tensors (what a worker's hand-over slot must hold)."""
        total = 0
        if "dna" in self.modalities:
            per_token = np.dtype(self.tokens.np_dtype).itemsize
            total += len(self.token_names) * batch_size * self.tokens.tokenizer.n_tokens * per_token
        if "image" in self.modalities:
            pixels = batch_size * 3 * self.images.size ** 2
            total += pixels * (1 if self.images.dtype == "uint8" else 4)
        if self.spec.columns is not None:
            total += (len(RANKS) + 1) * batch_size * 8
        if self.text is not None:
            total += self.text.nbytes(batch_size)
        return total + batch_size + 16 * 64  # valid (pad=False); each tensor aligned to 64 bytes

    def _prepare(self, data: bytes, key: str, epoch: int, where: str):
        cfg = self.images
        if self.train:
            return im.decode_train(data, cfg.size, _sample_rng(self.seed, epoch, key), hflip=cfg.hflip,
                                   vflip=cfg.vflip, pre_resize=cfg.pre_resize, rotate=cfg.rotate, where=where)
        return im.decode_eval(data, cfg.size, cfg.resize, where=where)

    def _images(self, block: dict, keys: list[str], epoch: int, urls: list[str], errors):
        """The batch's image tensor, and the row order when bad images were skipped (else None).

        Each image's crop and flips are drawn from its own generator, then the
        pixels are made inside ``im.stack``. Damage the header shows raises here;
        damage only the decoder sees raises while stacking, and under the skip
        policy each image is then decoded alone to find the bad ones.
        """
        shards = block["__shard__"].to_numpy()
        prepared, bad = [], []
        for i, data in enumerate(block["jpg"].to_pylist()):
            try:
                prepared.append(self._prepare(data, keys[i], epoch, f"{urls[shards[i]]}: {keys[i]}.jpg"))
            except BioscanError as exc:
                errors.handle(exc, 1)
                bad.append(i)
                prepared.append(None)
        if not bad:
            try:
                return im.stack(prepared, self.images.dtype, buffers=self._buffers), None
            except BioscanError:
                if errors.mode == "raise":
                    raise
            for i, image in enumerate(prepared):
                try:
                    image.load()
                except BioscanError as exc:
                    errors.handle(exc, 1)
                    bad.append(i)
        bad_rows = set(bad)
        good = [i for i in range(len(prepared)) if i not in bad_rows]
        if not good:
            raise BioscanError(f"every image of a batch of {len(prepared)} was bad")
        index = good + [good[j % len(good)] for j in range(len(bad))]
        return im.stack([prepared[i] for i in index], self.images.dtype, buffers=self._buffers), index

"""BarcodeBERT-compatible non-overlapping k-mer tokenizer with MLM masking.

A thin wrapper around the compiled kernel ``bioscan_io._kmer``: every argument
is checked here, and a whole batch is handed to the kernel as one byte buffer
plus per-row start/end offsets (see :mod:`bioscan_io.buffers`), so no Python
object is made per sequence or per token. Arrow string/binary columns are read
through their own buffers, without a copy.

Vocabulary (``k = 4``): id 0 is ``[MASK]``, id 1 is ``[UNK]``, then the ``4**k``
k-mers over ``ACGT`` in ``itertools.product("ACGT", repeat=k)`` order
(``AAAA`` = 2, ``AAAC`` = 3, ...). With ``n_as_base=True`` the k-mers that
contain ``N`` follow, in ``product("ACGTN")`` order (``2 + 5**k`` ids in all).

Tokenization of a sequence ``s`` at offset ``o`` (0 unless given or drawn):
``x = s[o:]``; if ``len(x) > max_len`` it is cut to ``max_len`` and every
position is attended, otherwise positions from ``len(x) // k`` on have
attention 0 and ``x`` is padded with ``N``. Token ``i`` is ``x[i*k:(i+1)*k]``
for ``i < max_len // k``; a k-mer with any byte outside the vocabulary's bases
(lowercase, IUPAC codes, ``N`` unless ``n_as_base``, non-ASCII bytes) is
``[UNK]``.

Masking (:meth:`KmerTokenizer.encode_mlm`) and random offsets are a pure
function of ``(seed, epoch, processid)``; the generator is specified, and
implemented with Python integers, in :mod:`bioscan_io.testing.oracle`. Of the
positions selected for masking, ``mask_ratios`` says what share becomes
``[MASK]``, a random k-mer, or stays (BERT's 80/10/10 is ``(0.8, 0.1, 0.1)``;
the default ``(1, 0, 0)`` masks them all).
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any, NamedTuple

import numpy as np

from .buffers import (
    as_chunks,
    as_tensors,
    check_return_tensors,
    chunk_bounds,
    is_torch,
    output_arrays,
    row_offsets,
)
from .gathered import Gathered
from .schema import MAX_NUCLEOTIDES, BioscanError

try:
    from . import _kmer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "bioscan_io._kmer, the compiled k-mer tokenizer, is not built. Build it from the "
        "project root with `pip install -e .` or `python setup.py build_ext --inplace` "
        f"(needs Cython and a C compiler). Original error: {exc}"
    ) from exc

if not hasattr(_kmer, "mask_rows"):  # built before masking recipes existed
    raise ImportError("bioscan_io._kmer is out of date; rebuild it (`pip install -e .`)")

__all__ = [
    "DEFAULT_MASK_RATIOS",
    "IGNORE_INDEX",
    "KmerTokenizer",
    "LABEL_MODES",
    "MASK_ID",
    "MASK_TOKEN",
    "MAX_K",
    "UNK_ID",
    "UNK_TOKEN",
    "decode_ids",
    "processid_keys",
    "recipe_thresholds",
    "seq_chunks",
]

MASK_TOKEN = "[MASK]"
UNK_TOKEN = "[UNK]"
# The ids are written by the kernel, which owns them; re-exported as plain ints.
MASK_ID: int = _kmer.MASK_ID
UNK_ID: int = _kmer.UNK_ID
#: Label of positions the loss ignores (PyTorch's ``CrossEntropyLoss`` default).
IGNORE_INDEX: int = _kmer.IGNORE_INDEX
#: The largest ``k`` the kernel supports (``5**8`` ids still fit an int32).
MAX_K: int = _kmer.KMAX
# label_mode -> the kernel's code. ``"masked"``: the original id at masked
# positions (Hugging Face convention); ``"barcodebert"``: ``id - 2`` at every
# maskable position, masked or not.
_LABEL_CODES = {
    "masked": _kmer.LabelMode.MASKED_LABELS,
    "barcodebert": _kmer.LabelMode.BARCODEBERT_LABELS,
}
#: The values of ``label_mode`` (see :meth:`KmerTokenizer.encode_mlm`).
LABEL_MODES = tuple(_LABEL_CODES)
#: ``mask_ratios`` by default: every selected position becomes ``[MASK]`` (BarcodeBERT).
DEFAULT_MASK_RATIOS = (1.0, 0.0, 0.0)
# How far from 1 the three shares of mask_ratios may sum (float rounding of user input).
_RATIO_SUM_TOLERANCE = 1e-9
# Token positions index the generator's counters, which must stay below 2**32.
_MAX_MAX_LEN = 2**31 - 1

_EMPTY_U64 = np.empty(0, dtype=np.uint64)
# The kernel's thresholds of the default recipe (all [MASK]; nothing more drawn).
_NO_RECIPE = (2**32, 2**32)
_EMPTY_I32 = np.empty(0, dtype=np.int32)


# --------------------------------------------------------------------------- inputs


def seq_chunks(values: Any, what: str) -> list:
    """The kernels' chunks of a batch: :func:`bioscan_io.buffers.as_chunks`, or a Gathered column's.

    A :class:`~bioscan_io.gathered.Gathered` column (rows of Arrow arrays) is
    read in place, its rows' offsets picked.
    """
    if isinstance(values, Gathered):
        return values.chunks(what)
    return as_chunks(values, what)


# --------------------------------------------------------------------------- random keys


def processid_keys(processids: Any) -> np.ndarray:
    """64-bit FNV-1a hashes of processids, the per-sample part of every random draw.

    Parameters
    ----------
    processids : list of str or bytes, numpy array, pyarrow string/binary array, or Gathered
        One id per sample; hashed as UTF-8 bytes (nulls as the empty id).
        A ``uint64`` numpy array is taken as hashes already made by this function.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array of the hashes, one per sample. Passing it instead of the
        ids to :meth:`KmerTokenizer.encode_mlm` saves hashing them every epoch.
    """
    if isinstance(processids, np.ndarray) and processids.dtype == np.uint64:
        if processids.ndim != 1:
            raise BioscanError(f"processids must be one-dimensional, got shape {processids.shape}")
        return np.ascontiguousarray(processids)
    if isinstance(processids, Gathered):  # an open index's ids: hashed once, then picked
        return processids.hashes()
    chunks = as_chunks(processids, "processids")
    out = np.empty(sum(len(c) for c in chunks), dtype=np.uint64)
    for c, (r0, r1) in zip(chunks, chunk_bounds(chunks)):
        _kmer.hash_strings(c.data, c.starts, c.ends, out[r0:r1])
    return out


def _check_uint64(value: Any, name: str) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise BioscanError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= v < 2**64:
        raise BioscanError(f"{name} must be in [0, 2**64), got {v}")
    return v


def _check_length(value: Any, name: str) -> int:
    """A length in bases or tokens: an integer from 0 to ``_MAX_MAX_LEN``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= _MAX_MAX_LEN:
        raise BioscanError(f"{name} must be an integer from 0 to {_MAX_MAX_LEN}, got {value!r}")
    return int(value)


def _mask_threshold(mask_prob: Any) -> int:
    """``ceil(p * 2**32)``: a position is selected when its 32-bit draw is below it."""
    try:
        p = float(mask_prob)
    except (TypeError, ValueError):
        raise BioscanError(f"mask_prob must be a number, got {mask_prob!r}") from None
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise BioscanError(f"mask_prob must be in [0, 1], got {mask_prob!r}")
    # u / 2**32 < p  <=>  u < ceil(p * 2**32) for integer u; p * 2**32 is exact.
    return math.ceil(p * 2**32)


def recipe_thresholds(mask_ratios: Any) -> tuple[int, int]:
    """The kernel's thresholds of a masking recipe (see :func:`bioscan_io.testing.oracle.mask_action`).

    Parameters
    ----------
    mask_ratios : three numbers, or None for :data:`DEFAULT_MASK_RATIOS`
        Shares of the selected positions set to ``[MASK]``, replaced by a random
        token, and kept: non-negative, summing to 1 (within 1e-9).

    Returns
    -------
    (thr_mask, thr_random) : tuple of int
        ``ceil(r_mask * 2**32)`` and ``ceil((r_mask + r_random) * 2**32)``.

    Raises
    ------
    BioscanError
        If ``mask_ratios`` is not three such numbers.
    """
    if mask_ratios is None:
        mask_ratios = DEFAULT_MASK_RATIOS
    what = "mask_ratios must be three non-negative numbers (mask, random, keep) summing to 1"
    try:
        ratios = [float(r) for r in mask_ratios]
    except (TypeError, ValueError):
        raise BioscanError(f"{what}, got {mask_ratios!r}") from None
    if (
        len(ratios) != 3
        or not all(0.0 <= r <= 1.0 for r in ratios)  # also rejects NaN
        or abs(math.fsum(ratios) - 1.0) > _RATIO_SUM_TOLERANCE
    ):
        raise BioscanError(f"{what}, got {mask_ratios!r}")
    r_mask, r_random, _ = ratios
    return math.ceil(r_mask * 2**32), math.ceil((r_mask + r_random) * 2**32)


def _check_label_mode(label_mode: Any) -> int:
    """The kernel's code of ``label_mode``."""
    if label_mode not in LABEL_MODES:
        raise BioscanError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    return _LABEL_CODES[label_mode]


class _Masking(NamedTuple):
    """``encode_mlm``'s masking arguments, checked, as the kernels take them."""

    seed: int
    epoch: int
    thr: int  # selection threshold (_mask_threshold)
    recipe: tuple[int, int]  # (thr_mask, thr_random) (recipe_thresholds)
    mode: int  # the label mode's kernel code


def _masking(seed: Any, epoch: Any, mask_prob: Any, mask_ratios: Any, label_mode: Any) -> _Masking:
    """Check ``encode_mlm``'s masking arguments (every tokenizer's), one line for the first bad one."""
    return _Masking(_check_uint64(seed, "seed"), _check_uint64(epoch, "epoch"), _mask_threshold(mask_prob),
                    recipe_thresholds(mask_ratios), _check_label_mode(label_mode))


def decode_ids(ids: Any, vocab: np.ndarray) -> list:
    """Tokens of ids, by ``vocab`` (an object array of tokens indexed by id).

    Parameters
    ----------
    ids : array-like or torch.Tensor of int, 1-D or 2-D
        Token ids (labels' -100 is not an id).

    Returns
    -------
    list
        A list of str for one row, a list of lists for a batch.
    """
    if is_torch(ids):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids)
    if a.ndim not in (1, 2) or (a.size and a.dtype.kind not in "iu"):
        raise BioscanError(f"ids must be a 1-D or 2-D integer array, got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= len(vocab)):
        raise BioscanError(f"ids must be in [0, {len(vocab)})")
    return vocab[a.astype(np.intp)].tolist()


def _sample_keys(processids: Any, seed: int, epoch: int, n: int | None = None) -> np.ndarray:
    """The generator key of each sample (``seed``/``epoch`` already checked); one per sequence if ``n``."""
    pid_hash = processid_keys(processids)
    if n is not None and len(pid_hash) != n:
        raise BioscanError(f"got {len(pid_hash)} processids for {n} sequences")
    keys = np.empty(len(pid_hash), dtype=np.uint64)
    _kmer.sample_keys(pid_hash, seed, epoch, keys)
    return keys


# --------------------------------------------------------------------------- tokenizer


class KmerTokenizer:
    """Non-overlapping k-mer tokenizer of DNA barcodes, with MLM masking.

    Parameters
    ----------
    k : int, default 4
        k-mer length, 1 to 8.
    max_len : int, default 660 (``MAX_NUCLEOTIDES``)
        Bases kept per sequence; each sequence gives ``max_len // k`` tokens.
    n_as_base : bool, default False
        If true, ``N`` is a fifth base: k-mers containing ``N`` get their own ids
        (after the ``4**k`` ACGT k-mers) instead of ``[UNK]``, and padding
        positions hold the all-``N`` k-mer.

    Examples
    --------
    >>> tok = KmerTokenizer(k=4, max_len=12)
    >>> ids, att = tok.encode(["AAAAAAACGT"])
    >>> ids.tolist(), att.tolist()
    ([[2, 3, 1]], [[1, 1, 0]])
    """

    #: Reads :class:`~bioscan_io.gathered.Gathered` columns in place (the loader
    #: hands other tokenizers an Arrow copy of the rows).
    reads_gathered = True

    def __init__(self, k: int = 4, max_len: int = MAX_NUCLEOTIDES, n_as_base: bool = False):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise BioscanError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        self.k = int(k)
        self.max_len = _check_length(max_len, "max_len")
        self.n_as_base = bool(n_as_base)
        self.n_tokens = self.max_len // self.k
        self._bases = "ACGTN" if self.n_as_base else "ACGT"
        self.vocab_size = 2 + len(self._bases) ** self.k
        self._build_tables()
        self._vocab: list[str] | None = None
        self._vocab_array: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"KmerTokenizer(k={self.k}, max_len={self.max_len}, n_as_base={self.n_as_base})"

    # ----------------------------------------------------------------- tables

    def _build_tables(self) -> None:
        radix = len(self._bases)
        lut1 = np.full(256, _kmer.BAD, dtype=np.uint8)
        for code, base in enumerate(self._bases):
            lut1[ord(base)] = code
        pair = np.arange(65536)
        lo = lut1[pair & 0xFF].astype(np.int32)
        hi = lut1[pair >> 8].astype(np.int32)
        # Index b0 | b1 << 8 -> code(b0) * radix + code(b1): first byte most significant.
        self._lut1 = lut1
        self._lut2 = np.where((lo | hi) & _kmer.BAD, _kmer.BAD, lo * radix + hi).astype(np.uint8)
        if self.n_as_base:
            self._idlut = self._n_as_base_ids()
            self.pad_id = self.vocab_size - 1  # the all-N k-mer comes last
        else:
            self._idlut = _EMPTY_I32
            self.pad_id = UNK_ID

    def _n_as_base_ids(self) -> np.ndarray:
        """Id of each base-5 k-mer value (digits A0 C1 G2 T3 N4, first base most significant)."""
        k = self.k
        v = np.arange(5**k, dtype=np.int64)
        digits = np.stack([(v // 5 ** (k - 1 - j)) % 5 for j in range(k)])
        has_n = (digits == 4).any(axis=0)
        base4 = (digits * (4 ** np.arange(k - 1, -1, -1))[:, None]).sum(axis=0)
        n_rank = np.cumsum(has_n) - 1  # order among N-containing k-mers = product order
        ids = np.where(has_n, 2 + 4**k + n_rank, 2 + base4)
        return ids.astype(np.int32)

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab(self) -> list[str]:
        """All tokens, indexed by id (built on first use: ``5**8`` strings for k = 8)."""
        if self._vocab is None:
            acgt = ["".join(p) for p in itertools.product("ACGT", repeat=self.k)]
            vocab = [MASK_TOKEN, UNK_TOKEN] + acgt
            if self.n_as_base:
                vocab += [
                    "".join(p) for p in itertools.product("ACGTN", repeat=self.k) if "N" in p
                ]
            self._vocab = vocab
        return self._vocab

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
        if not 0 <= i < self.vocab_size:
            raise BioscanError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return self.vocab[i]

    def token_to_id(self, token: str) -> int:
        """The id of a token: ``[MASK]``, ``[UNK]``, or a k-mer (as :meth:`encode` maps it).

        A length-``k`` string that is not in the vocabulary (lowercase, IUPAC codes...)
        is ``[UNK]``, as it would be in a sequence.

        Raises
        ------
        BioscanError
            If ``token`` is neither a special token nor ``k`` characters long.
        """
        if token == MASK_TOKEN:
            return MASK_ID
        if token == UNK_TOKEN:
            return UNK_ID
        if not isinstance(token, str) or len(token) != self.k:
            raise BioscanError(f"{token!r} is not a special token nor a {self.k}-mer")
        value = 0
        radix = len(self._bases)
        for ch in token:
            code = self._bases.find(ch)
            if code < 0:
                return UNK_ID
            value = value * radix + code
        if self.n_as_base:
            return int(self._idlut[value])
        return 2 + value

    def decode(self, ids: Any) -> list:
        """Tokens of ids: a list of str for one row, a list of lists for a batch.

        Parameters
        ----------
        ids : array-like or torch.Tensor of int, 1-D or 2-D
            Ids as returned by :meth:`encode` (labels' -100 is not an id).
        """
        if self._vocab_array is None:
            self._vocab_array = np.array(self.vocab, dtype=object)
        return decode_ids(ids, self._vocab_array)

    # ----------------------------------------------------------------- encoding

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
        seqs : list of str or bytes, numpy array, pyarrow string/binary (Chunked)Array, or Gathered
            The sequences; ``None`` / nulls are empty sequences. Arrow arrays (and the
            rows of them a :class:`~bioscan_io.gathered.Gathered` picks) are read in place.
        offsets : array-like of int, optional
            Per-sequence reading-frame offset (``s[o:]`` is tokenized); 0 by default.
        dtype : int32 or int64, optional
            Output dtype; int64 by default, or that of ``out``.
        return_tensors : {None, "np", "pt"}
            numpy arrays (None, "np") or torch tensors sharing their memory ("pt").
        out : tuple of 2 arrays, optional
            ``(ids, attention_mask)`` arrays of shape ``(len(seqs), max_len // k)`` to
            write into; they may be views (any row stride) but must be contiguous
            along the last axis.

        Returns
        -------
        (ids, attention_mask)
            Arrays of shape ``(len(seqs), max_len // k)``.
        """
        check_return_tensors(return_tensors)
        chunks = seq_chunks(seqs, "seqs")
        n = sum(len(c) for c in chunks)
        offs = row_offsets(offsets, n)
        ids, att = output_arrays(n, self.n_tokens, dtype, out, ("ids", "attention_mask"))
        # No labels are written: ids stands in for the kernel's labels argument.
        self._run(chunks, offs, _EMPTY_U64, False, 0, _NO_RECIPE, _kmer.LabelMode.NO_LABELS,
                  ids, att, ids)
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

        A position is *maskable* when it is attended and holds a vocabulary k-mer
        (id >= 2; in ``n_as_base`` mode this includes k-mers with ``N``): padding and
        ``[UNK]`` are never masked. Each maskable position is selected with
        probability ``mask_prob``, by a draw that depends only on
        ``(seed, epoch, processid, position)``, so a sample gets the same mask in any
        batch, order, worker or process. A selected position is set to ``[MASK]``
        (= 0), replaced by a random k-mer, or kept, in the shares ``mask_ratios``,
        by another draw of the same key (:func:`bioscan_io.testing.oracle.mask_action`).

        Parameters
        ----------
        seqs : list of str or bytes, numpy array, or pyarrow string/binary (Chunked)Array
            The sequences, as for :meth:`encode`.
        processids : same forms as ``seqs``, or uint64 array from :func:`processid_keys`
            One id per sequence: the sample's identity for every random draw.
        seed, epoch : int in [0, 2**64)
            Together with the processid, select the draws.
        mask_prob : float in [0, 1], default 0.5
            Probability of selecting a maskable position (BarcodeBERT uses 0.5).
        mask_ratios : three numbers, default (1.0, 0.0, 0.0)
            Shares of the selected positions set to ``[MASK]``, replaced by a random
            k-mer (ids 2 and up, drawn uniformly; it may be the original one), and
            kept: non-negative, summing to 1. BERT's recipe is ``(0.8, 0.1, 0.1)``;
            the default, all ``[MASK]``, is BarcodeBERT's.
        label_mode : {"masked", "barcodebert"}
            ``"masked"``: labels hold the original id at every selected position
            (masked, replaced or kept) and -100 elsewhere (Hugging Face).
            ``"barcodebert"``: labels hold ``id - 2`` at every maskable position,
            selected or not, and -100 elsewhere.
        random_offset : bool, default False
            Start each sequence at an offset drawn uniformly from ``0..k-1`` (from the
            same key; see :meth:`random_offsets`).
        offsets : array-like of int, optional
            Explicit per-sequence offsets instead (not with ``random_offset``).
        dtype, return_tensors
            As for :meth:`encode`.
        out : tuple of 3 arrays, optional
            ``(input_ids, attention_mask, labels)`` to write into, as for :meth:`encode`.

        Returns
        -------
        dict
            ``input_ids``, ``attention_mask`` and ``labels``, each of shape
            ``(len(seqs), max_len // k)``.
        """
        check_return_tensors(return_tensors)
        m = _masking(seed, epoch, mask_prob, mask_ratios, label_mode)
        if random_offset and offsets is not None:
            raise BioscanError("pass either random_offset=True or offsets, not both")
        chunks = seq_chunks(seqs, "seqs")
        n = sum(len(c) for c in chunks)
        keys = _sample_keys(processids, m.seed, m.epoch, n)
        offs = row_offsets(offsets, n)
        ids, att, labels = output_arrays(
            n, self.n_tokens, dtype, out, ("input_ids", "attention_mask", "labels")
        )
        self._run(chunks, offs, keys, bool(random_offset), m.thr, m.recipe, m.mode, ids, att, labels)
        ids, att, labels = as_tensors((ids, att, labels), return_tensors)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    def random_offsets(self, processids: Any, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """The offsets that ``encode_mlm(..., random_offset=True)`` uses, as int64."""
        seed = _check_uint64(seed, "seed")
        epoch = _check_uint64(epoch, "epoch")
        keys = _sample_keys(processids, seed, epoch)
        out = np.empty(len(keys), dtype=np.int64)
        _kmer.offsets_from_keys(keys, self.k, out)
        return out

    def _run(self, chunks, offs, keys, random_offset, thr, recipe, mode, ids, att, labels) -> None:
        for c, (r0, r1) in zip(chunks, chunk_bounds(chunks)):
            # Empty offs or keys slice to empty, which the kernel reads as "none".
            _kmer.encode_batch(
                c.data, c.starts, c.ends, offs[r0:r1], keys[r0:r1], random_offset, self.k,
                self.max_len, self._lut1, self._lut2, self._idlut, self.pad_id, thr,
                recipe[0], recipe[1], mode, ids[r0:r1], att[r0:r1], labels[r0:r1],
            )

"""BarcodeBERT-compatible non-overlapping k-mer tokenizer with MLM masking.

A thin wrapper around the compiled kernel ``bioscan_io._kmer``: every argument
is checked here, and a whole batch is handed to the kernel as one byte buffer
plus per-row start/end offsets, so no Python object is made per sequence or per
token. Arrow string/binary columns are read through their own buffers, without
a copy.

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
implemented with Python integers, in :mod:`bioscan_io.reference`.
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import numpy as np

from .schema import MAX_NUCLEOTIDES, BioscanError

try:
    from . import _kmer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "bioscan_io._kmer, the compiled k-mer tokenizer, is not built. Build it from the "
        "project root with `pip install -e .` or `python setup.py build_ext --inplace` "
        f"(needs Cython and a C compiler). Original error: {exc}"
    ) from exc

__all__ = [
    "IGNORE_INDEX",
    "KmerTokenizer",
    "LABEL_MODES",
    "MASK_ID",
    "MASK_TOKEN",
    "UNK_ID",
    "UNK_TOKEN",
    "processid_keys",
]

MASK_TOKEN = "[MASK]"
UNK_TOKEN = "[UNK]"
MASK_ID = 0
UNK_ID = 1
#: Label of positions the loss ignores (PyTorch's ``CrossEntropyLoss`` default).
IGNORE_INDEX = -100
#: ``"masked"``: the original id at masked positions (Hugging Face convention);
#: ``"barcodebert"``: ``id - 2`` at every maskable position, masked or not.
LABEL_MODES = ("masked", "barcodebert")
#: The largest ``k`` the kernel supports (``5**8`` ids still fit an int32).
MAX_K = 8
# Token positions index the generator's counters, which must stay below 2**32.
_MAX_MAX_LEN = 2**31 - 1
_BAD = 0x80

if (_kmer.MASK_ID, _kmer.UNK_ID, _kmer.IGNORE_INDEX) != (MASK_ID, UNK_ID, IGNORE_INDEX):
    raise ImportError("bioscan_io._kmer is out of date; rebuild it (`pip install -e .`)")

_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_U64 = np.empty(0, dtype=np.uint64)
_EMPTY_I32 = np.empty(0, dtype=np.int32)
_EMPTY_U8 = np.empty(0, dtype=np.uint8)


# --------------------------------------------------------------------------- inputs


class _Chunk:
    """Rows ``data[starts[i]:ends[i]]``: the kernel's view of a batch (or part of it)."""

    __slots__ = ("data", "starts", "ends")

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.data = data
        self.starts = starts
        self.ends = ends

    def __len__(self) -> int:
        return len(self.starts)


def _is_pyarrow(values: Any) -> bool:
    # Checked by module name so that pyarrow is only imported when it is used.
    return type(values).__module__.split(".", 1)[0] == "pyarrow"


def _is_torch(values: Any) -> bool:
    return type(values).__module__.split(".", 1)[0] == "torch"


def _chunk_from_items(items: list, what: str) -> _Chunk:
    """Concatenate a list of bytes (one C-level join) into a chunk."""
    n = len(items)
    lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
    data = np.frombuffer(b"".join(items), dtype=np.uint8)
    ends = np.cumsum(lens)
    return _Chunk(data, ends - lens, ends)


def _to_bytes(value: Any, index: int, what: str) -> bytes:
    if isinstance(value, str):
        # surrogatepass: any Python str has a byte form, so nothing can fail here.
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        return b""
    raise BioscanError(
        f"{what}[{index}] is a {type(value).__name__}; expected str, bytes or None"
    )


def _chunk_from_list(values: list, what: str) -> _Chunk:
    n = len(values)
    if n == 0:
        return _Chunk(_EMPTY_U8, _EMPTY_I64, _EMPTY_I64)
    try:
        joined = "".join(values)
    except TypeError:
        joined = None
    if joined is not None:
        data = joined.encode("utf-8", "surrogatepass")
        if len(data) == len(joined):
            # All ASCII: byte lengths are the str lengths, and one join did it all.
            lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
            ends = np.cumsum(lens)
            return _Chunk(np.frombuffer(data, dtype=np.uint8), ends - lens, ends)
    return _chunk_from_items([_to_bytes(v, i, what) for i, v in enumerate(values)], what)


def _chunks_from_arrow(values: Any, what: str) -> list[_Chunk]:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        return [c for arr in values.chunks for c in _chunks_from_arrow(arr, what)]
    if not isinstance(values, pa.Array):
        raise BioscanError(f"{what}: unsupported pyarrow object {type(values).__name__}")
    n = len(values)
    t = values.type
    if pa.types.is_dictionary(t):
        values = values.dictionary_decode()
        t = values.type
    if n == 0:
        return [_Chunk(_EMPTY_U8, _EMPTY_I64, _EMPTY_I64)]
    if pa.types.is_null(t):
        zeros = np.zeros(n, dtype=np.int64)
        return [_Chunk(_EMPTY_U8, zeros, zeros)]
    if pa.types.is_string(t) or pa.types.is_binary(t):
        off_dtype = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        off_dtype = np.int64
    elif str(t) in ("string_view", "binary_view"):
        return _chunks_from_arrow(values.cast(pa.large_binary()), what)
    else:
        raise BioscanError(f"{what}: expected a string or binary Arrow array, got type {t}")
    _validity, offsets_buf, data_buf = values.buffers()[:3]
    # values.offset: a sliced array shares its parent's buffers.
    offsets = np.frombuffer(offsets_buf, dtype=off_dtype)[values.offset : values.offset + n + 1]
    if len(offsets) != n + 1:
        raise BioscanError(f"{what}: Arrow offsets buffer is too short")
    data = _EMPTY_U8 if data_buf is None else np.frombuffer(data_buf, dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    ends = offsets[1:].astype(np.int64)
    if values.null_count:
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        ends = np.where(valid, ends, starts)
    return [_Chunk(data, starts, ends)]


def _as_chunks(values: Any, what: str) -> list[_Chunk]:
    """The rows of ``values`` as kernel chunks (several for an Arrow ChunkedArray)."""
    if isinstance(values, (str, bytes, bytearray)):
        raise BioscanError(
            f"{what} is a single {type(values).__name__}; pass a list of sequences "
            f"(e.g. [{what}])"
        )
    if _is_pyarrow(values):
        chunks = _chunks_from_arrow(values, what)
    elif isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise BioscanError(f"{what} must be one-dimensional, got shape {values.shape}")
        if values.dtype.kind not in "OUS":
            raise BioscanError(
                f"{what} has dtype {values.dtype}; expected strings, bytes or objects"
            )
        chunks = [_chunk_from_list(values.tolist(), what)]
    elif isinstance(values, list):
        chunks = [_chunk_from_list(values, what)]
    else:
        try:
            items = list(values)
        except TypeError:
            raise BioscanError(
                f"{what} must be a list/array of str or bytes or a pyarrow string array, "
                f"got {type(values).__name__}"
            ) from None
        chunks = [_chunk_from_list(items, what)]
    for c in chunks:
        # Cheap, vectorised guards so that the kernel can never read out of bounds,
        # whatever a hand-made Arrow array claims.
        if len(c) and (
            c.starts.min() < 0 or (c.ends < c.starts).any() or c.ends.max() > len(c.data)
        ):
            raise BioscanError(f"{what}: row offsets point outside the data buffer")
    return chunks


def _chunk_bounds(chunks: list[_Chunk]) -> list[tuple[int, int]]:
    bounds, r = [], 0
    for c in chunks:
        bounds.append((r, r + len(c)))
        r += len(c)
    return bounds


def processid_keys(processids: Any) -> np.ndarray:
    """64-bit FNV-1a hashes of processids, the per-sample part of every random draw.

    Parameters
    ----------
    processids : list of str or bytes, numpy array, or pyarrow string/binary array
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
    chunks = _as_chunks(processids, "processids")
    out = np.empty(sum(len(c) for c in chunks), dtype=np.uint64)
    for c, (r0, r1) in zip(chunks, _chunk_bounds(chunks)):
        _kmer.hash_strings(c.data, c.starts, c.ends, out[r0:r1])
    return out


# --------------------------------------------------------------------------- checks


def _check_uint64(value: Any, name: str) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise BioscanError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= v < 2**64:
        raise BioscanError(f"{name} must be in [0, 2**64), got {v}")
    return v


def _norm_dtype(dtype: Any) -> np.dtype:
    if _is_torch(dtype):
        dtype = str(dtype).replace("torch.", "")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise BioscanError(f"dtype must be int32 or int64, got {dtype!r}") from None
    if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise BioscanError(f"dtype must be int32 or int64, got {dt}")
    return dt


def _check_return_tensors(return_tensors: Any) -> None:
    if return_tensors not in (None, "np", "pt"):
        raise BioscanError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")


def _outputs(n: int, T: int, dtype: Any, out: Any, names: tuple[str, ...]) -> tuple:
    """Allocate the output arrays, or check the caller's ``out`` arrays."""
    if out is None:
        dt = _norm_dtype(np.int64 if dtype is None else dtype)
        return tuple(np.empty((n, T), dtype=dt) for _ in names)
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise BioscanError(f"out must be a tuple of {len(names)} arrays ({', '.join(names)})")
    arrays = []
    for name, a in zip(names, out):
        if _is_torch(a):
            a = a.numpy()  # shares memory; raises for GPU tensors or ones needing grad
        if not isinstance(a, np.ndarray):
            raise BioscanError(f"out {name} must be a numpy array, got {type(a).__name__}")
        arrays.append(a)
    dt = _norm_dtype(arrays[0].dtype if dtype is None else dtype)
    checked = []
    for name, a in zip(names, arrays):
        if a.dtype != dt:
            raise BioscanError(f"out {name} has dtype {a.dtype}, expected {dt}")
        if a.shape != (n, T):
            raise BioscanError(f"out {name} has shape {a.shape}, expected {(n, T)}")
        if not a.flags.writeable:
            raise BioscanError(f"out {name} is read-only")
        if a.strides[1] != a.itemsize:
            if T > 1:
                raise BioscanError(
                    f"out {name} must be contiguous along its last axis (row stride is free)"
                )
            # One column: its stride is never used, so give the kernel the layout it expects.
            a = np.lib.stride_tricks.as_strided(a, strides=(a.strides[0], a.itemsize))
        checked.append(a)
    return tuple(checked)


def _wrap(arrays: tuple, return_tensors: Any) -> tuple:
    if return_tensors == "pt":
        import torch

        return tuple(torch.from_numpy(a) for a in arrays)
    return arrays


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

    def __init__(self, k: int = 4, max_len: int = MAX_NUCLEOTIDES, n_as_base: bool = False):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise BioscanError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if (
            isinstance(max_len, bool)
            or not isinstance(max_len, (int, np.integer))
            or not 0 <= max_len <= _MAX_MAX_LEN
        ):
            raise BioscanError(f"max_len must be an integer from 0 to {_MAX_MAX_LEN}, got {max_len!r}")
        self.k = int(k)
        self.max_len = int(max_len)
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
        lut1 = np.full(256, _BAD, dtype=np.uint8)
        for code, base in enumerate(self._bases):
            lut1[ord(base)] = code
        pair = np.arange(65536)
        lo = lut1[pair & 0xFF].astype(np.int32)
        hi = lut1[pair >> 8].astype(np.int32)
        # Index b0 | b1 << 8 -> code(b0) * radix + code(b1): first byte most significant.
        self._lut1 = lut1
        self._lut2 = np.where((lo | hi) & _BAD, _BAD, lo * radix + hi).astype(np.uint8)
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
        if _is_torch(ids):
            ids = ids.detach().cpu().numpy()
        a = np.asarray(ids)
        if a.ndim not in (1, 2) or (a.size and a.dtype.kind not in "iu"):
            raise BioscanError(f"ids must be a 1-D or 2-D integer array, got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
            raise BioscanError(f"ids must be in [0, {self.vocab_size})")
        if self._vocab_array is None:
            self._vocab_array = np.array(self.vocab, dtype=object)
        return self._vocab_array[a.astype(np.intp)].tolist()

    # ----------------------------------------------------------------- encoding

    def _offsets(self, offsets: Any, n: int) -> np.ndarray:
        if offsets is None:
            return _EMPTY_I64
        if _is_torch(offsets):
            offsets = offsets.detach().cpu().numpy()
        a = np.asarray(offsets)
        if a.shape != (n,) or (n and a.dtype.kind not in "iu"):
            raise BioscanError(f"offsets must be {n} integers, one per sequence; got {a.dtype} {a.shape}")
        if n and a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
            raise BioscanError("offsets must be below 2**63")
        a = np.ascontiguousarray(a, dtype=np.int64)
        if n and a.min() < 0:
            raise BioscanError("offsets must be non-negative")
        return a

    def _keys(self, processids: Any, n: int, seed: int, epoch: int) -> np.ndarray:
        pid_hash = processid_keys(processids)
        if len(pid_hash) != n:
            raise BioscanError(f"got {len(pid_hash)} processids for {n} sequences")
        keys = np.empty(n, dtype=np.uint64)
        _kmer.sample_keys(pid_hash, seed, epoch, keys)
        return keys

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
            The sequences; ``None`` / nulls are empty sequences. Arrow arrays are read
            in place.
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
        _check_return_tensors(return_tensors)
        chunks = _as_chunks(seqs, "seqs")
        n = sum(len(c) for c in chunks)
        offs = self._offsets(offsets, n)
        ids, att = _outputs(n, self.n_tokens, dtype, out, ("ids", "attention_mask"))
        for c, (r0, r1) in zip(chunks, _chunk_bounds(chunks)):
            self._run(c, offs[r0:r1] if len(offs) else offs, _EMPTY_U64, False, 0, 0,
                      ids[r0:r1], att[r0:r1], ids[r0:r1])
        return _wrap((ids, att), return_tensors)

    def encode_mlm(
        self,
        seqs: Any,
        processids: Any,
        seed: int = 0,
        epoch: int = 0,
        mask_prob: float = 0.5,
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
        ``[UNK]`` are never masked. Each maskable position is masked (its id set to
        ``[MASK]`` = 0) with probability ``mask_prob``, by a draw that depends only on
        ``(seed, epoch, processid, position)``, so a sample gets the same mask in any
        batch, order, worker or process.

        Parameters
        ----------
        seqs : list of str or bytes, numpy array, or pyarrow string/binary (Chunked)Array
            The sequences, as for :meth:`encode`.
        processids : same forms as ``seqs``, or uint64 array from :func:`processid_keys`
            One id per sequence: the sample's identity for every random draw.
        seed, epoch : int in [0, 2**64)
            Together with the processid, select the draws.
        mask_prob : float in [0, 1], default 0.5
            Probability of masking a maskable position (BarcodeBERT uses 0.5).
        label_mode : {"masked", "barcodebert"}
            ``"masked"``: labels hold the original id at masked positions and -100
            elsewhere (Hugging Face). ``"barcodebert"``: labels hold ``id - 2`` at every
            maskable position, masked or not, and -100 elsewhere.
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
        _check_return_tensors(return_tensors)
        seed = _check_uint64(seed, "seed")
        epoch = _check_uint64(epoch, "epoch")
        if label_mode not in LABEL_MODES:
            raise BioscanError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        try:
            p = float(mask_prob)
        except (TypeError, ValueError):
            raise BioscanError(f"mask_prob must be a number, got {mask_prob!r}") from None
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise BioscanError(f"mask_prob must be in [0, 1], got {mask_prob!r}")
        if random_offset and offsets is not None:
            raise BioscanError("pass either random_offset=True or offsets, not both")
        chunks = _as_chunks(seqs, "seqs")
        n = sum(len(c) for c in chunks)
        keys = self._keys(processids, n, seed, epoch)
        offs = self._offsets(offsets, n)
        # u / 2**32 < p  <=>  u < ceil(p * 2**32) for integer u; p * 2**32 is exact.
        thr = math.ceil(p * 2**32)
        mode = 1 if label_mode == "masked" else 2
        ids, att, labels = _outputs(
            n, self.n_tokens, dtype, out, ("input_ids", "attention_mask", "labels")
        )
        for c, (r0, r1) in zip(chunks, _chunk_bounds(chunks)):
            self._run(c, offs[r0:r1] if len(offs) else offs, keys[r0:r1], bool(random_offset),
                      thr, mode, ids[r0:r1], att[r0:r1], labels[r0:r1])
        ids, att, labels = _wrap((ids, att, labels), return_tensors)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    def random_offsets(self, processids: Any, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """The offsets that ``encode_mlm(..., random_offset=True)`` uses, as int64."""
        seed = _check_uint64(seed, "seed")
        epoch = _check_uint64(epoch, "epoch")
        pid_hash = processid_keys(processids)
        keys = np.empty(len(pid_hash), dtype=np.uint64)
        _kmer.sample_keys(pid_hash, seed, epoch, keys)
        out = np.empty(len(keys), dtype=np.int64)
        _kmer.offsets_from_keys(keys, self.k, out)
        return out

    def _run(self, c, offs, keys, random_offset, thr, mode, ids, att, labels) -> None:
        _kmer.encode_batch(
            c.data, c.starts, c.ends, offs, keys, random_offset, self.k, self.max_len,
            self._lut1, self._lut2, self._idlut, self.pad_id, thr, mode, ids, att, labels,
        )

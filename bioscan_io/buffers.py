"""Batches as the compiled kernels' buffers: sequences in, integer arrays out.

The kernels of :mod:`bioscan_io._kmer` read a batch of sequences as one byte
buffer plus per-row ``starts``/``ends`` (the layout of an Arrow binary column)
and write 2-D integer arrays. This module turns what callers pass -- lists of
str or bytes, numpy arrays, pyarrow (chunked) string or binary arrays, torch
tensors -- into those buffers, checks them so that the kernels can trust them,
and hands the outputs back as numpy arrays or torch tensors. It makes no Python
object per sequence or per token, and reads Arrow columns in place.

It is the input/output layer of :class:`bioscan_io.tokenizer.KmerTokenizer`,
which holds the vocabulary and the calls to the kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import BioscanError

__all__ = [
    "Chunk",
    "as_chunks",
    "as_tensors",
    "check_return_tensors",
    "chunk_bounds",
    "is_torch",
    "output_arrays",
    "row_offsets",
]

_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_U8 = np.empty(0, dtype=np.uint8)


def is_torch(value: Any) -> bool:
    """Whether ``value`` is a torch object (tensor, dtype...), without importing torch."""
    return type(value).__module__.split(".", 1)[0] == "torch"


def _is_pyarrow(values: Any) -> bool:
    # By module name, so that pyarrow is only imported when it is used.
    return type(values).__module__.split(".", 1)[0] == "pyarrow"


# --------------------------------------------------------------------------- inputs


class Chunk:
    """Rows ``data[starts[i]:ends[i]]``: the kernels' view of a batch (or part of it).

    Parameters
    ----------
    data : numpy.ndarray of uint8
        The bytes of all rows.
    starts, ends : numpy.ndarray of int64
        Each row's byte range in ``data``.
    """

    __slots__ = ("data", "starts", "ends")

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.data = data
        self.starts = starts
        self.ends = ends

    def __len__(self) -> int:
        return len(self.starts)


def _chunk_from_items(items: list) -> Chunk:
    """Concatenate a list of bytes (one C-level join) into a chunk."""
    n = len(items)
    lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
    data = np.frombuffer(b"".join(items), dtype=np.uint8)
    ends = np.cumsum(lens)
    return Chunk(data, ends - lens, ends)


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


def _chunk_from_list(values: list, what: str) -> Chunk:
    n = len(values)
    if n == 0:
        return Chunk(_EMPTY_U8, _EMPTY_I64, _EMPTY_I64)
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
            return Chunk(np.frombuffer(data, dtype=np.uint8), ends - lens, ends)
    return _chunk_from_items([_to_bytes(v, i, what) for i, v in enumerate(values)])


def _chunks_from_arrow(values: Any, what: str) -> list[Chunk]:
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
        return [Chunk(_EMPTY_U8, _EMPTY_I64, _EMPTY_I64)]
    if pa.types.is_null(t):
        zeros = np.zeros(n, dtype=np.int64)
        return [Chunk(_EMPTY_U8, zeros, zeros)]
    off_dtype: type
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
    return [Chunk(data, starts, ends)]


def as_chunks(values: Any, what: str) -> list[Chunk]:
    """The rows of a batch as kernel chunks.

    Parameters
    ----------
    values : list of str or bytes, numpy array, pyarrow string/binary (Chunked)Array
        The rows; ``None`` and nulls are empty rows, str is encoded as UTF-8.
        Any other iterable of those is read as a list.
    what : str
        The argument's name, for error messages.

    Returns
    -------
    list of Chunk
        One chunk, or one per chunk of an Arrow ChunkedArray; Arrow buffers are
        not copied.

    Raises
    ------
    BioscanError
        If ``values`` is a single string, not one-dimensional, of another type,
        or has row offsets outside its data.
    """
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


def chunk_bounds(chunks: list[Chunk]) -> list[tuple[int, int]]:
    """The batch rows ``[r0, r1)`` of each chunk."""
    bounds, r = [], 0
    for c in chunks:
        bounds.append((r, r + len(c)))
        r += len(c)
    return bounds


def row_offsets(offsets: Any, n: int) -> np.ndarray:
    """Per-row reading-frame offsets as contiguous int64, empty for ``None``.

    Parameters
    ----------
    offsets : array-like or torch.Tensor of int, or None
        One non-negative offset per row.
    n : int
        The number of rows.

    Raises
    ------
    BioscanError
        If there is not one non-negative integer below ``2**63`` per row.
    """
    if offsets is None:
        return _EMPTY_I64
    if is_torch(offsets):
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


# --------------------------------------------------------------------------- outputs


def _norm_dtype(dtype: Any) -> np.dtype:
    if is_torch(dtype):
        dtype = str(dtype).replace("torch.", "")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise BioscanError(f"dtype must be int32 or int64, got {dtype!r}") from None
    if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise BioscanError(f"dtype must be int32 or int64, got {dt}")
    return dt


def check_return_tensors(return_tensors: Any) -> None:
    """Refuse a ``return_tensors`` other than None, ``"np"`` or ``"pt"``."""
    if return_tensors not in (None, "np", "pt"):
        raise BioscanError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")


def output_arrays(n: int, T: int, dtype: Any, out: Any, names: tuple[str, ...]) -> tuple:
    """Allocate the kernel's output arrays, or check the caller's.

    Parameters
    ----------
    n, T : int
        Rows and tokens per row: the shape of each array.
    dtype : int32 or int64 (numpy or torch), or None
        int64 by default, or the dtype of ``out``.
    out : tuple of numpy arrays or CPU torch tensors, or None
        Arrays to write into, one per name; any row stride, but each row must be
        contiguous.
    names : tuple of str
        The arrays' names, for error messages.

    Returns
    -------
    tuple of numpy.ndarray
        Arrays the kernel can write through (views of ``out``'s when given).
    """
    if out is None:
        dt = _norm_dtype(np.int64 if dtype is None else dtype)
        return tuple(np.empty((n, T), dtype=dt) for _ in names)
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise BioscanError(f"out must be a tuple of {len(names)} arrays ({', '.join(names)})")
    arrays = []
    for name, a in zip(names, out):
        if is_torch(a):
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


def as_tensors(arrays: tuple, return_tensors: Any) -> tuple:
    """The arrays as asked: numpy (None, ``"np"``) or torch tensors sharing their memory."""
    if return_tensors == "pt":
        import torch

        return tuple(torch.from_numpy(a) for a in arrays)
    return arrays

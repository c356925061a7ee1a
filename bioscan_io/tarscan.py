"""Read one member of every sample of a shard range as Arrow columns, in C.

The compiled walk (``src_ext/_tar.pyx``) visits each 512-byte header of a
memory-mapped shard and jumps over the payloads the task does not need, so
reading the barcodes of a shard that also holds images costs a few header
reads per sample and no Python object per sample. Shards it cannot walk
(pax or GNU long-name headers, remote URLs) are read by the Python path in
``loader.py``; both give the same columns.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pyarrow as pa

from .schema import BioscanError

try:
    from . import _tar
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "bioscan_io._tar (the compiled tar reader) is not built: run `pip install -e .` "
        "or `python setup.py build_ext --inplace` in the source tree"
    ) from exc

# A plain shared map: the walk faults in only the pages holding headers and the
# wanted payloads. MAP_POPULATE measured no faster on warm page cache, and on a
# cold disk it would read every image too.
_MAP_FLAGS = mmap.MAP_SHARED

#: Status code of a shard that needs the Python reader.
UNSUPPORTED = 5


def is_local(url: str) -> bool:
    """Whether ``url`` is a plain file path the compiled reader can map."""
    return "://" not in url and not url.startswith("pipe:") and os.path.isfile(url)


def _column(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, type_) -> pa.Array:
    lengths = ends - starts
    offsets = np.empty(len(starts) + 1, dtype=np.int64)
    values = np.empty(int(lengths.sum()), dtype=np.uint8)
    _tar.gather(buf, np.ascontiguousarray(starts), np.ascontiguousarray(ends), values, offsets)
    return pa.Array.from_buffers(type_, len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def read_members(path: str, start: int, stop: int, exts) -> tuple | None:
    """Keys and the payloads of several members of samples ``start <= i < stop``.

    One memory map, one header walk per extension (the header pages stay hot).

    Returns
    -------
    (keys, values, present, error) or None
        ``keys``: large_string array of the samples read; ``values[ext]``:
        large_binary array aligned with ``keys`` (empty where absent);
        ``present[ext]``: bool array, False where a sample lacks the member;
        ``error``: a :class:`BioscanError` naming the shard and byte offset when the
        shard is corrupt, truncated or shorter than asked (the arrays then hold the
        samples before the fault), else None. None instead of the tuple when the
        shard uses headers the compiled walk does not read (use the Python path).
    """
    want = stop - start
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            empty = {ext: pa.array([], pa.large_binary()) for ext in exts}
            return pa.array([], pa.large_string()), empty, {e: np.zeros(0, bool) for e in exts}, \
                BioscanError(f"shard {path} is empty")
        with mmap.mmap(f.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ) as mm:
            buf = np.frombuffer(mm, dtype=np.uint8)
            try:
                values, present, error, rows = {}, {}, None, None
                for ext in exts:
                    rows = np.empty((want, 4), dtype=np.int64)
                    n, status, offset = _tar.scan(buf, start, stop, np.frombuffer(ext.encode(), dtype=np.uint8), rows)
                    if status == UNSUPPORTED:
                        return None
                    if status != 0:
                        error = BioscanError(
                            f"shard {path}: {_tar.STATUS[status]} at byte {offset}{_member_at(buf, offset)}")
                    elif n < want:
                        error = BioscanError(
                            f"shard {path} ends after sample {start + n}; expected at least {stop} samples")
                    rows = rows[:n]
                    present[ext] = rows[:, 2] >= 0
                    values[ext] = _column(buf, rows[:, 2], rows[:, 3], pa.large_binary())
                keys = _column(buf, rows[:, 0], rows[:, 1], pa.large_string())
                return keys, values, present, error
            finally:
                del buf  # release the map before it closes


def read_column(path: str, start: int, stop: int, ext: str) -> tuple[dict, list[str], BioscanError | None] | None:
    """The columnar block of one member: what the MLM path reads.

    Returns
    -------
    (block, missing, error) or None
        ``block`` is ``{"__key__": keys, ext: payloads}`` for the samples that have
        the member; ``missing`` the keys of those that do not (only reported when
        the shard read cleanly); ``error`` as for :func:`read_members`.
    """
    found = read_members(path, start, stop, (ext,))
    if found is None:
        return None
    keys, values, present, error = found
    have = present[ext]
    missing = [] if error is not None or have.all() else keys.filter(pa.array(~have)).to_pylist()
    if not have.all():
        mask = pa.array(have)
        keys, values = keys.filter(mask), {ext: values[ext].filter(mask)}
    return {"__key__": keys, ext: values[ext]}, missing, error


def _member_at(buf: np.ndarray, offset: int) -> str:
    name = bytes(buf[offset:offset + 100]).split(b"\0", 1)[0]
    return f" (member {name.decode(errors='replace')!r})" if name else ""

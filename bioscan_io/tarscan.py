"""Read one member of every sample of a shard range as Arrow columns, in C.

The compiled walk (``src_ext/_tar.pyx``) visits each 512-byte header of a
memory-mapped shard and jumps over the payloads the task does not need, so
reading the barcodes of a shard that also holds images costs a few header
reads per sample and no Python object per sample. Shards it cannot walk
(pax or GNU long-name headers, remote URLs) are read by the Python path in
``loader.py``; both give the same columns.
"""

from __future__ import annotations

import json
import mmap
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

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


class ShardScan:
    """One header walk over a memory-mapped shard; payloads gathered block by block.

    Made by :func:`scan`. The walk records byte positions only (32 bytes a sample
    and member), so a segment of a 1 GiB shard of images is read a block at a time
    (:meth:`gather`), never whole. Use as a context manager: it holds the map.

    Attributes
    ----------
    n : int
        Samples recorded (``stop - start`` unless the shard is short or faulty).
    error : BioscanError or None
        The fault that stopped the walk, naming shard and byte offset, or a shard
        shorter than asked; the ``n`` samples before it are good.
    """

    def __init__(self, path: str, mm: mmap.mmap | None, rows: dict, n: int, error: BioscanError | None):
        self.path, self._mm, self._rows = path, mm, rows
        self.n, self.error = n, error
        self._buf = np.frombuffer(mm, dtype=np.uint8) if mm is not None else None

    def gather(self, lo: int = 0, hi: int | None = None) -> tuple:
        """``(keys, values, present)`` of recorded samples ``lo <= i < hi``.

        ``keys``: large_string array; ``values[ext]``: large_binary array aligned
        with ``keys`` (empty where absent); ``present[ext]``: bool array.
        """
        hi = self.n if hi is None else hi
        if self._buf is None or hi <= lo:
            empty = {ext: pa.array([], pa.large_binary()) for ext in self._rows}
            return pa.array([], pa.large_string()), empty, {e: np.zeros(0, bool) for e in self._rows}
        values, present, rows = {}, {}, None
        for ext, all_rows in self._rows.items():
            rows = all_rows[lo:hi]
            present[ext] = rows[:, 2] >= 0
            values[ext] = _column(self._buf, rows[:, 2], rows[:, 3], pa.large_binary())
        return _column(self._buf, rows[:, 0], rows[:, 1], pa.large_string()), values, present

    def sizes(self) -> np.ndarray:
        """Payload bytes of each recorded sample, over the members walked for."""
        total = np.zeros(self.n, np.int64)
        for rows in self._rows.values():
            total += np.maximum(rows[:, 3] - rows[:, 2], 0)
        return total

    def close(self) -> None:
        self._buf = None  # release the map's buffer before it closes
        if self._mm is not None:
            self._mm.close()

    def __enter__(self) -> ShardScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scan(path: str, start: int, stop: int, exts, name: str | None = None) -> ShardScan | None:
    """Walk the headers of samples ``start <= i < stop`` for the members ``exts``.

    One memory map, one walk per extension (the header pages stay hot). None when
    the shard uses headers the compiled walk does not read (use the Python path).
    Messages name the shard ``name`` (default: ``path``; a local copy of a remote
    shard is named by its URL).
    """
    name = name or path
    with open(path, "rb") as f:  # the map keeps its own handle on the file
        if os.fstat(f.fileno()).st_size == 0:
            rows = {ext: np.empty((0, 4), np.int64) for ext in exts}
            return ShardScan(path, None, rows, 0, BioscanError(f"shard {name} is empty"))
        mm = mmap.mmap(f.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
    try:
        found, n, error = _walk(mm, name, start, stop, exts)
    except BaseException:
        mm.close()
        raise
    if found is None:
        mm.close()
        return None
    return ShardScan(path, mm, {ext: rows[:n] for ext, rows in found.items()}, n, error)


def _walk(mm: mmap.mmap, path: str, start: int, stop: int, exts):
    """``(rows per extension, samples recorded, error)``; None for the rows if unsupported."""
    want = stop - start
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        found, error, n = {}, None, want
        for ext in exts:
            rows = np.empty((want, 4), dtype=np.int64)
            got, status, offset = _tar.scan(buf, start, stop, np.frombuffer(ext.encode(), dtype=np.uint8), rows)
            if status == UNSUPPORTED:
                return None, 0, None
            if status != 0:
                error = BioscanError(f"shard {path}: {_tar.STATUS[status]} at byte {offset}{_member_at(buf, offset)}")
            elif got < want:
                error = BioscanError(f"shard {path} ends after sample {start + got}; expected at least {stop} samples")
            found[ext], n = rows, min(n, got)
        return found, n, error
    finally:
        del buf  # release the map's buffer, so that it can close


def read_members(path: str, start: int, stop: int, exts) -> tuple | None:
    """Keys and the payloads of several members of samples ``start <= i < stop``, at once.

    Returns
    -------
    (keys, values, present, error) or None
        As :meth:`ShardScan.gather` plus :attr:`ShardScan.error`; None when the
        shard needs the Python reader.
    """
    found = scan(path, start, stop, exts)
    if found is None:
        return None
    with found:
        return (*found.gather(), found.error)


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


def parse_json(column: pa.Array, fields: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The string ``fields`` of one JSON record per row; ``(row, message)`` for each bad record.

    One Arrow JSON parse per block; when it fails, the records are parsed one by one
    to find the bad ones (their fields are then null).
    """
    schema = pa.schema([(f, pa.string()) for f in fields])
    joined = pc.binary_join_element_wise(column, _NEWLINE, _NOTHING)  # newline-delimited JSON, one buffer
    try:
        table = pa_json.read_json(
            pa.BufferReader(joined.buffers()[2] or pa.py_buffer(b"")),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, joined.nbytes + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore",
                                               newlines_in_values=False))
        if table.num_rows == len(column):
            return table.combine_chunks(), []
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values, bad = {f: [] for f in fields}, []
    for i, data in enumerate(column.to_pylist()):
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            row = [record.get(f) for f in fields]
            wrong = [f for f, v in zip(fields, row) if v is not None and not isinstance(v, str)]
            if wrong:
                raise ValueError(f"{wrong[0]!r} is not a string or null")
        except ValueError as exc:
            bad.append((i, str(exc)))
            row = [None] * len(fields)
        for f, v in zip(fields, row):
            values[f].append(v)
    return pa.table({f: pa.array(v, pa.string()) for f, v in values.items()}), bad


_NEWLINE = pa.scalar(b"\n", pa.large_binary())
_NOTHING = pa.scalar(b"", pa.large_binary())

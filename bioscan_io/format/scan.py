"""Read the members of a range of samples of a local shard as Arrow columns.

The compiled walk (``src_ext/_tar.pyx``) visits each 512-byte header of a
memory-mapped shard and jumps over the payloads not asked for, so reading the
barcodes of a shard that also holds images costs a few header reads per sample
and no Python object per sample. Shards it cannot walk (pax or GNU long-name
headers) are read by :class:`~bioscan_io.format.tar.TarReader`; both give the
same columns, through :func:`take_local` and :func:`read_members`.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pyarrow as pa

from ..gathered import Gathered
from ..schema import BioscanError

try:
    from .. import _tar
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "bioscan_io._tar (the compiled tar reader) is not built: run `pip install -e .` "
        "or `python setup.py build_ext --inplace` in the source tree"
    ) from exc

__all__ = ["ShardError", "ShortShard", "ShardScan", "scan", "take_local", "take_indexed", "read_members",
           "jpg_headers_ok"]

# A plain shared map: the walk faults in only the pages holding headers and the
# wanted payloads. MAP_POPULATE measured no faster on warm page cache, and on a
# cold disk it would read every image too.
_MAP_FLAGS = mmap.MAP_SHARED


class ShardError(BioscanError):
    """A fault in a shard; ``detail`` says what and where, the message names the shard too."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class ShortShard(ShardError):
    """The shard ends (soundly) before the last sample asked for."""


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
    error : ShardError or None
        The fault that stopped the walk, naming shard and byte offset, or a shard
        shorter than asked (:class:`ShortShard`); the ``n`` samples before it are good.
    """

    def __init__(self, mm: mmap.mmap | None, rows: dict, n: int, error: ShardError | None):
        self._mm, self._rows = mm, rows
        self.n, self.error = n, error
        self._buf = np.frombuffer(mm, dtype=np.uint8) if mm is not None else None

    def gather(self, lo: int = 0, hi: int | None = None) -> tuple:
        """``(keys, values, present)`` of recorded samples ``lo <= i < hi``.

        ``keys``: large_string array; ``values[ext]``: large_binary array aligned
        with ``keys`` (empty where absent); ``present[ext]``: bool array.
        """
        hi = self.n if hi is None else hi
        return self.take(slice(lo, hi)) if hi > lo else _empty(self._rows)

    def take(self, index) -> tuple:
        """:meth:`gather` of the recorded samples ``index`` selects (a slice or an array of positions)."""
        if self._buf is None:
            return _empty(self._rows)
        values, present, rows = {}, {}, None
        for ext, all_rows in self._rows.items():
            rows = all_rows[index]
            present[ext] = rows[:, 2] >= 0
            values[ext] = _column(self._buf, rows[:, 2], rows[:, 3], pa.large_binary())
        if rows is None or not len(rows):
            return _empty(self._rows)
        return _column(self._buf, rows[:, 0], rows[:, 1], pa.large_string()), values, present

    def spans(self) -> dict:
        """``ext -> (offsets, sizes)`` of each recorded sample's member payloads (-1, 0 where absent)."""
        out = {}
        for ext, rows in self._rows.items():
            have = rows[:, 2] >= 0
            out[ext] = (np.where(have, rows[:, 2], -1), np.where(have, rows[:, 3] - rows[:, 2], 0))
        return out

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


def _empty(exts) -> tuple:
    values = {ext: pa.array([], pa.large_binary()) for ext in exts}
    return pa.array([], pa.large_string()), values, {ext: np.zeros(0, bool) for ext in exts}


def scan(path: str, start: int, stop: int, exts, name: str | None = None) -> ShardScan | None:
    """Walk the headers of samples ``start <= i < stop`` for the members ``exts``.

    One memory map, one walk per extension (the header pages stay hot). None when
    the shard uses headers the compiled walk does not read (use the Python
    reader). Messages name the shard ``name`` (default: ``path``; a local copy of
    a remote shard is named by its URL).
    """
    name = name or path
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise BioscanError(f"cannot open shard {name}: {exc.strerror or exc}") from None
    with f:  # the map keeps its own handle on the file
        if os.fstat(f.fileno()).st_size == 0:
            rows = {ext: np.empty((0, 4), np.int64) for ext in exts}
            return ShardScan(None, rows, 0, ShardError(f"shard {name} is empty", "empty file"))
        mm = mmap.mmap(f.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
    try:
        found, n, error = _walk(mm, name, start, stop, exts)
    except BaseException:
        mm.close()
        raise
    if found is None:
        mm.close()
        return None
    return ShardScan(mm, {ext: rows[:n] for ext, rows in found.items()}, n, error)


def _walk(mm: mmap.mmap, name: str, start: int, stop: int, exts):
    """``(rows per extension, samples recorded, error)``; None for the rows if unsupported."""
    want = stop - start
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        found, error, n = {}, None, want
        for ext in exts:
            rows = np.empty((want, 4), dtype=np.int64)
            got, status, offset = _tar.scan(buf, start, stop, np.frombuffer(ext.encode(), dtype=np.uint8), rows)
            if status == _tar.Status.UNSUPPORTED:
                return None, 0, None
            if status != _tar.Status.OK:
                last = bytes(buf[rows[got - 1, 0]:rows[got - 1, 1]]).decode(errors="replace") if got else None
                error = _fault(buf, name, status, offset, last, start)
            elif got < want:
                error = ShortShard(f"shard {name} ends after sample {start + got}; expected at least {stop} samples")
            found[ext], n = rows, min(n, got)
        return found, n, error
    finally:
        del buf  # release the map's buffer, so that it can close


def _fault(buf: np.ndarray, name: str, status: int, offset: int, last: str | None, start: int) -> ShardError:
    """The fault at ``offset``, placed by the last good sample (a damaged header's own name may be wrong)."""
    what = _tar.STATUS[status]
    if offset == 0:
        return ShardError(f"{name} is not a tar shard ({what} at byte 0)", f"{what} at byte 0")
    if last is not None:
        place = f"after sample {last}"
    else:  # the walk had not reached a whole sample of the range asked for
        place = f"at or before sample number {start} of the shard" if start else "in the first sample"
    detail = f"{what} at byte {offset}, {place}"
    return ShardError(f"shard {name}: {detail}", detail)


def take_local(path: str, rows, exts, name: str | None = None) -> tuple:
    """The members ``exts`` of the samples at ``rows`` (positions in the shard) of a local shard.

    ``rows`` may come in any order and repeat; one header walk covers them.

    Returns
    -------
    (block, kept, missing, error)
        ``block``: ``{"__key__": keys, ext: payloads...}`` of the rows that have
        every member, in the order asked; ``kept``: their indices into ``rows``;
        ``missing``: ``(key, ext)`` for each row whose sample lacks a member;
        ``error``: the fault (or a shard shorter than asked, :class:`ShortShard`)
        that made the remaining rows unreadable, or None.
    """
    rows = np.asarray(rows, np.int64)
    exts = tuple(exts)
    if not len(rows):
        return _block(*_empty(exts)), np.zeros(0, np.int64), [], None
    lo, hi = int(rows.min()), int(rows.max()) + 1
    found = scan(path, lo, hi, exts, name=name)
    if found is None:  # headers the walk does not read
        keys, values, present, error = _python_read(path, lo, hi, exts, name or path)
        walked, pick = len(keys), lambda index: _take_columns(keys, values, present, index)
    else:
        walked, error, pick = found.n, found.error, found.take
    try:
        at = rows - lo
        readable = np.flatnonzero(at < walked)
        keys, values, present = pick(at[readable])
    finally:
        if found is not None:
            found.close()
    have = np.logical_and.reduce([present[ext] for ext in exts]) if exts else np.ones(len(readable), bool)
    # A fault can cut the last sample walked short: it is lost to the fault, not "missing".
    checked = walked - (error is not None and not isinstance(error, ShortShard))
    missing = []
    if not have.all():
        pids = keys.to_pylist()
        missing = [(pids[i], next(ext for ext in exts if not present[ext][i]))
                   for i in np.flatnonzero(~have) if at[readable[i]] < checked]
        mask = pa.array(have)
        keys, values = keys.filter(mask), {ext: v.filter(mask) for ext, v in values.items()}
    return _block(keys, values), readable[have], missing, error


def _block(keys, values: dict, *_) -> dict:
    return {"__key__": keys, **values}


def _take_columns(keys, values: dict, present: dict, index: np.ndarray) -> tuple:
    take = pa.array(index, pa.int64())
    return keys.take(take), {ext: v.take(take) for ext, v in values.items()}, \
        {ext: p[index] for ext, p in present.items()}


def read_members(path: str, start: int, stop: int, exts, name: str | None = None) -> tuple:
    """Keys, payloads and presence of several members of samples ``start <= i < stop``, at once.

    Returns
    -------
    (keys, values, present, error)
        As :meth:`ShardScan.gather` plus the fault that ended the read early
        (a :class:`ShortShard` when the shard merely holds fewer samples).
    """
    exts = tuple(exts)
    if stop <= start:
        return (*_empty(exts), None)
    found = scan(path, start, stop, exts, name=name)
    if found is None:
        return _python_read(path, start, stop, exts, name or path)
    with found:
        return (*found.gather(), found.error)


def _python_read(path: str, start: int, stop: int, exts: tuple[str, ...], name: str) -> tuple:
    """:func:`read_members` through :class:`~bioscan_io.format.tar.TarReader` (pax headers)."""
    from .tar import TarReader

    reader = TarReader(path, name=name)
    samples = [sample.as_dict() for sample in reader.samples(start, stop, frozenset(exts))]
    error = reader.error()
    if error is None and start + len(samples) < stop:
        error = ShortShard(f"shard {name} ends after sample {start + len(samples)}; expected at least {stop} samples")
    keys = pa.array([s["__key__"] for s in samples], pa.large_string())
    values = {ext: pa.array([s.get(ext) for s in samples], pa.large_binary()) for ext in exts}
    present = {ext: np.array([ext in s for s in samples], bool) for ext in exts}
    return keys, values, present, error


def take_indexed(index, rows, exts, tar: str | None = None, name: str | None = None) -> tuple:
    """:func:`take_local` of a shard that has an index (``format.index``): no header walk.

    The barcodes come from the index's ``dna`` column, as a
    :class:`~bioscan_io.gathered.Gathered` of it (the rows' bytes read in place,
    never copied), and the record fields as one ``"record"`` struct column (in
    place of the ``.json`` bytes), from the memory-mapped index; only the
    images are read from the ``tar`` (a local path), at the offsets the index
    gives, each checked against the tar header before it. A tar of another
    size than its index describes (cut, garbage appended, replaced) makes every
    row asked for unreadable: the whole shard is lost to the tasks that read
    images. A row whose image does not follow
    its own tar header (that header damaged in place, or a stale index) is lost
    alone, with the fault of the first such row.

    ``index``: the index table, or its :class:`~bioscan_io.format.index.IndexColumns`
    (what the loader keeps open, with what it derived from its columns). The
    ids (``__key__``) are a ``Gathered`` too.
    """
    from .index import RECORD_FIELDS, IndexColumns

    columns = index if isinstance(index, IndexColumns) else IndexColumns(index)
    index = columns.table
    rows = np.asarray(rows, np.int64)
    name = name or tar
    # The ids and barcodes stay in the index, their rows' offsets permuted (gathered.py).
    block: dict = {"__key__": Gathered.of(columns.column("processid"), rows)}
    if "dna" in exts:  # the same rows: checked already
        block["dna"] = Gathered.of(columns.column("dna"), rows, checked=True)
    wanted = list(RECORD_FIELDS) * ("json" in exts) + ["processid", "jpg_offset", "jpg_size"] * ("jpg" in exts)
    if not wanted:
        return block, np.arange(len(rows)), [], None
    n = len(rows)
    if n and rows[-1] - rows[0] + 1 == n and (n == 1 or bool((np.diff(rows) == 1).all())):
        part = index.select(wanted).slice(int(rows[0]), n)  # a run in shard order (no shuffle): zero-copy
    else:
        part = index.select(wanted).take(pa.array(rows, pa.int64()))
    if "json" in exts:
        block["record"] = pa.StructArray.from_arrays(
            [part.column(f).combine_chunks() for f in RECORD_FIELDS], names=list(RECORD_FIELDS))
    if "jpg" in exts and len(rows):
        if tar is None or name is None:
            raise ValueError("take_indexed: images are read from the shard, so its path (tar) is needed")
        try:
            mm = _map(tar, name)
            try:
                _check_size(mm, index, name)
                block["jpg"], good, error = _images_at(mm, part, name)
            finally:
                mm.close()
        except ShardError as error:
            return {"__key__": pa.array([], pa.string())}, np.zeros(0, np.int64), [], error
        if error is not None:  # rows whose image is not where the index says: lost to that fault, one by one
            mask = pa.array(good)
            block = {k: v if k == "jpg" else v.filter(mask) for k, v in block.items()}
            return block, np.flatnonzero(good), [], error
    return block, np.arange(len(rows)), [], None


def _map(path: str, name: str | None) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        raise BioscanError(f"cannot open shard {name or path}: {getattr(exc, 'strerror', None) or exc}") from None


def _check_size(mm: mmap.mmap, index: pa.Table, name: str) -> None:
    expected = (index.schema.metadata or {}).get(b"bioscan_io.shard_bytes", b"").decode()
    if str(len(mm)) != expected:
        detail = f"{len(mm)} bytes, its index describes {expected or 'another size'}"
        raise ShardError(f"shard {name} has changed since it was indexed: {detail} "
                         "(bioscan-io verify says how)", detail)


def _images_at(mm: mmap.mmap, part: pa.Table, name: str) -> tuple[pa.Array, np.ndarray, ShardError | None]:
    """The ``.jpg`` payloads of the rows of ``part`` that follow their own tar header.

    Returns the payloads of those rows, which rows they are (a bool mask over
    ``part``), and the fault of the first other row (None when there is none): a
    damaged header loses its own sample only, as :func:`jpg_headers_ok` decides
    for ``verify`` too. Offsets outside the shard make the whole index unusable.
    """
    starts = part.column("jpg_offset").to_numpy()
    ends = starts + part.column("jpg_size").to_numpy()
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        if len(starts) and (starts.min() < 512 or ends.max() > len(buf)):
            raise ShardError(f"shard index of {name} gives image offsets outside the shard; "
                             "bioscan-io index FOLDER writes it again", "image offsets outside the shard")
        keys = part.column("processid").to_pylist()
        good = jpg_headers_ok(mm, keys, starts)
        error = None
        if not good.all():
            bad = int(np.flatnonzero(~good)[0])
            at = int(starts[bad]) - 512
            error = ShardError(f"shard {name}: no member {keys[bad]}.jpg at byte {at}, where its index puts it "
                               "(a damaged tar header, or a stale index; bioscan-io verify FOLDER says which)",
                               f"no member {keys[bad]}.jpg at byte {at}")
        return _column(buf, starts[good], ends[good], pa.large_binary()), good, error
    finally:
        del buf  # release the map's buffer, so that it can close


def jpg_headers_ok(mm, keys: list[str], starts) -> np.ndarray:
    """Whether the ``.jpg`` payload of each key at its offset follows its own tar header.

    The header's 100-byte name field, 512 bytes before the payload, must name
    ``{key}.jpg``: what a loader reading images through the index checks of
    each sample, and what ``verify`` asks of each sample of an indexed shard
    (``verify_served``), so that both lose the same ones.
    """
    good = np.zeros(len(keys), bool)
    for i, (key, at) in enumerate(zip(keys, np.asarray(starts).tolist())):
        want = f"{key}.jpg".encode()
        head = mm[at - 512:at - 412] + b"\0"  # the 100-byte name field, NUL-padded
        good[i] = at >= 512 and head[:len(want) + 1] == want + b"\0"
    return good

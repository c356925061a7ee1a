"""Read and validate BIOSCAN-5M metadata (CSV or JSON-LD) with pyarrow.

Values are typed as the official loader types them (SPEC section 1): strings,
categorical strings (kept as plain strings here; label indices come from
:func:`label_values`), floats, ``uint8`` and a nullable ``int64``.

Large files are read in record batches and, when a cache folder is given,
spilled to an Arrow IPC file that is then memory-mapped, so a 5M-row metadata
file costs page cache rather than process memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .atomic import replacing, sweep
from .schema import (
    COLUMN_KINDS,
    COLUMNS,
    METADATA_CSV,
    METADATA_JSONLD,
    NA_VALUES,
    MISSING_LABEL,
    RANKS,
    SPLITS,
    BioscanError,
)

__all__ = ["SCHEMA", "read_metadata", "find_metadata", "select_rows", "take_rows", "column_numpy", "fixed_width", "SortedKeys", "RowLookup",
           "file_sha256", "cache_path", "open_cached", "clear_cache", "label_values", "save_label_values",
           "open_label_values", "label_indices"]

_ARROW_TYPES = {
    "str": pa.string(),
    "category": pa.string(),
    "float": pa.float64(),
    "uint8": pa.uint8(),
    "Int64": pa.int64(),
}

#: The Arrow schema of the metadata, columns in file order.
SCHEMA = pa.schema([(c, _ARROW_TYPES[COLUMN_KINDS[c]]) for c in COLUMNS])

_BLOCK_SIZE = 16 << 20
_NA_SET = frozenset(NA_VALUES)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BioscanError(f"metadata file not found: {path}")
    if path.is_dir():
        raise BioscanError(f"metadata path is a folder, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise BioscanError(f"metadata file is not readable (permission denied): {path}")


def _csv_header(path: Path) -> list[str]:
    """The column names: the first line only, so a bad byte further on is found by its record."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)  # a header is a few hundred bytes; a binary file may have no newline
    except OSError as exc:
        raise BioscanError(f"unreadable metadata CSV {path}: {exc.strerror or exc}") from None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BioscanError(
            f"unreadable metadata CSV {path}: not UTF-8 text (its header line has byte 0x{line[exc.start]:02x})"
        ) from None
    try:
        header = next(csv.reader([text]), None)
    except csv.Error as exc:
        raise BioscanError(f"unreadable metadata CSV {path}: {exc}") from None
    if not header:
        raise BioscanError(f"unreadable metadata CSV {path}: the file is empty")
    return header


def _check_columns(names, path: Path) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise BioscanError(f"metadata {path} is missing column(s): {', '.join(missing)}")


def _csv_batches(path: Path):
    """Typed record batches of a metadata CSV, in file order."""
    header = _csv_header(path)
    _check_columns(header, path)
    convert = pacsv.ConvertOptions(
        column_types=SCHEMA,
        include_columns=list(COLUMNS),
        null_values=list(NA_VALUES),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE),
            convert_options=convert,
        )
        for batch in reader:
            yield batch
    except pa.ArrowInvalid as exc:
        raise BioscanError(f"unreadable metadata CSV {path}: {_explain(exc, header, path)}") from None


def _explain(exc: Exception, header: list[str], path: Path) -> str:
    """pyarrow's message, with the column named and the record found for a bad value."""
    text = _first_line(exc)
    m = re.search(r"In CSV column #(\d+): CSV conversion error to \w+: invalid UTF8 data", text)
    if m and int(m.group(1)) < len(header):
        column = header[int(m.group(1))]
        # Read with surrogateescape, a byte that is not UTF-8 is one lone surrogate.
        found = _first_record(path, column, "surrogateescape", lambda v: _shown(v) != v)
        if found is None:
            return f"column {column!r} holds bytes that are not UTF-8 text"
        number, row = found
        return (f"record {number} ({_shown(row.get('processid') or '')[:40]}): column {column!r} holds "
                f"'{_clipped(_shown(row[column]))}', which is not UTF-8 text")
    m = re.search(r"In CSV column #(\d+): CSV conversion error to (\w+): invalid value '(.*)'", text)
    if not m or int(m.group(1)) >= len(header):
        return text
    column, kind, value = header[int(m.group(1))], m.group(2), m.group(3)
    # pyarrow shows a byte that is not UTF-8 as U+FFFD, as errors="replace" decodes it.
    found = _first_record(path, column, "surrogateescape", lambda v: _replaced(v) == value)
    if found is None:
        return f"column {column!r} holds {value!r}, which is not a valid {kind}"
    number, row = found
    return (f"record {number} ({_shown(row.get('processid') or '')[:40]}): column {column!r} holds "
            f"'{_clipped(_shown(row[column]))}', which is not a valid {kind}")


def _first_record(path: Path, column: str, errors: str, match) -> tuple[int, dict] | None:
    """The first record (number from 1, row) whose ``column`` value satisfies ``match``, or None."""
    try:
        with open(path, newline="", encoding="utf-8", errors=errors) as f:
            for number, row in enumerate(csv.DictReader(f), start=1):
                if row.get(column) is not None and match(row[column]):
                    return number, row
    except (csv.Error, OSError):
        pass  # the column alone still names the problem
    return None


def _clipped(text: str, around: int = 24) -> str:
    """``text`` cut to ``around`` characters either side of its first ``\\x`` escape (a barcode is long)."""
    at = max(text.find("\\x"), 0)
    start, end = max(at - around, 0), at + 4 + around
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")


def _replaced(value: str) -> str:
    """A value read with surrogateescape as errors="replace" would have read it."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _shown(value: str) -> str:
    """A value read with surrogateescape, its bytes that are not UTF-8 written as ``\\xNN``."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _jsonld_table(path: Path) -> pa.Table:
    """The records of a JSON-LD metadata file (``@graph`` list of objects)."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BioscanError(f"unreadable metadata JSON-LD {path}: {_first_line(exc)}") from None
    records = doc.get("@graph") if isinstance(doc, dict) else doc
    if not isinstance(records, list):
        raise BioscanError(f"unreadable metadata JSON-LD {path}: no '@graph' list of records")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise BioscanError(f"unreadable metadata JSON-LD {path}: record {bad + 1} is not an object")
    if records:
        _check_columns(set().union(*(r.keys() for r in records[:1000])), path)
    else:
        raise BioscanError(f"metadata JSON-LD {path} holds no records")
    columns = {}
    for name in COLUMNS:
        # Missing is null whichever way the file spells it, as in the CSV.
        values = [None if isinstance(v := r.get(name), str) and v in _NA_SET else v for r in records]
        try:
            columns[name] = pa.array(values, type=SCHEMA.field(name).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise BioscanError(
                f"metadata JSON-LD {path}: column {name!r} has a value of the wrong type ({_first_line(exc)})"
            ) from None
    return pa.table(columns, schema=SCHEMA)


def _validate(table: pa.Table, path: Path) -> None:
    """Refuse a table with missing or duplicate processids or unknown splits."""
    pid = table.column("processid")
    if pid.null_count:
        row = int(np.flatnonzero(pc.is_null(pid).to_numpy(zero_copy_only=False))[0])
        raise BioscanError(f"metadata {path}: record {row + 1} has no processid")
    dup = _duplicates(pid)
    if len(dup):
        names = ", ".join(dup[:5])
        more = f" and {len(dup) - 5} more" if len(dup) > 5 else ""
        raise BioscanError(f"metadata {path}: duplicate processid {names}{more}")
    split = table.column("split")
    unknown = pc.invert(pc.is_in(split, value_set=pa.array(SPLITS)))
    unknown = pc.fill_null(unknown, True)
    if pc.any(unknown).as_py():
        row = int(np.flatnonzero(unknown.to_numpy(zero_copy_only=False))[0])
        value = split[row].as_py()
        raise BioscanError(
            f"metadata {path}: record {row + 1} ({pid[row].as_py()}) has unknown split {value!r}; "
            f"valid splits are {', '.join(SPLITS)}"
        )


def _duplicates(pid: pa.ChunkedArray) -> list[str]:
    """The processids found more than once, in the order of their first record.

    By sorting fixed-width bytes (~16 bytes a record): a hash table of 5.15M
    Arrow strings (``value_counts``) would cost ~600 MB more at its peak.
    """
    keys = fixed_width(pid)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    repeat = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # not the first of its run of equal keys
    if not len(repeat):
        return []
    first = order[repeat - 1]  # stable sort: the previous equal key comes first in the file, too
    found = {}
    for row in np.sort(first).tolist():
        found.setdefault(pid[row].as_py(), None)
    return list(found)


def read_metadata(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> pa.Table:
    """Read a BIOSCAN-5M metadata file into a typed, validated Arrow table.

    Parameters
    ----------
    path : str or path-like
        The metadata CSV (``.csv``) or its JSON-LD twin (``.jsonld`` / ``.json``).
    cache_dir : str or path-like, optional
        If given, the records are streamed into an Arrow IPC file in this folder
        (named after the file's path, size and mtime, and reused by later calls) and
        the table returned is memory-mapped from it, keeping process memory bounded
        for 5M rows; :func:`open_cached` reopens it, e.g. in worker processes.

    Returns
    -------
    pyarrow.Table
        The 23 columns of :data:`SCHEMA`, in file order, one row per record.

    Raises
    ------
    BioscanError
        If the file is missing or unreadable, lacks a column, has a value of the
        wrong type, a duplicate or missing processid, or an unknown split.
    """
    path = Path(path)
    _check_readable(path)
    if cache_dir is None:
        table = pa.Table.from_batches(list(_batches(path)), schema=SCHEMA)
    else:
        table = open_cached(_write_cache(path, Path(cache_dir)))
    _validate(table, path)
    return table


def _batches(path: Path):
    if path.suffix.lower() in (".jsonld", ".json"):
        return _jsonld_table(path).to_batches()
    return _csv_batches(path)


def cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`read_metadata` keeps the Arrow IPC copy of a metadata file."""
    path = Path(path)
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"metadata-{tag}.arrow"


def _write_cache(path: Path, cache_dir: Path) -> Path:
    cache = cache_path(path, cache_dir)
    if not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with replacing(cache) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            for batch in _batches(path):
                writer.write_batch(batch)
    return cache


def clear_cache(cache_dir: str | os.PathLike, keep: str | os.PathLike | None = None) -> None:
    """Remove the metadata caches in ``cache_dir`` but ``keep``, the temporaries of killed runs,
    and the folder itself once empty.

    A cache is named after its metadata file's path, size and mtime, so one of
    another name is of a file since changed (or another file): never read again.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return
    sweep(cache_dir)
    for path in cache_dir.glob("metadata-*.arrow"):
        if keep is None or path.name != Path(keep).name:
            path.unlink(missing_ok=True)
    try:
        cache_dir.rmdir()
    except OSError:
        pass  # not empty: the cache kept, or a file of someone else's


def open_cached(cache: str | os.PathLike) -> pa.Table:
    """Memory-map an Arrow IPC file written by :func:`read_metadata`."""
    return pa.ipc.open_file(pa.memory_map(str(cache), "r")).read_all()


def label_values(table: pa.Table) -> dict[str, list[str]]:
    """Per rank, the sorted distinct non-missing values of the whole table.

    A record's label index at a rank is the position of its value in this list
    (-1 when missing): the rule of the official ``bioscan-dataset`` loader, whose
    pandas categorical codes sort values in Python string order.
    """
    return {rank: sorted(pc.unique(table.column(rank)).drop_null().to_pylist()) for rank in RANKS}


def save_label_values(labels: dict[str, list[str]], path: str | os.PathLike) -> None:
    """Write :func:`label_values` as an Arrow IPC file, for worker processes to memory-map.

    At full size a rank such as ``dna_bin`` has ~800,000 values: as Python strings
    handed to each worker they would cost ~100 MB of every writer's memory.
    """
    table = pa.table({rank: pa.array([values], pa.list_(pa.string())) for rank, values in labels.items()})
    with replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def open_label_values(path: str | os.PathLike) -> dict[str, pa.Array]:
    """The label values written by :func:`save_label_values`, per rank, memory-mapped."""
    table = open_cached(path)
    return {rank: table.column(rank).chunk(0).flatten() for rank in table.column_names}


def label_indices(values: list[str], column) -> np.ndarray:
    """Label indices (int64, -1 for missing) of a column against a sorted value list."""
    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = pa.array(column, type=pa.string())
    idx = pc.index_in(column, value_set=pa.array(values, type=pa.string()))
    return pc.fill_null(idx, MISSING_LABEL).to_numpy(zero_copy_only=False).astype(np.int64)


def find_metadata(root: Path) -> Path:
    """The metadata file under a root: the CSV, else its JSON-LD twin."""
    for rel in (METADATA_CSV, METADATA_JSONLD):
        if (root / rel).is_file():
            return root / rel
    raise BioscanError(f"no metadata under dataset root {root}: expected {root / METADATA_CSV}")


def select_rows(table: pa.Table, splits: tuple[str, ...]) -> np.ndarray:
    """Row numbers of the records of ``splits``, in file order."""
    mask = pc.is_in(table.column("split"), value_set=pa.array(splits))
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False)).astype(np.int64)


def take_rows(table: pa.Table, rows, columns=None) -> pa.Table:
    """The rows ``rows`` of ``table`` (in that order), taken record batch by record batch.

    ``Table.take`` first concatenates each whole column into one array; the
    ``dna_barcode`` column of BIOSCAN-5M holds ~3.3 GB, past the 2 GiB that an
    Arrow ``string`` array's 32-bit offsets can address. Here only the batches
    that hold a wanted row are read (so a memory-mapped table costs the pages of
    those rows), and string columns come back as ``large_string``.

    Parameters
    ----------
    table : pyarrow.Table
        The metadata, e.g. memory-mapped by :func:`open_cached`.
    rows : array-like of int
        Row numbers, in any order (repeats allowed).
    columns : list of str, optional
        The columns wanted (default: all).
    """
    if columns is not None:
        table = table.select(list(columns))
    schema = pa.schema([pa.field(f.name, _large(f.type)) for f in table.schema])
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= table.num_rows):
        raise IndexError(f"row numbers out of range 0..{table.num_rows - 1}")
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    batches = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    cuts = np.searchsorted(ordered, starts)  # the rows of batch b: ordered[cuts[b]:cuts[b + 1]]
    parts = [batches[b].take(pa.array(ordered[cuts[b]:cuts[b + 1]] - starts[b])).cast(schema)
             for b in range(len(batches)) if cuts[b + 1] > cuts[b]]
    taken = pa.Table.from_batches(parts, schema=schema)
    if np.all(order[1:] > order[:-1]):
        return taken  # asked in file order: no reordering
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return taken.take(pa.array(back))  # 64-bit offsets: no limit on the rows' total size


def _large(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_string(kind):
        return pa.large_string()
    if pa.types.is_binary(kind):
        return pa.large_binary()
    return kind


def column_numpy(column: pa.ChunkedArray | pa.Array, dtype=None) -> np.ndarray:
    """A fixed-width column (lengths, numbers) as one numpy array, chunk by chunk."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [c.to_numpy(zero_copy_only=False) for c in chunks]
    out = np.concatenate(parts) if parts else np.empty(0)
    return out.astype(dtype, copy=False) if dtype is not None else out


class SortedKeys:
    """Millions of strings as one sorted numpy array of fixed-width bytes, found by binary search.

    A Python set or dict would cost ~60 bytes more a string, and an Arrow hash
    table (``pc.index_in``) is built again on every call: ~50 MB and a pass over
    the values for each shard, for the ~800,000 BINs of the full release.

    Parameters
    ----------
    strings : pyarrow string array or sequence of str
        The keys; :meth:`positions` answers with their indices in this order.
    """

    def __init__(self, strings):
        keys = fixed_width(strings)
        order = np.argsort(keys, kind="stable")
        self.keys, self.order = keys[order], order

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, strings) -> np.ndarray:
        """The index of each string among the keys, -1 where absent (null, or not a key).

        ``strings``: a sequence of str or an Arrow string array.
        """
        if isinstance(strings, (pa.Array, pa.ChunkedArray)):
            wanted = fixed_width(strings)
            lengths = column_numpy(pc.fill_null(pc.binary_length(strings), 0), np.int64)
            present = column_numpy(pc.is_valid(strings), bool)
        else:
            encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
            wanted = np.array(encoded, dtype=object)
            lengths = np.array([len(e) for e in encoded], np.int64)
            present = np.ones(len(encoded), bool)
        if not len(self.keys) or not len(wanted):
            return np.full(len(wanted), -1, np.int64)
        present &= lengths <= self.keys.itemsize  # numpy would cut a longer string to fit, and maybe find it
        wanted = np.where(present, wanted, b"").astype(self.keys.dtype)
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return np.where(present & (self.keys[at] == wanted), self.order[at], -1)


class RowLookup:
    """Processid -> row number for millions of records, without a Python object per record.

    Parameters
    ----------
    table : pyarrow.Table
        The metadata.
    rows : numpy.ndarray
        The rows to look up among (e.g. :func:`select_rows` of a split).
    """

    def __init__(self, table: pa.Table, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.keys = SortedKeys(take_rows(table, self.rows, ["processid"]).column(0))

    def __len__(self) -> int:
        return len(self.rows)

    def positions(self, keys) -> np.ndarray:
        """The index of each key among :attr:`rows`, -1 where absent."""
        return self.keys.positions(keys)

    def find(self, keys) -> np.ndarray:
        """The row number of each key, -1 where absent."""
        at = self.positions(keys)
        return np.where(at >= 0, self.rows[at], -1) if len(self.rows) else at


def fixed_width(column) -> np.ndarray:
    """Strings as one numpy ``S`` array (bytes padded with NULs), built from the Arrow buffers.

    Millions of processids or image paths held this way cost their bytes, not a
    Python object each (~60 bytes more a string). ``column``: an Arrow string
    array (chunked or not) or a sequence of str. numpy drops trailing NUL bytes,
    so strings that differ only by them compare equal (no processid, label or
    path has one).
    """
    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = pa.array(column, pa.large_string())
    chunks = [c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)]
    width = max([int(pc.max(pc.binary_length(c)).as_py() or 0) for c in chunks] + [1])
    out = np.zeros((sum(len(c) for c in chunks), width), np.uint8)
    at = 0
    for chunk in chunks:
        chunk = chunk.cast(pa.large_binary())
        for start in range(0, len(chunk), _SLICE):  # the scatter's indices cost 16 bytes a byte: bounded
            part = chunk.slice(start, _SLICE)
            offsets = np.frombuffer(part.buffers()[1], np.int64)[part.offset:part.offset + len(part) + 1]
            data = np.frombuffer(part.buffers()[2], np.uint8) if part.buffers()[2] is not None else np.empty(0, np.uint8)
            lengths = np.diff(offsets)
            row = np.repeat(np.arange(len(part)), lengths)
            col = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths)
            out[at + row, col] = data[offsets[0]:offsets[-1]]
            at += len(part)
    return out.view(f"S{width}").ravel()


_SLICE = 1 << 15

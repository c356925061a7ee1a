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
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .atomic import replacing, sweep
from .columns import fixed_width
from .schema import (
    COLUMN_KINDS,
    COLUMNS,
    FLOAT_COLUMNS,
    METADATA_CSV,
    METADATA_JSONLD,
    NA_VALUES,
    MISSING_LABEL,
    RANKS,
    SPLITS,
    BioscanError,
)

__all__ = ["SCHEMA", "read_metadata", "find_metadata", "select_rows", "file_sha256", "metadata_sha256",
           "cache_path", "open_cached", "clear_cache", "label_values", "save_label_values", "open_label_values",
           "label_indices"]

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
_SHA256_KEY = "bioscan_io.metadata_sha256"  # in the table's schema metadata
_UNUSABLE_KEY = r"[./\\\x00-\x1f\x7f]"
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
    first: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name in first:  # the reader would keep one of the two and drop the other without a word
            raise BioscanError(f"metadata {path} has column {name!r} twice (columns {first[name]} and {number}); "
                               "keep one")
        first[name] = number
    return header


def _check_columns(names, path: Path) -> None:
    """Refuse a file lacking an official column, or holding one that is not (it would be dropped)."""
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise BioscanError(f"metadata {path} is missing column(s): {', '.join(missing)}")
    extra = [repr(c) for c in names if c not in COLUMN_KINDS and not c.startswith("@")]  # "@id": JSON-LD's own
    if extra:
        raise BioscanError(
            f"metadata {path} has column(s) that BIOSCAN-5M's metadata does not: {', '.join(extra)}; "
            f"the shards hold exactly its {len(COLUMNS)} columns, so remove them rather than have them dropped"
        )


class _Hashing(io.RawIOBase):
    """A binary file read through, its bytes fed to ``digest`` as they are read."""

    def __init__(self, f, digest):
        self._f, self._digest = f, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        self._digest.update(memoryview(buffer)[:n])
        return n


def _csv_batches(path: Path, digest):
    """Typed record batches of a metadata CSV, in file order; ``digest`` sees every byte they come from."""
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
        with open(path, "rb") as f:
            reader = pacsv.open_csv(
                _Hashing(f, digest),
                read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE),
                convert_options=convert,
            )
            yield from reader
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


def _jsonld_table(path: Path, digest) -> pa.Table:
    """The records of a JSON-LD metadata file (``@graph`` list of objects)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        digest.update(data)
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BioscanError(f"unreadable metadata JSON-LD {path}: {_first_line(exc)}") from None
    records = doc.get("@graph") if isinstance(doc, dict) else doc
    if not isinstance(records, list):
        raise BioscanError(f"unreadable metadata JSON-LD {path}: no '@graph' list of records")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise BioscanError(f"unreadable metadata JSON-LD {path}: record {bad + 1} is not an object")
    if records:
        _check_columns(sorted(set().union(*(r.keys() for r in records))), path)
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


def _first_true(mask) -> int:
    """The row of the first true value of a boolean column (nulls count as false)."""
    return int(np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0])


def _validate(table: pa.Table, path: Path) -> None:
    """Refuse a table with missing, duplicate or unusable processids, unknown splits or non-finite numbers."""
    pid = table.column("processid")
    if pid.null_count:
        raise BioscanError(f"metadata {path}: record {_first_true(pc.is_null(pid)) + 1} has no processid")
    # A sample's key is its processid, and a WebDataset key ends at the first "." of a
    # member's name ("A.1.jpg" is sample "A"); a "/" would make a folder of the tar.
    unusable = pc.match_substring_regex(pid, _UNUSABLE_KEY)
    if pc.any(unusable).as_py():
        row = _first_true(unusable)
        raise BioscanError(
            f"metadata {path}: record {row + 1} has processid {pid[row].as_py()!r}, which cannot be a sample key: "
            "a WebDataset key ends at its first '.' (and '/', '\\' or a control character would change the "
            "member's path)"
        )
    dup = _duplicates(pid)
    if len(dup):
        names = ", ".join(dup[:5])
        more = f" and {len(dup) - 5} more" if len(dup) > 5 else ""
        raise BioscanError(f"metadata {path}: duplicate processid {names}{more}")
    split = table.column("split")
    unknown = pc.fill_null(pc.invert(pc.is_in(split, value_set=pa.array(SPLITS))), True)
    if pc.any(unknown).as_py():
        row = _first_true(unknown)
        value = split[row].as_py()
        raise BioscanError(
            f"metadata {path}: record {row + 1} ({pid[row].as_py()}) has unknown split {value!r}; "
            f"valid splits are {', '.join(SPLITS)}"
        )
    for name in FLOAT_COLUMNS:  # JSON has no inf or NaN: the sample's .json member would not parse
        column = table.column(name)
        odd = pc.invert(pc.is_finite(column))
        if pc.any(odd).as_py():
            row = _first_true(odd)
            raise BioscanError(
                f"metadata {path}: record {row + 1} ({pid[row].as_py()}): column {name!r} holds "
                f"{column[row].as_py()}, which JSON cannot hold; a missing value is an empty cell"
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
    found: dict[str, None] = {}  # an ordered set
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
        (named after the file's sha256, and reused by later calls while the file
        holds the same bytes) and the table returned is memory-mapped from it,
        keeping process memory bounded for 5M rows; :func:`open_cached` reopens it,
        e.g. in worker processes.

    Returns
    -------
    pyarrow.Table
        The 23 columns of :data:`SCHEMA`, in file order, one row per record; the
        sha256 of the bytes they were read from is :func:`metadata_sha256`'s.

    Raises
    ------
    BioscanError
        If the file is missing or unreadable, lacks a column or has one twice or
        one more, has a value of the wrong type, a duplicate, missing or unusable
        processid, an unknown split or a number that is not finite, or changed while
        it was read.
    """
    path = Path(path)
    _check_readable(path)
    if cache_dir is None:
        digest = hashlib.sha256()
        table = pa.Table.from_batches(list(_batches(path, digest)), schema=SCHEMA)
        table = table.replace_schema_metadata({_SHA256_KEY: digest.hexdigest()})
    else:
        table = open_cached(_write_cache(path, Path(cache_dir)))
    _validate(table, path)
    return table


def metadata_sha256(table: pa.Table) -> str:
    """The sha256 of the metadata file that :func:`read_metadata` read ``table`` from."""
    return table.schema.metadata[_SHA256_KEY.encode()].decode()


def _batches(path: Path, digest):
    if path.suffix.lower() in (".jsonld", ".json"):
        return _jsonld_table(path, digest).to_batches()
    return _csv_batches(path, digest)


def cache_path(sha256: str, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`read_metadata` keeps the Arrow IPC copy of the metadata file of this sha256."""
    return Path(cache_dir) / f"metadata-{sha256}.arrow"


def _write_cache(path: Path, cache_dir: Path) -> Path:
    """The cache of ``path``'s bytes, written unless there; the caches of other bytes removed.

    Keyed by content, never by name, size or mtime: a file edited in place with its
    mtime restored (``rsync -t``, a re-download) gets a new cache. The bytes parsed
    are hashed as they are read, so a file that changes during the read is refused
    rather than cached under the sha256 of other bytes.
    """
    sha = file_sha256(path)
    cache = cache_path(sha, cache_dir)
    clear_cache(cache_dir, keep=cache)
    if not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        schema = SCHEMA.with_metadata({_SHA256_KEY: sha})
        with replacing(cache) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for batch in _batches(path, digest):
                    writer.write_batch(batch)
            if digest.hexdigest() != sha:
                raise BioscanError(f"metadata {path} changed while it was being read; run again once it is complete")
    return cache


def clear_cache(cache_dir: str | os.PathLike, keep: str | os.PathLike | None = None) -> None:
    """Remove the metadata caches in ``cache_dir`` but ``keep``, the temporaries of killed runs,
    and the folder itself once empty.

    A cache is named after its metadata file's sha256, so one of another name is
    of a file since changed (or another file): never read again.
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

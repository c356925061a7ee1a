"""``bioscan-io export``: a split's metadata and barcodes as one Parquet file, for other tools.

Polars, DuckDB, pandas and Hugging Face ``datasets`` read Parquet directly; the
shards hold the same records as ``.json`` members beside the images. The file
has one row per sample, in the split's shard order (the manifest's shards, each
in tar order), and these columns:

===================  =========================================================
column               holds
===================  =========================================================
processid ... chunk  every metadata column, typed as ``metadata.read_metadata``
                     types it (strings, float64, uint8, int64; null where
                     missing); ``processid`` is the sample key and
                     ``dna_barcode`` the full barcode
{rank}_index         the label index at each rank of ``schema.RANKS``, per
                     ``labels.json`` (int64; -1 for a missing or unknown name)
===================  =========================================================

Only the ``.json`` members are read, with the compiled header walk that jumps
over the images (``format.scan``), and parsed a block at a time by Arrow's JSON
reader; the rows are written as row groups of at most :data:`ROW_GROUP_ROWS`, so
memory stays bounded for ``pretrain``'s 4.7 M samples. The file is written
under a temporary name and renamed once complete.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from tqdm import tqdm

from .atomic import replacing
from .format import MANIFEST, labels_path, listed_shards, read_labels, read_members, scan
from .metadata import SCHEMA, label_indices
from .schema import COLUMNS, RANKS, BioscanError
from .wording import os_error_text

__all__ = ["EXPORT_FORMATS", "ROW_GROUP_ROWS", "LABEL_COLUMNS", "EXPORT_SCHEMA", "export_parquet"]

#: The formats ``bioscan-io export --format`` writes.
EXPORT_FORMATS = ("parquet",)
#: Most rows per Parquet row group, and per block of ``.json`` records parsed at once.
ROW_GROUP_ROWS = 65_536
#: The label index columns, one per rank.
LABEL_COLUMNS = tuple(f"{rank}_index" for rank in RANKS)
#: The columns of an exported file: the metadata's, then the label indices.
EXPORT_SCHEMA = pa.schema([*SCHEMA, *(pa.field(name, pa.int64(), nullable=False) for name in LABEL_COLUMNS)])
#: zstd: barcodes and repeated taxon names shrink well, and every Parquet reader named above reads it.
_COMPRESSION = "zstd"

#: Bytes of newline-delimited records per parallel JSON parse block (a record is about 1.2 KB).
_PARSE_BLOCK = 1 << 20
#: Parse blocks a shard's records must fill before they are parsed on several threads.
_THREADED_BLOCKS = 4
_NEWLINE = pa.scalar(b"\n", pa.large_binary())
_NOTHING = pa.scalar(b"", pa.large_binary())


def export_parquet(split_dir, out, *, force: bool = False, progress: bool = False,
                   row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Write a split's metadata, barcodes and label indices (no images) as one Parquet file.

    Parameters
    ----------
    split_dir : str or path-like
        The split folder (holding ``manifest.json`` and the shards it lists), or
        its manifest; ``labels.json`` must lie beside it, as ``bioscan-shard``
        writes it.
    out : str or path-like
        The Parquet file to write. Its folder must exist.
    force : bool
        Replace ``out`` if it exists (otherwise an existing file is refused).
    progress : bool
        Show a progress bar (samples exported) on stderr.
    row_group_rows : int
        Most rows per Parquet row group (and per block of records held in memory).

    Returns
    -------
    pathlib.Path
        ``out``, written whole: one row per sample in the split's shard order, the
        columns of :data:`EXPORT_SCHEMA`. A failure leaves no file (and an
        existing ``out`` as it was).

    Raises
    ------
    BioscanError
        One line naming the file or shard: the split folder is missing, not a
        folder, without a (well-formed) manifest or ``labels.json``; a shard is
        missing, corrupt, shorter than its manifest entry, or holds a sample
        without a ``.json`` member, with a record that is not JSON or has a value
        of the wrong type, or whose ``processid`` is not its key; ``out`` exists
        (without ``force``), is a folder, or cannot be written.
    """
    if not isinstance(row_group_rows, int) or isinstance(row_group_rows, bool) or row_group_rows < 1:
        raise BioscanError(f"row_group_rows must be a whole number of at least 1, got {row_group_rows!r}")
    folder = _split_folder(Path(split_dir))
    manifest, entries = listed_shards(folder)
    labels = _labels(folder)
    out = Path(out)
    _check_out(out, force)
    schema = EXPORT_SCHEMA.with_metadata({"bioscan_io.export": json.dumps(_provenance(folder, manifest))})
    values = {rank: pa.array(labels[rank], pa.string()) for rank in RANKS}  # converted once, not per group
    try:
        with replacing(out, sync=True) as tmp, pq.ParquetWriter(str(tmp), schema, compression=_COMPRESSION) as writer, \
                tqdm(total=sum(e["count"] for e in entries), unit="sample", unit_scale=True,
                     desc=f"exporting {folder.name}", disable=not progress, file=sys.stderr) as bar:
            for group in _regroup(_records(folder, entries, row_group_rows, bar), row_group_rows):
                writer.write_table(_with_labels(group, values, schema), row_group_size=row_group_rows)
    except OSError as exc:
        # Reading the shards raises BioscanError; what is left is writing out (or its rename).
        raise BioscanError(f"cannot write {out}: {_cause(exc)}") from None
    return out


def _records(folder: Path, entries: list[dict], rows: int, bar):
    """The typed records of every shard, in shard order, in blocks of at most ``rows``."""
    for entry in entries:
        for keys, records in _shard_blocks(folder, entry, rows):
            yield _parse(records, keys, folder / entry["name"])
            bar.update(len(keys))


def _regroup(tables, rows: int):
    """Tables of exactly ``rows`` rows (the last may be shorter) from tables of any size.

    Shards of a few samples make no tiny row groups, and the label indices are
    looked up once per group rather than once per shard.
    """
    pending, n = [], 0
    for table in tables:
        pending.append(table)
        n += len(table)
        while n >= rows:
            whole = pa.concat_tables(pending)  # chunks side by side: no copy
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            pending, n = [rest], len(rest)
    if n:
        yield pa.concat_tables(pending)


def _with_labels(table: pa.Table, values: dict, schema: pa.Schema) -> pa.Table:
    """The records with their label index at every rank (``metadata.label_indices``: -1 missing or unknown)."""
    columns = [table.column(name) for name in COLUMNS]
    columns += [pa.array(label_indices(values[rank], table.column(rank)), pa.int64()) for rank in RANKS]
    return pa.Table.from_arrays(columns, schema=schema)


def _split_folder(path: Path) -> Path:
    """The split folder named (its manifest stands for it), or one line saying what ``path`` is instead."""
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if not path.exists():
        raise BioscanError(f"split folder not found: {path}")
    if not path.is_dir():
        what = "a shard (a .tar file)" if path.suffix == ".tar" else "a file" if path.is_file() else "not a folder"
        hint = f", such as {path.parent}" if (path.parent / MANIFEST).is_file() else ""
        raise BioscanError(f"{path} is {what}: export reads a split folder, holding manifest.json "
                           f"and the shards it lists{hint}")
    return path


def _labels(folder: Path) -> dict:
    """The label values per rank of ``labels.json`` beside the split folder."""
    where = labels_path(os.path.abspath(folder))  # beside the folder, also when it is given as "." or ".."
    if not where.is_file():
        raise BioscanError(f"export needs the label values of labels.json, looked for at {where}: bioscan-shard "
                           "writes it beside the split folders; copy it there with the split")
    try:
        labels = read_labels(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BioscanError(f"cannot read {os_error_text(exc)}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BioscanError(f"unreadable {where}: {exc}") from None
    if not isinstance(labels, dict) or any(not isinstance(labels.get(rank), list)
                                           or not all(isinstance(v, str) for v in labels[rank]) for rank in RANKS):
        raise BioscanError(f"unreadable {where}: it does not list the label values of every rank ({', '.join(RANKS)})")
    return labels


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that cannot be written, before any shard is read."""
    if out.is_dir():
        raise BioscanError(f"the output {out} is a folder: export writes one Parquet file "
                           f"(e.g. {out / 'split.parquet'})")
    if os.path.lexists(out) and not force:
        raise BioscanError(f"{out} already exists; pass --force to replace it")
    parent = out.parent
    if not parent.exists():
        raise BioscanError(f"cannot write {out}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise BioscanError(f"cannot write {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BioscanError(f"cannot write {out}: no permission to write in {parent}")


def _cause(exc: OSError) -> str:
    """The system's cause of a write error (pyarrow's names only the temporary file)."""
    return os.strerror(exc.errno) if exc.errno else os_error_text(exc)


def _provenance(folder: Path, manifest: dict) -> dict:
    """What the file was exported from (kept in the Parquet schema's metadata)."""
    return {"split_folder": str(folder), "split": manifest.get("split"), "splits": manifest.get("splits"),
            "num_samples": manifest.get("num_samples"), "source": manifest.get("source"),
            "columns": {"<rank>_index": "label index per labels.json, -1 missing"}}


def _shard_blocks(folder: Path, entry: dict, rows: int):
    """``(keys, .json payloads)`` of a shard's samples, ``rows`` at a time, in tar order.

    One header walk records where every ``.json`` lies; the payloads are then
    gathered a block at a time, so a large shard is never held whole.
    """
    path, count = folder / entry["name"], entry["count"]
    if count == 0:
        return
    if not path.is_file():
        raise BioscanError(f"shard {path} (listed in {folder / MANIFEST}) is missing")
    try:
        found = scan(str(path), 0, count, ("json",))
        if found is None:  # pax or GNU long-name headers: the Python reader, whole shard
            keys, values, present, error = read_members(str(path), 0, count, ("json",))
            yield _checked(path, keys, values, present, error)
            return
        with found:
            if found.error is not None:
                raise found.error
            for lo in range(0, found.n, rows):
                keys, values, present = found.gather(lo, min(lo + rows, found.n))
                yield _checked(path, keys, values, present, None)
    except OSError as exc:  # not a write error: say it is the shard
        raise BioscanError(f"cannot read shard {path}: {_cause(exc)}") from None


def _checked(path: Path, keys: pa.Array, values: dict, present: dict, error) -> tuple:
    if error is not None:
        raise error
    if not present["json"].all():
        key = keys[int(np.flatnonzero(~present["json"])[0])].as_py()
        raise BioscanError(f"shard {path}: sample {key} has no .json member (bioscan-io verify lists all problems)")
    return keys, values["json"]


def _parse(records: pa.Array, keys: pa.Array, path: Path) -> pa.Table:
    """The records of a block as one typed table, each ``processid`` checked to be its sample key.

    One Arrow JSON parse of the block as newline-delimited JSON (about 290,000
    records a second on one core).
    """
    joined = pc.binary_join_element_wise(records, _NEWLINE, _NOTHING)  # one buffer, a record per line
    block = _block_size(records)
    # Threads parse blocks side by side: 1.9x on 2 free cores for a 10,000-record shard, but their set-up
    # cost more than they gained on a few hundred records (measured 1.25x slower).
    threads = joined.nbytes >= _THREADED_BLOCKS * block
    try:
        table = pa_json.read_json(
            pa.BufferReader(joined.buffers()[2] or pa.py_buffer(b"")),
            read_options=pa_json.ReadOptions(use_threads=threads, block_size=block),
            parse_options=pa_json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore",
                                               newlines_in_values=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _bad_record(records, keys, path, exc) from None
    if table.num_rows != len(records):
        raise _bad_record(records, keys, path, None)
    keys = keys.cast(pa.string())
    differ = pc.fill_null(pc.not_equal(table.column("processid"), keys), True)
    if pc.any(differ).as_py():
        row = int(np.flatnonzero(differ.to_numpy(zero_copy_only=False))[0])
        raise BioscanError(f"shard {path}: {keys[row].as_py()}.json: processid is "
                           f"{table.column('processid')[row].as_py()!r}, not the sample key")
    return table


def _block_size(records: pa.Array) -> int:
    """:data:`_PARSE_BLOCK`, or more when one record is longer (a parse block must hold a whole record)."""
    longest = pc.max(pc.binary_length(records)).as_py() or 0
    return max(_PARSE_BLOCK, 2 * (longest + 1))


def _bad_record(records: pa.Array, keys: pa.Array, path: Path, exc: Exception | None) -> BioscanError:
    """The first record that made the block's parse fail, found one record at a time (only on failure)."""
    for key, data in zip(keys.to_pylist(), records.to_pylist()):
        where = f"shard {path}: {key}.json"
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            return BioscanError(f"{where}: not JSON ({err})")
        if not isinstance(record, dict):
            return BioscanError(f"{where}: not a JSON object")
        for field in SCHEMA:
            value = record.get(field.name)
            try:
                pa.array([value], field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                return BioscanError(f"{where}: {field.name!r} holds {value!r}, not a {field.type} or null")
    cause = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "records split over lines"
    return BioscanError(f"shard {path}: unreadable .json records ({cause})")

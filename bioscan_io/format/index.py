"""The per-shard index: ``{split}-000000.idx.arrow`` beside ``{split}-000000.tar``.

One Arrow IPC file per shard (format version 2), one row per sample in tar
order, memory-mapped by the readers:

==================  ===========================================================
column              holds
==================  ===========================================================
processid           the sample key
{ext}_offset        byte offset in the tar of each member's payload (-1: absent),
{ext}_size          and its size, for ``ext`` in ``format.MEMBERS``
dna                 the ``.dna`` payload (the full barcode, "" when none)
phylum ... dna_bin  the ranks and the BIN, as in the metadata (null: missing)
split               the record's split
{rank}_index        label indices per ``labels.json`` (-1: missing), int32
==================  ===========================================================

The file's schema metadata names the tar it describes (``shard``,
``shard_bytes``, ``shard_sha256``, ``count``), so an index that outlived its tar
(a stale index) is refused, never read as another tar's offsets. Tasks without
images read only the index; image tasks read each image at its offset.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..atomic import replacing
from ..columns import SortedKeys
from ..gathered import Column
from ..schema import MISSING_LABEL, RANKS, BioscanError
from .members import MEMBERS, parse_records

__all__ = ["INDEX_SUFFIX", "RECORD_FIELDS", "IndexColumns", "index_name", "build_index", "write_index", "open_index",
           "check_index", "verify_index_file", "verify_shard_file", "load_index", "load_index_columns",
           "index_from_shard", "describes", "index_split", "index_problems"]

INDEX_SUFFIX = ".idx.arrow"
#: The ``.json`` record fields an index carries (what the tasks read of a record).
RECORD_FIELDS = (*RANKS, "split")
_DESCRIBES = ("shard", "shard_bytes", "shard_sha256", "count")


def index_name(shard_name: str) -> str:
    """The index file of a shard: ``train-000000.tar`` -> ``train-000000.idx.arrow``."""
    stem = shard_name[:-4] if shard_name.endswith(".tar") else shard_name
    return stem + INDEX_SUFFIX


def build_index(keys, spans: dict, dna, records: pa.Table, labels: dict, shard: dict) -> pa.Table:
    """The index of one shard.

    Parameters
    ----------
    keys : sequence of str or pyarrow.Array
        Processids, in tar order.
    spans : dict
        ``ext -> (offsets, sizes)`` int64 arrays for every member of ``format.MEMBERS``.
    dna : sequence of str or pyarrow.Array
        The ``.dna`` payloads.
    records : pyarrow.Table
        The :data:`RECORD_FIELDS` of each sample (string columns).
    labels : dict
        ``labels.json``'s values per rank (index = position), or their
        ``columns.SortedKeys`` (made once for many shards).
    shard : dict
        What the index describes: ``shard`` (file name), ``shard_bytes``, ``shard_sha256``.
    """
    columns = {"processid": _strings(keys)}
    for ext in MEMBERS:
        offsets, sizes = spans[ext]
        columns[f"{ext}_offset"] = pa.array(np.asarray(offsets, np.int64))
        columns[f"{ext}_size"] = pa.array(np.asarray(sizes, np.int64))
    columns["dna"] = _strings(dna)
    for field in RECORD_FIELDS:
        columns[field] = records.column(field).cast(pa.string()).combine_chunks()
    for rank in RANKS:
        values = labels[rank] if isinstance(labels[rank], SortedKeys) else SortedKeys(labels[rank])
        found = values.positions(columns[rank])
        columns[f"{rank}_index"] = pa.array(np.where(found < 0, MISSING_LABEL, found).astype(np.int32))
    meta = {**{k: str(v) for k, v in shard.items()}, "count": str(len(columns["processid"]))}
    return pa.table(columns).replace_schema_metadata({f"bioscan_io.{k}": v for k, v in meta.items()})


def _strings(values) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.cast(pa.string())
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return pa.array(values, pa.string())


def write_index(path: str | os.PathLike, table: pa.Table) -> dict:
    """Write an index whole (one record batch, synced, renamed); its ``{name, bytes, sha256}``."""
    with replacing(path, sync=True) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(len(table), 1))
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": _sha256(path)}


def open_index(path: str, name: str | None = None) -> pa.Table:
    """Memory-map an index (zero-copy columns), or a BioscanError naming it."""
    name = name or path
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError:
        raise BioscanError(f"shard index {name} is missing (bioscan-io index FOLDER writes it again)") from None
    except PermissionError as exc:  # the file is there, intact or not: writing it again would not help
        raise BioscanError(f"cannot read shard index {name}: {exc.strerror or exc}") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise BioscanError(f"shard index {name} is unreadable ({str(exc).splitlines()[0]}); "
                           "bioscan-io index FOLDER writes it again") from None


def load_index(path: str, entry: dict, name: str | None = None) -> pa.Table:
    """The index of the manifest's shard ``entry``, checked (:func:`load_index_columns`'s table)."""
    return load_index_columns(path, entry, name).table


def load_index_columns(path: str, entry: dict, name: str | None = None) -> IndexColumns:
    """The index of the manifest's shard ``entry``, checked: its bytes and sha256, then what it describes.

    What the loader calls; every way an index can be wrong (cut, flipped, stale,
    another shard's) is a BioscanError naming it, never wrong data. The last
    :data:`OPEN_INDEXES` indexes loaded stay open (memory-mapped) in the process,
    keyed by the file's identity and the entry, so an epoch over shards read
    before does not map and check them again.
    """
    name = name or path
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise BioscanError(f"shard index {name} is missing (bioscan-io index FOLDER writes it again)") from None
    except OSError as exc:  # a folder it may not search
        raise BioscanError(f"cannot read shard index {name}: {exc.strerror or exc}") from None
    listed = entry.get("index") or {}
    key = (str(path), *_identity(stat), listed.get("sha256"), entry.get("name"), entry.get("bytes"),
           entry.get("sha256"), entry.get("count"))
    opened = _OPEN.get(key)
    if opened is None:
        verify_index_file(path, entry, name)
        opened = IndexColumns(open_index(path, name))
        check_index(opened.table, entry, name)
        _OPEN[key] = opened
        while len(_OPEN) > OPEN_INDEXES:
            _OPEN.popitem(last=False)
    _OPEN.move_to_end(key)
    return opened


class IndexColumns:
    """A checked, memory-mapped index, with its string columns as the kernels read them (made once).

    What :func:`load_index_columns` keeps open: reading rows of an index again
    and again (every item of every epoch) then costs no conversion of its
    columns beyond the first.
    """

    __slots__ = ("table", "_columns")

    def __init__(self, table: pa.Table):
        self.table = table
        self._columns: dict = {}

    def column(self, name: str) -> Column:
        """String column ``name`` as a :class:`~bioscan_io.gathered.Column` (its kernel chunk, its hashes)."""
        got = self._columns.get(name)
        if got is None:
            # One chunk, as written: combining copies nothing.
            got = self._columns[name] = Column(self.table.column(name).combine_chunks())
        return got


def _identity(stat: os.stat_result) -> tuple:
    """What tells a file from another, or from itself changed, without reading it.

    The change time (``st_ctime_ns``) too: the modification time can be set back
    (``touch -d``, ``cp -p``, ``rsync -t``), the change time only moves forward,
    on every write and every metadata change (a check then runs again, never
    skips one).
    """
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


#: Checked indexes kept open per process (a memory map each; an index is about 1 KB per sample).
OPEN_INDEXES = 64
_OPEN: OrderedDict = OrderedDict()


def describes(table: pa.Table) -> dict:
    """What an index says it describes: ``shard``, ``shard_bytes``, ``shard_sha256``, ``count``."""
    meta = table.schema.metadata or {}
    return {k: meta.get(f"bioscan_io.{k}".encode(), b"").decode() for k in _DESCRIBES}


def check_index(table: pa.Table, entry: dict, name: str) -> None:
    """Refuse an index that is not the one of the manifest's shard ``entry`` (stale, cut or foreign).

    Compares the tar the index names (file name, bytes, sha256) and its row count
    with the manifest's entry; cheap enough to run on every open.
    """
    said = describes(table)
    expected = {"shard": entry["name"], "shard_bytes": str(entry["bytes"]), "shard_sha256": entry["sha256"],
                "count": str(entry["count"])}
    wrong = [k for k in _DESCRIBES if said[k] != expected[k]]
    if len(table) != entry["count"]:
        wrong.append("rows")
    if wrong:
        what = ", ".join(f"{k} {said.get(k, len(table))!r} (manifest: {expected.get(k, entry['count'])!r})"
                         for k in wrong[:2])
        raise BioscanError(f"shard index {name} does not describe {entry['name']} as the manifest lists it: "
                           f"{what}; bioscan-io index FOLDER writes it again")


def index_from_shard(path: str, entry: dict, labels: dict, name: str | None = None) -> pa.Table:
    """Build the index of an existing shard from the shard itself (``bioscan-io index``, ``verify``).

    One compiled header walk for the members' spans; the records from the
    ``.json`` members. Equal, byte for byte once written, to the index
    ``bioscan-shard`` writes beside the same shard.
    """
    from .scan import scan

    name = name or path
    exts = tuple(MEMBERS)
    found = scan(path, 0, entry["count"], exts, name=name)
    if found is None:
        raise BioscanError(f"shard {name} has pax or GNU long-name headers; it cannot be indexed")
    with found:
        if found.error is not None:
            raise found.error
        keys, values, _ = found.gather()
        spans = found.spans()
        records, bad = parse_records(values["json"], RECORD_FIELDS)
        if bad:
            row, message = bad[0]
            raise BioscanError(f"shard {name}: {keys[row].as_py()}.json: {message}")
        dna = values["dna"]
    return build_index(keys, spans, dna, records, labels,
                       {"shard": entry["name"], "shard_bytes": entry["bytes"], "shard_sha256": entry["sha256"]})


_VERIFIED: set = set()


def verify_index_file(path: str, entry: dict, name: str) -> None:
    """The index file is the one the manifest lists (bytes and sha256), hashed once per process and file.

    An index is small next to its shard (the barcodes and a few fields), and a
    flipped byte in it would otherwise be served as a wrong barcode or offset.
    """
    _verify_once(path, entry.get("index") or {}, f"shard index {name}", "bioscan-io index FOLDER writes it again")


def verify_shard_file(path: str, entry: dict, name: str) -> None:
    """The shard file is the one the manifest lists (bytes and sha256), hashed once per process and file.

    ``make_loader(check_sha256=True)``: a flipped bit in a JPEG's scan data
    decodes as another image, which no reader can tell otherwise.
    """
    _verify_once(path, entry, f"shard {name}", "bioscan-io verify FOLDER says how")


def _verify_once(path: str, listed: dict, what: str, hint: str) -> None:
    try:
        stat = os.stat(path)
        key = (what, str(path), *_identity(stat), listed.get("sha256"), listed.get("bytes"))
        if key in _VERIFIED:
            return
        if stat.st_size != listed.get("bytes"):
            raise BioscanError(f"{what} has {stat.st_size} bytes, the manifest says {listed.get('bytes')}; {hint}")
        digest = _sha256(path)
    except OSError as exc:
        # Missing or unreadable (permissions): one line naming the file, which the
        # loader's on_error policy raises or skips like any other bad shard.
        raise BioscanError(f"cannot read {what}: {exc.strerror or exc}") from None
    if digest != listed.get("sha256"):
        raise BioscanError(f"{what} is corrupt: sha256 {digest[:16]}..., the manifest says "
                           f"{str(listed.get('sha256'))[:16]}...; {hint}")
    _VERIFIED.add(key)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def index_split(folder: str | os.PathLike) -> int:
    """Write the index of every shard of a split folder and list them in its manifest (version 2).

    For splits sharded before indexes existed (format version 1), or to replace
    a damaged index: each shard is checked against its manifest entry (bytes and
    sha256) first, so an index always describes the shard the manifest lists.
    The label indices come from ``labels.json`` beside the split folder.

    Returns
    -------
    int
        Index files written.

    Raises
    ------
    BioscanError
        If the manifest is missing or malformed, ``labels.json`` is missing, or a
        shard is missing, differs from its manifest entry or cannot be read.
    """
    from .manifest import FORMAT_VERSION, MANIFEST, labels_path, listed_shards, read_labels, write_json

    folder = Path(folder)
    manifest, entries = listed_shards(folder)
    labels_file = labels_path(folder)
    if not labels_file.is_file():
        raise BioscanError(f"no labels.json at {labels_file}: bioscan-shard writes it beside the split folders; "
                           "copy it there from the shards' output folder")
    ranks = read_labels(labels_file.read_text(encoding="utf-8")) or {}
    labels = {rank: SortedKeys(values) for rank, values in ranks.items()}
    for entry in entries:
        shard = folder / entry["name"]
        if not shard.is_file():
            raise BioscanError(f"shard {shard} (listed in {folder / MANIFEST}) is missing")
        if shard.stat().st_size != entry["bytes"] or _sha256(shard) != entry["sha256"]:
            raise BioscanError(f"shard {shard} differs from its manifest entry; bioscan-io verify {folder} says how")
        table = index_from_shard(str(shard), entry, labels)
        entry["index"] = write_index(folder / index_name(entry["name"]), table)
    manifest["shards"] = entries
    manifest["format_version"] = FORMAT_VERSION
    write_json(folder / MANIFEST, manifest)
    return len(entries)


def index_problems(folder: Path, entry: dict, labels: dict, shard_sound: bool = True) -> list[tuple[str, str]]:
    """``(kind, detail)`` for each way a shard's index is not what its manifest entry and shard say.

    Kinds: ``missing_index`` (no index listed, or no file) and ``index_mismatch``
    (bytes or sha256 differ from the manifest, or the contents differ from the
    index built again from the shard with ``labels``). The contents are compared
    only for a ``shard_sound`` shard (the bytes its manifest entry lists, read to
    its end): a damaged shard is ``verify``'s tar problem, not its index's.
    """
    listed = entry.get("index")
    if not isinstance(listed, dict) or not isinstance(listed.get("name"), str):
        return [("missing_index", "the manifest lists no index for this shard")]
    path = Path(folder) / listed["name"]
    if not path.is_file():
        return [("missing_index", f"{listed['name']} is listed in the manifest but not in the folder")]
    if path.stat().st_size != listed.get("bytes") or _sha256(path) != listed.get("sha256"):
        return [("index_mismatch", f"{listed['name']}: bytes or sha256 differ from the manifest's")]
    if not shard_sound:
        return []
    try:
        expected = index_from_shard(str(Path(folder) / entry["name"]), entry, labels)
        actual = open_index(str(path))
    except BioscanError:
        return []
    if actual.equals(expected, check_metadata=True):
        return []
    return [("index_mismatch", f"{listed['name']}: {_first_difference(actual, expected)}")]


def _first_difference(actual: pa.Table, expected: pa.Table) -> str:
    if actual.schema != expected.schema or len(actual) != len(expected):
        return f"{len(actual)} rows and columns {actual.column_names}, the shard gives {len(expected)} rows"
    if describes(actual) != describes(expected):
        return f"describes {describes(actual)}, the manifest's shard is {describes(expected)}"
    for name in actual.column_names:
        a, b = actual.column(name).to_pylist(), expected.column(name).to_pylist()
        if a != b:
            row = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return f"row {row} ({expected.column('processid')[row]}): {name} is {a[row]!r}, the shard says {b[row]!r}"
    return "the files differ"

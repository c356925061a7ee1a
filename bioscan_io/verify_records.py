"""What ``bioscan-io verify`` compares with the metadata (its checks of group 3, and the bookkeeping of group 2).

:class:`Records` is the metadata side: the memory-mapped table and the row of each
record of the manifest's splits, found by binary search over their sorted
processids. :class:`Seen` is the shard each record was read from, 4 bytes a
record, and whether a loader serves it there. The checks compare each shard's
samples with their rows (fields, images), and, once every shard is read, the
records with the shards (missing, skipped). Each returns :class:`Problem` objects.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np

from . import columns
from . import metadata as md
from .format import MISSING_REPORT
from .schema import COLUMNS, SPLITS, BioscanError, image_subpath
from .sources import image_reader
from .verify_report import Problem

__all__ = ["Records", "Seen", "check_duplicates", "check_metadata_sha", "check_unknown", "check_fields",
           "same_value", "check_missing", "check_skipped", "check_images"]


class Seen:
    """The shard each key was first read from, and whether a loader serves it.

    A shard number per record of the splits (4 bytes a record, in the order of
    ``records.lookup``), and a flag: read where a loader serves it (not in a
    shard it skips whole, nor past a fault it cannot read: ``verify_served``);
    a dict only for keys that are no record of the splits (each of them a
    problem already).
    """

    def __init__(self, lookup: columns.RowLookup):
        self.lookup = lookup
        self.first = np.full(len(lookup), -1, np.int32)
        self.served = np.zeros(len(lookup), bool)
        self.shards: list[str] = []
        self.why: dict[int, tuple[str, str]] = {}  # record -> (shard, why a loader does not serve it from there)
        self.others: dict[str, str] = {}

    def add(self, keys: list[str], shard: str, unserved: list | None = None) -> list[str | None]:
        """Record the keys read from ``shard``, in read order; for each, the shard it was read from before.

        ``unserved``: for each key, why a loader does not serve it from this
        shard (None: it does; ``verify_served.unserved``); None when it serves all.
        """
        number = len(self.shards)
        self.shards.append(shard)
        earlier: list[str | None] = []
        for i, (key, at) in enumerate(zip(keys, self.lookup.positions(keys).tolist())):
            if at < 0:
                earlier.append(self.others.get(key))
                self.others.setdefault(key, shard)
                continue
            if self.first[at] >= 0:
                earlier.append(self.shards[self.first[at]])
            else:
                self.first[at] = number
                earlier.append(None)
            if unserved is None or unserved[i] is None:
                self.served[at] = True
            else:
                self.why.setdefault(at, (shard, unserved[i]))
        return earlier

    def where(self, key: str) -> str | None:
        """The shard ``key`` was first read from, or None."""
        at = int(self.lookup.positions([key])[0])
        if at < 0:
            return self.others.get(key)
        return self.shards[self.first[at]] if self.first[at] >= 0 else None

    def unread(self) -> np.ndarray:
        """Rows of the splits' records read from no shard, in file order."""
        return np.sort(self.lookup.rows[self.first < 0])

    def unserved(self) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Rows of the records read, but only where a loader does not serve them; the shard and why, for each."""
        lost = np.flatnonzero((self.first >= 0) & ~self.served)
        lost = lost[np.argsort(self.lookup.rows[lost], kind="stable")]  # file order, as unread()
        return self.lookup.rows[lost], [self.why[at] for at in lost.tolist()]


def check_duplicates(keys: list[str], shard: str, seen: Seen,
                     unserved: list | None = None) -> tuple[list[Problem], list[bool]]:
    """Keys read before, in this shard or an earlier one; and which of ``keys`` are read the first time."""
    earlier = seen.add(keys, shard, unserved)
    problems = [Problem("duplicate_sample", shard, key, f"already read from {before}")
                for key, before in zip(keys, earlier) if before is not None]
    return problems, [before is None for before in earlier]


class Records:
    """The metadata side: the table, and the row of each record of the manifest's splits.

    ``indexed``: the shards have indexes (format version 2) to check against
    the metadata's :attr:`labels`.
    """

    def __init__(self, path: Path, splits: list[str], indexed: bool = False, cache_dir=None):
        self.path, self.indexed = path, indexed
        self.table = md.read_metadata(path, cache_dir=cache_dir)  # memory-mapped when cache_dir is given
        self.splits = [s for s in splits if s in SPLITS]
        rows = md.select_rows(self.table, tuple(self.splits)) if self.splits else np.empty(0, np.int64)
        self.lookup = columns.RowLookup(self.table, rows)

    def rows(self, keys: list[str]) -> np.ndarray:
        """The metadata row of each key among the splits' records, -1 for any other."""
        return self.lookup.find(keys)

    @functools.cached_property
    def everyone(self) -> columns.RowLookup:
        """Every record of the metadata, to say where a sample of no record of the splits lives."""
        return columns.RowLookup(self.table, np.arange(self.table.num_rows))

    @functools.cached_property
    def labels(self) -> dict:
        """Label values per rank, as ``bioscan-shard`` wrote them to ``labels.json``, made searchable once.

        ``SortedKeys`` here, not lists: each shard's index is built again from them,
        and converting ~800,000 BINs for every shard cost ~0.6 s a shard at full size.
        """
        return {rank: columns.SortedKeys(values) for rank, values in md.label_values(self.table).items()}


def check_metadata_sha(records: Records, made_from) -> list[Problem]:
    """The metadata is the file the shards were made from, ``made_from`` the manifest's sha256
    (else every field check may fail)."""
    if not isinstance(made_from, str):
        return []  # a bad_manifest already
    digest = md.metadata_sha256(records.table)  # of the bytes read, hashed as they were
    if digest == made_from:
        return []
    return [Problem("metadata_changed", detail=f"{records.path} has sha256 {digest[:16]}..., the shards were made "
                                               f"from {str(made_from)[:16]}...; records are compared anyway")]


def check_unknown(keys: list[str], records: Records, shard: str) -> list[Problem]:
    """Samples that are not records of the manifest's splits."""
    unknown = [k for k, row in zip(keys, records.rows(keys).tolist()) if row < 0]
    if not unknown:
        return []
    # Say where the record does live, if anywhere: a sample of another split is the
    # likeliest mix-up.
    where = records.everyone.find(unknown)
    splits = columns.take_rows(records.table, where[where >= 0], ["split"]).column(0).to_pylist()
    split = dict(zip(np.flatnonzero(where >= 0).tolist(), splits))
    joined = "+".join(records.splits)
    return [Problem("unknown_record", shard, key,
                    f"a record of split {split[i]!r}, not of {joined}" if i in split
                    else f"no such processid in {records.path}")
            for i, key in enumerate(unknown)]


def check_fields(samples: list[tuple[str, dict]], records: Records, shard: str) -> list[Problem]:
    """Every field of each sample's JSON equals its metadata row, typed as read_metadata types it."""
    found = records.rows([key for key, _ in samples])
    known = [sample for sample, row in zip(samples, found.tolist()) if row >= 0]
    if not known:
        return []
    rows = columns.take_rows(records.table, found[found >= 0]).to_pylist()
    problems = []
    for (key, rec), row in zip(known, rows):
        for column in COLUMNS:
            if column not in rec:
                problems.append(Problem("field_mismatch", shard, key, f"{column}: missing from the .json"))
            elif not same_value(rec[column], row[column]):
                problems.append(Problem("field_mismatch", shard, key,
                                        f"{column}: .json has {rec[column]!r}, the metadata {row[column]!r}"))
        for column in rec:
            if column not in row:
                problems.append(Problem("field_mismatch", shard, key, f"{column}: not a metadata column"))
    return problems


def same_value(a, b) -> bool:
    """Equal and of the same type (a float 3.0 is not the int 3); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def check_missing(seen: Seen, records: Records, manifest: dict) -> list[Problem]:
    """Records of the splits a loader does not serve, other than those skipped for a missing image.

    Those in no shard (or lost to a fault in theirs), then those only in shards
    a loader skips whole (``verify_served``): what ``on_error="skip"`` loses.
    """
    skipped = set(manifest.get("skipped_missing_image") or [])
    joined = "+".join(records.splits)
    unread = columns.take_rows(records.table, seen.unread(), ["processid"]).column(0).to_pylist()
    problems = [Problem("missing_record", key=pid, detail=f"a record of {joined} in no shard")
                for pid in unread if pid not in skipped]
    rows, where = seen.unserved()
    lost = columns.take_rows(records.table, rows, ["processid"]).column(0).to_pylist()
    return problems + [Problem("missing_record", shard, pid, f"a record of {joined} in {shard}, {why}")
                       for pid, (shard, why) in zip(lost, where) if pid not in skipped]


def check_skipped(folder: Path, seen: Seen, manifest: dict) -> list[Problem]:
    """The skipped list agrees with missing_images.txt and names no sample that is in a shard."""
    skipped = manifest.get("skipped_missing_image") or []
    present = [(pid, seen.where(pid)) for pid in skipped]
    problems = [Problem("bad_manifest", shard, pid, "listed in skipped_missing_image but present in a shard")
                for pid, shard in present if shard is not None]
    report = folder / MISSING_REPORT
    if report.is_file() and sorted(report.read_text().split()) != sorted(skipped):
        problems.append(Problem("bad_manifest",
                                detail=f"{MISSING_REPORT} and the manifest's skipped_missing_image differ"))
    return problems


def check_images(digests: list[tuple[str, int, str]], records: Records, images, shard: str) -> list[Problem]:
    """Each ``.jpg`` equals its source image (same length and sha256), read from the folder or
    zip archives the shards were made from (``shard.open_images``)."""
    found = records.rows([key for key, _, _ in digests])
    known = [d for d, row in zip(digests, found.tolist()) if row >= 0]
    if not known:
        return []
    sub = columns.take_rows(records.table, found[found >= 0], ["split", "chunk"])
    splits, chunks = sub.column("split").to_pylist(), sub.column("chunk").to_pylist()
    subpaths = [image_subpath(key, split, chunk) for (key, _, _), split, chunk in zip(known, splits, chunks)]
    sizes, located = images.locate(subpaths, progress=False)
    problems = []
    with image_reader(images.task_images(located)) as read:
        for i, (key, size, digest) in enumerate(known):
            where = f"{subpaths[i]} in {images.where()}"
            try:
                if sizes[i] < 0:
                    raise BioscanError("not found")
                source = bytes(read(i, key))
            except BioscanError as exc:
                problems.append(Problem("image_mismatch", shard, key, f"cannot read the source image {where}: {exc}"))
                continue
            if len(source) != size or hashlib.sha256(source).hexdigest() != digest:
                how = f"{size} bytes, the source {len(source)}" if len(source) != size else "same size, other bytes"
                problems.append(Problem("image_mismatch", shard, key,
                                        f".jpg differs from the source image {where} ({how})"))
    return problems

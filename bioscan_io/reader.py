"""Reading the samples an item of batches names: the first stages of a worker's pipeline.

``read_items`` reads each item's rows shard by shard (:func:`read_rows`: from
the memory-mapped per-shard index, images at their offsets, or with one header
walk of a version-1 shard), adds the columns the task needs of each record
(:func:`record_columns`), and reports the rows that could not be read through
the :class:`ErrorPolicy`; ``refill_items`` puts good rows in their place, so
every batch keeps its planned size.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import storage
from .format import load_index_columns, parse_records, scan, take_indexed, take_local, verify_shard_file
from .gathered import Gathered, concat
from .schema import BioscanError
from .shardlist import ShardSet
from .tasks import Task

__all__ = ["ErrorPolicy", "read_rows", "record_columns", "read_items", "refill_items"]


class ErrorPolicy:
    """What the stages do with a bad sample or shard: raise (default) or skip and count.

    Skipped samples are kept as ``(count, message)`` until the next batch carries
    them to the main process (``BioscanLoader.errors``).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.pending: list = []

    def handle(self, exc: BioscanError, lost: int) -> None:
        if self.mode == "raise":
            raise exc
        self.pending.append((lost, str(exc)))

    def drain(self) -> list:
        out, self.pending = self.pending, []
        return out


def read_rows(shards: ShardSet, shard: int, rows: np.ndarray, exts, errors: ErrorPolicy,
              copies: storage.LocalCopies) -> tuple[dict, np.ndarray]:
    """The samples at ``rows`` of one shard, and their indices into ``rows`` (the rest were bad).

    A shard with an index (format version 2) is read from its memory-mapped
    index: barcodes and the record fields (as a ``"record"`` struct column in
    place of ``.json``) with no tar page touched, images at the offsets the index
    gives. Any other shard is read with one header walk over the rows' range
    (remote shards are first copied to a temporary file, held by ``copies``). A
    sample without one of the members, a fault in the shard, or a shard or
    index that cannot be opened is raised or skipped per ``errors``; skipping
    loses only the rows the fault made unreadable. A shard read through its
    headers that holds samples past its manifest's count is an error of 0 lost
    rows, once its last listed row is read (:func:`_check_end`). Messages name
    the shard by URL.
    """
    url = shards.urls[shard]
    try:
        block, kept, missing, error = _take(shards, shard, rows, tuple(sorted(exts)), copies)
    except BioscanError as exc:
        block, kept, missing, error = {"__key__": pa.array([], pa.string())}, np.zeros(0, np.int64), [], exc
    for key, ext in missing:
        errors.handle(BioscanError(f"shard {url}: sample {key} has no .{ext} member"), 1)
    lost = len(rows) - len(kept) - len(missing)
    if lost:
        errors.handle(error or BioscanError(f"shard {url}: {lost} sample(s) could not be read"), lost)
    elif shards.entries and not (shards.indexes and shards.indexes[shard]) and shards.counts[shard] - 1 in rows:
        _check_end(shards, shard, copies, errors)
    if "jpg" in exts or "json" in exts:  # the shard of each row: named when its image or record is bad
        block["__shard__"] = pa.array(np.full(len(kept), shard, np.int32))
    return block, kept


def _check_end(shards: ShardSet, shard: int, copies: storage.LocalCopies, errors: ErrorPolicy) -> None:
    """A shard read through its headers ends after the samples its manifest lists, or the error says so.

    The plan reads the manifest's count of samples: any past them would never
    be served, and nothing else would tell (with an index, the loader refuses a
    count that differs from its index's). Checked once the last listed sample
    is read; an error of no lost sample (``on_error="skip"`` logs it).
    """
    url, count = shards.urls[shard], shards.counts[shard]
    found = scan(copies.path(url), count, count + 1, ("dna",), name=url)
    if found is None:  # headers the compiled walk does not read (pax): not checked
        return
    with found:
        more = found.n > 0
    if more:
        errors.handle(BioscanError(f"shard {url} holds more samples than the {count} its manifest lists: "
                                   f"those past them are not loaded (bioscan-io verify {shards.folder} says how)"), 0)


def _take(shards: ShardSet, shard: int, rows: np.ndarray, exts: tuple[str, ...], copies) -> tuple:
    url = shards.urls[shard]
    if shards.check_sha256 and shards.entries:
        verify_shard_file(copies.path(url), shards.entries[shard], url)
    index_url = shards.indexes[shard] if shards.indexes else None
    if index_url is None:
        return take_local(copies.path(url), rows, exts, name=url)
    assert shards.entries is not None  # indexes come with a manifest's entries
    index = load_index_columns(copies.path(index_url), shards.entries[shard], name=index_url)
    tar = copies.path(url) if "jpg" in exts else None  # without images, no tar page is touched
    return take_indexed(index, rows, exts, tar=tar, name=url)


def record_columns(block: dict, task: Task, urls: list[str], errors: ErrorPolicy) -> dict:
    """The block with its ``.json`` (or index ``record``) column replaced by the columns the task needs.

    A record that cannot be parsed is reported per ``errors`` and its row dropped.
    """
    if "record" in block:  # read from the index: the fields, already columns
        record = block.pop("record")
        block.update(task.record_columns(pa.Table.from_struct_array(record)))
        return block
    if "json" not in block:
        return block
    table, bad = parse_records(block["json"], task.record_fields)
    if bad:
        keys, shards = block["__key__"].to_pylist(), block["__shard__"].to_numpy()
        for i, message in bad:
            errors.handle(BioscanError(f"bad JSON in {urls[shards[i]]}: {keys[i]}.json: {message}"), 1)
        keep = np.ones(len(keys), bool)
        keep[[i for i, _ in bad]] = False
        mask = pa.array(keep)
        block, table = {k: v.filter(mask) for k, v in block.items()}, table.filter(mask)
    del block["json"]
    block.update(task.record_columns(table))
    return block


def read_items(items, shards: ShardSet, task: Task, errors: ErrorPolicy, copies: storage.LocalCopies,
               mark_padding: bool):
    """``(item, block)``: each item's samples read, with the task's record columns; bad rows left out.

    With ``mark_padding``, a ``"__valid__"`` column is False on the padding rows.
    """
    try:
        for item in items:
            parts = []
            for shard, index in item.runs():
                block, kept = read_rows(shards, shard, item.row[index], task.members, errors, copies)
                if mark_padding:
                    block["__valid__"] = pa.array(~item.padding[index][kept])
                block = record_columns(block, task, shards.urls, errors)
                if len(block["__key__"]):
                    parts.append(block)
            yield item, _joined(parts)
    finally:
        copies.close()


def _joined(parts: list[dict]) -> dict:
    """Blocks with the same columns as one (chunked, no copy); index and tar string types unified.

    A column that is a :class:`~bioscan_io.gathered.Gathered` in any block (an
    index's barcodes) is one in the result too (its pieces, then the others').
    """
    if not parts:
        return {"__key__": pa.array([], pa.string())}
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key in parts[0]:
        if any(isinstance(p[key], Gathered) for p in parts):
            out[key] = concat([p[key] for p in parts])
            continue
        chunks = [c for p in parts for c in (p[key].chunks if isinstance(p[key], pa.ChunkedArray) else [p[key]])]
        kind = chunks[0].type
        out[key] = pa.chunked_array([c if c.type == kind else c.cast(kind) for c in chunks])
    return out


def refill_items(items, elsewhere, mark_padding: bool):
    """Each item's block with exactly its planned rows, its batch sizes in ``_sizes``.

    Good rows of the item stand in for the skipped bad ones (repeated in
    order), so every rank still yields ``len(loader)`` full batches and DDP does
    not wait on a short rank. When every row of the item was bad, the rows come
    from ``elsewhere(n)``: good samples from the rest of the split (the same on
    every rank and worker), which raises only when the split has none. Stand-ins
    are ``valid=False`` under ``mark_padding``: never a second copy of a record.
    """
    for item, block in items:
        n, want = len(block["__key__"]), sum(item.sizes)
        if n < want:
            source = block if n else elsewhere(want)
            index = pa.array(np.arange(want - n) % len(source["__key__"]))
            stand_ins = {k: v.take(index) for k, v in source.items()}
            if mark_padding:
                stand_ins["__valid__"] = pa.array(np.zeros(want - n, bool))
            block = _joined([block, stand_ins]) if n else stand_ins
        block["_sizes"] = item.sizes
        yield block

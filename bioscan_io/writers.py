"""The shard writers: processes that each memory-map the metadata and write whole shards.

A writer is handed a task (folder, shard name, metadata rows, image locators),
reads only those rows of the memory-mapped metadata cache, writes the shard
under a temporary name, builds its index, and renames both into place. The label
values reach it as a memory-mapped Arrow file beside the cache, made searchable
once per process (:class:`bioscan_io.columns.SortedKeys`).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from . import atomic, columns
from . import metadata as md
from .format import (MEMBERS, RECORD_FIELDS, ShardInfo, TarSink, build_index, index_from_shard, index_name,
                     sample_payloads, write_index)
from .sources import image_reader

__all__ = ["run", "write_shard", "hash_existing", "init_worker"]


# Each writer process's metadata and label values (for the index), both memory-mapped.
_TABLE: pa.Table | None = None
_LABELS: dict | None = None


def _labels_file(cache: Path) -> Path:
    """Where the run keeps the label values for its writers, beside the metadata cache."""
    return cache.with_suffix(".labels.arrow")


_INIT_ERROR: BaseException | None = None


def init_worker(cache: str, labels: str) -> None:
    global _INIT_ERROR
    # Die with the parent: a killed bioscan-shard must not leave workers behind.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    try:
        _init_tables(cache, labels)
    except Exception as exc:  # noqa: BLE001
        # Raised here, it would kill the worker, and multiprocessing.Pool would start
        # another forever while the run waits: raised by the first task, it ends the run.
        _INIT_ERROR = exc


def write_shard(task: tuple) -> ShardInfo:
    """Write one shard (the members of ``format.MEMBERS`` for each record), then its index.

    Runs in a worker process (the metadata table is the worker's memory map).
    The index is renamed into place before the shard: a shard on disk always
    has its index beside it.
    """
    folder, name, rows, images = task
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    table = columns.take_rows(_TABLE, rows)  # only this shard's rows of the memory map are read
    records = table.to_pylist()
    spans = {ext: (np.empty(len(records), np.int64), np.empty(len(records), np.int64)) for ext in MEMBERS}
    with atomic.replacing(os.path.join(folder, name), sync=True) as tmp:
        with open(tmp, "wb") as f, image_reader(images, check=True) as read_image:
            tar = TarSink(f)
            for i, rec in enumerate(records):
                for ext, member, payload in sample_payloads(rec, read_image(i, rec["processid"])):
                    spans[ext][0][i], spans[ext][1][i] = tar.add(member, payload), len(payload)
            tar.close()
        info = ShardInfo(name, len(records), tar.bytes, tar.sha256.hexdigest())
        keys = [rec["processid"] for rec in records]
        dna = [rec["dna_barcode"] or "" for rec in records]
        assert _LABELS is not None  # set by init_worker (or its error raised above)
        index = build_index(keys, spans, dna, table.select(RECORD_FIELDS), _LABELS, info.describes())
        info.index = write_index(os.path.join(folder, index_name(name)), index)
    return info


def hash_existing(path: Path, count: int, labels: dict) -> ShardInfo:
    """The manifest entry of a finished shard found on disk, its index written again from the shard."""
    info = ShardInfo(path.name, count, path.stat().st_size, md.file_sha256(path))
    index = index_from_shard(str(path), asdict(info), labels)
    info.index = write_index(path.with_name(index_name(path.name)), index)
    return info


def run(tasks, count: int, finished: dict, *, split: str, records: int, cache: Path, labels: dict, log: Path,
        workers: int | None, progress: bool) -> None:
    """Write the ``count`` shards of ``tasks`` (an iterable), each added to ``finished`` and logged
    (a line of JSON in ``log``) as it completes.

    ``cache`` is the metadata's memory-mapped cache, ``labels`` the label values per
    rank (saved beside it for the writers); ``records`` the split's size, for the bar.

    Worker processes are spawned, not forked: a forked worker would start out
    holding the main process's plan (hundreds of MB for pretrain), so a writer's
    memory would grow with the metadata; a spawned one holds its shard's rows
    and the memory map's pages it reads.
    """
    values = _labels_file(cache)
    md.save_label_values(labels, values)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(workers, count))
    bar = tqdm(total=records, desc=f"sharding {split}", unit="rec", disable=not progress, file=sys.stderr)
    bar.update(sum(info.count for info in finished.values()))
    with open(log, "a", encoding="utf-8") as done:

        def record(info: ShardInfo) -> None:
            finished[info.name] = info
            done.write(json.dumps(asdict(info)) + "\n")
            done.flush()
            bar.update(info.count)

        try:
            if workers == 1:
                _init_tables(cache, values)
                for task in tasks:
                    record(write_shard(task))
            else:
                with multiprocessing.get_context("spawn").Pool(workers, init_worker, (str(cache), str(values))) as pool:
                    for info in pool.imap_unordered(write_shard, tasks):
                        record(info)
        finally:
            bar.close()  # before an error's one line, not after it


def _init_tables(cache, labels) -> None:
    global _TABLE, _LABELS
    _TABLE = md.open_cached(cache)
    _LABELS = {rank: columns.SortedKeys(values) for rank, values in md.open_label_values(labels).items()}

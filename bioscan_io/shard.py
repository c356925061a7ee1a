"""Plan, write and describe the WebDataset shards of one split (SPEC section 2).

The job runs as three stages, data flowing one way::

    plan_split:    metadata (Arrow, memory-mapped) -> rows of the split -> images
                   located (sources.py) -> seeded shuffle -> shards cut by count and size
    write_shards:  shards written in parallel (writer processes: writers.py), each
                   logged as it completes
    describe:      manifest.json (+ labels.json beside the split folders)

A run holds the split folder's lock from its first write to its last, so that
two runs never write one folder.

A shard is written under a temporary name and renamed only once complete and
synced, and every finished shard is logged, so a run that is killed and rerun
redoes nothing that was finished and never leaves a partial shard behind.
Shards are byte-reproducible: the same inputs and options give the same bytes.
The file format itself (names, members, manifest) is :mod:`bioscan_io.format`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from . import atomic, columns, storage, writers
from . import metadata as md
from .format import (FORMAT, FORMAT_VERSION, LABELS, MANIFEST, MISSING_REPORT, ShardInfo, labels_path,
                     publish_order, read_manifest, write_json)
from .schema import DEFAULT_PACKAGE, PACKAGES, ROOT_ENV, BioscanError, expand_split, split_folder_name
from .sources import FolderImages, ZipImages, image_keys, open_images
from .wording import plural

__all__ = ["DEFAULT_MAXCOUNT", "DEFAULT_MAXSIZE", "ShardSummary", "ShardOptions", "SplitPlan", "shard_split",
           "plan_split", "write_shards", "describe", "resolve_root", "plan_shards"]

_PLAN = ".plan.json"
_DONE = ".done.jsonl"
_CACHE = ".cache"

#: Defaults sized for the full release: ~10 KB a cropped_256 sample gives ~100 MB
#: shards and ~470 of them for pretrain; the byte bound caps the full-size packages.
DEFAULT_MAXCOUNT = 10_000
DEFAULT_MAXSIZE = 1 << 30
#: Estimated bytes of a sample's .json member and three tar headers, for planning.
_SAMPLE_OVERHEAD = 3 * 512 + 1024


@dataclass
class ShardSummary:
    """What a :func:`shard_split` run did."""

    split: str
    folder: str
    records: int
    shards: int
    bytes: int
    written: int
    reused: int
    skipped: list = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """The closing one-line summary printed by the CLI."""
        rate = self.records / self.seconds if self.seconds > 0 else float("inf")
        text = (
            f"{self.split}: {plural(self.records, 'record')} in {plural(self.shards, 'shard')}, "
            f"{self.bytes / 1e6:.1f} MB, at {self.folder} "
            f"({self.written} written, {self.reused} already done; "
            f"{self.seconds:.1f} s, {rate:,.0f} records/s)"
        )
        if self.skipped:
            text += f"; {plural(len(self.skipped), 'record')} without an image skipped, listed in {MISSING_REPORT}"
        return text


@dataclass
class ShardOptions:
    """How a split is sharded (the arguments of :func:`shard_split` but where and what)."""

    package: str = DEFAULT_PACKAGE
    metadata: str | os.PathLike | None = None
    images: object = None
    maxcount: int = DEFAULT_MAXCOUNT
    maxsize: int = DEFAULT_MAXSIZE
    seed: int = 0
    workers: int | None = None
    skip_missing: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class SplitPlan:
    """The outcome of :func:`plan_split`: which records go to which shard, and from where."""

    split: str
    splits: tuple[str, ...]
    root: Path
    folder: Path
    meta_path: Path
    meta_sha: str
    cache: Path
    source: FolderImages | ZipImages
    rows: np.ndarray  # metadata rows, in shard order
    located: np.ndarray  # each row's image locator
    slices: list[slice]  # the rows of each shard
    names: list[str]
    fingerprint: str
    skipped: list[str]
    labels: dict  # per rank, the sorted distinct values of the whole metadata (labels.json's "ranks")

    @property
    def counts(self) -> dict[str, int]:
        return {name: s.stop - s.start for name, s in zip(self.names, self.slices)}


# ----------------------------------------------------------------------------- inputs


def resolve_root(root: str | os.PathLike | None, log=print) -> Path:
    """The dataset root: ``root``, else ``$BIOSCAN5M_ROOT``, else the bundled demo data."""
    if root is None:
        root = os.environ.get(ROOT_ENV) or None
    if root is None:
        from .synth import demo_root

        path = demo_root()
        log(f"no --root given and {ROOT_ENV} is not set: using the bundled demo dataset at {path}")
        return path
    path = Path(root).expanduser()
    if not path.is_dir():
        raise BioscanError(f"dataset root not found: {path}")
    return path


def plan_shards(sample_bytes: np.ndarray, maxcount: int, maxsize: int) -> list[slice]:
    """Cut the shuffled samples into shards bounded by count and (estimated) bytes.

    A shard closes before a sample would take it past ``maxsize``; a single sample
    larger than ``maxsize`` gets a shard of its own.
    """
    shards, start, used = [], 0, 0
    for i, size in enumerate(sample_bytes.tolist()):
        if i > start and (i - start >= maxcount or used + size > maxsize):
            shards.append(slice(start, i))
            start, used = i, 0
        used += size
    if len(sample_bytes) > start:
        shards.append(slice(start, len(sample_bytes)))
    return shards


def _fingerprint(**parts) -> str:
    digest = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        if isinstance(value, list):  # the plan: arrays of row numbers
            for arr in value:
                digest.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
                digest.update(b"|")
        else:
            digest.update(f"{key}={value!r};".encode())
    return digest.hexdigest()


def _finished(folder: Path, fingerprint: str, plan: dict[str, int], labels: dict) -> dict[str, ShardInfo]:
    """Shards of this plan already on disk, from the manifest and the run log."""
    known: dict[str, ShardInfo] = {}
    manifest = folder / MANIFEST
    if manifest.is_file():
        doc = read_manifest(manifest)
        if doc.get("plan") == fingerprint:
            known.update({s["name"]: ShardInfo(**s) for s in doc["shards"]})
    done = folder / _DONE
    if done.is_file():
        for line in done.read_text().splitlines():
            try:
                logged = ShardInfo(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a kill
            known[logged.name] = logged
    finished, searchable = {}, None
    for name, count in plan.items():
        path = folder / name
        if not path.is_file():
            continue
        info = known.get(name)
        if info is None or info.bytes != path.stat().st_size or not _index_present(folder, info):
            # Renamed (so complete) but the kill came before it was logged, or a
            # shard of format version 1 (no index yet).
            if searchable is None:  # once, not per shard: ~800,000 BINs at full size
                searchable = {rank: columns.SortedKeys(values) for rank, values in labels.items()}
            info = writers.hash_existing(path, count, searchable)
        finished[name] = info
    return finished


def _index_present(folder: Path, info: ShardInfo) -> bool:
    index = info.index
    return index is not None and bool(index) and (folder / index["name"]).is_file() \
        and (folder / index["name"]).stat().st_size == index["bytes"]


def _prepare_folder(folder: Path, fingerprint: str, overwrite: bool) -> None:
    """Check the split folder holds nothing from another run; clear temporaries."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic.sweep(folder)
    plan_file = folder / _PLAN
    old = json.loads(plan_file.read_text()).get("fingerprint") if plan_file.is_file() else None
    if old is None and (folder / MANIFEST).is_file():
        old = read_manifest(folder).get("plan")
    if old is not None and old != fingerprint:
        if not overwrite:
            raise BioscanError(
                f"{folder} holds shards of another run (other metadata, split, package, seed or "
                "shard sizes); pass --overwrite to replace them or choose another --out"
            )
        for path in list(folder.glob("*.tar")) + [folder / MANIFEST, folder / _DONE, folder / MISSING_REPORT]:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the three stages


def plan_split(root, split: str, out: Path, options: ShardOptions, log=print) -> SplitPlan:
    """Stage 1: read the metadata, locate the images, shuffle and cut the split into shards.

    Writes nothing but the metadata cache (``OUT/.cache/SPLIT/``); it first removes
    what killed runs left in ``out``: temporaries, and caches of metadata since changed.
    The caller has checked ``options`` (:func:`_check_options`) and holds the split's lock.
    """
    splits = expand_split(split)
    root = resolve_root(root, log)
    meta_path = Path(options.metadata) if options.metadata is not None else md.find_metadata(root)
    stem = split_folder_name(split)
    source = open_images(root, options.package, options.images, options.progress)  # before minutes of metadata
    atomic.sweep(out, LABELS)
    md.clear_cache(out / _CACHE)  # what runs before per-split caches left
    cache_dir = out / _CACHE / stem  # one per split: runs of other splits into this folder may be under way
    table = md.read_metadata(meta_path, cache_dir=cache_dir)
    meta_sha = md.metadata_sha256(table)

    rows = md.select_rows(table, splits)
    if len(rows) == 0:
        raise BioscanError(f"split {split!r} has no records in {meta_path}")
    sizes, located = source.locate(image_keys(table, rows), options.progress)
    rows, sizes, located, skipped = _drop_missing(table, split, source, rows, sizes, located, options.skip_missing)
    # The lengths of every barcode, chunk by chunk: 8 bytes a record, not a copy of the barcodes.
    lengths = pc.fill_null(pc.binary_length(table.column("dna_barcode")), 0)
    dna_bytes = columns.column_numpy(lengths, np.int64)[rows]

    order = np.random.default_rng(options.seed).permutation(len(rows))  # every shard a mix of taxa
    rows, located = rows[order], located[order]
    slices = plan_shards((sizes + dna_bytes)[order] + _SAMPLE_OVERHEAD, options.maxcount, options.maxsize)
    fingerprint = _fingerprint(
        metadata_sha256=meta_sha, split=splits, package=options.package, seed=options.seed,
        maxcount=options.maxcount, maxsize=options.maxsize, plan=[rows[s] for s in slices],
    )
    return SplitPlan(split, splits, root, out / stem, meta_path, meta_sha, md.cache_path(meta_sha, cache_dir),
                     source, rows, located, slices, [f"{stem}-{i:06d}.tar" for i in range(len(slices))],
                     fingerprint, skipped, md.label_values(table))


def _drop_missing(table, split, source, rows, sizes, located, skip_missing: bool) -> tuple:
    """The records that have an image, and the sorted processids of those that do not.

    Without ``skip_missing`` a record without an image is an error naming it.
    """
    missing = sizes < 0
    if not missing.any():
        return rows, sizes, located, []
    pids = columns.take_rows(table, rows[missing], ["processid"]).column(0).to_pylist()
    if not skip_missing:
        shown = ", ".join(pids[:5]) + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")
        raise BioscanError(
            f"{len(pids)} record(s) of split {split!r} have no image in {source.where()}: {shown} "
            "(pass --skip-missing to shard without them; they are then listed in a report)"
        )
    if missing.all():  # skipping every record would "succeed" with 0 shards: surely not what was meant
        raise BioscanError(
            f"split {split!r} would be empty: none of its {len(pids)} record(s) has an image in {source.where()} "
            "(wrong --package or --images?); an empty split is not written, even with --skip-missing"
        )
    return rows[~missing], sizes[~missing], located[~missing], sorted(pids)


def write_shards(plan: SplitPlan, options: ShardOptions) -> tuple[list[ShardInfo], int]:
    """Stage 2: write the shards of the plan not already finished; ``(every shard, how many written)``."""
    folder = plan.folder
    _prepare_folder(folder, plan.fingerprint, options.overwrite)
    write_json(folder / _PLAN, {"fingerprint": plan.fingerprint, "shards": plan.counts})
    if plan.skipped:
        with atomic.atomic_open(folder / MISSING_REPORT, "w", encoding="utf-8") as f:
            f.write("".join(p + "\n" for p in plan.skipped))
    finished = _finished(folder, plan.fingerprint, plan.counts, plan.labels)
    todo = [(name, s) for name, s in zip(plan.names, plan.slices) if name not in finished]
    # Made as the pool asks for them: the image paths of every shard at once would be
    # a Python string per record of the split (~0.5 GB for pretrain).
    tasks = ((str(folder), name, plan.rows[s], plan.source.task_images(plan.located[s])) for name, s in todo)
    writers.run(tasks, len(todo), finished, split=plan.split, records=len(plan.rows), cache=plan.cache,
                labels=plan.labels, log=folder / _DONE, workers=options.workers, progress=options.progress)
    return [finished[name] for name in plan.names], len(todo)


def describe(plan: SplitPlan, shards: list[ShardInfo], options: ShardOptions) -> dict:
    """Stage 3: write ``labels.json`` beside the split folder, the split's ``manifest.json``,
    then remove the run's own files (the run log, the metadata cache)."""
    write_json(labels_path(plan.folder), {"format": FORMAT, "format_version": FORMAT_VERSION,
                                          "metadata_sha256": plan.meta_sha, "ranks": plan.labels})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": plan.split,
        "splits": list(plan.splits),
        "source": {
            "root": str(plan.root.resolve()),
            "package": options.package,
            "metadata": str(plan.meta_path.resolve()),
            "metadata_sha256": plan.meta_sha,
            **plan.source.source(),
        },
        "seed": options.seed,
        "maxcount": options.maxcount,
        "maxsize": options.maxsize,
        "plan": plan.fingerprint,
        "num_samples": int(len(plan.rows)),
        "skipped_missing_image": plan.skipped,
        "shards": [asdict(s) for s in shards],
    }
    write_json(plan.folder / MANIFEST, manifest)
    for path in (plan.folder / _DONE, plan.folder / _PLAN):
        path.unlink(missing_ok=True)
    _remove_cache(plan.folder.parent, plan.folder.name)  # cheap to rebuild, and as large as the CSV
    return manifest


def _remove_cache(out: Path, stem: str) -> None:
    """Remove the split's metadata cache, and ``OUT/.cache`` once no other split's is there."""
    md.clear_cache(out / _CACHE / stem)
    with suppress(OSError):
        (out / _CACHE).rmdir()


def shard_split(
    root: str | os.PathLike | None = None,
    split: str = "pretrain",
    *,
    package: str = DEFAULT_PACKAGE,
    out: str | os.PathLike = "shards",
    metadata: str | os.PathLike | None = None,
    images=None,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    seed: int = 0,
    workers: int | None = None,
    skip_missing: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log=print,
    storage_options: dict | None = None,
    staging: str | os.PathLike | None = None,
) -> ShardSummary:
    """Pack one split (or union of splits) of a dataset root into WebDataset shards.

    Parameters
    ----------
    root : str or path-like, optional
        Dataset root (the folder holding ``bioscan5m/``). Defaults to
        ``$BIOSCAN5M_ROOT``, then to the bundled demo dataset.
    split : str
        A split, an ``a+b`` union, ``seen``, ``unseen``, ``all`` or ``validation``.
    package : str
        Image package: ``original_full``, ``cropped``, ``original_256`` or ``cropped_256``.
    out : str or path-like
        Output folder; shards go to ``out/<split>/``, ``labels.json`` to ``out/``.
        An fsspec URL (``s3://bucket/shards``, ``gs://``...) shards into a local
        ``staging`` folder, then uploads (:func:`bioscan_io.storage.publish`).
    metadata : str or path-like, optional
        A metadata CSV or JSON-LD file to use instead of the root's.
    images : str, path-like or list of them, optional
        Where the images are: the package's image folder, or one or more of its
        zip archives (e.g. every ``BIOSCAN_5M_original_full.0*.zip`` part), read
        without extracting. Default: ``ROOT/bioscan5m/images/{package}``, or, when
        that folder does not exist, the package's published archives found at
        ``ROOT`` or ``ROOT/bioscan5m``. The shards are the same bytes either way.
    maxcount, maxsize : int
        Most samples, and most (estimated) bytes, per shard.
    seed : int
        Seed of the one pre-shuffle of the records.
    workers : int, optional
        Processes writing shards in parallel (default: the number of CPUs, at most 8).
    skip_missing : bool
        Shard the records that have an image and list the others in
        ``missing_images.txt``, instead of refusing.
    overwrite : bool
        Replace shards left in the split folder by a run with other inputs.
    progress : bool, optional
        Show progress bars on stderr; default: when stderr is a terminal (not into a
        log file), as the command line does and as :func:`bioscan_io.verify.verify_split`.
    log : callable
        Receives the messages meant for the user.
    storage_options : dict, optional
        Options of the fsspec filesystem of a remote ``out`` (``endpoint_url``, ``key``...).
    staging : str or path-like, optional
        Local folder for a remote ``out`` (default: one per URL under the temporary
        folder, kept until the upload finishes, so a killed run resumes).

    Returns
    -------
    ShardSummary

    Raises
    ------
    BioscanError
        On a missing root or metadata, an unknown split or package, bad metadata, no
        image source, a bad zip archive, records without an image (unless ``skip_missing``,
        and always when none has one), an image that is not a JPEG, an output folder that
        cannot be written, or one holding another run's shards (unless ``overwrite``),
        a split folder another run is writing (``OUT/.SPLIT.lock``), an argument out of
        range, or an unusable remote ``out``. ``out`` is left as found, but for the
        shards finished (the rerun reuses them).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    options = ShardOptions(package, metadata, images, maxcount, maxsize, seed, workers, skip_missing, overwrite,
                           progress)
    _check_options(split, options)
    if not str(out).strip():
        raise BioscanError("the output folder is an empty path; name one (--out shards), or '.' for this folder")
    if not storage.is_url(out):
        if storage_options:
            raise BioscanError(f"storage options ({', '.join(storage_options)}) are for a remote output "
                               f"(s3://..., gs://...), but {out} is a local folder")
        return _shard_local(root, split, Path(out), options, log)
    storage.check_destination(str(out), storage_options)  # an unknown scheme fails now, not after the sharding
    # Remote: shard into a local staging folder, then upload shards first, manifest last.
    local = Path(staging) if staging is not None else storage.staging_folder(str(out))
    summary = _shard_local(root, split, local, options, log)
    name = split_folder_name(split)
    uploaded = storage.publish(publish_order(local, name), str(out), storage_options)
    summary.folder = str(out) if str(out).startswith("pipe:") else storage.join(str(out), name)
    shards = sum(1 for n in uploaded if n.endswith(".tar"))
    log(f"uploaded {plural(shards, 'shard')} of {summary.shards} to {summary.folder}")
    shutil.rmtree(local / name, ignore_errors=True)
    return summary


#: The least value of each whole-number option.
_LEAST = {"maxcount": 1, "maxsize": 1, "workers": 1, "seed": 0}


def _check_options(split: str, options: ShardOptions) -> None:
    """Refuse what no run could use, before anything is read or written."""
    expand_split(split)
    if options.package not in PACKAGES:
        raise BioscanError(f"unknown image package {options.package!r}; valid packages are {', '.join(PACKAGES)}")
    for name, least in _LEAST.items():
        value = getattr(options, name)
        if value is None and name == "workers":
            continue  # the default: one per CPU
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            kind = "a whole number >= 0" if least == 0 else "a positive whole number"
            raise BioscanError(f"{name} must be {kind}; got {value!r}")


def _shard_local(root, split: str, out: Path, options: ShardOptions, log) -> ShardSummary:
    """:func:`shard_split` into a local folder: the three stages, under the split's lock.

    Only one run at a time writes a split folder (:func:`atomic.exclusive`): a second
    is refused on one line naming the first. A run that fails leaves ``out`` as it
    found it, but for the shards it finished (:func:`_undo`, still under the lock, so
    it removes nothing of another run's); a file system error is a BioscanError
    naming the path.
    """
    started = time.perf_counter()
    stem = split_folder_name(split)
    folder = out / stem
    if atomic.check_writable(out, "output folder"):  # before anything is written
        atomic.check_writable(folder, "split folder")
    created = atomic.missing_folders(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        busy = f"another bioscan-shard run (process {{pid}}) is writing {folder}; wait for it to end, or shard " \
               "into another --out"
        with atomic.exclusive(out / f".{stem}.lock", busy):
            try:
                plan = plan_split(root, split, out, options, log)
                shards, written = write_shards(plan, options)
                describe(plan, shards, options)
            except BaseException:  # Ctrl-C too: only a kill may leave litter, and the next run sweeps it
                _undo(out, folder)
                raise
    except BaseException as exc:
        for path in created:  # once the lock file is gone; rmdir fails on a folder holding anything
            with suppress(OSError):
                path.rmdir()
        if isinstance(exc, OSError):
            path = exc.filename2 or exc.filename  # a rename's target: its source is a temporary
            where = f"{path}: " if path else ""
            cause = (exc.strerror or str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise BioscanError(f"sharding into {out} failed: {where}{cause}") from None
        raise
    return ShardSummary(
        split=split, folder=str(plan.folder), records=int(len(plan.rows)), shards=len(shards),
        bytes=sum(s.bytes for s in shards), written=written, reused=len(shards) - written,
        skipped=plan.skipped, seconds=time.perf_counter() - started,
    )


def _undo(out: Path, folder: Path) -> None:
    """After a failed or interrupted run: remove what it made that a rerun does not reuse.

    Shards it finished stay, with the run log that names them, so that the rerun
    resumes (as after a kill); temporaries, the split's metadata cache and a run log
    without shards go (the folders the run created, once empty, go after its lock).
    Never raises: the error that stopped the run is the one to report.
    """
    with suppress(OSError):
        if folder.is_dir():
            atomic.sweep(folder)  # the temporaries of writers stopped mid-shard
            if not any(folder.glob("*.tar")):
                for name in (_PLAN, _DONE, MISSING_REPORT):
                    (folder / name).unlink(missing_ok=True)
    with suppress(OSError):
        _remove_cache(out, folder.name)

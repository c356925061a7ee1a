"""Plan, write, resume and describe WebDataset shards of one split (SPEC section 2).

The job runs as a list of stages, data flowing one way::

    metadata (Arrow, memory-mapped) -> rows of the split -> image check
        -> seeded shuffle -> shard plan -> shards written in parallel
        -> manifest.json (+ labels.json beside the split folders)

A shard is written under a temporary name and renamed only once complete and
synced, and every finished shard is logged, so a run that is killed and rerun
redoes nothing that was finished and never leaves a partial shard behind.
Shards are byte-reproducible: the same inputs and options give the same bytes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from . import metadata as md
from .schema import (
    DEFAULT_PACKAGE,
    METADATA_CSV,
    METADATA_JSONLD,
    PACKAGES,
    ROOT_ENV,
    BioscanError,
    expand_split,
    image_relpath,
    split_folder_name,
)

FORMAT = "bioscan-io/shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.json"
MISSING_REPORT = "missing_images.txt"
_PLAN = ".plan.json"
_DONE = ".done.jsonl"
_CACHE = ".cache"

#: Defaults sized for the full release: ~10 KB a cropped_256 sample gives ~100 MB
#: shards and ~470 of them for pretrain; the byte bound caps the full-size packages.
DEFAULT_MAXCOUNT = 10_000
DEFAULT_MAXSIZE = 1 << 30
#: Every member gets this mtime (the dataset's release date) so shards are reproducible.
TAR_MTIME = 1_718_236_800
#: Estimated bytes of a sample's .json member and three tar headers, for planning.
_SAMPLE_OVERHEAD = 3 * 512 + 1024


@dataclass
class ShardInfo:
    """One finished shard, as the manifest lists it."""

    name: str
    count: int
    bytes: int
    sha256: str


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
            f"{self.split}: {self.records} records in {self.shards} shard(s), "
            f"{self.bytes / 1e6:.1f} MB, at {self.folder} "
            f"({self.written} written, {self.reused} already done; "
            f"{self.seconds:.1f} s, {rate:,.0f} records/s)"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} record(s) without an image skipped, listed in {MISSING_REPORT}"
        return text


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


def find_metadata(root: Path) -> Path:
    """The metadata file under a root: the CSV, else its JSON-LD twin."""
    for rel in (METADATA_CSV, METADATA_JSONLD):
        if (root / rel).is_file():
            return root / rel
    raise BioscanError(f"no metadata under dataset root {root}: expected {root / METADATA_CSV}")


# ----------------------------------------------------------------------------- stages


def select_rows(table: pa.Table, splits: tuple[str, ...]) -> np.ndarray:
    """Row numbers of the records of ``splits``, in file order."""
    mask = pc.is_in(table.column("split"), value_set=pa.array(splits))
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False)).astype(np.int64)


def image_paths(table: pa.Table, rows: np.ndarray, root: Path, package: str) -> list[str]:
    """Each selected record's image path in the official folder layout."""
    sub = table.take(pa.array(rows))
    pids = sub.column("processid").to_pylist()
    splits = sub.column("split").to_pylist()
    chunks = sub.column("chunk").to_pylist()
    return [os.path.join(root, image_relpath(p, s, c, package)) for p, s, c in zip(pids, splits, chunks)]


def image_sizes(paths: list[str], progress: bool) -> np.ndarray:
    """Byte size of each image, -1 where the file is missing."""
    sizes = np.empty(len(paths), dtype=np.int64)
    for i, path in enumerate(tqdm(paths, desc="checking images", unit="img", disable=not progress, leave=False)):
        try:
            sizes[i] = os.stat(path).st_size
        except FileNotFoundError:
            sizes[i] = -1
    return sizes


def shuffle(rows: np.ndarray, seed: int) -> np.ndarray:
    """The one seeded pre-shuffle, so every shard holds a mix of taxa."""
    return rows[np.random.default_rng(seed).permutation(len(rows))]


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


# ----------------------------------------------------------------------------- writing

_TABLE: pa.Table | None = None


def _init_worker(cache: str) -> None:
    # Die with the parent: a killed bioscan-shard must not leave workers behind.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _init_table(cache)


class TarSink:
    """Writes ustar members straight to a file, hashing and counting the bytes.

    ``webdataset.TarWriter`` (Python's tarfile underneath) spends ~75 us building
    each member header, two thirds of the sharding time measured in
    benchmarks/test_bench_shard.py; the headers here are one template with the
    name, size and checksum filled in. The output is plain POSIX ustar, read by
    stock ``tar`` and ``webdataset``.
    """

    def __init__(self, f, mtime: int = TAR_MTIME):
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0
        head = bytearray(512)
        head[100:108] = b"0000444\0"  # mode: read-only, as webdataset writes
        head[108:116] = b"0000000\0"  # uid
        head[116:124] = b"0000000\0"  # gid
        head[136:148] = b"%011o\0" % mtime
        head[156:157] = b"0"  # regular file
        head[257:265] = b"ustar\x0000"
        head[265:272] = b"bigdata"
        head[297:304] = b"bigdata"
        self._template = bytes(head)
        # The header checksum counts its own field as spaces; add name and size per member.
        self._checksum = sum(head) + 8 * ord(" ")

    def _write(self, data) -> None:
        self.sha256.update(data)
        self.bytes += len(data)
        self.f.write(data)

    def add(self, name: str, payload: bytes) -> None:
        """Append one member."""
        raw = name.encode("utf-8")
        if len(raw) > 100:
            raise BioscanError(f"tar member name longer than 100 bytes: {name!r}")
        size = b"%011o\0" % len(payload)
        head = bytearray(self._template)
        head[: len(raw)] = raw
        head[124:136] = size
        head[148:156] = b"%06o\0 " % (self._checksum + sum(raw) + sum(size))
        self._write(b"".join((head, payload, bytes(-len(payload) % 512))))

    def close(self) -> None:
        """End the archive: two zero blocks, then padding to a 10240-byte record like tar."""
        self._write(bytes(1024))
        if self.bytes % 10240:
            self._write(bytes(10240 - self.bytes % 10240))


def _read_image(path: str, pid: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BioscanError(f"cannot read the image of record {pid}: {path}: {exc.strerror}") from None


def write_shard(task: tuple) -> ShardInfo:
    """Write one shard: ``{key}.dna``, ``{key}.jpg``, ``{key}.json`` per record.

    Runs in a worker process (the metadata table is the worker's memory map).
    """
    folder, name, rows, paths = task
    records = _TABLE.take(pa.array(rows)).to_pylist()
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            tar = TarSink(f)
            for rec, path in zip(records, paths):
                pid = rec["processid"]
                # Members in name order (.dna, .jpg, .json), as webdataset writes them.
                tar.add(pid + ".dna", (rec["dna_barcode"] or "").encode("utf-8"))
                tar.add(pid + ".jpg", _read_image(path, pid))
                tar.add(pid + ".json", json.dumps(rec, ensure_ascii=False).encode("utf-8"))
            tar.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ShardInfo(name, len(records), tar.bytes, tar.sha256.hexdigest())


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hash_existing(path: Path, count: int) -> ShardInfo:
    return ShardInfo(path.name, count, path.stat().st_size, md.file_sha256(path))


def _finished(folder: Path, fingerprint: str, plan: dict[str, int]) -> dict[str, ShardInfo]:
    """Shards of this plan already on disk, from the manifest and the run log."""
    known: dict[str, ShardInfo] = {}
    manifest = folder / MANIFEST
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        if doc.get("plan") == fingerprint:
            known.update({s["name"]: ShardInfo(**s) for s in doc["shards"]})
    done = folder / _DONE
    if done.is_file():
        for line in done.read_text().splitlines():
            try:
                info = ShardInfo(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a kill
            known[info.name] = info
    finished = {}
    for name, count in plan.items():
        path = folder / name
        if not path.is_file():
            continue
        info = known.get(name)
        if info is None or info.bytes != path.stat().st_size:
            # Renamed (so complete) but the kill came before it was logged.
            info = _hash_existing(path, count)
        finished[name] = info
    return finished


def _prepare_folder(folder: Path, fingerprint: str, overwrite: bool) -> None:
    """Check the split folder holds nothing from another run; clear temporaries."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
    plan_file = folder / _PLAN
    old = json.loads(plan_file.read_text()).get("fingerprint") if plan_file.is_file() else None
    if old is None and (folder / MANIFEST).is_file():
        old = json.loads((folder / MANIFEST).read_text()).get("plan")
    if old is not None and old != fingerprint:
        if not overwrite:
            raise BioscanError(
                f"{folder} holds shards of another run (other metadata, split, package, seed or "
                "shard sizes); pass --overwrite to replace them or choose another --out"
            )
        for path in list(folder.glob("*.tar")) + [folder / MANIFEST, folder / _DONE, folder / MISSING_REPORT]:
            path.unlink(missing_ok=True)


def shard_split(
    root: str | os.PathLike | None = None,
    split: str = "pretrain",
    *,
    package: str = DEFAULT_PACKAGE,
    out: str | os.PathLike = "shards",
    metadata: str | os.PathLike | None = None,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    seed: int = 0,
    workers: int | None = None,
    skip_missing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
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
    metadata : str or path-like, optional
        A metadata CSV or JSON-LD file to use instead of the root's.
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
    progress : bool
        Show progress bars.
    log : callable
        Receives the messages meant for the user.

    Returns
    -------
    ShardSummary

    Raises
    ------
    BioscanError
        On a missing root or metadata, an unknown split or package, bad metadata,
        records without an image (unless ``skip_missing``), or a folder holding
        another run's shards (unless ``overwrite``).
    """
    started = time.perf_counter()
    splits = expand_split(split)
    if package not in PACKAGES:
        raise BioscanError(f"unknown image package {package!r}; valid packages are {', '.join(PACKAGES)}")
    if maxcount < 1 or maxsize < 1:
        raise BioscanError(f"shard bounds must be positive (maxcount={maxcount}, maxsize={maxsize})")
    root = resolve_root(root, log)
    meta_path = Path(metadata) if metadata is not None else find_metadata(root)
    out = Path(out)
    folder = out / split_folder_name(split)
    cache_dir = out / _CACHE
    table = md.read_metadata(meta_path, cache_dir=cache_dir)
    meta_sha = md.file_sha256(meta_path)

    labels = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata_sha256": meta_sha}
    labels["ranks"] = md.label_values(table)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(out / LABELS, labels)

    rows = select_rows(table, splits)
    if len(rows) == 0:
        raise BioscanError(f"split {split!r} has no records in {meta_path}")
    paths = np.array(image_paths(table, rows, root, package), dtype=object)
    sizes = image_sizes(paths, progress)
    missing = sizes < 0
    skipped = []
    if missing.any():
        pids = table.column("processid").take(pa.array(rows[missing])).to_pylist()
        if not skip_missing:
            shown = ", ".join(pids[:5]) + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")
            raise BioscanError(
                f"{len(pids)} record(s) of split {split!r} have no image in "
                f"{root / 'bioscan5m' / 'images' / package}: {shown} "
                "(pass --skip-missing to shard without them; they are then listed in a report)"
            )
        skipped = sorted(pids)
        rows, sizes, paths = rows[~missing], sizes[~missing], paths[~missing]
    lengths = pc.binary_length(table.column("dna_barcode").take(pa.array(rows)))
    dna_bytes = pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64)

    order = np.random.default_rng(seed).permutation(len(rows))
    rows, paths = rows[order], paths[order]
    sample_bytes = (sizes + dna_bytes)[order] + _SAMPLE_OVERHEAD
    slices = plan_shards(sample_bytes, maxcount, maxsize)
    plan = [rows[s] for s in slices]
    stem = split_folder_name(split)
    names = [f"{stem}-{i:06d}.tar" for i in range(len(plan))]
    fingerprint = _fingerprint(
        metadata_sha256=meta_sha, split=splits, package=package, seed=seed,
        maxcount=maxcount, maxsize=maxsize, plan=plan,
    )

    _prepare_folder(folder, fingerprint, overwrite)
    _atomic_write_json(folder / _PLAN, {"fingerprint": fingerprint, "shards": dict(zip(names, map(len, plan)))})
    if skipped:
        (folder / MISSING_REPORT).write_text("".join(p + "\n" for p in skipped))
    finished = _finished(folder, fingerprint, dict(zip(names, map(len, plan))))
    tasks = [
        (str(folder), name, rows[s], paths[s].tolist())
        for name, s in zip(names, slices)
        if name not in finished
    ]
    reused = len(finished)
    _run_tasks(tasks, finished, folder, md.cache_path(meta_path, cache_dir), len(rows), workers, progress, split)

    shards = [finished[name] for name in names]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": split,
        "splits": list(splits),
        "source": {
            "root": str(root.resolve()),
            "package": package,
            "metadata": str(meta_path.resolve()),
            "metadata_sha256": meta_sha,
        },
        "seed": seed,
        "maxcount": maxcount,
        "maxsize": maxsize,
        "plan": fingerprint,
        "num_samples": int(len(rows)),
        "skipped_missing_image": skipped,
        "shards": [asdict(s) for s in shards],
    }
    _atomic_write_json(folder / MANIFEST, manifest)
    for path in (folder / _DONE, folder / _PLAN):
        path.unlink(missing_ok=True)
    # The memory-mapped copy is cheap to rebuild and as large as the CSV.
    md.cache_path(meta_path, cache_dir).unlink(missing_ok=True)
    try:
        cache_dir.rmdir()
    except OSError:
        pass
    return ShardSummary(
        split=split,
        folder=str(folder),
        records=int(len(rows)),
        shards=len(shards),
        bytes=sum(s.bytes for s in shards),
        written=len(tasks),
        reused=reused,
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def _run_tasks(tasks, finished, folder: Path, cache: Path, total: int, workers, progress: bool, split: str) -> None:
    """Write the shards not yet finished, logging each as it completes."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=total, desc=f"sharding {split}", unit="rec", disable=not progress, file=sys.stderr)
    bar.update(sum(info.count for info in finished.values()))
    with open(folder / _DONE, "a", encoding="utf-8") as done:

        def record(info: ShardInfo) -> None:
            finished[info.name] = info
            done.write(json.dumps(asdict(info)) + "\n")
            done.flush()
            bar.update(info.count)

        if workers == 1:
            _init_table(cache)
            for task in tasks:
                record(write_shard(task))
        else:
            with multiprocessing.get_context().Pool(workers, _init_worker, (str(cache),)) as pool:
                for info in pool.imap_unordered(write_shard, tasks):
                    record(info)
    bar.close()


def _init_table(cache: Path) -> None:
    global _TABLE
    _TABLE = md.open_cached(cache)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a split folder (or the manifest file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise BioscanError(f"no shard manifest at {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BioscanError(f"unreadable shard manifest {path}: {exc}") from None

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

import array
import ctypes
import hashlib
import json
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import struct
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from . import metadata as md
from . import storage
from .schema import (
    ARCHIVE_IMAGES_PREFIX,
    DATASET_DIR,
    DEFAULT_PACKAGE,
    IMAGE_ARCHIVE_PATTERN,
    IMAGES_DIR,
    METADATA_CSV,
    METADATA_JSONLD,
    PACKAGES,
    ROOT_ENV,
    BioscanError,
    expand_split,
    image_subpath,
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


# ----------------------------------------------------------------------------- image sources
#
# A record's image comes from the package folder (the extracted layout) or straight
# out of the published zip archives. Either way the main process locates every image
# once -- its size, for the plan, and a small locator -- and each shard task carries
# the locators of its own records to the writer process that reads them.


class FolderImages:
    """Images in the official folder layout: ``{folder}/{split}/[{chunk}/]{processid}.jpg``.

    Parameters
    ----------
    folder : pathlib.Path
        The package folder (``ROOT/bioscan5m/images/{package}``).
    recorded : bool
        Name the folder in the manifest's ``source`` (it is not the root's own).
    """

    def __init__(self, folder: Path, recorded: bool = False):
        self.folder, self.recorded = folder, recorded

    def where(self) -> str:
        """The folder, for messages."""
        return str(self.folder)

    def source(self) -> dict:
        """What the manifest's ``source`` records beyond the root and package."""
        return {"images": [str(self.folder.resolve())]} if self.recorded else {}

    def locate(self, keys: list[str], progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each image's byte size (-1 where missing) and path."""
        paths = np.array([os.path.join(self.folder, key) for key in keys], dtype=object)
        return image_sizes(paths, progress), paths

    def task_images(self, located: np.ndarray) -> tuple:
        """The part of a shard task that tells its writer where the images are."""
        return ("folder", located.tolist())


#: Where an image lies in the archives, from their central directories: which archive,
#: the offset of its local header, its stored and real sizes, compression method,
#: CRC-32 and name length (a guess at the local header's size).
_MEMBER = np.dtype([("archive", "<u2"), ("offset", "<u8"), ("csize", "<u8"), ("size", "<u8"),
                    ("method", "<u2"), ("crc", "<u4"), ("nlen", "<u2")])


class ZipImages:
    """Images read straight out of one or several zip archives, never extracted.

    Each archive's central directory is indexed once, here; the writer processes
    then read each image with one ``os.pread`` at its local header.

    Parameters
    ----------
    archives : list of path-like
        The archives (all parts of a package, or some of them).
    package : str
        The image package; members are found under ``[bioscan5m/]images/{package}/``.
    progress : bool
        Show a progress bar while indexing.

    Raises
    ------
    BioscanError
        If an archive is missing, not a zip archive, truncated or corrupt.
    """

    def __init__(self, archives: list, package: str, progress: bool = False):
        self.archives = [str(Path(a).expanduser().resolve()) for a in archives]
        keys, members = [], []
        for i, path in enumerate(tqdm(self.archives, desc="indexing zip archives", unit="archive",
                                      disable=not progress, leave=False)):
            names, found = index_archive(path, package)
            found["archive"] = i
            keys.append(names)
            members.append(found)
        self.keys = pa.concat_arrays(keys) if keys else pa.array([], pa.large_string())
        self.members = np.concatenate(members) if members else np.empty(0, _MEMBER)

    def where(self) -> str:
        """The archives, for messages."""
        folders = sorted({os.path.dirname(a) for a in self.archives})
        names = ", ".join(os.path.basename(a) for a in self.archives)
        return f"the zip archive(s) {names} (in {', '.join(folders)})"

    def source(self) -> dict:
        """What the manifest's ``source`` records beyond the root and package."""
        return {"images": list(self.archives)}

    def locate(self, keys: list[str], progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each image's byte size (-1 where missing) and member locator."""
        # A hash join in Arrow: no Python dict of millions of member names.
        index = pc.index_in(pa.array(keys, pa.large_string()), value_set=self.keys)
        index = pc.fill_null(index, -1).to_numpy(zero_copy_only=False)
        found = index >= 0
        located = self.members[np.where(found, index, 0)] if len(self.members) else np.zeros(len(keys), _MEMBER)
        return np.where(found, located["size"].astype(np.int64), -1), located

    def task_images(self, located: np.ndarray) -> tuple:
        """The part of a shard task that tells its writer where the images are."""
        return ("zip", self.archives, located)


def image_keys(table: pa.Table, rows: np.ndarray) -> list[str]:
    """Each selected record's image path under its package folder (``split/[chunk/]pid.jpg``)."""
    sub = table.select(["processid", "split", "chunk"]).take(pa.array(rows))
    pids, splits, chunks = (sub.column(c).to_pylist() for c in ("processid", "split", "chunk"))
    return [image_subpath(p, s, c) for p, s, c in zip(pids, splits, chunks)]


def open_images(root: Path, package: str, images=None, progress: bool = False) -> FolderImages | ZipImages:
    """Where the images of ``package`` come from.

    ``images`` when given (one folder, or zip archives); else the root's package
    folder; else, when that folder does not exist, the package's published zip
    archives at the root (or in ``ROOT/bioscan5m``), as downloaded.
    """
    if images is not None:
        return _given_images(images, package, progress)
    folder = root / IMAGES_DIR / package
    if not folder.is_dir():
        archives = find_archives(root, package)
        if archives:
            return ZipImages(archives, package, progress)
    return FolderImages(folder)


def find_archives(root: Path, package: str) -> list[Path]:
    """The published zip archives of ``package`` at ``root`` or ``root/bioscan5m``, by name."""
    # The full pattern, not a prefix glob: BIOSCAN_5M_cropped* also matches cropped_256.
    pattern = re.compile(IMAGE_ARCHIVE_PATTERN.format(package=re.escape(package)))
    found = []
    for folder in (root, root / DATASET_DIR):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    return found


def _given_images(images, package: str, progress: bool) -> FolderImages | ZipImages:
    """The image source the user named: one folder, or one or more zip archives."""
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = [Path(p).expanduser() for p in items]
    if not paths:
        raise BioscanError("no image source given: name a folder, or one or more zip archives")
    for path in paths:
        if not path.exists():
            raise BioscanError(f"image source not found: {path}")
    if not any(path.is_dir() for path in paths):
        return ZipImages(paths, package, progress)
    if len(paths) > 1:
        raise BioscanError(f"images: give one folder, or zip archives, not both: {', '.join(map(str, paths))}")
    # A dataset root (or an extracted archive) is accepted for its package folder.
    folder = paths[0]
    for inner in (folder / IMAGES_DIR / package, folder / "images" / package):
        if inner.is_dir():
            return FolderImages(inner, recorded=True)
    return FolderImages(folder, recorded=True)


# Zip structures (APPNOTE.TXT 4.3), as the standard library's zipfile names them.
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header
_LOCAL = 30  # bytes of a local file header before its name and extra field
#: Bytes read past a member's name on the guess that its local extra field fits in
#: them, so that one read usually fetches the local header and the data together.
_EXTRA_SLACK = 64
_ZIP64 = 0xFFFFFFFF


def _corrupt(path: str, what: str) -> BioscanError:
    return BioscanError(f"corrupt or truncated zip archive {path}: {what}")


def index_archive(path: str, package: str) -> tuple[pa.Array, np.ndarray]:
    """The images of ``package`` in one zip archive, from its central directory.

    Returns
    -------
    keys : pyarrow.Array
        Each member's path under ``[bioscan5m/]images/{package}/`` (large_string).
    members : numpy.ndarray
        Their locators (dtype ``_MEMBER``; the ``archive`` field left 0).
    """
    try:
        with open(path, "rb") as f:
            count, offset, size = _central_directory(f.fileno(), path)
            # Parsed in place from a memory map: the central directory of a
            # 5M-member archive is ~0.5 GB.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _walk_central_directory(mm, offset, size, count, path, package)
    except OSError as exc:
        raise BioscanError(f"cannot read zip archive {path}: {exc.strerror or exc}") from None


def _central_directory(fd: int, path: str) -> tuple[int, int, int]:
    """(entries, offset, size) of an archive's central directory, zip64 or not."""
    end = os.fstat(fd).st_size
    tail_len = min(end, _EOCD.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    tail = os.pread(fd, tail_len, end - tail_len)
    at = len(tail) - _EOCD.size if tail[-_EOCD.size:-_EOCD.size + 4] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise _corrupt(path, "no end-of-central-directory record (not a zip archive, or cut short)")
    _, disk, _, _, count, size, offset, _ = _EOCD.unpack_from(tail, at)
    if count == 0xFFFF or _ZIP64 in (size, offset):
        locator_at = end - tail_len + at - _EOCD64_LOCATOR.size
        locator = os.pread(fd, _EOCD64_LOCATOR.size, max(locator_at, 0))
        if locator_at < 0 or locator[:4] != b"PK\x06\x07":
            raise _corrupt(path, "zip64 end-of-central-directory locator missing")
        record = os.pread(fd, _EOCD64.size, _EOCD64_LOCATOR.unpack(locator)[2])
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            raise _corrupt(path, "zip64 end-of-central-directory record missing")
        fields = _EOCD64.unpack(record)
        disk, count, size, offset = fields[4], fields[7], fields[8], fields[9]
    if disk != 0:
        raise BioscanError(f"{path} is one volume of a spanned (multi-disk) zip archive; join the volumes first")
    if offset + size > end:
        raise _corrupt(path, "the central directory runs past the end of the file")
    return count, offset, size


def _walk_central_directory(cd, start: int, size: int, count: int, path: str, package: str):
    """Keys and locators of the ``.jpg`` members of ``package`` among ``count`` entries."""
    prefixes = [(ARCHIVE_IMAGES_PREFIX + package + "/").encode(), f"images/{package}/".encode()]
    # Names and columns in compact buffers, no Python object kept per member: about
    # 2 us and 100 bytes a member, so the 5M members of cropped_256 index in seconds.
    names, ends = bytearray(), array.array("q", [0])
    cols = {f: array.array(t) for f, t in (("offset", "Q"), ("csize", "Q"), ("size", "Q"),
                                            ("method", "H"), ("crc", "L"), ("nlen", "H"))}
    unpack, pos, end = _CENTRAL.unpack_from, start, start + size
    for n in range(count):
        if pos + _CENTRAL.size > end:
            raise _corrupt(path, f"the central directory ends after {n} of {count} entries")
        (sig, _, _, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen,
         _, _, _, offset) = unpack(cd, pos)
        if sig != b"PK\x01\x02":
            raise _corrupt(path, f"central directory entry {n} is damaged")
        name_at = pos + _CENTRAL.size
        pos = name_at + nlen + elen + clen
        name = cd[name_at:name_at + nlen]
        if not name.endswith(b".jpg"):
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            continue
        if flags & 1:
            raise BioscanError(f"zip archive {path}: member {name.decode('utf-8', 'replace')} is encrypted")
        if _ZIP64 in (csize, usize, offset):
            usize, csize, offset = _zip64_fields(cd[name_at + nlen:name_at + nlen + elen], usize, csize, offset, path)
        key = name[len(prefix):]
        if not flags & 0x800 and not key.isascii():
            key = key.decode("cp437").encode("utf-8")  # a legacy name, in zip's original code page
        names += key
        ends.append(len(names))
        for col, value in zip(cols.values(), (offset, csize, usize, method, crc, nlen)):
            col.append(value)
    keys = pa.Array.from_buffers(pa.large_string(), len(ends) - 1, [None, pa.py_buffer(ends), pa.py_buffer(names)])
    try:
        keys.validate(full=True)
    except pa.ArrowInvalid:
        raise _corrupt(path, "a member name is not valid UTF-8") from None
    members = np.zeros(len(keys), _MEMBER)
    for field_name, col in cols.items():
        members[field_name] = col
    return keys, members


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int, path: str) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field, for those saturated at 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, at)
        if tag == 1:
            values = list(struct.unpack_from(f"<{min(length, len(extra) - at - 4) // 8}Q", extra, at + 4))
            try:  # only the saturated fields are there, in this order
                usize = values.pop(0) if usize == _ZIP64 else usize
                csize = values.pop(0) if csize == _ZIP64 else csize
                offset = values.pop(0) if offset == _ZIP64 else offset
            except IndexError:
                break
            return usize, csize, offset
        at += 4 + length
    raise _corrupt(path, "a zip64 member lacks its sizes or offset in a zip64 extra field")


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


class _Archives:
    """The zip archives one shard task reads from, opened on first use and closed together."""

    def __init__(self, paths: list[str]):
        self.paths, self.fds, self.zips = paths, {}, {}

    def read(self, i: int, n: int, offset: int) -> bytes:
        """``n`` bytes of archive ``i`` from ``offset`` (fewer at the end of the file)."""
        try:
            if i not in self.fds:
                self.fds[i] = os.open(self.paths[i], os.O_RDONLY)
            return os.pread(self.fds[i], n, offset)
        except OSError as exc:
            raise BioscanError(f"cannot read zip archive {self.paths[i]}: {exc.strerror or exc}") from None

    def via_zipfile(self, i: int, offset: int, pid: str) -> bytes:
        """A member compressed other than by deflate (bzip2, lzma), through the standard library."""
        if i not in self.zips:
            try:
                zf = zipfile.ZipFile(self.paths[i])
            except (OSError, zipfile.BadZipFile) as exc:
                raise _corrupt(self.paths[i], str(exc)) from None
            self.zips[i] = zf, {info.header_offset: info for info in zf.infolist()}
        zf, by_offset = self.zips[i]
        try:
            return zf.read(by_offset[offset])
        except Exception as exc:  # zipfile raises many kinds: BadZipFile, NotImplementedError, LZMAError...
            raise _corrupt(self.paths[i], f"the image of record {pid}: {exc}") from None

    def close(self) -> None:
        """Close every archive opened."""
        for fd in self.fds.values():
            os.close(fd)
        for zf, _ in self.zips.values():
            zf.close()


def _read_member(archives: _Archives, member: tuple, pid: str) -> bytes | memoryview:
    """One image out of an archive, stored or inflated, checked against its CRC-32."""
    i, offset, csize, size, method, crc, nlen = member
    path = archives.paths[i]
    # One read fetches the local header and the data, unless the local extra field
    # is longer than the slack; zipfile's open() costs several reads and seeks.
    buf = archives.read(i, _LOCAL + nlen + _EXTRA_SLACK + csize, offset)
    if len(buf) < _LOCAL or buf[:4] != b"PK\x03\x04":
        raise _corrupt(path, f"no local header for the image of record {pid} at byte {offset}")
    start = _LOCAL + sum(struct.unpack_from("<2H", buf, 26))  # the local name and extra field lengths
    data = memoryview(buf)[start:start + csize]
    if len(data) < csize:
        data = archives.read(i, csize, offset + start)
        if len(data) < csize:
            raise _corrupt(path, f"the image of record {pid} is cut short")
    if method == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompress(data, -15)  # a raw deflate stream, as zipfile inflates it
        except zlib.error as exc:
            raise _corrupt(path, f"the image of record {pid} does not inflate: {exc}") from None
    elif method != zipfile.ZIP_STORED:
        data = archives.via_zipfile(i, offset, pid)
    if len(data) != size or zlib.crc32(data) != crc:
        raise _corrupt(path, f"the image of record {pid} fails its CRC-32 check")
    return data


@contextmanager
def image_reader(images: tuple):
    """``read(i, pid)``: the i-th image of a shard task, from its folder or its archives."""
    if images[0] == "folder":
        paths = images[1]
        yield lambda i, pid: _read_image(paths[i], pid)
        return
    _, paths, located = images
    members = located.tolist()  # plain tuples: field access on numpy records is slow
    archives = _Archives(paths)
    try:
        yield lambda i, pid: _read_member(archives, members[i], pid)
    finally:
        archives.close()


def write_shard(task: tuple) -> ShardInfo:
    """Write one shard: ``{key}.dna``, ``{key}.jpg``, ``{key}.json`` per record.

    Runs in a worker process (the metadata table is the worker's memory map).
    """
    folder, name, rows, images = task
    records = _TABLE.take(pa.array(rows)).to_pylist()
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f, image_reader(images) as read_image:
            tar = TarSink(f)
            for i, rec in enumerate(records):
                pid = rec["processid"]
                # Members in name order (.dna, .jpg, .json), as webdataset writes them.
                tar.add(pid + ".dna", (rec["dna_barcode"] or "").encode("utf-8"))
                tar.add(pid + ".jpg", read_image(i, pid))
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
    images=None,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    seed: int = 0,
    workers: int | None = None,
    skip_missing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
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
        ``staging`` folder, then uploads (:func:`bioscan_io.storage.publish_split`).
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
    progress : bool
        Show progress bars.
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
        On a missing root or metadata, an unknown split or package, bad metadata,
        a missing, truncated or corrupt zip archive, records without an image
        (unless ``skip_missing``), or a folder holding another run's shards
        (unless ``overwrite``).
    """
    if storage.is_url(out):
        local = Path(staging) if staging is not None else storage.staging_folder(str(out))
        summary = shard_split(root, split, package=package, out=local, metadata=metadata, maxcount=maxcount,
                              maxsize=maxsize, seed=seed, workers=workers, skip_missing=skip_missing,
                              overwrite=overwrite, progress=progress, log=log, images=images)
        name = split_folder_name(split)
        summary.folder, _ = storage.publish_split(local, name, str(out), storage_options, log)
        shutil.rmtree(local / name, ignore_errors=True)
        return summary
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
    source = open_images(root, package, images, progress)
    sizes, located = source.locate(image_keys(table, rows), progress)
    missing = sizes < 0
    skipped = []
    if missing.any():
        pids = table.column("processid").take(pa.array(rows[missing])).to_pylist()
        if not skip_missing:
            shown = ", ".join(pids[:5]) + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")
            raise BioscanError(
                f"{len(pids)} record(s) of split {split!r} have no image in "
                f"{source.where()}: {shown} "
                "(pass --skip-missing to shard without them; they are then listed in a report)"
            )
        skipped = sorted(pids)
        rows, sizes, located = rows[~missing], sizes[~missing], located[~missing]
    lengths = pc.binary_length(table.column("dna_barcode").take(pa.array(rows)))
    dna_bytes = pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64)

    order = np.random.default_rng(seed).permutation(len(rows))
    rows, located = rows[order], located[order]
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
        (str(folder), name, rows[s], source.task_images(located[s]))
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
            **source.source(),
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

"""Where a package's images come from: the extracted folders, or the published zip archives.

A record's image comes from the package folder (the extracted layout) or straight
out of the published zip archives, never extracted. Either way the main process
locates every image once -- its size, for the shard plan, and a small locator --
and each shard task carries the locators of its own records to the writer
process, which reads them with :func:`image_reader`. ``verify --images`` reads
the same sources to compare every image with its shard copy.
"""

from __future__ import annotations

import array
import functools
import mmap
import os
import re
import struct
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from .images import EOI_SLACK, has_eoi
from .columns import fixed_width, take_rows
from .schema import (ARCHIVE_IMAGES_PREFIX, DATASET_DIR, IMAGE_ARCHIVE_PATTERN, IMAGE_ARCHIVE_STEM, IMAGES_DIR,
                     BioscanError)

__all__ = ["FolderImages", "ZipImages", "open_images", "find_archives", "archive_names", "image_keys",
           "image_sizes", "index_archive", "image_reader", "check_jpeg"]

#: The bytes every JPEG starts with: the start-of-image marker, then the next marker's FF.
JPEG_SOI = b"\xff\xd8\xff"


def image_sizes(paths, count: int, progress: bool) -> np.ndarray:
    """Byte size of each of ``count`` images (``paths`` may be a generator), -1 where the file is missing."""
    sizes = np.empty(count, dtype=np.int64)
    for i, path in enumerate(tqdm(paths, total=count, desc="checking images", unit="img", disable=not progress,
                                  leave=False)):
        try:
            sizes[i] = os.stat(path).st_size
        except FileNotFoundError:
            sizes[i] = -1
    return sizes


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

    def locate(self, keys, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each image's byte size (-1 where missing) and path under the folder.

        The paths are fixed-width bytes (``columns.fixed_width``): for the 4.7M
        images of pretrain, ~150 MB rather than a Python string each.
        """
        located = fixed_width(keys)
        base = os.path.join(os.fsencode(self.folder), b"")
        return image_sizes((base + key for key in located), len(located), progress), located

    def task_images(self, located: np.ndarray) -> tuple:
        """The part of a shard task that tells its writer where the images are."""
        return ("folder", [os.path.join(self.folder, os.fsdecode(key)) for key in located])


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

    def locate(self, keys, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each image's byte size (-1 where missing) and member locator."""
        # A hash join in Arrow: no Python dict of millions of member names.
        keys = keys.cast(pa.large_string()) if isinstance(keys, (pa.Array, pa.ChunkedArray)) \
            else pa.array(keys, pa.large_string())
        index = pc.index_in(keys, value_set=self.keys)
        index = pc.fill_null(index, -1).to_numpy(zero_copy_only=False)
        found = index >= 0
        located = self.members[np.where(found, index, 0)] if len(self.members) else np.zeros(len(keys), _MEMBER)
        return np.where(found, located["size"].astype(np.int64), -1), located

    def task_images(self, located: np.ndarray) -> tuple:
        """The part of a shard task that tells its writer where the images are."""
        return ("zip", self.archives, located)


def image_keys(table: pa.Table, rows: np.ndarray) -> pa.ChunkedArray:
    """Each selected record's image path under its package folder (``split/[chunk/]pid.jpg``).

    Built in Arrow (``schema.image_subpath``'s rule), not as a Python string per record.
    """
    sub = take_rows(table, rows, ["processid", "split", "chunk"])
    chunk = sub.column("chunk")
    chunk = pc.if_else(pc.equal(chunk, ""), pa.scalar(None, chunk.type), chunk)  # no chunk: no folder level
    text = functools.partial(pa.scalar, type=pa.large_string())
    name = pc.binary_join_element_wise(sub.column("processid"), text(".jpg"), text(""))
    return pc.binary_join_element_wise(sub.column("split"), chunk, name, text("/"), null_handling="skip")


def open_images(root: Path | None, package: str, images=None, progress: bool = False) -> FolderImages | ZipImages:
    """Where the images of ``package`` come from.

    ``images`` when given (one folder, or zip archives); else the root's package
    folder; else, when that folder does not exist, the package's published zip
    archives at the root (or in ``ROOT/bioscan5m``), as downloaded.
    """
    if images is not None:
        return _given_images(images, package, progress)
    if root is None:
        raise BioscanError(f"no images of package {package!r}: no dataset root and no --images given")
    folder = root / IMAGES_DIR / package
    if folder.is_dir():
        return FolderImages(folder)
    archives = find_archives(root, package)
    if not archives:
        raise BioscanError(
            f"no images of package {package!r}: no folder {folder}, and no archive named {archive_names(package)} "
            f"in {root} or {root / DATASET_DIR} (download the package, or pass --images)"
        )
    return ZipImages(archives, package, progress)


def find_archives(root: Path, package: str) -> list[Path]:
    """The published zip archives of ``package`` at ``root`` or ``root/bioscan5m``, by name."""
    # The full pattern, not a prefix glob: BIOSCAN_5M_cropped* also matches cropped_256.
    pattern = re.compile(IMAGE_ARCHIVE_PATTERN.format(package=re.escape(package)))
    found = []
    for folder in (root, root / DATASET_DIR):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    return found


def archive_names(package: str) -> str:
    """The names :func:`find_archives` looks for, for messages (``IMAGE_ARCHIVE_PATTERN`` in words)."""
    stem = IMAGE_ARCHIVE_STEM.format(package=package)
    return f"{stem}.zip, {stem}.NN.zip or {stem}_{{train,eval,pretrain}}[.NN].zip"


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


def _read_image(path: str, pid: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BioscanError(f"cannot read the image of record {pid}: {path}: {exc.strerror}") from None


class _Archives:
    """The zip archives one shard task reads from, opened on first use and closed together."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.fds: dict = {}
        self.zips: dict = {}

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
    data: bytes | memoryview = memoryview(buf)[start:start + csize]
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


def check_jpeg(data, pid: str, where: str):
    """``data``, if it looks like a whole JPEG: the start-of-image marker first, the end-of-image one last.

    Two slices, no decoding: a PNG, a text file or a cut download is refused at
    sharding time, naming the record and ``where`` its image came from, instead
    of failing in a training run much later.

    Raises
    ------
    BioscanError
        If the bytes are not those of a JPEG.
    """
    if bytes(data[:3]) != JPEG_SOI:
        start = bytes(data[:8]).hex(" ") or "nothing: the file is empty"
        raise BioscanError(f"the image of record {pid} is not a JPEG: {where} starts with {start}, "
                           f"not the JPEG start-of-image marker {JPEG_SOI.hex(' ')}")
    if not has_eoi(bytes(data[-EOI_SLACK:])):  # the tail only: data may be a memoryview of the archive
        raise BioscanError(f"the image of record {pid} is not a whole JPEG: {where} ({len(data)} bytes) does not "
                           "end with the JPEG end-of-image marker ff d9 (cut short?)")
    return data


@contextmanager
def image_reader(images: tuple, check: bool = False):
    """``read(i, pid)``: the i-th image of a shard task, from its folder or its archives.

    ``check=True`` refuses bytes that are not a JPEG (:func:`check_jpeg`).
    """
    if images[0] == "folder":
        paths = images[1]
        if check:
            yield lambda i, pid: check_jpeg(_read_image(paths[i], pid), pid, paths[i])
        else:
            yield lambda i, pid: _read_image(paths[i], pid)
        return
    _, paths, located = images
    members = located.tolist()  # plain tuples: field access on numpy records is slow
    archives = _Archives(paths)

    def read(i: int, pid: str):
        data = _read_member(archives, members[i], pid)
        return check_jpeg(data, pid, f"its member in zip archive {paths[members[i][0]]}") if check else data

    try:
        yield read
    finally:
        archives.close()

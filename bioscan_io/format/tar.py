"""Shards as tar files: the writer, and the one Python reader.

The writer (:class:`TarSink`) emits plain POSIX ustar, read by stock ``tar`` and
webdataset. Shards are read by the compiled header walk (``format.scan``);
:class:`TarReader` reads, with Python's ``tarfile``, what the walk does not:
shards with pax or GNU long-name headers, and ``verify``'s full read, which
needs every member and byte.
"""

from __future__ import annotations

import hashlib
import itertools
import tarfile
from dataclasses import dataclass, field

from ..schema import BioscanError
from .members import split_member_name
from .scan import ShardError

__all__ = ["TAR_MTIME", "TarSink", "Sample", "TarFault", "TarReader", "end_of_archive_fault"]

#: Every member gets this mtime (the dataset's release date) so shards are reproducible.
TAR_MTIME = 1_718_236_800


class TarSink:
    """Writes ustar members straight to a file, hashing and counting the bytes.

    ``webdataset.TarWriter`` (Python's tarfile underneath) spends ~75 us building
    each member header, two thirds of the sharding time measured in
    benchmarks/test_bench_shard.py; the headers here are one template with the
    name, size and checksum filled in.
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

    def add(self, name: str, payload: bytes) -> int:
        """Append one member; the byte offset of its payload in the archive."""
        raw = name.encode("utf-8")
        if len(raw) > 100:
            raise BioscanError(f"tar member name longer than 100 bytes: {name!r}")
        size = b"%011o\0" % len(payload)
        head = bytearray(self._template)
        head[: len(raw)] = raw
        head[124:136] = size
        head[148:156] = b"%06o\0 " % (self._checksum + sum(raw) + sum(size))
        offset = self.bytes + 512
        self._write(b"".join((head, payload, bytes(-len(payload) % 512))))
        return offset

    def close(self) -> None:
        """End the archive: two zero blocks, then padding to a 10240-byte record like tar."""
        self._write(bytes(1024))
        if self.bytes % 10240:
            self._write(bytes(10240 - self.bytes % 10240))


@dataclass
class Sample:
    """One sample as read from a shard: its members in tar order (``None`` for a non-file)."""

    key: str
    offset: int
    members: list = field(default_factory=list)  # (extension, bytes or None)

    def payload(self, ext: str) -> bytes | None:
        """The payload of the sample's first member with this extension."""
        return next((data for e, data in self.members if e == ext), None)

    def as_dict(self) -> dict:
        """``{"__key__": key, ext: payload}``, as webdataset hands samples out (first member wins)."""
        found = {"__key__": self.key}
        for ext, data in self.members:
            if data is not None:
                found.setdefault(ext, data)
        return found


@dataclass
class TarFault:
    """What stopped a walk early: ``kind`` is ``"truncated"`` or ``"corrupt"``."""

    kind: str
    detail: str
    key: str | None = None  # the sample being read when the walk stopped (lost)


class _HashingReader:
    """A file wrapper that hashes every byte read through it (one read serves the walk and the sha256)."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def read(self, size=-1):
        data = self.f.read(size)
        self.sha256.update(data)
        return data

    def drain(self) -> str:
        """Read (and hash) the rest of the file; the hex digest of all of it."""
        for _ in iter(lambda: self.read(4 << 20), b""):
            pass
        return self.sha256.hexdigest()


class TarReader:
    """Streams the samples of a shard with ``tarfile``, never failing mid-way.

    Iterate :meth:`samples`; afterwards ``fault`` holds what stopped the walk
    (None when it reached a sound end-of-archive marker), ``last`` the last
    member read, and, with ``hash=True``, ``sha256`` the digest of the whole file.

    Parameters
    ----------
    path : str or path-like
        The shard file.
    name : str, optional
        What messages call the shard (default: ``path``).
    hash : bool
        Hash every byte, and read to the end of the file.
    """

    def __init__(self, path, name: str | None = None, hash: bool = False):
        self.path, self.name, self.hash = path, str(name or path), hash
        self.fault: TarFault | None = None
        self.last: str | None = None
        self.sha256 = ""

    def samples(self, start: int = 0, stop: int | None = None, exts=None):
        """Yield each complete sample ``start <= i < stop`` (members grouped by key, as webdataset groups them).

        ``exts``: the extensions whose payloads are read, other members skipped
        over; None reads every member, and lists a link or folder as ``(ext,
        None)`` (``verify`` reports it). A sample cut short by a fault is not yielded.
        """
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            raise BioscanError(f"cannot open shard {self.name}: {exc.strerror or exc}") from None
        with raw:
            f = _HashingReader(raw) if self.hash else raw
            yield from self._walk(f, start, stop, exts)
            if isinstance(f, _HashingReader):
                self.sha256 = f.drain()

    def _walk(self, f, start: int, stop: int | None, exts):
        index, current, end = -1, None, None
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for info in tar:
                    # tarfile keeps every TarInfo it has read; members are read once, in order.
                    tar.members = []  # type: ignore[attr-defined]  # tarfile's own list, not public
                    if exts is not None and not info.isfile():
                        continue  # a loader's read skips links and folders, as webdataset does
                    key, ext = split_member_name(info.name)
                    if current is None or current.key != key:
                        if current is not None and index >= start:
                            yield current
                        index, current = index + 1, Sample(key, info.offset)
                        if stop is not None and index >= stop:
                            return
                    self.last = info.name
                    if index >= start:
                        wanted = info.isfile() and (exts is None or ext in exts)
                        payload = tar.extractfile(info) if wanted else None
                        current.members.append((ext, payload.read() if payload is not None else None))
                end = tar.offset
        except (tarfile.TarError, EOFError, OSError) as exc:
            self.fault = self._read_fault(exc, current)
            return
        # tarfile stops quietly at a bad header or a cut on a header boundary, so the
        # last sample counts only once the end is proven.
        self.fault = end_of_archive_fault(self.path, end, self.last)
        if self.fault is not None:
            self.fault.key = current.key if current else None
        elif current is not None and index >= start:
            yield current

    def _read_fault(self, exc: Exception, current: Sample | None) -> TarFault:
        text = str(exc) or type(exc).__name__
        where = f"after member {self.last}" if self.last else "at the start of the file"
        truncated = any(s in text for s in ("unexpected end of data", "truncated", "empty file"))
        return TarFault("truncated" if truncated else "corrupt", f"{text} ({where})", current.key if current else None)

    def error(self) -> ShardError | None:
        """The fault as one line naming the shard (None when the walk ended soundly)."""
        if self.fault is None:
            return None
        detail = f"{self.fault.kind} tar: {self.fault.detail}"
        return ShardError(f"shard {self.name}: {detail}", detail)


def end_of_archive_fault(path, end: int, last: str | None) -> TarFault | None:
    """Whether the archive ends with its two zero blocks and holds only zeros after them.

    ``tarfile`` stops quietly at a bad header or a cut on a header boundary, as if
    the archive had ended there; this check tells those apart from a real end.
    """
    after = f"after member {last}" if last else "at the start"
    with open(path, "rb") as f:
        f.seek(end)
        marker = f.read(1024)
        head = marker[:512]
        if len(head) < 512:
            how = "inside a tar header" if any(head) else "without the end-of-archive marker"
            return TarFault("truncated", f"ends at byte {end + len(head)} ({after}), {how}")
        if any(head):
            return TarFault("corrupt", f"unreadable tar header at byte {end} ({after})")
        if len(marker) < 1024:
            return TarFault("truncated", f"ends at byte {end + len(marker)} ({after}) inside the end-of-archive marker")
        offset = end
        for block in itertools.chain([marker], iter(lambda: f.read(1 << 20), b"")):
            if any(block):
                first = offset + next(i for i, b in enumerate(block) if b)
                return TarFault("corrupt",
                                f"data at byte {first} after the end-of-archive marker at byte {end} ({after})")
            offset += len(block)
    return None

"""Files written whole or not at all.

Every file bioscan-io writes (shards, manifests, ``labels.json``, the metadata
cache, the generated dataset, contact sheets) is written under a temporary
sibling name, ``.{name}.tmp-{pid}-{random}``, and renamed over its final name
only once complete: a reader never sees half a file, and a killed run leaves at
most temporaries, which :func:`sweep` recognises by that one naming rule (and
spares while the process named in it still runs: it may be writing them).
The folders they go to are checked first (:func:`check_writable`), so that a
run fails before it starts rather than half way through; a folder that one run
at a time may write is held with a lock file (:func:`exclusive`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

from .schema import BioscanError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["TMP_MARK", "temporary_sibling", "replacing", "atomic_open", "exclusive", "sweep", "check_writable",
           "missing_folders"]

#: What every temporary name holds after its final name.
TMP_MARK = ".tmp-"
_WRITER = re.compile(re.escape(TMP_MARK) + r"(\d+)-[0-9a-f]+$")


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def replacing(path: str | os.PathLike, *, sync: bool = False):
    """Yield a temporary path; when the block ends without error it replaces ``path``.

    The temporary (a file or a folder) is removed on every other exit.
    ``sync=True`` flushes the file to disk before the rename, so a crash cannot
    leave the final name pointing at unwritten blocks.
    """
    tmp = temporary_sibling(path)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename is not None:
                raise
            # A full disk's "No space left on device" comes from a write, which names no
            # file: name the one being written (its final name; the temporary is gone).
            cause = os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())  # pyarrow's holds the temporary
            raise OSError(exc.errno, cause, str(path)) from exc  # errno picks the subclass (PermissionError...)
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def exclusive(path: str | os.PathLike, busy: str):
    """Hold an exclusive lock on the file ``path`` (made if need be) for the block, then remove it.

    Another process holding it is refused at once: ``BioscanError(busy)``, with
    ``{pid}`` in ``busy`` replaced by that process's id (which the holder writes
    into the file). ``flock`` locks are released by the kernel when their process
    dies, so a killed run never leaves a stale lock: its file is merely reused.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise BioscanError(busy.format(pid=holder)) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file as we opened it: lock the one there now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with suppress(OSError):
            path.unlink()  # before the lock goes, so that a waiting process finds the file gone and retries
        os.close(fd)


def _holder(fd: int) -> str:
    """The process id the lock's holder wrote into its file."""
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    except OSError:  # Windows: the locked byte cannot be read
        return "unknown"


def _lock(fd: int) -> None:
    """Lock ``fd`` exclusively without waiting; OSError if another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # Windows: a lock on the file's first byte
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, sync: bool = False, **kwargs):
    """``open`` a temporary sibling of ``path``; it replaces ``path`` when the block ends cleanly."""
    with replacing(path, sync=sync) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def sweep(folder: str | os.PathLike, name: str = "*", older_than: float | None = None) -> None:
    """Remove the temporaries of ``name`` (default: of every file) left in ``folder`` by killed runs.

    A temporary whose writer (the process id in its name) still runs on this
    machine is spared: it may be another run writing into the same folder.
    ``older_than`` (seconds) also spares recent ones, for writers elsewhere
    (a shared file system), whose process ids mean nothing here.
    """
    now = time.time()
    for tmp in Path(folder).glob(f".{name}{TMP_MARK}*"):
        try:
            if older_than is not None and now - tmp.stat().st_mtime <= older_than:
                continue
            if not _writer_alive(tmp.name):
                _remove(tmp)
        except OSError:
            pass  # gone already


def _writer_alive(name: str) -> bool:
    """Whether the process that named a temporary still runs (a zombie does not)."""
    m = _WRITER.search(name)
    if m is None:
        return False
    pid = int(m.group(1))
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ...": comm may hold spaces and parentheses, so the last ")".
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def check_writable(path: Path, what: str) -> bool:
    """Whether the folder ``path`` exists, after making sure it can be written or created.

    Checked before anything is written, so that a run fails on one line naming
    the folder rather than on a traceback half way through.

    Raises
    ------
    BioscanError
        One line naming ``path`` (``what`` says which folder it is) and why:
        a file in its place, or no permission to write in it or its parent.
    """
    try:
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise BioscanError(f"no permission to write in the {what} {path}")
            return True
        if path.exists() or path.is_symlink():
            raise BioscanError(f"the {what} {path} is a file, not a folder")
        parent = next(p for p in path.parents if p.exists())
        if not parent.is_dir():
            raise BioscanError(f"cannot create the {what} {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BioscanError(f"cannot create the {what} {path}: no permission to write in {parent}")
    except OSError as exc:  # e.g. a parent we may not even look into
        raise BioscanError(f"cannot use the {what} {path}: {exc.strerror or exc}") from None
    return False


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first (what a run would create)."""
    return [p for p in (path, *path.parents) if not os.path.lexists(p)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

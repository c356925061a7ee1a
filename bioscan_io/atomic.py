"""Files written whole or not at all.

Every file bioscan-io writes (shards, manifests, ``labels.json``, the metadata
cache, the generated dataset, contact sheets) is written under a temporary
sibling name, ``.{name}.tmp-{pid}-{random}``, and renamed over its final name
only once complete: a reader never sees half a file, and a killed run leaves at
most temporaries, which :func:`sweep` recognises by that one naming rule.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TMP_MARK", "temporary_sibling", "replacing", "atomic_open", "sweep"]

#: What every temporary name holds after its final name.
TMP_MARK = ".tmp-"


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
        yield tmp
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
def atomic_open(path: str | os.PathLike, mode: str = "w", *, sync: bool = False, **kwargs):
    """``open`` a temporary sibling of ``path``; it replaces ``path`` when the block ends cleanly."""
    with replacing(path, sync=sync) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def sweep(folder: str | os.PathLike, name: str = "*", older_than: float | None = None) -> None:
    """Remove the temporaries of ``name`` (default: of every file) left in ``folder`` by killed runs.

    ``older_than`` (seconds) spares recent ones, where another process may still
    be writing into the same folder.
    """
    now = time.time()
    for tmp in Path(folder).glob(f".{name}{TMP_MARK}*"):
        try:
            if older_than is None or now - tmp.stat().st_mtime > older_than:
                _remove(tmp)
        except OSError:
            pass  # gone already


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

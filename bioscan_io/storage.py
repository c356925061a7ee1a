"""Where shards live: local paths, fsspec URLs and webdataset ``pipe:`` URLs.

* local paths (and ``file://``) are opened directly (and memory-mapped by the
  compiled reader);
* ``pipe:CMD`` and ``http(s)://`` are opened by webdataset (``wds.gopen``: a
  subprocess, or curl), as stock webdataset does;
* every other ``scheme://`` URL -- ``s3://``, ``gs://``, ``az://``... -- through
  fsspec, with ``storage_options`` passed to its filesystem (``endpoint_url``,
  ``key``, ``secret``, ``anon``...). fsspec and the scheme's package (s3fs, gcsfs)
  are the optional extra ``bioscan-io[remote]``.

Reading: the loader copies a remote shard to a temporary file (:func:`spool`,
kept while a worker reads it: :class:`LocalCopies`) and reads it with the
compiled reader, as a local one.

Writing: :func:`publish` uploads the files of a split folder sharded locally
(staging) to an fsspec URL or through a ``pipe:`` command per file, in the
order given (``format.publish_order``: shards first and ``manifest.json`` last,
so that a reader never sees a manifest before the shards it lists); on fsspec
URLs, shards already there with the same size are not uploaded again, so a
killed upload resumes.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
import subprocess
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from .schema import BioscanError

__all__ = ["is_url", "local_path", "dirname", "join", "open_read", "spool", "LocalCopies", "read_text",
           "staging_folder", "check_destination", "publish"]

_EXTRA_HINT = "pip install 'bioscan-io[remote]'"
_WDS_SCHEMES = ("http://", "https://")


def is_url(url) -> bool:
    """Whether ``url`` names remote storage (a ``scheme://`` URL or a ``pipe:`` command)."""
    text = str(url)
    return ("://" in text and not text.startswith("file://")) or text.startswith("pipe:")


def local_path(url) -> str:
    """The path of a local file (``file://`` stripped)."""
    text = str(url)
    return text[len("file://"):] if text.startswith("file://") else text


def dirname(url: str) -> str:
    return posixpath.dirname(url) if is_url(url) else str(Path(local_path(url)).parent)


def join(base: str, name: str) -> str:
    return posixpath.join(base, name) if is_url(base) else str(Path(local_path(base)) / name)


def _fs(url: str, storage_options: dict | None):
    """The fsspec filesystem and path of ``url``."""
    try:
        import fsspec
    except ImportError:
        raise BioscanError(f"{url}: remote storage needs fsspec and the package for its scheme: "
                           f"{_EXTRA_HINT}") from None
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # the scheme's own package (s3fs, gcsfs) is missing
        raise BioscanError(f"{url}: {exc} ({_EXTRA_HINT})") from None
    except ValueError as exc:  # an unknown protocol
        raise BioscanError(f"{url}: {exc}") from None


def open_read(url: str, storage_options: dict | None = None):
    """A binary file object to read ``url`` from the start (the caller closes it)."""
    try:
        if not is_url(url):
            return open(local_path(url), "rb")
        if url.startswith("pipe:") or url.startswith(_WDS_SCHEMES):
            import webdataset as wds

            return wds.gopen(url)
        fs, path = _fs(url, storage_options)
        return fs.open(path, "rb")
    except BioscanError:
        raise
    except Exception as exc:  # OSError, botocore's and gcsfs's own error types, ...
        raise BioscanError(f"cannot open {url}: {exc}") from None


@contextmanager
def spool(url: str, open_url=open_read, chunk: int = 8 << 20):
    """A local temporary copy of ``url`` (its path), removed on exit.

    The compiled tar reader needs a file it can memory-map; a remote shard is
    streamed once into a temporary file (``$TMPDIR``), which the page cache
    usually keeps in memory, then read from there.
    """
    with tempfile.NamedTemporaryFile(prefix="bioscan-io-shard-", suffix=".tar") as tmp:
        with open_url(url) as src:
            try:
                while True:
                    data = src.read(chunk)
                    if not data:
                        break
                    tmp.write(data)
            except BioscanError:
                raise
            except Exception as exc:  # a dropped connection, a pipe's command failing...
                raise BioscanError(f"reading shard {url} failed: {exc}") from None
        tmp.flush()
        yield tmp.name


class LocalCopies:
    """Local paths for shard URLs: remote ones spooled once and kept (the last ``keep``) until :meth:`close`.

    A worker reads a shard's rows item by item; without the copies kept, a
    remote shard would be fetched again for every item.
    """

    def __init__(self, open_url=open_read, keep: int = 4):
        self.open_url, self.keep = open_url, keep
        self._held: OrderedDict = OrderedDict()

    def path(self, url: str) -> str:
        """A local path for ``url`` (the file itself when it is local)."""
        if not is_url(url):
            return local_path(url)
        if url not in self._held:
            copy = spool(url, self.open_url)
            self._held[url] = (copy.__enter__(), copy)
            while len(self._held) > self.keep:
                self._held.popitem(last=False)[1][1].__exit__(None, None, None)
        self._held.move_to_end(url)
        return self._held[url][0]

    def close(self) -> None:
        """Remove every copy held."""
        while self._held:
            self._held.popitem()[1][1].__exit__(None, None, None)


def read_text(url: str, storage_options: dict | None = None) -> str | None:
    """A small text file (a manifest, labels.json); None if it is not there."""
    if not is_url(url):
        path = Path(local_path(url))
        return path.read_text(encoding="utf-8") if path.is_file() else None
    if not (url.startswith("pipe:") or url.startswith(_WDS_SCHEMES)):
        fs, path = _fs(url, storage_options)
        try:
            if not fs.exists(path):
                return None
            with fs.open(path, "rb") as f:
                return f.read().decode("utf-8")
        except Exception as exc:
            raise BioscanError(f"cannot read {url}: {exc}") from None
    try:
        with open_read(url) as f:
            data = f.read()
    except Exception:  # curl / the pipe's command says "not found" only by failing
        return None
    return data.decode("utf-8") if isinstance(data, bytes) else data


def staging_folder(url: str) -> Path:
    """The local folder a split is sharded into before :func:`publish` uploads it.

    The same URL gets the same folder, so a killed run resumes where it stopped.
    """
    digest = hashlib.sha1(str(url).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "bioscan-io-staging" / digest


def publish(files: list[tuple[Path, str, int | None]], url: str, storage_options: dict | None = None) -> list[str]:
    """Upload ``files`` to ``url``, in the order given (``format.publish_order`` puts the manifest last).

    Each file is ``(local path, name under url, size or None)``; a file with a
    size (a shard) already at an fsspec URL with that byte size is kept, so a
    rerun resumes. ``url`` is an fsspec URL or a ``pipe:`` command template run
    once per file with the file on its standard input and ``{name}`` replaced by
    its name (``pipe:aws s3 cp - s3://bucket/shards/{name}``).

    Returns
    -------
    list of str
        The names uploaded (those already there are not).
    """
    put = _put(url, storage_options)
    uploaded = []
    try:
        for local, name, size in files:
            if put(local, name, size):
                uploaded.append(name)
    except BioscanError:
        raise
    except Exception as exc:
        raise BioscanError(f"uploading to {url} failed: {exc}; rerun to resume") from None
    return uploaded


def check_destination(url: str, storage_options: dict | None = None) -> None:
    """Refuse, in one line, an output URL that :func:`publish` could not write to.

    Called before the sharding starts: an unknown scheme, a scheme whose package is
    not installed or a ``pipe:`` command without ``{name}`` must not cost a whole
    split's sharding first. Whether the bucket exists and may be written is found
    by the upload itself.
    """
    _put(url, storage_options)


def _put(url: str, storage_options: dict | None):
    """``put(local, name, size)`` for ``url``: through a ``pipe:`` command or to an fsspec URL."""
    if url.startswith(_WDS_SCHEMES):
        raise BioscanError(f"cannot write shards to {url}: writing needs an fsspec URL (s3://, gs://, ...) "
                           "or a pipe: command")
    return _pipe_put(url) if url.startswith("pipe:") else _fsspec_put(url, storage_options)


def _fsspec_put(url: str, storage_options: dict | None):
    """``put(local, name, size)`` to an fsspec URL; False when a shard of that size is already there."""
    fs, base = _fs(url, storage_options)
    made: set[str] = set()

    def put(local: Path, name: str, size: int | None) -> bool:
        target = posixpath.join(base, name)
        if size is not None and fs.exists(target) and fs.size(target) == size:
            return False
        folder = posixpath.dirname(target)
        if folder not in made:  # one request per folder, not per file
            fs.makedirs(folder, exist_ok=True)
            made.add(folder)
        fs.put_file(str(local), target)
        return True

    return put


def _pipe_put(url: str):
    """``put(local, name, size)`` through a ``pipe:`` command template (the file on its stdin)."""
    template = url[len("pipe:"):]
    if "{name}" not in template:
        raise BioscanError(f"{url}: a pipe: output needs {{name}} in the command, where each file's path goes")

    def put(local: Path, name: str, size: int | None) -> bool:
        command = template.replace("{name}", shlex.quote(name))
        with open(local, "rb") as f:
            done = subprocess.run(command, shell=True, stdin=f, capture_output=True)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise BioscanError(f"{url}: writing {name} failed: {tail[0]}")
        return True

    return put

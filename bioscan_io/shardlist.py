"""Shard lists: what ``make_loader``'s ``urls`` name, resolved to shards with exact counts.

A split folder (local or remote), its ``manifest.json``, a brace pattern or a list
of URLs become a :class:`ShardSet`: the shard URLs, their sample counts from the
manifest, the label values of ``labels.json`` beside the split folder, and each
shard's index (format version 2) with the manifest entry it must match.
:func:`check_sizes` compares each local shard's byte size with its manifest
entry as a loader opens the split (one ``os.stat`` a shard).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from . import storage
from .format import LABELS, MANIFEST, TarReader, parse_manifest, read_labels
from .schema import BioscanError

__all__ = ["ShardSet", "find_shards", "check_sizes"]

log = logging.getLogger("bioscan_io")


@dataclass
class ShardSet:
    """Shard URLs with their sample counts, the label values if known, and their indexes if any.

    ``indexes[i]`` is the URL of shard ``i``'s index (None: read through its tar
    headers) and ``entries[i]`` its manifest entry, which the index must match.
    """

    urls: list[str]
    counts: list[int]
    labels: dict | None = None
    indexes: list | None = None
    entries: list | None = None
    labels_url: str | None = None  # where labels.json was looked for
    folder: str | None = None  # the split folder (where the manifest is, or would be)
    check_sha256: bool = False  # check each shard's sha256 as it is first read

    @property
    def total(self) -> int:
        return int(sum(self.counts))


def find_shards(urls, storage_options: dict | None = None) -> ShardSet:
    """Resolve ``urls`` to shard URLs with exact counts.

    ``urls`` may be a split folder (local or remote), its ``manifest.json``, a brace
    pattern, a list of URLs, or remote URLs (``storage``: fsspec URLs, ``pipe:``,
    ``http(s)://``). Counts come from the manifest beside the shards; local shards
    without one are counted by reading their headers.
    """
    manifest_url = None
    if isinstance(urls, (str, Path)):
        text = str(urls)
        remote_folder = storage.is_url(text) and not text.startswith("pipe:") and "{" not in text \
            and not text.endswith((".tar", ".json"))
        if Path(text).is_dir() or remote_folder:
            manifest_url = storage.join(text.rstrip("/"), MANIFEST)
            listed = None
        elif text.endswith(".json"):
            manifest_url = text
            listed = None
        else:
            listed = list(wds.shardlists.expand_urls(text))
    else:
        listed = [str(u) for u in urls]
        if not listed:
            raise BioscanError("no shard URLs given")
    if manifest_url is None:
        if not listed:  # a pattern that names no shard
            raise BioscanError(f"no shard URLs in {urls!r}")
        manifest_url = storage.join(storage.dirname(listed[0]), MANIFEST)
    found = storage.read_text(manifest_url, storage_options)
    manifest = parse_manifest(found, manifest_url) if found is not None else None
    if manifest is None and listed is None:
        raise BioscanError(f"no shard manifest at {manifest_url}")

    base = storage.dirname(manifest_url)
    labels_url = storage.join(storage.dirname(base), LABELS)
    labels = read_labels(storage.read_text(labels_url, storage_options))
    if manifest is None:
        assert listed is not None  # no manifest and no list: refused above
        return ShardSet(listed, [_count_local(u) for u in listed], labels, labels_url=labels_url, folder=base)
    by_name = {s["name"]: s for s in manifest["shards"]}
    if listed is None:
        listed = [storage.join(base, s["name"]) for s in manifest["shards"]]
    names = [posixpath.basename(u) if "://" in u else Path(u).name for u in listed]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BioscanError(f"shard {unknown[0]} is not in the manifest {manifest_url}")
    entries = [by_name[n] for n in names]
    # A pipe: command streams its shard: there is no index URL beside it to read.
    indexes = [storage.join(storage.dirname(u), e["index"]["name"]) if e.get("index") and not u.startswith("pipe:")
               else None for u, e in zip(listed, entries)]
    if not all(e.get("index") for e in entries):
        _notice_unindexed(base)
    return ShardSet(listed, [e["count"] for e in entries], labels, indexes, entries, labels_url, base)


_NOTICED: set = set()


def _notice_unindexed(folder: str) -> None:
    """One line, once per split folder: version-1 shards are read through their tar headers."""
    if folder not in _NOTICED:
        _NOTICED.add(folder)
        log.warning("%s: shards without a per-shard index (format version 1) are read through their tar "
                    "headers; `bioscan-io index %s` adds the indexes", folder, folder)


def _count_local(url: str) -> int:
    """The samples of a shard without a manifest beside it, by reading its headers."""
    if not storage.is_url(url) and not Path(url).exists():
        raise BioscanError(f"no such file or folder: {url}")
    if storage.is_url(url) or not Path(url).is_file():
        raise BioscanError(f"cannot count the samples of {url}: no manifest.json beside it")
    reader = TarReader(url)
    count = sum(1 for _ in reader.samples(exts=frozenset()))
    if reader.fault is not None and reader.last is None:
        raise BioscanError(f"{url} is not a tar shard ({reader.fault.detail}) and has no manifest.json beside it")
    error = reader.error()
    if error is not None:
        raise error
    return count


_WARNED: set = set()


def check_sizes(shards: ShardSet, reads_tar: bool) -> dict[int, str]:
    """The local shards whose file is missing or has another byte size than the manifest lists.

    One ``os.stat`` per shard, as a loader opens the split: tasks that read only
    the per-shard index (``mlm``, DNA-only ``classify`` and ``embed``) never touch
    a tar, so a deleted, cut or garbage-appended one would otherwise go unnoticed
    while its index serves the exact data. Each damaged shard is warned about
    once per process (logger ``bioscan_io``), naming it and ``bioscan-io verify
    FOLDER``; tasks that read the tar meet the damage as they read the shard,
    where ``on_error`` raises or skips its samples. Remote shards (fsspec,
    ``pipe:``, ``http(s)://``) and shards without a manifest are not checked.

    Parameters
    ----------
    shards : ShardSet
        The split, as :func:`find_shards` resolved it.
    reads_tar : bool
        Whether the loader reads the tars even where there is an index (images,
        or ``check_sha256``): the warning says what it does with the shard.

    Returns
    -------
    dict
        ``{shard number: what is wrong}`` (``"is missing"``, ``"has N bytes,
        the manifest says M"``).
    """
    damaged = {}
    for i, (url, entry) in enumerate(zip(shards.urls, shards.entries or [])):
        if storage.is_url(url):
            continue  # a stat of an object would be a request per shard
        try:
            size = os.stat(storage.local_path(url)).st_size
        except FileNotFoundError:
            size = None
        except OSError:  # unreadable: reading it says so, naming the file
            continue
        if size != entry["bytes"]:
            damaged[i] = "is missing" if size is None else f"has {size} bytes, the manifest says {entry['bytes']}"
            indexed = bool(shards.indexes and shards.indexes[i])
            _warn_damaged(url, damaged[i], shards.folder, _FATE[indexed, reads_tar])
    return damaged


#: What a loader does with a damaged shard: (the shard has an index, the loader reads its tar) -> words.
_FATE = {
    (True, False): "this task reads only its index, which serves its samples unchanged",
    (True, True): "this loader reads its tar (images, check_sha256): on_error raises, or skips all its samples",
    (False, False): "its samples are read through its tar headers: on_error raises, or skips those it cannot read",
}
_FATE[False, True] = _FATE[False, False]


def _warn_damaged(url: str, what: str, folder: str | None, fate: str) -> None:
    """One line per damaged shard and task kind, once per process (a loader made per epoch would repeat it)."""
    key = (url, what, fate)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("shard %s %s (`bioscan-io verify %s` says what is wrong); %s", url, what, folder, fate)

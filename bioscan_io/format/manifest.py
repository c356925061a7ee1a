"""The files beside the shards: ``manifest.json``, ``labels.json``, ``missing_images.txt``.

A split folder holds its shards and one ``manifest.json``; ``labels.json`` lies
one level up, shared by the splits sharded from the same metadata::

    OUT/labels.json                  label values per rank (index = position)
    OUT/{split}/manifest.json        what the folder holds (below)
    OUT/{split}/{split}-000000.tar   the shards (members: ``format.members``)
    OUT/{split}/missing_images.txt   records skipped for a missing image, if any

The manifest's keys: ``format``, ``format_version``, ``split``, ``splits``,
``source`` (``root``, ``package``, ``metadata``, ``metadata_sha256`` and, when
given, ``images``), ``seed``, ``maxcount``, ``maxsize``, ``plan`` (the run's
fingerprint), ``num_samples``, ``skipped_missing_image`` and ``shards`` (one
:class:`ShardInfo` each, in order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_open
from ..schema import SPLITS, BioscanError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST", "LABELS", "MISSING_REPORT", "ShardInfo",
    "read_manifest", "parse_manifest", "split_folder_of", "listed_shards", "publish_order", "write_json",
    "labels_path", "read_labels",
    "manifest_problems", "shard_entries", "is_count",
]

#: The ``format`` every manifest and ``labels.json`` names, and its version.
FORMAT = "bioscan-io/shards"
#: The version written: 2 adds a per-shard index (``format.index``) beside each tar.
FORMAT_VERSION = 2
#: The versions read (version 1 splits are read through their tar headers).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
LABELS = "labels.json"
MISSING_REPORT = "missing_images.txt"
#: What ``source`` must name (``images`` is optional).
_SOURCE_KEYS = ("root", "package", "metadata", "metadata_sha256")


@dataclass
class ShardInfo:
    """One finished shard, as the manifest lists it (``index``: its index file's name, bytes, sha256)."""

    name: str
    count: int
    bytes: int
    sha256: str
    index: dict | None = None

    def describes(self) -> dict:
        """What the shard's index records about the tar it describes."""
        return {"shard": self.name, "shard_bytes": self.bytes, "shard_sha256": self.sha256}


def write_json(path: str | os.PathLike, obj) -> None:
    """Write a manifest, ``labels.json`` or run log whole (synced, then renamed)."""
    with atomic_open(path, "w", sync=True, encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def parse_manifest(text: str, where) -> dict:
    """A manifest's JSON, or a BioscanError naming ``where``."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BioscanError(f"unreadable shard manifest {where}: {exc}") from None


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a split folder (or the manifest file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise BioscanError(f"no shard manifest at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # unreadable (permissions), or gone since
        raise BioscanError(f"cannot read the shard manifest {path}: {exc.strerror or exc}") from None
    return parse_manifest(text, path)


def split_folder_of(path: str | os.PathLike) -> Path | None:
    """The split folder a path stands for: itself, or its manifest's folder; None for anything else."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.name == MANIFEST:
        return path.parent
    return None


def listed_shards(folder: str | os.PathLike) -> tuple[dict, list[dict]]:
    """A split folder's manifest and its shard entries; a BioscanError if any entry is malformed or none is listed."""
    where = Path(folder) / MANIFEST
    manifest = read_manifest(folder)
    entries, bad = shard_entries(manifest)
    if bad:
        raise BioscanError(f"malformed shard manifest {where}: {bad[0][1]}")
    if not entries:
        raise BioscanError(f"shard manifest {where} lists no shards")
    return manifest, entries


def publish_order(out: str | os.PathLike, split_folder: str) -> list[tuple[Path, str, int | None]]:
    """The files of ``out/split_folder`` in the order a reader may see them appear.

    Shards first (each after its index, with their byte sizes), then the
    reports, ``labels.json``, and ``manifest.json`` last: a reader never finds a
    manifest before its shards.
    Each entry is ``(local path, name relative to out, size or None)``.
    """
    out = Path(out)
    folder = out / split_folder
    manifest = read_manifest(folder)
    files = []
    for shard in manifest["shards"]:  # each index before its shard: a shard is never without its index
        for item in (shard.get("index"), shard):
            if item:
                files.append((folder / item["name"], f"{split_folder}/{item['name']}", item["bytes"]))
    files += [(folder / n, f"{split_folder}/{n}", None) for n in sorted(os.listdir(folder)) if n.endswith(".txt")]
    if (out / LABELS).is_file():
        files.append((out / LABELS, LABELS, None))
    files.append((folder / MANIFEST, f"{split_folder}/{MANIFEST}", None))
    return files


def labels_path(split_folder: str | os.PathLike) -> Path:
    """Where ``labels.json`` lies for a split folder: beside it, in its parent."""
    return Path(split_folder).parent / LABELS


def read_labels(text: str | None) -> dict | None:
    """The label values per rank from ``labels.json`` text (None when there is none)."""
    return json.loads(text)["ranks"] if text else None


def is_count(value) -> bool:
    """A whole number of samples or bytes (not a bool, not negative)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def manifest_problems(manifest) -> list[str]:
    """What is wrong with a manifest's format, version and top-level keys (empty: nothing)."""
    if not isinstance(manifest, dict):
        return ["manifest.json does not hold a JSON object"]
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        problems.append(f"format_version is {version!r}; this bioscan-io reads {readable}")
    splits = manifest.get("splits")
    if not isinstance(splits, list) or not splits or any(s not in SPLITS for s in splits):
        problems.append(f"splits is {splits!r}, expected a list of split names")
    source = manifest.get("source")
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in _SOURCE_KEYS):
        problems.append("source lacks root, package, metadata or metadata_sha256")
    if not is_count(manifest.get("num_samples")):
        problems.append(f"num_samples is {manifest.get('num_samples')!r}")
    if not isinstance(manifest.get("skipped_missing_image", []), list):
        problems.append("skipped_missing_image is not a list")
    if not isinstance(manifest.get("shards"), list):
        problems.append("shards is not a list")
    return problems


def shard_entries(manifest) -> tuple[list[dict], list[tuple[str | None, str]]]:
    """The well-formed shard entries of a manifest, and ``(name, problem)`` for the others.

    A malformed entry cannot be checked against its file, so it is reported once
    and left out of every later use.
    """
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        return [], []
    good, problems, names = [], [], set()
    for i, entry in enumerate(shards):
        name = entry.get("name") if isinstance(entry, dict) else None
        well_formed = (
            isinstance(name, str) and name.endswith(".tar") and os.path.basename(name) == name
            and is_count(entry.get("count")) and is_count(entry.get("bytes"))
            and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
        )
        if not well_formed:
            problems.append((name if isinstance(name, str) else None, f"shard entry {i} is malformed: {entry!r}"))
        elif name in names:
            problems.append((name, f"shard listed twice (entry {i})"))
        else:
            names.add(name)
            good.append(entry)
    return good, problems

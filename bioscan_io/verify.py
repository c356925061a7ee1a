"""Verify a split folder of shards against its manifest, itself and the metadata.

``bioscan-io verify`` answers one question before a long training run: are these
shards exactly the records they claim to be? The checks run in three groups,
each a small function below that returns (or yields) :class:`Problem` objects:

1. the manifest and the files: the manifest is well formed, every shard it lists
   exists with its byte size and sha256, no ``*.tar`` it does not list, the
   sample counts add up;
2. every shard read in full with Python's ``tarfile`` (stream mode), shard by
   shard: readable to its end-of-archive marker, each sample exactly
   ``.dna`` + ``.jpg`` + ``.json``, the JSON naming its key, the barcode equal to
   the JSON's, the image a whole JPEG, no key twice;
3. the metadata (the file the shards were made from, unless told otherwise): each
   record of the manifest's splits in exactly one sample, no other sample, every
   JSON field equal to the metadata row and, with ``images=True``, every image
   equal byte for byte to its source file. A record counts as present only
   where a loader serves it (``verify_served``): ``missing_record`` is what
   ``make_loader(..., on_error="skip")`` loses, for the tasks that read the tar.

Memory does not grow with the metadata's size: the metadata is memory-mapped
from an Arrow copy in the temporary folder (``$TMPDIR``, removed at the end), the
split's processids are held as one sorted array of fixed-width bytes
(``columns.RowLookup``) with the shard each was read from (``verify_records.Seen``), and
only one shard's JSON records are held at a time; image payloads are checked
(and hashed, for ``images=True``) as they stream past. What
is reported (the problem kinds, the report and its wording) is ``verify_report``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from . import metadata as md
from .format import (MANIFEST, MEMBERS, Sample, TarReader, index_problems, is_count,
                     manifest_problems, read_manifest, scan, shard_entries)
from .images import EOI_SLACK, has_eoi
from .schema import PACKAGES, BioscanError
from .sources import open_images
from .verify_records import (Records, Seen, check_duplicates, check_fields, check_images, check_metadata_sha,
                             check_missing, check_skipped, check_unknown)
from .verify_report import KINDS, Problem, VerifyReport
from .verify_served import Served
from .wording import os_error_text, plural

__all__ = ["KINDS", "Problem", "VerifyReport", "verify_split", "verify_shard"]


# ----------------------------------------------------------------------------- 1. manifest and files


def check_manifest(manifest) -> tuple[list[dict], list[Problem]]:
    """The manifest's format, version, keys and shard entries (``format.manifest_problems``).

    Returns the well-formed shard entries and the problems; a malformed entry
    cannot be checked against its file, so it is reported here once and left out
    of every later check.
    """
    problems = [Problem("bad_manifest", detail=text) for text in manifest_problems(manifest)]
    entries, bad = shard_entries(manifest)
    problems += [Problem("bad_manifest", shard=name, detail=text) for name, text in bad]
    return entries, problems


def check_total(manifest, entries: list[dict]) -> list[Problem]:
    """The shards' counts add up to ``num_samples``."""
    total = manifest.get("num_samples")
    listed = sum(e["count"] for e in entries)
    shards = manifest.get("shards")
    # A malformed entry is already a bad_manifest; its count is unknown, so no sum.
    if is_count(total) and listed != total and isinstance(shards, list) and len(entries) == len(shards):
        return [Problem("count_mismatch",
                        detail=f"the manifest's shards hold {listed} samples but num_samples is {total}")]
    return []


def check_shard_files(folder: Path, entries: list[dict]) -> list[Problem]:
    """Every listed shard exists, with the byte size the manifest gives."""
    problems = []
    for entry in entries:
        path = folder / entry["name"]
        if not path.is_file():
            problems.append(Problem("missing_shard", shard=entry["name"],
                                    detail=f"listed in the manifest ({entry['count']} samples) but not in the folder"))
        elif path.stat().st_size != entry["bytes"]:
            problems.append(Problem("size_mismatch", shard=entry["name"],
                                    detail=f"{path.stat().st_size} bytes, the manifest says {entry['bytes']}"))
    return problems


def check_extra_shards(folder: Path, manifest: dict) -> list[Problem]:
    """No ``*.tar`` beside the shards that the manifest does not list.

    A glob or brace pattern over the folder would read it, though loaders given
    the folder would not: two views of the split that disagree.
    """
    raw = manifest.get("shards")
    shards = raw if isinstance(raw, list) else []
    listed = {e.get("name") for e in shards if isinstance(e, dict)}
    return [Problem("extra_shard", shard=path.name, detail="not listed in the manifest")
            for path in sorted(folder.glob("*.tar")) if path.name not in listed]


def check_sha256(entry: dict, digest: str) -> list[Problem]:
    """The shard's sha256 (only meaningful when its size matched)."""
    if digest == entry["sha256"]:
        return []
    return [Problem("sha256_mismatch", shard=entry["name"],
                    detail=f"sha256 {digest[:16]}..., the manifest says {entry['sha256'][:16]}...")]


def check_count(entry: dict, read: int) -> list[Problem]:
    """The samples read from a shard match the manifest's count."""
    if read == entry["count"]:
        return []
    return [Problem("count_mismatch", shard=entry["name"],
                    detail=f"{read} samples, the manifest says {entry['count']}")]


# ----------------------------------------------------------------------------- 2. reading the shards


def check_members(sample: Sample, shard: str) -> list[Problem]:
    """Exactly one member of each kind of ``format.MEMBERS``, and nothing else."""
    exts = [ext for ext, _ in sample.members]
    problems = [Problem("missing_member", shard, sample.key, f"no .{ext} member")
                for ext in MEMBERS if ext not in exts]
    for ext in sorted(set(exts)):
        if ext not in MEMBERS:
            problems.append(Problem("extra_member", shard, sample.key, f"unexpected member {sample.key}.{ext}"))
        elif exts.count(ext) > 1:
            problems.append(Problem("extra_member", shard, sample.key, f".{ext} appears {exts.count(ext)} times"))
    for ext, data in sample.members:
        if data is None:
            problems.append(Problem("extra_member", shard, sample.key, f"{sample.key}.{ext} is not a regular file"))
    return problems


def parse_json(sample: Sample, shard: str) -> tuple[dict | None, list[Problem]]:
    """The sample's ``.json`` as a dict, or a ``bad_json`` problem."""
    raw = sample.payload("json")
    if raw is None:
        return None, []  # already a missing_member
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [Problem("bad_json", shard, sample.key, f"{sample.key}.json: {exc}")]
    if not isinstance(record, dict):
        kind = type(record).__name__
        return None, [Problem("bad_json", shard, sample.key, f"{sample.key}.json holds a {kind}, not an object")]
    return record, []


def check_key(sample: Sample, record: dict, shard: str) -> list[Problem]:
    """The JSON's processid is the sample key (what loaders report as the id)."""
    if record.get("processid") == sample.key:
        return []
    return [Problem("key_mismatch", shard, sample.key, f".json processid is {record.get('processid')!r}")]


def check_dna(sample: Sample, record: dict, shard: str) -> list[Problem]:
    """The ``.dna`` member is the JSON's barcode, whole (empty when null)."""
    raw = sample.payload("dna")
    if raw is None:
        return []
    expected = record.get("dna_barcode") or ""
    try:
        dna = raw.decode("utf-8")
    except UnicodeDecodeError:
        return [Problem("dna_mismatch", shard, sample.key, ".dna is not UTF-8 text")]
    if dna == expected:
        return []
    first = next((i for i, (x, y) in enumerate(zip(dna, expected)) if x != y), min(len(dna), len(expected)))
    return [Problem("dna_mismatch", shard, sample.key,
                    f".dna has {len(dna)} bases, .json dna_barcode {len(expected)}; they differ from base {first}")]


def check_jpeg(sample: Sample, shard: str) -> list[Problem]:
    """The ``.jpg`` starts with SOI and ends with EOI: a cut or overwritten tail shows here.

    A few bytes after the EOI marker (padding some cameras append) are allowed, as
    the decoder allows them (``images.has_eoi``).
    """
    raw = sample.payload("jpg")
    if raw is None:
        return []
    if raw[:2] != b"\xff\xd8":
        start = raw[:2].hex(" ") or "empty"
        return [Problem("bad_jpeg", shard, sample.key, f"does not start with FF D8 (starts {start})")]
    if not has_eoi(raw):
        end = raw[-2:].hex(" ")
        return [Problem("bad_jpeg", shard, sample.key,
                        f"does not end with FF D9 (none in its last {EOI_SLACK} bytes; ends {end}; {len(raw)} bytes)")]
    return []


# ----------------------------------------------------------------------------- the run


def _source(manifest) -> dict:
    source = manifest.get("source") if isinstance(manifest, dict) else None
    return source if isinstance(source, dict) else {}


def _metadata_path(manifest: dict, root, metadata) -> Path:
    if metadata is not None:
        return Path(metadata)
    if root is not None:
        if not Path(root).is_dir():
            raise BioscanError(f"dataset root not found: {root}")
        return md.find_metadata(Path(root))
    path = _source(manifest).get("metadata")
    if not isinstance(path, str):
        raise BioscanError("the manifest names no metadata file; pass --root or --metadata")
    if not Path(path).is_file():
        raise BioscanError(f"metadata file not found: {path} (named by the manifest); pass --root or --metadata")
    return Path(path)


def _image_source(manifest: dict, root, package: str):
    """Where the shards' images came from: the manifest's recorded archives or folder, else the root's."""
    recorded = _source(manifest).get("images")
    if root is None and isinstance(recorded, list) and recorded:
        return open_images(None, package, images=recorded)
    given = root if root is not None else _source(manifest).get("root")
    path = Path(given) if isinstance(given, (str, os.PathLike)) and str(given) else None
    if path is None or not path.is_dir():
        raise BioscanError(f"dataset root not found: {path} (needed for --images); pass --root")
    return open_images(path, package)


def verify_split(folder, root=None, metadata=None, images: bool = False,
                 progress: bool | None = None) -> VerifyReport:
    """Check a split folder of shards against its manifest, its own contents and the metadata.

    Parameters
    ----------
    folder : str or path-like
        The split folder (holding ``manifest.json`` and the shards), or its manifest.
    root : str or path-like, optional
        Dataset root: its metadata file is compared (instead of the one the manifest
        names) and, with ``images=True``, its images (instead of the manifest's root's).
    metadata : str or path-like, optional
        A metadata CSV or JSON-LD file to compare with; takes precedence over ``root``.
    images : bool
        Also compare every ``.jpg`` byte for byte with its source image file.
    progress : bool, optional
        Show a progress bar (bytes of shards read) on stderr; default: when stderr is
        a terminal, as :func:`bioscan_io.shard.shard_split`.

    Returns
    -------
    VerifyReport
        ``report.ok`` is True when nothing is wrong; ``report.problems`` lists the
        rest (see :data:`KINDS`).

    Raises
    ------
    BioscanError
        If the folder or its manifest is missing, not a folder, unreadable or not
        JSON, a shard or index cannot be opened (permissions), or the metadata (or,
        with ``images=True``, the dataset root) cannot be found or read.
    """
    try:
        progress = sys.stderr.isatty() if progress is None else progress
        return _verify(split_folder(folder), root, metadata, images, progress)
    except OSError as exc:
        # A file or folder the run may not open (permissions, a file where a folder
        # should be) is the user's to fix, not damage in the shards: one line, no report.
        raise BioscanError(f"cannot read {os_error_text(exc)}") from None


def split_folder(path) -> Path:
    """The split folder verify was given (its manifest stands for it), checked to be a folder it can list."""
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST:
        folder = folder.parent
    if not folder.exists():
        raise BioscanError(f"split folder not found: {folder}")
    if not folder.is_dir():
        what = "a shard (a .tar file)" if folder.suffix == ".tar" else "a file" if folder.is_file() else "not a folder"
        hint = f", such as {folder.parent}" if (folder.parent / MANIFEST).is_file() else ""
        raise BioscanError(f"{folder} is {what}: verify checks a split folder, holding manifest.json "
                           f"and the shards it lists{hint}")
    try:
        os.listdir(folder)  # the check for unlisted shards globs it, and a glob hides a folder it cannot read
    except OSError as exc:
        raise BioscanError(f"cannot read split folder {folder}: {exc.strerror or exc}") from None
    return folder


def _verify(folder: Path, root, metadata, images: bool, progress: bool) -> VerifyReport:
    manifest = read_manifest(folder)
    report = VerifyReport(folder=str(folder))
    problems = report.problems
    entries, bad = check_manifest(manifest)
    problems += bad
    if not isinstance(manifest, dict):
        return report
    problems += check_total(manifest, entries)
    problems += check_shard_files(folder, entries)
    problems += check_extra_shards(folder, manifest)

    meta_path = _metadata_path(manifest, root, metadata)
    raw = manifest.get("splits")
    splits = raw if isinstance(raw, list) else []
    with tempfile.TemporaryDirectory(prefix="bioscan-io-verify-") as cache:
        records = Records(meta_path, splits, indexed=manifest.get("format_version", 1) >= 2, cache_dir=cache)
        report.metadata = str(meta_path)
        _check_against(folder, manifest, entries, records, root, images, progress, report)
    return report


def _check_against(folder: Path, manifest: dict, entries: list[dict], records: Records, root, images: bool,
                   progress: bool, report: VerifyReport) -> None:
    """Groups 2 and 3: every shard read through, and compared with the metadata."""
    problems = report.problems
    problems += check_metadata_sha(records, _source(manifest).get("metadata_sha256"))
    package = _source(manifest).get("package")
    if images and package not in PACKAGES:
        raise BioscanError(f"the manifest names no known image package ({package!r}), needed for --images")
    image_source = _image_source(manifest, root, str(package)) if images else None

    present = [e for e in entries if (folder / e["name"]).is_file()]
    seen = Seen(records.lookup)
    with tqdm(total=sum((folder / e["name"]).stat().st_size for e in present), unit="B", unit_scale=True,
              desc=f"verifying {folder.name}", disable=not progress, file=sys.stderr) as bar:
        for entry in present:
            problems += verify_shard(folder / entry["name"], entry, records, seen, report, image_source)
            report.shards += 1
            bar.update((folder / entry["name"]).stat().st_size)

    if records.splits:
        problems += check_missing(seen, records, manifest)
    problems += check_skipped(folder, seen, manifest)
    problems += check_empty(manifest, entries, present, report)


def check_empty(manifest: dict, entries: list[dict], present: list[dict], report: VerifyReport) -> list[Problem]:
    """A split of no sample: every other check may pass, but there is nothing to load.

    Not when a shard is missing or an entry malformed: those problems already say
    why nothing was read.
    """
    listed = manifest.get("shards")
    if report.samples or len(present) < len(entries) or not isinstance(listed, list) or len(listed) > len(entries):
        return []
    n = len(entries)
    where = "the manifest lists no shard" if not n else \
        f"its {plural(n, 'shard')} {'holds' if n == 1 else 'hold'} no sample"
    return [Problem("empty_split", detail=f"an empty split: {where}, so a loader has nothing to read")]


class _Kept:
    """What the metadata checks need of one shard's samples, in read order."""

    def __init__(self):
        self.keys: list[str] = []
        self.jsons: list[dict | None] = []
        self.digests: list[tuple[str, int, str] | None] = []

    def first(self, new: list[bool]) -> tuple[list[str], list[tuple[str, dict]], list[tuple[str, int, str]]]:
        """Keys, ``(key, json)`` and image digests of the samples read for the first time (``new``)."""
        keys = [k for k, n in zip(self.keys, new) if n]
        jsons = [(k, j) for k, j, n in zip(self.keys, self.jsons, new) if n and j is not None]
        return keys, jsons, [d for d, n in zip(self.digests, new) if n and d is not None]


def verify_shard(path: Path, entry: dict, records: Records, seen: Seen, report: VerifyReport,
                 images=None) -> list[Problem]:
    """All the checks of one shard, reading it once from start to end."""
    shard = entry["name"]
    problems: list[Problem] = []
    reader = TarReader(path, name=str(path), hash=True)
    served = Served(path, entry)  # the shard's index, loaded once
    kept = _Kept()
    read = 0
    for sample in reader.samples():
        read += 1
        problems += check_sample(sample, shard, kept, images is not None)
    fault = reader.fault
    if fault is not None:
        key = fault.key
        whole = whole_sample_at_fault(path, read, key)
        if whole is not None:
            read += 1
            problems += check_sample(whole, shard, kept, images is not None)
            key = None  # the fault follows this sample; it lies in none
        problems.append(Problem(f"{fault.kind}_tar", shard=shard, key=key, detail=fault.detail))
        # A loader with an index reads on past the fault: the samples it serves are read and checked too.
        for sample in served.samples_past_fault(read):
            read += 1
            problems += check_sample(sample, shard, kept, images is not None)
    else:  # a walk cut short would only repeat the tar problem as a count
        problems += check_count(entry, read)
    report.samples += read

    sound = path.stat().st_size == entry["bytes"] and reader.sha256 == entry["sha256"] and fault is None
    if path.stat().st_size == entry["bytes"]:
        problems += check_sha256(entry, reader.sha256)
    duplicates, new = check_duplicates(kept.keys, shard, seen, served.unserved(kept.keys))
    problems += duplicates  # compared with the metadata the first time each was read
    keys, jsons, digests = kept.first(new)
    if records.splits:
        problems += check_unknown(keys, records, shard)
    problems += check_fields(jsons, records, shard)
    if records.indexed:
        problems += [Problem(kind, shard, detail=detail)
                     for kind, detail in index_problems(path.parent, entry, records.labels, sound)]
    if images is not None:
        problems += check_images(digests, records, images, shard)
    return problems


def check_sample(sample: Sample, shard: str, kept: _Kept, digest: bool) -> list[Problem]:
    """The checks of one sample read from a shard; what the metadata checks need goes to ``kept``."""
    problems = check_members(sample, shard)
    record, bad = parse_json(sample, shard)
    problems += bad
    if record is not None:
        problems += check_key(sample, record, shard)
        problems += check_dna(sample, record, shard)
    problems += check_jpeg(sample, shard)
    kept.keys.append(sample.key)
    kept.jsons.append(record)
    jpg = sample.payload("jpg")
    kept.digests.append((sample.key, len(jpg), hashlib.sha256(jpg).hexdigest()) if digest and jpg is not None
                        else None)
    return problems


def whole_sample_at_fault(path: Path, index: int, key: str | None) -> Sample | None:
    """Sample ``index`` of the shard, the one a fault stopped ``TarReader`` in, if it is whole.

    At a header that does not parse (or a cut there), ``tarfile`` cannot tell
    whether the sample in progress had ended, so ``TarReader`` drops it. The
    loader's header walk delivers it when the members it reads all precede the
    fault; verify asks that same walk, and counts and checks the sample when its
    ``.dna``, ``.jpg`` and ``.json`` are all whole, so that verify and
    ``make_loader(..., on_error="skip")`` lose the same samples. None when a
    member is missing or cut (the sample is lost to the fault), or when the walk
    cannot read the shard's headers (pax: the Python reader's answer stands).
    """
    found = scan(str(path), index, index + 1, MEMBERS) if key is not None else None
    if found is None:
        return None
    with found:
        keys, values, present = found.gather()
        if found.n != 1 or keys[0].as_py() != key or not all(present[ext][0] for ext in MEMBERS):
            return None
        start = min(int(found.spans()[ext][0][0]) for ext in MEMBERS) - 512  # the first member's header
        return Sample(str(key), start, [(ext, values[ext][0].as_py()) for ext in MEMBERS])

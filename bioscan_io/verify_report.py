"""What ``bioscan-io verify`` reports: the kinds of problem, each problem, and the report.

:data:`KINDS` is the vocabulary scripts branch on (``--json``'s ``kind``); the
README's table of problem kinds is this dict. :class:`VerifyReport` words the
outcome for people (:meth:`VerifyReport.lines`) and for scripts
(:meth:`VerifyReport.to_dict`). The checks themselves are in ``verify``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .wording import plural

__all__ = ["KINDS", "Problem", "VerifyReport"]

#: Every problem kind, and what it means; the README's table is this dict.
KINDS = {
    "empty_split": "the split holds no sample: its manifest lists no shard, or its shards hold none",
    "bad_manifest": "manifest.json is not a well-formed bioscan-io manifest (format, version, keys, shard entries)",
    "missing_shard": "a shard the manifest lists is not in the folder",
    "extra_shard": "a *.tar file in the folder that the manifest does not list",
    "size_mismatch": "a shard's byte size differs from the manifest's",
    "sha256_mismatch": "a shard's sha256 differs from the manifest's (same size: bytes changed in place)",
    "count_mismatch": "a shard holds another number of samples than the manifest says, "
                      "or the manifest's counts do not add up to num_samples",
    "truncated_tar": "a shard ends early: cut inside a member or header, or without the end-of-archive marker",
    "corrupt_tar": "a shard holds an unreadable tar header or data after its end-of-archive marker",
    "missing_member": "a sample lacks its .dna, .jpg or .json member",
    "extra_member": "a sample has a member other than .dna/.jpg/.json, or one of them twice",
    "bad_json": "a sample's .json is not UTF-8 JSON holding an object",
    "key_mismatch": "a sample's .json processid differs from the sample key",
    "dna_mismatch": "a sample's .dna differs from its .json dna_barcode (empty when null)",
    "bad_jpeg": "a sample's .jpg does not start with the JPEG SOI marker (FF D8) or end with EOI (FF D9)",
    "duplicate_sample": "a key appears twice, in one shard or across shards",
    "missing_record": "a record of the split(s) that a loader reading the tar with on_error='skip' does not serve: "
                      "in no shard, lost to a fault, or in a shard it skips whole (and not listed as skipped for a "
                      "missing image)",
    "unknown_record": "a sample is not a record of the manifest's split(s) in the metadata",
    "field_mismatch": "a .json field differs from the metadata row (value or type), or a column is missing or extra",
    "metadata_changed": "the metadata's sha256 differs from the one the shards were made from",
    "image_mismatch": "(--images) a .jpg differs from its source image file, or the source file is missing",
    "missing_index": "(format version 2) a shard's index is not listed in the manifest or not in the folder",
    "index_mismatch": "a shard's index differs from the manifest (bytes, sha256) or from what the shard and the "
                      "metadata say (offsets, barcodes, ranks, label indices)",
}

_HUMAN_LIMIT = 20


@dataclass
class Problem:
    """One thing wrong, located as precisely as the check allows."""

    kind: str
    shard: str | None = None
    key: str | None = None
    detail: str = ""

    def __post_init__(self):
        # Scripts branch on the kind, so an undocumented one is a bug here, not there.
        assert self.kind in KINDS, self.kind

    def line(self) -> str:
        """The problem as one human-readable line."""
        where = " ".join(x for x in (self.shard, self.key) if x)
        return f"{self.kind}: {where + ': ' if where else ''}{self.detail}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_split`.

    Attributes
    ----------
    folder : str
        The split folder verified.
    samples : int
        Samples read from the shards (a duplicated key counts twice).
    shards : int
        Shards read (listed in the manifest and present).
    problems : list of Problem
        Everything found wrong, in the order found.
    metadata : str or None
        The metadata file the shards were compared with.
    """

    folder: str
    samples: int = 0
    shards: int = 0
    problems: list = field(default_factory=list)
    metadata: str | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """The JSON object ``bioscan-io verify --json`` prints."""
        return {
            "folder": self.folder,
            "ok": self.ok,
            "samples": self.samples,
            "shards": self.shards,
            "metadata": self.metadata,
            "problems": [asdict(p) for p in self.problems],
        }

    def lines(self, limit: int = _HUMAN_LIMIT) -> list[str]:
        """The human summary: problem lines (at most ``limit``), counts per kind, a closing line."""
        out = [p.line() for p in self.problems[:limit]]
        if len(self.problems) > limit:
            out.append(f"... and {len(self.problems) - limit:,} more")
        if self.ok:
            read = f"{plural(self.samples, 'sample')} in {plural(self.shards, 'shard')}"
            out.append(f"verify: {self.folder}: OK ({read})")
        else:
            counts: dict[str, int] = {}
            for p in self.problems:
                counts[p.kind] = counts.get(p.kind, 0) + 1
            if len(self.problems) > limit:
                out.append("by kind: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
            out.append(f"verify: {self.folder}: {plural(len(self.problems), 'problem')}")
        return out

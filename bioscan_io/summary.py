"""The summary of a split folder that ``bioscan-io peek`` prints.

:func:`split_summary` reads the ``.json`` and ``.dna`` members of every sample
of a split folder with the compiled header walk (images are jumped over, never
read or decoded) and counts, per rank, the records with a value and the
distinct values, and the distribution of barcode lengths.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from .format import MANIFEST, listed_shards, parse_records, read_members, split_folder_of
from .schema import MAX_NUCLEOTIDES, RANKS, SPLITS, BioscanError
from .wording import plural

__all__ = ["PERCENTILES", "LENGTH_BINS", "SplitSummary", "summary_folder", "split_summary"]

#: Percentiles of the barcode length the summary prints.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: Bins of the barcode length histogram: (label, lowest, highest) in bp. 658 bp
#: is the full COI-5P barcode; models read the first 660 (MAX_NUCLEOTIDES).
LENGTH_BINS = (
    ("1-499", 1, 499),
    ("500-649", 500, 649),
    ("650-657", 650, 657),
    ("658", 658, 658),
    (f"659-{MAX_NUCLEOTIDES}", 659, MAX_NUCLEOTIDES),
    (f"{MAX_NUCLEOTIDES + 1}+", MAX_NUCLEOTIDES + 1, sys.maxsize),
)

@dataclass
class SplitSummary:
    """Counts over every sample of a split folder (what :func:`split_summary` returns).

    Attributes
    ----------
    folder : str
        The split folder.
    split : str
        The split (or union) its manifest names.
    shards, samples : int
        Shards read and samples in them.
    splits : dict
        Samples per split, as their ``.json`` names it (several for a union), in release order.
    with_value : dict
        Per rank of :data:`~bioscan_io.schema.RANKS`, the samples with a value.
    distinct : dict
        Per rank, the number of distinct values.
    lengths : numpy.ndarray
        Barcode length (bp) of every sample that has a barcode.
    no_barcode : int
        Samples with an empty barcode.
    with_n : int
        Barcodes holding at least one ``N``.
    n_bases : int
        ``N`` in all barcodes together.
    """

    folder: str
    split: str
    shards: int = 0
    samples: int = 0
    splits: dict = field(default_factory=dict)
    with_value: dict = field(default_factory=dict)
    distinct: dict = field(default_factory=dict)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    no_barcode: int = 0
    with_n: int = 0
    n_bases: int = 0

    @property
    def longer(self) -> int:
        """Barcodes longer than :data:`~bioscan_io.schema.MAX_NUCLEOTIDES` (660) bp."""
        return int((self.lengths > MAX_NUCLEOTIDES).sum())

    def percentiles(self) -> dict:
        """Barcode length at each of :data:`PERCENTILES` (a length that occurs: nearest rank), with min and max."""
        if not len(self.lengths):
            return {}
        values = np.percentile(self.lengths, PERCENTILES, method="nearest")
        return {"min": int(self.lengths.min()), **{f"p{q}": int(v) for q, v in zip(PERCENTILES, values)},
                "max": int(self.lengths.max())}

    def histogram(self) -> list[tuple[str, int]]:
        """Barcodes per length bin of :data:`LENGTH_BINS`."""
        return [(label, int(((self.lengths >= lo) & (self.lengths <= hi)).sum())) for label, lo, hi in LENGTH_BINS]

    def lines(self) -> list[str]:
        """The summary as a readable table, one string per line."""
        def pct(k: int, total: int) -> str:
            return f"{100 * k / total:5.1f}%" if total else "    -"

        out = [f"{self.split}: {plural(self.samples, 'sample')} in {plural(self.shards, 'shard')} ({self.folder})"]
        if len(self.splits) > 1:
            out.append("  by split: " + ", ".join(f"{s} {k:,}" for s, k in self.splits.items()))
        out += ["", f"{'rank':<11}{'with a value':>19}{'distinct':>11}"]
        for rank in RANKS:
            k = self.with_value.get(rank, 0)
            out.append(f"{rank:<11}{k:>12,} {pct(k, self.samples)}{self.distinct.get(rank, 0):>11,}")
        out += ["", f"barcode length (bp), {plural(len(self.lengths), 'barcode')}"]
        stats = self.percentiles()
        if stats:
            names = ["min", *(f"p{q}" for q in PERCENTILES), "max"]
            out.append("  " + "".join(f"{name:>7}" for name in names))
            out.append("  " + "".join(f"{stats[name]:>7}" for name in names))
            out.append("")
            bins = self.histogram()
            most = max(k for _, k in bins)
            for label, k in bins:
                bar = "\u2588" * round(40 * k / most) if most else ""
                if k and not bar:
                    bar = "\u258f"
                out.append(f"  {label:<9}{k:>10,}  {bar}".rstrip())
            out.append("")
        longer = self.longer
        out.append(f"longer than {MAX_NUCLEOTIDES} bp {longer:>10,} {pct(longer, len(self.lengths))}"
                   f"   (models read the first {MAX_NUCLEOTIDES})")
        out.append(f"with N {self.with_n:>21,} {pct(self.with_n, len(self.lengths))}   ({self.n_bases:,} N in all)")
        out.append(f"without a barcode {self.no_barcode:>10,} {pct(self.no_barcode, self.samples)}")
        return out


def summary_folder(path) -> Path | None:
    """The split folder whose summary ``path`` asks for.

    Parameters
    ----------
    path : str or path-like
        A split folder, its ``manifest.json``, or a shard.

    Returns
    -------
    pathlib.Path or None
        The folder itself (or the manifest's folder); for a shard, the folder
        holding it when a ``manifest.json`` is beside it, else None.
    """
    path = Path(path)
    folder = split_folder_of(path)
    if folder is not None:
        return folder
    return path.parent if (path.parent / MANIFEST).is_file() else None


_JSON_FIELDS = (*RANKS, "split")


def _parse_records(column: pa.Array, keys: pa.Array, shard: Path) -> pa.Table:
    """The rank and split fields of one shard's ``.json`` members, one Arrow JSON parse."""
    table, bad = parse_records(column, _JSON_FIELDS)
    if bad:
        row, message = bad[0]
        raise BioscanError(f"shard {shard}: {keys[row].as_py()}.json: {message}")
    return table


def _read_shard(path: Path, count: int) -> tuple[pa.Array, dict]:
    """Keys, and the ``.json`` and ``.dna`` payloads, of every sample of a shard."""
    if not path.is_file():
        raise BioscanError(f"shard {path} (listed in its manifest) is missing")
    exts = ("json", "dna")
    keys, values, present, error = read_members(str(path), 0, count, exts)
    if error is not None:
        raise error
    for ext in exts:
        if not present[ext].all():
            key = keys[int(np.flatnonzero(~present[ext])[0])].as_py()
            raise BioscanError(f"shard {path}: sample {key} has no .{ext} member "
                               "(bioscan-io verify lists all problems)")
    return keys, values


def split_summary(split_folder, progress: bool = False) -> SplitSummary:
    """Count ranks and barcode lengths over every sample of a split folder.

    Reads only the ``.json`` and ``.dna`` members of each shard the manifest
    lists, with the compiled header walk (images are jumped over).

    Parameters
    ----------
    split_folder : str or path-like
        The split folder (holding ``manifest.json``), its manifest, or a shard in it.
    progress : bool
        Show a progress bar (shards read) on stderr.

    Returns
    -------
    SplitSummary
        Use :meth:`SplitSummary.lines` for the printed table.

    Raises
    ------
    BioscanError
        If the folder or its manifest is missing or unreadable, or a shard is
        missing, corrupt, shorter than the manifest says, or holds a sample
        without its ``.json`` or ``.dna`` member or with an unreadable ``.json``.
    """
    path = Path(split_folder)
    if not path.exists():
        raise BioscanError(f"no shard or split folder at {path}")
    folder = summary_folder(path)
    if folder is None:
        raise BioscanError(f"no shard manifest at {path.parent / MANIFEST}; a split summary needs the split folder")
    manifest, entries = listed_shards(folder)
    summary = SplitSummary(folder=str(folder), split=str(manifest.get("split", folder.name)))
    distinct: dict[str, set] = {rank: set() for rank in RANKS}
    with_value = Counter({rank: 0 for rank in RANKS})
    splits: Counter = Counter()
    lengths = []
    for entry in tqdm(entries, desc=f"reading {folder.name}", unit="shard", disable=not progress, file=sys.stderr):
        if entry["count"] == 0:
            continue
        shard = folder / entry["name"]
        keys, values = _read_shard(shard, entry["count"])
        table = _parse_records(values["json"], keys, shard)
        for rank in RANKS:
            column = pc.drop_null(table.column(rank))
            column = column.filter(pc.not_equal(column, ""))
            with_value[rank] += len(column)
            distinct[rank].update(pc.unique(column).to_pylist())
        for item in pc.value_counts(table.column("split")).to_pylist():
            splits[item["values"]] += item["counts"]
        dna = values["dna"]
        length = pc.binary_length(dna).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths.append(length[length > 0])
        summary.no_barcode += int((length == 0).sum())
        summary.with_n += int(pc.sum(pc.match_substring(dna, "N")).as_py() or 0)
        summary.n_bases += int(pc.sum(pc.count_substring(dna, "N")).as_py() or 0)
        summary.samples += len(keys)
        summary.shards += 1
    summary.with_value = dict(with_value)
    summary.distinct = {rank: len(values) for rank, values in distinct.items()}
    order = {name: i for i, name in enumerate(SPLITS)}  # release order; anything else after, by name
    summary.splits = dict(sorted(splits.items(), key=lambda item: (order.get(item[0], len(order)), str(item[0]))))
    summary.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return summary

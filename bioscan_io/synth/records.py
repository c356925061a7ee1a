"""The metadata records: splits, identifiers, labels, BINs, geography and measurements.

Each part draws from its own random stream (:mod:`.common`), so the records do
not depend on the image package or on how many processes make them.  What is
drawn for the whole dataset at once (splits, species, labels, measurements,
places) is held in compact arrays, a few bytes per record (:class:`_Plan`);
the identifiers and barcodes, long strings, are drawn in file order a chunk of
records at a time, and the rows are made and written a chunk at a time
(:func:`_record_chunks`), so the memory used does not grow with the strings
of millions of records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schema import SPLIT_SIZES, SPLITS, TAXONOMIC_RANKS
from .barcodes import _BarcodeMaker
from .common import _S_GEO, _S_RECORDS, _S_SPLITS, _S_TAXONOMY, _cdf, _rng, _trim_memory
from .geography import _make_geography, _place_names
from .ids import _IdMaker
from .stream import _ahead
from .taxa import _ORDERS, _PLAN_CODES
from .taxonomy import _PRETRAIN_DEPTH, _assign_species, _bin_name, _labels, _Taxonomy

__all__ = ["SPLIT_FRACTIONS", "OFFICIAL_SPLIT_SIZES"]

#: Share of the records that each split gets in a generated dataset.  The real
#: release is 91 % pretrain; here the labelled splits are scaled up so that a
#: small dataset still has a useful number of records in every split.
SPLIT_FRACTIONS = {
    "pretrain": 0.65,
    "train": 0.12,
    "val": 0.03,
    "test": 0.05,
    "key_unseen": 0.04,
    "val_unseen": 0.03,
    "test_unseen": 0.03,
    "other_heldout": 0.05,
}
assert tuple(SPLIT_FRACTIONS) == SPLITS and abs(sum(SPLIT_FRACTIONS.values()) - 1) < 1e-9

#: Records per split of the published BIOSCAN-5M release (5,150,850 records),
#: whose proportions ``official_splits=True`` follows.
OFFICIAL_SPLIT_SIZES = dict(SPLIT_SIZES)

_PRETRAIN = SPLITS.index("pretrain")
_SPECIES_DEPTH = TAXONOMIC_RANKS.index("species")


def _largest_remainder(n, floors, remainders) -> dict:
    """``floors`` plus one record for each of the splits with the largest ``remainders``, ``n`` in all.

    Ties go to the split that comes first in release order.
    """
    counts = dict(floors)
    left = n - sum(floors.values())
    for s in sorted(SPLITS, key=lambda s: (-remainders[s], SPLITS.index(s)))[:left]:
        counts[s] += 1
    assert sum(counts.values()) == n
    return counts


def _split_counts(n: int, official: bool = False) -> dict:
    """Records per split of an ``n``-record dataset.

    By default a floor of min(3, n // 8) each and the rest by :data:`SPLIT_FRACTIONS`;
    with ``official`` the proportions of :data:`OFFICIAL_SPLIT_SIZES` (its very
    counts for n = 5,150,850), without floor.  Both round by largest remainder.
    """
    if official:
        total = sum(OFFICIAL_SPLIT_SIZES.values())
        # integer arithmetic: floats could miss the exact counts at n = total
        floors = {s: n * c // total for s, c in OFFICIAL_SPLIT_SIZES.items()}
        return _largest_remainder(n, floors, {s: n * c % total / total for s, c in OFFICIAL_SPLIT_SIZES.items()})
    base = min(3, n // len(SPLITS))
    raw = {s: (n - base * len(SPLITS)) * f for s, f in SPLIT_FRACTIONS.items()}
    floors = {s: base + math.floor(v) for s, v in raw.items()}
    return _largest_remainder(n, floors, {s: v - math.floor(v) for s, v in raw.items()})


@dataclass
class _Plan:
    """What is drawn for the whole dataset before its rows are made: compact arrays, one entry per record.

    ``split`` (int8, index into SPLITS), ``species`` (int32 species id),
    ``depth`` (int8, deepest labelled rank, index into TAXONOMIC_RANKS) and
    ``slot`` (int8: which of ``bins``' three columns is the record's BIN) come
    first; :func:`_plan_rest` adds ``bin_missing``, the measurements ``m``
    (see :func:`_measurements`) and the places ``geo`` (see
    :func:`_make_geography`), drawing on from the records' stream ``rrng``.
    ``bins`` holds each species' BIN codes (own two, shared; -1: none).
    """

    tax: _Taxonomy
    species_cols: dict
    bins: np.ndarray
    split: np.ndarray
    species: np.ndarray
    depth: np.ndarray
    slot: np.ndarray
    rrng: np.random.Generator
    # set by _plan_rest before any row is made (Any: not None from then on)
    bin_missing: Any = None
    m: Any = None
    geo: Any = None


def _draw_splits(counts, seed, tax):
    """Split (code) and (true, hidden) species of every record, in file order."""
    srng = _rng(seed, _S_SPLITS)
    per_split = _assign_species(counts, tax, srng)
    n = sum(counts.values())
    # interleave the splits in a random order, as in the published file
    split = np.repeat(np.arange(len(SPLITS), dtype=np.int8), [counts[s] for s in SPLITS])[srng.permutation(n)]
    species = np.empty(n, dtype=np.int32)
    for code, s in enumerate(SPLITS):
        species[split == code] = per_split[s]
    return split, species


def _label_depths(split, species, cols, genera, rrng):
    """Deepest labelled rank of every record (pretrain ones down to a random rank only) and its BIN slot (0 or 1).

    Record by record, a pretrain record draws its depth and a record of a
    species with two BINs draws which one it is in: all ``random()`` draws, so
    they are drawn at once and handed out in that order.
    """
    pre = split == _PRETRAIN
    two = cols["bins"][species, 1] >= 0
    draws = pre.astype(np.int32) + two
    first = np.cumsum(draws, dtype=np.int64) - draws
    u = rrng.random(int(draws.sum()))
    names = [d for d, _ in _PRETRAIN_DEPTH]
    depth_p = np.array([p for _, p in _PRETRAIN_DEPTH])
    codes = np.array([TAXONOMIC_RANKS.index(d) for d in names], dtype=np.int8)
    depth = np.full(len(split), _SPECIES_DEPTH, dtype=np.int8)
    depth[pre] = codes[np.searchsorted(_cdf(depth_p / depth_p.sum()), u[first[pre]], side="right")]
    genus_known = np.array([g.name is not None for g in genera])[cols["genus"][species]]
    depth[pre & (depth == TAXONOMIC_RANKS.index("genus")) & ~genus_known] = TAXONOMIC_RANKS.index("subfamily")
    slot = np.zeros(len(split), dtype=np.int8)
    slot[two] = u[first[two] + pre[two]] >= 0.7
    return depth, slot


def _share_bins(species, slot, cols, genera, rrng):
    """Move some records of a few species into a BIN of another species of their genus.

    BINs map to mostly, not always, one species.  In a genus with two or more
    species, the second species (in order of first record) may share the
    first one's BIN.  Returns the species' BIN codes (own two, shared) and
    sets ``slot`` to 2 for the records moved.
    """
    values, first = np.unique(species, return_index=True)
    ordered = values[np.argsort(first)]  # species in order of their first record
    genus = cols["genus"][ordered]
    named = np.array([g.name is not None for g in genera], dtype=bool)[genus]
    ordered, genus = ordered[named], genus[named]
    by_genus = np.argsort(genus, kind="stable")
    _, starts, sizes = np.unique(genus[by_genus], return_index=True, return_counts=True)
    # genera in the order of their first species: the order their draws were always made in
    in_order = np.argsort(by_genus[starts])
    several = in_order[sizes[in_order] >= 2]
    lucky = several[rrng.random(len(several)) < 0.08]
    bins = np.concatenate([cols["bins"], np.full((len(cols["bins"]), 1), -1, dtype=np.int32)], axis=1)
    second, first_sp = ordered[by_genus[starts[lucky] + 1]], ordered[by_genus[starts[lucky]]]
    bins[second, 2] = bins[first_sp, 0]
    moved = (rrng.random(len(species)) < 0.5) & (bins[species, 2] >= 0)
    slot[moved] = 2
    return bins


def _plan(n, seed, official) -> _Plan:
    """Splits, species, label depths and BINs of every record (the first part of the plan)."""
    counts = _split_counts(n, official)
    tax = _Taxonomy(_rng(seed, _S_TAXONOMY))
    split, species = _draw_splits(counts, seed, tax)
    cols = tax.columns()
    rrng = _rng(seed, _S_RECORDS)
    depth, slot = _label_depths(split, species, cols, tax.genera, rrng)
    bins = _share_bins(species, slot, cols, tax.genera, rrng)
    return _Plan(tax, cols, bins, split, species, depth, slot, rrng)


# Records of the BIOSCAN-1M release: a record's index into it is unique.
_BIOSCAN_1M_RECORDS = 1_128_313


def _measurements(n, rrng):
    """Image measurements and other per-record numbers (area_fraction is what the images are drawn with)."""
    # in place (out=): at millions of records each temporary array takes tens of megabytes
    area = rrng.beta(2.2, 12.0, n)
    np.clip(area, 0.004, 0.8, out=area)
    img_missing = rrng.random(n) < 0.004
    area_missing = img_missing | (rrng.random(n) < 0.002)
    scale = rrng.normal(1.05, 0.35, n)
    np.exp(scale, out=scale)
    inferred = rrng.choice(5, size=n, p=[0.78, 0.12, 0.06, 0.03, 0.01]).astype(np.uint8)
    # BIOSCAN-1M index for ~22 % of the records, unique (so at most as many as it has)
    has_1m = np.flatnonzero(rrng.random(n) < 0.22)[:_BIOSCAN_1M_RECORDS]
    idx_1m = np.full(n, -1, dtype=np.int32)
    if len(has_1m):
        idx_1m[has_1m] = rrng.choice(_BIOSCAN_1M_RECORDS, size=len(has_1m), replace=False)
    return {"area": area, "img_missing": img_missing, "area_missing": area_missing, "scale": scale,
            "inferred": inferred, "idx_1m": idx_1m}


def _plan_rest(plan: _Plan, seed) -> None:
    """Add the missing BINs, the measurements and the places of every record to ``plan``."""
    n = len(plan.split)
    # records without a BIN (mostly pretrain); barcodes were made from the true BIN
    plan.bin_missing = plan.rrng.random(n) < np.where(plan.split == _PRETRAIN, 0.02, 0.003)
    homes = plan.species_cols["home"][plan.species]
    plan.geo = _make_geography(homes, _rng(seed, _S_GEO), plan.tax.country_p)
    plan.m = _measurements(n, plan.rrng)


def _columns(seed, plan: _Plan, bounds):
    """The identifiers and barcodes of every chunk of records: ``(pids, sids, chunk folders, barcodes)``."""
    ids = _IdMaker(seed)
    barcodes = _BarcodeMaker(seed, plan.species, plan.slot, plan.tax.genera, plan.species_cols["genus"])
    for start, stop in bounds:
        yield (*ids.chunk(plan.split[start:stop]), barcodes.chunk(start, stop))


class _Labeller:
    """The taxonomic columns of records, from their species and label depth (the higher ranks cached by genus)."""

    def __init__(self, plan: _Plan):
        self.names, self.genera = plan.tax.names, plan.tax.genera
        self.genus = plan.species_cols["genus"].tolist()
        self.cache: dict = {}

    def __call__(self, sp, depth):
        """The values of TAXONOMIC_RANKS and the taxon, and how many of the ranks are known."""
        g = self.genus[sp]
        if depth == _SPECIES_DEPTH:
            return self._labels(g, self.names[sp], depth)
        key = (g, depth)
        if key not in self.cache:  # above the species, the labels are those of the genus
            self.cache[key] = self._labels(g, None, depth)
        return self.cache[key]

    def _labels(self, g, name, depth):
        labels = _labels(self.genera[g], name, depth)
        # the values given, less the taxon (which repeats the deepest of them)
        return labels, len(labels) - labels.count(None) - 1


def _or_none(values, missing) -> list:
    """``values`` as a list of Python numbers, None where ``missing``."""
    out = values.astype(object)
    out[missing] = None
    return out.tolist()


def _rows(plan: _Plan, labeller, start, pids, sids, chunks, barcodes):
    """The rows of the records from ``start`` on: lists of Python values in COLUMNS order (None: missing)."""
    m, sl = plan.m, slice(start, start + len(pids))
    area, no_image, idx_1m = m["area"][sl], m["img_missing"][sl], m["idx_1m"][sl]
    # numpy's rounding, as the values always were (Python's round(x, 6) differs in the last digit at times)
    measured = (_or_none(np.round(area * 1024 * 768), no_image), _or_none(np.round(area, 6), m["area_missing"][sl]),
                _or_none(m["scale"][sl], no_image), m["inferred"][sl].tolist(), _or_none(idx_1m, idx_1m < 0))
    country, province, lat, lon = (g[sl] for g in plan.geo)
    bin_codes = plan.bins[plan.species[sl], plan.slot[sl]]
    bin_codes[plan.bin_missing[sl]] = -1
    columns = zip(
        pids, sids, barcodes, chunks, plan.species[sl].tolist(), plan.depth[sl].tolist(), bin_codes.tolist(),
        plan.split[sl].tolist(), country.tolist(), province.tolist(), _or_none(lat, np.isnan(lat)),
        _or_none(lon, np.isnan(lon)), *measured,
    )
    rows = []
    for pid, sid, barcode, chunk, sp, depth, bin_code, split, ci, pi, la, lo, imv, af, sf, inferred, idx in columns:
        labels, known = labeller(sp, depth)
        rows.append([
            pid, sid, labels[7], *labels[:7], _bin_name(bin_code) if bin_code >= 0 else None, barcode,
            *_place_names(ci, pi), la, lo, imv, af, sf, min(inferred, known), SPLITS[split], idx, chunk,
        ])
    return rows


def _render_params(plan: _Plan, start, stop):
    """What the photos of records ``start`` to ``stop`` are drawn with: (plan code, colour, size, area_fraction)."""
    cols, sp = plan.species_cols, plan.species[start:stop]
    plans = np.array([_PLAN_CODES[_ORDERS[g.order][3]] for g in plan.tax.genera])[cols["genus"][sp]]
    colours = map(tuple, cols["colour"][sp].tolist())
    return list(zip(plans.tolist(), colours, cols["size"][sp].tolist(), plan.m["area"][start:stop].tolist()))


def _record_chunks(n, seed, official, chunk_size, background, render_stop):
    """Make the records a chunk at a time: yields ``(start, rows, render)``.

    ``rows`` are those of records ``start`` on (see :func:`_rows`); ``render``
    holds what the photos of the chunk's records below ``render_stop`` are
    drawn with.  With ``background``, a child process draws the identifiers
    and barcodes (two sequential random streams) while this one draws the rest
    and makes the rows; the records are the same either way, and whatever
    ``chunk_size``.
    """
    plan = _plan(n, seed, official)
    bounds = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    _trim_memory()  # before the fork, which would count the freed memory again
    with _ahead(_columns, (seed, plan, bounds), background) as columns:
        _plan_rest(plan, seed)
        labeller = _Labeller(plan)
        for (start, stop), cols in zip(bounds, columns):
            rows = _rows(plan, labeller, start, *cols)
            del cols  # while the next chunk is made, only this one's rows are kept
            _trim_memory()
            yield start, rows, _render_params(plan, start, min(stop, render_stop))
            del rows

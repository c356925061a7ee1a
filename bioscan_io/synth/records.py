"""The metadata records: splits, identifiers, labels, BINs, geography and measurements.

Each part draws from its own random stream (:mod:`.common`), so the records do
not depend on the image package or on how many processes render the images.
"""

from __future__ import annotations

import math

import numpy as np

from ..schema import SPLITS, chunk_of
from .barcodes import _make_barcodes
from .common import _S_GEO, _S_IDS, _S_RECORDS, _S_SPLITS, _S_TAXONOMY, _rng
from .geography import _make_geography
from .taxa import _ORDERS, _PLAN_CODES
from .taxonomy import _PRETRAIN_DEPTH, _assign_species, _labels, _Taxonomy

__all__ = ["SPLIT_FRACTIONS"]

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

_PROJECT_CODES = (
    "AACTA", "BBCNP", "CRPAB", "GMCRA", "GMPAK", "UPCCR", "BSCRB", "MGCRA",
    "BCLMN", "SSPAA", "GMZAF", "BIOCA", "ACGAZ", "CNGBA", "GMTHA", "RRMFI",
)
_WELL_ROWS = "ABCDEFGH"


def _split_counts(n: int) -> dict:
    """Records per split: a floor of min(3, n // 8) each, the rest by share."""
    base = min(3, n // len(SPLITS))
    rest = n - base * len(SPLITS)
    raw = {s: rest * f for s, f in SPLIT_FRACTIONS.items()}
    counts = {s: base + int(math.floor(v)) for s, v in raw.items()}
    left = n - sum(counts.values())
    # largest remainder; ties broken by release order
    order = sorted(SPLITS, key=lambda s: (-(raw[s] - math.floor(raw[s])), SPLITS.index(s)))
    for s in order[:left]:
        counts[s] += 1
    assert sum(counts.values()) == n
    return counts



def _draw_splits(n, seed, tax):
    """Split and (true, hidden) species of every record, in file order."""
    srng = _rng(seed, _S_SPLITS)
    counts = _split_counts(n)
    per_split = _assign_species(counts, tax, srng)
    # interleave the splits in a random order, as in the published file
    split_of = np.array([s for s in SPLITS for _ in range(counts[s])], dtype=object)
    splits = split_of[srng.permutation(n)].tolist()
    remaining = {s: iter(per_split[s]) for s in SPLITS}
    species = [next(remaining[s]) for s in splits]
    return splits, species


def _well_id(rng, prefix):
    """A plate-well identifier, ``{prefix}{plate}-{row}{column}`` (``BIOUG12345-A01``)."""
    return f"{prefix}{rng.integers(10000, 99999)}-{_WELL_ROWS[rng.integers(8)]}{rng.integers(1, 13):02d}"


def _new_processid(rng):
    if rng.random() < 0.3:
        return _well_id(rng, "BIOUG")
    code = _PROJECT_CODES[rng.integers(len(_PROJECT_CODES))]
    return f"{code}{rng.integers(1, 100000 if rng.random() < 0.5 else 5000)}-{rng.integers(12, 24)}"


def _new_sampleid(rng, pid):
    r = rng.random()
    if pid.startswith("BIOUG") and r < 0.7:
        return pid  # plate-well processids often double as the sample id
    if r < 0.75:
        return _well_id(rng, "BIOUG")
    if r < 0.9:
        return _well_id(rng, "CCDB-")
    return f"GMP#{rng.integers(10000, 99999):05d}"


def _make_ids(rng, splits):
    """Unique processids and sampleids; one pretrain chunk is kept empty."""
    empty_chunk = f"{rng.integers(256):02x}"
    pids, sids = [], []
    used_p, used_s = set(), set()
    for split in splits:
        pid = _new_processid(rng)
        while pid in used_p or (split == "pretrain" and chunk_of(pid, "pretrain") == empty_chunk):
            pid = _new_processid(rng)
        used_p.add(pid)
        pids.append(pid)
        sid = _new_sampleid(rng, pid)
        while sid in used_s:
            sid = _new_sampleid(rng, pid)
        used_s.add(sid)
        sids.append(sid)
    return pids, sids, empty_chunk


def _label_records(species, splits, rrng):
    """Labels of every record (pretrain ones down to a random rank only) and the BIN it falls in."""
    depth_names = [d for d, _ in _PRETRAIN_DEPTH]
    depth_p = np.array([p for _, p in _PRETRAIN_DEPTH])
    depth_p /= depth_p.sum()
    labels, bins = [], []
    for sp, split in zip(species, splits):
        if split == "pretrain":
            depth = depth_names[rrng.choice(len(depth_names), p=depth_p)]
            if depth == "genus" and sp.genus.name is None:
                depth = "subfamily"
        else:
            depth = "species"
        labels.append(_labels(sp, depth))
        bins.append(sp.bins[0] if len(sp.bins) == 1 or rrng.random() < 0.7 else sp.bins[1])
    return labels, bins


def _share_bins(species, bins, rrng):
    """Move some records of a few species into a BIN of another species of their genus.

    BINs map to mostly, not always, one species.
    """
    by_genus = {}
    for sp in dict.fromkeys(species):
        if sp.genus.name:
            by_genus.setdefault(sp.genus.name, []).append(sp)
    shared = {}
    for sps in by_genus.values():
        if len(sps) >= 2 and rrng.random() < 0.08:
            shared[sps[1].name] = sps[0].bins[0]
    return [shared.get(sp.name, b) if rrng.random() < 0.5 else b for sp, b in zip(species, bins)]


def _measurements(n, rrng):
    """Image measurements and other per-record numbers (area_fraction is what the images are drawn with)."""
    area = np.clip(rrng.beta(2.2, 12.0, n), 0.004, 0.8)
    img_missing = rrng.random(n) < 0.004
    area_missing = img_missing | (rrng.random(n) < 0.002)
    scale = np.exp(rrng.normal(1.05, 0.35, n))
    inferred = rrng.choice(5, size=n, p=[0.78, 0.12, 0.06, 0.03, 0.01])
    # BIOSCAN-1M index for ~22 % of the records, unique
    has_1m = np.flatnonzero(rrng.random(n) < 0.22)
    idx_1m = np.full(n, -1, dtype=np.int64)
    if len(has_1m):
        idx_1m[has_1m] = rrng.choice(1_128_313, size=len(has_1m), replace=False)
    return {"area": area, "img_missing": img_missing, "area_missing": area_missing, "scale": scale,
            "inferred": inferred, "idx_1m": idx_1m}


def _record(i, pid, sid, split, lab, dna_bin, barcode, geo, m):
    """Record ``i`` as a dict with every column; ``m`` holds the arrays of :func:`_measurements`."""
    country, province, lat, lon = geo
    area = m["area"][i]
    no_image = m["img_missing"][i]
    return {
        "processid": pid,
        "sampleid": sid,
        "taxon": lab["taxon"],
        "phylum": lab["phylum"],
        "class": lab["class"],
        "order": lab["order"],
        "family": lab["family"],
        "subfamily": lab["subfamily"],
        "genus": lab["genus"],
        "species": lab["species"],
        "dna_bin": dna_bin,
        "dna_barcode": barcode,
        "country": country,
        "province_state": province,
        "coord-lat": lat,
        "coord-lon": lon,
        "image_measurement_value": None if no_image else float(round(area * 1024 * 768)),
        "area_fraction": None if m["area_missing"][i] else float(round(area, 6)),
        "scale_factor": None if no_image else float(m["scale"][i]),
        "inferred_ranks": int(min(m["inferred"][i], sum(v is not None for v in lab.values()) - 1)),
        "split": split,
        "index_bioscan_1M_insect": int(m["idx_1m"][i]) if m["idx_1m"][i] >= 0 else None,
        "chunk": chunk_of(pid, split),
    }


def _make_records(n, seed):
    """The records (dicts with every column) and the per-record image parameters."""
    tax = _Taxonomy(_rng(seed, _S_TAXONOMY))
    splits, species = _draw_splits(n, seed, tax)
    rrng = _rng(seed, _S_RECORDS)
    pids, sids, _ = _make_ids(_rng(seed, _S_IDS), splits)
    labels, bins = _label_records(species, splits, rrng)
    bins = _share_bins(species, bins, rrng)
    barcodes = _make_barcodes(n, species, bins, seed)
    # records without a BIN (mostly pretrain); barcodes were made from the true BIN
    bin_missing = rrng.random(n) < np.where(np.array(splits) == "pretrain", 0.02, 0.003)
    geo = _make_geography(n, [sp.home for sp in species], _rng(seed, _S_GEO), tax.country_p)
    m = _measurements(n, rrng)
    dna_bins = [None if missing else b for b, missing in zip(bins, bin_missing)]
    columns = zip(pids, sids, splits, labels, dna_bins, barcodes, geo)
    records = [_record(i, *values, m) for i, values in enumerate(columns)]
    render = [
        (_PLAN_CODES[_ORDERS[sp.genus.order][3]], sp.colour, sp.size, float(m["area"][i]))
        for i, sp in enumerate(species)
    ]
    return records, render

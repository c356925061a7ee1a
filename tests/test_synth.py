"""Tests of bioscan_io.synth, the generator of synthetic BIOSCAN-5M-like datasets."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioscan_io import synth
from bioscan_io.schema import (
    CATEGORICAL_COLUMNS,
    CHUNK_LENGTH,
    COLUMNS,
    FLOAT_COLUMNS,
    IMAGES_DIR,
    METADATA_CSV,
    METADATA_JSONLD,
    NULLABLE_INT_COLUMNS,
    SEEN_SPLITS,
    SPLIT_SIZES,
    SPLITS,
    UINT8_COLUMNS,
    UNSEEN_SPLITS,
    BioscanError,
    chunk_of,
    image_relpath,
)

N = 1000
SEED = 7
PACKAGE = "cropped_256"
BINOMIAL = re.compile(r"[A-Z][a-z]+ [a-z]+(-[a-z]+)?")
GENUS = re.compile(r"[A-Z][a-z]+")
IUPAC = set("ACGTNRYKMSWBDHV")


def read_rows(root) -> list[dict]:
    with open(Path(root) / METADATA_CSV, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def tree_bytes(root) -> dict:
    """Relative path -> content of every file under root/bioscan5m."""
    out = {}
    base = Path(root)
    for dirpath, _, files in os.walk(base / "bioscan5m"):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(base))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "root"
    return synth.generate(root, n_records=N, seed=SEED, package=PACKAGE, workers=2)


@pytest.fixture(scope="module")
def rows(ds):
    return read_rows(ds.root)


@pytest.fixture(scope="module")
def by_split(rows):
    out = defaultdict(list)
    for r in rows:
        out[r["split"]].append(r)
    return out


# ----------------------------------------------------------------------------
# Layout and files
# ----------------------------------------------------------------------------


def test_summary(ds, rows):
    assert ds.root.is_dir()
    assert ds.n_records == len(rows) == N
    assert ds.csv_path == ds.root / METADATA_CSV and ds.csv_path.is_file()
    assert ds.jsonld_path == ds.root / METADATA_JSONLD and ds.jsonld_path.is_file()
    assert ds.images_dir == ds.root / IMAGES_DIR / PACKAGE
    assert ds.n_images == N
    assert list(ds.split_counts) == list(SPLITS)
    assert ds.split_counts == dict(Counter(r["split"] for r in rows))
    assert "1000 records" in ds.summary()


def test_layout(ds, rows):
    images = ds.root / IMAGES_DIR / PACKAGE
    assert sorted(p.name for p in images.iterdir()) == sorted(SPLITS)
    expected = set()
    for r in rows:
        assert r["chunk"] == chunk_of(r["processid"], r["split"])
        if CHUNK_LENGTH[r["split"]] == 0:
            assert r["chunk"] == ""
        else:
            assert len(r["chunk"]) == CHUNK_LENGTH[r["split"]]
        rel = image_relpath(r["processid"], r["split"], r["chunk"], PACKAGE)
        assert (ds.root / rel).is_file(), rel
        expected.add(str(ds.root / rel))
    found = {str(p) for p in images.rglob("*") if p.is_file()}
    assert found == expected  # nothing else in the package folder
    empty_chunks = 0
    for split in SPLITS:
        k = CHUNK_LENGTH[split]
        entries = list((images / split).iterdir())
        if k == 0:  # no chunk folders: the images lie in the split folder
            assert entries and all(p.is_file() and p.suffix == ".jpg" for p in entries)
        else:  # every chunk folder exists, even empty ones
            assert sorted(p.name for p in entries) == [f"{c:0{k}x}" for c in range(16**k)]
            empty_chunks += sum(1 for p in entries if not any(p.iterdir()))
    assert empty_chunks >= 1


def test_csv_header_and_format(ds):
    text = ds.csv_path.read_text(encoding="utf-8")
    assert text.split("\n", 1)[0] == ",".join(COLUMNS)
    assert "\r" not in text and text.endswith("\n")
    # a value with a comma is quoted
    assert '"Bonaire, Sint Eustatius and Saba"' in text


def parse_jsonld(path):
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    assert set(doc) == {"@context", "@graph"}
    ctx = doc["@context"]
    assert ctx["dwc"].startswith("http://rs.tdwg.org/dwc/terms/")
    assert all(c in ctx for c in COLUMNS)
    return doc["@graph"]


def test_jsonld_streamable(ds):
    lines = ds.jsonld_path.read_text(encoding="utf-8").split("\n")
    start = lines.index('"@graph": [')
    body = lines[start + 1 :]
    assert body[-2:] == ["]}", ""]
    records = [json.loads(line.rstrip(",")) for line in body[:-2]]
    assert len(records) == N
    assert all(line.endswith(",") for line in body[: N - 1]) and not body[N - 1].endswith(",")


def test_csv_and_jsonld_hold_the_same_records(ds, rows):
    graph = parse_jsonld(ds.jsonld_path)
    assert len(graph) == len(rows)
    for r, j in zip(rows, graph):
        assert j["@id"] == "bold:" + r["processid"]
        assert set(COLUMNS) <= set(j)
        for c in COLUMNS:
            v, cell = j[c], r[c]
            if c in FLOAT_COLUMNS:
                assert (v is None and cell == "") or (type(v) is float and repr(v) == cell and float(cell) == v), c
            elif c in UINT8_COLUMNS:
                assert type(v) is int and 0 <= v <= 255 and str(v) == cell
            elif c in NULLABLE_INT_COLUMNS:
                assert (v is None and cell == "") or (type(v) is int and str(v) == cell)
            elif c in CATEGORICAL_COLUMNS:
                assert (v is None and cell == "") or (type(v) is str and v != "" and v == cell), c
            else:
                assert type(v) is str and v == cell, c


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------


def test_images_decode_and_look_natural(ds, rows):
    stds, means, sizes = [], [], []
    for r in rows:
        path = ds.root / image_relpath(r["processid"], r["split"], r["chunk"], PACKAGE)
        sizes.append(path.stat().st_size)
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
            assert min(w, h) == 256 and 256 <= max(w, h) <= 400
            a = np.asarray(im, dtype=np.float32)
        stds.append(a.std())
        means.append(a.mean((0, 1)))
    assert min(stds) > 8 and np.median(stds) > 25  # never a flat image
    mean = np.mean(means, axis=0) / 255
    assert np.all(np.abs(mean - 0.763) < 0.05), mean  # close to the dataset mean
    assert 4_000 < min(sizes) and max(sizes) < 80_000
    assert 8_000 < np.median(sizes) < 40_000


def test_larger_packages(tmp_path):
    ds = synth.generate(tmp_path, n_records=30, seed=1, package="original_full", workers=1)
    shapes = []
    for p in ds.images_dir.rglob("*.jpg"):
        with Image.open(p) as im:
            shapes.append(im.size)
            assert np.asarray(im).std() > 5
    assert len(shapes) == 30
    assert all(h == 768 and w > h for w, h in shapes)
    ds = synth.generate(tmp_path, n_records=30, seed=1, package="cropped", workers=1)
    for p in ds.images_dir.rglob("*.jpg"):
        with Image.open(p) as im:
            assert 512 <= min(im.size) <= 768
    # both packages share one metadata file
    assert sorted(p.name for p in (tmp_path / IMAGES_DIR).iterdir()) == ["cropped", "original_full"]


# ----------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------


def test_deterministic_and_independent_of_workers(tmp_path):
    a = synth.generate(tmp_path / "a", n_records=300, seed=5, workers=1)
    b = synth.generate(tmp_path / "b", n_records=300, seed=5, workers=2)
    ta, tb = tree_bytes(a.root), tree_bytes(b.root)
    assert len(ta) == 300 + 3  # images, CSV, JSON-LD, marker
    assert ta == tb
    c = synth.generate(tmp_path / "c", n_records=300, seed=6, images=False, package="original_256")
    assert c.csv_path.read_bytes() != a.csv_path.read_bytes()
    # the metadata does not depend on the package
    d = synth.generate(tmp_path / "d", n_records=300, seed=5, images=False, package="original_256")
    assert d.csv_path.read_bytes() == a.csv_path.read_bytes()
    assert d.jsonld_path.read_bytes() == a.jsonld_path.read_bytes()
    assert not (d.root / IMAGES_DIR).exists()


def test_other_seed_gives_other_images(tmp_path):
    a = synth.generate(tmp_path / "a", n_records=40, seed=1, workers=1)
    b = synth.generate(tmp_path / "b", n_records=40, seed=2, workers=1)
    ia = {p.name: p.read_bytes() for p in a.images_dir.rglob("*.jpg")}
    ib = {p.name: p.read_bytes() for p in b.images_dir.rglob("*.jpg")}
    assert not set(ia.values()) & set(ib.values())


def test_regenerating_replaces_stale_images(tmp_path):
    synth.generate(tmp_path, n_records=120, seed=1, workers=1)
    ds = synth.generate(tmp_path, n_records=60, seed=2, workers=1)
    assert len(list(ds.images_dir.rglob("*.jpg"))) == 60
    assert len(read_rows(tmp_path)) == 60


def test_independent_of_chunk_size(tmp_path):
    n = 700
    ref = synth.generate(tmp_path / "ref", n_records=n, seed=4, images=False)  # one chunk
    # many chunks, in this process and with the identifiers and barcodes drawn by a second one
    for chunk, workers in ((97, 1), (100, 2), (1, 1)):
        ds = synth.generate(tmp_path / f"c{chunk}", n_records=n, seed=4, images=False, workers=workers,
                            _chunk_size=chunk)
        assert ds.csv_path.read_bytes() == ref.csv_path.read_bytes(), chunk
        assert ds.jsonld_path.read_bytes() == ref.jsonld_path.read_bytes(), chunk
        assert ds.split_counts == ref.split_counts


def test_image_pool(tmp_path):
    n, pool = 40, 6
    full = synth.generate(tmp_path / "full", n_records=n, seed=2, workers=1)
    ds = synth.generate(tmp_path / "pool", n_records=n, seed=2, workers=1, image_pool=pool, _chunk_size=4)
    assert (ds.n_images, ds.n_rendered) == (n, pool) and "6 distinct" in ds.summary()
    rows = read_rows(ds.root)
    paths = [image_relpath(r["processid"], r["split"], r["chunk"], PACKAGE) for r in rows]
    stats = [(ds.root / p).stat() for p in paths]  # every record's image exists
    inodes = [(st.st_dev, st.st_ino) for st in stats]
    assert len(set(inodes)) == pool
    assert all(st.st_nlink > 1 for st in stats)
    assert all(inodes[i] == inodes[i % pool] for i in range(n))  # record i is a link to record i % pool
    assert len(list(ds.images_dir.rglob("*.jpg"))) == n
    # the pool is the first records' own images; the metadata does not change
    assert all((ds.root / p).read_bytes() == (full.root / p).read_bytes() for p in paths[:pool])
    assert ds.csv_path.read_bytes() == full.csv_path.read_bytes()
    # a pool as large as the dataset is no pool
    big = synth.generate(tmp_path / "big", n_records=n, seed=2, workers=1, image_pool=n)
    assert big.n_rendered == n
    assert {k: v for k, v in tree_bytes(big.root).items() if k.endswith(".jpg")} == \
        {k: v for k, v in tree_bytes(full.root).items() if k.endswith(".jpg")}


def test_barcode_consensus_stays_compact():
    from bioscan_io.synth.barcodes import _BarcodeMaker
    from bioscan_io.synth.records import _plan

    n = 3000
    plan = _plan(n, 1, False)
    maker = _BarcodeMaker(1, plan.species, plan.slot, plan.tax.genera, plan.species_cols["genus"])
    assert len(maker.chunk(0, n // 2) + maker.chunk(n // 2, n)) == n
    c = maker.consensus
    # one packed difference list per (species, BIN) used; a species' own dropped once its BINs are made
    assert len(c.bin_diff.sizes) == len(set(zip(plan.species.tolist(), plan.slot.tolist())))
    assert not c.species_diff
    genera = plan.tax.genera
    ancestors = {("root",)} | {(k, v) for g in genera for k, v in
                               (("c", g.klass), ("o", g.order), ("f", g.family), ("g", g.name or g.family + "?"))}
    assert set(c.cache) <= ancestors


def test_bioscan_1m_indices_at_full_size():
    from bioscan_io.synth.records import _measurements

    # 22 % of 5.2 million records is more than BIOSCAN-1M holds: the indices stay unique
    idx = _measurements(5_200_000, np.random.default_rng(0))["idx_1m"]
    idx = idx[idx >= 0]
    assert len(idx) == 1_128_313 and len(np.unique(idx)) == len(idx)


def test_background_errors_are_raised():
    from bioscan_io.synth.stream import _ahead, _can_fork

    if not _can_fork():
        pytest.skip("no fork here")

    def make(k):
        yield k
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="boom"), _ahead(make, (1,), background=True) as items:
        assert next(items) == 1
        next(items)


# ----------------------------------------------------------------------------
# Metadata content
# ----------------------------------------------------------------------------


def test_split_sizes():
    for n in range(1, 2001):
        counts = synth._split_counts(n)
        assert list(counts) == list(SPLITS) and sum(counts.values()) == n
        if n >= 24:
            assert min(counts.values()) >= 3
        if n >= 1000:
            assert min(counts.values()) >= 0.03 * n
    big = synth._split_counts(10_000)
    assert big["pretrain"] == max(big.values())


def test_split_counts_of_dataset(by_split):
    assert set(by_split) == set(SPLITS)
    assert all(len(by_split[s]) >= 0.03 * N for s in SPLITS)


def test_official_split_sizes():
    # the release's very counts at its size; the count function alone, nothing generated
    assert synth._split_counts(5_150_850, official=True) == SPLIT_SIZES
    assert synth.OFFICIAL_SPLIT_SIZES == SPLIT_SIZES
    assert synth._split_counts(1000, official=True) == {
        "pretrain": 908, "train": 56, "val": 3, "test": 8,
        "key_unseen": 7, "val_unseen": 2, "test_unseen": 1, "other_heldout": 15,
    }
    total = sum(SPLIT_SIZES.values())
    for n in (1, 2, 7, 24, 100, 999, 12_345, 1_000_003):
        counts = synth._split_counts(n, official=True)
        assert list(counts) == list(SPLITS) and sum(counts.values()) == n
        exact = {s: Fraction(n * c, total) for s, c in SPLIT_SIZES.items()}
        up = [s for s in SPLITS if counts[s] == math.floor(exact[s]) + 1]
        assert all(counts[s] == math.floor(exact[s]) for s in SPLITS if s not in up)
        # largest remainder: every split rounded up has a remainder at least that of every split rounded down
        down = [s for s in SPLITS if s not in up]
        if up and down:
            assert min(exact[s] % 1 for s in up) >= max(exact[s] % 1 for s in down)
    # the default stays the default
    assert synth._split_counts(1000) == synth._split_counts(1000, official=False)


def test_official_splits_dataset(tmp_path):
    n = 400
    ds = synth.generate(tmp_path, n_records=n, seed=5, images=False, official_splits=True)
    expected = synth._split_counts(n, official=True)
    assert ds.split_counts == expected
    assert Counter(r["split"] for r in read_rows(tmp_path)) == {s: c for s, c in expected.items() if c}
    assert json.loads((tmp_path / "bioscan5m" / synth.MARKER_NAME).read_text())["official_splits"] is True
    # other splits, other metadata: the images of the earlier generation go
    synth.generate(tmp_path, n_records=30, seed=5, workers=1)
    synth.generate(tmp_path, n_records=30, seed=5, images=False, official_splits=True)
    assert not (tmp_path / IMAGES_DIR).exists()


def test_processids(rows):
    pids = [r["processid"] for r in rows]
    assert len(set(pids)) == len(pids)
    assert len({p.lower() for p in pids}) == len(pids)  # safe on case-insensitive disks
    for p in pids:
        assert "." not in p and "/" not in p and "\\" not in p
        assert re.fullmatch(r"[A-Z]{4,5}\d{1,5}-([A-H]\d\d|\d\d)", p), p
    assert all(r["sampleid"] for r in rows)


def test_taxonomy_is_consistent(rows):
    ranks = ["phylum", "class", "order", "family", "subfamily", "genus"]
    parents = defaultdict(set)
    for r in rows:
        for i, rank in enumerate(ranks):
            if r[rank]:
                for up in ranks[:i]:
                    if up == "subfamily" and rank == "genus":
                        continue  # subfamily is checked below
                    parents[(rank, r[rank], up)].add(r[up])
    for (rank, value, up), seen in parents.items():
        assert len(seen) == 1 and "" not in seen, (rank, value, up, seen)
    genus_sub = defaultdict(set)
    for r in rows:
        if r["genus"] and r["subfamily"]:
            genus_sub[r["genus"]].add(r["subfamily"])
    assert all(len(v) == 1 for v in genus_sub.values())
    # a species always has the same genus (possibly none) and higher ranks
    sp = defaultdict(set)
    for r in rows:
        if r["species"]:
            sp[r["species"]].add(tuple(r[k] for k in ranks))
    assert sp and all(len(v) == 1 for v in sp.values())
    # taxon is the most specific rank given; labels are never skipped below it
    for r in rows:
        given = [r[k] for k in ranks + ["species"]]
        deepest = max(i for i, v in enumerate(given) if v)
        assert r["taxon"] == given[deepest]
        assert all(given[i] for i in range(deepest) if ranks[i] not in ("subfamily", "genus"))
    # mostly Arthropoda / Insecta / Diptera
    n = len(rows)
    assert Counter(r["phylum"] for r in rows)["Arthropoda"] > 0.98 * n
    assert Counter(r["class"] for r in rows)["Insecta"] > 0.9 * n
    orders = Counter(r["order"] for r in rows)
    assert orders.most_common(1)[0][0] == "Diptera"
    assert orders["Hymenoptera"] > 0.05 * n


def test_bins_map_to_mostly_one_species(rows):
    species_of_bin = defaultdict(set)
    for r in rows:
        assert r["dna_bin"] == "" or re.fullmatch(r"BOLD:[A-Z]{3}\d{4}", r["dna_bin"])
        if r["dna_bin"] and r["species"]:
            species_of_bin[r["dna_bin"]].add(r["species"])
    shared = sum(len(s) > 1 for s in species_of_bin.values())
    assert species_of_bin and shared <= 0.1 * len(species_of_bin)


def test_split_rules(by_split):
    pre = by_split["pretrain"]
    assert all(r["species"] == "" for r in pre)
    assert sum(r["genus"] == "" for r in pre) > 0.3 * len(pre)
    seen = {s: {r["species"] for r in by_split[s]} for s in SEEN_SPLITS}
    for s in SEEN_SPLITS:
        for r in by_split[s]:
            assert BINOMIAL.fullmatch(r["species"]), r["species"]
            assert r["species"].split()[0] == r["genus"]
    assert seen["val"] <= seen["train"] and seen["test"] <= seen["train"]
    all_seen = set().union(*seen.values())
    unseen = {s: {r["species"] for r in by_split[s]} for s in UNSEEN_SPLITS}
    for s in UNSEEN_SPLITS:
        for r in by_split[s]:
            assert r["species"] and not BINOMIAL.fullmatch(r["species"]), r["species"]
            assert GENUS.fullmatch(r["genus"]) and r["species"].startswith(r["genus"] + " ")
    assert unseen["val_unseen"] <= unseen["key_unseen"] and unseen["test_unseen"] <= unseen["key_unseen"]
    all_unseen = set().union(*unseen.values())
    assert not all_unseen & all_seen
    other = by_split["other_heldout"]
    for r in other:
        assert r["species"] and not BINOMIAL.fullmatch(r["species"])
        assert r["genus"] == "" or not GENUS.fullmatch(r["genus"]), r["genus"]
    assert any(r["genus"] == "" for r in other) and any(r["genus"] for r in other)
    other_species = {r["species"] for r in other}
    assert not other_species & (all_seen | all_unseen)
    # labels are incomplete overall
    n = sum(len(v) for v in by_split.values())
    assert sum(r["species"] != "" for v in by_split.values() for r in v) < 0.5 * n


def test_sort_order_stress_values(rows):
    species = {r["species"] for r in rows}
    assert {"Megaselia sp. 3ZZ", "Megaselia sp. 3zz", "Megaselia sp. CR-17", "Megaselia sp. CR 17"} <= species
    assert "Phaonia sp. Ménétriès" in species and "Polygonia c-album" in species
    provinces = {r["province_state"] for r in rows}
    assert {"Quebec", "Québec", "KwaZulu-Natal", "Kwazulu-Natal", "Provence-Alpes-Côte d'Azur"} <= provinces


def test_barcodes(rows):
    bcs = [r["dna_barcode"] for r in rows]
    n = len(bcs)
    lengths = np.array([len(b) for b in bcs])
    assert all(b and set(b) <= IUPAC for b in bcs)
    assert np.mean(lengths == 658) > 0.8
    assert 1 <= np.sum(lengths > 660) <= 0.05 * n and lengths.max() <= 1500
    assert np.sum((lengths >= 150) & (lengths <= 600)) >= 0.01 * n
    assert 1 <= np.sum(lengths < 100) <= 0.02 * n
    assert sum(bool(re.search(r"[ACGT]N+[ACGT]", b)) for b in bcs) >= 0.01 * n
    assert sum(b.endswith("N") for b in bcs) >= 0.01 * n
    assert sum(bool(re.search("[RYKMSWBDHV]", b)) for b in bcs) >= 0.005 * n
    assert sum(bool(re.search("[^N]", b)) for b in bcs) == n


def test_barcodes_cluster_by_species(rows):
    def seq(r):
        return np.frombuffer(r["dna_barcode"][:600].encode(), dtype=np.uint8)

    full = [r for r in rows if len(r["dna_barcode"]) >= 600 and r["species"]]
    groups = defaultdict(list)
    for r in full:
        groups[r["species"]].append(seq(r))
    within = [np.mean(g[0] != g[1]) for g in groups.values() if len(g) >= 2]
    assert within and np.median(within) < 0.05
    by_order = defaultdict(list)
    for r in full:
        by_order[r["order"]].append(seq(r))
    (_, a), (_, b) = sorted(by_order.items(), key=lambda kv: -len(kv[1]))[:2]
    assert np.mean(a[0] != b[0]) > 0.15


def test_other_columns(rows):
    n = len(rows)
    missing = {c: sum(r[c] == "" for r in rows) / n for c in COLUMNS}
    for c in ("processid", "sampleid", "dna_barcode", "split", "phylum", "inferred_ranks"):
        assert missing[c] == 0
    for c in ("coord-lat", "coord-lon", "province_state", "dna_bin"):
        assert 0 < missing[c] < 0.25, c
    assert 0.6 < missing["index_bioscan_1M_insect"] < 0.9
    idx = [int(r["index_bioscan_1M_insect"]) for r in rows if r["index_bioscan_1M_insect"]]
    assert len(set(idx)) == len(idx) and min(idx) >= 0
    for r in rows:
        if r["coord-lat"]:
            assert -90 <= float(r["coord-lat"]) <= 90 and -180 <= float(r["coord-lon"]) <= 180
        if r["area_fraction"]:
            assert 0 < float(r["area_fraction"]) < 1
        if r["image_measurement_value"]:
            assert float(r["image_measurement_value"]) > 0
        assert 0 <= int(r["inferred_ranks"]) <= 255


def test_pandas_reads_categories(ds, rows):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(ds.csv_path, dtype="category")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == len(rows)
    for c in CATEGORICAL_COLUMNS:
        written = {r[c] for r in rows} - {""}
        assert set(df[c].cat.categories) == written, c
        assert int(df[c].isna().sum()) == sum(r[c] == "" for r in rows)
    typed = pd.read_csv(ds.csv_path, dtype={"inferred_ranks": "uint8", "index_bioscan_1M_insect": "Int64"})
    for c in FLOAT_COLUMNS:
        assert typed[c].dtype == np.float64
        got = [repr(float(v)) for v in typed[c].dropna()]
        assert got == [r[c] for r in rows if r[c]]


# ----------------------------------------------------------------------------
# Errors, CLI, demo
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"package": "thumbnails"}, "unknown image package"),
        ({"n_records": 0}, "n_records must be at least 1"),
        ({"n_records": 2.5}, "n_records must be an integer"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"image_pool": 0}, "image_pool must be at least 1"),
    ],
)
def test_user_errors(tmp_path, kwargs, message):
    with pytest.raises(BioscanError, match=message):
        synth.generate(tmp_path, **{"n_records": 10, **kwargs})


def test_root_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BioscanError, match="not a folder"):
        synth.generate(f, n_records=10)
    real = tmp_path / "real"
    (real / "bioscan5m" / "metadata").mkdir(parents=True)
    with pytest.raises(BioscanError, match="did not write"):
        synth.generate(real, n_records=10)


def test_tiny_datasets(tmp_path):
    for n in (1, 7, 30, 200):
        ds = synth.generate(tmp_path / str(n), n_records=n, seed=3, images=False)
        assert sum(ds.split_counts.values()) == n == len(read_rows(ds.root))
    assert min(ds.split_counts.values()) >= 3  # n = 200


def test_generate_main(tmp_path, capsys):
    from bioscan_io.cli import main

    assert main(["generate", str(tmp_path / "g"), "--records", "50", "--seed", "2", "--no-images"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "50 records" in out and "no images" in out
    assert len(read_rows(tmp_path / "g")) == 50
    assert main(["generate", str(tmp_path / "h"), "--records", "0"]) == 2  # a user error exits 2
    assert "n_records must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "h"), "--package", "nope"])


def test_generate_main_official_splits_and_image_pool(tmp_path, capsys):
    from bioscan_io.cli import main

    root = tmp_path / "g"
    assert main(["generate", str(root), "--records", "60", "--official-splits", "--image-pool", "5",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "60 cropped_256 images" in out and "5 distinct" in out
    expected = synth._split_counts(60, official=True)
    assert Counter(r["split"] for r in read_rows(root)) == {s: c for s, c in expected.items() if c}
    assert main(["generate", str(tmp_path / "h"), "--records", "10", "--image-pool", "0"]) == 2
    assert "image_pool must be at least 1" in capsys.readouterr().err


def test_demo_root_concurrent(tmp_path, monkeypatch):
    target = tmp_path / "demo"
    code = textwrap.dedent(
        """
        from bioscan_io.synth import demo_root
        print(demo_root())
        """
    )
    env = {**os.environ, synth.DEMO_ENV: str(target)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(synth.__file__).parents[2]), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
        assert out.decode().strip() == str(target)
    assert len(read_rows(target)) == synth.DEMO_RECORDS
    assert len(list((target / IMAGES_DIR / "cropped_256").rglob("*.jpg"))) == synth.DEMO_RECORDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folders left
    # a second call in this process finds it complete, and it matches seed 0
    monkeypatch.setenv(synth.DEMO_ENV, str(target))
    assert synth.demo_root() == target
    ref = synth.generate(tmp_path / "ref", n_records=synth.DEMO_RECORDS, seed=0, images=False)
    assert ref.csv_path.read_bytes() == (target / METADATA_CSV).read_bytes()


def test_demo_root_refuses_foreign_folder(tmp_path, monkeypatch):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    monkeypatch.setenv(synth.DEMO_ENV, str(target))
    with pytest.raises(BioscanError, match="does not hold"):
        synth.demo_root()

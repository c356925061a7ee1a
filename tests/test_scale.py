"""Past Arrow's 2 GiB limit: a metadata file whose barcodes hold more than 2**31 bytes of text.

BIOSCAN-5M's ``dna_barcode`` column holds ~3.3 GB. An Arrow ``string`` array has
32-bit offsets, so any step that combines that column into one array (a ``take``
over the whole memory-mapped table, a concatenation) fails past 2**31 - 1 bytes.
This test crosses the limit cheaply: ~110,000 filler ``pretrain`` records of
20,000-base barcodes (no images) come first in the file, and the records of a
small generated dataset (with images, a few given barcodes longer than any real
one) come after the 2**31st byte. ``bioscan-shard``, ``verify --metadata``,
``export`` and ``make_loader`` then all run on ``train``, and the shards are exact.

Cost on CI (2 cores): about 2.3 GB of CSV written in a few seconds, the metadata
read twice (shard, verify) with an Arrow cache beside each, so ~7 GB of
temporary disk at the peak and one to two minutes of run time.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bioscan_io import make_loader, synth
from bioscan_io import columns
from bioscan_io import metadata as md
from bioscan_io.cli import main as bioscan_io_main, shard_main
from bioscan_io.schema import COLUMNS, METADATA_CSV, image_subpath
from bioscan_io.sources import image_keys

LIMIT = 2**31
FILLER_BASES = 20_000
#: Barcodes of train records given here: longer than any real one, and crossing a 64 KiB boundary.
LONG = {0: 70_000, 1: 661, 2: 5_000}


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    """A dataset root whose metadata has > 2**31 bytes of barcodes, the train records after that point."""
    root = tmp_path_factory.mktemp("past2gib")
    synth.generate(root, n_records=300, seed=11, workers=1)
    path = root / METADATA_CSV
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    train = [r for r in rows if r["split"] == "train"]
    for i, n in LONG.items():
        train[i]["dna_barcode"] = "".join(rng.choice(list("ACGTN"), n, p=[0.249, 0.249, 0.249, 0.249, 0.004]))
    template = next(r for r in rows if r["split"] == "pretrain")
    barcodes = ["".join(rng.choice(list("ACGT"), FILLER_BASES)) for _ in range(16)]
    fillers = LIMIT // FILLER_BASES + 2_000
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(fillers):
            record = {**template, "processid": f"FILL{i:07d}-19", "sampleid": f"FILLS{i:07d}",
                      "dna_barcode": barcodes[i % len(barcodes)], "index_bioscan_1M_insect": ""}
            writer.writerow([record[c] for c in COLUMNS])
        for record in rows:
            writer.writerow([record[c] for c in COLUMNS])
    assert fillers * FILLER_BASES > LIMIT
    return root, {r["processid"]: r for r in train}


def test_train_shards_past_2gib_of_barcodes(big_root, tmp_path, capsys):
    root, train = big_root
    out = tmp_path / "shards"
    assert shard_main(["--root", str(root), "--split", "train", "--out", str(out), "--maxcount", "40",
                       "--workers", "2", "--no-progress"]) == 0
    folder = out / "train"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_samples"] == len(train)

    assert bioscan_io_main(["verify", str(folder), "--metadata", str(root / METADATA_CSV)]) == 0
    assert "OK" in capsys.readouterr().out

    parquet = tmp_path / "train.parquet"
    assert bioscan_io_main(["export", str(folder), "--format", "parquet", "--out", str(parquet)]) == 0
    table = pq.read_table(parquet, columns=["processid", "dna_barcode"])
    assert dict(zip(*table.to_pydict().values())) == {pid: r["dna_barcode"] for pid, r in train.items()}

    loader = make_loader(str(folder), task="classify", batch_size=16, num_workers=2, modality="dna",
                         max_len=20_000)
    seen = [pid for batch in loader for pid in batch["processid"]]
    assert sorted(seen) == sorted(train)


# ----------------------------------------------------------------------------- the helpers that make it hold


def _batched(columns: dict, sizes: list[int]) -> pa.Table:
    """A table of several record batches, as a memory-mapped metadata cache is."""
    table = pa.table(columns)
    batches, at = [], 0
    for n in sizes:
        batches.extend(table.slice(at, n).to_batches())
        at += n
    return pa.Table.from_batches(batches, schema=table.schema)


@given(st.lists(st.integers(0, 29), max_size=60))
def test_take_rows_equals_take(rows):
    table = _batched({"processid": [f"P{i}" * (i % 4 + 1) for i in range(30)], "x": list(range(30))}, [7, 0, 11, 12])
    taken = columns.take_rows(table, np.array(rows, np.int64))
    assert taken.to_pylist() == table.take(pa.array(rows, pa.int64())).to_pylist()
    assert taken.schema.field("processid").type == pa.large_string()


def test_take_rows_refuses_rows_out_of_range():
    table = _batched({"x": list(range(5))}, [2, 3])
    with pytest.raises(IndexError):
        columns.take_rows(table, [5])


def test_row_lookup_finds_rows_and_nothing_else():
    pids = ["BIOUG123-A01", "AACTA5-19", "ÄÖ-1", "Z", "CRPAB77-20"]
    table = _batched({"processid": pids}, [2, 3])
    lookup = columns.RowLookup(table, np.array([0, 2, 3, 4]))  # AACTA5-19 is not among the rows
    keys = ["Z", "BIOUG123-A01", "AACTA5-19", "ÄÖ-1", "BIOUG123-A01-and-longer-than-any", "", "CRPAB77-2"]
    assert lookup.find(keys).tolist() == [3, 0, -1, 2, -1, -1, -1]
    empty = columns.RowLookup(table, np.empty(0, np.int64))
    assert empty.find(["Z"]).tolist() == [-1]


def test_image_keys_follow_image_subpath(dataset_small):
    table = md.read_metadata(dataset_small / METADATA_CSV)
    rows = np.arange(table.num_rows)[::-1]
    expected = [image_subpath(p, s, c) for p, s, c in zip(*(table.column(c).take(pa.array(rows)).to_pylist()
                                                             for c in ("processid", "split", "chunk")))]
    assert image_keys(table, rows).to_pylist() == expected


#: No NUL (fixed-width bytes end at one, columns.fixed_width) and no lone surrogate (not UTF-8).
TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


@given(st.lists(st.text(TEXT, max_size=6), max_size=30, unique=True),
       st.lists(st.one_of(st.none(), st.text(TEXT, max_size=9)), max_size=40))
def test_sorted_keys_agree_with_index_in(values, column):
    values = sorted(values)
    column = pa.array(column, pa.string())
    expected = pc.fill_null(pc.index_in(column, value_set=pa.array(values, pa.string())), -1).to_pylist()
    keys = columns.SortedKeys(values)
    assert keys.positions(column).tolist() == expected
    assert keys.positions(pa.chunked_array([column.slice(0, 3), column.slice(3)], pa.string())).tolist() == expected
    plain = [v for v in column.to_pylist() if v is not None]
    assert keys.positions(plain).tolist() == [values.index(v) if v in values else -1 for v in plain]


def test_fixed_width_across_slices():
    strings = [f"K{i}" * (i % 3 + 1) for i in range(70_000)]  # past two of fixed_width's slices
    column = pa.chunked_array([pa.array(strings[:5]), pa.array(strings[5:])])
    assert [s.decode() for s in columns.fixed_width(column).tolist()] == strings

"""bioscan-io peek: the contact sheet shows what the shard holds; the split summary counts it right.

The summary is checked against counts computed independently, with pandas, from
the metadata CSV the shards were made from (the dataset_small fixture).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFont

from bioscan_io import peek
from bioscan_io.format import TarSink, read_manifest, scan
from bioscan_io.peek import MISSING_TEXT, contact_sheet, tile_lines
from bioscan_io.schema import MAX_NUCLEOTIDES, METADATA_CSV, RANKS, TEXT_RANKS, BioscanError
from bioscan_io.shard import shard_split
from bioscan_io.summary import PERCENTILES, split_summary

from conftest import cli


@pytest.fixture(scope="module")
def shards(dataset_small, tmp_path_factory) -> Path:
    """The train split (two shards) and the seen union (one shard) of dataset_small."""
    out = tmp_path_factory.mktemp("peek_shards")
    for split, maxcount in (("train", 40), ("seen", 10_000)):
        shard_split(dataset_small, split, out=out, maxcount=maxcount, workers=1, progress=False, log=lambda m: None)
    assert len(read_manifest(out / "train")["shards"]) == 2
    return out


@pytest.fixture(scope="module")
def metadata(dataset_small) -> pd.DataFrame:
    """The metadata CSV as pandas reads it (default NA values, as the official loader)."""
    return pd.read_csv(dataset_small / METADATA_CSV, dtype=str)


def first_shard(folder: Path) -> Path:
    return folder / read_manifest(folder)["shards"][0]["name"]


def samples_of(path: Path) -> list[dict]:
    """Samples of a shard read with Python's tarfile: {"__key__", ext: bytes}."""
    samples: list[dict] = []
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(m).read()
    return samples


def write_shard(path: Path, samples: list[dict]) -> None:
    with open(path, "wb") as f:
        tar = TarSink(f)
        for s in samples:
            for ext in sorted(e for e in s if e != "__key__"):
                tar.add(f"{s['__key__']}.{ext}", s[ext])
        tar.close()


# ----------------------------------------------------------------------------- the contact sheet


def test_sheet_is_written_as_a_grid(shards, tmp_path):
    folder = shards / "train"
    png = tmp_path / "sheet.png"
    sheet = contact_sheet(folder, n=6, columns=4, thumb=96, out=png)
    assert sheet.path == str(png) and sheet.shard == str(first_shard(folder))
    assert sheet.keys == [s["__key__"] for s in samples_of(first_shard(folder))[:6]]
    assert (sheet.columns, sheet.rows) == (4, 2)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == sheet.image.size
    boxes = sheet.tile_boxes
    assert len(boxes) == 6 and len({(b[2] - b[0], b[3] - b[1]) for b in boxes}) == 1
    lefts, tops = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    assert len(lefts) == 4 and len(tops) == 2
    assert boxes[4][0] == boxes[0][0] and boxes[4][1] > boxes[3][3]  # the fifth tile starts the second row
    margin = boxes[0][0]
    assert max(b[2] for b in boxes) + margin == sheet.image.width
    assert max(b[3] for b in boxes) + margin == sheet.image.height
    for image_box, tile in zip(sheet.image_boxes, boxes):
        assert image_box[2] - image_box[0] == 96 and tile[0] <= image_box[0] and image_box[2] <= tile[2]


def test_tiles_are_not_blank_and_their_text_differs(shards, tmp_path):
    png = tmp_path / "sheet.png"
    sheet = contact_sheet(shards / "train", n=8, columns=4, thumb=64, out=png)
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)

    def crop(box):
        return pixels[box[1]:box[3], box[0]:box[2]]

    for box in sheet.image_boxes:
        region = crop(box)
        assert region.std() > 5, "a thumbnail is blank"
    texts = [crop(box) for box in sheet.text_boxes]
    for region in texts:
        assert (region.max(axis=2) < 100).sum() > 50, "a tile has no dark text"
    assert len({region.tobytes() for region in texts}) == len(texts), "two tiles show the same text"


def test_tile_text_matches_the_metadata(shards, metadata):
    rows = metadata.set_index("processid")
    for sample in samples_of(first_shard(shards / "train"))[:20]:
        row = rows.loc[sample["__key__"]]
        lines = tile_lines(sample)
        assert [label for label, _, _ in lines] == [*TEXT_RANKS, "barcode"]
        for (rank, value, _), expected in zip(lines, row[list(TEXT_RANKS)]):
            assert value == (MISSING_TEXT if pd.isna(expected) else expected), rank
        barcode = row["dna_barcode"] if isinstance(row["dna_barcode"], str) else ""
        text = lines[-1][1]
        assert text.startswith(f"{len(barcode)} bp" if barcode else "no barcode")
        assert (f"{barcode.count('N')} N" in text) == ("N" in barcode)
        assert (f"> {MAX_NUCLEOTIDES}" in text) == (len(barcode) > MAX_NUCLEOTIDES)


def test_sheet_of_a_short_shard_shows_what_there_is(shards, tmp_path):
    shard = first_shard(shards / "train")
    count = read_manifest(shards / "train")["shards"][0]["count"]
    sheet = contact_sheet(shard, n=count + 25, columns=7, thumb=32)
    assert len(sheet.keys) == count and sheet.shard_samples == count
    assert (sheet.columns, sheet.rows) == (7, -(-count // 7))
    lone = tmp_path / "lone.tar"  # no manifest beside it: counted by the header walk
    shutil.copy(shard, lone)
    sheet = contact_sheet(lone, n=count + 25, columns=3, thumb=32)
    assert len(sheet.keys) == count and sheet.shard_samples is None


def test_sheet_shows_damaged_samples_instead_of_failing(shards, tmp_path):
    samples = samples_of(first_shard(shards / "train"))[:3]
    samples[0]["jpg"] = b"\xff\xd8 not a jpeg"
    del samples[1]["json"]
    samples[2]["dna"] = b""
    path = tmp_path / "damaged.tar"
    write_shard(path, samples)
    sheet = contact_sheet(path, n=3, thumb=48)
    assert len(sheet.keys) == 3
    assert [v for _, v, _ in tile_lines(samples[1])][:4] == ["no .json member"] * 4
    assert tile_lines(samples[2])[-1][1] == "no barcode"
    assert peek._thumbnail(samples[0]["jpg"], 48) == "unreadable image"


def test_sheet_reads_pax_shards_with_tarfile(shards, tmp_path):
    samples = samples_of(first_shard(shards / "train"))[:4]
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "written by hand"}) as tar:
        for s in samples:
            for ext in ("dna", "jpg", "json"):
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(s[ext])
                tar.addfile(info, io.BytesIO(s[ext]))
    assert scan(str(path), 0, 4, ("json",)) is None  # the compiled walk hands it over
    sheet = contact_sheet(path, n=3, thumb=48)
    assert sheet.keys == [s["__key__"] for s in samples[:3]]


def test_text_is_drawn_with_glyphs_the_font_has():
    font = peek._font(14)
    text = peek._text("Phaonia sp. Ménétriès \u2013 Ørsted", font)
    assert all(peek._has_glyph(font, ch) for ch in text)
    assert text.replace("e", "é").startswith("Phaonia sp. Ménétriès") or text.startswith("Phaonia sp. Menetries")
    lines = peek._wrap("Ceratopogonidae gen. 1 sp. nr. bidentata BIOUG00001", font, 120)
    assert len(lines) == 2 and all(font.getlength(line) <= 120 for line in lines)


def test_sheet_without_a_sized_default_font(shards, monkeypatch):
    """PIL builds without a scalable default font get the bitmap one, and still readable tiles."""
    real = ImageFont.load_default

    def old_pil(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return real()

    monkeypatch.setattr(ImageFont, "load_default", old_pil)
    peek._font.cache_clear()
    try:
        sheet = contact_sheet(shards / "train", n=2, columns=2, thumb=48)
        pixels = np.asarray(sheet.image.convert("L"), dtype=np.int16)
        for box in sheet.text_boxes:
            assert (pixels[box[1]:box[3], box[0]:box[2]] < 100).sum() > 20
    finally:
        peek._font.cache_clear()


# ----------------------------------------------------------------------------- the split summary


@pytest.mark.parametrize("split", ["train", "seen"])
def test_summary_counts_equal_the_metadata(shards, metadata, split):
    summary = split_summary(shards / split)
    parts = ["train", "val", "test"] if split == "seen" else [split]
    rows = metadata[metadata["split"].isin(parts)]
    assert summary.samples == len(rows) and summary.split == split
    assert summary.shards == len(read_manifest(shards / split)["shards"])
    assert summary.splits == rows["split"].value_counts().to_dict()
    for rank in RANKS:
        assert summary.with_value[rank] == int(rows[rank].notna().sum()), rank
        assert summary.distinct[rank] == int(rows[rank].nunique()), rank
    barcodes = rows["dna_barcode"].dropna()
    lengths = barcodes.str.len().to_numpy()
    assert sorted(summary.lengths.tolist()) == sorted(lengths.tolist())
    assert summary.no_barcode == int(rows["dna_barcode"].isna().sum())
    assert summary.longer == int((lengths > MAX_NUCLEOTIDES).sum())
    assert summary.with_n == int(barcodes.str.contains("N").sum())
    assert summary.n_bases == int(barcodes.str.count("N").sum())
    stats = summary.percentiles()
    assert stats["min"] == lengths.min() and stats["max"] == lengths.max()
    for q in PERCENTILES:
        assert stats[f"p{q}"] == np.percentile(lengths, q, method="nearest")
    assert sum(k for _, k in summary.histogram()) == len(lengths)

    text = "\n".join(summary.lines())
    species = summary.with_value["species"]
    assert f"species{species:>16,}" in text
    assert f"barcode length (bp), {len(lengths):,} barcodes" in text
    assert ("by split:" in text) == (split == "seen")


def test_summary_of_a_shard_is_the_summary_of_its_split(shards):
    whole = split_summary(shards / "train")
    assert split_summary(first_shard(shards / "train")).samples == whole.samples
    assert split_summary(shards / "train" / "manifest.json").samples == whole.samples


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture
def train_copy(shards, tmp_path) -> Path:
    folder = tmp_path / "train"
    shutil.copytree(shards / "train", folder)
    return folder


def test_missing_path_or_manifest(tmp_path):
    for fn in (contact_sheet, split_summary):
        with pytest.raises(BioscanError, match="no shard or split folder at .*nowhere"):
            fn(tmp_path / "nowhere")
        with pytest.raises(BioscanError, match=f"no shard manifest at {tmp_path}"):
            fn(tmp_path)
    lone = tmp_path / "lone.tar"
    write_shard(lone, [{"__key__": "A", "dna": b"ACGT"}])
    with pytest.raises(BioscanError, match="a split summary needs the split folder"):
        split_summary(lone)


def test_not_a_shard(tmp_path):
    text = tmp_path / "notes.tar"
    text.write_text("this is not a tar archive\n" * 40)
    with pytest.raises(BioscanError, match=f"{text} is not a tar shard"):
        contact_sheet(text)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(BioscanError, match=f"shard {empty} is empty"):
        contact_sheet(empty)
    zeros = tmp_path / "zeros.tar"
    zeros.write_bytes(bytes(2048))
    with pytest.raises(BioscanError, match="holds no samples"):
        contact_sheet(zeros)


def test_corrupt_shard(train_copy):
    shard = first_shard(train_copy)
    data = bytearray(shard.read_bytes())
    second = data.index(samples_of(shard)[1]["__key__"].encode())  # the second sample's first header
    data[second + 130:second + 134] = b"zzzz"  # inside its size field: the checksum no longer holds
    shard.write_bytes(bytes(data))
    with pytest.raises(BioscanError, match=f"shard {shard} is corrupt"):
        contact_sheet(train_copy, n=4)
    with pytest.raises(BioscanError, match=str(shard)):
        split_summary(train_copy)


def test_truncated_or_missing_shard(train_copy):
    manifest = read_manifest(train_copy)
    first, second = (train_copy / e["name"] for e in manifest["shards"])
    data = first.read_bytes()
    first.write_bytes(data[:len(data) // 2])
    with pytest.raises(BioscanError, match=str(first)):
        contact_sheet(first, n=manifest["shards"][0]["count"])
    with pytest.raises(BioscanError, match=str(first)):
        split_summary(train_copy)
    second.unlink()
    first.write_bytes(data)
    with pytest.raises(BioscanError, match=f"shard {second} .*missing"):
        split_summary(train_copy)


def test_bad_arguments(shards, tmp_path):
    for kwargs in ({"n": 0}, {"columns": 0}, {"thumb": 8}, {"n": 2.5}):
        with pytest.raises(BioscanError, match="must be an integer"):
            contact_sheet(shards / "train", **kwargs)
    with pytest.raises(BioscanError, match="cannot write .*folder .* does not exist"):
        contact_sheet(shards / "train", n=1, out=tmp_path / "no" / "sheet.png")


# ----------------------------------------------------------------------------- the command


def test_cli_writes_the_sheet_and_prints_the_summary(shards, tmp_path):
    png = tmp_path / "peek.png"
    run = subprocess.run(cli("peek", str(shards / "train"), "-n", "4", "--columns", "2", "--thumb", "64",
                             "--out", str(png), "--palette", "--no-progress"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"peek: wrote {png}: 4 samples" in run.stdout and "(2 x 2 tiles" in run.stdout
    assert "rank" in run.stdout and "barcode length (bp)" in run.stdout
    with Image.open(png) as img:
        assert img.mode == "P"


def test_cli_errors_are_one_line(shards, tmp_path):
    run = subprocess.run(cli("peek", str(tmp_path / "missing")), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"bioscan-io peek: error: no shard or split folder at {tmp_path / 'missing'}"]
    lone = tmp_path / "lone.tar"
    shutil.copy(first_shard(shards / "train"), lone)
    run = subprocess.run(cli("peek", str(lone), "--no-sheet"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "needs the split folder" in run.stderr

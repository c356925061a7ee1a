"""``bioscan-io peek``: look at shards before training on them.

Two views of the shards :func:`bioscan_io.shard.shard_split` writes:

* :func:`contact_sheet` renders the first N samples of a shard (or of a split
  folder's first shard) as a grid PNG, one tile per sample: the image (aspect
  kept), its processid, order / family / genus / species (a missing rank reads
  "not classified") and the barcode length in bp, with its count of ``N``.
* :func:`split_summary` reads the ``.json`` and ``.dna`` members of every
  sample of a split folder with the compiled header walk
  (:mod:`bioscan_io.tarscan`; images are jumped over, never read or decoded)
  and counts, per rank, the records with a value and the distinct values, and
  the distribution of barcode lengths.

Both read local shards only.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import sys
import tarfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm

from . import _tar, tarscan
from .schema import MAX_NUCLEOTIDES, RANKS, SPLITS, TEXT_RANKS, BioscanError
from .shard import MANIFEST, read_manifest
from .verify import split_member_name

#: What a tile shows for a rank with no value.
MISSING_TEXT = "not classified"
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

# Sheet layout, in pixels.
_MARGIN = 12
_GAP = 10
_PAD = 6
_TITLE_SIZE = 16
_ID_SIZE = 15
_TEXT_SIZE = 14
_BACKGROUND = (255, 255, 255)
_TILE = (247, 247, 247)
_BORDER = (205, 205, 205)
_IMAGE_BOX = (228, 228, 228)
_INK = (25, 25, 25)
_LABEL = (110, 110, 110)
_MISSING = (150, 150, 150)
_WARN = (190, 30, 30)
_MEMBERS = ("jpg", "json", "dna")


# ----------------------------------------------------------------------------- reading shards


def _entries(manifest, where: Path) -> list[dict]:
    """The shard entries of a manifest (name and count checked), or a BioscanError naming it."""
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("count"), int)
        and not isinstance(e.get("count"), bool) and e["count"] >= 0 for e in shards
    ):
        raise BioscanError(f"malformed shard manifest {where}: 'shards' must list objects with a name and a count")
    if not shards:
        raise BioscanError(f"shard manifest {where} lists no shards")
    return shards


def _split_folder(path: Path) -> Path | None:
    """The split folder a path stands for: itself, its manifest's folder; None for a shard file."""
    if path.is_dir():
        return path
    if path.name == MANIFEST:
        return path.parent
    return None


def _first_shard(path) -> tuple[Path, int | None]:
    """The shard a contact sheet of ``path`` reads, and its sample count if a manifest gives it."""
    path = Path(path)
    if not path.exists():
        raise BioscanError(f"no shard or split folder at {path}")
    folder = _split_folder(path)
    if folder is not None:
        manifest = read_manifest(folder)
        first = _entries(manifest, folder / MANIFEST)[0]
        shard = folder / first["name"]
        if not shard.is_file():
            raise BioscanError(f"shard {shard} (listed first in {folder / MANIFEST}) is missing")
        return shard, first["count"]
    if not path.is_file():
        raise BioscanError(f"not a shard or a split folder: {path}")
    count = None
    try:  # the count is only for the sheet's title: a shard needs no manifest to be peeked at
        manifest = read_manifest(path.parent)
        count = next((e["count"] for e in _entries(manifest, path.parent / MANIFEST) if e["name"] == path.name), None)
    except BioscanError:
        pass
    return path, count


def _count_samples(path: Path, limit: int) -> int | None:
    """How many of the first ``limit`` samples a local shard holds (compiled header walk).

    Returns None when the shard has headers the compiled walk does not read (pax,
    GNU long names): the caller then reads it with ``tarfile``.

    Raises
    ------
    BioscanError
        If the file is not a tar archive, holds no sample, or is corrupt or
        truncated before sample ``limit``.
    """
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise BioscanError(f"shard {path} is empty")
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except OSError as exc:
        raise BioscanError(f"cannot read shard {path}: {exc.strerror or exc}") from None
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        rows = np.empty((limit, 4), dtype=np.int64)
        got, status, offset = _tar.scan(buf, 0, limit, np.frombuffer(b"json", dtype=np.uint8), rows)
    finally:
        del buf  # release the map's buffer, so that it can close
        mm.close()
    if status == tarscan.UNSUPPORTED:
        return None
    if status != 0:
        what = _tar.STATUS[status]
        if offset == 0:
            raise BioscanError(f"{path} is not a tar shard ({what} at byte 0)")
        raise BioscanError(f"shard {path} is corrupt or truncated: {what} at byte {offset}")
    if got == 0:
        raise BioscanError(f"shard {path} holds no samples")
    return int(got)


def _read_tarfile(path: Path, limit: int | None, exts) -> list[dict]:
    """The first ``limit`` samples (all if None) of a shard, read by Python's ``tarfile``.

    For shards the compiled walk does not read (pax or GNU long-name headers).
    """
    samples: list[dict] = []
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                tar.members = []  # stream mode: keep memory flat
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if not samples or samples[-1]["__key__"] != key:
                    if limit is not None and len(samples) == limit:
                        break
                    samples.append({"__key__": key})
                if ext in exts:
                    samples[-1][ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        where = f" after sample {samples[-1]['__key__']}" if samples else ""
        raise BioscanError(f"shard {path} is corrupt or truncated{where}: {exc}") from None
    if not samples:
        raise BioscanError(f"shard {path} holds no samples")
    return samples


def _read_samples(path: Path, n: int) -> list[dict]:
    """The first ``n`` samples of a shard (fewer if it is shorter) as dicts of member bytes."""
    count = _count_samples(path, n)
    found = tarscan.read_members(str(path), 0, count, _MEMBERS) if count is not None else None
    if found is None:
        return _read_tarfile(path, n, _MEMBERS)
    keys, values, present, error = found
    if error is not None:
        raise error
    columns = {ext: values[ext].to_pylist() for ext in _MEMBERS}
    return [
        {"__key__": key, **{ext: columns[ext][i] for ext in _MEMBERS if present[ext][i]}}
        for i, key in enumerate(keys.to_pylist())
    ]


# ----------------------------------------------------------------------------- the contact sheet


@lru_cache(maxsize=8)
def _font(size: int):
    """PIL's default font at ``size`` px.

    Pillow 10.1+ built with FreeType has a scalable default font; other builds
    have only the fixed ~11 px bitmap font, which is what they get.
    """
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _scalable(font) -> bool:
    return isinstance(font, ImageFont.FreeTypeFont)


#: Stand-ins for letters that do not decompose into a base letter and accents.
_FOLD = {"\u00df": "ss", "\u00f8": "o", "\u00d8": "O", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe",
         "\u0152": "OE", "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D", "\u2013": "-",
         "\u2014": "-", "\u00d7": "x", "\u2026": "...", "\u2018": "'", "\u2019": "'", "\u201c": '"',
         "\u201d": '"'}


@lru_cache(maxsize=8)
def _notdef(font) -> tuple:
    """What the font draws for a character it has no glyph for."""
    mask = font.getmask("\U0010fffd")
    return mask.size, bytes(mask)


@lru_cache(maxsize=4096)
def _has_glyph(font, ch: str) -> bool:
    if " " <= ch <= "~":
        return True
    if not _scalable(font):  # the bitmap font draws Latin-1
        return ch.isprintable() and ord(ch) < 256
    mask = font.getmask(ch)
    return (mask.size, bytes(mask)) != _notdef(font)


def _text(text: str, font) -> str:
    """``text`` as the font can draw it.

    PIL's default font has no accented letters; a character the font lacks is
    drawn as its base letter (``e`` for ``é``; a few others by :data:`_FOLD`),
    or ``?``, never as an empty box.
    """
    if all(_has_glyph(font, ch) for ch in text):
        return text
    out = []
    for ch in text:
        if _has_glyph(font, ch):
            out.append(ch)
            continue
        base = _FOLD.get(ch) or "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base if base and all(_has_glyph(font, c) for c in base) else "?")
    return "".join(out)


def _fit(text: str, font, width: float) -> str:
    """``text`` cut to ``width`` pixels, ending with an ellipsis where cut."""
    text = _text(text, font)
    if font.getlength(text) <= width:
        return text
    ellipsis = _text("\u2026", font)
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid].rstrip() + ellipsis) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ellipsis


def _wrap(text: str, font, width: float, max_lines: int = 2) -> list[str]:
    """``text`` broken at spaces into at most ``max_lines`` lines of ``width`` pixels.

    A word wider than a line is cut; the last line ends with an ellipsis if the
    text does not fit.
    """
    text = _text(text, font)
    lines = []
    while len(lines) < max_lines - 1 and font.getlength(text) > width:
        cut = 0
        for i, ch in enumerate(text):  # the last space before the width, else as many characters as fit
            if ch == " " and font.getlength(text[:i]) <= width:
                cut = i
        if cut == 0:
            cut = max(1, len(_fit(text, font, width)) - len(_text("\u2026", font)))
        lines.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    lines.append(_fit(text, font, width))
    return lines


def _line_height(font) -> int:
    top, bottom = font.getbbox("ÁÉgjpqy|")[1::2]
    return int(math.ceil((bottom - min(top, 0)) * 1.3)) if _scalable(font) else bottom + 4


def _barcode_text(dna: bytes | None) -> tuple[str, tuple]:
    if dna is None:
        return "no .dna member", _WARN
    if not dna:
        return "no barcode", _MISSING
    text = f"{len(dna)} bp"
    n = dna.count(b"N")
    if n:
        text += f", {n} N"
    if len(dna) > MAX_NUCLEOTIDES:
        text += f" (> {MAX_NUCLEOTIDES})"
    return text, _INK


def tile_lines(sample: dict) -> list[tuple[str, str, tuple]]:
    """The text of one tile below its processid: ``(label, value, colour)`` per line.

    One line per rank of :data:`~bioscan_io.schema.TEXT_RANKS` (order, family,
    genus, species; :data:`MISSING_TEXT` where the rank has no value), then the
    barcode length.

    Parameters
    ----------
    sample : dict
        ``{"__key__": processid, "json": bytes, "dna": bytes, ...}``; a missing
        or unreadable member is shown as such.

    Returns
    -------
    list of (str, str, tuple)
        Label, value and RGB colour of each line.
    """
    record, problem = None, None
    raw = sample.get("json")
    if raw is None:
        problem = "no .json member"
    else:
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            record, problem = None, "unreadable .json"
    lines = []
    for rank in TEXT_RANKS:
        if record is None:
            lines.append((rank, problem, _WARN))
            continue
        value = record.get(rank)
        if value is None or value == "":
            lines.append((rank, MISSING_TEXT, _MISSING))
        else:
            lines.append((rank, str(value), _INK))
    lines.append(("barcode", *_barcode_text(sample.get("dna"))))
    return lines


def _thumbnail(data: bytes | None, thumb: int) -> Image.Image | str:
    """The image fitted into a ``thumb`` x ``thumb`` box (aspect kept), or why there is none."""
    if data is None:
        return "no .jpg member"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (thumb, thumb))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
            img = img.convert("RGB")
        return ImageOps.contain(img, (thumb, thumb), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "unreadable image"


@dataclass
class ContactSheet:
    """A rendered contact sheet (what :func:`contact_sheet` returns).

    Attributes
    ----------
    image : PIL.Image.Image
        The sheet (RGB).
    shard : str
        The shard whose first samples it shows.
    keys : list of str
        The processids shown, in tile order (row by row).
    columns, rows : int
        The grid.
    tile_boxes, image_boxes, text_boxes : list of tuple
        Per tile, ``(left, top, right, bottom)`` of the tile, of its thumbnail
        area, and of its text area.
    shard_samples : int or None
        Samples in the shard, when a manifest says.
    path : str or None
        Where the PNG was written, if it was.
    """

    image: Image.Image
    shard: str
    keys: list
    columns: int
    rows: int
    tile_boxes: list = field(default_factory=list)
    image_boxes: list = field(default_factory=list)
    text_boxes: list = field(default_factory=list)
    shard_samples: int | None = None
    path: str | None = None

    def line(self) -> str:
        """One line saying what was written."""
        where = self.path or "(not saved)"
        w, h = self.image.size
        return (f"peek: wrote {where}: {len(self.keys)} sample(s) of {self.shard} "
                f"({self.columns} x {self.rows} tiles, {w} x {h} px)")


def contact_sheet(shard_or_split, n: int = 16, columns: int = 4, thumb: int = 192,
                  out: str | os.PathLike | None = None, palette: bool = False) -> ContactSheet:
    """Render the first ``n`` samples of a shard as a grid of tiles.

    Each tile holds the sample's image fitted into a ``thumb`` x ``thumb`` box
    (aspect kept, decoded at reduced scale where the JPEG allows), then its
    processid, its order, family, genus and species ("not classified" where
    missing) and its barcode length in bp (with the number of ``N`` if any, and a
    mark when longer than 660). A sample lacking a member, or with an image that
    does not decode, gets a tile saying so.

    Parameters
    ----------
    shard_or_split : str or path-like
        A shard (``.tar``), or a split folder (or its ``manifest.json``): then the
        first shard its manifest lists.
    n : int
        Samples to show (fewer if the shard holds fewer).
    columns : int
        Tiles per row (fewer if there are fewer samples).
    thumb : int
        Side of the thumbnail box, in pixels (32 to 1024).
    out : str or path-like, optional
        Write the sheet there as PNG (through a temporary file, then renamed).
    palette : bool
        Write a 256-colour PNG (about a quarter of the bytes; for documents and
        issues) instead of a full-colour one. ``ContactSheet.image`` stays RGB.

    Returns
    -------
    ContactSheet
        The image and where each tile is.

    Raises
    ------
    BioscanError
        If the path does not exist, a split folder has no readable manifest,
        the shard is not a tar file or is corrupt or truncated among its first
        ``n`` samples, an argument is out of range, or ``out`` cannot be written.
    """
    for name, value, low, high in (("n", n, 1, 10_000), ("columns", columns, 1, 1000), ("thumb", thumb, 32, 1024)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BioscanError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    shard, shard_samples = _first_shard(shard_or_split)
    samples = _read_samples(shard, n)

    columns = min(columns, len(samples))
    rows = -(-len(samples) // columns)
    title_font, id_font, font = _font(_TITLE_SIZE), _font(_ID_SIZE), _font(_TEXT_SIZE)
    line_h, id_h, title_h = _line_height(font), _line_height(id_font), _line_height(title_font)
    lines = [tile_lines(s) for s in samples]
    label_w = max(font.getlength(_text(label, font)) for label, _, _ in lines[0]) + _PAD
    tile_w = thumb + 2 * _PAD
    value_w = thumb - label_w
    wrapped = [[(label, _wrap(value, font, value_w), colour) for label, value, colour in tile] for tile in lines]
    text_h = id_h + line_h * max(sum(len(v) for _, v, _ in tile) for tile in wrapped)
    tile_h = _PAD + thumb + _PAD + text_h + _PAD
    width = 2 * _MARGIN + columns * tile_w + (columns - 1) * _GAP
    top = _MARGIN + title_h + _GAP // 2
    height = top + rows * tile_h + (rows - 1) * _GAP + _MARGIN

    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    of = f" of {shard_samples}" if shard_samples is not None else ""
    title = _fit(f"{shard.name}: first {len(samples)}{of} samples", title_font, width - 2 * _MARGIN)
    draw.text((_MARGIN, _MARGIN), title, font=title_font, fill=_INK)
    result = ContactSheet(sheet, str(shard), [s["__key__"] for s in samples], columns, rows,
                          shard_samples=shard_samples)
    for i, (sample, tile_text) in enumerate(zip(samples, wrapped)):
        left = _MARGIN + (i % columns) * (tile_w + _GAP)
        upper = top + (i // columns) * (tile_h + _GAP)
        tile = (left, upper, left + tile_w, upper + tile_h)
        draw.rectangle((tile[0], tile[1], tile[2] - 1, tile[3] - 1), fill=_TILE, outline=_BORDER)
        box = (left + _PAD, upper + _PAD, left + _PAD + thumb, upper + _PAD + thumb)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_IMAGE_BOX)
        img = _thumbnail(sample.get("jpg"), thumb)
        if isinstance(img, str):
            msg = _text(img, font)
            draw.text(((box[0] + box[2] - font.getlength(msg)) / 2, (box[1] + box[3] - line_h) / 2), msg,
                      font=font, fill=_WARN)
        else:
            sheet.paste(img, (box[0] + (thumb - img.width) // 2, box[1] + (thumb - img.height) // 2))
        text = (box[0], box[3] + _PAD, box[2], box[3] + _PAD + text_h)
        draw.text((text[0], text[1]), _fit(sample["__key__"], id_font, thumb), font=id_font, fill=_INK)
        y = text[1] + id_h
        for label, values, colour in tile_text:
            draw.text((text[0], y), _text(label, font), font=font, fill=_LABEL)
            for value in values:
                draw.text((text[0] + label_w, y), value, font=font, fill=colour)
                y += line_h
        result.tile_boxes.append(tile)
        result.image_boxes.append(box)
        result.text_boxes.append(text)
    if out is not None:
        _save_png(sheet.quantize(256, method=Image.Quantize.FASTOCTREE) if palette else sheet, Path(out))
        result.path = str(out)
    return result


def _save_png(image: Image.Image, path: Path) -> None:
    if not path.parent.is_dir():
        raise BioscanError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    except OSError as exc:
        raise BioscanError(f"cannot write {path}: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- the split summary


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

        shards = f"{self.shards} shard" + ("s" if self.shards != 1 else "")
        out = [f"{self.split}: {self.samples:,} samples in {shards} ({self.folder})"]
        if len(self.splits) > 1:
            out.append("  by split: " + ", ".join(f"{s} {k:,}" for s, k in self.splits.items()))
        out += ["", f"{'rank':<11}{'with a value':>19}{'distinct':>11}"]
        for rank in RANKS:
            k = self.with_value.get(rank, 0)
            out.append(f"{rank:<11}{k:>12,} {pct(k, self.samples)}{self.distinct.get(rank, 0):>11,}")
        out += ["", f"barcode length (bp), {len(self.lengths):,} barcodes"]
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
    folder = _split_folder(path)
    if folder is not None:
        return folder
    return path.parent if (path.parent / MANIFEST).is_file() else None


_JSON_FIELDS = (*RANKS, "split")


def _parse_records(column: pa.Array, keys: pa.Array, shard: Path) -> pa.Table:
    """The rank and split fields of one shard's ``.json`` members, one Arrow JSON parse."""
    table, bad = tarscan.parse_json(column, _JSON_FIELDS)
    if bad:
        row, message = bad[0]
        raise BioscanError(f"shard {shard}: {keys[row].as_py()}.json: {message}")
    return table


def _read_shard(path: Path, count: int) -> tuple[pa.Array, dict]:
    """Keys, and the ``.json`` and ``.dna`` payloads, of every sample of a shard."""
    if not path.is_file():
        raise BioscanError(f"shard {path} (listed in its manifest) is missing")
    exts = ("json", "dna")
    found = tarscan.read_members(str(path), 0, count, exts)
    if found is None:  # headers the compiled walk does not read
        samples = _read_tarfile(path, None, exts)
        if len(samples) != count:
            raise BioscanError(f"shard {path} holds {len(samples)} samples; its manifest says {count}")
        keys = pa.array([s["__key__"] for s in samples], pa.large_string())
        values = {e: pa.array([s.get(e) for s in samples], pa.large_binary()) for e in exts}
        present = {e: np.array([e in s for s in samples], bool) for e in exts}
    else:
        keys, values, present, error = found
        if error is not None:
            raise error
    for ext in exts:
        if not present[ext].all():
            key = keys[int(np.flatnonzero(~present[ext])[0])].as_py()
            raise BioscanError(f"shard {path}: sample {key} has no .{ext} member (bioscan-io verify lists all problems)")
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
    manifest = read_manifest(folder)
    entries = _entries(manifest, folder / MANIFEST)
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

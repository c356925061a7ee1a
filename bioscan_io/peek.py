"""``bioscan-io peek``: a contact sheet of a shard's first samples.

:func:`contact_sheet` renders the first N samples of a shard (or of a split
folder's first shard) as a grid PNG, one tile per sample: the image (aspect
kept), its processid, order / family / genus / species (a missing rank reads
"not classified") and the barcode length in bp, with its count of ``N``. The
command also prints :func:`bioscan_io.summary.split_summary`. Local shards only.
"""

from __future__ import annotations

import io
import json
import math
import os
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from . import atomic
from .format import MANIFEST, MEMBERS, ShortShard, listed_shards, read_members, split_folder_of
from .schema import MAX_NUCLEOTIDES, TEXT_RANKS, BioscanError
from .wording import plural

__all__ = ["MISSING_TEXT", "ContactSheet", "contact_sheet", "tile_lines"]

#: What a tile shows for a rank with no value.
MISSING_TEXT = "not classified"

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

# ----------------------------------------------------------------------------- reading shards


def _first_shard(path) -> tuple[Path, int | None]:
    """The shard a contact sheet of ``path`` reads, and its sample count if a manifest gives it."""
    path = Path(path)
    if not path.exists():
        raise BioscanError(f"no shard or split folder at {path}")
    folder = split_folder_of(path)
    if folder is not None:
        first = listed_shards(folder)[1][0]
        shard = folder / first["name"]
        if not shard.is_file():
            raise BioscanError(f"shard {shard} (listed first in {folder / MANIFEST}) is missing")
        return shard, first["count"]
    if not path.is_file():
        raise BioscanError(f"not a shard or a split folder: {path}")
    count = None
    try:  # the count is only for the sheet's title: a shard needs no manifest to be peeked at
        count = next((e["count"] for e in listed_shards(path.parent)[1] if e["name"] == path.name), None)
    except BioscanError:
        pass
    return path, count


def _read_samples(path: Path, n: int) -> list[dict]:
    """The first ``n`` samples of a shard (fewer if it is shorter) as dicts of member bytes.

    A sample lacking a member is kept (its tile says so); a fault among the
    first ``n`` samples raises, naming the shard.
    """
    keys, values, present, error = read_members(str(path), 0, n, MEMBERS)
    if error is not None and not isinstance(error, ShortShard):
        if not len(keys):
            raise error  # says what the file is: empty, not a tar shard...
        raise BioscanError(f"shard {path} is corrupt or truncated: {error.detail}")
    if not len(keys):
        raise BioscanError(f"shard {path} holds no samples")
    columns = {ext: values[ext].to_pylist() for ext in MEMBERS}
    return [
        {"__key__": key, **{ext: columns[ext][i] for ext in MEMBERS if present[ext][i]}}
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
    lines: list[str] = []
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
    record, problem = None, ""
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
    lines: list[tuple[str, str, tuple]] = []
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
            rgb = img.convert("RGB")
        return ImageOps.contain(rgb, (thumb, thumb), Image.Resampling.LANCZOS)
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
        return (f"peek: wrote {where}: {plural(len(self.keys), 'sample')} of {self.shard} "
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
    first = f"{len(samples)} of {plural(shard_samples, 'sample')}" if shard_samples is not None \
        else plural(len(samples), "sample")
    title = _fit(f"{shard.name}: first {first}", title_font, width - 2 * _MARGIN)
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
            for line in values:
                draw.text((text[0] + label_w, y), line, font=font, fill=colour)
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
    if path.is_dir():
        raise BioscanError(f"cannot write {path}: it is a folder; --out names the PNG file to write")
    try:
        with atomic.replacing(path) as tmp:
            image.save(tmp, format="PNG", optimize=True)
    except OSError as exc:
        # The error names the temporary file beside it; the user knows only ``path``.
        raise BioscanError(f"cannot write {path}: {exc.strerror or exc}") from None

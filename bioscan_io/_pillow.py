"""Pillow's private API, in one place, checked once at import (used by :mod:`bioscan_io.images`).

The fast JPEG path decodes only the rows a crop needs, at a DCT scale, into
image memory of just those rows. Pillow has no public call for that, so it
drives Pillow's own libjpeg decoder the way ``ImageFile.load`` does. The
private pieces it relies on, all here and nowhere else:

* ``Image._decompression_bomb_check(size)`` -- the check ``Image.open`` makes,
  for a size read from the JPEG frame header without ``Image.open``;
* ``Image.core.new(mode, size)`` and the core image's ``paste(colour, box)`` --
  image memory for the first rows only, with a zeroed sentinel row;
* ``Image._getdecoder(mode, "jpeg", args, extra)`` and the decoder's
  ``setimage`` / ``decode`` / ``cleanup``, with ``args`` the JPEG plugin's tile
  arguments ``("RGB", "")`` and ``extra`` what ``draft`` puts in
  ``decoderconfig``, ``(scale, 0)``;
* ``Image.Image()._new(core)`` -- the core image wrapped as an ``Image``.

:func:`check` verifies each piece (present, callable, the tile layout and
``draft`` configuration as expected) and then decodes a small JPEG made here
both ways, comparing the pixels. Its findings are :data:`PROBLEMS`;
:data:`AVAILABLE` is True when there are none. When a Pillow release changes
any piece, :func:`jpeg_rows` and :func:`bomb_check` use Pillow's public API
instead (``Image.open``, ``draft``, ``load``, ``crop``; ``MAX_IMAGE_PIXELS``):
the same pixels, more work (every row is decoded). ``tests/test_pillow_shim.py``
fails, naming the call that changed, so the change is not silent.
"""

from __future__ import annotations

import io
import warnings
from contextlib import suppress

from PIL import Image

__all__ = ["AVAILABLE", "PROBLEMS", "ROWS_EXACT", "bomb_check", "check", "describe", "jpeg_rows", "rows_exact"]

#: The JPEG plugin's tile arguments for a 3-component image: (raw mode, JPEG colour space).
_TILE_ARGS = ("RGB", "")


# ----------------------------------------------------------------------------- fast path (private API)


def _rows_private(data: bytes, size: tuple[int, int], rows: int | None, scale: int) -> Image.Image | None:
    """Decode only the first ``rows`` rows at ``1/scale`` with Pillow's decoder, as ``ImageFile.load`` drives it.

    libjpeg reports stopping before the last row as an error at its end-of-image
    check; that is expected here, so the result is trusted only if the last
    row, zeroed before, is not all zero afterwards (an early decoder error
    would leave it so). None when in doubt: the caller takes the general path.
    """
    w, h = -(-size[0] // scale), -(-size[1] // scale)
    rows = h if rows is None else max(1, min(h, int(rows)))
    core = Image.core.new("RGB", (w, rows))
    core.paste((0, 0, 0), (0, rows - 1, w, rows))  # the sentinel row
    try:
        decoder = Image._getdecoder("RGB", "jpeg", _TILE_ARGS, (scale, 0) if scale > 1 else ())
        try:
            decoder.setimage(core, (0, 0, w, rows))
            n, err = decoder.decode(data)
        finally:
            decoder.cleanup()
    except Exception:
        return None
    if n >= 0 or (rows == h and err != 0):  # wants more data (truncated), or failed
        return None
    out = Image.Image()._new(core)
    if rows < h and (err not in (0, -2) or out.crop((0, rows - 1, w, rows)).getbbox() is None):
        return None
    return out


# ----------------------------------------------------------------------------- fallback (public API)


def _rows_public(data: bytes, size: tuple[int, int], rows: int | None, scale: int) -> Image.Image | None:
    """What :func:`_rows_private` gives, through ``Image.open`` + ``draft`` + ``load`` (all rows decoded).

    ``draft`` asked for ``size // scale`` picks exactly ``scale``: the integer
    ratio it rounds down to a power of two lies in ``[scale, 2 * scale)``. A
    Pillow whose ``draft`` chose otherwise gives None, so the caller does not
    crop at the wrong scale.
    """
    w, h = -(-size[0] // scale), -(-size[1] // scale)
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
        if img.mode != "RGB":
            return None
        if scale > 1:
            img.draft("RGB", (size[0] // scale, size[1] // scale))
        img.load()
    except Exception:
        return None
    if img.size != (w, h):
        return None
    rows = h if rows is None else max(1, min(h, int(rows)))
    return img if rows == h else img.crop((0, 0, w, rows))


def _bomb_check_public(size: tuple[int, int]) -> None:
    """Pillow's decompression-bomb rule (as of Pillow 12) from its public ``MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = max(1, size[0]) * max(1, size[1])
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, "
                                           "could be decompression bomb DOS attack.")
    if pixels > limit:
        warnings.warn(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression "
                      "bomb DOS attack.", Image.DecompressionBombWarning, stacklevel=2)


# ----------------------------------------------------------------------------- the shim


def jpeg_rows(data: bytes, size: tuple[int, int], rows: int | None, scale: int = 1) -> Image.Image | None:
    """The first rows of an RGB JPEG at ``1/scale``, by the fast path when Pillow allows, else the public API.

    Parameters
    ----------
    data : bytes
        A whole 3-component JPEG file.
    size : tuple of int
        Its ``(width, height)``, from the frame header.
    rows : int or None
        Rows wanted, at the decoded scale (None: all of them).
    scale : {1, 2, 4, 8}
        libjpeg's DCT-domain downscaling, as ``Image.draft`` chooses it.

    Returns
    -------
    PIL.Image.Image or None
        RGB, ``ceil(width / scale)`` wide and ``rows`` high; None when the
        decoder failed or stopped early (the caller then takes Pillow's general path).
    """
    return (_rows_private if AVAILABLE else _rows_public)(data, size, rows, scale)


def bomb_check(size: tuple[int, int]) -> None:
    """Raise ``Image.DecompressionBombError`` (or warn) for a size ``Image.open`` would refuse (or warn about)."""
    if AVAILABLE:
        Image._decompression_bomb_check(size)
    else:
        _bomb_check_public(size)


def _probe_jpeg() -> tuple[bytes, tuple[int, int]]:
    """A small RGB JPEG whose three channels differ, and its size (made without a decoder: that is under test)."""
    size = (48, 40)  # not a whole number of 16-pixel MCUs down
    ramp = Image.linear_gradient("L")  # 256 x 256, dark to light downwards
    nearest = getattr(Image, "Resampling", Image).NEAREST
    bands = (ramp.resize(size, nearest), ramp.rotate(90).resize(size, nearest), ramp.rotate(45).resize(size, nearest))
    buf = io.BytesIO()
    Image.merge("RGB", bands).save(buf, "JPEG", quality=90)
    return buf.getvalue(), size


def _check_names() -> list[str]:
    """The private attributes exist and are callable."""
    problems = []
    for owner, name, label in ((Image, "_decompression_bomb_check", "PIL.Image._decompression_bomb_check"),
                               (Image, "_getdecoder", "PIL.Image._getdecoder"),
                               (getattr(Image, "core", None), "new", "PIL.Image.core.new"),
                               (Image.Image, "_new", "PIL.Image.Image._new")):
        if not callable(getattr(owner, name, None)):
            problems.append(f"{label} is missing or not callable")
    if problems:
        return problems
    try:
        core = Image.core.new("RGB", (4, 2))
        if not callable(getattr(core, "paste", None)) or tuple(core.size) != (4, 2):
            problems.append("PIL.Image.core.new(...) no longer gives a core image with .paste and .size")
        img = Image.Image()._new(core)
        if img.mode != "RGB" or img.size != (4, 2):
            problems.append(f"PIL.Image.Image()._new(core) gave a {img.mode} {img.size} image, not RGB (4, 2)")
        decoder = Image._getdecoder("RGB", "jpeg", _TILE_ARGS, (2, 0))
        for method in ("setimage", "decode", "cleanup"):
            if not callable(getattr(decoder, method, None)):
                problems.append(f"PIL.Image._getdecoder(...) gave a decoder without .{method}()")
        decoder.cleanup()
    except Exception as exc:
        problems.append(f"calling the private pieces failed: {type(exc).__name__}: {exc}")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None:
        try:
            Image._decompression_bomb_check((2 * int(limit) + 1, 1))
            problems.append("PIL.Image._decompression_bomb_check no longer raises DecompressionBombError")
        except Image.DecompressionBombError:
            pass
        except Exception as exc:
            problems.append(f"PIL.Image._decompression_bomb_check raised {type(exc).__name__}: {exc}")
    return problems


def _check_layout(data: bytes, size: tuple[int, int]) -> list[str]:
    """The JPEG plugin still passes the decoder the arguments the fast path hard-codes."""
    img = Image.open(io.BytesIO(data))
    tile = list(getattr(img, "tile", None) or ())
    if len(tile) != 1 or len(tile[0]) != 4 or tile[0][0] != "jpeg" or tuple(tile[0][3]) != _TILE_ARGS:
        return [f"the JPEG plugin's img.tile is {tile!r}, not one ('jpeg', box, offset, {_TILE_ARGS!r}) entry"]
    img.draft("RGB", (size[0] // 2, size[1] // 2))
    config = getattr(img, "decoderconfig", None)
    if config != (2, 0) or img.size != (-(-size[0] // 2), -(-size[1] // 2)):
        return [f"JpegImageFile.draft now sets decoderconfig {config!r} and size {img.size}, not (2, 0) and half"]
    return []


def _check_pixels(data: bytes, size: tuple[int, int]) -> list[str]:
    """The private decode gives the public decode's pixels (all rows, some rows, half scale)."""
    problems = []
    for rows, scale in ((None, 1), (17, 1), (None, 2), (9, 2)):
        fast, public = _rows_private(data, size, rows, scale), _rows_public(data, size, rows, scale)
        if fast is None or public is None or fast.size != public.size or fast.tobytes() != public.tobytes():
            got = "None" if fast is None else f"{fast.size}"
            problems.append(f"PIL.Image._getdecoder('RGB', 'jpeg', ...) decoding rows={rows} at 1/{scale} gave "
                            f"{got}, not the pixels of Image.open + draft + load")
    return problems


def check() -> list[str]:
    """What is wrong with the private Pillow API the fast path uses; an empty list when nothing is.

    Each entry names the private call that changed. Never raises.
    """
    try:
        problems = _check_names()
        if problems:
            return problems
        data, size = _probe_jpeg()
        return _check_layout(data, size) or _check_pixels(data, size)
    except Exception as exc:  # a check must not break the import
        return [f"the private Pillow API check failed: {type(exc).__name__}: {exc}"]


def rows_exact() -> bool:
    """Whether resizing a box of an image cut a few rows below the box gives the whole image's pixels.

    The fast path decodes only the rows a crop reads (:func:`jpeg_rows` with
    ``rows``), which is exact where the resampler's result for a box does not
    depend on the rows below it: so on pillow-simd; stock Pillow 13's differs by
    one level in some pixels, so there every row is decoded. Never raises.
    """
    try:
        import numpy as np

        # a cropped_256 image and a crop of it enlarged to 224, as the loader makes
        pixels = np.random.default_rng(0).integers(0, 256, (320, 256, 3), dtype=np.uint8)
        whole = Image.fromarray(pixels)
        box, out = (60, 115, 220, 276), (224, 224)
        cut = Image.fromarray(np.ascontiguousarray(pixels[:278]))  # the box and its filter's reach
        bilinear = Image.Resampling.BILINEAR
        return whole.resize(out, bilinear, box=box).tobytes() == cut.resize(out, bilinear, box=box).tobytes()
    except Exception:
        return False


#: What :func:`check` found at import (empty on a Pillow with the expected private API).
PROBLEMS: tuple[str, ...] = tuple(check())
#: Whether the fast path's private API is usable; False sends :func:`jpeg_rows` to the public API.
AVAILABLE: bool = not PROBLEMS
#: Whether decoding only the rows a crop reads keeps the pixels exact (:func:`rows_exact`).
ROWS_EXACT: bool = rows_exact()


def describe() -> str:
    """Which PIL is installed, what decodes its JPEGs, and whether the fast path is on (``bioscan-io --version``).

    pillow-simd and stock Pillow both install the package ``PIL``; when both are
    installed, PIL's files are those of whichever was installed last.
    """
    import PIL
    from PIL import features

    names = _owners(PIL.__file__)
    if features.check_feature("libjpeg_turbo"):
        jpeg = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
    else:
        jpeg = f"libjpeg {features.version_codec('jpg')}"
    fast = "on" if AVAILABLE else f"off ({PROBLEMS[0]})"
    if not ROWS_EXACT:
        fast += ", every row decoded (this PIL's resize of a box depends on the rows below it)"
    text = f"PIL {PIL.__version__} from {' + '.join(names) or 'an unknown distribution'}, JPEG by {jpeg}; " \
           f"fast JPEG path {fast}"
    if len(names) > 1:
        text += "; both are installed and PIL's files are whichever came last: keep one (README, Install)"
    return text


def _owners(init: str) -> list[str]:
    """The installed distributions whose files include this ``PIL/__init__.py`` (two: a clash)."""
    import importlib.metadata
    import os

    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name in ("pillow", "pillow-simd"):
            with suppress(OSError):
                if os.path.samefile(str(dist.locate_file("PIL/__init__.py")), init):
                    found.add(name)
    return sorted(found)

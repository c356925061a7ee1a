"""Decode only the part of a JPEG that a crop reads (libjpeg-turbo, ``bioscan_io._jpeg``).

:mod:`bioscan_io.images` draws a crop box from the JPEG's header size before
decoding anything; :func:`load_box` then decodes the box's region alone: the
rows above it are skipped (``jpeg_skip_scanlines``: entropy-decoded, as a
sequential JPEG requires, but no IDCT, upsampling or colour conversion), the
columns outside it are not made (``jpeg_crop_scanline``), and libjpeg stops
after the last row the resize reads, at the DCT scale the caller chose. The
region is the box, plus the bilinear filter's reach, plus :data:`EDGE`
pixels each side. Its pixels land on a canvas the size of the whole (scaled)
image, each at its own place, and the resize is given the same box as on the
whole image: no coordinate changes, so the resampler computes the same taps
and weights (a box shifted by whole pixels would not always: its centres
round differently in floating point, a level off in a few pixels).

Why the pixels are those of decoding the whole image: inside a region
libjpeg-turbo makes the same values as in a full decode (IDCT blocks are
independent; the rows after a skip get their upsampling context; the region's
last rows get theirs from the iMCU row below, which libjpeg decodes), except
at a cropped left or right edge, where the fancy (triangle) chroma upsampling
of 4:2:0 and 4:2:2 images at scale 1 has no neighbour sample and repeats the
edge one: the first and last columns of such a region differ by a few levels
(at 1/2, 1/4, 1/8 libjpeg-turbo scales the chroma IDCT instead and upsamples
nothing). Those columns lie in the :data:`EDGE` margin, which the resize does
not read. Bound, tested (``tests/test_jpeg_region.py``) on generated
``cropped_256``, ``cropped`` and ``original_full`` images, for training crops
(with and without DCT scaling, CLIBD's Resize-256-then-crop chain with
rotation) and evaluation crops: the output equals the path without region
decode bit for bit, max abs difference 0 and mean difference 0. The raw
region's edge columns, which the margin keeps out, differ by up to ~5 levels;
everything inside them is exact (tested too).

Which PIL resize makes that hold is checked once per process (:func:`check`):
where a box's resize reads pixels beyond the filter's reach, region decode is
off. It is off as well when the extension was not built (no libjpeg-turbo >=
2.1 headers or library at build time: ``setup.py`` makes it optional), and
it steps aside, for Pillow's path, on any JPEG it does not handle:
progressive or multi-scan, arithmetic-coded, not 3-component YCbCr, not
8-bit, chroma sampling other than 4:4:4, 4:2:2 or 4:2:0, and any that libjpeg
reports corrupt (an error, or a warning) -- Pillow's path then decides,
raising where it always has.

What it saves is bounded by the entropy decoding, which no region decode
avoids: a sequential JPEG's Huffman data must be read from the first row down
to the region's last (about 45% of a whole decode of the generated images).
"""

from __future__ import annotations

import math
import operator

import numpy as np
from PIL import Image

try:
    from . import _jpeg
except ImportError as exc:  # built without libjpeg-turbo's headers: Pillow decodes everything
    _jpeg = None  # type: ignore[assignment]
    _IMPORT_PROBLEM = f"bioscan_io._jpeg is not built ({exc})"
else:
    _IMPORT_PROBLEM = ""

__all__ = ["EDGE", "JPEGError", "available", "check", "decode_region", "describe", "load_box", "region_for"]

#: Pixels (at the decoded scale) kept each side beyond what the resize reads: libjpeg's
#: edge columns (chroma upsampling without a neighbour) fall there. One would do.
EDGE = 2
_SCALES = (1, 2, 4, 8)


class JPEGError(ValueError):
    """libjpeg found the JPEG corrupt (the message is libjpeg's)."""


def decode_region(data, scale: int, size: tuple[int, int], region: tuple[int, int, int, int]):
    """The JPEG decoded at ``1/scale`` in ``region`` = ``(left, top, right, bottom)`` only, on a canvas of its size.

    Parameters
    ----------
    data : bytes-like
        A whole JPEG file.
    scale : {1, 2, 4, 8}
        libjpeg's DCT-domain downscaling.
    size : tuple of int
        The image's ``(width, height)`` at that scale (``ceil(full / scale)``).
    region : tuple of int
        Columns ``left:right``, rows ``top:bottom`` wanted, inside ``size``.

    Returns
    -------
    tuple or None
        ``(image, left)``: an RGBX ``PIL.Image`` of ``size`` whose rows
        ``top:bottom``, columns ``left:right`` hold the decoded pixels, with
        ``left`` at or before the one asked for (libjpeg starts at an iMCU
        boundary); the rest of it is uninitialised memory, never decoded (a
        numpy buffer mapped, not copied: the pages nobody touches cost
        nothing). Read only the region. None for a JPEG this decoder does not
        handle (progressive, CMYK, ...: module docstring) or where the
        extension is missing.

    Raises
    ------
    JPEGError
        libjpeg reported the data corrupt (an error, or a warning: pixels
        decoded from damaged data are not returned).
    ValueError
        Bad arguments (a region outside the image, an unknown scale).
    """
    if _jpeg is None:
        return None
    left, top, right, bottom = (operator.index(v) for v in region)
    width, height = (operator.index(v) for v in size)
    if scale not in _SCALES:
        raise ValueError(f"decode_region: scale must be one of {_SCALES}; got {scale!r}")
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"decode_region: region {region} is not inside the {width}x{height} image")
    view = memoryview(data)
    if not view.c_contiguous or view.itemsize != 1:
        view = memoryview(bytes(view))
    canvas = np.empty(width * height * 4, np.uint8)
    status, x0, _, message = _jpeg.decode_region(view.cast("B"), canvas, scale, width, height, left, top,
                                                 right - left, bottom - top)
    if status == _jpeg.UNSUPPORTED:
        return None
    if status != _jpeg.OK:
        raise JPEGError(f"libjpeg: {message or 'decoding failed'}")
    return Image.frombuffer("RGBX", (width, height), canvas, "raw", "RGBX", 0, 1), x0


def region_for(box, out_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels of a ``size`` image that a bilinear resize of ``box`` to ``out_size`` reads, plus :data:`EDGE`.

    PIL's resampler reads, for each output pixel, the source pixels within
    ``support = max(box side / output side, 1)`` of its centre (bilinear);
    that reach is taken each side of the box, and :data:`EDGE` beyond it.
    """
    (w, h), (ow, oh) = size, out_size
    rx = max((box[2] - box[0]) / ow, 1.0) + EDGE
    ry = max((box[3] - box[1]) / oh, 1.0) + EDGE
    return (max(0, math.floor(box[0] - rx)), max(0, math.floor(box[1] - ry)),
            min(w, math.ceil(box[2] + rx) + 1), min(h, math.ceil(box[3] + ry) + 1))


def load_box(data, size: tuple[int, int], box, out_size: tuple[int, int], scale: int):
    """``(image, box)``: what resizing ``box`` (full-size coordinates) to ``out_size`` reads, decoded at ``1/scale``.

    ``size`` is the full image's ``(width, height)``. The image is the whole
    image at that scale with only the box's region decoded, and the box is
    ``box / scale``: the resize reads the same pixels at the same coordinates
    as on the whole image (module docstring). None where region decode is off,
    does not handle the JPEG, or libjpeg finds it corrupt (:class:`JPEGError`
    from :func:`decode_region`): the caller's general decoder then decides.
    """
    if not available():
        return None
    scaled = (-(-size[0] // scale), -(-size[1] // scale))
    sbox = box if scale == 1 else tuple(v / scale for v in box)
    try:
        got = decode_region(data, scale, scaled, region_for(sbox, out_size, scaled))
    except JPEGError:
        return None
    return None if got is None else (got[0], sbox)


# ----------------------------------------------------------------------------- is it exact here?


def _resize_is_local() -> bool:
    """Whether this PIL's bilinear resize of a box reads nothing beyond :func:`region_for`'s region.

    Random pixels; boxes that enlarge and shrink, on whole and fractional
    pixels, near and away from the edges: the same image with every pixel
    outside the region changed must resize to the same pixels, bit for bit.
    """
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 420, 4), dtype=np.uint8)
    junk = rng.integers(0, 256, pixels.shape, dtype=np.uint8)
    bilinear = Image.Resampling.BILINEAR
    for box, out in (((60, 115, 220, 276), (224, 224)), ((3.25, 40.5, 411.75, 290.125), (100, 60)),
                     ((150.4, 0.0, 190.6, 33.3), (224, 224)), ((0, 0, 420, 300), (224, 224)),
                     ((100.5, 80.25, 330.5, 299.75), (224, 224))):
        x0, y0, x1, y1 = region_for(box, out, (420, 300))
        cut = junk.copy()
        cut[y0:y1, x0:x1] = pixels[y0:y1, x0:x1]
        want = Image.fromarray(pixels, "RGBX").resize(out, bilinear, box=box).tobytes()
        if Image.fromarray(cut, "RGBX").resize(out, bilinear, box=box).tobytes() != want:
            return False
    return True


_PROBLEM: str | None = None  # None: not checked yet; "": region decode on


def check() -> str:
    """Why region decode is off in this process, or ``""`` when it is on (checked once, never raises)."""
    global _PROBLEM
    if _PROBLEM is None:
        if _IMPORT_PROBLEM:
            _PROBLEM = _IMPORT_PROBLEM
        else:
            try:
                local = _resize_is_local()
            except Exception as exc:  # a probe must not break decoding: Pillow's path is always there
                local, exc_text = False, f"{type(exc).__name__}: {exc}"
            else:
                exc_text = "this PIL's resize of a box reads pixels beyond the bilinear filter's reach"
            _PROBLEM = "" if local else exc_text
    return _PROBLEM


def available() -> bool:
    """Whether region decode is on in this process (:func:`check` found nothing in its way)."""
    return _PROBLEM == "" if _PROBLEM is not None else not check()


def describe() -> str:
    """One line: region JPEG decode on (with which libjpeg), or off and why."""
    problem = check()
    return "region JPEG decode on (bioscan_io._jpeg, libjpeg-turbo)" if not problem else \
        f"region JPEG decode off ({problem})"

"""Decode and augment specimen images (pillow-simd).

Training: random resized crop (torchvision's algorithm and defaults: scale
0.08-1, ratio 3/4-4/3), random flips and, if asked, a random rotation
(CLIBD's recipe: the crop drawn on the image resized to 256 on its shorter
side, both flips, +-45 degrees nearest-neighbour rotation). Evaluation:
resize the shorter side to 256, centre crop 224. Each sample's random draws
come from its own generator keyed by (seed, epoch, processid), so
augmentation does not depend on worker count or order. Batches leave :func:`stack` as uint8 NCHW tensors
(normalise on the GPU with :func:`normalize`) or, if asked, float32 normalised
with the dataset's mean and std.

Two ways in:

* step by step -- :func:`decode`, then :func:`train_transform` or
  :func:`eval_transform` (uint8 HWC arrays), then :func:`stack`;
* fused, what the loader uses -- :func:`decode_train` / :func:`decode_eval`
  take the JPEG bytes and return a :class:`PreparedImage` (the random draws
  made, the pixels not yet), which :func:`stack` renders into the batch.

The fused path does each step once, with the least work:

1. the JPEG's size comes from its frame header (a few byte reads), and the
   crop box is drawn from it before anything is decoded;
2. the pixels are made one image at a time inside :func:`stack`, straight
   into the batch tensor: a batch never holds more than one decoded image;
3. only the rows the crop needs are decoded (libjpeg stops after the crop's
   last row plus the rows the resampling filter reads; decoding is
   sequential, so the rows above the crop are decoded);
4. a crop at least twice the output size (both sides) is decoded at 1/2, 1/4
   or 1/8 scale in the DCT domain (libjpeg scaling, as ``Image.draft``), then
   resized: the crop geometry is unchanged, the pixels change slightly (a
   DCT-domain low-pass, then the bilinear filter, instead of the bilinear
   filter over the full-size pixels; ~50 dB PSNR on the generated 'cropped'
   and 'original_full' images). ``dct_scaling=False`` turns it off;
   ``cropped_256`` images never qualify for a 224 crop;
5. crop + resize is one ``resize(..., box=...)`` call (pillow-simd's SIMD
   resampler); a box the size of the output on whole pixels (evaluation of a
   ``cropped_256`` image) is a plain crop;
6. flips and the HWC -> CHW change happen while the three planes are copied
   into the batch, which is allocated once (in shared memory inside a
   DataLoader worker, so it is not copied again on its way to the main
   process) and pre-faulted in one system call;
7. a rotation (``rotate=``) turns the small resized image before the copy.
   The chain it reproduces flips, then rotates by ``a``: as a mirror turns a
   rotation by ``a`` into one by ``-a`` (both flips, a half turn, commute with
   it), the image is turned by ``-a`` when exactly one flip is drawn, else by
   ``a``, and the flips stay in the copy. Draws: box, hflip, vflip, angle.

Without DCT scaling the fused path gives exactly the pixels of
``train_transform(decode(data), ...)`` / ``eval_transform(decode(data), ...)``
with the same generator state. ``pre_resize`` needs no extra resize either:
the crop box is drawn on the size the image would have after the resize and
mapped back onto the source (a ``cropped_256`` image is already that size).
"""

from __future__ import annotations

import io
import math
import mmap
import numbers
import random
import re
import sys
from typing import Any

import numpy as np
from PIL import Image

from . import _pillow
from .schema import RGB_MEAN, RGB_STD, BioscanError

__all__ = ["EOI_SLACK", "MAX_ROTATE", "has_eoi", "decode", "resized_size", "random_resized_crop_box", "eval_box",
           "PreparedImage", "decode_train", "decode_eval", "train_transform", "eval_transform", "stack", "normalize"]

_BILINEAR = Image.Resampling.BILINEAR  # Pillow >= 9.1 (pyproject)
_FLIP_LR = Image.Transpose.FLIP_LEFT_RIGHT
_FLIP_TB = Image.Transpose.FLIP_TOP_BOTTOM
_NEAREST = Image.Resampling.NEAREST
_DEFAULT_RATIO = (3 / 4, 4 / 3)
_BLACK = (0, 0, 0)
#: Largest ``rotate`` (degrees either way): a full turn's range.
MAX_ROTATE = 180.0


# ----------------------------------------------------------------------------- decoding


def _open(data: bytes, where: str) -> Image.Image:
    """PIL's header reader (any format); no pixels yet."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises a zoo of types for corrupt data
        raise BioscanError(f"corrupt image {where}: {_reason(exc, data)}") from None


def _reason(exc: Exception, data: bytes) -> str:
    """PIL's complaint without the object it was reading (``<_io.BytesIO object at 0x...>``)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    if "cannot identify image file" in text:
        return f"not an image PIL can read ({len(data)} bytes, starting {bytes(data[:4])!r})"
    return text or type(exc).__name__


def _load_rgb(img: Image.Image, where: str) -> Image.Image:
    """PIL's general decoder (any format, any mode), to RGB."""
    try:
        img.load()
    except Exception as exc:
        raise BioscanError(f"corrupt image {where}: {_reason(exc, b'')}") from None
    return img if img.mode == "RGB" else img.convert("RGB")


_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive
_STANDALONE = frozenset((0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7))


def _jpeg_header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of an 8-bit, 3-component Huffman JPEG, from its frame header; else None.

    A few byte reads instead of PIL's header parser (which also parses every
    table): all the fast path needs. None sends the bytes to ``Image.open``.
    """
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE:
            i += 2
        elif marker in _SOF_HUFFMAN:
            if i + 10 > n or data[i + 4] != 8 or data[i + 9] != 3:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        elif (0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker in (0xD8, 0xD9, 0xDA):
            return None  # another coding process, or no frame header before the scan
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


#: Bytes at the end of a JPEG that may follow its end-of-image marker (padding some
#: cameras and tools append); a truncated file has no marker there.
EOI_SLACK = 32


def has_eoi(data: bytes) -> bool:
    """Whether the bytes end with a JPEG end-of-image marker, give or take :data:`EOI_SLACK` bytes."""
    return b"\xff\xd9" in data[-EOI_SLACK:]


def _check_size(size: tuple[int, int], where: str) -> None:
    """PIL's decompression-bomb check, as ``Image.open`` makes it."""
    try:
        _pillow.bomb_check(size)
    except Image.DecompressionBombError as exc:
        raise BioscanError(f"corrupt image {where}: {exc}") from None


def _jpeg_rows(data: bytes, size: tuple[int, int], rows: int | None, scale: int = 1) -> Image.Image | None:
    """The first ``rows`` rows of an RGB JPEG at ``1/scale``; None sends it to PIL's general path.

    ``size`` is the image's (from :func:`_jpeg_header`); ``rows=None`` decodes
    every row. Pillow's own libjpeg decoder is driven directly, on a new image of
    just those rows (:func:`bioscan_io._pillow.jpeg_rows`, where the private
    Pillow calls live, with their public-API fallback). The result is trusted
    only if the file ends with an EOI marker (a truncated file takes the general
    path, which raises, so a damaged image fails whatever its crop) and the
    decoder did not stop early; when in doubt, the general path decides.
    """
    if not has_eoi(data):  # no EOI at the end: truncated, or data after it
        return None
    return _pillow.jpeg_rows(data, size, rows, scale)


def decode(data: bytes, where: str = "") -> Image.Image:
    """Decode JPEG (or any PIL-readable) bytes to an RGB image."""
    data = _as_bytes(data)
    size = _jpeg_header(data)
    if size is not None:
        _check_size(size, where)
        fast = _jpeg_rows(data, size, None)
        if fast is not None:
            return fast
    return _load_rgb(_open(data, where), where)


def _dct_scale(box_w: float, box_h: float, out_w: int, out_h: int) -> int:
    """The largest JPEG DCT scale (8, 4, 2) that keeps the crop at least the output size."""
    for s in (8, 4, 2):
        if box_w >= s * out_w and box_h >= s * out_h:
            return s
    return 1


def _rows_for(box, out_h: int, scale: int) -> int | None:
    """Rows (at ``1/scale``) a bilinear resize of ``box`` to ``out_h`` reads: the box and the filter's reach.

    None (every row) where this PIL's resize of a box depends on the rows below it
    (stock Pillow: ``_pillow.ROWS_EXACT``), so that the pixels stay exact.
    """
    if not _pillow.ROWS_EXACT:
        return None
    reach = max((box[3] - box[1]) / scale / out_h, 1.0)  # bilinear support 1 x the filter's scale
    return int(math.ceil(box[3] / scale + reach)) + 1


def _load_for_box(data: bytes, size: tuple[int, int] | None, box, out_size: tuple[int, int], where: str,
                  dct_scaling: bool, img: Image.Image | None = None):
    """Decode what resizing ``box`` (full-size coordinates) to ``out_size`` needs; returns (image, box).

    ``size`` is the JPEG header's (fast path) or None (PIL's general path, on
    ``img`` when already opened).
    """
    if size is not None:
        scale = _dct_scale(box[2] - box[0], box[3] - box[1], *out_size) if dct_scaling else 1
        fast = _jpeg_rows(data, size, _rows_for(box, out_size[1], scale), scale)
        if fast is None and scale > 1:
            scale = 1
            fast = _jpeg_rows(data, size, _rows_for(box, out_size[1], 1), 1)
        if fast is not None:
            return fast, (box if scale == 1 else tuple(v / scale for v in box))
    return _load_rgb(img if img is not None else _open(data, where), where), box


def _crop_resize(img: Image.Image, box, size: tuple[int, int]) -> Image.Image:
    """``img`` cropped to ``box`` and resized to ``size`` (bilinear) in one step."""
    left, top, right, bottom = box
    if (right - left, bottom - top) == size and all(float(v).is_integer() for v in box):
        return img.crop((int(left), int(top), int(right), int(bottom)))  # scale 1 on whole pixels: a crop
    return img.resize(size, _BILINEAR, box=box)


# ----------------------------------------------------------------------------- geometry


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the shorter side to ``resize``: torchvision's ``Resize(resize)``.

    The longer side becomes ``int(resize * long / short)``; an image of that size already is left alone.
    """
    if width <= height:
        return resize, max(1, int(resize * height / width))
    return max(1, int(resize * width / height)), resize


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=_DEFAULT_RATIO, pre_resize: int | None = None) -> tuple:
    """A crop box ``(left, top, right, bottom)`` drawn as torchvision's RandomResizedCrop does.

    ``pre_resize``: drawn on the image as ``Resize(pre_resize)`` would leave it
    (:func:`resized_size`), then mapped back onto the ``width`` x ``height``
    source (float coordinates, unless that size is the source's).
    """
    if pre_resize is None:
        return _rrc_box(width, height, rng, scale, ratio)
    nw, nh = resized_size(width, height, pre_resize)
    box = _rrc_box(nw, nh, rng, scale, ratio)
    if (nw, nh) == (width, height):
        return box
    sx, sy = width / nw, height / nh
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def _rrc_box(width: int, height: int, rng: random.Random, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` on a ``width`` x ``height`` image, as a box."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def eval_box(width: int, height: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The source box of "resize the shorter side to ``resize``, centre crop ``size``".

    torchvision's arithmetic: the longer side becomes ``int(resize * long / short)``,
    the crop's offsets ``int(round((new - size) / 2))``; the box maps the crop back
    onto the source image, so one resize call does both steps.
    """
    if resize < size:
        raise BioscanError(f"eval resize {resize} is smaller than the crop size {size}")
    nw, nh = resized_size(width, height, resize)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    sx, sy = width / nw, height / nh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


# ----------------------------------------------------------------------------- rotation


def _level(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) <= 255


def _augment_args(pre_resize, rotate, fill) -> tuple[int, int, int]:
    """Check ``pre_resize``, ``rotate`` and ``fill`` (one line naming the argument); the fill as RGB."""
    if pre_resize is not None and (isinstance(pre_resize, bool) or not isinstance(pre_resize, numbers.Integral)
                                   or pre_resize < 1):
        raise BioscanError(f"pre_resize must be a positive integer or None; got {pre_resize!r}")
    if isinstance(rotate, bool) or not isinstance(rotate, numbers.Real) or not 0 <= float(rotate) <= MAX_ROTATE:
        raise BioscanError(f"rotate must be a number of degrees from 0 to {MAX_ROTATE:g}; got {rotate!r}")
    colour = (fill,) * 3 if _level(fill) else tuple(fill) if isinstance(fill, (tuple, list)) else ()
    if len(colour) != 3 or not all(_level(v) for v in colour):
        raise BioscanError(f"fill must be a level 0-255 or three of them (R, G, B); got {fill!r}")
    return int(colour[0]), int(colour[1]), int(colour[2])


def _train_draws(width: int, height: int, rng: random.Random, hflip: bool, vflip: bool, scale, ratio,
                 pre_resize, rotate: float) -> tuple[tuple, bool, bool, float]:
    """A training sample's draws in the chain's order: crop box, one per enabled flip, the angle (if ``rotate``)."""
    box = random_resized_crop_box(width, height, rng, scale=scale, ratio=ratio, pre_resize=pre_resize)
    h_flip = hflip and rng.random() < 0.5
    v_flip = vflip and rng.random() < 0.5
    angle = rng.uniform(-rotate, rotate) if rotate else 0.0
    return box, h_flip, v_flip, angle


def _rotated(img: Image.Image, angle: float, hflip: bool, vflip: bool, fill) -> Image.Image:
    """``img`` turned so that applying the flips after gives "flip, then rotate by ``angle``".

    Counter-clockwise degrees about the centre, nearest neighbour, same size,
    corners ``fill`` (torchvision's ``F.rotate`` defaults). One flip mirrors the
    turn (``-angle``); both flips are a half turn, which commutes with it.
    """
    if not angle:
        return img
    return img.rotate(-angle if hflip != vflip else angle, _NEAREST, fillcolor=fill)


# ----------------------------------------------------------------------------- transforms


class PreparedImage:
    """One sample's image: its crop, flips and angle drawn, its pixels made when it is copied into a batch.

    What :func:`decode_train` and :func:`decode_eval` return and :func:`stack`
    takes. :meth:`write` decodes (the rows needed), crops and resizes, rotates,
    flips and copies the three planes into a CHW array; :meth:`load` decodes at
    once instead (and keeps the result), so that a corrupt image raises there.
    ``angle`` is the rotation after the flips (counter-clockwise degrees).
    """

    __slots__ = ("_data", "_src_size", "_img", "_box", "size", "hflip", "vflip", "angle", "_fill", "_where", "_dct",
                 "_pixels")

    def __init__(self, data: bytes, src_size: tuple[int, int] | None, img: Image.Image | None, box,
                 size: tuple[int, int], hflip: bool = False, vflip: bool = False, where: str = "",
                 dct_scaling: bool = True, angle: float = 0.0, fill: tuple[int, int, int] = _BLACK):
        self._data, self._src_size, self._img, self._box = data, src_size, img, box
        self.size, self.hflip, self.vflip, self.angle, self._fill = size, bool(hflip), bool(vflip), angle, fill
        self._where, self._dct = where, dct_scaling
        self._pixels: Image.Image | None = None

    def __reduce__(self):  # pickles as the bytes and the draws, not as pixels
        return (PreparedImage, (self._data, self._src_size, None, self._box, self.size, self.hflip, self.vflip,
                                self._where, self._dct, self.angle, self._fill))

    @property
    def box(self) -> tuple:
        """The crop box ``(left, top, right, bottom)`` in the source image's pixels."""
        return self._box

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(3, height, width)``, the CHW shape."""
        return (3, self.size[1], self.size[0])

    def render(self) -> Image.Image:
        """The cropped, resized, rotated RGB image, flips not applied (decoded now unless :meth:`load` was called)."""
        if self._pixels is not None:
            return self._pixels
        src, box = _load_for_box(self._data, self._src_size, self._box, self.size, self._where, self._dct, self._img)
        return _rotated(_crop_resize(src, box, self.size), self.angle, self.hflip, self.vflip, self._fill)

    def load(self) -> PreparedImage:
        """Decode now, so that a corrupt image raises here; keeps the pixels for :meth:`write`."""
        if self._pixels is None:
            self._pixels = self.render()
        return self

    def write(self, out: np.ndarray) -> None:
        """Render into ``out``, a uint8 array of shape (3, height, width), flips applied."""
        img = self.render()
        w, h = self.size
        ystep = -1 if self.vflip else 1  # the raw encoder writes the rows bottom up: a free vertical flip
        for c, band in enumerate("RGB"):
            plane = np.frombuffer(img.tobytes("raw", band, 0, ystep), np.uint8).reshape(h, w)
            out[c] = plane[:, ::-1] if self.hflip else plane

    def numpy(self) -> np.ndarray:
        """The image as a new uint8 CHW array."""
        out = np.empty(self.shape, np.uint8)
        self.write(out)
        return out

    def hwc(self) -> np.ndarray:
        """The image as a uint8 HWC array (what :func:`train_transform` returns)."""
        return np.ascontiguousarray(self.numpy().transpose(1, 2, 0))


def _as_bytes(data) -> bytes:
    """Bytes from any bytes-like object (a memoryview of an Arrow buffer, say)."""
    return data if isinstance(data, bytes) else bytes(data)


def _header(data: bytes, where: str):
    """(image size, JPEG header size for the fast path or None, the opened image for the general path or None)."""
    size = _jpeg_header(data)
    if size is not None:
        _check_size(size, where)
        return size, size, None
    img = _open(data, where)
    return img.size, None, img


def decode_train(data: bytes, size: int, rng: random.Random, hflip: bool = True, vflip: bool = False,
                 scale=(0.08, 1.0), ratio=_DEFAULT_RATIO, where: str = "",
                 dct_scaling: bool = True, lazy: bool = True, *, pre_resize: int | None = None,
                 rotate: float = 0.0, fill=0) -> PreparedImage:
    """JPEG bytes -> random resized crop to ``size`` x ``size`` + random flips (+ rotation), fused.

    The draws from ``rng`` are those of :func:`train_transform` (crop box, then
    one ``rng.random()`` per enabled flip, then one ``rng.uniform`` for the
    angle if ``rotate``), so the pixels equal ``train_transform(decode(data),
    size, rng, ...)`` (unless DCT scaling applies: module docstring). Returns a
    :class:`PreparedImage`; :func:`stack` makes its pixels.

    ``pre_resize``: the box is drawn as on the image after torchvision's
    ``Resize(pre_resize)`` (CLIBD: 256), in one resize all the same.
    ``rotate``: after the flips, a turn by an angle uniform in
    ``[-rotate, rotate]`` degrees (torchvision's ``RandomRotation``: nearest
    neighbour, about the centre, same size, corners ``fill``: a level 0-255 or
    an RGB triple). CLIBD's recipe: ``hflip=True, vflip=True, pre_resize=256,
    rotate=45``. Bad values raise :class:`BioscanError` naming the argument.

    Errors (:class:`BioscanError` naming ``where``): bytes that are not an image
    and JPEG files without their end-of-image marker (truncated ones: decoded
    here) raise here; the rare damage only the decoder sees (a corrupt Huffman
    table, say) raises when the pixels are made, in :func:`stack`.
    ``lazy=False`` decodes here instead (slower: a batch then holds all its
    images decoded at once).
    """
    colour = _augment_args(pre_resize, rotate, fill)
    data = _as_bytes(data)
    (width, height), fast, img = _header(data, where)
    box, h_flip, v_flip, angle = _train_draws(width, height, rng, hflip, vflip, scale, ratio, pre_resize, rotate)
    out = PreparedImage(data, fast, img, box, (size, size), h_flip, v_flip, where, dct_scaling, angle, colour)
    return out.load() if not lazy or not has_eoi(data) else out


def decode_eval(data: bytes, size: int, resize: int, where: str = "",
                dct_scaling: bool = True, lazy: bool = True) -> PreparedImage:
    """JPEG bytes -> resize the shorter side to ``resize`` + centre crop ``size``, fused (as :func:`decode_train`)."""
    data = _as_bytes(data)
    (width, height), fast, img = _header(data, where)
    box = eval_box(width, height, size, resize)
    out = PreparedImage(data, fast, img, box, (size, size), where=where, dct_scaling=dct_scaling)
    return out.load() if not lazy or not has_eoi(data) else out


def train_transform(img: Image.Image, size: int, rng: random.Random, hflip: bool = True, vflip: bool = False,
                    scale=(0.08, 1.0), ratio=_DEFAULT_RATIO, *, pre_resize: int | None = None,
                    rotate: float = 0.0, fill=0) -> np.ndarray:
    """Random resized crop to ``size`` x ``size``, then random flips, then a random rotation; uint8 HWC.

    ``pre_resize``, ``rotate``, ``fill``: as :func:`decode_train`. The turn is
    made before the flips with the angle mirrored as they require (module
    docstring, step 7): the pixels of the fused path, which equal flipping
    first up to PIL's fixed-point sampling (about 2 pixels in 1,000, those
    on a boundary between two source pixels, take the neighbour).
    """
    colour = _augment_args(pre_resize, rotate, fill)
    box, h_flip, v_flip, angle = _train_draws(img.width, img.height, rng, hflip, vflip, scale, ratio, pre_resize,
                                              rotate)
    out = _rotated(_crop_resize(img, box, (size, size)), angle, h_flip, v_flip, colour)
    if h_flip:
        out = out.transpose(_FLIP_LR)
    if v_flip:
        out = out.transpose(_FLIP_TB)
    return np.asarray(out)


def eval_transform(img: Image.Image, size: int, resize: int) -> np.ndarray:
    """Resize the shorter side to ``resize``, centre crop ``size``; uint8 HWC."""
    box = eval_box(img.width, img.height, size, resize)
    return np.asarray(_crop_resize(img, box, (size, size)))


# ----------------------------------------------------------------------------- batches

_MADV_POPULATE_WRITE = 23  # Linux 5.14+
_madvise: Any = None  # libc's madvise once looked up; False where unavailable


def _prefault(tensor) -> None:
    """Fault in a new tensor's pages in one system call instead of one page fault per 4 KiB.

    ``madvise(MADV_POPULATE_WRITE)``; measured 50 -> 38 us per 224x224 image
    for shared memory, 36 -> 21 us for private memory. Silently skipped where
    the kernel or platform lacks it.
    """
    global _madvise
    if _madvise is False:
        return
    if _madvise is None:
        try:
            import ctypes

            if not sys.platform.startswith("linux"):
                raise OSError("not Linux")
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
            return
    addr = tensor.data_ptr()
    start = addr - addr % mmap.PAGESIZE
    if _madvise(start, addr + tensor.nbytes - start, _MADV_POPULATE_WRITE) != 0:
        _madvise = False  # EINVAL: a kernel before 5.14


def _empty(shape: tuple[int, ...], dtype):
    """A new tensor, pre-faulted; in shared memory inside a DataLoader worker (sent without a copy)."""
    import torch
    from torch.utils.data import get_worker_info

    from . import handover

    if get_worker_info() is None:
        out = torch.empty(shape, dtype=dtype)
    elif (reused := handover.empty(shape, dtype)) is not None:
        return reused  # a reused slot: its pages are in place already
    else:
        out = handover.shared_tensor(shape, dtype)
    if out.nbytes >= 1 << 20:
        _prefault(out)
    return out


def stack(images: list, dtype: str = "uint8"):
    """Batch images into a torch tensor NCHW.

    ``images`` holds :class:`PreparedImage` objects (from :func:`decode_train` /
    :func:`decode_eval`, rendered here one by one straight into the batch) or
    uint8 HWC arrays (from :func:`train_transform` / :func:`eval_transform`),
    all the same size. ``dtype="uint8"`` keeps bytes (normalise on the GPU with
    :func:`normalize`); ``"float32"`` returns them normalised with the dataset's
    mean and std. Inside a DataLoader worker the batch is made in shared memory.
    """
    import torch

    if not images:
        raise BioscanError("stack needs at least one image")
    first = images[0]
    h, w = first.shape[1:] if isinstance(first, PreparedImage) else np.shape(first)[:2]
    shape = (len(images), 3, h, w)
    # uint8: the batch itself goes to the main process; float32: only its normalised copy does
    batch = _empty(shape, torch.uint8) if dtype == "uint8" else torch.empty(shape, dtype=torch.uint8)
    out = batch.numpy()
    for i, x in enumerate(images):
        if isinstance(x, PreparedImage):
            if x.size != (w, h):
                raise BioscanError(f"stack: image {i} is {x.size[0]}x{x.size[1]}, not {w}x{h}")
            x.write(out[i])
        else:
            out[i] = np.asarray(x).transpose(2, 0, 1)
    if dtype == "uint8":
        return batch
    return normalize(batch, out=_empty(shape, torch.float32))


def normalize(batch, out=None):
    """uint8 NCHW tensor to float32, normalised by the dataset's mean and std (any device)."""
    import torch

    mean = torch.tensor(RGB_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(RGB_STD, device=batch.device).view(1, 3, 1, 1) * 255
    if out is None:
        return (batch.float() - mean) / std
    torch.sub(batch, mean, out=out)
    return out.div_(std)

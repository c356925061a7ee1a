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
3. only the crop's region is decoded, plus the resampling filter's reach
   (:mod:`bioscan_io.jpeg_region`, libjpeg-turbo's API: the rows above are
   entropy-decoded only, as a sequential JPEG requires, the columns outside
   are not made, libjpeg stops after the last row): the pixels are bit for
   bit those of the whole-image decode (its docstring; tested: max abs
   difference 0). Where it steps aside (no extension, a progressive or CMYK
   JPEG, ...; ``region=False``), Pillow decodes the rows down to the crop's;
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
   into the batch (:mod:`bioscan_io.planes`: one compiled pass over PIL's
   own pixel memory where PIL exports it), which is allocated once (in
   shared memory inside a DataLoader worker, so it is not copied again on
   its way to the main process; without workers, in one of a few buffers
   the loader reuses once the batch made in it before is gone) and
   pre-faulted in one system call.
   A float32 batch gets no uint8 batch in between: each image's planes are
   made in one small array and normalised from there into the batch by a
   compiled loop (:mod:`bioscan_io.planes`), the bits of :func:`normalize`;
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
import numbers
import random
import re

import numpy as np
from PIL import Image

from . import _pillow, jpeg_region
from .crop_boxes import DEFAULT_RATIO, eval_box, random_resized_crop_box, resized_size
from .planes import normalize, normalize_planes, write_planes
from .schema import BioscanError

__all__ = ["EOI_SLACK", "MAX_ROTATE", "has_eoi", "decode", "resized_size", "random_resized_crop_box", "eval_box",
           "PreparedImage", "decode_train", "decode_eval", "train_transform", "eval_transform", "stack", "normalize"]

_BILINEAR = Image.Resampling.BILINEAR  # Pillow >= 9.1 (pyproject)
_FLIP_LR = Image.Transpose.FLIP_LEFT_RIGHT
_FLIP_TB = Image.Transpose.FLIP_TOP_BOTTOM
_NEAREST = Image.Resampling.NEAREST
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
                  dct_scaling: bool, img: Image.Image | None = None, region: bool = True):
    """Decode what resizing ``box`` (full-size coordinates) to ``out_size`` needs; returns (image, box).

    ``size`` is the JPEG header's (fast path) or None (PIL's general path, on
    ``img`` when already opened). ``region``: the box's region alone where
    :mod:`bioscan_io.jpeg_region` can (RGB or RGBX), else the rows down to it.
    """
    if size is not None:
        scale = _dct_scale(box[2] - box[0], box[3] - box[1], *out_size) if dct_scaling else 1
        # a truncated file (no EOI) or one libjpeg finds damaged takes Pillow's path, which decides (and raises)
        if region and has_eoi(data) and (got := jpeg_region.load_box(data, size, box, out_size, scale)) is not None:
            return got
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
                 "_pixels", "_region")

    def __init__(self, data: bytes, src_size: tuple[int, int] | None, img: Image.Image | None, box,
                 size: tuple[int, int], hflip: bool = False, vflip: bool = False, where: str = "",
                 dct_scaling: bool = True, angle: float = 0.0, fill: tuple[int, int, int] = _BLACK,
                 region: bool = True):
        self._data, self._src_size, self._img, self._box = data, src_size, img, box
        self.size, self.hflip, self.vflip, self.angle, self._fill = size, bool(hflip), bool(vflip), angle, fill
        self._where, self._dct, self._region = where, dct_scaling, region
        self._pixels: Image.Image | None = None

    def __reduce__(self):  # pickles as the bytes and the draws, not as pixels
        return (PreparedImage, (self._data, self._src_size, None, self._box, self.size, self.hflip, self.vflip,
                                self._where, self._dct, self.angle, self._fill, self._region))

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
        img = self._render()
        return img if img.mode == "RGB" else img.convert("RGB")

    def _render(self) -> Image.Image:
        """:meth:`render`'s image, RGB or RGBX (region decode's; the same R, G, B bands, no conversion)."""
        if self._pixels is not None:
            return self._pixels
        src, box = _load_for_box(self._data, self._src_size, self._box, self.size, self._where, self._dct, self._img,
                                 self._region)
        return _rotated(_crop_resize(src, box, self.size), self.angle, self.hflip, self.vflip, self._fill)

    def load(self) -> PreparedImage:
        """Decode now, so that a corrupt image raises here; keeps the pixels for :meth:`write`."""
        if self._pixels is None:
            self._pixels = self._render()
        return self

    def write(self, out: np.ndarray) -> None:
        """Render into ``out``, a uint8 array of shape (3, height, width), flips applied."""
        write_planes(self._render(), out, self.hflip, self.vflip)

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
                 scale=(0.08, 1.0), ratio=DEFAULT_RATIO, where: str = "",
                 dct_scaling: bool = True, lazy: bool = True, *, pre_resize: int | None = None,
                 rotate: float = 0.0, fill=0, region: bool = True) -> PreparedImage:
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
    images decoded at once). ``region=False``: no region decode (module
    docstring, step 3), Pillow decodes the rows down to the crop's last.
    """
    colour = _augment_args(pre_resize, rotate, fill)
    data = _as_bytes(data)
    (width, height), fast, img = _header(data, where)
    box, h_flip, v_flip, angle = _train_draws(width, height, rng, hflip, vflip, scale, ratio, pre_resize, rotate)
    out = PreparedImage(data, fast, img, box, (size, size), h_flip, v_flip, where, dct_scaling, angle, colour, region)
    return out.load() if not lazy or not has_eoi(data) else out


def decode_eval(data: bytes, size: int, resize: int, where: str = "",
                dct_scaling: bool = True, lazy: bool = True, *, region: bool = True) -> PreparedImage:
    """JPEG bytes -> resize the shorter side to ``resize`` + centre crop ``size``, fused (as :func:`decode_train`)."""
    data = _as_bytes(data)
    (width, height), fast, img = _header(data, where)
    box = eval_box(width, height, size, resize)
    out = PreparedImage(data, fast, img, box, (size, size), where=where, dct_scaling=dct_scaling, region=region)
    return out.load() if not lazy or not has_eoi(data) else out


def train_transform(img: Image.Image, size: int, rng: random.Random, hflip: bool = True, vflip: bool = False,
                    scale=(0.08, 1.0), ratio=DEFAULT_RATIO, *, pre_resize: int | None = None,
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

def _empty(shape: tuple[int, ...], dtype, buffers=None):
    """A tensor for a batch: in a reused buffer or new and pre-faulted; in shared memory inside a DataLoader worker.

    Inside a worker: the worker's hand-over slot (:mod:`bioscan_io.handover`:
    sent without a copy), else new shared memory. Elsewhere: one of ``buffers``
    (a :class:`~bioscan_io.handover.BatchBuffers`: reused once the batch made in
    it before is gone) when given and one is free, else new private memory.
    """
    import torch
    from torch.utils.data import get_worker_info

    from . import handover

    if get_worker_info() is None:
        if buffers is not None and (reused := buffers.empty(shape, dtype)) is not None:
            return reused
        out = torch.empty(shape, dtype=dtype)
    elif (reused := handover.empty(shape, dtype)) is not None:
        return reused  # a reused slot: its pages are in place already
    else:
        out = handover.shared_tensor(shape, dtype)
    if out.nbytes >= 1 << 20:
        handover.prefault(out)
    return out


def stack(images: list, dtype: str = "uint8", *, buffers=None):
    """Batch images into a torch tensor NCHW.

    ``images`` holds :class:`PreparedImage` objects (from :func:`decode_train` /
    :func:`decode_eval`, rendered here one by one straight into the batch) or
    uint8 HWC arrays (from :func:`train_transform` / :func:`eval_transform`),
    all the same size. ``dtype="uint8"`` keeps bytes (normalise on the GPU with
    :func:`normalize`); ``"float32"`` returns them normalised with the dataset's
    mean and std, bit for bit the values of :func:`normalize`, each image
    normalised as it is made (no uint8 batch in between). Inside a DataLoader
    worker the batch is made in shared memory; elsewhere in one of ``buffers``
    (:class:`bioscan_io.handover.BatchBuffers`, what a loader passes) when given.
    """
    import torch

    if not images:
        raise BioscanError("stack needs at least one image")
    if dtype not in ("uint8", "float32"):
        raise BioscanError(f"stack: dtype must be 'uint8' or 'float32'; got {dtype!r}")
    first = images[0]
    h, w = first.shape[1:] if isinstance(first, PreparedImage) else np.shape(first)[:2]
    shape = (len(images), 3, h, w)
    batch = _empty(shape, torch.uint8 if dtype == "uint8" else torch.float32, buffers)
    out = batch.numpy()
    # float32: each image is made in one small uint8 array (it stays in cache), then normalised into the batch
    planes = out if dtype == "uint8" else np.empty((1, 3, h, w), np.uint8)
    for i, x in enumerate(images):
        at = i if dtype == "uint8" else 0
        if isinstance(x, PreparedImage):
            if x.size != (w, h):
                raise BioscanError(f"stack: image {i} is {x.size[0]}x{x.size[1]}, not {w}x{h}")
            x.write(planes[at])
        else:
            planes[at] = np.asarray(x).transpose(2, 0, 1)
        if dtype != "uint8":
            normalize_planes(planes[0].reshape(3, h * w), out[i].reshape(3, h * w))
    return batch

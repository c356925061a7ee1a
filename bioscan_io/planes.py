"""Pixels into a batch's planes: PIL images to CHW uint8, uint8 to normalised float32 (``bioscan_io._pixels``).

:func:`bioscan_io.images.stack` makes every batch through these two steps:

* :func:`write_planes` copies a decoded, resized image into the batch's
  ``(3, height, width)`` slot, flips applied on the way. Where PIL can hand
  over its own pixel memory without a copy (the Arrow C data interface,
  Pillow >= 11.2, an image held in one block) a compiled loop reads it once
  and de-interleaves it into the three planes; elsewhere each band is packed
  by PIL and copied (the same bytes, about 50 us more for a 224 image);
* :func:`normalize_planes` turns uint8 planes into float32 ones normalised
  with the dataset's mean and std, bit for bit :func:`normalize` (PyTorch's
  arithmetic): a compiled loop, checked once per process on every level of
  every channel, PyTorch's own operations where that check fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

try:
    from . import _pixels
except ImportError as exc:  # pragma: no cover - a tree whose extensions were built before it existed
    raise ImportError(
        "bioscan_io._pixels, the compiled pixel kernel, is not built. Build it from the project root with "
        f"`pip install -e .` or `python setup.py build_ext --inplace` (needs Cython and a C compiler): {exc}"
    ) from exc
from .schema import RGB_MEAN, RGB_STD, BioscanError

__all__ = ["normalize", "normalize_planes", "write_planes"]

_FOUR_BYTE_MODES = ("RGB", "RGBX", "RGBA")  # PIL keeps these as 4 bytes a pixel, R, G, B first


def _pixel_memory(img) -> np.ndarray | None:
    """``img``'s own pixels as a read-only ``(height, width, 4)`` uint8 array (no copy), or None where PIL can't.

    The array keeps the exported memory, and so the image's, alive.
    """
    if img.mode not in _FOUR_BYTE_MODES or not hasattr(img, "__arrow_c_array__"):
        return None
    try:
        exported = pa.array(img)
    except (ValueError, TypeError, pa.ArrowException):  # several blocks (a large image), an old pyarrow
        return None
    w, h = img.size
    buffers = exported.buffers()
    if (not pa.types.is_fixed_size_list(exported.type) or exported.type.list_size != 4 or exported.offset
            or len(exported) != w * h or buffers[-1] is None or buffers[-1].size < 4 * w * h):
        return None
    return np.frombuffer(buffers[-1], np.uint8, count=4 * w * h).reshape(h, w, 4)


def write_planes(img, out: np.ndarray, hflip: bool = False, vflip: bool = False) -> None:
    """Copy an RGB (or RGBX) PIL image into ``out``, a uint8 ``(3, height, width)`` array, flipped as asked."""
    w, h = img.size
    if out.shape != (3, h, w) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise BioscanError(f"writing planes: need a C-contiguous uint8 array of shape (3, {h}, {w}); "
                           f"got {out.dtype} {out.shape}")
    pixels = _pixel_memory(img)
    if pixels is not None:
        _pixels.interleaved_to_planes(pixels, out, hflip, vflip)
        return
    ystep = -1 if vflip else 1  # the raw encoder writes the rows bottom up: a free vertical flip
    for c, band in enumerate("RGB"):
        plane = np.frombuffer(img.tobytes("raw", band, 0, ystep), np.uint8).reshape(h, w)
        out[c] = plane[:, ::-1] if hflip else plane


def _mean_std(device=None):
    """The dataset's mean and std as :func:`normalize` uses them: float32 tensors of shape (1, 3, 1, 1), times 255."""
    import torch

    mean = torch.tensor(RGB_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(RGB_STD, device=device).view(1, 3, 1, 1) * 255
    return mean, std


def normalize(batch, out=None):
    """uint8 NCHW tensor to float32, normalised by the dataset's mean and std (any device)."""
    import torch

    mean, std = _mean_std(batch.device)
    if out is None:
        return (batch.float() - mean) / std
    torch.sub(batch, mean, out=out)
    return out.div_(std)


_KERNEL: Any = None  # (mean, std) as float32 arrays once the compiled kernel is checked; False: PyTorch's ops


def _kernel_args():
    """The compiled kernel's mean and std, or False where it does not give :func:`normalize`'s bits (checked once).

    The output is a function of (level, channel) alone: the kernel and
    :func:`normalize` are compared on all 256 levels of each channel, bit for bit.
    """
    global _KERNEL
    if _KERNEL is None:
        import torch

        mean, std = (t.reshape(3).numpy().copy() for t in _mean_std())
        levels = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
        got = np.empty((3, 256), np.float32)
        _pixels.normalize_planes(levels, got, mean, std)
        want = normalize(torch.from_numpy(levels).view(1, 3, 1, 256)).reshape(3, 256).numpy()
        _KERNEL = (mean, std) if np.array_equal(got.view(np.uint32), want.view(np.uint32)) else False
    return _KERNEL


def normalize_planes(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst`` (float32) = ``src`` (uint8) normalised as :func:`normalize` does; C-contiguous, shape (3, pixels)."""
    if (src.dtype != np.uint8 or dst.dtype != np.float32 or src.ndim != 2 or src.shape != dst.shape
            or src.shape[0] != 3 or not src.flags.c_contiguous or not dst.flags.c_contiguous
            or not dst.flags.writeable):
        raise BioscanError(f"normalising planes: need uint8 and writable float32 C-contiguous arrays of one shape "
                           f"(3, pixels); got {src.dtype} {src.shape} and {dst.dtype} {dst.shape}")
    args = _kernel_args()
    if args:
        _pixels.normalize_planes(src, dst, *args)
        return
    import torch

    mean, std = (t.view(3, 1) for t in _mean_std())
    out = torch.from_numpy(dst)
    torch.sub(torch.from_numpy(src), mean, out=out)
    out.div_(std)

"""Where a crop lies in the source image: torchvision's RandomResizedCrop box and the evaluation box.

The boxes are drawn on the image's size alone (from its JPEG header), before
anything is decoded, so the decoder (:mod:`bioscan_io.images`) can read only
what the box needs. Each function reproduces torchvision's arithmetic
(``RandomResizedCrop.get_params``, ``Resize`` + ``CenterCrop``) on a
``random.Random`` keyed per sample, so the draws do not depend on workers.
"""

from __future__ import annotations

import math
import random

from .schema import BioscanError

__all__ = ["DEFAULT_RATIO", "resized_size", "random_resized_crop_box", "eval_box"]

#: RandomResizedCrop's default aspect-ratio range.
DEFAULT_RATIO = (3 / 4, 4 / 3)


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the shorter side to ``resize``: torchvision's ``Resize(resize)``.

    The longer side becomes ``int(resize * long / short)``; an image of that size already is left alone.
    """
    if width <= height:
        return resize, max(1, int(resize * height / width))
    return max(1, int(resize * width / height)), resize


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=DEFAULT_RATIO, pre_resize: int | None = None) -> tuple:
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

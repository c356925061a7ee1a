"""Decode and augment specimen images (pillow-simd), one function per step.

Training: random resized crop (torchvision's algorithm and defaults: scale
0.08-1, ratio 3/4-4/3) and random flips. Evaluation: resize the shorter side
to 256, centre crop 224. Each sample's random draws come from its own
generator keyed by (seed, epoch, processid), so augmentation does not depend
on worker count or order. Images leave here as uint8 HWC arrays; the collate
step stacks them and, if asked, normalises with the dataset's mean and std
(or leaves that to the GPU).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image

from .schema import RGB_MEAN, RGB_STD, BioscanError


def decode(data: bytes, where: str = "") -> Image.Image:
    """Decode JPEG (or any PIL-readable) bytes to an RGB image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises a zoo of types for corrupt data
        raise BioscanError(f"corrupt image {where}: {exc}") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box ``(left, top, right, bottom)`` drawn as torchvision's RandomResizedCrop does."""
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


def train_transform(img: Image.Image, size: int, rng: random.Random,
                    hflip: bool = True, vflip: bool = False, scale=(0.08, 1.0)) -> np.ndarray:
    """Random resized crop to ``size`` x ``size``, then random flips; uint8 HWC."""
    box = random_resized_crop_box(img.width, img.height, rng, scale=scale)
    out = img.resize((size, size), Image.BILINEAR, box=box)
    if hflip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if vflip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_TOP_BOTTOM)
    return np.asarray(out)


def eval_transform(img: Image.Image, size: int, resize: int) -> np.ndarray:
    """Resize the shorter side to ``resize``, centre crop ``size``; uint8 HWC."""
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(1, int(resize * h / w))
    else:
        nw, nh = max(1, int(resize * w / h)), resize
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    # Resize and crop in one call: PIL maps the box back onto the source.
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=box))


def stack(images: list[np.ndarray], dtype: str = "uint8"):
    """Batch uint8 HWC images into a torch tensor NCHW.

    ``dtype="uint8"`` keeps bytes (normalise on the GPU with :func:`normalize`);
    ``"float32"`` returns them normalised with the dataset's mean and std.
    """
    import torch

    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    if dtype == "uint8":
        return batch
    return normalize(batch)


def normalize(batch):
    """uint8 NCHW tensor to float32, normalised by the dataset's mean and std (any device)."""
    import torch

    mean = torch.tensor(RGB_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(RGB_STD, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std

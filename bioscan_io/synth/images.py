"""JPEG photos of the specimens, rendered by a pool of worker processes.

A photo is a light grey background with a gradient and vignetting, the
specimen's soft shadow, the specimen itself (:mod:`.specimen`), a little blur
and sensor noise, so that its pixel statistics are close to the dataset's
normalisation constants.  Each image has its own seed, so the output does not
depend on the number of workers.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from ..schema import COLUMNS, PACKAGES, BioscanError, image_relpath
from .common import _S_IMAGE, _cpus
from .specimen import _specimen
from .taxa import _PLANS

__all__: list[str] = []


def _package_size(package, rng, aspect):
    """Canvas (width, height) for a package; aspect = wanted width/height."""
    if package in ("cropped_256", "cropped"):
        short = 256 if package == "cropped_256" else int(rng.integers(512, 769))
        a = float(np.clip(max(aspect, 1 / aspect), 1.0, 1.5625))
        long_ = int(round(short * a))
    else:
        short = 256 if package == "original_256" else 768
        # camera frames are always landscape
        return int(round(short * (4 / 3 if rng.random() < 0.8 else 1.5))), short
    if aspect >= 1:
        return long_, short
    return short, long_


def _place(shapes, rng, package, size, area_fraction):
    """Rotate the specimen and fit it into the package's canvas.

    Returns the canvas size ``(W, H)``, the scale ``s`` in pixels per body
    length and the pixel coordinates of all the shapes' points.
    """
    theta = rng.uniform(0, 2 * np.pi)
    ct, st = math.cos(theta), math.sin(theta)
    rot = np.array([[ct, -st], [st, ct]])
    allpts = np.concatenate([s[1] for s in shapes]) @ rot.T
    lo, hi = allpts.min(0), allpts.max(0)
    ext = hi - lo
    W, H = _package_size(package, rng, ext[0] / ext[1])
    if package in ("cropped_256", "cropped"):  # the specimen fills the frame
        margin = rng.uniform(1.15, 1.45)
        s = min(W / (ext[0] * margin), H / (ext[1] * margin))
        off = np.array([W, H]) / 2 - (lo + hi) / 2 * s + rng.normal(0, 0.02, 2) * np.array([W, H])
    else:  # the specimen covers about area_fraction of the frame
        s = math.sqrt(area_fraction * W * H / (ext[0] * ext[1])) * size
        s = min(s, 0.9 * W / ext[0], 0.9 * H / ext[1])
        free = np.array([W, H]) - ext * s
        off = -lo * s + free * rng.uniform(0.15, 0.85, 2)
    return (W, H), s, allpts * s + off


def _background(rng, W, H):
    """Light grey with a soft gradient and vignetting, built small and scaled up; and its base colour."""
    base = 219 + rng.normal(0, 6) + rng.normal(0, 2.0, 3)
    g = 12
    yy, xx = np.mgrid[0:g, 0:g] / (g - 1) - 0.5
    grad = rng.normal(0, 5) * xx + rng.normal(0, 5) * yy
    vign = 1 - rng.uniform(0.08, 0.22) * (xx**2 + yy**2) * 2
    small = (base[None, None, :] + grad[..., None]) * vign[..., None]
    small += rng.normal(0, 1.5, (g, g, 1))
    bg = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB").resize((W, H), Image.BICUBIC)
    return bg, base


def _shadow(rng, bg, base, shapes, pix, s):
    """``bg`` under the specimen's soft shadow: its silhouette drawn at quarter size, blurred, scaled up."""
    W, H = bg.size
    cuts = np.cumsum([len(sh[1]) for sh in shapes])[:-1]
    q = 4
    sw, sh = max(1, W // q), max(1, H // q)
    mask = Image.new("L", (sw, sh), 0)
    md = ImageDraw.Draw(mask)
    shift = rng.normal(0, 0.012, 2) * np.array([W, H]) + np.array([0.006, 0.01]) * max(W, H)
    for (kind, _, rgba, width), pts in zip(shapes, np.split((pix + shift) / q, cuts)):
        if kind == "poly":
            md.polygon(pts.ravel().tolist(), fill=int(rgba[3] * 0.35))
        else:
            md.line(pts.ravel().tolist(), fill=60, width=max(1, int(width * s / q)))
    mask = mask.filter(ImageFilter.GaussianBlur(float(max(1.0, 0.035 * s / q)))).resize((W, H), Image.BILINEAR)
    dark = Image.new("RGB", (W, H), tuple(int(v) for v in base * 0.55))
    return Image.composite(dark, bg, mask)


def _paint(img, shapes, pix, s):
    """Draw the specimen's shapes, at their pixel coordinates ``pix``, onto ``img``."""
    cuts = np.cumsum([len(sh[1]) for sh in shapes])[:-1]
    draw = ImageDraw.Draw(img, "RGBA")
    for (kind, _, rgba, extra), pts in zip(shapes, np.split(pix, cuts)):  # extra: outline or width
        p = pts.ravel().tolist()
        if kind == "poly":
            draw.polygon(p, fill=rgba, outline=extra)
        else:
            draw.line(p, fill=rgba, width=max(1, int(round(extra * s))), joint="curve")


def _add_noise(rng, img):
    """Sensor noise (luminance + chroma) from two small tiles of coprime sizes.

    The noise is added around 128 by PIL, which clips.
    """
    W, H = img.size
    sig = rng.uniform(1.5, 3.0)
    t1 = (rng.normal(128, sig, (64, 64, 1)) + rng.normal(0, sig * 0.4, (64, 64, 3))).astype(np.uint8)
    t2 = rng.normal(0, sig * 0.6, (45, 45, 1)).astype(np.int8)
    noise = np.tile(t1, (H // 64 + 1, W // 64 + 1, 1))[:H, :W]
    noise += np.tile(t2, (H // 45 + 1, W // 45 + 1, 1))[:H, :W].view(np.uint8)
    return ImageChops.add(img, Image.fromarray(noise, "RGB"), 1.0, -128)


def _render_image(package, rec_seed, plan_code, colour, size, area_fraction):
    """One specimen photo as a PIL image (deterministic for its arguments)."""
    rng = np.random.default_rng(rec_seed)
    plan = _PLANS[plan_code]
    colour = np.clip(np.array(colour) * rng.uniform(0.8, 1.2) + rng.normal(0, 3, 3), 10, 220)
    if plan not in ("bug", "springtail"):  # browns and blacks: keep the hue warm
        colour = np.sort(colour)[::-1]
    shapes = _specimen(plan, rng, colour)
    (W, H), s, pix = _place(shapes, rng, package, size, area_fraction)
    bg, base = _background(rng, W, H)
    img = _shadow(rng, bg, base, shapes, pix, s)
    _paint(img, shapes, pix, s)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.1) * max(W, H) / 340)))
    return _add_noise(rng, img)


def _image_seed(seed, index, package):
    return np.random.SeedSequence([seed, _S_IMAGE, PACKAGES.index(package), index])


def _render_batch(args):
    root, package, tasks = args
    n = size = 0
    for rel, rec_seed, plan, colour, sz, area in tasks:
        img = _render_image(package, rec_seed, plan, colour, sz, area)
        path = os.path.join(root, rel)
        try:
            img.save(path, "JPEG", quality=90)
        except OSError as exc:  # a full disk's error names no file: name the image
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), path) from None
        size += os.path.getsize(path)
        n += 1
    return n, size


def _default_workers(n_images):
    if n_images < 600:
        return 1  # starting a pool costs more than it saves
    return min(_cpus(), 32)


@contextmanager
def _rendered(batches, workers):
    """Iterate over ``(images, bytes)`` of every batch, rendered in this process or by a pool."""
    if workers == 1 or len(batches) == 1:
        yield map(_render_batch, batches)
        return
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(min(workers, len(batches))) as pool:
        yield pool.imap_unordered(_render_batch, batches)


_PID, _SPLIT, _CHUNK = (COLUMNS.index(c) for c in ("processid", "split", "chunk"))


class _ImageWriter:
    """Writes the image of every record, a chunk of records at a time.

    Without a pool every record's image is rendered.  With ``pool=N`` only the
    first N records' images are; every later record ``i`` gets a hard link to
    record ``i % N``'s image, so that millions of records cost N renders.

    Parameters
    ----------
    root : pathlib.Path
        The dataset root.
    package : str
        The image package.
    seed : int
        The dataset's seed (each image has its own seed, from it and its record).
    workers : int or None
        Rendering processes; None: every CPU when there are enough images.
    pool : int or None
        Number of images to render; None: one per record.
    n : int
        Number of records.
    advance : callable or None
        Called with the number of records whose image was just written.
    """

    def __init__(self, root, package, seed, workers, pool, n, advance=None):
        self.root, self.package, self.seed = root, package, seed
        self.pool = pool if pool is not None and pool < n else None
        self.limit = n if self.pool is None else self.pool  # records rendered
        self.workers = _default_workers(self.limit) if workers is None else workers
        self.advance = advance or (lambda k: None)
        self.pool_paths = []  # the rendered images that later records link to
        self.n_rendered = self.bytes = 0

    def add(self, start, rows, render) -> None:
        """Write the images of the records from ``start`` on (``rows``), rendering the first ``len(render)``.

        ``render`` holds what the rendered ones are drawn with:
        ``(plan code, colour, size, area_fraction)`` each.
        """
        rels = [image_relpath(row[_PID], row[_SPLIT], row[_CHUNK], self.package) for row in rows]
        k = len(render)
        if k:
            self._render(start, rels[:k], render)
            if self.pool is not None:
                self.pool_paths += rels[:k]
        for j, rel in enumerate(rels[k:], start + k):
            target = os.path.join(self.root, self.pool_paths[j % self.pool])
            try:
                os.link(target, os.path.join(self.root, rel))
            except OSError as e:
                raise BioscanError(f"cannot hard-link {rel} to the image pool: {e.strerror or e}") from None
        self.advance(len(rels) - k)

    def _render(self, start, rels, render) -> None:
        tasks = [(rel, _image_seed(self.seed, i, self.package), *params)
                 for i, (rel, params) in enumerate(zip(rels, render), start)]
        size = 32 if self.package.endswith("256") else 8
        batches = [(str(self.root), self.package, tasks[i : i + size]) for i in range(0, len(tasks), size)]
        with _rendered(batches, self.workers) as results:
            for bn, bs in results:
                self.n_rendered += bn
                self.bytes += bs
                self.advance(bn)

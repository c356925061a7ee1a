"""CLIBD's image augmentation in the fused decode path, against CLIBD's own torchvision chain.

CLIBD (bioscan-ml/clibd, bioscanclip/util/dataset.py) trains on ``cropped_256``
images with ``ToTensor -> Resize(256, antialias=True) -> RandomResizedCrop(224,
antialias=True) -> RandomHorizontalFlip -> RandomVerticalFlip ->
RandomRotation((-45, 45))`` and evaluates with ``ToTensor -> Resize(256,
antialias=True) -> CenterCrop(224)``. Must-show (issue 16, item 3):

(a) the draws (crop scale, aspect and place on the 256-resized image, flips,
    angle) follow the chain's own classes' draws: two-sample KS statistics and
    binomial bounds, with negative controls that must fail them;
(b) one draw's pixels match torchvision's functional chain with the same
    parameters (mean and share-within-2-levels bounds below);
(c) evaluation on a ``cropped_256`` image equals the chain bit for bit.
"""

from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tv_shim import import_torchvision

from bioscan_io import images as im
from bioscan_io import synth
from bioscan_io.schema import BioscanError

tv, T, F = import_torchvision()

CLIBD = {"hflip": True, "vflip": True, "pre_resize": 256, "rotate": 45.0}
N_DRAWS = 2000
# Two-sample KS critical value for n = m = 2000 at alpha = 0.001 is 1.95 * sqrt(2 / 2000) = 0.062.
KS_LIMIT = 0.07


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, list[bytes]]:
    """The generator's ``cropped_256`` (CLIBD's input) and ``original_full`` JPEGs."""
    root = tmp_path_factory.mktemp("clibd")
    out = {}
    for package, n in (("cropped_256", 8), ("original_full", 2)):
        synth.generate(root / package, n_records=n, seed=4, package=package, workers=1)
        paths = sorted((root / package).rglob("*.jpg"))
        out[package] = [p.read_bytes() for p in paths]
    assert len(out["cropped_256"]) == 8 and len(out["original_full"]) == 2
    return out


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))  # as CLIBD's load_image


def _ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a, cdf_b = np.searchsorted(a, grid, "right") / len(a), np.searchsorted(b, grid, "right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


# ----------------------------------------------------------------------------- (a) the draws


def _torchvision_draws(data: bytes, n: int) -> dict[str, np.ndarray]:
    """n draws of CLIBD's training chain, from its own transform classes, in its order."""
    x = T.Resize(size=256, antialias=True)(T.ToTensor()(_pil(data)))
    rrc, hf, vf = T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(), T.RandomVerticalFlip()
    rot = T.RandomRotation(degrees=(-45, 45))
    mark_h, mark_v = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[0.0], [1.0]]])  # a flip shows in [..., 0]
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(n):
            i, j, h, w = rrc.get_params(x, rrc.scale, rrc.ratio)
            hflip = hf(mark_h)[0, 0, 0].item() == 1.0
            vflip = vf(mark_v)[0, 0, 0].item() == 1.0
            rows.append((j, i, j + w, i + h, hflip, vflip, rot.get_params(rot.degrees)))
    return _columns(np.array(rows, dtype=float), x.shape[2], x.shape[1])


def _our_draws(data: bytes, n: int, **kw) -> dict[str, np.ndarray]:
    """n draws of decode_train (one generator per sample, as the loader), boxes on the resized image."""
    opts = {**CLIBD, **kw}
    width, height = im._jpeg_header(data)
    nw, nh = im.resized_size(width, height, opts["pre_resize"] or max(width, height))
    sx, sy = width / nw, height / nh
    rows = []
    for seed in range(n):
        p = im.decode_train(data, 224, random.Random(seed), **opts)
        left, top, right, bottom = p.box
        rows.append((left / sx, top / sy, right / sx, bottom / sy, p.hflip, p.vflip, p.angle))
    return _columns(np.array(rows, dtype=float), nw, nh)


def _columns(rows: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    left, top, right, bottom, hflip, vflip, angle = rows.T
    w, h = right - left, bottom - top
    return {"scale": w * h / (width * height), "log_aspect": np.log(w / h), "centre_x": (left + right) / 2 / width,
            "centre_y": (top + bottom) / 2 / height, "hflip": hflip, "vflip": vflip, "angle": angle}


def _mismatches(ours: dict, theirs: dict) -> list[str]:
    """What differs between two sets of draws: KS over KS_LIMIT, a flip rate off by over 4 sigma."""
    bad = [f"{k} (KS {_ks(ours[k], theirs[k]):.3f})" for k in ("scale", "log_aspect", "centre_x", "centre_y", "angle")
           if _ks(ours[k], theirs[k]) >= KS_LIMIT]
    for k in ("hflip", "vflip"):
        rate, ref = ours[k].mean(), theirs[k].mean()
        if abs(rate - 0.5) > 4 * math.sqrt(0.25 / len(ours[k])) or abs(rate - ref) > 4 * math.sqrt(0.5 / len(ours[k])):
            bad.append(f"{k} (rate {rate:.3f} vs {ref:.3f})")
    return bad


@pytest.mark.parametrize("package", ["cropped_256", "original_full"])
def test_draws_follow_clibd_torchvision_chain(jpegs, package):
    """Crop scale / aspect / place on the Resize(256) output, flip rates and angles: CLIBD's distributions."""
    data = jpegs[package][0]
    theirs = _torchvision_draws(data, N_DRAWS)
    ours = _our_draws(data, N_DRAWS)
    assert _mismatches(ours, theirs) == []
    assert ours["angle"].min() >= -45 and ours["angle"].max() <= 45 and ours["scale"].max() <= 1
    # negative controls: each wrong setting must be caught
    assert "scale" in [m.split()[0] for m in _mismatches(_our_draws(data, N_DRAWS, scale=(0.5, 1.0)), theirs)]
    assert [m.split()[0] for m in _mismatches(_our_draws(data, N_DRAWS, rotate=30.0), theirs)] == ["angle"]
    assert [m.split()[0] for m in _mismatches(_our_draws(data, N_DRAWS, vflip=False), theirs)] == ["vflip"]


def test_resized_size_is_torchvision_resize(jpegs):
    for data in jpegs["cropped_256"] + jpegs["original_full"]:
        x = T.Resize(size=256, antialias=True)(T.ToTensor()(_pil(data)))
        assert im.resized_size(*_pil(data).size, 256) == (x.shape[2], x.shape[1])
    assert im.resized_size(300, 100, 256) == (768, 256) and im.resized_size(100, 301, 50) == (50, 150)


# ----------------------------------------------------------------------------- (b) one draw's pixels


def _torchvision_pixels(data: bytes, p: im.PreparedImage) -> np.ndarray:
    """torchvision's functional chain with ``p``'s draws, float 0-255 CHW."""
    x = F.resize(T.ToTensor()(_pil(data)), [256], antialias=True)
    width, height = _pil(data).size
    sx, sy = width / x.shape[2], height / x.shape[1]
    box = [p.box[0] / sx, p.box[1] / sy, p.box[2] / sx, p.box[3] / sy]
    left, top, right, bottom = (round(v) for v in box)
    assert max(abs(v - round(v)) for v in box) < 1e-6  # the box maps back onto whole pixels of the resized image
    y = F.resized_crop(x, top, left, bottom - top, right - left, [224, 224], antialias=True)
    y = F.hflip(y) if p.hflip else y
    y = F.vflip(y) if p.vflip else y
    y = F.rotate(y, p.angle, T.InterpolationMode.NEAREST, fill=[0.0] * 3)  # RandomRotation's fill=0 on a tensor
    return y.numpy() * 255


def _some_draws(data: bytes, n: int) -> list[im.PreparedImage]:
    """n draws covering every flip combination, DCT scaling off."""
    found: dict = {}
    for seed in range(200):
        p = im.decode_train(data, 224, random.Random(seed), dct_scaling=False, **CLIBD)
        found.setdefault((p.hflip, p.vflip), []).append(p)
    assert len(found) == 4
    return [found[k][i] for i in range(n // 4) for k in sorted(found)]


def test_pixels_match_torchvision_functional_chain(jpegs):
    """cropped_256: mean |diff| < 0.5 level, >= 99.5% of pixels within 2 levels (rotation edges: nearest ties)."""
    for data in jpegs["cropped_256"][:3]:
        for p in _some_draws(data, 4):
            diff = np.abs(p.numpy().astype(np.float64) - _torchvision_pixels(data, p))
            assert diff.mean() < 0.5 and (diff <= 2).mean() >= 0.995, (diff.mean(), (diff <= 2).mean(), p.angle)


def test_pixels_original_full_close_to_torchvision(jpegs):
    """original_full: torchvision resizes twice (1024x768 -> 341x256 -> crop -> 224), we once: close, not equal."""
    data = jpegs["original_full"][0]
    for p in _some_draws(data, 4):
        diff = np.abs(p.numpy().astype(np.float64) - _torchvision_pixels(data, p))
        assert diff.mean() < 1.5 and (diff <= 2).mean() >= 0.9, (diff.mean(), (diff <= 2).mean())


# ----------------------------------------------------------------------------- (c) evaluation


def _clibd_eval(data: bytes) -> np.ndarray:
    chain = T.Compose([T.ToTensor(), T.Resize(size=256, antialias=True), T.CenterCrop(224)])
    return (chain(_pil(data)) * 255).round().to(torch.uint8).numpy()


def test_eval_equals_clibd_chain_bit_for_bit(jpegs):
    for data in jpegs["cropped_256"]:
        assert np.array_equal(im.decode_eval(data, 224, 256).numpy(), _clibd_eval(data))
    for data in jpegs["original_full"]:  # two resizes against one: within a level
        diff = np.abs(im.decode_eval(data, 224, 256, dct_scaling=False).numpy().astype(int) - _clibd_eval(data))
        assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())


# ----------------------------------------------------------------------------- our own guarantees


@pytest.mark.parametrize("package", ["cropped_256", "original_full"])
def test_fused_equals_step_by_step_with_clibd_options(jpegs, package):
    data = jpegs[package][1]
    img = im.decode(data)
    for seed in range(24):
        r1, r2 = random.Random(seed), random.Random(seed)
        fused = im.decode_train(data, 224, r1, dct_scaling=False, **CLIBD).hwc()
        assert np.array_equal(fused, im.train_transform(img, 224, r2, **CLIBD)), seed
        assert r1.getstate() == r2.getstate()


def test_defaults_draw_nothing_more_and_cropped_256_needs_no_pre_resize(jpegs):
    data = jpegs["cropped_256"][2]
    for seed in range(20):
        r1, r2 = random.Random(seed), random.Random(seed)
        plain = im.decode_train(data, 224, r1)
        assert plain.angle == 0.0
        im.random_resized_crop_box(*im._jpeg_header(data), r2)
        r2.random()  # the horizontal flip: nothing else is drawn by default
        assert r1.getstate() == r2.getstate()
        # a cropped_256 image is its own Resize(256): the same box, the same pixels
        same = im.decode_train(data, 224, random.Random(seed), pre_resize=256)
        assert same.box == plain.box and np.array_equal(same.numpy(), plain.numpy())


def test_rotating_first_with_mirrored_angle_is_flipping_first(jpegs):
    """The fused order (turn by -a under one flip, then flip) against the chain's (flip, then turn by a), PIL both."""
    img = im.decode(jpegs["cropped_256"][3]).resize((224, 224))
    for seed in range(12):
        angle = random.Random(seed).uniform(-45, 45)
        for h, v in ((True, False), (False, True), (True, True)):
            chain = img.transpose(im._FLIP_LR) if h else img
            chain = np.asarray((chain.transpose(im._FLIP_TB) if v else chain).rotate(angle, im._NEAREST, fillcolor=0))
            ours = np.asarray(im._rotated(img, angle, h, v, (0, 0, 0)))
            ours = ours[:, ::-1] if h else ours
            ours = ours[::-1] if v else ours
            # PIL samples in 16.16 fixed point: a pixel on a boundary may go to either neighbour
            assert (chain == ours).all(-1).mean() > 0.995, (seed, h, v)


def test_fill_and_pickle(jpegs):
    data = jpegs["cropped_256"][0]
    for seed in range(40):  # a turn of 30+ degrees leaves corners of the fill colour
        p = im.decode_train(data, 64, random.Random(seed), rotate=45.0, fill=(255, 0, 7))
        if abs(p.angle) > 30:
            break
    corners = p.numpy()[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners.T == (255, 0, 7)).all()
    q = pickle.loads(pickle.dumps(p))
    assert q.angle == p.angle and np.array_equal(q.numpy(), p.numpy())
    grey = im.decode_train(data, 64, random.Random(seed), rotate=45.0, fill=128).numpy()
    assert (grey[:, [0, 0, -1, -1], [0, -1, 0, -1]] == 128).all()


@pytest.mark.parametrize("kw, match", [
    ({"pre_resize": 0}, "pre_resize must be"), ({"pre_resize": 25.5}, "pre_resize must be"),
    ({"rotate": -1}, "rotate must be"), ({"rotate": 181}, "rotate must be"), ({"rotate": "45"}, "rotate must be"),
    ({"rotate": 10, "fill": 256}, "fill must be"), ({"rotate": 10, "fill": (0, 0)}, "fill must be"),
    ({"rotate": 10, "fill": "black"}, "fill must be"),
])
def test_bad_arguments_are_one_line(jpegs, kw, match):
    data = jpegs["cropped_256"][0]
    with pytest.raises(BioscanError, match=match) as err:
        im.decode_train(data, 224, random.Random(0), **kw)
    assert "\n" not in str(err.value)
    with pytest.raises(BioscanError, match=match):
        im.train_transform(im.decode(data), 224, random.Random(0), **kw)


def test_tv_shim_is_importable_twice():
    from tv_shim import import_torchvision as again

    assert again()[0] is tv and Path(tv.__file__).exists()

"""Region JPEG decode (bioscan_io.jpeg_region, bioscan_io._jpeg): the pixel bound, the fallbacks, the errors."""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioscan_io import images as im
from bioscan_io import jpeg_region, synth
from bioscan_io.schema import BioscanError

needs_region = pytest.mark.skipif(not jpeg_region.available(), reason=jpeg_region.describe())

#: Generated images per package in the pixel-bound test (each gets four crops).
COUNTS = {"cropped_256": 150, "cropped": 40, "original_full": 60}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, list[bytes]]:
    """The generator's specimen photos (q90 4:2:0 JPEGs), per package."""
    out = {}
    for i, (package, n) in enumerate(COUNTS.items()):
        root = tmp_path_factory.mktemp(f"region-{package}")
        synth.generate(root, n_records=n, seed=40 + i, package=package, workers=2)
        out[package] = [p.read_bytes() for p in sorted((Path(root) / "bioscan5m" / "images").rglob("*.jpg"))]
    return out


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _photo(width: int = 300, height: int = 260) -> Image.Image:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([150 + 60 * np.sin(xx / 17.0), 120 + 50 * np.cos(yy / 11.0), 90 + 0.3 * (xx + yy)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


class _Counting:
    """Counts the regions decoded (so that a bound over them is not a bound over nothing)."""

    def __init__(self, monkeypatch):
        self.n, real = 0, jpeg_region.decode_region

        def counted(*args):
            got = real(*args)
            self.n += got is not None
            return got

        monkeypatch.setattr(jpeg_region, "decode_region", counted)


# ----------------------------------------------------------------------------- the pixel bound


@needs_region
@pytest.mark.parametrize("package", list(COUNTS))
def test_region_decode_gives_the_whole_image_pixels(photos, package, monkeypatch):
    """Max abs and mean difference to the path without region decode, over many crops: both 0 (the bound)."""
    counting = _Counting(monkeypatch)
    recipes = [{}, {"dct_scaling": False}, {"pre_resize": 256, "vflip": True, "rotate": 45.0}]  # default, exact, CLIBD
    worst, total, n = 0, 0, 0
    for i, data in enumerate(photos[package]):
        pairs = [(im.decode_train(data, 224, random.Random(i), **kw),
                  im.decode_train(data, 224, random.Random(i), region=False, **kw)) for kw in recipes]
        pairs.append((im.decode_eval(data, 224, 256), im.decode_eval(data, 224, 256, region=False)))
        for fast, slow in pairs:
            diff = np.abs(fast.numpy().astype(np.int16) - slow.numpy().astype(np.int16))
            worst, total, n = max(worst, int(diff.max())), total + int(diff.sum()), n + diff.size
    assert counting.n == 4 * len(photos[package]) > 0  # every crop went through region decode
    assert worst == 0 and total / n == 0.0, (package, worst, total / n)


@needs_region
def test_raw_region_equals_full_decode_inside_its_edge_columns(photos):
    """libjpeg's own edge effect: a region's cropped first/last column may differ; every other pixel is exact."""
    rng = random.Random(5)
    edge_worst = 0
    for data in photos["original_full"][:20] + photos["cropped_256"][:40]:
        for scale in (1, 2):
            ref_img = Image.open(io.BytesIO(data))
            w, h = ref_img.size
            if scale > 1:
                ref_img.draft("RGB", (w // scale, h // scale))
            ref = np.asarray(ref_img.convert("RGB")).astype(np.int16)
            size = (-(-w // scale), -(-h // scale))
            x, y = rng.randrange(1, size[0] - 40), rng.randrange(0, size[1] - 20)
            region = (x, y, rng.randrange(x + 20, size[0]), rng.randrange(y + 10, size[1] + 1))
            canvas, x0 = jpeg_region.decode_region(data, scale, size, region)
            assert canvas.size == size and canvas.mode == "RGBX" and x0 <= x and x0 % (16 // scale) == 0
            got = np.asarray(canvas)[region[1]:region[3], x0:region[2], :3].astype(np.int16)
            diff = np.abs(got - ref[region[1]:region[3], x0:region[2]])
            inner = diff[:, 1:-1] if x0 > 0 else diff[:, :-1]
            assert inner.max() == 0, (scale, region, x0)
            if scale > 1:  # libjpeg-turbo scales the chroma IDCT instead of upsampling: no edge effect
                assert diff.max() == 0
            edge_worst = max(edge_worst, int(diff.max()))
    assert 0 < edge_worst <= 16  # the effect EDGE keeps out of the resize's reach is real, and small


# ----------------------------------------------------------------------------- what falls back


@needs_region
def test_what_it_does_not_handle_falls_back_to_pillow():
    photo = _photo()
    others = {"progressive": _jpeg(photo, progressive=True), "grey": _jpeg(photo.convert("L")),
              "cmyk": _jpeg(photo.convert("CMYK"))}
    for name, data in others.items():
        assert jpeg_region.decode_region(data, 1, photo.size, (10, 10, 200, 200)) is None, name
        ref = Image.open(io.BytesIO(data)).convert("RGB")
        for seed in range(4):
            assert np.array_equal(im.decode_train(data, 128, random.Random(seed)).hwc(),
                                  im.train_transform(ref, 128, random.Random(seed))), name
    for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0: decoded here, and exact
        data = _jpeg(photo, subsampling=subsampling)
        assert jpeg_region.decode_region(data, 1, photo.size, (10, 10, 200, 200)) is not None
        ref = Image.open(io.BytesIO(data)).convert("RGB")
        for seed in range(6):
            assert np.array_equal(im.decode_train(data, 128, random.Random(seed), dct_scaling=False).hwc(),
                                  im.train_transform(ref, 128, random.Random(seed))), subsampling


def test_without_the_extension_pillow_decodes_the_same_pixels(monkeypatch):
    data = _jpeg(_photo())
    want = [im.decode_train(data, 160, random.Random(s)).numpy() for s in range(5)]
    monkeypatch.setattr(jpeg_region, "_jpeg", None)
    monkeypatch.setattr(jpeg_region, "_IMPORT_PROBLEM", "bioscan_io._jpeg is not built (test)")
    monkeypatch.setattr(jpeg_region, "_PROBLEM", None)
    assert not jpeg_region.available() and "not built" in jpeg_region.describe()
    assert jpeg_region.decode_region(data, 1, (300, 260), (0, 0, 10, 10)) is None
    for s in range(5):
        assert np.array_equal(im.decode_train(data, 160, random.Random(s)).numpy(), want[s])


def test_a_pil_whose_resize_reads_further_switches_it_off(monkeypatch):
    monkeypatch.setattr(jpeg_region, "_PROBLEM", None)
    monkeypatch.setattr(jpeg_region, "_resize_is_local", lambda: False)
    assert not jpeg_region.available()
    assert "reads pixels beyond" in jpeg_region.describe()
    assert jpeg_region.load_box(_jpeg(_photo()), (300, 260), (0, 0, 100, 100), (64, 64), 1) is None


def test_the_resize_probe_passes_here():
    """pillow-simd (and Pillow 12): a box's bilinear resize reads only the filter's reach."""
    assert jpeg_region._resize_is_local()


# ----------------------------------------------------------------------------- errors and arguments


def _bad_huffman_table(data: bytes) -> bytes:
    at = data.index(b"\xff\xc4")
    return data[: at + 5] + bytes([255] * 16) + data[at + 21:]


@needs_region
def test_corrupt_jpegs_raise_naming_the_problem():
    good = _jpeg(_photo())
    with pytest.raises(jpeg_region.JPEGError, match=r"^libjpeg: .*Huffman"):
        jpeg_region.decode_region(_bad_huffman_table(good), 1, (300, 260), (0, 0, 300, 260))
    with pytest.raises(jpeg_region.JPEGError, match=r"^libjpeg: .*(Premature end|Corrupt)"):
        jpeg_region.decode_region(good[: len(good) // 2], 1, (300, 260), (0, 200, 300, 260))
    with pytest.raises(jpeg_region.JPEGError, match=r"^libjpeg: "):
        jpeg_region.decode_region(b"\xff\xd8\xff\xdb" + bytes(40), 1, (300, 260), (0, 0, 10, 10))
    # images.py: libjpeg's complaint sends the image to Pillow's path, which raises naming the sample
    lazy = im.decode_train(_bad_huffman_table(good), 224, random.Random(0), where="shard-7.tar: X-1.jpg")
    with pytest.raises(BioscanError, match="corrupt image .*X-1.jpg"):
        im.stack([lazy])


@needs_region
def test_arguments_are_checked():
    data = _jpeg(_photo())
    for scale, size, region, message in ((3, (300, 260), (0, 0, 5, 5), "scale must be"),
                                         (1, (300, 260), (0, 0, 301, 5), "not inside"),
                                         (1, (300, 260), (5, 5, 5, 9), "not inside"),
                                         (1, (300, 260), (-1, 0, 5, 5), "not inside")):
        with pytest.raises(ValueError, match=message):
            jpeg_region.decode_region(data, scale, size, region)
    assert jpeg_region.decode_region(data, 2, (300, 260), (0, 0, 5, 5)) is None  # not the scaled size: unsupported
    with pytest.raises(TypeError):
        jpeg_region.decode_region(data, 1, (300, 260), (0.5, 0, 5, 5))
    canvas, _ = jpeg_region.decode_region(bytearray(data), 1, (300, 260), (0, 0, 5, 5))  # any bytes-like
    assert canvas.size == (300, 260)


def test_prepared_images_keep_the_switch_and_render_rgb():
    data = _jpeg(_photo())
    for region in (True, False):
        p = im.decode_train(data, 96, random.Random(1), region=region)
        q = pickle.loads(pickle.dumps(p))
        assert q._region is region and np.array_equal(q.numpy(), p.numpy())
        assert p.render().mode == "RGB" and p.load().render().mode == "RGB"
        assert im.decode_eval(data, 96, 110, region=region).render().mode == "RGB"

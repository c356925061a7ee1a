"""bioscan_io._pillow: the private Pillow API the fast JPEG path uses, and its public-API fallback."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from test_images import _jpeg, _photo

from bioscan_io import _pillow
from bioscan_io import images as im
from bioscan_io.schema import BioscanError

SIZES = [(272, 256), (256, 400), (631, 517), (1024, 768), (1500, 1100)]


@pytest.fixture(scope="module")
def jpegs() -> dict[tuple[int, int], bytes]:
    return {size: _jpeg(_photo(*size, seed=i)) for i, size in enumerate(SIZES)}


@pytest.fixture
def fallback(monkeypatch):
    """The public-API path, as on a Pillow whose private API changed."""
    monkeypatch.setattr(_pillow, "AVAILABLE", False)


# ----------------------------------------------------------------------------- the private API is there


def test_private_pillow_api_is_present_on_the_installed_pillow():
    """Fails when a Pillow release changes a private call the fast JPEG path drives (bioscan_io/_pillow.py).

    The loader still works then (the public-API fallback gives the same
    pixels), only slower: pin the Pillow that passes, or update the shim.
    """
    problems = _pillow.check()
    assert not problems and _pillow.AVAILABLE, (
        f"Pillow {Image.__version__}: the private API behind bioscan_io/_pillow.py changed; the fast JPEG path "
        "is off (decodes now go through Image.open + draft + load, every row). What changed:\n  "
        + "\n  ".join(problems or _pillow.PROBLEMS))


class _ChangedDecoder:
    """A decoder whose ``decode`` says "consumed, no error" where Pillow 12 says ``(-1, code)`` at the end."""

    def __init__(self, real):
        self._real = real

    def setimage(self, *args):
        self._real.setimage(*args)

    def decode(self, data):
        return len(data), 0

    def cleanup(self):
        self._real.cleanup()


def _changed_getdecoder(real):
    return lambda *args: _ChangedDecoder(real(*args))


@pytest.mark.parametrize("change, named", [
    (lambda mp: mp.delattr(Image, "_getdecoder"), "PIL.Image._getdecoder"),
    (lambda mp: mp.delattr(Image, "_decompression_bomb_check"), "PIL.Image._decompression_bomb_check"),
    (lambda mp: mp.delattr(Image.core, "new"), "PIL.Image.core.new"),
    (lambda mp: mp.delattr(Image.Image, "_new"), "PIL.Image.Image._new"),
    (lambda mp: mp.setattr(Image, "_decompression_bomb_check", lambda size: None), "_decompression_bomb_check"),
    (lambda mp: mp.setattr(_pillow, "_TILE_ARGS", ("RGB", "YCbCr")), "img.tile"),
    (lambda mp: mp.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: None), "draft"),
    (lambda mp: mp.setattr(Image, "_getdecoder", _changed_getdecoder(Image._getdecoder)), "PIL.Image._getdecoder"),
])
def test_check_names_the_private_call_that_changed(monkeypatch, change, named):
    change(monkeypatch)
    problems = _pillow.check()
    assert problems and any(named in p for p in problems), problems


# ----------------------------------------------------------------------------- the fallback


def test_fallback_decodes_the_same_pixels(jpegs, monkeypatch):
    """The fallback's pixels equal the fast path's exactly, DCT scaling included.

    Measured on Pillow 12.1.1: 0 levels apart over 1,032 decodes (8 sizes, baseline,
    progressive and 4:4:4 JPEGs), so the test asserts equality, not a tolerance.
    """
    fast = {}
    for flag in (True, False):
        monkeypatch.setattr(_pillow, "AVAILABLE", flag)
        outs = []
        for size, data in jpegs.items():
            outs.append(np.asarray(im.decode(data)))
            for seed in range(8):
                for dct in (True, False):
                    outs.append(im.decode_train(data, 224, random.Random(seed), vflip=True, dct_scaling=dct).numpy())
            outs += [im.decode_eval(data, 224, 256, dct_scaling=dct).numpy() for dct in (True, False)]
        if flag:
            fast = outs
    assert len(outs) == len(fast)
    for a, b in zip(fast, outs):
        assert a.shape == b.shape
        assert np.array_equal(a, b), np.abs(a.astype(int) - b.astype(int)).max()


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_fallback_rows_and_scales(jpegs, scale):
    """The public path returns what the private one does: the first rows, at 1/scale (draft picks that scale)."""
    data, size = jpegs[(1024, 768)], (1024, 768)
    w, h = -(-size[0] // scale), -(-size[1] // scale)
    for rows in (None, 1, 9, h // 2, h):
        fast = _pillow._rows_private(data, size, rows, scale)
        public = _pillow._rows_public(data, size, rows, scale)
        assert public is not None and public.size == (w, h if rows is None else rows)
        assert fast.size == public.size and fast.tobytes() == public.tobytes(), (rows, scale)


def test_fallback_partial_rows_through_images(jpegs, fallback):
    data = jpegs[(256, 400)]
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for rows in (1, 8, 17, 399, 400):
        part = im._jpeg_rows(data, (256, 400), rows)
        assert part is not None and part.size == (256, rows) and np.array_equal(np.asarray(part), full[:rows])


def test_fallback_still_rejects_damaged_images(jpegs, fallback):
    good = jpegs[(272, 256)]
    at = good.index(b"\xff\xc4")  # a corrupt Huffman table: only the decoder sees it
    for data in (good[: len(good) // 2], good[: at + 5] + bytes([255] * 16) + good[at + 21:]):
        with pytest.raises(BioscanError, match="corrupt image .*x.jpg"):
            im.decode_train(data, 224, random.Random(0), where="x.jpg", lazy=False)
        with pytest.raises(BioscanError, match="corrupt image .*x.jpg"):
            im.decode(data, "x.jpg")


@pytest.mark.parametrize("limit", [None, 10_000, 50_000, 100_000])
def test_fallback_bomb_check_is_pillows(monkeypatch, limit):
    """The public re-statement raises and warns exactly where Image._decompression_bomb_check does."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)

    def outcome(check):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check((272, 256))
            except Image.DecompressionBombError as exc:
                return "raise", str(exc)
        return "warn" if caught else "pass", [str(w.message) for w in caught]

    assert outcome(_pillow._bomb_check_public) == outcome(Image._decompression_bomb_check)
    monkeypatch.setattr(_pillow, "AVAILABLE", False)
    assert outcome(_pillow.bomb_check) == outcome(Image._decompression_bomb_check)


# ----------------------------------------------------------------------------- stock Pillow's resize of a box


def test_rows_exact_probe_is_what_the_fused_path_relies_on():
    """ROWS_EXACT says whether resizing a box of an image cut below it equals the whole image's (pillow-simd:
    yes; stock Pillow 13: no, by a level in some pixels); it is the probe's own comparison, made again here."""
    pixels = np.random.default_rng(0).integers(0, 256, (320, 256, 3), dtype=np.uint8)
    box, out = (60, 115, 220, 276), (224, 224)
    whole = Image.fromarray(pixels).resize(out, Image.BILINEAR, box=box)
    cut = Image.fromarray(np.ascontiguousarray(pixels[:278])).resize(out, Image.BILINEAR, box=box)
    assert _pillow.ROWS_EXACT == (whole.tobytes() == cut.tobytes())


def test_without_exact_rows_every_row_is_decoded_and_pixels_stay_exact(jpegs, monkeypatch):
    monkeypatch.setattr(_pillow, "ROWS_EXACT", False)
    assert im._rows_for((0, 10, 200, 120), 224, 1) is None
    for size, data in jpegs.items():
        steps = im.decode(data)
        for seed in range(4):
            fused = im.decode_train(data, 224, random.Random(seed), dct_scaling=False).hwc()
            assert np.array_equal(fused, im.train_transform(steps, 224, random.Random(seed))), (size, seed)

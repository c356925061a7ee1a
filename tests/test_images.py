"""Image decode + augmentation (bioscan_io.images): geometry, statistics, exactness, errors."""

from __future__ import annotations

import io
import math
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bioscan_io import images as im
from bioscan_io import planes
from bioscan_io.schema import RGB_MEAN, RGB_STD, BioscanError

SIZES = [(272, 256), (256, 400), (256, 256), (401, 257), (631, 517), (1024, 768)]


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A specimen-like picture: light gradient, a few dark ellipses, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 200 + 20 * (xx / width) - 15 * (yy / height)
    arr = np.stack([base, base * 0.97, base * 0.9], axis=-1)
    arr += rng.normal(0, 4, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(5, width / 4), rng.uniform(5, height / 4)
        colour = tuple(int(v) for v in rng.integers(20, 160, 3))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    return img


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> dict[tuple[int, int], bytes]:
    return {size: _jpeg(_photo(*size, seed=i)) for i, size in enumerate(SIZES)}


def _reference(data: bytes) -> Image.Image:
    """PIL's plain decode."""
    return Image.open(io.BytesIO(data)).convert("RGB")


# ----------------------------------------------------------------------------- shapes, dtypes


def test_shapes_and_dtypes(jpegs):
    data = jpegs[(272, 256)]
    p = im.decode_train(data, 224, random.Random(0))
    assert p.shape == (3, 224, 224)
    chw = p.numpy()
    assert chw.dtype == np.uint8 and chw.shape == (3, 224, 224)
    assert p.hwc().shape == (224, 224, 3)
    assert im.decode_eval(data, 160, 184).numpy().shape == (3, 160, 160)
    img = im.decode(data)
    assert img.mode == "RGB" and img.size == (272, 256)
    hwc = im.train_transform(img, 224, random.Random(0))
    assert hwc.dtype == np.uint8 and hwc.shape == (224, 224, 3)
    assert im.eval_transform(img, 224, 256).shape == (224, 224, 3)


def test_stack_uint8_float32_and_hwc_arrays(jpegs):
    datas = list(jpegs.values())
    prepared = [im.decode_train(d, 224, random.Random(i), dct_scaling=False) for i, d in enumerate(datas)]
    batch = im.stack(prepared)
    assert batch.dtype == torch.uint8 and batch.shape == (len(datas), 3, 224, 224) and batch.is_contiguous()
    for i, p in enumerate(prepared):
        assert np.array_equal(batch[i].numpy(), p.numpy())
    # the step-by-step outputs (HWC arrays) stack to the same batch
    hwc = [im.train_transform(im.decode(d), 224, random.Random(i)) for i, d in enumerate(datas)]
    assert torch.equal(im.stack(hwc), batch)
    f = im.stack(prepared, "float32")
    assert f.dtype == torch.float32 and f.shape == batch.shape
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(RGB_STD).view(1, 3, 1, 1)
    assert torch.allclose(f, (batch.float() / 255 - mean) / std, atol=1e-4)
    assert torch.equal(f, im.normalize(batch))
    with pytest.raises(BioscanError):
        im.stack([prepared[0], im.decode_train(datas[0], 160, random.Random(0))])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_float32_is_normalize_bit_for_bit_on_many_images(jpegs):
    """stack(..., "float32") normalises each image as it is made: exactly normalize(stack(...)), every bit."""
    from bioscan_io import handover

    rng = np.random.default_rng(7)
    datas = list(jpegs.values()) + [_jpeg(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
                                    for w, h in ((256, 300), (320, 256), (256, 256))]
    buffers = handover.BatchBuffers()
    n = 0
    for seed in range(6):
        for size, train, dct in ((224, True, True), (224, True, False), (160, False, True), (97, True, True)):
            prepared = [im.decode_train(d, size, random.Random(seed * 100 + i), dct_scaling=dct, vflip=seed % 2 == 1)
                        if train else im.decode_eval(d, size, size + 32) for i, d in enumerate(datas)]
            u8 = im.stack(prepared)
            want = _bits(im.normalize(u8))
            assert torch.equal(_bits(im.stack(prepared, "float32")), want)
            assert torch.equal(_bits(im.stack(prepared, "float32", buffers=buffers)), want)
            assert torch.equal(_bits(im.stack([p.hwc() for p in prepared], "float32")), want)
            n += len(prepared)
    assert n == 24 * len(datas)
    assert buffers.held() == 0 and len(buffers._buffers) <= 2


def test_planes_from_pil_memory_equal_the_band_copies(monkeypatch):
    """write_planes: the compiled de-interleave of PIL's exported memory gives the bytes of PIL's band copies
    (the fallback), every flip, RGB and RGBX, widths around the SIMD step of 16; an image PIL cannot export
    in one piece takes the fallback; a wrong output array is refused."""
    rng = np.random.default_rng(3)
    checked = 0
    for w, h in ((224, 224), (37, 5), (1, 1), (16, 2), (33, 7)):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for mode in ("RGB", "RGBX"):
            img = Image.fromarray(pixels).convert(mode)
            if hasattr(img, "__arrow_c_array__"):
                assert planes._pixel_memory(img) is not None  # the compiled path is the one under test
            for hflip in (False, True):
                for vflip in (False, True):
                    want = pixels[::-1 if vflip else 1, ::-1 if hflip else 1].transpose(2, 0, 1)
                    got = np.empty((3, h, w), np.uint8)
                    planes.write_planes(img, got, hflip, vflip)
                    assert np.array_equal(got, want)
                    with monkeypatch.context() as m:
                        m.setattr(planes, "_pixel_memory", lambda img: None)
                        fallback = np.empty((3, h, w), np.uint8)
                        planes.write_planes(img, fallback, hflip, vflip)
                    assert np.array_equal(fallback, want)
                    checked += 1
    assert checked == 5 * 2 * 4
    big = Image.new("RGB", (2400, 2400))  # past PIL's 16 MB block: not exportable in one piece
    assert planes._pixel_memory(big) is None
    with pytest.raises(BioscanError, match=r"writing planes: .*\(3, 5, 37\)"):
        planes.write_planes(Image.new("RGB", (37, 5)), np.empty((3, 37, 5), np.uint8))


def test_the_compiled_normalisation_is_exact_on_every_level(monkeypatch):
    """The kernel's output depends on (level, channel) only: all 768 pairs equal normalize's bits (checked
    once per process, and in use here); PyTorch's own ops, the fallback, give them too."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 7, 256).contiguous()
    want = _bits(im.normalize(levels))
    assert planes._kernel_args() is not False  # this build's kernel is exact: it is the one used
    for kernel in (planes._KERNEL, False):
        monkeypatch.setattr(planes, "_KERNEL", kernel)
        got = np.empty((3, 7 * 256), np.float32)
        planes.normalize_planes(levels[0].numpy().reshape(3, -1), got)
        assert torch.equal(_bits(torch.from_numpy(got).view(1, 3, 7, 256)), want)
    with pytest.raises(BioscanError, match="normalising planes"):
        planes.normalize_planes(levels[0].numpy().reshape(3, -1), np.empty((3, 10), np.float32))
    with pytest.raises(BioscanError, match="dtype"):
        im.stack([levels[0].numpy().transpose(1, 2, 0)], "float16")


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, data):
        self.data = data

    def __iter__(self):
        batch = im.stack([im.decode_train(self.data, 64, random.Random(i)) for i in range(4)])
        yield batch, batch.is_shared()


def test_stack_in_a_worker_allocates_shared_memory(jpegs):
    """In a DataLoader worker the batch is built in shared memory (no copy on the way out)."""
    loader = torch.utils.data.DataLoader(_Batches(jpegs[(272, 256)]), batch_size=None, num_workers=1)
    (batch, shared), = list(loader)
    assert shared and batch.shape == (4, 3, 64, 64)
    assert not im.stack([im.decode_train(jpegs[(272, 256)], 64, random.Random(0))]).is_shared()


# ----------------------------------------------------------------------------- crop statistics


def _torchvision_params(width, height, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, verbatim in logic and RNG use."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen).item())
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, "right") / len(a)
    cdf_b = np.searchsorted(b, grid, "right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


@pytest.mark.parametrize("size", [(272, 256), (256, 400), (1024, 768), (1000, 120)])
def test_crop_boxes_follow_torchvision_random_resized_crop(size):
    """Same distribution of crop width, height, top, left (and fallback rate) as torchvision's."""
    width, height = size
    n = 20000
    rng = random.Random(1234)
    ours = np.array([im.random_resized_crop_box(width, height, rng) for _ in range(n)])
    ours = np.stack([ours[:, 1], ours[:, 0], ours[:, 3] - ours[:, 1], ours[:, 2] - ours[:, 0]], 1)  # i, j, h, w
    gen = torch.Generator().manual_seed(1234)
    theirs = np.array([_torchvision_params(width, height, gen) for _ in range(n)])
    assert (ours[:, 2:] > 0).all() and (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    # KS critical value at alpha = 0.001 for n = m = 20000 is 0.0195
    for col, name in enumerate(("top", "left", "height", "width")):
        assert _ks(ours[:, col], theirs[:, col]) < 0.025, name
    area = ours[:, 2] * ours[:, 3] / (width * height)
    assert _ks(area, theirs[:, 2] * theirs[:, 3] / (width * height)) < 0.025
    assert _ks(np.log(ours[:, 3] / ours[:, 2]), np.log(theirs[:, 3] / theirs[:, 2])) < 0.025
    # the central fallback crop (hit often for a 1000x120 strip): same rate
    def fallback_rate(p):
        return np.mean((p[:, 0] == (height - p[:, 2]) // 2) & (p[:, 1] == (width - p[:, 3]) // 2)
                       & ((p[:, 2] == height) | (p[:, 3] == width)))
    assert abs(fallback_rate(ours) - fallback_rate(theirs)) < 4 * math.sqrt(0.25 / n) + 1e-9


def test_crop_box_fallback_is_torchvision_centre_crop():
    class Never(random.Random):  # every draw fails: area fraction > 1
        def uniform(self, a, b):
            return 50.0
    assert im.random_resized_crop_box(1000, 100, Never()) == (433, 0, 566, 100)  # w = round(100 * 4/3)
    assert im.random_resized_crop_box(100, 1000, Never()) == (0, 433, 100, 566)  # h = round(100 / (3/4))
    assert im.random_resized_crop_box(300, 280, Never()) == (0, 0, 300, 280)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("size", SIZES)
def test_fused_path_equals_step_by_step(jpegs, size):
    """decode_train/decode_eval give exactly the pixels of decode + train/eval_transform."""
    data = jpegs[size]
    img = _reference(data)
    assert np.array_equal(np.asarray(im.decode(data)), np.asarray(img))
    for seed in range(40):
        r1, r2 = random.Random(seed), random.Random(seed)
        fused = im.decode_train(data, 224, r1, vflip=True, dct_scaling=False).hwc()
        steps = im.train_transform(img, 224, r2, vflip=True)
        assert np.array_equal(fused, steps), seed
        assert r1.getstate() == r2.getstate()  # the same draws, in the same order
    fused = im.decode_eval(data, 224, 256, dct_scaling=False).hwc()
    assert np.array_equal(fused, im.eval_transform(img, 224, 256))


def test_partial_decode_rows_match_full_decode(jpegs):
    data = jpegs[(256, 400)]
    full = np.asarray(_reference(data))
    for rows in (1, 7, 8, 9, 16, 17, 100, 255, 399, 400):
        part = im._jpeg_rows(data, (256, 400), rows)
        assert part is not None and part.size == (256, rows)
        assert np.array_equal(np.asarray(part), full[:rows]), rows


def test_black_bottom_rows_take_the_general_path():
    """A crop whose last decoded row is black cannot be told from a decoder stop: full decode, same pixels."""
    img = _photo(256, 320, seed=5)
    img.paste((0, 0, 0), (0, 200, 256, 320))
    data = _jpeg(img)
    ref = _reference(data)
    assert im._jpeg_rows(data, (256, 320), 250) is None
    for seed in range(30):
        r1, r2 = random.Random(seed), random.Random(seed)
        assert np.array_equal(im.decode_train(data, 224, r1).hwc(), im.train_transform(ref, 224, r2))


def test_flips(jpegs):
    data = jpegs[(272, 256)]
    flips = []
    for seed in range(400):
        p = im.decode_train(data, 96, random.Random(seed), hflip=True, vflip=True, dct_scaling=False)
        flips.append((p.hflip, p.vflip))
        if seed < 12:
            plain = im.PreparedImage(data, (272, 256), None, p._box, p.size, dct_scaling=False).numpy()
            expected = plain[:, :, ::-1] if p.hflip else plain
            expected = expected[:, ::-1, :] if p.vflip else expected
            assert np.array_equal(p.numpy(), expected)
            # and as PIL's transpose does it (the step-by-step path)
            assert np.array_equal(p.hwc(), im.train_transform(_reference(data), 96, random.Random(seed), vflip=True))
    h = np.mean([f[0] for f in flips])
    v = np.mean([f[1] for f in flips])
    assert 0.4 < h < 0.6 and 0.4 < v < 0.6
    assert not any(im.decode_train(data, 96, random.Random(s), hflip=False).hflip for s in range(50))
    assert not any(im.decode_train(data, 96, random.Random(s)).vflip for s in range(50))


@pytest.mark.parametrize("size", SIZES)
def test_eval_geometry_matches_two_step_resize_then_centre_crop(jpegs, size):
    """Resize shorter side to 256 then centre crop 224 (torchvision's arithmetic), done in two PIL steps."""
    data = jpegs[size]
    img = _reference(data)
    w, h = img.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    resized = img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0))
    ref = np.asarray(resized.crop((left, top, left + 224, top + 224))).astype(int)
    exact = im.decode_eval(data, 224, 256, dct_scaling=False).hwc().astype(int)
    if min(w, h) == 256:
        assert np.array_equal(exact, ref)  # no resampling at all: a crop
    else:  # one resize over the box: the same filter taps, rounding may differ by one level
        assert np.abs(exact - ref).max() <= 1 and np.abs(exact - ref).mean() < 0.05
    fast = im.decode_eval(data, 224, 256).hwc().astype(int)
    psnr = 10 * np.log10(255**2 / max(((fast - ref) ** 2).mean(), 1e-9))
    assert psnr > 40, psnr  # DCT-domain downscaling (1024x768: 1/2 scale) changes pixels only slightly


def test_dct_scaling_keeps_geometry_and_pixels_close(jpegs):
    data = jpegs[(1024, 768)]
    ref = _reference(data)
    scaled = 0
    for seed in range(30):
        fast = im.decode_train(data, 224, random.Random(seed)).hwc().astype(int)
        exact = im.train_transform(ref, 224, random.Random(seed)).astype(int)
        box = im.random_resized_crop_box(1024, 768, random.Random(seed))
        if im._dct_scale(box[2] - box[0], box[3] - box[1], 224, 224) > 1:
            scaled += 1
        mse = ((fast - exact) ** 2).mean()
        assert mse == 0 or 10 * np.log10(255**2 / mse) > 38, seed
    assert scaled > 0
    assert im._dct_scale(447, 900, 224, 224) == 1
    assert im._dct_scale(448, 448, 224, 224) == 2
    assert im._dct_scale(1800, 1792, 224, 224) == 8


def test_bytes_like_inputs(jpegs):
    data = jpegs[(256, 400)]
    expected = im.decode_train(data, 224, random.Random(3)).numpy()
    for view in (memoryview(data), bytearray(data), np.frombuffer(data, np.uint8)):
        assert np.array_equal(im.decode_train(view, 224, random.Random(3)).numpy(), expected)
        assert np.array_equal(np.asarray(im.decode(view)), np.asarray(im.decode(data)))


def test_determinism(jpegs):
    data = jpegs[(631, 517)]
    a = im.decode_train(data, 224, random.Random(7)).numpy()
    b = im.decode_train(data, 224, random.Random(7)).numpy()
    c = im.decode_train(data, 224, random.Random(8)).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(im.decode_eval(data, 224, 256).numpy(), im.decode_eval(data, 224, 256).numpy())
    p = im.decode_train(data, 224, random.Random(7))
    q = pickle.loads(pickle.dumps(p))
    assert np.array_equal(q.numpy(), a) and (q.hflip, q.vflip) == (p.hflip, p.vflip)
    assert np.array_equal(p.load().numpy(), a)


def test_other_modes_and_formats(jpegs):
    photo = _photo(300, 260, seed=9)
    inputs = {
        "grey jpeg": _jpeg(photo.convert("L")),
        "cmyk jpeg": _jpeg(photo.convert("CMYK")),
        "png": (lambda b: (photo.save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
        "jpeg + trailer": jpegs[(272, 256)] + b"trailing bytes after the EOI marker " * 4,
    }
    for name, data in inputs.items():
        ref = _reference(data)
        for seed in range(5):
            fused = im.decode_train(data, 128, random.Random(seed)).hwc()
            assert np.array_equal(fused, im.train_transform(ref, 128, random.Random(seed))), name
        assert np.array_equal(im.decode_eval(data, 128, 146).hwc(), im.eval_transform(ref, 128, 146)), name


# ----------------------------------------------------------------------------- errors


def test_corrupt_bytes_raise_naming_the_sample(jpegs):
    where = "shards/train/train-000003.tar: BIOUG123-A01.jpg"
    good = jpegs[(272, 256)]
    bad = {
        "empty": b"",
        "garbage": b"this is not an image at all" * 10,
        "truncated": good[: len(good) // 2],
        "header only": good[:200],
    }
    for name, data in bad.items():
        for call in (lambda: im.decode(data, where),
                     lambda: im.decode_train(data, 224, random.Random(0), where=where),
                     lambda: im.decode_eval(data, 224, 256, where=where)):
            with pytest.raises(BioscanError, match="corrupt image .*BIOUG123-A01.jpg"):
                call()


def _bad_huffman_table(data: bytes) -> bytes:
    at = data.index(b"\xff\xc4")  # DHT: PIL's header parser skips it, libjpeg checks it
    return data[: at + 5] + bytes([255] * 16) + data[at + 21:]


def test_damage_only_the_decoder_sees_raises_when_stacked(jpegs):
    where = "shard-000001.tar: BIOUG9-Z99.jpg"
    data = _bad_huffman_table(jpegs[(272, 256)])
    lazy = im.decode_train(data, 224, random.Random(0), where=where)
    with pytest.raises(BioscanError, match="BIOUG9-Z99.jpg"):
        im.stack([lazy])
    with pytest.raises(BioscanError, match="BIOUG9-Z99.jpg"):
        im.decode_train(data, 224, random.Random(0), where=where, lazy=False)
    with pytest.raises(BioscanError, match="BIOUG9-Z99.jpg"):
        im.decode_eval(data, 224, 256, where=where).load()


def test_eval_resize_smaller_than_crop_is_an_error(jpegs):
    with pytest.raises(BioscanError, match="smaller than the crop"):
        im.decode_eval(jpegs[(272, 256)], 224, 200)


def test_jpeg_header_reads_the_frame_size(jpegs):
    for size, data in jpegs.items():
        assert im._jpeg_header(data) == size
    photo = _photo(333, 222, seed=3)
    exif = Image.Exif()
    exif[0x010E] = "a specimen " * 50  # ImageDescription: a long APP1 segment before the frame header
    for kw in ({"progressive": True}, {"subsampling": 0}, {"optimize": True}, {"exif": exif.tobytes()}):
        data = _jpeg(photo, **kw)
        assert im._jpeg_header(data) == (333, 222), kw
        ref = _reference(data)
        for seed in range(5):  # and the fast path decodes them exactly
            fused = im.decode_train(data, 224, random.Random(seed)).hwc()
            assert np.array_equal(fused, im.train_transform(ref, 224, random.Random(seed))), kw
    assert im._jpeg_header(_jpeg(photo.convert("L"))) is None  # 1 component: PIL's path
    assert im._jpeg_header(_jpeg(photo.convert("CMYK"))) is None  # 4 components: PIL's path
    assert im._jpeg_header(b"\x89PNG\r\n\x1a\n" + b"\0" * 100) is None
    assert im._jpeg_header(b"\xff\xd8\xff\xe0\x00") is None
    assert im._jpeg_header(b"") is None


def test_decompression_bomb_check(jpegs, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 272 x 256 is more than twice this
    with pytest.raises(BioscanError, match="corrupt image .*x.jpg"):
        im.decode_train(jpegs[(272, 256)], 224, random.Random(0), where="x.jpg")

"""CLIBD's image augmentation: the fused decode path against CLIBD's own torchvision chain.

Both sides turn the same JPEG bytes in memory into batches of 224x224 images
(no shards, no loader: the image work alone, one process, one thread each):

- ``bioscan-io``: ``images.decode_train(data, 224, rng, hflip=True, vflip=True,
  pre_resize=256, rotate=45)`` per image (a generator per sample, as the loader),
  then ``images.stack`` (uint8 NCHW; "+ float" adds ``.float().div_(255)`` on the
  CPU, the baseline's output type); "no rotation" shows what the turn costs;
- ``CLIBD torchvision``: bioscan-ml/clibd's chain (bioscanclip/util/dataset.py,
  ``Dataset_for_CL``): ``Image.open(BytesIO)`` -> ``ToTensor`` -> ``Resize(256,
  antialias=True)`` -> ``RandomResizedCrop(224, antialias=True)`` ->
  ``RandomHorizontalFlip`` -> ``RandomVerticalFlip`` -> ``RandomRotation((-45, 45))``,
  then ``torch.stack`` (float32 NCHW 0-1, what its DataLoader collates);
- evaluation: ``images.decode_eval(data, 224, 256)`` against ``ToTensor`` ->
  ``Resize(256, antialias=True)`` -> ``CenterCrop(224)``.

On the generator's ``cropped_256`` images (what CLIBD trains on) and its
``original_full`` ones (1024x768 or 1152x768). torch runs with one thread, as in a
DataLoader worker. Each pipeline is warmed by one untimed epoch; timed epochs are
interleaved round by round and the ratio is the median of per-round ratios
(``rounds.py``). Nothing is asserted (no target in the issue)::

    python -m pytest benchmarks/test_bench_clibd.py -s -q

``pytest benchmarks --benchmark-disable`` runs it once on a few images (smoke).
``BIOSCAN_BENCH_CLIBD_IMAGES`` (cropped_256 images, default 1024),
``BIOSCAN_BENCH_CLIBD_FULL`` (original_full images, default 256),
``BIOSCAN_BENCH_ROUNDS`` (interleaved rounds, default 5). Needs torchvision
(imported through ``tests/tv_shim.py``; skipped without it).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from rounds import fmt, interleaved, paired

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tv_shim import import_torchvision  # noqa: E402

from bioscan_io import images as im  # noqa: E402
from bioscan_io import synth  # noqa: E402

_tv, T, _F = import_torchvision()

N_CROPPED = int(os.environ.get("BIOSCAN_BENCH_CLIBD_IMAGES", "1024"))
N_FULL = int(os.environ.get("BIOSCAN_BENCH_CLIBD_FULL", "256"))
ROUNDS = int(os.environ.get("BIOSCAN_BENCH_ROUNDS", "5"))
SMOKE_IMAGES, BATCH, SIZE, RESIZE = 16, 64, 224, 256
#: CLIBD's training augmentation as decode_train's keywords (bioscan_io.recipes has it as loader options).
CLIBD = {"hflip": True, "vflip": True, "pre_resize": RESIZE, "rotate": 45.0}


class Batches:
    """One epoch = every JPEG once, in batches; ``make(chunk, first)`` makes one batch tensor."""

    def __init__(self, name: str, jpegs: list[bytes], make):
        self.name, self.jpegs, self.make, self.n_epoch = name, jpegs, make, 0
        self.epoch()  # warm: imports, allocator, caches

    def epoch(self) -> tuple[float, int]:
        base = self.n_epoch * 10_000_000  # a new draw per sample each epoch
        self.n_epoch += 1
        t0 = time.perf_counter()
        n = 0
        for start in range(0, len(self.jpegs), BATCH):
            n += len(self.make(self.jpegs[start:start + BATCH], base + start))
        return time.perf_counter() - t0, n

    def close(self):
        pass


def ours_train(rotate: bool = True, to_float: bool = False):
    opts = CLIBD if rotate else {**CLIBD, "rotate": 0.0}

    def make(chunk, first):
        batch = im.stack([im.decode_train(d, SIZE, random.Random(first + i), **opts) for i, d in enumerate(chunk)])
        return batch.float().div_(255) if to_float else batch
    return make


def ours_eval(chunk, first):
    return im.stack([im.decode_eval(d, SIZE, RESIZE) for d in chunk])


def torchvision_chain(train: bool):
    """CLIBD's Compose (Dataset_for_CL, not for_open_clip) on the PIL image its load_image opens."""
    if train:
        steps = [T.ToTensor(), T.Resize(size=RESIZE, antialias=True), T.RandomResizedCrop(SIZE, antialias=True),
                 T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(degrees=(-45, 45))]
    else:
        steps = [T.ToTensor(), T.Resize(size=RESIZE, antialias=True), T.CenterCrop(SIZE)]
    chain = T.Compose(steps)

    def make(chunk, first):
        return torch.stack([chain(Image.open(io.BytesIO(d))) for d in chunk])
    return make


def pipelines(jpegs: list[bytes], train: bool) -> dict[str, Batches]:
    if train:
        return {"ours": Batches("bioscan-io decode_train + stack", jpegs, ours_train()),
                "ours_float": Batches("bioscan-io + float /255", jpegs, ours_train(to_float=True)),
                "ours_norot": Batches("bioscan-io, no rotation", jpegs, ours_train(rotate=False)),
                "torchvision": Batches("CLIBD torchvision chain + stack", jpegs, torchvision_chain(True))}
    return {"ours": Batches("bioscan-io decode_eval + stack", jpegs, ours_eval),
            "torchvision": Batches("CLIBD torchvision eval chain + stack", jpegs, torchvision_chain(False))}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread, as in a DataLoader worker (and as the PIL path runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def jpegs(smoke) -> dict[str, list[bytes]]:
    """The generator's cropped_256 and original_full JPEGs, read into memory (a folder of its own, removed after)."""
    base = Path(tempfile.mkdtemp(prefix="bioscan-bench-clibd-"))
    out = {}
    try:
        for package, n, seed in (("cropped_256", N_CROPPED, 31), ("original_full", N_FULL, 32)):
            n = min(n, SMOKE_IMAGES) if smoke else n
            synth.generate(base / package, n_records=n, seed=seed, package=package, workers=2)
            out[package] = [p.read_bytes() for p in sorted((base / package).rglob("*.jpg"))]
            assert len(out[package]) == n
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- pytest-benchmark table


@pytest.mark.parametrize("package", ["cropped_256", "original_full"])
@pytest.mark.parametrize("side", ["ours", "torchvision"])
def test_bench_clibd_train(benchmark, jpegs, smoke, one_thread, package, side):
    data = jpegs[package]
    pipe = Batches(side, data, ours_train() if side == "ours" else torchvision_chain(True))
    benchmark.pedantic(pipe.epoch, rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info["images_per_epoch"] = len(data)
    if benchmark.stats is not None:
        print(f"\nCLIBD train, {package}, {side}: {len(data) / benchmark.stats.stats.min:,.0f} img/s (best)")


# ----------------------------------------------------------------------------- the comparison


@pytest.mark.parametrize("package", ["cropped_256", "original_full"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_clibd_speedup(jpegs, smoke, one_thread, package, train):
    """bioscan-io vs CLIBD's torchvision chain on the same JPEG bytes, interleaved rounds, ratio printed."""
    data = jpegs[package]
    pipes = pipelines(data, train)
    t = interleaved(pipes, 1 if smoke else ROUNDS)
    n = len(data)
    what = "train (RRC on Resize(256), flips, +-45 deg rotation)" if train else "eval (Resize(256), CenterCrop(224))"
    print(f"\nCLIBD {what}, {package}, {n} images, batches of {BATCH}, torch threads 1:")
    for key, pipe in pipes.items():
        print(fmt(pipe.name, t[key], n))
    for key in pipes:
        if key != "torchvision":
            print(f"  {pipes[key].name} vs CLIBD torchvision: {1 / paired(t, key, 'torchvision'):.2f}x "
                  "(median of per-round ratios)")

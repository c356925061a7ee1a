"""Region JPEG decode (issue 27, item 2): decode + random resized crop 224 + flip against the decode floor.

Pipelines, each over the same JPEG bytes in memory (the generator's images; no
shards, no loader: the image work alone, one process, one thread, as
``num_workers=0``), uint8 NCHW batches of 256 made by ``images.stack`` in reused
batch buffers (``handover.BatchBuffers``, what ``make_loader`` passes at
``num_workers=0``), a generator per sample as the loader makes them:

- ``region decode``: ``images.decode_train(data, 224, rng)`` (RandomResizedCrop
  224 + horizontal flip) + ``stack``: libjpeg-turbo decodes only the crop's region
  (``bioscan_io.jpeg_region``), at the DCT scale ``images._dct_scale`` picks;
- ``today's path``: the same with ``region=False``: Pillow's decoder down to the
  crop's last row (at the same DCT scale), the pixels bit for bit the same;
- ``whole decode``: ``PIL.Image.open(BytesIO(data)).load()``: pillow-simd decoding
  each JPEG in full, nothing else (the decode floor of the issue);
- ``entropy floor`` (reported): ``jpeg_region.decode_region`` of a 16-pixel strip
  of each crop's region's last row: the entropy (Huffman) decoding of every row
  down to the crop's last, which a sequential JPEG requires of any region decode,
  plus libjpeg's set-up. No region decode of these crops can be faster.

Timed epochs are interleaved round by round (``rounds.py``); the ratios are the
medians of per-round ratios, the rates best and median rounds. Each epoch's CPU
time (``time.thread_time``) is kept too, and its paired ratios printed: on a
shared machine (load above its cores) wall time mostly measures the other jobs,
CPU time the work. The targets are read on wall time.

One process is not enough: pillow-simd's whole decode of the same files runs at
one of two speeds, about 250 or 360 us a ``cropped_256`` image on the 2-core VM,
by a state that lasts for rounds or for a whole process (no page fault in
either; measured with ``getrusage``), so one process's ratio is 0.75x or 1.2x by
the draw (the region pipeline varies less, 290-340 us). Each comparison
therefore runs in ``BIOSCAN_BENCH_REGION_PROCESSES`` fresh processes (spawned one
after another, default 5, each its own rounds) and the target is read on the
median of their ratios; every process's ratio is printed. Targets (issue 27,
Must show 2), asserted only with ``BIOSCAN_BENCH_STRICT=1``::

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_region_decode.py -s -q -p no:cacheprovider

``cropped_256``: region decode >= 1.0x the rate of whole decode; ``original_full``:
region decode >= 2x today's path. ``pytest benchmarks --benchmark-disable`` runs it
once on a few images, in this process (smoke, nothing asserted).
``BIOSCAN_BENCH_REGION_IMAGES`` (cropped_256 images, default 2048),
``BIOSCAN_BENCH_REGION_FULL`` (original_full images, default 384),
``BIOSCAN_BENCH_ROUNDS`` (rounds per process, default 3).
"""

from __future__ import annotations

import inspect
import io
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image
from rounds import fmt, interleaved, paired

from bioscan_io import images as im
from bioscan_io import jpeg_region, synth

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
N_CROPPED = int(os.environ.get("BIOSCAN_BENCH_REGION_IMAGES", "2048"))
N_FULL = int(os.environ.get("BIOSCAN_BENCH_REGION_FULL", "384"))
ROUNDS = int(os.environ.get("BIOSCAN_BENCH_ROUNDS", "3"))
PROCESSES = int(os.environ.get("BIOSCAN_BENCH_REGION_PROCESSES", "5"))
SMOKE_IMAGES, BATCH, SIZE = 16, 256, 224
TARGET_VS_WHOLE, TARGET_FULL_VS_TODAY = 1.0, 2.0


def _stacker():
    """``images.stack`` in reused batch buffers where this images.py takes them (as the loader, workers 0)."""
    if "buffers" not in inspect.signature(im.stack).parameters:
        return im.stack
    from bioscan_io.handover import BatchBuffers

    buffers = BatchBuffers()
    return lambda batch: im.stack(batch, buffers=buffers)


class Augment:
    """decode_train + stack over every JPEG, in batches; the n-th epoch draws the same crops in every pipeline."""

    def __init__(self, name: str, jpegs: list[bytes], region: bool):
        self.name, self.jpegs, self.region, self.n_epoch = name, jpegs, region, 0
        self.stack, self.cpu = _stacker(), []
        self.epoch()  # warm: imports, allocator, buffers

    def epoch(self) -> tuple[float, int]:
        base = self.n_epoch * 10_000_000
        self.n_epoch += 1
        jpegs, region, stack = self.jpegs, self.region, self.stack
        t0, c0 = time.perf_counter(), time.thread_time()
        n = 0
        for start in range(0, len(jpegs), BATCH):
            batch = stack([im.decode_train(d, SIZE, random.Random(base + start + i), region=region)
                           for i, d in enumerate(jpegs[start:start + BATCH])])
            n += len(batch)
            del batch  # the buffer is free again for the next batch
        self.cpu.append(time.thread_time() - c0)
        return time.perf_counter() - t0, n

    def close(self):
        pass


class WholeDecode:
    """pillow-simd decoding every JPEG in full: Image.open + load."""

    name = "whole decode (pillow-simd)"

    def __init__(self, jpegs: list[bytes]):
        self.jpegs, self.cpu = jpegs, []
        self.epoch()

    def epoch(self) -> tuple[float, int]:
        t0, c0 = time.perf_counter(), time.thread_time()
        for d in self.jpegs:
            Image.open(io.BytesIO(d)).load()
        self.cpu.append(time.thread_time() - c0)
        return time.perf_counter() - t0, len(self.jpegs)

    def close(self):
        pass


class EntropyFloor:
    """decode_region of a 16-pixel strip of each crop region's last row (epoch 0's crops): the Huffman floor."""

    name = "entropy floor (a strip at the crop's bottom)"

    def __init__(self, jpegs: list[bytes]):
        self.calls, self.cpu = [], []
        for i, d in enumerate(jpegs):
            p = im.decode_train(d, SIZE, random.Random(i))
            box, (w, h) = p.box, im._jpeg_header(d)
            scale = im._dct_scale(box[2] - box[0], box[3] - box[1], SIZE, SIZE)
            size = (-(-w // scale), -(-h // scale))
            sbox = tuple(v / scale for v in box)
            bottom = jpeg_region.region_for(sbox, (SIZE, SIZE), size)[3]
            self.calls.append((d, scale, size, (0, bottom - 1, min(16, size[0]), bottom)))
        self.epoch()

    def epoch(self) -> tuple[float, int]:
        t0, c0 = time.perf_counter(), time.thread_time()
        for call in self.calls:
            jpeg_region.decode_region(*call)
        self.cpu.append(time.thread_time() - c0)
        return time.perf_counter() - t0, len(self.calls)

    def close(self):
        pass


def _compare(jpegs: list[bytes], rounds: int, label: str) -> dict[str, list[float]]:
    pipes = {"region": Augment("region decode + crop + flip + stack", jpegs, True),
             "today": Augment("today's path (region=False)", jpegs, False),
             "whole": WholeDecode(jpegs), "floor": EntropyFloor(jpegs)}
    t = interleaved(pipes, rounds)
    n = len(jpegs)
    print(f"\n{label}: {n} images, {SIZE}px random resized crop + flip, uint8, one thread, {rounds} paired rounds")
    for key, pipe in pipes.items():
        print(fmt(pipe.name, t[key], n))
    print(f"  region decode vs whole decode: {1 / paired(t, 'region', 'whole'):.2f}x the rate; "
          f"today's path vs whole decode: {1 / paired(t, 'today', 'whole'):.2f}x; "
          f"region vs today's path: {1 / paired(t, 'region', 'today'):.2f}x (medians of per-round ratios)")
    print(f"  entropy floor: {paired(t, 'floor', 'whole'):.0%} of a whole decode's time, "
          f"{paired(t, 'floor', 'region'):.0%} of region decode + crop + flip + stack")
    cpu = {k: p.cpu[-rounds:] for k, p in pipes.items()}
    print("  CPU time per image (median): " + ", ".join(f"{k} {statistics.median(v) / n * 1e6:,.0f} us"
                                                     for k, v in cpu.items()))
    print(f"  on CPU time: region vs whole decode {1 / paired(cpu, 'region', 'whole'):.2f}x, today's path vs "
          f"whole {1 / paired(cpu, 'today', 'whole'):.2f}x, region vs today's path "
          f"{1 / paired(cpu, 'region', 'today'):.2f}x; entropy floor {paired(cpu, 'floor', 'whole'):.0%} of a "
          f"whole decode, {paired(cpu, 'floor', 'region'):.0%} of the region pipeline")
    return t


@pytest.fixture(scope="module")
def jpegs(smoke) -> dict[str, list[Path]]:
    """The generator's cropped_256 and original_full JPEG files (a folder of its own, removed after)."""
    base = Path(tempfile.mkdtemp(prefix="bioscan-bench-region-"))
    out = {}
    try:
        for package, n, seed in (("cropped_256", N_CROPPED, 61), ("original_full", N_FULL, 62)):
            n = SMOKE_IMAGES if smoke else n
            root = base / package
            synth.generate(root, n_records=n, seed=seed, package=package, workers=2)
            out[package] = sorted((root / "bioscan5m" / "images").rglob("*.jpg"))[:n]
        yield out
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def region_on():
    if not jpeg_region.available():
        pytest.skip(f"nothing to measure: {jpeg_region.describe()}")


def _read(files: list[Path]) -> list[bytes]:
    return [f.read_bytes() for f in files]


def _ratios(files: list[Path], rounds: int, label: str) -> dict[str, float]:
    """One process's comparison (printed): region vs whole decode and vs today's path, as rate ratios."""
    t = _compare(_read(files), rounds, label)
    return {"whole": 1 / paired(t, "region", "whole"), "today": 1 / paired(t, "region", "today")}


def _median_over_processes(files: list[Path], smoke: bool, label: str) -> dict[str, float]:
    """:func:`_ratios` in fresh processes, one after another (module docstring: why); the medians, printed."""
    if smoke:
        return _ratios(files, 1, label)
    spawn = multiprocessing.get_context("spawn")
    per: list[dict[str, float]] = []
    for i in range(PROCESSES):
        with spawn.Pool(1) as pool:
            per.append(pool.apply(_ratios, (files, ROUNDS, f"{label}, process {i + 1} of {PROCESSES}")))
    out = {k: statistics.median(r[k] for r in per) for k in per[0]}
    for k, what in (("whole", "whole decode"), ("today", "today's path")):
        print(f"  {label}: region decode vs {what}, per process: {', '.join(f'{r[k]:.2f}x' for r in per)}; "
              f"median {out[k]:.2f}x")
    return out


def test_bench_region_decode_cropped_256(benchmark, jpegs, smoke):
    pipe = Augment("region decode", _read(jpegs["cropped_256"]), True)
    benchmark.pedantic(pipe.epoch, rounds=1 if smoke else 3, iterations=1)


def test_bench_todays_path_cropped_256(benchmark, jpegs, smoke):
    pipe = Augment("today's path", _read(jpegs["cropped_256"]), False)
    benchmark.pedantic(pipe.epoch, rounds=1 if smoke else 3, iterations=1)


def test_bench_whole_decode_cropped_256(benchmark, jpegs, smoke):
    benchmark.pedantic(WholeDecode(_read(jpegs["cropped_256"])).epoch, rounds=1 if smoke else 3, iterations=1)


def test_target_cropped_256_vs_whole_decode(jpegs, smoke):
    ratio = _median_over_processes(jpegs["cropped_256"], smoke, "cropped_256")["whole"]
    if STRICT and not smoke:
        assert ratio >= TARGET_VS_WHOLE, f"region decode at {ratio:.2f}x whole decode < {TARGET_VS_WHOLE}x"


def test_target_original_full_vs_todays_path(jpegs, smoke):
    ratio = _median_over_processes(jpegs["original_full"], smoke, "original_full (1024x768, 1152x768)")["today"]
    if STRICT and not smoke:
        assert ratio >= TARGET_FULL_VS_TODAY, f"region decode at {ratio:.2f}x today's path < {TARGET_FULL_VS_TODAY}x"

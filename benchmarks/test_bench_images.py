"""Image loading throughput: decode + random resized crop 224 + horizontal flip, uint8 NCHW batches.

Pipelines, each over the same generated records (``cropped_256``, batches of 256):

- ``bioscan-io``: ``make_loader(shards, "classify", modality="image")``, 0, 1 or 2 workers;
- ``pure decode+augment``: ``images.decode_train`` + ``images.stack`` in a loop over the
  JPEG bytes already in memory (no shards, no loader): the floor the loader adds to;
- ``per-file (pillow-simd)`` and ``per-file (stock Pillow)``: the official layout read
  file by file, as ``bioscan-dataset``'s ``BIOSCAN5M.__getitem__`` does
  (``PIL.Image.open(path)``), with torchvision's ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip()`` + ``PILToTensor()`` on PIL images (their logic written out
  here: crop, then resize, bilinear; flip; ``np.array`` + permute) in a map-style
  Dataset under a ``DataLoader`` with ``shuffle=True`` and the default collate. Stock
  Pillow -- what that loader runs with -- cannot share an environment with
  pillow-simd, so it is installed with ``pip install --target`` into a folder of its
  own (``$BIOSCAN_BENCH_PILLOW``, default ``$TMPDIR/bioscan-bench-pillow``) and run in
  a subprocess that puts that folder first on ``sys.path``.

Every DataLoader is persistent and warmed by one untimed epoch (worker start-up is
excluded from all pipelines alike); timed epochs of the pipelines being compared are
interleaved round by round, and each figure is the fastest round (median printed too),
so load from other jobs on the machine hits all of them alike (``rounds.py``).

Target (SPEC 6 / issue 5), asserted only with ``BIOSCAN_BENCH_STRICT=1``::

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_images.py -s -q

bioscan-io at least 1.7x per-file Pillow reading (stock Pillow; pillow-simd per-file
reported too), both with ``num_workers=0``. The loader's overhead over pure decode +
augment and its worker scaling are ``test_bench_loader.py``'s image part. Larger
packages: ``original_full`` (1024x768 generated images, ``BIOSCAN_BENCH_FULL_IMAGES``,
default 768) through the loader and both per-file baselines (reported, no target).

float32 normalised batches (issue 27), ``test_target_float32``, ``num_workers=0``, torch on one
thread for every pipeline: ``make_loader(..., image_dtype="float32")`` against the same loader's
uint8 batches and against what a torchvision user writes -- ``RandomResizedCrop(224)`` +
``RandomHorizontalFlip()`` + ``ToTensor()`` + ``Normalize(mean, std)`` (torchvision's own
transforms) on PIL images read LitData-style (the JPEG bytes packed into ~64 MB chunk files with
an offsets header, each item read from its chunk and decoded, ``write_chunks`` / ``ChunkImages``)
or per file from the official layout, ``DataLoader(shuffle=True)`` with the default collate.
Targets, asserted with ``BIOSCAN_BENCH_STRICT=1`` on the medians of per-round time ratios:
float32 >= 0.85x the uint8 rate, >= 1.8x LitData-style and per-file::

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_images.py -k float32 -s -q

``pytest benchmarks --benchmark-disable`` (CI) runs everything once on 256 records as a
smoke test (no stock Pillow, nothing asserted). ``BIOSCAN_BENCH_IMAGES`` (records,
default 4096), ``BIOSCAN_BENCH_ROUNDS`` (interleaved rounds, default 5),
``BIOSCAN_BENCH_PILLOW`` (folder for stock Pillow; ``off`` skips that baseline).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rounds import LoaderEpochs, fmt, interleaved, paired, run_interleaved

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
N_IMAGES = int(os.environ.get("BIOSCAN_BENCH_IMAGES", "4096"))
ROUNDS = int(os.environ.get("BIOSCAN_BENCH_ROUNDS", "5"))
PILLOW_DIR = os.environ.get("BIOSCAN_BENCH_PILLOW", os.path.join(tempfile.gettempdir(), "bioscan-bench-pillow"))
SMOKE_IMAGES, SMOKE_BATCH = 256, 64
N_FULL = int(os.environ.get("BIOSCAN_BENCH_FULL_IMAGES", "768"))
SMOKE_FULL, FULL_BATCH = 64, 128
BATCH, SIZE = 256, 224
TARGET_SPEEDUP = 1.7


# ----------------------------------------------------------------------------- the per-file baseline
# Imports PIL lazily: in the stock-Pillow subprocess, PIL is stock Pillow.


def torchvision_rrc_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """``torchvision.transforms.RandomResizedCrop.get_params`` (its logic and torch RNG use)."""
    import math

    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class PerFileImages(torch.utils.data.Dataset):
    """One JPEG file per sample, torchvision-style augmentation on the PIL image."""

    def __init__(self, paths: list[str], labels: list[int], size: int = SIZE):
        self.paths, self.labels, self.size = paths, labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.open(self.paths[index])  # bioscan_dataset.BIOSCAN5M.__getitem__
        i, j, h, w = torchvision_rrc_params(img.width, img.height)  # RandomResizedCrop(224)
        img = img.crop((j, i, j + w, i + h)).resize((self.size, self.size), Image.BILINEAR)
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip()
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.as_tensor(np.array(img, copy=True)).view(img.height, img.width, 3).permute(2, 0, 1)  # PILToTensor
        return x, self.labels[index]


class MapStyleLoader:
    """A map-style Dataset under ``DataLoader(shuffle=True)`` with the default collate, one epoch per call."""

    def __init__(self, name: str, dataset, workers: int, batch_size: int, seed: int = 0):
        self.name = name
        gen = torch.Generator().manual_seed(seed)
        kw = {"persistent_workers": True} if workers else {}
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                  num_workers=workers, generator=gen, **kw)
        self.epoch()  # warm

    def epoch(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        n = 0
        for x, _y in self.loader:
            n += len(x)
        return time.perf_counter() - t0, n

    def close(self):
        del self.loader


class PerFileLoader(MapStyleLoader):
    """The per-file baseline in this process (pillow-simd)."""

    def __init__(self, paths, labels, workers: int, batch_size: int, seed: int = 0):
        super().__init__("per-file", PerFileImages(paths, labels), workers, batch_size, seed)


def _serve(config: dict) -> None:
    """Subprocess side of the stock-Pillow baseline: one epoch per 'epoch' line on stdin."""
    sys.path.insert(0, config["pillow_dir"])
    import PIL
    from PIL import features

    if not PIL.__file__.startswith(config["pillow_dir"]):
        raise SystemExit(f"PIL came from {PIL.__file__}, not {config['pillow_dir']}")
    torch.manual_seed(config["seed"])
    pipe = PerFileLoader(config["paths"], config["labels"], config["workers"], config["batch_size"], config["seed"])
    print(json.dumps({"ready": True, "pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo")}),
          flush=True)
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        seconds, n = pipe.epoch()
        print(json.dumps({"seconds": seconds, "samples": n}), flush=True)


class StockPillowServer:
    """The per-file baseline with stock Pillow, in a subprocess of its own."""

    name = "per-file (stock Pillow)"

    def __init__(self, paths, labels, workers: int, batch_size: int, config_dir: Path, seed: int = 0):
        config = {"pillow_dir": PILLOW_DIR, "paths": paths, "labels": labels, "workers": workers,
                  "batch_size": batch_size, "seed": seed}
        path = config_dir / f"stock-pillow-{workers}.json"
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"stock-Pillow baseline did not start (exit {self.proc.wait()})")
        self.info = json.loads(line)

    def epoch(self) -> tuple[float, int]:
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["seconds"], reply["samples"]

    def close(self):
        # An explicit "quit": DataLoader workers forked here since the subprocess started hold
        # copies of its stdin pipe, so closing ours would not give it end-of-file.
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def ensure_stock_pillow() -> str | None:
    """Stock Pillow in its own folder (never the project environment); None with a reason if unavailable."""
    if PILLOW_DIR.lower() in ("", "0", "off", "no"):
        return "disabled by BIOSCAN_BENCH_PILLOW"
    if (Path(PILLOW_DIR) / "PIL" / "__init__.py").is_file():
        return None
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--target", PILLOW_DIR, "pillow"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip install --target {PILLOW_DIR} pillow failed: {exc}"
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return f"pip install --target {PILLOW_DIR} pillow failed (no PyPI?): {tail[0]}"
    return None


# ----------------------------------------------------------------------------- bioscan-io pipelines


def OurLoader(shards, workers: int, batch_size: int, seed: int = 0, **options) -> LoaderEpochs:
    """make_loader(task="classify", modality="image", **options) as a timed pipeline."""
    from bioscan_io.loader import make_loader

    return LoaderEpochs(make_loader(shards, "classify", modality="image", batch_size=batch_size,
                                    num_workers=workers, seed=seed, persistent_workers=True if workers else None,
                                    **options))


class PureDecodeAugment:
    """decode_train + stack over JPEG bytes in memory: the image work alone."""

    name = "pure decode+augment"

    def __init__(self, jpegs: list[bytes], batch_size: int, seed: int = 0):
        self.jpegs, self.batch_size, self.seed, self.n_epoch = jpegs, batch_size, seed, 0
        self.epoch()

    def epoch(self) -> tuple[float, int]:
        from bioscan_io import images as im

        base = (self.seed * 1_000_003 + self.n_epoch) * 10_000_000
        self.n_epoch += 1
        t0 = time.perf_counter()
        n = 0
        jpegs, bs = self.jpegs, self.batch_size
        for start in range(0, len(jpegs), bs):
            batch = im.stack([im.decode_train(d, SIZE, random.Random(base + start + i))
                              for i, d in enumerate(jpegs[start:start + bs])])
            n += len(batch)
        return time.perf_counter() - t0, n

    def close(self):
        pass


# ----------------------------------------------------------------------------- float32 baselines (issue 27)
# What a torchvision user writes: RandomResizedCrop(224) + RandomHorizontalFlip() + ToTensor() + Normalize(mean, std)
# (torchvision's own transforms), PIL decoding (pillow-simd here), DataLoader(shuffle=True) + the default collate.


def _torchvision_float_chain():
    """torchvision's ``Compose`` for the float32 baselines (None without torchvision)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tv_shim import load_torchvision

    from bioscan_io.schema import RGB_MEAN, RGB_STD

    tv = load_torchvision()
    if tv is None:
        return None
    T = tv.transforms
    return T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(list(RGB_MEAN), list(RGB_STD))])


def write_chunks(jpegs: list[bytes], folder: Path, chunk_bytes: int = 64 << 20) -> list[Path]:
    """The JPEG bytes in LitData-style chunk files: ``uint32 n, uint32 offsets[n + 1]``, then the items.

    LitData's ``optimize`` packs samples into chunk files of about 64 MB, whose
    header holds the item count and offsets; ``StreamingDataset`` reads an
    item's bytes from its chunk and decodes them (PIL) before the user's
    transform. Written out here (``litdata`` itself is not a dependency).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths, chunk, size = [], [], 0

    def flush():
        offsets = np.cumsum([0] + [len(b) for b in chunk], dtype=np.uint64)
        head = 4 * (len(chunk) + 2)
        path = folder / f"chunk-0-{len(paths)}.bin"
        with open(path, "wb") as f:
            f.write(np.array([len(chunk)], np.uint32).tobytes() + (offsets + head).astype(np.uint32).tobytes())
            f.write(b"".join(chunk))
        paths.append(path)

    for data in jpegs:
        if chunk and size + len(data) > chunk_bytes:
            flush()
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        flush()
    return paths


class ChunkImages(torch.utils.data.Dataset):
    """LitData-style reading: each item's bytes read from its chunk file, ``PIL.Image.open`` on them, the chain."""

    def __init__(self, chunks: list[Path], labels: list[int], transform):
        self.where, self.labels, self.transform = [], labels, transform
        self.chunks = [str(p) for p in chunks]
        self._files: dict = {}
        for c, path in enumerate(chunks):
            with open(path, "rb") as f:
                n = int(np.frombuffer(f.read(4), np.uint32)[0])
                offsets = np.frombuffer(f.read(4 * (n + 1)), np.uint32)
            self.where += [(c, int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index: int):
        import io

        from PIL import Image

        c, start, end = self.where[index]
        f = self._files.get(c)
        if f is None:  # opened once per process (as LitData keeps its chunk open)
            f = self._files[c] = open(self.chunks[c], "rb")
        f.seek(start)
        img = Image.open(io.BytesIO(f.read(end - start))).convert("RGB")
        return self.transform(img), self.labels[index]


class PerFileFloat(torch.utils.data.Dataset):
    """The per-file baseline with ToTensor + Normalize: ``PIL.Image.open(path)``, torchvision's chain."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.open(self.paths[index]).convert("RGB")), self.labels[index]


# ----------------------------------------------------------------------------- fixtures

if __name__ != "__main__":
    import pytest

    @pytest.fixture(scope="module")
    def smoke(request) -> bool:
        return bool(request.config.getoption("benchmark_disable", False))

    @pytest.fixture(scope="module")
    def data(smoke) -> dict:
        """A generated dataset in the official layout, its shards, paths, labels and JPEG bytes.

        In a folder of its own (not pytest's ``tmp_path``, whose old folders another
        pytest session on the machine may delete while this one runs), removed after.
        """
        import shutil
        import tarfile

        from bioscan_io import synth
        from bioscan_io.metadata import label_indices, label_values, read_metadata
        from bioscan_io.schema import METADATA_CSV, image_relpath
        from bioscan_io.shard import shard_split

        n = SMOKE_IMAGES if smoke else N_IMAGES
        batch = SMOKE_BATCH if smoke else BATCH
        base = Path(tempfile.mkdtemp(prefix="bioscan-bench-images-"))
        root, out, config_dir = base / "root", base / "shards", base / "config"
        config_dir.mkdir()
        synth.generate(root, n_records=n, seed=21, workers=2)
        shard_split(root, "all", out=out, maxcount=max(batch, -(-n // 8)), progress=False, log=lambda m: None)
        table = read_metadata(root / METADATA_CSV)
        cols = {c: table.column(c).to_pylist() for c in ("processid", "split", "chunk")}
        paths = [str(root / image_relpath(p, s, c)) for p, s, c in zip(cols["processid"], cols["split"], cols["chunk"])]
        labels = label_indices(label_values(table)["species"], table.column("species")).tolist()
        jpegs = []
        for tar_path in sorted((out / "all").glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                jpegs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
        assert len(jpegs) == len(paths) == n
        yield {"n": n, "batch": batch, "root": root, "shards": out / "all", "paths": paths, "labels": labels,
               "jpegs": jpegs, "config_dir": config_dir}
        shutil.rmtree(base, ignore_errors=True)

    @pytest.fixture(scope="module")
    def stock_pillow(smoke) -> None:
        if smoke:
            pytest.skip("stock-Pillow baseline: not run with --benchmark-disable (it installs Pillow from PyPI)")
        reason = ensure_stock_pillow()
        if reason:
            pytest.skip(f"stock-Pillow baseline skipped: {reason}")

    def _rounds(smoke: bool) -> int:
        return 1 if smoke else ROUNDS

    # ------------------------------------------------------------------------- pytest-benchmark table

    def _bench(benchmark, pipe, smoke: bool, n: int):
        try:
            benchmark.pedantic(pipe.epoch, rounds=1 if smoke else 3, iterations=1)
        finally:
            pipe.close()
        benchmark.extra_info["images_per_epoch"] = n
        if benchmark.stats is not None:
            print(f"\n{pipe.name}: {n / benchmark.stats.stats.min:,.0f} img/s (best)")

    @pytest.mark.parametrize("workers", [0, 1, 2])
    def test_bench_bioscan_io_loader(benchmark, data, smoke, workers):
        _bench(benchmark, OurLoader(data["shards"], workers, data["batch"]), smoke, data["n"])

    def test_bench_pure_decode_augment(benchmark, data, smoke):
        _bench(benchmark, PureDecodeAugment(data["jpegs"], data["batch"]), smoke, data["n"])

    @pytest.mark.parametrize("workers", [0, 2])
    def test_bench_per_file_pillow_simd(benchmark, data, smoke, workers):
        _bench(benchmark, PerFileLoader(data["paths"], data["labels"], workers, data["batch"]), smoke, data["n"])

    @pytest.mark.parametrize("workers", [0, 2])
    def test_bench_per_file_stock_pillow(benchmark, data, smoke, stock_pillow, workers):
        pipe = StockPillowServer(data["paths"], data["labels"], workers, data["batch"], data["config_dir"])
        _bench(benchmark, pipe, smoke, data["n"])

    # ------------------------------------------------------------------------- the targets

    @pytest.mark.parametrize("workers", [0, 2])
    def test_target_speedup_over_per_file(data, smoke, workers):
        """bioscan-io vs the per-file baselines (stock Pillow when available), same workers, interleaved."""
        pipes = {}
        skipped = ensure_stock_pillow() if not smoke else "not run with --benchmark-disable"
        try:
            if not skipped:
                pipes["stock"] = StockPillowServer(data["paths"], data["labels"], workers, data["batch"],
                                                   data["config_dir"])
            pipes["simd"] = PerFileLoader(data["paths"], data["labels"], workers, data["batch"])
            pipes["ours"] = OurLoader(data["shards"], workers, data["batch"])
            t = interleaved(pipes, _rounds(smoke))
        finally:
            for p in pipes.values():
                p.close()
        n = data["n"]
        print(f"\nimage loading, {n} images, {SIZE}px random resized crop + flip, uint8, num_workers={workers}:")
        print(fmt("bioscan-io make_loader", t["ours"], n))
        print(fmt("per-file, pillow-simd", t["simd"], n))
        ratio_simd = min(t["simd"]) / min(t["ours"])
        print(f"  bioscan-io vs per-file pillow-simd: {ratio_simd:.2f}x "
              f"(medians {statistics.median(t['simd']) / statistics.median(t['ours']):.2f}x)")
        if "stock" in t:
            info = pipes["stock"].info
            print(fmt(f"per-file, stock Pillow {info['pillow']}", t["stock"], n))
            ratio = min(t["stock"]) / min(t["ours"])
            print(f"  bioscan-io vs per-file stock Pillow: {ratio:.2f}x "
                  f"(medians {statistics.median(t['stock']) / statistics.median(t['ours']):.2f}x)")
        else:
            ratio = ratio_simd
            print(f"  stock-Pillow baseline skipped: {skipped}")
        if STRICT and workers == 0:
            assert "stock" in t, f"stock-Pillow baseline needed for the target: {skipped}"
            assert ratio >= TARGET_SPEEDUP, f"{ratio:.2f}x < {TARGET_SPEEDUP}x per-file stock Pillow"

    # ------------------------------------------------------------------------- float32 output (issue 27)

    @pytest.fixture(scope="module")
    def float_chain(data):
        chain = _torchvision_float_chain()
        if chain is None:
            pytest.skip("float32 baselines need torchvision (ToTensor + Normalize)")
        return {"transform": chain, "chunks": write_chunks(data["jpegs"], data["config_dir"].parent / "litdata")}

    @pytest.fixture()
    def one_thread():
        """torch on one thread for every pipeline alike (as inside a DataLoader worker).

        The baselines' per-image tensor ops (ToTensor, Normalize) are split over
        torch's threads; on a 2-core machine shared with other jobs those
        threads' waits made them 40x slower (47 ms an image instead of 1.1).
        bioscan-io makes its batches on one thread either way.
        """
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    def test_bench_bioscan_io_loader_float32(benchmark, data, smoke, one_thread):
        pipe = OurLoader(data["shards"], 0, data["batch"], image_dtype="float32")
        pipe.name = "bioscan-io float32"
        _bench(benchmark, pipe, smoke, data["n"])

    def test_bench_litdata_style_float32(benchmark, data, smoke, float_chain, one_thread):
        pipe = MapStyleLoader("LitData-style chunks, pillow-simd, ToTensor + Normalize",
                              ChunkImages(float_chain["chunks"], data["labels"], float_chain["transform"]), 0,
                              data["batch"])
        _bench(benchmark, pipe, smoke, data["n"])

    def test_bench_per_file_float32(benchmark, data, smoke, float_chain, one_thread):
        pipe = MapStyleLoader("per-file, pillow-simd, ToTensor + Normalize",
                              PerFileFloat(data["paths"], data["labels"], float_chain["transform"]), 0, data["batch"])
        _bench(benchmark, pipe, smoke, data["n"])

    def test_target_float32(data, smoke, float_chain, one_thread):
        """float32 normalised batches, num_workers=0: against uint8 and the ToTensor + Normalize baselines.

        One run, pipelines interleaved round by round; each ratio is the median over
        rounds of the two pipelines' time ratio within a round (``rounds.paired``).
        Targets (issue 27, asserted with ``BIOSCAN_BENCH_STRICT=1``): float32 at least
        0.85x the uint8 rate, at least 1.8x LitData-style and per-file loading.
        """
        d, chain = data, float_chain
        t = run_interleaved(
            _rounds(smoke),
            uint8=lambda: OurLoader(d["shards"], 0, d["batch"]),
            float32=lambda: OurLoader(d["shards"], 0, d["batch"], image_dtype="float32"),
            litdata=lambda: MapStyleLoader("litdata", ChunkImages(chain["chunks"], d["labels"], chain["transform"]),
                                           0, d["batch"]),
            per_file=lambda: MapStyleLoader("per-file", PerFileFloat(d["paths"], d["labels"], chain["transform"]),
                                            0, d["batch"]))
        n = d["n"]
        print(f"\nfloat32 images, {n} images, {SIZE}px random resized crop + flip, batches of {d['batch']}, "
              "num_workers=0, torch on one thread:")
        print(fmt("bioscan-io make_loader, uint8", t["uint8"], n))
        print(fmt("bioscan-io make_loader, float32", t["float32"], n))
        print(fmt("LitData-style chunks + ToTensor + Normalize", t["litdata"], n))
        print(fmt("per-file pillow-simd + ToTensor + Normalize", t["per_file"], n))
        ratios = {"uint8": paired(t, "uint8", "float32"), "litdata": paired(t, "litdata", "float32"),
                  "per_file": paired(t, "per_file", "float32")}
        print(f"  float32 vs uint8 (rate): {ratios['uint8']:.2f}x; vs LitData-style: {ratios['litdata']:.2f}x; "
              f"vs per-file: {ratios['per_file']:.2f}x (medians of per-round ratios)")
        if STRICT:
            assert ratios["uint8"] >= 0.85, f"float32 at {ratios['uint8']:.2f}x the uint8 rate < 0.85x"
            assert ratios["litdata"] >= 1.8, f"{ratios['litdata']:.2f}x LitData-style < 1.8x"
            assert ratios["per_file"] >= 1.8, f"{ratios['per_file']:.2f}x per-file < 1.8x"

    # ------------------------------------------------------------------------- large packages

    @pytest.fixture(scope="module")
    def full_data(smoke) -> dict:
        """``original_full`` images (1024x768 or 1152x768), in the official layout and sharded."""
        import shutil

        from bioscan_io import synth
        from bioscan_io.metadata import read_metadata
        from bioscan_io.schema import METADATA_CSV, image_relpath
        from bioscan_io.shard import shard_split

        n = SMOKE_FULL if smoke else N_FULL
        batch = SMOKE_BATCH if smoke else FULL_BATCH
        base = Path(tempfile.mkdtemp(prefix="bioscan-bench-full-"))
        root, out, config_dir = base / "root", base / "shards", base / "config"
        config_dir.mkdir()
        synth.generate(root, n_records=n, seed=22, package="original_full", workers=2)
        shard_split(root, "all", package="original_full", out=out, maxcount=max(batch, -(-n // 4)),
                    progress=False, log=lambda m: None)
        table = read_metadata(root / METADATA_CSV)
        cols = [table.column(c).to_pylist() for c in ("processid", "split", "chunk")]
        paths = [str(root / image_relpath(p, s, c, "original_full")) for p, s, c in zip(*cols)]
        yield {"n": n, "batch": batch, "shards": out / "all", "paths": paths, "labels": [0] * n,
               "config_dir": config_dir}
        shutil.rmtree(base, ignore_errors=True)

    def test_original_full(full_data, smoke):
        """original_full (1024x768): make_loader vs the per-file baselines, num_workers=0, interleaved."""
        d = full_data
        skipped = ensure_stock_pillow() if not smoke else "not run with --benchmark-disable"
        makers = {"simd": lambda: PerFileLoader(d["paths"], d["labels"], 0, d["batch"]),
                  "ours": lambda: OurLoader(d["shards"], 0, d["batch"])}
        if not skipped:
            makers["stock"] = lambda: StockPillowServer(d["paths"], d["labels"], 0, d["batch"], d["config_dir"])
        t = run_interleaved(_rounds(smoke), **makers)
        n = d["n"]
        print(f"\noriginal_full (1024x768), {n} images, {SIZE}px random resized crop + flip, num_workers=0:")
        print(fmt("bioscan-io make_loader", t["ours"], n))
        print(fmt("per-file, pillow-simd", t["simd"], n))
        print(f"  bioscan-io vs per-file pillow-simd: {1 / paired(t, 'ours', 'simd'):.2f}x (median of per-round ratios)")
        if "stock" in t:
            print(fmt("per-file, stock Pillow", t["stock"], n))
            print(f"  bioscan-io vs per-file stock Pillow: {1 / paired(t, 'ours', 'stock'):.2f}x "
                  "(median of per-round ratios)")
        else:
            print(f"  stock-Pillow baseline skipped: {skipped}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _serve(json.loads(Path(sys.argv[2]).read_text()))
    else:
        raise SystemExit(f"usage: python {sys.argv[0]} --serve CONFIG.json (the stock-Pillow baseline)")

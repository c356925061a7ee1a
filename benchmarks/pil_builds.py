"""What pillow-simd buys over stock Pillow: bioscan-io's decode + random resized crop 224 + flip.

Both builds install the same ``PIL`` package, so they cannot share a process: each
round runs one subprocess per build over the same JPEG bytes (the images of a
generated ``cropped_256`` dataset, read into memory first), timing
``images.decode_train`` + ``images.stack`` in batches of 256 on one thread, the
same seeded draws in both. The build in this environment is one (pillow-simd where
``.ci/run`` installs it); stock Pillow is installed with ``pip install --target``
into a folder of its own and put first on the subprocess's ``sys.path``. Rounds
alternate the builds; the figure of each is its fastest round, the ratio the median
of the per-round ratios::

    python benchmarks/pil_builds.py                 # 4,096 images, 5 rounds
    python benchmarks/pil_builds.py --images 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_WORKER = r"""
import pickle, random, sys, time
import PIL
from bioscan_io import images
from bioscan_io._pillow import describe
blobs = pickle.load(open(sys.argv[1], "rb"))
rng = random.Random(0)
started = time.perf_counter()
for i in range(0, len(blobs), 256):
    images.stack([images.decode_train(b, 224, rng) for b in blobs[i:i + 256]])
print(len(blobs) / (time.perf_counter() - started), describe(), sep="\t")
"""


def _stock_pillow(folder: Path) -> None:
    if not (folder / "PIL" / "__init__.py").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", "--target", str(folder), "pillow"], check=True)


def _images(n: int, work: Path) -> Path:
    from bioscan_io.synth import generate

    root = work / "root"
    generate(root, n_records=n, seed=3, package="cropped_256", workers=2)
    blobs = [p.read_bytes() for p in sorted((root / "bioscan5m" / "images").rglob("*.jpg"))][:n]
    path = work / "blobs.pkl"
    path.write_bytes(pickle.dumps(blobs))
    return path


def _round(blobs: Path, pythonpath: str | None) -> tuple[float, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _WORKER, str(blobs)], capture_output=True, text=True, env=env,
                         check=True)
    rate, build = out.stdout.strip().split("\t")
    return float(rate), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pillow", default=os.path.join(tempfile.gettempdir(), "bioscan-bench-pillow"),
                        help="folder for stock Pillow (pip install --target)")
    args = parser.parse_args()
    _stock_pillow(Path(args.pillow))
    with tempfile.TemporaryDirectory() as work:
        blobs = _images(args.images, Path(work))
        rates: dict[str, list[float]] = {"here": [], "stock": []}
        builds = {}
        for _ in range(args.rounds):
            for name, path in (("here", None), ("stock", args.pillow)):
                rate, builds[name] = _round(blobs, path)
                rates[name].append(rate)
    ratio = statistics.median(h / s for h, s in zip(rates["here"], rates["stock"]))
    for name in ("here", "stock"):
        print(f"{builds[name]}: {max(rates[name]):,.0f} img/s (median {statistics.median(rates[name]):,.0f})")
    print(f"this environment's PIL vs stock Pillow: {ratio:.2f}x (median of {args.rounds} paired rounds)")
    print(json.dumps({"rates": rates, "builds": builds, "ratio": ratio}))


if __name__ == "__main__":
    main()

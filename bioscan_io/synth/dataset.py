"""Writing a whole generated dataset: :func:`generate` and the :class:`GeneratedDataset` it returns."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_open
from ..schema import (
    DATASET_DIR,
    DEFAULT_PACKAGE,
    IMAGES_DIR,
    METADATA_CSV,
    METADATA_JSONLD,
    PACKAGES,
    SPLITS,
    BioscanError,
)
from .common import SYNTH_VERSION, _check_int
from .layout import _make_image_folders, _write_csv, _write_jsonld
from .records import _make_records

__all__ = ["GeneratedDataset", "generate", "MARKER_NAME"]

#: File written into ``ROOT/bioscan5m`` that marks a folder as generated here.
MARKER_NAME = ".bioscan_io_synth.json"


@dataclass(frozen=True)
class GeneratedDataset:
    """Summary of a dataset written by :func:`generate`.

    Attributes
    ----------
    root : pathlib.Path
        The dataset root (the folder that contains ``bioscan5m/``).
    n_records : int
        Number of records in the metadata.
    seed : int
        The seed it was generated with.
    package : str or None
        The image package written, or None when no images were written.
    split_counts : dict
        Records per split, in release order.
    csv_path, jsonld_path : pathlib.Path
        The two metadata files.
    images_dir : pathlib.Path or None
        ``ROOT/bioscan5m/images/{package}``, or None without images.
    n_images : int
        Number of image files written.
    image_bytes : int
        Total size of the image files.
    seconds : float
        Wall-clock time the generation took.
    """

    root: Path
    n_records: int
    seed: int
    package: str | None
    split_counts: dict
    csv_path: Path
    jsonld_path: Path
    images_dir: Path | None
    n_images: int
    image_bytes: int
    seconds: float

    def summary(self) -> str:
        """A one-line description of the dataset."""
        splits = ", ".join(f"{s} {c}" for s, c in self.split_counts.items())
        if self.package is None:
            imgs = "no images"
        else:
            mib = self.image_bytes / 2**20
            imgs = f"{self.n_images} {self.package} images ({mib:.1f} MiB)"
        return (
            f"generated {self.n_records} records ({splits}) and {imgs} "
            f"under {self.root} in {self.seconds:.1f} s"
        )


def generate(
    root,
    n_records: int = 10_000,
    seed: int = 0,
    package: str = DEFAULT_PACKAGE,
    workers: int | None = None,
    images: bool = True,
    progress: bool = False,
) -> GeneratedDataset:
    """Write a synthetic BIOSCAN-5M-like dataset under ``root``.

    Writes ``ROOT/bioscan5m/metadata/csv/...csv``, its JSON-LD twin and, with
    ``images=True``, one JPEG per record under
    ``ROOT/bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg``.
    Every chunk folder of the chunked splits is created (256 for ``pretrain``,
    16 for ``train`` and ``other_heldout``), so some stay empty; one
    ``pretrain`` chunk is always left empty.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root; created if missing.  A ``bioscan5m`` folder already in it
        must have been written by this function (it is then overwritten; images
        of an earlier generation with other arguments are removed).
    n_records : int, default 10_000
        Number of records, at least 1.  Each split gets at least ~3 % of them
        (at least 3 records from 24 records on).
    seed : int, default 0
        Non-negative seed.  The same ``(n_records, seed, package)`` gives
        byte-identical files; the metadata does not depend on ``package``.
    package : str, default "cropped_256"
        Image package to write.  ``"cropped_256"``: shorter side 256 px, longer
        side 256-400 px, the specimen fills the frame; ``"original_256"``:
        landscape 341x256 or 384x256 px, the specimen covers about
        ``area_fraction`` of the frame; ``"cropped"``: shorter side 512-768 px;
        ``"original_full"``: 1024x768 or 1152x768 px.
    workers : int or None, default None
        Worker processes that render images; None uses every CPU (one process
        for small datasets).  The output does not depend on it.
    images : bool, default True
        Whether to write the images (the metadata is always written).
    progress : bool, default False
        Show a progress bar on stderr while rendering images.

    Returns
    -------
    GeneratedDataset
        Paths and counts of what was written.

    Raises
    ------
    BioscanError
        If an argument is invalid, ``root`` is a file, or ``root`` holds a
        ``bioscan5m`` folder that this function did not write.

    Examples
    --------
    >>> from bioscan_io.synth import generate
    >>> ds = generate("/tmp/bioscan-demo", n_records=1000, seed=1)  # doctest: +SKIP
    >>> ds.split_counts["train"]  # doctest: +SKIP
    120
    """
    t0 = time.perf_counter()
    n_records, seed, workers = _check_args(n_records, seed, package, workers)
    root = Path(os.fspath(root)).expanduser()
    previous = _prepare_root(root)

    records, render = _make_records(n_records, seed)

    params = {"generator": "bioscan_io.synth", "version": SYNTH_VERSION, "n_records": n_records, "seed": seed}
    packages = _remove_stale_images(root, previous, params, package if images else None)
    marker_path = root / DATASET_DIR / MARKER_NAME
    _write_marker(marker_path, params, packages)

    csv_path = root / METADATA_CSV
    jsonld_path = root / METADATA_JSONLD
    _write_csv(csv_path, records)
    _write_jsonld(jsonld_path, records)

    n_images = image_bytes = 0
    images_dir = None
    if images:
        from .images import _render_all  # imports PIL, which the metadata alone does not need

        images_dir = root / IMAGES_DIR / package
        _make_image_folders(images_dir)
        n_images, image_bytes = _render_all(root, records, render, seed, package, workers, progress)
        _write_marker(marker_path, params, sorted(set(packages) | {package}))

    counts = {s: 0 for s in SPLITS}
    for r in records:
        counts[r["split"]] += 1
    return GeneratedDataset(
        root=root,
        n_records=n_records,
        seed=seed,
        package=package if images else None,
        split_counts=counts,
        csv_path=csv_path,
        jsonld_path=jsonld_path,
        images_dir=images_dir,
        n_images=n_images,
        image_bytes=image_bytes,
        seconds=time.perf_counter() - t0,
    )


def _check_args(n_records, seed, package, workers):
    n_records = _check_int("n_records", n_records, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    if workers is not None:
        workers = _check_int("workers", workers, minimum=1)
    if package not in PACKAGES:
        raise BioscanError(f"unknown image package {package!r}; valid packages are {', '.join(PACKAGES)}")
    return n_records, seed, workers


def _prepare_root(root: Path):
    """Check that ``root`` may be written into, and create ``root/bioscan5m``.

    Returns the marker of an earlier generation in it (``{}`` when unreadable),
    or None when there was none.
    """
    if root.exists() and not root.is_dir():
        raise BioscanError(f"dataset root {root} exists and is not a folder")
    dataset_dir = root / DATASET_DIR
    marker_path = dataset_dir / MARKER_NAME
    previous = None
    if dataset_dir.exists():
        if not dataset_dir.is_dir():
            raise BioscanError(f"{dataset_dir} exists and is not a folder")
        if marker_path.is_file():
            try:
                previous = json.loads(marker_path.read_text("utf-8"))
            except (OSError, ValueError):
                previous = {}
        elif any(dataset_dir.iterdir()):
            raise BioscanError(
                f"{dataset_dir} holds a dataset that bioscan_io.synth did not write; "
                "choose an empty or new root"
            )
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BioscanError(f"cannot create dataset folder {dataset_dir}: {e.strerror or e}") from None
    return previous


def _remove_stale_images(root: Path, previous, params: dict, package):
    """Remove the images that the new generation makes stale; returns the packages still valid.

    All images go when an earlier generation had other parameters; the
    ``package`` about to be written (None: no images) always goes.
    """
    packages = []
    if previous is not None:
        if all(previous.get(k) == v for k, v in params.items()):
            packages = [p for p in previous.get("packages", []) if p in PACKAGES]
        else:
            shutil.rmtree(root / IMAGES_DIR, ignore_errors=True)
    if package is not None:
        shutil.rmtree(root / IMAGES_DIR / package, ignore_errors=True)
        packages = sorted(set(packages) - {package})
    return packages


def _write_marker(path: Path, params: dict, packages: list) -> None:
    # rewritten before and after the images, so it never lists a package being written
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(json.dumps({**params, "packages": packages}, indent=1) + "\n")

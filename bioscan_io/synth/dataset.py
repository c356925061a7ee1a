"""Writing a whole generated dataset: :func:`generate` and the :class:`GeneratedDataset` it returns."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_open, missing_folders
from ..schema import (
    DATASET_DIR,
    DEFAULT_PACKAGE,
    IMAGES_DIR,
    METADATA_CSV,
    METADATA_JSONLD,
    PACKAGES,
    BioscanError,
)
from .common import SYNTH_VERSION, _check_int, _cpus
from .layout import _make_image_folders, _MetadataWriter
from .records import _record_chunks, _split_counts
from .stream import _can_fork

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
        Number of image files written (hard links to the image pool included).
    image_bytes : int
        Total size of the images rendered (a hard link takes no more room).
    seconds : float
        Wall-clock time the generation took.
    n_rendered : int
        Number of images rendered: ``n_images``, or the image pool's size.
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
    n_rendered: int = 0

    def summary(self) -> str:
        """A one-line description of the dataset."""
        splits = ", ".join(f"{s} {c}" for s, c in self.split_counts.items())
        if self.package is None:
            imgs = "no images"
        else:
            mib = self.image_bytes / 2**20
            pool = f", {self.n_rendered} distinct" if self.n_rendered < self.n_images else ""
            imgs = f"{self.n_images} {self.package} images ({mib:.1f} MiB{pool})"
        return (
            f"generated {self.n_records} records ({splits}) and {imgs} "
            f"under {self.root} in {self.seconds:.1f} s"
        )


#: Records made and written at a time: large enough that the per-chunk costs
#: vanish, small enough that a chunk's rows take tens of megabytes.
CHUNK_SIZE = 50_000


def generate(
    root,
    n_records: int = 10_000,
    seed: int = 0,
    package: str = DEFAULT_PACKAGE,
    workers: int | None = None,
    images: bool = True,
    progress: bool = False,
    official_splits: bool = False,
    image_pool: int | None = None,
    *,
    _chunk_size: int = CHUNK_SIZE,
) -> GeneratedDataset:
    """Write a synthetic BIOSCAN-5M-like dataset under ``root``.

    Writes ``ROOT/bioscan5m/metadata/csv/...csv``, its JSON-LD twin and, with
    ``images=True``, one JPEG per record under
    ``ROOT/bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg``.
    Every chunk folder of the chunked splits is created (256 for ``pretrain``,
    16 for ``train`` and ``other_heldout``), so some stay empty; one
    ``pretrain`` chunk is always left empty.

    The records are made and written a chunk at a time, so the memory used
    stays well under 1 GiB even at the release's size (5,150,850 records,
    a few minutes without images).

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root; created if missing.  A ``bioscan5m`` folder already in it
        must have been written by this function (it is then overwritten; images
        of an earlier generation with other arguments are removed).
    n_records : int, default 10_000
        Number of records, at least 1.  By default each split gets at least
        ~3 % of them (at least 3 records from 24 records on).
    seed : int, default 0
        Non-negative seed.  The same arguments give byte-identical files,
        whatever ``workers``; the metadata does not depend on ``package``,
        ``images`` or ``image_pool``.
    package : str, default "cropped_256"
        Image package to write.  ``"cropped_256"``: shorter side 256 px, longer
        side 256-400 px, the specimen fills the frame; ``"original_256"``:
        landscape 341x256 or 384x256 px, the specimen covers about
        ``area_fraction`` of the frame; ``"cropped"``: shorter side 512-768 px;
        ``"original_full"``: 1024x768 or 1152x768 px.
    workers : int or None, default None
        Worker processes that render images, and (from two on) a second process
        that draws the identifiers and barcodes of large datasets while this one
        writes the rows; None uses every CPU (one process for small datasets).
        The output does not depend on it.
    images : bool, default True
        Whether to write the images (the metadata is always written).
    progress : bool, default False
        Show a progress bar (records written) on stderr.
    official_splits : bool, default False
        Give the splits the proportions of the published release
        (:data:`OFFICIAL_SPLIT_SIZES`: 91 % pretrain; its very counts for
        5,150,850 records, largest-remainder rounding otherwise), without the
        default's minimum share per split: small datasets then have few or no
        records in the small splits.  By default the splits follow
        :data:`SPLIT_FRACTIONS`.
    image_pool : int or None, default None
        Render only this many images (those of the first ``image_pool``
        records) and give every other record's image path a hard link to one of
        them (record ``i`` to record ``i % image_pool``), so that a dataset of
        millions of records with images takes seconds of rendering.  The file
        system must support hard links.  None renders one image per record.

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
    n_records, seed, workers, image_pool = _check_args(n_records, seed, package, workers, image_pool)
    _check_int("_chunk_size", _chunk_size, minimum=1)
    root = Path(os.fspath(root)).expanduser()
    created = missing_folders(root / DATASET_DIR)
    previous = _prepare_root(root)

    params = {"generator": "bioscan_io.synth", "version": SYNTH_VERSION, "n_records": n_records, "seed": seed}
    # only when set, so that the marker of the default arguments stays as it was (the
    # image pool is not a parameter: the images of any pool match the same metadata)
    if official_splits:
        params["official_splits"] = True
    images_dir = root / IMAGES_DIR / package if images else None
    try:
        packages = _remove_stale_images(root, previous, params, package if images else None)
        marker_path = root / DATASET_DIR / MARKER_NAME
        _write_marker(marker_path, params, packages)
        with _progress_bar(n_records, progress, f"rendering {package}" if images else "generating metadata") as advance:
            writer = None
            if images:
                from .images import _ImageWriter  # imports PIL, which the metadata alone does not need

                assert images_dir is not None
                _make_image_folders(images_dir)
                writer = _ImageWriter(root, package, seed, workers, image_pool, n_records, advance)
            _write_records(root, n_records, seed, official_splits, _chunk_size, workers, writer, advance)
        if images:
            _write_marker(marker_path, params, sorted(set(packages) | {package}))
    except BaseException:  # a full disk, Ctrl-C: no half-written dataset is left to be mistaken for one
        _undo(root, created, replaced=previous is None or not _same_params(previous, params), images_dir=images_dir)
        raise

    csv_path, jsonld_path = root / METADATA_CSV, root / METADATA_JSONLD

    return GeneratedDataset(
        root=root,
        n_records=n_records,
        seed=seed,
        package=package if images else None,
        split_counts=_split_counts(n_records, official_splits),
        csv_path=csv_path,
        jsonld_path=jsonld_path,
        images_dir=images_dir,
        n_images=n_records if images else 0,
        image_bytes=writer.bytes if writer is not None else 0,
        seconds=time.perf_counter() - t0,
        n_rendered=writer.n_rendered if writer is not None else 0,
    )


def _write_records(root, n, seed, official, chunk_size, workers, images, advance) -> None:
    """Write the metadata files and (through ``images``, unless None) the images, a chunk of records at a time."""
    # a second process pays off from two chunks on
    background = n > chunk_size and _can_fork() and (workers or _cpus()) > 1
    render_stop = images.limit if images is not None else 0
    chunks = _record_chunks(n, seed, official, chunk_size, background, render_stop)
    with closing(chunks), _MetadataWriter(root / METADATA_CSV, root / METADATA_JSONLD) as metadata:
        for start, rows, render in chunks:
            metadata.write(rows)
            if images is None:
                advance(len(rows))
            else:
                images.add(start, rows, render)
            del rows, render  # not kept while the next chunk is made


@contextmanager
def _progress_bar(n, show, desc):
    """Yield a function that advances a progress bar of ``n`` records on stderr (does nothing unless ``show``)."""
    bar = None
    if show:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            pass
        else:
            bar = tqdm(total=n, unit="rec", desc=desc, file=sys.stderr)
    try:
        yield bar.update if bar is not None else (lambda k: None)
    finally:
        if bar is not None:
            bar.close()


def _check_args(n_records, seed, package, workers, image_pool):
    n_records = _check_int("n_records", n_records, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    if workers is not None:
        workers = _check_int("workers", workers, minimum=1)
    if image_pool is not None:
        image_pool = _check_int("image_pool", image_pool, minimum=1)
    if package not in PACKAGES:
        raise BioscanError(f"unknown image package {package!r}; valid packages are {', '.join(PACKAGES)}")
    return n_records, seed, workers, image_pool


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


def _same_params(previous: dict, params: dict) -> bool:
    return {k: v for k, v in previous.items() if k != "packages"} == params


def _undo(root: Path, created: list[Path], replaced: bool, images_dir: Path | None) -> None:
    """After a failed generation: remove what it was writing.

    The whole ``bioscan5m`` folder when this call made it or was replacing every
    file in it (other arguments); else only the image package being added (the
    marker does not list it yet). Never raises: the error is the one to report.
    """
    if replaced:
        shutil.rmtree(root / DATASET_DIR, ignore_errors=True)
    elif images_dir is not None:
        shutil.rmtree(images_dir, ignore_errors=True)
    for path in created:
        with suppress(OSError):
            path.rmdir()


def _remove_stale_images(root: Path, previous, params: dict, package):
    """Remove the images that the new generation makes stale; returns the packages still valid.

    All images go when an earlier generation had other parameters; the
    ``package`` about to be written (None: no images) always goes.
    """
    packages = []
    if previous is not None:
        if _same_params(previous, params):
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

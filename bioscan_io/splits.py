"""``make_loaders``: the loaders of several splits of one shards folder, each set for its role.

``bioscan-shard`` writes each split into its own folder of one shards folder
(``shards/<split>/manifest.json`` and its shards, ``shards/labels.json``
beside them). :func:`make_loaders` builds one :class:`~bioscan_io.loader.BioscanLoader`
per split named, with the settings a training script expects of each role::

    loaders = make_loaders("shards", "mlm", splits=("pretrain", "val"), batch_size=64)
    for epoch in range(10):
        loaders["pretrain"].set_epoch(epoch)     # shuffled, augmented, drop_last if asked
        for batch in loaders["pretrain"]: ...
        for batch in loaders["val"]: ...         # in shard order, no augmentation, every sample

A training split (one of ``train_splits``: BIOSCAN-5M's ``pretrain`` and
``train``) gets ``train=True``: shuffled shard order and samples, random
augmentation, ``drop_last`` as passed. Any other split is an evaluation
split: ``train=False`` (no shuffle, no augmentation: the same batches every
pass), never ``drop_last``, ``eval_batch_size`` samples a batch.
:class:`bioscan_io.lightning.BioscanDataModule` builds its loaders here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from . import storage
from .format import MANIFEST
from .loader import BioscanLoader, make_loader
from .options import LOADER_OPTIONS, Option, check_options
from .schema import BioscanError

__all__ = ["TRAIN_SPLITS", "make_loaders", "check_splits", "split_folder", "found_splits"]

#: The splits ``make_loaders`` trains on by default: BIOSCAN-5M's pretraining (unlabelled
#: at species) and supervised training splits.
TRAIN_SPLITS = ("pretrain", "train")
#: make_loader options that follow each split's role here, and may not be passed.
_ROLE_OPTIONS = ("train", "shuffle")
#: make_loaders' own options, checked as make_loader checks its own.
_OWN_OPTIONS = {"eval_batch_size": Option("int", low=1, optional=True), "drop_last": LOADER_OPTIONS["drop_last"]}


def split_folder(shards, split: str) -> str:
    """The folder of ``split`` in the shards folder ``shards`` (a local path or a remote URL)."""
    return storage.join(str(shards), split)


def found_splits(shards) -> list[str]:
    """The split folders (those holding a ``manifest.json``) of a local shards folder, sorted."""
    root = Path(storage.local_path(shards))
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def check_splits(shards, splits: Sequence[str]) -> None:
    """Raise a one-line ``BioscanError`` unless each of ``splits`` is a folder of ``shards``.

    Local folders only: a remote shards folder (``s3://...``) is checked when
    its loaders read their manifests.

    Raises
    ------
    BioscanError
        No split named, a name that is not a string or named twice, a shards
        folder that does not exist, or a split with no folder in it (naming the
        folder, and the splits that are there).
    """
    if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits:
        raise BioscanError(f"splits must be a non-empty list of split names, e.g. ('train', 'val'); got {splits!r}")
    bad = [s for s in splits if not isinstance(s, str) or not s or "/" in s]
    if bad:
        raise BioscanError(f"a split is the name of a folder of the shards folder, e.g. 'train'; got {bad[0]!r}")
    twice = sorted({s for s in splits if list(splits).count(s) > 1})
    if twice:
        raise BioscanError(f"split {twice[0]!r} is named twice in splits={tuple(splits)!r}")
    if storage.is_url(shards):
        return
    root = Path(storage.local_path(shards))
    if not root.is_dir():
        raise BioscanError(f"shards folder not found: {shards} (bioscan-shard --out writes one)")
    for split in splits:
        if not (root / split).is_dir():
            raise BioscanError(f"split {split!r}: no folder {root / split}{_what_is_there(root)}")


def _what_is_there(root: Path) -> str:
    """The end of a missing split's message: the splits the shards folder holds, or why it holds none."""
    there = found_splits(root)
    if there:
        return f" (the shards folder holds: {', '.join(there)})"
    if (root / MANIFEST).is_file():
        return f"; {root} is itself a split folder: pass the folder that holds the split folders ({root.parent})"
    return f"; {root} holds no split folder (bioscan-shard --split NAME --out {root} writes one)"


def make_loaders(
    shards,
    task: str = "mlm",
    *,
    recipe: str | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
    train_splits: Collection[str] = TRAIN_SPLITS,
    batch_size: int = 256,
    eval_batch_size: int | None = None,
    drop_last: bool = False,
    **options: Any,
) -> dict[str, BioscanLoader]:
    """The loaders of several splits of one shards folder: a dict split name -> :class:`BioscanLoader`.

    Parameters
    ----------
    shards : str or path
        The folder that holds the split folders (``shards/`` of ``shards/train/manifest.json``),
        local or remote (``s3://bucket/shards``, with ``storage_options=``).
    task : {"mlm", "classify", "clip", "embed"}
        What the batches hold, for every split (:func:`bioscan_io.loader.make_loader`).
    recipe : {"barcodebert", "barcodemae", "barcodemamba", "clibd"}, optional
        A model's data recipe (:data:`bioscan_io.recipes.RECIPES`), for every split.
    splits : sequence of str
        The splits to load, each a folder of ``shards``; the dict keeps this order.
    train_splits : collection of str
        The splits loaded for training (default ``("pretrain", "train")``); the
        others are evaluation splits. Pass ``()`` to load every split for evaluation.
    batch_size : int
        Samples per batch of a training split.
    eval_batch_size : int, optional
        Samples per batch of an evaluation split (default ``batch_size``).
    drop_last : bool
        Drop each rank's last partial batch of a training split; evaluation
        splits keep every sample.
    **options
        Any other :func:`~bioscan_io.loader.make_loader` option (``num_workers``,
        ``seed``, ``epoch``, ``label_rank``, ``rank``, ``world_size``, ``max_len`` ...),
        for every split; not ``train`` or ``shuffle``, which follow each split's role.

    Returns
    -------
    dict of str to BioscanLoader
        One loader per split, in the order of ``splits``. A training split's
        loader shuffles and augments (call ``set_epoch`` each epoch); an
        evaluation split's yields the same batches every pass, in shard order.

    Raises
    ------
    BioscanError
        One line: a split with no folder in ``shards`` (naming the folder), a
        role option passed, or what :func:`~bioscan_io.loader.make_loader` refuses.
    """
    given = [name for name in _ROLE_OPTIONS if name in options]
    if given:
        raise BioscanError(f"make_loaders: {given[0]}= follows each split's role (training splits shuffle and "
                           "augment, the others do not): name the training splits with train_splits=, or call "
                           "make_loader for one split")
    check_options({"eval_batch_size": eval_batch_size, "drop_last": drop_last}, _OWN_OPTIONS, who="make_loaders")
    if isinstance(train_splits, str):
        raise BioscanError(f"train_splits must be a collection of split names, e.g. ('train',); got {train_splits!r}")
    check_splits(shards, splits)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    loaders = {}
    for split in splits:
        training = split in train_splits
        loaders[split] = make_loader(split_folder(shards, split), task, recipe=recipe, train=training,
                                     batch_size=batch_size if training else eval_batch_size,
                                     drop_last=drop_last and training, **options)
    return loaders

"""``BioscanDataModule``: the loaders of one shards folder as a Lightning ``LightningDataModule``.

Needs Lightning (``pip install 'bioscan-io[lightning]'``): ``lightning.pytorch``
when it is installed, else the standalone ``pytorch_lightning``::

    import lightning.pytorch as pl
    from bioscan_io.lightning import BioscanDataModule

    data = BioscanDataModule("shards", "mlm", recipe="barcodebert", train_split="pretrain",
                             val_split="val", test_split="test", batch_size=256, num_workers=8)
    checkpoints = pl.callbacks.ModelCheckpoint(every_n_train_steps=500, save_last=True)
    trainer = pl.Trainer(max_epochs=10, callbacks=[checkpoints])
    trainer.fit(model, datamodule=data)
    # pre-empted mid-epoch? a new process (new Trainer, model, data module) goes on from the next batch:
    trainer.fit(model, datamodule=data, ckpt_path="last")

Epochs and resume go through Lightning's own mechanisms, nothing to call:

- Lightning calls ``set_epoch(n)`` on each training loader's ``sampler`` at the
  top of epoch ``n`` (``_set_sampler_epoch``); the training loader
  (:class:`LightningTrainLoader`) passes it to its :class:`~bioscan_io.loader.BioscanLoader`,
  so each epoch has its own shard order, shuffle, masks and augmentation.
- Lightning's fit loop stores the ``state_dict()`` of each training loader that
  has ``state_dict``/``load_state_dict`` in every checkpoint (``loops.fit_loop.
  state_dict.combined_loader``), and gives it to the new loader's
  ``load_state_dict`` when ``fit(..., ckpt_path=...)`` restores one: the run
  continues at the batch after the checkpoint's step, the same batches an
  uninterrupted run would have seen. Since the loader has an exact ``len()``,
  Lightning does not fetch ahead, so the saved state is the step's.

Evaluation loaders (val, test, predict; :class:`LightningLoader`) have
``train=False``: no shuffle, no augmentation, every sample, and an epoch
Lightning does not change, so a task that masks (``mlm``) masks the same
positions at every validation and the losses compare.
Under DDP, each loader is this process's part (``trainer.global_rank`` of
``trainer.world_size``): every rank gets the same number of batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .loader import BioscanLoader
from .schema import BioscanError
from .splits import check_splits, make_loaders

try:
    from lightning.pytorch import LightningDataModule
except ImportError:
    try:
        from pytorch_lightning import LightningDataModule  # type: ignore[no-redef,assignment]
    except ImportError:
        raise ImportError("bioscan_io.lightning needs Lightning: pip install 'bioscan-io[lightning]' "
                          "(or pip install lightning)") from None

__all__ = ["BioscanDataModule", "LightningLoader", "LightningTrainLoader"]


class _SamplerEpochs:
    """Stands where Lightning looks for a loader's sampler: its ``set_epoch`` sets the loader's epoch."""

    def __init__(self, loader: BioscanLoader):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class LightningLoader:
    """A :class:`~bioscan_io.loader.BioscanLoader` as Lightning's loops take it (val, test, predict).

    The loader's batches, ``len()``, ``set_epoch()``, ``state_dict()`` and
    ``load_state_dict()``, ``epoch``, ``errors`` and ``skipped``; the loader
    itself is :attr:`loader`. Its ``dataset`` is not shown to Lightning, which
    would warn that an ``IterableDataset``'s ``len()`` may be inaccurate
    (this one's is exact, whatever ``num_workers``).

    Parameters
    ----------
    loader : BioscanLoader
        The loader.
    """

    def __init__(self, loader: BioscanLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.loader.load_state_dict(state)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def errors(self) -> list[tuple[int, str]]:
        return self.loader.errors

    @property
    def skipped(self) -> int:
        return self.loader.skipped

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loader.dataset.shards.folder!r}, {len(self)} batches)"


class LightningTrainLoader(LightningLoader):
    """The training loader: a :class:`LightningLoader` with a ``sampler`` whose ``set_epoch`` Lightning calls.

    At the top of epoch ``n`` Lightning calls ``sampler.set_epoch(n)``, which
    sets the loader's epoch (and keeps a restored mid-epoch position in that epoch).
    """

    def __init__(self, loader: BioscanLoader):
        super().__init__(loader)
        self.sampler = _SamplerEpochs(loader)


class BioscanDataModule(LightningDataModule):
    """The train, val, test and predict loaders of one shards folder, for ``Trainer.fit/validate/test/predict``.

    Parameters
    ----------
    shards : str or path
        The folder that holds the split folders (``shards/<split>/manifest.json``),
        local or remote (with ``storage_options=``).
    task : {"mlm", "classify", "clip", "embed"}
        What the batches hold (:func:`bioscan_io.loader.make_loader`).
    recipe : str, optional
        A model's data recipe (:data:`bioscan_io.recipes.RECIPES`).
    train_split, val_split, test_split : str or None
        The split of each stage (defaults ``"train"``, ``"val"``, ``"test"``;
        ``"pretrain"`` for BIOSCAN-5M's pretraining split). None: no loader for that
        stage (``val_split=None``: no validation).
    predict_split : str, optional
        The split of ``Trainer.predict`` (default: ``test_split``).
    batch_size : int
        Samples per training batch.
    eval_batch_size : int, optional
        Samples per val/test/predict batch (default ``batch_size``).
    drop_last : bool
        Drop each rank's last partial training batch.
    **options
        Other :func:`~bioscan_io.loader.make_loader` options for every split
        (``num_workers``, ``seed``, ``label_rank``, tokenizer and image settings ...).
        Not ``train``/``shuffle`` (set by stage), nor ``epoch`` (Lightning's).
        ``rank``/``world_size`` default to the trainer's.

    Raises
    ------
    BioscanError
        One line, at construction: a split with no folder in ``shards``, or a
        refused option.
    """

    def __init__(self, shards, task: str = "mlm", *, recipe: str | None = None, train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = "test", predict_split: str | None = None,
                 batch_size: int = 256, eval_batch_size: int | None = None, drop_last: bool = False,
                 **options: Any):
        super().__init__()
        if "epoch" in options:
            raise BioscanError("BioscanDataModule: the epoch is Lightning's (the trainer sets it each epoch, "
                               "and a checkpoint restores it); do not pass epoch=")
        self.shards, self.task, self.recipe = shards, task, recipe
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.predict_split = test_split if predict_split is None else predict_split
        self.batch_size, self.eval_batch_size, self.drop_last = batch_size, eval_batch_size, drop_last
        self.options = options
        named = [s for s in (train_split, val_split, test_split, self.predict_split) if s is not None]
        check_splits(shards, list(dict.fromkeys(named)))

    def loader(self, split: str, *, train: bool) -> BioscanLoader:
        """A new loader of ``split``: for training (shuffled, augmented) or for evaluation."""
        options = dict(self.options)
        trainer = self.trainer
        if trainer is not None:
            options.setdefault("rank", trainer.global_rank)
            options.setdefault("world_size", trainer.world_size)
        loaders = make_loaders(self.shards, self.task, recipe=self.recipe, splits=(split,),
                               train_splits=(split,) if train else (), batch_size=self.batch_size,
                               eval_batch_size=self.eval_batch_size, drop_last=self.drop_last, **options)
        return loaders[split]

    def train_dataloader(self) -> LightningTrainLoader:
        """The training split's loader (shuffled, augmented; Lightning sets its epoch)."""
        if self.train_split is None:
            raise BioscanError("BioscanDataModule(train_split=None) has no training loader: name a split to fit")
        return LightningTrainLoader(self.loader(self.train_split, train=True))

    def val_dataloader(self) -> LightningLoader | list:
        """The val split's loader (evaluation settings), or ``[]`` (no validation) when ``val_split=None``."""
        return [] if self.val_split is None else LightningLoader(self.loader(self.val_split, train=False))

    def test_dataloader(self) -> LightningLoader:
        """The test split's loader (evaluation settings)."""
        return self._eval_loader(self.test_split, "test")

    def predict_dataloader(self) -> LightningLoader:
        """The predict split's loader (default the test split's; evaluation settings)."""
        return self._eval_loader(self.predict_split, "predict")

    def _eval_loader(self, split: str | None, stage: str) -> LightningLoader:
        if split is None:
            raise BioscanError(f"BioscanDataModule has no {stage} split: pass {stage}_split=")
        return LightningLoader(self.loader(split, train=False))

    def __repr__(self) -> str:
        splits = ", ".join(f"{stage}={split!r}" for stage, split in
                           (("train", self.train_split), ("val", self.val_split), ("test", self.test_split))
                           if split is not None)
        return f"BioscanDataModule({str(self.shards)!r}, {self.task!r}, {splits})"

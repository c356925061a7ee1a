"""Training glue: ``make_loaders`` (every split of a shards folder, each set for its role) and
``bioscan_io.lightning.BioscanDataModule`` (epochs and mid-epoch resume through Lightning's own loops).

CPU only. Lightning imports torchmetrics, which imports torchvision: ``tv_shim`` makes
torchvision importable beside this torch first (tv_shim.py says why it may not be).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tv_shim import load_torchvision

import bioscan_io
from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split
from bioscan_io.splits import make_loaders

QUIET = dict(progress=False, log=lambda m: None)
#: The loader settings of the Lightning runs: short barcodes, small batches (248 pretrain samples: 16 batches).
SMALL = dict(batch_size=16, eval_batch_size=8, max_len=64, seed=4)


@pytest.fixture(scope="module")
def shards(dataset_small, tmp_path_factory) -> Path:
    """The 400-record dataset's pretrain (7 shards), train, val and test splits in one shards folder."""
    out = tmp_path_factory.mktemp("lightning-shards")
    shard_split(dataset_small, "pretrain", out=out, maxcount=40, **QUIET)
    for split in ("train", "val", "test"):
        shard_split(dataset_small, split, out=out, **QUIET)
    return out


def pids(loader) -> list[list[str]]:
    return [list(batch["processid"]) for batch in loader]


# ----------------------------------------------------------------------------- make_loaders

def test_make_loaders_sets_each_split_for_its_role(shards):
    """Training splits shuffle, augment and drop_last; evaluation splits do not, in the order asked."""
    loaders = bioscan_io.make_loaders(shards, "mlm", splits=("pretrain", "val", "test"), batch_size=32,
                                      eval_batch_size=4, drop_last=True, max_len=64)
    assert list(loaders) == ["pretrain", "val", "test"]
    train, val = loaders["pretrain"].dataset, loaders["val"].dataset
    assert (train.task.train, train.shuffle, train.drop_last, train.batch_size) == (True, True, True, 32)
    assert (val.task.train, val.shuffle, val.drop_last, val.batch_size) == (False, False, False, 4)
    assert len(loaders["pretrain"]) == 248 // 32  # the partial batch dropped
    assert len(loaders["val"]) == -(-14 // 4)  # every sample kept
    # the same batches as make_loader with those settings
    alone = make_loader(shards / "pretrain", "mlm", train=True, batch_size=32, drop_last=True, max_len=64)
    assert pids(loaders["pretrain"]) == pids(alone)
    # an evaluation split: shard order, the same every pass and every epoch
    first = pids(loaders["test"])
    loaders["test"].set_epoch(3)
    assert pids(loaders["test"]) == first
    assert [p for b in first for p in b] == [p for b in pids(make_loader(shards / "test", "mlm", train=False,
                                                                         shuffle=False, batch_size=4)) for p in b]


def test_make_loaders_train_splits_and_options(shards):
    """train_splits names the training splits; other make_loader options reach every split."""
    loaders = make_loaders(shards, "classify", splits=("train", "val"), train_splits=(), batch_size=8,
                           label_rank="genus", num_workers=1)
    assert not loaders["train"].dataset.task.train and not loaders["train"].dataset.shuffle
    assert all(loader.dataset.task.label_rank == "genus" for loader in loaders.values())
    assert sum(len(b["processid"]) for b in loaders["val"]) == 14
    recipe = make_loaders(shards, "mlm", recipe="barcodemae", splits=("val",))["val"]
    assert recipe.dataset.task.tokens.k == 6


def test_make_loaders_missing_split_is_one_line(shards, tmp_path):
    with pytest.raises(BioscanError) as err:
        make_loaders(shards, "mlm", splits=("train", "valid"))
    msg = str(err.value)
    assert "\n" not in msg and str(shards / "valid") in msg
    assert "pretrain, test, train, val" in msg  # what the folder holds
    # a split folder given as the shards folder
    with pytest.raises(BioscanError, match=r"is itself a split folder: pass the folder that holds"):
        make_loaders(shards / "train", splits=("train",))
    with pytest.raises(BioscanError, match=r"^shards folder not found: "):
        make_loaders(tmp_path / "nope")
    with pytest.raises(BioscanError, match=r"holds no split folder"):
        make_loaders(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"train": False}, r"make_loaders: train= follows each split's role"),
    ({"shuffle": True}, r"make_loaders: shuffle= follows each split's role"),
    ({"splits": "train"}, r"splits must be a non-empty list"),
    ({"splits": ()}, r"splits must be a non-empty list"),
    ({"splits": ("val", "val")}, r"split 'val' is named twice"),
    ({"train_splits": "train"}, r"train_splits must be a collection"),
    ({"eval_batch_size": 0}, r"make_loaders: eval_batch_size must be an integer >= 1"),
    ({"batch_size": 0}, r"make_loader: batch_size must be"),
])
def test_make_loaders_refuses(shards, kwargs, match):
    with pytest.raises(BioscanError, match=match):
        make_loaders(shards, **kwargs)


# ----------------------------------------------------------------------------- Lightning

def _lightning():
    """``lightning.pytorch`` (torchvision made importable first); the module is skipped only without Lightning."""
    load_torchvision()
    return pytest.importorskip("lightning.pytorch")


class Preempted(Exception):
    """Stands for a job killed mid-epoch."""


def _module_class(pl):
    class Recorder(pl.LightningModule):
        """A tiny MLM model that records every batch it trains and validates on."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(258, 8)  # 4-mer vocabulary
            self.head = torch.nn.Linear(8, 258)
            self.seen: list[tuple] = []
            self.validated: list[tuple] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, list(batch["processid"]), batch["input_ids"].clone(),
                              batch["labels"].clone()))
            logits = self.head(self.embed(batch["input_ids"]))
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

        def validation_step(self, batch, batch_idx):
            self.validated.append((self.current_epoch, list(batch["processid"]), batch["input_ids"].clone()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Recorder


def _trainer(pl, root: Path, callbacks=()):
    return pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
                      callbacks=list(callbacks))


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(s, t)) for s, t in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_resumes_mid_epoch_through_its_checkpoint(shards, tmp_path, workers):
    """Stopped after 5 steps of epoch 0 (a ModelCheckpoint taken there), resumed by ``fit(ckpt_path=...)``
    in a fresh Trainer with a fresh DataModule: the remaining batches are the uninterrupted run's."""
    pl = _lightning()
    from bioscan_io.lightning import BioscanDataModule, LightningTrainLoader

    Recorder = _module_class(pl)

    def data():
        return BioscanDataModule(shards, "mlm", train_split="pretrain", num_workers=workers, **SMALL)

    full = Recorder()
    full_data = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(pl, tmp_path / "full").fit(full, datamodule=full_data)
    assert not [w for w in caught if "__len__" in str(w.message) or "workers" in str(w.message)]
    per_epoch = len(full_data.train_dataloader())
    assert per_epoch == 16 and len(full.seen) == 2 * per_epoch
    assert [s[:2] for s in full.seen] == [(e, i) for e in (0, 1) for i in range(per_epoch)]
    # each Lightning epoch is its own loader epoch: another shard order and shuffle, other masks
    epoch0 = [p for s in full.seen[:per_epoch] for p in s[2]]
    epoch1 = [p for s in full.seen[per_epoch:] for p in s[2]]
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == 248 and epoch0 != epoch1
    # validation: the val split in shard order, the same batches (and masks) at every epoch end
    val0, val1 = ([v[1:] for v in full.validated if v[0] == e] for e in (0, 1))
    assert len(val0) == 2 and _same(val0, val1)

    class Preempt(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 5:
                raise Preempted

    first = Recorder()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}",
                                               every_n_train_steps=5, save_top_k=-1)
    with pytest.raises(Preempted):
        _trainer(pl, tmp_path / "first", [checkpoints, Preempt()]).fit(first, datamodule=data())
    ckpt = tmp_path / "ckpt" / "step=5.ckpt"
    assert ckpt.is_file() and _same(first.seen, full.seen[:5])
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["epoch"] == 0 and state[0]["phases"][-1]["batches"] == 5  # the loader's own state

    resumed = Recorder()
    resumed_data = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(pl, tmp_path / "resumed").fit(resumed, datamodule=resumed_data, ckpt_path=ckpt)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert _same(resumed.seen, full.seen[5:])  # epoch 0 from batch 5 on, then all of epoch 1
    loader = resumed_data.trainer.train_dataloader
    assert isinstance(loader, LightningTrainLoader) and loader.epoch == 1 and loader.skipped == 0


def test_datamodule_stages_and_ranks(shards):
    """val/test/predict loaders are evaluation loaders; ranks come from the trainer; refusals are one line."""
    _lightning()
    from bioscan_io.lightning import BioscanDataModule, LightningLoader, LightningTrainLoader

    dm = BioscanDataModule(shards, "embed", val_split=None, batch_size=8, eval_batch_size=5)
    assert dm.val_dataloader() == []
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        assert type(loader) is LightningLoader and not hasattr(loader, "sampler")
        ds = loader.loader.dataset
        assert not ds.task.train and not ds.shuffle and ds.batch_size == 5 and ds.shards.folder.endswith("test")
        assert sum(len(b["processid"]) for b in loader) == 22
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    train = dm.train_dataloader()
    ds = train.loader.dataset
    assert isinstance(train, LightningTrainLoader) and ds.task.train and ds.shuffle
    assert (ds.rank, ds.world_size, len(train)) == (1, 2, 3)  # 48 samples: 24 a rank
    train.sampler.set_epoch(4)
    assert train.loader.epoch == train.epoch == 4
    assert not hasattr(train, "dataset")  # Lightning would warn that an IterableDataset's len() may be wrong
    with pytest.raises(BioscanError, match=r"split 'val_unseen': no folder .*val_unseen"):
        BioscanDataModule(shards, val_split="val_unseen")
    with pytest.raises(BioscanError, match=r"the epoch is Lightning's"):
        BioscanDataModule(shards, epoch=3)
    with pytest.raises(BioscanError, match=r"has no test split: pass test_split="):
        BioscanDataModule(shards, test_split=None).test_dataloader()


def test_without_lightning_the_import_says_what_to_install(monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] in ("lightning", "pytorch_lightning")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)  # None in sys.modules: "import lightning" fails
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, "bioscan_io.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'bioscan-io\[lightning\]'"):
        importlib.import_module("bioscan_io.lightning")

"""Batches handed from workers through reused shared-memory slots: same values, slots freed, never blocked."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from bioscan_io import handover
from bioscan_io.handover import LIVE, SlotArena
from bioscan_io.loader import make_loader
from bioscan_io.shard import shard_split


@pytest.fixture(scope="module")
def split(dataset_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("handover-shards")
    shard_split(dataset_small, "all", out=out, maxcount=50, progress=False, log=lambda m: None)
    return out / "all"


def _values(loader) -> dict:
    """processid -> its row of every tensor of the batch (copied)."""
    rows = {}
    for batch in loader:
        for i, pid in enumerate(batch["processid"]):
            rows[pid] = {k: v[i].clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return rows


def _states(loader) -> np.ndarray:
    return loader.arena._states.copy()


def test_pack_and_unpack_in_one_process():
    arena = SlotArena(workers=1, slots=2, slot_bytes=1 << 12)
    assert arena.take(0)
    handover._CURRENT = arena
    try:
        ids = handover.empty_array((2, 3), np.int64)
        ids[:] = [[1, 2, 3], [4, 5, 6]]
        image = handover.empty((1, 3, 2, 2), torch.uint8)
        image.fill_(7)
        too_big = handover.empty_array((1 << 12,), np.int64)  # no room: private memory
    finally:
        handover._CURRENT = None
    packed = arena.pack({"processid": ["a", "b"], "ids": torch.from_numpy(ids), "image": image,
                         "private": torch.from_numpy(too_big)})
    assert set(packed) == {"processid", "private", "_slot"}  # what lies in the slot travels as places
    slot = packed["_slot"][0]
    batch = arena.unpack(packed)
    assert batch["ids"].tolist() == [[1, 2, 3], [4, 5, 6]] and batch["image"].sum() == 7 * 12
    assert arena._states[slot] == LIVE
    view = batch["ids"][1]  # a view keeps the slot held
    del batch, packed
    gc.collect()
    assert arena._states[slot] == LIVE
    del view
    gc.collect()
    assert arena._states[slot] == 0


def test_a_worker_falls_back_when_every_slot_is_held():
    arena = SlotArena(workers=2, slots=2, slot_bytes=64)
    assert arena.take(1) and arena.take(1)  # the same slot twice: nothing was packed in between
    arena._states[2:4] = LIVE
    assert not arena.take(1)
    assert arena.allocate((4,), np.int64) is None
    assert arena.take(0)  # worker 0's slots are its own
    arena._states[0] = 5  # taken in an earlier iteration, never delivered
    arena._states[1] = LIVE
    arena._iteration[0] = 6
    assert arena.take(0) and arena._slot[0] == 0


@pytest.mark.parametrize("task,kw", [("mlm", {}), ("classify", {"modality": "image"}), ("embed", {})])
def test_workers_give_the_values_of_one_process(split, task, kw):
    base = _values(make_loader(split, task, batch_size=16, seed=3, **kw))
    loader = make_loader(split, task, batch_size=16, seed=3, num_workers=2, pin_memory=False, **kw)
    assert loader.arena is not None
    got = _values(loader)
    assert got.keys() == base.keys()
    for pid, row in base.items():
        for key, value in row.items():
            assert torch.equal(got[pid][key], value), (pid, key)
    gc.collect()
    assert not (_states(loader) == LIVE).any()  # every delivered slot went free


def test_held_batches_stay_intact_and_slots_come_back(split):
    """A consumer that keeps every batch: workers fall back, values stay right; freed slots are reused."""
    loader = make_loader(split, "mlm", batch_size=8, seed=1, num_workers=2, pin_memory=False)
    held = list(loader)  # more batches than slots
    again = list(make_loader(split, "mlm", batch_size=8, seed=1))
    assert len(held) == len(again) == len(loader)
    by_pid = {p: b["input_ids"][i] for b in again for i, p in enumerate(b["processid"])}
    for batch in held:
        for i, pid in enumerate(batch["processid"]):
            assert torch.equal(batch["input_ids"][i], by_pid[pid])
    assert (_states(loader) == LIVE).any()
    del held, batch
    gc.collect()
    assert not (_states(loader) == LIVE).any()


def test_an_epoch_left_early_gives_its_slots_back(split):
    loader = make_loader(split, "mlm", batch_size=8, seed=1, num_workers=2, pin_memory=False, prefetch_factor=2)
    for _ in range(3):
        for i, _batch in enumerate(loader):
            if i == 2:
                break
    del _batch
    gc.collect()
    n = sum(1 for _ in loader)  # a whole epoch after three left early
    assert n == len(loader)
    gc.collect()
    states = _states(loader)
    assert not (states == LIVE).any()
    stale = (states != 0) & (states < loader.arena._iteration[0])
    assert stale.sum() <= loader.arena.workers * loader.arena.slots  # at most one iteration's prefetch, reusable


def test_pinned_batches_use_the_dataloader_hand_over(split):
    """The DataLoader's pin thread copies each batch anyway: no slots then (and none without workers)."""
    assert make_loader(split, "mlm", batch_size=8, num_workers=1, pin_memory=False).arena is not None
    assert make_loader(split, "mlm", batch_size=8, num_workers=1, pin_memory=True).arena is None
    assert make_loader(split, "mlm", batch_size=8, num_workers=0, pin_memory=False).arena is None


def test_groups_cut_back_into_the_same_batches(split, monkeypatch):
    """Batches joined for one tokenizer call and one hand-over come out exactly as made one by one."""
    from bioscan_io import loader as loader_module

    def batches():
        out = []
        for batch in make_loader(split, "mlm", batch_size=7, seed=2):
            out.append((batch["processid"], {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}))
        return out

    grouped = batches()
    monkeypatch.setattr(loader_module, "GROUP_BATCHES", 1)
    single = batches()
    assert len(grouped) == len(single)
    for (pids, tensors), (pids1, tensors1) in zip(grouped, single):
        assert pids == pids1
        for key in tensors1:
            assert torch.equal(tensors[key], tensors1[key])


def test_no_slots_when_shared_memory_is_short(split, monkeypatch, caplog):
    """A container's small /dev/shm: PyTorch's hand-over (and one line saying so), never SIGBUS."""
    monkeypatch.setattr(handover, "_shm_free", lambda: 64 << 20)
    with caplog.at_level("INFO", logger="bioscan_io"):
        loader = make_loader(split, "classify", modality="image", batch_size=64, num_workers=2, pin_memory=False)
    assert loader.arena is None
    assert "--shm-size" in caplog.text
    assert sum(len(b["processid"]) for b in loader) == 400
    monkeypatch.setattr(handover, "_shm_free", lambda: None)  # unknown (not Linux): no check
    assert make_loader(split, "mlm", batch_size=64, num_workers=2, pin_memory=False).arena is not None


# ----------------------------------------------------------------------------- without workers: reused buffers


def test_batch_buffers_reuse_only_what_nothing_holds():
    """A buffer goes back when the last tensor, view, array or saved-for-backward tensor over it is gone."""
    import pickle

    buffers = handover.BatchBuffers(slots=2)
    a = buffers.empty((4, 3, 8, 8), torch.float32)
    a.fill_(1)
    b = buffers.empty((4, 3, 8, 8), torch.float32)
    assert a.data_ptr() != b.data_ptr() and buffers.held() == 2
    assert buffers.empty((4, 3, 8, 8), torch.float32) is None  # both held: the caller allocates
    ptr_a = a.data_ptr()
    kept = [a[1:3], a.numpy(), a.untyped_storage()]
    del a
    gc.collect()
    assert buffers.held() == 2
    for holder in range(len(kept)):
        kept[holder] = None
        gc.collect()
        assert buffers.held() == (2 if holder < len(kept) - 1 else 1)
    c = buffers.empty((2, 3, 8, 8), torch.uint8)  # a smaller batch: a prefix of the free buffer
    assert c.data_ptr() == ptr_a and c.shape == (2, 3, 8, 8)
    # a tensor autograd saved for backward holds the buffer (its Python object may be long gone)
    weight = torch.ones(2, 3, 3, 3, requires_grad=True)
    x = buffers.empty((1, 3, 8, 8), torch.float32) if c is None else None
    del b, c
    gc.collect()
    x = buffers.empty((1, 3, 8, 8), torch.float32)
    x.fill_(2)
    y = torch.nn.functional.conv2d(x, weight)
    del x
    gc.collect()
    assert buffers.held() == 1
    other = buffers.empty((1, 3, 8, 8), torch.float32)
    other.fill_(-5)  # the other buffer: the saved input is intact
    y.sum().backward()
    assert torch.equal(weight.grad, torch.full_like(weight, 2 * 36))
    del y, other
    gc.collect()
    assert buffers.held() == 0
    copy = pickle.loads(pickle.dumps(buffers))
    assert copy.slots == 2 and copy._buffers == [] and len(buffers._buffers) == 2
    bigger = buffers.empty((8, 3, 8, 8), torch.float32)  # a free buffer too small is replaced
    assert bigger is not None and len(buffers._buffers) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_float32_batches_are_normalize_of_uint8_bit_for_bit(split, workers):
    """image_dtype="float32" gives exactly images.normalize of the uint8 batches, with and without workers."""
    from bioscan_io.images import normalize

    kw = dict(modality="image", batch_size=16, seed=3, train=True)
    base = _values(make_loader(split, "classify", **kw))
    got = _values(make_loader(split, "classify", image_dtype="float32", num_workers=workers, pin_memory=False, **kw))
    assert got.keys() == base.keys() and len(got) == 400
    for pid, row in base.items():
        want = normalize(row["image"][None])[0]
        assert got[pid]["image"].dtype == torch.float32
        assert torch.equal(got[pid]["image"].view(torch.int32), want.view(torch.int32)), pid


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_without_workers_batches_reuse_two_buffers_and_kept_ones_stay_intact(split, dtype):
    """num_workers=0: a plain loop cycles through two buffers; a batch kept (whole, as a view, as numpy, or
    saved by autograd) is never written again, and its buffer comes back once it is dropped."""
    kw = dict(modality="image", batch_size=16, seed=4, image_dtype=dtype)
    loader = make_loader(split, "classify", **kw)
    task = loader.dataset.task
    ptrs = [batch["image"].data_ptr() for batch in loader]
    assert len(ptrs) == 25 and len(set(ptrs)) == 2 and task._buffers.held() <= 1

    buffers = task._buffers = handover.BatchBuffers(slots=10)  # the first 10 kept batches lie in reused buffers
    kept, copies = [], []
    weight = torch.ones(1, 3, 1, 1, requires_grad=True)
    for i, batch in enumerate(loader):
        image = batch["image"]
        copies.append(image.clone())
        if i % 4 == 0:
            kept.append(image)
        elif i % 4 == 1:
            kept.append(image[3:9])
        elif i % 4 == 2:
            kept.append(image.numpy())
        elif dtype == "float32":
            kept.append(torch.nn.functional.conv2d(image, weight))  # the graph keeps the input
        else:
            kept.append(image.view(-1))
    del batch, image
    gc.collect()
    assert buffers.held() == 10  # every buffer held by a kept batch: the later ones were made in new memory
    for i, item in enumerate(kept):
        if i % 4 == 0:
            assert torch.equal(item, copies[i])
        elif i % 4 == 1:
            assert torch.equal(item, copies[i][3:9])
        elif i % 4 == 2:
            assert np.array_equal(item, copies[i].numpy())
        elif dtype == "float32":
            item.sum().backward()
            again = torch.ones(1, 3, 1, 1, requires_grad=True)
            torch.nn.functional.conv2d(copies[i], again).sum().backward()  # the same on the copy made then
            assert torch.equal(weight.grad, again.grad)
            weight.grad = None
        else:
            assert torch.equal(item, copies[i].view(-1))
    del kept, item
    gc.collect()
    assert buffers.held() == 0

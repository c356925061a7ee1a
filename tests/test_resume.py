"""Canonical epochs and loader state: batches independent of num_workers, exact mid-epoch resume, elastic resume."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioscan_io.format import read_manifest
from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split

HERE = Path(__file__).resolve().parent
QUIET = dict(progress=False, log=lambda m: None)

#: The tasks of must-show 1, with what makes them take images.
TASKS = {"mlm": {}, "classify": {"modality": "image"}, "clip": {}}


@pytest.fixture(scope="module")
def split(dataset_small, tmp_path_factory) -> Path:
    """The 400-record dataset in 14 shards of at most 30."""
    out = tmp_path_factory.mktemp("resume-shards")
    return Path(shard_split(dataset_small, "all", out=out, maxcount=30, **QUIET).folder)


def batches(loader, limit: int | None = None) -> list[dict]:
    """The loader's batches (up to ``limit``), copied out of the hand-over slots."""
    out = []
    for batch in loader:
        out.append({k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in batch.items()})
        if limit is not None and len(out) == limit:
            break
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@pytest.mark.parametrize("task", sorted(TASKS))
def test_batches_do_not_depend_on_num_workers(split, task):
    """Which samples, in which order, with which masks and crops: the same for 0, 1, 2 and 3 workers."""
    runs = {}
    for workers in (0, 1, 2, 3):
        loader = make_loader(split, task, batch_size=24, num_workers=workers, seed=5, epoch=2, **TASKS[task])
        runs[workers] = batches(loader)
        assert len(runs[workers]) == len(loader)
    for workers in (1, 2, 3):
        assert_same(runs[0], runs[workers])
    pids = [p for b in runs[0] for p in b["processid"]]
    assert len(pids) == 400 == len(set(pids))


def test_canonical_order_holds_for_dataloader_settings(split):
    """persistent_workers, prefetch_factor and pin_memory do not change the batches either."""
    base = batches(make_loader(split, "mlm", batch_size=16, seed=1))
    for kw in ({"persistent_workers": False, "prefetch_factor": 1}, {"prefetch_factor": 5},
               {"pin_memory": True}):
        assert_same(base, batches(make_loader(split, "mlm", batch_size=16, seed=1, num_workers=2, **kw)))


def interrupted(split, k: int, *, task="mlm", workers=2, resume_workers=None, epoch=0, **kw):
    """Run ``k`` batches, save the state (through JSON), resume in a new loader: the rest of the epoch."""
    first = make_loader(split, task, batch_size=16, num_workers=workers, seed=3, **kw)
    first.set_epoch(epoch)
    head = batches(first, k) if k else []
    state = json.loads(json.dumps(first.state_dict()))
    again = make_loader(split, task, batch_size=16, seed=3,
                        num_workers=workers if resume_workers is None else resume_workers, **kw)
    again.load_state_dict(state)
    return head, again


@pytest.mark.parametrize("k", [0, 1, 7, 24, 25])
def test_resume_mid_epoch_is_bit_identical(split, k):
    """Interrupt after batch k (0, the middle, the one before the last, the last): the rest equals the uninterrupted run."""
    whole = batches(make_loader(split, "mlm", batch_size=16, num_workers=2, seed=3))
    assert len(whole) == 25
    head, again = interrupted(split, k)
    assert_same(head, whole[:k])
    assert_same(batches(again), whole[k:])


@pytest.mark.parametrize("task", ["classify", "clip"])
def test_resume_with_images_and_other_num_workers(split, task):
    whole = batches(make_loader(split, task, batch_size=16, seed=3, **TASKS[task]))
    head, again = interrupted(split, 10, task=task, workers=3, resume_workers=1, **TASKS[task])
    assert_same(head + batches(again), whole)


def test_resume_with_persistent_workers_twice_and_after_set_epoch(split):
    """Persistent workers; a second interruption of the resumed run; a state saved in epoch 1."""
    loader = make_loader(split, "mlm", batch_size=16, num_workers=2, seed=3, persistent_workers=True)
    loader.set_epoch(1)
    whole = batches(loader)
    head, again = interrupted(split, 6, epoch=1, persistent_workers=True)
    again.set_epoch(1)  # a trainer sets the epoch it resumes: the position is kept
    middle = batches(again, 9)
    third = make_loader(split, "mlm", batch_size=16, num_workers=1, seed=3, persistent_workers=True)
    third.load_state_dict(again.state_dict())
    assert third.state_dict() == again.state_dict()
    rest = batches(third)
    assert_same(head + middle + rest, whole)
    # The resumed loader goes on to full epochs: the same epoch again, then the next one.
    assert_same(batches(third), whole)
    # A state loaded into a loader whose persistent workers already ran reaches them too.
    loader.load_state_dict(json.loads(json.dumps(again.state_dict())))
    assert_same(batches(loader), rest)
    third.set_epoch(2)
    loader.set_epoch(2)
    assert_same(batches(third), batches(loader))


def test_state_at_an_epoch_boundary(split):
    loader = make_loader(split, "mlm", batch_size=16, num_workers=2, seed=3)
    epoch0 = batches(loader)
    done = loader.state_dict()  # epoch 0, every batch yielded
    loader.set_epoch(1)
    fresh = loader.state_dict()  # epoch 1, none yielded
    epoch1 = batches(loader)
    resumed = make_loader(split, "mlm", batch_size=16, seed=3)
    resumed.load_state_dict(done)
    assert batches(resumed) == []  # the rest of epoch 0 is empty
    resumed.set_epoch(1)
    assert_same(batches(resumed), epoch1)
    resumed.load_state_dict(fresh)
    assert_same(batches(resumed), epoch1)
    assert len(epoch0) == len(epoch1) == len(resumed)


def test_resume_does_not_read_the_skipped_batches(split, monkeypatch):
    """A seek, not a replay: the rows of the batches before the state are never read."""
    from bioscan_io import reader

    head, again = interrupted(split, 20, workers=0)
    read = []
    original = reader.read_rows
    monkeypatch.setattr(reader, "read_rows", lambda *a, **kw: read.append(len(a[2])) or original(*a, **kw))
    rest = batches(again)
    assert len(rest) == 5 and sum(read) == sum(len(b["processid"]) for b in rest)


# ----------------------------------------------------------------------------- elastic


def phase(split, world: int, batch: int, k: int | None, states=None, **kw):
    """Every rank of one phase: ``k`` batches each (None: to the end), after ``states``; (pids, labels, states)."""
    pids, labels, saved, counts = [], {}, [], []
    for rank in range(world):
        loader = make_loader(split, "mlm", batch_size=batch, seed=3, rank=rank, world_size=world, **kw)
        if states is not None:
            loader.load_state_dict(states)
        got = batches(loader, k)
        counts.append(len(got))
        for b in got:
            pids += b["processid"]
            labels.update(zip(b["processid"], b["labels"]))
        saved.append(loader.state_dict())
    assert len(set(counts)) == 1, counts  # equal batches on every rank
    return pids, labels, saved


@pytest.mark.parametrize("old,new,batch2", [(4, 2, 16), (4, 3, 16), (3, 2, 16), (2, 3, 10), (3, 3, 7)])
def test_elastic_resume_sees_every_sample_once(split, old, new, batch2):
    """4 ranks -> 2 or 3 (also with another batch size): the rest of the epoch is what was not yet seen."""
    total = read_manifest(split)["num_samples"]
    _, whole_labels, _ = phase(split, 1, 16, None)
    first, labels1, states = phase(split, old, 16, 3)
    second, labels2, _ = phase(split, new, batch2, None, states=states[0])  # rank 0's state is enough
    assert len(first) == old * 3 * 16
    seen = collections.Counter(first + second)
    assert set(seen) == set(whole_labels) and len(seen) == total
    remaining = total - len(first)
    assert sum(seen.values()) - total == new * -(-remaining // new) - remaining < new  # the usual padding
    assert not set(first) & set(second)  # none twice across the interruption
    for pid, row in {**labels1, **labels2}.items():  # the masks of an uninterrupted run
        assert torch.equal(row, whole_labels[pid])


def test_elastic_twice_and_merged_states(split):
    """4 ranks -> 3 -> 2, the second time from every rank's state merged."""
    total = read_manifest(split)["num_samples"]
    first, _, states = phase(split, 4, 8, 2)
    second, _, states = phase(split, 3, 8, 4, states=states[0])
    third, _, _ = phase(split, 2, 8, None, states=states)
    seen = collections.Counter(first + second + third)
    assert len(seen) == total
    assert sum(seen.values()) - total < 2


def test_states_that_do_not_fit_are_refused_in_one_line(split, dataset_small, tmp_path):
    state = make_loader(split, "mlm", batch_size=16, seed=3).state_dict()
    other = Path(shard_split(dataset_small, "all", out=tmp_path, maxcount=40, **QUIET).folder)
    cases = [
        (make_loader(other, "mlm", batch_size=16, seed=3), r"shards: the state's are 14 shard\(s\), 400 samples"),
        (make_loader(split, "mlm", batch_size=16, seed=4), r"seed 3 in the state, 4 here"),
        (make_loader(split, "clip", batch_size=16, seed=3), r"task 'mlm' in the state, 'clip' here"),
    ]
    for loader, message in cases:
        with pytest.raises(BioscanError, match=message) as err:
            loader.load_state_dict(state)
        assert "\n" not in str(err.value)
    loader = make_loader(split, "mlm", batch_size=16, seed=3)
    for bad, message in (({**state, "bioscan_io_loader_state": 9}, "version 9"), ({"epoch": 1}, "not a bioscan-io"),
                         ({**state, "phases": [{"world_size": 2}]}, "malformed"),
                         ([state, {**state, "rank": 0}], "one state per rank")):
        with pytest.raises(BioscanError, match=message):
            loader.load_state_dict(bad)


def test_elastic_resume_under_torchrun(split, tmp_path):
    """gloo: 3 ranks run half an epoch and save; 2 ranks resume from rank 0's state."""
    total = read_manifest(split)["num_samples"]
    first = _torchrun(split, tmp_path, 3, "resume-save")
    second = _torchrun(split, tmp_path, 2, "resume-load")
    assert len({r["batches"] for r in first}) == 1 and len({r["batches"] for r in second}) == 1
    assert first[0]["batches"] == first[0]["len"] // 2
    seen = collections.Counter(p for r in first + second for p in r["pids"])
    assert len(seen) == total
    remaining = total - sum(len(r["pids"]) for r in first)
    assert sum(seen.values()) - total == 2 * -(-remaining // 2) - remaining
    whole = make_loader(split, "mlm", batch_size=8, seed=3)
    masks = {p: row.tolist() for b in whole for p, row in zip(b["processid"], b["labels"])}
    for r in first + second:
        for pid, row in zip(r["pids"], r["labels"]):
            assert row == masks[pid]


def _torchrun(urls: Path, out: Path, world: int, task: str):
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(HERE / "dist_worker.py"), str(urls), str(out), task, "2", "8", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for r in range(world):
        (out / f"rank{r}.json").unlink()
    return results


# ----------------------------------------------------------------------------- the plan's arithmetic


@pytest.mark.parametrize("world,block", [(1, None), (3, None), (4, 7), (5, 1)])
def test_rank_streams_cover_the_epoch_once_in_permuted_blocks(world, block):
    from bioscan_io import plan

    counts = [13, 0, 29, 8, 21]
    total = sum(counts)
    streams = [plan.RankStream(counts, 2, 1, r, world, block, True) for r in range(world)]
    assert len({len(s) for s in streams}) == 1
    seen = collections.Counter()
    for s in streams:
        shard, row, padding = s.positions(0, len(s))
        assert not padding[:s.real].any() and padding[s.real:].all()  # padding only at the end
        seen.update(zip(shard[:s.real].tolist(), row[:s.real].tolist()))
        # Arbitrary slices agree with the whole.
        a, z = len(s) // 3, len(s) - 1
        part = s.positions(a, z)
        assert part[0].tolist() == shard[a:z].tolist() and part[1].tolist() == row[a:z].tolist()
    assert seen == collections.Counter((i, r) for i, c in enumerate(counts) for r in range(c))
    assert sum(len(s) - s.real for s in streams) == world * -(-total // world) - total


def test_remainder_is_what_was_not_yielded_cut_again():
    from bioscan_io import plan

    counts = [40, 25, 35]
    old = [plan.RankStream(counts, 0, 0, r, 4, 10, True) for r in range(4)]
    starts, ends = [8, 8, 16, 0], [len(s) for s in old]
    new = [plan.Remainder(old, starts, ends, r, 3) for r in range(3)]
    left = [tuple(x) for s, a in zip(old, starts) for x in zip(*[v[a:].tolist() for v in s.positions(0, len(s))[:2]])]
    got = [tuple(x) for s in new for x, pad in zip(zip(*[v.tolist() for v in s.positions(0, len(s))[:2]]),
                                                   s.positions(0, len(s))[2]) if not pad]
    assert got == left  # in rank order, nothing lost, nothing added
    assert len({len(s) for s in new}) == 1 and sum(len(s) - s.real for s in new) == 3 * -(-len(left) // 3) - len(left)


@pytest.mark.parametrize("start,total,group,workers", [(0, 20, 16, 2), (0, 40, 16, 2), (3, 41, 4, 3), (0, 1, 16, 4),
                                                       (5, 5, 16, 2), (0, 79, 16, 1)])
def test_items_cover_the_batches_in_order_and_share_out_the_tail(start, total, group, workers):
    from bioscan_io.plan import item_bounds

    bounds = item_bounds(start, total, group, workers)
    assert [b for a, z in bounds for b in range(a, z)] == list(range(start, total))
    assert all(0 < z - a <= group for a, z in bounds)
    made = [sum(z - a for i, (a, z) in enumerate(bounds) if i % workers == w) for w in range(workers)]
    assert max(made) - min(made) <= 1  # no worker left with the whole tail

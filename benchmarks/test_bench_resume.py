"""Time to the first batch of a resumed epoch next to a fresh one (issue 14).

    BIOSCAN_BENCH_STRICT=1 python -m pytest benchmarks/test_bench_resume.py -s -q

The loader benchmarks' generated split (``conftest.loader_split``: 20,000 records
with ``cropped_256`` images, 1,000-sample shards with their indexes). For each
workload, MLM (``task="mlm"``, batches of 256) and classify-by-image
(``task="classify", modality="image"``, batches of 64), and ``num_workers`` 0 and
2, a state is saved once, untimed: a loader yields 90% of ``len(loader)``
batches and ``state_dict()`` is taken (the batch it yields next is kept, to check
the resumed one). Then, in interleaved rounds (``rounds.interleaved``), each timed
from ``make_loader`` to the first batch in hand:

- fresh: ``make_loader``, ``iter``, ``next``;
- resumed: ``make_loader``, ``load_state_dict(state)``, ``iter``, ``next`` (a
  seek: only the remaining batches' rows are read; the batch must be the one the
  saving loader yielded after its state).

Both start like a new process would: the process's table of open indexes is
emptied before each (files stay in the page cache), and with workers the
loader's workers are started by the ``iter`` (not persistent across rounds);
loaders are shut down outside the timing. One warm-up round is not counted.

Target (issue 14; asserted with ``BIOSCAN_BENCH_STRICT=1``, on the median over
rounds of resumed / fresh within a round, ``rounds.paired``): a resumed epoch's
first batch within 2x a fresh epoch's.

``pytest benchmarks --benchmark-disable`` runs it on 600 records with one round,
nothing asserted. ``BIOSCAN_BENCH_RESUME_ROUNDS`` sets the rounds (default 15).
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import pytest
from rounds import paired, run_interleaved

STRICT = os.environ.get("BIOSCAN_BENCH_STRICT", "") not in ("", "0")
ROUNDS = int(os.environ.get("BIOSCAN_BENCH_RESUME_ROUNDS", "15"))
AT = 0.9  # the saved state's place in the epoch
WORKLOADS = {
    "mlm": dict(task="mlm", batch_size=256),
    "image": dict(task="classify", modality="image", batch_size=64),
}


def _forget_open_indexes() -> None:
    """Empty the process's table of open indexes (bioscan_io.format.index), as in a new process."""
    from bioscan_io.format import index

    index._OPEN.clear()


def _shut(loader, it) -> None:
    """Stop an iteration and its loader's workers."""
    it.close()
    dataloader_iter = getattr(loader.dataloader, "_iterator", None)
    if dataloader_iter is not None and hasattr(dataloader_iter, "_shutdown_workers"):
        dataloader_iter._shutdown_workers()
    gc.collect()


def saved_state(split, workers: int, kwargs: dict) -> tuple[dict, list[str], list[str], int, int]:
    """``(state, first ids of batch 0, first ids of the batch after the state, batches, saved at)``."""
    from bioscan_io.loader import make_loader

    loader = make_loader(str(split), num_workers=workers, seed=0, **kwargs)
    at = int(AT * len(loader))
    it = iter(loader)
    first = next(it)["processid"][:8]
    for _ in range(at - 1):
        next(it)
    state = loader.state_dict()
    after = next(it)["processid"][:8]
    total = len(loader)
    _shut(loader, it)
    return state, first, after, total, at


class FirstBatch:
    """A pipeline for ``rounds.interleaved``: ``epoch()`` times a new loader's first batch, fresh or resumed."""

    def __init__(self, split, workers: int, kwargs: dict, state: dict | None, expect: list[str]):
        self.split, self.workers, self.kwargs = str(split), workers, kwargs
        self.state, self.expect = state, expect

    def epoch(self) -> tuple[float, int]:
        from bioscan_io.loader import make_loader

        _forget_open_indexes()
        gc.collect()
        t0 = time.perf_counter()
        loader = make_loader(self.split, num_workers=self.workers, seed=0, **self.kwargs)
        if self.state is not None:
            loader.load_state_dict(self.state)
        it = iter(loader)
        batch = next(it)
        seconds = time.perf_counter() - t0
        assert batch["processid"][:8] == self.expect, "not the batch expected"
        _shut(loader, it)
        return seconds, 1

    def close(self):
        pass


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_time_to_first_batch_resumed_vs_fresh(loader_split, smoke, workload, workers):
    """Resumed at 90% of the epoch vs a fresh epoch: new loader to first batch, interleaved rounds."""
    kwargs = WORKLOADS[workload]
    split = loader_split["split"]
    state, first, after, total, at = saved_state(split, workers, kwargs)
    rounds = 1 if smoke else ROUNDS
    t = run_interleaved(rounds + 1,
                        fresh=lambda: FirstBatch(split, workers, kwargs, None, first),
                        resumed=lambda: FirstBatch(split, workers, kwargs, state, after))
    t = {k: v[1:] for k, v in t.items()}  # the warm-up round
    ratio = paired(t, "resumed", "fresh")
    name = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    print(f"\ntime to first batch, make_loader({name}, num_workers={workers}), {loader_split['n']:,} samples, "
          f"{total} batches; resumed at batch {at} ({rounds} rounds):")
    for key in ("fresh", "resumed"):
        print(f"  {key:8s} {statistics.median(t[key]) * 1e3:8.1f} ms (median)  {min(t[key]) * 1e3:8.1f} ms (best)")
    print(f"  resumed / fresh: {ratio:.2f}x (median of per-round ratios; target <= 2x)")
    if STRICT and not smoke:
        assert ratio <= 2, f"resumed first batch {ratio:.2f}x a fresh one's > 2x"

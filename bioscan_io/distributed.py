"""Rank and world size, and the exact assignment of an epoch's samples.

An epoch is one pass over the concatenation of the shards in a seeded order
(a new order each epoch). That sample stream is cut into equal contiguous
ranges, one per rank, so ranks are disjoint and yield the same number of
batches (DDP never waits on a rank that ran out, and a collective per batch
never hangs). When the sample count does not divide by the world size, the
stream wraps around: fewer than ``world_size`` samples are seen twice in that
epoch ("padding repeats", as torch's DistributedSampler does), or, with
``pad=False``, are marked ``valid=False`` in their batch so that
:func:`all_gather_valid` drops them. Each rank's range is then cut into
per-worker ranges on batch boundaries, so a rank yields at most one partial
batch, whatever its number of DataLoader workers.

Everything here is plain arithmetic on the manifest's counts: no sample is
read to plan an epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


__all__ = ["world_info", "Segment", "shard_order", "rank_range", "batches_per_rank", "worker_range", "segments",
           "all_gather_valid", "all_gather_valid_objects"]

def world_info() -> tuple[int, int]:
    """``(rank, world_size)``: from torch.distributed when initialised, else the
    environment torchrun sets (``RANK``, ``WORLD_SIZE``), else ``(0, 1)``."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass(frozen=True)
class Segment:
    """Samples ``start <= i < stop`` (positions within the shard) of one shard.

    ``padding``: the segment lies past the end of the epoch's stream (repeats
    that only make the ranks' batch counts equal).
    """

    shard: int
    start: int
    stop: int
    padding: bool = False


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which an epoch visits the shards."""
    if not shuffle:
        return np.arange(n_shards)
    return np.random.default_rng([seed, epoch]).permutation(n_shards)


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of a rank in the epoch's sample stream.

    Every rank gets ``ceil(total / world_size)`` positions; positions past
    ``total`` wrap to the start (padding: repeats, or with ``pad=False`` rows
    marked ``valid=False``), so every rank yields the same batches.
    """
    per_rank = -(-total // world_size)
    return rank * per_rank, (rank + 1) * per_rank


def batches_per_rank(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many batches each rank yields in one epoch (the same on every rank)."""
    n = -(-total // world_size)
    return n // batch_size if drop_last else -(-n // batch_size)


def worker_range(start: int, stop: int, batch_size: int, worker: int, num_workers: int, drop_last: bool) -> tuple[int, int]:
    """A worker's share of a rank's positions, cut on batch boundaries."""
    n = stop - start
    n_batches = n // batch_size if drop_last else -(-n // batch_size)
    first = worker * n_batches // num_workers
    last = (worker + 1) * n_batches // num_workers
    return start + min(first * batch_size, n), start + min(last * batch_size, n)


def segments(counts, order: np.ndarray, start: int, stop: int) -> list[Segment]:
    """The shard segments that make up positions ``[start, stop)`` of the stream.

    The stream is the shards in ``order``, repeated as often as needed (only
    padding reaches past its end).
    """
    counts = np.asarray(counts, dtype=np.int64)[order]
    total = int(counts.sum())
    if total == 0 or stop <= start:
        return []
    ends = np.cumsum(counts)
    begins = ends - counts
    out: list[Segment] = []
    pos = start
    while pos < stop:
        offset = pos % total
        i = int(np.searchsorted(ends, offset, side="right"))
        take = min(int(ends[i]) - offset, stop - pos)
        local = offset - int(begins[i])
        out.append(Segment(int(order[i]), local, local + take, pos >= total))
        pos += take
    return out


def _initialized():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_gather_valid(tensor, valid):
    """Every rank's rows of ``tensor`` where ``valid`` is True, concatenated in rank order.

    One collective per call, on every rank alike: call it for every batch (the
    loader gives every rank the same batches, padded with ``valid=False`` rows
    under ``pad=False``), and the result is each record exactly once. Without
    ``torch.distributed`` initialised, the local valid rows.

    Parameters
    ----------
    tensor : torch.Tensor
        ``(batch, ...)`` on the device the process group communicates on.
    valid : torch.Tensor
        ``(batch,)`` bool, the batch's ``valid``.
    """
    import torch

    dist = _initialized()
    valid = valid.to(device=tensor.device, dtype=torch.bool)
    if dist is None:
        return tensor[valid]
    world = dist.get_world_size()
    parts, masks = [torch.empty_like(tensor) for _ in range(world)], [torch.empty_like(valid) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    dist.all_gather(masks, valid.contiguous())
    return torch.cat([part[mask] for part, mask in zip(parts, masks)])


def all_gather_valid_objects(values: list, valid) -> list:
    """:func:`all_gather_valid` for a list of Python objects (processids)."""
    keep = [v for v, ok in zip(values, valid.tolist()) if ok]
    dist = _initialized()
    if dist is None:
        return keep
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, keep)
    return [v for part in gathered for v in part]

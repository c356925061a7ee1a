"""The epoch plan: which samples each rank yields, in which batches, in which order.

An epoch is one pass over the concatenation of the shards in a seeded order
(a new order each epoch). That sample stream is cut into equal contiguous
ranges, one per rank, so ranks are disjoint and yield the same number of
batches (DDP never waits on a rank that ran out, and a collective per batch
never hangs). When the sample count does not divide by the world size, the
stream wraps around: fewer than ``world_size`` positions are padding, seen
twice in that epoch ("padding repeats", as torch's DistributedSampler does), or,
with ``pad=False``, marked ``valid=False`` in their batch.

A rank's range is cut at shard boundaries and into blocks of ``block_rows``
(the shuffle window), and each block is permuted by a generator keyed by
(seed, epoch, the block's place in the stream): the rank's **canonical
stream**. Its batches are consecutive slices of it, and items (groups of
``group`` batches, made and handed over together) go to DataLoader workers in
turn: worker ``w`` of ``W`` makes items ``w, w + W, ...``, which is the order
the DataLoader hands them out. So the batches of an epoch, their samples and
their order, depend on (seed, epoch, world size, batch size) only, never on
``num_workers``; and a resumed epoch is a seek to a batch, not a replay.

A resume on another world size or batch size (:class:`Remainder`) takes what
each rank of the interrupted run had not yet yielded, in rank order, and cuts
it again over the new ranks; a run interrupted several times is a chain of
such phases. Everything here is arithmetic on the manifest's counts: no
sample is read to plan an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "shard_order", "rank_range", "batches_per_rank", "segments", "RankStream", "Remainder",
           "Phase", "rank_stream", "Item", "items", "item_bounds"]


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
    ``total`` wrap to the start (padding), so every rank yields the same batches.
    """
    per_rank = -(-total // world_size)
    return rank * per_rank, (rank + 1) * per_rank


def n_batches(length: int, batch_size: int, drop_last: bool) -> int:
    """Batches of ``batch_size`` cut from ``length`` samples."""
    return length // batch_size if drop_last else -(-length // batch_size)


def batches_per_rank(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many batches each rank yields in one epoch (the same on every rank)."""
    return n_batches(-(-total // world_size), batch_size, drop_last)


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


# ----------------------------------------------------------------------------- streams
#
# A stream is a rank's samples of one epoch phase, in order: ``len(stream)``
# positions, of which the first ``stream.real`` are samples of the epoch and the
# rest padding; ``stream.positions(lo, hi)`` gives the (shard, row, padding)
# arrays of positions ``lo <= p < hi``.


#: Blocks whose rows a stream keeps (RankStream.block_rows): those an item shares with the next.
_KEPT_BLOCKS = 4


class RankStream:
    """One rank's canonical stream of an epoch: its range, in shard segments, each block permuted.

    Parameters
    ----------
    counts : sequence of int
        Samples per shard (the manifest's counts).
    seed, epoch : int
        Select the shard order and the permutation of each block.
    rank, world_size : int
        Which range of the epoch's stream.
    block_rows : int or None
        Samples permuted together (None: whole shard segments).
    shuffle : bool
        Shuffle shard order and blocks (False: the shards' own order).
    """

    def __init__(self, counts, seed: int, epoch: int, rank: int, world_size: int, block_rows: int | None,
                 shuffle: bool):
        total = int(np.sum(counts, dtype=np.int64))
        order = shard_order(len(counts), seed, epoch, shuffle)
        start, stop = rank_range(total, rank, world_size)
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.real = max(0, min(stop, total) - start)
        blocks = []  # (offset in this stream, shard, first row, rows, place in the epoch's stream, padding)
        at = 0
        for seg in segments(counts, order, start, stop):
            step = block_rows or (seg.stop - seg.start)
            for row in range(seg.start, seg.stop, step):
                rows = min(step, seg.stop - row)
                blocks.append((at, seg.shard, row, rows, start + at, seg.padding))
                at += rows
        self._blocks = np.array(blocks, np.int64).reshape(-1, 6)
        self._at, self._rows = self._blocks[:, 0].tolist(), self._blocks[:, 3].tolist()  # read per item: as ints
        self._length = at
        self._permuted: dict[int, np.ndarray] = {}  # the last blocks' rows (block_rows)

    def __len__(self) -> int:
        return self._length

    def block_rows(self, b: int) -> np.ndarray:
        """The rows of block ``b`` in stream order (permuted when shuffling); read-only.

        A block is usually cut by an item's end, so the next item needs it again:
        the last few are kept (a generator and a permutation each cost about as
        much as reading the rows from the index).
        """
        got = self._permuted.get(b)
        if got is not None:
            return got
        _, _, row, rows, place, _ = self._blocks[b]
        if not self.shuffle:
            got = np.arange(row, row + rows)
        else:
            got = row + np.random.default_rng([self.seed, self.epoch, int(place)]).permutation(int(rows))
        got.flags.writeable = False
        if len(self._permuted) >= _KEPT_BLOCKS:
            del self._permuted[next(iter(self._permuted))]
        self._permuted[b] = got
        return got

    def positions(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shard, row, padding)`` of stream positions ``lo <= p < hi``."""
        starts = self._blocks[:, 0]
        first = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
        last = int(np.searchsorted(starts, hi, side="left"))  # the blocks that start before hi
        if last <= first:
            return _joined([], [], [])
        row, counts = [], []
        for b, at, rows in zip(range(first, last), self._at[first:last], self._rows[first:last]):
            a, z = max(lo - at, 0), min(hi - at, rows)
            row.append(self.block_rows(b)[a:z])
            counts.append(z - a)
        # Shard and padding are per block: repeated, not made block by block.
        return (np.repeat(self._blocks[first:last, 1].astype(np.int32), counts),
                np.concatenate(row).astype(np.int64, copy=False),
                np.repeat(self._blocks[first:last, 5].astype(bool), counts))


class Remainder:
    """What the ranks of an interrupted phase had still to yield, in rank order, cut again over new ranks.

    Parameters
    ----------
    streams : list
        Every rank's stream of the interrupted phase.
    starts, ends : list of int
        Per old rank, the first position not yet yielded and the end of what it
        would have yielded (padding excluded: the new cut pads afresh).
    rank, world_size : int
        Which range of the remainder, as :func:`rank_range` cuts an epoch.
    """

    def __init__(self, streams: list, starts: list[int], ends: list[int], rank: int, world_size: int):
        self._parts = [(s, a, max(a, z)) for s, a, z in zip(streams, starts, ends)]
        sizes = np.array([z - a for _, a, z in self._parts], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(self._offsets[-1])
        self._start, self._stop = rank_range(total, rank, world_size)
        self._total = total
        self.real = max(0, min(self._stop, total) - self._start)

    def __len__(self) -> int:
        return self._stop - self._start

    def positions(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shard, row, padding)`` of positions ``lo <= p < hi`` of this rank's share."""
        shard, row, padding = [], [], []
        pos, end = self._start + lo, self._start + hi
        while pos < end and self._total:
            offset = pos % self._total
            i = int(np.searchsorted(self._offsets, offset, side="right")) - 1
            stream, a, _ = self._parts[i]
            take = min(int(self._offsets[i + 1]) - offset, end - pos)
            at = a + offset - int(self._offsets[i])  # the position in that old rank's stream
            s, r, _ = stream.positions(at, at + take)
            shard.append(s)
            row.append(r)
            padding.append(np.full(take, pos >= self._total))
            pos += take
        return _joined(shard, row, padding)


def _joined(shard: list, row: list, padding: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not shard:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(shard), np.concatenate(row).astype(np.int64), np.concatenate(padding)


@dataclass(frozen=True)
class Phase:
    """A stretch of an epoch run on one layout, ended by an interruption.

    ``batches[r]``: batches rank ``r`` had yielded when the state was saved.
    """

    world_size: int
    batch_size: int
    batches: tuple[int, ...]


def rank_stream(counts, seed: int, epoch: int, block_rows: int | None, shuffle: bool, drop_last: bool,
                phases: list[Phase], rank: int, world_size: int):
    """This rank's stream of the epoch, after the interrupted ``phases`` (none: a fresh epoch)."""
    def base(r: int, world: int) -> RankStream:
        return RankStream(counts, seed, epoch, r, world, block_rows, shuffle)

    if not phases:
        return base(rank, world_size)
    streams: list[RankStream | Remainder] = [base(r, phases[0].world_size) for r in range(phases[0].world_size)]
    for i, phase in enumerate(phases):
        world = phases[i + 1].world_size if i + 1 < len(phases) else world_size
        starts = [c * phase.batch_size for c in phase.batches]
        ends = [min(s.real, n_batches(len(s), phase.batch_size, drop_last) * phase.batch_size) for s in streams]
        ranks = range(world) if i + 1 < len(phases) else [rank]
        streams = [Remainder(streams, starts, ends, r, world) for r in ranks]
    return streams[0]


@dataclass
class Item:
    """What one DataLoader item holds: consecutive batches of a rank's stream.

    ``sizes``: the batches' sizes; ``shard``, ``row``, ``padding``: their
    samples, in order (``sum(sizes)`` of them).
    """

    sizes: list[int]
    shard: np.ndarray
    row: np.ndarray
    padding: np.ndarray

    def runs(self):
        """``(shard, index)`` for each run of consecutive samples of one shard (``index``: a slice of the item)."""
        if not len(self.shard):
            return
        cuts = (np.flatnonzero(np.diff(self.shard)) + 1).tolist()
        for a, z in zip([0, *cuts], [*cuts, len(self.shard)]):
            yield int(self.shard[a]), slice(a, z)


def items(stream, batch_size: int, drop_last: bool, group: int, start: int, worker: int, num_workers: int):
    """Worker ``worker``'s items: batches ``start, start + 1, ...`` of ``stream`` in groups,
    every ``num_workers``-th."""
    length = len(stream)
    total = n_batches(length, batch_size, drop_last)
    for i, (first, last) in enumerate(item_bounds(start, total, group, num_workers)):
        if i % num_workers != worker:
            continue
        lo, hi = first * batch_size, min(last * batch_size, length)
        sizes = [min(batch_size, length - b * batch_size) for b in range(first, last)]
        yield Item(sizes, *stream.positions(lo, hi))


def item_bounds(start: int, total: int, group: int, num_workers: int) -> list[tuple[int, int]]:
    """``(first, last)`` batches of each item: ``group`` at a time, the last round shared out evenly.

    The items only say which worker makes which batches, never what a batch
    holds, so sharing out the last round (which would otherwise leave a short
    epoch's tail to one worker) keeps the batches canonical.
    """
    out, first = [], start
    while total - first >= num_workers * group:
        out += [(first + j * group, first + (j + 1) * group) for j in range(num_workers)]
        first += num_workers * group
    left = total - first
    cuts = [first + j * left // num_workers for j in range(num_workers + 1)]
    return out + [(a, z) for a, z in zip(cuts, cuts[1:]) if z > a]

"""``make_loader``: WebDataset pipelines for the tasks of the BIOSCAN-5M paper.

Each DataLoader worker runs one pipeline, a list of small stages over blocks
of rows (Arrow columns): no Python object per sample is made but the ids
(and text) handed out and the images being decoded::

    epoch plan (this rank's and worker's shard segments, distributed.py)
      -> read blocks (only the tar members the task needs; compiled header walk)
      -> parse records (the .json fields the task needs -> label / text columns)
      -> refill (good rows stand in for skipped bad ones: exact len() for DDP)
      -> batches (each block permuted once, cut into slices; training only)
      -> groups (small batches joined, so they cost one tokenizer call and one hand-over)
      -> collate (one tokenizer call per group; images decoded into the batch)
      -> hand-over (a worker makes the group in a reused shared-memory slot)
    main process: the group cut back into its batches (views, no copy)

Batches are dicts of torch tensors, plus lists of strings for ids and text;
what each task puts in them is :mod:`bioscan_io.tasks`'s table.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing

import numpy as np
import pyarrow as pa
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import distributed as dist_plan
from . import handover, storage
from .format import indexed_blocks, load_index, local_blocks, parse_records
from .shardlist import ShardSet, find_shards
from .schema import MAX_NUCLEOTIDES, RANKS, BioscanError
from .tasks import TASKS, ImageConfig, Task, TokenizerConfig, choose_modalities

__all__ = ["make_loader", "BioscanLoader", "EpochStream", "ShardSet", "find_shards", "ErrorPolicy", "read_blocks",
           "add_record_columns", "refill_blocks", "block_batches", "group_batches", "collate_groups", "split_group",
           "DEFAULT_IMAGE_BLOCK", "DEFAULT_BLOCK_BYTES"]

log = logging.getLogger("bioscan_io")
#: Default block of samples read and shuffled together for tasks with images.
DEFAULT_IMAGE_BLOCK = 1000
#: Most payload bytes a worker reads into one block (large images: fewer samples a block).
DEFAULT_BLOCK_BYTES = 256 << 20
#: Hand-over slots per worker beyond ``prefetch_factor``: batches the consumer may hold
#: (the one in use, the one being fetched) before a worker falls back to PyTorch's hand-over.
HANDOVER_SLOTS_HELD = 2
#: Batches without images made and handed over together, while their tensors fit in
#: GROUP_BYTES (MLM, batches of 256: 16): one tokenizer call and one DataLoader item.
GROUP_BATCHES, GROUP_BYTES = 16, 16 << 20


# ----------------------------------------------------------------------------- stages

class ErrorPolicy:
    """What the stages do with a bad sample or shard: raise (default) or skip and count.

    Skipped samples are kept as ``(count, message)`` until the next batch carries
    them to the main process (``BioscanLoader.errors``).
    """

    def __init__(self, mode: str):
        self.mode, self.pending = mode, []

    def handle(self, exc: BioscanError, lost: int) -> None:
        if self.mode == "raise":
            raise exc
        self.pending.append((lost, str(exc)))

    def drain(self) -> list:
        out, self.pending = self.pending, []
        return out


def read_blocks(segments, shards, exts, errors: ErrorPolicy, *, max_rows: int | None = None,
                max_bytes: int | None = None, open_url=storage.open_read, mark_padding: bool = False):
    """Columnar read: blocks ``{"__key__": keys, ext: payloads..., "__shard__": shard index}``.

    ``shards`` is a :class:`ShardSet` (or a list of shard URLs). A shard with an
    index (format version 2) is read from its memory-mapped index: barcodes and
    the record fields (as a ``"record"`` struct column in place of ``.json``)
    with no tar page touched, images at the offsets the index gives. Any other
    segment is read with one header walk. Either way it is cut into blocks of at most
    ``max_rows`` samples and ``max_bytes`` of payload (None: no bound; a block
    holds at least one sample), so a worker never holds more than a block of
    images. Shards go through the compiled walk (no Python object per sample);
    remote ones are first copied to a temporary file (opened by ``open_url``),
    and shards with headers the walk does not read go through Python's tarfile.
    A sample without one of the members, or a fault in the shard, is raised or
    skipped per ``errors``; skipping loses only the samples the fault made unreadable.
    With ``mark_padding``, a ``"__valid__"`` column is False on padding segments.
    """
    exts = tuple(sorted(exts))
    if not isinstance(shards, ShardSet):
        shards = ShardSet([str(u) for u in shards], [])
    for seg in segments:
        url = shards.urls[seg.shard]
        done = 0  # samples of the segment delivered or reported
        for block, missing, error in _segment_blocks(shards, seg, exts, (max_rows, max_bytes), open_url):
            for key, ext in missing:
                errors.handle(BioscanError(f"shard {url}: sample {key} has no .{ext} member"), 1)
            n = len(block["__key__"])
            done += n + len(missing)
            if error is not None:
                errors.handle(error, seg.stop - seg.start - done)
            if n:
                block["__shard__"] = pa.array(np.full(n, seg.shard, np.int32))
                if mark_padding:
                    block["__valid__"] = pa.array(np.full(n, not seg.padding))
                yield block


def _segment_blocks(shards: ShardSet, seg, exts: tuple[str, ...], limits: tuple, open_url):
    """``(block, missing, error)`` per block of one segment, through its index when it has one.

    Messages name the shard (and index) by URL. A shard or index that cannot be
    opened (missing, empty, unreadable) is the error of the segment's remaining samples.
    """
    try:
        yield from _opened_segment_blocks(shards, seg, exts, limits, open_url)
    except BioscanError as exc:
        yield {"__key__": pa.array([], pa.string())}, [], exc


def _opened_segment_blocks(shards: ShardSet, seg, exts: tuple[str, ...], limits: tuple, open_url):
    url = shards.urls[seg.shard]
    index_url = shards.indexes[seg.shard] if shards.indexes else None
    if index_url is None:
        with _local(url, open_url) as path:
            yield from local_blocks(path, seg.start, seg.stop, exts, *limits, name=url)
        return
    with _local(index_url, open_url) as path:
        index = load_index(path, shards.entries[seg.shard], name=index_url)
    if "jpg" not in exts:  # no tar page touched
        yield from indexed_blocks(index, seg.start, seg.stop, exts, *limits, name=url)
        return
    with _local(url, open_url) as path:
        yield from indexed_blocks(index, seg.start, seg.stop, exts, *limits, tar=path, name=url)


@contextlib.contextmanager
def _local(url: str, open_url):
    """A local path for ``url``: the file itself, or a remote one copied to a temporary file.

    A stream cannot be memory-mapped; the copy costs the bytes a tar reader would
    stream through anyway.
    """
    if storage.is_url(url):
        with storage.spool(url, open_url) as local:
            yield local
    else:
        yield storage.local_path(url)


def add_record_columns(blocks, task: Task, urls: list[str], errors: ErrorPolicy):
    """Replace each block's ``.json`` column by the columns the task needs (labels, text)."""
    for block in blocks:
        if "record" in block:  # read from the index: the fields, already columns
            record = block.pop("record")
            block.update(task.record_columns(pa.Table.from_struct_array(record)))
            yield block
            continue
        if "json" not in block:
            yield block
            continue
        table, bad = parse_records(block["json"], task.record_fields)
        if bad:
            keys, shards = block["__key__"].to_pylist(), block["__shard__"].to_numpy()
            for i, message in bad:
                errors.handle(BioscanError(f"bad JSON in {urls[shards[i]]}: {keys[i]}.json: {message}"), 1)
            keep = np.ones(len(keys), bool)
            keep[[i for i, _ in bad]] = False
            mask = pa.array(keep)
            block, table = {k: v.filter(mask) for k, v in block.items()}, table.filter(mask)
        del block["json"]
        block.update(task.record_columns(table))
        if len(block["__key__"]):
            yield block


def refill_blocks(blocks, expected: int, elsewhere=None):
    """Keep the planned sample count when bad samples were skipped.

    Repeats rows of the last good block in place of skipped ones, so every rank
    still yields ``len(loader)`` batches and DDP does not wait on a short rank.
    When every planned sample was bad, the rows come from ``elsewhere()``: a
    block of good samples from the rest of the split (the same one on every
    rank and worker), which raises only when the split has none.
    """
    n, last = 0, None
    for block in blocks:
        n += len(block["__key__"])
        last = block
        yield block
    if n < expected:
        if last is None:
            if elsewhere is None:
                raise BioscanError(f"every one of the {expected} samples planned for this worker was bad")
            last = elsewhere()
        index = pa.array(np.arange(expected - n) % len(last["__key__"]))
        stand_ins = {k: v.take(index) for k, v in last.items()}
        if "__valid__" in stand_ins:  # a stand-in is padding, never a second copy of a record
            stand_ins["__valid__"] = pa.array(np.zeros(len(index), bool))
        yield stand_ins


def block_batches(blocks, batch_size: int, rng: np.random.Generator | None):
    """Batches of ``batch_size`` rows cut from the blocks, shuffled by index within a block.

    A block is permuted once (one Arrow ``take``), then cut into zero-copy slices;
    rows left over from one block are completed from the head of the next (only
    those rows are copied), so only the last batch is partial.
    """
    leftover = None
    for block in blocks:
        n = len(block["__key__"])
        if rng is not None:
            order = pa.array(rng.permutation(n))
            block = {k: v.take(order) for k, v in block.items()}
        at = 0
        if leftover is not None:
            at = min(batch_size - len(leftover["__key__"]), n)
            leftover = {k: pa.concat_arrays([leftover[k], v.slice(0, at)]) for k, v in block.items()}
            if len(leftover["__key__"]) < batch_size:
                continue
            yield leftover
        full = at + (n - at) // batch_size * batch_size
        for i in range(at, full, batch_size):
            yield {k: v.slice(i, batch_size) for k, v in block.items()}
        leftover = {k: v.slice(full) for k, v in block.items()} if full < n else None
    if leftover is not None and len(leftover["__key__"]):
        yield leftover


class EpochStream(IterableDataset):
    """One rank's batches for the current epoch; each DataLoader worker runs its share."""

    def __init__(self, shards: ShardSet, task: Task, *, batch_size: int, drop_last: bool, pad: bool,
                 shuffle: bool, shuffle_buffer: int | None, rank: int, world_size: int, epoch,
                 on_error: str = "raise", storage_options: dict | None = None, arena=None, group: int = 1):
        self.shards, self.task = shards, task
        self.arena = arena  # shared slots the workers make batches in (handover.py), or None
        self.group = group  # batches handed over together
        self.batch_size, self.drop_last, self.pad = batch_size, drop_last, pad
        self.shuffle = shuffle
        # Rows read and shuffled together: whole segments when they are small (barcodes,
        # records), a bounded block when they hold images.
        self.block_rows = shuffle_buffer or (DEFAULT_IMAGE_BLOCK if "image" in task.modalities else None)
        self.rank, self.world_size = rank, world_size
        self._epoch = epoch  # shared with the workers, so set_epoch reaches persistent ones
        self.on_error = on_error
        self.open_url = functools.partial(storage.open_read, storage_options=storage_options)

    def __len__(self) -> int:
        return dist_plan.batches_per_rank(self.shards.total, self.world_size, self.batch_size, self.drop_last)

    def plan(self, epoch: int, worker: int, num_workers: int) -> list[dist_plan.Segment]:
        """The shard segments this rank's ``worker`` reads in ``epoch``."""
        order = dist_plan.shard_order(len(self.shards.urls), self.task.seed, epoch, self.shuffle)
        start, stop = dist_plan.rank_range(self.shards.total, self.rank, self.world_size)
        lo, hi = dist_plan.worker_range(start, stop, self.batch_size, worker, num_workers, self.drop_last)
        return dist_plan.segments(self.shards.counts, order, lo, hi)

    def good_block(self, epoch: int) -> dict:
        """The first block of good samples in the epoch's shard order: stand-ins for a worker whose samples were all bad.

        The same block on every rank and worker (deterministic); errors met on
        the way are not this worker's to report. Raises only when no sample of
        the split can be read, on every rank alike.
        """
        order = dist_plan.shard_order(len(self.shards.urls), self.task.seed, epoch, self.shuffle)
        quiet = ErrorPolicy("skip")
        segs = dist_plan.segments(self.shards.counts, order, 0, self.shards.total)
        blocks = read_blocks(segs, self.shards, self.task.members, quiet, max_rows=DEFAULT_IMAGE_BLOCK,
                             max_bytes=DEFAULT_BLOCK_BYTES, open_url=self.open_url, mark_padding=not self.pad)
        for block in add_record_columns(blocks, self.task, self.shards.urls, quiet):
            return block
        first = quiet.pending[0][1] if quiet.pending else "no samples"
        raise BioscanError(f"no sample of the split at {storage.dirname(self.shards.urls[0])} could be read "
                           f"({len(self.shards.urls)} shard(s); the first error: {first})")

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self._epoch.value)
        task, urls = self.task, self.shards.urls
        segments = self.plan(epoch, worker, num_workers)
        expected = sum(seg.stop - seg.start for seg in segments)
        errors = ErrorPolicy(self.on_error)
        rng = np.random.default_rng([task.seed, epoch, self.rank, worker]) if self.shuffle else None
        # Batch-level stages: columns in, one batch out per slice of rows.
        stages = [
            lambda: iter(segments),
            lambda segs: read_blocks(segs, self.shards, task.members, errors, max_rows=self.block_rows,
                                     max_bytes=DEFAULT_BLOCK_BYTES, open_url=self.open_url,
                                     mark_padding=not self.pad),
            lambda blocks: add_record_columns(blocks, task, urls, errors),
            lambda blocks: refill_blocks(blocks, expected, functools.partial(self.good_block, epoch)),
            lambda blocks: block_batches(blocks, self.batch_size, rng),
            lambda batches: group_batches(batches, self.group),
            lambda groups: collate_groups(groups, task, epoch, urls, errors),
            lambda groups: handover.in_slots(groups, self.arena, worker),
            lambda groups: _report(groups, errors),
        ]
        return iter(wds.DataPipeline(*stages))


def group_batches(batches, group: int):
    """Consecutive batches joined ``group`` at a time (columns chunked, no copy), with their sizes in ``_sizes``.

    A group is collated with one tokenizer call and handed over as one item;
    :func:`split_group` cuts it back into the same batches in the main process.
    """
    while True:
        parts = list(itertools.islice(batches, group))
        if not parts:
            return
        joined = {k: pa.chunked_array([p[k] for p in parts]) for k in parts[0]}
        joined["_sizes"] = [len(p["__key__"]) for p in parts]
        yield joined


def collate_groups(groups, task: Task, epoch: int, urls: list[str], errors: ErrorPolicy):
    """Each group collated as one batch, its ``_sizes`` carried along."""
    for block in groups:
        sizes = block.pop("_sizes")
        batch = task.collate(block, epoch, urls, errors)
        batch["_sizes"] = sizes
        yield batch


def split_group(group: dict):
    """The batches of a collated group (:func:`group_batches`), in order: tensors as views, lists sliced."""
    sizes = group.pop("_sizes")
    if len(sizes) == 1:
        yield group
        return
    parts = {k: torch.split(v, sizes) if isinstance(v, torch.Tensor) else v for k, v in group.items()}
    at = 0
    for i, size in enumerate(sizes):
        yield {k: v[i] if isinstance(v, tuple) else v[at:at + size] for k, v in parts.items()}
        at += size


def _report(groups, errors: ErrorPolicy):
    """Carry the skipped samples' messages to the main process with the next group of batches."""
    for group in groups:
        skipped = errors.drain()
        if skipped:
            group["_skipped"] = skipped
        yield group


class BioscanLoader:
    """A DataLoader over an :class:`EpochStream`, with exact ``len`` and ``set_epoch``."""

    def __init__(self, dataset: EpochStream, dataloader: DataLoader, epoch):
        self.dataset, self.dataloader, self._epoch = dataset, dataloader, epoch
        self.arena = dataset.arena
        #: ``(samples lost, message)`` for each bad sample or shard skipped this epoch.
        self.errors: list[tuple[int, str]] = []

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its shard order, shuffle, masks and augmentation."""
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        self.errors = []
        arena = self.arena
        if arena is not None:
            arena.new_iteration()
        for group in self.dataloader:
            if arena is not None:
                group = arena.unpack(group)
            skipped = group.pop("_skipped", None)
            if skipped:
                self.errors.extend(skipped)
            yield from split_group(group)
        if self.errors:
            log.warning("epoch %d: skipped %d bad sample(s): %s", self.epoch, self.skipped,
                        "; ".join(msg for _, msg in self.errors[:5]) + (" ..." if len(self.errors) > 5 else ""))

    @property
    def skipped(self) -> int:
        """Samples skipped so far in the current (or last) epoch, with ``on_error="skip"``."""
        return sum(n for n, _ in self.errors)


def make_loader(
    urls,
    task: str = "mlm",
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    train: bool | None = None,
    shuffle: bool | None = None,
    shuffle_buffer: int | None = None,
    drop_last: bool = False,
    pad: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    modality=None,
    label_rank: str = "species",
    k: int = 4,
    max_len: int = MAX_NUCLEOTIDES,
    n_as_base: bool = False,
    mask_prob: float = 0.5,
    label_mode: str = "masked",
    random_offset: bool = False,
    token_dtype: torch.dtype = torch.int64,
    image_size: int = 224,
    resize: int = 256,
    image_dtype: str = "uint8",
    hflip: bool = True,
    vflip: bool = False,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = 2,
    on_error: str = "raise",
    storage_options: dict | None = None,
) -> BioscanLoader:
    """A PyTorch DataLoader over BIOSCAN-5M shards for one task.

    Parameters
    ----------
    urls : str, path or list of str
        A split folder, its ``manifest.json``, a brace pattern
        (``shards/train/train-{000000..000028}.tar``), a list of URLs, or remote ones
        with a manifest beside them: a remote split folder or shards by fsspec URL
        (``s3://bucket/shards/train``, ``gs://``...), or what webdataset opens
        (``pipe:``, ``http(s)://``).
    task : {"mlm", "classify", "clip", "embed"}
        What the batches hold (module docstring).
    batch_size : int
        Samples per batch (the last batch of a rank may be smaller unless ``drop_last``).
    num_workers : int
        DataLoader worker processes; the epoch's samples do not depend on it.
    seed, epoch : int
        Select the shard order, shuffle, masks and augmentation; change the epoch
        with :meth:`BioscanLoader.set_epoch` (as with DistributedSampler).
    train : bool, optional
        Random augmentation and shuffling (default: True except for ``embed``).
    shuffle : bool, optional
        Shuffle shard order and samples (default: ``train``).
    shuffle_buffer : int, optional
        Samples shuffled together in each worker: shards (pre-shuffled when
        written) are read in blocks of this many samples, and each block is
        permuted. Default: whole shard segments for tasks without images (a
        shard's barcodes and records are small); 1,000 samples with images. A
        block also stops at 256 MiB of payload (``DEFAULT_BLOCK_BYTES``), which
        bounds a worker's memory with large images.
    drop_last : bool
        Drop each rank's last partial batch.
    pad : bool, optional
        Every rank gets ``ceil(N / world_size)`` samples, so all ranks yield the
        same batches; the fewer than ``world_size`` positions past the end wrap
        to the start. True: they are ordinary samples (seen twice this epoch, as
        with ``DistributedSampler``). False (``embed``'s default): the batches
        carry a bool ``valid`` tensor, False on them, and
        :func:`bioscan_io.distributed.all_gather_valid` gathers a batch's rows
        across ranks without them: every record exactly once.
    rank, world_size : int, optional
        Default: from torch.distributed when initialised, else ``RANK``/``WORLD_SIZE``.
    modality : str or tuple of str, optional
        ``classify``: ``"dna"`` (default) or ``"image"``; ``embed``: any of
        ``("dna", "image")`` (default both).
    label_rank : str
        The rank of ``label`` for ``classify`` (default species; indices per labels.json).
    k, max_len, n_as_base, mask_prob, label_mode, random_offset, token_dtype
        Tokenizer and masking settings (:class:`bioscan_io.tokenizer.KmerTokenizer`).
    image_size, resize, image_dtype, hflip, vflip
        Crop size, evaluation resize, ``"uint8"`` (normalise on the GPU with
        :func:`bioscan_io.images.normalize`) or ``"float32"`` (normalised here), flips.
    pin_memory, persistent_workers, prefetch_factor
        Passed to the DataLoader (defaults: pin if CUDA is available; persistent
        when there are workers).
    on_error : {"raise", "skip"}
        A corrupt sample or shard (truncated tar, bad header, corrupt JPEG, bad JSON,
        missing member, a shard shorter than its manifest) raises ``BioscanError``
        naming the shard and sample (default), or is skipped and counted: the loader's
        ``errors`` and ``skipped`` give them, they are logged at the end of the epoch,
        and recent good samples stand in for them so ``len()`` still holds (from
        elsewhere in the split when all of a worker's samples were bad; only a split
        with no readable sample raises, on every rank alike).
    storage_options : dict, optional
        For fsspec URLs: the filesystem's options (e.g. ``{"endpoint_url":
        "http://127.0.0.1:9000", "key": ..., "secret": ...}`` for an S3-compatible
        server); environment variables (``AWS_ENDPOINT_URL`` ...) work too.

    Returns
    -------
    BioscanLoader
        Iterable of batches with an exact ``len()`` and ``set_epoch()``.
    """
    if task not in TASKS:
        raise BioscanError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if batch_size < 1:
        raise BioscanError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise BioscanError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
    if on_error not in ("raise", "skip"):
        raise BioscanError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    spec = TASKS[task]
    modalities = choose_modalities(task, modality)
    shards = find_shards(urls, storage_options)
    if spec.needs_labels and shards.labels is None:
        raise BioscanError(f"task {task!r} needs labels.json beside the split folder of {shards.urls[0]}")
    if label_rank not in RANKS:
        raise BioscanError(f"unknown label_rank {label_rank!r}; ranks are {', '.join(RANKS)}")
    train = spec.train if train is None else train
    pad = spec.pad if pad is None else pad
    shuffle = train if shuffle is None else shuffle
    if rank is None or world_size is None:
        rank, world_size = dist_plan.world_info()
    if not 0 <= rank < world_size:
        raise BioscanError(f"rank {rank} is outside world size {world_size}")
    bound = Task(
        task, modalities, train, seed,
        tokens=TokenizerConfig(k, max_len, n_as_base, mask_prob, label_mode, random_offset, token_dtype),
        images=ImageConfig(image_size, resize, image_dtype, hflip, vflip), label_rank=label_rank,
        labels=shards.labels,
    )
    shared_epoch = multiprocessing.get_context().RawValue("q", int(epoch))
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    nbytes = bound.batch_nbytes(batch_size)
    # Decoding images dwarfs a hand-over; grouping them would only delay the first batch.
    group = 1 if "image" in modalities else max(1, min(GROUP_BATCHES, GROUP_BYTES // nbytes))
    kwargs, arena = {}, None
    if num_workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        kwargs["prefetch_factor"] = prefetch_factor
        if not pin_memory:  # pinned batches are copied by the DataLoader's pin thread instead
            slots = (prefetch_factor or 2) + HANDOVER_SLOTS_HELD
            arena = handover.SlotArena.fitting(num_workers, slots, group * nbytes)
    dataset = EpochStream(shards, bound, batch_size=batch_size, drop_last=drop_last, pad=pad,
                          shuffle=shuffle, shuffle_buffer=shuffle_buffer, rank=rank,
                          world_size=world_size, epoch=shared_epoch, on_error=on_error,
                          storage_options=storage_options, arena=arena, group=group)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        pin_memory=pin_memory, **kwargs)
    return BioscanLoader(dataset, loader, shared_epoch)


def _as_is(batch: dict) -> dict:
    """The stages already collate; torch's default_convert would walk every id string."""
    return batch

"""``make_loader``: WebDataset pipelines for the tasks of the BIOSCAN-5M paper.

Each DataLoader worker runs one pipeline, a list of small stages over items
(a few consecutive batches, as Arrow columns): no Python object per sample is
made but the ids (and text) handed out and the images being decoded::

    items (this rank's canonical stream, plan.py: worker w of W makes items w, w+W, ...)
      -> read (reader.py: the rows each item names, from the per-shard index or one header walk)
      -> refill (reader.py: good rows stand in for skipped bad ones: exact len() for DDP)
      -> collate (one tokenizer call per item; images decoded into the batch)
      -> hand-over (a worker makes the item in a reused shared-memory slot)
    main process: the item cut back into its batches (views, no copy)

The DataLoader hands items out in that same order, so the batches of an epoch
do not depend on ``num_workers``; ``BioscanLoader.state_dict()`` records how
many a rank has yielded, and ``load_state_dict()`` continues from there.
Batches are dicts of torch tensors, plus lists of strings for ids and text;
what each task puts in them is :mod:`bioscan_io.tasks`'s table.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import distributed, handover, plan, storage
from .options import check_options, resolve
from .reader import ErrorPolicy, read_items, read_rows, record_columns, refill_items
from .resume import make_state, plan_identity, read_state
from .schema import BioscanError
from .shardlist import ShardSet, check_sizes, find_shards
from .tasks import TASKS, ImageConfig, Task, TokenizerConfig, choose_modalities
from .text import TextTokens

__all__ = ["make_loader", "BioscanLoader", "EpochStream", "ShardSet", "find_shards", "collate_groups", "split_group",
           "DEFAULT_IMAGE_BLOCK"]

log = logging.getLogger("bioscan_io")
#: Default shuffle window for tasks with images: samples of one shard permuted together.
DEFAULT_IMAGE_BLOCK = 1000
#: Hand-over slots per worker beyond ``prefetch_factor``: batches the consumer may hold
#: (the one in use, the one being fetched) before a worker falls back to PyTorch's hand-over.
HANDOVER_SLOTS_HELD = 2
#: Batches without images made and handed over together, while their tensors fit in
#: GROUP_BYTES (MLM, batches of 256: 16): one tokenizer call and one DataLoader item.
GROUP_BATCHES, GROUP_BYTES = 16, 16 << 20


# ----------------------------------------------------------------------------- stages

class EpochStream(IterableDataset):
    """One rank's batches for the current epoch; each DataLoader worker makes its share of the items."""

    def __init__(self, shards: ShardSet, task: Task, *, batch_size: int, drop_last: bool, pad: bool,
                 shuffle: bool, shuffle_buffer: int | None, rank: int, world_size: int,
                 on_error: str = "raise", storage_options: dict | None = None, arena=None, group: int = 1):
        self.shards, self.task = shards, task
        self.arena = arena  # shared slots the workers make batches in (handover.py), or None
        self.group = group  # batches made and handed over together
        self.batch_size, self.drop_last, self.pad = batch_size, drop_last, pad
        self.shuffle = shuffle
        # The shuffle window: whole shard segments when samples are small (barcodes,
        # records), a bounded block of a shard when they hold images.
        self.block_rows = shuffle_buffer or (DEFAULT_IMAGE_BLOCK if "image" in task.modalities else None)
        self.rank, self.world_size = rank, world_size
        self.on_error = on_error
        self.open_url = functools.partial(storage.open_read, storage_options=storage_options)
        self.identity = plan_identity(shards, task.name, task.seed, shuffle, self.block_rows, pad, drop_last)
        self.control = _Control()

    def __len__(self) -> int:
        return plan.batches_per_rank(self.shards.total, self.world_size, self.batch_size, self.drop_last)

    def stream(self, epoch: int, phases: list):
        """This rank's canonical stream of ``epoch`` (after the interrupted ``phases`` of a resumed run)."""
        return plan.rank_stream(self.shards.counts, self.task.seed, epoch, self.block_rows, self.shuffle,
                                self.drop_last, phases, self.rank, self.world_size)

    def good_block(self, epoch: int, copies: storage.LocalCopies, n: int) -> dict:
        """Up to ``n`` good samples of the first readable shard in the epoch's order.

        Stand-ins for an item whose samples were all bad: the same rows on every
        rank and worker (deterministic); errors met on the way are not this
        item's to report. Raises only when no sample of the split can be read,
        on every rank alike.
        """
        quiet = ErrorPolicy("skip")
        for shard in plan.shard_order(len(self.shards.urls), self.task.seed, epoch, self.shuffle):
            rows = np.arange(min(self.shards.counts[shard], n))
            block, _ = read_rows(self.shards, int(shard), rows, self.task.members, quiet, copies)
            block = record_columns(block, self.task, self.shards.urls, quiet)
            if len(block["__key__"]):
                return block
        first = quiet.pending[0][1] if quiet.pending else "no samples"
        raise BioscanError(f"no sample of the split at {self.shards.folder} could be read "
                           f"({len(self.shards.urls)} shard(s); the first error: {first})")

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, phases, start = self.control.get()
        task, urls = self.task, self.shards.urls
        stream = self.stream(epoch, phases)
        errors = ErrorPolicy(self.on_error)
        copies = storage.LocalCopies(self.open_url)
        stages = [
            lambda: plan.items(stream, self.batch_size, self.drop_last, self.group, start, worker, num_workers),
            lambda items: read_items(items, self.shards, task, errors, copies, mark_padding=not self.pad),
            # The stand-in rows are the same for every item of the epoch: read once (per item size).
            lambda items: refill_items(items, functools.lru_cache(maxsize=2)(
                functools.partial(self.good_block, epoch, copies)), not self.pad),
            lambda groups: collate_groups(groups, task, epoch, urls, errors),
            lambda groups: handover.in_slots(groups, self.arena, worker),
            lambda groups: _report(groups, errors),
        ]
        return iter(wds.DataPipeline(*stages))


class _Control:
    """What the main process tells the workers as an iteration starts: the epoch, and where it starts.

    Shared memory, written before the DataLoader starts (or wakes persistent)
    workers on an iteration, so that ``set_epoch`` and ``load_state_dict`` reach
    workers started before them.
    """

    SIZE = 1 << 18

    def __init__(self):
        self._buf = multiprocessing.get_context().RawArray("c", self.SIZE)
        self.set(0, [], 0)

    def set(self, epoch: int, phases: list, start: int) -> None:
        data = json.dumps([epoch, [[p.world_size, p.batch_size, list(p.batches)] for p in phases], start]).encode()
        if len(data) >= self.SIZE:
            raise BioscanError(f"loader state too large to hand to the workers ({len(data)} bytes, {len(phases)} "
                               "interrupted phases); resume at an epoch boundary")
        self._buf[:len(data) + 1] = data + b"\0"

    def get(self) -> tuple[int, list, int]:
        epoch, phases, start = json.loads(self._buf.value)
        return epoch, [plan.Phase(w, b, tuple(c)) for w, b, c in phases], start


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
    keys = list(group)
    ends = np.cumsum(sizes).tolist()
    # Each column cut once (a batch is then one dict of ready parts: the main
    # process's whole cost per batch).
    columns = [torch.split(v, sizes) if isinstance(v, torch.Tensor) else
               [v[a:z] for a, z in zip([0, *ends], ends)] for v in group.values()]
    for values in zip(*columns):
        yield dict(zip(keys, values))


def _report(groups, errors: ErrorPolicy):
    """Carry the skipped samples' messages to the main process with the next item of batches.

    A ``BioscanError`` raised in a worker is carried as an item too, and raised
    again in the main process as its one line (the DataLoader would wrap it in
    the worker's traceback).
    """
    try:
        for group in groups:
            skipped = errors.drain()
            if skipped:
                group["_skipped"] = skipped
            yield group
    except BioscanError as exc:
        if get_worker_info() is None:
            raise
        yield {"_error": str(exc), "_skipped": errors.drain()}


class BioscanLoader:
    """A DataLoader over an :class:`EpochStream`, with exact ``len``, ``set_epoch`` and a resumable state.

    ``state_dict()`` / ``load_state_dict()`` follow torchdata's StatefulDataLoader
    (:mod:`bioscan_io.resume` describes the state).
    """

    def __init__(self, dataset: EpochStream, dataloader: DataLoader, epoch: int):
        self.dataset, self.dataloader = dataset, dataloader
        self.arena = dataset.arena
        self._epoch = int(epoch)
        self._phases: list = []  # the epoch's interrupted phases before the current one
        self._start = 0  # the batch of the current phase the next iteration starts at
        self._resume = False  # the next iteration continues a loaded state
        self._yielded = 0  # batches of the current phase yielded (with those of a loaded state)
        #: ``(samples lost, message)`` for each bad sample or shard skipped this epoch.
        self.errors: list[tuple[int, str]] = []

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its shard order, shuffle, masks and augmentation.

        Setting the epoch a loaded state is in keeps its position (a trainer
        sets the epoch at the top of its loop, also the one it resumes).
        """
        if int(epoch) != self._epoch:
            self._epoch = int(epoch)
            self._phases, self._start, self._yielded, self._resume = [], 0, 0, False

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        self.errors = []
        if not self._resume:  # a fresh pass over the epoch
            self._phases, self._start = [], 0
        self._resume = False
        self._yielded = self._start
        self.dataset.control.set(self._epoch, self._phases, self._start)
        arena = self.arena
        if arena is not None:
            arena.new_iteration()
        groups = iter(self.dataloader)
        try:
            for group in groups:
                if arena is not None:
                    group = arena.unpack(group)
                skipped = group.pop("_skipped", None)
                if skipped:
                    self.errors.extend(skipped)
                if "_error" in group:
                    raise BioscanError(group["_error"])
                for batch in split_group(group):
                    self._yielded += 1
                    yield batch
        except GeneratorExit:  # the consumer stopped early: persistent workers stay for the next pass
            raise
        except BaseException:
            _stop_workers(self.dataloader, groups)
            raise
        if self.errors:
            log.warning("epoch %d: skipped %d bad sample(s): %s", self.epoch, self.skipped,
                        "; ".join(msg for _, msg in self.errors[:5]) + (" ..." if len(self.errors) > 5 else ""))

    @property
    def skipped(self) -> int:
        """Samples skipped so far in the current (or last) epoch, with ``on_error="skip"``.

        The samples the manifest promised this rank that were not served: the
        positions of the epoch's plan that good samples stood in for (a padding
        position that repeats a lost sample counts again). With the manifest's
        per-shard counts right, the records ``bioscan-io verify`` reports as
        ``missing_record`` for tasks that read the tar; where verify reports a
        ``count_mismatch``, the two differ by that difference (a refused shard
        counts the manifest's count). An error that lost no promised sample
        (samples past a shard's listed count) is in :attr:`errors` with 0.
        """
        return sum(n for n, _ in self.errors)

    def state_dict(self) -> dict:
        """Where this rank stands: the epoch, the batches yielded, and the plan they belong to (JSON-able).

        Take it between batches (after the step on the last batch yielded): a
        loader given it by :meth:`load_state_dict` yields the next batch.
        """
        ds = self.dataset
        return make_state(ds.identity, self._epoch, ds.rank, self._phases, self._yielded, ds.world_size,
                          ds.batch_size)

    def load_state_dict(self, state) -> None:
        """Continue from ``state`` (a :meth:`state_dict`, or the list of every rank's, merged).

        The next iteration starts at the batch after the last one the state's run
        yielded: the same batches, bit for bit, when world size and batch size
        are the state's; otherwise (elastic) what the interrupted ranks had not
        yet yielded, cut again over this run's ranks, with equal batch counts.
        Skipped batches are not read (a seek). A state of other shards, plan
        settings or version raises a one-line ``BioscanError`` saying what differs.
        """
        ds = self.dataset
        epoch, phases = read_state(state, ds.identity)
        last = phases[-1]
        if (last.world_size, last.batch_size) == (ds.world_size, ds.batch_size):
            self._phases, self._start = phases[:-1], last.batches[ds.rank]
        else:
            self._phases, self._start = phases, 0
        self._epoch, self._yielded, self._resume = epoch, self._start, True


def _stop_workers(dataloader: DataLoader, groups) -> None:
    """Shut down the workers of a DataLoader iterator that raised, here in the parent process.

    Left to the garbage collector, the dead iterator (held by the exception's
    traceback, or by the DataLoader when its workers are persistent) is inherited
    by the workers of loaders made later, and its ``__del__`` fails there
    ("can only test a child process").
    """
    shutdown = getattr(groups, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if getattr(dataloader, "_iterator", None) is groups:
        dataloader._iterator = None


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
    recipe: str | None = None,
    k: int | None = None,
    max_len: int | None = None,
    n_as_base: bool | None = None,
    mask_prob: float | None = None,
    mask_ratios: tuple | None = None,
    label_mode: str | None = None,
    random_offset: bool | None = None,
    tokenizer=None,
    token_dtype: torch.dtype = torch.int64,
    image_size: int | None = None,
    resize: int | None = None,
    pre_resize: int | None = None,
    image_dtype: str = "uint8",
    hflip: bool | None = None,
    vflip: bool | None = None,
    rotate: float | None = None,
    text_tokenizer=None,
    text_max_len: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = 2,
    on_error: str = "raise",
    check_sha256: bool = False,
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
        DataLoader worker processes; the batches (samples, order, masks, crops)
        do not depend on it, nor on the other DataLoader settings.
    seed, epoch : int
        Select the shard order, shuffle, masks and augmentation; change the epoch
        with :meth:`BioscanLoader.set_epoch` (as with DistributedSampler).
    train : bool, optional
        Random augmentation and shuffling (default: True except for ``embed``).
    shuffle : bool, optional
        Shuffle shard order and samples (default: ``train``).
    shuffle_buffer : int, optional
        The shuffle window: each rank's range of the epoch is cut into blocks
        of this many consecutive samples of one shard (shards are pre-shuffled
        when written, and visited in a new order each epoch), and each block is
        permuted. Default: the rank's whole segment of a shard for tasks without
        images (barcodes and records are small); 1,000 samples with images.
        Workers read only the rows of the batches they make, so memory does not
        grow with the window.
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
    recipe : {"barcodebert", "barcodemae", "barcodemamba", "clibd"}, optional
        A model's data recipe (:data:`bioscan_io.recipes.RECIPES`): its values
        replace the defaults of the options below that it sets; an option passed
        here wins over the recipe.
    k, max_len, n_as_base, mask_prob, label_mode, random_offset, token_dtype
        Tokenizer and masking settings (:class:`bioscan_io.tokenizer.KmerTokenizer`;
        defaults 4, 660, False, 0.5, ``"masked"``, False, int64).
    mask_ratios : (float, float, float), default (1, 0, 0)
        Of the positions selected for masking, the shares set to ``[MASK]``,
        replaced by a random vocabulary token, and kept (BERT: 0.8, 0.1, 0.1).
    tokenizer : optional
        A tokenizer object with ``KmerTokenizer``'s interface instead of ``k``,
        ``max_len`` and ``n_as_base`` (e.g. :class:`bioscan_io.vocab_tokenizer.VocabTokenizer`
        over a BPE vocabulary).
    image_size, resize, image_dtype, hflip, vflip
        Crop size (224), evaluation resize (256), ``"uint8"`` (normalise on the GPU with
        :func:`bioscan_io.images.normalize`) or ``"float32"`` (normalised here), flips
        (horizontal True, vertical False).
    pre_resize : int, optional
        Training crops are drawn as after torchvision's ``Resize(pre_resize)`` (CLIBD: 256).
    rotate : float, default 0
        Training images are rotated by an angle drawn uniformly in ``[-rotate, rotate]``
        degrees after the flips (nearest neighbour, black fill; CLIBD: 45).
    text_tokenizer : optional
        ``clip`` only: a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer or a callable
        over a list of strings, applied to each batch's text in the workers; batches then
        carry ``text_input_ids`` and ``text_attention_mask`` (:mod:`bioscan_io.text`).
    text_max_len : int, default 20
        Text tokens per sample (CLIBD's ``max_length``; longer text is truncated).
    pin_memory, persistent_workers, prefetch_factor
        Passed to the DataLoader (defaults: pin if CUDA is available; persistent
        when there are workers).
    on_error : {"raise", "skip"}
        A corrupt sample or shard (truncated tar, bad header, corrupt JPEG, bad JSON,
        missing member, a shard shorter than its manifest, an index that is missing,
        unreadable or not the manifest's) raises ``BioscanError`` naming the shard and
        sample (default), or is skipped and counted: the loader's
        ``errors`` and ``skipped`` give them, they are logged at the end of the epoch,
        and good samples of the same batch stand in for them so ``len()`` still
        holds (from the first readable shard of the epoch when all of a batch's
        samples were bad; only a split with no readable sample raises, on every
        rank alike). As the loader opens a split, each local shard's byte size is
        compared with its manifest (one ``os.stat``; remote shards are not): a
        missing or resized tar is logged once, naming it and ``bioscan-io verify``;
        tasks that read only the index (``mlm``, DNA-only ``classify``/``embed``)
        are still served its exact samples, tasks that read images raise or skip
        all of them.
    check_sha256 : bool
        Check each shard against its manifest sha256 the first time a process
        reads it (reading the whole shard once per worker); a shard that differs
        is its samples' error, as ``on_error`` says. A flipped bit in a JPEG's
        data otherwise decodes as another image. Off by default (cost:
        BENCHMARKS.md).
    storage_options : dict, optional
        For fsspec URLs: the filesystem's options (e.g. ``{"endpoint_url":
        "http://127.0.0.1:9000", "key": ..., "secret": ...}`` for an S3-compatible
        server); environment variables (``AWS_ENDPOINT_URL`` ...) work too.

    Returns
    -------
    BioscanLoader
        Iterable of batches with an exact ``len()``, ``set_epoch()``, and
        ``state_dict()`` / ``load_state_dict()`` to stop and resume mid-epoch.
    """
    options = resolve(locals(), recipe, task)
    if options["tokenizer"] is not None and any(v is not None for v in (k, max_len, n_as_base)):
        whose = "a tokenizer" if tokenizer is not None else f"recipe {recipe!r}, which sets a tokenizer,"
        raise BioscanError(f"pass {whose} or k/max_len/n_as_base, not both: the tokenizer object sets them")
    check_options(options)
    spec = TASKS[task]
    modalities = choose_modalities(task, modality)
    shards = find_shards(urls, storage_options)
    shards.check_sha256 = check_sha256
    if spec.needs_labels and shards.labels is None:
        raise BioscanError(f"task {task!r} needs the label values of labels.json, looked for at {shards.labels_url}: "
                           "bioscan-shard writes it beside the split folders; copy it there with the split")
    if shards.total == 0:
        raise BioscanError(f"no samples to load: the split at {shards.folder} holds 0 samples")
    # Warns: a task that reads only the index would never see a damaged tar.
    check_sizes(shards, reads_tar="image" in modalities or check_sha256)
    train = spec.train if train is None else train
    pad = spec.pad if pad is None else pad
    shuffle = train if shuffle is None else shuffle
    if rank is None or world_size is None:
        rank, world_size = distributed.world_info()
    if not 0 <= rank < world_size:
        raise BioscanError(f"rank {rank} is outside world size {world_size}")
    bound = Task(task, modalities, train, seed, tokens=TokenizerConfig.from_options(options),
                 images=ImageConfig.from_options(options), label_rank=label_rank, labels=shards.labels,
                 text=_text_tokens(task, options))
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    nbytes = bound.batch_nbytes(batch_size)
    # Decoding images dwarfs a hand-over; grouping them would only delay the first batch.
    group = 1 if "image" in modalities else max(1, min(GROUP_BATCHES, GROUP_BYTES // nbytes))
    kwargs, arena = _worker_settings(num_workers, persistent_workers, prefetch_factor, pin_memory, group * nbytes)
    dataset = EpochStream(shards, bound, batch_size=batch_size, drop_last=drop_last, pad=pad, shuffle=shuffle,
                          shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size, on_error=on_error,
                          storage_options=storage_options, arena=arena, group=group)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        pin_memory=pin_memory, **kwargs)
    return BioscanLoader(dataset, loader, epoch)


def _worker_settings(num_workers: int, persistent_workers, prefetch_factor, pin_memory: bool, item_nbytes: int):
    """The DataLoader's worker keywords, and the hand-over arena (None without workers or when pinning)."""
    if num_workers == 0:
        return {}, None
    kwargs = {"persistent_workers": True if persistent_workers is None else persistent_workers,
              "prefetch_factor": prefetch_factor}
    if pin_memory:  # pinned batches are copied by the DataLoader's pin thread instead
        return kwargs, None
    slots = (prefetch_factor or 2) + HANDOVER_SLOTS_HELD
    return kwargs, handover.SlotArena.fitting(num_workers, slots, item_nbytes)


def _text_tokens(task: str, options: dict) -> TextTokens | None:
    if options["text_tokenizer"] is None:
        return None
    if task != "clip":
        raise BioscanError(f"text_tokenizer is for task 'clip' (whose batches carry text), not {task!r}")
    return TextTokens(options["text_tokenizer"], options["text_max_len"])


def _as_is(batch: Any) -> Any:
    """The stages already collate; torch's default_convert would walk every id string."""
    return batch

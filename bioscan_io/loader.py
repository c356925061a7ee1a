"""``make_loader``: WebDataset pipelines for the tasks of the BIOSCAN-5M paper.

Each DataLoader worker runs one pipeline, a list of small stages::

    epoch plan (this rank's and worker's shard segments, distributed.py)
      -> read samples (only the tar members the task needs)
      -> shuffle (seeded buffer; training only)
      -> decode (json, image decode + augment)
      -> batch + collate (one tokenizer call per batch, images stacked)

Batches are dicts of torch tensors, plus lists of strings for ids and text:

=========  ===================================================================
task       keys
=========  ===================================================================
mlm        processid, input_ids, attention_mask, labels
classify   processid, label, and input_ids + attention_mask (``modality="dna"``)
           or image (``modality="image"``)
clip       processid, image, input_ids, attention_mask, text
embed      processid, ``<rank>_index`` for every rank, and input_ids +
           attention_mask and/or image (``modality``)
=========  ===================================================================
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import posixpath
import random
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import distributed as dist_plan
from . import images as im
from . import tarscan
from .schema import MAX_NUCLEOTIDES, MISSING_RANK_TEXT, RANKS, TEXT_RANKS, BioscanError
from .tokenizer import KmerTokenizer

TASKS = ("mlm", "classify", "clip", "embed")
log = logging.getLogger("bioscan_io")
MANIFEST = "manifest.json"
LABELS = "labels.json"


# ----------------------------------------------------------------------------- shard lists


@dataclass
class ShardSet:
    """Shard URLs with their sample counts, and the label values if known."""

    urls: list[str]
    counts: list[int]
    labels: dict | None = None

    @property
    def total(self) -> int:
        return int(sum(self.counts))


def _read_text(url: str) -> str | None:
    """A small file by path or any URL webdataset opens; None if it is not there."""
    if "://" not in url and not url.startswith("pipe:"):
        path = Path(url)
        return path.read_text() if path.is_file() else None
    try:
        with wds.gopen(url) as f:
            data = f.read()
    except Exception:
        return None
    return data.decode() if isinstance(data, bytes) else data


def _dirname(url: str) -> str:
    return posixpath.dirname(url) if "://" in url else str(Path(url).parent)


def _join(base: str, name: str) -> str:
    return posixpath.join(base, name) if "://" in base else str(Path(base) / name)


def find_shards(urls) -> ShardSet:
    """Resolve ``urls`` to shard URLs with exact counts.

    ``urls`` may be a split folder, its ``manifest.json``, a brace pattern, a list
    of URLs, or remote URLs webdataset opens. Counts come from the manifest beside
    the shards; local shards without one are counted by reading their headers.
    """
    manifest_url = None
    if isinstance(urls, (str, Path)):
        text = str(urls)
        if Path(text).is_dir():
            manifest_url = str(Path(text) / MANIFEST)
            listed = None
        elif text.endswith(".json"):
            manifest_url = text
            listed = None
        else:
            listed = list(wds.shardlists.expand_urls(text))
    else:
        listed = [str(u) for u in urls]
        if not listed:
            raise BioscanError("no shard URLs given")
    if manifest_url is None:
        manifest_url = _join(_dirname(listed[0]), MANIFEST)
    text = _read_text(manifest_url)
    manifest = None
    if text is not None:
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise BioscanError(f"unreadable shard manifest {manifest_url}: {exc}") from None
    elif listed is None:
        raise BioscanError(f"no shard manifest at {manifest_url}")

    base = _dirname(manifest_url)
    if manifest is not None:
        by_name = {s["name"]: s["count"] for s in manifest["shards"]}
        if listed is None:
            listed = [_join(base, s["name"]) for s in manifest["shards"]]
        names = [posixpath.basename(u) if "://" in u else Path(u).name for u in listed]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise BioscanError(f"shard {unknown[0]} is not in the manifest {manifest_url}")
        counts = [by_name[n] for n in names]
    else:
        counts = [_count_local(u) for u in listed]
    labels_text = _read_text(_join(_dirname(base), LABELS))
    labels = json.loads(labels_text)["ranks"] if labels_text else None
    return ShardSet(listed, counts, labels)


def _count_local(url: str) -> int:
    if "://" in url or url.startswith("pipe:") or not Path(url).is_file():
        raise BioscanError(f"cannot count the samples of {url}: no manifest.json beside it")
    keys = set()
    with tarfile.open(url) as tar:
        for info in tar:
            keys.add(_split_name(info.name)[0])
    return len(keys)


# ----------------------------------------------------------------------------- stages

_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key/extension rule


def _split_name(name: str) -> tuple[str, str]:
    m = _NAME.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")


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


def read_segments(segments, urls: list[str], wanted: frozenset[str], errors: ErrorPolicy):
    """Samples ``start <= i < stop`` of each segment's shard, with the wanted members."""
    for seg in segments:
        done = 0
        try:
            for sample in _read_segment(urls[seg.shard], seg.start, seg.stop, wanted):
                done += 1
                yield sample
        except BioscanError as exc:
            errors.handle(exc, seg.stop - seg.start - done)


def _read_segment(url: str, start: int, stop: int, wanted: frozenset[str]):
    """Samples of one segment: the compiled walk for local shards, else Python's tarfile."""
    found = tarscan.read_members(url, start, stop, sorted(wanted)) if tarscan.is_local(url) else None
    if found is None:
        yield from _read_segment_tarfile(url, start, stop, wanted)
        return
    keys, values, present, error = found
    columns = {ext: (values[ext].to_pylist(), present[ext].tolist()) for ext in values}
    for i, key in enumerate(keys.to_pylist()):
        sample = {"__key__": key, "__url__": url}
        for ext, (payloads, has) in columns.items():
            if has[i]:
                sample[ext] = payloads[i]
        yield sample
    if error is not None:
        raise error


def _read_segment_tarfile(url: str, start: int, stop: int, wanted: frozenset[str]):
    try:
        stream = wds.gopen(url)
    except Exception as exc:
        raise BioscanError(f"cannot open shard {url}: {exc}") from None
    index, key, sample = -1, None, None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if not info.isreg():
                continue
            name_key, ext = _split_name(info.name)
            if name_key != key:
                if sample is not None and index >= start:
                    yield sample
                index, key = index + 1, name_key
                if index >= stop:
                    return
                sample = {"__key__": key, "__url__": url}
            if index >= start and ext in wanted:
                sample[ext] = tar.extractfile(info).read()
            tar.members = []  # stream mode: keep memory flat
    except (tarfile.TarError, OSError, EOFError) as exc:
        where = f" after sample {key}" if key else ""
        raise BioscanError(f"shard {url}: corrupt or truncated tar{where}: {exc}") from None
    finally:
        stream.close()
    if sample is not None and start <= index < stop:
        yield sample
    if index + 1 < stop:
        raise BioscanError(f"shard {url} ends after sample {index + 1}; expected at least {stop} samples")


def decode_samples(samples, task: "_Task", epoch: int, errors: ErrorPolicy):
    """Decode each sample; a bad one is raised or skipped per the policy."""
    for sample in samples:
        try:
            yield task.decode(sample, epoch)
        except BioscanError as exc:
            errors.handle(exc, 1)


def refill(samples, expected: int, errors: ErrorPolicy, reservoir_size: int = 256):
    """Keep the planned sample count when bad samples were skipped.

    Repeats recent good samples in place of skipped ones, so every rank still
    yields ``len(loader)`` batches and DDP does not wait on a short rank.
    """
    recent, n = [], 0
    for sample in samples:
        n += 1
        if len(recent) < reservoir_size:
            recent.append(sample)
        else:
            recent[n % reservoir_size] = sample
        yield sample
    if n < expected:
        if not recent:
            raise BioscanError(f"every one of the {expected} samples planned for this worker was bad")
        for i in range(expected - n):
            yield recent[i % len(recent)]


def read_blocks(segments, urls: list[str], ext: str, errors: ErrorPolicy):
    """Columnar read: per segment, a block ``{"__key__": keys, ext: payloads}`` of Arrow arrays.

    Local shards go through the compiled header walk (no Python object per sample);
    remote ones, and shards with headers it does not read, through the Python reader.
    Under the skip policy a fault loses only the samples it made unreadable.
    """
    for seg in segments:
        url = urls[seg.shard]
        found = tarscan.read_column(url, seg.start, seg.stop, ext) if tarscan.is_local(url) else None
        block, missing, error = found if found is not None else _python_block(url, seg.start, seg.stop, ext)
        for key in missing:
            errors.handle(BioscanError(f"shard {url}: sample {key} has no .{ext} member"), 1)
        if error is not None:
            errors.handle(error, seg.stop - seg.start - len(block["__key__"]) - len(missing))
        if len(block["__key__"]):
            yield block


def _python_block(url: str, start: int, stop: int, ext: str):
    keys, values, missing, error = [], [], [], None
    try:
        for sample in _read_segment(url, start, stop, frozenset([ext])):
            if ext in sample:
                keys.append(sample["__key__"])
                values.append(sample[ext])
            else:
                missing.append(sample["__key__"])
    except BioscanError as exc:
        error = exc
    return {"__key__": pa.array(keys, pa.large_string()), ext: pa.array(values, pa.large_binary())}, missing, error


def refill_blocks(blocks, expected: int):
    """Block-level :func:`refill`: repeat rows of the last good block in place of skipped ones."""
    n, last = 0, None
    for block in blocks:
        n += len(block["__key__"])
        last = block
        yield block
    if n < expected:
        if last is None:
            raise BioscanError(f"every one of the {expected} samples planned for this worker was bad")
        index = pa.array(np.arange(expected - n) % len(last["__key__"]))
        yield {k: v.take(index) for k, v in last.items()}


def block_batches(blocks, batch_size: int, rng: np.random.Generator | None):
    """Batches of ``batch_size`` rows cut from the blocks, shuffled by index within a block.

    A block is permuted once (one Arrow ``take``), then cut into zero-copy slices;
    rows left over from one block join the next, so only the last batch is partial.
    """
    leftover = None
    for block in blocks:
        if leftover is not None:
            block = {k: pa.concat_arrays([leftover[k], v]) for k, v in block.items()}
        n = len(block["__key__"])
        if rng is not None:
            order = pa.array(rng.permutation(n))
            block = {k: v.take(order) for k, v in block.items()}
        full = n - n % batch_size
        for i in range(0, full, batch_size):
            yield {k: v.slice(i, batch_size) for k, v in block.items()}
        leftover = {k: v.slice(full) for k, v in block.items()}
    if leftover is not None and len(leftover["__key__"]):
        yield leftover


def _sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """Per-sample generator: augmentation depends on (seed, epoch, processid) only."""
    digest = hashlib.blake2b(f"{seed}|{epoch}|{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclass
class _Task:
    """What a task reads from each sample and how it decodes and collates it."""

    name: str
    modalities: tuple[str, ...]
    train: bool
    seed: int
    tokenizer: KmerTokenizer
    mask_prob: float = 0.5
    label_mode: str = "masked"
    random_offset: bool = False
    token_dtype: torch.dtype = torch.int64
    label_rank: str = "species"
    labels: dict | None = None
    image_size: int = 224
    resize: int = 256
    image_dtype: str = "uint8"
    hflip: bool = True
    vflip: bool = False
    _lookup: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.labels is not None:
            self._lookup = {r: {v: i for i, v in enumerate(vals)} for r, vals in self.labels.items()}

    @functools.cached_property
    def members(self) -> frozenset[str]:
        wanted = set()
        if "dna" in self.modalities:
            wanted.add("dna")
        if "image" in self.modalities:
            wanted.add("jpg")
        if self.name != "mlm":
            wanted.add("json")
        return frozenset(wanted)

    @property
    def np_dtype(self):
        return np.int64 if self.token_dtype == torch.int64 else np.int32

    def decode(self, sample: dict, epoch: int) -> dict:
        key = sample["__key__"]
        where = f"{sample['__url__']}: {key}"
        for ext in self.members:
            if ext not in sample:
                raise BioscanError(f"shard {sample['__url__']}: sample {key} has no .{ext} member")
        out = {"processid": key}
        if "dna" in sample:
            out["dna"] = sample["dna"]
        if "json" in sample:
            try:
                out["record"] = json.loads(sample["json"])
            except ValueError as exc:
                raise BioscanError(f"bad JSON in {where}.json: {exc}") from None
        if "jpg" in sample:
            # Prepared, not yet decoded: the pixels are made inside im.stack, straight into the batch.
            if self.train:
                out["image"] = im.decode_train(sample["jpg"], self.image_size, _sample_rng(self.seed, epoch, key),
                                               hflip=self.hflip, vflip=self.vflip, where=f"{where}.jpg")
            else:
                out["image"] = im.decode_eval(sample["jpg"], self.image_size, self.resize, where=f"{where}.jpg")
        return out

    def label_index(self, record: dict, rank: str) -> int:
        value = record.get(rank)
        return -1 if value is None else self._lookup[rank].get(value, -1)

    def collate_block(self, block: dict, epoch: int) -> dict:
        """An MLM batch from a block of Arrow columns: one tokenizer call, no per-sample work."""
        keys = block["__key__"]
        # One storage for the three tensors: a worker hands the batch over in one
        # shared-memory segment instead of three.
        out = np.empty((3, len(keys), self.tokenizer.n_tokens), dtype=self.np_dtype)
        self.tokenizer.encode_mlm(
            block["dna"], keys, seed=self.seed, epoch=epoch,
            mask_prob=self.mask_prob, label_mode=self.label_mode,
            random_offset=self.random_offset, out=(out[0], out[1], out[2]),
        )
        ids, att, labels = torch.from_numpy(out)
        return {"processid": keys.to_pylist(), "input_ids": ids, "attention_mask": att, "labels": labels}

    def collate(self, samples: list[dict], epoch: int, errors: ErrorPolicy) -> dict:
        """A batch of the per-sample tasks (classify, clip, embed).

        Images are decoded while they are stacked, so damage only the decoder sees
        surfaces here; under the skip policy the bad ones are found, counted, and
        good samples of the batch stand in for them.
        """
        if "image" in self.modalities and errors.mode == "skip":
            try:
                return self._collate(samples, epoch)
            except BioscanError:
                samples = _without_bad_images(samples, errors)
        return self._collate(samples, epoch)

    def _collate(self, samples: list[dict], epoch: int) -> dict:
        pids = [s["processid"] for s in samples]
        batch: dict = {"processid": pids}
        if "dna" in self.modalities:
            ids, att = self.tokenizer.encode([s["dna"] for s in samples], return_tensors="pt", dtype=self.np_dtype)
            batch["input_ids"], batch["attention_mask"] = ids, att
        if "image" in self.modalities:
            batch["image"] = im.stack([s["image"] for s in samples], self.image_dtype)
        records = [s["record"] for s in samples]
        if self.name == "classify":
            batch["label"] = torch.tensor([self.label_index(r, self.label_rank) for r in records], dtype=torch.int64)
        elif self.name == "clip":
            batch["text"] = [" ".join(r.get(k) or MISSING_RANK_TEXT for k in TEXT_RANKS) for r in records]
        elif self.name == "embed":
            for rank in RANKS:
                batch[f"{rank}_index"] = torch.tensor([self.label_index(r, rank) for r in records], dtype=torch.int64)
        return batch


def _without_bad_images(samples: list[dict], errors: ErrorPolicy) -> list[dict]:
    bad = []
    for i, sample in enumerate(samples):
        try:
            sample["image"].load()
        except BioscanError as exc:
            errors.handle(exc, 1)
            bad.append(i)
    good = [s for i, s in enumerate(samples) if i not in bad]
    if not good:
        raise BioscanError(f"every image of a batch of {len(samples)} was bad")
    return good + [good[j % len(good)] for j in range(len(bad))]


class EpochStream(IterableDataset):
    """One rank's batches for the current epoch; each DataLoader worker runs its share."""

    def __init__(self, shards: ShardSet, task: _Task, *, batch_size: int, drop_last: bool, pad: bool,
                 shuffle: bool, shuffle_buffer: int, rank: int, world_size: int, epoch, on_error: str = "raise"):
        self.shards, self.task = shards, task
        self.batch_size, self.drop_last, self.pad = batch_size, drop_last, pad
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._epoch = epoch  # shared with the workers, so set_epoch reaches persistent ones
        self.on_error = on_error

    def __len__(self) -> int:
        return dist_plan.batches_per_rank(self.shards.total, self.world_size, self.batch_size,
                                          self.pad, self.drop_last, self.rank)

    def plan(self, epoch: int, worker: int, num_workers: int) -> list[dist_plan.Segment]:
        """The shard segments this rank's ``worker`` reads in ``epoch``."""
        order = dist_plan.shard_order(len(self.shards.urls), self.task.seed, epoch, self.shuffle)
        start, stop = dist_plan.rank_range(self.shards.total, self.rank, self.world_size, self.pad)
        lo, hi = dist_plan.worker_range(start, stop, self.batch_size, worker, num_workers, self.drop_last)
        return dist_plan.segments(self.shards.counts, order, lo, hi)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self._epoch.value)
        task = self.task
        segments = self.plan(epoch, worker, num_workers)
        expected = sum(seg.stop - seg.start for seg in segments)
        errors = ErrorPolicy(self.on_error)
        if task.name == "mlm":
            # Batch-level stages: columns in, one tokenizer call per batch out.
            rng = np.random.default_rng([task.seed, epoch, self.rank, worker]) if self.shuffle else None
            stages = [
                lambda: iter(segments),
                lambda segs: read_blocks(segs, self.shards.urls, "dna", errors),
                lambda blocks: refill_blocks(blocks, expected),
                lambda blocks: block_batches(blocks, self.batch_size, rng),
                lambda batches: (task.collate_block(block, epoch) for block in batches),
            ]
        else:
            stages = [
                lambda: iter(segments),
                lambda segs: read_segments(segs, self.shards.urls, task.members, errors),
            ]
            if self.shuffle:
                rng = random.Random(f"{task.seed}|{epoch}|{self.rank}|{worker}")
                stages.append(wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng))
            stages += [
                lambda samples: decode_samples(samples, task, epoch, errors),
                lambda samples: refill(samples, expected, errors),
                wds.batched(self.batch_size, collation_fn=lambda samples: task.collate(samples, epoch, errors),
                            partial=True),
            ]
        stages.append(lambda batches: _report(batches, errors))
        return iter(wds.DataPipeline(*stages))


def _report(batches, errors: ErrorPolicy):
    """Carry the skipped samples' messages to the main process with the next batch."""
    for batch in batches:
        skipped = errors.drain()
        if skipped:
            batch["_skipped"] = skipped
        yield batch


class BioscanLoader:
    """A DataLoader over an :class:`EpochStream`, with exact ``len`` and ``set_epoch``."""

    def __init__(self, dataset: EpochStream, dataloader: DataLoader, epoch):
        self.dataset, self.dataloader, self._epoch = dataset, dataloader, epoch
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
        for batch in self.dataloader:
            skipped = batch.pop("_skipped", None)
            if skipped:
                self.errors.extend(skipped)
            yield batch
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
    shuffle_buffer: int = 1000,
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
) -> BioscanLoader:
    """A PyTorch DataLoader over BIOSCAN-5M shards for one task.

    Parameters
    ----------
    urls : str, path or list of str
        A split folder, its ``manifest.json``, a brace pattern
        (``shards/train/train-{000000..000028}.tar``), a list of URLs, or remote URLs
        webdataset opens (``pipe:``, ``http(s)://``...) with a manifest beside them.
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
    shuffle_buffer : int
        Samples held by each worker's shuffle buffer.
    drop_last : bool
        Drop each rank's last partial batch.
    pad : bool, optional
        Give every rank ``ceil(N / world_size)`` samples, repeating fewer than
        ``world_size`` samples, so all ranks yield the same number of batches
        (default: True except for ``embed``, which yields every record exactly once).
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
        and recent good samples stand in for them so ``len()`` still holds.

    Returns
    -------
    BioscanLoader
        Iterable of batches with an exact ``len()`` and ``set_epoch()``.
    """
    if task not in TASKS:
        raise BioscanError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if batch_size < 1:
        raise BioscanError(f"batch_size must be at least 1, got {batch_size}")
    if on_error not in ("raise", "skip"):
        raise BioscanError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    modalities = _modalities(task, modality)
    shards = find_shards(urls)
    if task in ("classify", "embed") and shards.labels is None:
        raise BioscanError(f"task {task!r} needs labels.json beside the split folder of {shards.urls[0]}")
    if task == "classify" and label_rank not in RANKS:
        raise BioscanError(f"unknown label_rank {label_rank!r}; ranks are {', '.join(RANKS)}")
    if train is None:
        train = task != "embed"
    if pad is None:
        pad = task != "embed"
    if shuffle is None:
        shuffle = train
    if rank is None or world_size is None:
        rank, world_size = dist_plan.world_info()
    if not 0 <= rank < world_size:
        raise BioscanError(f"rank {rank} is outside world size {world_size}")
    spec = _Task(
        task, modalities, train, seed, KmerTokenizer(k=k, max_len=max_len, n_as_base=n_as_base),
        mask_prob=mask_prob, label_mode=label_mode, random_offset=random_offset, token_dtype=token_dtype,
        label_rank=label_rank, labels=shards.labels, image_size=image_size, resize=resize,
        image_dtype=image_dtype, hflip=hflip, vflip=vflip,
    )
    shared_epoch = multiprocessing.get_context().RawValue("q", int(epoch))
    dataset = EpochStream(shards, spec, batch_size=batch_size, drop_last=drop_last, pad=pad,
                          shuffle=shuffle, shuffle_buffer=shuffle_buffer, rank=rank,
                          world_size=world_size, epoch=shared_epoch, on_error=on_error)
    kwargs = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **kwargs,
    )
    return BioscanLoader(dataset, loader, shared_epoch)


def _as_is(batch: dict) -> dict:
    """The stages already collate; torch's default_convert would walk every id string."""
    return batch


def _modalities(task: str, modality) -> tuple[str, ...]:
    defaults = {"mlm": ("dna",), "classify": ("dna",), "clip": ("image", "dna"), "embed": ("dna", "image")}
    if modality is None or task in ("mlm", "clip"):
        return defaults[task]
    chosen = (modality,) if isinstance(modality, str) else tuple(modality)
    bad = [m for m in chosen if m not in ("dna", "image")]
    if bad or not chosen or (task == "classify" and len(chosen) != 1):
        raise BioscanError(f"modality for {task!r} must be {'one of' if task == 'classify' else 'any of'} 'dna', 'image'; got {modality!r}")
    return chosen

"""Handing batches from DataLoader workers to the main process through reused shared memory.

Measured on 2 cores (BENCHMARKS.md, "Hand-over"): PyTorch sends each tensor a
worker yields as a *new* shared-memory segment, passed to the main process as a
file descriptor over a fresh socket connection with an authentication
handshake; both processes then fault in every page of it. For an MLM batch
(1 MB of tokens) that is about 1.5 ms per batch, more than making it; for an
image batch (38 MB), about 0.6 ms per MB.

A :class:`SlotArena` is one shared-memory block made once by the main process
and inherited (or, with ``spawn``, passed once) by the workers: each worker owns
a few slots of it, makes each batch's tensors inside a free slot
(:func:`empty`), and sends only where they lie (:meth:`SlotArena.pack`). The
main process wraps them as tensors over the same pages (:meth:`SlotArena.unpack`,
no copy). and frees the slot when the last of them is garbage-collected. Slot
states live in the block's header, one ``uint32`` each:

=============  ================================================================
``0``          free
``LIVE``       delivered: held by the main process until its tensors are freed
``g``          taken by a worker in the loader's ``g``-th iteration (in flight)
=============  ================================================================

A slot taken in an earlier iteration and never delivered (an epoch left early:
the DataLoader drops what its workers had prefetched) is free again for its
worker, which alone writes to it. When every slot of a worker is held (a
consumer keeping many batches), the worker falls back to PyTorch's own
hand-over: slower, never blocked, never wrong.

Without workers (``num_workers=0``) there is no hand-over, but new memory for
each batch costs the same page faults: a 256-image float32 batch is 154 MB,
about 55 ms to fault in even ``madvise``-populated, half the time its images
take to decode and crop. A :class:`BatchBuffers` (one per loader) makes the
batches in a few reused buffers instead, each free again when the last tensor
over it is garbage-collected -- the rule the arena's main-process side follows.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import os
import sys
import threading
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["SlotArena", "BatchBuffers", "empty", "empty_array", "shared_tensor", "in_slots", "prefault"]

log = logging.getLogger("bioscan_io")
LIVE = np.uint32(0xFFFFFFFF)
_ALIGN = 64  # every tensor starts on a cache line
_HEADER = 4096  # slot states, then the iteration counter


class SlotArena:
    """Shared memory of ``workers x slots`` batches of at most ``slot_bytes`` each.

    Parameters
    ----------
    workers : int
        DataLoader workers; worker ``w`` owns slots ``w*slots .. (w+1)*slots - 1``.
    slots : int
        Slots per worker: the batches it can have in flight or held by the main
        process before it falls back to PyTorch's hand-over.
    slot_bytes : int
        Bytes of one batch's tensors (each rounded up to 64 bytes).
    """

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        self.workers, self.slots = workers, slots
        self.slot_bytes = _aligned(slot_bytes)
        if workers * slots * 4 + 8 > _HEADER:
            raise ValueError(f"{workers * slots} slots do not fit the arena's header")
        self.block = shared_tensor((self.nbytes(workers, slots, slot_bytes),), torch.uint8)
        self._attach()
        self._states[:] = 0
        self._iteration[0] = 1

    @staticmethod
    def nbytes(workers: int, slots: int, slot_bytes: int) -> int:
        """The arena's size: its header and every slot."""
        return _HEADER + workers * slots * _aligned(slot_bytes)

    def _attach(self) -> None:
        """This process's views of the block, and its own bookkeeping."""
        n = self.workers * self.slots
        self._bytes = self.block.numpy()
        self._states = self._bytes[: n * 4].view(np.uint32)
        self._iteration = self._bytes[n * 4 + 4:n * 4 + 8].view(np.uint32)
        self._live = [0] * n  # main process: tensors of each delivered slot still alive
        self._lock = threading.Lock()
        self._slot: list[int] | None = None  # worker: (slot, bytes used) of the batch being made

    def __getstate__(self):  # the block travels as a shared tensor; process-local state stays behind
        return {"workers": self.workers, "slots": self.slots, "slot_bytes": self.slot_bytes, "block": self.block}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._attach()

    @classmethod
    def fitting(cls, workers: int, slots: int, slot_bytes: int) -> SlotArena | None:
        """An arena, or None when it would take more than half of the free shared memory.

        Its pages are allocated as they are first written; a container's small
        ``/dev/shm`` (Docker's default is 64 MB) would end the workers with SIGBUS
        then, so the loader uses PyTorch's own hand-over instead (and says so once).
        """
        need = cls.nbytes(workers, slots, slot_bytes)
        free = _shm_free()
        if free is not None and need > free // 2:
            log.info("bioscan_io: %d MiB of batch slots would not fit in /dev/shm (%d MiB free): workers hand "
                     "batches over the slower PyTorch way; give the container more shared memory (--shm-size)",
                     need >> 20, free >> 20)
            return None
        return cls(workers, slots, slot_bytes)

    # ------------------------------------------------------------------ main process

    def new_iteration(self) -> None:
        """Mark the start of an iteration over the loader (slots taken before and never delivered go free)."""
        self._iteration[0] = self._iteration[0] % (LIVE - 1) + 1

    def unpack(self, batch: dict) -> dict:
        """The batch with tensors over the slot where :meth:`pack` listed them.

        The slot goes free when the last of those tensors (or of views of them)
        is garbage-collected.
        """
        placed = batch.pop("_slot", None)
        if placed is None:
            return batch
        slot, places = placed
        self._states[slot] = LIVE
        self._live[slot] = len(places)
        base = _HEADER + slot * self.slot_bytes
        for name, offset, dtype, shape in places:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            array = self._bytes[base + offset:base + offset + nbytes].view(dtype).reshape(shape)
            weakref.finalize(array, self._release, slot).atexit = False
            batch[name] = torch.from_numpy(array)
        return batch

    def _release(self, slot: int) -> None:
        with self._lock:
            self._live[slot] -= 1
            if self._live[slot] == 0:
                self._states[slot] = 0

    # ------------------------------------------------------------------ worker

    def take(self, worker: int) -> bool:
        """Start a batch in a free slot of ``worker``; False when all of them are held."""
        now = self._iteration[0]
        lo = worker * self.slots
        for slot in range(lo, lo + self.slots):
            state = self._states[slot]
            if state == 0 or (state != LIVE and state != now):
                self._states[slot] = now
                self._slot = [slot, 0]
                return True
        self._slot = None
        return False

    def allocate(self, shape: tuple, dtype) -> np.ndarray | None:
        """An array inside the current slot, or None (no slot, or no room left in it)."""
        if self._slot is None:
            return None
        slot, used = self._slot
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if used + nbytes > self.slot_bytes:
            return None
        self._slot[1] = used + _aligned(nbytes)
        base = _HEADER + slot * self.slot_bytes + used
        return self._bytes[base:base + nbytes].view(dtype).reshape(shape)

    def drop(self) -> None:
        """Give back the current slot unused."""
        if self._slot is not None:
            self._states[self._slot[0]] = 0
            self._slot = None

    def pack(self, batch: dict) -> dict:
        """Replace the batch's tensors that lie in the current slot by their places in it."""
        if self._slot is None:
            return batch
        slot = self._slot[0]
        self._slot = None
        base = self._bytes.ctypes.data + _HEADER + slot * self.slot_bytes
        places = []
        for name, value in list(batch.items()):
            if isinstance(value, torch.Tensor) and value.is_contiguous() \
                    and base <= value.data_ptr() < base + self.slot_bytes:
                places.append((name, value.data_ptr() - base, str(value.numpy().dtype), tuple(value.shape)))
                del batch[name]
        if not places:  # nothing was made in the slot
            self._states[slot] = 0
            return batch
        batch["_slot"] = (slot, places)
        return batch


class BatchBuffers:
    """Reused memory for the batches a process makes for itself (a loader with ``num_workers=0``).

    :meth:`empty` hands out a tensor over one of at most ``slots`` buffers, or
    None (the caller allocates) when every buffer is held. Each tensor wraps a
    numpy view made for it alone; the tensor's storage keeps that view alive,
    and a finalizer on the view frees the buffer when the view is
    garbage-collected -- that is, when nothing can read the batch any more: no
    tensor or view of it (``batch[0]``, ``torch.split``), no numpy array over it
    (``.numpy()``), no storage object, no tensor autograd saved for a backward
    pass. A batch the consumer keeps keeps its buffer, and is never written
    again; the next batches take another buffer, or new memory.

    Two slots serve the usual loop: while the next batch is made, the consumer
    (and the loader's own stages) still hold the current one; the one before it
    has gone. A third serves a consumer one batch ahead (a prefetching trainer).
    Buffers are made when first needed, pre-faulted, and kept for the life of
    this object (the loader's); a larger batch replaces a free buffer too small
    for it. Pickles as a new, empty set (each process its own).
    """

    def __init__(self, slots: int = 3):
        self.slots = int(slots)
        self._buffers: list[np.ndarray] = []  # flat uint8 arrays
        self._held: list[bool] = []
        self._lock = threading.RLock()

    def __reduce__(self):
        return (BatchBuffers, (self.slots,))

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor | None:
        """A tensor over a free buffer (its bytes left as they were), or None when every buffer is held."""
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        nbytes = math.prod(shape) * np_dtype.itemsize
        with self._lock:
            slot = next((i for i, (buf, held) in enumerate(zip(self._buffers, self._held))
                         if not held and buf.nbytes >= nbytes), None)
            if slot is None:
                if len(self._buffers) < self.slots:
                    slot = len(self._buffers)
                    self._buffers.append(_EMPTY_BUFFER)
                    self._held.append(False)
                else:  # a free buffer too small for this batch is replaced
                    slot = next((i for i, held in enumerate(self._held) if not held), None)
                    if slot is None:
                        return None
                buf = np.empty(nbytes, np.uint8)
                prefault(buf)
                self._buffers[slot] = buf
            self._held[slot] = True
            buf = self._buffers[slot]
        view = buf[:nbytes].view(np_dtype).reshape(shape)
        weakref.finalize(view, self._release, slot).atexit = False
        return torch.from_numpy(view)

    def _release(self, slot: int) -> None:
        # One store, no lock: a finalizer may run inside :meth:`empty` (a garbage collection it set off).
        self._held[slot] = False

    def held(self) -> int:
        """Buffers held by batches still alive."""
        return sum(self._held)


_EMPTY_BUFFER = np.empty(0, np.uint8)


def _shm_free() -> int | None:
    """Bytes free in ``/dev/shm`` (where PyTorch's shared memory lives on Linux), None where unknown."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def shared_tensor(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor in shared memory whose pages are not touched until used (sent from a worker without a copy)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # a PyTorch without it: share_memory_() copies, touching every page once
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(new_shared(nbytes)).view(shape)


_MADV_POPULATE_WRITE = 23  # Linux 5.14+
_madvise: Any = None  # libc's madvise once looked up; False where unavailable


def prefault(array) -> None:
    """Fault in new memory's pages in one system call instead of one page fault per 4 KiB.

    ``array``: a numpy array or a CPU tensor, contiguous. ``madvise(MADV_POPULATE_WRITE)``;
    measured 50 -> 38 us per 224x224 image for shared memory, 36 -> 21 us for private
    memory. Silently skipped where the kernel or platform lacks it.
    """
    global _madvise
    if _madvise is False:
        return
    if _madvise is None:
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("not Linux")
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
            return
    if isinstance(array, np.ndarray):
        addr = array.ctypes.data
    else:
        addr = array.data_ptr()
    if not array.nbytes:
        return
    start = addr - addr % mmap.PAGESIZE
    if _madvise(start, addr + array.nbytes - start, _MADV_POPULATE_WRITE) != 0:
        _madvise = False  # EINVAL: a kernel before 5.14


_CURRENT: SlotArena | None = None  # the arena of this worker process, while a batch is being made


def empty_array(shape: tuple, dtype) -> np.ndarray:
    """A new numpy array for a batch: in the worker's current slot when there is one, else private memory."""
    if _CURRENT is not None:
        out = _CURRENT.allocate(shape, dtype)
        if out is not None:
            return out
    return np.empty(shape, dtype)


def empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor | None:
    """A new tensor in the worker's current slot, or None when there is no slot or room (caller allocates)."""
    if _CURRENT is None:
        return None
    out = _CURRENT.allocate(shape, torch.empty((), dtype=dtype).numpy().dtype)
    return None if out is None else torch.from_numpy(out)


def in_slots(batches, arena: SlotArena | None, worker: int):
    """Pipeline stage (in a worker): each batch made inside a slot of ``arena``, and packed."""
    global _CURRENT
    if arena is None:
        yield from batches
        return
    batches = iter(batches)
    while True:
        arena.take(worker)
        _CURRENT = arena
        try:
            batch = next(batches, None)
        except BaseException:  # an error raised while making the batch: the slot holds nothing
            arena.drop()
            raise
        finally:
            _CURRENT = None
        if batch is None:
            arena.drop()
            return
        yield arena.pack(batch)

"""Where the time of handing a batch from a DataLoader worker to the main process goes.

    python benchmarks/handover_costs.py

Two workers yield ready-made items (nothing to compute), so each figure is the
hand-over alone, per item, as the main process sees it: an MLM batch of 256
(``(3, 256, 165)`` int64 tokens, 1 MB, plus 256 processid strings) sent

- as a fresh tensor (PyTorch's default: a new shared-memory segment per tensor,
  its file descriptor passed over a socket, pages faulted in on both sides);
- as a tensor already in shared memory (the descriptor passing alone);
- with ``torch.multiprocessing``'s ``file_system`` sharing strategy;
- as a numpy array or bytes (pickled through the result pipe);
- through ``bioscan_io.handover.SlotArena`` (written into a reused slot, only its
  place sent; the main process wraps the slot as a tensor);
- and a tiny item (the DataLoader's own cost per item).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bioscan_io import handover

ITEMS, SHAPE = 400, (3, 256, 165)
PIDS = ["BIOUG00000-A01"] * 256


class Items(IterableDataset):
    def __init__(self, kind: str, arena=None):
        self.kind, self.arena = kind, arena

    def __iter__(self):
        info = get_worker_info()
        for _ in range(ITEMS // info.num_workers):
            if self.kind == "arena":
                self.arena.take(info.id)
                handover._CURRENT = self.arena
                tokens = handover.empty(SHAPE, torch.int64)
                handover._CURRENT = None
                tokens.fill_(1)
                yield self.arena.pack({"tokens": tokens, "processid": PIDS})
            elif self.kind == "tiny":
                yield {"n": 1}
            elif self.kind == "shared tensor":
                yield {"tokens": torch.ones(SHAPE, dtype=torch.int64).share_memory_(), "processid": PIDS}
            elif self.kind in ("tensor", "tensor, file_system strategy"):
                yield {"tokens": torch.ones(SHAPE, dtype=torch.int64), "processid": PIDS}
            elif self.kind == "numpy":
                yield {"tokens": np.ones(SHAPE, np.int64), "processid": PIDS}
            else:
                yield {"tokens": np.ones(SHAPE, np.int64).tobytes(), "processid": PIDS}


def per_item(kind: str) -> float:
    arena = handover.SlotArena(2, 4, 8 * int(np.prod(SHAPE))) if kind == "arena" else None
    torch.multiprocessing.set_sharing_strategy("file_system" if "file_system" in kind else "file_descriptor")
    loader = DataLoader(Items(kind, arena), batch_size=None, num_workers=2, persistent_workers=True,
                        collate_fn=lambda item: item)
    best = float("inf")
    for _ in range(4):  # the first pass starts the workers
        t0 = time.perf_counter()
        for item in loader:
            if arena is not None:
                item = arena.unpack(item)
        best = min(best, (time.perf_counter() - t0) / ITEMS)
    return best


def main() -> None:
    print(f"hand-over of one item from 2 workers, {SHAPE} int64 tokens + 256 ids, {ITEMS} items, best of 3:")
    for kind in ("tensor", "shared tensor", "tensor, file_system strategy", "numpy", "bytes", "arena", "tiny"):
        print(f"  {kind:30s} {per_item(kind) * 1e6:8.0f} us per item")


if __name__ == "__main__":
    sys.exit(main())

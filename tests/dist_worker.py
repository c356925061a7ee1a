"""Run under torchrun by test_loader.py: one rank of a gloo job iterating make_loader.

Every batch does an all_reduce, as DDP's gradient sync does, so a rank with fewer
batches than the others would hang the job (the test's timeout catches that).
Writes what this rank saw to OUT/rank{RANK}.json.
"""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

from bioscan_io.loader import make_loader


def main(urls: str, out: str, task: str, num_workers: int, batch_size: int, epochs: int) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    loader = make_loader(urls, task, batch_size=batch_size, num_workers=num_workers, seed=3)
    seen = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        pids, batches = [], 0
        for batch in loader:
            step = torch.ones(1)
            dist.all_reduce(step)
            pids.extend(batch["processid"])
            batches += 1
        seen.append({"batches": batches, "pids": pids})
    result = {"rank": dist.get_rank(), "world": dist.get_world_size(), "len": len(loader), "epochs": seen}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    urls, out, task, workers, batch, epochs = sys.argv[1:7]
    main(urls, out, task, int(workers), int(batch), int(epochs))

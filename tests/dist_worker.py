"""Run under torchrun by test_loader.py: one rank of a gloo job iterating make_loader.

Every batch does an all_reduce, as DDP's gradient sync does (or, for
``embed-gather``, an all_gather of the batch's outputs, as an evaluation loop
does), so a rank with fewer batches than the others would hang the job (the
test's timeout catches that).
Writes what this rank saw to OUT/rank{RANK}.json.
"""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

from bioscan_io.distributed import all_gather_valid, all_gather_valid_objects
from bioscan_io.loader import make_loader


def main(urls: str, out: str, task: str, num_workers: int, batch_size: int, epochs: int) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    if task == "embed-gather":
        return gather_embeddings(urls, out, num_workers, batch_size)
    if task == "embed-extract":
        return extract(urls, out, num_workers, batch_size)
    if task.startswith("resume-"):
        return resume(urls, out, task, num_workers, batch_size)
    task, _, policy = task.partition(":")  # "mlm:skip": on_error="skip"
    loader = make_loader(urls, task, batch_size=batch_size, num_workers=num_workers, seed=3,
                         on_error=policy or "raise")
    seen = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        pids, batches = [], 0
        for batch in loader:
            step = torch.ones(1)
            dist.all_reduce(step)
            pids.extend(batch["processid"])
            batches += 1
        seen.append({"batches": batches, "pids": pids, "skipped": loader.skipped})
    result = {"rank": dist.get_rank(), "world": dist.get_world_size(), "len": len(loader), "epochs": seen}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def gather_embeddings(urls: str, out: str, num_workers: int, batch_size: int) -> None:
    """The usual evaluation loop: an all_gather of every batch's outputs, padding dropped."""
    loader = make_loader(urls, "embed", batch_size=batch_size, num_workers=num_workers)
    pids, rows, batches = [], 0, 0
    for batch in loader:
        features = batch["species_index"].float().unsqueeze(1)  # stands in for a model's output
        rows += len(all_gather_valid(features, batch["valid"]))
        pids.extend(all_gather_valid_objects(batch["processid"], batch["valid"]))
        batches += 1
    result = {"rank": dist.get_rank(), "len": len(loader), "batches": batches, "gathered": pids, "rows": rows}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def extract(urls: str, out: str, num_workers: int, batch_size: int) -> None:
    """extract_embeddings under torch.distributed: every rank gets every record once."""
    from bioscan_io.evaluation import extract_embeddings

    model = torch.nn.Embedding(300, 4)
    torch.nn.init.constant_(model.weight, 1.0)
    forward = lambda m, batch: m(batch["input_ids"]).mean(dim=1)  # noqa: E731
    loader = make_loader(urls, "embed", modality="dna", batch_size=batch_size, num_workers=num_workers)
    emb = extract_embeddings(model, loader, forward=forward)
    result = {"rank": dist.get_rank(), "gathered": list(emb.processids), "rows": int(emb.features.shape[0]),
              "species": emb.labels["species"].tolist()}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def resume(urls: str, out: str, task: str, num_workers: int, batch_size: int) -> None:
    """``resume-save``: half an epoch, then every rank saves its state; ``resume-load``: the rest, from rank 0's."""
    loader = make_loader(urls, "mlm", batch_size=batch_size, num_workers=num_workers, seed=3)
    rank = dist.get_rank()
    limit = len(loader) // 2 if task == "resume-save" else None
    if task == "resume-load":
        with open(os.path.join(out, "state0.json")) as f:
            loader.load_state_dict(json.load(f))
    pids, labels, batches = [], [], 0
    for batch in loader:
        step = torch.ones(1)
        dist.all_reduce(step)
        pids.extend(batch["processid"])
        labels.extend(batch["labels"].tolist())
        batches += 1
        if batches == limit:
            break
    if task == "resume-save":
        with open(os.path.join(out, f"state{rank}.json"), "w") as f:
            json.dump(loader.state_dict(), f)
    result = {"rank": rank, "len": len(loader), "batches": batches, "pids": pids, "labels": labels}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    urls, out, task, workers, batch, epochs = sys.argv[1:7]
    main(urls, out, task, int(workers), int(batch), int(epochs))

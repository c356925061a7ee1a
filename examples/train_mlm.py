"""Masked-language-model pretraining on BIOSCAN-5M barcodes (BarcodeBERT-style), tiny.

Single process:
    python examples/train_mlm.py --shards shards/pretrain --steps 20
Two processes on CPU (gloo), or one per GPU (nccl):
    torchrun --standalone --nproc_per_node=2 examples/train_mlm.py --shards shards/pretrain --steps 20

Checkpoints (model, optimizer and the loader's position) every --save-every steps;
--resume continues from the last one, mid-epoch, with the very next batch, also
on another number of processes (the loader re-splits the rest of the epoch):
    torchrun --standalone --nproc_per_node=2 examples/train_mlm.py --steps 200 --save-every 50
    (kill it after step 100)
    torchrun --standalone --nproc_per_node=3 examples/train_mlm.py --steps 200 --save-every 50 --resume

Without --shards it shards the bundled demo data's pretrain split into ./shards first.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from bioscan_io import make_loader
from bioscan_io.tokenizer import KmerTokenizer
from bioscan_io.wording import plural


class TinyBert(nn.Module):
    """A small transformer encoder with an MLM head: enough to show the loop."""

    def __init__(self, vocab_size: int, n_tokens: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(1, n_tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids, attention_mask):
        x = self.tokens(input_ids) + self.positions
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.head(x)


def save_checkpoint(path: str, step: int, model: nn.Module, opt, loader) -> None:
    """Model, optimizer and loader position, written whole or not at all."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict()}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, model: nn.Module, opt, loader) -> int:
    """Restore what :func:`save_checkpoint` wrote; the step it was taken at."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    (model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    return state["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="split folder of pretrain shards (default: shard the demo data)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="checkpoint.pt", help="where checkpoints are written and read")
    p.add_argument("--save-every", type=int, default=0, help="save a checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")

    shards = args.shards
    if shards is None:
        shards = os.path.join("shards", "pretrain")
        if rank == 0 and not os.path.exists(os.path.join(shards, "manifest.json")):
            from bioscan_io.shard import shard_split

            print(shard_split(split="pretrain", out="shards", progress=False).line())
        if distributed:
            dist.barrier()

    torch.manual_seed(args.seed)
    loader = make_loader(shards, "mlm", batch_size=args.batch_size, num_workers=args.workers, seed=args.seed)
    tok = KmerTokenizer()
    model = TinyBert(tok.vocab_size, tok.n_tokens).to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)

    step, started = 0, time.perf_counter()
    if args.resume:
        step = load_checkpoint(args.checkpoint, model, opt, loader)
        if rank == 0:
            print(f"resumed at step {step} (epoch {loader.epoch})")
    epoch = loader.epoch
    if rank == 0:
        world = dist.get_world_size() if distributed else 1
        print(f"{plural(len(loader), 'batch', 'batches')} per epoch per rank, {plural(world, 'rank')}, "
              f"batch size {args.batch_size}")
    while step < args.steps:
        loader.set_epoch(epoch)  # the epoch a resumed loader is in keeps its position
        for batch in loader:
            ids = batch["input_ids"].to(device, non_blocking=True)
            att = batch["attention_mask"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            logits = model(ids, att)
            loss = loss_fn(logits.view(-1, logits.size(-1)), labels.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if rank == 0 and (step % 5 == 0 or step == 1):
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} (chance {math.log(tok.vocab_size):.2f})", flush=True)
            if args.save_every and step % args.save_every == 0 and rank == 0:
                # Ranks advance in lockstep (equal batches on every rank): rank 0's loader state is enough.
                save_checkpoint(args.checkpoint, step, model, opt, loader)
                print(f"saved {args.checkpoint} at step {step}", flush=True)
            if step >= args.steps:
                break
        epoch += 1
    if rank == 0:
        print(f"done: {step} steps in {time.perf_counter() - started:.1f} s")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

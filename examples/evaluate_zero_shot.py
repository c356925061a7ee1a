"""The BIOSCAN-5M evaluation protocols end to end, on the bundled demo data, on CPU.

    python examples/evaluate_zero_shot.py                 # demo data, 60 MLM steps
    python examples/evaluate_zero_shot.py --root ~/datasets/bioscan --steps 2000

1. shards the splits it needs (pretrain, train, test, key_unseen, test_unseen) into
   a temporary folder (or --shards DIR, kept and reused);
2. trains a tiny BarcodeBERT-style DNA encoder a few masked-language-model steps on
   ``pretrain`` (``make_loader(..., task="mlm")``);
3. embeds every split with ``make_loader(..., task="embed")`` and
   ``bioscan_io.evaluation.extract_embeddings`` (mean pooling over the attention
   mask), for three encoders: 4-mer counts (no training), the encoder before
   training, and after;
4. zero-shot clustering of ``test`` + ``test_unseen`` (UMAP to 50 dimensions,
   Ward agglomerative clustering, AMI), at several ranks;
5. retrieval classification as BIOSCAN-CLIP evaluates BIOSCAN-5M: queries from
   ``test`` (seen species) and ``test_unseen`` (unseen species), keys from
   ``train`` + ``key_unseen``, the nearest key by cosine similarity as the
   prediction; top-1 accuracy, micro and macro, at order, family, genus, species.

Needs the ``eval`` extra: pip install '.[eval]' (from the checkout). The demo data is tiny
(a few dozen test records), so the numbers show the pipeline, not a benchmark.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from bioscan_io import KmerTokenizer, make_loader, shard_split
from bioscan_io.evaluation import (
    RETRIEVAL_RANKS,
    Embeddings,
    extract_embeddings,
    retrieval_classification,
    zero_shot_clustering,
)

SPLITS = ("pretrain", "train", "test", "key_unseen", "test_unseen")


class TinyEncoder(nn.Module):
    """A small transformer over k-mer tokens; ``forward`` gives token embeddings, ``mlm`` logits."""

    def __init__(self, vocab_size: int, n_tokens: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids, attention_mask):
        pad = attention_mask == 0
        pad = pad & ~pad.all(dim=1, keepdim=True)  # a barcode shorter than one k-mer: attend to everything
        return self.encoder(self.tokens(input_ids) + self.positions, src_key_padding_mask=pad)

    def mlm(self, input_ids, attention_mask):
        return self.head(self(input_ids, attention_mask))


class KmerCounts(nn.Module):
    """No training: each barcode as the frequencies of its k-mers (a classic baseline)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask):
        counts = torch.zeros(input_ids.shape[0], self.vocab_size)
        counts.scatter_add_(1, input_ids, attention_mask.float())
        return counts / counts.sum(1, keepdim=True).clamp_min(1)


def train_mlm(model: TinyEncoder, shards: Path, steps: int, batch_size: int, seed: int, lr: float) -> float:
    """A few BarcodeBERT-style MLM steps; returns the last loss."""
    loader = make_loader(shards, "mlm", batch_size=batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    model.train()
    step, epoch, loss = 0, 0, math.nan
    while step < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            logits = model.mlm(batch["input_ids"], batch["attention_mask"])
            loss_t = loss_fn(logits.view(-1, logits.size(-1)), batch["labels"].view(-1))
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            loss, step = loss_t.item(), step + 1
            if step >= steps:
                break
        epoch += 1
    model.eval()
    return loss


def embed_splits(model: nn.Module, shards: Path, batch_size: int) -> dict[str, Embeddings]:
    return {split: extract_embeddings(model, make_loader(shards / split, "embed", modality="dna",
                                                         batch_size=batch_size))
            for split in SPLITS if split != "pretrain"}


def _fmt(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{x:5.3f}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="dataset root holding bioscan5m/ (default: the bundled demo data)")
    p.add_argument("--shards", help="folder for the shards, kept and reused (default: a temporary folder)")
    p.add_argument("--steps", type=int, default=60, help="MLM training steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ranks", nargs="+", default=["species", "genus", "family", "order"],
                   help="ranks for zero-shot clustering (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()

    if args.root is None:
        from bioscan_io.synth import demo_root

        args.root = str(demo_root())
    tmp = None
    if args.shards is None:
        tmp = tempfile.mkdtemp(prefix="bioscan-eval-")
        shards = Path(tmp)
    else:
        shards = Path(args.shards)
    try:
        for split in SPLITS:
            shard_split(args.root, split, out=shards, progress=False, log=lambda m: None)
        print(f"data: {args.root}; shards in {shards} ({time.perf_counter() - started:.1f} s)")

        torch.manual_seed(args.seed)
        tok = KmerTokenizer()
        model = TinyEncoder(tok.vocab_size, tok.n_tokens, dim=args.dim)
        untrained = copy.deepcopy(model).eval()
        t0 = time.perf_counter()
        loss = train_mlm(model, shards / "pretrain", args.steps, args.batch_size, args.seed, args.lr)
        print(f"MLM: {args.steps} steps, last loss {loss:.3f} (chance {math.log(tok.vocab_size):.2f}), "
              f"{time.perf_counter() - t0:.1f} s")

        encoders = {"4-mer counts": KmerCounts(tok.vocab_size), "untrained": untrained,
                    f"MLM {args.steps} steps": model}
        t0 = time.perf_counter()
        embeddings = {name: embed_splits(m, shards, 64) for name, m in encoders.items()}
        sizes = {s: len(e) for s, e in next(iter(embeddings.values())).items()}
        print("embedded " + ", ".join(f"{s} {n}" for s, n in sizes.items()) + f" ({time.perf_counter() - t0:.1f} s)")

        # Zero-shot clustering of test + test_unseen.
        t0 = time.perf_counter()
        zsc: dict[str, dict] = {}
        notes: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, emb in embeddings.items():
                pool = Embeddings.concat(emb["test"], emb["test_unseen"])
                zsc[name] = {r: zero_shot_clustering(pool, rank=r, seed=args.seed) for r in args.ranks}
        for w in caught:
            msg = str(w.message)
            if msg.startswith("zero-shot clustering") and msg not in notes:
                notes.append(msg)
        first = next(iter(zsc.values()))[args.ranks[0]]
        n_pool = first.n_samples + first.n_excluded
        print(f"\nZero-shot clustering, test+test_unseen ({n_pool} barcodes): AMI of UMAP-{first.params['n_components']}"
              f" + Ward clusters vs true labels ({time.perf_counter() - t0:.1f} s)")
        width = max(len(n) for n in encoders) + 2
        print(f"{'encoder':<{width}}" + "".join(f"{r:>9}" for r in args.ranks))
        for name, per_rank in zsc.items():
            print(f"{name:<{width}}" + "".join(f"{per_rank[r].ami:9.3f}" for r in args.ranks))
        any_encoder = next(iter(zsc.values()))
        print(f"{'(classes)':<{width}}" + "".join(f"{any_encoder[r].n_classes:9d}" for r in args.ranks))
        for note in notes:
            print(f"note: {note}")

        # Retrieval classification: seen (test) and unseen (test_unseen) queries, train + key_unseen keys.
        t0 = time.perf_counter()
        retrieval = {}
        for name, emb in embeddings.items():
            keys = Embeddings.concat(emb["train"], emb["key_unseen"])
            retrieval[name] = retrieval_classification({"seen": emb["test"], "unseen": emb["test_unseen"]}, keys)
        print(f"\nRetrieval classification (DNA -> DNA, cosine, top-1), keys train+key_unseen "
              f"({sizes['train'] + sizes['key_unseen']}); accuracy micro / macro ({time.perf_counter() - t0:.1f} s)")
        print(f"{'encoder':<{width}}{'queries':<22}" + "".join(f"{r:>14}" for r in RETRIEVAL_RANKS))
        for name, groups in retrieval.items():
            for group, res in groups.items():
                split = "test" if group == "seen" else "test_unseen"
                cells = "".join(f"   {_fmt(res.accuracy[r].micro)}/{_fmt(res.accuracy[r].macro)}"
                                for r in RETRIEVAL_RANKS)
                print(f"{name:<{width}}{f'{group} ({split})':<22}" + cells)
        print(f"\ndone in {time.perf_counter() - started:.1f} s")
        return {
            "zero_shot_clustering": {n: {r: res.ami for r, res in per.items()} for n, per in zsc.items()},
            "retrieval": {n: {g: res.as_dict() for g, res in groups.items()} for n, groups in retrieval.items()},
            "sizes": sizes,
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    main()
    sys.exit(0)

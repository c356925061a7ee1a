"""Baselines shared by the benchmarks: what a user without bioscan-io would run."""

from __future__ import annotations

import importlib.util
import random
import time
from itertools import product
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bioscan_io.schema import MAX_NUCLEOTIDES

K = 4
MAX_LEN = MAX_NUCLEOTIDES
MASK_PROB = 0.5


class BarcodeBertStyle:
    """The baseline: BarcodeBERT-style per-sequence tokenizing and masking in Python."""

    def __init__(self, k: int = K, max_len: int = MAX_LEN, mask_prob: float = MASK_PROB, seed: int = 0):
        self.k, self.max_len, self.mask_prob = k, max_len, mask_prob
        self.vocab = {"".join(p): i + 2 for i, p in enumerate(product("ACGT", repeat=k))}
        self.rng = random.Random(seed)

    def __call__(self, seq: str) -> tuple[list, list, list]:
        k, max_len = self.k, self.max_len
        x = seq[self.rng.randrange(k) :]  # BarcodeBERT's randomize_offset
        n_tokens = max_len // k
        if len(x) > max_len:
            x = x[:max_len]
            att = [1] * n_tokens
        else:
            n_att = len(x) // k
            att = [1] * n_att + [0] * (n_tokens - n_att)
            x = x + "N" * (max_len - len(x))
        get = self.vocab.get
        ids = [get(x[i : i + k], 1) for i in range(0, max_len - k + 1, k)]
        rnd, p = self.rng.random, self.mask_prob
        inputs, labels = [], []
        for v, a in zip(ids, att):
            if a and v >= 2:
                labels.append(v - 2)
                inputs.append(0 if rnd() < p else v)
            else:
                labels.append(-100)
                inputs.append(v)
        return inputs, att, labels

    def batch(self, seqs: list[str]) -> list:
        return [self(s) for s in seqs]


# ----------------------------------------------------------------------------- MLM over columnar data
#
# What a user assembles from stock parts to get the batches of make_loader(task="mlm"):
# record batches of a Parquet file or a Hugging Face ``datasets`` dataset, each tokenized
# and 50%-masked by ``KmerTokenizer.encode_mlm`` (k=4) into tensors. A source is a
# callable ``source(n)`` -> iterable of ``(barcodes, processids)`` Arrow columns for
# pass ``n`` (shuffled sources draw a new order from it; the others ignore it).

MLM_BATCH, MLM_PASSES = 256, 5
#: The columns an MLM batch needs.
MLM_COLUMNS = ["dna_barcode", "processid"]


class Batches:
    """``passes`` passes over record batches from ``source(n)``, each tokenized and masked (or only counted).

    The rounds.py protocol: ``epoch() -> (seconds, samples)``; one warm pass is made
    when built (files opened, pages cached, caches filled).
    """

    def __init__(self, source, tokenize: bool = True, passes: int = MLM_PASSES):
        from bioscan_io.tokenizer import KmerTokenizer

        self.source, self.tokenize, self.passes = source, tokenize, passes
        self.tokenizer = KmerTokenizer(k=4)
        self.n_epoch = 0
        self.epoch()

    def epoch(self) -> tuple[float, int]:
        self.n_epoch += 1
        t0 = time.perf_counter()
        n = 0
        for p in range(self.passes):
            for dna, pid in self.source(self.n_epoch * self.passes + p):
                if self.tokenize:
                    out = self.tokenizer.encode_mlm(dna, pid, seed=0, epoch=self.n_epoch, return_tensors="pt")
                    assert out["input_ids"].shape[0] == len(dna)
                n += len(dna)
        return time.perf_counter() - t0, n

    def close(self):
        pass


def _hf_dataset(parquet: Path, cache: Path):
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_parquet(str(parquet), cache_dir=str(cache))


def hf_source(parquet: Path, cache: Path, fast: bool, batch: int = MLM_BATCH):
    """Hugging Face ``datasets``, in file order: ``iter(batch)`` as documented, or the fastest way.

    ``fast``: only the two columns, in Arrow format (no Python object per value).
    """
    ds = _hf_dataset(parquet, cache)
    if fast:
        ds = ds.select_columns(MLM_COLUMNS).with_format("arrow")
        return lambda n: ((b.column("dna_barcode"), b.column("processid")) for b in ds.iter(batch))
    return lambda n: ((b["dna_barcode"], b["processid"]) for b in ds.iter(batch))


def hf_shuffled_source(parquet: Path, cache: Path, batch: int = MLM_BATCH):
    """The fast two-column HF path, shuffled each pass: ``Dataset.shuffle(seed)`` (an indices mapping).

    Then sequential batches of the mapping, as ``iter`` reads them (kept in memory:
    no indices file written per pass).
    """
    ds = _hf_dataset(parquet, cache).select_columns(MLM_COLUMNS).with_format("arrow")

    def batches(n: int):
        for b in ds.shuffle(seed=n, keep_in_memory=True).iter(batch):
            yield b.column("dna_barcode"), b.column("processid")
    return batches


def hf_iterable_source(parquet: Path, cache: Path, buffer_size: int, num_shards: int, batch: int = MLM_BATCH):
    """The two columns as an ``IterableDataset`` (``num_shards`` shards), ``shuffle(buffer_size)`` in Arrow format.

    HF's streaming shuffle: the shard order shuffled, and rows through a shuffle
    buffer of ``buffer_size``; ``set_epoch(n)`` draws a new order each pass.
    """
    ds = _hf_dataset(parquet, cache).select_columns(MLM_COLUMNS)
    stream = ds.to_iterable_dataset(num_shards=num_shards).shuffle(seed=0, buffer_size=buffer_size)
    stream = stream.with_format("arrow")

    def batches(n: int):
        stream.set_epoch(n)
        for b in stream.iter(batch_size=batch):
            yield b.column("dna_barcode"), b.column("processid")
    return batches


def parquet_source(parquet: Path, columns: tuple[str, ...], batch: int = MLM_BATCH):
    """pyarrow ``ParquetFile.iter_batches(batch)`` of ``columns`` (the barcode first), in file order."""
    def batches(n: int):
        for b in pq.ParquetFile(parquet).iter_batches(batch, columns=list(columns)):
            yield b.column(columns[0]), (b.column(columns[1]) if len(columns) > 1 else None)
    return batches


def parquet_shuffled_source(parquet: Path, batch: int = MLM_BATCH):
    """make_loader's shuffle over Parquet: row groups in a new order each pass, each one's rows permuted.

    The file's row groups stand for the shards (written the same size), so the
    shuffle window is the same; the permuted rows are cut into batches across
    row-group ends, as the loader cuts its stream.
    """
    import numpy as np

    def batches(n: int):
        f = pq.ParquetFile(parquet, memory_map=True)
        rng = np.random.default_rng(n)
        rest = None
        for g in rng.permutation(f.num_row_groups):
            group = f.read_row_group(int(g), columns=MLM_COLUMNS)
            group = group.take(rng.permutation(group.num_rows))
            table = group if rest is None else pa.concat_tables([rest, group])
            at = 0
            while table.num_rows - at >= batch:
                b = table.slice(at, batch)
                yield b.column("dna_barcode"), b.column("processid")
                at += batch
            rest = table.slice(at)
        if rest is not None and rest.num_rows:
            yield rest.column("dna_barcode"), rest.column("processid")
    return batches


def memory_source(parquet: Path, batch: int = MLM_BATCH):
    """The two columns read whole into memory, cut into batches once: what the kernel alone reads."""
    table = pq.read_table(parquet, columns=MLM_COLUMNS)
    batches = [(b.column(0), b.column(1)) for b in table.to_batches(batch)]
    return lambda n: iter(batches)


def have_datasets() -> str | None:
    """None, or why the Hugging Face pipelines are skipped."""
    if importlib.util.find_spec("datasets") is None:
        return "Hugging Face datasets is not installed (pip install datasets)"
    return None

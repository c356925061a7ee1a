"""Baselines shared by the benchmarks: what a user without bioscan-io would run."""

from __future__ import annotations

import random
from itertools import product

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

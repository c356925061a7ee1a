"""DNA barcodes: per-BIN consensus sequences, mutated per record, with awkward cases.

Consensus sequences descend class -> order -> family -> genus -> species -> BIN,
each a mutated copy of its parent, so that records of a species differ by ~1 %
and related species share more bases.  Most barcodes have 658 bases; small
shares are long, short or very short, or hold N runs and other IUPAC letters.
"""

from __future__ import annotations

import numpy as np

from .common import _S_AWKWARD, _S_BARCODE, _rng
from .taxonomy import _Species

__all__: list[str] = []

_IUPAC_AMBIGUOUS = np.frombuffer(b"RYKMSWBDHV", dtype=np.uint8)
_ACGT = np.frombuffer(b"ACGT", dtype=np.uint8)
_N = ord("N")
_CONSENSUS_LENGTH = 1500
_BARCODE_LENGTH = 658

_CODON_W = np.array([0.35, 0.15, 2.5])  # 3rd codon positions mutate most
_CODON_W = _CODON_W / _CODON_W.mean()
_POS_W = np.resize(_CODON_W, _CONSENSUS_LENGTH)


class _Barcodes:
    """Consensus sequences: class -> order -> family -> genus -> species -> BIN."""

    def __init__(self, rng):
        self.rng = rng
        self.cache = {}

    def _mutate(self, seq, rate):
        mask = self.rng.random(len(seq)) < rate * _POS_W[: len(seq)]
        out = seq.copy()
        out[mask] = (out[mask] + self.rng.integers(1, 4, int(mask.sum()), dtype=np.uint8)) % 4
        return out

    def _get(self, key, parent, rate):
        seq = self.cache.get(key)
        if seq is None:
            if parent is None:  # AT-rich like insect COI
                seq = self.rng.choice(4, size=_CONSENSUS_LENGTH, p=[0.31, 0.15, 0.15, 0.39]).astype(np.uint8)
            else:
                seq = self._mutate(parent, rate)
            self.cache[key] = seq
        return seq

    def consensus(self, sp: _Species, bin_name: str | None):
        g = sp.genus
        root = self._get(("root",), None, 0)
        cls = self._get(("c", g.klass), root, 0.18)
        order = self._get(("o", g.order), cls, 0.14)
        fam = self._get(("f", g.family), order, 0.12)
        gen = self._get(("g", g.name or g.family + "?"), fam, 0.10)
        spc = self._get(("s", sp.name), gen, 0.05)
        return self._get(("b", sp.name, bin_name), spc, 0.015)

    def record(self, sp, bin_name, length):
        seq = self.consensus(sp, bin_name)[:length]
        return self._mutate(seq, 0.005)


def _quota(rng, n, rate, eligible):
    """About rate*n distinct indices among eligible, at least 1 when n >= 50."""
    k = int(round(rate * n))
    if n >= 50:
        k = max(k, 1)
    k = min(k, len(eligible))
    if k == 0:
        return set()
    return set(rng.choice(np.asarray(eligible), size=k, replace=False).tolist())


def _barcode_lengths(n, arng):
    """Barcode length of every record: 658 bases but for a few records in each odd length class."""
    perm = arng.permutation(n)
    # exclusive length classes
    k_long, k_short, k_vshort, k_near = (max(1 if n >= 50 else 0, int(round(r * n))) for r in (0.01, 0.04, 0.003, 0.04))
    lengths = np.full(n, _BARCODE_LENGTH)
    p = 0
    for k, lo, hi in ((k_long, 700, 1500), (k_short, 150, 600), (k_vshort, 10, 60), (k_near, 620, 661)):
        sel = perm[p : p + k]
        p += k
        lengths[sel] = arng.integers(lo, hi + 1, len(sel))
    return lengths


def _spoil(s, i, cases, arng):
    """Write the unreadable bases of record ``i`` into its sequence ``s`` (ASCII codes)."""
    n_inside, n_trailing, leading, iupac = cases
    L = len(s)
    if i in n_inside:
        run = int(arng.integers(1, 26))
        start = int(arng.integers(20, max(21, L - run - 20)))
        s[start : start + run] = _N
    if i in n_trailing:
        s[L - int(arng.integers(5, min(120, L // 3))) :] = _N
    if i in leading:
        s[: int(arng.integers(1, 30))] = _N
    if i in iupac:
        pos = arng.integers(0, L, int(arng.integers(1, 5)))
        s[pos] = _IUPAC_AMBIGUOUS[arng.integers(0, len(_IUPAC_AMBIGUOUS), len(pos))]


def _make_barcodes(n, species, bins, seed):
    """The barcode of every record, from its species' consensus for its (true) BIN."""
    bc = _Barcodes(_rng(seed, _S_BARCODE))
    arng = _rng(seed, _S_AWKWARD)
    lengths = _barcode_lengths(n, arng)
    long_enough = np.arange(n)[lengths >= 100]
    n_inside = _quota(arng, n, 0.03, long_enough)
    n_trailing = _quota(arng, n, 0.03, long_enough)
    iupac = _quota(arng, n, 0.02, long_enough)
    leading = _quota(arng, n, 0.005, long_enough)
    cases = (n_inside, n_trailing, leading, iupac)
    out = []
    for i in range(n):
        s = _ACGT[bc.record(species[i], bins[i], int(lengths[i]))]
        _spoil(s, i, cases, arng)
        out.append(s.tobytes().decode("ascii"))
    return out

"""DNA barcodes: per-BIN consensus sequences, mutated per record, with awkward cases.

Consensus sequences descend class -> order -> family -> genus -> species -> BIN,
each a mutated copy of its parent, so that records of a species differ by ~1 %
and related species share more bases.  Most barcodes have 658 bases; small
shares are long, short or very short, or hold N runs and other IUPAC letters.

The barcodes are made in file order, a chunk of records at a time
(:class:`_BarcodeMaker`); a consensus sequence is drawn when its first record
comes, so the same records give the same barcodes whatever the chunk size.
"""

from __future__ import annotations

from array import array

import numpy as np

from .common import _S_AWKWARD, _S_BARCODE, _rng

__all__: list[str] = []

_IUPAC_AMBIGUOUS = np.frombuffer(b"RYKMSWBDHV", dtype=np.uint8)
_N = ord("N")
_CONSENSUS_LENGTH = 1500
_BARCODE_LENGTH = 658

_CODON_W = np.array([0.35, 0.15, 2.5])  # 3rd codon positions mutate most
_CODON_W = _CODON_W / _CODON_W.mean()
_POS_W = np.resize(_CODON_W, _CONSENSUS_LENGTH)
_THRESHOLDS: dict[float, np.ndarray] = {}  # mutation rate -> rate * _POS_W, the draws below which a base mutates
_TO_ASCII = bytes.maketrans(bytes(range(4)), b"ACGT")

# A difference from the genus' sequence, packed in a uint16: position | base << 11.
_POS_BITS = 11
assert _CONSENSUS_LENGTH <= 1 << _POS_BITS


def _pack(seq, base):
    """The bases where ``seq`` differs from ``base``, packed (see _POS_BITS)."""
    pos = np.flatnonzero(seq != base)
    return (pos | (seq[pos].astype(np.uint16) << _POS_BITS)).astype(np.uint16)


def _unpack(base, packed):
    """``base`` with the packed differences applied (a new array)."""
    seq = base.copy()
    seq[packed & ((1 << _POS_BITS) - 1)] = packed >> _POS_BITS
    return seq


class _PackedList:
    """Many short uint16 arrays in a few large blocks: a numpy array each would cost ~100 bytes more."""

    _BLOCK = 1 << 22

    def __init__(self):
        self.blocks = []
        self.starts, self.sizes = array("q"), array("H")
        self.free = 0  # free items at the end of the last block

    def append(self, values) -> int:
        """Store ``values``; returns its index."""
        k = len(values)
        if not self.blocks or k > self.free:  # an item never spans two blocks
            self.blocks.append(np.empty(max(self._BLOCK, k), dtype=np.uint16))
            self.free = len(self.blocks[-1])
        block = self.blocks[-1]
        start = len(block) - self.free
        block[start : start + k] = values
        self.free -= k
        self.starts.append(start + self._BLOCK * (len(self.blocks) - 1))
        self.sizes.append(k)
        return len(self.sizes) - 1

    def __getitem__(self, i):
        b, start = divmod(self.starts[i], self._BLOCK)
        return self.blocks[b][start : start + self.sizes[i]]


class _Consensus:
    """Consensus sequences: class -> order -> family -> genus -> species -> BIN.

    The few ancestors (root to genus) are kept whole.  Species and BINs number
    up to millions, so a BIN's sequence is kept as its differences from its
    genus' sequence (~100 of 1500 bases), and a species' only while one of its
    BINs is still to be drawn (``bins_left``: how many BINs each species' records use).
    """

    def __init__(self, rng, genera, species_genus, bins_left):
        self.rng = rng
        self.cache = {}
        self.genera = genera
        self.genus_seq = [None] * len(genera)  # by genus id
        self.species_genus = species_genus
        self.species_diff = {}
        self.bins_left = bins_left
        self.bin_at = array("i", [-1]) * (3 * len(species_genus))  # (species, slot) -> index in bin_diff
        self.bin_diff = _PackedList()

    def _mutate(self, seq, rate, in_place=False):
        """``seq`` with each base changed to another at ``rate`` (times its codon position's weight)."""
        thresholds = _THRESHOLDS.get(rate)
        if thresholds is None:
            thresholds = _THRESHOLDS[rate] = rate * _POS_W
        where = np.flatnonzero(self.rng.random(len(seq)) < thresholds[: len(seq)])
        out = seq if in_place else seq.copy()
        if len(where):  # no draw either way: integers() draws nothing for size 0
            out[where] = (out[where] + self.rng.integers(1, 4, len(where), dtype=np.uint8)) % 4
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

    def _genus(self, gid):
        seq = self.genus_seq[gid]
        if seq is None:
            g = self.genera[gid]
            root = self._get(("root",), None, 0)
            cls = self._get(("c", g.klass), root, 0.18)
            order = self._get(("o", g.order), cls, 0.14)
            fam = self._get(("f", g.family), order, 0.12)
            seq = self.genus_seq[gid] = self._get(("g", g.name or g.family + "?"), fam, 0.10)
        return seq

    def _new_bin(self, sp, slot):
        """Draw the sequence of BIN ``slot`` of species ``sp`` (and the species' own, the first time)."""
        gseq = self._genus(self.species_genus[sp])
        diff = self.species_diff.pop(sp, None)
        spc = self._mutate(gseq, 0.05) if diff is None else _unpack(gseq, diff)
        self.bins_left[sp] -= 1
        if self.bins_left[sp] > 0:
            self.species_diff[sp] = _pack(spc, gseq) if diff is None else diff
        k = self.bin_at[3 * sp + slot] = self.bin_diff.append(_pack(self._mutate(spc, 0.015), gseq))
        return k

    def record(self, sp, slot, length):
        """The barcode bases (0-3) of a record of species ``sp`` in its BIN ``slot``."""
        k = self.bin_at[3 * sp + slot]
        if k < 0:
            k = self._new_bin(sp, slot)
        seq = _unpack(self.genus_seq[self.species_genus[sp]], self.bin_diff[k])[:length]
        return self._mutate(seq, 0.005, in_place=True)


def _quota(rng, n, rate, eligible):
    """About rate*n distinct indices among eligible, at least 1 when n >= 50."""
    k = int(round(rate * n))
    if n >= 50:
        k = max(k, 1)
    k = min(k, len(eligible))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(eligible, size=k, replace=False)


def _barcode_lengths(n, arng):
    """Barcode length of every record: 658 bases but for a few records in each odd length class."""
    perm = arng.permutation(n)
    # exclusive length classes
    k_long, k_short, k_vshort, k_near = (max(1 if n >= 50 else 0, int(round(r * n))) for r in (0.01, 0.04, 0.003, 0.04))
    lengths = np.full(n, _BARCODE_LENGTH, dtype=np.int16)
    p = 0
    for k, lo, hi in ((k_long, 700, 1500), (k_short, 150, 600), (k_vshort, 10, 60), (k_near, 620, 661)):
        sel = perm[p : p + k]
        p += k
        lengths[sel] = arng.integers(lo, hi + 1, len(sel))
    return lengths


# The unreadable bases of a record, as bits of its flags, in the order their
# records are drawn; they are written in the order N run inside, trailing Ns,
# leading Ns, IUPAC letters.
_N_INSIDE, _N_TRAILING, _IUPAC, _N_LEADING = 1, 2, 4, 8
_CASE_RATES = ((_N_INSIDE, 0.03), (_N_TRAILING, 0.03), (_IUPAC, 0.02), (_N_LEADING, 0.005))


def _spoil(s, flags, arng):
    """Write the unreadable bases that ``flags`` asks for into the sequence ``s`` (ASCII codes)."""
    L = len(s)
    if flags & _N_INSIDE:
        run = int(arng.integers(1, 26))
        start = int(arng.integers(20, max(21, L - run - 20)))
        s[start : start + run] = _N
    if flags & _N_TRAILING:
        s[L - int(arng.integers(5, min(120, L // 3))) :] = _N
    if flags & _N_LEADING:
        s[: int(arng.integers(1, 30))] = _N
    if flags & _IUPAC:
        pos = arng.integers(0, L, int(arng.integers(1, 5)))
        s[pos] = _IUPAC_AMBIGUOUS[arng.integers(0, len(_IUPAC_AMBIGUOUS), len(pos))]


class _BarcodeMaker:
    """The barcodes of the records in file order, a chunk at a time.

    Parameters
    ----------
    seed : int
        The dataset's seed.
    species, slots : numpy.ndarray
        Every record's (true) species id and which of its species' BINs it is
        in (0, 1: its own; 2: the one it shares with another species).
    genera : list of _Genus
        The genera, by genus id; ``species_genus`` gives each species' one.
    """

    def __init__(self, seed, species, slots, genera, species_genus):
        n = len(species)
        self.species, self.slots = species, slots
        pairs = np.unique(species.astype(np.int64) * 3 + slots)
        bins_left = np.bincount(pairs // 3, minlength=len(species_genus))
        # array("i") rather than lists: fast to index, 4 bytes a species
        species_genus, bins_left = (array("i", a.astype(np.int32).tobytes()) for a in (species_genus, bins_left))
        self.consensus = _Consensus(_rng(seed, _S_BARCODE), genera, species_genus, bins_left)
        self.arng = _rng(seed, _S_AWKWARD)
        self.lengths = _barcode_lengths(n, self.arng)
        long_enough = np.flatnonzero(self.lengths >= 100)
        self.flags = np.zeros(n, dtype=np.uint8)
        for bit, rate in _CASE_RATES:
            self.flags[_quota(self.arng, n, rate, long_enough)] |= bit

    def chunk(self, start, stop):
        """The barcodes (str) of records ``start`` to ``stop`` (excluded), which must follow the last chunk's."""
        out = []
        record, arng = self.consensus.record, self.arng
        rows = zip(*(a[start:stop].tolist() for a in (self.species, self.slots, self.lengths, self.flags)))
        for sp, slot, length, flags in rows:
            s = record(sp, slot, length).tobytes().translate(_TO_ASCII)
            if flags:
                s = np.frombuffer(bytearray(s), dtype=np.uint8)
                _spoil(s, flags, arng)
                s = s.tobytes()
            out.append(s.decode("ascii"))
        return out

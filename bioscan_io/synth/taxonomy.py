"""The species behind the records: a consistent taxonomy, and which species each split holds.

The splits follow the paper's rules: ``train``/``val``/``test`` hold "seen"
species with binomial names (``val``/``test`` species all occur in ``train``);
``key_unseen``/``val_unseen``/``test_unseen`` hold placeholder species under
scientific genera (``val_unseen``/``test_unseen`` species all occur in
``key_unseen``); ``other_heldout`` holds placeholder species whose genus is
missing or itself a placeholder; ``pretrain`` records are never labelled to
species.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..schema import TAXONOMIC_RANKS
from .common import _stable_int
from .geography import _COUNTRIES, _country_shares
from .taxa import (
    _EPITHETS,
    _FAMILIES,
    _ORDERS,
    _PALETTES,
    _STRESS_SEEN_SPECIES,
    _STRESS_UNSEEN_SPECIES,
)

__all__: list[str] = []


@dataclass(frozen=True)
class _Genus:
    name: str | None  # None: genus not known
    subfamily: str | None
    family: str
    order: str
    klass: str
    phylum: str
    scientific: bool


@dataclass(eq=False)
class _Species:
    name: str
    genus: _Genus
    kind: str  # "seen", "unseen", "other", "hidden"
    weight: float
    bins: list = field(default_factory=list)
    home: int = 0  # index into _COUNTRIES
    colour: tuple = (80, 60, 40)
    size: float = 1.0



class _Taxonomy:
    """Pools of species for each role, built lazily from one random stream."""

    def __init__(self, rng):
        self.rng = rng
        self.names = set()
        self.bins = set()
        self.genera = {}
        for order, family, _, genera in _FAMILIES:
            phylum, klass, _, _ = _ORDERS[order]
            for sub, g in genera:
                self.genera[g] = _Genus(g, sub, family, order, klass, phylum, True)
        # family choice weights: order share x family weight within the order
        fam_w = []
        for order, family, w, genera in _FAMILIES:
            total = sum(x[2] for x in _FAMILIES if x[0] == order)
            fam_w.append(_ORDERS[order][2] * w / total)
        self.family_p = np.array(fam_w) / sum(fam_w)
        self.placeholder_genera = {}  # family -> [genus]
        self.country_p = _country_shares()

    def _random_genus(self):
        order, family, _, genera = _FAMILIES[self.rng.choice(len(_FAMILIES), p=self.family_p)]
        # earlier genera of a family are commoner
        w = 1.0 / np.arange(1, len(genera) + 1) ** 0.8
        sub, g = genera[self.rng.choice(len(genera), p=w / w.sum())]
        return self.genera[g]

    def _new_bin(self):
        while True:
            a = "A" + "ABCDEF"[self.rng.integers(6)] + chr(65 + self.rng.integers(26))
            b = f"BOLD:{a}{self.rng.integers(10000):04d}"
            if b not in self.bins:
                self.bins.add(b)
                return b

    def _finish(self, sp: _Species) -> _Species:
        self.names.add(sp.name)
        r = self.rng.random()
        sp.bins = [self._new_bin()]
        if r < 0.10:
            sp.bins.append(self._new_bin())  # a species split across two BINs
        sp.home = int(self.rng.choice(len(_COUNTRIES), p=self.country_p))
        plan = _ORDERS[sp.genus.order][3]
        pal = _PALETTES[plan]
        # colour is mostly a property of the genus, with a per-species shift
        gbase = pal[_stable_int("colour", sp.genus.name or sp.genus.family) % len(pal)]
        shade = np.exp(self.rng.normal(0, 0.2))
        sp.colour = tuple(int(np.clip(c * shade + self.rng.normal(0, 4), 15, 200)) for c in gbase)
        sp.size = float(np.exp(self.rng.normal(0, 0.15)))
        return sp

    def _epithet(self):
        if self.rng.random() < 0.7:
            return _EPITHETS[self.rng.integers(len(_EPITHETS))]
        a, b = self.rng.choice(len(_EPITHETS), 2)
        stem = _EPITHETS[a][: max(3, len(_EPITHETS[a]) - 3)]
        return stem + _EPITHETS[b][-4:]

    def seen(self, weight, name=None):
        """A "seen" species: a binomial name under a scientific genus (``name`` chooses it)."""
        if name is not None:
            genus = self.genera[name.split()[0]]
        else:
            genus = self._random_genus()
            for _ in range(50):
                name = f"{genus.name} {self._epithet()}"
                if name not in self.names:
                    break
            else:  # pragma: no cover - astronomically unlikely
                name = f"{genus.name} {self._epithet()}{len(self.names)}"
        return self._finish(_Species(name, genus, "seen", weight))

    def _placeholder_suffix(self):
        r = self.rng.random()
        i = self.rng.integers
        if r < 0.30:
            return f"sp. BIOUG{i(10000, 99999)}"
        if r < 0.45:
            return f"Malaise{i(100, 9999)}"
        if r < 0.65:
            return f"sp. {i(1, 40)}"
        if r < 0.80:
            return f"sp. {i(1, 9)}{''.join(chr(65 + x) for x in i(0, 26, 2))}"
        if r < 0.90:
            return f"sp. CR{i(1, 60)}"
        return f"sp. nr. {_EPITHETS[i(len(_EPITHETS))]}"

    def _new_placeholder(self, prefix):
        """A placeholder species name under ``prefix`` that no species has yet."""
        while True:
            name = f"{prefix} {self._placeholder_suffix()}"
            if name not in self.names:
                return name

    def unseen(self, weight, name=None):
        """An "unseen" species: a placeholder name under a scientific genus (``name`` chooses it)."""
        if name is not None:
            genus = self.genera[name.split()[0]]
        else:
            genus = self._random_genus()
            name = self._new_placeholder(genus.name)
        return self._finish(_Species(name, genus, "unseen", weight))

    def other(self, weight):
        """A placeholder species whose genus is missing or a placeholder."""
        g = self._random_genus()
        sub = g.subfamily if self.rng.random() < 0.5 else None
        if self.rng.random() < 0.6:
            genus = _Genus(None, sub, g.family, g.order, g.klass, g.phylum, False)
            prefix = g.family
        else:
            pool = self.placeholder_genera.setdefault(g.family, [])
            if not pool or (len(pool) < 6 and self.rng.random() < 0.4):
                code = f"{chr(65 + len(pool))}" if self.rng.random() < 0.5 else f"{len(pool) + 1}"
                pool.append(_Genus(f"{g.family} gen. {code}", sub, g.family, g.order, g.klass, g.phylum, False))
            genus = pool[self.rng.integers(len(pool))]
            prefix = genus.name
        return self._finish(_Species(self._new_placeholder(prefix), genus, "other", weight))

    def hidden(self, weight):
        """A species only ever seen unlabelled (pretrain)."""
        r = self.rng.random()
        sp = self.seen(weight) if r < 0.55 else self.unseen(weight) if r < 0.85 else self.other(weight)
        sp.kind = "hidden"
        return sp


def _zipf(rng, k):
    """Long-tailed species abundances (log-normal)."""
    return rng.lognormal(0.0, 1.1, k)


def _pick(rng, pool, n):
    """n species drawn from pool by weight."""
    if n == 0:
        return []
    w = np.array([s.weight for s in pool])
    return [pool[i] for i in rng.choice(len(pool), size=n, p=w / w.sum())]


def _weigh(rng, pool):
    """Give the species of a pool long-tailed abundances; returns the pool."""
    for sp, w in zip(pool, _zipf(rng, len(pool))):
        sp.weight = w
    return pool


def _fill_group(out, rng, counts, pool, n_forced, key, followers):
    """Species of a key split and of the splits that only hold the key split's species.

    The first ``n_forced`` species of the pool get one record each in the key split.
    """
    forced = pool[:n_forced]
    out[key] = forced + _pick(rng, pool, counts[key] - len(forced))
    present = list(dict.fromkeys(out[key])) or pool[:1]
    for s in followers:
        out[s] = _pick(rng, present, counts[s])


def _assign_species(counts, tax: _Taxonomy, rng):
    """Hidden true species of every record, per split (list in split order)."""
    out = {}
    n_train = counts["train"]
    seen_pool = [tax.seen(0.0, name) for name in _STRESS_SEEN_SPECIES]
    seen_pool = _weigh(rng, seen_pool + [tax.seen(0.0) for _ in range(max(4, n_train // 5))])
    n_forced = len(_STRESS_SEEN_SPECIES) if n_train >= 8 else 0
    _fill_group(out, rng, counts, seen_pool, n_forced, "train", ("val", "test"))

    n_key = counts["key_unseen"]
    unseen_pool = [tax.unseen(0.0, name) for name in _STRESS_UNSEEN_SPECIES]
    unseen_pool = _weigh(rng, unseen_pool + [tax.unseen(0.0) for _ in range(max(3, n_key // 4))])
    n_forced = len(_STRESS_UNSEEN_SPECIES) if n_key >= 2 * len(_STRESS_UNSEEN_SPECIES) else 0
    _fill_group(out, rng, counts, unseen_pool, n_forced, "key_unseen", ("val_unseen", "test_unseen"))

    n_other = counts["other_heldout"]
    other_pool = _weigh(rng, [tax.other(0.0) for _ in range(max(3, n_other // 3))])
    out["other_heldout"] = _pick(rng, other_pool, n_other)

    n_pre = counts["pretrain"]
    hidden_pool = _weigh(rng, [tax.hidden(0.0) for _ in range(max(4, n_pre // 6))])
    # pretrain also holds unlabelled records of the labelled splits' species
    mix = hidden_pool + seen_pool + unseen_pool + other_pool
    wmix = np.array([s.weight for s in hidden_pool] + [0.3 * s.weight for s in seen_pool + unseen_pool + other_pool])
    out["pretrain"] = [mix[i] for i in rng.choice(len(mix), size=n_pre, p=wmix / wmix.sum())] if n_pre else []
    return out


# Deepest labelled rank of a pretrain record (then capped by what is known).
_PRETRAIN_DEPTH = (("class", 0.01), ("order", 0.06), ("family", 0.55), ("subfamily", 0.08), ("genus", 0.30))


def _labels(sp: _Species, depth: str) -> dict:
    """The taxonomic columns of a record of ``sp`` labelled down to rank ``depth``, and its ``taxon``."""
    g = sp.genus
    values = (g.phylum, g.klass, g.order, g.family, g.subfamily, g.name, sp.name)
    d = TAXONOMIC_RANKS.index(depth)
    lab = {rank: v if i <= d else None for i, (rank, v) in enumerate(zip(TAXONOMIC_RANKS, values))}
    # the taxon is the deepest known rank's value
    lab["taxon"] = next((lab[r] for r in reversed(TAXONOMIC_RANKS) if lab[r] is not None), None)
    return lab

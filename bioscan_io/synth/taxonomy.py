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

from array import array
from dataclasses import dataclass

import numpy as np

from ..schema import TAXONOMIC_RANKS
from .common import _cdf, _draw_index, _stable_int
from .geography import _country_shares
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


# BIN names, BOLD:A{A-F}{A-Z}{4 digits}, are held as integer codes (one byte of a
# bytearray per possible name tells which are taken).
_BIN_SPACE = 6 * 26 * 10000


def _bin_name(code: int) -> str:
    """The BIN name of a code of :meth:`_Taxonomy._new_bin`."""
    return f"BOLD:A{'ABCDEF'[code // 260000]}{chr(65 + code // 10000 % 26)}{code % 10000:04d}"


class _Taxonomy:
    """Every species of a dataset, as columns indexed by species id, drawn from one random stream.

    Millions of records have hundreds of thousands of species, so a species is a
    row of compact columns rather than an object: ``names[i]``, ``genus[i]``
    (an index into ``genera``), ``bins[2 * i]`` and ``bins[2 * i + 1]`` (BIN
    codes, -1 for none; a species spans two BINs at times), ``home[i]`` (index
    into ``_COUNTRIES``), ``colour[3 * i : 3 * i + 3]`` and ``size[i]`` (what
    its photos are drawn with).  :meth:`columns` gives them as numpy arrays.
    """

    def __init__(self, rng):
        self.rng = rng
        self.named_genera = {}  # real genus name -> _Genus
        for order, family, _, genera in _FAMILIES:
            phylum, klass, _, _ = _ORDERS[order]
            for sub, g in genera:
                self.named_genera[g] = _Genus(g, sub, family, order, klass, phylum, True)
        # family choice weights: order share x family weight within the order
        fam_w = []
        for order, _family, w, _genera in _FAMILIES:
            total = sum(x[2] for x in _FAMILIES if x[0] == order)
            fam_w.append(_ORDERS[order][2] * w / total)
        self.family_cdf = _cdf(np.array(fam_w) / sum(fam_w))
        # earlier genera of a family are commoner
        self.genus_cdfs = []
        for _, _, _, genera in _FAMILIES:
            w = 1.0 / np.arange(1, len(genera) + 1) ** 0.8
            self.genus_cdfs.append(_cdf(w / w.sum()))
        self.placeholder_genera = {}  # family -> [genus]
        self.country_p = _country_shares()
        self.country_cdf = _cdf(self.country_p)
        self.names, self.genera = [], []
        self.genus, self.bins, self.home = array("i"), array("i"), array("h")
        self.colour, self.size = array("B"), array("d")
        self._name_set, self._genus_ids, self._colour_base = set(), {}, {}
        self._bin_taken = bytearray(_BIN_SPACE)

    def __len__(self):
        return len(self.names)

    def columns(self) -> dict:
        """The species columns as numpy arrays (``bins`` and ``colour`` with one row per species).

        Call it once every species is made: it drops what making them needed.
        """
        self._name_set = self._bin_taken = None
        return {
            "genus": np.array(self.genus, dtype=np.int32),
            "bins": np.array(self.bins, dtype=np.int32).reshape(-1, 2),
            "home": np.array(self.home, dtype=np.int16),
            "colour": np.array(self.colour, dtype=np.uint8).reshape(-1, 3),
            "size": np.array(self.size, dtype=np.float64),
        }

    def _random_genus(self):
        f = _draw_index(self.rng, self.family_cdf)
        genera = _FAMILIES[f][3]
        return self.named_genera[genera[_draw_index(self.rng, self.genus_cdfs[f])][1]]

    def _new_bin(self) -> int:
        while True:
            letters = int(self.rng.integers(6)) * 26 + int(self.rng.integers(26))
            code = letters * 10000 + int(self.rng.integers(10000))
            if not self._bin_taken[code]:
                self._bin_taken[code] = 1
                return code

    def _genus_id(self, genus: _Genus) -> int:
        gid = self._genus_ids.get(genus)
        if gid is None:
            gid = self._genus_ids[genus] = len(self.genera)
            self.genera.append(genus)
        return gid

    def _finish(self, name: str, genus: _Genus) -> int:
        """Draw the rest of a new species (BINs, home, looks); returns its id."""
        self.names.append(name)
        self._name_set.add(name)
        r = self.rng.random()
        self.bins.append(self._new_bin())
        self.bins.append(self._new_bin() if r < 0.10 else -1)  # a species split across two BINs
        self.home.append(_draw_index(self.rng, self.country_cdf))
        pal = _PALETTES[_ORDERS[genus.order][3]]
        # colour is mostly a property of the genus, with a per-species shift
        key = genus.name or genus.family
        if key not in self._colour_base:
            self._colour_base[key] = _stable_int("colour", key)
        gbase = pal[self._colour_base[key] % len(pal)]
        shade = np.exp(self.rng.normal(0, 0.2))
        self.colour.extend(int(min(max(c * shade + self.rng.normal(0, 4), 15), 200)) for c in gbase)
        self.size.append(float(np.exp(self.rng.normal(0, 0.15))))
        self.genus.append(self._genus_id(genus))
        return len(self.names) - 1

    def _epithet(self):
        if self.rng.random() < 0.7:
            return _EPITHETS[self.rng.integers(len(_EPITHETS))]
        a, b = self.rng.choice(len(_EPITHETS), 2)
        stem = _EPITHETS[a][: max(3, len(_EPITHETS[a]) - 3)]
        return stem + _EPITHETS[b][-4:]

    def seen(self, name=None) -> int:
        """A "seen" species: a binomial name under a scientific genus (``name`` chooses it)."""
        if name is not None:
            genus = self.named_genera[name.split()[0]]
        else:
            genus = self._random_genus()
            for _ in range(50):
                name = f"{genus.name} {self._epithet()}"
                if name not in self._name_set:
                    break
            else:  # pragma: no cover - astronomically unlikely
                name = f"{genus.name} {self._epithet()}{len(self.names)}"
        return self._finish(name, genus)

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
            if name not in self._name_set:
                return name

    def unseen(self, name=None) -> int:
        """An "unseen" species: a placeholder name under a scientific genus (``name`` chooses it)."""
        if name is not None:
            genus = self.named_genera[name.split()[0]]
        else:
            genus = self._random_genus()
            name = self._new_placeholder(genus.name)
        return self._finish(name, genus)

    def other(self) -> int:
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
        return self._finish(self._new_placeholder(prefix), genus)

    def hidden(self) -> int:
        """A species only ever seen unlabelled (pretrain)."""
        r = self.rng.random()
        return self.seen() if r < 0.55 else self.unseen() if r < 0.85 else self.other()


def _pool(rng, ids) -> tuple:
    """A pool of species: their ids and long-tailed (log-normal) abundances."""
    ids = np.asarray(ids, dtype=np.int32)
    return ids, rng.lognormal(0.0, 1.1, len(ids))


def _pick(rng, w, n):
    """Positions of n species drawn by weight from a pool whose weights are ``w``."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(len(w), size=n, p=w / w.sum())


def _first_seen(positions):
    """The distinct values of ``positions`` in the order they first occur."""
    values, first = np.unique(positions, return_index=True)
    return values[np.argsort(first)]


def _fill_group(out, rng, counts, pool, n_forced, key, followers):
    """Species of a key split and of the splits that only hold the key split's species.

    The first ``n_forced`` species of the pool get one record each in the key split.
    """
    ids, w = pool
    forced = np.arange(min(n_forced, len(ids)))
    picked = np.concatenate([forced, _pick(rng, w, counts[key] - len(forced))])
    out[key] = ids[picked]
    present = _first_seen(picked) if len(picked) else np.arange(1)
    for s in followers:
        out[s] = ids[present[_pick(rng, w[present], counts[s])]]


def _assign_species(counts, tax: _Taxonomy, rng) -> dict:
    """Hidden true species (ids) of every record, per split (an array in split order)."""
    out: dict = {}
    n_train = counts["train"]
    stress = [tax.seen(name) for name in _STRESS_SEEN_SPECIES]
    seen_pool = _pool(rng, stress + [tax.seen() for _ in range(max(4, n_train // 5))])
    n_forced = len(_STRESS_SEEN_SPECIES) if n_train >= 8 else 0
    _fill_group(out, rng, counts, seen_pool, n_forced, "train", ("val", "test"))

    n_key = counts["key_unseen"]
    stress = [tax.unseen(name) for name in _STRESS_UNSEEN_SPECIES]
    unseen_pool = _pool(rng, stress + [tax.unseen() for _ in range(max(3, n_key // 4))])
    n_forced = len(_STRESS_UNSEEN_SPECIES) if n_key >= 2 * len(_STRESS_UNSEEN_SPECIES) else 0
    _fill_group(out, rng, counts, unseen_pool, n_forced, "key_unseen", ("val_unseen", "test_unseen"))

    n_other = counts["other_heldout"]
    other_pool = _pool(rng, [tax.other() for _ in range(max(3, n_other // 3))])
    out["other_heldout"] = other_pool[0][_pick(rng, other_pool[1], n_other)]

    n_pre = counts["pretrain"]
    hidden_pool = _pool(rng, [tax.hidden() for _ in range(max(4, n_pre // 6))])
    # pretrain also holds unlabelled records of the labelled splits' species
    labelled = (seen_pool, unseen_pool, other_pool)
    mix = np.concatenate([hidden_pool[0]] + [ids for ids, _ in labelled])
    wmix = np.concatenate([hidden_pool[1]] + [0.3 * w for _, w in labelled])
    out["pretrain"] = mix[_pick(rng, wmix, n_pre)]
    return out


# Deepest labelled rank of a pretrain record (then capped by what is known).
_PRETRAIN_DEPTH = (("class", 0.01), ("order", 0.06), ("family", 0.55), ("subfamily", 0.08), ("genus", 0.30))


def _labels(genus: _Genus, name: str, depth: int) -> tuple:
    """The taxonomic columns of a record labelled down to rank ``depth`` (index into TAXONOMIC_RANKS).

    Returns the values of ``TAXONOMIC_RANKS`` for a record of species ``name``
    under ``genus``, None below ``depth`` (and where unknown), then the taxon:
    the deepest known rank's value.
    """
    g = genus
    values = (g.phylum, g.klass, g.order, g.family, g.subfamily, g.name, name)[: depth + 1]
    values += (None,) * (len(TAXONOMIC_RANKS) - len(values))
    taxon = next((v for v in reversed(values) if v is not None), None)
    return values + (taxon,)

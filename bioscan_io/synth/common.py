"""What every part of the generator shares: its version, random streams and argument checks."""

from __future__ import annotations

import hashlib

import numpy as np

from ..schema import BioscanError

__all__ = ["SYNTH_VERSION"]

#: Version of the generated data; bump it when the output of a seed changes.
SYNTH_VERSION = 1

# Independent random streams (each seeded with (seed, stream)), so that a change
# in how one part draws cannot shift what another part generates.
_S_TAXONOMY, _S_SPLITS, _S_RECORDS, _S_IDS, _S_BARCODE, _S_GEO, _S_AWKWARD = range(7)
_S_IMAGE = 100


def _rng(seed, *stream):
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _stable_int(*parts) -> int:
    """A platform-independent hash of strings/ints (Python's hash() is salted)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BioscanError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise BioscanError(f"{name} must be at least {minimum}, got {value}")
    return int(value)

"""What every part of the generator shares: its version, random streams and argument checks."""

from __future__ import annotations

import ctypes
import hashlib
import os
from bisect import bisect_right
from typing import Any

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


def _cdf(p) -> list:
    """The cumulative shares that ``Generator.choice(len(p), p=p)`` searches, as a list.

    ``choice`` draws one ``random()`` per item and searches this very array
    (same floats), so :func:`_draw_index` gives its draws at a fraction of its
    per-call cost.
    """
    cdf = np.asarray(p, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return cdf.tolist()


def _draw_index(rng, cdf: list) -> int:
    """``int(rng.choice(len(p), p=p))`` for ``cdf = _cdf(p)``: the same draw, faster."""
    return bisect_right(cdf, rng.random())


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


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _trim_memory() -> None:
    """Hand the memory freed so far back to the system, where the C library allows it (glibc).

    glibc keeps freed memory for reuse, up to hundreds of megabytes after the
    large temporary arrays of a 5-million-record dataset, and a process forked
    then would count it in its own memory too.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None  # libc's malloc_trim, False where there is none, None before the first call

"""Record identifiers: unique processids and sampleids, drawn a chunk of records at a time.

Identifiers look like the release's: plate wells (``BIOUG12345-A01``,
``CCDB-12345-B07``), project codes (``GMCRA1234-19``) and ``GMP#12345``.
Uniqueness is checked against one byte per possible identifier (the formats
allow 28 million processids and 17 million sampleids) rather than a set of
strings, which at the release's 5 million records would take gigabytes.
"""

from __future__ import annotations

import hashlib

from ..schema import CHUNK_LENGTH, SPLITS
from .common import _S_IDS, _rng

__all__: list[str] = []

_PROJECT_CODES = (
    "AACTA", "BBCNP", "CRPAB", "GMCRA", "GMPAK", "UPCCR", "BSCRB", "MGCRA",
    "BCLMN", "SSPAA", "GMZAF", "BIOCA", "ACGAZ", "CNGBA", "GMTHA", "RRMFI",
)
_WELL_ROWS = "ABCDEFGH"
# Number of plate wells: plates 10000-99998, rows A-H, columns 01-12.
_WELLS = 89999 * 8 * 12
# Number of project identifiers: code, number 1-99999, suffix 12-23.
_PROJECT_IDS = len(_PROJECT_CODES) * 99999 * 12
_PRETRAIN = SPLITS.index("pretrain")
_CHUNK_LENGTHS = [CHUNK_LENGTH[s] for s in SPLITS]  # by split code


def _well(rng, prefix):
    """A plate-well identifier, ``{prefix}{plate}-{row}{column}`` (``BIOUG12345-A01``), and its number."""
    plate, row, col = int(rng.integers(10000, 99999)), int(rng.integers(8)), int(rng.integers(1, 13))
    return f"{prefix}{plate}-{_WELL_ROWS[row]}{col:02d}", ((plate - 10000) * 8 + row) * 12 + col - 1


def _new_processid(rng):
    """A processid and its number (distinct processids have distinct numbers)."""
    if rng.random() < 0.3:
        return _well(rng, "BIOUG")
    code = int(rng.integers(len(_PROJECT_CODES)))
    number = int(rng.integers(1, 100000 if rng.random() < 0.5 else 5000))
    suffix = int(rng.integers(12, 24))
    return f"{_PROJECT_CODES[code]}{number}-{suffix}", _WELLS + ((code * 99999 + number - 1) * 12 + suffix - 12)


def _new_sampleid(rng, pid, pid_number):
    """A sampleid of the record with processid ``pid``, and its number."""
    r = rng.random()
    if pid_number < _WELLS and r < 0.7:
        return pid, pid_number  # plate-well processids often double as the sample id
    if r < 0.75:
        return _well(rng, "BIOUG")
    if r < 0.9:
        sid, number = _well(rng, "CCDB-")
        return sid, _WELLS + number
    number = int(rng.integers(10000, 99999))
    return f"GMP#{number:05d}", 2 * _WELLS + number - 10000


class _IdMaker:
    """Draws the identifiers of the records in file order, one chunk at a time.

    One ``pretrain`` chunk folder is kept empty (as in the release, where some
    are): no ``pretrain`` processid hashes into it.
    """

    def __init__(self, seed):
        self.rng = _rng(seed, _S_IDS)
        self.empty_chunk = f"{self.rng.integers(256):02x}"
        self.pid_taken = bytearray(_WELLS + _PROJECT_IDS)
        self.sid_taken = bytearray(2 * _WELLS + 89999)

    def chunk(self, split_codes):
        """Processids, sampleids and chunk folder names of the next records, whose splits are ``split_codes``."""
        rng, pid_taken, sid_taken, empty = self.rng, self.pid_taken, self.sid_taken, self.empty_chunk
        pids, sids, chunks = [], [], []
        for split in split_codes.tolist():
            while True:
                pid, number = _new_processid(rng)
                digest = hashlib.md5(pid.encode("utf-8")).hexdigest()
                if not pid_taken[number] and (split != _PRETRAIN or digest[:2] != empty):
                    break
            pid_taken[number] = 1
            sid, s_number = _new_sampleid(rng, pid, number)
            while sid_taken[s_number]:
                sid, s_number = _new_sampleid(rng, pid, number)
            sid_taken[s_number] = 1
            pids.append(pid)
            sids.append(sid)
            chunks.append(digest[: _CHUNK_LENGTHS[split]])
        return pids, sids, chunks

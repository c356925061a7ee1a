"""The reference implementation of the k-mer tokenizer and MLM masking: an oracle.

This is the slow, obviously-correct re-implementation of what the compiled
kernel ``bioscan_io._kmer`` computes through
:class:`bioscan_io.tokenizer.KmerTokenizer`: tokenization, random offsets and
masking, written for clarity with Python integers, one sequence and one
position at a time, straight from the specification; and of the masking of
:class:`bioscan_io.vocab_tokenizer.VocabTokenizer` (:func:`mask_row`, over ids
that Hugging Face ``tokenizers`` gave). The kernel must agree with it bit for
bit. It is for tests, and for users who want to check the kernel on their own
machine or data; the loader never uses it.

Only the specification's constants -- the special tokens, their ids, the
ignored-label value and the default masking recipe -- are imported from the tokenizer, so that they have one
definition. Everything the kernel computes (vocabulary order, k-mer ids,
padding, the generator and its constants, the masking rule, labels) is written
again here from the specification, independently of the kernel's code.

It is also the normative definition of the random generator and of the
masking recipes.

Random generator
----------------
All arithmetic is modulo ``2**64``. ``GOLDEN = 0x9E3779B97F4A7C15``.

``mix64(z)``
    SplitMix64's finaliser::

        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        return z ^ (z >> 31)

``fnv1a64(b)``
    64-bit FNV-1a of the processid's UTF-8 bytes ``b``: ``h = 0xCBF29CE484222325``,
    then ``h = (h ^ byte) * 0x100000001B3`` for each byte.

``sample_key(pid, seed, epoch)``
    ``s = mix64(mix64(seed + GOLDEN) + (epoch + 1) * GOLDEN)`` (one per batch), and
    ``key = mix64(s ^ fnv1a64(pid))``.

``rand(key, c)``
    The counter-based stream: ``mix64(key + (c + 1) * GOLDEN)`` (the ``c``-th output
    of a SplitMix64 generator whose state starts at ``key``).

``offset_draw(key, k)``
    ``mix64(key) % k``.

``uniform32(key, t)`` for token position ``t`` (``0 <= t < 2**32``)
    A 32-bit integer whose top byte is byte ``t % 8`` (least significant first) of
    ``rand(key, t // 8)`` and whose low 24 bits are those of
    ``rand(key, 2**32 + t)``. (The kernel draws one hash per eight positions and
    needs the second one only when the top byte ties the threshold's.)

``masked(key, t, p)``
    ``uniform32(key, t) / 2**32 < p``, for a maskable position ``t``: whether
    ``t`` is *selected* for masking.

``mask_action(key, t, (r_mask, r_random, r_keep), n)`` for a selected position ``t``
    ``w = rand(key, 2**33 + t)`` and ``u = w >> 32``. The action is ``MASK`` if
    ``u < ceil(r_mask * 2**32)``, else ``RANDOM`` if
    ``u < ceil((r_mask + r_random) * 2**32)`` (the sum in double precision),
    else ``KEEP``. A ``RANDOM`` position takes the ``j``-th maskable token,
    ``j = ((w & 0xFFFFFFFF) * n) >> 32``, where the ``n`` maskable tokens are taken
    in increasing id order (k-mers: ids ``2 .. vocab_size - 1``, so the id is
    ``2 + j``); it may be the original token, as in BERT. With ``r_mask = 1``
    (the default recipe, ``(1, 0, 0)``) every selected position is ``MASK``,
    whatever ``w``, so the kernel does not draw it.

Masking a row
-------------
A position is *maskable* when it is attended and holds a maskable token (the
k-mers, ids ``>= 2``; for a user vocabulary, every token but the special ones:
the tokenizer's added tokens marked special, its unknown token, ``[PAD]`` and
``[MASK]``).
Each selected position becomes ``[MASK]``, a random token, or keeps its id, by
``mask_action``. Labels, -100 wherever not said otherwise:

- ``"masked"``: the original id at every selected position (masked, replaced or
  kept);
- ``"barcodebert"``: at every maskable position, the token's rank among the
  maskable tokens (``id - 2`` for k-mers).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

from ..tokenizer import DEFAULT_MASK_RATIOS, IGNORE_INDEX, MASK_ID, MASK_TOKEN, UNK_ID, UNK_TOKEN

__all__ = [
    "DEFAULT_MASK_RATIOS",
    "FNV_OFFSET",
    "FNV_PRIME",
    "GOLDEN",
    "KEEP",
    "MASK",
    "RANDOM",
    "RECIPE_COUNTER",
    "as_bytes",
    "encode",
    "encode_mlm",
    "encode_mlm_one",
    "encode_one",
    "fnv1a64",
    "is_masked",
    "mask_action",
    "mask_row",
    "mix64",
    "offset_draw",
    "rand",
    "sample_key",
    "uniform32",
    "vocabulary",
]

# The generator's constants are retyped from the specification on purpose, not
# read from the kernel: they define the behaviour under test.
GOLDEN = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
# mask_action's draws: counters from 2**33 on, apart from uniform32's.
RECIPE_COUNTER = 2**33

#: What becomes of a selected position (:func:`mask_action`).
MASK, RANDOM, KEEP = "mask", "random", "keep"


def mix64(z: int) -> int:
    """SplitMix64 finaliser of a 64-bit integer."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a hash of bytes."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & M64
    return h


def as_bytes(s: str | bytes | None) -> bytes:
    """A sequence or processid as bytes (UTF-8 for str; None is empty)."""
    if s is None:
        return b""
    if isinstance(s, str):
        return s.encode("utf-8", "surrogatepass")
    return bytes(s)


def sample_key(processid: str | bytes, seed: int, epoch: int) -> int:
    """The generator key of one sample."""
    s = mix64((mix64((seed + GOLDEN) & M64) + (epoch + 1) * GOLDEN) & M64)
    return mix64(s ^ fnv1a64(as_bytes(processid)))


def rand(key: int, counter: int) -> int:
    """Output ``counter`` of the counter-based stream of ``key``."""
    return mix64((key + (counter + 1) * GOLDEN) & M64)


def offset_draw(key: int, k: int) -> int:
    """The sample's reading-frame offset in ``0..k-1``."""
    return mix64(key) % k


def uniform32(key: int, t: int) -> int:
    """The 32-bit uniform draw of token position ``t``."""
    top = (rand(key, t // 8) >> (8 * (t % 8))) & 0xFF
    low = rand(key, 2**32 + t) & 0xFFFFFF
    return (top << 24) | low


def is_masked(key: int, t: int, p: float) -> bool:
    """Whether a maskable position ``t`` is masked with probability ``p``."""
    # Exact: u < 2**32 is exactly representable, and so is u / 2**32.
    return uniform32(key, t) / 2**32 < p


def mask_action(
    key: int, t: int, mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS, n: int = 1
) -> tuple[str, int | None]:
    """What becomes of selected position ``t``: ``(MASK | RANDOM | KEEP, j)``.

    ``j`` (``RANDOM`` only, else None) indexes the ``n`` maskable tokens in
    increasing id order.
    """
    w = rand(key, RECIPE_COUNTER + t)
    u = w >> 32
    r_mask, r_random = float(mask_ratios[0]), float(mask_ratios[1])
    if u < math.ceil(r_mask * 2**32):
        return MASK, None
    if u < math.ceil((r_mask + r_random) * 2**32):
        return RANDOM, ((w & 0xFFFFFFFF) * n) >> 32
    return KEEP, None


def mask_row(
    ids: Sequence[int],
    att: Sequence[int],
    key: int,
    maskable: Sequence[int],
    mask_id: int,
    mask_prob: float = 0.5,
    mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS,
    label_mode: str = "masked",
) -> tuple[list[int], list[int]]:
    """Masked ids and labels of one tokenized row (any vocabulary).

    ``maskable`` holds the ids of the maskable tokens in increasing order (a list,
    or a range for the k-mers); ``mask_id`` is the id of ``[MASK]``.
    """
    ids = list(ids)
    labels = []
    for t, (v, a) in enumerate(zip(ids, att)):
        rank = bisect.bisect_left(maskable, v)
        ok = a == 1 and rank < len(maskable) and maskable[rank] == v
        selected = ok and is_masked(key, t, mask_prob)
        if label_mode == "masked":
            labels.append(v if selected else IGNORE_INDEX)
        else:
            labels.append(rank if ok else IGNORE_INDEX)
        if selected:
            action, j = mask_action(key, t, mask_ratios, len(maskable))
            ids[t] = mask_id if action == MASK else maskable[j] if action == RANDOM and j is not None else v
    return ids, labels


def vocabulary(k: int, n_as_base: bool = False) -> list[str]:
    """Tokens by id: [MASK], [UNK], ACGT k-mers, then (n_as_base) those with N."""
    vocab = [MASK_TOKEN, UNK_TOKEN]
    vocab += ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    if n_as_base:
        vocab += ["".join(p) for p in itertools.product("ACGTN", repeat=k) if "N" in p]
    return vocab


_INDEX_CACHE: dict = {}


def _index(k: int, n_as_base: bool) -> dict:
    key = (k, n_as_base)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = {t.encode(): i for i, t in enumerate(vocabulary(k, n_as_base)) if i >= 2}
    return _INDEX_CACHE[key]


def encode_one(
    seq: str | bytes | None, k: int, max_len: int, offset: int = 0, n_as_base: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids and attention mask of one sequence (lists of ``max_len // k``)."""
    index = _index(k, n_as_base)
    n_tokens = max_len // k
    x = as_bytes(seq)[offset:]
    # A sequence longer than max_len is cut and attended throughout; a shorter
    # one is attended over its whole k-mers and padded with N.
    n_att = n_tokens if len(x) > max_len else len(x) // k
    att = [1] * n_att + [0] * (n_tokens - n_att)
    x = x[:max_len].ljust(max_len, b"N")
    ids = [index.get(x[i * k : (i + 1) * k], UNK_ID) for i in range(n_tokens)]
    return ids, att


def encode_mlm_one(
    seq: str | bytes | None,
    processid: str | bytes,
    k: int,
    max_len: int,
    seed: int = 0,
    epoch: int = 0,
    mask_prob: float = 0.5,
    label_mode: str = "masked",
    random_offset: bool = False,
    offset: int = 0,
    n_as_base: bool = False,
    mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS,
) -> tuple[list[int], list[int], list[int]]:
    """Masked ids, attention mask and labels of one sequence."""
    key = sample_key(processid, seed, epoch)
    if random_offset:
        offset = offset_draw(key, k)
    ids, att = encode_one(seq, k, max_len, offset, n_as_base)
    # The k-mers are the maskable tokens: ids 2 .. vocab_size - 1.
    n_kmers = (5 if n_as_base else 4) ** k
    ids, labels = mask_row(
        ids, att, key, range(2, 2 + n_kmers), MASK_ID, mask_prob, mask_ratios, label_mode
    )
    return ids, att, labels


def encode(
    seqs: Sequence, k: int, max_len: int, offsets: Sequence[int] | None = None,
    n_as_base: bool = False,
) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`encode_one` over a batch."""
    rows = [
        encode_one(s, k, max_len, 0 if offsets is None else offsets[i], n_as_base)
        for i, s in enumerate(seqs)
    ]
    return [r[0] for r in rows], [r[1] for r in rows]


def encode_mlm(
    seqs: Sequence, processids: Sequence, k: int, max_len: int, **kwargs
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """:func:`encode_mlm_one` over a batch (``offsets`` may be a per-sequence list)."""
    offsets = kwargs.pop("offsets", None)
    rows = [
        encode_mlm_one(s, pid, k, max_len, offset=0 if offsets is None else offsets[i], **kwargs)
        for i, (s, pid) in enumerate(zip(seqs, processids))
    ]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

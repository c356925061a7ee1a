# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled kernels of :mod:`bioscan_io.tokenizer` (non-overlapping k-mers + MLM masks)
and of :mod:`bioscan_io.vocab_tokenizer` (masks over rows tokenized by a user vocabulary).

Every argument is checked by the Python wrappers (``bioscan_io/tokenizer.py``,
``bioscan_io/vocab_tokenizer.py``):
this module trusts shapes, dtypes, bounds and lookup tables, so that its loops
stay short and free of the GIL. :mod:`bioscan_io.testing.oracle` is the
pure-Python oracle that these kernels must match bit for bit; the generator is
defined there.

Sequences arrive as one byte buffer plus per-row ``starts``/``ends``, the
layout of an Arrow binary column, so a batch is tokenized without one Python
object per sequence.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memset
from cpython.unicode cimport PyUnicode_DecodeUTF8

ctypedef fused out_t:
    int32_t
    int64_t

cdef extern from *:
    """
    /* Spelled in C so that the 64-bit constants keep their unsigned type. */
    #define BK_GOLDEN 0x9E3779B97F4A7C15ULL
    #define BK_MIX_M1 0xBF58476D1CE4E5B9ULL
    #define BK_MIX_M2 0x94D049BB133111EBULL
    #define BK_FNV_OFFSET 0xCBF29CE484222325ULL
    #define BK_FNV_PRIME 0x00000100000001B3ULL
    #define BK_SLOW_BASE 0x0000000100000000ULL
    #define BK_RECIPE_BASE 0x0000000200000000ULL
    #define BK_BYTES_F9 0xF9F9F9F9u
    #define BK_BYTES_41 0x41414141u
    /* A hint to start loading memory into the cache; never faults, changes no result. */
    #if defined(__GNUC__) || defined(__clang__)
    #define BK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define BK_PREFETCH(p) ((void)(p))
    #endif
    #if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) \\
        && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define BK_LITTLE_ENDIAN 1
    #elif defined(_WIN32) || defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
    #define BK_LITTLE_ENDIAN 1
    #else
    #define BK_LITTLE_ENDIAN 0
    #endif
    """
    uint64_t BK_GOLDEN
    uint64_t BK_MIX_M1
    uint64_t BK_MIX_M2
    uint64_t BK_FNV_OFFSET
    uint64_t BK_FNV_PRIME
    uint64_t BK_SLOW_BASE
    uint64_t BK_RECIPE_BASE
    uint32_t BK_BYTES_F9
    uint32_t BK_BYTES_41
    bint BK_LITTLE_ENDIAN
    void BK_PREFETCH(const void* p) noexcept nogil

# cpdef: these are also module attributes, which the Python wrapper reads
# rather than retyping them, so that each has one definition.
cpdef enum:
    # BarcodeBERT's token ids, and the label of positions the loss ignores
    # (PyTorch's CrossEntropyLoss default).
    MASK_ID = 0
    UNK_ID = 1
    IGNORE_INDEX = -100
    # A lookup-table entry with this bit set marks a byte that is not a base.
    BAD = 0x80
    # The largest k: sizes the buffer of a partial k-mer, and 5**8 ids still fit
    # an int32.
    KMAX = 8

cpdef enum LabelMode:
    # encode_batch's label_mode: what it writes into labels.
    NO_LABELS = 0           # no masking; labels untouched
    MASKED_LABELS = 1       # the original id at masked positions (Hugging Face)
    BARCODEBERT_LABELS = 2  # id - 2 at every maskable position

cdef enum:
    # Tokens per block of random draws: bounds the stack buffers whatever
    # max_len is; a multiple of 8 so that blocks start on a draw word.
    BLOCK = 512
    # encode_batch prefetches the bytes of the row this many rows ahead.
    PREFETCH_ROWS = 2
    CACHE_LINE = 64


cdef struct Recipe:
    # What becomes of a position selected for masking (the oracle's
    # mask_action): [MASK] when u < thr_mask, a random vocabulary token when
    # u < thr_random, else kept. thr_mask >= 2**32 is the default recipe, all
    # [MASK], which draws nothing more. The random token is table[j] for
    # j < n, or first + j without a table.
    uint64_t thr_mask
    uint64_t thr_random
    int64_t first
    uint64_t n
    const int32_t* table


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    # SplitMix64's finaliser: a bijection whose output bits all depend on all
    # input bits, so consecutive counters give independent-looking words.
    z = (z ^ (z >> 30)) * BK_MIX_M1
    z = (z ^ (z >> 27)) * BK_MIX_M2
    return z ^ (z >> 31)


cdef inline uint64_t fnv1a(const uint8_t* p, int64_t n, uint64_t h) noexcept nogil:
    cdef int64_t j
    for j in range(n):
        h = (h ^ p[j]) * BK_FNV_PRIME
    return h


cdef inline int64_t mod_k(uint64_t h, int k) noexcept nogil:
    # h % k with a constant divisor per case: a multiply instead of a 64-bit
    # division (tens of cycles) per row.
    if k == 1:
        return 0
    elif k == 2:
        return <int64_t>(h % 2)
    elif k == 3:
        return <int64_t>(h % 3)
    elif k == 4:
        return <int64_t>(h % 4)
    elif k == 5:
        return <int64_t>(h % 5)
    elif k == 6:
        return <int64_t>(h % 6)
    elif k == 7:
        return <int64_t>(h % 7)
    elif k == 8:
        return <int64_t>(h % 8)
    return <int64_t>(h % <uint64_t>k)


def utf8_strings(const uint8_t[::1] data, const int64_t[::1] starts, const int64_t[::1] ends):
    """``[bytes(data[starts[i]:ends[i]]).decode() for each i]``: Python strings made straight from the rows.

    What ``pyarrow.StringArray.take(rows).to_pylist()`` gives, without the
    taken copy (:meth:`bioscan_io.gathered.Gathered.to_pylist`); each row is
    checked to lie inside ``data``, and invalid UTF-8 raises
    ``UnicodeDecodeError``.
    """
    cdef Py_ssize_t i, n = starts.shape[0], size = data.shape[0]
    cdef const char* base = <const char*>&data[0] if size > 0 else NULL
    out = [None] * n
    for i in range(n):
        if not 0 <= starts[i] <= ends[i] <= size:
            raise IndexError(f"row {i} ({starts[i]}:{ends[i]}) is outside the {size} bytes of data")
        out[i] = PyUnicode_DecodeUTF8(base + starts[i], ends[i] - starts[i], NULL) if ends[i] > starts[i] else ""
    return out


def hash_strings(const uint8_t[::1] data, const int64_t[::1] starts,
                 const int64_t[::1] ends, uint64_t[::1] out):
    """FNV-1a 64 of each ``data[starts[i]:ends[i]]`` into ``out[i]``."""
    cdef Py_ssize_t i = 0, n = starts.shape[0]
    cdef int64_t j, m, l0, l1, l2, l3
    cdef uint64_t h0, h1, h2, h3
    cdef const uint8_t* base = &data[0] if data.shape[0] > 0 else NULL
    cdef const uint8_t *p0
    cdef const uint8_t *p1
    cdef const uint8_t *p2
    cdef const uint8_t *p3
    with nogil:
        # FNV-1a is one dependent multiply per byte: hashing four ids in lockstep
        # overlaps four such chains (ids tend to have similar lengths).
        while i + 4 <= n:
            p0 = base + starts[i]
            p1 = base + starts[i + 1]
            p2 = base + starts[i + 2]
            p3 = base + starts[i + 3]
            l0 = ends[i] - starts[i]
            l1 = ends[i + 1] - starts[i + 1]
            l2 = ends[i + 2] - starts[i + 2]
            l3 = ends[i + 3] - starts[i + 3]
            m = min(min(l0, l1), min(l2, l3))
            h0 = h1 = h2 = h3 = BK_FNV_OFFSET
            for j in range(m):
                h0 = (h0 ^ p0[j]) * BK_FNV_PRIME
                h1 = (h1 ^ p1[j]) * BK_FNV_PRIME
                h2 = (h2 ^ p2[j]) * BK_FNV_PRIME
                h3 = (h3 ^ p3[j]) * BK_FNV_PRIME
            out[i] = fnv1a(p0 + m, l0 - m, h0)
            out[i + 1] = fnv1a(p1 + m, l1 - m, h1)
            out[i + 2] = fnv1a(p2 + m, l2 - m, h2)
            out[i + 3] = fnv1a(p3 + m, l3 - m, h3)
            i += 4
        while i < n:
            out[i] = fnv1a(base + starts[i], ends[i] - starts[i], BK_FNV_OFFSET)
            i += 1


def sample_keys(const uint64_t[::1] pid_hash, uint64_t seed, uint64_t epoch,
                uint64_t[::1] out):
    """Per-sample generator keys (see ``bioscan_io.testing.oracle.sample_key``)."""
    cdef Py_ssize_t i, n = pid_hash.shape[0]
    cdef uint64_t s = mix64(mix64(seed + BK_GOLDEN) + (epoch + 1) * BK_GOLDEN)
    with nogil:
        for i in range(n):
            out[i] = mix64(s ^ pid_hash[i])


def offsets_from_keys(const uint64_t[::1] keys, int k, int64_t[::1] out):
    """Random reading-frame offsets ``mix64(keys[i]) % k``."""
    cdef Py_ssize_t i, n = keys.shape[0]
    with nogil:
        for i in range(n):
            out[i] = mod_k(mix64(keys[i]), k)


cdef inline void fill_decisions(uint64_t key, Py_ssize_t t0, Py_ssize_t nb,
                                uint32_t thr_hi, uint32_t thr_lo,
                                uint8_t* d) noexcept nogil:
    # d[t] = (u(t0 + t) < thr) for a block of nb positions, t0 % 8 == 0.
    # u's top byte is byte (t % 8) of the fast word mix64(key + (t // 8 + 1) G),
    # so one hash serves eight positions; its low 24 bits, from the slow word
    # mix64(key + (2**32 + t + 1) G), only matter on a tie of the top byte
    # (probability 1/256, and never when thr_lo == 0, e.g. p = 0.5).
    cdef uint8_t draw[BLOCK]
    cdef uint64_t z = key + <uint64_t>((t0 >> 3) + 1) * BK_GOLDEN, w = 0
    cdef Py_ssize_t j, t, nw = (nb + 7) >> 3
    cdef uint8_t th
    cdef const uint8_t* hit
    for j in range(nw):
        w = mix64(z)
        z = z + BK_GOLDEN
        if BK_LITTLE_ENDIAN:
            memcpy(&draw[8 * j], &w, 8)
        else:
            for t in range(8):
                draw[8 * j + t] = <uint8_t>(w >> (8 * t))
    if thr_hi > 255:  # p == 1
        memset(d, 1, nb)
        return
    th = <uint8_t>thr_hi
    for t in range(nb):
        d[t] = draw[t] < th
    if thr_lo == 0:
        return
    t = 0
    while t < nb:
        hit = <const uint8_t*>memchr(&draw[t], th, nb - t)
        if hit == NULL:
            break
        t = hit - &draw[0]
        w = mix64(key + (BK_SLOW_BASE + <uint64_t>(t0 + t) + 1) * BK_GOLDEN)
        d[t] = (w & 0xFFFFFF) < thr_lo
        t += 1


cdef inline uint64_t recipe_word(uint64_t key, Py_ssize_t t) noexcept nogil:
    # Selected position t's recipe draw: from its own counter range (2**33 + t),
    # apart from those of the selection.
    return mix64(key + (BK_RECIPE_BASE + <uint64_t>t + 1) * BK_GOLDEN)


cdef inline int64_t recipe_id(uint64_t key, Py_ssize_t t, const Recipe* rc,
                              int64_t orig, int64_t mask_id) noexcept nogil:
    # The id of selected position t under the recipe.
    cdef uint64_t w, u, j
    if rc.thr_mask >= BK_SLOW_BASE:
        return mask_id
    w = recipe_word(key, t)
    u = w >> 32
    if u < rc.thr_mask:
        return mask_id
    if u < rc.thr_random:
        j = (<uint64_t><uint32_t>w * rc.n) >> 32
        return rc.table[j] if rc.table != NULL else rc.first + <int64_t>j
    return orig


cdef inline void recipe_block(uint64_t key, Py_ssize_t t0, Py_ssize_t nb,
                              const Recipe* rc, int label_mode, out_t* ids,
                              const out_t* labels) noexcept nogil:
    # A post-pass over a masked block of k-mers: the selected positions are
    # exactly those holding MASK_ID (no k-mer, [UNK] or padding id is 0), and
    # labels hold their original id (id - 2 in BarcodeBERT mode). They are
    # gathered first, then each takes its draw and its action by selects: a
    # branch on a random position or action would be mispredicted often.
    cdef uint16_t at[BLOCK]
    cdef Py_ssize_t t, j, m = 0
    cdef int64_t shift = 0 if label_mode == MASKED_LABELS else 2
    cdef int64_t v, r, keep_or_random, masked
    cdef uint64_t w, u
    for t in range(nb):
        at[m] = <uint16_t>t
        m += ids[t] == MASK_ID
    for j in range(m):
        t = at[j]
        w = recipe_word(key, t0 + t)
        u = w >> 32
        r = rc.first + <int64_t>((<uint64_t><uint32_t>w * rc.n) >> 32)
        keep_or_random = -<int64_t>(u < rc.thr_random)
        masked = -<int64_t>(u < rc.thr_mask)
        v = ((<int64_t>labels[t] + shift) & ~keep_or_random) | (r & keep_or_random)
        ids[t] = <out_t>(v & ~masked)  # MASK_ID == 0


cdef inline int32_t acgt4(const uint8_t* p, int32_t* ok) noexcept nogil:
    # Id - 2 of the 4-mer at p in the ACGT vocabulary, and ok = -1 when all
    # four bytes are bases (0 otherwise, the id is then meaningless). Only
    # 32-bit arithmetic, no table look-up, so that loops over it vectorise.
    # Bits 1-2 of a byte tell A, C, G, T apart; a byte is one of them exactly
    # when its other bits read 0x41 (A, C, G) or 0x50 (T, the only one with
    # bit 2 set and bit 1 clear).
    cdef uint32_t w, w1, y, code, f, pairs
    memcpy(&w, p, 4)
    w1 = w >> 1
    y = w1 & 0x03030303
    code = y ^ ((y >> 1) & 0x01010101)          # A0 C1 G2 T3 per byte
    f = (w >> 2) & ~w1 & 0x01010101
    ok[0] = -<int32_t>((w & BK_BYTES_F9) == (BK_BYTES_41 ^ (f | (f << 4))))
    # Bytes (c0, c1, c2, c3), first base lowest: pairs = 4 c0 + c1 | (4 c2 + c3) << 16.
    pairs = ((code & 0x00FF00FF) << 2) + ((code >> 8) & 0x00FF00FF)
    return <int32_t>(((pairs & 0xFFFF) << 4) | (pairs >> 16))


cdef inline int32_t kmer_id(const uint8_t* p, int k, const uint8_t* lut1,
                            const uint8_t* lut2, uint32_t radix, uint32_t radix2,
                            const int32_t* idlut) noexcept nogil:
    # Two bases per table look-up halves the dependent loads; the BAD bit
    # survives the OR wherever the invalid byte is.
    cdef uint32_t v = 0, bad = 0, c
    cdef int j = 0
    while j + 1 < k:
        c = lut2[p[j] | (<uint32_t>p[j + 1] << 8)]
        v = v * radix2 + c
        bad |= c
        j += 2
    if j < k:
        c = lut1[p[j]]
        v = v * radix + c
        bad |= c
    if bad & BAD:
        return UNK_ID
    if idlut != NULL:
        return idlut[v]
    return <int32_t>(2 + v)


cdef inline void k4_block(const uint8_t* x, Py_ssize_t nb, const uint8_t* d,
                          int label_mode, out_t* ids, out_t* att,
                          out_t* labels) noexcept nogil:
    # Tokenize and mask nb attended 4-mers in one vectorisable pass. Masks are
    # all-ones/all-zeros selects, not branches: with p = 0.5 a branch on the
    # draw would be mispredicted half the time. The arithmetic stays in 32-bit
    # lanes (ids < 2**31) and is widened only on the store, which lets the
    # int64 variant vectorise too.
    # The selects rely on MASK_ID == 0, UNK_ID == 1 and k-mer ids from 2.
    cdef Py_ssize_t t
    cdef int32_t r, ok = 0, v, m
    if label_mode == NO_LABELS:
        for t in range(nb):
            r = acgt4(x + 4 * t, &ok)
            ids[t] = <out_t>(((r + 1) & ok) + 1)
            att[t] = 1
    elif label_mode == MASKED_LABELS:
        for t in range(nb):
            r = acgt4(x + 4 * t, &ok)
            v = ((r + 1) & ok) + 1
            m = ok & -<int32_t>d[t]
            ids[t] = <out_t>(v & ~m)
            labels[t] = <out_t>((v & m) | (IGNORE_INDEX & ~m))
            att[t] = 1
    else:
        for t in range(nb):
            r = acgt4(x + 4 * t, &ok)
            v = ((r + 1) & ok) + 1
            m = ok & -<int32_t>d[t]
            ids[t] = <out_t>(v & ~m)
            labels[t] = <out_t>((r & ok) | (IGNORE_INDEX & ~ok))
            att[t] = 1


cdef inline void mask_block(Py_ssize_t nb, const uint8_t* d, int label_mode,
                            out_t* ids, out_t* labels) noexcept nogil:
    # The same selects as k4_block, over ids already written.
    cdef Py_ssize_t t
    cdef int32_t v, real, m
    if label_mode == MASKED_LABELS:
        for t in range(nb):
            v = <int32_t>ids[t]
            m = -<int32_t>((v >= 2) & d[t])
            ids[t] = <out_t>(v & ~m)
            labels[t] = <out_t>((v & m) | (IGNORE_INDEX & ~m))
    else:
        for t in range(nb):
            v = <int32_t>ids[t]
            real = -<int32_t>(v >= 2)
            m = real & -<int32_t>d[t]
            ids[t] = <out_t>(v & ~m)
            labels[t] = <out_t>(((v - 2) & real) | (IGNORE_INDEX & ~real))


cdef inline void encode_row(const uint8_t* x, Py_ssize_t L, int k, Py_ssize_t T,
                            const uint8_t* lut1, const uint8_t* lut2,
                            const int32_t* idlut, out_t pad_id,
                            uint64_t key, int label_mode, uint32_t thr_hi,
                            uint32_t thr_lo, const Recipe* rc, out_t* ids,
                            out_t* att, out_t* labels) noexcept nogil:
    # L is already min(len(s[o:]), max_len): positions < L // k are full
    # k-mers of the sequence (attended, maskable), then at most one partial
    # k-mer completed with N, then padding.
    cdef Py_ssize_t full = L // k, t, t0, nb, j, rem
    cdef uint32_t radix = 5 if idlut != NULL else 4
    cdef uint32_t radix2 = radix * radix
    cdef uint8_t d[BLOCK]
    cdef uint8_t buf[KMAX]
    if BK_LITTLE_ENDIAN and k == 4 and idlut == NULL:
        t0 = 0
        while t0 < full:
            nb = full - t0 if full - t0 < BLOCK else BLOCK
            if label_mode != NO_LABELS:
                fill_decisions(key, t0, nb, thr_hi, thr_lo, d)
            k4_block(x + 4 * t0, nb, d, label_mode, ids + t0, att + t0,
                     labels + t0)
            if label_mode != NO_LABELS and rc.thr_mask < BK_SLOW_BASE:
                recipe_block(key, t0, nb, rc, label_mode, ids + t0, labels + t0)
            t0 += nb
    else:
        for t in range(full):
            ids[t] = <out_t>kmer_id(x + k * t, k, lut1, lut2, radix, radix2, idlut)
            att[t] = 1
        if label_mode != NO_LABELS:
            t0 = 0
            while t0 < full:
                nb = full - t0 if full - t0 < BLOCK else BLOCK
                fill_decisions(key, t0, nb, thr_hi, thr_lo, d)
                mask_block(nb, d, label_mode, ids + t0, labels + t0)
                if rc.thr_mask < BK_SLOW_BASE:
                    recipe_block(key, t0, nb, rc, label_mode, ids + t0, labels + t0)
                t0 += nb
    t = full
    if t < T:
        rem = L - full * k
        if rem > 0:
            # Completed with N: always [UNK] unless N is a base.
            if idlut == NULL:
                ids[t] = UNK_ID
            else:
                for j in range(k):
                    buf[j] = x[full * k + j] if j < rem else 78  # b"N"
                ids[t] = <out_t>kmer_id(buf, k, lut1, lut2, radix, radix2, idlut)
            att[t] = 0
            if label_mode != NO_LABELS:
                labels[t] = IGNORE_INDEX
            t += 1
        for j in range(t, T):
            ids[j] = pad_id
            att[j] = 0
        if label_mode != NO_LABELS:
            for j in range(t, T):
                labels[j] = IGNORE_INDEX


cdef inline void prefetch_row(const uint8_t* p, int64_t n, Py_ssize_t most) noexcept nogil:
    # Rows in shuffled order (a permuted gather, bioscan_io.gathered) start
    # where no hardware prefetcher looks: each row's first cache lines would
    # miss, about a third of the kernel's time on 660-base barcodes. ``most``:
    # the bytes a row can be read for (max_len, plus an offset below k).
    cdef int64_t j = 0
    if n > most:
        n = most
    while j < n:
        BK_PREFETCH(p + j)
        j += CACHE_LINE


def encode_batch(const uint8_t[::1] data, const int64_t[::1] starts,
                 const int64_t[::1] ends, const int64_t[::1] offsets,
                 const uint64_t[::1] keys, bint random_offset,
                 int k, Py_ssize_t max_len,
                 const uint8_t[::1] lut1, const uint8_t[::1] lut2,
                 const int32_t[::1] idlut, int64_t pad_id,
                 uint64_t thr, uint64_t thr_mask, uint64_t thr_random,
                 int label_mode,
                 out_t[:, :] ids, out_t[:, :] att, out_t[:, :] labels):
    """Tokenize (and optionally mask) rows ``data[starts[i]:ends[i]]``.

    ``offsets`` has one entry per row, or none for offset 0; ``keys`` (from
    :func:`sample_keys`) has one per row when ``random_offset`` or masking
    needs them. ``label_mode`` is a :class:`LabelMode`; ``thr`` is
    ``ceil(p * 2**32)``; ``thr_mask`` and ``thr_random`` are the recipe's
    (``bioscan_io.tokenizer.recipe_thresholds``; ``thr_mask >= 2**32`` is the
    default, all [MASK]), the random k-mer drawn from ids ``2 .. vocab_size - 1``.
    ``lut1``/``lut2`` map one/two bytes to base codes (``BAD`` bit for anything
    else); ``idlut`` maps base-5 k-mer values to ids in the N-as-a-base
    vocabulary and is empty otherwise. The outputs may have
    any row stride, but each row must be contiguous (unit column stride): rows
    are written through plain pointers.
    """
    cdef Py_ssize_t i, n = starts.shape[0], T = ids.shape[1]
    cdef int64_t s, L, o
    cdef const uint8_t* base = &data[0] if data.shape[0] > 0 else NULL
    cdef const int32_t* il = &idlut[0] if idlut.shape[0] > 0 else NULL
    cdef bint have_offsets = offsets.shape[0] > 0
    cdef uint64_t key = 0
    cdef uint32_t thr_hi = <uint32_t>(thr >> 24), thr_lo = <uint32_t>(thr & 0xFFFFFF)
    cdef Recipe rc
    rc.thr_mask = thr_mask
    rc.thr_random = thr_random
    # Random k-mers: ids 2 .. vocab_size - 1, that is radix**k of them.
    rc.first = 2
    rc.n = 1
    for i in range(k):
        rc.n *= 5 if il != NULL else 4
    rc.table = NULL
    if T == 0 or n == 0:
        return
    with nogil:
        for i in range(n):
            if i + PREFETCH_ROWS < n and base != NULL:
                prefetch_row(base + starts[i + PREFETCH_ROWS], ends[i + PREFETCH_ROWS] - starts[i + PREFETCH_ROWS],
                             max_len + k)
            s = starts[i]
            L = ends[i] - s
            if label_mode != NO_LABELS or random_offset:
                key = keys[i]
            if random_offset:
                o = mod_k(mix64(key), k)
            elif have_offsets:
                o = offsets[i]
            else:
                o = 0
            if o >= L:
                L = 0
            else:
                s += o
                L -= o
            if L > max_len:
                L = max_len
            encode_row(base + s if L > 0 else base, L, k, T, &lut1[0], &lut2[0],
                       il, <out_t>pad_id, key, label_mode, thr_hi, thr_lo, &rc,
                       &ids[i, 0], &att[i, 0],
                       &labels[i, 0] if label_mode != NO_LABELS else &ids[i, 0])


cdef inline void mask_row(out_t* ids, const out_t* att, out_t* labels, Py_ssize_t T,
                          uint64_t key, uint32_t thr_hi, uint32_t thr_lo,
                          const Recipe* rc, int64_t mask_id,
                          const uint8_t* maskable, const int32_t* classes,
                          int label_mode) noexcept nogil:
    # Positions after the last attended one take no draw: a row of a
    # subword vocabulary is mostly padding.
    cdef Py_ssize_t end = T, t0, nb, t
    cdef uint8_t d[BLOCK]
    cdef int64_t v
    cdef bint ok
    while end > 0 and att[end - 1] == 0:
        end -= 1
    for t in range(end, T):
        labels[t] = IGNORE_INDEX
    t0 = 0
    while t0 < end:
        nb = end - t0 if end - t0 < BLOCK else BLOCK
        fill_decisions(key, t0, nb, thr_hi, thr_lo, d)
        for t in range(t0, t0 + nb):
            v = <int64_t>ids[t]
            ok = att[t] != 0 and maskable[v] != 0
            if label_mode == MASKED_LABELS:
                labels[t] = <out_t>v if ok and d[t - t0] else IGNORE_INDEX
            else:
                labels[t] = <out_t>classes[v] if ok else IGNORE_INDEX
            if ok and d[t - t0]:
                ids[t] = <out_t>recipe_id(key, t, rc, v, mask_id)
        t0 += nb


def mask_rows(const uint64_t[::1] keys, uint64_t thr, uint64_t thr_mask,
              uint64_t thr_random, int64_t mask_id, const uint8_t[::1] maskable,
              const int32_t[::1] replace_ids, const int32_t[::1] classes,
              int label_mode, out_t[:, :] ids, const out_t[:, :] att,
              out_t[:, :] labels):
    """Mask rows of ids that are already tokenized (a user vocabulary).

    The selection and the recipe are those of :func:`encode_batch`, position
    ``t`` of row ``i`` drawn from ``keys[i]``: a position is maskable when
    attended and ``maskable[id]`` is non-zero; a selected one becomes
    ``mask_id``, ``replace_ids[j]`` (the random token) or stays. Labels: the
    original id at selected positions (``MASKED_LABELS``), or ``classes[id]`` at
    every maskable one (``BARCODEBERT_LABELS``); -100 elsewhere. Every id must
    index ``maskable`` and ``classes``; ``replace_ids`` lists the maskable ids
    (it is only read at a selected, hence maskable, position). Rows must be contiguous, as for
    :func:`encode_batch`.
    """
    cdef Py_ssize_t i, n = ids.shape[0], T = ids.shape[1]
    cdef uint32_t thr_hi = <uint32_t>(thr >> 24), thr_lo = <uint32_t>(thr & 0xFFFFFF)
    cdef Recipe rc
    rc.thr_mask = thr_mask
    rc.thr_random = thr_random
    rc.first = 0
    rc.n = <uint64_t>replace_ids.shape[0]
    rc.table = &replace_ids[0] if replace_ids.shape[0] > 0 else NULL
    if T == 0 or n == 0:
        return
    with nogil:
        for i in range(n):
            mask_row(&ids[i, 0], &att[i, 0], &labels[i, 0], T, keys[i], thr_hi,
                     thr_lo, &rc, mask_id, &maskable[0], &classes[0], label_mode)

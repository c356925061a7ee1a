# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled tar header walking for :mod:`bioscan_io.format.scan`.

A shard is read as one memory-mapped buffer: the walk touches each member's
512-byte header and jumps over payloads the task does not need (images, for
MLM), so no Python object is made per member. Arguments are checked by the
Python wrapper; these kernels trust them.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcmp, memcpy

# Status codes of a walk, exported to Python as ``_tar.Status`` (an IntEnum), so
# the wrapper names them without retyping the numbers.
cpdef enum Status:
    OK = 0
    END_MISSING = 1      # the data ends on a member boundary without the two zero blocks
    BAD_CHECKSUM = 2
    BAD_SIZE = 3
    TRUNCATED = 4
    UNSUPPORTED = 5      # pax / GNU long-name headers or a ustar prefix: use the Python reader

#: What each status means, for the messages naming shard and offset.
STATUS = {OK: "ok", END_MISSING: "end-of-archive blocks missing", BAD_CHECKSUM: "corrupt header (bad checksum)",
          BAD_SIZE: "corrupt header (bad size field)", TRUNCATED: "truncated member",
          UNSUPPORTED: "pax or GNU long-name header"}


cdef inline int64_t _key_end(const uint8_t* name, int64_t length) noexcept nogil:
    """Where a member name's key ends: at the first dot of its base name (webdataset's rule).

    ``train/AB123.dna`` has key ``train/AB123`` and extension ``dna``; a name with
    no dot in its base name is all key. The one definition of the member-name
    rule: the Python readers call it through :func:`key_end`.
    """
    cdef int64_t i, slash = -1
    for i in range(length):
        if name[i] == 47:  # '/'
            slash = i
    for i in range(slash + 1, length):
        if name[i] == 46:  # '.'
            return i
    return length


def key_end(const uint8_t[::1] name):
    """Byte position where the key of the member name ``name`` ends (the dot, or its length)."""
    if name.shape[0] == 0:
        return 0
    return _key_end(&name[0], name.shape[0])


cdef inline int64_t _octal(const uint8_t[::1] buf, int64_t at, int n) noexcept nogil:
    """An octal header field (spaces and NULs around it allowed); -1 if malformed."""
    cdef int64_t value = 0
    cdef int i = 0
    cdef bint digits = False
    while i < n and buf[at + i] == 32:
        i += 1
    while i < n and 48 <= buf[at + i] <= 55:
        value = value * 8 + (buf[at + i] - 48)
        digits = True
        i += 1
    while i < n:
        if buf[at + i] != 0 and buf[at + i] != 32:
            return -1
        i += 1
    return value if digits else -1


cdef inline bint _checksum_ok(const uint8_t[::1] buf, int64_t h) noexcept nogil:
    # Sum the whole block with the checksum field's bytes swapped for spaces:
    # one straight loop the compiler vectorises.
    cdef const uint8_t* p = &buf[h]
    cdef uint32_t total = 0
    cdef int i
    for i in range(512):
        total += p[i]
    for i in range(148, 156):
        total += 32 - p[i]
    return total == _octal(buf, h + 148, 8)


cdef inline bint _zero_block(const uint8_t[::1] buf, int64_t h) noexcept nogil:
    cdef int i
    for i in range(512):
        if buf[h + i] != 0:
            return False
    return True


def scan(const uint8_t[::1] buf, int64_t start, int64_t stop, const uint8_t[::1] ext,
         int64_t[:, ::1] out):
    """Walk the headers; record samples ``start <= i < stop``.

    ``out[row] = (key_start, key_end, data_start, data_end)`` byte positions in
    ``buf`` of the sample's key and of its member with extension ``ext``
    (``-1, -1`` when the sample has no such member).

    Returns ``(n_samples_recorded, status, offset)``: ``offset`` is where the
    walk stopped (the header at fault when ``status`` is not OK).
    """
    cdef int64_t size = buf.shape[0], n_ext = ext.shape[0]
    cdef int64_t pos = 0, h, data, length, nxt, index = -1, row = -1, n = 0
    cdef int64_t key_s, key_e, name_len, prev_s = 0, prev_e = 0, dot
    cdef int status = END_MISSING
    cdef uint8_t flag
    with nogil:
        while pos + 512 <= size:
            h = pos
            if buf[h] == 0 and _zero_block(buf, h):
                status = OK
                break
            if not _checksum_ok(buf, h):
                status = BAD_CHECKSUM
                break
            length = _octal(buf, h + 124, 12)
            if length < 0:
                status = BAD_SIZE
                break
            data = h + 512
            nxt = data + ((length + 511) // 512) * 512
            if data + length > size:
                status = TRUNCATED
                break
            flag = buf[h + 156]
            if flag == 120 or flag == 103 or flag == 76 or flag == 75 or buf[h + 345] != 0:  # x g L K, prefix
                status = UNSUPPORTED
                break
            if flag == 48 or flag == 0 or flag == 55:  # '0', NUL, '7': regular file
                name_len = 0
                while name_len < 100 and buf[h + name_len] != 0:
                    name_len += 1
                dot = _key_end(&buf[h], name_len)
                key_s, key_e = h, h + dot
                if (index < 0 or key_e - key_s != prev_e - prev_s
                        or memcmp(&buf[key_s], &buf[prev_s], key_e - key_s) != 0):
                    index += 1
                    if index >= stop:
                        status = OK
                        break
                    prev_s, prev_e = key_s, key_e
                    if index >= start:
                        row = index - start
                        out[row, 0] = key_s
                        out[row, 1] = key_e
                        out[row, 2] = -1
                        out[row, 3] = -1
                        n = row + 1
                if (index >= start and name_len - dot - 1 == n_ext
                        and memcmp(&buf[h + dot + 1], &ext[0], n_ext) == 0):
                    out[row, 2] = data
                    out[row, 3] = data + length
            pos = nxt
    return n, status, pos


def gather(const uint8_t[::1] buf, const int64_t[::1] starts, const int64_t[::1] ends,
           uint8_t[::1] values, int64_t[::1] offsets):
    """Concatenate ``buf[starts[i]:ends[i]]`` into ``values``; Arrow-style ``offsets``."""
    cdef Py_ssize_t i, n = starts.shape[0]
    cdef int64_t at = 0, length
    with nogil:
        offsets[0] = 0
        for i in range(n):
            length = ends[i] - starts[i]
            if length > 0:
                memcpy(&values[at], &buf[starts[i]], length)
                at += length
            offsets[i + 1] = at

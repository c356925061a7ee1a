# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled pixel kernel of :mod:`bioscan_io.images`: uint8 planes to normalised float32.

Arguments are checked by the Python wrapper (``images._normalize_planes``);
this kernel trusts shapes and lengths, so that its loop stays short, free of
the GIL and vectorised by the C compiler.

The arithmetic is the one of ``images.normalize`` (PyTorch's): the level
converted to float32, the channel's mean subtracted, the result divided by the
channel's standard deviation, each step one IEEE float32 operation rounded to
nearest. A C compiler that keeps float arithmetic in float (every 64-bit
target's default) gives the same bits; the wrapper checks that once per
process on all 256 levels of every channel -- the output is a function of
(level, channel) alone, so that check covers every image -- and uses
PyTorch's own operations instead where it fails (a build with fast-math, say).
"""

from libc.stdint cimport uint8_t


def normalize_planes(const uint8_t[:, ::1] src, float[:, ::1] dst, const float[::1] mean,
                     const float[::1] std):
    """``dst[c, i] = (float(src[c, i]) - mean[c]) / std[c]`` for every plane ``c``.

    ``src`` (uint8) and ``dst`` (float32) are C-contiguous, of the same shape
    ``(channels, pixels)``; ``mean`` and ``std`` hold one float32 per channel.
    """
    cdef Py_ssize_t c, i, n = src.shape[1]
    cdef float m, s
    cdef const uint8_t* a
    cdef float* b
    with nogil:
        for c in range(src.shape[0]):
            m = mean[c]
            s = std[c]
            a = &src[c, 0]
            b = &dst[c, 0]
            for i in range(n):
                b[i] = (<float>a[i] - m) / s

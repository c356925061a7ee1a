# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled pixel kernels of :mod:`bioscan_io.planes`: HWC pixels to flipped CHW planes, uint8 to float32.

Arguments are checked by the Python wrappers (``planes.write_planes``,
``planes.normalize_planes``); these kernels trust shapes and lengths, so that
their loops stay short, free of the GIL and vectorised by the C compiler.

The normalisation's arithmetic is the one of ``planes.normalize`` (PyTorch's): the level
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


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* One row of HWC pixels (k bytes each: R, G, B first) to three plane rows, mirrored where hflip.
       restrict: the rows never overlap, which lets the compiler vectorise the de-interleave. */
    static void bioscan_row_to_planes(const unsigned char *restrict src, Py_ssize_t k, Py_ssize_t w, int hflip,
                                      unsigned char *restrict r, unsigned char *restrict g,
                                      unsigned char *restrict b) {
        Py_ssize_t x = 0;
        if (k == 4 && !hflip) {
            for (; x < w; x++) { r[x] = src[4 * x]; g[x] = src[4 * x + 1]; b[x] = src[4 * x + 2]; }
            return;
        }
    #if defined(__SSE2__)
        /* Mirrored RGBX: no compiler vectorises a reversed strided read, so by hand, 16 pixels a step:
           four loads from the row's end, each turned end for end (pshufd), the bytes of each channel
           masked out and packed (SSE2, every x86-64). */
        if (k == 4) {
            const __m128i low = _mm_set1_epi32(0xff);
            for (; x + 16 <= w; x += 16) {
                __m128i p[4], q[4];
                int i, c;
                for (i = 0; i < 4; i++)
                    p[i] = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(src + 4 * (w - x - 4 * i - 4))),
                                             0x1B);
                for (c = 0; c < 3; c++) {
                    for (i = 0; i < 4; i++) q[i] = _mm_and_si128(_mm_srli_epi32(p[i], 8 * c), low);
                    _mm_storeu_si128((__m128i *)((c == 0 ? r : c == 1 ? g : b) + x),
                                     _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3])));
                }
            }
        }
    #endif
        for (; x < w; x++) {
            const unsigned char *p = src + k * (hflip ? w - 1 - x : x);
            r[x] = p[0]; g[x] = p[1]; b[x] = p[2];
        }
    }
    """
    void bioscan_row_to_planes(const uint8_t* src, Py_ssize_t k, Py_ssize_t w, int hflip, uint8_t* r, uint8_t* g,
                               uint8_t* b) nogil


def interleaved_to_planes(const uint8_t[:, :, ::1] src, uint8_t[:, :, ::1] dst, bint hflip, bint vflip):
    """``dst[c, y, x] = src[y', x', c]`` for ``c < 3``: HWC pixels (3 or 4 bytes each) to CHW planes, flipped.

    ``src`` has shape ``(height, width, k)``, ``k >= 3`` (RGB, or RGBX as PIL
    keeps pixels), ``dst`` shape ``(3, height, width)``; ``y' = height - 1 - y``
    where ``vflip``, ``x' = width - 1 - x`` where ``hflip``, else the same.
    """
    cdef Py_ssize_t y, h = src.shape[0], w = src.shape[1], k = src.shape[2]
    with nogil:
        for y in range(h):
            bioscan_row_to_planes(&src[h - 1 - y if vflip else y, 0, 0], k, w, hflip, &dst[0, y, 0], &dst[1, y, 0],
                                  &dst[2, y, 0])

# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Region JPEG decode with libjpeg-turbo's own API (:mod:`bioscan_io.jpeg_region` wraps it).

One call decodes a rectangle of a baseline JPEG at a DCT scale (1/1, 1/2,
1/4, 1/8) into an RGBX canvas the size of the whole scaled image, each pixel
at its own place: ``jpeg_read_header``, ``scale_num`` /
``scale_denom``, ``jpeg_start_decompress``, ``jpeg_crop_scanline`` for the
columns (it widens the region leftwards to an iMCU boundary and says where it
starts), ``jpeg_skip_scanlines`` for the rows above (entropy-decoded only, no
IDCT, upsampling or colour conversion), ``jpeg_read_scanlines`` for the
region's rows, and no more: the decoder is dropped after the last row.

libjpeg reports fatal errors through ``error_exit``, which must not return;
the standard pattern is a ``setjmp`` before the first call and a ``longjmp``
from the handler. That is C (Cython code between the two would be unsafe), so
the decode is one C function below, run without the GIL, and this module only
passes buffers and status codes. Warnings (corrupt data libjpeg worked
around) are counted, and a decode with any is reported as one.

Arguments are checked by the Python wrapper; the C function checks again
that the region and the canvas fit the image, so that nothing is written
outside ``out`` whatever it is given.
"""

from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #include <stdio.h>
    #include <string.h>
    #include <setjmp.h>
    #include <jpeglib.h>

    #if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 2001000 || !defined(JCS_EXTENSIONS)
    #error "bioscan_io._jpeg needs libjpeg-turbo >= 2.1 (jpeg_crop_scanline, jpeg_skip_scanlines, JCS_EXT_RGBX)"
    #endif

    enum { BIO_OK = 0, BIO_UNSUPPORTED = 1, BIO_ERROR = 2, BIO_WARNING = 3 };
    #define BIO_MESSAGE 200  /* JMSG_LENGTH_MAX */

    typedef struct {
        struct jpeg_error_mgr pub;
        jmp_buf jump;
        char message[JMSG_LENGTH_MAX];
    } bio_error_mgr;

    static void bio_error_exit(j_common_ptr cinfo) {
        bio_error_mgr *err = (bio_error_mgr *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->jump, 1);
    }

    /* Warnings are kept (the first one's text), never printed; trace messages are dropped. */
    static void bio_emit_message(j_common_ptr cinfo, int level) {
        bio_error_mgr *err = (bio_error_mgr *)cinfo->err;
        if (level < 0) {
            if (err->pub.num_warnings == 0)
                (*cinfo->err->format_message)(cinfo, err->message);
            err->pub.num_warnings++;
        }
    }

    /* Why this JPEG is not decoded here (the caller's general path decodes it), or NULL. */
    static const char *bio_unsupported(j_decompress_ptr cinfo) {
        int ci;
        if (cinfo->progressive_mode || cinfo->arith_code || jpeg_has_multiple_scans(cinfo))
            return "not a single-scan baseline/extended Huffman JPEG";
        if (cinfo->num_components != 3 || cinfo->jpeg_color_space != JCS_YCbCr)
            return "not a 3-component YCbCr JPEG";
        if (cinfo->data_precision != 8)
            return "not 8 bits per sample";
        for (ci = 1; ci < 3; ci++)
            if (cinfo->comp_info[ci].h_samp_factor != 1 || cinfo->comp_info[ci].v_samp_factor != 1)
                return "chroma sampling other than 4:4:4, 4:2:2 or 4:2:0";
        if (!((cinfo->comp_info[0].h_samp_factor == 1 && cinfo->comp_info[0].v_samp_factor == 1) ||
              (cinfo->comp_info[0].h_samp_factor == 2 && cinfo->comp_info[0].v_samp_factor == 1) ||
              (cinfo->comp_info[0].h_samp_factor == 2 && cinfo->comp_info[0].v_samp_factor == 2)))
            return "chroma sampling other than 4:4:4, 4:2:2 or 4:2:0";
        return NULL;
    }

    static int bio_finish(j_decompress_ptr cinfo, int status, const char *why, char *message) {
        if (why != NULL) {
            strncpy(message, why, BIO_MESSAGE - 1);
            message[BIO_MESSAGE - 1] = 0;
        }
        jpeg_destroy_decompress(cinfo);
        return status;
    }

    /* Decode rows [y, y + h) and columns [x, x + w) (widened leftwards to *got_x, *got_w wide) of the image
       at 1/scale into out, an RGBX canvas of the whole scaled image (want_w x want_h, stride bytes a row):
       each pixel at its own place, the rest of the canvas left as it was. */
    static int bio_decode_region(const unsigned char *data, unsigned long size, int scale,
                                 unsigned int want_w, unsigned int want_h, unsigned int x, unsigned int y,
                                 unsigned int w, unsigned int h, unsigned char *out, size_t capacity,
                                 size_t stride, unsigned int *got_x, unsigned int *got_w, char *message) {
        struct jpeg_decompress_struct cinfo;
        bio_error_mgr jerr;
        JSAMPROW rows[16];
        JDIMENSION xoff = x, width = w, done, n, i;
        const char *why;

        message[0] = 0;
        jerr.message[0] = 0;
        memset(&cinfo, 0, sizeof(cinfo));  /* an error inside jpeg_create_decompress finds no stale pointers */
        if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
            strncpy(message, "the scale is not 1, 2, 4 or 8", BIO_MESSAGE - 1);
            return BIO_UNSUPPORTED;
        }
        cinfo.err = jpeg_std_error(&jerr.pub);
        jerr.pub.error_exit = bio_error_exit;
        jerr.pub.emit_message = bio_emit_message;
        if (setjmp(jerr.jump))
            return bio_finish(&cinfo, BIO_ERROR, jerr.message, message);
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, data, size);
        jpeg_read_header(&cinfo, TRUE);
        why = bio_unsupported(&cinfo);
        if (why != NULL)
            return bio_finish(&cinfo, BIO_UNSUPPORTED, why, message);
        /* What Pillow's decoder sets for an RGB image at Image.draft's scale (draft's fast modes off). */
        cinfo.out_color_space = JCS_EXT_RGBX;
        cinfo.scale_num = 1;
        cinfo.scale_denom = scale;
        cinfo.dct_method = JDCT_ISLOW;
        cinfo.do_fancy_upsampling = TRUE;
        jpeg_start_decompress(&cinfo);
        if (cinfo.output_width != want_w || cinfo.output_height != want_h || cinfo.output_components != 4)
            return bio_finish(&cinfo, BIO_UNSUPPORTED, "the scaled size is not the expected one", message);
        /* 64-bit sums: no wrap-around whatever the caller passes */
        if (w == 0 || h == 0 || (unsigned long long)x + w > want_w || (unsigned long long)y + h > want_h ||
            stride < (size_t)want_w * 4 || (unsigned long long)stride * ((unsigned long long)y + h) > capacity)
            return bio_finish(&cinfo, BIO_UNSUPPORTED, "the region or canvas does not fit the image", message);
        jpeg_crop_scanline(&cinfo, &xoff, &width);
        if (xoff + width > want_w)
            return bio_finish(&cinfo, BIO_UNSUPPORTED, "libjpeg widened the region past the image", message);
        if (y > 0 && jpeg_skip_scanlines(&cinfo, y) != y)
            return bio_finish(&cinfo, BIO_ERROR, "could not skip to the region's first row", message);
        for (done = 0; done < h; done += n) {
            n = h - done < 16 ? h - done : 16;
            for (i = 0; i < n; i++)
                rows[i] = out + (y + done + i) * stride + (size_t)xoff * 4;
            n = jpeg_read_scanlines(&cinfo, rows, n);
            if (n == 0)
                return bio_finish(&cinfo, BIO_ERROR, "the decoder stopped before the region's last row", message);
        }
        *got_x = xoff;
        *got_w = width;
        if (jerr.pub.num_warnings)
            return bio_finish(&cinfo, BIO_WARNING, jerr.message, message);
        return bio_finish(&cinfo, BIO_OK, NULL, message);
    }
    """
    int bio_decode_region(const unsigned char *data, unsigned long size, int scale, unsigned int want_w,
                          unsigned int want_h, unsigned int x, unsigned int y, unsigned int w, unsigned int h,
                          unsigned char *out, size_t capacity, size_t stride, unsigned int *got_x,
                          unsigned int *got_w, char *message) nogil

#: Status codes of :func:`decode_region`.
OK, UNSUPPORTED, ERROR, WARNING = 0, 1, 2, 3


def decode_region(const uint8_t[::1] data, uint8_t[::1] out, int scale, unsigned int want_w, unsigned int want_h,
                  unsigned int x, unsigned int y, unsigned int w, unsigned int h):
    """Decode rows ``[y, y + h)``, columns ``[x, x + w)`` of the JPEG ``data`` at ``1/scale`` into ``out``.

    ``want_w`` x ``want_h`` is the image's size at that scale (anything else is
    unsupported); ``out`` is an RGBX canvas of that size (``want_w * 4`` bytes
    a row, at least ``y + h`` rows): each decoded pixel lands at its own place
    and the rest is not written. Returns ``(status, x0, width, message)``: the
    columns decoded start at ``x0 <= x`` (an iMCU boundary) and are ``width``
    pixels wide, ending at ``x + w``; ``status`` is :data:`OK`,
    :data:`UNSUPPORTED` (nothing decoded; ``message`` says why),
    :data:`ERROR` (libjpeg's message) or :data:`WARNING` (pixels decoded from
    corrupt data; the first warning).
    """
    cdef unsigned int got_x = 0, got_w = 0
    cdef char message[200]
    cdef int status
    cdef const uint8_t* src = &data[0] if data.shape[0] else NULL
    cdef unsigned long n = data.shape[0]
    cdef size_t capacity = out.shape[0]
    cdef uint8_t* dst = &out[0] if capacity else NULL
    if src == NULL or dst == NULL:
        return UNSUPPORTED, 0, 0, "no data or no output buffer"
    with nogil:
        status = bio_decode_region(src, n, scale, want_w, want_h, x, y, w, h, dst, capacity, <size_t>want_w * 4,
                                   &got_x, &got_w, message)
    return status, got_x, got_w, message.decode("utf-8", "replace")

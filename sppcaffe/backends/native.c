/* The CPU's compiled loops (sppcaffe/backends/native.py).
 *
 * Each function is the NumPy code it replaces, operation for operation:
 * the same float32 values are added in the same order and compared by the
 * same rules, so results are bit-identical with or without this library
 * (tests/test_native.py holds both to that).  NumPy's version is a few
 * strided passes over the whole batch; a loop here touches each value once
 * while it is in cache.
 *
 * Every function works on units [lo, hi) (planes or (channel, image) pairs)
 * that never write the same memory, so callers split a batch over threads;
 * ctypes releases the GIL for the call.  Built with -fno-fast-math and
 * -ffp-contract=off: no reassociation, no fused multiply-adds.
 */
#include <math.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef int64_t i64;

/* Outputs x in [0, out) whose input column x*stride + offset lies in
 * [0, size): [*first, *last). */
static void inside(i64 offset, i64 stride, i64 size, i64 out, i64 *first, i64 *last)
{
    i64 lo = 0, hi = out;
    if (offset < 0)
        lo = (-offset + stride - 1) / stride;
    if (size - offset <= 0)
        hi = 0;
    else if ((size - offset + stride - 1) / stride < hi)
        hi = (size - offset + stride - 1) / stride;
    if (lo > hi)
        lo = hi;
    *first = lo;
    *last = hi;
}

/* dst[q] = src[q] (add: dst[q] += src[q]) for q in [0, n): whole vectors
 * first (GCC's -O2 leaves loops of unknown length scalar, and convolution
 * rows are short: LeNet's conv2 has 8 cells), then the tail.  Each add is
 * the same single float32 add as the scalar loop's, so the same bits. */
static inline __attribute__((always_inline)) void
move_floats(float *restrict dst, const float *restrict src, i64 n, int add)
{
    i64 q = 0;
#if defined(__SSE2__)
    for (; q + 8 <= n; q += 8) {
        __m128 a = _mm_loadu_ps(src + q), b = _mm_loadu_ps(src + q + 4);
        if (add) {
            a = _mm_add_ps(_mm_loadu_ps(dst + q), a);
            b = _mm_add_ps(_mm_loadu_ps(dst + q + 4), b);
        }
        _mm_storeu_ps(dst + q, a);
        _mm_storeu_ps(dst + q + 4, b);
    }
    for (; q + 4 <= n; q += 4) {
        __m128 a = _mm_loadu_ps(src + q);
        if (add)
            a = _mm_add_ps(_mm_loadu_ps(dst + q), a);
        _mm_storeu_ps(dst + q, a);
    }
#endif
    for (; q < n; ++q)
        dst[q] = add ? dst[q] + src[q] : src[q];
}

/* One row of one kernel offset, between an image plane's row and a column
 * row of wo cells: copied into the column (padding as +0.0), or the column
 * added onto the image (padding cells dropped).  Inlined with `add` as a
 * constant, so each caller gets its own loop. */
static inline __attribute__((always_inline)) void
row_transfer(float *restrict image_row, float *restrict column_row, i64 sw, i64 first,
             i64 last, i64 wo, int add)
{
    if (add) {
        if (sw == 1)
            move_floats(image_row + first, column_row + first, last - first, 1);
        else
            for (i64 q = first; q < last; ++q)
                image_row[q * sw] += column_row[q];
        return;
    }
    for (i64 q = 0; q < first; ++q)
        column_row[q] = 0.0f;
    if (sw == 1)
        move_floats(column_row + first, image_row + first, last - first, 0);
    else
        for (i64 q = first; q < last; ++q)
            column_row[q] = image_row[q * sw];
    for (i64 q = last; q < wo; ++q)
        column_row[q] = 0.0f;
}

/* sppcaffe.im2col's column layout: col is (C, kh, kw, N, Ho, Wo), images is
 * (N, C, H, W); unit u = c * N + n.  A run of units of one channel is
 * walked offset by offset, each offset's images in order: one stream of
 * column rows at a time (the column blocks of one image lie N*Ho*Wo floats
 * apart, a power of two on common shapes, where interleaved streams alias
 * in the cache).  im2col copies rows into the columns; col2im zeroes the
 * images and adds the rows back, so each pixel's terms are added to 0.0f in
 * kernel-offset order (i, j), as NumPy's one strided add per offset does. */
static inline __attribute__((always_inline)) void
walk_columns(float *images, i64 n_img, i64 chans, i64 h, i64 w, i64 kh, i64 kw, i64 ph,
             i64 pw, i64 sh, i64 sw, i64 dh, i64 dw, i64 ho, i64 wo, float *col, i64 lo,
             i64 hi, int add)
{
    for (i64 u = lo; u < hi;) {
        i64 c = u / n_img, n0 = u % n_img, n1 = n0 + (hi - u);
        if (n1 > n_img)
            n1 = n_img;
        u += n1 - n0;
        if (add)
            for (i64 n = n0; n < n1; ++n)
                for (i64 k = 0; k < h * w; ++k)
                    images[(n * chans + c) * h * w + k] = 0.0f;
        for (i64 i = 0; i < kh; ++i) {
            /* Rows [y0, y1) of this kernel row read image rows inside it. */
            i64 y0, y1;
            inside(i * dh - ph, sh, h, ho, &y0, &y1);
            for (i64 j = 0; j < kw; ++j) {
                i64 offset = j * dw - pw, first, last;
                inside(offset, sw, w, wo, &first, &last);
                for (i64 n = n0; n < n1; ++n) {
                    float *plane = images + (n * chans + c) * h * w;
                    float *block = col + (((c * kh + i) * kw + j) * n_img + n) * ho * wo;
                    if (sw == 1 && first == 0 && last == wo && y0 == 0 && y1 == ho) {
                        /* Every cell inside (no padding reached): whole rows,
                         * no tests per row; the common case, and its rows
                         * are short (LeNet's: 8 and 24 cells). */
                        const float *src = plane + (i * dh - ph) * w + offset;
                        for (i64 y = 0; y < ho; ++y, src += sh * w)
                            move_floats(add ? (float *)src : block + y * wo,
                                        add ? block + y * wo : src, wo, add);
                        continue;
                    }
                    for (i64 y = 0; y < ho; ++y) {
                        i64 r = y * sh + i * dh - ph;
                        if (r >= 0 && r < h)
                            row_transfer(plane + r * w + offset, block + y * wo, sw, first,
                                         last, wo, add);
                        else if (!add)
                            for (i64 q = 0; q < wo; ++q)
                                block[y * wo + q] = 0.0f;
                    }
                }
            }
        }
    }
}

void sc_im2col(const float *x, i64 n_img, i64 chans, i64 h, i64 w, i64 kh, i64 kw,
               i64 ph, i64 pw, i64 sh, i64 sw, i64 dh, i64 dw, i64 ho, i64 wo,
               float *col, i64 lo, i64 hi)
{
    walk_columns((float *)x, n_img, chans, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, col,
                 lo, hi, 0);
}

void sc_col2im(const float *col, i64 n_img, i64 chans, i64 h, i64 w, i64 kh, i64 kw,
               i64 ph, i64 pw, i64 sh, i64 sw, i64 dh, i64 dw, i64 ho, i64 wo,
               float *out, i64 lo, i64 hi)
{
    walk_columns(out, n_img, chans, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, (float *)col,
                 lo, hi, 1);
}

/* One window's maximum with bounds tests: cells outside the image read
 * as -inf.  *best gets the winner's plane index. */
static float window_max(const float *plane, i64 h, i64 w, i64 r0, i64 q0, i64 kh, i64 kw,
                        i64 *best)
{
    float m = 0.0f;
    *best = r0 * w + q0;
    for (i64 i = 0; i < kh; ++i) {
        i64 r = r0 + i;
        int row_in = r >= 0 && r < h;
        for (i64 j = 0; j < kw; ++j) {
            i64 q = q0 + j;
            float v = (row_in && q >= 0 && q < w) ? plane[r * w + q] : -INFINITY;
            if (i == 0 && j == 0) {
                m = v;
                continue;
            }
            if (v > m)
                *best = r * w + q;
            if (!isnan(m) && !(m > v))
                m = v;
        }
    }
    return m;
}

#if defined(__SSE2__)
#include <emmintrin.h>

/* 2x2 windows, stride 2, inside the image (LeNet's, VGG's pools): four
 * windows at a time with SSE2, the same comparisons and selects as the
 * scalar loop below, so the same bits.  Returns the outputs done; the
 * caller finishes the row. */
static i64 pool2x2_row(const float *r0, i64 w, i64 wo, i64 base, float *y, int32_t *a)
{
    const float *r1 = r0 + w;
    const __m128i one = _mm_set1_epi32(1), down = _mm_set1_epi32((int32_t)w),
                  down_right = _mm_set1_epi32((int32_t)w + 1);
    __m128i origin = _mm_setr_epi32(0, 2, 4, 6);
    origin = _mm_add_epi32(origin, _mm_set1_epi32((int32_t)base));
    i64 ox = 0;
    for (; ox + 4 <= wo; ox += 4) {
        __m128 t0 = _mm_loadu_ps(r0 + 2 * ox), t1 = _mm_loadu_ps(r0 + 2 * ox + 4);
        __m128 u0 = _mm_loadu_ps(r1 + 2 * ox), u1 = _mm_loadu_ps(r1 + 2 * ox + 4);
        __m128 cells[3] = {_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                           _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1))};
        const __m128i offsets[3] = {one, down, down_right};
        __m128 m = _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
        __m128i at = _mm_setzero_si128();
        for (int k = 0; k < 3; ++k) {
            __m128 v = cells[k];
            __m128i better = _mm_castps_si128(_mm_cmpgt_ps(v, m));
            at = _mm_or_si128(_mm_and_si128(better, offsets[k]), _mm_andnot_si128(better, at));
            __m128 keep = _mm_or_ps(_mm_cmpunord_ps(m, m), _mm_cmpgt_ps(m, v));
            m = _mm_or_ps(_mm_and_ps(keep, m), _mm_andnot_ps(keep, v));
        }
        _mm_storeu_ps(y + ox, m);
        if (a)
            _mm_storeu_si128((__m128i *)(a + ox),
                             _mm_add_epi32(_mm_add_epi32(origin, _mm_set1_epi32(2 * (int32_t)ox)),
                                           at));
    }
    return ox;
}
#endif

/* MAX pooling of planes [lo, hi) as sppcaffe.layers.pooling's NumPy code:
 * the first cell of the window (-inf in the padding) starts the maximum,
 * each later cell in row-major order replaces the winner only when
 * strictly greater (Caffe's first-maximum rule), and the maximum follows
 * np.maximum (a NaN wins and stays; of two equal values the later one,
 * which shows only as the sign of a zero).  argmax (may be
 * NULL) gets the plane index h*W + w of the winner.  Selects, not
 * branches: the winner is a coin toss on real feature maps. */
void sc_max_pool(const float *restrict x, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw,
                 i64 ph, i64 pw, i64 ho, i64 wo, float *restrict y, int32_t *restrict argmax,
                 i64 lo, i64 hi)
{
    int two_by_two = kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0;
    for (i64 p = lo; p < hi; ++p) {
        const float *plane = x + p * h * w;
        float *yp = y + p * ho * wo;
        int32_t *ap = argmax ? argmax + p * ho * wo : 0;
        for (i64 oy = 0; oy < ho; ++oy) {
            i64 ox = 0;
#if defined(__SSE2__)
            if (two_by_two && 2 * oy + 2 <= h) {
                /* Windows inside the image: the last may be partial (ceil). */
                i64 inside_w = (w / 2 < wo) ? w / 2 : wo;
                ox = pool2x2_row(plane + 2 * oy * w, w, inside_w, 2 * oy * w, yp + oy * wo,
                                 ap ? ap + oy * wo : 0);
            }
#else
            (void)two_by_two;
#endif
            for (; ox < wo; ++ox) {
                i64 r0 = oy * sh - ph, q0 = ox * sw - pw, best;
                float m;
                if (r0 >= 0 && q0 >= 0 && r0 + kh <= h && q0 + kw <= w) {
                    /* The usual window, inside the image: no bounds to test. */
                    const float *cell = plane + r0 * w + q0;
                    i64 at = 0;
                    m = cell[0];
                    for (i64 i = 0; i < kh; ++i)
                        for (i64 j = (i == 0); j < kw; ++j) {
                            float v = cell[i * w + j];
                            at = v > m ? i * w + j : at;
                            m = (m == m && !(m > v)) ? v : m;
                        }
                    best = r0 * w + q0 + at;
                } else {
                    m = window_max(plane, h, w, r0, q0, kh, kw, &best);
                }
                yp[oy * wo + ox] = m;
                if (ap)
                    ap[oy * wo + ox] = (int32_t)best;
            }
        }
    }
}

/* dx += dy routed through argmax, planes [lo, hi), each plane's top cells
 * in order (np.add.at's order); with `overwrite` each plane is zeroed first
 * (one pass while the plane is in cache, on the thread that adds to it,
 * instead of a zeroing pass over the whole batch).  An index outside the
 * plane (a window whose every cell was padding or -inf) adds nothing. */
void sc_max_pool_backward(const float *restrict dy, const int32_t *restrict argmax, i64 h, i64 w, i64 ho,
                          i64 wo, float *dx, int overwrite, i64 lo, i64 hi)
{
    for (i64 p = lo; p < hi; ++p) {
        const float *g = dy + p * ho * wo;
        const int32_t *a = argmax + p * ho * wo;
        float *d = dx + p * h * w;
        if (overwrite)
            for (i64 k = 0; k < h * w; ++k)
                d[k] = 0.0f;
        for (i64 t = 0; t < ho * wo; ++t)
            if (a[t] >= 0 && a[t] < h * w)
                d[a[t]] += g[t];
    }
}

/* c += a b for a column a (rows x 1, stride sa) and a row b (1 x cols,
 * stride sb): the weight gradient of a fully connected layer at batch 1.
 * Each element is c + (a * b), two roundings, which is what a one-term
 * product (a * b exactly once rounded) added to c gives; one pass over c
 * instead of the GEMM's scratch and a second pass. */
void sc_add_outer(const float *restrict a, i64 sa, const float *restrict b, i64 sb,
                  float *restrict c, i64 ldc, i64 rows, i64 cols)
{
    for (i64 i = 0; i < rows; ++i) {
        float ai = a[i * sa];
        float *row = c + i * ldc;
        if (sb == 1) {
            /* Blocks of 8 with a fixed count: vectorized at -O2. */
            i64 j = 0;
            for (; j + 8 <= cols; j += 8)
                for (int t = 0; t < 8; ++t)
                    row[j + t] += ai * b[j + t];
            for (; j < cols; ++j)
                row[j] += ai * b[j];
        } else
            for (i64 j = 0; j < cols; ++j)
                row[j] += ai * b[j * sb];
    }
}

/* SGD with momentum and L2 weight decay on one parameter, in one pass: the
 * operations of sppcaffe/solvers/updates.py in their order, each rounded
 * to float as NumPy does (-ffp-contract=off: no fused multiply-adds):
 *     g += w * decay;  h = h * momentum + g * rate;  g = h;  w -= g.
 * Six passes over three arrays become one (ZF-5's 58 M parameters). */
static inline __attribute__((always_inline)) void
sgd_step(float *restrict w, float *restrict g, float *restrict h, i64 k, float decay,
         float rate, float momentum, int with_decay)
{
    float grad = g[k];
    if (with_decay) {
        float shrink = w[k] * decay;
        grad = grad + shrink;
    }
    float scaled = grad * rate;
    float kept = h[k] * momentum;
    float step = kept + scaled;
    h[k] = step;
    g[k] = step;
    w[k] = w[k] - step;
}

void sc_sgd_update(float *restrict w, float *restrict g, float *restrict h, i64 count,
                   float decay, float rate, float momentum, int with_decay)
{
    /* Blocks of 8 with a fixed count: vectorized at -O2. */
    i64 k = 0;
    if (with_decay)
        for (; k + 8 <= count; k += 8)
            for (int t = 0; t < 8; ++t)
                sgd_step(w, g, h, k + t, decay, rate, momentum, 1);
    else
        for (; k + 8 <= count; k += 8)
            for (int t = 0; t < 8; ++t)
                sgd_step(w, g, h, k + t, decay, rate, momentum, 0);
    for (; k < count; ++k)
        sgd_step(w, g, h, k, decay, rate, momentum, with_decay);
}

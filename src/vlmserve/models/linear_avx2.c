/* Float32 linear layers on CPUs with AVX2 and FMA whose BLAS gives a row other bits when
   fewer rows share the call (models/rows.py): y[m, n] = bias[n] + sum_k x[m, k] * w[n, k],
   with every output summed the same way whatever the row count, the row's place in the
   call, the thread or the layer's width:
   - one chain of fused multiply-adds per output, over k in order from 0, then the bias;
   - so a token's result depends on its own input alone, by construction, not by probing.

   The weight is packed once into panels of 16 outputs, k-major inside a panel
   ([panels][in][16], zero outputs past the last), so that a call streams it in one pass.
   It is kept in bfloat16 where that holds its values exactly (a bf16 checkpoint loaded in
   float32): half the bytes for a decode step that is bound by memory, the same arithmetic.
   Rows go in blocks of up to 6 (12 accumulators in registers); a chunk of 64 rows passes
   over each panel before the next, so a weight is read from memory once per 64 rows.

   Built with the attention kernel by vlmserve.models.native, called through ctypes. */
#include <stdint.h>

#include "bf16.h"

#define PANEL 16
#define ROW_BLOCK 6
#define ROW_CHUNK 64

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline void store_outputs(float *dst, __m256 a, __m256 b, const float *bias,
                                 int64_t count) {
    if (bias) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(bias));
        b = _mm256_add_ps(b, _mm256_loadu_ps(bias + 8));
    }
    if (count == PANEL) {
        _mm256_storeu_ps(dst, a);
        _mm256_storeu_ps(dst + 8, b);
        return;
    }
    float lanes[PANEL];
    _mm256_storeu_ps(lanes, a);
    _mm256_storeu_ps(lanes + 8, b);
    for (int64_t i = 0; i < count; i++) dst[i] = lanes[i];
}

/* R rows (1..6, a constant after inlining) of x times one panel. `bias` is the panel's
   padded bias or NULL; `count` how many of its 16 outputs are real. The accumulators are
   named, not an array: GCC kept an array's in memory, a store per multiply-add (3x slower). */
#define ROW_STEP(r)                                                                            \
    if (R > r) {                                                                               \
        const __m256 xr = _mm256_broadcast_ss(x + r * in + k);                                 \
        a##r = _mm256_fmadd_ps(xr, w0, a##r);                                                  \
        b##r = _mm256_fmadd_ps(xr, w1, b##r);                                                  \
    }
#define ROW_END(r) \
    if (R > r) store_outputs(y + r * out, a##r, b##r, bias, count);
#define DEFINE_BLOCK(NAME, T, LOAD_PAIR)                                                       \
static inline __attribute__((always_inline)) void NAME(                                       \
    const float *x, int64_t in, const T *panel, const float *bias, float *y, int64_t out,      \
    int64_t count, const int R) {                                                              \
    __m256 a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, b4, b5;                                     \
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = _mm256_setzero_ps();           \
    for (int64_t k = 0; k < in; k++) {                                                         \
        __m256 w0, w1;                                                                         \
        LOAD_PAIR(panel + k * PANEL, w0, w1);                                                  \
        ROW_STEP(0) ROW_STEP(1) ROW_STEP(2) ROW_STEP(3) ROW_STEP(4) ROW_STEP(5)                \
    }                                                                                          \
    ROW_END(0) ROW_END(1) ROW_END(2) ROW_END(3) ROW_END(4) ROW_END(5)                          \
}

#define LOAD_PAIR_F32(src, w0, w1) (w0 = _mm256_loadu_ps(src), w1 = _mm256_loadu_ps((src) + 8))
#define LOAD_PAIR_BF16(src, w0, w1) (w0 = load8_bf16(src), w1 = load8_bf16((src) + 8))

DEFINE_BLOCK(block_f32, float, LOAD_PAIR_F32)
DEFINE_BLOCK(block_bf16, bf16, LOAD_PAIR_BF16)

/* Chunks of 64 rows; inside, panels (each streamed once per chunk); inside, blocks of 6. */
#define DEFINE_LINEAR(NAME, T, BLOCK)                                                          \
static void NAME(const float *x, int64_t rows, int64_t in, const T *packed,                   \
                 const float *bias, float *y, int64_t out, int64_t first, int64_t end) {       \
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_CHUNK) {                                         \
        const int64_t chunk_end = rows - r0 < ROW_CHUNK ? rows : r0 + ROW_CHUNK;               \
        for (int64_t p = first; p < end; p++) {                                                \
            const T *panel = packed + p * in * PANEL;                                          \
            const float *b = bias ? bias + p * PANEL : 0;                                      \
            const int64_t count = out - p * PANEL < PANEL ? out - p * PANEL : PANEL;           \
            for (int64_t r = r0; r < chunk_end; r += ROW_BLOCK) {                              \
                const float *xr = x + r * in;                                                  \
                float *yr = y + r * out + p * PANEL;                                           \
                switch (chunk_end - r < ROW_BLOCK ? chunk_end - r : ROW_BLOCK) {               \
                case 1: BLOCK(xr, in, panel, b, yr, out, count, 1); break;                     \
                case 2: BLOCK(xr, in, panel, b, yr, out, count, 2); break;                     \
                case 3: BLOCK(xr, in, panel, b, yr, out, count, 3); break;                     \
                case 4: BLOCK(xr, in, panel, b, yr, out, count, 4); break;                     \
                case 5: BLOCK(xr, in, panel, b, yr, out, count, 5); break;                     \
                default: BLOCK(xr, in, panel, b, yr, out, count, 6); break;                    \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_LINEAR(linear_f32, float, block_f32)
DEFINE_LINEAR(linear_bf16, bf16, block_bf16)
#endif

/* x [rows, in] float32 times the packed weight (bf16 when `weight_bf16`, else float32) for
   panels [first, end), into y [rows, out]; `bias` is padded to whole panels, or NULL.
   Returns 0, or -1 where this build has no AVX2 and FMA (the caller keeps torch's GEMM). */
int invariant_linear(const float *x, int64_t rows, int64_t in, const void *packed,
                     int weight_bf16, const float *bias, float *y, int64_t out, int64_t first,
                     int64_t end) {
#if defined(__AVX2__) && defined(__FMA__)
    if (weight_bf16)
        linear_bf16(x, rows, in, (const bf16 *)packed, bias, y, out, first, end);
    else
        linear_f32(x, rows, in, (const float *)packed, bias, y, out, first, end);
    return 0;
#else
    (void)x, (void)rows, (void)in, (void)packed, (void)weight_bf16, (void)bias, (void)y;
    (void)out, (void)first, (void)end;
    return -1;
#endif
}

/* The per-token halves of an int8 linear layer (models/quantize.py), one call each instead of
   a dozen torch operations (~45 us a layer at batch 1, most of what int8 saved on a small
   model's GEMMs):
   - quantize: each row to int8 with its own scale, max |row| / 127 (at least 1e-12), and
     x / scale rounded half to even, as quantize_rows does in torch (same bits);
   - finish: oneDNN's float32 sums times each row's scale, plus the bias, to the model's dtype.

   Built with the attention kernel by vlmserve.models.native, called through ctypes. */
#include <math.h>
#include <stdint.h>

#include "bf16.h"

/* Rounds half to even, as torch.round does, for |x| < 2^22: adding and removing 1.5 * 2^23
   leaves no fraction bits, and the addition rounds to nearest even. Unlike nearbyintf it
   vectorises without -ffast-math (a libm call per element was 1.5 ns). */
static inline float round_even(float x) {
    const float magic = 12582912.0f;
    return (x + magic) - magic;
}

#define DEFINE_QUANTIZE(NAME, T, LOAD)                                                         \
void NAME(const T *x, int64_t rows, int64_t cols, int8_t *q, float *scales) {                  \
    for (int64_t r = 0; r < rows; r++) {                                                       \
        const T *row = x + r * cols;                                                           \
        float top = 0.0f;                                                                      \
        _Pragma("omp simd reduction(max:top)")                                                 \
        for (int64_t c = 0; c < cols; c++) {                                                   \
            const float a = fabsf(LOAD(row[c]));                                               \
            top = a > top ? a : top;                                                           \
        }                                                                                      \
        const float scale = (top > 1e-12f ? top : 1e-12f) / 127.0f;                            \
        scales[r] = scale;                                                                     \
        _Pragma("omp simd")                                                                    \
        for (int64_t c = 0; c < cols; c++)                                                     \
            q[r * cols + c] = (int8_t)round_even(LOAD(row[c]) / scale);                        \
    }                                                                                          \
}

#define DEFINE_FINISH(NAME, T, STORE)                                                          \
void NAME(const float *sums, int64_t rows, int64_t cols, const float *scales,                 \
          const float *bias, T *out) {                                                         \
    for (int64_t r = 0; r < rows; r++) {                                                       \
        const float scale = scales[r];                                                         \
        for (int64_t c = 0; c < cols; c++) {                                                   \
            float y = sums[r * cols + c] * scale;                                              \
            if (bias) y += bias[c];                                                            \
            out[r * cols + c] = STORE(y);                                                      \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_QUANTIZE(int8_quantize_rows_bf16, bf16, bf16_load)
DEFINE_QUANTIZE(int8_quantize_rows_f32, float, f32_load)
DEFINE_FINISH(int8_finish_rows_bf16, bf16, bf16_store)
DEFINE_FINISH(int8_finish_rows_f32, float, f32_store)

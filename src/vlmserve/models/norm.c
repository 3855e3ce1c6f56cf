/* RMSNorm over float32 rows in one call (models/layers.py): weight * (x / sqrt(mean(x^2) +
   eps)), as transformers computes it in float32. torch spells it as several operations a
   call (~30 us at one row, 25 calls a decode step of a small model); here it is one pass to
   sum and one to scale. Each row is summed alone, in an order fixed by the build, so a row's
   bits do not depend on the other rows.

   Built with the other kernels by vlmserve.models.native, called through ctypes. */
#include <math.h>
#include <stdint.h>

void rms_norm_f32(const float *x, const float *weight, float *out, int64_t rows, int64_t dim,
                  float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * dim;
        float *o = out + r * dim;
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t c = 0; c < dim; c++) squares += row[c] * row[c];
        const float scale = 1.0f / sqrtf(squares / (float)dim + eps);
#pragma omp simd
        for (int64_t c = 0; c < dim; c++) o[c] = weight[c] * (row[c] * scale);
    }
}

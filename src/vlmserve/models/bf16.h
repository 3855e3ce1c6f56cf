/* bfloat16 <-> float32 for our C kernels: a bf16 is the top half of a float32, rounded to
   nearest even on the way down, NaN kept NaN; with AVX2, 8 at a time into a vector. */
#ifndef VLMSERVE_BF16_H
#define VLMSERVE_BF16_H
#include <stdint.h>

typedef uint16_t bf16;

static inline float bf16_load(bf16 x) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)x << 16;
    return v.f;
}

static inline bf16 bf16_store(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((v.u >> 16) | 0x40u); /* NaN stays NaN */
    return (bf16)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16); /* round to nearest even */
}

static inline float f32_load(float x) { return x; }
static inline float f32_store(float f) { return f; }

#ifdef __AVX2__
#include <immintrin.h>

/* 8 bf16 to 8 float32 lanes (exact: a shift into the top half). */
static inline __m256 load8_bf16(const bf16 *src) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
}
#endif

#endif

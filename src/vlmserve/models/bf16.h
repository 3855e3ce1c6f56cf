/* bfloat16 <-> float32 for our C kernels (paged_attention.c, int8_rows.c): a bf16 is the top
   half of a float32, rounded to nearest even on the way down, NaN kept NaN. */
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

#endif

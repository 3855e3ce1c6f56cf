/* paged_attention.c's items for CPUs with AVX2 and FMA but without AVX-512 BF16 (see
   attention_avx2.c). Each returns 1 when it computed the item, 0 for a head layout it does
   not take (the caller then runs its portable loops). */
#ifndef VLMSERVE_ATTENTION_AVX2_H
#define VLMSERVE_ATTENTION_AVX2_H
#include <stdint.h>

#include "bf16.h"

#if defined(__AVX2__) && defined(__FMA__) && !(defined(__AVX512F__) && defined(__AVX512BF16__))
#define HAVE_AVX2_ITEMS 1
int avx2_item_f32(const float *q, const float *keys, const float *values, const int64_t *table,
                  int64_t len, int64_t group, int64_t head_dim, int64_t block_size, float scale,
                  float *scores, float *out);
int avx2_item_bf16(const bf16 *q, const bf16 *keys, const bf16 *values, const int64_t *table,
                   int64_t len, int64_t group, int64_t head_dim, int64_t block_size, float scale,
                   float *scores, bf16 *out);
#endif

#endif

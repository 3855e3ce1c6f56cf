/* Where a cached token lies in a KV head's paged blocks: shared by paged_attention.c and
   attention_avx2.c. */
#ifndef VLMSERVE_KV_ROWS_H
#define VLMSERVE_KV_ROWS_H
#include <stdint.h>

/* Where cached token t of a sequence lies, in elements from the start of its KV head's
   blocks: block table[t / block_size], row t % block_size. Every row of every item asks
   (and every prefetch), so a power-of-two block size (16, the default) divides by
   shifting: a 64-bit division per row was ~1/4 of the kernel's time in cache (perf). */
static inline int64_t row_offset(const int64_t *table, int64_t t, int64_t block_size,
                                 int64_t head_dim) {
    if ((block_size & (block_size - 1)) == 0) {
        const int shift = __builtin_ctzll((unsigned long long)block_size);
        return (table[t >> shift] * block_size + (t & (block_size - 1))) * head_dim;
    }
    return (table[t / block_size] * block_size + t % block_size) * head_dim;
}

#endif

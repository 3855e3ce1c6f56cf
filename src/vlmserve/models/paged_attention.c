/* Causal attention straight from a paged KV cache: every query token (a decode, or a token of
   a prompt chunk) over its own sequence's cached context, keys and values read where they
   lie (no gather).

   Built by vlmserve.models.native (cc -O3 -march=native -fopenmp-simd) and called through
   ctypes, which releases the GIL: callers split the (row, KV head) items across threads.
   A token's result depends only on its query, its context and this binary, never on the
   other tokens of the step or on how its sequence was split into chunks: the order of every
   sum is fixed per token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_avx2.h"
#include "bf16.h"
#include "kv_rows.h"

/* exp(x) for x <= 0 (scores minus their maximum): Cody-Waite reduction to [-ln2/2, ln2/2],
   a degree-6 polynomial, and 2^n put into the exponent bits. Written out, not libm's expf,
   so that the loop vectorises without -ffast-math (which would also change the process's
   floating-point mode). Relative error below 2e-7 over the range. */
static inline float exp_nonpositive(float x) {
    if (x < -87.0f) x = -87.0f;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * scale.f;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_BF16_SCORES 1

/* How far ahead the next rows are asked for, in 16-token tiles: two was the best of one to
   four (measured; the next tile alone left memory idle, four evicted rows still in use). */
#define PREFETCH_TILES 2
static inline void prefetch_row(const bf16 *row, int64_t head_dim) {
    for (int64_t d = 0; d < head_dim; d += 32) _mm_prefetch((const char *)(row + d), _MM_HINT_T0);
}

/* r[i] = the sum of v[i]'s 16 lanes, for 16 vectors: four rounds of pairwise shuffles and
   adds (46 instructions) instead of 16 horizontal sums. */
static inline __m512 sum16(__m512 v[16]) {
    __m512 w[8], z[4], u[2];
    for (int i = 0; i < 8; i++)
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_ps(_mm512_unpacklo_ps(z[2 * i], z[2 * i + 1]),
                             _mm512_unpackhi_ps(z[2 * i], z[2 * i + 1]));
    __m512 f = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[0]), _mm512_castps_pd(u[1]))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[0]), _mm512_castps_pd(u[1]))));
    /* f[4j + k] holds v[j + 4k]'s sum */
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, f);
}

/* A whole tile of 16 keys: the generic loop below with its counts known (CHUNKS = head dim
   / 32), unrolled, and no test of how many rows the tile holds; the same products in the
   same order, so the same bits. 1.2x on `small` decode attention in cache, 1.1x with blocks
   in random order (perf had the row-count tests and the loop over chunks among the hottest
   instructions). */
#define DEFINE_FULL_TILE(NAME, CHUNKS)                                                         \
static inline void NAME(const bf16 *q, const bf16 *const rows[16], int64_t group, float scale, \
                        float *scores, int64_t len) {                                          \
    for (int64_t g = 0; g < group; g++) {                                                      \
        __m512bh qc[CHUNKS];                                                                   \
        _Pragma("GCC unroll 4") for (int c = 0; c < CHUNKS; c++)                               \
            qc[c] = (__m512bh)_mm512_loadu_si512(q + (32 * CHUNKS) * g + 32 * c);               \
        __m512 acc[16];                                                                        \
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {                                \
            acc[i] = _mm512_setzero_ps();                                                      \
            _Pragma("GCC unroll 4") for (int c = 0; c < CHUNKS; c++)                           \
                acc[i] = _mm512_dpbf16_ps(acc[i], qc[c],                                       \
                                          (__m512bh)_mm512_loadu_si512(rows[i] + 32 * c));     \
        }                                                                                      \
        _mm512_storeu_ps(scores + g * len, _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));  \
    }                                                                                          \
}

DEFINE_FULL_TILE(full_tile_d32, 1)
DEFINE_FULL_TILE(full_tile_d64, 2)
DEFINE_FULL_TILE(full_tile_d128, 4)

/* scores[g * len + t] = scale * q_g . k_t for the `group` query heads of one KV head. */
static void bf16_scores(const bf16 *q, const bf16 *keys, const int64_t *table, int64_t len,
                        int64_t group, int64_t head_dim, int64_t block_size, float scale,
                        float *scores) {
    const int64_t chunks = head_dim / 32;
    void (*full_tile)(const bf16 *, const bf16 *const[16], int64_t, float, float *, int64_t) =
        chunks == 1 ? full_tile_d32 : chunks == 2 ? full_tile_d64 : chunks == 4 ? full_tile_d128
                                                                                : 0;
    const bf16 *rows[16];
    for (int64_t start = 0; start < len; start += 16) {
        const int64_t count = len - start < 16 ? len - start : 16;
        for (int64_t i = 0; i < count; i++) {
            const int64_t t = start + i;
            rows[i] = keys + row_offset(table, t, block_size, head_dim);
        }
        /* Later tiles' rows sit in other blocks, anywhere in the cache: ask for them now so
           that memory works while this tile computes (1.1-1.3x with blocks in random order
           in a cache far larger than the CPU's, measured). */
        for (int64_t t = start + 16 * PREFETCH_TILES; t < start + 16 * PREFETCH_TILES + 16 && t < len; t++)
            prefetch_row(keys + row_offset(table, t, block_size, head_dim), head_dim);
        if (count == 16 && full_tile) {
            full_tile(q, rows, group, scale, scores + start, len);
            continue;
        }
        for (int64_t g = 0; g < group; g++) {
            const bf16 *qg = q + g * head_dim;
            __m512 acc[16];
            for (int64_t i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
            for (int64_t c = 0; c < chunks; c++) {
                const __m512bh qc = (__m512bh)_mm512_loadu_si512(qg + 32 * c);
                for (int64_t i = 0; i < count; i++)
                    acc[i] = _mm512_dpbf16_ps(acc[i], qc,
                                              (__m512bh)_mm512_loadu_si512(rows[i] + 32 * c));
            }
            const __m512 s = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(scores + g * len + start, (__mmask16)((1u << count) - 1), s);
        }
    }
}

/* exp_nonpositive on 16 lanes, the same operations in the same order. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

static inline __m512 bf16x16_load(const bf16 *src) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
}

/* The probability-weighted sum of the values for query heads [g0, g0 + count) of a group,
   count <= HEADS, head_dim = 16 * VECTORS; sums[g][c] receives head g0 + g's c-th vector.
   HEADS and VECTORS are constants and the loops over them unrolled, so that the
   HEADS * VECTORS accumulators stay in registers: with them in memory every token cost a
   load and a store per accumulator (2.5x slower, measured). Each accumulator sums the tokens
   in order, as the generic loop below does, so the bits are the same. */
#define DEFINE_MIX_PASS(NAME, VECTORS, HEADS)                                                  \
static void NAME(const bf16 *values, const int64_t *table, int64_t len, int64_t head_dim,      \
                 int64_t block_size, const float *scores, int64_t g0, int64_t count,           \
                 __m512 *sums) {                                                               \
    __m512 acc[HEADS][VECTORS];                                                                \
    _Pragma("GCC unroll 16") for (int g = 0; g < HEADS; g++)                                   \
        _Pragma("GCC unroll 16") for (int c = 0; c < VECTORS; c++)                             \
            acc[g][c] = _mm512_setzero_ps();                                                   \
    for (int64_t t = 0; t < len; t++) {                                                        \
        const bf16 *v = values + row_offset(table, t, block_size, head_dim);                   \
        if (t + 16 * PREFETCH_TILES < len)                                                     \
            prefetch_row(values + row_offset(table, t + 16 * PREFETCH_TILES, block_size,       \
                                             head_dim), head_dim);                             \
        __m512 row[VECTORS];                                                                   \
        _Pragma("GCC unroll 16") for (int c = 0; c < VECTORS; c++)                             \
            row[c] = bf16x16_load(v + 16 * c);                                                 \
        _Pragma("GCC unroll 16") for (int g = 0; g < HEADS; g++) {                             \
            if (g < count) {                                                                   \
                const __m512 p = _mm512_set1_ps(scores[(g0 + g) * len + t]);                   \
                _Pragma("GCC unroll 16") for (int c = 0; c < VECTORS; c++)                     \
                    acc[g][c] = _mm512_fmadd_ps(p, row[c], acc[g][c]);                         \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    _Pragma("GCC unroll 16") for (int g = 0; g < HEADS; g++)                                   \
        if (g < count)                                                                         \
            _Pragma("GCC unroll 16") for (int c = 0; c < VECTORS; c++)                         \
                sums[g * VECTORS + c] = acc[g][c];                                             \
}

/* Head dims 32, 64 and 128 (the Qwen decoders'): 24 accumulators and a row per pass (at 128
   that is all 32 registers, the probabilities broadcast from memory: 3 heads a pass measured
   1.1x faster than 2 on Qwen2-VL-7B's 7-head groups). */
DEFINE_MIX_PASS(mix_pass_d32, 2, 12)
DEFINE_MIX_PASS(mix_pass_d64, 4, 6)
DEFINE_MIX_PASS(mix_pass_d128, 8, 3)

/* Softmax of each head's scores and the probability-weighted sum of the values, in place of
   the portable loops for head dims that are a multiple of 32. */
static void bf16_mix(const bf16 *values, const int64_t *table, int64_t len, int64_t group,
                     int64_t head_dim, int64_t block_size, float *scores, bf16 *out) {
    const int64_t vectors = head_dim / 16;
    const int64_t whole = len & ~(int64_t)15;
    float inv[32];
    for (int64_t g = 0; g < group; g++) {
        float *s = scores + g * len;
        __m512 top = _mm512_set1_ps(s[0]);
        for (int64_t t = 0; t < whole; t += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(s + t));
        float m = _mm512_reduce_max_ps(top);
        for (int64_t t = whole; t < len; t++) m = s[t] > m ? s[t] : m;
        __m512 sum = _mm512_setzero_ps();
        const __m512 mv = _mm512_set1_ps(m);
        for (int64_t t = 0; t < len; t += 16) {
            const __mmask16 live = len - t >= 16 ? 0xFFFF : (__mmask16)((1u << (len - t)) - 1);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + t), mv));
            _mm512_mask_storeu_ps(s + t, live, e);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(live, e));
        }
        inv[g] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    __m512 acc[32 * 16];  /* [group][head_dim / 16] */
    int64_t heads_per_pass = 0;
    void (*pass)(const bf16 *, const int64_t *, int64_t, int64_t, int64_t, const float *,
                 int64_t, int64_t, __m512 *) = 0;
    if (vectors == 2) pass = mix_pass_d32, heads_per_pass = 12;
    if (vectors == 4) pass = mix_pass_d64, heads_per_pass = 6;
    if (vectors == 8) pass = mix_pass_d128, heads_per_pass = 3;
    if (pass) {
        for (int64_t g0 = 0; g0 < group; g0 += heads_per_pass) {
            const int64_t count = group - g0 < heads_per_pass ? group - g0 : heads_per_pass;
            pass(values, table, len, head_dim, block_size, scores, g0, count,
                 acc + g0 * vectors);
        }
    } else {
        for (int64_t i = 0; i < group * vectors; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t t = 0; t < len; t++) {
            const bf16 *v = values + row_offset(table, t, block_size, head_dim);
            if (t + 16 * PREFETCH_TILES < len)
                prefetch_row(values + row_offset(table, t + 16 * PREFETCH_TILES, block_size,
                                                 head_dim), head_dim);
            __m512 row[16];
            for (int64_t c = 0; c < vectors; c++) row[c] = bf16x16_load(v + 16 * c);
            for (int64_t g = 0; g < group; g++) {
                const __m512 p = _mm512_set1_ps(scores[g * len + t]);
                for (int64_t c = 0; c < vectors; c++)
                    acc[g * vectors + c] = _mm512_fmadd_ps(p, row[c], acc[g * vectors + c]);
            }
        }
    }
    for (int64_t g = 0; g < group; g++) {
        const __m512 scale = _mm512_set1_ps(inv[g]);
        for (int64_t c = 0; c < vectors; c++) {
            float lanes[16];
            _mm512_storeu_ps(lanes, _mm512_mul_ps(acc[g * vectors + c], scale));
            for (int i = 0; i < 16; i++) out[g * head_dim + 16 * c + i] = bf16_store(lanes[i]);
        }
    }
}
#endif


#define MAX_GROUP 32
#define MAX_HEAD_DIM 256

/* One (row, KV head) item, portable C: scores, softmax, weighted sum of the values. */
#define DEFINE_ITEM(NAME, T, LOAD, STORE)                                                      \
static void NAME(const T *q, const T *keys, const T *values, const int64_t *table,            \
                 int64_t len, int64_t group, int64_t head_dim, int64_t block_size,             \
                 float scale, float *scores, T *out) {                                         \
    float qf[MAX_GROUP][MAX_HEAD_DIM], acc[MAX_GROUP][MAX_HEAD_DIM], row[MAX_HEAD_DIM];        \
    float total[MAX_GROUP];                                                                    \
    for (int64_t g = 0; g < group; g++)                                                        \
        for (int64_t d = 0; d < head_dim; d++) qf[g][d] = LOAD(q[g * head_dim + d]);           \
    for (int64_t t = 0; t < len; t++) {                                                        \
        const T *k = keys + row_offset(table, t, block_size, head_dim);                        \
        for (int64_t d = 0; d < head_dim; d++) row[d] = LOAD(k[d]);                            \
        for (int64_t g = 0; g < group; g++) {                                                  \
            float dot = 0.0f;                                                                  \
            _Pragma("omp simd reduction(+:dot)")                                               \
            for (int64_t d = 0; d < head_dim; d++) dot += qf[g][d] * row[d];                   \
            scores[g * len + t] = dot * scale;                                                 \
        }                                                                                      \
    }                                                                                          \
    for (int64_t g = 0; g < group; g++) {                                                      \
        float *s = scores + g * len, top = s[0], sum = 0.0f;                                   \
        for (int64_t t = 1; t < len; t++) top = s[t] > top ? s[t] : top;                       \
        for (int64_t t = 0; t < len; t++) {                                                    \
            s[t] = exp_nonpositive(s[t] - top);                                                \
            sum += s[t];                                                                       \
        }                                                                                      \
        total[g] = sum;                                                                        \
        memset(acc[g], 0, sizeof(float) * head_dim);                                           \
    }                                                                                          \
    for (int64_t t = 0; t < len; t++) {                                                        \
        const T *v = values + row_offset(table, t, block_size, head_dim);                      \
        for (int64_t d = 0; d < head_dim; d++) row[d] = LOAD(v[d]);                            \
        for (int64_t g = 0; g < group; g++) {                                                  \
            const float p = scores[g * len + t];                                               \
            _Pragma("omp simd")                                                                \
            for (int64_t d = 0; d < head_dim; d++) acc[g][d] += p * row[d];                    \
        }                                                                                      \
    }                                                                                          \
    for (int64_t g = 0; g < group; g++) {                                                      \
        const float inv = 1.0f / total[g];                                                     \
        for (int64_t d = 0; d < head_dim; d++) out[g * head_dim + d] = STORE(acc[g][d] * inv); \
    }                                                                                          \
}

DEFINE_ITEM(bf16_item_portable, bf16, bf16_load, bf16_store)
DEFINE_ITEM(f32_item_portable, float, f32_load, f32_store)

static void bf16_item(const bf16 *q, const bf16 *keys, const bf16 *values, const int64_t *table,
                      int64_t len, int64_t group, int64_t head_dim, int64_t block_size,
                      float scale, float *scores, bf16 *out) {
#ifdef HAVE_BF16_SCORES
    if (head_dim % 32 == 0) {
        bf16_scores(q, keys, table, len, group, head_dim, block_size, scale, scores);
        bf16_mix(values, table, len, group, head_dim, block_size, scores, out);
        return;
    }
#elif defined(HAVE_AVX2_ITEMS)
    if (avx2_item_bf16(q, keys, values, table, len, group, head_dim, block_size, scale, scores,
                       out))
        return;
#endif
    bf16_item_portable(q, keys, values, table, len, group, head_dim, block_size, scale, scores,
                       out);
}

/* Every query token attends over its own sequence's first lens[i] cached tokens (a decode:
   the whole context; token j of a prompt chunk: the context up to itself). Items are
   (token, KV head) pairs, item = token * num_kv_heads + KV head; this call does items
   begin, begin + step, ... below end (callers interleave threads so that each gets a share
   of a prompt's long and short rows). q, out: [tokens, num_heads, head_dim]; kv: one layer's
   cache [2, num_kv_heads, num_blocks, block_size, head_dim]; tables: [sequences,
   table_stride] block ids; seqs: [tokens] each token's sequence; lens: [tokens] (>= 1).
   Returns 0, -1 for a head layout it does not take, -2 when out of memory, -3 for a
   sequence, length or block id outside the tables or the cache (nothing is read then). */
#define DEFINE_ATTENTION(NAME, T, ITEM)                                                        \
int NAME(const T *q, const T *kv, const int64_t *tables, int64_t num_seqs,                    \
         int64_t table_stride, const int64_t *seqs, const int64_t *lens, T *out,               \
         int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t num_blocks,        \
         int64_t block_size, float scale, int64_t begin, int64_t end, int64_t step) {          \
    const int64_t group = num_heads / num_kv_heads;                                            \
    if (group > MAX_GROUP || head_dim > MAX_HEAD_DIM || group * num_kv_heads != num_heads)     \
        return -1;                                                                             \
    const int64_t head_elems = num_blocks * block_size * head_dim;                             \
    int64_t longest = 1;                                                                       \
    for (int64_t item = begin; item < end; item += step) {                                     \
        /* Every index is checked before any is used: a wrong one is an error, not a read   \
           outside the cache. */                                                               \
        const int64_t token = item / num_kv_heads, seq = seqs[token], len = lens[token];       \
        if (seq < 0 || seq >= num_seqs || len < 1 || len > table_stride * block_size)          \
            return -3;                                                                         \
        for (int64_t i = 0; i < (len + block_size - 1) / block_size; i++) {                    \
            const int64_t block = tables[seq * table_stride + i];                              \
            if (block < 0 || block >= num_blocks) return -3;                                   \
        }                                                                                      \
        if (len > longest) longest = len;                                                      \
    }                                                                                          \
    float *scores = malloc(sizeof(float) * group * longest);                                   \
    if (!scores) return -2;                                                                    \
    for (int64_t item = begin; item < end; item += step) {                                     \
        const int64_t token = item / num_kv_heads, h = item % num_kv_heads;                    \
        const int64_t first = (token * num_heads + h * group) * head_dim;                      \
        ITEM(q + first, kv + h * head_elems, kv + (num_kv_heads + h) * head_elems,             \
             tables + seqs[token] * table_stride, lens[token], group, head_dim, block_size,    \
             scale, scores, out + first);                                                      \
    }                                                                                          \
    free(scores);                                                                              \
    return 0;                                                                                  \
}

static void f32_item(const float *q, const float *keys, const float *values,
                     const int64_t *table, int64_t len, int64_t group, int64_t head_dim,
                     int64_t block_size, float scale, float *scores, float *out) {
#ifdef HAVE_AVX2_ITEMS
    if (avx2_item_f32(q, keys, values, table, len, group, head_dim, block_size, scale, scores,
                      out))
        return;
#endif
    f32_item_portable(q, keys, values, table, len, group, head_dim, block_size, scale, scores,
                      out);
}

DEFINE_ATTENTION(paged_attention_bf16, bf16, bf16_item)
DEFINE_ATTENTION(paged_attention_f32, float, f32_item)

/* paged_attention.c's items on CPUs with AVX2 and FMA but no AVX-512 BF16 (AMD Zen 2 and 3,
   Intel before Cooper Lake): there its portable loops ran at ~5 % of the cores' FMA rate
   (7.6 ms a `small` layer at batch 32 on an EPYC, measured), taking a horizontal sum per
   score and a load and a store per accumulator per token.

   Here, per (row, KV head) item, as on AVX-512: scores for a tile of 8 keys at a time (the
   tile's rows converted to float32 once, then a product per query head of the group and one
   transposing sum for the 8), an exact softmax over the whole context, and the values' sum
   in passes of up to 6 heads x 16 dims whose 12 accumulators stay in registers. Head dims 32,
   64 and 128; the caller keeps its portable loops for others. Float32 and bfloat16 caches,
   sums in float32. A token's result depends only on its query and context (fixed order of
   every sum), as the file's contract says. */
#include "attention_avx2.h"

#ifdef HAVE_AVX2_ITEMS
#include <immintrin.h>

#include "kv_rows.h"

#define PREFETCH_TOKENS 16 /* two 8-key tiles ahead: memory works while a tile computes */

static inline __m256 load8_f32(const float *src) { return _mm256_loadu_ps(src); }

static inline void store8_f32(float *dst, __m256 v) { _mm256_storeu_ps(dst, v); }

static inline void store8_bf16(bf16 *dst, __m256 v) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (int i = 0; i < 8; i++) dst[i] = bf16_store(lanes[i]);
}

/* Lane i = the sum of v[i]'s 8 lanes. */
static inline __m256 sum8(const __m256 v[8]) {
    const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

/* exp(x) for x <= 0, 8 lanes: paged_attention.c's exp_nonpositive (its reduction and
   polynomial, with fused multiply-adds). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_floor_ps(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* Each head's scores become exp(score - max) in place; inv[g] = 1 / their sum. */
static void softmax_rows(float *scores, int64_t len, int64_t group, float *inv) {
    const int64_t whole = len & ~(int64_t)7;
    for (int64_t g = 0; g < group; g++) {
        float *s = scores + g * len;
        __m256 top = _mm256_set1_ps(s[0]);
        for (int64_t t = 0; t < whole; t += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(s + t));
        float lanes[8], m = s[0];
        _mm256_storeu_ps(lanes, top);
        for (int i = 0; i < 8; i++) m = lanes[i] > m ? lanes[i] : m;
        for (int64_t t = whole; t < len; t++) m = s[t] > m ? s[t] : m;
        const __m256 mv = _mm256_set1_ps(m);
        __m256 sum = _mm256_setzero_ps();
        for (int64_t t = 0; t < whole; t += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
            _mm256_storeu_ps(s + t, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(lanes, sum);
        float total = 0.0f;
        for (int i = 0; i < 8; i++) total += lanes[i];
        for (int64_t t = whole; t < len; t++) {
            float tail[8] = {s[t] - m};
            _mm256_storeu_ps(tail, exp8(_mm256_loadu_ps(tail)));
            s[t] = tail[0];
            total += s[t];
        }
        inv[g] = 1.0f / total;
    }
}

#define MAX_GROUP 32
#define HEADS_PER_PASS 6

/* One item with head dim 8 * V: scores, softmax, values. q and out: the group's query heads
   [group, 8 * V]; keys and values: the KV head's blocks; scores: group * len floats. */
#define DEFINE_ITEM(NAME, T, LOAD8, STORE8, V)                                                 \
static void NAME(const T *q, const T *keys, const T *values, const int64_t *table,            \
                 int64_t len, int64_t group, int64_t block_size, float scale, float *scores,   \
                 T *out) {                                                                     \
    const int64_t dim = 8 * V;                                                                 \
    float qf[MAX_GROUP * 8 * V], tile[8 * 8 * V], inv[MAX_GROUP];                              \
    for (int64_t i = 0; i < group * dim; i += 8) _mm256_storeu_ps(qf + i, LOAD8(q + i));       \
    for (int64_t start = 0; start < len; start += 8) {                                         \
        const int64_t count = len - start < 8 ? len - start : 8;                               \
        /* A short last tile repeats its first row: valid memory, its scores not stored. */    \
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                  \
            const T *row = keys + row_offset(table, start + (i < count ? i : 0), block_size, dim);  \
            _Pragma("GCC unroll 16") for (int c = 0; c < V; c++)                               \
                _mm256_storeu_ps(tile + i * dim + 8 * c, LOAD8(row + 8 * c));                  \
        }                                                                                      \
        for (int64_t t = start + PREFETCH_TOKENS; t < start + PREFETCH_TOKENS + 8 && t < len; t++) \
            for (int64_t d = 0; d < dim; d += 64 / (int64_t)sizeof(T))                         \
                _mm_prefetch((const char *)(keys + row_offset(table, t, block_size, dim) + d),     \
                             _MM_HINT_T0);                                                     \
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),                 \
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));    \
        for (int64_t g = 0; g < group; g++) {                                                  \
            __m256 acc[8];                                                                     \
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();  \
            _Pragma("GCC unroll 16") for (int c = 0; c < V; c++) {                             \
                const __m256 qc = _mm256_loadu_ps(qf + g * dim + 8 * c);                       \
                _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)                            \
                    acc[i] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(tile + i * dim + 8 * c), acc[i]); \
            }                                                                                  \
            const __m256 s = _mm256_mul_ps(sum8(acc), _mm256_set1_ps(scale));                  \
            _mm256_maskstore_ps(scores + g * len + start, live, s);                            \
        }                                                                                      \
    }                                                                                          \
    softmax_rows(scores, len, group, inv);                                                     \
    for (int64_t g0 = 0; g0 < group; g0 += HEADS_PER_PASS) {                                   \
        const int64_t heads = group - g0 < HEADS_PER_PASS ? group - g0 : HEADS_PER_PASS;       \
        for (int c0 = 0; c0 < V; c0 += 2) {                                                    \
            __m256 acc[HEADS_PER_PASS][2];                                                     \
            _Pragma("GCC unroll 8") for (int g = 0; g < HEADS_PER_PASS; g++)                   \
                acc[g][0] = acc[g][1] = _mm256_setzero_ps();                                   \
            for (int64_t t = 0; t < len; t++) {                                                \
                const T *v = values + row_offset(table, t, block_size, dim) + 8 * c0;              \
                if (c0 == 0 && t + PREFETCH_TOKENS < len)                                      \
                    for (int64_t d = 0; d < dim; d += 64 / (int64_t)sizeof(T))                 \
                        _mm_prefetch((const char *)(values + d +                               \
                                                    row_offset(table, t + PREFETCH_TOKENS,         \
                                                           block_size, dim)),                  \
                                     _MM_HINT_T0);                                             \
                const __m256 r0 = LOAD8(v), r1 = LOAD8(v + 8);                                 \
                _Pragma("GCC unroll 8") for (int g = 0; g < HEADS_PER_PASS; g++) {             \
                    if (g < heads) {                                                           \
                        const __m256 p = _mm256_broadcast_ss(scores + (g0 + g) * len + t);     \
                        acc[g][0] = _mm256_fmadd_ps(p, r0, acc[g][0]);                         \
                        acc[g][1] = _mm256_fmadd_ps(p, r1, acc[g][1]);                         \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            for (int64_t g = 0; g < heads; g++) {                                              \
                const __m256 w = _mm256_set1_ps(inv[g0 + g]);                                  \
                T *o = out + (g0 + g) * dim + 8 * c0;                                          \
                STORE8(o, _mm256_mul_ps(acc[g][0], w));                                        \
                STORE8(o + 8, _mm256_mul_ps(acc[g][1], w));                                    \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_ITEM(f32_d32, float, load8_f32, store8_f32, 4)
DEFINE_ITEM(f32_d64, float, load8_f32, store8_f32, 8)
DEFINE_ITEM(f32_d128, float, load8_f32, store8_f32, 16)
DEFINE_ITEM(bf16_d32, bf16, load8_bf16, store8_bf16, 4)
DEFINE_ITEM(bf16_d64, bf16, load8_bf16, store8_bf16, 8)
DEFINE_ITEM(bf16_d128, bf16, load8_bf16, store8_bf16, 16)

#define DEFINE_DISPATCH(NAME, T, PREFIX)                                                       \
int NAME(const T *q, const T *keys, const T *values, const int64_t *table, int64_t len,       \
         int64_t group, int64_t head_dim, int64_t block_size, float scale, float *scores,      \
         T *out) {                                                                             \
    if (group > MAX_GROUP) return 0;                                                           \
    switch (head_dim) {                                                                        \
    case 32: PREFIX##_d32(q, keys, values, table, len, group, block_size, scale, scores, out); \
        return 1;                                                                              \
    case 64: PREFIX##_d64(q, keys, values, table, len, group, block_size, scale, scores, out); \
        return 1;                                                                              \
    case 128: PREFIX##_d128(q, keys, values, table, len, group, block_size, scale, scores,     \
                            out);                                                              \
        return 1;                                                                              \
    default:                                                                                   \
        return 0;                                                                              \
    }                                                                                          \
}

DEFINE_DISPATCH(avx2_item_f32, float, f32)
DEFINE_DISPATCH(avx2_item_bf16, bf16, bf16)
#endif

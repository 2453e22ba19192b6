/* peftlab's CPU cross-entropy kernel (peftlab.native): loss and logit gradient in one call.

   For each row x (V logits) with label y, in float32 whatever the storage:

       m = max_j x_j,   s = sum_j exp(x_j - m),   loss = m + log(s) - x_y
       x_j <- exp(x_j - m) / s - [j = y]             (softmax minus one-hot: dloss/dx, in place)

   The row's exponentials are kept in a float32 scratch row (V * 4 bytes: it stays in cache), so
   the logits are read once and written once; the gradient is rounded once, to the logits' dtype
   (round to nearest even for bfloat16), as autocast would round the float32 gradient before the
   output layer's backward matmul. exp is a Cephes-style polynomial (range reduction by ln 2, a
   degree-6 polynomial, ~1 ulp on [-87, 0]; 0 below), written so the loops vectorise.
   A call covers rows [start, end), so threads can split a batch. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "exp.h"

/* the largest of e[0..V), compiled as if no NaN (so the loop vectorises; exp_row finds NaNs) */
__attribute__((optimize("finite-math-only", "no-signed-zeros")))
static float row_max(const float *restrict e, int64_t V) {
    float m = -INFINITY;
    for (int64_t j = 0; j < V; j++) m = e[j] > m ? e[j] : m;
    return m;
}

#define LANES 16 /* partial sums: vectorised, and a tighter error than one running sum */

/* the row's max (NaN if any logit is NaN), exp(x - max) into e, and their sum; x already float32
   in e. One job per loop: gcc vectorises each. */
static inline float exp_row(float *restrict e, int64_t V, float *restrict max_out) {
    float m = row_max(e, V);
    const uint32_t *bits = (const uint32_t *)e;
    uint32_t nan = 0;
    for (int64_t j = 0; j < V; j++) nan |= (bits[j] & 0x7FFFFFFFu) > 0x7F800000u;
    if (nan) m = NAN; /* a NaN logit makes the row's loss and gradient NaN, as torch's */
    for (int64_t j = 0; j < V; j++) e[j] = exp_nonpos(e[j] - m);
    float sums[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= V; j += LANES)
        for (int k = 0; k < LANES; k++) sums[k] += e[j + k];
    float s = 0.0f;
    for (; j < V; j++) s += e[j];
    for (int k = 0; k < LANES; k++) s += sums[k];
    *max_out = m;
    return s;
}

/* one kernel per dtype T: rows [start, end) of x (rows x V, contiguous) become softmax - onehot;
   loss[i] = the row's cross-entropy. labels in [0, V) (the caller checks). */
#define CE_KERNEL(NAME, T, TO_F32, FROM_F32)                                                       \
    int NAME(T *restrict x, const int64_t *restrict labels, float *restrict loss, int64_t start,  \
             int64_t end, int64_t V) {                                                             \
        float *e = (float *)malloc((size_t)V * sizeof(float));                                     \
        if (e == NULL) return 1;                                                                   \
        for (int64_t i = start; i < end; i++) {                                                    \
            T *row = x + i * V;                                                                    \
            int64_t y = labels[i];                                                                 \
            for (int64_t j = 0; j < V; j++) e[j] = TO_F32(row[j]);                                 \
            float xy = e[y], m;                                                                    \
            float s = exp_row(e, V, &m);                                                           \
            loss[i] = m + logf(s) - xy;                                                            \
            float inv = 1.0f / s;                                                                  \
            for (int64_t j = 0; j < V; j++) row[j] = FROM_F32(e[j] * inv);                         \
            row[y] = FROM_F32(e[y] * inv - 1.0f);                                                  \
        }                                                                                          \
        free(e);                                                                                   \
        return 0;                                                                                  \
    }

#define SAME(v) (v)

CE_KERNEL(peftlab_cross_entropy_f32, float, SAME, SAME)
CE_KERNEL(peftlab_cross_entropy_bf16, uint16_t, bf16_to_f32, f32_to_bf16)

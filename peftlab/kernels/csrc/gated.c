/* peftlab's CPU kernel for a gated FFN's activation (peftlab.native): T5's gated-GELU and
   LLaMA's SwiGLU, y = act(a) * b, optionally followed by the FFN's dropout, in one pass each way.

   Both activations are x * sigmoid(z(x)):

       silu:      act(x) = x * s,  s = sigmoid(x)
       gelu_tanh: act(x) = x * s,  s = sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
                  (0.5 x (1 + tanh u) = x sigmoid(2u): the same function, no cancellation for x << 0)

   and act'(x) = s + x s (1 - s) z'(x),  z' = 1 (silu), 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2) (gelu).
   Forward:  y = act(a) b m / (1 - p)            (m the dropout's keep mask, csrc/mask.h; m = 1, no scale, when cut = 0)
   Backward: g' = g m / (1 - p),  da = g' b act'(a),  db = g' act(a)   (a and b kept, act(a) recomputed)
   against torch's composed path (act, mul, dropout: 3 passes forward, ~5 backward, act(a) and a
   float mask stored). Arithmetic in float32 whatever the storage; in bfloat16 every intermediate
   torch's composed ops would store (act(a), act(a) b, g', g' b) is rounded to bfloat16 where they
   round it, so the results are theirs but for the activation's own last-bit differences.
   A call covers elements [start, end) (start a multiple of 4, as the mask's hashes need). */

#include <stdint.h>

#include "bf16.h"
#include "exp.h"
#include "mask.h"

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_C 0.044715f

/* z(x) and z'(x): gelu (the tanh approximation) or silu */
static inline float gate_z(float x, int gelu) { return gelu ? 2.0f * GELU_K * (x + GELU_C * x * x * x) : x; }
static inline float gate_dz(float x, int gelu) { return gelu ? 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x * x) : 1.0f; }

/* act(x) = x / (1 + e^-z): e^-z = inf for z << 0 gives -0, as x sigmoid(z) rounds there */
static inline float gate_value(float x, int gelu) { return x / (1.0f + exp_any(-gate_z(x, gelu))); }

/* act(x), and act'(x) = s + act(x) (1 - s) z'(x) into *deriv */
static inline float gate(float x, int gelu, float *deriv) {
    float s = 1.0f / (1.0f + exp_any(-gate_z(x, gelu)));
    float v = x * s;
    *deriv = s + v * (1.0f - s) * gate_dz(x, gelu);
    return v;
}

#define F32_LOAD(v) (v)
#define F32_STORE(v) (v)
#define F32_ROUND(v) (v)
#define BF16_LOAD(v) bf16_to_f32(v)
#define BF16_STORE(v) f32_to_bf16(v)
#define BF16_ROUND(v) bf16_to_f32(f32_to_bf16(v)) /* an intermediate torch would store in bfloat16 */

/* the block's multipliers: scale where kept, 0 where dropped (all 1 when cut = 0) */
static inline void keep_factors(uint64_t seed, int64_t b, int64_t len, uint32_t cut, float scale, float *f) {
    uint16_t u[BLOCK];
    if (cut == 0) {
        for (int64_t i = 0; i < len; i++) f[i] = 1.0f;
        return;
    }
    uniforms(seed, b / 4, (int)((len + 3) / 4), u);
    for (int64_t i = 0; i < len; i++) f[i] = u[i] < cut ? 0.0f : scale;
}

#define GATED_KERNELS(FWD, BWD, T, LOAD, STORE, ROUND)                                                        \
    void FWD(const T *restrict a, const T *restrict bv, T *restrict y, int64_t start, int64_t end,      \
             int gelu, uint64_t seed, uint32_t cut, float scale) {                                      \
        float f[BLOCK];                                                                                 \
        for (int64_t b = start; b < end; b += BLOCK) {                                                  \
            int64_t len = end - b < BLOCK ? end - b : BLOCK;                                            \
            keep_factors(seed, b, len, cut, scale, f);                                                  \
            const T *ab = a + b, *bb = bv + b;                                                          \
            T *yb = y + b;                                                                              \
            if (gelu)                                                                                   \
                for (int64_t i = 0; i < len; i++) yb[i] = STORE(ROUND(ROUND(gate_value(LOAD(ab[i]), 1)) * LOAD(bb[i])) * f[i]); \
            else                                                                                        \
                for (int64_t i = 0; i < len; i++) yb[i] = STORE(ROUND(ROUND(gate_value(LOAD(ab[i]), 0)) * LOAD(bb[i])) * f[i]); \
        }                                                                                               \
    }                                                                                                   \
    void BWD(const T *restrict g, const T *restrict a, const T *restrict bv, T *restrict da,           \
             T *restrict db, int64_t start, int64_t end, int gelu, uint64_t seed, uint32_t cut,        \
             float scale) {                                                                             \
        float f[BLOCK];                                                                                 \
        for (int64_t b = start; b < end; b += BLOCK) {                                                  \
            int64_t len = end - b < BLOCK ? end - b : BLOCK;                                            \
            keep_factors(seed, b, len, cut, scale, f);                                                  \
            const T *gb = g + b, *ab = a + b, *bb = bv + b;                                             \
            T *dab = da + b, *dbb = db + b;                                                             \
            for (int64_t i = 0; i < len; i++) {                                                         \
                float d, gi = ROUND(LOAD(gb[i]) * f[i]);                                                \
                float v = gate(LOAD(ab[i]), gelu, &d);                                                  \
                dab[i] = STORE(ROUND(gi * LOAD(bb[i])) * d);                                            \
                dbb[i] = STORE(gi * ROUND(v));                                                          \
            }                                                                                           \
        }                                                                                               \
    }

GATED_KERNELS(peftlab_gated_f32, peftlab_gated_backward_f32, float, F32_LOAD, F32_STORE, F32_ROUND)
GATED_KERNELS(peftlab_gated_bf16, peftlab_gated_backward_bf16, uint16_t, BF16_LOAD, BF16_STORE, BF16_ROUND)

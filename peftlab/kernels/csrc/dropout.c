/* peftlab's CPU dropout kernel (peftlab.native): the mask is a counter-based hash, never stored.

   Element i of a call with seed s is dropped iff its 16-bit uniform u_i < cut, where

       z_g = mix(s + (g + 1) * GAMMA),   g = i / 4        (SplitMix64's output function)
       u_i = (z_g >> 16 * (i mod 4)) & 0xFFFF

   so P(dropped) = cut / 65536 exactly, and out_i = 0 or x_i * scale. Backward calls the same
   function on the gradient with the same seed: the same mask, recomputed instead of kept.
   A call covers elements [start, end) (start a multiple of 4), so threads can split a tensor.
   In blocks of 1,024 elements: the block's hashes first, then one pass over x (both loops vectorise). */

#include <stdint.h>

#include "bf16.h"
#include "mask.h"

/* one kernel per dtype T: out = 0 where u < cut, else KEEP(x) (x times scale, in T's arithmetic) */
#define DROPOUT_KERNEL(NAME, T, KEEP)                                                              \
    void NAME(const T *restrict x, T *restrict out, int64_t start, int64_t end, uint64_t seed,     \
              uint32_t cut, float scale) {                                                         \
        uint16_t u[BLOCK];                                                                         \
        for (int64_t b = start; b < end; b += BLOCK) {                                             \
            int64_t len = end - b < BLOCK ? end - b : BLOCK;                                       \
            uniforms(seed, b / 4, (int)((len + 3) / 4), u);                                        \
            const T *xb = x + b;                                                                   \
            T *ob = out + b;                                                                       \
            for (int64_t i = 0; i < len; i++)                                                      \
                ob[i] = u[i] < cut ? 0 : KEEP(xb[i]);                                              \
        }                                                                                          \
    }

#define KEEP_F32(v) ((v) * scale)
#define KEEP_BF16(v) f32_to_bf16(bf16_to_f32(v) * scale)

DROPOUT_KERNEL(peftlab_dropout_f32, float, KEEP_F32)
DROPOUT_KERNEL(peftlab_dropout_bf16, uint16_t, KEEP_BF16)

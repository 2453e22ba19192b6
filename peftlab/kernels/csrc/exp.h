/* exp for peftlab's C kernels (csrc/*.c), written so loops vectorise. */
#ifndef PEFTLAB_EXP_H
#define PEFTLAB_EXP_H

#include <stdint.h>
#include <string.h>

/* e^c for c in [log(FLT_MIN), 88]: n = round(c / ln 2) by the 1.5 * 2^23 trick (floorf would stop
   gcc vectorising the loop), r = c - n ln 2 in two steps, e^r by a degree-6 polynomial (~1 ulp),
   times 2^n built in the exponent bits (a normal power of two over that range). */
static inline float exp_core(float c) {
    float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = c - n * 0.693359375f;   /* ln 2 = C1 + C2, C1 exact in 9 bits: r exact */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, 4);
    return p * two_n;
}

#define EXP_LO (-87.33654f) /* log(FLT_MIN): below, the result is 0 (torch gives a denormal) */

/* exp(t) for t <= 0 (t = x - max); NaN stays NaN */
static inline float exp_nonpos(float t) {
    float c = t < EXP_LO ? EXP_LO : t;
    return t < EXP_LO ? 0.0f : (t != t ? t : exp_core(c));
}

/* exp(t) for any t: 0 below log(FLT_MIN), +inf above 88 (e^88 is already 1.7e38), NaN for NaN
   (through the polynomial). No NaN blend: the cheaper form for a sigmoid. */
static inline float exp_any(float t) {
    float c = t < EXP_LO ? EXP_LO : (t > 88.0f ? 88.0f : t);
    return t < EXP_LO ? 0.0f : (t > 88.0f ? __builtin_inff() : exp_core(c));
}

#endif

/* The dropout mask of peftlab's C kernels (csrc/*.c): 16-bit uniforms from a counter-based hash of
   (seed, element index), so any kernel that drops elements draws the mask of csrc/dropout.c. */
#ifndef PEFTLAB_MASK_H
#define PEFTLAB_MASK_H

#include <stdint.h>
#include <string.h>

#define GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "u_i is read as the i-th 16-bit word of the hashes in memory: little-endian only"
#endif

#define BLOCK 1024 /* elements per block: 256 hashes (2 KiB) stay in L1 between the two loops */

/* the 16-bit uniforms of elements [4 * g0, 4 * g0 + 4 * count): hash loop, then read as uint16 */
static inline void uniforms(uint64_t seed, int64_t g0, int count, uint16_t *u) {
    uint64_t z[BLOCK / 4];
    for (int j = 0; j < count; j++)
        z[j] = mix(seed + (uint64_t)(g0 + j + 1) * GAMMA);
    memcpy(u, z, (size_t)count * 8);
}

#endif

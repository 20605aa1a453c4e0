#include "strata_hash.h"

#include <xxhash.h>

uint64_t strata_xxh3_64(const void *data, size_t length, uint64_t seed) {
    return XXH3_64bits_withSeed(data, length, seed);
}

void strata_xxh3_128(const void *data, size_t length, uint64_t seed, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = XXH3_128bits_withSeed(data, length, seed);
    *low = h.low64;
    *high = h.high64;
}

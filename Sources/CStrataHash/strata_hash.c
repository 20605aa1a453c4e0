#include "strata_hash.h"

#include <string.h>
#include <xxhash.h>

uint64_t strata_xxh3_64(const void *data, size_t length, uint64_t seed) {
    return XXH3_64bits_withSeed(data, length, seed);
}

void strata_xxh3_128(const void *data, size_t length, uint64_t seed, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = XXH3_128bits_withSeed(data, length, seed);
    *low = h.low64;
    *high = h.high64;
}

size_t strata_xxh3_chain(const void *data, size_t length, size_t block, uint64_t seed, uint64_t *out) {
    if (block == 0 || block > 65536) return 0;
    unsigned char buffer[8 + 65536];
    const unsigned char *bytes = data;
    uint64_t parent = 0;
    size_t count = 0;
    for (size_t start = 0; start + block <= length; start += block) {
        for (int i = 0; i < 8; i++) buffer[i] = (unsigned char)(parent >> (8 * i));   /* little-endian on every host */
        memcpy(buffer + 8, bytes + start, block);
        parent = XXH3_64bits_withSeed(buffer, 8 + block, seed);
        out[count++] = parent;
    }
    return count;
}

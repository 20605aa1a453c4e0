#ifndef STRATA_HASH_H
#define STRATA_HASH_H

/* XXH3 from libxxhash behind plain types. Seeds are always explicit: a key must hash the same
   in every process and on every host. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

uint64_t strata_xxh3_64(const void *data, size_t length, uint64_t seed);

/* The prompt chain: for each whole block of `block` bytes, the XXH3 (under `seed`) of the previous
   block's hash (8 bytes, little-endian; 0 for the first) followed by the block, so hash i covers
   blocks 0...i. Writes length / block hashes to `out`; returns how many. `block` at most 65536. */
size_t strata_xxh3_chain(const void *data, size_t length, size_t block, uint64_t seed, uint64_t *out);

/* 128-bit XXH3; low and high halves. */
void strata_xxh3_128(const void *data, size_t length, uint64_t seed, uint64_t *low, uint64_t *high);

#ifdef __cplusplus
}
#endif
#endif

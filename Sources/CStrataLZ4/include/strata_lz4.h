#ifndef STRATA_LZ4_H
#define STRATA_LZ4_H

/* lz4 block compression from liblz4, behind plain types. */

#ifdef __cplusplus
extern "C" {
#endif

/* Largest compressed size of `length` input bytes (0 if too large). */
int strata_lz4_bound(int length);

/* Compresses; returns the compressed size, or 0 if it does not fit in `capacity`. */
int strata_lz4_compress(const void *source, int length, void *destination, int capacity);

/* Decompresses; returns the decompressed size, or a negative number for malformed input.
   Never writes past `capacity`. */
int strata_lz4_decompress(const void *source, int length, void *destination, int capacity);

#ifdef __cplusplus
}
#endif
#endif

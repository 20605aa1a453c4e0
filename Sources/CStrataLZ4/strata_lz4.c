#include "strata_lz4.h"

#include <lz4.h>

int strata_lz4_bound(int length) { return LZ4_compressBound(length); }

int strata_lz4_compress(const void *source, int length, void *destination, int capacity) {
    return LZ4_compress_default(source, destination, length, capacity);
}

int strata_lz4_decompress(const void *source, int length, void *destination, int capacity) {
    return LZ4_decompress_safe(source, destination, length, capacity);
}

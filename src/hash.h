/*
 * hash.h - XXH3-64, the same values as libxxhash's XXH3_64bits and its
 * streaming XXH3_64bits_update/digest, computed by an AVX2 build of it
 * (hash_avx2.c, compiled with -mavx2) where the CPU has AVX2, chosen at
 * the first call; elsewhere by the library (SSE2 on x86-64).  On data in
 * the cache, which is where migration hashes (frame checksums as frames
 * fill and land, page digests right after a page was copied), AVX2 ran at
 * 48 GB/s against the library's 16 GB/s here (4 KiB pieces).
 */
#ifndef HUGEVM_HASH_H
#define HUGEVM_HASH_H

#include <stddef.h>
#include <stdint.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t by value */
#include <xxhash.h>

uint64_t hv_hash64(const void *p, size_t len);
/* Streaming, over a state from XXH3_createState. */
void hv_hash_reset(XXH3_state_t *s);
void hv_hash_update(XXH3_state_t *s, const void *p, size_t len);
uint64_t hv_hash_digest(const XXH3_state_t *s);

/* hash_avx2.c (only where it is built: HV_HASH_AVX2); the state is an
 * XXH3_state_t (the same layout under another name). */
uint64_t hv_hash64_avx2(const void *p, size_t len);
void hv_hash_reset_avx2(void *s);
void hv_hash_update_avx2(void *s, const void *p, size_t len);
uint64_t hv_hash_digest_avx2(const void *s);
size_t hv_hash_state_size_avx2(void);

#endif

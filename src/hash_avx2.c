/*
 * hash_avx2.c - XXH3-64 inlined from xxhash.h, built with -mavx2 (meson.build)
 * under its own names (XXH_NAMESPACE), called through hash.c only when the
 * CPU has AVX2.  Nothing else may live in this file: the compiler may use
 * AVX2 anywhere in it.
 */
#define XXH_INLINE_ALL
#define XXH_NAMESPACE hv_avx2_
#include <xxhash.h>

#include "hash.h"

uint64_t hv_hash64_avx2(const void *p, size_t len) { return XXH3_64bits(p, len); }
void hv_hash_reset_avx2(void *s) { (void)XXH3_64bits_reset((XXH3_state_t *)s); }
void hv_hash_update_avx2(void *s, const void *p, size_t len)
{
    (void)XXH3_64bits_update((XXH3_state_t *)s, p, len);
}
uint64_t hv_hash_digest_avx2(const void *s) { return XXH3_64bits_digest((const XXH3_state_t *)s); }
size_t hv_hash_state_size_avx2(void) { return sizeof(XXH3_state_t); }

/*
 * hash.c - XXH3-64 by the fastest build this CPU runs (hash.h).
 */
#include "hash.h"

#include <assert.h>

/* 1: AVX2, 0: the library; decided at the first call (a race decides
 * the same way twice). */
static int use_avx2 = -1;

static inline int avx2(void)
{
    int v = __atomic_load_n(&use_avx2, __ATOMIC_RELAXED);
    if (v < 0) {
#if HV_HASH_AVX2
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && hv_hash_state_size_avx2() == sizeof(XXH3_state_t);
#else
        v = 0;
#endif
        __atomic_store_n(&use_avx2, v, __ATOMIC_RELAXED);
    }
    return v;
}

#if HV_HASH_AVX2
#define DISPATCH(avx, lib) return avx2() ? (avx) : (lib)
#define DISPATCH_VOID(avx, lib) do { if (avx2()) avx; else lib; } while (0)
#else
#define DISPATCH(avx, lib) return (lib)
#define DISPATCH_VOID(avx, lib) lib
#endif

uint64_t hv_hash64(const void *p, size_t len) { DISPATCH(hv_hash64_avx2(p, len), XXH3_64bits(p, len)); }
void hv_hash_reset(XXH3_state_t *s)
{
    DISPATCH_VOID(hv_hash_reset_avx2(s), (void)XXH3_64bits_reset(s));
}
void hv_hash_update(XXH3_state_t *s, const void *p, size_t len)
{
    DISPATCH_VOID(hv_hash_update_avx2(s, p, len), (void)XXH3_64bits_update(s, p, len));
}
uint64_t hv_hash_digest(const XXH3_state_t *s)
{
    DISPATCH(hv_hash_digest_avx2(s), XXH3_64bits_digest(s));
}

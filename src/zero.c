/*
 * zero.c - vectorised all-zero checks with run-time CPU dispatch (zero.h).
 *
 * Dispatch: a function pointer, resolved on first call from
 * __builtin_cpu_supports("avx2").  The AVX2 and SSE2 bodies are compiled
 * with target attributes, so the rest of the library keeps the baseline ISA
 * and the binary runs on any x86-64.  On other architectures only the
 * portable path exists.
 *
 * Each path reads 256 bytes per iteration, ORs them into one register and
 * tests it once (vptest / pmovmskb), so a zero page costs 16 (AVX2) or 16x2
 * (SSE2) loads per KiB and no branches between them.
 */
#include "zero.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HV_ZERO_X86 1
#include <immintrin.h>
#else
#define HV_ZERO_X86 0
#endif

typedef bool (*zero_fn)(const void *p, size_t len);

static bool zero_portable(const void *p, size_t len)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i += 32) {
        uint64_t acc = 0;
        for (unsigned k = 0; k < 32; k++)
            acc |= w[i + k];
        if (acc)
            return false;
    }
    return true;
}

#if HV_ZERO_X86
__attribute__((target("sse2"))) static bool zero_sse2(const void *p, size_t len)
{
    const __m128i *v = p;
    for (size_t i = 0; i < len / 16; i += 16) {
        __m128i a = _mm_or_si128(_mm_load_si128(v + i), _mm_load_si128(v + i + 1));
        __m128i b = _mm_or_si128(_mm_load_si128(v + i + 2), _mm_load_si128(v + i + 3));
        __m128i c = _mm_or_si128(_mm_load_si128(v + i + 4), _mm_load_si128(v + i + 5));
        __m128i d = _mm_or_si128(_mm_load_si128(v + i + 6), _mm_load_si128(v + i + 7));
        a = _mm_or_si128(a, _mm_or_si128(_mm_load_si128(v + i + 8), _mm_load_si128(v + i + 9)));
        b = _mm_or_si128(b, _mm_or_si128(_mm_load_si128(v + i + 10), _mm_load_si128(v + i + 11)));
        c = _mm_or_si128(c, _mm_or_si128(_mm_load_si128(v + i + 12), _mm_load_si128(v + i + 13)));
        d = _mm_or_si128(d, _mm_or_si128(_mm_load_si128(v + i + 14), _mm_load_si128(v + i + 15)));
        __m128i x = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_setzero_si128())) != 0xffff)
            return false;
    }
    return true;
}

__attribute__((target("avx2"))) static bool zero_avx2(const void *p, size_t len)
{
    const __m256i *v = p;
    for (size_t i = 0; i < len / 32; i += 8) {
        __m256i a = _mm256_or_si256(_mm256_load_si256(v + i), _mm256_load_si256(v + i + 1));
        __m256i b = _mm256_or_si256(_mm256_load_si256(v + i + 2), _mm256_load_si256(v + i + 3));
        __m256i c = _mm256_or_si256(_mm256_load_si256(v + i + 4), _mm256_load_si256(v + i + 5));
        __m256i d = _mm256_or_si256(_mm256_load_si256(v + i + 6), _mm256_load_si256(v + i + 7));
        __m256i x = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(x, x))
            return false;
    }
    return true;
}
#endif

bool zero_impl_supported(enum zero_impl impl)
{
    switch (impl) {
    case ZERO_IMPL_AUTO:
    case ZERO_IMPL_PORTABLE:
        return true;
    case ZERO_IMPL_SSE2:
        return HV_ZERO_X86 && hv_cpu_has(HV_SIMD_SSE2);
    case ZERO_IMPL_AVX2:
        return HV_ZERO_X86 && hv_cpu_has(HV_SIMD_AVX2);
    }
    return false;
}

static enum zero_impl zero_best(void)
{
    if (zero_impl_supported(ZERO_IMPL_AVX2))
        return ZERO_IMPL_AVX2;
    if (zero_impl_supported(ZERO_IMPL_SSE2))
        return ZERO_IMPL_SSE2;
    return ZERO_IMPL_PORTABLE;
}

static zero_fn impl_fn(enum zero_impl impl)
{
    switch (impl) {
#if HV_ZERO_X86
    case ZERO_IMPL_SSE2:
        return zero_sse2;
    case ZERO_IMPL_AVX2:
        return zero_avx2;
#endif
    default:
        return zero_portable;
    }
}

static enum zero_impl cur_impl;
static zero_fn cur_fn;

static zero_fn resolve(void)
{
    cur_impl = zero_best();
    cur_fn = impl_fn(cur_impl);
    return cur_fn;
}

int zero_set_impl(enum zero_impl impl)
{
    if (impl == ZERO_IMPL_AUTO) {
        resolve();
        return 0;
    }
    if (!zero_impl_supported(impl))
        return -ENOTSUP;
    cur_impl = impl;
    cur_fn = impl_fn(impl);
    return 0;
}

enum zero_impl zero_get_impl(void)
{
    if (!cur_fn)
        resolve();
    return cur_impl;
}

const char *zero_impl_name(enum zero_impl impl)
{
    switch (impl) {
    case ZERO_IMPL_AUTO:
        return "auto";
    case ZERO_IMPL_PORTABLE:
        return "portable";
    case ZERO_IMPL_SSE2:
        return "sse2";
    case ZERO_IMPL_AVX2:
        return "avx2";
    }
    return "?";
}

bool zero_check(const void *p, size_t len)
{
    zero_fn fn = cur_fn;
    if (HV_UNLIKELY(!fn))
        fn = resolve();
    return fn(p, len);
}

bool zero_sample(const void *p, uint64_t pages, unsigned samples)
{
    const uint8_t *b = p;
    if (pages == 0)
        return true;
    if (samples < 2)
        samples = 2;
    if (samples > pages)
        samples = (unsigned)pages;
    for (unsigned i = 0; i < samples; i++) {
        uint64_t pg = samples == 1 ? 0 : (pages - 1) * i / (samples - 1);
        /* A different 64-byte line in each sampled page, so that data at
         * any fixed offset (page headers, tails) is likely to be seen. */
        const uint64_t *w = (const uint64_t *)(b + (pg << PAGE_SHIFT) + (i % 64) * 64);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
    }
    return true;
}

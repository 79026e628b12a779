/*
 * copy.c - non-temporal bulk copy with run-time CPU dispatch (copy.h).
 *
 * Each vector path copies a head with memcpy until the destination is
 * aligned to the vector size; then, while 16 KiB remain, four 4 KiB strides
 * at once, 64 bytes of each in turn (four sequential streams keep the
 * hardware prefetchers busy across 4K page boundaries, as glibc's large
 * memcpy does; measured 1.2x one stream on the development host); then 64
 * bytes per iteration; then the tail with memcpy; then sfence (streaming
 * stores are weakly ordered).  Loads are unaligned, stores aligned.
 */
#include "copy.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HV_COPY_X86 1
#include <immintrin.h>
#else
#define HV_COPY_X86 0
#endif

typedef void (*copy_fn)(void *restrict dst, const void *restrict src, size_t len);

static void copy_memcpy(void *restrict dst, const void *restrict src, size_t len)
{
    memcpy(dst, src, len);
}

/* Bytes to copy before dst is aligned to `a`, at most len. */
static size_t head_len(const void *dst, size_t a, size_t len)
{
    size_t h = (a - ((uintptr_t)dst & (a - 1))) & (a - 1);
    return h < len ? h : len;
}

#define STRIDE 4096u
#define STREAMS 4u

#if HV_COPY_X86
__attribute__((target("sse2"))) static inline void mov64_sse2(uint8_t *d, const uint8_t *s)
{
    __m128i a = _mm_loadu_si128((const __m128i *)s);
    __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
    __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
    _mm_stream_si128((__m128i *)d, a);
    _mm_stream_si128((__m128i *)(d + 16), b);
    _mm_stream_si128((__m128i *)(d + 32), c);
    _mm_stream_si128((__m128i *)(d + 48), e);
}

__attribute__((target("avx2"))) static inline void mov64_avx2(uint8_t *d, const uint8_t *s)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)s);
    __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
    _mm256_stream_si256((__m256i *)d, a);
    _mm256_stream_si256((__m256i *)(d + 32), b);
}

/* One body, two instruction sets: the head until dst is aligned to ALIGN,
 * STREAMS strides at once, 64 bytes at a time, the tail, a store fence. */
#define DEFINE_COPY(NAME, TARGET, ALIGN, MOV64)                                        \
    __attribute__((target(TARGET))) static void NAME(void *restrict dst,                \
                                                     const void *restrict src, size_t len) \
    {                                                                                   \
        uint8_t *d = dst;                                                               \
        const uint8_t *s = src;                                                         \
        size_t h = head_len(d, ALIGN, len);                                             \
        memcpy(d, s, h);                                                                \
        d += h, s += h, len -= h;                                                       \
        for (; len >= STREAMS * STRIDE;                                                 \
             d += STREAMS * STRIDE, s += STREAMS * STRIDE, len -= STREAMS * STRIDE)     \
            for (size_t o = 0; o < STRIDE; o += 64)                                     \
                for (size_t k = 0; k < STREAMS; k++)                                    \
                    MOV64(d + k * STRIDE + o, s + k * STRIDE + o);                      \
        for (; len >= 64; d += 64, s += 64, len -= 64)                                  \
            MOV64(d, s);                                                                \
        memcpy(d, s, len);                                                              \
        _mm_sfence();                                                                   \
    }

DEFINE_COPY(copy_sse2, "sse2", 16, mov64_sse2)
DEFINE_COPY(copy_avx2, "avx2", 32, mov64_avx2)
#endif

bool copy_impl_supported(enum copy_impl impl)
{
    switch (impl) {
    case COPY_IMPL_AUTO:
    case COPY_IMPL_MEMCPY:
        return true;
    case COPY_IMPL_SSE2:
        return HV_COPY_X86 && hv_cpu_has(HV_SIMD_SSE2);
    case COPY_IMPL_AVX2:
        return HV_COPY_X86 && hv_cpu_has(HV_SIMD_AVX2);
    }
    return false;
}

static enum copy_impl copy_best(void)
{
    if (copy_impl_supported(COPY_IMPL_AVX2))
        return COPY_IMPL_AVX2;
    if (copy_impl_supported(COPY_IMPL_SSE2))
        return COPY_IMPL_SSE2;
    return COPY_IMPL_MEMCPY;
}

static copy_fn impl_fn(enum copy_impl impl)
{
    switch (impl) {
#if HV_COPY_X86
    case COPY_IMPL_SSE2:
        return copy_sse2;
    case COPY_IMPL_AVX2:
        return copy_avx2;
#endif
    default:
        return copy_memcpy;
    }
}

/* Resolved at load time (and again if called before constructors ran);
 * tests switch it with copy_set_impl while single-threaded. */
static enum copy_impl cur_impl;
static copy_fn cur_fn;

__attribute__((constructor)) static void resolve(void)
{
    cur_impl = copy_best();
    cur_fn = impl_fn(cur_impl);
}

void copy_bulk(void *restrict dst, const void *restrict src, size_t len)
{
    if (len < COPY_BULK_MIN) {
        memcpy(dst, src, len);
        return;
    }
    if (!cur_fn)
        resolve();
    cur_fn(dst, src, len);
}

int copy_set_impl(enum copy_impl impl)
{
    if (impl == COPY_IMPL_AUTO) {
        resolve();
        return 0;
    }
    if (!copy_impl_supported(impl))
        return -ENOTSUP;
    cur_impl = impl;
    cur_fn = impl_fn(impl);
    return 0;
}

enum copy_impl copy_get_impl(void)
{
    if (!cur_fn)
        resolve();
    return cur_impl;
}

const char *copy_impl_name(enum copy_impl impl)
{
    switch (impl) {
    case COPY_IMPL_MEMCPY: return "memcpy";
    case COPY_IMPL_SSE2: return "sse2-nt";
    case COPY_IMPL_AVX2: return "avx2-nt";
    default: return "auto";
    }
}

/*
 * test_util.c - size parsing, the PRNG's range, fault injection counting,
 * the bulk copy against memcpy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common.h"
#include "copy.h"

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int rc;
        uint64_t v;
    } cases[] = {
        {"4096", 0, 4096},     {"8G", 0, 8ULL << 30},  {"256M", 0, 256ULL << 20},
        {"2MiB", 0, 2ULL << 20}, {"1k", 0, 1024},       {"0x1000", 0, 4096},
        {"1T", 0, 1ULL << 40}, {"", -EINVAL, 0},        {"-1G", -EINVAL, 0},
        {"12Q", -EINVAL, 0},   {"G", -EINVAL, 0},       {"99999999999999T", -ERANGE, 0},
        {"3Gx", -EINVAL, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t v = 0;
        int rc = hv_parse_size(cases[i].s, &v);
        if (rc != cases[i].rc)
            fail_msg("'%s': rc %d, expected %d", cases[i].s, rc, cases[i].rc);
        if (rc == 0)
            assert_int_equal(v, cases[i].v);
    }
}

/* hv_rng_below stays in range and hits every value of a small range with
 * roughly equal frequency (chi-square against the uniform model). */
static void test_rng_below(void **state)
{
    (void)state;
    struct hv_rng r = {123};
    enum { N = 10, DRAWS = 100000 };
    unsigned hist[N] = {0};
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = hv_rng_below(&r, N);
        assert_true(v < N);
        hist[v]++;
    }
    double chi = 0, e = DRAWS / (double)N;
    for (int i = 0; i < N; i++)
        chi += (hist[i] - e) * (hist[i] - e) / e;
    assert_true(chi < 30.0); /* 9 degrees of freedom: p < 0.001 */
}

static void test_fault_countdown(void **state)
{
    (void)state;
    unsigned long hits = hv_fault_hits;
    fault_arm(3, FAULT_SITE_TABLE);
    assert_false(fault_should_fail(FAULT_SITE_FRAME)); /* other site: not counted */
    assert_false(fault_should_fail(FAULT_SITE_TABLE));
    assert_false(fault_should_fail(FAULT_SITE_TABLE));
    assert_true(fault_should_fail(FAULT_SITE_TABLE));
    assert_false(fault_should_fail(FAULT_SITE_TABLE)); /* fires once */
    assert_int_equal(hv_fault_hits, hits + 1);
    fault_arm(1, FAULT_SITE_MEM);
    assert_null(hv_malloc(16));
    fault_disarm();
    void *p = hv_malloc(16);
    assert_non_null(p);
    free(p);
}

/* Every implementation this CPU has copies exactly what memcpy copies, for
 * random lengths (below, at and above COPY_BULK_MIN, not multiples of the
 * vector size) and random source and destination alignments, and writes
 * nothing outside [dst, dst + len). */
static void test_copy_bulk(void **state)
{
    (void)state;
    enum { CAP = 80 * 1024, GUARD = 64 };
    uint8_t *src = malloc(CAP + 64), *dst = malloc(CAP + 64 + 2 * GUARD),
            *ref = malloc(CAP + 64 + 2 * GUARD);
    assert_non_null(src);
    assert_non_null(dst);
    assert_non_null(ref);
    struct hv_rng r = {99};
    for (size_t i = 0; i < CAP + 64; i++)
        src[i] = (uint8_t)hv_rng_next(&r);
    static const enum copy_impl impls[] = {COPY_IMPL_MEMCPY, COPY_IMPL_SSE2, COPY_IMPL_AVX2,
                                           COPY_IMPL_AUTO};
    unsigned tried = 0;
    for (size_t k = 0; k < sizeof(impls) / sizeof(impls[0]); k++) {
        if (!copy_impl_supported(impls[k])) {
            print_message("# copy impl %s: not on this CPU\n", copy_impl_name(impls[k]));
            continue;
        }
        assert_int_equal(copy_set_impl(impls[k]), 0);
        tried++;
        for (int i = 0; i < 400; i++) {
            size_t len;
            switch (i % 4) {
            case 0: len = (size_t)hv_rng_below(&r, 2 * COPY_BULK_MIN); break;
            case 1: len = COPY_BULK_MIN - 1 + (size_t)hv_rng_below(&r, 3); break;
            default: len = (size_t)hv_rng_below(&r, CAP);
            }
            size_t so = (size_t)hv_rng_below(&r, 64), doff = (size_t)hv_rng_below(&r, 64);
            memset(dst, 0xA5, CAP + 64 + 2 * GUARD);
            memset(ref, 0xA5, CAP + 64 + 2 * GUARD);
            copy_bulk(dst + GUARD + doff, src + so, len);
            memcpy(ref + GUARD + doff, src + so, len);
            if (memcmp(dst, ref, CAP + 64 + 2 * GUARD))
                fail_msg("%s: len %zu src+%zu dst+%zu differs from memcpy",
                         copy_impl_name(impls[k]), len, so, doff);
        }
    }
    assert_true(tried >= 2); /* memcpy and auto at least */
    assert_int_equal(copy_set_impl(COPY_IMPL_AUTO), 0);
    print_message("# copy_bulk uses %s\n", copy_impl_name(copy_get_impl()));
    free(src);
    free(dst);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_rng_below),
        cmocka_unit_test(test_fault_countdown),
        cmocka_unit_test(test_copy_bulk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_util.c - size parsing, the PRNG's range, fault injection counting,
 * the bulk copy against memcpy, big allocations and arenas.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"
#include "common.h"
#include "copy.h"
#include "safefile.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* hv_big_alloc: random sizes, with and without huge pages: zeroed, page
 * aligned, 2 MiB-aligned when huge and at least 2 MiB, every byte usable;
 * fault injection fails it. */
static void test_big_alloc(void **state)
{
    (void)state;
    struct hv_rng r = {7};
    for (int i = 0; i < 40; i++) {
        size_t len = 1 + (size_t)hv_rng_below(&r, i % 2 ? 6u << 20 : 64u << 10);
        bool huge = hv_rng_below(&r, 2);
        uint8_t *p = hv_big_alloc(len, huge);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 4096, 0);
        if (huge && len >= (2u << 20))
            assert_int_equal((uintptr_t)p % (2u << 20), 0);
        for (size_t k = 0; k < len; k += 1 + (size_t)hv_rng_below(&r, 8192))
            assert_int_equal(p[k], 0);
        assert_int_equal(p[len - 1], 0);
        memset(p, 0xa5, len);
        assert_int_equal(p[len - 1], 0xa5);
        hv_big_free(p, len);
    }
    assert_null(hv_big_alloc(0, true));
    fault_arm(1, FAULT_SITE_MEM);
    assert_null(hv_big_alloc(4u << 20, true));
    fault_disarm();
    hv_big_free(NULL, 4096); /* nothing */
}

/* An arena against a model: random piece sizes (some near the most), each
 * zeroed, 64-byte aligned, inside a block, none overlapping another
 * (every piece filled with its own byte and checked after all were
 * handed out); sizes it cannot give are refused; a failed block
 * allocation leaves the arena as it was. */
static void test_arena(void **state)
{
    (void)state;
    struct hv_arena a = {0};
    struct hv_rng r = {11};
    enum { N = 3000 };
    static uint8_t *piece[N];
    static size_t plen[N];
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        size_t len = i % 500 == 499 ? HV_ARENA_MAX - (size_t)hv_rng_below(&r, 64)
                                    : 1 + (size_t)hv_rng_below(&r, 6000);
        if (i == 1000) { /* a block that cannot be had: nothing changes */
            size_t used = a.used, bytes = a.bytes;
            void *blk = a.block;
            fault_arm(1, FAULT_SITE_MEM);
            void *q = hv_arena_alloc(&a, HV_ARENA_MAX);
            fault_disarm();
            assert_null(q);
            assert_true(a.used == used && a.bytes == bytes && a.block == blk);
        }
        piece[i] = hv_arena_alloc(&a, len);
        plen[i] = len;
        assert_non_null(piece[i]);
        assert_int_equal((uintptr_t)piece[i] % 64, 0);
        for (size_t k = 0; k < len; k += 1 + (size_t)hv_rng_below(&r, 512))
            assert_int_equal(piece[i][k], 0);
        assert_int_equal(piece[i][len - 1], 0);
        memset(piece[i], (int)(i % 251) + 1, len);
        total += (len + 63) & ~(size_t)63;
    }
    for (int i = 0; i < N; i++)
        for (size_t k = 0; k < plen[i]; k += 1 + (size_t)hv_rng_below(&r, 256))
            assert_int_equal(piece[i][k], (i % 251) + 1);
    /* the blocks hold the pieces and no more than one block's waste each */
    assert_true(a.bytes >= total && a.bytes % HV_ARENA_BLOCK == 0);
    assert_true(a.bytes / HV_ARENA_BLOCK <= 2 * (total / HV_ARENA_BLOCK + 1));
    assert_null(hv_arena_alloc(&a, 0));
    assert_null(hv_arena_alloc(&a, HV_ARENA_MAX + 1));
    hv_arena_free(&a);
    assert_true(!a.block && !a.used && !a.bytes);
    hv_arena_free(&a); /* twice: nothing */
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

/* Entries of dir other than . and .. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* safefile: mode 0600, whole or nothing, never through or over an
 * existing name (a symlink planted where the file goes, as an attacker
 * would plant one at a predictable in-doubt name). */
static void test_safefile(void **state)
{
    (void)state;
    char dir[] = "/tmp/hvsafeXXXXXX", path[96], victim[96], link[96];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/image.hvs", dir);
    snprintf(victim, sizeof(victim), "%s/victim", dir);
    snprintf(link, sizeof(link), "%s/link.hvs", dir);
    struct safefile sf;

    /* a written and committed file: its bytes, mode 0600, no temporary left */
    assert_int_equal(safefile_create(&sf, path), 0);
    assert_int_equal(dir_entries(dir), 1); /* the temporary, not the name */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(write(sf.fd, "guest", 5), 5);
    assert_int_equal(safefile_commit(&sf), 0);
    safefile_abort(&sf); /* a no-op after commit */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 5);
    assert_int_equal(dir_entries(dir), 1);

    /* an existing name is never replaced, whether it is there at create or
     * appears before commit */
    assert_int_equal(safefile_create(&sf, path), -EEXIST);
    assert_int_equal(dir_entries(dir), 1);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(safefile_create(&sf, path), 0);
    assert_int_equal(write(sf.fd, "other", 5), 5);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644); /* raced in */
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(safefile_commit(&sf), -EEXIST);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0); /* the racer's file, untouched */
    assert_int_equal(dir_entries(dir), 1); /* our temporary is gone */
    unlink(path);

    /* a symlink at the name, even a dangling one: refused, its target
     * neither written nor created */
    assert_int_equal(symlink(victim, link), 0);
    assert_int_equal(safefile_create(&sf, link), -EEXIST);
    assert_int_equal(access(victim, F_OK), -1);
    fd = open(victim, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(safefile_create(&sf, link), -EEXIST);
    assert_int_equal(stat(victim, &st), 0);
    assert_int_equal(st.st_size, 0);
    unlink(link);
    unlink(victim);

    /* abort after a partial write leaves nothing */
    assert_int_equal(safefile_create(&sf, path), 0);
    assert_int_equal(write(sf.fd, "part", 4), 4);
    safefile_abort(&sf);
    safefile_abort(&sf);
    assert_int_equal(dir_entries(dir), 0);

    /* a directory that does not exist, names that are no file */
    char nodir[128];
    snprintf(nodir, sizeof(nodir), "%s/no/such/file", dir);
    assert_int_equal(safefile_create(&sf, nodir), -ENOENT);
    snprintf(nodir, sizeof(nodir), "%s/", dir);
    assert_int_equal(safefile_create(&sf, nodir), -EISDIR);
    assert_int_equal(safefile_create(&sf, ""), -EINVAL);
    assert_int_equal(dir_entries(dir), 0);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_rng_below),
        cmocka_unit_test(test_fault_countdown),
        cmocka_unit_test(test_copy_bulk),
        cmocka_unit_test(test_big_alloc),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_safefile),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

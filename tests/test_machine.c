/*
 * test_machine.c - the memfd machine: lazy commit, scrubbing, THP report,
 * the resident machine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"
#include "machine.h"

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return (uint64_t)res * PAGE_SIZE;
}

/* A 64 GiB machine with little touched costs little RAM. */
static void test_lazy_commit(void **state)
{
    (void)state;
    uint64_t rss0 = rss_bytes();
    struct machine *m;
    assert_int_equal(machine_create(&m, 64 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    assert_int_equal(m->nr_frames, 64 * GiB >> PAGE_SHIFT);
    assert_int_equal(machine_resident_bytes(m), 0);
    mfn_t mfn;
    assert_int_equal(frame_alloc(m->frames, PAGE_ORDER_1G, 1, &mfn), 0);
    memset(machine_ptr(m, mfn), 1, 4 * MiB); /* touch 4 MiB of it */
    uint64_t res = machine_resident_bytes(m);
    assert_true(res >= 4 * MiB && res <= 8 * MiB);
    uint64_t grew = rss_bytes() - rss0;
    print_message("# 64 GiB machine, 4 MiB touched: memfd %llu KiB, RSS grew %llu KiB\n",
                  (unsigned long long)(res >> 10), (unsigned long long)(grew >> 10));
    /* glibc's MALLOC_PERTURB_ (set by `meson test`) fills every malloc'd
     * byte, which commits the allocator's metadata; the memfd figure above
     * still holds then. */
    if (!getenv("MALLOC_PERTURB_"))
        assert_true(grew < 64 * MiB);
    /* freeing the 1G punches it out of the memfd */
    assert_int_equal(frame_free(m->frames, mfn, PAGE_ORDER_1G, 1), 0);
    assert_int_equal(machine_resident_bytes(m), 0);
    assert_true(m->stats.scrub_punched_bytes >= GiB);
    machine_destroy(m);
}

static bool all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* Every frame freed reads as zero, at every order, resident or not. */
static void test_scrub_on_free(void **state)
{
    (void)state;
    struct machine *m;
    assert_int_equal(machine_create(&m, 32 * MiB, FRAME_POLICY_BUDDY), 0);
    struct hv_rng r = {5};
    for (int i = 0; i < 300; i++) {
        unsigned order = (unsigned)hv_rng_below(&r, 10);
        mfn_t mfn;
        if (frame_alloc(m->frames, order, 7, &mfn) < 0)
            continue;
        size_t len = (size_t)order_pages(order) << PAGE_SHIFT;
        assert_true(all_zero(machine_ptr(m, mfn), len));
        if (hv_rng_below(&r, 2))
            memset(machine_ptr(m, mfn), 0xEE, len);
        else
            memset(machine_ptr(m, mfn), 0xEE, 64); /* partly resident */
        /* free a random aligned sub-piece first, then the rest */
        unsigned sub = order ? (unsigned)hv_rng_below(&r, order) : 0;
        mfn_t piece = mfn + (hv_rng_below(&r, order_pages(order - sub)) << sub);
        assert_int_equal(frame_free(m->frames, piece, sub, 7), 0);
        assert_true(all_zero(machine_ptr(m, piece), (size_t)order_pages(sub) << PAGE_SHIFT));
        for (mfn_t x = mfn; x < mfn + order_pages(order); x++)
            if (frame_owner(m->frames, x, NULL) == 7)
                assert_int_equal(frame_free(m->frames, x, 0, 7), 0);
        assert_true(all_zero(machine_ptr(m, mfn), len));
    }
    assert_int_equal(frames_audit(m->frames), 0);
    assert_true(m->stats.scrub_calls > 0);
    machine_destroy(m);
}

static void test_thp_report(void **state)
{
    (void)state;
    enum thp_shmem t = thp_shmem_read();
    print_message("# host shmem THP: %s (%s)\n", thp_shmem_name(t),
                  thp_shmem_usable(t) ? "usable" : "not usable");
    assert_non_null(thp_shmem_explain(t));
    if (t == THP_SHMEM_UNKNOWN) {
        print_message("# SKIP reason: %s\n",
                      "/sys/kernel/mm/transparent_hugepage/shmem_enabled not readable");
        skip();
    }
    assert_string_not_equal(thp_shmem_name(t), "unknown");
}

/* A resident machine is committed when created, keeps its memory when
 * frames are freed, and still hands out only zeroed frames. */
static void test_resident(void **state)
{
    (void)state;
    struct machine *m;
    struct machine_opts o = {.bytes = 64 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                             .resident = true};
    assert_int_equal(machine_create_opts(&m, &o), 0);
    assert_true(m->resident);
    assert_int_equal(machine_resident_bytes(m), 64 * MiB);
    assert_true(m->stats.prefault_ns > 0);
    struct hv_rng r = {11};
    for (int i = 0; i < 200; i++) {
        unsigned order = (unsigned)hv_rng_below(&r, 10);
        mfn_t mfn;
        if (frame_alloc(m->frames, order, 3, &mfn) < 0)
            continue;
        size_t len = (size_t)order_pages(order) << PAGE_SHIFT;
        assert_true(all_zero(machine_ptr(m, mfn), len));
        memset(machine_ptr(m, mfn), 0x5C, len);
        assert_int_equal(frame_free(m->frames, mfn, order, 3), 0);
        assert_true(all_zero(machine_ptr(m, mfn), len));
    }
    assert_int_equal(frames_audit(m->frames), 0);
    assert_int_equal(machine_resident_bytes(m), 64 * MiB); /* nothing punched */
    assert_int_equal(m->stats.scrub_punched_bytes, 0);
    assert_true(m->stats.scrub_zeroed_bytes > 0);
    machine_destroy(m);
    /* a resident machine the host cannot commit is refused, not killed */
    struct machine *big = NULL;
    o.bytes = 1ULL << 45; /* 32 TiB */
    assert_true(machine_create_opts(&big, &o) < 0);
    assert_null(big);
}

/* The hole cursor against a model: scattered touched pages are data, the
 * rest holes, across chunk boundaries and in random order; freed 2M
 * extents (punched) are holes again once the cursor forgets. */
static void test_hole_cursor(void **state)
{
    (void)state;
    struct machine *m;
    assert_int_equal(machine_create(&m, 8 * MiB, FRAME_POLICY_BUDDY), 0);
    mfn_t mfn;
    assert_int_equal(frame_alloc(m->frames, 11, 1, &mfn), 0); /* all 8 MiB */
    uint64_t n = m->nr_frames;
    bool *touched = calloc(n, 1);
    assert_non_null(touched);
    struct hv_rng r = {3};
    for (int i = 0; i < 300; i++) {
        uint64_t p = hv_rng_below(&r, n);
        touched[p] = true;
        ((uint8_t *)machine_ptr(m, p))[7] = 1;
    }
    struct machine_holes h;
    /* both ways of asking: mincore (no swap), SEEK_DATA/SEEK_HOLE (swap) */
    bool swap = m->swap_possible;
    for (int pass = 0; pass < 4; pass++) {
        m->swap_possible = pass >= 2;
        machine_holes_init(&h, m);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t p = pass & 1 ? hv_rng_below(&r, n) : i; /* in order, at random */
            if (machine_offset_in_hole(&h, machine_offset(p)) == touched[p])
                fail_msg("pass %d: page %llu: cursor says %s", pass, (unsigned long long)p,
                         touched[p] ? "hole" : "data");
        }
    }
    m->swap_possible = swap;
    /* give back the first 2M (punched), forget, ask again */
    assert_int_equal(frame_free(m->frames, mfn, 11, 1), 0);
    assert_int_equal(frame_alloc(m->frames, 11, 1, &mfn), 0);
    machine_holes_forget(&h);
    for (uint64_t i = 0; i < n; i++)
        assert_true(machine_offset_in_hole(&h, machine_offset(i)));
    assert_int_equal(frame_free(m->frames, mfn, 11, 1), 0);
    free(touched);
    machine_destroy(m);
}

static void test_bad_sizes(void **state)
{
    (void)state;
    struct machine *m = NULL;
    assert_int_equal(machine_create(&m, 0, FRAME_POLICY_FRAGPOOL), -EINVAL);
    assert_int_equal(machine_create(&m, 3 * MiB, FRAME_POLICY_FRAGPOOL), -EINVAL);
    assert_int_equal(machine_create(&m, 1ULL << 50, FRAME_POLICY_FRAGPOOL), -EINVAL);
    assert_null(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_commit),
        cmocka_unit_test(test_scrub_on_free),
        cmocka_unit_test(test_thp_report),
        cmocka_unit_test(test_resident),
        cmocka_unit_test(test_hole_cursor),
        cmocka_unit_test(test_bad_sizes),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

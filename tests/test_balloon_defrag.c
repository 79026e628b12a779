/*
 * test_balloon_defrag.c - the balloon driver in 2M units (fallback to 4K
 * counted), on RAM and PoD guests; superpage defragmentation at 2M and 1G,
 * including copies interleaved with guest writes (bytes identical to a
 * shadow copy afterwards), also with a real writer thread (the migration
 * runner's vCPUs) running between rate-limited steps; and the n-th
 * allocation failing (fault_arm, every site) in balloon inflate/deflate
 * and defrag steps.  Audits after every step.
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

#include "balloon.h"
#include "defrag.h"
#include "domain.h"
#include "migrate.h"
#include "zero.h"

#include <time.h>




/* A guest write as the vCPU makes it: through the p2m, setting D. */
static void guest_write(struct domain *d, gfn_t gfn, unsigned off, uint8_t v)
{
    for (;;) {
        unsigned level;
        ept_entry_t *e = p2m_lookup_leaf(d->p2m, gfn, &level, NULL);
        assert_non_null(e);
        if (ept_type(*e) == p2m_pod) {
            assert_int_equal(pod_demand_populate(d, gfn), 0);
            continue;
        }
        assert_int_equal(ept_type(*e), p2m_ram_rw);
        *e |= EPT_A | EPT_D;
        unsigned order = 9u * (level - 1u);
        mfn_t mfn = ept_mfn(*e) + (gfn & (order_pages(order) - 1));
        ((uint8_t *)machine_ptr(d->m, mfn))[off] = v;
        return;
    }
}

static uint8_t guest_read(struct domain *d, gfn_t gfn, unsigned off)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, gfn, &t, NULL);
    assert_int_equal(t, p2m_ram_rw);
    return ((uint8_t *)machine_ptr(d->m, mfn))[off];
}

/* ---- balloon ------------------------------------------------------------- */

static void test_balloon_2m_units(void **state)
{
    (void)state;
    struct machine *m = new_machine(1 * GiB);
    uint64_t bytes = 256 * MiB;
    struct domain *d = new_guest(m, bytes);
    struct balloon b;
    assert_int_equal(balloon_init(&b, d, bytes), 0);
    uint64_t full = balloon_current(&b);
    assert_int_equal(full, d->tot_pages);
    uint64_t p2m_before = domain_pages_2m(d);
    /* inflate by 64 MiB + 12 pages: 32 x 2M, then 12 x 4K */
    assert_int_equal(balloon_set_target(&b, full - 32 * 512 - 12), 0);
    audit_all(d);
    assert_int_equal(b.stats.inflated_2m, 32);
    assert_int_equal(b.stats.inflated_4k, 12);
    assert_int_equal(d->tot_pages, full - 32 * 512 - 12);
    assert_int_equal(balloon_current(&b), d->tot_pages);
    assert_int_equal(domain_pages_2m(d), p2m_before - 33); /* 32 out, 1 cut by the 4K */
    /* deflate all the way */
    assert_int_equal(balloon_set_target(&b, full), 0);
    audit_all(d);
    assert_int_equal(b.stats.deflated_2m, 32);
    assert_int_equal(b.stats.deflated_4k, 12);
    assert_int_equal(b.stats.deflate_2m_as_4k, 0);
    assert_int_equal(d->tot_pages, full);
    print_message("# balloon: inflated 2M %llu 4K %llu, deflated 2M %llu 4K %llu; "
                  "pages_2m %llu -> %llu pages_4k %llu\n",
                  (unsigned long long)b.stats.inflated_2m,
                  (unsigned long long)b.stats.inflated_4k,
                  (unsigned long long)b.stats.deflated_2m,
                  (unsigned long long)b.stats.deflated_4k,
                  (unsigned long long)p2m_before, (unsigned long long)domain_pages_2m(d),
                  (unsigned long long)domain_pages_4k(d));
    /* a partial deflate of a 2M extent goes 4K */
    assert_int_equal(balloon_set_target(&b, full - 512), 0);
    assert_int_equal(balloon_set_target(&b, full - 412), 0);
    audit_all(d);
    assert_int_equal(balloon_current(&b), full - 412);
    assert_int_equal(d->tot_pages, full - 412);
    balloon_fini(&b);
    down_guest(d, m);
}

/* Deflating on a host with no free 2M extent: served as 4K, counted. */
static void test_balloon_fallback(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    uint64_t bytes = 128 * MiB;
    struct domain *d = new_guest(m, bytes);
    struct balloon b;
    assert_int_equal(balloon_init(&b, d, bytes), 0);
    uint64_t full = balloon_current(&b);
    assert_int_equal(balloon_set_target(&b, full - 8 * 512), 0);
    audit_all(d);
    /* another domain takes every free 2M extent, and leaves 4K free */
    struct domain *hog = new_domain(m);
    uint64_t n2 = frames_allocatable(m->frames, PAGE_ORDER_2M);
    assert_int_equal(domain_populate(hog, 0x100000, n2 * 512, NULL), 0);
    /* 30 pages out of each of 150 2M blocks: 4K free, no 2M free */
    for (uint64_t k = 0; k < 150; k++)
        assert_int_equal(domain_decrease_reservation(hog, 0x100000 + k * 512 + 100, 30), 30);
    assert_int_equal(frames_allocatable(m->frames, PAGE_ORDER_2M), 0);
    assert_int_equal(balloon_set_target(&b, full), 0);
    audit_all(d);
    assert_int_equal(b.stats.deflate_2m_as_4k, 8);
    assert_true(d->stats.increase_fallback_4k >= 8);
    print_message("# fragmented host: 2M deflates served as 4K: %llu\n",
                  (unsigned long long)b.stats.deflate_2m_as_4k);
    balloon_fini(&b);
    domain_destroy(hog);
    down_guest(d, m);
}

/* A PoD guest balloons down to its target: PoD entries just go away. */
static void test_balloon_pod(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    uint64_t bytes = 128 * MiB;
    assert_int_equal(domain_populate_guest_flags(d, bytes, DOMAIN_POPULATE_POD, NULL), 0);
    uint64_t target = 48 * MiB >> PAGE_SHIFT;
    assert_int_equal(pod_set_target(d, target), 0);
    audit_all(d);
    struct balloon b;
    assert_int_equal(balloon_init(&b, d, bytes), 0);
    uint64_t need = balloon_current(&b) - target;
    for (gfn_t g = 0; g < 4096; g += 3)
        if (!domain_gfn_in_hole(d, g))
            guest_write(d, g, 0, 9);
    audit_all(d);
    assert_int_equal(balloon_set_target(&b, target), 0);
    audit_all(d);
    /* liabilities no longer exceed assets: no sweep will ever be needed */
    assert_true(d->pod.entry_count <= d->pod.count);
    /* 2M except the remainder the VGA hole leaves */
    assert_int_equal(b.stats.inflated_4k, need % 512);
    assert_int_equal(b.stats.inflated_2m, need / 512);
    print_message("# PoD guest ballooned to %llu pages: %llu x 2M; entries %llu cache %llu\n",
                  (unsigned long long)balloon_current(&b),
                  (unsigned long long)b.stats.inflated_2m,
                  (unsigned long long)d->pod.entry_count, (unsigned long long)d->pod.count);
    balloon_fini(&b);
    down_guest(d, m);
}

/* ---- defrag ------------------------------------------------------------------ */

/* Map [gfn, gfn + nr) with 4K extents in reverse order: frames ascend as
 * gfns descend, so no 2M block is contiguous. */
static void map_scattered(struct domain *d, gfn_t gfn, uint64_t nr)
{
    for (uint64_t i = nr; i-- > 0;)
        assert_int_equal(domain_map_extent(d, gfn + i, PAGE_ORDER_4K, NULL), 0);
}

static uint8_t pattern(gfn_t g, unsigned off) { return (uint8_t)(g * 31 + off * 7 + 1); }

static void test_defrag_2m(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = 16 * 512;
    map_scattered(d, base, nr);
    for (uint64_t i = 0; i < nr; i++)
        for (unsigned off = 0; off < PAGE_SIZE; off += 512)
            guest_write(d, base + i, off, pattern(base + i, off));
    audit_all(d);
    assert_int_equal(domain_pages_4k(d), nr);
    uint64_t owned = frames_owned(m->frames, d->domid);
    struct defrag_stats st = {0};
    assert_int_equal(defrag_run(d, base, nr, PAGE_ORDER_2M, 0, &st), 0);
    audit_all(d);
    assert_int_equal(st.merged_2m, 16);
    assert_int_equal(domain_pages_2m(d), 16);
    assert_int_equal(domain_pages_4k(d), 0);
    assert_int_equal(frames_owned(m->frames, d->domid), owned);
    for (uint64_t i = 0; i < nr; i++)
        for (unsigned off = 0; off < PAGE_SIZE; off += 512)
            assert_int_equal(guest_read(d, base + i, off), pattern(base + i, off));
    /* a second pass finds nothing to do */
    struct defrag_stats st2 = {0};
    assert_int_equal(defrag_run(d, base, nr, PAGE_ORDER_2M, 0, &st2), 0);
    assert_int_equal(st2.merged_2m + st2.pages_copied, 0);
    down_guest(d, m);
}

/* Rate-limited steps with guest writes in between: nothing is lost. */
static void test_defrag_concurrent_writes(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = 8 * 512;
    map_scattered(d, base, nr);
    uint8_t *shadow = calloc(nr, PAGE_SIZE);
    struct hv_rng r = {3};
    for (uint64_t i = 0; i < nr; i++) {
        unsigned off = (unsigned)hv_rng_below(&r, PAGE_SIZE);
        uint8_t v = (uint8_t)hv_rng_next(&r);
        guest_write(d, base + i, off, v);
        shadow[i * PAGE_SIZE + off] = v;
    }
    struct defrag df;
    assert_int_equal(defrag_init(&df, d, base, nr, PAGE_ORDER_2M), 0);
    int rc;
    unsigned steps = 0, writes = 0;
    do {
        rc = defrag_step(&df, 37);
        assert_true(rc >= 0);
        audit_all(d);
        steps++;
        /* the guest runs: writes anywhere, copied pages included */
        for (int k = 0; k < 40; k++) {
            uint64_t i = hv_rng_below(&r, nr);
            unsigned off = (unsigned)hv_rng_below(&r, PAGE_SIZE);
            uint8_t v = (uint8_t)hv_rng_next(&r);
            guest_write(d, base + i, off, v);
            shadow[i * PAGE_SIZE + off] = v;
            writes++;
        }
    } while (rc > 0);
    defrag_fini(&df);
    audit_all(d);
    print_message("# %u steps, %u guest writes: merged %llu, copied %llu, re-copied %llu\n",
                  steps, writes, (unsigned long long)df.stats.merged_2m,
                  (unsigned long long)df.stats.pages_copied,
                  (unsigned long long)df.stats.pages_recopied);
    assert_int_equal(df.stats.merged_2m, 8);
    assert_true(df.stats.pages_recopied > 0);
    assert_int_equal(domain_pages_2m(d), 8);
    for (uint64_t i = 0; i < nr; i++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, base + i, &t, NULL);
        assert_memory_equal(machine_ptr(m, mfn), shadow + i * PAGE_SIZE, PAGE_SIZE);
    }
    /* a region that changes under the copy is abandoned, not corrupted */
    gfn_t b2 = base + 0x10000;
    map_scattered(d, b2, 512);
    guest_write(d, b2 + 5, 0, 0xab);
    assert_int_equal(defrag_init(&df, d, b2, 512, PAGE_ORDER_2M), 0);
    assert_int_equal(defrag_step(&df, 16), 1);
    assert_int_equal(domain_decrease_reservation(d, b2 + 300, 1), 1);
    audit_all(d);
    while ((rc = defrag_step(&df, 64)) > 0)
        ;
    assert_int_equal(rc, 0);
    defrag_fini(&df);
    audit_all(d);
    assert_int_equal(df.stats.aborted, 1);
    assert_int_equal(guest_read(d, b2 + 5, 0), 0xab);
    free(shadow);
    down_guest(d, m);
}

/* 1G: 512 scattered 2M leaves become one 1G leaf; untouched 2M runs are
 * not copied (memfd holes), so this costs little host memory. */
static void test_defrag_1g(void **state)
{
    (void)state;
    struct machine *m = new_machine(2 * GiB + 64 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    for (uint64_t i = 512; i-- > 0;)
        assert_int_equal(domain_map_extent(d, base + i * 512, PAGE_ORDER_2M, NULL), 0);
    assert_int_equal(domain_pages_2m(d), 512);
    for (uint64_t i = 0; i < 512; i += 17)
        guest_write(d, base + i * 512 + 3, 9, (uint8_t)(i + 1));
    audit_all(d);
    struct defrag_stats st = {0};
    assert_int_equal(defrag_run(d, base, 1ULL << 18, PAGE_ORDER_1G, 0, &st), 0);
    audit_all(d);
    print_message("# 1G defrag: merged %llu, copied %llu pages, %llu 2M runs skipped as holes\n",
                  (unsigned long long)st.merged_1g, (unsigned long long)st.pages_copied,
                  (unsigned long long)st.holes_skipped);
    assert_int_equal(st.merged_1g, 1);
    assert_int_equal(domain_pages_1g(d), 1);
    assert_true(st.holes_skipped > 400);
    for (uint64_t i = 0; i < 512; i++)
        assert_int_equal(guest_read(d, base + i * 512 + 3, 9), i % 17 ? 0 : (uint8_t)(i + 1));
    down_guest(d, m);
}


/* ---- a running guest: the migrate runner's writer vs defrag ------------------ */

/* Full shadow of a gfn window, updated by the workloads' on_write callback
 * (called by the runner thread with d->lock held). */
struct shadow {
    gfn_t base;
    uint64_t nr;
    uint8_t *bytes;
    uint64_t writes, outside;
};

static void shadow_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct shadow *sh = ctx;
    (void)vcpu;
    gfn_t g = gpa >> PAGE_SHIFT;
    if (g < sh->base || g >= sh->base + sh->nr) {
        sh->outside++;
        return;
    }
    memcpy(sh->bytes + ((g - sh->base) << PAGE_SHIFT) + (gpa & (PAGE_SIZE - 1)), &val, 8);
    sh->writes++;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * vCPUs (2M: two, 1G: one) run the writer workload on their own thread
 * (guest_*)
 * while rate-limited defrag steps (each under d->lock, the guest running
 * between them) merge the guest: 4K frames scattered in reverse order into
 * 2M leaves, then, on a second guest, 2M leaves scattered in reverse into
 * one 1G leaf.  Afterwards every byte equals the shadow built from the
 * writes the workloads reported, the audits pass and the regions are one
 * leaf each.
 */
static void defrag_under_writer(unsigned order)
{
    bool is1g = order == PAGE_ORDER_1G;
    struct machine *m = new_machine(is1g ? 2 * GiB + 128 * MiB : 256 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = is1g ? 1ULL << 18 : 8 * 512;
    if (is1g) {
        for (uint64_t i = 512; i-- > 0;)
            assert_int_equal(domain_map_extent(d, base + i * 512, PAGE_ORDER_2M, NULL), 0);
    } else {
        map_scattered(d, base, nr);
    }
    /* the writer covers (1G: the first 1/32 of) the guest; shadow that */
    struct shadow sh = {.base = base, .nr = is1g ? nr / 32 : nr};
    sh.bytes = calloc(sh.nr, PAGE_SIZE);
    assert_non_null(sh.bytes);
    struct hv_rng r = {11};
    for (uint64_t i = 0; i < sh.nr; i += 3) { /* initial contents */
        unsigned off = (unsigned)hv_rng_below(&r, PAGE_SIZE);
        uint8_t v = (uint8_t)(hv_rng_next(&r) | 1);
        guest_write(d, base + i, off, v);
        sh.bytes[i * PAGE_SIZE + off] = v;
    }
    audit_all(d);
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.seed = 5;
    wc.quantum = 256;
    wc.wss = is1g ? 1.0 / 32 : 1.0; /* 1G: one vCPU writes the first 1/32 */
    wc.on_write = shadow_write;
    wc.ctx = &sh;
    struct guest *g;
    assert_int_equal(guest_create_soft(d, is1g ? 1 : 2, NULL, &wc, &g), 0);
    assert_int_equal(guest_start(g), 0);
    sleep_ms(5);
    struct defrag df;
    assert_int_equal(defrag_init(&df, d, base, nr, order), 0);
    int rc;
    unsigned steps = 0;
    uint64_t acc0 = __atomic_load_n(&g->accesses, __ATOMIC_RELAXED);
    do {
        pthread_mutex_lock(&d->lock);
        rc = defrag_step(&df, 128); /* rate limit: 512 KiB per step */
        if (steps % 8 == 0)
            audit_all(d);
        pthread_mutex_unlock(&d->lock);
        steps++;
        /* the guest runs between steps: at least one quantum (a loaded host
         * may not schedule the runner within a millisecond, and then no
         * write lands in a copied leaf) */
        uint64_t a = __atomic_load_n(&g->accesses, __ATOMIC_RELAXED);
        for (int k = 0; k < 100 && __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) == a; k++)
            sleep_ms(1);
    } while (rc > 0);
    assert_int_equal(rc, 0);
    sleep_ms(5);
    guest_stop(g);
    uint64_t during = g->accesses - acc0;
    assert_int_equal(g->err, 0);
    defrag_fini(&df);
    audit_all(d);
    print_message("# %s under a running writer: %u steps, %llu guest accesses meanwhile, "
                  "%llu writes shadowed; merged 2M %llu 1G %llu, copied %llu, re-copied %llu, "
                  "holes %llu, aborted %llu\n",
                  is1g ? "1G" : "2M", steps, (unsigned long long)during,
                  (unsigned long long)sh.writes, (unsigned long long)df.stats.merged_2m,
                  (unsigned long long)df.stats.merged_1g,
                  (unsigned long long)df.stats.pages_copied,
                  (unsigned long long)df.stats.pages_recopied,
                  (unsigned long long)df.stats.holes_skipped,
                  (unsigned long long)df.stats.aborted);
    assert_int_equal(sh.outside, 0);
    assert_true(during > 0);
    assert_true(df.stats.pages_recopied > 0); /* writes landed in copied leaves */
    if (is1g) {
        assert_int_equal(df.stats.merged_1g, 1);
        assert_int_equal(domain_pages_1g(d), 1);
        assert_int_equal(domain_pages_2m(d) + domain_pages_4k(d), 0);
    } else {
        assert_int_equal(df.stats.merged_2m, 8);
        assert_int_equal(domain_pages_2m(d), 8);
        assert_int_equal(domain_pages_4k(d), 0);
    }
    /* every byte: the shadow where the writer went, zero beyond it */
    for (uint64_t i = 0; i < sh.nr; i++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, base + i, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        assert_memory_equal(machine_ptr(m, mfn), sh.bytes + i * PAGE_SIZE, PAGE_SIZE);
    }
    for (uint64_t i = sh.nr; i < nr; i += 512) {
        mfn_t mfn = p2m_get_entry(d->p2m, base + i, NULL, NULL);
        assert_true(zero_check(machine_ptr(m, mfn), PAGE_SIZE));
    }
    guest_destroy(g);
    free(sh.bytes);
    down_guest(d, m);
}

static void test_defrag_running_writer_2m(void **state)
{
    (void)state;
    defrag_under_writer(PAGE_ORDER_2M);
}

static void test_defrag_running_writer_1g(void **state)
{
    (void)state;
    defrag_under_writer(PAGE_ORDER_1G);
}

/* ---- fault injection ------------------------------------------------------------ */

static void audit_balloon(const struct balloon *b)
{
    audit_all(b->d);
    AUDIT_OK(balloon_audit(b));
}

/* Inflate and deflate with the n-th allocation failing, on a RAM and on a
 * PoD guest: -ENOMEM, the balloon stopped between two extents, every
 * invariant holds, and the same call without the fault finishes the job. */
static void test_fault_balloon(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    for (int pod = 0; pod < 2; pod++) {
        struct domain *d = new_domain(m);
        uint64_t bytes = 64 * MiB;
        assert_int_equal(domain_populate_guest_flags(d, bytes, pod ? DOMAIN_POPULATE_POD : 0,
                                                     NULL), 0);
        if (pod) {
            assert_int_equal(pod_set_target(d, 40 * MiB >> PAGE_SHIFT), 0);
            for (gfn_t g = 0x200; g < 0x2000; g += 5)
                guest_write(d, g, 0, 7);
        }
        struct balloon b;
        bool fired = true;
        long n;
        int rc;
        for (n = 1; fired; n++) { /* balloon_init */
            UNDER_FAULT(n, fired, rc, balloon_init(&b, d, bytes));
            if (rc < 0) {
                assert_int_equal(rc, -ENOMEM);
                continue;
            }
            if (fired)
                balloon_fini(&b);
        }
        uint64_t full = balloon_current(&b), low = full - 20 * 512 - 12;
        unsigned fi = 0, fd = 0;
        for (n = 1, fired = true; fired; n++) {
            UNDER_FAULT(n, fired, rc, balloon_set_target(&b, low));
            audit_balloon(&b);
            if (rc < 0) {
                assert_int_equal(rc, -ENOMEM);
                fi++;
            }
            assert_true(balloon_current(&b) >= low);
            assert_int_equal(balloon_set_target(&b, low), 0);
            audit_balloon(&b);
            assert_int_equal(balloon_current(&b), low);
            if (!pod)
                assert_int_equal(d->tot_pages, low);
            assert_int_equal(balloon_set_target(&b, full), 0);
            audit_balloon(&b);
        }
        assert_int_equal(rc, 0);
        for (n = 1, fired = true; fired; n++) {
            assert_int_equal(balloon_set_target(&b, low), 0);
            audit_balloon(&b);
            UNDER_FAULT(n, fired, rc, balloon_set_target(&b, full - 100));
            audit_balloon(&b);
            if (rc < 0) {
                assert_int_equal(rc, -ENOMEM);
                fd++;
            }
            assert_int_equal(balloon_set_target(&b, full - 100), 0);
            audit_balloon(&b);
            assert_int_equal(balloon_current(&b), full - 100);
            if (!pod)
                assert_int_equal(d->tot_pages, full - 100);
            assert_int_equal(balloon_set_target(&b, full), 0);
        }
        assert_int_equal(rc, 0);
        print_message("# %s guest: inflate failed cleanly %u times, deflate %u times "
                      "(2M deflates served as 4K: %llu)\n", pod ? "PoD" : "RAM", fi, fd,
                      (unsigned long long)b.stats.deflate_2m_as_4k);
        assert_true(fi > 0 && fd > 0);
        if (pod) { /* below the balloon: the bytes survived it all */
            for (gfn_t g = 0x200; g < 0x1000; g += 5)
                assert_int_equal(guest_read(d, g, 0), 7);
        }
        balloon_fini(&b);
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
    }
    machine_destroy(m);
}

/* Defrag steps with the n-th allocation failing: -ENOMEM (nothing changed,
 * the step can be retried) or a scan ended early (no_extent); the bytes
 * and audits hold, no target extent is left held, and stepping again
 * without the fault merges every region. */
static void test_fault_defrag(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    gfn_t base = GFN_4G;
    uint64_t nr = 4 * 512;
    bool fired = true;
    long n;
    unsigned failed = 0, ended = 0;
    for (n = 1; fired; n++) {
        struct domain *d = new_domain(m);
        map_scattered(d, base, nr);
        for (uint64_t i = 0; i < nr; i++)
            guest_write(d, base + i, (unsigned)(i * 8) % PAGE_SIZE, pattern(base + i, 0));
        struct defrag df;
        assert_int_equal(defrag_init(&df, d, base, nr, PAGE_ORDER_2M), 0);
        int rc;
        unsigned long h0 = hv_fault_hits;
        fault_arm(n, FAULT_SITE_ALL);
        do {
            rc = defrag_step(&df, 300);
            audit_all(d);
        } while (rc > 0);
        fault_disarm();
        fired = hv_fault_hits != h0;
        if (rc < 0) {
            assert_int_equal(rc, -ENOMEM);
            failed++;
            while ((rc = defrag_step(&df, 300)) > 0)
                audit_all(d);
            assert_int_equal(rc, 0);
        }
        uint64_t merged = df.stats.merged_2m;
        ended += df.stats.no_extent;
        defrag_fini(&df);
        assert_int_equal(d->held_pages, 0);
        audit_all(d);
        if (merged < 4) { /* the scan ended on an injected no-extent: again */
            assert_true(df.stats.no_extent > 0);
            struct defrag_stats st = {0};
            assert_int_equal(defrag_run(d, base, nr, PAGE_ORDER_2M, 0, &st), 0);
            merged += st.merged_2m;
        }
        assert_int_equal(merged, 4);
        assert_int_equal(domain_pages_2m(d), 4);
        for (uint64_t i = 0; i < nr; i++)
            assert_int_equal(guest_read(d, base + i, (unsigned)(i * 8) % PAGE_SIZE),
                             pattern(base + i, 0));
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
    }
    print_message("# defrag: %ld allocation sites; %u steps failed with -ENOMEM, %u scans "
                  "ended for want of an extent\n", n - 1, failed, ended);
    assert_true(failed > 0);
    machine_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_balloon_2m_units),
        cmocka_unit_test(test_balloon_fallback),
        cmocka_unit_test(test_balloon_pod),
        cmocka_unit_test(test_defrag_2m),
        cmocka_unit_test(test_defrag_concurrent_writes),
        cmocka_unit_test(test_defrag_1g),
        cmocka_unit_test(test_defrag_running_writer_2m),
        cmocka_unit_test(test_defrag_running_writer_1g),
        cmocka_unit_test(test_fault_balloon),
        cmocka_unit_test(test_fault_defrag),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

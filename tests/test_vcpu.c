/*
 * test_vcpu.c - the soft vCPU against a model: reads and writes land in the
 * right machine bytes, A/D bits at the leaf's level, EPT violations and
 * their errors, TLB invalidation on every kind of p2m change, TLB counts
 * (hits + misses == accesses; superpage-mapped guests miss less and walk
 * shorter), and deterministic workloads.
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

#include "pod.h"
#include "vcpu.h"
#include "workload.h"

#define G1 (1ULL << 18) /* gfn of 1 GiB */


/* A domain with [G1, G1 + nr) populated with leaves of exactly `order`. */
static struct domain *guest_at_order(struct machine *m, uint64_t nr, unsigned order)
{
    struct domain_config c;
    struct domain *d;
    domain_config_default(&c);
    if (order == PAGE_ORDER_4K) {
        c.nr_4k_ranges = 1;
        c.ranges_4k[0] = (struct gfn_range){G1, nr};
    }
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate(d, G1, nr, NULL), 0);
    if (order == PAGE_ORDER_2M) {
        d->no_auto_coalesce = true;
        p2m_set_auto_coalesce(d->p2m, false);
        for (gfn_t g = G1; g < G1 + nr; g += G1)
            assert_int_equal(p2m_split(d->p2m, g), PAGE_ORDER_2M);
    }
    assert_int_equal(p2m_pages_at(d->p2m, order), nr >> order);
    return d;
}

static uint64_t word_at(struct domain *d, uint64_t gpa)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, gpa >> PAGE_SHIFT, &t, NULL);
    assert_true(p2m_is_ram(t));
    uint64_t v;
    memcpy(&v, (uint8_t *)machine_ptr(d->m, mfn) + (gpa & (PAGE_SIZE - 1)), 8);
    return v;
}

/* Random reads and writes against a plain array of the guest's words. */
static void test_access_model(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    const uint64_t pages = 16 * MiB >> PAGE_SHIFT; /* 4K, then 2M leaves */
    assert_int_equal(domain_populate(d, 0, pages, NULL), 0);
    struct vcpu *v[2];
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(vcpu_create(d, i, NULL, &v[i]), 0);
    uint64_t *model = calloc(pages * 512, 8);
    struct hv_rng r = {3};
    for (int i = 0; i < 200000; i++) {
        gfn_t g = hv_rng_below(&r, pages);
        if (domain_gfn_in_hole(d, g))
            continue;
        uint64_t word = hv_rng_below(&r, 512);
        uint64_t gpa = (g << PAGE_SHIFT) | (word * 8);
        struct vcpu *vc = v[i & 1];
        vcpu_lock(vc);
        if (hv_rng_below(&r, 3) == 0) {
            uint64_t val = hv_rng_next(&r);
            assert_int_equal(vcpu_write(vc, gpa, val), 0);
            model[g * 512 + word] = val;
        } else {
            uint64_t val;
            assert_int_equal(vcpu_read(vc, gpa, &val), 0);
            assert_int_equal(val, model[g * 512 + word]);
        }
        vcpu_unlock(vc);
    }
    for (gfn_t g = 0; g < pages; g += 7)
        if (!domain_gfn_in_hole(d, g))
            for (unsigned w = 0; w < 512; w += 31)
                assert_int_equal(word_at(d, (g << PAGE_SHIFT) | (w * 8)), model[g * 512 + w]);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(v[i]->st.tlb_hits + v[i]->st.tlb_misses, v[i]->st.accesses);
        assert_int_equal(v[i]->st.reads + v[i]->st.writes, v[i]->st.accesses);
    }
    /* errors: misaligned, the VGA hole, beyond the guest */
    uint64_t val;
    vcpu_lock(v[0]);
    assert_int_equal(vcpu_read(v[0], 4, &val), -EINVAL);
    assert_int_equal(vcpu_read(v[0], VGA_HOLE_GFN << PAGE_SHIFT, &val), -EFAULT);
    assert_int_equal(vcpu_write(v[0], pages << PAGE_SHIFT, 1), -EFAULT);
    vcpu_unlock(v[0]);
    AUDIT_OK(domain_audit(d));
    free(model);
    for (unsigned i = 0; i < 2; i++)
        vcpu_destroy(v[i]);
    domain_destroy(d);
    machine_destroy(m);
}

/* A on a read, D on a write, at the leaf's own level. */
static void test_ad_bits(void **state)
{
    (void)state;
    struct machine *m = new_machine(2 * GiB);
    struct domain *d = guest_at_order(m, G1, PAGE_ORDER_1G);
    struct vcpu *v;
    assert_int_equal(vcpu_create(d, 0, NULL, &v), 0);
    unsigned level;
    ept_entry_t *e = p2m_lookup_leaf(d->p2m, G1 + 5, &level, NULL);
    assert_int_equal(level, 3);
    assert_int_equal(*e & (EPT_A | EPT_D), 0);
    uint64_t val;
    vcpu_lock(v);
    assert_int_equal(vcpu_read(v, (G1 + 5) << PAGE_SHIFT, &val), 0);
    assert_int_equal(*e & (EPT_A | EPT_D), EPT_A);
    assert_int_equal(vcpu_write(v, (G1 + 1000) << PAGE_SHIFT, 7), 0);
    assert_int_equal(*e & (EPT_A | EPT_D), EPT_A | EPT_D);
    vcpu_unlock(v);
    /* the read filled a clean entry: the write re-walked to set D */
    assert_int_equal(v->st.tlb_misses, 2);
    assert_int_equal(v->st.d_sets, 1);
    assert_int_equal(v->st.walk_refs, 2 * vcpu_walk_refs(PAGE_ORDER_2M, 2));
    assert_int_equal(vcpu_walk_refs(PAGE_ORDER_4K, 4), 24);
    assert_int_equal(vcpu_walk_refs(PAGE_ORDER_4K, 3), 19);
    assert_int_equal(vcpu_walk_refs(PAGE_ORDER_4K, 2), 14);
    assert_int_equal(vcpu_walk_refs(PAGE_ORDER_2M, 3), 15);
    vcpu_destroy(v);
    domain_destroy(d);
    machine_destroy(m);
}

/* Every p2m change that affects a translation reaches the TLB. */
static void test_tlb_invalidation(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate(d, 512, 2048, NULL), 0);
    struct vcpu *v;
    assert_int_equal(vcpu_create(d, 0, NULL, &v), 0);
    uint64_t gpa = 700ULL << PAGE_SHIFT, val;
    vcpu_lock(v);
    assert_int_equal(vcpu_write(v, gpa, 0x1234), 0);
    assert_int_equal(vcpu_read(v, gpa, &val), 0);
    assert_int_equal(val, 0x1234);
    vcpu_unlock(v);
    /* unmap: the cached translation must not survive */
    assert_int_equal(domain_decrease_reservation(d, 700, 1), 1);
    vcpu_lock(v);
    assert_int_equal(vcpu_read(v, gpa, &val), -EFAULT);
    vcpu_unlock(v);
    /* repopulate: a fresh (zero) frame, not the old bytes */
    assert_int_equal(domain_populate(d, 700, 1, NULL), 0);
    vcpu_lock(v);
    assert_int_equal(vcpu_read(v, gpa, &val), 0);
    assert_int_equal(val, 0);
    /* type change to ro (callers bump the generation, domain.h) */
    assert_int_equal(p2m_change_type(d->p2m, 1024, 512, p2m_ram_rw, p2m_ram_ro), 0);
    d->p2m_gen++;
    assert_int_equal(vcpu_read(v, 1100ULL << PAGE_SHIFT, &val), 0);
    assert_int_equal(vcpu_write(v, 1100ULL << PAGE_SHIFT, 1), -EACCES);
    /* PoD leaves read as zero without using the cache, and are populated on
     * demand by the first write (pod.h); MMIO ones reported */
    assert_int_equal(domain_populate_flags(d, 8192, 1, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, d->tot_pages + 1), 0); /* a 1-page cache */
    assert_int_equal(p2m_set_entry(d->p2m, 8193, 8193, 0, p2m_mmio), 0);
    d->p2m_gen++;
    uint64_t zr = v->st.pod_zero_reads;
    val = 7;
    assert_int_equal(vcpu_read(v, 8192ULL << PAGE_SHIFT, &val), 0);
    assert_int_equal(val, 0);
    assert_int_equal(d->pod.stats.demand_4k, 0);
    assert_int_equal(v->st.pod_zero_reads, zr + 1);
    val = 7;
    assert_int_equal(vcpu_read(v, (8192ULL << PAGE_SHIFT) + 64, &val), 0); /* a TLB hit */
    assert_int_equal(val, 0);
    assert_int_equal(v->st.pod_zero_reads, zr + 2);
    assert_int_equal(vcpu_write(v, 8192ULL << PAGE_SHIFT, 0x77), 0); /* populates */
    assert_int_equal(d->pod.stats.demand_4k, 1);
    assert_int_equal(vcpu_read(v, 8192ULL << PAGE_SHIFT, &val), 0);
    assert_int_equal(val, 0x77);
    assert_int_equal(v->st.pod_zero_reads, zr + 2);
    assert_int_equal(vcpu_read(v, 8193ULL << PAGE_SHIFT, &val), -EFAULT);
    assert_int_equal(domain_decrease_reservation(d, 8192, 1), 1);
    assert_int_equal(p2m_set_entry(d->p2m, 8193, 0, 0, p2m_invalid), 0);
    d->p2m_gen++;
    vcpu_unlock(v);
    assert_true(v->st.tlb_flushes >= 3);
    assert_int_equal(v->st.tlb_hits + v->st.tlb_misses, v->st.accesses);
    vcpu_destroy(v);
    domain_destroy(d);
    machine_destroy(m);
}

/* The same uniform workload on a guest mapped at 4K, 2M and 1G. */
static void test_tlb_superpages_help(void **state)
{
    (void)state;
    static const unsigned orders[] = {PAGE_ORDER_4K, PAGE_ORDER_2M, PAGE_ORDER_1G};
    uint64_t misses[3], refs[3], sum[3];
    for (unsigned k = 0; k < 3; k++) {
        struct machine *m = new_machine(2 * GiB);
        struct domain *d = guest_at_order(m, G1, orders[k]);
        struct tlb_config tc;
        tlb_config_default(&tc);
        tc.guest_order = PAGE_ORDER_1G; /* TLB entries as large as the EPT leaf */
        struct vcpu *v;
        assert_int_equal(vcpu_create(d, 0, &tc, &v), 0);
        struct workload_config wc;
        workload_config_default(&wc, WL_UNIFORM);
        wc.seed = 77;
        struct workload *w;
        assert_int_equal(workload_create(d, &wc, 0, 1, &w), 0);
        assert_int_equal(workload_pages(w), G1);
        struct workload_result res;
        assert_int_equal(workload_run(&v, &w, 1, 200000, 0, &res), 0);
        assert_int_equal(res.accesses, 200000);
        assert_int_equal(v->st.accesses, 200000);
        assert_int_equal(v->st.tlb_hits + v->st.tlb_misses, v->st.accesses);
        misses[k] = v->st.tlb_misses;
        refs[k] = v->st.walk_refs;
        sum[k] = res.checksum;
        print_message("# %s-mapped: misses %llu, walk refs %llu (per miss %.1f)\n",
                      k == 0 ? "4K" : k == 1 ? "2M" : "1G", (unsigned long long)misses[k],
                      (unsigned long long)refs[k], (double)refs[k] / (double)v->st.walks);
        workload_destroy(w);
        vcpu_destroy(v);
        domain_destroy(d);
        machine_destroy(m);
    }
    assert_true(misses[1] < misses[0] / 4);
    assert_true(misses[2] < misses[1]);
    assert_true(refs[2] < refs[1] && refs[1] < refs[0]);
    /* same guest-visible behaviour whatever the mapping */
    assert_int_equal(sum[0], sum[1]);
    assert_int_equal(sum[1], sum[2]);
}

struct hash_ctx {
    uint64_t h;
    uint64_t writes[4];
};

static void hash_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct hash_ctx *c = ctx;
    c->h = (c->h ^ gpa ^ (val * 31) ^ vcpu) * 0x100000001B3ULL;
    c->writes[vcpu]++;
}

/* Same seed: same accesses, same bytes; each kind stays inside guest RAM. */
static void test_workloads_deterministic(void **state)
{
    (void)state;
    for (unsigned kind = 0; kind < WL_NR_KINDS; kind++) {
        uint64_t h[2], sum[2];
        for (int rep = 0; rep < 2; rep++) {
            struct machine *m = new_machine(256 * MiB);
            struct domain *d;
            struct domain_config c;
            domain_config_default(&c);
            assert_int_equal(domain_create(m, &c, &d), 0);
            assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
            struct vcpu *v[3];
            struct workload *w[3];
            struct hash_ctx hc = {0};
            for (unsigned i = 0; i < 3; i++) {
                assert_int_equal(vcpu_create(d, i, NULL, &v[i]), 0);
                struct workload_config wc;
                workload_config_default(&wc, (enum workload_kind)kind);
                wc.seed = 9;
                wc.quantum = 0;
                if (kind == WL_SEQ)
                    wc.write_frac = 0.5;
                wc.on_write = hash_write;
                wc.ctx = &hc;
                assert_int_equal(workload_create(d, &wc, i, 3, &w[i]), 0);
                /* pages exclude the VGA hole */
                assert_int_equal(workload_pages(w[i]), d->tot_pages);
            }
            struct workload_result res;
            assert_int_equal(workload_run(v, w, 3, 300000, 0, &res), 0);
            assert_int_equal(res.accesses, 300000);
            assert_true(res.writes > 0);
            h[rep] = hc.h;
            sum[rep] = res.checksum;
            AUDIT_OK(domain_audit(d));
            for (unsigned i = 0; i < 3; i++) {
                workload_destroy(w[i]);
                vcpu_destroy(v[i]);
            }
            domain_destroy(d);
            machine_destroy(m);
        }
        assert_int_equal(h[0], h[1]);
        assert_int_equal(sum[0], sum[1]);
    }
    enum workload_kind k;
    assert_int_equal(workload_parse("gups", &k), 0);
    assert_int_equal(k, WL_UNIFORM);
    assert_int_equal(workload_parse("bogus", &k), -EINVAL);
}

/* The writer keeps to its slice and its rate. */
static void test_writer_rate(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate(d, 512, 4096, NULL), 0);
    struct vcpu *v;
    assert_int_equal(vcpu_create(d, 0, NULL, &v), 0);
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.write_rate = 20000;
    wc.quantum = 100;
    struct workload *w;
    assert_int_equal(workload_create(d, &wc, 0, 1, &w), 0);
    struct workload_result res;
    assert_int_equal(workload_run(&v, &w, 1, 0, 200000000, &res), 0);
    /* 0.2 s at 20000 pages/s: about 4000 writes.  The pacing must never
     * exceed the rate; below it only says the host was busy (a loaded
     * machine deschedules the runner), so the lower bound is progress */
    assert_true(res.writes >= 1 && res.writes <= 4600);
    print_message("# writer at 20000 pages/s for 0.2 s: %llu writes\n",
                  (unsigned long long)res.writes);
    workload_destroy(w);
    vcpu_destroy(v);
    domain_destroy(d);
    machine_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_model),
        cmocka_unit_test(test_ad_bits),
        cmocka_unit_test(test_tlb_invalidation),
        cmocka_unit_test(test_tlb_superpages_help),
        cmocka_unit_test(test_workloads_deterministic),
        cmocka_unit_test(test_writer_rate),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

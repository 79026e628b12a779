/*
 * test_kvm.c - the kvm backend's mirror, memslots, dirty log and host
 * superpages, against models:
 *  - every 2M and 1G p2m leaf is one host mapping of the same alignment, at
 *    the leaf's frames, the same memory as the machine's;
 *  - more RAM runs than memslots empties the mirror until a sync fits;
 *  - KVM's dirty log names exactly the workload pages the guest program
 *    wrote (the writer's pages, computed from its published state), no
 *    more and no fewer;
 *  - with shmem THP usable (or switched to "advise" as root for the test
 *    and put back however it ends), a guest touching its memory is mapped
 *    by the host with PMDs and by KVM with 2M leaves (KVM's own counter),
 *    and with THP off by neither.
 * Tests needing /dev/kvm report SKIP with the reason when it is missing or
 * unusable (`make check-kvm` runs them under KVM inside a QEMU TCG guest).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"

#include "chan.h"
#include "guest.h"
#include "kvm.h"
#include "migrate.h"
#include "net.h"
#include "save.h"
#include "stream.h"
#include <linux/kvm.h>

#define G1 (1ULL << 18) /* gfn of 1 GiB */

#define KVM_OR_SKIP()                                                          \
    do {                                                                       \
        char why_[256];                                                        \
        if (kvm_probe(why_, sizeof(why_)) < 0) {                               \
            print_message("# SKIP reason: %s\n", why_);                        \
            skip();                                                            \
        }                                                                      \
    } while (0)

static void test_probe_reason(void **state)
{
    (void)state;
    char why[256] = "";
    int rc = kvm_probe(why, sizeof(why));
    print_message("# kvm_probe: %s\n", rc == 0 ? "usable" : why);
    if (rc < 0)
        assert_true(why[0] != 0);
}

/* ---- the mirror ------------------------------------------------------------- */

static bool maps_lookup(const void *addr, char perms[5], uint64_t *start, uint64_t *end,
                        uint64_t *offset)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    bool found = false;
    assert_non_null(f);
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned long long s, e, off;
        char p[5];
        if (sscanf(line, "%llx-%llx %4s %llx", &s, &e, p, &off) != 4)
            continue;
        if ((uint64_t)(uintptr_t)addr >= s && (uint64_t)(uintptr_t)addr < e) {
            memcpy(perms, p, 5);
            *start = s;
            *end = e;
            *offset = off;
            found = true;
        }
    }
    fclose(f);
    return found;
}

struct align_ctx {
    struct kvm_vm *vm;
    struct machine *m;
    uint64_t checked[3];
};

static int check_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                      ept_entry_t *e)
{
    struct align_ctx *a = ctx;
    (void)e;
    if (!p2m_is_ram(type) || order == PAGE_ORDER_4K)
        return 0;
    uint64_t size = order_pages(order) << PAGE_SHIFT;
    uint8_t *hva = kvm_gfn_hva(a->vm, gfn);
    assert_non_null(hva);
    assert_int_equal((uintptr_t)hva & (size - 1), 0);
    assert_int_equal(machine_offset(mfn) & (size - 1), 0);
    char perms[5];
    uint64_t s, end, off;
    assert_true(maps_lookup(hva, perms, &s, &end, &off));
    assert_string_equal(perms, "rw-s");
    assert_true(end >= (uint64_t)(uintptr_t)hva + size);
    assert_int_equal(off + ((uint64_t)(uintptr_t)hva - s), machine_offset(mfn));
    uint64_t marker = 0x5eed0000ULL + gfn, v;
    memcpy((uint8_t *)machine_ptr(a->m, mfn) + size - 8, &marker, 8);
    memcpy(&v, hva + size - 8, 8);
    assert_int_equal(v, marker);
    memset(hva + size - 8, 0, 8);
    a->checked[order_level(order)]++;
    return 0;
}

static void test_mirror_alignment(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct machine *m = new_machine(2 * GiB);
    struct domain *d;
    struct domain_config c;
    struct kvm_vm *vm;
    char why[256] = "";
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    assert_int_equal(domain_populate(d, G1, G1, NULL), 0);
    assert_int_equal(domain_pages_1g(d), 1);
    int rc = kvm_vm_create(d, NULL, &vm, why, sizeof(why));
    if (rc < 0)
        fail_msg("kvm_vm_create: %s (%s)", strerror(-rc), why);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(vm, &mi);
    assert_int_equal(mi.base & (GiB - 1), 0);
    assert_int_equal(mi.leaves[2], 1);
    assert_int_equal(mi.leaves[1], domain_pages_2m(d));
    assert_int_equal(mi.mapped_pages, d->tot_pages);
    print_message("# memslots %u of %u; dirty log %s; SLOT_ZAP_ALL quirk %s\n", mi.slots,
                  mi.max_slots, mi.manual_protect ? "with manual clear" : "get-and-clear",
                  mi.slot_zap_all_off ? "disabled" : "kept (not offered)");
    struct align_ctx a = {.vm = vm, .m = m};
    assert_int_equal(p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, check_leaf, &a), 0);
    assert_int_equal(a.checked[2], 1);
    assert_int_equal(a.checked[1], domain_pages_2m(d));
    kvm_vm_destroy(vm);
    audit_all(d);
    domain_destroy(d);
    machine_destroy(m);
}

/* More RAM runs than memslots: the sync fails with -ENOSPC and empties the
 * mirror; back to fewer runs, a sync rebuilds it. */
static void test_memslot_limit(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct machine *m = new_machine(128 * MiB);
    struct domain *d;
    struct domain_config c;
    struct kvm_vm *vm;
    char why[256] = "";
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    struct kvm_vm_opts o = {.max_slots = 3};
    int rc = kvm_vm_create(d, &o, &vm, why, sizeof(why));
    if (rc < 0)
        fail_msg("kvm_vm_create: %s (%s)", strerror(-rc), why);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(vm, &mi);
    assert_int_equal(mi.max_slots, 3);
    assert_int_equal(mi.slots, 2);
    assert_int_equal(domain_decrease_reservation(d, 0x1000, 512), 512);
    assert_int_equal(kvm_sync(vm), 512);
    kvm_mirror_get_info(vm, &mi);
    assert_int_equal(mi.slots, 3);
    assert_int_equal(domain_decrease_reservation(d, 0x2000, 512), 512);
    assert_int_equal(kvm_sync(vm), -ENOSPC);
    assert_true(kvm_sync_needed(vm));
    kvm_mirror_get_info(vm, &mi);
    assert_int_equal(mi.slots, 0);
    assert_int_equal(mi.mapped_pages, 0);
    assert_null(kvm_gfn_hva(vm, 0x2000));
    audit_all(d);
    assert_int_equal(domain_increase_reservation(d, 0x2000, 1, PAGE_ORDER_2M), 0);
    assert_true(kvm_sync(vm) > 0);
    kvm_mirror_get_info(vm, &mi);
    assert_int_equal(mi.slots, 3);
    assert_int_equal(mi.mapped_pages, d->tot_pages);
    kvm_vm_destroy(vm);
    domain_destroy(d);
    machine_destroy(m);
}

/* ---- the dirty log ------------------------------------------------------------ */

static struct guest *start_prog(struct domain *d, const struct guest_prog_config *pc)
{
    struct guest *g;
    char why[256] = "";
    int rc = guest_create_prog(d, GUEST_BACKEND_KVM, pc, &g, why, sizeof(why));
    if (rc < 0)
        fail_msg("guest_create_prog: %s (%s)", strerror(-rc), why);
    return g;
}

/*
 * The writer writes the pages [lo, lo + ops) of its slice in order, once
 * each (ops below the slice).  With KVM's dirty log on from the start, the
 * harvest names exactly those pages inside the workload memory.
 */
static void dirty_log_exact(bool bitmap);

static void test_dirty_log_exact(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    dirty_log_exact(false); /* the dirty ring where KVM offers it */
    dirty_log_exact(true);  /* the bitmap */
}

static void dirty_log_exact(bool bitmap)
{
    if (bitmap)
        setenv("HUGEVM_KVM_DIRTY_BITMAP", "1", 1);
    else
        unsetenv("HUGEVM_KVM_DIRTY_BITMAP");
    struct machine *m = new_machine(256 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, HVG_WL_WRITER);
    pc.nr_vcpus = 2;
    /* more than a ring holds (4096 entries a vCPU): it fills and is
     * collected on the vCPU's exit */
    pc.ops = 6000 + hv_stress_scale();
    pc.console_fd = -1;
    struct guest *g = start_prog(d, &pc);
    struct kvm_vm *vm = kvm_exec_vm(g->x);
    assert_non_null(vm);
    struct kvm_mirror_info mi0;
    kvm_mirror_get_info(vm, &mi0);
    if (bitmap)
        assert_false(mi0.dirty_ring);
    assert_int_equal(kvm_set_log_dirty(vm, true), 0);
    assert_int_equal(guest_start(g), 0);
    int rc = guest_wait(g, 120ULL * 1000 * 1000 * 1000);
    if (rc < 0)
        fail_msg("the guest failed: %s", g->fault.what);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(vm, &mi);
    uint64_t words = (mi.max_gfn + 63) / 64, n = 0;
    uint64_t *bm = calloc(words, 8);
    assert_non_null(bm);
    assert_int_equal(kvm_harvest(vm, bm, mi.max_gfn, &n), 0);
    /* the expected set: vCPU v wrote pages [lo_v, lo_v + ops) of the
     * workload memory */
    const struct hvg_param *t = g->tmpl;
    uint64_t total = 0;
    for (uint32_t e = 0; e < t->nr_extents; e++)
        total += t->ext[e].pages;
    uint64_t *want = calloc(words, 8);
    assert_non_null(want);
    for (unsigned v = 0; v < pc.nr_vcpus; v++) {
        uint64_t lo = total * v / pc.nr_vcpus;
        for (uint64_t i = lo; i < lo + pc.ops; i++) {
            uint64_t k = i;
            uint32_t e = 0;
            while (k >= t->ext[e].pages)
                k -= t->ext[e++].pages;
            gfn_t gf = (t->ext[e].gpa >> PAGE_SHIFT) + k;
            want[gf / 64] |= 1ULL << (gf % 64);
        }
    }
    uint64_t extra = 0, missing = 0;
    gfn_t sys_end = HVG_SYSTEM_END >> PAGE_SHIFT;
    for (gfn_t gf = sys_end; gf < mi.max_gfn; gf++) {
        bool got = bm[gf / 64] >> (gf % 64) & 1, exp = want[gf / 64] >> (gf % 64) & 1;
        extra += got && !exp;
        missing += exp && !got;
    }
    struct kvm_vm_stats vst;
    kvm_get_stats(vm, &vst);
    print_message("# dirty log (%s): %llu pages harvested (%llu in the workload memory "
                  "expected); %llu extra, %llu missing; %llu ring-full exits\n",
                  guest_dirty_source(g), (unsigned long long)n,
                  (unsigned long long)(pc.ops * pc.nr_vcpus), (unsigned long long)extra,
                  (unsigned long long)missing, (unsigned long long)vst.ring_full_exits);
    if (mi.dirty_ring)
        assert_true(vst.ring_full_exits > 0);
    assert_int_equal(missing, 0);
    assert_int_equal(extra, 0);
    /* a second harvest with nothing written since is empty there */
    assert_int_equal(kvm_harvest(vm, bm, mi.max_gfn, &n), 0);
    for (gfn_t gf = sys_end; gf < mi.max_gfn; gf++)
        assert_false(bm[gf / 64] >> (gf % 64) & 1);
    char why[256];
    assert_int_equal(guest_verify(g, why, sizeof(why)), 0);
    free(bm);
    free(want);
    guest_destroy(g);
    audit_all(d);
    domain_destroy(d);
    machine_destroy(m);
    unsetenv("HUGEVM_KVM_DIRTY_BITMAP");
}

/* ---- host superpages that KVM uses -------------------------------------------- */

static enum thp_shmem thp_restore = THP_SHMEM_UNKNOWN;

/* Puts shmem_enabled back however the test ended. */
static int thp_teardown(void **state)
{
    (void)state;
    if (thp_restore == THP_SHMEM_UNKNOWN)
        return 0;
    int rc = thp_shmem_set(thp_restore);
    thp_restore = THP_SHMEM_UNKNOWN;
    return rc == 0 ? 0 : -1;
}

/* A guest touching 128 MiB: the host's PMD share and KVM's 2M count. */
static void measure(uint64_t *pmd_share_pct, uint64_t pages[3])
{
    struct machine *m = new_machine(512 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 128 * MiB, NULL), 0);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, HVG_WL_UNIFORM);
    pc.console_fd = -1;
    pc.ops = 20000;
    pc.touch_first = true;
    pc.guest_page_order = PAGE_ORDER_2M;
    struct guest *g = start_prog(d, &pc);
    assert_int_equal(guest_start(g), 0);
    if (guest_wait(g, 300ULL * 1000 * 1000 * 1000) < 0)
        fail_msg("the guest failed: %s", g->fault.what);
    uint64_t rss, pmd;
    assert_int_equal(guest_host_mapping(g, &rss, &pmd), 0);
    assert_int_equal(guest_mmu_pages(g, pages), 0);
    *pmd_share_pct = rss ? pmd * 100 / rss : 0;
    print_message("# shmem THP %s: host %llu KiB resident, %llu%% PMD-mapped; KVM pages_4k %llu "
                  "pages_2m %llu pages_1g %llu\n", thp_shmem_name(thp_shmem_read()),
                  (unsigned long long)(rss >> 10), (unsigned long long)*pmd_share_pct,
                  (unsigned long long)pages[0], (unsigned long long)pages[1],
                  (unsigned long long)pages[2]);
    guest_destroy(g);
    domain_destroy(d);
    machine_destroy(m);
}

static void test_host_superpages(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    enum thp_shmem before = thp_shmem_read();
    if (!thp_shmem_usable(before)) {
        const char *env = getenv("HUGEVM_KVM_THP");
        if (!env || strcmp(env, "1") != 0) {
            print_message("# SKIP reason: shmem THP is %s; HUGEVM_KVM_THP=1 (as root) switches it "
                          "to advise for this test\n", thp_shmem_name(before));
            skip();
        }
        thp_restore = before;
        if (thp_shmem_try_enable() < 0) {
            print_message("# SKIP reason: cannot switch shmem THP to advise (not root?)\n");
            skip();
        }
    }
    uint64_t share, pages[3];
    measure(&share, pages);
    assert_true(share >= 90);
    assert_true(pages[1] > 0); /* KVM maps 2M where the host and the guest do */
    if (thp_restore != THP_SHMEM_UNKNOWN && thp_restore != THP_SHMEM_ADVISE &&
        thp_shmem_set(THP_SHMEM_NEVER) == 0) {
        measure(&share, pages);
        assert_int_equal(share, 0);
        assert_int_equal(pages[1], 0); /* host 4K: KVM 4K whatever the p2m holds */
    }
}

/* ---- save and resume ----------------------------------------------------------- */

static void wait_ops(struct guest *g, uint64_t above)
{
    for (int k = 0; k < 6000; k++) {
        uint64_t n = 0;
        for (unsigned i = 0; i < g->nr_vcpus; i++) {
            struct hvg_wl_state st;
            assert_int_equal(guest_vcpu_state(g, i, &st), 0);
            n += st.ops;
        }
        if (n > above)
            return;
        if (g->fault_claimed)
            fail_msg("the guest failed: %s", g->fault.what);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fail_msg("the guest made no progress");
}

/*
 * A running KVM guest is paused, saved with its vCPU state (registers,
 * system registers, FPU) into a stream, restored on another machine and
 * resumed there: it goes on from where it stopped, and the host's replay of
 * every vCPU from the seed matches the memory it ends with.  A saved state
 * that would run at CPL 0 is refused.
 */
static void test_save_resume(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct machine *m1 = new_machine(256 * MiB), *m2 = new_machine(256 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m1, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, HVG_WL_UNIFORM);
    pc.nr_vcpus = 2;
    pc.batch = 300;
    pc.console_fd = -1;
    struct guest *g = start_prog(d, &pc);
    assert_int_equal(guest_start(g), 0);
    wait_ops(g, 5000);
    guest_pause(g);
    uint64_t saved_ops = 0;
    for (unsigned i = 0; i < 2; i++) {
        struct hvg_wl_state st;
        assert_int_equal(guest_vcpu_state(g, i, &st), 0);
        saved_ops += st.ops;
    }
    struct hvctx_buf b;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(guest_prog_encode(g, &b), 0);
    struct stream_mem mem = {0};
    struct stream_io io;
    struct save_result sr;
    char err[256];
    stream_mem_sink(&mem, &io);
    struct save_opts so = {.extra_tlvs = b.p + sizeof(struct hvctx_header),
                           .extra_tlvs_len = b.len - sizeof(struct hvctx_header)};
    if (stream_save(d, &io, &so, &sr, err, sizeof(err)) < 0)
        fail_msg("stream_save: %s", err);
    hvctx_free(&b);
    guest_destroy(g);
    domain_destroy(d);

    struct stream_mem src;
    struct restore_result rr;
    stream_mem_source(&src, &io, mem.buf, mem.len);
    if (stream_restore(m2, &io, NULL, &rr) < 0)
        fail_msg("stream_restore: %s", rr.err);
    struct guest_prog_state *ps = malloc(sizeof(*ps));
    assert_non_null(ps);
    assert_int_equal(guest_prog_decode(rr.context, rr.context_len, ps, err, sizeof(err)), 1);
    assert_int_equal(ps->nr_vcpus, 2);
    /* a state that would run at CPL 0 is refused */
    struct hvctx_prog_vcpu keep = ps->v[1];
    struct kvm_sregs sregs;
    memcpy(&sregs, ps->v[1].sregs, sizeof(sregs));
    sregs.cs.dpl = 0;
    sregs.cs.selector &= ~3;
    memcpy(ps->v[1].sregs, &sregs, sizeof(sregs));
    char why[256] = "";
    struct guest *g2 = NULL;
    assert_int_equal(guest_create_prog_resume(rr.d, ps, &g2, why, sizeof(why)), -EPERM);
    assert_non_null(strstr(why, "CPL 3"));
    ps->v[1] = keep;
    int rc = guest_create_prog_resume(rr.d, ps, &g2, why, sizeof(why));
    if (rc < 0)
        fail_msg("resume: %s", why);
    assert_int_equal(guest_start(g2), 0);
    wait_ops(g2, saved_ops + 5000);
    assert_int_equal(guest_finish(g2, 120ULL * 1000 * 1000 * 1000), 0);
    if (guest_verify(g2, why, sizeof(why)) < 0)
        fail_msg("verify after resume: %s", why);
    print_message("# saved after %llu operations, resumed on another machine, verified\n",
                  (unsigned long long)saved_ops);
    guest_destroy(g2);
    audit_all(rr.d);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    stream_mem_free(&mem);
    free(ps);
    machine_destroy(m1);
    machine_destroy(m2);
}

/* ---- live migration -------------------------------------------------------------- */

struct kvm_rx {
    struct machine *m;
    int lfd;
    uint16_t port;
    struct migrate_recv_result res;
    int rc;
    pthread_t t;
};

static struct chan *plain_chan(int fd)
{
    struct chan *ch;
    char err[CHAN_ERR_LEN];
    assert_int_equal(chan_open(fd, NULL, 0, &ch, err, sizeof(err)), 0);
    return ch;
}

static void *kvm_rx_main(void *arg)
{
    struct kvm_rx *r = arg;
    int fd;
    r->rc = net_accept(r->lfd, 60000, &fd);
    if (r->rc < 0)
        return NULL;
    struct chan *ch = plain_chan(fd);
    struct migrate_recv_opts o = {.timeout_ms = 60000};
    r->rc = migrate_receive(r->m, ch, &o, &r->res);
    chan_close(ch);
    return NULL;
}

static void kvm_rx_start(struct kvm_rx *r, struct machine *m)
{
    memset(r, 0, sizeof(*r));
    r->m = m;
    struct sockaddr_in sa;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    assert_int_equal(net_listen(&sa, &r->lfd, &r->port), 0);
    assert_int_equal(pthread_create(&r->t, NULL, kvm_rx_main, r), 0);
}

static int kvm_send(struct guest *g, uint16_t port, const struct migrate_opts *o,
                    struct migrate_report *rep)
{
    struct sockaddr_in sa;
    int fd;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    sa.sin_port = htons(port);
    assert_int_equal(net_connect(&sa, 5000, &fd), 0);
    struct chan *ch = plain_chan(fd);
    int rc = migrate_send(g, ch, o, rep);
    chan_close(ch);
    return rc;
}

static uint64_t ops_now(struct guest *g)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        struct hvg_wl_state st;
        assert_int_equal(guest_vcpu_state(g, i, &st), 0);
        n += st.ops;
    }
    return n;
}

/*
 * A running 2-vCPU KVM guest writing its memory is live-migrated: KVM's
 * dirty log feeds the rounds (the later rounds carry the pages it wrote
 * meanwhile), its vCPUs travel in HVM_CONTEXT, and the receiver resumes it
 * under KVM, where it runs on to its end and the host's replay of every
 * vCPU from the seed matches its memory.  Before that, connections cut at
 * random offsets fail the migration and leave the sender's guest running
 * (it goes on making progress, log-dirty off, audits clean) and nothing on
 * the receiver's machine.
 */
static void test_migrate_live(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct machine *m1 = new_machine(256 * MiB), *m2 = new_machine(256 * MiB);
    struct domain *d;
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(m1, &c, &d), 0);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, HVG_WL_UNIFORM);
    pc.nr_vcpus = 2;
    pc.batch = 300;
    pc.console_fd = -1;
    pc.write_ppm = 500000;
    pc.write_ppm_set = true;
    struct guest *g = start_prog(d, &pc);
    assert_int_equal(guest_start(g), 0);
    wait_ops(g, 5000);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    struct migrate_opts o = {.max_rounds = 3, .timeout_ms = 60000, .audit_digest = true};

    unsigned seed = (unsigned)time(NULL);
    print_message("# seed %u\n", seed);
    srand(seed);
    for (int cut = 0; cut < 3; cut++) {
        struct kvm_rx rx;
        kvm_rx_start(&rx, m2);
        o.fail_after_bytes = 4096 + (uint64_t)rand() % (8 * MiB); /* within round 0 */
        int rc = kvm_send(g, rx.port, &o, rep);
        pthread_join(rx.t, NULL);
        close(rx.lfd);
        if (rc == 0)
            fail_msg("a migration cut after %llu bytes succeeded",
                     (unsigned long long)o.fail_after_bytes);
        assert_false(rep->in_doubt);
        assert_false(guest_log_dirty_on(g));
        assert_true(rx.rc < 0);
        assert_null(rx.res.g);
        migrate_recv_result_free(&rx.res);
        struct frame_stats fs;
        frames_get_stats(m2->frames, &fs);
        assert_int_equal(fs.free_frames, m2->nr_frames);
        /* the sender's guest runs on */
        wait_ops(g, ops_now(g) + 2000);
        audit_all(d);
    }

    o.fail_after_bytes = 0;
    struct kvm_rx rx;
    kvm_rx_start(&rx, m2);
    int rc = kvm_send(g, rx.port, &o, rep);
    pthread_join(rx.t, NULL);
    close(rx.lfd);
    if (rc < 0)
        fail_msg("migration: %s", rep->err);
    if (rx.rc < 0)
        fail_msg("receiver: %s", rx.res.err);
    assert_true(rep->verified);
    assert_non_null(strstr(rep->dirty_source, "KVM"));
    uint64_t later = 0;
    for (unsigned k = 1; k < rep->nr_rounds; k++)
        later += rep->rounds[k].pages_data + rep->rounds[k].pages_zero;
    assert_true(later > 0); /* the writes KVM logged went out again */
    uint64_t at_pause = ops_now(g);
    guest_destroy(g);
    domain_destroy(d);

    struct guest *g2 = rx.res.g;
    assert_non_null(g2);
    assert_int_equal(g2->backend, GUEST_BACKEND_KVM);
    assert_int_equal(ops_now(g2), at_pause);
    char why[256];
    assert_int_equal(guest_start(g2), 0);
    wait_ops(g2, at_pause + 5000);
    assert_int_equal(guest_finish(g2, 120ULL * 1000 * 1000 * 1000), 0);
    if (guest_verify(g2, why, sizeof(why)) < 0)
        fail_msg("verify on the receiver: %s", why);
    print_message("# %u rounds, %llu pages after round 0, migrated after %llu operations, "
                  "verified on the receiver after %llu\n", rep->nr_rounds,
                  (unsigned long long)later, (unsigned long long)at_pause,
                  (unsigned long long)ops_now(g2));
    struct domain *d2 = g2->d;
    guest_destroy(g2);
    audit_all(d2);
    domain_destroy(d2);
    migrate_recv_result_free(&rx.res);
    free(rep);
    machine_destroy(m1);
    machine_destroy(m2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_reason),
        cmocka_unit_test(test_mirror_alignment),
        cmocka_unit_test(test_memslot_limit),
        cmocka_unit_test(test_dirty_log_exact),
        cmocka_unit_test_teardown(test_host_superpages, thp_teardown),
        cmocka_unit_test(test_save_resume),
        cmocka_unit_test(test_migrate_live),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

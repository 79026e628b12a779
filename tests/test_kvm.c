/*
 * test_kvm.c - the kvm vCPU backend against a model: the real guest's
 * writes land in the machine frames the p2m names (every page of the range
 * compared with a host replay of the program, and the guest's checksum);
 * KVM's dirty log equals the set of written pages exactly, round after
 * round, also across a sync that deletes a logged slot; ballooning a 2M
 * region out takes it out of the mirror and the memslots (a guest access
 * exits with KVM_EXIT_MMIO) and gives its frames back, ballooning it in
 * maps it again; defrag moving frames is re-mirrored by touching only the
 * moved region; more RAM runs than memslots empties the mirror until a
 * sync fits again; 1G and 2M leaves are host mappings of the same
 * alignment; `hugevm kvm` checks its own run and fails clearly without
 * /dev/kvm.
 * Every test needing /dev/kvm reports SKIP with the reason when it is
 * missing or unusable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "testutil.h"

#include "defrag.h"
#include "kvm.h"

#define G1 (1ULL << 18) /* gfn of 1 GiB */

#define KVM_OR_SKIP()                                                          \
    do {                                                                       \
        char why_[256];                                                        \
        if (kvm_probe(why_, sizeof(why_)) < 0) {                               \
            print_message("# SKIP reason: %s\n", why_);                        \
            skip();                                                            \
        }                                                                      \
    } while (0)

struct guest {
    struct machine *m;
    struct domain *d;
    struct kvm_vm *vm;
};

/* A domain laid out as an HVM guest of `bytes`, on a machine of
 * `machine_bytes`, mirrored into a KVM VM. */
static void guest_up(struct guest *g, uint64_t bytes, uint64_t machine_bytes)
{
    struct domain_config c;
    char why[256] = "";
    g->m = new_machine(machine_bytes);
    domain_config_default(&c);
    assert_int_equal(domain_create(g->m, &c, &g->d), 0);
    assert_int_equal(domain_populate_guest(g->d, bytes, NULL), 0);
    audit_all(g->d);
    int rc = kvm_vm_create(g->d, NULL, &g->vm, why, sizeof(why));
    if (rc < 0)
        fail_msg("kvm_vm_create: %s (%s)", strerror(-rc), why);
}

static void guest_down(struct guest *g)
{
    kvm_vm_destroy(g->vm);
    audit_all(g->d);
    domain_destroy(g->d);
    machine_destroy(g->m);
}

/* ---- the model ----------------------------------------------------------- */

/* The bytes of [gfn, gfn + pages) as the program leaves them, and the set
 * of pages it wrote. */
struct model {
    gfn_t gfn;
    uint64_t pages;
    uint8_t *mem;
    uint64_t *written;
};

static void model_init(struct model *mo, gfn_t gfn, uint64_t pages)
{
    mo->gfn = gfn;
    mo->pages = pages;
    mo->mem = calloc(pages, PAGE_SIZE);
    mo->written = calloc((pages + 63) / 64, 8);
    assert_non_null(mo->mem);
    assert_non_null(mo->written);
}

static void model_fini(struct model *mo)
{
    free(mo->mem);
    free(mo->written);
}

static void model_write(void *ctx, uint64_t gpa, uint64_t val)
{
    struct model *mo = ctx;
    uint64_t off = gpa - (mo->gfn << PAGE_SHIFT);
    assert_true(off < mo->pages * PAGE_SIZE);
    memcpy(mo->mem + off, &val, sizeof(val));
    mo->written[(off >> PAGE_SHIFT) / 64] |= 1ULL << ((off >> PAGE_SHIFT) % 64);
}

static void model_clear_written(struct model *mo)
{
    memset(mo->written, 0, (mo->pages + 63) / 64 * 8);
}

/* Run w in the guest and in the model; the guest must finish with the
 * model's checksum. */
static void run_both(struct guest *g, struct model *mo, const struct kvm_writer *w)
{
    struct kvm_guest_result r;
    uint64_t sum = kvm_writer_model(w, model_write, mo);
    assert_int_equal(kvm_run_writer(g->vm, w, &r), 0);
    if (r.exit != KVM_GUEST_DONE)
        fail_msg("guest exit %s (KVM exit %u, detail %#llx, rip %#llx, mmio %#llx)",
                 kvm_guest_exit_name(r.exit), r.kvm_exit_reason,
                 (unsigned long long)r.detail, (unsigned long long)r.rip,
                 (unsigned long long)r.mmio_gpa);
    assert_int_equal(r.writes_done, w->writes);
    assert_int_equal(r.checksum, sum);
}

/* Every page of the model's range, read from the machine frame the p2m
 * names and through the mirror, equals the model. */
static void compare_pages(struct guest *g, const struct model *mo)
{
    for (uint64_t i = 0; i < mo->pages; i++) {
        gfn_t gfn = mo->gfn + i;
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(g->d->p2m, gfn, &t, NULL);
        assert_true(p2m_is_ram(t));
        assert_int_equal(kvm_mirror_mfn(g->vm, gfn), mfn);
        const uint8_t *want = mo->mem + i * PAGE_SIZE;
        if (memcmp(machine_ptr(g->m, mfn), want, PAGE_SIZE) != 0)
            fail_msg("gfn %#llx (mfn %#llx) differs from the model",
                     (unsigned long long)gfn, (unsigned long long)mfn);
        assert_memory_equal(kvm_gfn_hva(g->vm, gfn), want, PAGE_SIZE);
    }
}

/* The harvested bitmap names exactly the model's written pages. */
static void compare_dirty(struct guest *g, const struct model *mo, const uint64_t *bm,
                          uint64_t nr_gfns)
{
    uint64_t n = 0;
    for (gfn_t gfn = 0; gfn < nr_gfns; gfn++) {
        bool dirty = bm[gfn / 64] >> (gfn % 64) & 1;
        bool want = false;
        if (gfn >= mo->gfn && gfn < mo->gfn + mo->pages) {
            uint64_t i = gfn - mo->gfn;
            want = mo->written[i / 64] >> (i % 64) & 1;
        }
        if (dirty != want)
            fail_msg("gfn %#llx: dirty log says %d, the model %d", (unsigned long long)gfn,
                     dirty, want);
        n += want;
    }
    (void)g;
    assert_true(n > 0);
}

/* ---- (a) writes land where the p2m says ---------------------------------- */

static void test_writes_land(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct guest g;
    guest_up(&g, 64 * MiB, 128 * MiB);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(g.vm, &mi);
    print_message("# mirror: %llu pages in %llu host mappings, %u memslots of %u, "
                  "leaves 4K %llu 2M %llu 1G %llu, guest page tables with %s pages\n",
                  (unsigned long long)mi.mapped_pages, (unsigned long long)mi.runs, mi.slots,
                  mi.max_slots, (unsigned long long)mi.leaves[0],
                  (unsigned long long)mi.leaves[1], (unsigned long long)mi.leaves[2],
                  mi.guest_order == PAGE_ORDER_1G ? "1G" : "2M");
    assert_int_equal(mi.mapped_pages, g.d->tot_pages);
    /* RAM is [0, 0xa0) and [0xc0, 64M): two slots, the VGA hole in none */
    assert_int_equal(mi.slots, 2);
    struct kvm_slot_info s[4];
    assert_int_equal(kvm_get_slots(g.vm, s, 4), 2);
    assert_int_equal(s[0].gfn, 0);
    assert_int_equal(s[0].pages, VGA_HOLE_GFN);
    assert_int_equal(s[1].gfn, VGA_HOLE_GFN + VGA_HOLE_NR);
    assert_int_equal(s[1].gfn + s[1].pages, 64 * MiB >> PAGE_SHIFT);
    assert_null(kvm_gfn_hva(g.vm, VGA_HOLE_GFN));

    /* 2M leaves */
    struct model mo;
    model_init(&mo, 0x200, 2048);
    struct kvm_writer w = {.seed = 42, .gfn = 0x200, .pages = 2048, .writes = 20000};
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);
    model_fini(&mo);
    audit_all(g.d);

    /* the 4K leaves of the first 2M, above the VGA hole */
    model_init(&mo, 0xc0, 0x140);
    w = (struct kvm_writer){.seed = 7, .gfn = 0xc0, .pages = 0x140, .writes = 3000};
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);
    model_fini(&mo);

    /* bad ranges are refused before anything runs */
    struct kvm_guest_result r;
    w = (struct kvm_writer){.seed = 1, .gfn = KVM_BOOT_GFN, .pages = 1, .writes = 1};
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), -EINVAL);
    w = (struct kvm_writer){.seed = 1, .gfn = 0x200, .pages = 0, .writes = 1};
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), -EINVAL);
    w = (struct kvm_writer){.seed = 1, .gfn = mi.max_gfn - 1, .pages = 2, .writes = 1};
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), -EINVAL);
    guest_down(&g);
}

/* ---- (b) the dirty log is exact ------------------------------------------ */

static void test_dirty_log(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct guest g;
    guest_up(&g, 64 * MiB, 128 * MiB);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(g.vm, &mi);
    print_message("# dirty log: KVM_CLEAR_DIRTY_LOG %s, dirty ring %s\n",
                  mi.manual_protect ? "in use" : "not available (get-and-clear)",
                  mi.dirty_ring ? "offered (unused)" : "not offered");
    uint64_t nr = mi.max_gfn, *bm = calloc((nr + 63) / 64, 8), dirty;
    assert_non_null(bm);
    assert_int_equal(kvm_harvest(g.vm, bm, nr, NULL), -EINVAL); /* off */
    assert_int_equal(kvm_set_log_dirty(g.vm, true), 0);
    assert_int_equal(kvm_harvest(g.vm, bm, nr - 1, NULL), -EINVAL);
    assert_int_equal(kvm_harvest(g.vm, bm, nr, &dirty), 0);
    assert_int_equal(dirty, 0); /* the boot pages are written by the host */

    struct model mo;
    model_init(&mo, 0x200, 4096);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct kvm_writer w = {.seed = seed * 1000003, .gfn = 0x200, .pages = 4096,
                               .writes = 1500 * seed};
        model_clear_written(&mo);
        run_both(&g, &mo, &w);
        assert_int_equal(kvm_harvest(g.vm, bm, nr, &dirty), 0);
        print_message("# round %llu: %llu writes, %llu pages dirty\n",
                      (unsigned long long)seed, (unsigned long long)w.writes,
                      (unsigned long long)dirty);
        compare_dirty(&g, &mo, bm, nr);
        compare_pages(&g, &mo);
        audit_all(g.d);
    }
    /* nothing ran: nothing dirty */
    assert_int_equal(kvm_harvest(g.vm, bm, nr, &dirty), 0);
    assert_int_equal(dirty, 0);

    /* A sync that deletes the logged slot (a balloon hole in its middle)
     * keeps its dirty bits for the next harvest. */
    model_clear_written(&mo);
    struct kvm_writer w = {.seed = 99, .gfn = 0x200, .pages = 4096, .writes = 2000};
    run_both(&g, &mo, &w);
    assert_int_equal(domain_decrease_reservation(g.d, 0x2000, 512), 512);
    assert_true(kvm_sync(g.vm) > 0);
    struct kvm_vm_stats st;
    kvm_get_stats(g.vm, &st);
    assert_true(st.pending_dirty > 0);
    assert_int_equal(kvm_harvest(g.vm, bm, nr, &dirty), 0);
    compare_dirty(&g, &mo, bm, nr);
    /* the slots created by the sync log too */
    model_clear_written(&mo);
    w.seed = 100;
    run_both(&g, &mo, &w);
    assert_int_equal(kvm_harvest(g.vm, bm, nr, &dirty), 0);
    compare_dirty(&g, &mo, bm, nr);
    assert_int_equal(kvm_set_log_dirty(g.vm, false), 0);
    audit_all(g.d);
    model_fini(&mo);
    free(bm);
    guest_down(&g);
}

/* ---- (c) balloon out and in ---------------------------------------------- */

/* The /proc/self/maps protection of the mapping containing addr ("---p"
 * for the PROT_NONE reservation, "rw-s" for mirrored RAM). */
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

static void note_gpa(void *ctx, uint64_t gpa, uint64_t val)
{
    (void)val;
    *(uint64_t *)ctx = gpa;
}

static void test_balloon_out_in(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct guest g;
    guest_up(&g, 64 * MiB, 128 * MiB);
    const gfn_t hole = 0x1000; /* 16 MiB: a 2M leaf */
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(g.vm, &mi);
    uint8_t *hva = (uint8_t *)(uintptr_t)mi.base + (hole << PAGE_SHIFT);
    assert_ptr_equal(kvm_gfn_hva(g.vm, hole), hva);

    /* the guest writes there first */
    struct model mo;
    model_init(&mo, hole, 512);
    struct kvm_writer w = {.seed = 5, .gfn = hole, .pages = 512, .writes = 1000};
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);

    enum p2m_type t;
    unsigned order;
    mfn_t mfn = p2m_get_entry(g.d->p2m, hole, &t, &order);
    assert_int_equal(order, PAGE_ORDER_2M);
    struct frame_stats fs0, fs1;
    frames_get_stats(g.m->frames, &fs0);
    assert_int_equal(domain_decrease_reservation(g.d, hole, 512), 512);
    frames_get_stats(g.m->frames, &fs1);
    assert_int_equal(fs1.free_frames, fs0.free_frames + 512);
    for (mfn_t x = mfn; x < mfn + 512; x++)
        assert_int_equal(frame_owner(g.m->frames, x, NULL), DOMID_INVALID);
    audit_all(g.d);

    /* not synced yet: the guest must not run on the stale mirror */
    struct kvm_guest_result r;
    assert_true(kvm_sync_needed(g.vm));
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), -ESTALE);
    assert_int_equal(kvm_sync(g.vm), 512);
    assert_false(kvm_sync_needed(g.vm));
    assert_int_equal(kvm_sync(g.vm), 0); /* nothing left to change */

    /* the mirror no longer maps it ... */
    assert_null(kvm_gfn_hva(g.vm, hole));
    assert_int_equal(kvm_mirror_mfn(g.vm, hole + 511), INVALID_MFN);
    char perms[5];
    uint64_t s, e, off;
    assert_true(maps_lookup(hva, perms, &s, &e, &off));
    assert_string_equal(perms, "---p");
    assert_true(s <= (uint64_t)(uintptr_t)hva && e >= (uint64_t)(uintptr_t)(hva + 2 * MiB));
    /* ... no memslot covers it ... */
    struct kvm_slot_info sl[8];
    unsigned n = kvm_get_slots(g.vm, sl, 8);
    assert_int_equal(n, 3);
    for (unsigned i = 0; i < n; i++)
        assert_true(sl[i].gfn + sl[i].pages <= hole || sl[i].gfn >= hole + 512);
    /* ... and a guest write there exits to the host as MMIO */
    w = (struct kvm_writer){.seed = 6, .gfn = hole, .pages = 512, .writes = 10};
    uint64_t first_gpa = 0;
    struct kvm_writer one = w;
    one.writes = 1;
    (void)kvm_writer_model(&one, note_gpa, &first_gpa);
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), 0);
    assert_int_equal(r.exit, KVM_GUEST_MMIO);
    assert_true(r.mmio_write);
    assert_int_equal(r.mmio_len, 8);
    assert_int_equal(r.mmio_gpa, first_gpa);
    assert_true(r.mmio_gpa >= hole << PAGE_SHIFT && r.mmio_gpa < (hole + 512) << PAGE_SHIFT);
    assert_int_equal(r.writes_done, 0);
    print_message("# guest write to the ballooned 2M: KVM_EXIT_MMIO at gpa %#llx\n",
                  (unsigned long long)r.mmio_gpa);
    /* the rest of the guest still runs */
    struct model mo2;
    model_init(&mo2, 0x200, 1024);
    w = (struct kvm_writer){.seed = 8, .gfn = 0x200, .pages = 1024, .writes = 2000};
    run_both(&g, &mo2, &w);
    compare_pages(&g, &mo2);
    model_fini(&mo2);

    /* balloon in: mapped again, to new (zeroed) frames */
    assert_int_equal(domain_increase_reservation(g.d, hole, 1, PAGE_ORDER_2M), 0);
    audit_all(g.d);
    assert_true(kvm_sync_needed(g.vm));
    assert_int_equal(kvm_sync(g.vm), 512);
    assert_non_null(kvm_gfn_hva(g.vm, hole));
    assert_int_equal(kvm_get_slots(g.vm, sl, 8), 2);
    memset(mo.mem, 0, 512 * PAGE_SIZE);
    w = (struct kvm_writer){.seed = 9, .gfn = hole, .pages = 512, .writes = 1000};
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);
    model_fini(&mo);
    guest_down(&g);
}

/* ---- defrag moves frames: only the moved region is mapped again --------- */

static void test_defrag_remap(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct guest g;
    guest_up(&g, 64 * MiB, 128 * MiB);
    const gfn_t blk = 0x400, odd = 0x450;
    struct model mo;
    model_init(&mo, blk, 512);
    struct kvm_writer w = {.seed = 11, .gfn = blk, .pages = 512, .writes = 3000};
    run_both(&g, &mo, &w);

    /* two 4K pages of the 2M leaf out and back in, in the other order:
     * they swap frames, the block stays 4K leaves whose frames are not one
     * run (a defrag candidate) */
    mfn_t m0 = p2m_get_entry(g.d->p2m, blk, NULL, NULL);
    assert_int_equal(domain_decrease_reservation(g.d, odd, 2), 2);
    assert_int_equal(domain_increase_reservation(g.d, odd + 1, 1, PAGE_ORDER_4K), 0);
    assert_int_equal(domain_increase_reservation(g.d, odd, 1, PAGE_ORDER_4K), 0);
    memset(mo.mem + (odd - blk) * PAGE_SIZE, 0, 2 * PAGE_SIZE);
    unsigned order;
    mfn_t m1 = p2m_get_entry(g.d->p2m, odd, NULL, &order);
    assert_int_equal(order, PAGE_ORDER_4K);
    assert_int_not_equal(m1, m0 + (odd - blk));
    audit_all(g.d);
    assert_true(kvm_sync(g.vm) >= 2);
    assert_int_equal(kvm_mirror_mfn(g.vm, odd), m1);
    w.seed = 12;
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);

    struct kvm_vm_stats st0, st1;
    kvm_get_stats(g.vm, &st0);
    struct defrag_stats ds = {0};
    assert_int_equal(defrag_run(g.d, blk, 512, PAGE_ORDER_2M, 0, &ds), 0);
    assert_int_equal(ds.merged_2m, 1);
    mfn_t mfn = p2m_get_entry(g.d->p2m, blk, NULL, &order);
    assert_int_equal(order, PAGE_ORDER_2M);
    audit_all(g.d);
    assert_true(kvm_sync_needed(g.vm));
    assert_int_equal(kvm_sync(g.vm), 512); /* the moved region, nothing else */
    kvm_get_stats(g.vm, &st1);
    assert_int_equal(st1.pages_mapped - st0.pages_mapped, 512);
    assert_int_equal(kvm_mirror_mfn(g.vm, blk), mfn);
    compare_pages(&g, &mo); /* the copy is what the guest sees */
    w.seed = 13;
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo); /* and its writes land in the new frames */
    model_fini(&mo);
    guest_down(&g);
}

/* ---- memslots are bounded ------------------------------------------------ */

/* More RAM runs than memslots: the sync fails with -ENOSPC and empties the
 * mirror (it may map frames the domain gave back), the guest is refused
 * until a sync succeeds again. */
static void test_memslot_limit(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    struct guest g;
    struct domain_config c;
    char why[256] = "";
    g.m = new_machine(128 * MiB);
    domain_config_default(&c);
    assert_int_equal(domain_create(g.m, &c, &g.d), 0);
    assert_int_equal(domain_populate_guest(g.d, 64 * MiB, NULL), 0);
    struct kvm_vm_opts o = {.max_slots = 3};
    int rc = kvm_vm_create(g.d, &o, &g.vm, why, sizeof(why));
    if (rc < 0)
        fail_msg("kvm_vm_create: %s (%s)", strerror(-rc), why);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(g.vm, &mi);
    assert_int_equal(mi.max_slots, 3);
    assert_int_equal(mi.slots, 2);
    assert_int_equal(domain_decrease_reservation(g.d, 0x1000, 512), 512);
    assert_int_equal(kvm_sync(g.vm), 512);
    kvm_mirror_get_info(g.vm, &mi);
    assert_int_equal(mi.slots, 3);
    /* a fourth RAM run does not fit */
    assert_int_equal(domain_decrease_reservation(g.d, 0x2000, 512), 512);
    assert_int_equal(kvm_sync(g.vm), -ENOSPC);
    assert_true(kvm_sync_needed(g.vm));
    kvm_mirror_get_info(g.vm, &mi);
    assert_int_equal(mi.slots, 0);
    assert_int_equal(mi.mapped_pages, 0);
    assert_null(kvm_gfn_hva(g.vm, 0x2000));
    struct kvm_guest_result r;
    struct kvm_writer w = {.seed = 1, .gfn = 0x200, .pages = 512, .writes = 10};
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), -ESTALE);
    audit_all(g.d);
    /* back to three runs: the mirror is rebuilt and the guest runs */
    assert_int_equal(domain_increase_reservation(g.d, 0x2000, 1, PAGE_ORDER_2M), 0);
    assert_true(kvm_sync(g.vm) > 0);
    kvm_mirror_get_info(g.vm, &mi);
    assert_int_equal(mi.slots, 3);
    assert_int_equal(mi.mapped_pages, g.d->tot_pages);
    struct model mo;
    model_init(&mo, 0x200, 512);
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);
    model_fini(&mo);
    guest_down(&g);
}

/* ---- (d) superpages are host mappings of the same alignment ------------- */

struct align_ctx {
    struct guest *g;
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
    uint8_t *hva = kvm_gfn_hva(a->g->vm, gfn);
    assert_non_null(hva);
    /* the host address and the memfd offset are aligned to the leaf */
    assert_int_equal((uintptr_t)hva & (size - 1), 0);
    assert_int_equal(machine_offset(mfn) & (size - 1), 0);
    /* one host mapping covers the whole leaf, at the leaf's frames */
    char perms[5];
    uint64_t s, end, off;
    assert_true(maps_lookup(hva, perms, &s, &end, &off));
    assert_string_equal(perms, "rw-s");
    assert_true(end >= (uint64_t)(uintptr_t)hva + size);
    assert_int_equal(off + ((uint64_t)(uintptr_t)hva - s), machine_offset(mfn));
    /* and it is the same memory as the machine's */
    uint64_t marker = 0x5eed0000ULL + gfn, v;
    memcpy((uint8_t *)machine_ptr(a->g->m, mfn) + size - 8, &marker, 8);
    memcpy(&v, hva + size - 8, 8);
    assert_int_equal(v, marker);
    memset(hva + size - 8, 0, 8);
    a->checked[order_level(order)]++;
    return 0;
}

struct wlist {
    uint64_t (*v)[3]; /* gpa, value, sequence */
    size_t n;
};

static void wlist_add(void *ctx, uint64_t gpa, uint64_t val)
{
    struct wlist *l = ctx;
    l->v[l->n][0] = gpa;
    l->v[l->n][1] = val;
    l->v[l->n][2] = l->n;
    l->n++;
}

static int by_gpa_seq(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    return x[2] < y[2] ? -1 : x[2] > y[2];
}

static void test_superpage_alignment(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    /* 64 MiB below the hole (2M leaves) and one 1G leaf at 1 GiB: 1 GiB
     * of guest-physical space, of which the test touches a few MiB. */
    struct guest g;
    struct domain_config c;
    g.m = new_machine(2 * GiB);
    domain_config_default(&c);
    assert_int_equal(domain_create(g.m, &c, &g.d), 0);
    assert_int_equal(domain_populate_guest(g.d, 64 * MiB, NULL), 0);
    assert_int_equal(domain_populate(g.d, G1, G1, NULL), 0);
    assert_int_equal(domain_pages_1g(g.d), 1);
    assert_true(domain_pages_2m(g.d) >= 31);
    audit_all(g.d);
    char why[256] = "";
    int rc = kvm_vm_create(g.d, NULL, &g.vm, why, sizeof(why));
    if (rc < 0)
        fail_msg("kvm_vm_create: %s (%s)", strerror(-rc), why);
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(g.vm, &mi);
    assert_int_equal(mi.base & (GiB - 1), 0);
    assert_int_equal(mi.leaves[2], 1);
    assert_int_equal(mi.leaves[1], domain_pages_2m(g.d));

    struct align_ctx a = {.g = &g};
    assert_int_equal(p2m_for_each_leaf(g.d->p2m, 0, P2M_GFN_LIMIT, check_leaf, &a), 0);
    assert_int_equal(a.checked[2], 1);
    assert_int_equal(a.checked[1], domain_pages_2m(g.d));

    /* the guest writes across the 1G leaf */
    struct kvm_writer w = {.seed = 77, .gfn = G1, .pages = G1, .writes = 4000};
    struct wlist l = {.v = calloc(w.writes, sizeof(*l.v))};
    assert_non_null(l.v);
    struct kvm_guest_result r;
    uint64_t sum = kvm_writer_model(&w, wlist_add, &l);
    assert_int_equal(kvm_run_writer(g.vm, &w, &r), 0);
    assert_int_equal(r.exit, KVM_GUEST_DONE);
    assert_int_equal(r.checksum, sum);
    qsort(l.v, l.n, sizeof(*l.v), by_gpa_seq);
    mfn_t base = p2m_get_entry(g.d->p2m, G1, NULL, NULL);
    for (size_t i = 0; i < l.n; i++) {
        if (i + 1 < l.n && l.v[i + 1][0] == l.v[i][0])
            continue; /* only the last write to a word survives */
        uint64_t v;
        memcpy(&v, (uint8_t *)machine_ptr(g.m, base) + (l.v[i][0] - (G1 << PAGE_SHIFT)), 8);
        assert_int_equal(v, l.v[i][1]);
    }
    free(l.v);

    struct kvm_host_mapping hm;
    assert_int_equal(kvm_host_mapping_measure(g.vm, &hm), 0);
    print_message("# mirror: %llu host mappings, %llu KiB resident, %llu KiB PMD-mapped; "
                  "shmem THP %s\n",
                  (unsigned long long)hm.vmas, (unsigned long long)(hm.rss_bytes >> 10),
                  (unsigned long long)(hm.pmd_mapped_bytes >> 10), thp_shmem_name(g.m->thp));
    assert_true(hm.rss_bytes > 0);
    uint64_t kp[3];
    if (kvm_mmu_pages(g.vm, kp) == 0)
        print_message("# KVM's mappings: pages_4k %llu pages_2m %llu pages_1g %llu\n",
                      (unsigned long long)kp[0], (unsigned long long)kp[1],
                      (unsigned long long)kp[2]);
    if (!thp_shmem_usable(g.m->thp)) {
        print_message("# shmem THP is off: the mirror stays 4K (PMD-mapped must be 0)\n");
        assert_int_equal(hm.pmd_mapped_bytes, 0);
    }
    guest_down(&g);
}

/* With shmem THP usable, the guest's touched 2M leaves become PMD-mapped
 * host pages.  Runs when the host allows it, or with HUGEVM_KVM_THP=1,
 * which switches shmem_enabled to "advise" for this test and back. */
static enum thp_shmem thp_restore = THP_SHMEM_UNKNOWN;

/* Puts shmem_enabled back however the test ended. */
static int thp_teardown(void **state)
{
    (void)state;
    if (thp_restore == THP_SHMEM_UNKNOWN)
        return 0;
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "w");
    if (f) {
        fputs(thp_shmem_name(thp_restore), f);
        fclose(f);
    }
    bool ok = thp_shmem_read() == thp_restore;
    thp_restore = THP_SHMEM_UNKNOWN;
    return ok ? 0 : -1;
}

static void test_thp_pmd_mapped(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    enum thp_shmem before = thp_shmem_read();
    if (!thp_shmem_usable(before)) {
        const char *env = getenv("HUGEVM_KVM_THP");
        if (!env || strcmp(env, "1") != 0) {
            print_message("# SKIP reason: shmem THP is '%s' on this host; HUGEVM_KVM_THP=1 lets "
                          "this test switch it to 'advise' and back\n", thp_shmem_name(before));
            skip();
        }
        thp_restore = before;
        int rc = thp_shmem_try_enable();
        if (rc < 0) {
            print_message("# SKIP reason: cannot enable shmem THP: %s\n", strerror(-rc));
            skip();
        }
    }
    struct guest g;
    guest_up(&g, 64 * MiB, 128 * MiB);
    struct model mo;
    model_init(&mo, 0x400, 4096);
    /* touch every page of 16 MiB so whole 2M blocks fault */
    struct kvm_writer w = {.seed = 3, .gfn = 0x400, .pages = 4096, .writes = 60000};
    run_both(&g, &mo, &w);
    compare_pages(&g, &mo);
    struct kvm_host_mapping hm;
    assert_int_equal(kvm_host_mapping_measure(g.vm, &hm), 0);
    print_message("# shmem THP %s: %llu KiB resident through the mirror, %llu KiB PMD-mapped\n",
                  thp_shmem_name(g.m->thp), (unsigned long long)(hm.rss_bytes >> 10),
                  (unsigned long long)(hm.pmd_mapped_bytes >> 10));
    uint64_t kp[3];
    bool kp_ok = kvm_mmu_pages(g.vm, kp) == 0;
    if (kp_ok)
        print_message("# KVM's mappings: pages_4k %llu pages_2m %llu pages_1g %llu\n",
                      (unsigned long long)kp[0], (unsigned long long)kp[1],
                      (unsigned long long)kp[2]);
    model_fini(&mo);
    guest_down(&g);
    /* p2m 2M leaf -> PMD-mapped host page -> 2M KVM mapping */
    assert_true(hm.pmd_mapped_bytes > 0);
    if (kp_ok)
        assert_true(kp[1] > 0);
}

/* ---- the command line --------------------------------------------------- */

/* Run a shell command, its stdout (and stderr) into buf; exit status. */
static int capture(const char *cmd, char *buf, size_t len)
{
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `hugevm kvm --json` checks its own run; without /dev/kvm (hidden in a
 * private mount namespace) it stops with a clear error. */
static void test_cli(void **state)
{
    (void)state;
    KVM_OR_SKIP();
    char hv[PATH_MAX + 32], cmd[PATH_MAX + 256];
    static char out[1 << 16];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary was not found (%s)\n", hv);
        skip();
    }
    snprintf(cmd, sizeof(cmd), "%s kvm --guest-mem 32M --writes 20000 --seed 5 --log-dirty --json",
             hv);
    assert_int_equal(capture(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "\"reason\":\"done (out)\""));
    assert_non_null(strstr(out, "\"checksum_match\":true"));
    assert_non_null(strstr(out, "\"mismatches\":0,"));
    assert_non_null(strstr(out, "\"matches_model\":true"));
    assert_non_null(strstr(out, "\"audit\":\"ok\""));
    snprintf(cmd, sizeof(cmd), "%s kvm --guest-mem 32M --writes 1000", hv);
    assert_int_equal(capture(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "host shmem THP:"));
    assert_non_null(strstr(out, "memslots: 2 used"));

    snprintf(cmd, sizeof(cmd),
             "unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec %s kvm' 2>&1", hv);
    if (geteuid() != 0 || system("unshare -m true >/dev/null 2>&1") != 0) {
        print_message("# no private mount namespace here: the no-/dev/kvm error path is "
                      "not exercised\n");
        return;
    }
    assert_int_equal(capture(cmd, out, sizeof(out)), 1);
    print_message("# without /dev/kvm: %s", out);
    assert_non_null(strstr(out, "hugevm: kvm: /dev/kvm cannot run guests here"));
}

/* Without /dev/kvm the probe says why instead of failing later. */
static void test_probe_reason(void **state)
{
    (void)state;
    char why[256] = "";
    int rc = kvm_probe(why, sizeof(why));
    print_message("# kvm_probe: %s\n", rc == 0 ? "usable" : why);
    if (rc < 0)
        assert_true(why[0] != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_reason),
        cmocka_unit_test(test_writes_land),
        cmocka_unit_test(test_dirty_log),
        cmocka_unit_test(test_balloon_out_in),
        cmocka_unit_test(test_defrag_remap),
        cmocka_unit_test(test_memslot_limit),
        cmocka_unit_test(test_superpage_alignment),
        cmocka_unit_test_teardown(test_thp_pmd_mapped, thp_teardown),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

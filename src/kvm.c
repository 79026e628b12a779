/*
 * kvm.c - the `kvm` vCPU backend (see kvm.h for the model and contracts).
 *
 * The mirror is kept as a sorted array of runs {gfn, mfn, nr}: maximal
 * stretches that are RAM and contiguous in both gfn and mfn, each mapped by
 * one mmap.  A sync builds the new array from the p2m and compares it with
 * the old one on the gfn axis:
 *   - a stretch RAM before and not now goes back to PROT_NONE;
 *   - a stretch RAM now whose frame differs (or that was not RAM) is mapped
 *     again with MAP_FIXED (which replaces the old pages atomically);
 *   - everything else is left alone, so a guest whose p2m did not change
 *     costs one p2m walk per sync.
 * Memslots are derived from the runs (adjacent runs merge into one slot);
 * slots that differ from the old set are deleted first, then the mappings
 * change, then the new slots are created.  A failure half-way empties the
 * mirror (every slot deleted, the range PROT_NONE again) and marks it
 * stale, so no guest runs on a half-built mirror.
 *
 * Invariants (after a successful sync): every RAM gfn below max_gfn is
 * mapped at base + gfn * 4K to machine offset mfn * 4K with the p2m's mfn;
 * every other gfn is PROT_NONE; slots cover exactly the RAM gfns.
 */
#include "kvm.h"

#include <fcntl.h>
#include <signal.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "domain.h"
#include "machine.h"
#include "p2m.h"
#include "../guest/hugevm_guest.h"

#define GFN_PER_GIB (GiB >> PAGE_SHIFT)
/* KVM limits a slot to 2^31 - 1 pages; keep slots well below. */
#define SLOT_MAX_PAGES (1ULL << 30)

/*
 * System pages (gfns, below HVG_SYSTEM_END, clear of the guest ABI's
 * parameter pages 0x80-0x9f, program 0x100-0x1ff and stacks 0x200-0x3ff):
 * the IDT and its exception stubs, the page tables, and per vCPU a page
 * with its GDT and TSS and a CPL 0 stack for exception delivery.
 */
#define SYS_IDT 0x10ULL
#define SYS_STUBS 0x11ULL
#define SYS_PML4 0x12ULL
#define SYS_PDPT 0x13ULL
#define SYS_PT0 0x14ULL   /* 4K leaves of the first 2M */
#define SYS_PD0 0x15ULL   /* page directory of GiB i at SYS_PD0 + i */
#define SYS_PD_MAX (0x80ULL - SYS_PD0)
#define SYS_GDT(v) (0xc0ULL + (v)) /* GDT at 0, TSS at SYS_TSS_OFF */
#define SYS_KSTACK(v) (0xe0ULL + (v))
#define SYS_TSS_OFF 0x100u
#define TSS_IOMAP 0x68u                   /* I/O bitmap offset in the TSS */
#define TSS_LIMIT (TSS_IOMAP + 256 / 8)   /* ports 0-255, then a 0xff byte */
#define SEL_KCODE 0x08u
#define SEL_KDATA 0x10u
#define SEL_UCODE 0x18u
#define SEL_UDATA 0x20u
#define SEL_TSS 0x28u
#define NR_VECTORS 32u
#define STUB_BYTES 16u
#define STUB_COMMON (NR_VECTORS * STUB_BYTES)
#ifndef KVM_X86_QUIRK_SLOT_ZAP_ALL
#define KVM_X86_QUIRK_SLOT_ZAP_ALL (1 << 7)
#endif
/* Page-table entry bits: present, writable, user, accessed, dirty, page
 * size. */
#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_US 0x4ULL
#define PTE_A 0x20ULL
#define PTE_D 0x40ULL
#define PTE_PS 0x80ULL
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US | PTE_A)
#define PTE_4K (PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D)
#define PTE_LEAF (PTE_4K | PTE_PS)
#define PTE_SYS (PTE_P | PTE_RW | PTE_A | PTE_D) /* supervisor only */
#define CR4_GUEST 0x620ULL     /* OSXMMEXCPT OSFXSR PAE */
#define CR4_OSXSAVE 0x40000ULL
/* XCR0 features a fresh vCPU gets where KVM offers them: x87, SSE, AVX,
 * and AVX-512's three together */
#define XCR0_BASE 0x7ULL
#define XCR0_AVX512 0xe0ULL
/* MXCSR at reset: every SIMD exception masked */
#define MXCSR_RESET 0x1f80u

struct mrun {
    gfn_t gfn;
    mfn_t mfn;    /* RAM: the first frame */
    uint64_t nr;
    uint64_t pod; /* 1: PoD gfns, a userfaultfd placeholder (no frame) */
};

struct msnap {
    struct msnap *next;
    size_t n;
    struct mrun v[];
};

struct mslot {
    unsigned id;
    gfn_t gfn;
    uint64_t pages;
};

struct kcpu {
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    int thread_known;
    struct kvm_dirty_gfn *ring; /* the dirty ring (NULL: the bitmap is used) */
    uint32_t fetch;             /* next ring entry to collect */
};

struct kvm_vm {
    struct guest_exec x; /* first: the guest layer's view */
    struct domain *d;
    int kvm_fd, vm_fd;
    size_t run_size;
    struct kcpu cpu[HVG_MAX_VCPUS];
    unsigned nr_vcpus;
    struct kvm_cpuid2 *cpuid;
    bool has_1g, zap_all_off;
    /* vCPU state beyond kvm_regs/sregs/fpu (guest_exec.h: struct
     * hvctx_prog_ext): the XSAVE area's size (KVM_CAP_XSAVE2's, else 4096
     * with KVM_CAP_XSAVE, else 0: none), whether KVM_GET_XSAVE2 reads it;
     * XCRs; the MSRs of HVCTX_PROG_MSR_LIST this KVM lists; CR4.OSXSAVE
     * and XCR0 for fresh vCPUs (where XSAVE works: the guest may use AVX) */
    uint32_t xsave_size;
    bool xsave2, has_xcrs, osxsave;
    uint64_t xcr0;
    uint32_t msr_idx[HVCTX_MAX_MSRS];
    unsigned nr_msrs;
    unsigned phys_bits;
    uint8_t *base;     /* reserved range, 1 GiB aligned */
    uint64_t bytes;    /* max_gfn * 4K */
    gfn_t max_gfn;
    struct mrun *runs; /* the mirror, sorted by gfn */
    size_t nruns;
    uint64_t leaves[3], mapped_pages;
    struct mslot *slots; /* sorted by gfn */
    unsigned nslots, max_slots;
    uint8_t *slot_used;  /* max_slots flags */
    bool log_dirty, manual_protect, dirty_ring;
    uint32_t ring_entries;   /* per vCPU, when dirty_ring */
    pthread_mutex_t ring_mu; /* collecting the rings (vCPU on ring full, harvest) */
    uint64_t *pending;   /* dirty bits of slots deleted while logging */
    uint64_t *dbuf;      /* one slot's KVM dirty bitmap */
    size_t dbuf_words;
    unsigned guest_order;
    bool stale;
    uint64_t synced_gen, synced_tot, synced_pod;
    /* PoD placeholders' missing-page faults (also those KVM takes on them
     * for the guest): -1 without userfaultfd here */
    int uffd;
    /* the runs as lock-free readers see them (gpa_ptr from vCPU and host
     * threads while the PoD fault server changes the mirror): replaced
     * whole; replaced ones are freed by the next sync (vCPUs held) */
    struct msnap *snap, *retired;
    size_t retired_bytes;
    struct kvm_vm_stats st;
};

static int xioctl(int fd, unsigned long req, void *arg)
{
    int rc;
    do
        rc = ioctl(fd, req, arg);
    while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    return rc < 0 ? -errno : rc;
}

static void say(char *why, size_t len, const char *fmt, ...) HV_PRINTF(3, 4);
static void say(char *why, size_t len, const char *fmt, ...)
{
    if (!why || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
}

static int open_kvm(char *why, size_t len)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        say(why, len, "/dev/kvm: %s", strerror(e));
        return -ENODEV;
    }
    int v = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (v < 0) {
        int e = errno;
        say(why, len, "/dev/kvm: KVM_GET_API_VERSION: %s (not a KVM device?)", strerror(e));
        close(fd);
        return -ENODEV;
    }
    if (v != KVM_API_VERSION) {
        say(why, len, "/dev/kvm: KVM API version %d, need %d", v, KVM_API_VERSION);
        close(fd);
        return -ENODEV;
    }
    return fd;
}

int kvm_probe(char *why, size_t len)
{
    int fd = open_kvm(why, len);
    if (fd < 0)
        return fd;
    int vm = ioctl(fd, KVM_CREATE_VM, 0);
    if (vm < 0) {
        int e = errno;
        say(why, len, "/dev/kvm: KVM_CREATE_VM: %s", strerror(e));
        close(fd);
        return -ENODEV;
    }
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int e = errno;
    if (vcpu < 0)
        say(why, len, "/dev/kvm: KVM_CREATE_VCPU: %s", strerror(e));
    else
        close(vcpu);
    close(vm);
    close(fd);
    return vcpu < 0 ? -ENODEV : 0;
}

/* ---- the mirror ---------------------------------------------------------- */

static inline uint8_t *gfn_va(const struct kvm_vm *vm, gfn_t gfn)
{
    return vm->base + (gfn << PAGE_SHIFT);
}

/* Index of the first run whose end is above g (n when none). */
static size_t run_upper(const struct mrun *v, size_t n, gfn_t g)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid].gfn + v[mid].nr <= g)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The run (RAM or placeholder) holding g, in the writers' view. */
static const struct mrun *any_find(const struct kvm_vm *vm, gfn_t g)
{
    size_t i = run_upper(vm->runs, vm->nruns, g);
    return i < vm->nruns && vm->runs[i].gfn <= g ? &vm->runs[i] : NULL;
}

/* The RAM run holding g, in the published view (lock-free). */
static const struct mrun *run_find(const struct kvm_vm *vm, gfn_t g)
{
    const struct msnap *sn = __atomic_load_n(&vm->snap, __ATOMIC_ACQUIRE);
    if (!sn)
        return NULL;
    size_t i = run_upper(sn->v, sn->n, g);
    const struct mrun *r = i < sn->n && sn->v[i].gfn <= g ? &sn->v[i] : NULL;
    return r && !r->pod ? r : NULL;
}

/* Publish the writers' runs to the readers (the old view is retired). */
static void snap_publish(struct kvm_vm *vm)
{
    struct msnap *sn = malloc(sizeof(*sn) + (vm->nruns ? vm->nruns : 1) * sizeof(struct mrun));
    if (sn) {
        sn->next = NULL;
        sn->n = vm->nruns;
        memcpy(sn->v, vm->runs, vm->nruns * sizeof(struct mrun));
    }
    /* out of memory: readers see no RAM (they fail cleanly) rather than an
     * old view */
    struct msnap *old = __atomic_exchange_n(&vm->snap, sn, __ATOMIC_ACQ_REL);
    if (old) {
        old->next = vm->retired;
        vm->retired = old;
        vm->retired_bytes += sizeof(*old) + old->n * sizeof(struct mrun);
    }
}

/* Every vCPU held: no reader can be inside a retired view. */
static void snap_free_retired(struct kvm_vm *vm)
{
    while (vm->retired) {
        struct msnap *r = vm->retired;
        vm->retired = r->next;
        free(r);
    }
    vm->retired_bytes = 0;
}

mfn_t kvm_mirror_mfn(const struct kvm_vm *vm, gfn_t gfn)
{
    const struct mrun *r = run_find(vm, gfn);
    return r ? r->mfn + (gfn - r->gfn) : INVALID_MFN;
}

void *kvm_gfn_hva(const struct kvm_vm *vm, gfn_t gfn)
{
    return run_find(vm, gfn) ? gfn_va(vm, gfn) : NULL;
}

struct collect {
    gfn_t max_gfn;
    bool placeholders; /* PoD leaves too (there is a userfaultfd) */
    struct mrun *v;
    size_t n, cap;
    uint64_t leaves[3], pages;
};

static int collect_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                        enum p2m_type type, ept_entry_t *e)
{
    struct collect *c = ctx;
    (void)e;
    bool pod = type == p2m_pod && c->placeholders;
    if (!p2m_is_ram(type) && !pod)
        return 0;
    uint64_t nr = order_pages(order);
    if (gfn + nr > c->max_gfn)
        return -ERANGE;
    if (pod) {
        mfn = 0;
    } else {
        c->leaves[order_level(order)]++;
        c->pages += nr;
    }
    if (c->n) {
        struct mrun *l = &c->v[c->n - 1];
        if (l->gfn + l->nr == gfn && l->pod == pod && (pod || l->mfn + l->nr == mfn)) {
            l->nr += nr;
            return 0;
        }
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct mrun *v = realloc(c->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = (struct mrun){gfn, mfn, nr, pod};
    return 0;
}

static int reserve(struct kvm_vm *vm, gfn_t gfn, uint64_t nr)
{
    void *p = mmap(gfn_va(vm, gfn), nr << PAGE_SHIFT, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    vm->st.unmaps++;
    vm->st.pages_unmapped += nr;
    return 0;
}

static int map_frames(struct kvm_vm *vm, gfn_t gfn, mfn_t mfn, uint64_t nr)
{
    uint8_t *va = gfn_va(vm, gfn);
    void *p = mmap(va, nr << PAGE_SHIFT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                   vm->d->m->fd, (off_t)machine_offset(mfn));
    if (p == MAP_FAILED)
        return -errno;
    /* Advice only: huge pages need shmem THP "advise" or better. */
    (void)madvise(va, nr << PAGE_SHIFT, MADV_HUGEPAGE);
    vm->st.maps++;
    vm->st.pages_mapped += nr;
    return 0;
}

/* PoD gfns: anonymous memory registered for missing-page faults and
 * write-protect (a read maps the zero page write-protected; the write
 * after it is a fault too), so a touch (the guest's, through KVM) waits
 * for the fault server. */
static int map_placeholder(struct kvm_vm *vm, gfn_t gfn, uint64_t nr)
{
    uint8_t *va = gfn_va(vm, gfn);
    void *p = mmap(va, nr << PAGE_SHIFT, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    struct uffdio_register r = {.range = {.start = (uint64_t)(uintptr_t)va,
                                          .len = nr << PAGE_SHIFT},
                                .mode = UFFDIO_REGISTER_MODE_MISSING |
                                        UFFDIO_REGISTER_MODE_WP};
    if (ioctl(vm->uffd, UFFDIO_REGISTER, &r) < 0)
        return -errno;
    vm->st.maps++;
    return 0;
}

static void set_bits(uint64_t *bm, gfn_t gfn, const uint64_t *src, uint64_t nbits)
{
    for (uint64_t w = 0; w < (nbits + 63) / 64; w++) {
        uint64_t x = src[w];
        while (x) {
            uint64_t b = w * 64 + (uint64_t)__builtin_ctzll(x);
            x &= x - 1;
            if (b < nbits)
                bm[(gfn + b) / 64] |= 1ULL << ((gfn + b) % 64);
        }
    }
}

static int slot_region(struct kvm_vm *vm, const struct mslot *s, bool present)
{
    struct kvm_userspace_memory_region r = {
        .slot = s->id,
        .flags = present && vm->log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = s->gfn << PAGE_SHIFT,
        .memory_size = present ? s->pages << PAGE_SHIFT : 0,
        .userspace_addr = (uint64_t)(uintptr_t)gfn_va(vm, s->gfn),
    };
    return xioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
}

/* KVM's dirty bitmap of slot s into vm->dbuf (re-armed when `clear`). */
static int slot_dirty_get(struct kvm_vm *vm, const struct mslot *s, bool clear)
{
    size_t words = (size_t)((s->pages + 63) / 64);
    if (words > vm->dbuf_words) {
        uint64_t *b = realloc(vm->dbuf, words * sizeof(*b));
        if (!b)
            return -ENOMEM;
        vm->dbuf = b;
        vm->dbuf_words = words;
    }
    memset(vm->dbuf, 0, words * sizeof(*vm->dbuf));
    struct kvm_dirty_log dl = {.slot = s->id, .dirty_bitmap = vm->dbuf};
    int rc = xioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &dl);
    if (rc < 0 || !clear || !vm->manual_protect)
        return rc;
    struct kvm_clear_dirty_log cl = {.slot = s->id, .num_pages = (uint32_t)s->pages,
                                     .first_page = 0, .dirty_bitmap = vm->dbuf};
    return xioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl);
}

static uint64_t popcount_bits(const uint64_t *b, uint64_t nbits)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w < (nbits + 63) / 64; w++)
        n += (uint64_t)__builtin_popcountll(b[w]);
    return n;
}

/* The dirty rings into vm->pending (dropped when not logging), entries
 * marked for reset, then KVM_RESET_DIRTY_RINGS.  Any thread; -errno. */
static int rings_collect(struct kvm_vm *vm)
{
    pthread_mutex_lock(&vm->ring_mu);
    uint64_t got = 0, seen = 0;
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        struct kcpu *c = &vm->cpu[i];
        if (!c->ring)
            continue;
        for (;;) {
            struct kvm_dirty_gfn *e = &c->ring[c->fetch % vm->ring_entries];
            if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY))
                break;
            unsigned id = e->slot & 0xffff;
            for (unsigned k = 0; k < vm->nslots; k++) {
                const struct mslot *ms = &vm->slots[k];
                if (ms->id == id && e->offset < ms->pages && vm->pending) {
                    gfn_t g = ms->gfn + e->offset;
                    __atomic_fetch_or(&vm->pending[g / 64], 1ULL << (g % 64),
                                      __ATOMIC_RELAXED);
                    got++;
                    break;
                }
            }
            __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
            c->fetch++;
            seen++;
        }
    }
    int rc = seen ? xioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, NULL) : 0;
    vm->st.ring_entries += got;
    pthread_mutex_unlock(&vm->ring_mu);
    return rc < 0 ? rc : 0;
}

/* Delete slot s; while logging, its dirty bits go to vm->pending first. */
static int slot_delete(struct kvm_vm *vm, const struct mslot *s)
{
    if (vm->log_dirty && vm->dirty_ring) {
        (void)rings_collect(vm); /* entries name the slot by id */
    } else if (vm->log_dirty && vm->pending && slot_dirty_get(vm, s, false) == 0) {
        vm->st.pending_dirty += popcount_bits(vm->dbuf, s->pages);
        set_bits(vm->pending, s->gfn, vm->dbuf, s->pages);
    }
    int rc = slot_region(vm, s, false);
    if (rc == 0) {
        vm->slot_used[s->id] = 0;
        vm->st.slots_deleted++;
    }
    return rc;
}

/* Empty the mirror after a failure: no slot, everything PROT_NONE, stale. */
static void mirror_reset(struct kvm_vm *vm)
{
    for (unsigned i = 0; i < vm->nslots; i++)
        (void)slot_delete(vm, &vm->slots[i]);
    vm->nslots = 0;
    (void)reserve(vm, 0, vm->max_gfn);
    vm->nruns = 0;
    snap_publish(vm);
    memset(vm->leaves, 0, sizeof(vm->leaves));
    vm->mapped_pages = 0;
    vm->stale = true;
}

/* Slots for runs v[0..n): adjacent runs merge, slots stay below
 * SLOT_MAX_PAGES.  Ids are not assigned here. */
static int slots_for(const struct mrun *v, size_t n, struct mslot **out, unsigned *nout)
{
    struct mslot *s = NULL;
    size_t ns = 0, cap = 0;
    for (size_t i = 0; i < n; i++) {
        gfn_t g = v[i].gfn;
        uint64_t nr = v[i].nr;
        while (nr) {
            if (ns && s[ns - 1].gfn + s[ns - 1].pages == g && s[ns - 1].pages < SLOT_MAX_PAGES) {
                uint64_t take = SLOT_MAX_PAGES - s[ns - 1].pages;
                take = take < nr ? take : nr;
                s[ns - 1].pages += take;
                g += take;
                nr -= take;
                continue;
            }
            if (ns == cap) {
                cap = cap ? cap * 2 : 16;
                struct mslot *t = realloc(s, cap * sizeof(*s));
                if (!t) {
                    free(s);
                    return -ENOMEM;
                }
                s = t;
            }
            s[ns++] = (struct mslot){0, g, 0};
        }
    }
    *out = s;
    *nout = (unsigned)ns;
    return 0;
}

/* Is slot s (gfn and size) in v[0..n), sorted by gfn?  *id gets its id. */
static bool slot_in(const struct mslot *s, const struct mslot *v, unsigned n, unsigned *id)
{
    unsigned lo = 0, hi = n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (v[mid].gfn < s->gfn)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == n || v[lo].gfn != s->gfn || v[lo].pages != s->pages)
        return false;
    if (id)
        *id = v[lo].id;
    return true;
}

/* Apply the difference between vm->runs and new runs nv[0..nn) to the
 * host mappings (see the file comment).  Returns pages changed or -errno. */
static long remap(struct kvm_vm *vm, const struct mrun *nv, size_t nn)
{
    const struct mrun *ov = vm->runs;
    size_t on = vm->nruns;
    long changed = 0;
    int rc;
    /* RAM before, not now: back to PROT_NONE. */
    for (size_t k = 0; k < on; k++) {
        gfn_t g = ov[k].gfn, end = ov[k].gfn + ov[k].nr;
        while (g < end) {
            size_t i = run_upper(nv, nn, g);
            if (i < nn && nv[i].gfn <= g) {
                g = nv[i].gfn + nv[i].nr < end ? nv[i].gfn + nv[i].nr : end;
                continue;
            }
            gfn_t stop = i < nn && nv[i].gfn < end ? nv[i].gfn : end;
            if ((rc = reserve(vm, g, stop - g)) < 0)
                return rc;
            changed += (long)(stop - g);
            g = stop;
        }
    }
    /* RAM now, with a frame the mirror does not map there yet; PoD now,
     * where the mirror has no placeholder yet. */
    for (size_t k = 0; k < nn; k++) {
        gfn_t g = nv[k].gfn, end = nv[k].gfn + nv[k].nr;
        while (g < end) {
            mfn_t want = nv[k].mfn + (g - nv[k].gfn);
            size_t i = run_upper(ov, on, g);
            gfn_t stop;
            bool same = false;
            if (i < on && ov[i].gfn <= g) {
                stop = ov[i].gfn + ov[i].nr < end ? ov[i].gfn + ov[i].nr : end;
                same = nv[k].pod ? ov[i].pod != 0
                                 : !ov[i].pod && ov[i].mfn + (g - ov[i].gfn) == want;
            } else {
                stop = i < on && ov[i].gfn < end ? ov[i].gfn : end;
            }
            if (!same) {
                rc = nv[k].pod ? map_placeholder(vm, g, stop - g)
                               : map_frames(vm, g, want, stop - g);
                if (rc < 0)
                    return rc;
                changed += (long)(stop - g);
            }
            g = stop;
        }
    }
    return changed;
}

long kvm_sync(struct kvm_vm *vm)
{
    struct domain *d = vm->d;
    struct collect c = {.max_gfn = vm->max_gfn, .placeholders = vm->uffd >= 0};
    struct mslot *ns = NULL;
    unsigned nns = 0;
    long rc;

    vm->st.syncs++;
    snap_free_retired(vm);
    pthread_mutex_lock(&d->lock);
    rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, collect_leaf, &c);
    uint64_t gen = d->p2m_gen, tot = d->tot_pages, pod = d->pod.entry_count;
    pthread_mutex_unlock(&d->lock);
    if (rc < 0)
        goto out_reset;
    if ((rc = slots_for(c.v, c.n, &ns, &nns)) < 0)
        goto out_reset;
    if (nns > vm->max_slots) {
        rc = -ENOSPC;
        goto out_reset;
    }
    /* 1. slots that change go away (their dirty bits are kept) */
    unsigned kept = 0;
    for (unsigned i = 0; i < vm->nslots; i++) {
        if (slot_in(&vm->slots[i], ns, nns, NULL)) {
            vm->slots[kept++] = vm->slots[i];
            continue;
        }
        if ((rc = slot_delete(vm, &vm->slots[i])) < 0) {
            /* KVM still has slots[i..nslots): keep them listed */
            for (unsigned k = i; k < vm->nslots; k++)
                vm->slots[kept++] = vm->slots[k];
            vm->nslots = kept;
            goto out_reset;
        }
    }
    vm->nslots = kept;
    /* 2. the mappings */
    long changed = remap(vm, c.v, c.n);
    if (changed < 0) {
        rc = changed;
        goto out_reset;
    }
    free(vm->runs);
    vm->runs = c.v;
    vm->nruns = c.n;
    c.v = NULL;
    snap_publish(vm);
    memcpy(vm->leaves, c.leaves, sizeof(vm->leaves));
    vm->mapped_pages = c.pages;
    /* 3. new slots, with free ids */
    unsigned next_id = 0;
    for (unsigned i = 0; i < nns; i++) {
        if (slot_in(&ns[i], vm->slots, vm->nslots, &ns[i].id))
            continue;
        while (vm->slot_used[next_id]) /* a free id exists: nns <= max_slots */
            next_id = (next_id + 1) % vm->max_slots;
        ns[i].id = next_id;
        unsigned id = next_id;
        if ((rc = slot_region(vm, &ns[i], true)) < 0) {
            /* delete the slots this step created; the kept ones go in
             * mirror_reset */
            for (unsigned k = 0; k < i; k++)
                if (!slot_in(&ns[k], vm->slots, vm->nslots, NULL))
                    (void)slot_delete(vm, &ns[k]);
            goto out_reset;
        }
        vm->slot_used[id] = 1;
        vm->st.slots_created++;
    }
    free(vm->slots);
    vm->slots = ns;
    vm->nslots = nns;
    vm->synced_gen = gen;
    vm->synced_tot = tot;
    vm->synced_pod = pod;
    vm->stale = false;
    return changed;

out_reset:
    /* Whatever failed, the old mirror may map frames the domain no longer
     * owns: empty it (vm->slots[0..nslots) is what KVM still has). */
    mirror_reset(vm);
    free(ns);
    free(c.v);
    return rc;
}

bool kvm_sync_needed(const struct kvm_vm *vm)
{
    const struct domain *d = vm->d;
    return vm->stale || d->p2m_gen != vm->synced_gen || d->tot_pages != vm->synced_tot ||
           d->pod.entry_count != vm->synced_pod;
}

/* ---- dirty logging ------------------------------------------------------- */

int kvm_set_log_dirty(struct kvm_vm *vm, bool on)
{
    if (vm->log_dirty == on)
        return 0;
    uint64_t *pending = NULL;
    if (on) {
        pending = calloc((size_t)((vm->max_gfn + 63) / 64), sizeof(*pending));
        if (!pending)
            return -ENOMEM;
    }
    if (!on && vm->dirty_ring)
        (void)rings_collect(vm); /* what is left goes with pending */
    vm->log_dirty = on;
    for (unsigned i = 0; i < vm->nslots; i++) {
        int rc = slot_region(vm, &vm->slots[i], true);
        if (rc < 0) {
            /* put back the slots already switched */
            vm->log_dirty = !on;
            for (unsigned k = 0; k < i; k++)
                (void)slot_region(vm, &vm->slots[k], true);
            free(pending);
            return rc;
        }
    }
    free(vm->pending);
    vm->pending = pending;
    return 0;
}

int kvm_harvest(struct kvm_vm *vm, uint64_t *bitmap, uint64_t nr_gfns, uint64_t *dirty)
{
    if (!vm->log_dirty || nr_gfns < vm->max_gfn)
        return -EINVAL;
    size_t words = (size_t)((nr_gfns + 63) / 64), mine = (size_t)((vm->max_gfn + 63) / 64);
    if (vm->dirty_ring) {
        int rc = rings_collect(vm);
        if (rc < 0)
            return rc;
    }
    memset(bitmap, 0, words * sizeof(*bitmap));
    memcpy(bitmap, vm->pending, mine * sizeof(*bitmap));
    for (unsigned i = 0; i < vm->nslots && !vm->dirty_ring; i++) {
        int rc = slot_dirty_get(vm, &vm->slots[i], true);
        if (rc < 0)
            return rc; /* pending kept: the next harvest reports it again */
        set_bits(bitmap, vm->slots[i].gfn, vm->dbuf, vm->slots[i].pages);
    }
    memset(vm->pending, 0, mine * sizeof(*vm->pending));
    uint64_t n = popcount_bits(bitmap, nr_gfns);
    vm->st.harvests++;
    vm->st.pages_harvested += n;
    if (dirty)
        *dirty = n;
    return 0;
}

/* ---- inspection ---------------------------------------------------------- */

void kvm_mirror_get_info(const struct kvm_vm *vm, struct kvm_mirror_info *mi)
{
    *mi = (struct kvm_mirror_info){
        .max_gfn = vm->max_gfn,
        .base = (uint64_t)(uintptr_t)vm->base,
        .mapped_pages = vm->mapped_pages,
        .runs = vm->nruns,
        .slots = vm->nslots,
        .max_slots = vm->max_slots,
        .guest_order = vm->guest_order,
        .vcpus = vm->nr_vcpus,
        .slot_zap_all_off = vm->zap_all_off,
        .manual_protect = vm->manual_protect,
        .dirty_ring = vm->dirty_ring,
        .log_dirty = vm->log_dirty,
    };
    memcpy(mi->leaves, vm->leaves, sizeof(mi->leaves));
}

unsigned kvm_get_slots(const struct kvm_vm *vm, struct kvm_slot_info *out, unsigned max)
{
    for (unsigned i = 0; i < vm->nslots && i < max; i++)
        out[i] = (struct kvm_slot_info){vm->slots[i].id, vm->slots[i].gfn,
                                        vm->slots[i].pages, vm->log_dirty};
    return vm->nslots;
}

void kvm_get_stats(const struct kvm_vm *vm, struct kvm_vm_stats *st)
{
    *st = vm->st;
}

int kvm_host_mapping_measure(const struct kvm_vm *vm, struct kvm_host_mapping *hm)
{
    uint64_t lo = (uint64_t)(uintptr_t)vm->base;
    struct host_mapping h;
    int rc = host_mapping_measure(lo, lo + vm->bytes, &h);
    *hm = (struct kvm_host_mapping){h.vmas, h.rss_bytes, h.pmd_mapped_bytes};
    return rc;
}

int kvm_mmu_pages(const struct kvm_vm *vm, uint64_t pages[3])
{
    static const char *const names[3] = {"pages_4k", "pages_2m", "pages_1g"};
    struct kvm_stats_header h;
    int fd = ioctl(vm->vm_fd, KVM_GET_STATS_FD, NULL);
    if (fd < 0)
        return errno == EINVAL || errno == ENOTTY ? -ENOTSUP : -errno;
    int rc = -ENOTSUP, found = 0;
    char *desc = NULL;
    if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.name_size > 4096 ||
        h.num_desc > 65536) {
        rc = -EIO;
        goto out;
    }
    size_t dsz = sizeof(struct kvm_stats_desc) + h.name_size;
    desc = malloc(dsz * h.num_desc);
    if (!desc) {
        rc = -ENOMEM;
        goto out;
    }
    if (pread(fd, desc, dsz * h.num_desc, h.desc_offset) != (ssize_t)(dsz * h.num_desc)) {
        rc = -EIO;
        goto out;
    }
    for (uint32_t i = 0; i < h.num_desc; i++) {
        const struct kvm_stats_desc *sd = (const void *)(desc + i * dsz);
        for (unsigned k = 0; k < 3; k++) {
            if (strncmp(sd->name, names[k], h.name_size) != 0 || sd->size < 1)
                continue;
            uint64_t v;
            if (pread(fd, &v, sizeof(v), (off_t)h.data_offset + sd->offset) != (ssize_t)sizeof(v)) {
                rc = -EIO;
                goto out;
            }
            pages[k] = v;
            found |= 1 << k;
        }
    }
    rc = found == 7 ? 0 : -ENOTSUP;
out:
    free(desc);
    close(fd);
    return rc;
}

/* ---- the system pages ------------------------------------------------------ */

static uint8_t *sys_page(struct kvm_vm *vm, uint64_t gfn)
{
    uint8_t *p = kvm_gfn_hva(vm, gfn);
    if (p)
        memset(p, 0, PAGE_SIZE);
    return p;
}

/* Vectors for which the CPU pushes an error code. */
static bool has_error_code(unsigned v)
{
    return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

/*
 * IDT and stubs: vector v's gate (64-bit interrupt gate, CPL 0 code) goes to
 * stub v, which pushes a zero error code when the CPU pushed none, then the
 * vector, and jumps to the common tail: `mov (%rsp), %eax; out %eax,
 * $HVG_PORT_EXCEPTION; jmp .`.  The host reads the frame [vector, error
 * code, rip, cs, rflags, rsp, ss] at rsp and cr2, and never resumes it.
 */
static int write_idt(struct kvm_vm *vm)
{
    uint8_t *idt = sys_page(vm, SYS_IDT), *st = sys_page(vm, SYS_STUBS);
    if (!idt || !st)
        return -EINVAL;
    uint64_t stubs = SYS_STUBS << PAGE_SHIFT;
    for (unsigned v = 0; v < NR_VECTORS; v++) {
        uint8_t *c = st + v * STUB_BYTES;
        unsigned k = 0;
        if (!has_error_code(v)) {
            c[k++] = 0x6a; /* push $0 */
            c[k++] = 0x00;
        }
        c[k++] = 0x6a; /* push $v */
        c[k++] = (uint8_t)v;
        c[k++] = 0xe9; /* jmp rel32 common */
        int32_t rel = (int32_t)STUB_COMMON - (int32_t)(v * STUB_BYTES + k + 4);
        memcpy(c + k, &rel, 4);
        uint64_t off = stubs + v * STUB_BYTES;
        /* DPL 3 for #BP and #OF so that int3/into at CPL 3 report themselves */
        uint64_t dpl = (v == 3 || v == 4) ? 3 : 0;
        uint64_t lo = (off & 0xffff) | (uint64_t)SEL_KCODE << 16 | (0x8eULL | dpl << 5) << 40 |
                      ((off >> 16) & 0xffff) << 48;
        uint64_t hi = off >> 32;
        memcpy(idt + v * 16, &lo, 8);
        memcpy(idt + v * 16 + 8, &hi, 8);
    }
    static const uint8_t common[] = {
        0x8b, 0x04, 0x24,               /* mov (%rsp), %eax */
        0xe7, HVG_PORT_EXCEPTION,       /* out %eax, $HVG_PORT_EXCEPTION */
        0xeb, 0xfe,                     /* jmp . */
    };
    memcpy(st + STUB_COMMON, common, sizeof(common));
    return 0;
}

/* GDT and TSS of vCPU v. */
static int write_gdt(struct kvm_vm *vm, unsigned v)
{
    uint8_t *pg = sys_page(vm, SYS_GDT(v));
    if (!pg || !sys_page(vm, SYS_KSTACK(v)))
        return -EINVAL;
    uint64_t tss = (SYS_GDT(v) << PAGE_SHIFT) + SYS_TSS_OFF;
    uint64_t gdt[7] = {
        0,
        0x00af9b000000ffffULL, /* 0x08 kernel code, 64-bit */
        0x00cf93000000ffffULL, /* 0x10 kernel data */
        0x00affb000000ffffULL, /* 0x18 user code, 64-bit, DPL 3 */
        0x00cff3000000ffffULL, /* 0x20 user data, DPL 3 */
        TSS_LIMIT | (tss & 0xffffffULL) << 16 | 0x8bULL << 40 | ((tss >> 24) & 0xffULL) << 56,
        tss >> 32,             /* 0x28 busy 64-bit TSS */
    };
    memcpy(pg, gdt, sizeof(gdt));
    uint8_t *t = pg + SYS_TSS_OFF;
    uint64_t rsp0 = (SYS_KSTACK(v) + 1) << PAGE_SHIFT;
    memcpy(t + 4, &rsp0, 8);
    uint16_t iomap = TSS_IOMAP;
    memcpy(t + 0x66, &iomap, sizeof(iomap));
    memset(t + TSS_IOMAP, 0xff, 256 / 8 + 1); /* every port denied at CPL 3 ... */
    t[TSS_IOMAP + HVG_PORT / 8] &= (uint8_t)~(1u << (HVG_PORT % 8)); /* but the call port */
    return 0;
}

/*
 * Page tables identity-mapping [0, max_gfn): in the first 2M, 4K leaves,
 * the system pages supervisor-only and everything else user read/write
 * (the VGA hole too: a guest access there is not a page fault but an exit
 * to the host, KVM_EXIT_MMIO, like any access outside RAM); the second 2M
 * (the stacks) and the rest of GiB 0 as 2M leaves; above, 1G leaves when
 * the guest's page order is 1G, else 2M.  A and D are preset, so the CPU
 * never writes to the tables.
 */
static int write_page_tables(struct kvm_vm *vm)
{
    uint64_t *pml4 = (uint64_t *)(void *)sys_page(vm, SYS_PML4);
    uint64_t *pdpt = (uint64_t *)(void *)sys_page(vm, SYS_PDPT);
    uint64_t *pt0 = (uint64_t *)(void *)sys_page(vm, SYS_PT0);
    if (!pml4 || !pdpt || !pt0)
        return -EINVAL;
    pml4[0] = (SYS_PDPT << PAGE_SHIFT) | PTE_TABLE;
    for (uint64_t j = 0; j < 512; j++) {
        bool sys = (j >= SYS_IDT && j < 0x80) || (j >= 0xc0 && j < 0x100);
        pt0[j] = (j << PAGE_SHIFT) | (sys ? PTE_SYS : PTE_4K);
    }
    uint64_t gibs = vm->max_gfn / GFN_PER_GIB;
    for (uint64_t i = 0; i < gibs; i++) {
        if (i > 0 && vm->guest_order == PAGE_ORDER_1G) {
            pdpt[i] = (i << 30) | PTE_LEAF;
            continue;
        }
        uint64_t *pd = (uint64_t *)(void *)sys_page(vm, SYS_PD0 + i);
        if (!pd)
            return -EINVAL;
        pdpt[i] = ((SYS_PD0 + i) << PAGE_SHIFT) | PTE_TABLE;
        for (uint64_t j = 0; j < 512; j++)
            pd[j] = (i << 30) + (j << 21) + PTE_LEAF;
    }
    uint64_t *pd0 = (uint64_t *)(void *)kvm_gfn_hva(vm, SYS_PD0);
    pd0[0] = (SYS_PT0 << PAGE_SHIFT) | PTE_TABLE;
    return 0;
}

/* ---- vCPUs ------------------------------------------------------------------- */

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code, uint8_t dpl)
{
    *s = (struct kvm_segment){.base = 0, .limit = 0xffffffff, .selector = sel | dpl,
                              .type = type, .present = 1, .dpl = dpl, .db = !code, .s = 1,
                              .l = code, .g = 1};
}

static int kvm_reset(struct guest_exec *x, unsigned i, uint64_t entry, uint64_t rsp, uint64_t rdi)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (i >= vm->nr_vcpus)
        return -EINVAL;
    int fd = vm->cpu[i].fd, rc;
    struct kvm_sregs sr;
    if ((rc = xioctl(fd, KVM_GET_SREGS, &sr)) < 0)
        return rc;
    /* The program runs at CPL 3: KVM without hardware virtualization (PVM)
     * runs guest user mode natively and emulates kernel mode instruction by
     * instruction; hardware KVM runs it the same.  Its `out HVG_PORT` is
     * allowed by the TSS I/O bitmap; exceptions go to CPL 0 stubs. */
    seg(&sr.cs, SEL_UCODE, 0xb, true, 3);
    seg(&sr.ds, SEL_UDATA, 0x3, false, 3);
    sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
    sr.tr = (struct kvm_segment){.base = (SYS_GDT(i) << PAGE_SHIFT) + SYS_TSS_OFF,
                                 .limit = TSS_LIMIT, .selector = SEL_TSS, .type = 0xb,
                                 .present = 1};
    sr.ldt = (struct kvm_segment){.unusable = 1};
    sr.gdt = (struct kvm_dtable){.base = SYS_GDT(i) << PAGE_SHIFT, .limit = 7 * 8 - 1};
    sr.idt = (struct kvm_dtable){.base = SYS_IDT << PAGE_SHIFT, .limit = NR_VECTORS * 16 - 1};
    sr.cr0 = 0x80050033ULL; /* PG AM WP NE ET MP PE */
    sr.cr3 = SYS_PML4 << PAGE_SHIFT;
    sr.cr4 = CR4_GUEST;     /* OSXMMEXCPT OSFXSR PAE: SSE works */
    sr.efer = 0x500ULL;     /* LMA LME */
    if (vm->osxsave) {
        /* and XSAVE with XCR0's features (AVX where offered): the guest, at
         * CPL 3, cannot enable them itself */
        sr.cr4 |= CR4_OSXSAVE;
        rc = xioctl(fd, KVM_SET_SREGS, &sr);
        struct kvm_xcrs xc = {.nr_xcrs = 1, .xcrs = {{.xcr = 0, .value = vm->xcr0}}};
        if (rc == 0)
            rc = xioctl(fd, KVM_SET_XCRS, &xc);
        if (rc < 0 && i == 0) {
            vm->osxsave = false; /* this KVM will not: plain SSE, as before */
            sr.cr4 = CR4_GUEST;
        } else if (rc < 0) {
            return rc;
        }
    }
    if (!vm->osxsave && (rc = xioctl(fd, KVM_SET_SREGS, &sr)) < 0)
        return rc;
    struct kvm_regs r = {.rflags = 0x2, .rip = entry, .rsp = rsp, .rdi = rdi};
    return xioctl(fd, KVM_SET_REGS, &r);
}

/* The exception frame the stub left on the CPL 0 stack. */
static void read_exception(struct kvm_vm *vm, unsigned i, struct guest_exit *ex)
{
    struct kvm_regs r;
    struct kvm_sregs sr;
    ex->kind = GUEST_EXIT_EXCEPTION;
    if (xioctl(vm->cpu[i].fd, KVM_GET_REGS, &r) < 0 ||
        xioctl(vm->cpu[i].fd, KVM_GET_SREGS, &sr) < 0)
        return;
    uint64_t frame[4] = {0};
    for (unsigned k = 0; k < 4; k++) {
        uint64_t a = r.rsp + k * 8;
        const uint8_t *p = kvm_gfn_hva(vm, a >> PAGE_SHIFT);
        if (p)
            memcpy(&frame[k], p + (a & (PAGE_SIZE - 1)), 8);
    }
    ex->vector = (unsigned)(frame[0] & 0xff);
    ex->error_code = frame[1];
    ex->rip = frame[2];
    ex->addr = sr.cr2;
}

static int kvm_run_vcpu(struct guest_exec *x, unsigned i, struct guest_exit *ex)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    struct kcpu *c = &vm->cpu[i];
    if (!c->thread_known) {
        c->thread = pthread_self();
        __atomic_store_n(&c->thread_known, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_lock(&vm->d->lock); /* a PoD fault changes both sides under it */
    bool stale = kvm_sync_needed(vm);
    pthread_mutex_unlock(&vm->d->lock);
    if (stale) {
        /* the domain changed without a sync: never run on a stale mirror */
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -ESTALE;
        snprintf(ex->what, sizeof(ex->what), "the p2m changed without a mirror sync");
        return 0;
    }
    struct kvm_run *run = c->run;
    int rc = ioctl(c->fd, KVM_RUN, 0);
    __atomic_add_fetch(&vm->st.runs, 1, __ATOMIC_RELAXED);
    if (rc < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELEASE);
            ex->kind = GUEST_EXIT_KICK;
            return 0;
        }
        rc = -errno;
        snprintf(ex->what, sizeof(ex->what), "KVM_RUN: %s", strerror(-rc));
        return rc;
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        __atomic_add_fetch(&vm->st.exits_io, 1, __ATOMIC_RELAXED);
        uint32_t val = 0;
        if (run->io.size <= 4)
            memcpy(&val, (uint8_t *)run + run->io.data_offset, run->io.size);
        if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == HVG_PORT && run->io.size == 1) {
            ex->kind = GUEST_EXIT_CALL;
            ex->call = val;
        } else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == HVG_PORT_EXCEPTION) {
            read_exception(vm, i, ex);
        } else {
            struct kvm_regs r;
            ex->kind = GUEST_EXIT_ERROR;
            ex->err = -EPROTO;
            ex->rip = xioctl(c->fd, KVM_GET_REGS, &r) == 0 ? r.rip : 0;
            snprintf(ex->what, sizeof(ex->what), "%s of %u bytes at port %#x, rip %#llx: only "
                     "`out %#x` is a call", run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
                     run->io.size, run->io.port, (unsigned long long)ex->rip, HVG_PORT);
        }
        return 0;
    }
    case KVM_EXIT_MMIO: {
        struct kvm_regs r;
        __atomic_add_fetch(&vm->st.exits_mmio, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_FAULT;
        ex->gpa = run->mmio.phys_addr;
        ex->write = run->mmio.is_write;
        ex->rip = xioctl(c->fd, KVM_GET_REGS, &r) == 0 ? r.rip : 0;
        return 0;
    }
    case KVM_EXIT_INTR:
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELEASE);
        ex->kind = GUEST_EXIT_KICK;
        return 0;
    case KVM_EXIT_DIRTY_RING_FULL:
        /* collected into the pending bitmap; the vCPU goes on */
        __atomic_add_fetch(&vm->st.ring_full_exits, 1, __ATOMIC_RELAXED);
        rc = rings_collect(vm);
        if (rc < 0) {
            snprintf(ex->what, sizeof(ex->what), "collecting the dirty ring: %s", strerror(-rc));
            return rc;
        }
        ex->kind = GUEST_EXIT_KICK;
        return 0;
    case KVM_EXIT_HLT:
        __atomic_add_fetch(&vm->st.exits_hlt, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -EPROTO;
        snprintf(ex->what, sizeof(ex->what), "hlt");
        return 0;
    case KVM_EXIT_SHUTDOWN:
        __atomic_add_fetch(&vm->st.exits_other, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -EFAULT;
        snprintf(ex->what, sizeof(ex->what), "shutdown (triple fault: an exception the IDT "
                 "could not deliver)");
        return 0;
    case KVM_EXIT_FAIL_ENTRY:
        __atomic_add_fetch(&vm->st.exits_other, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -EIO;
        snprintf(ex->what, sizeof(ex->what), "entry failed (hardware reason %#llx)",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        return 0;
    case KVM_EXIT_INTERNAL_ERROR:
        __atomic_add_fetch(&vm->st.exits_other, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -EIO;
        snprintf(ex->what, sizeof(ex->what), "KVM internal error (suberror %u)",
                 run->internal.suberror);
        return 0;
    default:
        __atomic_add_fetch(&vm->st.exits_other, 1, __ATOMIC_RELAXED);
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -EIO;
        snprintf(ex->what, sizeof(ex->what), "unexpected exit %u", run->exit_reason);
        return 0;
    }
}

static void kvm_kick(struct guest_exec *x, unsigned i)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    struct kcpu *c = &vm->cpu[i];
    if (!c->run)
        return;
    __atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&c->thread_known, __ATOMIC_ACQUIRE))
        (void)pthread_kill(c->thread, guest_kick_signal());
}

_Static_assert(sizeof(struct kvm_regs) == HVCTX_PROG_REGS, "kvm_regs in HVCTX_PROG_VCPU");
_Static_assert(sizeof(struct kvm_sregs) == HVCTX_PROG_SREGS, "kvm_sregs in HVCTX_PROG_VCPU");
_Static_assert(sizeof(struct kvm_fpu) == HVCTX_PROG_FPU, "kvm_fpu in HVCTX_PROG_VCPU");

/* Only with the vCPU out of KVM_RUN (parked or not started). */
static int kvm_get_state(struct guest_exec *x, unsigned i, struct hvctx_prog_vcpu *s)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (i >= vm->nr_vcpus)
        return -EINVAL;
    int fd = vm->cpu[i].fd, rc;
    struct kvm_regs r;
    struct kvm_sregs sr;
    struct kvm_fpu f;
    if ((rc = xioctl(fd, KVM_GET_REGS, &r)) < 0 || (rc = xioctl(fd, KVM_GET_SREGS, &sr)) < 0 ||
        (rc = xioctl(fd, KVM_GET_FPU, &f)) < 0)
        return rc;
    memcpy(s->regs, &r, sizeof(r));
    memcpy(s->sregs, &sr, sizeof(sr));
    memcpy(s->fpu, &f, sizeof(f));
    s->guest_page_order = vm->guest_order;
    return 0;
}

/*
 * KVM_SET_FPU writes the legacy FXSAVE image into the vCPU's XSAVE area
 * but leaves XSTATE_BV alone: on a new vCPU, whose x87 and SSE are in their
 * init state, the registers would then load as zeros (found by
 * test_xsave_kvm: a stream without PROG_XSAVE lost every xmm register).
 * So, where KVM has XSAVE, the image goes into the area read back, with
 * XSTATE_BV's x87 and SSE bits set.  A PROG_XSAVE TLV replaces it all.
 * KVM_GET_FPU does not report MXCSR (its field reads 0; KVM_SET_FPU
 * ignores it): only PROG_XSAVE carries it.  An MXCSR of 0 therefore means
 * the reset value 0x1f80 (every SIMD exception masked), never 0 itself,
 * which would unmask them all and turn the resumed guest's first inexact
 * SSE result into #XM.  Nor the area's own: read back from a new vCPU it
 * held 0 too (KVM inside QEMU TCG, test_xsave_kvm).  Another value is
 * taken; KVM_SET_XSAVE refuses reserved bits.
 */
static int fpu_to_xsave(struct kvm_vm *vm, int fd, const struct kvm_fpu *f)
{
    if (!vm->xsave_size || vm->xsave_size > HVCTX_XSAVE_MAX)
        return 0;
    uint8_t *a = calloc(1, vm->xsave_size);
    if (!a)
        return -ENOMEM;
    int rc = xioctl(fd, vm->xsave2 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, a);
    if (rc == 0) {
        memcpy(a + 0, &f->fcw, 2);
        memcpy(a + 2, &f->fsw, 2);
        memcpy(a + 4, &f->ftwx, 1);
        memcpy(a + 6, &f->last_opcode, 2);
        memcpy(a + 8, &f->last_ip, 8);
        memcpy(a + 16, &f->last_dp, 8);
        uint32_t mxcsr = f->mxcsr ? f->mxcsr : MXCSR_RESET;
        memcpy(a + 24, &mxcsr, 4);
        for (unsigned k = 0; k < 8; k++) /* st0-7: 10 bytes in 16 */
            memcpy(a + 32 + 16 * k, f->fpr[k], 16);
        memcpy(a + 160, f->xmm, sizeof(f->xmm));
        uint64_t bv;
        memcpy(&bv, a + 512, 8);
        bv |= 0x3; /* x87, SSE */
        memcpy(a + 512, &bv, 8);
        rc = xioctl(fd, KVM_SET_XSAVE, a);
    }
    free(a);
    return rc;
}

/* The saved state, checked for what would let a guest leave its sandbox:
 * it must run at CPL 3 in long mode on this VM's own page tables, GDT, IDT
 * and TSS (the host's system pages), with IOPL 0. */
static int kvm_set_state(struct guest_exec *x, unsigned i, const struct hvctx_prog_vcpu *s)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (i >= vm->nr_vcpus)
        return -EINVAL;
    struct kvm_regs r;
    struct kvm_sregs sr;
    struct kvm_fpu f;
    memcpy(&r, s->regs, sizeof(r));
    memcpy(&sr, s->sregs, sizeof(sr));
    memcpy(&f, s->fpu, sizeof(f));
    bool cr4_ok = sr.cr4 == CR4_GUEST || (vm->osxsave && sr.cr4 == (CR4_GUEST | CR4_OSXSAVE));
    if (!vm->osxsave && sr.cr4 == (CR4_GUEST | CR4_OSXSAVE))
        return -ENOTSUP; /* a guest that used XSAVE, on a KVM without it */
    if ((sr.cs.selector & 3) != 3 || sr.cs.dpl != 3 || !sr.cs.l || sr.efer != 0x500ULL ||
        sr.cr3 != SYS_PML4 << PAGE_SHIFT || sr.cr0 != 0x80050033ULL || !cr4_ok ||
        sr.gdt.base != SYS_GDT(i) << PAGE_SHIFT || sr.idt.base != SYS_IDT << PAGE_SHIFT ||
        sr.tr.base != (SYS_GDT(i) << PAGE_SHIFT) + SYS_TSS_OFF || (r.rflags & 0x3000))
        return -EPERM;
    int fd = vm->cpu[i].fd, rc;
    if ((rc = xioctl(fd, KVM_SET_SREGS, &sr)) < 0 || (rc = xioctl(fd, KVM_SET_REGS, &r)) < 0 ||
        (rc = xioctl(fd, KVM_SET_FPU, &f)) < 0)
        return rc;
    if (sr.cr4 & CR4_OSXSAVE) {
        /* XCR0 as a fresh vCPU has it (a PROG_XSAVE TLV sets the saved one
         * after this): never an OSXSAVE guest with KVM's XCR0 of x87 only */
        struct kvm_xcrs xc = {.nr_xcrs = 1, .xcrs = {{.xcr = 0, .value = vm->xcr0}}};
        if ((rc = xioctl(fd, KVM_SET_XCRS, &xc)) < 0)
            return rc;
    }
    return fpu_to_xsave(vm, fd, &f);
}

/* Only with the vCPU out of KVM_RUN, as kvm_get_state. */
static int kvm_get_ext(struct guest_exec *x, unsigned i, struct hvctx_prog_ext *e)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (i >= vm->nr_vcpus)
        return -EINVAL;
    int fd = vm->cpu[i].fd, rc;
    e->xsave_len = e->nr_xcrs = e->nr_msrs = 0;
    if (vm->xsave_size) {
        /* KVM_GET_XSAVE2 writes xsave_size bytes, KVM_GET_XSAVE 4096 */
        if (vm->xsave_size > HVCTX_XSAVE_MAX)
            return -E2BIG;
        rc = xioctl(fd, vm->xsave2 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, e->xsave);
        if (rc < 0)
            return rc;
        e->xsave_len = vm->xsave_size;
    }
    if (vm->has_xcrs) {
        struct kvm_xcrs xc;
        memset(&xc, 0, sizeof(xc));
        if ((rc = xioctl(fd, KVM_GET_XCRS, &xc)) < 0)
            return rc;
        for (unsigned k = 0; k < xc.nr_xcrs && k < HVCTX_MAX_XCRS; k++)
            e->xcrs[e->nr_xcrs++] = (struct hvctx_reg){xc.xcrs[k].xcr, 0, xc.xcrs[k].value};
    }
    if (vm->nr_msrs) {
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e[HVCTX_MAX_MSRS];
        } m;
        memset(&m, 0, sizeof(m));
        m.h.nmsrs = vm->nr_msrs;
        for (unsigned k = 0; k < vm->nr_msrs; k++)
            m.e[k].index = vm->msr_idx[k];
        if ((rc = xioctl(fd, KVM_GET_MSRS, &m)) < 0)
            return rc;
        if ((unsigned)rc != vm->nr_msrs)
            return -EIO; /* KVM listed an MSR it cannot read */
        for (unsigned k = 0; k < vm->nr_msrs; k++)
            e->msrs[k] = (struct hvctx_reg){m.e[k].index, 0, m.e[k].data};
        e->nr_msrs = vm->nr_msrs;
    }
    return 0;
}

/* After kvm_set_state: XCRs (the features the XSAVE area may hold), the
 * XSAVE area, the MSRs.  What this KVM cannot hold is refused with the
 * reason, never dropped. */
static int kvm_set_ext(struct guest_exec *x, unsigned i, const struct hvctx_prog_ext *e,
                       char *why, size_t len)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (i >= vm->nr_vcpus)
        return -EINVAL;
    int fd = vm->cpu[i].fd, rc;
    if (e->nr_xcrs) {
        struct kvm_xcrs xc;
        memset(&xc, 0, sizeof(xc));
        if (!vm->has_xcrs || e->nr_xcrs > KVM_MAX_XCRS) {
            say(why, len, "%u XCRs, and this KVM has no KVM_CAP_XCRS", e->nr_xcrs);
            return -ENOTSUP;
        }
        xc.nr_xcrs = e->nr_xcrs;
        for (unsigned k = 0; k < e->nr_xcrs; k++)
            xc.xcrs[k] = (struct kvm_xcr){.xcr = e->xcrs[k].index, .value = e->xcrs[k].value};
        if ((rc = xioctl(fd, KVM_SET_XCRS, &xc)) < 0) {
            say(why, len, "KVM_SET_XCRS (XCR0 %#llx): %s: features this KVM does not offer",
                (unsigned long long)e->xcrs[0].value, strerror(-rc));
            return rc;
        }
    }
    if (e->xsave_len) {
        if (!vm->xsave_size) {
            say(why, len, "an XSAVE area of %u bytes, and this KVM has no KVM_CAP_XSAVE",
                e->xsave_len);
            return -ENOTSUP;
        }
        for (uint32_t k = vm->xsave_size; k < e->xsave_len; k++)
            if (e->xsave[k]) {
                say(why, len, "an XSAVE area of %u bytes with state at byte %u, beyond the %u "
                    "bytes this KVM holds", e->xsave_len, k, vm->xsave_size);
                return -E2BIG;
            }
        /* KVM_SET_XSAVE reads xsave_size bytes (KVM_CAP_XSAVE2's, >= 4096) */
        uint8_t *buf = calloc(1, vm->xsave_size);
        if (!buf)
            return -ENOMEM;
        memcpy(buf, e->xsave, e->xsave_len < vm->xsave_size ? e->xsave_len : vm->xsave_size);
        rc = xioctl(fd, KVM_SET_XSAVE, buf);
        free(buf);
        if (rc < 0) {
            say(why, len, "KVM_SET_XSAVE: %s (features this KVM does not offer the guest)",
                strerror(-rc));
            return rc;
        }
    }
    if (e->nr_msrs) {
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e[HVCTX_MAX_MSRS];
        } m;
        memset(&m, 0, sizeof(m));
        if (e->nr_msrs > HVCTX_MAX_MSRS)
            return -EINVAL;
        for (unsigned k = 0; k < e->nr_msrs; k++) {
            bool listed = false;
            for (unsigned j = 0; j < vm->nr_msrs; j++)
                listed |= vm->msr_idx[j] == e->msrs[k].index;
            if (!listed) {
                say(why, len, "MSR %#x: this KVM does not list it (KVM_GET_MSR_INDEX_LIST)",
                    e->msrs[k].index);
                return -ENOTSUP;
            }
            m.e[k].index = e->msrs[k].index;
            m.e[k].data = e->msrs[k].value;
        }
        m.h.nmsrs = e->nr_msrs;
        rc = xioctl(fd, KVM_SET_MSRS, &m);
        if (rc >= 0 && (unsigned)rc < e->nr_msrs) {
            say(why, len, "KVM refused MSR %#x = %#llx", m.e[rc].index,
                (unsigned long long)m.e[rc].data);
            return -EINVAL;
        }
        if (rc < 0) {
            say(why, len, "KVM_SET_MSRS: %s", strerror(-rc));
            return rc;
        }
    }
    return 0;
}

static long kvm_exec_sync(struct guest_exec *x)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    return kvm_sync(vm);
}

static void *kvm_exec_gpa_ptr(struct guest_exec *x, uint64_t gpa)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    uint8_t *p = kvm_gfn_hva(vm, gpa >> PAGE_SHIFT);
    return p ? p + (gpa & (PAGE_SIZE - 1)) : NULL;
}

static int kvm_exec_mmu_pages(struct guest_exec *x, uint64_t pages[3])
{
    return kvm_mmu_pages((struct kvm_vm *)x, pages);
}

static int kvm_exec_host_mapping(struct guest_exec *x, uint64_t *rss, uint64_t *pmd)
{
    struct kvm_host_mapping hm;
    int rc = kvm_host_mapping_measure((struct kvm_vm *)x, &hm);
    *rss = hm.rss_bytes;
    *pmd = hm.pmd_mapped_bytes;
    return rc;
}

static void kvm_exec_destroy(struct guest_exec *x) { kvm_vm_destroy((struct kvm_vm *)x); }

static int kvm_exec_log_dirty(struct guest_exec *x, bool on)
{
    return kvm_set_log_dirty((struct kvm_vm *)x, on);
}

static uint64_t kvm_exec_dirty_gfns(struct guest_exec *x)
{
    return ((struct kvm_vm *)x)->max_gfn;
}

static int kvm_exec_harvest(struct guest_exec *x, uint64_t *bm, uint64_t nr)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    if (nr < vm->max_gfn)
        return -EINVAL;
    size_t words = (size_t)((vm->max_gfn + 63) / 64);
    uint64_t *mine = calloc(words ? words : 1, sizeof(*mine));
    if (!mine)
        return -ENOMEM;
    int rc = kvm_harvest(vm, mine, vm->max_gfn, NULL);
    for (size_t w = 0; rc == 0 && w < words; w++)
        bm[w] |= mine[w];
    free(mine);
    return rc;
}

static void kvm_exec_host_wrote(struct guest_exec *x, uint64_t gfn)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    /* a harvest runs with every vCPU held, so never at the same time */
    uint64_t *p = __atomic_load_n(&vm->pending, __ATOMIC_ACQUIRE);
    if (p && vm->log_dirty && gfn < vm->max_gfn)
        __atomic_fetch_or(&p[gfn / 64], 1ULL << (gfn % 64), __ATOMIC_RELAXED);
}

static size_t kvm_exec_retired(struct guest_exec *x)
{
    return ((struct kvm_vm *)x)->retired_bytes;
}

static int kvm_exec_pod_fd(struct guest_exec *x)
{
    return ((struct kvm_vm *)x)->uffd;
}

static uint64_t kvm_exec_hva_gfn(struct guest_exec *x, uint64_t hva)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    uint64_t b = (uint64_t)(uintptr_t)vm->base;
    return hva >= b && hva < b + vm->bytes ? (hva - b) >> PAGE_SHIFT : INVALID_GFN;
}

static uint64_t kvm_exec_gfn_hva(struct guest_exec *x, uint64_t gfn)
{
    return (uint64_t)(uintptr_t)gfn_va((struct kvm_vm *)x, gfn);
}

/* gfn's leaf became RAM at mfn (d->lock and memcall_mu held, other vCPUs
 * running): the frames over its placeholder (the memslot stays: it covers
 * placeholders too), the runs, and the mirror counts as synced again when
 * it was before the fault. */
static int kvm_exec_pod_mapped(struct guest_exec *x, uint64_t gfn, unsigned order, mfn_t mfn)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    uint64_t nr = order_pages(order);
    const struct mrun *r = any_find(vm, gfn);
    if (!r || !r->pod || gfn + nr > r->gfn + r->nr)
        return -EINVAL;
    struct mrun *v = malloc((vm->nruns + 2) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    int rc = map_frames(vm, gfn, mfn, nr);
    if (rc < 0) {
        free(v);
        return rc;
    }
    size_t k = 0, at = (size_t)(r - vm->runs);
    memcpy(v, vm->runs, at * sizeof(*v));
    k = at;
    if (gfn > r->gfn)
        v[k++] = (struct mrun){r->gfn, 0, gfn - r->gfn, 1};
    v[k++] = (struct mrun){gfn, mfn, nr, 0};
    if (gfn + nr < r->gfn + r->nr)
        v[k++] = (struct mrun){gfn + nr, 0, r->gfn + r->nr - gfn - nr, 1};
    memcpy(v + k, vm->runs + at + 1, (vm->nruns - at - 1) * sizeof(*v));
    k += vm->nruns - at - 1;
    free(vm->runs); /* the writers' own: readers use the published view */
    vm->runs = v;
    vm->nruns = k;
    snap_publish(vm);
    vm->leaves[order_level(order)]++;
    vm->mapped_pages += nr;
    if (!vm->stale) {
        /* only this fault changed the domain since the last sync (any other
         * change holds the vCPUs until its own sync) */
        vm->synced_gen = vm->d->p2m_gen;
        vm->synced_tot = vm->d->tot_pages;
        vm->synced_pod = vm->d->pod.entry_count;
    }
    return 0;
}

static const char *kvm_exec_dirty_source(struct guest_exec *x)
{
    struct kvm_vm *vm = (struct kvm_vm *)x;
    /* the dirty ring is not used yet: KVM's bitmap serves every host */
    if (vm->dirty_ring)
        return "KVM dirty ring (per-vCPU rings of 4096 entries, KVM_RESET_DIRTY_RINGS)";
    return vm->manual_protect ? "KVM dirty bitmap, manual clear (KVM_CLEAR_DIRTY_LOG)"
                              : "KVM dirty bitmap (KVM_GET_DIRTY_LOG clears it)";
}

static const struct guest_exec_ops kvm_exec_ops = {
    .name = "kvm",
    .reset = kvm_reset,
    .run = kvm_run_vcpu,
    .kick = kvm_kick,
    .sync = kvm_exec_sync,
    .gpa_ptr = kvm_exec_gpa_ptr,
    .mmu_pages = kvm_exec_mmu_pages,
    .host_mapping = kvm_exec_host_mapping,
    .get_state = kvm_get_state,
    .set_state = kvm_set_state,
    .get_ext = kvm_get_ext,
    .set_ext = kvm_set_ext,
    .log_dirty = kvm_exec_log_dirty,
    .harvest = kvm_exec_harvest,
    .dirty_gfns = kvm_exec_dirty_gfns,
    .dirty_source = kvm_exec_dirty_source,
    .host_wrote = kvm_exec_host_wrote,
    .pod_fd = kvm_exec_pod_fd,
    .hva_gfn = kvm_exec_hva_gfn,
    .gfn_hva = kvm_exec_gfn_hva,
    .pod_mapped = kvm_exec_pod_mapped,
    .retired_bytes = kvm_exec_retired,
    .destroy = kvm_exec_destroy,
};

struct kvm_vm *kvm_exec_vm(struct guest_exec *x)
{
    return x && x->ops == &kvm_exec_ops ? (struct kvm_vm *)x : NULL;
}

/* ---- create / destroy ---------------------------------------------------- */

struct top {
    gfn_t end;
};
static int top_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                    ept_entry_t *e)
{
    struct top *t = ctx;
    (void)mfn, (void)e;
    if (type != p2m_invalid && gfn + order_pages(order) > t->end)
        t->end = gfn + order_pages(order);
    return 0;
}

/* KVM's supported CPUID: 1G pages and physical address bits. */
static int get_cpuid(struct kvm_vm *vm)
{
    struct kvm_cpuid2 *c = NULL;
    int rc;
    vm->has_1g = false;
    vm->phys_bits = 36;
    for (unsigned n = 64;; n *= 2) {
        free(c);
        c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
        if (!c)
            return -ENOMEM;
        c->nent = n;
        rc = xioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
        if (rc != -E2BIG || n >= 4096)
            break;
    }
    if (rc < 0) {
        free(c);
        return rc;
    }
    for (unsigned i = 0; i < c->nent; i++) {
        if (c->entries[i].function == 0x80000001u)
            vm->has_1g = (c->entries[i].edx >> 26) & 1;
        if (c->entries[i].function == 0x80000008u && (c->entries[i].eax & 0xff))
            vm->phys_bits = c->entries[i].eax & 0xff;
    }
    vm->cpuid = c;
    return 0;
}

/* What of a vCPU's state beyond regs/sregs/fpu this KVM carries: the
 * XSAVE area (KVM_CAP_XSAVE2's size, else KVM_GET_XSAVE's 4096 bytes), the
 * XCRs, and the MSRs of HVCTX_PROG_MSR_LIST that KVM_GET_MSR_INDEX_LIST
 * names; and whether fresh vCPUs get CR4.OSXSAVE with XCR0 (XSAVE in the
 * guest's CPUID, XCRs settable). */
static int probe_state(struct kvm_vm *vm)
{
    int n = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (n >= (int)sizeof(struct kvm_xsave)) {
        vm->xsave_size = (uint32_t)n;
        vm->xsave2 = true;
    } else if (ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0) {
        vm->xsave_size = sizeof(struct kvm_xsave);
    }
    vm->has_xcrs = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
    struct kvm_msr_list probe = {.nmsrs = 0};
    int rc = xioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
    if (rc < 0 && rc != -E2BIG)
        return rc;
    struct kvm_msr_list *l = calloc(1, sizeof(*l) + (probe.nmsrs + 1) * sizeof(l->indices[0]));
    if (!l)
        return -ENOMEM;
    l->nmsrs = probe.nmsrs;
    rc = probe.nmsrs ? xioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) : 0;
    if (rc < 0) {
        free(l);
        return rc;
    }
    static const uint32_t want[] = {
#define X(idx, name) idx,
        HVCTX_PROG_MSR_LIST(X)
#undef X
    };
    vm->nr_msrs = 0;
    for (size_t k = 0; k < ARRAY_SIZE(want); k++)
        for (uint32_t j = 0; j < l->nmsrs; j++)
            if (l->indices[j] == want[k] && vm->nr_msrs < HVCTX_MAX_MSRS) {
                vm->msr_idx[vm->nr_msrs++] = want[k];
                break;
            }
    free(l);
    bool xsave_cpuid = false;
    uint64_t xcr0 = 0;
    for (unsigned k = 0; k < vm->cpuid->nent; k++) {
        const struct kvm_cpuid_entry2 *c = &vm->cpuid->entries[k];
        if (c->function == 1)
            xsave_cpuid = (c->ecx >> 26) & 1;
        if (c->function == 0xd && c->index == 0)
            xcr0 = (uint64_t)c->edx << 32 | c->eax;
    }
    vm->xcr0 = xcr0 & XCR0_BASE;
    if ((xcr0 & XCR0_AVX512) == XCR0_AVX512 && (xcr0 & XCR0_BASE) == XCR0_BASE)
        vm->xcr0 |= XCR0_AVX512;
    vm->osxsave = xsave_cpuid && vm->has_xcrs && vm->xsave_size && (vm->xcr0 & 3) == 3;
    return 0;
}

int kvm_vm_create(struct domain *d, const struct kvm_vm_opts *o, struct kvm_vm **out,
                  char *why, size_t len)
{
    static const struct kvm_vm_opts defaults = {0};
    if (!o)
        o = &defaults;
    struct kvm_vm *vm = calloc(1, sizeof(*vm));
    int rc;
    if (!vm)
        return -ENOMEM;
    vm->d = d;
    vm->vm_fd = -1;
    vm->base = MAP_FAILED;
    pthread_mutex_init(&vm->ring_mu, NULL);
    /* PoD placeholders: KVM's own touches of them must reach the fault
     * server too, so not user-mode only (root, or vm.unprivileged_userfaultfd;
     * without it PoD gfns stay unmapped and a touch fails the guest) */
    vm->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (vm->uffd >= 0) {
        struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_THREAD_ID};
        if (ioctl(vm->uffd, UFFDIO_API, &api) < 0) {
            close(vm->uffd);
            vm->uffd = -1;
        }
    }
    for (unsigned i = 0; i < HVG_MAX_VCPUS; i++)
        vm->cpu[i].fd = -1;
    vm->kvm_fd = open_kvm(why, len);
    if (vm->kvm_fd < 0) {
        rc = vm->kvm_fd;
        goto err;
    }
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0) {
        rc = -errno;
        say(why, len, "KVM_CREATE_VM: %s", strerror(-rc));
        rc = -ENODEV;
        goto err;
    }
    int n = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
    vm->max_slots = n > 0 ? (unsigned)n : 32;
    if (o->max_slots && o->max_slots < vm->max_slots)
        vm->max_slots = o->max_slots;
    vm->slot_used = calloc(vm->max_slots, 1);
    if (!vm->slot_used) {
        rc = -ENOMEM;
        goto err;
    }
    n = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (n > 0 && (n & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
        struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                     .args = {KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE}};
        vm->manual_protect = xioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0;
    }
    /* The dirty ring where KVM offers it (before any vCPU): dirty gfns come
     * per vCPU as they happen, no bitmap walk per slot; HUGEVM_KVM_DIRTY_BITMAP=1
     * keeps the bitmap (tests compare both) */
    int ring_max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
    const char *nb = getenv("HUGEVM_KVM_DIRTY_BITMAP");
    if (ring_max > 0 && !(nb && *nb == '1')) {
        uint32_t bytes = 4096 * sizeof(struct kvm_dirty_gfn);
        while (bytes > (uint32_t)ring_max)
            bytes /= 2;
        struct kvm_enable_cap cap = {.cap = KVM_CAP_DIRTY_LOG_RING, .args = {bytes}};
        if (bytes >= 4096 && xioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0) {
            vm->dirty_ring = true;
            vm->ring_entries = bytes / sizeof(struct kvm_dirty_gfn);
        }
    }
    /* Deleting any memslot zaps every mapping of the VM unless this quirk
     * is off (measured here: 10 ms plus 590 ms/GiB of refaults for a 4 GiB
     * guest, against 60 us and no refault). */
    n = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DISABLE_QUIRKS2);
    if (n > 0 && (n & KVM_X86_QUIRK_SLOT_ZAP_ALL)) {
        struct kvm_enable_cap cap = {.cap = KVM_CAP_DISABLE_QUIRKS2,
                                     .args = {KVM_X86_QUIRK_SLOT_ZAP_ALL}};
        vm->zap_all_off = xioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0;
    }
    if ((rc = get_cpuid(vm)) < 0) {
        say(why, len, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-rc));
        goto err;
    }
    if ((rc = probe_state(vm)) < 0) {
        say(why, len, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-rc));
        goto err;
    }

    /* the guest-physical space */
    gfn_t max_gfn = o->max_gfn;
    if (!max_gfn) {
        struct top t = {GFN_4G};
        pthread_mutex_lock(&d->lock);
        (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, top_leaf, &t);
        pthread_mutex_unlock(&d->lock);
        max_gfn = t.end;
    }
    max_gfn = (max_gfn + GFN_PER_GIB - 1) & ~(GFN_PER_GIB - 1);
    if (max_gfn > 512 * GFN_PER_GIB) {
        say(why, len, "guest-physical space of %llu GiB: the guest's page tables map at most 512",
            (unsigned long long)(max_gfn / GFN_PER_GIB));
        rc = -EINVAL;
        goto err;
    }
    if (vm->phys_bits < 64 && max_gfn > (1ULL << (vm->phys_bits - PAGE_SHIFT))) {
        say(why, len, "guest-physical space of %llu GiB beyond the guest's %u address bits",
            (unsigned long long)(max_gfn / GFN_PER_GIB), vm->phys_bits);
        rc = -EINVAL;
        goto err;
    }
    vm->guest_order = o->guest_order ? o->guest_order
                                     : vm->has_1g ? PAGE_ORDER_1G : PAGE_ORDER_2M;
    if (vm->guest_order == PAGE_ORDER_1G && !vm->has_1g) {
        say(why, len, "1G guest pages: this KVM offers none in the guest's CPUID (use 2M)");
        rc = -EINVAL;
        goto err;
    }
    if (vm->guest_order != PAGE_ORDER_1G && vm->guest_order != PAGE_ORDER_2M) {
        say(why, len, "guest page order %u: the kvm backend's page tables use 2M or 1G",
            vm->guest_order);
        rc = -EINVAL;
        goto err;
    }
    if (vm->guest_order == PAGE_ORDER_2M && max_gfn / GFN_PER_GIB > SYS_PD_MAX) {
        say(why, len, "%llu GiB of guest-physical space need more page directories than the "
            "system area holds with 2M guest pages (at most %llu GiB)",
            (unsigned long long)(max_gfn / GFN_PER_GIB), (unsigned long long)SYS_PD_MAX);
        rc = -EINVAL;
        goto err;
    }
    vm->max_gfn = max_gfn;
    vm->bytes = max_gfn << PAGE_SHIFT;
    uint8_t *raw = mmap(NULL, vm->bytes + GiB, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        rc = -errno;
        say(why, len, "reserving %llu GiB of address space: %s",
            (unsigned long long)(vm->bytes >> 30), strerror(-rc));
        goto err;
    }
    uint8_t *base = (uint8_t *)(((uintptr_t)raw + GiB - 1) & ~(uintptr_t)(GiB - 1));
    if (base > raw)
        munmap(raw, (size_t)(base - raw));
    if (base + vm->bytes < raw + vm->bytes + GiB)
        munmap(base + vm->bytes, (size_t)(raw + vm->bytes + GiB - (base + vm->bytes)));
    vm->base = base;

    /* the mirror */
    long s = kvm_sync(vm);
    if (s < 0) {
        rc = (int)s;
        say(why, len, "%s", rc == -ENOSPC ? "more RAM runs than KVM memslots"
                            : rc == -ERANGE ? "a RAM leaf lies beyond max_gfn"
                                            : strerror(-rc));
        goto err;
    }
    *out = vm;
    return 0;
err:
    kvm_vm_destroy(vm);
    return rc;
}

int kvm_exec_create(struct guest *g, struct domain *d, unsigned nr, unsigned guest_page_order,
                    struct guest_exec **out, char *why, size_t len)
{
    struct kvm_vm_opts o = {.guest_order = guest_page_order};
    struct kvm_vm *vm;
    int rc = kvm_vm_create(d, &o, &vm, why, len);
    if (rc < 0)
        return rc;
    vm->x.ops = &kvm_exec_ops;
    vm->x.g = g;
    vm->x.guest_page_order = vm->guest_order;
    int n = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (n < (int)sizeof(struct kvm_run)) {
        rc = n < 0 ? -errno : -EINVAL;
        say(why, len, "KVM_GET_VCPU_MMAP_SIZE: %d", n);
        goto err;
    }
    vm->run_size = (size_t)n;
    for (unsigned i = 0; i < nr; i++) {
        struct kcpu *c = &vm->cpu[i];
        c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
        if (c->fd < 0) {
            rc = -errno;
            say(why, len, "KVM_CREATE_VCPU %u: %s", i, strerror(-rc));
            goto err;
        }
        vm->nr_vcpus = i + 1;
        c->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
        if (c->run == MAP_FAILED) {
            c->run = NULL;
            rc = -errno;
            say(why, len, "mapping vCPU %u's kvm_run: %s", i, strerror(-rc));
            goto err;
        }
        if (vm->dirty_ring) {
            void *r = mmap(NULL, vm->ring_entries * sizeof(struct kvm_dirty_gfn),
                           PROT_READ | PROT_WRITE, MAP_SHARED, c->fd,
                           (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE);
            if (r == MAP_FAILED) {
                rc = -errno;
                say(why, len, "mapping vCPU %u's dirty ring: %s", i, strerror(-rc));
                goto err;
            }
            c->ring = r;
        }
        if ((rc = xioctl(c->fd, KVM_SET_CPUID2, vm->cpuid)) < 0) {
            say(why, len, "KVM_SET_CPUID2 on vCPU %u: %s", i, strerror(-rc));
            goto err;
        }
        if ((rc = write_gdt(vm, i)) < 0) {
            say(why, len, "vCPU %u's system pages (gfn %#llx, %#llx) must be RAM", i,
                (unsigned long long)SYS_GDT(i), (unsigned long long)SYS_KSTACK(i));
            goto err;
        }
    }
    if ((rc = write_idt(vm)) < 0 || (rc = write_page_tables(vm)) < 0) {
        say(why, len, "the system pages (gfn %#llx-%#llx) must be RAM",
            (unsigned long long)SYS_IDT, (unsigned long long)(SYS_PD0 + SYS_PD_MAX - 1));
        goto err;
    }
    (void)guest_kick_signal(); /* its handler exists before any kick */
    *out = &vm->x;
    return 0;
err:
    kvm_vm_destroy(vm);
    return rc;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
    if (!vm)
        return;
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        if (vm->cpu[i].run)
            munmap(vm->cpu[i].run, vm->run_size);
        if (vm->cpu[i].ring)
            munmap(vm->cpu[i].ring, vm->ring_entries * sizeof(struct kvm_dirty_gfn));
        if (vm->cpu[i].fd >= 0)
            close(vm->cpu[i].fd);
    }
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    if (vm->base != MAP_FAILED)
        munmap(vm->base, vm->bytes);
    free(vm->cpuid);
    if (vm->uffd >= 0)
        close(vm->uffd);
    snap_free_retired(vm);
    free(vm->snap);
    free(vm->runs);
    free(vm->slots);
    free(vm->slot_used);
    free(vm->pending);
    free(vm->dbuf);
    free(vm);
}

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
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "domain.h"
#include "machine.h"
#include "p2m.h"

#define GFN_PER_GIB (GiB >> PAGE_SHIFT)
/* KVM limits a slot to 2^31 - 1 pages; keep slots well below. */
#define SLOT_MAX_PAGES (1ULL << 30)

/* Boot pages, in order from KVM_BOOT_GFN. */
enum {
    BOOT_CODE = 0,
    BOOT_GDT = 1, /* GDT at offset 0, TSS (and its I/O bitmap) at BOOT_TSS_OFF */
    BOOT_STACK = 2,
    BOOT_PML4 = 3,
    BOOT_PDPT = 4,
    BOOT_PT0 = 5, /* 4K pages of the first 2M: the boot pages read-only */
    BOOT_PD0 = 6, /* page directory of GiB 0 (and, with 2M guest pages, of
                   * GiB i at BOOT_PD0 + i) */
};
#define BOOT_TSS_OFF 0x100u
#define TSS_IOMAP 0x68u                   /* I/O bitmap offset in the TSS */
#define TSS_LIMIT (TSS_IOMAP + 256 / 8)   /* ports 0-255, then a 0xff byte */
/* Page-table entry bits: present, writable, user, accessed, dirty, page
 * size.  Everything is a user page: the program runs at CPL 3. */
#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_US 0x4ULL
#define PTE_A 0x20ULL
#define PTE_D 0x40ULL
#define PTE_PS 0x80ULL
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US | PTE_A)
#define PTE_4K (PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D)
#define PTE_LEAF (PTE_4K | PTE_PS)

/*
 * The writer program (kvm.h, struct kvm_writer), hand-assembled.  In: rdi
 * x (seed), rsi base gpa, r9 pages, rcx writes, r8 = r10 = 0.  Out: rax
 * checksum, r10 writes done.
 */
static const uint8_t writer_code[] = {
    /* 0x00 loop: */
    0x48, 0x85, 0xc9,             /* test rcx, rcx                         */
    0x74, 0x4a,                   /* jz done (0x4f)                        */
    0x48, 0x89, 0xf8,             /* mov rax, rdi                          */
    0x48, 0xc1, 0xe0, 0x0d,       /* shl rax, 13                           */
    0x48, 0x31, 0xc7,             /* xor rdi, rax        x ^= x << 13      */
    0x48, 0x89, 0xf8,             /* mov rax, rdi                          */
    0x48, 0xc1, 0xe8, 0x07,       /* shr rax, 7                            */
    0x48, 0x31, 0xc7,             /* xor rdi, rax        x ^= x >> 7       */
    0x48, 0x89, 0xf8,             /* mov rax, rdi                          */
    0x48, 0xc1, 0xe0, 0x11,       /* shl rax, 17                           */
    0x48, 0x31, 0xc7,             /* xor rdi, rax        x ^= x << 17      */
    0x48, 0x89, 0xf8,             /* mov rax, rdi                          */
    0x49, 0xf7, 0xe1,             /* mul r9              rdx = x*pages>>64 */
    0x48, 0xc1, 0xe2, 0x0c,       /* shl rdx, 12         page offset       */
    0x89, 0xf8,                   /* mov eax, edi                          */
    0x25, 0xf8, 0x0f, 0x00, 0x00, /* and eax, 0xff8      word in the page  */
    0x48, 0x01, 0xd0,             /* add rax, rdx                          */
    0x48, 0x01, 0xf0,             /* add rax, rsi        rax = gpa         */
    0x48, 0x89, 0x38,             /* mov [rax], rdi      the write         */
    0x49, 0xc1, 0xc0, 0x05,       /* rol r8, 5                             */
    0x49, 0x31, 0xf8,             /* xor r8, rdi                           */
    0x49, 0x01, 0xc0,             /* add r8, rax         checksum          */
    0x49, 0xff, 0xc2,             /* inc r10             writes done       */
    0x48, 0xff, 0xc9,             /* dec rcx                               */
    0xeb, 0xb1,                   /* jmp loop (0x00)                       */
    /* 0x4f done: */
    0x4c, 0x89, 0xc0,             /* mov rax, r8                           */
    0xe6, KVM_GUEST_PORT,         /* out KVM_GUEST_PORT, al  (TSS bitmap)  */
    0xeb, 0xf9,                   /* jmp done (if resumed: report again)   */
};
_Static_assert(sizeof(writer_code) == 0x56, "jump offsets assume this length");

struct mrun {
    gfn_t gfn;
    mfn_t mfn;
    uint64_t nr;
};

struct mslot {
    unsigned id;
    gfn_t gfn;
    uint64_t pages;
};

struct kvm_vm {
    struct domain *d;
    int kvm_fd, vm_fd, vcpu_fd;
    struct kvm_run *run;
    size_t run_size;
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
    uint64_t *pending;   /* dirty bits of slots deleted while logging */
    uint64_t *dbuf;      /* one slot's KVM dirty bitmap */
    size_t dbuf_words;
    unsigned guest_order;
    uint64_t boot_pages;
    bool stale;
    uint64_t synced_gen, synced_tot, synced_pod;
    bool need_complete; /* last exit was IO/MMIO: finish it before reuse */
    struct kvm_vm_stats st;
};

const char *kvm_guest_exit_name(enum kvm_guest_exit e)
{
    switch (e) {
    case KVM_GUEST_DONE: return "done (out)";
    case KVM_GUEST_HLT: return "hlt";
    case KVM_GUEST_MMIO: return "mmio (access outside every memslot)";
    case KVM_GUEST_SHUTDOWN: return "shutdown (triple fault)";
    case KVM_GUEST_FAILED: return "failed";
    }
    return "?";
}

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

static const struct mrun *run_find(const struct kvm_vm *vm, gfn_t g)
{
    size_t i = run_upper(vm->runs, vm->nruns, g);
    return i < vm->nruns && vm->runs[i].gfn <= g ? &vm->runs[i] : NULL;
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
    struct mrun *v;
    size_t n, cap;
    uint64_t leaves[3], pages;
};

static int collect_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                        enum p2m_type type, ept_entry_t *e)
{
    struct collect *c = ctx;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    uint64_t nr = order_pages(order);
    if (gfn + nr > c->max_gfn)
        return -ERANGE;
    c->leaves[order_level(order)]++;
    c->pages += nr;
    if (c->n) {
        struct mrun *l = &c->v[c->n - 1];
        if (l->gfn + l->nr == gfn && l->mfn + l->nr == mfn) {
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
    c->v[c->n++] = (struct mrun){gfn, mfn, nr};
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

/* Delete slot s; while logging, its dirty bits go to vm->pending first. */
static int slot_delete(struct kvm_vm *vm, const struct mslot *s)
{
    if (vm->log_dirty && vm->pending && slot_dirty_get(vm, s, false) == 0) {
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
    /* RAM now, with a frame the mirror does not map there yet. */
    for (size_t k = 0; k < nn; k++) {
        gfn_t g = nv[k].gfn, end = nv[k].gfn + nv[k].nr;
        while (g < end) {
            mfn_t want = nv[k].mfn + (g - nv[k].gfn);
            size_t i = run_upper(ov, on, g);
            gfn_t stop;
            bool same = false;
            if (i < on && ov[i].gfn <= g) {
                stop = ov[i].gfn + ov[i].nr < end ? ov[i].gfn + ov[i].nr : end;
                same = ov[i].mfn + (g - ov[i].gfn) == want;
            } else {
                stop = i < on && ov[i].gfn < end ? ov[i].gfn : end;
            }
            if (!same) {
                if ((rc = map_frames(vm, g, want, stop - g)) < 0)
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
    struct collect c = {.max_gfn = vm->max_gfn};
    struct mslot *ns = NULL;
    unsigned nns = 0;
    long rc;

    vm->st.syncs++;
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
    memset(bitmap, 0, words * sizeof(*bitmap));
    memcpy(bitmap, vm->pending, mine * sizeof(*bitmap));
    for (unsigned i = 0; i < vm->nslots; i++) {
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
        .boot_pages = vm->boot_pages,
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
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -errno;
    char line[512];
    bool in = false;
    uint64_t lo = (uint64_t)(uintptr_t)vm->base, hi = lo + vm->bytes;
    *hm = (struct kvm_host_mapping){0};
    while (fgets(line, sizeof(line), f)) {
        unsigned long long s, e, kb;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s", &s, &e, perms) == 3) {
            /* the mirror's RAM mappings: shared, inside the range */
            in = s >= lo && e <= hi && perms[3] == 's';
            hm->vmas += in;
            continue;
        }
        if (!in)
            continue;
        if (sscanf(line, "Rss: %llu kB", &kb) == 1)
            hm->rss_bytes += kb << 10;
        else if (sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1 ||
                 sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1)
            hm->pmd_mapped_bytes += kb << 10;
    }
    fclose(f);
    return 0;
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

/* ---- the guest ----------------------------------------------------------- */

/*
 * Write code, GDT/TSS and page tables into the boot pages (all mirrored).
 * The page tables identity-map [0, max_gfn): 4K pages in the first 2M, where
 * the boot pages are read-only (a KVM that installs a writable mapping on a
 * read fault logs the page dirty: the guest's own pages must not be), 2M
 * pages in the rest of GiB 0, 1G or 2M pages above.  A and D are preset, so
 * the CPU never writes to the tables either.
 */
static int write_boot(struct kvm_vm *vm)
{
    uint8_t *pg[BOOT_PD0 + 512];
    for (uint64_t i = 0; i < vm->boot_pages; i++) {
        pg[i] = kvm_gfn_hva(vm, KVM_BOOT_GFN + i);
        if (!pg[i])
            return -EINVAL;
        memset(pg[i], 0, PAGE_SIZE);
    }
    memcpy(pg[BOOT_CODE], writer_code, sizeof(writer_code));

    /* The program runs at CPL 3 (KVM without hardware virtualization, such
     * as PVM, runs guest user mode natively and emulates guest kernel mode
     * instruction by instruction); its `out` is allowed by the TSS I/O
     * bitmap, for KVM_GUEST_PORT only. */
    uint64_t gdt[5] = {
        0,
        0x00affb000000ffffULL, /* 0x08: code, 64-bit, DPL 3, accessed */
        0x00cff3000000ffffULL, /* 0x10: data, read/write, DPL 3, accessed */
    };
    uint64_t tss = ((KVM_BOOT_GFN + BOOT_GDT) << PAGE_SHIFT) + BOOT_TSS_OFF;
    gdt[3] = TSS_LIMIT | (tss & 0xffffffULL) << 16 | 0x8bULL << 40 | /* busy 64-bit TSS, P */
             ((tss >> 24) & 0xffULL) << 56;
    gdt[4] = tss >> 32;
    memcpy(pg[BOOT_GDT], gdt, sizeof(gdt));
    uint8_t *t = pg[BOOT_GDT] + BOOT_TSS_OFF;
    uint16_t iomap = TSS_IOMAP;
    memcpy(t + 0x66, &iomap, sizeof(iomap));
    memset(t + TSS_IOMAP, 0xff, 256 / 8 + 1); /* every port denied ... */
    t[TSS_IOMAP + KVM_GUEST_PORT / 8] &= (uint8_t)~(1u << (KVM_GUEST_PORT % 8)); /* but one */

    uint64_t *pml4 = (uint64_t *)(void *)pg[BOOT_PML4];
    uint64_t *pdpt = (uint64_t *)(void *)pg[BOOT_PDPT];
    uint64_t *pt0 = (uint64_t *)(void *)pg[BOOT_PT0];
    pml4[0] = ((KVM_BOOT_GFN + BOOT_PDPT) << PAGE_SHIFT) | PTE_TABLE;
    for (uint64_t j = 0; j < 512; j++) {
        bool boot = j >= KVM_BOOT_GFN && j < KVM_BOOT_GFN + vm->boot_pages;
        pt0[j] = (j << PAGE_SHIFT) | (boot ? PTE_4K & ~PTE_RW : PTE_4K);
    }
    uint64_t gibs = vm->max_gfn / GFN_PER_GIB;
    for (uint64_t i = 0; i < gibs; i++) {
        if (i > 0 && vm->guest_order == PAGE_ORDER_1G) {
            pdpt[i] = (i << 30) | PTE_LEAF;
            continue;
        }
        pdpt[i] = ((KVM_BOOT_GFN + BOOT_PD0 + i) << PAGE_SHIFT) | PTE_TABLE;
        uint64_t *pd = (uint64_t *)(void *)pg[BOOT_PD0 + i];
        for (uint64_t j = 0; j < 512; j++)
            pd[j] = (i << 30) + (j << 21) + PTE_LEAF;
    }
    uint64_t *pd0 = (uint64_t *)(void *)pg[BOOT_PD0];
    pd0[0] = ((KVM_BOOT_GFN + BOOT_PT0) << PAGE_SHIFT) | PTE_TABLE;
    return 0;
}

/* A flat CPL 3 segment (selector RPL 3). */
static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
    *s = (struct kvm_segment){.base = 0, .limit = 0xffffffff, .selector = sel | 3, .type = type,
                              .present = 1, .dpl = 3, .db = !code, .s = 1, .l = code, .g = 1};
}

static int set_long_mode(struct kvm_vm *vm)
{
    struct kvm_sregs sr;
    int rc = xioctl(vm->vcpu_fd, KVM_GET_SREGS, &sr);
    if (rc < 0)
        return rc;
    seg(&sr.cs, 0x08, 0xb, true);
    seg(&sr.ds, 0x10, 0x3, false);
    sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
    sr.tr = (struct kvm_segment){
        .base = ((KVM_BOOT_GFN + BOOT_GDT) << PAGE_SHIFT) + BOOT_TSS_OFF,
        .limit = TSS_LIMIT, .selector = 0x18, .type = 0xb, .present = 1};
    sr.ldt = (struct kvm_segment){.unusable = 1};
    sr.gdt = (struct kvm_dtable){.base = (KVM_BOOT_GFN + BOOT_GDT) << PAGE_SHIFT,
                                 .limit = 5 * 8 - 1};
    sr.idt = (struct kvm_dtable){0};
    sr.cr0 = 0x80050033ULL; /* PG AM WP NE ET MP PE */
    sr.cr3 = (KVM_BOOT_GFN + BOOT_PML4) << PAGE_SHIFT;
    sr.cr4 = 0x20ULL;       /* PAE */
    sr.efer = 0x500ULL;     /* LMA LME */
    return xioctl(vm->vcpu_fd, KVM_SET_SREGS, &sr);
}

uint64_t kvm_writer_model(const struct kvm_writer *w,
                          void (*fn)(void *ctx, uint64_t gpa, uint64_t val), void *ctx)
{
    uint64_t x = w->seed ? w->seed : KVM_WRITER_SEED0, sum = 0;
    for (uint64_t i = 0; i < w->writes; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t page = (uint64_t)(((hv_u128)x * w->pages) >> 64);
        uint64_t gpa = ((w->gfn + page) << PAGE_SHIFT) + (x & 0xff8);
        if (fn)
            fn(ctx, gpa, x);
        sum = ((sum << 5) | (sum >> 59)) ^ x;
        sum += gpa;
    }
    return sum;
}

/* Let KVM finish an IO/MMIO exit without running the guest, so the next
 * KVM_SET_REGS is not overtaken by the completion. */
static void complete_exit(struct kvm_vm *vm)
{
    if (!vm->need_complete)
        return;
    vm->run->immediate_exit = 1;
    (void)ioctl(vm->vcpu_fd, KVM_RUN, 0); /* -EINTR by design */
    vm->run->immediate_exit = 0;
    vm->need_complete = false;
}

int kvm_run_writer(struct kvm_vm *vm, const struct kvm_writer *w, struct kvm_guest_result *res)
{
    gfn_t boot_end = KVM_BOOT_GFN + vm->boot_pages;
    if (!w->pages || w->gfn >= vm->max_gfn || w->pages > vm->max_gfn - w->gfn ||
        (w->gfn < boot_end && w->gfn + w->pages > KVM_BOOT_GFN))
        return -EINVAL;
    if (kvm_sync_needed(vm))
        return -ESTALE;
    int rc = write_boot(vm);
    if (rc < 0)
        return rc;
    complete_exit(vm);
    if ((rc = set_long_mode(vm)) < 0)
        return rc;
    struct kvm_regs r = {
        .rflags = 0x2, /* IOPL 0: the TSS bitmap decides */
        .rip = (KVM_BOOT_GFN + BOOT_CODE) << PAGE_SHIFT,
        .rsp = (KVM_BOOT_GFN + BOOT_STACK + 1) << PAGE_SHIFT,
        .rdi = w->seed ? w->seed : KVM_WRITER_SEED0,
        .rsi = w->gfn << PAGE_SHIFT,
        .r9 = w->pages,
        .rcx = w->writes,
    };
    if ((rc = xioctl(vm->vcpu_fd, KVM_SET_REGS, &r)) < 0)
        return rc;

    *res = (struct kvm_guest_result){.exit = KVM_GUEST_FAILED};
    struct kvm_run *run = vm->run;
    uint64_t t0 = hv_now_ns();
    for (bool more = true; more;) {
        rc = ioctl(vm->vcpu_fd, KVM_RUN, 0);
        vm->st.runs++;
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        res->kvm_exit_reason = run->exit_reason;
        more = false;
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            vm->st.exits_io++;
            vm->need_complete = true;
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == KVM_GUEST_PORT)
                res->exit = KVM_GUEST_DONE;
            else
                res->detail = run->io.port;
            break;
        case KVM_EXIT_HLT:
            vm->st.exits_hlt++;
            res->exit = KVM_GUEST_HLT;
            break;
        case KVM_EXIT_MMIO:
            vm->st.exits_mmio++;
            vm->need_complete = true;
            res->exit = KVM_GUEST_MMIO;
            res->mmio_gpa = run->mmio.phys_addr;
            res->mmio_len = run->mmio.len;
            res->mmio_write = run->mmio.is_write;
            break;
        case KVM_EXIT_SHUTDOWN:
            vm->st.exits_other++;
            res->exit = KVM_GUEST_SHUTDOWN;
            break;
        case KVM_EXIT_FAIL_ENTRY:
            vm->st.exits_other++;
            res->detail = run->fail_entry.hardware_entry_failure_reason;
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            vm->st.exits_other++;
            res->detail = run->internal.suberror;
            break;
        case KVM_EXIT_INTR:
            more = true; /* a signal: go on */
            break;
        default:
            vm->st.exits_other++;
            break;
        }
    }
    res->ns = hv_now_ns() - t0;
    struct kvm_regs out;
    if ((rc = xioctl(vm->vcpu_fd, KVM_GET_REGS, &out)) < 0)
        return rc;
    res->checksum = out.rax;
    res->writes_done = out.r10;
    res->rip = out.rip;
    return 0;
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

/* Give the vCPU the CPUID KVM supports; report 1G pages and phys bits. */
static int setup_cpuid(struct kvm_vm *vm, bool *has_1g, unsigned *phys_bits)
{
    struct kvm_cpuid2 *c = NULL;
    int rc;
    *has_1g = false;
    *phys_bits = 36;
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
    if (rc < 0)
        goto out;
    for (unsigned i = 0; i < c->nent; i++) {
        if (c->entries[i].function == 0x80000001u)
            *has_1g = (c->entries[i].edx >> 26) & 1;
        if (c->entries[i].function == 0x80000008u && (c->entries[i].eax & 0xff))
            *phys_bits = c->entries[i].eax & 0xff;
    }
    rc = xioctl(vm->vcpu_fd, KVM_SET_CPUID2, c);
out:
    free(c);
    return rc;
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
    vm->vm_fd = vm->vcpu_fd = -1;
    vm->base = MAP_FAILED;
    vm->run = MAP_FAILED;
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
    vm->dirty_ring = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING) > 0;

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

    /* the vCPU */
    vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
    if (vm->vcpu_fd < 0) {
        rc = -errno;
        say(why, len, "KVM_CREATE_VCPU: %s", strerror(-rc));
        goto err;
    }
    n = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (n < (int)sizeof(struct kvm_run)) {
        rc = n < 0 ? -errno : -EINVAL;
        say(why, len, "KVM_GET_VCPU_MMAP_SIZE: %d", n);
        goto err;
    }
    vm->run_size = (size_t)n;
    vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED) {
        rc = -errno;
        say(why, len, "mapping the vCPU's kvm_run: %s", strerror(-rc));
        goto err;
    }
    bool has_1g;
    unsigned phys_bits;
    if ((rc = setup_cpuid(vm, &has_1g, &phys_bits)) < 0) {
        say(why, len, "KVM_GET_SUPPORTED_CPUID/KVM_SET_CPUID2: %s", strerror(-rc));
        goto err;
    }
    if (phys_bits < 64 && max_gfn > (1ULL << (phys_bits - PAGE_SHIFT))) {
        say(why, len, "guest-physical space of %llu GiB beyond the guest's %u address bits",
            (unsigned long long)(max_gfn / GFN_PER_GIB), phys_bits);
        rc = -EINVAL;
        goto err;
    }
    vm->guest_order = has_1g && !o->guest_2m ? PAGE_ORDER_1G : PAGE_ORDER_2M;
    vm->boot_pages = BOOT_PD0 + (vm->guest_order == PAGE_ORDER_2M ? max_gfn / GFN_PER_GIB : 1);
    if (KVM_BOOT_GFN + vm->boot_pages > VGA_HOLE_GFN) {
        say(why, len, "%llu GiB of guest-physical space need more page directories than fit "
            "below the VGA hole with 2M guest pages", (unsigned long long)(max_gfn / GFN_PER_GIB));
        rc = -EINVAL;
        goto err;
    }

    /* the mirror */
    long s = kvm_sync(vm);
    if (s < 0) {
        rc = (int)s;
        say(why, len, "%s", rc == -ENOSPC ? "more RAM runs than KVM memslots"
                            : rc == -ERANGE ? "a RAM leaf lies beyond max_gfn"
                                            : strerror(-rc));
        goto err;
    }
    for (uint64_t i = 0; i < vm->boot_pages; i++) {
        if (!kvm_gfn_hva(vm, KVM_BOOT_GFN + i)) {
            say(why, len, "the guest's boot pages (gfn %#llx-%#llx) must be RAM; gfn %#llx is not",
                (unsigned long long)KVM_BOOT_GFN,
                (unsigned long long)(KVM_BOOT_GFN + vm->boot_pages - 1),
                (unsigned long long)(KVM_BOOT_GFN + i));
            rc = -EINVAL;
            goto err;
        }
    }
    *out = vm;
    return 0;
err:
    kvm_vm_destroy(vm);
    return rc;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
    if (!vm)
        return;
    if (vm->run != MAP_FAILED)
        munmap(vm->run, vm->run_size);
    if (vm->vcpu_fd >= 0)
        close(vm->vcpu_fd);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    if (vm->base != MAP_FAILED)
        munmap(vm->base, vm->bytes);
    free(vm->runs);
    free(vm->slots);
    free(vm->slot_used);
    free(vm->pending);
    free(vm->dbuf);
    free(vm);
}

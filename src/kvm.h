/*
 * kvm.h - the `kvm` vCPU backend: a domain's p2m mirrored into host
 * mappings and run as a real guest under /dev/kvm.
 *
 * Mirror.  One host virtual range is reserved for the guest-physical space
 * (PROT_NONE, max_gfn pages, 1 GiB aligned); every RAM leaf of the p2m
 * (gfn, mfn, order) is mapped there with mmap(MAP_SHARED|MAP_FIXED) of the
 * machine memfd at offset mfn * 4K, at host address base + gfn * 4K.  Host
 * address and file offset are therefore congruent modulo the leaf size: a
 * 2M (1G) leaf is a 2M (1G) aligned piece of one host mapping, which the
 * host can back with PMD-mapped huge pages when shmem THP allows it (and
 * then KVM's EPT can map it with 2M leaves).  Leaves that are contiguous in
 * both gfn and mfn are mapped by one mmap (fewer VMAs; the kernel would
 * merge them anyway).  The MMIO and VGA holes, unpopulated and PoD gfns stay
 * PROT_NONE.
 *
 * Memslots.  One KVM memslot per RAM run (maximal gfn range whose every gfn
 * is RAM, whatever its frames), at userspace address base + gfn * 4K; the
 * holes and unpopulated gfns are in no slot, so a guest access there exits
 * with KVM_EXIT_MMIO.  At most KVM_CAP_NR_MEMSLOTS slots (-ENOSPC beyond).
 *
 * Sync.  After the p2m changed (balloon out/in, defrag moving frames,
 * populate), kvm_sync() walks the p2m again and changes only what differs:
 * gfns whose frames changed are mapped again (MAP_FIXED replaces the old
 * pages; KVM's MMU notifier drops its EPT entries), gfns no longer RAM go
 * back to PROT_NONE, slots that changed are deleted and created again.
 * Contract: no vCPU runs during kvm_sync, and every p2m change is followed
 * by kvm_sync before the guest runs again; kvm_run_writer() refuses with
 * -ESTALE while the domain's (p2m_gen, tot_pages, PoD entry count) differ
 * from those seen by the last sync (a stale mirror could let the guest
 * reach frames the domain no longer owns).
 *
 * Dirty logging.  kvm_set_log_dirty(on) sets KVM_MEM_LOG_DIRTY_PAGES on
 * every slot (KVM write-protects and, on this kernel, splits its huge EPT
 * mappings); kvm_harvest() collects KVM_GET_DIRTY_LOG of every slot into a
 * gfn bitmap and re-arms it (KVM_CLEAR_DIRTY_LOG when the manual-protect
 * capability could be enabled, else the classic get-and-clear).  A slot
 * deleted by a sync while logging first hands its dirty bits to a pending
 * bitmap that the next harvest reports, so no write is lost.  This log is
 * KVM's, independent of the domain's own log-dirty (dirty.h), which tracks
 * the soft vCPUs; a migration of a KVM guest would OR the two.
 *
 * Guest.  A tiny 64-bit guest, no BIOS: each run writes, in RAM pages the
 * domain owns below the VGA hole (gfn KVM_BOOT_GFN onwards), the code, a GDT
 * with a 64-bit TSS whose I/O bitmap opens KVM_GUEST_PORT, a stack page and
 * page tables that identity-map the whole reserved guest-physical space
 * (4K pages in the first 2M, where the boot pages are read-only; 2M pages
 * in the rest of GiB 0; above it 1G pages when KVM offers them to the guest
 * in CPUID, else 2M; A and D preset, so neither the CPU nor KVM has a reason
 * to write or dirty-log the guest's own pages).  The vCPU starts directly
 * in long mode at CPL 3 (KVM_SET_SREGS/KVM_SET_REGS): user mode is what a
 * KVM without hardware virtualization (PVM: shadow paging, guest kernel mode
 * emulated instruction by instruction) runs natively, and hardware KVM runs
 * it the same.  The program is the writer described at struct kvm_writer,
 * hand-assembled in kvm.c.
 *
 * Threading: one thread uses a kvm_vm at a time.  kvm_sync takes d->lock
 * while it walks the p2m.
 */
#ifndef HUGEVM_KVM_H
#define HUGEVM_KVM_H

#include "common.h"

struct domain;
struct kvm_vm;

/* The guest's own pages: code, GDT/TSS, stack, PML4, PDPT, the page table
 * of the first 2M, then the page directory of GiB 0, or one per GiB when
 * 2M guest pages are used.  They must be RAM below the VGA hole (gfn 0xa0),
 * so 2M guest pages cover at most 138 GiB. */
#define KVM_BOOT_GFN 0x10ULL
/* Port the guest's `out` reports "done" on. */
#define KVM_GUEST_PORT 0xf4u

struct kvm_vm_opts {
    gfn_t max_gfn;     /* guest-physical space mirrored; 0: the end of the
                        * highest p2m leaf (at least 4 GiB), rounded up to
                        * 1 GiB; must cover every RAM leaf */
    bool guest_2m;     /* guest page tables with 2M pages even if 1G exist */
    unsigned max_slots; /* use at most this many memslots (0: KVM_CAP_NR_MEMSLOTS) */
};

/* Statistics declared once: name, description. */
#define KVM_STAT_FIELDS(X)                                                     \
    X(syncs, "kvm_sync calls")                                                 \
    X(maps, "mmap calls mapping RAM into the mirror")                          \
    X(pages_mapped, "4K pages (re)mapped into the mirror")                     \
    X(unmaps, "ranges returned to PROT_NONE")                                  \
    X(pages_unmapped, "4K pages returned to PROT_NONE")                        \
    X(slots_created, "memslots created")                                       \
    X(slots_deleted, "memslots deleted")                                       \
    X(runs, "KVM_RUN calls")                                                   \
    X(exits_io, "KVM_EXIT_IO exits")                                           \
    X(exits_mmio, "KVM_EXIT_MMIO exits")                                       \
    X(exits_hlt, "KVM_EXIT_HLT exits")                                         \
    X(exits_other, "other exits (shutdown, entry failure, internal error)")   \
    X(harvests, "dirty-log harvests")                                          \
    X(pages_harvested, "dirty 4K pages handed out by harvests")               \
    X(pending_dirty, "dirty pages kept from slots deleted while logging")

struct kvm_vm_stats {
#define X(name, desc) uint64_t name;
    KVM_STAT_FIELDS(X)
#undef X
};

/* What the mirror looks like after the last sync. */
struct kvm_mirror_info {
    gfn_t max_gfn;          /* reserved guest-physical space, in pages */
    uint64_t base;          /* host address of gfn 0 (1 GiB aligned) */
    uint64_t mapped_pages;  /* RAM pages mapped */
    uint64_t leaves[3];     /* RAM leaves mirrored at 4K, 2M, 1G */
    uint64_t runs;          /* host mappings (gfn- and mfn-contiguous runs) */
    unsigned slots;         /* memslots in use */
    unsigned max_slots;     /* KVM_CAP_NR_MEMSLOTS */
    unsigned guest_order;   /* guest page-table leaves: 9 (2M) or 18 (1G) */
    uint64_t boot_pages;    /* [KVM_BOOT_GFN, + boot_pages): the guest's own */
    bool manual_protect;    /* KVM_CLEAR_DIRTY_LOG in use */
    bool dirty_ring;        /* KVM_CAP_DIRTY_LOG_RING offered (unused) */
    bool log_dirty;
};

/* One memslot. */
struct kvm_slot_info {
    unsigned id;
    gfn_t gfn;
    uint64_t pages;
    bool log_dirty;
};

/* Host huge-page coverage of the mirror, from /proc/self/smaps. */
struct kvm_host_mapping {
    uint64_t vmas;             /* mappings inside the reserved range */
    uint64_t rss_bytes;        /* resident through the mirror */
    uint64_t pmd_mapped_bytes; /* ShmemPmdMapped + FilePmdMapped */
};

/*
 * The guest program: xorshift64 (x ^= x << 13; x ^= x >> 7; x ^= x << 17)
 * from `seed` (0 is replaced by KVM_WRITER_SEED0); for each of `writes`
 * steps, page = high 64 bits of x * pages, offset = x & 0xff8, and the
 * 8 bytes x are written at gpa = (gfn + page) * 4K + offset; the checksum
 * starts at 0 and becomes rotl(checksum, 5) ^ x, plus gpa.  At the end the
 * guest puts the checksum in rax and executes `out KVM_GUEST_PORT, al`
 * (KVM_EXIT_IO), again if resumed.  Registers in: rdi seed, rsi gfn * 4K,
 * r9 pages, rcx writes; out: rax checksum, r10 writes done.
 */
#define KVM_WRITER_SEED0 0x9E3779B97F4A7C15ULL
struct kvm_writer {
    uint64_t seed;
    gfn_t gfn;
    uint64_t pages;  /* > 0 */
    uint64_t writes;
};

enum kvm_guest_exit {
    KVM_GUEST_DONE = 0, /* `out` on KVM_GUEST_PORT: the program finished */
    KVM_GUEST_HLT,      /* hlt (not in the writer program) */
    KVM_GUEST_MMIO,     /* access outside every memslot (mmio_* fields) */
    KVM_GUEST_SHUTDOWN, /* triple fault (an exception: the guest has no IDT) */
    KVM_GUEST_FAILED,   /* entry failure, internal error, other exit */
};
const char *kvm_guest_exit_name(enum kvm_guest_exit e);

struct kvm_guest_result {
    enum kvm_guest_exit exit;
    uint32_t kvm_exit_reason; /* the raw KVM_EXIT_* */
    uint64_t detail;          /* entry-failure reason / internal suberror */
    uint64_t checksum;        /* rax at the exit */
    uint64_t writes_done;     /* r10 at the exit */
    uint64_t rip;
    uint64_t mmio_gpa;
    unsigned mmio_len;
    bool mmio_write;
    uint64_t ns;              /* wall time from the first KVM_RUN to the exit */
};

/* Can this process run KVM guests?  0, or a negative errno with a reason
 * ("/dev/kvm: No such file or directory", "KVM API version 11", ...) in
 * why[0..len). */
int kvm_probe(char *why, size_t len) HV_MUST_CHECK;

/*
 * A VM for domain d (which must outlive it, and be destroyed after it):
 * reserve and mirror, create the memslots and one vCPU, write the guest's
 * boot pages.  `o` may be NULL (defaults).  -ENODEV (no usable /dev/kvm),
 * -EINVAL (the boot pages are not RAM, max_gfn too small or beyond 512 GiB),
 * -ENOSPC (more RAM runs than memslots), -ENOMEM, or another errno of the
 * KVM API; `why` (may be NULL) receives a one-line reason.
 */
int kvm_vm_create(struct domain *d, const struct kvm_vm_opts *o, struct kvm_vm **out,
                  char *why, size_t len) HV_MUST_CHECK;
/* Closes the vCPU and the VM, unmaps the mirror.  NULL is fine. */
void kvm_vm_destroy(struct kvm_vm *vm);

/* Re-mirror after p2m changes (see the file comment).  Returns the number of
 * 4K pages whose mapping changed (mapped or unmapped), or -ERANGE (a RAM
 * leaf beyond max_gfn), -ENOSPC (memslots), -ENOMEM, another errno.  After
 * an error the mirror is emptied and marked stale; a later successful sync
 * rebuilds it. */
long kvm_sync(struct kvm_vm *vm) HV_MUST_CHECK;
/* True when the domain changed since the last successful sync. */
bool kvm_sync_needed(const struct kvm_vm *vm);

/* Dirty logging on every slot (and on slots a later sync creates).  Turning
 * it off drops what was not harvested. */
int kvm_set_log_dirty(struct kvm_vm *vm, bool on) HV_MUST_CHECK;
/*
 * Pages the guest wrote since log-dirty was switched on or the previous
 * harvest: `bitmap` gets nr_gfns bits (nr_gfns >= max_gfn; bits beyond are
 * zeroed), bit g set when gfn g was written; KVM's log is re-armed for those
 * pages.  *dirty (may be NULL) gets the number of bits set.  The vCPU must
 * not run.  -EINVAL when off or nr_gfns too small.
 */
int kvm_harvest(struct kvm_vm *vm, uint64_t *bitmap, uint64_t nr_gfns,
                uint64_t *dirty) HV_MUST_CHECK;

/* Host address of gfn in the mirror, NULL when gfn is not mirrored RAM. */
void *kvm_gfn_hva(const struct kvm_vm *vm, gfn_t gfn);
/* Frame the mirror maps gfn to (INVALID_MFN when none). */
mfn_t kvm_mirror_mfn(const struct kvm_vm *vm, gfn_t gfn);
void kvm_mirror_get_info(const struct kvm_vm *vm, struct kvm_mirror_info *mi);
/* Copy up to max slots (gfn order) into out; returns the number in use. */
unsigned kvm_get_slots(const struct kvm_vm *vm, struct kvm_slot_info *out, unsigned max);
/* Measure host huge-page coverage now.  -errno when smaps is unreadable. */
int kvm_host_mapping_measure(const struct kvm_vm *vm, struct kvm_host_mapping *hm) HV_MUST_CHECK;
void kvm_get_stats(const struct kvm_vm *vm, struct kvm_vm_stats *st);
/* KVM's own count of its guest-physical mappings by size (its binary
 * statistics "pages_4k", "pages_2m", "pages_1g": EPT/NPT leaves, or shadow
 * page-table leaves without TDP).  -ENOTSUP when the kernel has no stats fd. */
int kvm_mmu_pages(const struct kvm_vm *vm, uint64_t pages[3]) HV_MUST_CHECK;

/*
 * Run the writer program until it exits to the host.  [gfn, gfn + pages)
 * must lie inside max_gfn and clear of the boot pages (it need not be RAM:
 * an access outside the memslots ends the run with KVM_GUEST_MMIO).
 * Returns 0 with the exit in *res, or -EINVAL, -ESTALE (kvm_sync needed,
 * nothing run), or the errno of a failed KVM ioctl.
 */
int kvm_run_writer(struct kvm_vm *vm, const struct kvm_writer *w,
                   struct kvm_guest_result *res) HV_MUST_CHECK;

/* The same program on the host (the model): calls fn (may be NULL) for
 * every write in order and returns the checksum the guest reports. */
uint64_t kvm_writer_model(const struct kvm_writer *w,
                          void (*fn)(void *ctx, uint64_t gpa, uint64_t val), void *ctx);

#endif

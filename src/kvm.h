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
 * by kvm_sync before the guest runs again; a vCPU refuses to run (an
 * -ESTALE exit) while the domain's (p2m_gen, tot_pages, PoD entry count) differ
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
 * Guest (the guest layer's `kvm` program backend, guest.h).  Guest
 * programs (guest/hugevm_guest.h) run at CPL 3 in long mode, one vCPU per
 * host thread, no BIOS: the host writes the system pages (below
 * HVG_SYSTEM_END) itself: an IDT whose 32 exception gates lead to CPL 0
 * stubs that report the vector on HVG_PORT_EXCEPTION (a guest exception is
 * an error naming the vCPU, vector, rip and address, never a silent
 * shutdown), a GDT and a TSS per vCPU whose I/O bitmap opens HVG_PORT
 * only, and page tables that identity-map the whole guest-physical space
 * with 1G leaves when KVM offers them in CPUID, else 2M (the guest's and
 * the host's superpages must line up for KVM to map 2M).  User mode is
 * what a KVM without hardware virtualization (PVM: shadow paging, guest
 * kernel mode emulated instruction by instruction) runs natively, and
 * hardware KVM runs it the same.  A kick (guest.h) sets immediate_exit and
 * signals the vCPU's thread.  KVM_X86_QUIRK_SLOT_ZAP_ALL is disabled where
 * KVM allows it, so a memslot change does not zap the whole guest.
 *
 * Threading: vCPU threads only run; kvm_sync, log-dirty changes and
 * harvests come from one controlling thread, kvm_sync with the vCPUs
 * parked (guest_call).  kvm_sync takes d->lock while it walks the p2m.
 */
#ifndef HUGEVM_KVM_H
#define HUGEVM_KVM_H

#include "common.h"
#include "guest_exec.h"

struct domain;
struct kvm_vm;

struct kvm_vm_opts {
    gfn_t max_gfn;     /* guest-physical space mirrored; 0: the end of the
                        * highest p2m leaf (at least 4 GiB), rounded up to
                        * 1 GiB; must cover every RAM leaf */
    unsigned guest_order; /* guest page-table leaves: PAGE_ORDER_2M or _1G;
                           * 0: 1G when KVM offers it to the guest, else 2M */
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
    X(pending_dirty, "dirty pages kept from slots deleted while logging")        \
    X(ring_entries, "dirty-ring entries collected")                            \
    X(ring_full_exits, "vCPU exits on a full dirty ring")

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
    unsigned vcpus;
    bool slot_zap_all_off;  /* KVM_X86_QUIRK_SLOT_ZAP_ALL disabled */
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

/* Can this process run KVM guests?  0, or a negative errno with a reason
 * ("/dev/kvm: No such file or directory", "KVM API version 11", ...) in
 * why[0..len). */
int kvm_probe(char *why, size_t len) HV_MUST_CHECK;

/*
 * A VM for domain d (which must outlive it, and be destroyed after it):
 * reserve and mirror, create the memslots; no vCPU (kvm_exec_create, guest.h,
 * adds them and the system pages).  `o` may be NULL (defaults).  -ENODEV
 * (no usable /dev/kvm), -EINVAL (max_gfn beyond 512 GiB or the guest's
 * address bits, a guest page order KVM does not offer),
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

/* The kvm_vm behind a kvm program guest's exec (NULL for other backends). */
struct kvm_vm *kvm_exec_vm(struct guest_exec *x);

#endif

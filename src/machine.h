/*
 * machine.h - the host memory hugevm manages.
 *
 * One memfd (shmem) of the user-given size, mapped once MAP_SHARED and
 * advised MADV_HUGEPAGE; nothing is committed until touched.  mfn N lives at
 * byte N * 4096 of the mapping, so mfn -> host pointer is arithmetic.
 *
 * Scrubbing: the machine installs itself as the frame allocator's scrub hook,
 * so every extent is zeroed as it is freed and every free frame reads as zero
 * (a new domain can never read another domain's bytes, and a fresh
 * allocation needs no clearing).  Extents of 2M and more are returned to the
 * host with fallocate(PUNCH_HOLE) (no writes, RSS drops); smaller ones are
 * zeroed in place with memset when they are resident, punched when partly
 * resident (or possibly swapped out), and left alone when never touched.
 *
 * A resident machine (machine_opts.resident) behaves like a hypervisor's
 * RAM instead: every frame is allocated and mapped when the machine is
 * created, so restore and migration write into memory that is already there
 * (the host's first-touch cost, which in a VM with free page reporting can
 * be ten times slower than memcpy, is paid once, up front, and reported),
 * and freed extents are zeroed in place rather than returned to the host.
 */
#ifndef HUGEVM_MACHINE_H
#define HUGEVM_MACHINE_H

#include "common.h"
#include "frames.h"

/* What /sys/kernel/mm/transparent_hugepage/shmem_enabled allows. */
enum thp_shmem {
    THP_SHMEM_UNKNOWN = 0, /* file missing/unreadable */
    THP_SHMEM_NEVER,
    THP_SHMEM_DENY,
    THP_SHMEM_ADVISE,
    THP_SHMEM_WITHIN_SIZE,
    THP_SHMEM_ALWAYS,
    THP_SHMEM_FORCE,
};

struct machine_stats {
    uint64_t scrub_punched_bytes; /* freed by PUNCH_HOLE */
    uint64_t scrub_zeroed_bytes;  /* zeroed with memset */
    uint64_t scrub_skipped_bytes; /* never touched (holes): nothing to do */
    uint64_t scrub_calls;
    uint64_t prefault_ns;         /* resident machine: time to commit it */
};

struct machine_opts {
    uint64_t bytes;            /* positive multiple of 2 MiB */
    enum frame_policy policy;
    bool resident;             /* commit and map everything at create */
};

struct machine {
    uint8_t *base;         /* mapping of the memfd */
    uint64_t bytes;        /* size of the machine */
    uint64_t nr_frames;
    int fd;                /* the memfd */
    struct frames *frames; /* allocator over [0, nr_frames) */
    enum thp_shmem thp;    /* host THP setting seen at create */
    domid_t next_domid;    /* handed out by domain_create */
    bool swap_possible;    /* host has swap: non-resident != zero */
    bool resident;         /* committed at create, scrubbed in place */
    unsigned char *residency; /* mincore vector for scrub, 2^MAX_ORDER bytes */
    struct machine_stats stats;
};

/* bytes must be a positive multiple of 2 MiB.  -EINVAL, -ENOMEM or the
 * errno of memfd_create/ftruncate/mmap. */
int machine_create(struct machine **out, uint64_t bytes,
                   enum frame_policy policy) HV_MUST_CHECK;
/* As machine_create, with the options above.  A resident machine larger
 * than the host's MemAvailable, or that the host fails to commit, is
 * refused with -ENOMEM (or the errno of fallocate/madvise) rather than left
 * to the OOM killer or to SIGBUS later. */
int machine_create_opts(struct machine **out, const struct machine_opts *o) HV_MUST_CHECK;
void machine_destroy(struct machine *m);

static inline void *machine_ptr(const struct machine *m, mfn_t mfn)
{
    return m->base + (mfn << PAGE_SHIFT);
}
static inline uint64_t machine_offset(mfn_t mfn) { return mfn << PAGE_SHIFT; }

/*
 * A cursor over the memfd's holes: never-written (or punched) ranges read as
 * zero without being read, and reading a shmem hole would commit it.
 *
 * Without swap, "in a hole" is "not in the page cache", which mincore
 * answers for a whole aligned chunk of MACHINE_HOLES_CHUNK pages in one
 * call: a lookup costs one syscall per chunk touched however scattered the
 * frames are (a PoD guest's 4K frames are).  With swap a page that is not
 * resident may be swapped out, so the cursor asks SEEK_DATA/SEEK_HOLE and
 * caches the answer as a window; callers walking offsets mostly in order
 * pay about one syscall per hole/data boundary.  What the cursor knows
 * stays true while the frames are not freed and nobody writes to holes
 * (machine_holes_forget drops it, e.g. between batches of a live guest).
 */
#define MACHINE_HOLES_CHUNK 512u
struct machine_holes {
    const struct machine *m;
    uint64_t lo, hi;   /* lseek: cached window [lo, hi) */
    bool data;         /* lseek: the window is data (true) or a hole (false) */
    uint64_t chunk;    /* mincore: byte offset of vec[0] (UINT64_MAX: none) */
    unsigned char vec[MACHINE_HOLES_CHUNK];
};
static inline void machine_holes_init(struct machine_holes *h, const struct machine *m)
{
    h->m = m;
    h->lo = h->hi = 0;
    h->data = false;
    h->chunk = UINT64_MAX;
}
/* Forget what may have changed: holes the guest may have written since. */
static inline void machine_holes_forget(struct machine_holes *h)
{
    if (!h->data)
        h->lo = h->hi = 0;
    h->chunk = UINT64_MAX;
}
/* Is machine byte offset `off` inside a hole of the memfd (reads as zero)? */
bool machine_offset_in_hole(struct machine_holes *h, uint64_t off);

/* Host RAM currently backing the machine (memfd blocks), in bytes. */
uint64_t machine_resident_bytes(const struct machine *m);

/* Read the host's shmem THP setting. */
enum thp_shmem thp_shmem_read(void);
const char *thp_shmem_name(enum thp_shmem t);
/* True when a MADV_HUGEPAGE shmem mapping can get PMD-mapped huge pages. */
bool thp_shmem_usable(enum thp_shmem t);
/* One-paragraph human explanation of what the setting implies. */
const char *thp_shmem_explain(enum thp_shmem t);
/* Switch shmem_enabled to "advise" when it is "never" and we are root
 * (tests and demo only).  Returns 0 if usable afterwards, else -errno. */
int thp_shmem_try_enable(void);
/* Write setting t (root): to switch the host for a run, and to put back
 * what thp_shmem_read returned before (the tests, the demo and the bench do
 * on every exit path).  0 or -errno. */
int thp_shmem_set(enum thp_shmem t);

/* How the host maps [lo, hi) of this process (shared mappings inside it,
 * from /proc/self/smaps): mappings, resident bytes, and bytes mapped with
 * PMDs (ShmemPmdMapped + FilePmdMapped: 2M host pages). */
struct host_mapping {
    uint64_t vmas;
    uint64_t rss_bytes;
    uint64_t pmd_mapped_bytes;
};
int host_mapping_measure(uint64_t lo, uint64_t hi, struct host_mapping *hm) HV_MUST_CHECK;

#endif

/*
 * hugevm.h - libhugevm, guest memory that keeps its superpages: the public
 * interface for a VMM that embeds it.  C11, and C++ through extern "C".
 *
 * Four opaque handles, created and destroyed by the caller:
 *
 *   hugevm_machine    the host memory hugevm manages: one memfd, a frame
 *                     allocator (buddy or fragpool) over it.
 *   hugevm_domain     a guest's memory: its p2m with 4K/2M/1G leaves, the
 *                     frames it owns, populate with 1G -> 2M -> 4K fallback
 *                     and holes, PoD, balloon, defrag, log-dirty, save and
 *                     restore in Xen's migration-stream layout.
 *   hugevm_guest      vCPUs running over a domain: soft vCPUs (a software
 *                     EPT walker with a TLB model), or the embedded C guest
 *                     programs under KVM, or natively as host code.
 *   hugevm_migration  the settings of a live migration (its TLS
 *                     credentials, pre-copy policy): send a guest over a
 *                     connected socket, or receive one.
 *
 * Conventions:
 *   - Functions that can fail return 0 (or a count) and a negative errno
 *     value on failure.  hugevm_strerror(rc) says what it means for hugevm
 *     and what to do; hugevm_last_error() gives the detail of the calling
 *     thread's last failure (which file, which record, which option).
 *   - Sizes are in bytes unless a name says pages (4 KiB) or gfns.
 *   - Statistics are data: the *_info structs hold the figures a VMM
 *     usually wants, and hugevm_*_stats() call a function once per counter
 *     with its name, value and a one-line description (every counter the
 *     hugevm command prints, under the same names as its --json output).
 *   - Config structs are filled with their *_config_default() first;
 *     a zero field means "the default" unless documented otherwise.
 *   - A handle is used by one thread at a time, except where noted.  A
 *     domain must outlive the guests over it, the machine its domains.
 *   - Nothing here exits the process or prints, except a guest's console
 *     when its config asks for it.
 */
#ifndef HUGEVM_H
#define HUGEVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden symbols; these are its interface. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* ---- version and errors ----------------------------------------------------- */

/* The library's version, "MAJOR.MINOR.PATCH" (the Meson project version;
 * `hugevm --version` prints the same). */
const char *hugevm_version(void);

/* What a negative errno returned by this library means here and what to do
 * about it, as one sentence (never NULL; static storage).  rc may be
 * negative or positive. */
const char *hugevm_strerror(int rc);

/* The detail of the calling thread's last failure in this library ("" when
 * none): e.g. "stream: record 12 (PAGE_DATA) at offset 4096: pfn beyond the
 * domain".  Valid until the thread's next call into the library. */
const char *hugevm_last_error(void);

/* Callback for the statistics enumerators: one counter. */
typedef void (*hugevm_stat_fn)(void *ctx, const char *name, uint64_t value,
                               const char *description);

/* ---- machine ---------------------------------------------------------------- */

typedef struct hugevm_machine hugevm_machine;

enum hugevm_frame_policy {
    HUGEVM_POLICY_FRAGPOOL = 0, /* keeps 4K allocations together: superpages survive */
    HUGEVM_POLICY_BUDDY = 1,    /* a plain buddy allocator */
};

struct hugevm_machine_config {
    uint64_t bytes;                   /* > 0, a multiple of 2 MiB */
    enum hugevm_frame_policy policy;  /* default fragpool */
    bool resident;                    /* commit and map everything now */
};
void hugevm_machine_config_default(struct hugevm_machine_config *c);

int hugevm_machine_create(const struct hugevm_machine_config *c, hugevm_machine **out);
void hugevm_machine_destroy(hugevm_machine *m); /* NULL is fine; domains first */

struct hugevm_machine_info {
    uint64_t bytes, frames, free_frames;
    uint64_t allocatable_2m, allocatable_1g; /* extents that could be allocated now */
    uint64_t resident_bytes;                 /* host RAM backing the machine now */
    bool host_thp_usable;                    /* shmem THP lets the host map 2M pages */
    char host_thp[16];                       /* the host's shmem_enabled setting */
};
int hugevm_machine_info(const hugevm_machine *m, struct hugevm_machine_info *out);
/* Frame allocator counters: free extents and allocations per order,
 * failures, fragmentation. */
int hugevm_machine_stats(const hugevm_machine *m, hugevm_stat_fn fn, void *ctx);
/* Allocate about `fraction` of the free memory to a throw-away owner in 4K
 * pieces (70% of it kept), as other domains on a busy host would: for
 * testing superpage fallback.  0 or -errno. */
int hugevm_machine_fragment(hugevm_machine *m, double fraction, uint64_t seed);

/* ---- domain ------------------------------------------------------------------ */

typedef struct hugevm_domain hugevm_domain;

#define HUGEVM_MAX_4K_RANGES 16

struct hugevm_gfn_range {
    uint64_t gfn, nr; /* 4 KiB frame numbers */
};

struct hugevm_domain_config {
    uint64_t max_bytes;       /* 0: no limit beyond the machine */
    uint64_t mmio_hole_bytes; /* below 4 GiB, multiple of 2 MiB (default 256 MiB) */
    bool no_mmio_hole;        /* no MMIO hole at all */
    bool no_vga_hole;         /* no VGA hole (gfn 0xa0-0xbf) */
    unsigned nr_4k_ranges;    /* gfn ranges mapped with 4K leaves only */
    struct hugevm_gfn_range ranges_4k[HUGEVM_MAX_4K_RANGES];
};
void hugevm_domain_config_default(struct hugevm_domain_config *c);

int hugevm_domain_create(hugevm_machine *m, const struct hugevm_domain_config *c,
                         hugevm_domain **out);
/* Every frame back to the machine (scrubbed).  Guests over it first. */
void hugevm_domain_destroy(hugevm_domain *d);

#define HUGEVM_POPULATE_POD 1u /* populate-on-demand entries instead of frames */

/* Lay out `bytes` of guest RAM as an HVM builder does (below the MMIO hole,
 * the rest above 4 GiB) and populate it, 1G where it can, else 2M, else 4K;
 * every fallback is counted.  All or nothing. */
int hugevm_domain_populate(hugevm_domain *d, uint64_t bytes, unsigned flags);
/* Populate [gfn, gfn + nr) (holes skipped), same rules. */
int hugevm_domain_populate_range(hugevm_domain *d, uint64_t gfn, uint64_t nr, unsigned flags);
/* Give back the frames of [gfn, gfn + nr): pages released, or -errno. */
int64_t hugevm_domain_decrease_reservation(hugevm_domain *d, uint64_t gfn, uint64_t nr);

/* The host-driven balloon, in 2M units (4K where no 2M block is left):
 * make the guest's memory (tot_pages * 4096) `target_bytes`, within what
 * hugevm_domain_populate laid out.  Not for a domain a program guest runs on: its own
 * balloon driver is hugevm_guest_balloon. */
int hugevm_domain_balloon(hugevm_domain *d, uint64_t target_bytes);
/* Populate-on-demand target (Xen's set_pod_target), in bytes. */
int hugevm_domain_pod_set_target(hugevm_domain *d, uint64_t target_bytes);
/* Copy scattered guest regions into free 2M (order 9) or 1G (18) extents,
 * at most mib_per_s MiB/s (0: no limit), over all of the guest's RAM. */
int hugevm_domain_defrag(hugevm_domain *d, unsigned order, double mib_per_s);

/* Log-dirty.  Modes: */
enum hugevm_dirty_mode {
    HUGEVM_DIRTY_SPLIT_ON_WRITE = 0, /* a superpage is split when first written */
    HUGEVM_DIRTY_EAGER_SPLIT = 1,    /* everything split to 4K at enable */
    HUGEVM_DIRTY_COARSE = 2,         /* superpages stay; dirty per leaf */
};
int hugevm_domain_logdirty_enable(hugevm_domain *d, enum hugevm_dirty_mode mode);
/* Bits the bitmap needs (gfns it covers); 0 when log-dirty is off. */
uint64_t hugevm_domain_logdirty_gfns(const hugevm_domain *d);
/* Copy the dirty bitmap into `bitmap` (nr_gfns bits, >= _gfns()) and clear
 * it: dirty pages since the last harvest.  Returns how many are set. */
int64_t hugevm_domain_logdirty_harvest(hugevm_domain *d, uint64_t *bitmap, uint64_t nr_gfns);
/* Off again; superpages log-dirty split are merged back where they can be.
 * final (may be NULL) receives the pages dirtied since the last harvest. */
struct hugevm_logdirty_result {
    uint64_t split_1g, split_2m, recovered_1g, recovered_2m, lost_1g, lost_2m;
};
int hugevm_domain_logdirty_disable(hugevm_domain *d, uint64_t *final, uint64_t nr_gfns,
                                   struct hugevm_logdirty_result *res);

struct hugevm_domain_info {
    uint16_t domid;
    uint64_t tot_pages, max_pages;      /* Xen's accounting, 4K pages */
    uint64_t leaves_1g, leaves_2m, leaves_4k; /* RAM leaves in the p2m */
    uint64_t pod_entries, pod_cache_pages;
    uint64_t ram_bytes;                 /* guest RAM populated (not PoD) */
    bool crashed;
    char last_event[160];               /* e.g. the crash reason ("" none) */
};
int hugevm_domain_info(const hugevm_domain *d, struct hugevm_domain_info *out);
/* Populate, fallback, balloon, PoD, defrag and log-dirty counters. */
int hugevm_domain_stats(const hugevm_domain *d, hugevm_stat_fn fn, void *ctx);
/* Check every invariant (p2m, accounting, frames); 0 or -EUCLEAN with the
 * broken invariant in hugevm_last_error(). */
int hugevm_domain_audit(const hugevm_domain *d);
/* XXH3-64 over (gfn, page hash) of every RAM page: equal for equal guest
 * memory whatever the leaf sizes.  No guest may run meanwhile. */
uint64_t hugevm_domain_digest(hugevm_domain *d);
/* Host pointer to gfn's 4 KiB (NULL when not RAM).  The mapping stays
 * valid while the page is mapped in the domain. */
void *hugevm_domain_page(hugevm_domain *d, uint64_t gfn);

/* ---- save and restore (Xen's migration stream, docs/stream.md) ------------ */

struct hugevm_save_info {
    uint64_t bytes, pages_data, pages_zero, records;
    uint64_t extents_1g, extents_2m, pages_4k; /* the source's leaves */
    double seconds;
};
/* Write the domain (no vCPU state) to fd at its current offset.  Nothing
 * may change the domain meanwhile.  A file written only in part is the
 * caller's to remove. */
int hugevm_domain_save(hugevm_domain *d, int fd, struct hugevm_save_info *out);

struct hugevm_restore_info {
    uint64_t bytes, records, pages_data;
    uint64_t pages_1g, pages_2m, pages_4k; /* leaves restored */
    uint64_t fallback_nomem;               /* superpages that fell back */
    bool has_guest;                        /* vCPU state of a program guest */
    bool checksum_verified;
    double seconds;
};
/* Read a stream from fd onto machine m into a new domain (the stream's own
 * configuration and holes), rebuilding superpages.  Untrusted input: every
 * record is checked; on error nothing is left allocated and
 * hugevm_last_error() names the record and offset. */
int hugevm_domain_restore(hugevm_machine *m, int fd, hugevm_domain **out,
                          struct hugevm_restore_info *info);

/* ---- guests ------------------------------------------------------------------ */

typedef struct hugevm_guest hugevm_guest;

enum hugevm_backend {
    HUGEVM_BACKEND_AUTO = 0,   /* kvm where /dev/kvm runs guests, else soft */
    HUGEVM_BACKEND_SOFT = 1,   /* soft vCPUs: EPT walker, TLB model */
    HUGEVM_BACKEND_KVM = 2,    /* the guest programs under /dev/kvm */
    HUGEVM_BACKEND_NATIVE = 3, /* the guest programs as host code */
};
/* The backend AUTO would pick for a program guest (kvm or native) or any
 * guest (kvm or soft), and why, into why[len]. */
enum hugevm_backend hugevm_backend_pick(bool program, char *why, size_t len);
const char *hugevm_backend_name(enum hugevm_backend b);

/* ---- the host ------------------------------------------------------------------ */

/* What this host offers hugevm (hugevm info prints the same). */
struct hugevm_host_info {
    uint64_t ram_bytes;
    char thp_shmem[16];         /* /sys/kernel/mm/transparent_hugepage/shmem_enabled */
    bool thp_usable;            /* the host can map guest memory with 2M pages */
    char thp_explain[512];      /* what the setting implies */
    bool kvm;                   /* /dev/kvm runs guests here */
    char kvm_why[256];          /* why not, when it does not */
    enum hugevm_backend auto_backend; /* what HUGEVM_BACKEND_AUTO picks: soft or kvm */
    char auto_why[256];
};
int hugevm_host_info(struct hugevm_host_info *out);

enum hugevm_workload {
    HUGEVM_WL_SEQ = 0,     /* sweep the slice, one word per page */
    HUGEVM_WL_UNIFORM = 1, /* random read-modify-write (GUPS) */
    HUGEVM_WL_CHASE = 2,   /* dependent loads along a random cycle */
    HUGEVM_WL_ZIPF = 3,    /* zipfian hot set */
    HUGEVM_WL_WRITER = 4,  /* paced writes */
};

#define HUGEVM_MAX_VCPUS 32

struct hugevm_guest_config {
    enum hugevm_backend backend;  /* default AUTO */
    unsigned nr_vcpus;            /* default 1 */
    enum hugevm_workload workload;/* default UNIFORM */
    uint64_t seed;
    uint64_t ops;                 /* per vCPU; 0: until hugevm_guest_finish */
    uint64_t write_rate;          /* writer: writes/s per vCPU; 0 unpaced */
    /* Program guests: the top `balloon_bytes` of the workload memory
     * belong to vCPU 0's balloon driver (a multiple of 2 MiB). */
    uint64_t balloon_bytes;
    /* Program guests: a user's ELF64 guest program (guest/hugevm_guest.h
     * ABI) instead of the embedded workloads; NULL: embedded. */
    const void *program;
    size_t program_len;
    int console_fd;               /* the guest's console (-1: kept only) */
};
void hugevm_guest_config_default(struct hugevm_guest_config *c);

/* A guest over d's RAM, not started.  -ENODEV when the backend cannot run
 * here (hugevm_last_error says why). */
int hugevm_guest_create(hugevm_domain *d, const struct hugevm_guest_config *c,
                        hugevm_guest **out);
/* A program guest from the vCPU state a restored domain carries
 * (has_guest), on the backend it was saved from, not started.  -ENOENT
 * when the stream carried none; -ENOTSUP for soft vCPUs (hugevm restore
 * FILE --run resumes those). */
int hugevm_guest_create_restored(hugevm_domain *d, hugevm_guest **out);
void hugevm_guest_destroy(hugevm_guest *g); /* stops it; NULL is fine */

enum hugevm_backend hugevm_guest_backend(const hugevm_guest *g);
int hugevm_guest_start(hugevm_guest *g);
void hugevm_guest_pause(hugevm_guest *g);
void hugevm_guest_resume(hugevm_guest *g);
/* Wait until every vCPU finished its ops (timeout_ms 0: no limit): 0,
 * -ETIMEDOUT, or the error a vCPU stopped on. */
int hugevm_guest_wait(hugevm_guest *g, uint64_t timeout_ms);
/* Ask the vCPUs to finish at their next batch boundary and wait. */
int hugevm_guest_finish(hugevm_guest *g, uint64_t timeout_ms);
/* Program guests: make vCPU 0's balloon driver hold `pages_out` 4K pages
 * (a multiple of 512, at most balloon_bytes / 4096) and wait until it
 * does.  The driver asks for 2M extents and falls back to 4K by itself. */
int hugevm_guest_balloon(hugevm_guest *g, uint64_t pages_out, uint64_t timeout_ms);
/* Program guests that ran the embedded workloads from fresh memory: replay
 * every vCPU on the host and compare every word.  0, or -EBADMSG with the
 * first difference in hugevm_last_error(). */
int hugevm_guest_verify(hugevm_guest *g);
/* Save the paused guest: its domain and the vCPU state (soft vCPUs, or a
 * program guest's on kvm or native).  -EBUSY when it is not paused. */
int hugevm_guest_save(hugevm_guest *g, int fd, struct hugevm_save_info *out);

struct hugevm_guest_info {
    enum hugevm_backend backend;
    unsigned nr_vcpus;
    uint64_t accesses;                    /* memory operations so far */
    bool have_kvm_leaves;                 /* KVM's own mapping counts: */
    uint64_t kvm_4k, kvm_2m, kvm_1g;
    uint64_t balloon_pages_out;           /* the guest's balloon driver */
    uint64_t balloon_2m_failed, balloon_fallback_4k, balloon_calls;
    int64_t balloon_error;
    char fault[256];                      /* why a vCPU stopped ("" none) */
};
int hugevm_guest_info(hugevm_guest *g, struct hugevm_guest_info *out);
/* Exits, calls, kicks, syncs, memory calls. */
int hugevm_guest_stats(hugevm_guest *g, hugevm_stat_fn fn, void *ctx);

/* ---- live migration ------------------------------------------------------------ */

typedef struct hugevm_migration hugevm_migration;

struct hugevm_migration_config {
    /* TLS 1.3 with mutual authentication: a pre-shared key file (one line
     * IDENTITY:HEXKEY, >= 128 bits, not readable by others), or X.509
     * (cert, key, CA) with an optional allow-list of peer names. */
    const char *psk_file;
    const char *cert_file, *key_file, *ca_file;
    const char *authz[16];
    unsigned nr_authz;
    bool insecure;              /* plain TCP, no credentials: say so */
    enum hugevm_dirty_mode mode;/* sender's log-dirty mode */
    double downtime_ms;         /* 0: default */
    unsigned max_rounds;        /* 0: default */
    bool compress;              /* zstd frames */
    int timeout_ms;             /* 0: default */
};
void hugevm_migration_config_default(struct hugevm_migration_config *c);

/* Check the credentials and build the TLS context: -EINVAL, -EACCES (a key
 * readable by others) with the file named in hugevm_last_error(). */
int hugevm_migration_create(const struct hugevm_migration_config *c, bool receiver,
                            hugevm_migration **out);
void hugevm_migration_destroy(hugevm_migration *mg);

struct hugevm_migration_info {
    unsigned rounds;
    double total_s, downtime_s;
    uint64_t pages_data, wire_bytes;
    uint64_t before_1g, before_2m, before_4k;     /* sender's leaves */
    uint64_t receiver_1g, receiver_2m, receiver_4k;
    bool verified;                                /* memory digests agree */
    bool in_doubt;                                /* see below */
};
/* Send g (running or paused, soft vCPUs) over fd, a connected TCP socket.  0: the
 * receiver runs it now; destroy g.  -EINPROGRESS with in_doubt: neither
 * resume nor destroy g before you know whether the receiver runs it.
 * Other < 0: g runs on here.  fd is not closed. */
int hugevm_migration_send(hugevm_migration *mg, hugevm_guest *g, int fd,
                          struct hugevm_migration_info *info);
/* The same over n parallel channels (1..8): fds[0] connected first, the
 * others to the same receiver (before or during the call); the migration's
 * frames are dealt over them in turn, each channel authenticated and
 * encrypted on its own (one TLS stream per channel, so encryption runs on
 * as many cores).  A receiver that takes one channel gets one (the others
 * are not used).  The fds are not closed. */
int hugevm_migration_send_channels(hugevm_migration *mg, hugevm_guest *g, const int *fds,
                                   unsigned n, struct hugevm_migration_info *info);
/* Receive one guest on fd, a connected TCP socket, onto m: 0 and *out (not
 * started; hugevm_guest_domain gives its domain, which the caller destroys
 * after the guest).  fd is not closed. */
int hugevm_migration_receive(hugevm_migration *mg, hugevm_machine *m, int fd,
                             hugevm_guest **out, struct hugevm_migration_info *info);
/* The same, taking the sender's parallel channels: they are accepted from
 * lfd, the listening socket fd came from (lfd -1: one channel only), and
 * closed when the migration is over. */
int hugevm_migration_receive_channels(hugevm_migration *mg, hugevm_machine *m, int fd, int lfd,
                                      hugevm_guest **out, struct hugevm_migration_info *info);
/* The domain a received guest runs on (owned by the caller). */
hugevm_domain *hugevm_guest_domain(hugevm_guest *g);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif

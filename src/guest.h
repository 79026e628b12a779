/*
 * guest.h - a running guest: its vCPUs over one domain, whichever backend
 * executes them, and the one place that stops them to change its memory.
 *
 * Backends (enum guest_backend):
 *  - soft:   the software vCPU (vcpu.h: EPT walker, TLB model, PML) runs
 *            the workloads of workload.h; one runner thread interleaves
 *            the vCPUs in quanta under d->lock.
 *  - kvm:    the built-in guest program (guest/workloads.c) or a user's
 *            (--guest-program) runs as real x86-64 code under /dev/kvm, one
 *            host thread per vCPU, on the p2m mirrored into host mappings
 *            (kvm.h).
 *  - native: the same guest programs run as host code, one thread per
 *            vCPU, on the p2m mirrored at host virtual address == gpa
 *            (native.c): their ports are trapped by a signal handler.  For
 *            hosts without KVM (and the tests of guest programs there); its
 *            dirty log is userfaultfd write-protect (Linux 6.7+), its vCPU
 *            state the parked thread's ucontext; no KVM counters.  It is no
 *            sandbox: the program runs with the host process's rights.
 * guest_backend_auto() picks kvm where /dev/kvm runs guests, else soft, and
 * says why.
 *
 * Program guests (kvm, native) share the guest ABI of guest/hugevm_guest.h:
 * the host writes a parameter page per vCPU, loads the program at
 * HVG_PROG_GPA, starts every vCPU at its entry, and serves its calls
 * (console, sleep, done).  The workloads of the built-in program are
 * deterministic per vCPU, so guest_verify() replays them on the host
 * (guest_model.c) and compares every word of guest memory and every
 * checksum.
 *
 * Life cycle: create -> start -> (pause <-> resume, call)* -> stop or
 * wait -> destroy.  Threading: one controlling thread calls create, start,
 * pause, resume, stop, wait and destroy; guest_call may come from any
 * thread (balloon drivers, sweeps).
 *
 * guest_call(g, fn, ctx) runs fn(d, ctx) with every vCPU stopped and d->lock
 * held, then brings the backend's view of memory up to date (the kvm and
 * native mirrors) before the vCPUs go on.  It returns -EAGAIN without
 * calling fn while the guest is paused or stopped (a migration's final
 * round sends the memory map as it is at pause, so no change may slip in
 * after it).
 */
#ifndef HUGEVM_GUEST_H
#define HUGEVM_GUEST_H

#include <pthread.h>

#include "common.h"
#include "dirty.h"
#include "guest_exec.h"
#include "pod.h"
#include "vcpu.h"
#include "save.h"
#include "workload.h"
#include "../guest/hugevm_guest.h"

#define GUEST_MAX_VCPUS 64
#define GUEST_CONSOLE_KEEP 8192u

enum guest_backend {
    GUEST_BACKEND_SOFT = 0,
    GUEST_BACKEND_KVM = 1,
    GUEST_BACKEND_NATIVE = 2,
    GUEST_NR_BACKENDS
};
const char *guest_backend_name(enum guest_backend b);
/* "soft", "kvm", "native"; "auto" sets *is_auto.  -EINVAL otherwise. */
int guest_backend_parse(const char *s, enum guest_backend *b, bool *is_auto) HV_MUST_CHECK;
/* kvm when /dev/kvm runs guests here, else soft; why[] says which and why. */
enum guest_backend guest_backend_auto(char *why, size_t len);

/* What a program guest runs (kvm, native). */
struct guest_prog_config {
    unsigned nr_vcpus;          /* 1 .. HVG_MAX_VCPUS */
    enum hvg_workload workload; /* for the built-in program */
    uint64_t seed;
    uint64_t ops;               /* per vCPU; 0: until guest_stop */
    uint32_t write_ppm;         /* share of writes, per million ... */
    bool write_ppm_set;         /* ... when set; else the workload's default */
    uint32_t wss_ppm;           /* writer: 0 = whole slice */
    uint64_t write_rate;        /* writer: writes/s per vCPU, 0 = unpaced */
    double zipf_theta;          /* 0: 0.99 */
    uint64_t batch;             /* operations between publications (0: 4096) */
    unsigned guest_page_order;  /* kvm: 9 or 18; 0: the largest the CPUID offers */
    bool touch_first;           /* HVG_F_TOUCH: each vCPU reads its slice once first */
    bool balloon_4k;            /* HVG_F_BALLOON_4K: the driver gives back 4K pages */
    bool balloon_scrub;         /* HVG_F_BALLOON_SCRUB: zeroing each extent first */
    uint64_t balloon_pages;     /* the top of the workload memory for vCPU 0's
                                 * balloon driver (a multiple of 512) */
    /* A user's program instead of the built-in one (ELF64 image in memory,
     * checked by guest_prog_load); NULL: the built-in workloads. */
    const void *program;
    size_t program_len;
    /* The guest's console is written to this descriptor, each piece
     * prefixed with its vCPU (-1: not written; the last bytes are kept in
     * guest.console either way). */
    int console_fd;
};
void guest_prog_config_default(struct guest_prog_config *c, enum hvg_workload w);
/* "seq", "uniform" ("gups"), "chase", "zipf", "writer". */
int guest_workload_parse(const char *s, enum hvg_workload *out) HV_MUST_CHECK;
const char *guest_workload_name(enum hvg_workload w);

/* Why a program guest stopped, when it did not finish cleanly. */
struct guest_fault {
    int vcpu;             /* -1: none */
    char what[256];       /* "vCPU 1: #PF (vector 14) at rip 0x100123, address 0x7000000" */
    unsigned vector;      /* exceptions */
    uint64_t rip, addr;
};

/* Statistics of a program guest, declared once. */
#define GUEST_STAT_FIELDS(X)                                                   \
    X(exits, "exits to the host (calls, kicks, faults)")                       \
    X(calls, "guest calls served")                                             \
    X(console_bytes, "console bytes printed")                                  \
    X(sleeps, "pacing sleeps")                                                 \
    X(kicks, "vCPU kicks (pause, stop, memory changes)")                       \
    X(syncs, "mirror syncs after memory changes")                              \
    X(memory_calls, "memory calls (decrease_reservation, populate_physmap)")

struct guest_stats {
#define X(name, desc) uint64_t name;
    GUEST_STAT_FIELDS(X)
#undef X
};

/* The PoD fault server's work (program guests). */
#define GUEST_POD_FIELDS(X)                                                    \
    X(faults, "missing-page faults on PoD gfns read")                          \
    X(served_cached, "served from the PoD cache with the other vCPUs running") \
    X(served_held, "served with the vCPUs stopped (cache empty: reclaim, sweep)") \
    X(zero_reads, "reads of never-written PoD memory: zero page, no cache taken") \
    X(already, "faults on a gfn populated meanwhile (woken only)")            \
    X(outside, "faults outside guest RAM and PoD (the guest fails)")

struct guest_pod_stats {
#define X(name, desc) uint64_t name;
    GUEST_POD_FIELDS(X)
#undef X
};

struct guest_exec;
struct hvctx_prog_vcpu;

struct guest {
    enum guest_backend backend;
    struct domain *d;
    unsigned nr_vcpus;
    pthread_mutex_t mu;
    pthread_mutex_t memcall_serial; /* one memory call or guest_call at a time */
    pthread_mutex_t memcall_mu; /* mirror changes: those and the PoD fault server */
    pthread_cond_t cv;
    bool started, pause_req, paused, stop, exited;
    int err;            /* the first error a vCPU stopped on */
    uint64_t accesses;  /* soft: made by the runner */
    /* soft */
    struct vcpu *v[GUEST_MAX_VCPUS];
    struct workload *w[GUEST_MAX_VCPUS];
    struct workload_config wc;
    struct tlb_config tc;
    pthread_t thread;
    /* kvm, native */
    struct guest_prog_config pc;
    struct guest_exec *x;
    struct guest_fault fault;
    struct guest_stats st;
    uint64_t entry;
    pthread_t threads[HVG_MAX_VCPUS];
    bool threads_live;
    /* the stop protocol of program guests (atomics and futex words, so a
     * vCPU can park from a signal handler): while hold or halt is set the
     * vCPUs come out and park; gen moves whenever hold or halt changes;
     * parked and running count vCPU threads */
    int hold, halt; /* hold counts nested holds */
    uint32_t gen, parked, running;
    int vcpu_rc[HVG_MAX_VCPUS];
    bool fresh; /* started from zeroed workload memory (guest_verify) */
    /* vCPUs parked (bit i) and blocked in a PoD fault the fault server
     * has read but not resolved: a hold that is not a pause counts both as
     * stopped (a vCPU waiting in a fault inside KVM_RUN cannot be kicked
     * out on every kernel) */
    uint64_t parked_mask, blocked_mask;
    int tid[HVG_MAX_VCPUS];   /* vCPU threads' ids (fault attribution) */
    /* the PoD fault server (program guests whose backend has pod_fd) */
    pthread_t pod_thread;
    bool pod_live;
    int pod_wake[2];
    int pod_paused, pod_stop; /* atomics */
    uint32_t pod_serving;     /* futex word: a batch of faults in service */
    struct guest_pod_stats pod;
    struct hvg_param *tmpl; /* the parameter page as the host wrote it (vCPU 0) */
    struct hvg_param *param[HVG_MAX_VCPUS]; /* host addresses (param_of) */
    /* the last GUEST_CONSOLE_KEEP bytes the guest printed (NUL-terminated) */
    char console[GUEST_CONSOLE_KEEP + 1];
    uint32_t console_len;
    int fault_claimed;
    /* futex word: 1 while a post-copy migration fills memory (postcopy.h) */
    uint32_t postcopy;
};

/* A soft guest: vCPUs and workloads (wc->seed etc., one per vCPU) over d's
 * RAM; tc NULL: defaults.  Not started.  -EINVAL, -ENOMEM. */
int guest_create_soft(struct domain *d, unsigned nr_vcpus, const struct tlb_config *tc,
                      const struct workload_config *wc, struct guest **out) HV_MUST_CHECK;
/*
 * A program guest on backend b (kvm or native) over d: the mirror, the
 * vCPUs, the program loaded and the parameter pages written.  The
 * workload memory is d's RAM above HVG_SYSTEM_END (at most HVG_MAX_EXTENTS
 * runs); [0x10000, HVG_SYSTEM_END) must be RAM.  Not started.  -ENODEV
 * (backend unusable here), -EINVAL (bad configuration or program), -ENOMEM,
 * another errno; why[] says what.
 */
int guest_create_prog(struct domain *d, enum guest_backend b, const struct guest_prog_config *pc,
                      struct guest **out, char *why, size_t len) HV_MUST_CHECK;
/* Stop the vCPUs and free everything (not the domain).  NULL is fine. */
void guest_destroy(struct guest *g);

int guest_start(struct guest *g) HV_MUST_CHECK;
/* Stop every vCPU at a point where it can go on later (returns when they
 * are all stopped or finished); also holds off guest_call until resume. */
void guest_pause(struct guest *g);
void guest_resume(struct guest *g);
int guest_call(struct guest *g, int (*fn)(struct domain *d, void *ctx), void *ctx) HV_MUST_CHECK;
/* Post-copy (postcopy.h): between begin and end nothing changes the
 * guest's memory map: memory calls, guest_call and log-dirty changes
 * wait for end, and so does a PoD fault that needs the vCPUs held.  Begin
 * before the guest starts. */
void guest_postcopy_begin(struct guest *g);
void guest_postcopy_end(struct guest *g);
/* Stop and join the vCPUs (idempotent). */
void guest_stop(struct guest *g);
/* Program guests: wait until every vCPU finished (ops done) or one failed,
 * at most timeout_ns (0: no limit).  0 (all done), -ETIMEDOUT, or the
 * error that stopped a vCPU (g->fault says what). */
int guest_wait(struct guest *g, uint64_t timeout_ns) HV_MUST_CHECK;

/* Program guests: ask every vCPU to finish at its next batch boundary (the
 * `stop` word of its parameter page: its published state then matches its
 * memory exactly) and wait as guest_wait does.  A guest that does not
 * finish in time is stopped (guest_stop) and -ETIMEDOUT returned. */
int guest_finish(struct guest *g, uint64_t timeout_ns) HV_MUST_CHECK;

/* Accesses made so far (all vCPUs; program guests: from the parameter
 * pages, no exit needed). */
uint64_t guest_accesses(struct guest *g);
/* Program guests: true once every vCPU is past its set-up (and first
 * touch) and runs its workload. */
bool guest_running_phase(struct guest *g);
/* Program guests: vCPU i's published workload state. */
int guest_vcpu_state(struct guest *g, unsigned i, struct hvg_wl_state *st) HV_MUST_CHECK;
/* KVM's own counts of its 4K/2M/1G mappings (-ENOTSUP on other backends). */
int guest_mmu_pages(struct guest *g, uint64_t pages[3]) HV_MUST_CHECK;
/* Program guests: have the host allocate and map every page of the
 * workload memory now (MADV_POPULATE_WRITE through the mirror, else a touch
 * per page), so that a timed run does not measure first touches.  Not
 * started yet.  Returns nanoseconds spent, or -errno. */
int64_t guest_prefault(struct guest *g) HV_MUST_CHECK;
/* Program guests: resident bytes of the guest's mirror and the part the
 * host maps with PMDs (2M host pages).  -ENOTSUP for soft guests. */
int guest_host_mapping(struct guest *g, uint64_t *rss, uint64_t *pmd) HV_MUST_CHECK;
/* Guest-page order of a program guest's page tables (0 for soft/native). */
unsigned guest_page_order(const struct guest *g);
/* The mirror: host pointer of gpa (NULL when not mapped RAM). */
void *guest_gpa_ptr(struct guest *g, uint64_t gpa);

/*
 * Program guests with the built-in workloads, after they ran from a fresh
 * (zeroed) workload memory: replay every vCPU's operations on the host up
 * to the count it published and compare its checksum and every word of
 * the workload memory (through the p2m and the machine).  0: identical;
 * -EBADMSG with why[] naming the first difference; -ENOMEM; -EINVAL (a
 * user's program, or the guest ran from saved memory).
 */
int guest_verify(struct guest *g, char *why, size_t len) HV_MUST_CHECK;

/* ---- log-dirty of a running guest (live migration) ------------------------- */

/*
 * Guest writes reach two logs: the domain's (dirty.h: RAM mapped or
 * unmapped, and the writes of soft vCPUs, which go through the p2m model)
 * and, for program guests, the backend's own (KVM's dirty log: a program
 * guest writes its memory without the domain seeing it).  These calls keep
 * both in step, with every vCPU of a program guest stopped while they
 * change (and the mirror synced after: the domain's log changes the p2m's
 * generation).  Enable: -ENOTSUP with why[] for a program backend without
 * a dirty log (native before Linux 6.7), -EBUSY when log-dirty is on
 * already.  Harvest:
 * the union of both logs since the last harvest into bm[0, nr) (zeroed
 * first; nr >= guest_dirty_gfns()), *dirty its count; -EINVAL when nr is
 * short (the domain's log grows with RAM populated above it: ask again).
 * They may be called while the guest is paused.
 */
int guest_log_dirty_enable(struct guest *g, enum dirty_mode mode, char *why, size_t len) HV_MUST_CHECK;
int guest_log_dirty_disable(struct guest *g) HV_MUST_CHECK;
bool guest_log_dirty_on(struct guest *g);
uint64_t guest_dirty_gfns(struct guest *g);
int guest_harvest(struct guest *g, uint64_t *bm, uint64_t nr, uint64_t *dirty) HV_MUST_CHECK;
/* 0 when g can be live-migrated or saved running: its writes are logged
 * and its vCPUs captured; else -ENOTSUP with why[]. */
int guest_can_migrate(struct guest *g, char *why, size_t len) HV_MUST_CHECK;
/* Where the guest's writes are logged, for reports. */
const char *guest_dirty_source(struct guest *g);

/* The vCPU state of a paused guest as HVM_CONTEXT TLVs appended to b
 * (hvctx_begin'd): soft vCPUs and workloads (guest_state.h), or program
 * vCPUs (guest_prog_encode).  A guest without vCPUs adds nothing. */
int guest_encode(struct guest *g, struct hvctx_buf *b) HV_MUST_CHECK;

/* ---- saving and resuming program guests (kvm) ------------------------------ */

/* struct hvctx_prog_vcpu, one saved vCPU of a program guest: guest_exec.h. */

struct guest_prog_state {
    unsigned nr_vcpus;
    struct hvctx_prog_vcpu v[HVG_MAX_VCPUS];
    /* KVM vCPUs: XSAVE area, XCRs, MSRs (guest_state.h's PROG_XSAVE and
     * PROG_MSRS), for every vCPU or none; none in streams written before
     * they existed, and for native guests */
    bool has_xsave, has_msrs;
    struct hvctx_prog_ext ext[HVG_MAX_VCPUS];
};

/* A paused program guest's vCPUs as TLVs appended to b (hvctx_begin'd):
 * per vCPU a PROG_VCPU and, where the backend has them (kvm), PROG_XSAVE
 * and PROG_MSRS.  -ENOTSUP for soft guests, -EBUSY when not paused,
 * -ESRCH for a native vCPU not in guest code, -ENOMEM, an ioctl's errno
 * (-E2BIG: an XSAVE area larger than HVCTX_XSAVE_MAX). */
int guest_prog_encode(struct guest *g, struct hvctx_buf *b) HV_MUST_CHECK;
/* Decode the program-guest TLVs of a context area (other types ignored).
 * 1: st holds a complete state; 0: none in the area; -EBADMSG with err
 * (untrusted bytes: counts, ids, orders and sizes are checked; the XSAVE
 * and MSR TLVs as guest_state_prog_ext_decode says, and refused without
 * PROG_VCPU TLVs, for a native guest, or for some vCPUs only). */
int guest_prog_decode(const void *area, size_t len, struct guest_prog_state *st, char *err,
                      size_t errlen) HV_MUST_CHECK;
/* A program guest over a restored domain d whose memory holds the program
 * and its parameter pages, on the backend it was saved from (kvm or
 * native): vCPUs set to the saved states, not started.  The
 * host writes its system pages again (the same bytes for the same guest
 * page order); the workload memory is read from vCPU 0's parameter page
 * (checked before any use).  why[] says what failed. */
int guest_create_prog_resume(struct domain *d, const struct guest_prog_state *st,
                             struct guest **out, char *why, size_t len) HV_MUST_CHECK;
/* The backend a saved program guest resumes on (st->v[0].backend). */
enum guest_backend guest_prog_state_backend(const struct guest_prog_state *st);

/* ---- program loading (guest.c; also for tests and the tools) --------------- */

/* The built-in program (a flat image linked at HVG_PROG_GPA). */
extern const unsigned char hvg_prog_workloads[];
extern const size_t hvg_prog_workloads_len;

/* Check an ELF64 x86-64 executable for the guest ABI and copy its PT_LOAD
 * segments into img[0, HVG_PROG_MAX) (zeroed first); *entry gets e_entry.
 * -ENOEXEC with why[] for anything else (not ELF, wrong class, machine or
 * type, a segment outside [HVG_PROG_GPA, + HVG_PROG_MAX), a truncated file,
 * an entry outside the loaded text). */
int guest_prog_load(const void *elf, size_t len, uint8_t *img, uint64_t *entry, char *why,
                    size_t whylen) HV_MUST_CHECK;

/* The interface of a program backend (kvm.c, native.c): guest_exec.h. */

#endif

/*
 * guest_exec.h - the contract between the guest layer (guest.c) and a
 * program backend (kvm.c, native.c): what a backend implements (struct
 * guest_exec_ops over its struct guest_exec), the exits it reports, the
 * vCPU state it captures and sets (struct hvctx_prog_vcpu, which is also
 * the HVCTX_PROG_VCPU record of a saved guest), and the few calls of the
 * guest layer a backend makes back (serving a guest call, parking a vCPU,
 * the kick signal).
 *
 * It has a header of its own so that the dependencies point one way: the
 * guest layer includes the backends' headers (kvm.h) to create and probe
 * them, and a backend sees only this contract, never struct guest (which
 * it holds as an opaque pointer and hands back to guest_serve_call and
 * guest_park).  The native backend, which has no header and reads the
 * guest's halt flag from its signal handler, includes guest.h as well.
 */
#ifndef HUGEVM_GUEST_EXEC_H
#define HUGEVM_GUEST_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct domain;
struct guest;
struct guest_exec;

/*
 * One vCPU of a program guest as an HVM_CONTEXT TLV (HVCTX_PROG_VCPU,
 * critical: a reader that does not know it must not run the guest): the
 * architectural state KVM holds, as KVM's own structures (x86-64, little-
 * endian: struct kvm_regs, kvm_sregs, kvm_fpu, whose layout is KVM's ABI).
 * The program, its parameter pages (configuration and published workload
 * state) and its stacks are guest memory and travel as pages.
 */
#define HVCTX_PROG_REGS 144u
#define HVCTX_PROG_SREGS 312u
#define HVCTX_PROG_FPU 416u
#define HVCTX_PROG_F_FRESH 0x1u /* the guest started from zeroed memory */
struct hvctx_prog_vcpu {
    uint32_t vcpu, nr_vcpus;
    uint32_t backend;          /* enum guest_backend (kvm) */
    uint32_t guest_page_order; /* its page tables' leaves */
    uint32_t flags;            /* HVCTX_PROG_F_* */
    uint32_t reserved;
    uint8_t regs[HVCTX_PROG_REGS];
    uint8_t sregs[HVCTX_PROG_SREGS];
    uint8_t fpu[HVCTX_PROG_FPU];
};
_Static_assert(sizeof(struct hvctx_prog_vcpu) == 896, "HVCTX_PROG_VCPU");

/*
 * The rest of a KVM vCPU's architectural state, beside its PROG_VCPU TLV
 * (guest_state.h encodes it as HVCTX_PROG_XSAVE and HVCTX_PROG_MSRS and
 * checks it when decoding): the XSAVE area in KVM's user layout (standard
 * format, KVM_GET_XSAVE2's size, at least struct kvm_xsave's 4096 bytes:
 * x87, SSE, AVX and whatever else XCR0 enables), the XCRs, and the MSRs
 * of HVCTX_PROG_MSR_LIST that this KVM lists in KVM_GET_MSR_INDEX_LIST.
 * EFER and the FS/GS bases are in kvm_sregs already.  The native backend
 * carries none of it (its x87/SSE state is the FXSAVE image in
 * hvctx_prog_vcpu.fpu; its TSC is the host's): both TLVs are absent for
 * native guests, and a native guest's stream that holds one is refused.
 */
#define HVCTX_XSAVE_MIN 576u   /* the legacy area and the XSAVE header */
#define HVCTX_XSAVE_MAX 16384u /* AMX's 11008 bytes fit */
#define HVCTX_MAX_XCRS 16u     /* KVM_MAX_XCRS */
#define HVCTX_MAX_MSRS 32u
struct hvctx_reg {
    uint32_t index, reserved; /* reserved: 0 */
    uint64_t value;
};
struct hvctx_prog_ext {
    uint32_t xsave_len; /* 0: none (a KVM without KVM_CAP_XSAVE) */
    uint32_t nr_xcrs, nr_msrs;
    struct hvctx_reg xcrs[HVCTX_MAX_XCRS]; /* index: the XCR's number (0: XCR0) */
    struct hvctx_reg msrs[HVCTX_MAX_MSRS];
    uint8_t xsave[HVCTX_XSAVE_MAX];
};

/*
 * The MSRs a KVM vCPU's state carries (X(index, name)), those a guest
 * program's time and system calls depend on.  A stream naming any other
 * MSR is refused.  IA32_TSC is restored, so that the guest's time stamp
 * counter goes on from where it stopped instead of restarting near zero
 * on the new VM (its time would jump backwards).
 */
#define HVCTX_PROG_MSR_LIST(X)                                                 \
    X(0x00000010u, IA32_TSC)                                                   \
    X(0x0000003bu, IA32_TSC_ADJUST)                                            \
    X(0x00000174u, IA32_SYSENTER_CS)                                           \
    X(0x00000175u, IA32_SYSENTER_ESP)                                          \
    X(0x00000176u, IA32_SYSENTER_EIP)                                          \
    X(0x00000277u, IA32_PAT)                                                   \
    X(0xc0000081u, STAR)                                                       \
    X(0xc0000082u, LSTAR)                                                      \
    X(0xc0000083u, CSTAR)                                                      \
    X(0xc0000084u, SFMASK)                                                     \
    X(0xc0000102u, KERNEL_GS_BASE)                                             \
    X(0xc0000103u, TSC_AUX)
#define HVCTX_MSR_IA32_TSC 0x00000010u

/* ---- the interface of a program backend (kvm.c, native.c) ------------------ */

enum guest_exit_kind {
    GUEST_EXIT_CALL,      /* `out HVG_PORT`: call = eax */
    GUEST_EXIT_KICK,      /* guest_exec_ops.kick asked it to come out */
    GUEST_EXIT_EXCEPTION, /* vector, error_code, rip, addr (page fault) */
    GUEST_EXIT_FAULT,     /* an access outside RAM (gpa, write) */
    GUEST_EXIT_ERROR,     /* the backend failed (err, what) */
};

struct guest_exit {
    enum guest_exit_kind kind;
    uint32_t call;
    unsigned vector;
    uint64_t error_code, rip, addr, gpa;
    bool write;
    int err;
    char what[160];
};

struct guest_exec_ops {
    const char *name;
    /* Set vCPU i to start at entry with rsp and rdi. */
    int (*reset)(struct guest_exec *x, unsigned i, uint64_t entry, uint64_t rsp, uint64_t rdi);
    /* Run vCPU i (its own thread) until an exit the host must see. */
    int (*run)(struct guest_exec *x, unsigned i, struct guest_exit *ex);
    /* From any thread: make vCPU i's run return GUEST_EXIT_KICK soon. */
    void (*kick)(struct guest_exec *x, unsigned i);
    /* After p2m changes, every vCPU stopped: bring the mirror up to date. */
    long (*sync)(struct guest_exec *x);
    void *(*gpa_ptr)(struct guest_exec *x, uint64_t gpa);
    int (*mmu_pages)(struct guest_exec *x, uint64_t pages[3]);
    /* Resident bytes of the mirror and those the host maps with PMDs. */
    int (*host_mapping)(struct guest_exec *x, uint64_t *rss, uint64_t *pmd);
    /* vCPU i's architectural state (NULL: the backend cannot capture it). */
    int (*get_state)(struct guest_exec *x, unsigned i, struct hvctx_prog_vcpu *s);
    int (*set_state)(struct guest_exec *x, unsigned i, const struct hvctx_prog_vcpu *s);
    /* vCPU i's extended state (XSAVE, XCRs, MSRs), after set_state on the
     * way in (NULL: the backend carries none).  get_ext: 0 or an ioctl's
     * -errno (-E2BIG: an XSAVE area beyond HVCTX_XSAVE_MAX); set_ext's
     * why[] says what failed (which MSR, which size). */
    int (*get_ext)(struct guest_exec *x, unsigned i, struct hvctx_prog_ext *e);
    int (*set_ext)(struct guest_exec *x, unsigned i, const struct hvctx_prog_ext *e, char *why,
                   size_t len);
    /* vCPU i's thread is about to end (may be NULL). */
    void (*thread_exit)(struct guest_exec *x, unsigned i);
    /* The backend's log of guest writes (NULL where it has none): on/off
     * with every vCPU stopped; harvest ORs the gfns written since the last
     * harvest (or since on) into bm[0, nr) and re-arms them; nr must be at
     * least dirty_gfns().  dirty_source names the mechanism for reports. */
    int (*log_dirty)(struct guest_exec *x, bool on);
    int (*harvest)(struct guest_exec *x, uint64_t *bm, uint64_t nr);
    uint64_t (*dirty_gfns)(struct guest_exec *x);
    /* Populate-on-demand (NULL where the backend has none): the
     * userfaultfd whose missing-page faults are touches of PoD gfns (-1:
     * none); host address <-> gfn of the mirror (INVALID_GFN outside);
     * pod_mapped: gfn's leaf [gfn, gfn + 2^order) just became RAM at mfn
     * (d->lock held, other vCPUs running): map it and say so, nothing else
     * of the mirror changes. */
    int (*pod_fd)(struct guest_exec *x);
    uint64_t (*hva_gfn)(struct guest_exec *x, uint64_t hva);
    uint64_t (*gfn_hva)(struct guest_exec *x, uint64_t gfn);
    int (*pod_mapped)(struct guest_exec *x, uint64_t gfn, unsigned order, mfn_t mfn);
    /* Bytes of run lists pod_mapped replaced, kept for lock-free readers
     * until the next sync (which runs with the vCPUs held) frees them. */
    size_t (*retired_bytes)(struct guest_exec *x);
    /* The host wrote guest page gfn through the mirror (a call's result):
     * log it where the backend's log would not see it (NULL: it does).
     * Async-signal-safe. */
    void (*host_wrote)(struct guest_exec *x, uint64_t gfn);
    const char *(*dirty_source)(struct guest_exec *x);
    void (*destroy)(struct guest_exec *x);
};

struct guest_exec {
    const struct guest_exec_ops *ops;
    struct guest *g;
    unsigned guest_page_order;
};

/* Backends' constructors for guest g over its domain d (g's own, passed
 * so that a backend needs no look inside struct guest): the mirror of d,
 * nr vCPUs, the system pages the backend needs below HVG_SYSTEM_END.
 * why[] says what failed. */
int kvm_exec_create(struct guest *g, struct domain *d, unsigned nr, unsigned guest_page_order,
                    struct guest_exec **out, char *why, size_t len) HV_MUST_CHECK;
int native_exec_create(struct guest *g, struct domain *d, unsigned nr, struct guest_exec **out,
                       char *why, size_t len) HV_MUST_CHECK;
/* 0 when this kernel gives the native backend a dirty log (userfaultfd
 * asynchronous write-protect, Linux 6.7+), else -errno with why[]. */
int native_dirty_log_probe(char *why, size_t len) HV_MUST_CHECK;

/*
 * Serve call `nr` of vCPU i (reading its parameter page through the
 * mirror).  Returns 1 to go on running, 0 when the vCPU finished (DONE),
 * < 0 on error.  May block (SLEEP) but returns early on stop or pause.
 * Async-signal-safe (the native backend calls it from a signal handler).
 */
int guest_serve_call(struct guest *g, unsigned i, uint32_t nr);
/* The signal that kicks a vCPU thread out of guest code (its handler is
 * installed on first use; native.c). */
int guest_kick_signal(void);
/* (Re)install the handlers of the kick signal and of the native backend's
 * traps where something else replaced them; guest_start calls it. */
void guest_signals_install(void);
/* Park vCPU i while a pause or a memory change is requested; returns true
 * when the guest is being stopped.  Async-signal-safe. */
bool guest_park(struct guest *g, unsigned i);

#endif

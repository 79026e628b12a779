/*
 * hugevm_guest.h - the hugevm guest ABI, version 1: everything a guest
 * program and the host agree on.  One header for both sides; freestanding
 * C11 (only <stdint.h>), so a user's own guest builds against it alone.
 *
 * What a guest program is.  A freestanding x86-64 program linked at
 * HVG_PROG_GPA (guest/guest.ld does it) and loaded there, either as a flat
 * image (the built-in programs) or as an ELF64 executable whose PT_LOAD
 * segments lie inside [HVG_PROG_GPA, HVG_PROG_GPA + HVG_PROG_MAX) (`hugevm
 * run --guest-program FILE`).  It runs in 64-bit mode at CPL 3 on an
 * identity map of guest-physical memory (virtual address == gpa), with
 * guest page tables whose leaves are as large as the host was asked for
 * (struct hvg_param.guest_page_order).  Every vCPU starts at the entry
 * point with rsp = HVG_STACK_TOP(vcpu) and rdi = the gpa of its parameter
 * page (struct hvg_param); the entry must never return (guest/rt.c ends
 * with HVG_CALL_DONE in a loop).
 *
 * Guest-physical layout (the first HVG_SYSTEM_END bytes belong to the
 * runtime; the workloads use the RAM above it, listed in hvg_param.ext):
 *
 *   0x010000 ..           system pages the host writes (IDT, exception
 *                         stubs, page tables, GDT/TSS per vCPU); not
 *                         accessible from CPL 3
 *   HVG_PARAM_GPA(v)      vCPU v's parameter page (user read/write)
 *   HVG_PROG_GPA          the program image, HVG_PROG_MAX bytes at most
 *                         (text, data and bss; zeroed before loading)
 *   HVG_STACK_TOP(v)      top of vCPU v's stack (HVG_STACK_BYTES each,
 *                         in the second 2 MiB)
 *   HVG_SYSTEM_END        first byte a workload may use
 *
 * Calls.  A guest calls the host by filling the call block of its own
 * parameter page (call, args) and executing `out HVG_PORT, al` with al =
 * the call number (hvg_call() in guest/rt.h; a one-byte out: the I/O
 * bitmap opens that one port to CPL 3).  On this ABI's hosts a
 * port exit is the only way out of CPL 3 that works everywhere (vmcall,
 * hlt, int n and syscall do not change privilege under PVM), and it costs
 * tens of microseconds: guests batch work between calls (the workloads
 * publish their progress in the parameter page, which the host reads
 * without an exit).  The host writes the result to call_ret before the
 * guest runs on.
 *
 * Exceptions.  Every vector has an IDT gate to a host-written CPL 0 stub
 * that reports it on HVG_PORT_EXCEPTION; the host ends the run with an
 * error naming the vCPU, the vector, the faulting rip and, for a page
 * fault, the address.  A guest crash is never a silent shutdown.
 */
#ifndef HUGEVM_GUEST_ABI_H
#define HUGEVM_GUEST_ABI_H

#include <stdint.h>

#define HVG_ABI_VERSION 1u
#define HVG_MAGIC 0x31475648u /* "HVG1" */

/* ---- layout ---------------------------------------------------------------- */

#define HVG_MAX_VCPUS 32u
#define HVG_PARAM_GPA(v) (0x80000ULL + (uint64_t)(v) * 0x1000ULL) /* gfn 0x80.. */
#define HVG_PROG_GPA 0x100000ULL
#define HVG_PROG_MAX 0x100000ULL
#define HVG_STACK_BYTES 0x10000ULL
#define HVG_STACK_TOP(v) (0x200000ULL + ((uint64_t)(v) + 1) * HVG_STACK_BYTES)
#define HVG_SYSTEM_END 0x400000ULL
#define HVG_MAX_EXTENTS 128u

/* ---- ports and calls ----------------------------------------------------------- */

#define HVG_PORT 0xf4u           /* out al = enum hvg_call_nr */
#define HVG_PORT_EXCEPTION 0xf5u /* out from the CPL 0 stubs: eax = vector */

enum hvg_call_nr {
    HVG_CALL_DONE = 1,    /* finished: results are in the parameter page;
                           * args[0] = 0, or nonzero when the program found
                           * an error itself (its console says which) */
    HVG_CALL_CONSOLE = 2, /* print console[0..console_len) and empty it */
    HVG_CALL_SLEEP = 3,   /* args[0] = nanoseconds to wait (pacing) */
    HVG_CALL_YIELD = 4,   /* a point where the host may pause or stop it */
    HVG_CALL_MEMORY = 5,  /* a memory operation with Xen's semantics:
                           * args[0] = enum hvg_mem_op, args[1] = extent
                           * order (0 or 9), args[2] = gpa of a list of
                           * args[3] gfns (u64, at most HVG_MEM_MAX_EXTENTS);
                           * call_ret = extents completed (the first that
                           * failed stops the call), or -errno for a bad call
                           * (op, order, count, list address) */
    HVG_NR_CALLS
};

enum hvg_mem_op {
    HVG_MEM_DECREASE = 1, /* decrease_reservation: give the extents back */
    HVG_MEM_POPULATE = 2, /* populate_physmap: map new RAM at the extents, each
                           * exactly at its order (a 2M extent the host cannot
                           * serve as 2M fails: no silent 4K substitution) */
};
#define HVG_MEM_MAX_EXTENTS 512u

/* ---- workloads ---------------------------------------------------------------- */

enum hvg_workload {
    HVG_WL_SEQ = 0,     /* sweep the slice, one word per page */
    HVG_WL_UNIFORM = 1, /* GUPS: random read-modify-write in the slice */
    HVG_WL_CHASE = 2,   /* dependent loads along a random cycle of pages */
    HVG_WL_ZIPF = 3,    /* zipfian hot set spread over the slice */
    HVG_WL_WRITER = 4,  /* paced writes, a word per page, wss of the slice */
    HVG_WL_CUSTOM = 5,  /* a user's program: the workload fields are advisory */
    HVG_NR_WORKLOADS
};

struct hvg_extent {
    uint64_t gpa;   /* 4K aligned, >= HVG_SYSTEM_END */
    uint64_t pages; /* > 0 */
};

/* The state a workload keeps between operations: what the host replays
 * and what a paused guest resumes from. */
struct hvg_wl_state {
    uint64_t rng, pos, pass, seq;
    uint64_t ops, accesses, writes, checksum;
};

/*
 * One 4K page per vCPU.  "host" fields are written by the host before the
 * vCPU starts and only read by the guest; "guest" fields are written by the
 * guest and read by the host at any time (stores of aligned 64-bit words,
 * so a reader never sees a torn value).
 */
struct hvg_param {
    /* host */
    uint32_t magic;        /* HVG_MAGIC */
    uint32_t abi;          /* HVG_ABI_VERSION */
    uint32_t vcpu, nr_vcpus;
    uint32_t workload;     /* enum hvg_workload */
    uint32_t guest_page_order; /* leaves of the guest's page tables: 0, 9, 18 */
    uint64_t seed;
    uint64_t ops;          /* operations to run; 0: until stop is set */
    uint32_t write_ppm;    /* share of operations that write, per million */
    uint32_t wss_ppm;      /* writer: share of the slice written, per million */
    uint64_t write_rate;   /* writer: writes per second, 0 = unpaced */
    uint64_t tsc_hz;       /* the guest's TSC frequency (pacing) */
    uint64_t zipf_theta_bits; /* IEEE-754 double, 0 < theta < 1 */
    uint64_t batch;        /* operations between looks at `stop` (and YIELD) */
    uint32_t nr_extents;   /* the workload memory, all vCPUs' slices */
    uint32_t flags;        /* HVG_F_* */
    uint64_t balloon_pages; /* the last balloon_pages pages of the extents are
                             * the balloon's, not the workloads' (a multiple
                             * of 512, 2M-aligned gfns) */
    uint64_t balloon_target; /* host, any time: pages the guest should have
                              * given back (vCPU 0's balloon driver acts) */
    struct hvg_extent ext[HVG_MAX_EXTENTS];
    /* guest */
    uint64_t stop;         /* host: set to 1 to make the program finish at the
                            * next batch boundary */
    uint64_t phase;        /* guest: 0 starting, 1 set-up, 2 running, 3 done */
    struct hvg_wl_state st;
    /* guest: vCPU 0's balloon driver */
    uint64_t balloon_current;     /* pages given back now */
    uint64_t balloon_2m_failed;   /* 2M extents the host refused as 2M */
    uint64_t balloon_fallback_4k; /* 4K pages populated instead */
    uint64_t balloon_calls;       /* memory calls made */
    int64_t balloon_error;        /* last call that did less than asked and
                                   * could not fall back (0: none) */
    /* call block */
    uint32_t call;         /* enum hvg_call_nr, as in eax */
    uint32_t console_len;
    uint64_t args[4];
    int64_t call_ret;
    char console[960];
};

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct hvg_extent) == 16, "hvg_extent");
_Static_assert(sizeof(struct hvg_param) <= 4096, "the parameter page is one page");
#endif

/* hvg_param.flags */
#define HVG_F_BALLOON_4K 0x2u    /* the balloon driver gives memory back in 4K
                                  * pages, 512 per 2M extent (as Linux's does) */
#define HVG_F_BALLOON_SCRUB 0x4u /* and first writes zeros over each extent (a
                                  * guest that had used it: a PoD guest's extent
                                  * is then a populated zero superpage) */
#define HVG_F_TOUCH 0x1u /* read one word of every page of the slice before
                          * running (no effect on the results): a timed run
                          * then measures the workload, not first touches */

/* Phases published in hvg_param.phase. */
#define HVG_PHASE_START 0u
#define HVG_PHASE_SETUP 1u
#define HVG_PHASE_RUN 2u
#define HVG_PHASE_DONE 3u

#endif

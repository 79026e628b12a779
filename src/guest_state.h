/*
 * guest_state.h - a guest's soft vCPUs and workloads as HVM_CONTEXT TLVs
 * (HVCTX_VCPU = 3, HVCTX_WORKLOAD = 4), and a KVM vCPU's XSAVE area, XCRs
 * and MSRs beside its PROG_VCPU (HVCTX_PROG_XSAVE = 8, HVCTX_PROG_MSRS = 9,
 * at the end of this file); save.h reserves the types, docs/stream.md
 * describes the values.
 *
 * The encoding is exactly struct mig_vcpu_tlv and struct mig_workload_tlv
 * below (the wire structs of migrate.h's HVM_CONTEXT) (little-endian, one pair per vCPU): a stream saved by
 * `hugevm run --save` and one written by a live migration carry the same
 * bytes, and either can be resumed by `hugevm restore --run` or by
 * migrate_receive.
 *
 * Decoding treats the bytes as untrusted: sizes, vCPU ids, the vCPU count,
 * TLB geometry and workload parameters are checked before anything is
 * built, and a workload's position is checked against its slice of the
 * restored guest by workload_set_state.
 */
#ifndef HUGEVM_GUEST_STATE_H
#define HUGEVM_GUEST_STATE_H

#include "common.h"
#include "guest_exec.h"
#include "save.h"
#include "vcpu.h"
#include "workload.h"

#define GUEST_STATE_MAX_VCPUS 64 /* == MIGRATE_MAX_VCPUS */

/* HVM_CONTEXT TLVs carrying the guest (save.h reserves the types; this file
 * encodes and decodes them for both migration and save/restore). */
struct mig_vcpu_tlv {
    uint32_t id, nr_vcpus, guest_order, reserved;
    uint32_t entries[3], ways[3];
};
_Static_assert(sizeof(struct mig_vcpu_tlv) == 40, "HVCTX_VCPU");
struct mig_workload_tlv {
    uint32_t vcpu, kind, quantum, reserved;
    uint64_t seed, write_rate;
    uint64_t write_frac, zipf_theta, wss; /* IEEE-754 doubles */
    uint64_t rng, pos, pass, seq, checksum, writes;
};
_Static_assert(sizeof(struct mig_workload_tlv) == 104, "HVCTX_WORKLOAD");

struct guest_vcpu_state {
    struct tlb_config tc;
    struct workload_config wc; /* on_write / ctx are NULL after decoding */
    struct workload_state ws;
};

#define GUEST_STATE_MAX_MEM 65536u /* extents of the workloads' memory */

struct guest_state {
    unsigned nr_vcpus;
    struct guest_vcpu_state v[GUEST_STATE_MAX_VCPUS];
    /* The memory the workloads were created over (HVCTX_GUEST_MEM, checked:
     * nr_mem extents of {gfn u64, nr u64} little-endian, pointing into the
     * decoded area, which must outlive guest_state_build); nr_mem 0: the
     * stream does not say, the workloads take the domain's memory. */
    const uint8_t *mem;
    uint32_t nr_mem;
};

/* Append one HVCTX_VCPU and one HVCTX_WORKLOAD TLV per vCPU (n of them,
 * v[i] running w[i], all with configuration wc), and one HVCTX_GUEST_MEM
 * TLV (the memory they address, when they all address the same: the
 * guest's memory map may have changed since, by balloon or populate) to b,
 * which hvctx_begin started.  The TLVs for save_opts.extra_tlvs are then b->p + 24, b->len -
 * 24 (sizeof(struct hvctx_header)).  0, -EINVAL (n == 0 or too many),
 * -ENOMEM. */
int guest_state_encode(struct hvctx_buf *b, unsigned n, struct vcpu *const *v,
                       struct workload *const *w, const struct workload_config *wc) HV_MUST_CHECK;

/* Decode the TLV area of a hugevm context blob (restore_result.context:
 * other TLV types are ignored).  1: *gs holds a complete state of
 * gs->nr_vcpus vCPUs; 0: the area holds no VCPU or WORKLOAD TLV at all
 * (err says so); -EBADMSG: malformed or inconsistent (err says why). */
int guest_state_decode(const void *area, size_t len, struct guest_state *gs, char *err,
                       size_t errlen) HV_MUST_CHECK;

/* Check a decoded state against the domain it is to run on: the memory
 * the workloads address (GUEST_MEM) may not exceed max_pages pages, so
 * that building them (zipf sums a term per page) costs O(the guest's RAM)
 * whatever the stream says.  0 or -EINVAL (err says why).
 * guest_state_build applies it; `hugevm inspect` calls it with the
 * configuration's max_pages. */
int guest_state_check(const struct guest_state *gs, uint64_t max_pages, char *err,
                      size_t errlen) HV_MUST_CHECK;

/* Create gs->nr_vcpus vCPUs of d and their workloads (given on_write and
 * ctx), then set each workload's saved position: v[i] and w[i] for i <
 * gs->nr_vcpus.  On error nothing is left created (v[], w[] NULL) and err
 * names the vCPU: -EINVAL (e.g. the position lies outside the vCPU's slice
 * of this guest, or guest_state_check refuses the state), -ENOMEM. */
int guest_state_build(struct domain *d, const struct guest_state *gs,
                      void (*on_write)(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val),
                      void *ctx, struct vcpu **v, struct workload **w, char *err,
                      size_t errlen) HV_MUST_CHECK;

/* ---- a KVM vCPU's XSAVE area, XCRs and MSRs ------------------------------ */

/*
 * Two TLVs per KVM vCPU beside its PROG_VCPU (guest_exec.h: struct
 * hvctx_prog_ext is the decoded form), both critical and versioned:
 *
 *   PROG_XSAVE (8): struct hvctx_prog_xsave_tlv, nr_xcrs x struct hvctx_reg
 *                   (XCR number, 0, value), xsave_len bytes of XSAVE area
 *   PROG_MSRS (9):  struct hvctx_prog_msrs_tlv, nr_msrs x struct hvctx_reg
 *                   (MSR index, 0, value)
 *
 * Rules (docs/stream.md): a program guest's stream holds them for every
 * KVM vCPU or for none (a stream written before they existed: the vCPUs
 * resume with their FPU from PROG_VCPU and KVM's defaults for the rest);
 * a native guest's stream holds none; a soft guest's stream (VCPU and
 * WORKLOAD TLVs) holding any of the KVM state TLVs (PROG_VCPU, PROG_XSAVE,
 * PROG_MSRS) is contradictory and guest_state_decode refuses it.
 */
#define HVCTX_PROG_EXT_VERSION 1u
struct hvctx_prog_xsave_tlv {
    uint16_t version;   /* HVCTX_PROG_EXT_VERSION */
    uint16_t reserved0; /* 0 */
    uint32_t vcpu;
    uint32_t nr_xcrs;   /* <= HVCTX_MAX_XCRS; XCR 0 only */
    uint32_t xsave_len; /* HVCTX_XSAVE_MIN .. HVCTX_XSAVE_MAX, a multiple of 4 */
};
_Static_assert(sizeof(struct hvctx_prog_xsave_tlv) == 16, "HVCTX_PROG_XSAVE header");
struct hvctx_prog_msrs_tlv {
    uint16_t version;   /* HVCTX_PROG_EXT_VERSION */
    uint16_t reserved0; /* 0 */
    uint32_t vcpu;
    uint32_t nr_msrs;   /* <= HVCTX_MAX_MSRS, each index of HVCTX_PROG_MSR_LIST once */
    uint32_t reserved1; /* 0 */
};
_Static_assert(sizeof(struct hvctx_prog_msrs_tlv) == 16, "HVCTX_PROG_MSRS header");
_Static_assert(sizeof(struct hvctx_reg) == 16, "hvctx_reg");

/* The name of an MSR of HVCTX_PROG_MSR_LIST ("IA32_TSC"); NULL for any
 * other index. */
const char *guest_state_msr_name(uint32_t index);

/* Append vCPU vcpu's extended state: PROG_XSAVE when e->xsave_len, then
 * PROG_MSRS when e->nr_msrs.  0; -EINVAL when e is out of its bounds (a
 * backend's bug); -ENOMEM. */
int guest_state_prog_ext_encode(struct hvctx_buf *b, unsigned vcpu,
                                const struct hvctx_prog_ext *e) HV_MUST_CHECK;

/* Which vCPUs' extended TLVs a decode has seen (bit i: vCPU i). */
struct guest_state_ext_seen {
    uint64_t xsave, msrs;
};

/* Decode one PROG_XSAVE or PROG_MSRS TLV (type, its value val[0, len),
 * found at offset `at` of the TLV area) into ext[vcpu], vcpu < nr_ext
 * (<= 64), and mark it in *seen.  Untrusted: version, sizes, reserved
 * fields, the vCPU (given twice), XCR numbers and XCR0's feature rules,
 * the XSAVE header (standard format, user-state features only, MXCSR), MSR
 * indexes (HVCTX_PROG_MSR_LIST only, each once) and the values KVM would
 * refuse (addresses not canonical, PAT types, TSC_AUX) are checked.  0,
 * or -EBADMSG with err naming the TLV, its offset and the field. */
int guest_state_prog_ext_decode(uint16_t type, const uint8_t *val, uint32_t len, size_t at,
                                struct hvctx_prog_ext *ext, unsigned nr_ext,
                                struct guest_state_ext_seen *seen, char *err,
                                size_t errlen) HV_MUST_CHECK;

/* After every TLV: the extended state is consistent with nr_vcpus program
 * vCPUs on backend `kvm` (true) or native (false): every vCPU or none has
 * each TLV, none beyond nr_vcpus, none for a native guest.  0 or -EBADMSG
 * with err. */
int guest_state_prog_ext_check(const struct guest_state_ext_seen *seen, unsigned nr_vcpus,
                               bool kvm, char *err, size_t errlen) HV_MUST_CHECK;

#endif

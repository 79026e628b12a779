/*
 * workload.h - deterministic, seeded guest workloads for the soft vCPU.
 *
 * A workload belongs to one vCPU and really reads and writes guest bytes
 * through it (vcpu_read / vcpu_write).  The guest's memory is the set of
 * gfns mapped as RAM or PoD when the workload is created, as a list of
 * extents; page index i is the i-th such gfn.  Kinds:
 *  - seq:     sequential sweep, one 8-byte access per 4K page, wrapping; each
 *             vCPU sweeps its own slice (1/nr_vcpus of the pages);
 *             write_frac of the accesses write (default 0);
 *  - uniform: GUPS-like: a uniformly random word of the whole guest; with
 *             probability write_frac (default 1) an update (read, then write
 *             of the value XOR a random key: 2 accesses), else a read;
 *  - zipf:    hot set: page ranks drawn from a zipfian law (theta, default
 *             0.99, Gray et al.'s generator as in YCSB), scrambled over the
 *             guest by a hash so hot pages are spread; write_frac (default
 *             0.2) of accesses write;
 *  - writer:  write-rate-controlled: writes one word in each page of the
 *             first `wss` fraction (default 1) of its slice, in order, pass
 *             after pass (dirty_log_perf_test's guest); workload_run holds
 *             it to write_rate pages per second per vCPU (0: unlimited).
 * The sequence of accesses depends only on the seed, the vCPU index, the
 * number of vCPUs and the guest's extents; the values written are a hash of
 * (seed, gpa, sequence number).
 *
 * workload_run interleaves several vCPUs deterministically: round robin, in
 * quanta of `quantum` accesses each (0: lengths drawn from the seed in
 * [1, 8192]), each quantum under the domain lock (vcpu.h).
 */
#ifndef HUGEVM_WORKLOAD_H
#define HUGEVM_WORKLOAD_H

#include "common.h"
#include "vcpu.h"

enum workload_kind {
    WL_SEQ = 0,
    WL_UNIFORM = 1,
    WL_ZIPF = 2,
    WL_WRITER = 3,
    WL_NR_KINDS
};
const char *workload_name(enum workload_kind k);
/* "seq", "uniform" (or "gups"), "zipf", "writer"; -EINVAL otherwise. */
int workload_parse(const char *s, enum workload_kind *out) HV_MUST_CHECK;

struct workload_config {
    enum workload_kind kind;
    uint64_t seed;
    double write_frac;   /* < 0: the kind's default */
    double zipf_theta;   /* 0: 0.99 */
    double wss;          /* writer: fraction of the slice (0: 1.0) */
    uint64_t write_rate; /* writer: pages/s per vCPU, 0 = unlimited */
    unsigned quantum;    /* accesses per turn; 0 = seeded random lengths */
    /* Called after every successful write (tests build models with it). */
    void (*on_write)(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val);
    void *ctx;
};
void workload_config_default(struct workload_config *c, enum workload_kind kind);

struct workload;

/* A workload for vCPU number `index` of `nr_vcpus` over d's current RAM.
 * -EINVAL (no RAM, bad parameters), -ENOMEM. */
int workload_create(struct domain *d, const struct workload_config *cfg,
                    unsigned index, unsigned nr_vcpus,
                    struct workload **out) HV_MUST_CHECK;
void workload_destroy(struct workload *w);

/* (Added for live migration.)  workload_create over the given memory
 * instead of the domain's RAM and PoD now: n extents, ascending and
 * disjoint (untrusted input from a stream is checked: -EINVAL).  A guest
 * whose memory map changed after its workloads were created (balloon,
 * populate) keeps addressing the same pages where it resumes. */
int workload_create_on(const struct workload_config *cfg, unsigned index, unsigned nr_vcpus,
                       const struct gfn_range *mem, size_t n,
                       struct workload **out) HV_MUST_CHECK;
/* The workload's memory: up to max extents into out; returns how many it
 * has (merged runs, in page-index order). */
size_t workload_extents(const struct workload *w, struct gfn_range *out, size_t max);

/* Pages of guest memory the workload addresses, and its slice. */
uint64_t workload_pages(const struct workload *w);
/* Page index -> gfn. */
gfn_t workload_gfn(const struct workload *w, uint64_t index);

/* One operation (1 or 2 accesses) on v; d->lock held.  Returns the number of
 * accesses made (> 0) or the vCPU's negative errno. */
int workload_step(struct workload *w, struct vcpu *v) HV_MUST_CHECK;

/* (Added for live migration.)  A workload's position in its sequence: with
 * the same configuration, vCPU index and guest extents, a workload given
 * this state continues exactly where the other one stopped. */
struct workload_state {
    uint64_t rng, pos, pass, seq, checksum, writes;
};
void workload_get_state(const struct workload *w, struct workload_state *st);
/* -EINVAL when the state does not fit this workload (position outside its
 * slice: untrusted input from a stream is checked here). */
int workload_set_state(struct workload *w, const struct workload_state *st) HV_MUST_CHECK;

struct workload_result {
    uint64_t accesses;
    uint64_t writes;
    uint64_t ns;
    uint64_t quanta;
    uint64_t checksum; /* of the values read: makes runs comparable */
};

/*
 * Run n (vCPU, workload) pairs interleaved until `accesses` accesses in
 * total (0: no limit) or `ns` nanoseconds of wall time (0: no limit; checked
 * between quanta) have passed; at least one limit must be set.  Stops at the
 * first error (returned).  `res` may be NULL.
 */
int workload_run(struct vcpu *const *v, struct workload *const *w, unsigned n,
                 uint64_t accesses, uint64_t ns,
                 struct workload_result *res) HV_MUST_CHECK;

#endif

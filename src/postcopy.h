/*
 * postcopy.h - the receiving side of a post-copy migration: the guest runs
 * here before all of its memory is here.
 *
 * How a post-copy migration goes (the sender's side is migrate_send with
 * migrate_opts.postcopy; the wire is migrate.h's):
 *   1. pre-copy rounds as usual (--precopy-rounds, at least the full copy),
 *      so the receiver holds every RAM page, some of them stale;
 *   2. the switch: the sender pauses the guest and sends the final round
 *      without the data of the pages dirtied since their last copy (the
 *      system area below HVG_SYSTEM_END, pages that were not RAM on the
 *      receiver, and holes still go with it), the vCPU state, END, then
 *      the pending pfns (PC_PENDING) and DONE with the digest of what it
 *      sent; the receiver checks that digest (it holds exactly what was
 *      sent), the usual RESULT/COMMIT/RESUMED follow: the guest is the
 *      receiver's from COMMIT on, exactly as in pre-copy;
 *   3. the receiver arms this module over the pending pages
 *      (postcopy_rx_start) and starts the guest; the sender pushes every
 *      pending page in the background (2M regions near recent faults
 *      first) and answers requests ahead of the background;
 *   4. PC_END (the sender's digest of every page at the pause) and, once
 *      every page is here and the digests agree, PC_DONE: the sender may
 *      destroy its copy.
 *
 * Mechanism (program guests: kvm and native backends; not soft vCPUs): the pending pages keep their frames (the p2m keeps
 * its 2M and 1G leaves throughout: nothing is split).  Every 2M region with
 * a pending page has its mirror mapping unmapped (MADV_DONTNEED: the data
 * stays in the memfd) and registered with a userfaultfd in minor-fault
 * mode (and missing-fault mode, for holes of the memfd), so any touch of
 * it, by a vCPU (directly, or KVM's own access for its page tables) or by
 * the host through the mirror, is a fault that one fault-server thread
 * sees.  A page that is here is mapped at once
 * (UFFDIO_CONTINUE, 4K); a pending one is requested (PC_REQ) and its
 * vCPU alone waits.  An I/O thread reads PC_PAGES into the frames through
 * the machine's own mapping (never through the guest's), maps the pages
 * vCPUs wait for, and as soon as the last page of a 2M region is here,
 * unregisters the region and unmaps it again: the next touch maps it with
 * one PMD (shmem THP), and KVM maps it at 2M again.
 *
 * While post-copy runs, nothing changes the guest's memory map: memory
 * calls, guest_call and log-dirty wait (guest_postcopy_begin/end), and a
 * PoD fault that needs the vCPUs held waits too (a PoD fault the cache
 * serves does not).
 *
 * Digest: the receiver's sum of page terms (stream.h) starts as the one
 * the pre-copy part checked; each page that arrives replaces its term
 * (the stale page's, hashed before it is overwritten: no vCPU can have
 * touched it) with the new one's.  PC_DONE fails when it differs from the
 * sender's PC_END digest.
 *
 * Failure: after the switch neither side holds all of the guest.  A
 * connection that fails (closed, cut, silent for timeout_ms) is not the
 * guest's end: its vCPUs that need a missing page wait, the others run,
 * postcopy_rx_wait returns -ENOTCONN, and a new connection from the sender
 * (which keeps every page: migrate.h) takes over with postcopy_rx_resume:
 * the receiver tells it what is still missing and post-copy goes on.
 * Hostile bytes, a digest that does not add up, or no sender back within
 * the caller's patience end it: the caller stops and destroys the guest
 * (its memory is incomplete).
 */
#ifndef HUGEVM_POSTCOPY_H
#define HUGEVM_POSTCOPY_H

#include "common.h"
#include "guest.h"

struct chan;
struct postcopy_run; /* migrate.h: a run of pending pfns */

#define POSTCOPY_STAT_FIELDS(X)                                                \
    X(pending, "pages missing at the switch")                                  \
    X(regions, "2M regions with pages missing at the switch")                 \
    X(regions_whole, "of those, made whole again (PMD-mappable)")             \
    X(faults, "minor faults on registered regions")                           \
    X(faults_missing, "faults on pages not here yet (the vCPU waited)")        \
    X(requests, "pages requested (PC_REQ)")                                   \
    X(pages_urgent, "pages that came as answers")                             \
    X(pages_preempt, "of those, on the preempt channel")                      \
    X(pages_pushed, "pages that came in the background")                     \
    X(pages_dup, "pages that came again (dropped: the first copy stands)")    \
    X(wire_bytes, "bytes read after the switch")

struct postcopy_rx_stats {
#define X(name, desc) uint64_t name;
    POSTCOPY_STAT_FIELDS(X)
#undef X
};

struct postcopy_rx_report {
    int rc;
    char err[256];
    struct postcopy_rx_stats st;
    double whole_s;   /* from start until every page was here */
    /* service time of faults on missing pages: fault read to page mapped */
    uint64_t lat_p50_ns, lat_p99_ns, lat_max_ns;
    bool verified;    /* the digests agreed */
    uint64_t digest;
    bool link_lost;   /* rc -ENOTCONN: waiting for a connection to resume */
    bool done_unsent; /* rc 0, but PC_DONE did not reach the sender (err says) */
    unsigned links;   /* connections used: 1 + resumes */
};

struct postcopy_rx;

/*
 * Arm post-copy over g (created, not started; a program guest) for the
 * pending runs (untrusted: ascending, not overlapping, each pfn RAM of
 * g's domain at or above HVG_SYSTEM_END), reading pages from ch (the
 * migration's connection, after RESUMED) and, when pre is not NULL, the
 * answers to its requests from pre (migrate_recv_result.pc_preempt: they
 * do not wait behind background pages there; pre is p's from now on,
 * closed on failure too, and dropped when a new connection resumes).  digest/pages: the memory digest
 * the pre-copy part verified.  Starts the fault server and the I/O thread;
 * the caller starts the guest next.  -ENOTSUP with why[] (soft guest,
 * no minor-fault userfaultfd here), -EINVAL (bad runs),
 * -ENOMEM, -errno.
 */
int postcopy_rx_start(struct guest *g, struct chan *ch, struct chan *pre,
                      const struct postcopy_run *runs, size_t nruns, uint64_t id, uint64_t digest,
                      uint64_t pages, int timeout_ms, struct postcopy_rx **out, char *why,
                      size_t len) HV_MUST_CHECK;
/* Pages still missing (a snapshot). */
uint64_t postcopy_rx_missing(struct postcopy_rx *p);
/* The counters so far (a snapshot, any thread). */
void postcopy_rx_stats(struct postcopy_rx *p, struct postcopy_rx_stats *st);
/* The migration's post-copy id (the sender's, from PC_PENDING): a
 * connection that resumes it must name it (migrate_postcopy_accept). */
uint64_t postcopy_rx_id(const struct postcopy_rx *p);
/*
 * Wait until every page is here and PC_DONE went out (0), post-copy
 * failed (< 0: the guest cannot go on), or the connection failed
 * (-ENOTCONN, rep->link_lost): the vCPUs that need a missing page wait,
 * nothing is lost, and a new connection may take over with
 * postcopy_rx_resume, then postcopy_rx_wait again.  rep->err says what.
 */
int postcopy_rx_wait(struct postcopy_rx *p, struct postcopy_rx_report *rep);
/* After -ENOTCONN: go on over ch (a sender that passed
 * migrate_postcopy_accept): the pages still missing go to it as
 * PC_PENDING, the requests of waiting vCPUs again.  -EINVAL when p is not
 * waiting for a connection. */
int postcopy_rx_resume(struct postcopy_rx *p, struct chan *ch, char *why,
                       size_t len) HV_MUST_CHECK;
/* Free everything (the guest's memory map may change again).  When
 * post-copy did not end with 0, pages are still missing: a vCPU waiting
 * for one goes on (kvm, native: on the stale page; soft: its access fails
 * with -EIO), so free first, then stop the guest (a vCPU waiting in a
 * fault inside KVM_RUN cannot be stopped before).  NULL is fine. */
void postcopy_rx_free(struct postcopy_rx *p);

/* 0 when this host can receive post-copy migrations (a userfaultfd with
 * minor faults on shmem, Linux 5.14+), else -errno with why[]. */
int postcopy_probe(char *why, size_t len) HV_MUST_CHECK;

#endif

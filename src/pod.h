/*
 * pod.h - populate-on-demand (Xen's p2m-pod), superpage first.
 *
 * A PoD domain is populated with p2m_pod entries (4K, 2M or 1G leaves with
 * no frame) instead of RAM; a PoD target says how much real memory backs it.
 * The frames live in the PoD cache until a guest access to a PoD entry (an
 * EPT violation) maps one:
 *
 *  - cache: a list of 2M chunks (aligned, machine-contiguous runs of 512
 *    frames) and a list of 4K pages, all owned by the domain and all zero.
 *    Taking a 4K page when the 4K list is empty breaks one 2M chunk.  The
 *    cache grows and shrinks in 2M units where it can (4K only for a
 *    remainder below 2M or when no 2M extent is free, counted).
 *  - demand populate: a 1G PoD entry first becomes 512 2M PoD entries; a 2M
 *    PoD entry gets one 2M chunk when the cache has one, else it is
 *    splintered into 512 4K PoD entries and the touched one gets a 4K page.
 *  - reclaim when the cache is short: first the 32 most recently populated
 *    gfns are zero-checked (a 2M one as a superpage), then, if the cache is
 *    empty, a bounded, resumable emergency sweep scans downwards from where
 *    the last one stopped: superpage leaves get a superpage zero check
 *    (quick sample, then full check, then remapped as one 2M PoD entry with
 *    the frames as a 2M chunk), 4K leaves are checked in batches of 16.  A
 *    sweep checks at least POD_SWEEP_LIMIT RAM gfns (unless the pass ends),
 *    stops as soon as it has checked that many and found something, and
 *    never does more than
 *    `sweep_max` units of work per call (a unit: one gfn checked or one
 *    non-RAM leaf skipped).  A call that ran out of budget returns -EAGAIN
 *    (the access is retried and the sweep resumes); when a whole pass over
 *    the guest found nothing, the domain is crashed with the reason in its
 *    event log and stats (never an unbounded scan, never a wrong page).
 *  - reclaimed zero pages become PoD entries again (the guest still reads
 *    zero), so reclaim moves pages from "populated" to "cache" and leaves
 *    tot_pages unchanged; the 4K list is regrouped into 2M chunks whenever
 *    512 of its pages form an aligned machine run.
 *
 * Accounting invariants (Xen's, checked by pod_audit and domain_audit):
 *   entry_count == pages mapped by p2m_pod leaves in the p2m
 *   count       == 512 * nr_chunks + nr_pages  (pages in the cache)
 *   tot_pages   == RAM pages mapped + count;  count <= entry_count
 *   every cache frame is owned by the domain, mapped nowhere, and zero.
 *
 * Concurrency: like every domain operation, the caller guarantees that no
 * vCPU runs the guest during these calls (the soft vCPU calls the fault
 * handler from its own thread of execution), so a page found zero is still
 * zero when it is unmapped.
 */
#ifndef HUGEVM_POD_H
#define HUGEVM_POD_H

#include "common.h"
#include "domain_hooks.h"
#include "pod_state.h"

struct domain;

/*
 * Set the domain's memory target in pages (Xen's set_pod_target): the cache
 * is sized to target - populated RAM, clamped to [0, entry_count], growing
 * by 2M extents (4K for a remainder or when no 2M extent is free) and
 * shrinking 2M chunks first.  -EDQUOT past max_pages or -ENOMEM when the
 * machine runs out: the cache keeps what it got and the accounting holds.
 */
int pod_set_target(struct domain *d, uint64_t target_pages) HV_MUST_CHECK;

/* Size the cache to exactly `pages` (same rules, no clamping beyond
 * entry_count).  Used by pod_set_target and decrease_reservation. */
int pod_set_cache_target(struct domain *d, uint64_t pages) HV_MUST_CHECK;

/*
 * The EPT-violation handler for a p2m_pod entry at gfn.  Returns 0 when the
 * access can be retried (gfn is now RAM, or was not PoD any more), -EAGAIN
 * when the cache is empty and the bounded sweep must continue (retry: the
 * sweep resumes), -ESRCH when the domain is (now) crashed: out of PoD
 * memory or out of p2m tables, reason in the domain's event log.
 */
int pod_demand_populate(struct domain *d, gfn_t gfn) HV_MUST_CHECK;

/*
 * The same from the cache alone, never reclaiming (no zero check, no
 * sweep, so nothing but gfn's entry changes): what a program guest's fault
 * server does while the other vCPUs keep running.  -ENOSPC when the cache
 * is empty (the caller stops the vCPUs and calls pod_demand_populate);
 * otherwise as pod_demand_populate.
 */
int pod_demand_populate_cached(struct domain *d, gfn_t gfn) HV_MUST_CHECK;

/* One bounded emergency sweep (also what demand populate runs when the
 * cache is empty).  Returns pages reclaimed (> 0), -EAGAIN (budget spent,
 * pass not finished), or -ENOSPC (a whole pass found nothing). */
long pod_emergency_sweep(struct domain *d);

/*
 * The consolidation sweep (seed 003: a full sweep regardless of the cache
 * level): zero-check every ram_rw gfn of [gfn, gfn + nr), superpages whole,
 * 4K leaves one by one, and reclaim the zero ones into the cache.  Returns
 * pages reclaimed.  Superpages are never split by this sweep: a 2M leaf is
 * reclaimed whole or left alone.
 */
long pod_zero_sweep(struct domain *d, gfn_t gfn, uint64_t nr);


#endif

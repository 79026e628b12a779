/*
 * domain_hooks.h - the calls the domain (domain.c) makes into the two layers
 * that keep its memory from above: populate-on-demand (pod.c) and log-dirty
 * (dirty.c).
 *
 * Populate, decrease_reservation, audit and destruction must keep the PoD
 * cache and the dirty bitmap exact under the same lock as the p2m change, so
 * the domain calls these directly.  They are declared here, and only here,
 * so that domain.c includes neither pod.h nor dirty.h and the headers keep
 * pointing one way: pod.h and dirty.h include this file, domain.h does not
 * need it.  Each function is defined (and described at length) by the layer
 * named in its prefix.
 */
#ifndef HUGEVM_DOMAIN_HOOKS_H
#define HUGEVM_DOMAIN_HOOKS_H

#include "common.h"

struct domain;

/* --- populate-on-demand (pod.c, pod.h) --- */

/* Shrink the cache to at most `pages` (2M chunks first; never fails: when
 * no host memory is left to break a chunk, the whole chunk goes).  The
 * frames leave through domain_free_frames, so a domain in quarantine parks
 * them (domain.h): reserve pod_shrink_runs(d) runs first. */
void pod_shrink_cache(struct domain *d, uint64_t pages);
/* Most frame runs one pod_shrink_cache call can free: every chunk, every
 * page, and the pages of one broken chunk. */
size_t pod_shrink_runs(const struct domain *d);

/* Reclaim the 2M block at gfn (aligned) into the cache if it is all RAM
 * (ram_rw) and all zero: quick sample, full check, remap as one 2M PoD
 * entry.  Returns 512 when reclaimed, 0 when not (non-zero, not RAM), or
 * -ENOMEM (tables; nothing changed). */
long pod_reclaim_2m(struct domain *d, gfn_t gfn);

/* Release the cache (domain destruction; entries must be gone). */
void pod_destroy(struct domain *d);

/* Cache structure, alignment, ownership, zero contents of a few frames,
 * counts and count <= entry_count.  0 or -EUCLEAN. */
int pod_audit(const struct domain *d) HV_MUST_CHECK;

/* For domain_audit: mark every cache frame in `seen` (a bitmap over the
 * machine) and fail if one is already marked (mapped) or not owned. */
int pod_audit_frames(const struct domain *d, uint64_t *seen) HV_MUST_CHECK;

/* --- log-dirty (dirty.c, dirty.h) --- */

/* A new RAM leaf of `order` was mapped at gfn (aligned; ram_rw, D clear,
 * over gfns that were unmapped or PoD): mark its gfns and give it the
 * active mode's form (for a new PoD entry: just cover it in the bitmap).
 * Never fails; no-op when log-dirty is off.  Called by domain.c (populate,
 * increase_reservation, domain_map_extent) and pod.c (demand populate)
 * with d->lock held or no vCPU quantum running (the caller's contract). */
void dirty_on_map(struct domain *d, gfn_t gfn, unsigned order);
/* RAM in [gfn, gfn + nr) is about to be unmapped (or become PoD): mark
 * every RAM gfn of the range, and the whole of every RAM leaf overlapping
 * it whose D bit is set.  No-op when off. */
void dirty_on_unmap(struct domain *d, gfn_t gfn, uint64_t nr);

#endif

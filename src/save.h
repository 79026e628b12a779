/*
 * save.h - save a domain to a migration stream and restore one from it,
 * plus hugevm's own context blob (HVM_CONTEXT and the HV_CONFIG record).
 *
 * Save writes, in this order (docs/stream.md): image and domain headers;
 * unless `no_optional`, HV_CONFIG (domain configuration and PoD entries)
 * and HV_LAYOUT (the source's 1G and 2M RAM extents); STATIC_DATA_END;
 * PAGE_DATA records covering every gfn in [0, max_gfn) of each 1G block
 * that holds RAM or PoD (RAM with data, or XALLOC when the page is all
 * zero; XTAB for holes, ballooned and PoD gfns);
 * X86_TSC_INFO; HVM_PARAMS; HVM_CONTEXT (the hugevm context blob); unless
 * `no_optional`, HV_CHECKSUM (xxh64 of every byte before it); END.
 *
 * Restore rebuilds superpages whatever the record boundaries and the order
 * the pages arrive in.  Algorithm:
 *  - every 2M region (and 1G region) of the pfn space keeps a fill count
 *    and a hole count, and per-4K "filled" and "hole" bits (sparse: only
 *    2M regions the stream populates cost region state; holes elsewhere
 *    cost a slot in a set of pfns: memory is O(the stream's bytes));
 *  - speculation (below) stays within max_pages, and a stream that
 *    populates more than max_pages pages, or whose counts (tot_pages, PoD
 *    entries) do not match what it carried, is refused, identically in a
 *    dry run (`hugevm inspect`) and a restore;
 *  - the first time a populating entry (NOTAB or XALLOC) touches an
 *    unmapped pfn, the enclosing 1G region is allocated as one extent if
 *    no hole has been seen in it yet and the domain's layout allows it,
 *    else the enclosing 2M region likewise, else a 4K page (allocation
 *    failure falls back one order, counted);
 *  - with an HV_LAYOUT record, the source's 1G and 2M extents are
 *    allocated up front (a hint: correctness never depends on it);
 *  - at END every mapped 4K page that the stream never filled (speculative
 *    allocation) is given back with decrease_reservation, which splits only
 *    along the path, then the p2m is coalesced.  So exactly the regions that
 *    the stream populated completely keep a 1G/2M leaf.
 * All or nothing: on any error the partly restored domain is destroyed and
 * every frame returned; the error names the record and byte offset.
 *
 * Conflicting duplicates: in a saved stream, a pfn that is populated
 * (NOTAB/XALLOC) in one place and a hole (XTAB/BROKEN) in another is an
 * error.  Data sent again for a populated pfn replaces the old data (live
 * migration resends), and XALLOC for a pfn that had data zeroes it.  A live
 * migration stream (restore_opts.live) describes a guest whose memory map
 * changes while it is sent, so there the last word about a pfn wins: XTAB
 * means "not RAM now", a populated pfn sent later as XTAB loses its frame
 * (a superpage around it is split one level at a time, along the path
 * only), a pfn sent as XTAB and later as populated gets a frame (a
 * superpage again when its whole region is populated by END); PoD entries
 * and the PoD target and cache come from the HVM_CONTEXT record (the guest
 * at pause time), not from HV_CONFIG (the guest when the migration
 * started); and HVM_CONTEXT's max_gfn may differ from HV_CONFIG's (RAM
 * populated or removed meanwhile).
 */
#ifndef HUGEVM_SAVE_H
#define HUGEVM_SAVE_H

#include "common.h"
#include "domain.h"
#include "stream.h"

/* ---- the hugevm context blob ---------------------------------------------- */

/*
 * Blob = header {magic u64 "HUGEVMCX", version u32 (1), length u32 of the
 * TLV area, xxh64 u64 (seed 0) of the TLV area}, then TLVs {type u16,
 * flags u16, length u32, value zero-padded to 8}.  A reader skips TLV types
 * it does not know unless flag HVCTX_F_CRITICAL is set.
 */
#define HVCTX_MAGIC 0x58434d5645475548ULL /* "HUGEVMCX" in little-endian bytes */
#define HVCTX_VERSION 1u
#define HVCTX_F_CRITICAL 0x1u
struct hvctx_header {
    uint64_t magic;
    uint32_t version;
    uint32_t length;
    uint64_t checksum;
};
_Static_assert(sizeof(struct hvctx_header) == 24, "hvctx header");
struct hvctx_tlv {
    uint16_t type;
    uint16_t flags;
    uint32_t length;
};
_Static_assert(sizeof(struct hvctx_tlv) == 8, "hvctx TLV header");
enum hvctx_type {
    HVCTX_CONFIG = 1,   /* struct hvctx_config + nr_4k_ranges x {gfn u64, nr u64} */
    HVCTX_POD = 2,      /* count u32, reserved u32, target u64, count x extent entry */
    HVCTX_VCPU = 3,     /* reserved for the vCPU backends */
    HVCTX_WORKLOAD = 4, /* reserved for the workloads */
    HVCTX_POD_CACHE = 5, /* cache u64: pages in the PoD cache (with a POD TLV) */
    HVCTX_GUEST_MEM = 6, /* the workloads' memory: count u32, reserved u32, count x {gfn, nr} */
    HVCTX_PROG_VCPU = 7, /* a program guest's vCPU (guest_exec.h: struct hvctx_prog_vcpu), critical */
    HVCTX_PROG_XSAVE = 8, /* a KVM vCPU's XSAVE area and XCRs (guest_state.h), critical */
    HVCTX_PROG_MSRS = 9,  /* a KVM vCPU's MSRs (guest_state.h), critical */
    HVCTX_POSTCOPY = 10,  /* a post-copy sender's copy in doubt (migrate.h: struct
                           * hvctx_postcopy + the pending bitmap), not critical */
};
struct hvctx_config {
    uint64_t max_pages;
    uint64_t max_gfn;         /* every pfn of the stream is below it */
    uint64_t mmio_hole_bytes; /* below 4 GiB, multiple of 2M */
    uint64_t tot_pages;       /* RAM pages of the source */
    uint32_t flags;           /* HVCTX_CFG_VGA_HOLE */
    uint32_t nr_4k_ranges;
};
_Static_assert(sizeof(struct hvctx_config) == 40, "hvctx config");
#define HVCTX_CFG_VGA_HOLE 0x1u

/* A growing blob. */
struct hvctx_buf {
    uint8_t *p;
    size_t len, cap;
};
int hvctx_begin(struct hvctx_buf *b) HV_MUST_CHECK;
int hvctx_add(struct hvctx_buf *b, uint16_t type, uint16_t flags, const void *v,
              uint32_t len) HV_MUST_CHECK;
/* Append TLVs already encoded (an area of whole, padded TLVs): 0, -EINVAL
 * (not a multiple of 8), -ENOMEM. */
int hvctx_append(struct hvctx_buf *b, const void *tlvs, size_t len) HV_MUST_CHECK;
/* Fill in the header (length, checksum). */
void hvctx_finish(struct hvctx_buf *b);
void hvctx_free(struct hvctx_buf *b);
/* 1: a valid hugevm blob; 0: not hugevm's (magic differs or too short);
 * -EBADMSG: hugevm's but corrupt (err says why); -EPROTONOSUPPORT:
 * unknown version. */
int hvctx_check(const void *blob, size_t len, char *err, size_t errlen) HV_MUST_CHECK;
/* Iterate the TLVs of a checked blob: 1 and the next TLV, 0 at the end,
 * -EBADMSG when a TLV overruns the area.  *pos starts at 0. */
int hvctx_next(const void *blob, size_t len, size_t *pos, struct hvctx_tlv *t,
               const uint8_t **val) HV_MUST_CHECK;
/* The same over a bare area of TLVs (len untrusted bytes, no header), the
 * one parser of their framing: 1 with *t (host byte order) and its value
 * at *val, the TLV at byte *pos of the area and *pos moved past its
 * padding; 0 at the end; -EBADMSG with err saying where when a TLV header
 * is cut short or its value runs past the area. */
int hvctx_area_next(const void *area, size_t len, size_t *pos, struct hvctx_tlv *t,
                    const uint8_t **val, char *err, size_t errlen) HV_MUST_CHECK;

/* A domain configuration as it travels (decoded and validated). */
struct stream_config {
    uint64_t max_pages, max_gfn, mmio_hole_bytes, tot_pages;
    bool vga_hole;
    unsigned nr_4k_ranges;
    struct gfn_range ranges_4k[DOMAIN_MAX_4K_RANGES];
};

/* ---- save ------------------------------------------------------------------ */

enum save_page_order {
    SAVE_ORDER_GFN = 0, /* ascending, like Xen */
    SAVE_ORDER_REVERSE,
    SAVE_ORDER_RANDOM,  /* a permutation of the pfns sent (memory: 8 B per pfn) */
};

#define SAVE_DEFAULT_BATCH 1024u
#define SAVE_MAX_BATCH 32000u /* keeps a PAGE_DATA body under STREAM_MAX_BODY */

struct save_opts {
    bool no_optional;   /* standard records only (no HV_CONFIG, no HV_LAYOUT) */
    bool no_xalloc;     /* send all-zero pages with their data */
    uint32_t batch;     /* pfns per PAGE_DATA record (0: 1024) */
    uint32_t first_batch; /* pfns in the first PAGE_DATA record (0: batch) */
    enum save_page_order order;
    uint64_t seed;      /* for SAVE_ORDER_RANDOM */
    /* TLVs appended to the HVM_CONTEXT blob (the vCPU layer's state):
     * `extra_tlvs_len` bytes of already encoded TLVs.  May be NULL. */
    const void *extra_tlvs;
    size_t extra_tlvs_len;
    /* Called now and then with pfns done and the total (may be NULL). */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
};

struct save_result {
    uint64_t max_gfn;
    uint64_t pages_data, pages_zero, pages_xtab, pod_entries;
    uint64_t page_data_records, records, bytes;
    uint64_t extents_1g, extents_2m, pages_4k; /* the source's RAM leaves */
    double seconds;
};

/* Write domain d to io.  d must not change meanwhile.  0, -ENOMEM, -EINVAL
 * (bad options) or the sink's -errno; err (may be NULL) gets a message. */
int stream_save(struct domain *d, struct stream_io *io, const struct save_opts *o,
                struct save_result *res, char *err, size_t errlen) HV_MUST_CHECK;

/* ---- restore --------------------------------------------------------------- */

enum restore_vcpu_state {
    RESTORE_VCPU_NONE = 0,  /* no HVM_CONTEXT record */
    RESTORE_VCPU_FOREIGN,   /* HVM_CONTEXT is not hugevm's: vCPU state not usable */
    RESTORE_VCPU_HUGEVM,    /* hugevm blob: res->context holds its TLVs */
};

struct restore_opts {
    /* Validate and tally only: no domain, no allocation (hugevm inspect). */
    bool dry_run;
    /* Ignore HV_LAYOUT records (tests that correctness does not need it). */
    bool ignore_layout;
    /* pfn limit when the stream does not carry hugevm's configuration
     * (0: the p2m's limit). */
    gfn_t max_gfn;
    /* A live migration stream: the last word about a pfn wins (see
     * "Conflicting duplicates" above).  Set by migrate_receive only. */
    bool live;
    void (*progress)(void *ctx, uint64_t bytes_read);
    void *progress_ctx;
    /* Called after each record header is read (may be NULL). */
    void (*on_record)(void *ctx, uint64_t index, uint32_t type, uint32_t length,
                      uint64_t offset);
    void *record_ctx;
    /* Hash the stream as it is read and check an HV_CHECKSUM record
     * against it (-EBADMSG on a mismatch: bit rot, or a file changed while
     * it was read).  Off, the record is skipped unchecked. */
    bool verify_checksum;
    /* Return res->data_bits: which pfns received data (a migration
     * receiver hashes only those; the rest are known to be zero). */
    bool track_data;
    /* Keep res->digest: the memory digest (stream.h) of the restored
     * pages, term by term as they arrive (each data page hashed as it
     * lands), so that nothing reads memory again at END. */
    bool digest;
    /* Internal, for comparison only (tests, `make bench`): allocate as
     * Xen's restore does since 2025 instead of hugevm's rule.  A
     * populating entry for an unmapped pfn gets a 2M extent only when its
     * PAGE_DATA record holds the 512 pfns of that 2M region, populated, one
     * after the other in ascending order, starting at the region's first
     * pfn (and the region is wholly unmapped); else a 4K page.  Never 1G,
     * no speculation, HV_LAYOUT is not used, nothing is coalesced at END,
     * and the domain's p2m keeps automatic coalescing off (Xen's p2m never
     * merges leaves; d->no_auto_coalesce, as under log-dirty).
     * A dry run ignores it (its prediction is hugevm's; res->xen_2m and
     * xen_4k are the rule's count either way). */
    bool xen_2025_rule;
    /* Keep the restore's bookkeeping (per-2M state, digest terms, tables:
     * about 2 MiB per GiB restored) in res->state instead of freeing it
     * before returning: giving that memory back to the kernel takes
     * about 0.4 ms per GiB here, which a live migration's receiver spends
     * after its guest runs (restore_state_free), not in the downtime. */
    bool keep_state;
};

struct restore_result {
    struct domain *d;     /* the restored domain (NULL on error / dry run) */
    domid_t domid;        /* the domain that was (or would have been) built */
    uint32_t version, xen_major, xen_minor;
    uint64_t records, page_data_records, skipped_records, bytes;
    uint64_t pages_data, pages_xalloc, pages_xtab, pages_broken;
    uint64_t pages_populated; /* distinct pfns filled (and still filled, live) */
    uint64_t pages_dropped;   /* live: filled pfns sent later as holes, freed */
    bool have_config;     /* from HV_CONFIG or the hugevm HVM_CONTEXT */
    struct stream_config config;
    bool have_layout;
    uint64_t layout_1g, layout_2m; /* extents the HV_LAYOUT record lists */
    uint64_t prealloc_1g, prealloc_2m; /* allocated up front from HV_LAYOUT */
    uint64_t spec_1g, spec_2m, alloc_4k; /* allocated at first touch */
    uint64_t layout_skipped;   /* HV_LAYOUT extents not allocated: beyond max_pages, or
                                * refused by the domain (holes, duplicates) */
    uint64_t spec_trims;       /* speculation given back early to stay within max_pages */
    uint64_t fallback_nomem;   /* superpage allocations that fell back */
    uint64_t freed_pages;      /* speculatively allocated, never filled, freed */
    uint64_t merges;           /* coalesced at the end */
    uint64_t pages_1g, pages_2m, pages_4k; /* result (predicted in a dry run) */
    uint64_t xen_2m, xen_4k;   /* what Xen's 2025 rule gets on this stream */
    uint64_t pod_entries;      /* PoD leaves restored */
    uint64_t pod_target;       /* PoD target restored (0: none) */
    uint64_t nr_hvm_params;
    bool have_checksum;        /* an HV_CHECKSUM record was there */
    bool checksum_verified;    /* ... and matched the stream (verify_checksum) */
    bool have_tsc;
    struct stream_x86_tsc_info tsc;
    enum restore_vcpu_state vcpu;
    uint8_t *context;          /* hugevm HVM_CONTEXT TLV area (malloc'd) */
    size_t context_len;
    /* With restore_opts.track_data: bit g set when pfn g (< data_bits_nr)
     * was written from a data page.  A RAM pfn without its bit reads as
     * zero (it was filled by XALLOC in a scrubbed frame).  malloc'd. */
    uint64_t *data_bits;
    gfn_t data_bits_nr;
    /* With restore_opts.digest: the memory digest of the pfns filled at
     * END (stream.h: the sum of their terms) and their count.  Equals
     * migrate_digest of the restored domain when restore is right. */
    uint64_t digest, digest_pages;
    double seconds;
    void *state;               /* restore_opts.keep_state: restore_state_free */
    char note[256];            /* e.g. why the vCPU state is not usable */
    char err[STREAM_ERR_LEN];
};

/*
 * Restore a domain from io onto machine m.  On success res->d is the new
 * domain (the caller destroys it).  On error nothing stays allocated and
 * res->err names the record and offset.  Errors: -ENODATA (truncated),
 * -EBADMSG (malformed), -EPROTONOSUPPORT (version), -EMSGSIZE (length over
 * the limit), -ERANGE (pfn beyond the domain), -EEXIST (conflicting
 * duplicate), -ENOMEM / -EDQUOT (allocation), -ENOTSUP (record not valid
 * for an x86 HVM stream), the source's -errno.
 */
int stream_restore(struct machine *m, struct stream_io *io, const struct restore_opts *o,
                   struct restore_result *res) HV_MUST_CHECK;
/* Free res->context and res->state (not the domain). */
void restore_result_free(struct restore_result *res);
/* Free res->state only (restore_opts.keep_state). */
void restore_state_free(struct restore_result *res);

/* ---- live migration: the stream around caller-written PAGE_DATA ------------- */

/*
 * (Added for migrate.c.)  A live migration writes the same stream as
 * stream_save, but its PAGE_DATA records come in rounds while the guest
 * runs, so the static part and the tail are written separately:
 *  - stream_save_head: image and domain headers; unless `no_optional`,
 *    HV_CONFIG and HV_LAYOUT (the extents as they are now); STATIC_DATA_END.
 *    res (may be NULL) gets max_gfn, the extents and pod_entries.
 *  - stream_save_tail: X86_TSC_INFO, HVM_PARAMS, HVM_CONTEXT (the domain
 *    configuration plus `extra_tlvs`, as save_opts), END; then flushes.
 * d must not change during either call (hold d->lock while vCPUs run).
 * 0, -ENOMEM, -EINVAL or the sink's -errno; err gets a message.
 */
int stream_save_head(struct domain *d, struct stream_writer *w, bool no_optional,
                     struct save_result *res, char *err, size_t errlen) HV_MUST_CHECK;
int stream_save_tail(struct domain *d, struct stream_writer *w, const void *extra_tlvs,
                     size_t extra_tlvs_len, char *err, size_t errlen) HV_MUST_CHECK;

#endif

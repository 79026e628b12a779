/*
 * p2m.h - a domain's guest-physical to machine table.
 *
 * A 4-level radix table of 512-entry tables with EPT-style 64-bit entries
 * (the Xen layout): bits 0-2 r/w/x, 3-5 memory type, 7 superpage (levels 2
 * and 3 only), 8 accessed, 9 dirty, 12-51 mfn (or, for a non-leaf entry, the
 * host frame of the next table), 52-57 p2m type.  Levels are numbered 1 (4K
 * leaves) .. 4 (root); a leaf at level 2 maps 2M, at level 3 maps 1G.
 *
 * Entry states:
 *  - 0: empty (type p2m_invalid);
 *  - leaf: level 1, or SP bit set; type != p2m_invalid; rwx derived from the
 *    type (ram_rw rwx, ram_ro/ram_logdirty r-x, mmio rw-, pod ---);
 *    a pod leaf has no mfn (field 0);
 *  - table: levels 2-4, SP clear, type p2m_invalid, rwx = 7, points to the
 *    next-level table.
 *
 * Splitting: changing part of a superpage splits it one level at a time
 * along the touched path only: a 4K change inside a 1G leaf creates one 2M
 * table (511 2M leaves + one entry pointing to) one 4K table.  A split copies
 * type, A and D bits to the children; the data never moves.
 *
 * Coalescing: a table whose 512 entries are leaves of one type mapping one
 * contiguous machine run aligned to the parent order (or, for pod/invalid,
 * just 512 entries of that type) is replaced by one leaf (A/D OR-ed) and
 * freed; this happens automatically after every change and on demand with
 * p2m_coalesce().  A table whose entries are all empty is freed.
 *
 * Tables come from a bounded per-p2m pool (max_tables); every operation
 * first reserves the tables it may need, so on -ENOMEM the p2m is exactly as
 * before.
 */
#ifndef HUGEVM_P2M_H
#define HUGEVM_P2M_H

#include "common.h"

struct frames;

enum p2m_type {
    p2m_invalid = 0,
    p2m_ram_rw = 1,
    p2m_ram_ro = 2,
    p2m_ram_logdirty = 3,
    p2m_pod = 4,
    p2m_mmio = 5,
    P2M_NR_TYPES
};
const char *p2m_type_name(enum p2m_type t);
/* RAM types: the leaf maps frames owned by the domain. */
static inline bool p2m_is_ram(enum p2m_type t)
{
    return t == p2m_ram_rw || t == p2m_ram_ro || t == p2m_ram_logdirty;
}
/* Types whose leaves carry an mfn. */
static inline bool p2m_has_mfn(enum p2m_type t)
{
    return p2m_is_ram(t) || t == p2m_mmio;
}

typedef uint64_t ept_entry_t;
#define EPT_R (1ULL << 0)
#define EPT_W (1ULL << 1)
#define EPT_X (1ULL << 2)
#define EPT_RWX (EPT_R | EPT_W | EPT_X)
#define EPT_MT_SHIFT 3
#define EPT_MT_WB (6ULL << EPT_MT_SHIFT)
#define EPT_SP (1ULL << 7)
#define EPT_A (1ULL << 8)
#define EPT_D (1ULL << 9)
#define EPT_MFN_SHIFT 12
#define EPT_MFN_MASK (((1ULL << 40) - 1) << EPT_MFN_SHIFT)
#define EPT_TYPE_SHIFT 52
#define EPT_TYPE_MASK (0x3fULL << EPT_TYPE_SHIFT)
#define P2M_ENTRIES 512u
#define P2M_LEVELS 4u
/* Largest gfn + 1 a 4-level table can map (2^36 frames = 256 TiB). */
#define P2M_GFN_LIMIT (1ULL << 36)

static inline enum p2m_type ept_type(ept_entry_t e)
{
    return (enum p2m_type)((e & EPT_TYPE_MASK) >> EPT_TYPE_SHIFT);
}
static inline mfn_t ept_mfn(ept_entry_t e)
{
    return (e & EPT_MFN_MASK) >> EPT_MFN_SHIFT;
}

struct p2m;

/* A p2m for domain `owner`.  `frames` (may be NULL) is used only by the audit
 * to check that every RAM frame mapped belongs to `owner`.  max_tables bounds
 * the table pool, root included (0 = unlimited).  -ENOMEM. */
int p2m_create(struct p2m **out, domid_t owner, const struct frames *frames,
               uint64_t max_tables) HV_MUST_CHECK;
/* Frees every table (not the frames: the domain owns those). */
void p2m_destroy(struct p2m *p);

/*
 * Map [gfn, gfn + 2^order) with one leaf of `type` (order 0, 9 or 18).
 * For types with an mfn, mfn must be aligned to order; otherwise mfn is
 * ignored.  type p2m_invalid removes the mapping.  A and D start clear.
 * Returns 0, -EINVAL (bad order, misalignment, gfn beyond P2M_GFN_LIMIT,
 * mfn out of range) or -ENOMEM (table pool exhausted; nothing changed).
 */
int p2m_set_entry(struct p2m *p, gfn_t gfn, mfn_t mfn, unsigned order,
                  enum p2m_type type) HV_MUST_CHECK;

/*
 * Map [gfn, gfn + nr) to [mfn, mfn + nr) (mfn ignored for types without
 * one), cut into the largest pieces whose gfn (and mfn) are aligned.  All or
 * nothing: on -ENOMEM the p2m is exactly as before.
 */
int p2m_set_range(struct p2m *p, gfn_t gfn, mfn_t mfn, uint64_t nr,
                  enum p2m_type type) HV_MUST_CHECK;

/*
 * Declare [gfn, gfn + nr) 4K-only (user-given ranges that must stay 4K,
 * seed 004): no leaf larger than 4K is ever created over it; set_entry of a
 * larger order overlapping it returns -EINVAL, set_range cuts 4K pieces
 * there, and coalescing skips it.  At most P2M_MAX_4K_RANGES; -ENOSPC beyond.
 */
#define P2M_MAX_4K_RANGES 16
int p2m_add_4k_range(struct p2m *p, gfn_t gfn, uint64_t nr) HV_MUST_CHECK;
/* True when [gfn, gfn + 2^order) overlaps a 4K-only range. */
bool p2m_range_is_4k_only(const struct p2m *p, gfn_t gfn, unsigned order);

/* Automatic coalescing after each change is on by default; log-dirty turns
 * it off while it tracks 4K writes (and merges explicitly afterwards).
 * Turning it back on merges everything mergeable (p2m_coalesce over the
 * whole gfn space), so that "on" always means "maximally merged". */
void p2m_set_auto_coalesce(struct p2m *p, bool on);

/* Free the tables cached on the p2m's free list for reuse (tables in use are
 * untouched).  Lets tests make every table of the next operation a real
 * allocation. */
void p2m_trim(struct p2m *p);

/* Translate gfn: returns the mfn (INVALID_MFN when the type has none),
 * *type and *order of the leaf that maps it (p2m_invalid with the order of
 * the empty region's level when unmapped, capped at MAX_ORDER; order 0
 * beyond P2M_GFN_LIMIT).  Either out-pointer may be NULL. */
mfn_t p2m_get_entry(const struct p2m *p, gfn_t gfn, enum p2m_type *type,
                    unsigned *order);

/* Raw access for the vCPU walker: pointer to the leaf entry mapping gfn and
 * its level (1..3), or NULL if the walk ends in an empty entry. The pointer
 * is valid until the next change of the p2m. *refs (may be NULL) receives
 * the number of table entries read. */
ept_entry_t *p2m_lookup_leaf(struct p2m *p, gfn_t gfn, unsigned *level,
                             unsigned *refs);

/* Change the type of every leaf in [gfn, gfn + nr) to `type` (both RAM
 * types, or pod<->invalid for no-mfn types), splitting only where the range
 * boundary cuts a superpage.  All or nothing. */
int p2m_change_type(struct p2m *p, gfn_t gfn, uint64_t nr,
                    enum p2m_type from, enum p2m_type to) HV_MUST_CHECK;

/* Split the leaf that maps gfn one level down (no-op at level 1 or when no
 * superpage maps gfn).  Returns the new order of the leaf mapping gfn (0
 * when gfn is unmapped), -EINVAL (gfn beyond P2M_GFN_LIMIT) or -ENOMEM.
 * Automatic coalescing leaves the new table alone until a later change
 * inside it (or p2m_coalesce) touches it.  Used by log-dirty and PoD. */
int p2m_split(struct p2m *p, gfn_t gfn) HV_MUST_CHECK;

/* Try to merge every table inside [gfn, gfn + nr) bottom-up (tables that
 * only overlap the range are tried too); returns the number of merges into
 * a leaf done (>= 0; freeing an all-empty table is not counted). */
long p2m_coalesce(struct p2m *p, gfn_t gfn, uint64_t nr);

/* Visit leaves overlapping [gfn, gfn + nr) in gfn order.  The callback gets
 * the leaf's first gfn (aligned to its order, possibly below `gfn`), its
 * mfn (INVALID_MFN if none), order and type; a non-zero return stops the
 * walk and is returned.  The p2m must not change during the walk. */
typedef int (*p2m_leaf_fn)(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                           enum p2m_type type, ept_entry_t *entry);
int p2m_for_each_leaf(struct p2m *p, gfn_t gfn, uint64_t nr, p2m_leaf_fn fn,
                      void *ctx);

struct p2m_stats {
    /* leaves[level][type]: leaves at order 0/9/18 of each type */
    uint64_t leaves[3][P2M_NR_TYPES];
    uint64_t splits[3];     /* superpage leaves split, by the leaf's level (1 = 2M, 2 = 1G) */
    uint64_t merges[3];     /* tables merged into a leaf of order 9 (1) / 18 (2) */
    uint64_t tables;        /* tables in use, root included */
    uint64_t tables_peak;
    uint64_t max_tables;
    uint64_t table_alloc_failures;
};
void p2m_get_stats(const struct p2m *p, struct p2m_stats *st);
/* KVM's names: present (RAM + mmio) leaves at each order. */
uint64_t p2m_pages_at(const struct p2m *p, unsigned order);
/* Bytes of table memory in use. */
uint64_t p2m_table_bytes(const struct p2m *p);

/* Structure, alignment, entry encoding, per-order/type counts, table count,
 * 4K-only ranges respected, that no table could have been merged while
 * automatic coalescing is on, and that every RAM frame belongs to the owner.
 * 0 or -EUCLEAN. */
int p2m_audit(const struct p2m *p) HV_MUST_CHECK;

#endif

/*
 * p2m.c - the guest-physical to machine radix table (see p2m.h).
 *
 * Representation.  Tables are 4 KiB-aligned arrays of 512 ept_entry_t.  A
 * table entry holds the next table's host address in bits 12-51 (user
 * pointers are 4K-aligned and below 2^47) | rwx, so a walk is pure pointer
 * chasing, as in hardware.  The root (level 4) lives as long as the p2m.
 * An entry is empty (0), a leaf (type != p2m_invalid) or a table (non-zero,
 * type p2m_invalid).  Bit 11 (ignored by hardware in EPT paging-structure
 * entries) marks a table created by p2m_split() that automatic coalescing
 * must leave alone until a change inside it touches it again ("pinned").
 *
 * Atomicity.  Every mutating operation is one ordered range walk run twice:
 * first in "plan" mode over the real tables plus virtual ones (a table that
 * would be created by splitting a leaf or filling an empty entry is
 * represented by its parent entry), counting exactly the tables the change
 * will create; then p2m_reserve() moves that many tables into the per-p2m
 * free list (or fails with -ENOMEM before anything changed: pool bound
 * max_tables, or a failed allocation / FAULT_SITE_TABLE); then the same walk
 * in "do" mode makes the change, taking tables only from the reservation.
 * Both passes take identical decisions entry by entry (a merge only rewrites
 * an entry the walk has already left), so the reservation is consumed
 * exactly (asserted).
 *
 * Splitting happens one level at a time along the touched path only;
 * children inherit type, A and D, and mfn advances by the child size.
 * Coalescing (automatic after each change when enabled, or p2m_coalesce)
 * checks each changed table bottom-up: 512 leaves of one type mapping one
 * contiguous run whose first mfn is aligned to the parent order (no mfn for
 * pod), not overlapping a 4K-only range, become one leaf (A/D OR-ed); 512
 * empty entries free the table.  Entries 0 and 511 are compared first so
 * that sequential population does not rescan 512 entries per change.
 *
 * Invariants (checked by p2m_audit):
 *  - encoding: leaves only at levels 1-3, SP exactly at levels 2-3, rwx and
 *    memory type derived from the type, pod mfn 0, mfn aligned to the leaf
 *    order, no reserved bits; tables: rwx only (+ pin bit);
 *  - stats.leaves[][] equals the leaves present; stats.tables equals the
 *    tables reachable from the root (root included) and <= max_tables;
 *  - no leaf of order > 0 overlaps a 4K-only range;
 *  - with automatic coalescing on, no unpinned table is mergeable or empty;
 *  - with a frame allocator, every RAM leaf maps frames owned by `owner`.
 */
#include "p2m.h"
#include "frames.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define P2M_PIN (1ULL << 11)
#define P2M_MFN_LIMIT (1ULL << 40)
/* Tables kept cached on the free list beyond a reservation. */
#define P2M_FREE_CACHE 64u
/* Bits a leaf / a table entry may use. */
#define EPT_MT_MASK (7ULL << EPT_MT_SHIFT)
#define LEAF_BITS (EPT_RWX | EPT_MT_MASK | EPT_SP | EPT_A | EPT_D | \
                   EPT_MFN_MASK | EPT_TYPE_MASK)
#define TABLE_BITS (EPT_RWX | EPT_MFN_MASK | P2M_PIN)

struct range4k {
    gfn_t gfn;
    uint64_t nr;
};

struct p2m {
    ept_entry_t *root;
    domid_t owner;
    bool auto_coalesce;
    /* [stale_lo, stale_hi): gfns changed while automatic coalescing was
     * off; turning it back on coalesces just this range (empty: lo >= hi). */
    gfn_t stale_lo, stale_hi;
    const struct frames *frames;
    uint64_t max_tables;
    uint64_t tables;
    uint64_t tables_peak;
    uint64_t table_alloc_failures;
    void *free_list; /* singly linked through word 0 of each free table */
    uint64_t nr_free;
    uint64_t resv; /* tables reserved for the operation in progress */
    uint64_t leaves[3][P2M_NR_TYPES];
    uint64_t splits[3];
    uint64_t merges[3];
    unsigned nr_4k;
    struct range4k r4k[P2M_MAX_4K_RANGES];
};

/* ---- entries --------------------------------------------------------- */

static inline bool is_leaf(ept_entry_t e) { return (e & EPT_TYPE_MASK) != 0; }
static inline bool is_table(ept_entry_t e) { return e != 0 && !is_leaf(e); }
static inline ept_entry_t *tbl_of(ept_entry_t e)
{
    return (ept_entry_t *)(uintptr_t)(e & EPT_MFN_MASK);
}
static inline ept_entry_t table_entry(ept_entry_t *t)
{
    assert(((uintptr_t)t & ~EPT_MFN_MASK) == 0);
    return (ept_entry_t)(uintptr_t)t | EPT_RWX;
}
/* Order of the region one entry at `level` maps (level 4 -> 27). */
static inline unsigned level_order(unsigned level) { return 9u * (level - 1u); }

static ept_entry_t type_attr(enum p2m_type t)
{
    switch (t) {
    case p2m_ram_rw: return EPT_RWX | EPT_MT_WB;
    case p2m_ram_ro:
    case p2m_ram_logdirty: return EPT_R | EPT_X | EPT_MT_WB;
    case p2m_mmio: return EPT_R | EPT_W; /* memory type UC (0) */
    default: return 0;
    }
}

static ept_entry_t make_leaf(enum p2m_type t, mfn_t mfn, unsigned level)
{
    assert(t != p2m_invalid && t < P2M_NR_TYPES && level >= 1 && level <= 3);
    ept_entry_t e = type_attr(t) | ((ept_entry_t)t << EPT_TYPE_SHIFT);
    if (level > 1)
        e |= EPT_SP;
    if (p2m_has_mfn(t)) {
        assert(mfn < P2M_MFN_LIMIT && is_aligned_order(mfn, level_order(level)));
        e |= mfn << EPT_MFN_SHIFT;
    }
    return e;
}

/* Entry i of the table that splitting `e` (an entry at plevel) creates. */
static ept_entry_t child_entry(ept_entry_t e, unsigned plevel, unsigned i)
{
    if (e == 0)
        return 0;
    assert(is_leaf(e) && plevel >= 2);
    enum p2m_type t = ept_type(e);
    mfn_t m = p2m_has_mfn(t) ? ept_mfn(e) + ((mfn_t)i << level_order(plevel - 1)) : 0;
    return make_leaf(t, m, plevel - 1) | (e & (EPT_A | EPT_D));
}

const char *p2m_type_name(enum p2m_type t)
{
    static const char *const names[P2M_NR_TYPES] = {
        "invalid", "ram_rw", "ram_ro", "ram_logdirty", "pod", "mmio",
    };
    return (unsigned)t < P2M_NR_TYPES ? names[t] : "?";
}

/* ---- table pool ------------------------------------------------------ */

static void account(struct p2m *p, ept_entry_t e, unsigned level, int64_t delta)
{
    if (is_leaf(e)) {
        assert(level >= 1 && level <= 3);
        p->leaves[level - 1][ept_type(e)] += (uint64_t)delta;
    }
}

/* Make sure n tables can be taken without failure.  -ENOMEM: nothing
 * changed (tables allocated so far stay cached on the free list). */
static int p2m_reserve(struct p2m *p, uint64_t n)
{
    assert(p->resv == 0);
    if (n == 0)
        return 0;
    if (p->max_tables && p->tables + n > p->max_tables) {
        p->table_alloc_failures++;
        return -ENOMEM;
    }
    while (p->nr_free < n) {
        void *t = NULL;
        if (fault_should_fail(FAULT_SITE_TABLE) ||
            posix_memalign(&t, PAGE_SIZE, PAGE_SIZE) != 0) {
            p->table_alloc_failures++;
            return -ENOMEM;
        }
        *(void **)t = p->free_list;
        p->free_list = t;
        p->nr_free++;
    }
    p->resv = n;
    return 0;
}

static ept_entry_t *take_table(struct p2m *p)
{
    assert(p->resv > 0 && p->nr_free > 0 && p->free_list);
    void *t = p->free_list;
    p->free_list = *(void **)t;
    p->nr_free--;
    p->resv--;
    p->tables++;
    if (p->tables > p->tables_peak)
        p->tables_peak = p->tables;
    return t;
}

static void release_table(struct p2m *p, ept_entry_t *t)
{
    assert(p->tables > 1);
    p->tables--;
    if (p->nr_free >= p->resv + P2M_FREE_CACHE) {
        free(t);
        return;
    }
    *(void **)t = p->free_list;
    p->free_list = t;
    p->nr_free++;
}

/* Free the table t at `level` (holding entries of that level) and all its
 * descendants, removing their leaves from the counts. */
static void free_subtree(struct p2m *p, ept_entry_t *t, unsigned level)
{
    for (unsigned i = 0; i < P2M_ENTRIES; i++) {
        ept_entry_t e = t[i];
        if (is_table(e))
            free_subtree(p, tbl_of(e), level - 1);
        else
            account(p, e, level, -1);
    }
    release_table(p, t);
}

/* Replace the entry at *slot (level `level`) with nv (a leaf or 0). */
static void put_entry(struct p2m *p, ept_entry_t *slot, unsigned level, ept_entry_t nv)
{
    ept_entry_t old = *slot;
    if (is_table(old))
        free_subtree(p, tbl_of(old), level - 1);
    else
        account(p, old, level, -1);
    account(p, nv, level, +1);
    *slot = nv;
}

/* New table (from the reservation) holding the split of e (a leaf at
 * `level` >= 2, or 0 for an empty table). */
static ept_entry_t *materialize(struct p2m *p, ept_entry_t e, unsigned level)
{
    ept_entry_t *t = take_table(p);
    if (e == 0) {
        memset(t, 0, PAGE_SIZE);
        return t;
    }
    /* Only 2M and 1G leaves split (guards the counter arrays, too). */
    if (level < 2 || level > 3) {
        assert(!"split of a leaf that is not 2M or 1G");
        return t;
    }
    for (unsigned i = 0; i < P2M_ENTRIES; i++)
        t[i] = child_entry(e, level, i);
    account(p, e, level, -1);
    p->leaves[level - 2][ept_type(e)] += P2M_ENTRIES;
    p->splits[level - 1]++;
    return t;
}

/* ---- 4K-only ranges -------------------------------------------------- */

static bool overlaps_4k(const struct p2m *p, gfn_t gfn, uint64_t nr)
{
    for (unsigned i = 0; i < p->nr_4k; i++)
        if (gfn < p->r4k[i].gfn + p->r4k[i].nr && p->r4k[i].gfn < gfn + nr)
            return true;
    return false;
}

bool p2m_range_is_4k_only(const struct p2m *p, gfn_t gfn, unsigned order)
{
    return overlaps_4k(p, gfn, order_pages(order));
}

/* ---- merging --------------------------------------------------------- */

enum merge_kind { MERGE_NONE, MERGE_EMPTY, MERGE_LEAF };

/* Can the table t (entries at level-1) referenced from an entry at `level`
 * mapping gfn `eg` be replaced?  MERGE_LEAF sets *leaf. */
static enum merge_kind merge_check(const struct p2m *p, const ept_entry_t *t,
                                   unsigned level, gfn_t eg, ept_entry_t *leaf)
{
    ept_entry_t c0 = t[0], cl = t[P2M_ENTRIES - 1];
    if (c0 == 0) {
        if (cl != 0)
            return MERGE_NONE;
        for (unsigned i = 1; i < P2M_ENTRIES - 1; i++)
            if (t[i] != 0)
                return MERGE_NONE;
        return MERGE_EMPTY;
    }
    if (level > 3 || !is_leaf(c0) || !is_leaf(cl))
        return MERGE_NONE;
    enum p2m_type type = ept_type(c0);
    if (ept_type(cl) != type)
        return MERGE_NONE;
    bool has_mfn = p2m_has_mfn(type);
    unsigned corder = level_order(level - 1);
    mfn_t m0 = ept_mfn(c0);
    if (has_mfn && (!is_aligned_order(m0, level_order(level)) ||
                    ept_mfn(cl) != m0 + ((mfn_t)(P2M_ENTRIES - 1) << corder)))
        return MERGE_NONE;
    if (p2m_range_is_4k_only(p, eg, level_order(level)))
        return MERGE_NONE;
    ept_entry_t ad = 0;
    for (unsigned i = 0; i < P2M_ENTRIES; i++) {
        ept_entry_t c = t[i];
        if (!is_leaf(c) || ept_type(c) != type ||
            (has_mfn && ept_mfn(c) != m0 + ((mfn_t)i << corder)))
            return MERGE_NONE;
        ad |= c & (EPT_A | EPT_D);
    }
    *leaf = make_leaf(type, has_mfn ? m0 : 0, level) | ad;
    return MERGE_LEAF;
}

/* Try to replace the table *slot points to; returns 1 on a leaf merge. */
static int try_merge(struct p2m *p, ept_entry_t *slot, unsigned level, gfn_t eg)
{
    ept_entry_t *t = tbl_of(*slot);
    ept_entry_t leaf = 0;
    switch (merge_check(p, t, level, eg, &leaf)) {
    case MERGE_NONE:
        return 0;
    case MERGE_EMPTY:
        *slot = 0;
        release_table(p, t);
        return 0;
    case MERGE_LEAF:
        p->leaves[level - 2][ept_type(leaf)] -= P2M_ENTRIES;
        p->leaves[level - 1][ept_type(leaf)]++;
        p->merges[level - 1]++;
        *slot = leaf;
        release_table(p, t);
        return 1;
    }
    return 0;
}

/* ---- the range walk -------------------------------------------------- */

enum walk_kind { WALK_SET, WALK_CHTYPE, WALK_FORCE4K };
enum walk_act { ACT_SKIP, ACT_APPLY, ACT_DESCEND };

struct walk_op {
    enum walk_kind kind;
    bool plan;
    gfn_t start, end;
    mfn_t mfn0;            /* WALK_SET: mfn of start */
    enum p2m_type type;    /* WALK_SET: type; WALK_CHTYPE: to */
    enum p2m_type from;    /* WALK_CHTYPE */
    uint64_t need;         /* plan: tables to create */
};

static enum walk_act decide(const struct p2m *p, const struct walk_op *op,
                            unsigned level, gfn_t eg, bool full, ept_entry_t e)
{
    unsigned ord = level_order(level);
    switch (op->kind) {
    case WALK_SET:
        if (full) {
            if (op->type == p2m_invalid)
                return ACT_APPLY;
            if (level <= 3 && (level == 1 || !p2m_range_is_4k_only(p, eg, ord)) &&
                (!p2m_has_mfn(op->type) ||
                 is_aligned_order(op->mfn0 + (eg - op->start), ord)))
                return ACT_APPLY;
        }
        assert(level > 1);
        if (e == 0 && op->type == p2m_invalid)
            return ACT_SKIP;
        return ACT_DESCEND;
    case WALK_CHTYPE: {
        if (is_table(e))
            return ACT_DESCEND;
        bool match = op->from == p2m_invalid ? e == 0
                                             : is_leaf(e) && ept_type(e) == op->from;
        if (!match)
            return ACT_SKIP;
        if (full && (op->type == p2m_invalid || level == 1 ||
                     (level <= 3 && (e != 0 || !p2m_range_is_4k_only(p, eg, ord)))))
            return ACT_APPLY;
        assert(level > 1);
        return ACT_DESCEND;
    }
    case WALK_FORCE4K:
        if (is_table(e) || (is_leaf(e) && level > 1))
            return ACT_DESCEND;
        return ACT_SKIP;
    }
    return ACT_SKIP;
}

static ept_entry_t target(const struct walk_op *op, unsigned level, gfn_t eg, ept_entry_t e)
{
    if (op->type == p2m_invalid)
        return 0;
    if (op->kind == WALK_SET)
        return make_leaf(op->type, p2m_has_mfn(op->type) ? op->mfn0 + (eg - op->start) : 0,
                         level);
    assert(op->kind == WALK_CHTYPE);
    if (op->from == p2m_invalid)
        return make_leaf(op->type, 0, level);
    return make_leaf(op->type, ept_mfn(e), level) | (e & (EPT_A | EPT_D));
}

/*
 * Apply op to the entries of tbl (entries at `level`, first gfn `base`)
 * that overlap [op->start, op->end).  tbl NULL (plan mode only) stands for
 * the table that splitting vparent (an entry at level + 1) would create.
 * Returns true when tbl changed (do mode).
 */
static bool walk(struct p2m *p, struct walk_op *op, ept_entry_t *tbl,
                 ept_entry_t vparent, unsigned level, gfn_t base)
{
    unsigned ord = level_order(level);
    uint64_t size = order_pages(ord);
    gfn_t lo = op->start > base ? op->start : base;
    gfn_t tend = base + (size << 9);
    gfn_t hi = op->end < tend ? op->end : tend;
    assert(lo < hi);
    unsigned first = (unsigned)((lo - base) >> ord), last = (unsigned)((hi - 1 - base) >> ord);
    bool changed = false;

    for (unsigned i = first; i <= last; i++) {
        gfn_t eg = base + ((uint64_t)i << ord);
        ept_entry_t e = tbl ? tbl[i] : child_entry(vparent, level + 1, i);
        bool full = eg >= op->start && eg + size <= op->end;
        switch (decide(p, op, level, eg, full, e)) {
        case ACT_SKIP:
            break;
        case ACT_APPLY:
            if (!op->plan) {
                ept_entry_t nv = target(op, level, eg, e);
                if (nv != e) {
                    put_entry(p, &tbl[i], level, nv);
                    changed = true;
                }
            }
            break;
        case ACT_DESCEND:
            if (is_table(e)) {
                assert(tbl);
                if (walk(p, op, tbl_of(e), 0, level - 1, eg) && !op->plan) {
                    tbl[i] &= ~P2M_PIN;
                    changed = true;
                    if (p->auto_coalesce)
                        try_merge(p, &tbl[i], level, eg);
                }
            } else if (op->plan) {
                op->need++;
                walk(p, op, NULL, e, level - 1, eg);
            } else {
                ept_entry_t *child = materialize(p, e, level);
                tbl[i] = table_entry(child);
                walk(p, op, child, 0, level - 1, eg);
                changed = true;
                if (p->auto_coalesce)
                    try_merge(p, &tbl[i], level, eg);
            }
            break;
        }
    }
    return changed;
}

/* Plan, reserve, do.  0 or -ENOMEM (nothing changed). */
/* Remember a range changed while automatic coalescing is off. */
static void note_stale(struct p2m *p, gfn_t lo, gfn_t hi)
{
    if (p->auto_coalesce)
        return;
    if (p->stale_lo >= p->stale_hi) {
        p->stale_lo = lo;
        p->stale_hi = hi;
        return;
    }
    if (lo < p->stale_lo)
        p->stale_lo = lo;
    if (hi > p->stale_hi)
        p->stale_hi = hi;
}

static int run_walk(struct p2m *p, struct walk_op *op)
{
    note_stale(p, op->start, op->end);
    op->plan = true;
    op->need = 0;
    walk(p, op, p->root, 0, P2M_LEVELS, 0);
    int rc = p2m_reserve(p, op->need);
    if (rc)
        return rc;
    op->plan = false;
    walk(p, op, p->root, 0, P2M_LEVELS, 0);
    assert(p->resv == 0);
    return 0;
}

/* ---- public API ------------------------------------------------------ */

int p2m_create(struct p2m **out, domid_t owner, const struct frames *frames,
               uint64_t max_tables)
{
    struct p2m *p = hv_calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->owner = owner;
    p->frames = frames;
    p->max_tables = max_tables;
    p->auto_coalesce = true;
    int rc = p2m_reserve(p, 1); /* the root */
    if (rc) {
        free(p);
        return rc;
    }
    p->root = take_table(p);
    memset(p->root, 0, PAGE_SIZE);
    *out = p;
    return 0;
}

void p2m_destroy(struct p2m *p)
{
    if (!p)
        return;
    for (unsigned i = 0; i < P2M_ENTRIES; i++)
        if (is_table(p->root[i]))
            free_subtree(p, tbl_of(p->root[i]), P2M_LEVELS - 1);
    free(p->root);
    p2m_trim(p);
    free(p);
}

void p2m_trim(struct p2m *p)
{
    assert(p->resv == 0);
    while (p->free_list) {
        void *t = p->free_list;
        p->free_list = *(void **)t;
        free(t);
    }
    p->nr_free = 0;
}

static int check_range(gfn_t gfn, uint64_t nr)
{
    if (nr > P2M_GFN_LIMIT || gfn > P2M_GFN_LIMIT - nr)
        return -EINVAL;
    return 0;
}

int p2m_set_entry(struct p2m *p, gfn_t gfn, mfn_t mfn, unsigned order,
                  enum p2m_type type)
{
    if (order != PAGE_ORDER_4K && order != PAGE_ORDER_2M && order != PAGE_ORDER_1G)
        return -EINVAL;
    if ((unsigned)type >= P2M_NR_TYPES || !is_aligned_order(gfn, order) ||
        check_range(gfn, order_pages(order)))
        return -EINVAL;
    if (p2m_has_mfn(type) && (!is_aligned_order(mfn, order) || mfn >= P2M_MFN_LIMIT))
        return -EINVAL;
    if (order > 0 && p2m_range_is_4k_only(p, gfn, order))
        return -EINVAL;
    struct walk_op op = {
        .kind = WALK_SET, .start = gfn, .end = gfn + order_pages(order),
        .mfn0 = p2m_has_mfn(type) ? mfn : 0, .type = type,
    };
    return run_walk(p, &op);
}

int p2m_set_range(struct p2m *p, gfn_t gfn, mfn_t mfn, uint64_t nr,
                  enum p2m_type type)
{
    if ((unsigned)type >= P2M_NR_TYPES || check_range(gfn, nr))
        return -EINVAL;
    if (p2m_has_mfn(type) && (mfn >= P2M_MFN_LIMIT || nr > P2M_MFN_LIMIT - mfn))
        return -EINVAL;
    if (nr == 0)
        return 0;
    struct walk_op op = {
        .kind = WALK_SET, .start = gfn, .end = gfn + nr,
        .mfn0 = p2m_has_mfn(type) ? mfn : 0, .type = type,
    };
    return run_walk(p, &op);
}

/* Existing superpages over the new range are split (all or nothing). */
int p2m_add_4k_range(struct p2m *p, gfn_t gfn, uint64_t nr)
{
    if (nr == 0 || check_range(gfn, nr))
        return -EINVAL;
    if (p->nr_4k >= P2M_MAX_4K_RANGES)
        return -ENOSPC;
    struct walk_op op = { .kind = WALK_FORCE4K, .plan = true, .start = gfn, .end = gfn + nr };
    walk(p, &op, p->root, 0, P2M_LEVELS, 0);
    int rc = p2m_reserve(p, op.need);
    if (rc)
        return rc;
    /* Registered before the change so that no merge recreates a superpage. */
    p->r4k[p->nr_4k++] = (struct range4k){ gfn, nr };
    op.plan = false;
    walk(p, &op, p->root, 0, P2M_LEVELS, 0);
    assert(p->resv == 0);
    return 0;
}

void p2m_set_auto_coalesce(struct p2m *p, bool on)
{
    bool was = p->auto_coalesce;
    p->auto_coalesce = on;
    /* "On" means fully merged: merge what changed while it was off (only
     * that range, so toggling around each populate stays cheap). */
    if (on && !was && p->stale_lo < p->stale_hi)
        (void)p2m_coalesce(p, p->stale_lo, p->stale_hi - p->stale_lo);
    if (on)
        p->stale_lo = p->stale_hi = 0;
}

mfn_t p2m_get_entry(const struct p2m *p, gfn_t gfn, enum p2m_type *type,
                    unsigned *order)
{
    if (HV_UNLIKELY(gfn >= P2M_GFN_LIMIT)) {
        if (type)
            *type = p2m_invalid;
        if (order)
            *order = 0;
        return INVALID_MFN;
    }
    const ept_entry_t *t = p->root;
    unsigned shift = 27;
    ept_entry_t e;
    for (;;) {
        e = t[(gfn >> shift) & (P2M_ENTRIES - 1)];
        if (e & EPT_TYPE_MASK)
            break;
        if (e == 0 || shift == 0) {
            if (type)
                *type = p2m_invalid;
            if (order)
                *order = shift > MAX_ORDER ? MAX_ORDER : shift;
            return INVALID_MFN;
        }
        t = tbl_of(e);
        shift -= 9;
    }
    enum p2m_type ty = ept_type(e);
    if (type)
        *type = ty;
    if (order)
        *order = shift;
    if (!p2m_has_mfn(ty))
        return INVALID_MFN;
    return ept_mfn(e) + (gfn & ((1ULL << shift) - 1));
}

ept_entry_t *p2m_lookup_leaf(struct p2m *p, gfn_t gfn, unsigned *level,
                             unsigned *refs)
{
    unsigned n = 0;
    ept_entry_t *found = NULL;
    unsigned lv = P2M_LEVELS;
    if (gfn < P2M_GFN_LIMIT) {
        ept_entry_t *t = p->root;
        for (;; lv--) {
            ept_entry_t *slot = &t[(gfn >> level_order(lv)) & (P2M_ENTRIES - 1)];
            n++;
            if (is_leaf(*slot)) {
                found = slot;
                break;
            }
            if (*slot == 0 || lv == 1)
                break;
            t = tbl_of(*slot);
        }
    }
    if (level)
        *level = found ? lv : 0;
    if (refs)
        *refs = n;
    return found;
}

int p2m_change_type(struct p2m *p, gfn_t gfn, uint64_t nr,
                    enum p2m_type from, enum p2m_type to)
{
    if ((unsigned)from >= P2M_NR_TYPES || (unsigned)to >= P2M_NR_TYPES ||
        check_range(gfn, nr))
        return -EINVAL;
    bool ok = (p2m_is_ram(from) && p2m_is_ram(to)) ||
              (from == p2m_pod && to == p2m_invalid) ||
              (from == p2m_invalid && to == p2m_pod) || from == to;
    if (!ok)
        return -EINVAL;
    if (nr == 0 || from == to)
        return 0;
    struct walk_op op = {
        .kind = WALK_CHTYPE, .start = gfn, .end = gfn + nr, .type = to, .from = from,
    };
    return run_walk(p, &op);
}

int p2m_split(struct p2m *p, gfn_t gfn)
{
    if (gfn >= P2M_GFN_LIMIT)
        return -EINVAL;
    ept_entry_t *t = p->root;
    for (unsigned lv = P2M_LEVELS; lv >= 1; lv--) {
        ept_entry_t *slot = &t[(gfn >> level_order(lv)) & (P2M_ENTRIES - 1)];
        ept_entry_t e = *slot;
        if (e == 0)
            return 0;
        if (is_leaf(e)) {
            if (lv == 1)
                return 0;
            int rc = p2m_reserve(p, 1);
            if (rc)
                return rc;
            note_stale(p, gfn & ~(order_pages(level_order(lv)) - 1),
                       (gfn & ~(order_pages(level_order(lv)) - 1)) + order_pages(level_order(lv)));
            *slot = table_entry(materialize(p, e, lv)) | P2M_PIN;
            assert(p->resv == 0);
            return (int)level_order(lv - 1);
        }
        t = tbl_of(e);
    }
    return 0;
}

static long coalesce_walk(struct p2m *p, ept_entry_t *tbl, unsigned level, gfn_t base,
                          gfn_t start, gfn_t end)
{
    unsigned ord = level_order(level);
    gfn_t lo = start > base ? start : base;
    gfn_t tend = base + (order_pages(ord) << 9);
    gfn_t hi = end < tend ? end : tend;
    long n = 0;
    for (unsigned i = (unsigned)((lo - base) >> ord); i <= (unsigned)((hi - 1 - base) >> ord);
         i++) {
        if (!is_table(tbl[i]))
            continue;
        gfn_t eg = base + ((uint64_t)i << ord);
        n += coalesce_walk(p, tbl_of(tbl[i]), level - 1, eg, start, end);
        tbl[i] &= ~P2M_PIN;
        n += try_merge(p, &tbl[i], level, eg);
    }
    return n;
}

/* Tables overlapping the range (not only those inside it) are considered:
 * a merge never changes a translation. */
long p2m_coalesce(struct p2m *p, gfn_t gfn, uint64_t nr)
{
    if (nr == 0 || gfn >= P2M_GFN_LIMIT)
        return 0;
    if (nr > P2M_GFN_LIMIT - gfn)
        nr = P2M_GFN_LIMIT - gfn;
    return coalesce_walk(p, p->root, P2M_LEVELS, 0, gfn, gfn + nr);
}

static int leaf_walk(struct p2m *p, ept_entry_t *tbl, unsigned level, gfn_t base,
                     gfn_t start, gfn_t end, p2m_leaf_fn fn, void *ctx)
{
    unsigned ord = level_order(level);
    gfn_t lo = start > base ? start : base;
    gfn_t tend = base + (order_pages(ord) << 9);
    gfn_t hi = end < tend ? end : tend;
    for (unsigned i = (unsigned)((lo - base) >> ord); i <= (unsigned)((hi - 1 - base) >> ord);
         i++) {
        ept_entry_t e = tbl[i];
        gfn_t eg = base + ((uint64_t)i << ord);
        int rc = 0;
        if (is_leaf(e)) {
            enum p2m_type t = ept_type(e);
            rc = fn(ctx, eg, p2m_has_mfn(t) ? ept_mfn(e) : INVALID_MFN, ord, t, &tbl[i]);
        } else if (e != 0) {
            rc = leaf_walk(p, tbl_of(e), level - 1, eg, start, end, fn, ctx);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int p2m_for_each_leaf(struct p2m *p, gfn_t gfn, uint64_t nr, p2m_leaf_fn fn,
                      void *ctx)
{
    if (nr == 0 || gfn >= P2M_GFN_LIMIT)
        return 0;
    if (nr > P2M_GFN_LIMIT - gfn)
        nr = P2M_GFN_LIMIT - gfn;
    return leaf_walk(p, p->root, P2M_LEVELS, 0, gfn, gfn + nr, fn, ctx);
}

void p2m_get_stats(const struct p2m *p, struct p2m_stats *st)
{
    memset(st, 0, sizeof(*st));
    memcpy(st->leaves, p->leaves, sizeof(st->leaves));
    memcpy(st->splits, p->splits, sizeof(st->splits));
    memcpy(st->merges, p->merges, sizeof(st->merges));
    st->tables = p->tables;
    st->tables_peak = p->tables_peak;
    st->max_tables = p->max_tables;
    st->table_alloc_failures = p->table_alloc_failures;
}

uint64_t p2m_pages_at(const struct p2m *p, unsigned order)
{
    if (order != PAGE_ORDER_4K && order != PAGE_ORDER_2M && order != PAGE_ORDER_1G)
        return 0;
    const uint64_t *l = p->leaves[order_level(order)];
    return l[p2m_ram_rw] + l[p2m_ram_ro] + l[p2m_ram_logdirty] + l[p2m_mmio];
}

uint64_t p2m_table_bytes(const struct p2m *p) { return p->tables * PAGE_SIZE; }

/* ---- audit ----------------------------------------------------------- */

struct audit {
    uint64_t leaves[3][P2M_NR_TYPES];
    uint64_t tables;
};

static int audit_frames(const struct p2m *p, gfn_t gfn, mfn_t mfn, unsigned order)
{
    mfn_t end = mfn + order_pages(order);
    unsigned ho = 0;
    if (frame_owner(p->frames, end - 1, NULL) != p->owner)
        return hv_audit_fail("p2m: gfn %#llx: last mfn %#llx not owned by d%u",
                             (unsigned long long)gfn, (unsigned long long)(end - 1),
                             p->owner);
    for (mfn_t m = mfn; m < end;) {
        if (frame_owner(p->frames, m, &ho) != p->owner)
            return hv_audit_fail("p2m: gfn %#llx (order %u): mfn %#llx not owned by d%u",
                                 (unsigned long long)gfn, order, (unsigned long long)m,
                                 p->owner);
        if (ho > MAX_ORDER)
            return hv_audit_fail("p2m: mfn %#llx: head order %u", (unsigned long long)m, ho);
        m = (m & ~(order_pages(ho) - 1)) + order_pages(ho);
    }
    return 0;
}

static int audit_table(const struct p2m *p, struct audit *a, const ept_entry_t *tbl,
                       unsigned level, gfn_t base)
{
    unsigned ord = level_order(level);
    a->tables++;
    for (unsigned i = 0; i < P2M_ENTRIES; i++) {
        ept_entry_t e = tbl[i];
        gfn_t eg = base + ((uint64_t)i << ord);
        if (e == 0)
            continue;
        if (!is_leaf(e)) {
            if (level == 1 || (e & ~TABLE_BITS) || (e & EPT_RWX) != EPT_RWX ||
                !(e & EPT_MFN_MASK))
                return hv_audit_fail("p2m: bad table entry %#llx at level %u gfn %#llx",
                                     (unsigned long long)e, level, (unsigned long long)eg);
            const ept_entry_t *child = tbl_of(e);
            int rc = audit_table(p, a, child, level - 1, eg);
            if (rc)
                return rc;
            ept_entry_t leaf;
            if (p->auto_coalesce && !(e & P2M_PIN) &&
                merge_check(p, child, level, eg, &leaf) != MERGE_NONE)
                return hv_audit_fail("p2m: mergeable table at level %u gfn %#llx",
                                     level - 1, (unsigned long long)eg);
            continue;
        }
        enum p2m_type t = ept_type(e);
        if (level > 3 || t >= P2M_NR_TYPES || (e & ~LEAF_BITS) ||
            !!(e & EPT_SP) != (level > 1) ||
            (e & (EPT_RWX | EPT_MT_MASK)) != type_attr(t))
            return hv_audit_fail("p2m: bad leaf %#llx at level %u gfn %#llx",
                                 (unsigned long long)e, level, (unsigned long long)eg);
        mfn_t m = ept_mfn(e);
        if (!p2m_has_mfn(t) && m != 0)
            return hv_audit_fail("p2m: %s leaf with mfn at gfn %#llx", p2m_type_name(t),
                                 (unsigned long long)eg);
        if (!is_aligned_order(m, ord))
            return hv_audit_fail("p2m: mfn %#llx misaligned for order %u at gfn %#llx",
                                 (unsigned long long)m, ord, (unsigned long long)eg);
        if (level > 1 && p2m_range_is_4k_only(p, eg, ord))
            return hv_audit_fail("p2m: order %u leaf over 4K-only range at gfn %#llx", ord,
                                 (unsigned long long)eg);
        if (p->frames && p2m_is_ram(t)) {
            int rc = audit_frames(p, eg, m, ord);
            if (rc)
                return rc;
        }
        a->leaves[level - 1][t]++;
    }
    return 0;
}

int p2m_audit(const struct p2m *p)
{
    struct audit a;
    memset(&a, 0, sizeof(a));
    if (p->resv != 0)
        return hv_audit_fail("p2m: %llu tables still reserved", (unsigned long long)p->resv);
    int rc = audit_table(p, &a, p->root, P2M_LEVELS, 0);
    if (rc)
        return rc;
    for (unsigned l = 0; l < 3; l++)
        for (unsigned t = 0; t < P2M_NR_TYPES; t++)
            if (a.leaves[l][t] != p->leaves[l][t])
                return hv_audit_fail("p2m: %llu %s leaves at order %u, stats say %llu",
                                     (unsigned long long)a.leaves[l][t],
                                     p2m_type_name((enum p2m_type)t), 9 * l,
                                     (unsigned long long)p->leaves[l][t]);
    if (a.leaves[0][p2m_invalid] || a.leaves[1][p2m_invalid] || a.leaves[2][p2m_invalid])
        return hv_audit_fail("p2m: invalid-type leaves counted");
    if (a.tables != p->tables)
        return hv_audit_fail("p2m: %llu tables reachable, stats say %llu",
                             (unsigned long long)a.tables, (unsigned long long)p->tables);
    if (p->max_tables && p->tables > p->max_tables)
        return hv_audit_fail("p2m: %llu tables exceed max %llu",
                             (unsigned long long)p->tables,
                             (unsigned long long)p->max_tables);
    if (p->tables_peak < p->tables)
        return hv_audit_fail("p2m: tables_peak below tables");
    return 0;
}

/*
 * frames.c - the machine-frame buddy allocator (see frames.h for the API).
 *
 * Representation.  Per-frame metadata lives in separate arrays allocated with
 * calloc (mmap-backed for large machines, so untouched parts cost no RAM):
 *   state[mfn]   0 for a frame inside an extent (not its head), otherwise
 *                ST_FREE|order or ST_ALLOC|order at the head of an extent;
 *   owner[mfn]   owning domain, meaningful at allocated heads only;
 *   next/prev    intrusive doubly-linked free lists, meaningful at free
 *                heads only.  Links store mfn + 1 so that 0 (calloc) is nil;
 *                hence nr_frames < 2^32.
 * A frame's extent head is found by probing the aligned candidates
 * mfn & ~(2^k - 1), k = 0..18: the first one that is a head is it (every
 * aligned candidate below the head's order lies inside the extent).
 *
 * Buddy core.  alloc removes a free extent of order m >= r, gives the upper
 * halves back as free extents of orders m-1..r and hands out the lowest
 * 2^r frames.  free first splits the enclosing allocated extent buddy-style
 * down to the freed piece (the other halves stay allocated, same owner),
 * scrubs the piece, then merges it with free buddies of equal order while
 * the buddy lies inside [0, nr_frames).  The initial free space is carved
 * greedily into maximal aligned extents, so nr_frames is arbitrary.
 *
 * Units.  The machine is tiled by 2M "blocks" and 1G "regions" (the last
 * may be partial).  For each unit we count the extent heads of order below
 * the unit order (> 0 <=> the unit is split; stats frag_blocks/regions) and
 * the free frames held in such sub-unit free extents.
 *
 * Policies.  BUDDY keeps one LIFO list per order and takes the head of the
 * smallest non-empty list of order >= r.  FRAGPOOL keeps free extents of
 * order < 9 on per-block lists and those of order 9..17 on per-region lists
 * (order 18 on a global list).  Each unit that has something on its lists
 * sits in exactly one bucket keyed by (highest order on its lists, fill
 * level), level = free frames (blocks) or free frames >> 9 (regions), and a
 * bitmap per highest order marks non-empty buckets.  A request of order
 * r < 9 takes the fullest block (lowest level over highest orders >= r,
 * ties to the smaller order) and, inside it, the smallest free extent of
 * order >= r; failing that it takes an order-9 piece through the region
 * rule.  A request of order 9..17 takes likewise from the fullest split
 * region, else splits a whole free 1G extent.  Order 18 takes a whole free
 * 1G extent.  Since every free extent of order < 9 (< 18) lies on a block
 * (region) list, no fallback is needed: if the pools cannot serve, nothing
 * can.
 *
 * Invariants (frames_audit checks all of them):
 *  - the heads tile [0, nr_frames): each head is aligned to its order, the
 *    frames it covers are in range and have state 0;
 *  - every free extent is on exactly the list its policy assigns (global or
 *    the unit's) for its order, with consistent prev links; list lengths
 *    equal nr_free[order]; sum of free extents = free_frames;
 *  - no free extent has a free buddy of the same order;
 *  - per-unit head counts, free counts, split totals, bucket membership and
 *    bucket bitmaps equal what a scan finds; allocated heads have a valid
 *    owner and per-owner counters equal the frames found per owner.
 * Complexity: alloc and free are O(order) plus O(9) bucket probes each;
 * only create and audit are O(nr_frames).
 */
#include "frames.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define ST_FREE 0x40u
#define ST_ALLOC 0x80u
#define ST_ORDER 0x1fu
#define ST_KIND (ST_FREE | ST_ALLOC)

#define NIL 0u             /* list links store index + 1 */
#define UNIT_ORDERS 9u     /* orders kept on one unit's lists */
#define NR_LEVELS 513u     /* fill levels 0..512 */
#define BMAP_WORDS ((NR_LEVELS + 63u) / 64u)
#define NR_DOMIDS 65536u

/* A tiling of the machine by 2M blocks or 1G regions. */
struct pool {
    unsigned shift;     /* unit order: 9 or 18 */
    unsigned lo;        /* lowest order on unit lists: 0 or 9 */
    uint64_t n;         /* number of units */
    uint32_t *lhead;    /* fragpool: n * UNIT_ORDERS list heads */
    uint32_t *free;     /* free frames in sub-unit free extents */
    uint32_t *heads;    /* extent heads of order < shift */
    uint16_t *bucket;   /* fragpool: bucket key + 1, 0 = none */
    uint32_t *bnext, *bprev;             /* bucket links, unit + 1 */
    uint32_t bhead[UNIT_ORDERS * NR_LEVELS];
    uint64_t bmap[UNIT_ORDERS][BMAP_WORDS];
    uint16_t bsum[UNIT_ORDERS]; /* bit i: bmap[j][i] != 0 */
    uint64_t split;     /* units with heads > 0 */
};

struct frames {
    uint64_t nr;
    enum frame_policy policy;
    uint8_t *state;
    domid_t *owner;
    uint32_t *next, *prev;   /* (next starts the block of the four, meta_len bytes) */
    size_t meta_len;
    uint32_t head[NR_ORDERS]; /* global lists (all orders for buddy) */
    uint64_t nr_free[NR_ORDERS];
    uint64_t free_frames;
    struct pool blk, reg;
    uint64_t *owned; /* NR_DOMIDS counters */
    uint64_t nr_owners; /* owners with owned[] > 0 */
    uint64_t *audit_owned; /* audit scratch: NR_DOMIDS, kept all zero */
    domid_t *audit_seen;   /* audit scratch: owners met by the scan */
    frame_scrub_fn scrub;
    void *scrub_ctx;
    uint64_t allocs[NR_ORDERS];
    uint64_t alloc_failures[NR_ORDERS];
    uint64_t frees;
};

const char *frame_policy_name(enum frame_policy p)
{
    switch (p) {
    case FRAME_POLICY_FRAGPOOL: return "fragpool";
    case FRAME_POLICY_BUDDY: return "buddy";
    }
    return "?";
}

int frame_policy_parse(const char *s, enum frame_policy *out)
{
    if (!s)
        return -EINVAL;
    if (!strcmp(s, "fragpool")) {
        *out = FRAME_POLICY_FRAGPOOL;
        return 0;
    }
    if (!strcmp(s, "buddy")) {
        *out = FRAME_POLICY_BUDDY;
        return 0;
    }
    return -EINVAL;
}

static bool fragpool(const struct frames *f)
{
    return f->policy == FRAME_POLICY_FRAGPOOL;
}

static bool st_is_free(uint8_t st) { return (st & ST_KIND) == ST_FREE; }
static bool st_is_alloc(uint8_t st) { return (st & ST_KIND) == ST_ALLOC; }
static unsigned st_order(uint8_t st) { return st & ST_ORDER; }

/* ---- buckets of units (fragpool) ---------------------------------------- */

static unsigned pool_level(const struct pool *p, uint64_t u)
{
    uint32_t fr = p->free[u];
    return p->shift == PAGE_ORDER_2M ? fr : fr >> PAGE_ORDER_2M;
}

/* Bucket key (+1) a unit belongs in now, 0 when its lists are empty. */
static unsigned pool_key(const struct pool *p, uint64_t u)
{
    for (unsigned j = UNIT_ORDERS; j-- > 0;)
        if (p->lhead[u * UNIT_ORDERS + j] != NIL) {
            unsigned lvl = pool_level(p, u);
            assert(lvl > 0 && lvl < NR_LEVELS);
            return j * NR_LEVELS + lvl + 1;
        }
    return 0;
}

static void bucket_unlink(struct pool *p, uint64_t u)
{
    unsigned key = p->bucket[u];
    if (!key)
        return;
    key--;
    uint32_t nx = p->bnext[u], pv = p->bprev[u];
    if (pv)
        p->bnext[pv - 1] = nx;
    else
        p->bhead[key] = nx;
    if (nx)
        p->bprev[nx - 1] = pv;
    if (p->bhead[key] == NIL) {
        unsigned j = key / NR_LEVELS, l = key % NR_LEVELS;
        p->bmap[j][l / 64] &= ~(1ULL << (l % 64));
        if (!p->bmap[j][l / 64])
            p->bsum[j] &= (uint16_t)~(1u << (l / 64));
    }
    p->bucket[u] = 0;
}

static void bucket_push(struct pool *p, uint64_t u, unsigned key1)
{
    unsigned key = key1 - 1;
    uint32_t h = p->bhead[key];
    p->bnext[u] = h;
    p->bprev[u] = NIL;
    if (h)
        p->bprev[h - 1] = (uint32_t)(u + 1);
    p->bhead[key] = (uint32_t)(u + 1);
    unsigned j = key / NR_LEVELS, l = key % NR_LEVELS;
    p->bmap[j][l / 64] |= 1ULL << (l % 64);
    p->bsum[j] |= (uint16_t)(1u << (l / 64));
    p->bucket[u] = (uint16_t)key1;
}

/* Put unit u in the bucket its lists and free count call for. */
static void pool_rebucket(struct pool *p, uint64_t u)
{
    unsigned key1 = pool_key(p, u);
    if (key1 == p->bucket[u])
        return;
    bucket_unlink(p, u);
    if (key1)
        bucket_push(p, u, key1);
}

/* Lowest non-empty level among the buckets of highest order slot j. */
static unsigned bmap_lowest(const struct pool *p, unsigned j)
{
    if (!p->bsum[j])
        return NR_LEVELS;
    unsigned i = (unsigned)__builtin_ctz(p->bsum[j]);
    assert(p->bmap[j][i]);
    return i * 64 + (unsigned)__builtin_ctzll(p->bmap[j][i]);
}

/*
 * The fullest unit having a free extent of order >= r on its lists; returns
 * unit + 1 and the list slot j to take from (smallest order >= r in that
 * unit), or 0 when none.
 */
static uint64_t pool_best(const struct pool *p, unsigned r, unsigned *slot)
{
    unsigned best_l = NR_LEVELS, best_j = 0;
    for (unsigned j = r - p->lo; j < UNIT_ORDERS; j++) {
        unsigned l = bmap_lowest(p, j);
        if (l < best_l) {
            best_l = l;
            best_j = j;
        }
    }
    if (best_l == NR_LEVELS)
        return 0;
    uint32_t u1 = p->bhead[best_j * NR_LEVELS + best_l];
    assert(u1 != NIL);
    uint64_t u = u1 - 1;
    for (unsigned j = r - p->lo; j <= best_j; j++)
        if (p->lhead[u * UNIT_ORDERS + j] != NIL) {
            *slot = j;
            return u1;
        }
    assert(false && "bucketed unit without a suitable extent");
    return 0;
}

/* ---- extents and free lists --------------------------------------------- */

static uint32_t *list_head(struct frames *f, uint64_t mfn, unsigned order)
{
    if (fragpool(f) && order < MAX_ORDER) {
        struct pool *p = order < PAGE_ORDER_2M ? &f->blk : &f->reg;
        return &p->lhead[(mfn >> p->shift) * UNIT_ORDERS + (order - p->lo)];
    }
    return &f->head[order];
}

/* Record a new extent head (free or allocated) at mfn. */
static void extent_set(struct frames *f, uint64_t mfn, unsigned order,
                       unsigned kind)
{
    assert(is_aligned_order(mfn, order) && mfn + order_pages(order) <= f->nr);
    assert(f->state[mfn] == 0);
    f->state[mfn] = (uint8_t)(kind | order);
    if (order < PAGE_ORDER_2M && f->blk.heads[mfn >> 9]++ == 0)
        f->blk.split++;
    if (order < PAGE_ORDER_1G && f->reg.heads[mfn >> 18]++ == 0)
        f->reg.split++;
}

/* Forget the extent head at mfn (it is being split or merged). */
static void extent_clear(struct frames *f, uint64_t mfn, unsigned order)
{
    assert(st_order(f->state[mfn]) == order);
    f->state[mfn] = 0;
    if (order < PAGE_ORDER_2M && --f->blk.heads[mfn >> 9] == 0)
        f->blk.split--;
    if (order < PAGE_ORDER_1G && --f->reg.heads[mfn >> 18] == 0)
        f->reg.split--;
}

static void count_free(struct frames *f, uint64_t mfn, unsigned order,
                       bool add)
{
    uint64_t n = order_pages(order);
    if (add) {
        f->nr_free[order]++;
        f->free_frames += n;
    } else {
        f->nr_free[order]--;
        f->free_frames -= n;
    }
    if (order < PAGE_ORDER_2M) {
        uint64_t b = mfn >> 9;
        f->blk.free[b] = add ? f->blk.free[b] + (uint32_t)n
                             : f->blk.free[b] - (uint32_t)n;
        if (fragpool(f))
            pool_rebucket(&f->blk, b);
    }
    if (order < PAGE_ORDER_1G) {
        uint64_t r = mfn >> 18;
        uint32_t old = f->reg.free[r];
        f->reg.free[r] = add ? old + (uint32_t)n : old - (uint32_t)n;
        /* below 2M only the level (free >> 9) of a bucketed region moves */
        if (fragpool(f) && (order >= PAGE_ORDER_2M ||
                            (f->reg.bucket[r] && (old ^ f->reg.free[r]) >> 9)))
            pool_rebucket(&f->reg, r);
    }
}

/* Push the free head at mfn (state already ST_FREE|order) on its list. */
static void free_push(struct frames *f, uint64_t mfn, unsigned order)
{
    assert(f->state[mfn] == (ST_FREE | order));
    uint32_t *h = list_head(f, mfn, order);
    f->next[mfn] = *h;
    f->prev[mfn] = NIL;
    if (*h)
        f->prev[*h - 1] = (uint32_t)(mfn + 1);
    *h = (uint32_t)(mfn + 1);
    count_free(f, mfn, order, true);
}

static void free_unlink(struct frames *f, uint64_t mfn, unsigned order)
{
    assert(f->state[mfn] == (ST_FREE | order));
    uint32_t *h = list_head(f, mfn, order);
    uint32_t nx = f->next[mfn], pv = f->prev[mfn];
    if (pv)
        f->next[pv - 1] = nx;
    else
        *h = nx;
    if (nx)
        f->prev[nx - 1] = pv;
    count_free(f, mfn, order, false);
}

/* Head of the extent containing mfn (mfn < nr); *order gets its order. */
static uint64_t find_head(const struct frames *f, uint64_t mfn,
                          unsigned *order)
{
    for (unsigned k = 0; k <= MAX_ORDER; k++) {
        uint64_t h = mfn & ~(order_pages(k) - 1);
        uint8_t st = f->state[h];
        if (st) {
            assert(h + order_pages(st_order(st)) > mfn);
            *order = st_order(st);
            return h;
        }
    }
    assert(false && "frame not covered by any extent");
    *order = 0;
    return mfn;
}

/* ---- create / destroy ---------------------------------------------------- */

static int pool_init(struct pool *p, uint64_t nr, unsigned shift, bool lists)
{
    memset(p, 0, sizeof(*p));
    p->shift = shift;
    p->lo = shift - PAGE_ORDER_2M;
    p->n = (nr + order_pages(shift) - 1) >> shift;
    p->free = hv_calloc(p->n, sizeof(*p->free));
    p->heads = hv_calloc(p->n, sizeof(*p->heads));
    if (!p->free || !p->heads)
        return -ENOMEM;
    if (lists) {
        p->lhead = hv_calloc(p->n * UNIT_ORDERS, sizeof(*p->lhead));
        p->bucket = hv_calloc(p->n, sizeof(*p->bucket));
        p->bnext = hv_calloc(p->n, sizeof(*p->bnext));
        p->bprev = hv_calloc(p->n, sizeof(*p->bprev));
        if (!p->lhead || !p->bucket || !p->bnext || !p->bprev)
            return -ENOMEM;
    }
    return 0;
}

static void pool_fini(struct pool *p)
{
    free(p->lhead);
    free(p->free);
    free(p->heads);
    free(p->bucket);
    free(p->bnext);
    free(p->bprev);
}

int frames_create(struct frames **out, uint64_t nr_frames,
                  enum frame_policy policy)
{
    return frames_create_huge(out, nr_frames, policy, false);
}

int frames_create_huge(struct frames **out, uint64_t nr_frames, enum frame_policy policy,
                       bool huge)
{
    if (nr_frames == 0 || nr_frames >= UINT32_MAX ||
        (policy != FRAME_POLICY_FRAGPOOL && policy != FRAME_POLICY_BUDDY))
        return -EINVAL;
    struct frames *f = hv_calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->nr = nr_frames;
    f->policy = policy;
    /* the per-frame arrays, in one block; with `huge` on huge pages where
     * they can be (common.h): the first allocations out of a pool that
     * will be used whole do not fault 4 KiB at a time */
    size_t n64 = ((size_t)nr_frames + 63) & ~(size_t)63;
    f->meta_len = n64 * (sizeof(*f->state) + sizeof(*f->owner) + sizeof(*f->next) +
                         sizeof(*f->prev));
    uint8_t *meta = hv_big_alloc(f->meta_len, huge);
    if (meta) {
        f->next = (uint32_t *)meta;
        f->prev = f->next + n64;
        f->owner = (domid_t *)(f->prev + n64);
        f->state = (uint8_t *)(f->owner + n64);
    }
    f->owned = hv_calloc(NR_DOMIDS, sizeof(*f->owned));
    f->audit_owned = hv_calloc(NR_DOMIDS, sizeof(*f->audit_owned));
    f->audit_seen = hv_calloc(NR_DOMIDS, sizeof(*f->audit_seen));
    bool lists = policy == FRAME_POLICY_FRAGPOOL;
    if (!f->state || !f->owner || !f->next || !f->prev || !f->owned ||
        !f->audit_owned || !f->audit_seen ||
        pool_init(&f->blk, nr_frames, PAGE_ORDER_2M, lists) ||
        pool_init(&f->reg, nr_frames, PAGE_ORDER_1G, lists)) {
        frames_destroy(f);
        return -ENOMEM;
    }
    /* Carve [0, nr) into maximal aligned extents. */
    uint64_t mfn = 0;
    while (mfn < nr_frames) {
        unsigned k = MAX_ORDER;
        while (!is_aligned_order(mfn, k) || mfn + order_pages(k) > nr_frames)
            k--;
        extent_set(f, mfn, k, ST_FREE);
        free_push(f, mfn, k);
        mfn += order_pages(k);
    }
    *out = f;
    return 0;
}

void frames_destroy(struct frames *f)
{
    if (!f)
        return;
    hv_big_free(f->next, f->meta_len); /* (the block's start) */
    free(f->owned);
    free(f->audit_owned);
    free(f->audit_seen);
    pool_fini(&f->blk);
    pool_fini(&f->reg);
    free(f);
}

void frames_set_scrub(struct frames *f, frame_scrub_fn fn, void *ctx)
{
    f->scrub = fn;
    f->scrub_ctx = ctx;
}

enum frame_policy frames_policy(const struct frames *f) { return f->policy; }
uint64_t frames_nr(const struct frames *f) { return f->nr; }

/* ---- alloc / free --------------------------------------------------------- */

/*
 * Choose the free extent a request of order r takes, per policy.  Returns
 * mfn + 1 (0 when nothing can serve) and its order in *order.
 */
static uint64_t pick(struct frames *f, unsigned r, unsigned *order)
{
    if (!fragpool(f)) {
        for (unsigned k = r; k <= MAX_ORDER; k++)
            if (f->head[k]) {
                *order = k;
                return f->head[k];
            }
        return 0;
    }
    unsigned slot;
    uint64_t u1;
    if (r < PAGE_ORDER_2M) {
        u1 = pool_best(&f->blk, r, &slot);
        if (u1) {
            *order = slot;
            return f->blk.lhead[(u1 - 1) * UNIT_ORDERS + slot];
        }
        r = PAGE_ORDER_2M; /* a whole 2M piece becomes a fragment block */
    }
    if (r < PAGE_ORDER_1G) {
        u1 = pool_best(&f->reg, r, &slot);
        if (u1) {
            *order = PAGE_ORDER_2M + slot;
            return f->reg.lhead[(u1 - 1) * UNIT_ORDERS + slot];
        }
    }
    *order = MAX_ORDER;
    return f->head[MAX_ORDER];
}

int frame_alloc(struct frames *f, unsigned order, domid_t owner, mfn_t *mfn)
{
    if (order > MAX_ORDER || owner == DOMID_INVALID)
        return -EINVAL;
    if (fault_should_fail(FAULT_SITE_FRAME)) {
        f->alloc_failures[order]++;
        return -ENOMEM;
    }
    unsigned m;
    uint64_t h1 = pick(f, order, &m);
    if (!h1) {
        f->alloc_failures[order]++;
        return -ENOMEM;
    }
    uint64_t h = h1 - 1;
    assert(m >= order && f->state[h] == (ST_FREE | m));
    free_unlink(f, h, m);
    extent_clear(f, h, m);
    while (m > order) {
        m--;
        uint64_t upper = h + order_pages(m);
        extent_set(f, upper, m, ST_FREE);
        free_push(f, upper, m);
    }
    extent_set(f, h, order, ST_ALLOC);
    f->owner[h] = owner;
    if (f->owned[owner] == 0)
        f->nr_owners++;
    f->owned[owner] += order_pages(order);
    f->allocs[order]++;
    *mfn = h;
    return 0;
}

int frame_free(struct frames *f, mfn_t mfn, unsigned order, domid_t owner)
{
    if (order > MAX_ORDER || !is_aligned_order(mfn, order) || mfn >= f->nr ||
        order_pages(order) > f->nr - mfn)
        return -EINVAL;
    unsigned o;
    uint64_t h = find_head(f, mfn, &o);
    if (!st_is_alloc(f->state[h]) || f->owner[h] != owner || o < order)
        return -EPERM;
    /* Split the allocated extent down to the piece. */
    extent_clear(f, h, o);
    while (o > order) {
        o--;
        uint64_t lower = mfn & ~(order_pages(o + 1) - 1);
        uint64_t upper = lower + order_pages(o);
        uint64_t other = mfn >= upper ? lower : upper;
        extent_set(f, other, o, ST_ALLOC);
        f->owner[other] = owner;
    }
    f->owned[owner] -= order_pages(order);
    if (f->owned[owner] == 0)
        f->nr_owners--;
    f->frees++;
    if (f->scrub)
        f->scrub(f->scrub_ctx, mfn, order);
    /* Merge with free buddies. */
    while (order < MAX_ORDER) {
        uint64_t buddy = mfn ^ order_pages(order);
        if (buddy >= f->nr || f->state[buddy] != (ST_FREE | order))
            break;
        free_unlink(f, buddy, order);
        extent_clear(f, buddy, order);
        mfn &= ~order_pages(order);
        order++;
    }
    extent_set(f, mfn, order, ST_FREE);
    free_push(f, mfn, order);
    return 0;
}

domid_t frame_owner(const struct frames *f, mfn_t mfn, unsigned *head_order)
{
    if (mfn >= f->nr)
        return DOMID_INVALID;
    unsigned o;
    uint64_t h = find_head(f, mfn, &o);
    if (head_order)
        *head_order = o;
    return st_is_alloc(f->state[h]) ? f->owner[h] : DOMID_INVALID;
}

uint64_t frames_owned(const struct frames *f, domid_t owner)
{
    return f->owned[owner];
}

/* ---- statistics ------------------------------------------------------------ */

void frames_get_stats(const struct frames *f, struct frame_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->nr_frames = f->nr;
    st->free_frames = f->free_frames;
    for (unsigned k = 0; k < NR_ORDERS; k++) {
        st->free_extents[k] = f->nr_free[k];
        st->allocs[k] = f->allocs[k];
        st->alloc_failures[k] = f->alloc_failures[k];
    }
    st->frag_blocks = f->blk.split;
    st->frag_regions = f->reg.split;
    st->frees = f->frees;
}

uint64_t frames_allocatable(const struct frames *f, unsigned order)
{
    if (order > MAX_ORDER)
        return 0;
    uint64_t n = 0;
    for (unsigned k = order; k <= MAX_ORDER; k++)
        n += f->nr_free[k] << (k - order);
    return n;
}

/* Linux's contig_page_info (mm/vmstat.c). */
struct contig_info {
    uint64_t free_pages, free_blocks_total, free_blocks_suitable;
};

static void contig_info(const struct frames *f, unsigned order,
                        struct contig_info *ci)
{
    memset(ci, 0, sizeof(*ci));
    for (unsigned k = 0; k <= MAX_ORDER; k++) {
        ci->free_blocks_total += f->nr_free[k];
        ci->free_pages += f->nr_free[k] << k;
        if (k >= order)
            ci->free_blocks_suitable += f->nr_free[k] << (k - order);
    }
}

/* unusable_free_index(), in thousandths as Linux computes it. */
double frames_unusable_index(const struct frames *f, unsigned order)
{
    if (order > MAX_ORDER)
        return 0.0;
    struct contig_info ci;
    contig_info(f, order, &ci);
    if (ci.free_pages == 0)
        return 0.0;
    uint64_t t = (ci.free_pages - (ci.free_blocks_suitable << order)) * 1000 /
                 ci.free_pages;
    return (double)t / 1000.0;
}

/* __fragmentation_index(), in thousandths as Linux computes it, except
 * that the value is clamped at 0: with fewer free blocks than
 * 1 + free_pages / 2^order Linux's formula goes negative (e.g. one free 4K
 * frame asked for order 1 gives -0.5), which frames.h promises not to. */
double frames_extfrag_index(const struct frames *f, unsigned order)
{
    if (order > MAX_ORDER)
        return 0.0;
    struct contig_info ci;
    contig_info(f, order, &ci);
    if (!ci.free_blocks_total)
        return 0.0;
    if (ci.free_blocks_suitable)
        return -1.0;
    uint64_t t = (1000 + ci.free_pages * 1000 / order_pages(order)) /
                 ci.free_blocks_total;
    return t >= 1000 ? 0.0 : (double)(1000 - t) / 1000.0;
}

/* ---- audit ------------------------------------------------------------------ */

/* Walk one free list; check membership and links; count into *n. */
static int audit_list(const struct frames *f, uint32_t h, unsigned order,
                      int64_t unit, const struct pool *p, uint64_t *n)
{
    uint32_t pv = NIL;
    uint64_t limit = f->nr_free[order];
    for (uint32_t e = h; e != NIL; e = f->next[e - 1]) {
        uint64_t mfn = e - 1;
        if (mfn >= f->nr)
            return hv_audit_fail("frames: list order %u has mfn %#llx out of range",
                                 order, (unsigned long long)mfn);
        if (f->state[mfn] != (ST_FREE | order))
            return hv_audit_fail("frames: mfn %#llx on free list %u has state %#x",
                                 (unsigned long long)mfn, order, f->state[mfn]);
        if (f->prev[mfn] != pv)
            return hv_audit_fail("frames: mfn %#llx bad prev link", (unsigned long long)mfn);
        if (unit >= 0 && (int64_t)(mfn >> p->shift) != unit)
            return hv_audit_fail("frames: mfn %#llx on the list of unit %lld",
                                 (unsigned long long)mfn, (long long)unit);
        if (++*n > limit)
            return hv_audit_fail("frames: free list %u longer than its count %llu",
                                 order, (unsigned long long)limit);
        pv = e;
    }
    return 0;
}

static int audit_pool(const struct frames *f, const struct pool *p,
                      const uint32_t *free_scan, const uint32_t *heads_scan,
                      uint64_t *listed)
{
    uint64_t split = 0, bucketed = 0;
    for (uint64_t u = 0; u < p->n; u++) {
        if (p->free[u] != free_scan[u] || p->heads[u] != heads_scan[u])
            return hv_audit_fail("frames: unit %llu (order %u) counts free %u heads %u, scan %u %u",
                                 (unsigned long long)u, p->shift, p->free[u],
                                 p->heads[u], free_scan[u], heads_scan[u]);
        split += p->heads[u] > 0;
        if (!p->lhead)
            continue;
        for (unsigned j = 0; j < UNIT_ORDERS; j++) {
            int rc = audit_list(f, p->lhead[u * UNIT_ORDERS + j], p->lo + j,
                                (int64_t)u, p, &listed[p->lo + j]);
            if (rc)
                return rc;
        }
        unsigned key1 = pool_key(p, u);
        if (p->bucket[u] != key1)
            return hv_audit_fail("frames: unit %llu (order %u) in bucket %u, expected %u",
                                 (unsigned long long)u, p->shift, p->bucket[u], key1);
        bucketed += key1 != 0;
    }
    if (split != p->split)
        return hv_audit_fail("frames: %llu split units of order %u, counter says %llu",
                             (unsigned long long)split, p->shift,
                             (unsigned long long)p->split);
    if (!p->lhead)
        return 0;
    uint64_t seen = 0;
    for (unsigned key = 0; key < UNIT_ORDERS * NR_LEVELS; key++) {
        unsigned j = key / NR_LEVELS, l = key % NR_LEVELS;
        bool bit = p->bmap[j][l / 64] >> (l % 64) & 1;
        if (bit != (p->bhead[key] != NIL))
            return hv_audit_fail("frames: bucket bitmap wrong at %u (order %u)", key, p->shift);
        if (l % 64 == 0 && ((p->bsum[j] >> (l / 64)) & 1) != (p->bmap[j][l / 64] != 0))
            return hv_audit_fail("frames: bucket summary wrong at %u (order %u)", key, p->shift);
        uint32_t pv = NIL;
        for (uint32_t e = p->bhead[key]; e != NIL; e = p->bnext[e - 1]) {
            if (e > p->n || p->bucket[e - 1] != key + 1 || p->bprev[e - 1] != pv)
                return hv_audit_fail("frames: bucket %u (order %u) list corrupt at unit %u",
                                     key, p->shift, e - 1);
            if (++seen > bucketed)
                return hv_audit_fail("frames: bucket lists too long (order %u)", p->shift);
            pv = e;
        }
    }
    if (seen != bucketed)
        return hv_audit_fail("frames: %llu units in bucket lists, %llu bucketed",
                             (unsigned long long)seen, (unsigned long long)bucketed);
    return 0;
}

int frames_audit(const struct frames *f)
{
    int rc = 0;
    uint64_t nfree[NR_ORDERS] = {0}, listed[NR_ORDERS] = {0}, free_frames = 0;
    uint64_t *owned = f->audit_owned, nseen = 0;
    uint32_t *bfree = calloc(f->blk.n, sizeof(*bfree));
    uint32_t *bheads = calloc(f->blk.n, sizeof(*bheads));
    uint32_t *rfree = calloc(f->reg.n, sizeof(*rfree));
    uint32_t *rheads = calloc(f->reg.n, sizeof(*rheads));
    if (!bfree || !bheads || !rfree || !rheads) {
        rc = hv_audit_fail("frames: audit out of memory");
        goto out;
    }
    for (uint64_t mfn = 0; mfn < f->nr;) {
        uint8_t st = f->state[mfn];
        unsigned o = st_order(st);
        if (!st_is_free(st) && !st_is_alloc(st)) {
            rc = hv_audit_fail("frames: mfn %#llx should be an extent head, state %#x",
                               (unsigned long long)mfn, st);
            goto out;
        }
        if (o > MAX_ORDER || !is_aligned_order(mfn, o) ||
            order_pages(o) > f->nr - mfn) {
            rc = hv_audit_fail("frames: extent %#llx order %u misaligned or out of range",
                               (unsigned long long)mfn, o);
            goto out;
        }
        for (uint64_t i = 1; i < order_pages(o); i++)
            if (f->state[mfn + i]) {
                rc = hv_audit_fail("frames: mfn %#llx inside extent %#llx/%u has state %#x",
                                   (unsigned long long)(mfn + i),
                                   (unsigned long long)mfn, o, f->state[mfn + i]);
                goto out;
            }
        if (st_is_free(st)) {
            nfree[o]++;
            free_frames += order_pages(o);
            uint64_t buddy = mfn ^ order_pages(o);
            if (o < MAX_ORDER && buddy < f->nr && f->state[buddy] == (ST_FREE | o)) {
                rc = hv_audit_fail("frames: free buddies %#llx and %#llx of order %u not merged",
                                   (unsigned long long)mfn, (unsigned long long)buddy, o);
                goto out;
            }
            if (o < PAGE_ORDER_2M)
                bfree[mfn >> 9] += (uint32_t)order_pages(o);
            if (o < PAGE_ORDER_1G)
                rfree[mfn >> 18] += (uint32_t)order_pages(o);
        } else {
            if (f->owner[mfn] == DOMID_INVALID) {
                rc = hv_audit_fail("frames: allocated extent %#llx has no owner",
                                   (unsigned long long)mfn);
                goto out;
            }
            if (owned[f->owner[mfn]] == 0)
                f->audit_seen[nseen++] = f->owner[mfn];
            owned[f->owner[mfn]] += order_pages(o);
        }
        if (o < PAGE_ORDER_2M)
            bheads[mfn >> 9]++;
        if (o < PAGE_ORDER_1G)
            rheads[mfn >> 18]++;
        mfn += order_pages(o);
    }
    if (free_frames != f->free_frames) {
        rc = hv_audit_fail("frames: %llu free frames found, counter says %llu",
                           (unsigned long long)free_frames,
                           (unsigned long long)f->free_frames);
        goto out;
    }
    for (unsigned k = 0; k < NR_ORDERS; k++)
        if (nfree[k] != f->nr_free[k]) {
            rc = hv_audit_fail("frames: %llu free extents of order %u, counter says %llu",
                               (unsigned long long)nfree[k], k,
                               (unsigned long long)f->nr_free[k]);
            goto out;
        }
    /* Owners met by the scan match their counters; nr_owners says no other
     * counter is non-zero. */
    for (uint64_t i = 0; i < nseen; i++) {
        domid_t d = f->audit_seen[i];
        if (owned[d] != f->owned[d]) {
            rc = hv_audit_fail("frames: domain %u owns %llu frames, counter says %llu", d,
                               (unsigned long long)owned[d],
                               (unsigned long long)f->owned[d]);
            goto out;
        }
    }
    if (nseen != f->nr_owners) {
        rc = hv_audit_fail("frames: %llu owners hold frames, counter says %llu",
                           (unsigned long long)nseen, (unsigned long long)f->nr_owners);
        goto out;
    }
    /* Global lists: every order for buddy, order 18 only for fragpool. */
    for (unsigned k = fragpool(f) ? MAX_ORDER : 0; k <= MAX_ORDER; k++)
        if ((rc = audit_list(f, f->head[k], k, -1, NULL, &listed[k])))
            goto out;
    if (fragpool(f))
        for (unsigned k = 0; k < MAX_ORDER; k++)
            if (f->head[k] != NIL) {
                rc = hv_audit_fail("frames: fragpool global list %u not empty", k);
                goto out;
            }
    if ((rc = audit_pool(f, &f->blk, bfree, bheads, listed)) ||
        (rc = audit_pool(f, &f->reg, rfree, rheads, listed)))
        goto out;
    for (unsigned k = 0; k < NR_ORDERS; k++)
        if (listed[k] != nfree[k]) {
            rc = hv_audit_fail("frames: %llu extents listed at order %u, %llu free",
                               (unsigned long long)listed[k], k,
                               (unsigned long long)nfree[k]);
            goto out;
        }
out:
    for (uint64_t i = 0; i < nseen; i++)
        owned[f->audit_seen[i]] = 0;
    free(bfree);
    free(bheads);
    free(rfree);
    free(rheads);
    return rc;
}

/* ---- fragmentation churn ------------------------------------------------------ */

struct mfn_vec {
    mfn_t *v;
    uint64_t n, cap;
};

static int vec_push(struct mfn_vec *a, mfn_t m)
{
    if (a->n == a->cap) {
        uint64_t cap = a->cap ? a->cap * 2 : 1024;
        mfn_t *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = m;
    return 0;
}

/* Remove and return a random element (a->n > 0). */
static mfn_t vec_take(struct mfn_vec *a, struct hv_rng *rng)
{
    uint64_t i = hv_rng_below(rng, a->n);
    mfn_t m = a->v[i];
    a->v[i] = a->v[--a->n];
    return m;
}

/*
 * One churn step: pick a size (4K with probability mix_4k, else 2M).  4K:
 * allocate with probability grow8/8, else free a random held 4K piece.
 * 2M: allocate or free a random held 2M piece with equal odds, the 2M
 * pieces capped (they model other domains' superpages coming and going).
 * Returns 0, 1 when a 4K allocation failed with no 2M piece left to make
 * room with, or -ENOMEM.
 */
struct churn {
    struct frames *f;
    domid_t owner;
    struct hv_rng rng;
    uint64_t thr, cap2m, ops, ops_4k;
    struct mfn_vec p4k, p2m;
};

static void churn_free(struct churn *c, struct mfn_vec *v, unsigned order)
{
    c->ops++;
    int rc = frame_free(c->f, vec_take(v, &c->rng), order, c->owner);
    assert(rc == 0);
    (void)rc;
}

static int churn_step(struct churn *c, unsigned grow8)
{
    bool small = (hv_rng_next(&c->rng) & UINT32_MAX) < c->thr;
    uint64_t dice = hv_rng_below(&c->rng, 8);
    mfn_t m;
    int rc;
    if (small) {
        c->ops_4k++;
        if (c->p4k.n && dice >= grow8) {
            churn_free(c, &c->p4k, 0);
            return 0;
        }
        c->ops++;
        if (frame_alloc(c->f, 0, c->owner, &m) == 0) {
            if (vec_push(&c->p4k, m) == 0)
                return 0;
            rc = frame_free(c->f, m, 0, c->owner);
            assert(rc == 0);
            return -ENOMEM;
        }
        if (!c->p2m.n)
            return 1;
        churn_free(c, &c->p2m, PAGE_ORDER_2M); /* make room */
        return 0;
    }
    if (c->p2m.n && (dice < 4 || c->p2m.n >= c->cap2m)) {
        churn_free(c, &c->p2m, PAGE_ORDER_2M);
        return 0;
    }
    if (c->p2m.n >= c->cap2m)
        return 0;
    c->ops++;
    if (frame_alloc(c->f, PAGE_ORDER_2M, c->owner, &m) == 0 && vec_push(&c->p2m, m)) {
        rc = frame_free(c->f, m, PAGE_ORDER_2M, c->owner);
        assert(rc == 0);
        return -ENOMEM;
    }
    (void)rc;
    return 0;
}

/*
 * Four phases, so that frees scatter holes over many blocks and later
 * allocations decide where they are refilled (which is what separates the
 * policies): grow (7/8 of 4K steps allocate) to 1.5 * want, bounded by a
 * third of the rest of the machine (or until memory runs out); shrink (1/8)
 * to want / 4; steady churn (1/2) for 2 * want 4K steps; grow (7/8) to
 * want.  On failure (the last phase runs out of memory, or the op bound)
 * everything allocated here is freed and -ENOMEM returned; on success the
 * 2M pieces are freed and the 4K ones kept.
 */
int frames_fragment(struct frames *f, domid_t owner, double target,
                    double mix_4k, uint64_t seed, uint64_t *ops)
{
    if (owner == DOMID_INVALID || !(target >= 0.0 && target <= 1.0) ||
        !(mix_4k > 0.0 && mix_4k <= 1.0))
        return -EINVAL;
    uint64_t want = (uint64_t)(target * (double)f->nr);
    struct churn c = {
        .f = f,
        .owner = owner,
        .rng = {seed},
        .thr = (uint64_t)(mix_4k * (double)UINT32_MAX),
        .cap2m = (uint64_t)((1.0 - target) * (double)f->nr / 2.0) >> PAGE_ORDER_2M,
    };
    uint64_t bound = (uint64_t)(64.0 * (double)want / mix_4k) + 1000000;
    /* The churning domain never maps or writes its frames, so its frees need
     * no scrubbing: unhook the scrubber for the duration. */
    frame_scrub_fn saved_scrub = f->scrub;
    f->scrub = NULL;
    uint64_t room = want + (f->nr - want) / 3;
    uint64_t peak = want + want / 2 < room ? want + want / 2 : room;
    int rc = 0;
    while (!rc && c.p4k.n < peak && c.ops < bound)
        rc = churn_step(&c, 7);
    rc = rc == 1 ? 0 : rc; /* machine full: start shrinking */
    while (!rc && c.p4k.n > want / 4 && c.ops < bound)
        if ((rc = churn_step(&c, 1)) == 1)
            rc = 0;
    for (uint64_t end = c.ops_4k + 2 * want; !rc && c.ops_4k < end && c.ops < bound;)
        if ((rc = churn_step(&c, 4)) == 1)
            rc = 0;
    while (!rc && c.p4k.n < want && c.ops < bound)
        rc = churn_step(&c, 7);
    if (!rc && c.p4k.n < want)
        rc = -ENOMEM;
    while (c.p2m.n) {
        c.ops++;
        int frc = frame_free(f, c.p2m.v[--c.p2m.n], PAGE_ORDER_2M, owner);
        assert(frc == 0);
        (void)frc;
    }
    if (rc) {
        while (c.p4k.n) {
            c.ops++;
            int frc = frame_free(f, c.p4k.v[--c.p4k.n], 0, owner);
            assert(frc == 0);
            (void)frc;
        }
        rc = -ENOMEM;
    }
    f->scrub = saved_scrub;
    free(c.p4k.v);
    free(c.p2m.v);
    if (ops)
        *ops = c.ops;
    return rc;
}

/*
 * workload.c - seeded workloads and the deterministic multi-vCPU runner
 * (see workload.h).
 *
 * Zipf: Gray et al., "Quickly generating billion-record synthetic
 * databases" (the generator YCSB uses): zeta(n, theta) is summed once at
 * create (O(n) for n pages), then each draw costs one pow().  Ranks are
 * scrambled with a 64-bit mix modulo n, so the hot set is spread over the
 * guest and not packed into its first superpage.
 */
#include "workload.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct wl_extent {
    gfn_t gfn;
    uint64_t nr;
    uint64_t first; /* page index of gfn */
};

struct workload {
    struct workload_config cfg;
    struct hv_rng rng;
    struct wl_extent *ext;
    size_t nr_ext;
    uint64_t pages;
    uint64_t lo, hi; /* slice of page indexes for seq / writer */
    uint64_t pos, pass, seq;
    double zetan, zeta2, alpha, eta, theta;
    uint64_t checksum;
    uint64_t writes;
    unsigned index;
};

static const char *const kind_names[WL_NR_KINDS] = {"seq", "uniform", "zipf", "writer"};

const char *workload_name(enum workload_kind k)
{
    return (unsigned)k < WL_NR_KINDS ? kind_names[k] : "?";
}

int workload_parse(const char *s, enum workload_kind *out)
{
    if (!strcmp(s, "gups")) {
        *out = WL_UNIFORM;
        return 0;
    }
    for (unsigned i = 0; i < WL_NR_KINDS; i++)
        if (!strcmp(s, kind_names[i])) {
            *out = (enum workload_kind)i;
            return 0;
        }
    return -EINVAL;
}

void workload_config_default(struct workload_config *c, enum workload_kind kind)
{
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    c->seed = 1;
    c->write_frac = -1;
    c->quantum = 4096;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ---- the guest's pages ------------------------------------------------------ */

struct ext_vec {
    struct wl_extent *v;
    size_t n, cap;
    int rc;
};

/* Append [gfn, gfn + nr), merged with the last extent when contiguous. */
static int ext_push(struct ext_vec *x, gfn_t gfn, uint64_t nr)
{
    if (x->n && x->v[x->n - 1].gfn + x->v[x->n - 1].nr == gfn) {
        x->v[x->n - 1].nr += nr;
        return 0;
    }
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 16;
        struct wl_extent *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return x->rc = -ENOMEM;
        if (x->n)
            memcpy(v, x->v, x->n * sizeof(*v));
        free(x->v);
        x->v = v;
        x->cap = cap;
    }
    x->v[x->n++] = (struct wl_extent){gfn, nr, 0};
    return 0;
}

static int add_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                    enum p2m_type type, ept_entry_t *e)
{
    (void)mfn;
    (void)e;
    if (!p2m_is_ram(type) && type != p2m_pod)
        return 0;
    return ext_push(ctx, gfn, order_pages(order));
}

uint64_t workload_pages(const struct workload *w) { return w->pages; }

gfn_t workload_gfn(const struct workload *w, uint64_t i)
{
    /* binary search over the extents' first page indexes */
    size_t lo = 0, hi = w->nr_ext;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (w->ext[mid].first <= i)
            lo = mid;
        else
            hi = mid;
    }
    return w->ext[lo].gfn + (i - w->ext[lo].first);
}

/* ---- create ----------------------------------------------------------------- */

/* A workload over the extents x (taken, merged, in page-index order). */
static int create_over(const struct workload_config *cfg, unsigned index, unsigned nr_vcpus,
                       struct ext_vec *x, struct workload **out)
{
    if ((unsigned)cfg->kind >= WL_NR_KINDS || nr_vcpus == 0 || index >= nr_vcpus ||
        cfg->write_frac > 1 || cfg->wss < 0 || cfg->wss > 1 || cfg->zipf_theta < 0 ||
        cfg->zipf_theta >= 1 || x->n == 0) {
        free(x->v);
        return -EINVAL;
    }
    struct workload *w = hv_calloc(1, sizeof(*w));
    if (!w) {
        free(x->v);
        return -ENOMEM;
    }
    w->cfg = *cfg;
    w->index = index;
    w->rng.s = mix64(cfg->seed * 0x9E3779B97F4A7C15ULL + index + 1);
    if (w->cfg.write_frac < 0) {
        static const double def[WL_NR_KINDS] = {0.0, 1.0, 0.2, 1.0};
        w->cfg.write_frac = def[cfg->kind];
    }
    if (w->cfg.zipf_theta == 0)
        w->cfg.zipf_theta = 0.99;
    if (w->cfg.wss == 0)
        w->cfg.wss = 1.0;
    uint64_t total = 0;
    for (size_t i = 0; i < x->n; i++) {
        x->v[i].first = total;
        total += x->v[i].nr;
    }
    w->ext = x->v;
    w->nr_ext = x->n;
    w->pages = total;
    w->lo = total * index / nr_vcpus;
    w->hi = total * (index + 1) / nr_vcpus;
    if (w->hi == w->lo) { /* more vCPUs than pages: share the last one */
        w->lo = total - 1;
        w->hi = total;
    }
    if (cfg->kind == WL_WRITER) {
        uint64_t span = (uint64_t)((double)(w->hi - w->lo) * w->cfg.wss);
        w->hi = w->lo + (span ? span : 1);
    }
    w->pos = w->lo;
    if (cfg->kind == WL_ZIPF) {
        double th = w->cfg.zipf_theta, z = 0;
        for (uint64_t i = 1; i <= total; i++)
            z += 1.0 / pow((double)i, th);
        w->theta = th;
        w->zetan = z;
        w->zeta2 = 1.0 + 1.0 / pow(2.0, th);
        w->alpha = 1.0 / (1.0 - th);
        w->eta = (1.0 - pow(2.0 / (double)total, 1.0 - th)) / (1.0 - w->zeta2 / z);
    }
    *out = w;
    return 0;
}

int workload_create(struct domain *d, const struct workload_config *cfg,
                    unsigned index, unsigned nr_vcpus, struct workload **out)
{
    struct ext_vec x = {0};
    pthread_mutex_lock(&d->lock);
    int rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, add_leaf, &x);
    pthread_mutex_unlock(&d->lock);
    if (rc < 0) {
        free(x.v);
        return rc;
    }
    return create_over(cfg, index, nr_vcpus, &x, out);
}

int workload_create_on(const struct workload_config *cfg, unsigned index, unsigned nr_vcpus,
                       const struct gfn_range *mem, size_t n, struct workload **out)
{
    struct ext_vec x = {0};
    for (size_t i = 0; i < n; i++) {
        gfn_t prev_end = i ? mem[i - 1].gfn + mem[i - 1].nr : 0;
        if (mem[i].nr == 0 || mem[i].gfn >= P2M_GFN_LIMIT ||
            mem[i].nr > P2M_GFN_LIMIT - mem[i].gfn || (i && mem[i].gfn < prev_end)) {
            free(x.v);
            return -EINVAL;
        }
        if (ext_push(&x, mem[i].gfn, mem[i].nr) < 0) {
            free(x.v);
            return -ENOMEM;
        }
    }
    return create_over(cfg, index, nr_vcpus, &x, out);
}

size_t workload_extents(const struct workload *w, struct gfn_range *out, size_t max)
{
    for (size_t i = 0; i < w->nr_ext && i < max; i++)
        out[i] = (struct gfn_range){w->ext[i].gfn, w->ext[i].nr};
    return w->nr_ext;
}

void workload_destroy(struct workload *w)
{
    if (!w)
        return;
    free(w->ext);
    free(w);
}

/* ---- steps ------------------------------------------------------------------ */

static double rng_unit(struct hv_rng *r) { return (double)(hv_rng_next(r) >> 11) * 0x1.0p-53; }

static uint64_t zipf_rank(struct workload *w)
{
    double u = rng_unit(&w->rng);
    double uz = u * w->zetan;
    uint64_t n = w->pages, r;
    if (uz < 1.0)
        r = 0;
    else if (uz < w->zeta2)
        r = 1;
    else
        r = (uint64_t)((double)n * pow(w->eta * u - w->eta + 1.0, w->alpha));
    return r < n ? r : n - 1;
}

static int do_write(struct workload *w, struct vcpu *v, uint64_t gpa, uint64_t val)
{
    int rc = vcpu_write(v, gpa, val);
    if (rc < 0)
        return rc;
    w->writes++;
    if (w->cfg.on_write)
        w->cfg.on_write(w->cfg.ctx, w->index, gpa, val);
    return 0;
}

static uint64_t value_of(struct workload *w, uint64_t gpa)
{
    return mix64(w->cfg.seed ^ (gpa * 0x9E3779B97F4A7C15ULL) ^ (++w->seq << 1)) | 1;
}

int workload_step(struct workload *w, struct vcpu *v)
{
    uint64_t gpa, val = 0;
    int rc;
    switch (w->cfg.kind) {
    case WL_SEQ: {
        uint64_t i = w->pos;
        if (++w->pos == w->hi) {
            w->pos = w->lo;
            w->pass++;
        }
        gpa = (workload_gfn(w, i) << PAGE_SHIFT) | (((i + w->pass) * 64) & (PAGE_SIZE - 8));
        if (w->cfg.write_frac > 0 && rng_unit(&w->rng) < w->cfg.write_frac) {
            rc = do_write(w, v, gpa, value_of(w, gpa));
            return rc < 0 ? rc : 1;
        }
        rc = vcpu_read(v, gpa, &val);
        w->checksum += val;
        return rc < 0 ? rc : 1;
    }
    case WL_UNIFORM: {
        uint64_t r = hv_rng_next(&w->rng);
        uint64_t i = hv_rng_below(&w->rng, w->pages);
        gpa = (workload_gfn(w, i) << PAGE_SHIFT) | (r & (PAGE_SIZE - 8));
        rc = vcpu_read(v, gpa, &val);
        if (rc < 0)
            return rc;
        w->checksum += val;
        if (rng_unit(&w->rng) >= w->cfg.write_frac)
            return 1;
        rc = do_write(w, v, gpa, val ^ (r | 1));
        return rc < 0 ? rc : 2;
    }
    case WL_ZIPF: {
        uint64_t rank = zipf_rank(w);
        uint64_t i = mix64(rank + 0x5bd1e995) % w->pages;
        uint64_t r = hv_rng_next(&w->rng);
        gpa = (workload_gfn(w, i) << PAGE_SHIFT) | (r & (PAGE_SIZE - 8));
        if (rng_unit(&w->rng) < w->cfg.write_frac) {
            rc = do_write(w, v, gpa, value_of(w, gpa));
            return rc < 0 ? rc : 1;
        }
        rc = vcpu_read(v, gpa, &val);
        w->checksum += val;
        return rc < 0 ? rc : 1;
    }
    case WL_WRITER: {
        uint64_t i = w->pos;
        if (++w->pos == w->hi) {
            w->pos = w->lo;
            w->pass++;
        }
        gpa = (workload_gfn(w, i) << PAGE_SHIFT) | ((w->pass * 8) & (PAGE_SIZE - 8));
        rc = do_write(w, v, gpa, value_of(w, gpa));
        return rc < 0 ? rc : 1;
    }
    default:
        return -EINVAL;
    }
}

/* ---- runner ----------------------------------------------------------------- */

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

int workload_run(struct vcpu *const *v, struct workload *const *w, unsigned n,
                 uint64_t accesses, uint64_t ns, struct workload_result *res)
{
    if (n == 0 || (accesses == 0 && ns == 0))
        return -EINVAL;
    struct workload_result r = {0};
    struct hv_rng qr = {mix64(w[0]->cfg.seed ^ 0xabcdef)};
    uint64_t writes0 = 0;
    for (unsigned i = 0; i < n; i++)
        writes0 += w[i]->writes;
    uint64_t t0 = hv_now_ns();
    int rc = 0;
    unsigned turn = 0;
    while (rc == 0) {
        if (accesses && r.accesses >= accesses)
            break;
        uint64_t now = hv_now_ns();
        if (ns && now - t0 >= ns)
            break;
        unsigned k = turn++ % n;
        struct workload *wk = w[k];
        if (wk->cfg.kind == WL_WRITER && wk->cfg.write_rate) {
            /* Hold the writer to its rate: sleep until its writes are due. */
            uint64_t due = (uint64_t)((double)wk->writes * 1e9 / (double)wk->cfg.write_rate);
            if (due > now - t0) {
                uint64_t wait = due - (now - t0);
                if (ns && now - t0 + wait > ns)
                    wait = ns - (now - t0);
                sleep_ns(wait);
            }
        }
        uint64_t q = wk->cfg.quantum ? wk->cfg.quantum : 1 + hv_rng_below(&qr, 8192);
        if (accesses && q > accesses - r.accesses)
            q = accesses - r.accesses;
        vcpu_lock(v[k]);
        for (uint64_t done = 0; done < q;) {
            int a = workload_step(wk, v[k]);
            if (a < 0) {
                rc = a;
                break;
            }
            done += (uint64_t)a;
            r.accesses += (uint64_t)a;
        }
        vcpu_unlock(v[k]);
        r.quanta++;
    }
    r.ns = hv_now_ns() - t0;
    for (unsigned i = 0; i < n; i++) {
        r.writes += w[i]->writes;
        r.checksum += w[i]->checksum;
    }
    r.writes -= writes0;
    if (res)
        *res = r;
    return rc;
}

/* ---- state (live migration) --------------------------------------------------- */

void workload_get_state(const struct workload *w, struct workload_state *st)
{
    *st = (struct workload_state){w->rng.s, w->pos, w->pass, w->seq, w->checksum, w->writes};
}

int workload_set_state(struct workload *w, const struct workload_state *st)
{
    if (st->pos < w->lo || st->pos >= w->hi)
        return -EINVAL;
    w->rng.s = st->rng;
    w->pos = st->pos;
    w->pass = st->pass;
    w->seq = st->seq;
    w->checksum = st->checksum;
    w->writes = st->writes;
    return 0;
}

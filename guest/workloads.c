/*
 * workloads.c - the built-in guest program: runs the workload its
 * parameter page names (guest/workloads.h) on its slice of the workload
 * memory, publishing its state in the parameter page after every batch, and
 * finishes after `ops` operations or when the host sets `stop`.  The writer
 * is paced to write_rate writes per second with HVG_CALL_SLEEP when it runs
 * ahead by more than a millisecond.
 */
#include "rt.h"

#define HVG_LOAD(ctx, gpa) (*(volatile uint64_t *)(uintptr_t)(gpa))
#define HVG_STORE(ctx, gpa, val) (*(volatile uint64_t *)(uintptr_t)(gpa) = (val))
#include "workloads.h"

/*
 * The balloon driver (vCPU 0): moves balloon_current towards the host's
 * balloon_target in 2M extents, topmost first, through memory calls with
 * Xen's semantics.  Deflating, a 2M extent the host cannot serve as 2M
 * comes back as a short count: the driver then asks for that extent as 512
 * 4K pages, counts the downgrade and remembers it (downgraded[]).
 */
#define BALLOON_LIST 64
static uint64_t list[HVG_MEM_MAX_EXTENTS];
static uint8_t downgraded[16384 / 8]; /* per 2M extent of a balloon up to 32 GiB */

static uint64_t balloon_gfn(const struct hvg_param *p, uint64_t k)
{
    const struct hvg_extent *last = &p->ext[p->nr_extents - 1];
    return (last->gpa >> 12) + last->pages - (k + 1) * 512;
}

static void balloon(struct hvg_param *p)
{
    volatile struct hvg_param *vp = p;
    uint64_t target = vp->balloon_target;
    if (target > p->balloon_pages)
        target = p->balloon_pages;
    target &= ~511ULL;
    while (p->balloon_current != target && !p->balloon_error && !vp->stop) {
        uint64_t cur = p->balloon_current / 512, want = target / 512, n = 0;
        if (cur < want && (p->flags & HVG_F_BALLOON_4K)) {
            /* one extent, as 512 pages of 4K */
            uint64_t g0 = balloon_gfn(p, cur);
            if (p->flags & HVG_F_BALLOON_SCRUB)
                for (uint64_t i = 0; i < 512; i++)
                    *(volatile uint64_t *)(uintptr_t)((g0 + i) << 12) = 0;
            for (uint64_t i = 0; i < 512; i++)
                list[i] = g0 + i;
            int64_t r = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 0, (uint64_t)(uintptr_t)list, 512);
            p->balloon_calls++;
            if (r != 512) {
                vp->balloon_error = r < 0 ? r : -3;
                return;
            }
            vp->balloon_current = (cur + 1) * 512;
            continue;
        }
        if (cur < want) {
            for (; n < BALLOON_LIST && cur + n < want; n++)
                list[n] = balloon_gfn(p, cur + n);
            int64_t r = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, (uint64_t)(uintptr_t)list, n);
            p->balloon_calls++;
            if (r > 0)
                vp->balloon_current = (cur + (uint64_t)r) * 512;
            if (r != (int64_t)n) {
                vp->balloon_error = r < 0 ? r : -1;
                return;
            }
            continue;
        }
        /* deflate: the extents just below cur, topmost-given-back last */
        for (; n < BALLOON_LIST && cur - n > want; n++)
            list[n] = balloon_gfn(p, cur - n - 1);
        int64_t r = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_POPULATE, 9, (uint64_t)(uintptr_t)list, n);
        p->balloon_calls++;
        if (r < 0) {
            vp->balloon_error = r;
            return;
        }
        vp->balloon_current = (cur - (uint64_t)r) * 512;
        if ((uint64_t)r == n)
            continue;
        /* extent cur - r - 1 could not be had as 2M: counted, then as 4K */
        vp->balloon_2m_failed = p->balloon_2m_failed + 1;
        uint64_t k = cur - (uint64_t)r - 1, g = balloon_gfn(p, k);
        for (uint64_t i = 0; i < 512; i++)
            list[i] = g + i;
        int64_t c = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_POPULATE, 0, (uint64_t)(uintptr_t)list, 512);
        p->balloon_calls++;
        if (c != 512) {
            vp->balloon_error = c < 0 ? c : -2;
            return;
        }
        vp->balloon_fallback_4k = p->balloon_fallback_4k + 512;
        if (k < sizeof(downgraded) * 8)
            downgraded[k / 8] |= (uint8_t)(1u << (k % 8));
        vp->balloon_current = k * 512;
    }
}

static void publish(struct hvg_param *p, const struct hvg_wl_state *st)
{
    volatile struct hvg_wl_state *d = &p->st;
    d->rng = st->rng;
    d->pos = st->pos;
    d->pass = st->pass;
    d->seq = st->seq;
    d->checksum = st->checksum;
    d->writes = st->writes;
    d->accesses = st->accesses;
    d->ops = st->ops; /* last: a reader that sees ops sees the rest */
}

int hvg_main(struct hvg_param *p)
{
    volatile struct hvg_param *vp = p;
    struct hvg_wl w;
    struct hvg_wl_state st = p->st;
    /* A state with operations done is a saved one: resume it. */
    int rc = hvg_wl_init(&w, p, &st, 0, st.ops == 0 && vp->phase < HVG_PHASE_RUN);
    if (rc < 0) {
        hvg_puts(p, "workloads: bad parameter page (");
        hvg_put_u64(p, (uint64_t)-rc);
        hvg_puts(p, ")\n");
        return 1;
    }
    if (vp->phase < HVG_PHASE_RUN) {
        vp->phase = HVG_PHASE_SETUP;
        if (p->flags & HVG_F_TOUCH) {
            uint64_t sink = 0;
            for (uint64_t i = w.lo; i < w.hi; i++)
                sink += HVG_LOAD(0, hvg_wl_page(&w, i));
            __asm__ volatile("" : : "r"(sink));
        }
        hvg_wl_setup(&w);
        vp->phase = HVG_PHASE_RUN;
    }
    uint64_t batch = p->batch ? p->batch : 4096;
    uint64_t t0 = hvg_rdtsc(), w0 = st.writes;
    while (!vp->stop && (!p->ops || st.ops < p->ops)) {
        if (p->vcpu == 0 && p->balloon_pages && vp->balloon_target != p->balloon_current)
            balloon(p);
        uint64_t n = batch;
        if (p->ops && n > p->ops - st.ops)
            n = p->ops - st.ops;
        if (p->workload == HVG_WL_WRITER && p->write_rate && p->tsc_hz) {
            /* due time of the next write, in TSC ticks since t0 (pacing
             * only: doubles are exact enough and need no libgcc) */
            uint64_t tsc = hvg_rdtsc();
            double due = (double)(st.writes - w0) * (double)p->tsc_hz / (double)p->write_rate;
            double now = (double)(tsc - t0);
            if (tsc < t0 || now > due + (double)p->tsc_hz / 10) {
                /* more than 100 ms behind, or the TSC went back: the vCPU
                 * was paused, saved or migrated (another host's TSC);
                 * pace from here rather than catch up in a burst */
                t0 = tsc;
                w0 = st.writes;
                due = now = 0;
            }
            if (due > now + (double)p->tsc_hz / 1000) {
                hvg_call(p, HVG_CALL_SLEEP,
                         (uint64_t)((due - now) * 1e9 / (double)p->tsc_hz), 0);
                continue;
            }
            uint64_t per_ms = p->write_rate / 1000 + 1;
            if (n > per_ms)
                n = per_ms;
        }
        for (uint64_t i = 0; i < n; i++)
            hvg_wl_step(&w);
        publish(p, &st);
    }
    publish(p, &st);
    return 0;
}

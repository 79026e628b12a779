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
        uint64_t n = batch;
        if (p->ops && n > p->ops - st.ops)
            n = p->ops - st.ops;
        if (p->workload == HVG_WL_WRITER && p->write_rate && p->tsc_hz) {
            /* due time of the next write, in TSC ticks since t0 (pacing
             * only: doubles are exact enough and need no libgcc) */
            double due = (double)(st.writes - w0) * (double)p->tsc_hz / (double)p->write_rate;
            double now = (double)(hvg_rdtsc() - t0);
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

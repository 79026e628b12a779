/*
 * guest.c - the guest layer (see guest.h): backend choice, the soft
 * runner, and program guests (kvm, native): loading, parameter pages, the
 * vCPU threads, their calls, and the stop protocol.
 *
 * Stop protocol of program guests.  A vCPU thread runs its vCPU until an
 * exit; while `hold` (pause, guest_call) or `halt` (stop) is set it parks
 * instead of running.  Whoever sets hold bumps `gen` and kicks every vCPU
 * (the backend makes its run return soon: KVM's immediate_exit plus a
 * signal; native: a signal whose handler parks right there), then waits
 * until parked == running.  Parking uses only atomics and futexes, because
 * the native backend parks inside a signal handler.  A vCPU that faults
 * records the first fault (fault_claimed), sets halt and kicks the others:
 * one faulting vCPU stops the guest.
 */
#include "guest.h"

#include <elf.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "guest_state.h"
#include "kvm.h"
#include "p2m.h"

#define HVG_LOAD(ctx, gpa) ((void)(ctx), (uint64_t)(gpa) * 0)
#define HVG_STORE(ctx, gpa, v) ((void)(ctx), (void)(gpa), (void)(v))
#include "../guest/workloads.h"

/* Checks a parameter page as the workload does (hvg_wl_init on a copy). */
static int hvg_wl_check(struct hvg_wl *w, const struct hvg_param *p, struct hvg_wl_state *st)
{
    return hvg_wl_init(w, p, st, NULL, 1);
}

/* ---- backends -------------------------------------------------------------- */

static const char *const backend_names[GUEST_NR_BACKENDS] = {"soft", "kvm", "native"};

const char *guest_backend_name(enum guest_backend b)
{
    return (unsigned)b < GUEST_NR_BACKENDS ? backend_names[b] : "?";
}

int guest_backend_parse(const char *s, enum guest_backend *b, bool *is_auto)
{
    if (is_auto)
        *is_auto = false;
    if (!strcmp(s, "auto")) {
        if (!is_auto)
            return -EINVAL;
        *is_auto = true;
        return 0;
    }
    for (unsigned i = 0; i < GUEST_NR_BACKENDS; i++)
        if (!strcmp(s, backend_names[i])) {
            *b = (enum guest_backend)i;
            return 0;
        }
    return -EINVAL;
}

enum guest_backend guest_backend_auto(char *why, size_t len)
{
    char r[200] = "";
    if (kvm_probe(r, sizeof(r)) == 0) {
        snprintf(why, len, "kvm: /dev/kvm runs guests here");
        return GUEST_BACKEND_KVM;
    }
    snprintf(why, len, "soft: /dev/kvm cannot run guests here (%s)", r);
    return GUEST_BACKEND_SOFT;
}

static const char *const wl_names[HVG_NR_WORKLOADS] = {"seq", "uniform", "chase", "zipf",
                                                       "writer", "custom"};

const char *guest_workload_name(enum hvg_workload w)
{
    return (unsigned)w < HVG_NR_WORKLOADS ? wl_names[w] : "?";
}

int guest_workload_parse(const char *s, enum hvg_workload *out)
{
    if (!strcmp(s, "gups")) {
        *out = HVG_WL_UNIFORM;
        return 0;
    }
    for (unsigned i = 0; i < HVG_WL_CUSTOM; i++)
        if (!strcmp(s, wl_names[i])) {
            *out = (enum hvg_workload)i;
            return 0;
        }
    return -EINVAL;
}

void guest_prog_config_default(struct guest_prog_config *c, enum hvg_workload w)
{
    *c = (struct guest_prog_config){
        .nr_vcpus = 1,
        .workload = w,
        .seed = 1,
        .console_fd = 2,
    };
}

/* ---- the soft runner --------------------------------------------------------- */

static void sleep_us(unsigned us)
{
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

static void *runner_main(void *arg)
{
    struct guest *g = arg;
    (void)pthread_setname_np(pthread_self(), "hugevm-guest");
    double tokens[GUEST_MAX_VCPUS] = {0};
    double rate = (double)g->wc.write_rate;
    uint64_t q0 = g->wc.quantum ? g->wc.quantum : 4096;
    uint64_t last = hv_now_ns();
    int rc = 0;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        if (g->pause_req && !g->stop) {
            g->paused = true;
            pthread_cond_broadcast(&g->cv);
            while (g->pause_req && !g->stop)
                pthread_cond_wait(&g->cv, &g->mu);
            g->paused = false;
            last = hv_now_ns();
        }
        bool stop = g->stop;
        pthread_mutex_unlock(&g->mu);
        if (stop)
            break;
        uint64_t now = hv_now_ns();
        double dt = (double)(now - last) / 1e9;
        last = now;
        bool ran = false;
        for (unsigned k = 0; k < g->nr_vcpus && rc == 0; k++) {
            uint64_t q = q0;
            if (rate > 0) {
                tokens[k] += dt * rate;
                double cap = rate / 20 + (double)q0;
                if (tokens[k] > cap)
                    tokens[k] = cap;
                if (tokens[k] < 1)
                    continue;
                if ((double)q > tokens[k])
                    q = (uint64_t)tokens[k];
            }
            uint64_t done = 0;
            vcpu_lock(g->v[k]);
            while (done < q) {
                int a = workload_step(g->w[k], g->v[k]);
                if (a < 0) {
                    rc = a;
                    break;
                }
                done += (uint64_t)a;
            }
            vcpu_unlock(g->v[k]);
            tokens[k] -= (double)done;
            __atomic_add_fetch(&g->accesses, done, __ATOMIC_RELAXED);
            ran = true;
        }
        if (rc)
            break;
        if (!ran)
            sleep_us(500);
    }
    pthread_mutex_lock(&g->mu);
    g->err = rc;
    g->exited = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static struct guest *guest_alloc(struct domain *d, enum guest_backend b)
{
    struct guest *g = hv_calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->d = d;
    g->backend = b;
    g->fault.vcpu = -1;
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->memcall_mu, NULL);
    pthread_mutex_init(&g->memcall_serial, NULL);
    pthread_cond_init(&g->cv, NULL);
    return g;
}

int guest_create_soft(struct domain *d, unsigned nr_vcpus, const struct tlb_config *tc,
                      const struct workload_config *wc, struct guest **out)
{
    if (nr_vcpus > GUEST_MAX_VCPUS || (nr_vcpus && !wc))
        return -EINVAL;
    struct guest *g = guest_alloc(d, GUEST_BACKEND_SOFT);
    if (!g)
        return -ENOMEM;
    if (tc)
        g->tc = *tc;
    else
        tlb_config_default(&g->tc);
    if (wc)
        g->wc = *wc;
    int rc = 0;
    for (unsigned i = 0; i < nr_vcpus && rc == 0; i++) {
        rc = vcpu_create(d, i, &g->tc, &g->v[i]);
        if (rc == 0)
            rc = workload_create(d, &g->wc, i, nr_vcpus, &g->w[i]);
        g->nr_vcpus = i + 1;
    }
    if (rc < 0) {
        guest_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* ---- futexes ------------------------------------------------------------------ */

static void futex_wake(uint32_t *w)
{
    (void)syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Wait while *w == val, at most ns (0: no limit). */
static void futex_wait(uint32_t *w, uint32_t val, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    (void)syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, ns ? &ts : NULL, NULL, 0);
}

static uint32_t ld32(const uint32_t *w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }

/* Wait while post-copy fills memory (no map change meanwhile). */
static void postcopy_wait(struct guest *g)
{
    for (uint32_t v; (v = ld32(&g->postcopy)) != 0;)
        futex_wait(&g->postcopy, v, 100 * 1000 * 1000);
}

void guest_postcopy_begin(struct guest *g)
{
    __atomic_store_n(&g->postcopy, 1, __ATOMIC_RELEASE);
}

void guest_postcopy_end(struct guest *g)
{
    __atomic_store_n(&g->postcopy, 0, __ATOMIC_RELEASE);
    futex_wake(&g->postcopy);
}

static void bump_gen(struct guest *g)
{
    __atomic_add_fetch(&g->gen, 1, __ATOMIC_ACQ_REL);
    futex_wake(&g->gen);
}

bool guest_park(struct guest *g, unsigned i)
{
    /* not (any more) waiting in a PoD fault: it is here */
    __atomic_fetch_and(&g->blocked_mask, ~(1ULL << i), __ATOMIC_ACQ_REL);
    __atomic_fetch_or(&g->parked_mask, 1ULL << i, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&g->parked, 1, __ATOMIC_ACQ_REL);
    futex_wake(&g->parked);
    bool halt;
    for (;;) {
        uint32_t gen = ld32(&g->gen);
        halt = __atomic_load_n(&g->halt, __ATOMIC_ACQUIRE);
        if (halt || !__atomic_load_n(&g->hold, __ATOMIC_ACQUIRE))
            break;
        futex_wait(&g->gen, gen, 0);
    }
    __atomic_fetch_and(&g->parked_mask, ~(1ULL << i), __ATOMIC_ACQ_REL);
    __atomic_sub_fetch(&g->parked, 1, __ATOMIC_ACQ_REL);
    futex_wake(&g->parked);
    return halt;
}

static void kick_all(struct guest *g)
{
    for (unsigned i = 0; i < g->nr_vcpus; i++)
        g->x->ops->kick(g->x, i);
    g->st.kicks += g->nr_vcpus;
}

/* vCPUs stopped: parked, or (unless strict) blocked in a PoD fault the
 * server has not resolved; `self` (-1: none) counts as stopped. */
static unsigned stopped_vcpus(struct guest *g, int self, bool strict)
{
    uint64_t m = __atomic_load_n(&g->parked_mask, __ATOMIC_ACQUIRE);
    if (!strict)
        m |= __atomic_load_n(&g->blocked_mask, __ATOMIC_ACQUIRE);
    if (self >= 0)
        m |= 1ULL << self;
    return (unsigned)__builtin_popcountll(m);
}

/* Make every running vCPU but `self` (-1: none) park and wait until they
 * have.  Holds nest (hold counts them): a vCPU's memory call inside a
 * pause keeps the others parked when it releases its own hold.  Not
 * strict: a vCPU blocked in a PoD fault counts as stopped (it runs no
 * guest code until the fault server wakes it); a pause is strict (its
 * vCPUs' state is read and nothing may change after it). */
static void hold_vcpus_how(struct guest *g, int self, bool strict)
{
    __atomic_add_fetch(&g->hold, 1, __ATOMIC_ACQ_REL);
    bump_gen(g);
    if (!g->threads_live && self < 0)
        return;
    /* every vCPU not parked is kicked at least once, also one counted as
     * stopped because it waits in a PoD fault: woken, it must come out
     * (its kick pending) before it runs guest code again */
    uint64_t pm = __atomic_load_n(&g->parked_mask, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < g->nr_vcpus; i++)
        if ((int)i != self && !(pm & (1ULL << i)))
            g->x->ops->kick(g->x, i);
    for (;;) {
        uint32_t parked = ld32(&g->parked), running = ld32(&g->running);
        if (stopped_vcpus(g, self, strict) >= running)
            break;
        for (unsigned i = 0; i < g->nr_vcpus; i++)
            if ((int)i != self)
                g->x->ops->kick(g->x, i);
        __atomic_add_fetch(&g->st.kicks, g->nr_vcpus - (self >= 0), __ATOMIC_RELAXED);
        futex_wait(&g->parked, parked, 10 * 1000 * 1000);
    }
}


static void release_vcpus(struct guest *g)
{
    __atomic_sub_fetch(&g->hold, 1, __ATOMIC_ACQ_REL);
    bump_gen(g);
}

/* ---- program guests: faults and calls ------------------------------------------ */

static void claim_fault(struct guest *g, unsigned i, int err, unsigned vector, uint64_t rip,
                        uint64_t addr, const char *what)
{
    if (__atomic_exchange_n(&g->fault_claimed, 1, __ATOMIC_ACQ_REL) == 0) {
        g->fault.vcpu = (int)i;
        g->fault.vector = vector;
        g->fault.rip = rip;
        g->fault.addr = addr;
        snprintf(g->fault.what, sizeof(g->fault.what), "vCPU %u: %s", i, what);
        g->err = err;
    }
    __atomic_store_n(&g->halt, 1, __ATOMIC_RELEASE);
    bump_gen(g);
}

static const char *vector_name(unsigned v)
{
    static const char *const n[] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
                                    "#DF", "?", "#TS", "#NP", "#SS", "#GP", "#PF", "?",
                                    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP"};
    return v < ARRAY_SIZE(n) ? n[v] : "interrupt";
}

/* After a failed sync the mirror is empty: look the pages up again (and
 * find none) rather than read through a stale address. */
static void forget_params(struct guest *g)
{
    for (unsigned i = 0; i < HVG_MAX_VCPUS; i++)
        __atomic_store_n(&g->param[i], NULL, __ATOMIC_RELEASE);
}

/* vCPU i's parameter page.  The host address of a gpa never changes in
 * either mirror (kvm: base + gpa, native: gpa), so it is looked up once:
 * a thread reading the published state never walks the mirror's run list
 * while a memory call's sync replaces it. */
static struct hvg_param *param_of(struct guest *g, unsigned i)
{
    if (i >= HVG_MAX_VCPUS)
        return NULL;
    struct hvg_param *p = __atomic_load_n(&g->param[i], __ATOMIC_ACQUIRE);
    if (!p) {
        p = g->x->ops->gpa_ptr(g->x, HVG_PARAM_GPA(i));
        __atomic_store_n(&g->param[i], p, __ATOMIC_RELEASE);
    }
    return p;
}

static void console_keep(struct guest *g, const char *s, size_t n)
{
    static int lock;
    while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE))
        ;
    if (n > GUEST_CONSOLE_KEEP)
        s += n - GUEST_CONSOLE_KEEP, n = GUEST_CONSOLE_KEEP;
    if (g->console_len + n > GUEST_CONSOLE_KEEP) {
        size_t drop = g->console_len + n - GUEST_CONSOLE_KEEP;
        memmove(g->console, g->console + drop, g->console_len - drop);
        g->console_len -= (uint32_t)drop;
    }
    memcpy(g->console + g->console_len, s, n);
    g->console_len += (uint32_t)n;
    g->console[g->console_len] = 0;
    __atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
}

/*
 * A guest's memory call (hugevm_guest.h, HVG_CALL_MEMORY), from vCPU i's
 * thread: checks every argument before touching anything (the list must
 * lie in guest RAM; every gfn aligned to the order, above the runtime's
 * system area and below the p2m's limit), then, with the other vCPUs parked
 * and d->lock held, does the extents in order and stops at the first that
 * fails; the mirror is brought up to date before anyone runs on.  A 2M
 * populate is exact (domain_map_extent): the host never substitutes 4K
 * pages on this path, it counts the refusal (guest_2m_refused) and the
 * guest sees a short count.  Memory calls of several vCPUs are serialised;
 * a vCPU waiting for its turn counts as parked.  Returns the count done or
 * -errno.  (The native backend calls this from its trap handler, which
 * interrupted guest code holding no host lock, so taking locks and
 * allocating here cannot deadlock with the interrupted context.)
 */
static int64_t memory_call(struct guest *g, unsigned i, uint64_t op, uint64_t order,
                           uint64_t list_gpa, uint64_t n)
{
    if (op != HVG_MEM_DECREASE && op != HVG_MEM_POPULATE)
        return -EINVAL;
    if (order != PAGE_ORDER_4K && order != PAGE_ORDER_2M)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (n > HVG_MEM_MAX_EXTENTS)
        return -E2BIG;
    if (list_gpa & 7)
        return -EINVAL;
    /* copied first, page by page through the mirror (the list may cross a
     * page): the guest cannot change it under us */
    uint64_t list[HVG_MEM_MAX_EXTENTS];
    for (uint64_t off = 0; off < n * 8;) {
        uint64_t a = list_gpa + off, chunk = PAGE_SIZE - (a & (PAGE_SIZE - 1));
        if (chunk > n * 8 - off)
            chunk = n * 8 - off;
        const uint8_t *lp = a >= list_gpa ? g->x->ops->gpa_ptr(g->x, a) : NULL;
        if (!lp)
            return -EFAULT;
        memcpy((uint8_t *)list + off, lp, chunk);
        off += chunk;
    }
    uint64_t nr = order_pages((unsigned)order);
    gfn_t low = HVG_SYSTEM_END >> PAGE_SHIFT;
    /* whether all extents are valid is checked up front */
    for (uint64_t k = 0; k < n; k++)
        if (!is_aligned_order(list[k], (unsigned)order) || list[k] < low ||
            list[k] >= P2M_GFN_LIMIT - nr)
            return -EINVAL;
    /* waiting for another call: parked (it may be holding the vCPUs) */
    __atomic_fetch_or(&g->parked_mask, 1ULL << i, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&g->parked, 1, __ATOMIC_ACQ_REL);
    futex_wake(&g->parked);
    postcopy_wait(g);
    pthread_mutex_lock(&g->memcall_serial);
    __atomic_fetch_and(&g->parked_mask, ~(1ULL << i), __ATOMIC_ACQ_REL);
    __atomic_sub_fetch(&g->parked, 1, __ATOMIC_ACQ_REL);
    /* every other vCPU parked, none waiting in a PoD fault (under KVM a
     * memslot change waits for a vCPU's fault to end: the fault server
     * serves it meanwhile, memcall_mu is free), then memcall_mu */
    hold_vcpus_how(g, (int)i, true);
    pthread_mutex_lock(&g->memcall_mu);
    struct domain *d = g->d;
    int64_t done = 0;
    domain_lock(d);
    for (; done < (int64_t)n; done++) {
        gfn_t gf = list[done];
        if (op == HVG_MEM_DECREASE) {
            /* nothing there to give back stops the call, as in Xen */
            enum p2m_type t;
            (void)p2m_get_entry(d->p2m, gf, &t, NULL);
            if (!p2m_is_ram(t) && t != p2m_pod)
                break;
            if (domain_decrease_reservation(d, gf, nr) < 0)
                break;
        } else {
            int rc = domain_map_extent(d, gf, (unsigned)order, NULL);
            if (rc < 0) {
                if (order == PAGE_ORDER_2M && (rc == -ENOMEM || rc == -EDQUOT))
                    d->stats.guest_2m_refused++;
                break;
            }
        }
    }
    domain_unlock(d);
    g->st.memory_calls++;
    if (done > 0 && g->x->ops->sync(g->x) < 0) {
        done = -EIO; /* the mirror is empty now: the vCPUs fault, never read
                      * frames the domain gave back */
        forget_params(g);
    }
    g->st.syncs++;
    pthread_mutex_unlock(&g->memcall_mu);
    release_vcpus(g);
    pthread_mutex_unlock(&g->memcall_serial);
    return done;
}

/* Async-signal-safe but for memory calls (see memory_call). */
/* A call's result, written into the guest's parameter page by the host: a
 * write KVM's dirty log does not see, so it is logged by hand (a live
 * migration must send it). */
static void set_ret(struct guest *g, unsigned i, volatile struct hvg_param *vp, int64_t ret)
{
    vp->call_ret = ret;
    if (g->x->ops->host_wrote)
        g->x->ops->host_wrote(g->x, HVG_PARAM_GPA(i) >> PAGE_SHIFT);
}

int guest_serve_call(struct guest *g, unsigned i, uint32_t nr)
{
    struct hvg_param *p = param_of(g, i);
    __atomic_add_fetch(&g->st.calls, 1, __ATOMIC_RELAXED);
    if (!p)
        return -EFAULT;
    volatile struct hvg_param *vp = p;
    switch (nr) {
    case HVG_CALL_CONSOLE: {
        uint32_t n = vp->console_len;
        char buf[sizeof(p->console) + 32];
        if (n > sizeof(p->console))
            n = sizeof(p->console);
        memcpy(buf, p->console, n);
        console_keep(g, buf, n);
        __atomic_add_fetch(&g->st.console_bytes, n, __ATOMIC_RELAXED);
        if (g->pc.console_fd >= 0 && n) {
            char pre[24];
            int k = snprintf(pre, sizeof(pre), "guest[%u]: ", i);
            if (k > 0)
                (void)!write(g->pc.console_fd, pre, (size_t)k);
            (void)!write(g->pc.console_fd, buf, n);
        }
        set_ret(g, i, vp, 0);
        return 1;
    }
    case HVG_CALL_SLEEP: {
        uint64_t ns = vp->args[0];
        if (ns > 100 * 1000 * 1000ULL)
            ns = 100 * 1000 * 1000ULL;
        __atomic_add_fetch(&g->st.sleeps, 1, __ATOMIC_RELAXED);
        /* in slices, so a pause or a stop is not held up */
        while (ns && !__atomic_load_n(&g->hold, __ATOMIC_ACQUIRE) &&
               !__atomic_load_n(&g->halt, __ATOMIC_ACQUIRE)) {
            uint64_t s = ns < 1000000 ? ns : 1000000;
            struct timespec ts = {0, (long)s};
            nanosleep(&ts, NULL);
            ns -= s;
        }
        set_ret(g, i, vp, 0);
        return 1;
    }
    case HVG_CALL_YIELD:
        set_ret(g, i, vp, 0);
        return 1;
    case HVG_CALL_MEMORY:
        set_ret(g, i, vp, memory_call(g, i, vp->args[0], vp->args[1], vp->args[2], vp->args[3]));
        return 1;
    case HVG_CALL_DONE:
        if (vp->args[0] != 0) {
            char what[96];
            snprintf(what, sizeof(what), "the program reported failure (code %lld)",
                     (long long)vp->args[0]);
            claim_fault(g, i, -EPROTO, 0, 0, 0, what);
            return -EPROTO;
        }
        return 0;
    default:
        set_ret(g, i, vp, -ENOSYS); /* the guest sees it; nothing else happens */
        return 1;
    }
}

/* ---- program guests: the PoD fault server --------------------------------------- */

/*
 * One thread per program guest whose backend maps PoD gfns as userfaultfd
 * placeholders.  A touch of one blocks the touching vCPU in a missing-page
 * fault; the server reads it and
 *  - with a PoD cache that can serve it (pod_demand_populate_cached: no
 *    zero check, no sweep, nothing changes but the touched entry), maps
 *    the new leaf into the mirror while the other vCPUs run on;
 *  - with an empty cache, stops every vCPU (a vCPU waiting in a fault
 *    counts as stopped), runs Xen's demand populate (eager reclaim, the
 *    bounded sweeps) and syncs the mirror: reclaim unmaps RAM, which no
 *    vCPU may be writing;
 *  - when nothing is left to reclaim, the domain has crashed (Xen's rule,
 *    the reason in its event log) and the guest fails with that reason;
 * then wakes the faulting vCPU.  A touch of a gfn that is neither RAM nor
 * PoD fails the guest (an access outside RAM).  While the guest is paused
 * the server maps nothing (the memory map at a pause is final).
 */

static void pod_kick(struct guest *g)
{
    if (g->pod_live) {
        char c = 1;
        (void)!write(g->pod_wake[1], &c, 1);
    }
}

static int vcpu_of_tid(struct guest *g, int tid)
{
    for (unsigned i = 0; i < g->nr_vcpus; i++)
        if (__atomic_load_n(&g->tid[i], __ATOMIC_ACQUIRE) == tid)
            return (int)i;
    return -1;
}

static void pod_wake_vcpu(struct guest *g, int fd, uint64_t hva, int v)
{
    /* the bit goes before the wake: once woken the vCPU may run guest code,
     * and a hold must then kick it out rather than count it stopped (a
     * hold kicks every vCPU it does not find parked) */
    if (v >= 0) {
        __atomic_fetch_and(&g->blocked_mask, ~(1ULL << v), __ATOMIC_SEQ_CST);
        futex_wake(&g->parked);
    }
    struct uffdio_range r = {.start = hva & ~(uint64_t)(PAGE_SIZE - 1), .len = PAGE_SIZE};
    (void)ioctl(fd, UFFDIO_WAKE, &r);
}

/* The guest failed at this fault: let the vCPU out of it (a vCPU waiting
 * inside KVM_RUN cannot always be kicked out) onto a scratch page of its
 * own; it is halted and never runs guest code again. */
static void pod_unblock(struct guest *g, int fd, uint64_t hva, int v)
{
    void *p = (void *)(uintptr_t)(hva & ~(uint64_t)(PAGE_SIZE - 1));
    (void)mmap(p, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
               -1, 0);
    pod_wake_vcpu(g, fd, hva, v);
}

/* Run lists retired by PoD faults kept at most (then a held sync frees them). */
#define POD_RETIRED_MAX (8u << 20)

/* The server's queue of faults read but not served yet (server thread only). */
#define POD_QUEUE 256
struct pod_fault {
    uint64_t hva;
    int vcpu;
    bool write;
};
static __thread struct pod_fault pod_q[POD_QUEUE];
static __thread unsigned pod_qh, pod_qn;

/* Read what faults the userfaultfd holds (without waiting) into the queue;
 * their vCPUs count as stopped from now on (they wait for us). */
static void pod_drain(struct guest *g, int fd)
{
    while (pod_qn < POD_QUEUE) {
        struct uffd_msg m[16];
        size_t room = POD_QUEUE - pod_qn < 16 ? POD_QUEUE - pod_qn : 16;
        ssize_t r = read(fd, m, room * sizeof(m[0]));
        if (r <= 0)
            break;
        for (size_t k = 0; k < (size_t)r / sizeof(m[0]); k++) {
            if (m[k].event != UFFD_EVENT_PAGEFAULT)
                continue;
            int v = vcpu_of_tid(g, (int)m[k].arg.pagefault.feat.ptid);
            /* it waits on that page as long as the mirror does not map it
             * (a vCPU pulled out of the wait retries the same access); a
             * fault on a page mapped since is stale and counts for nothing.
             * Only KVM's: a native vCPU's wait is a user fault, which the
             * kick always interrupts (it then parks) */
            uint64_t gfn = g->x->ops->hva_gfn(g->x, m[k].arg.pagefault.address);
            if (v >= 0 && g->backend == GUEST_BACKEND_KVM &&
                (gfn == INVALID_GFN || !g->x->ops->gpa_ptr(g->x, gfn << PAGE_SHIFT)))
                __atomic_fetch_or(&g->blocked_mask, 1ULL << v, __ATOMIC_ACQ_REL);
            pod_q[(pod_qh + pod_qn++) % POD_QUEUE] = (struct pod_fault){
                m[k].arg.pagefault.address, v,
                (m[k].arg.pagefault.flags &
                 (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) != 0};
        }
    }
    futex_wake(&g->parked);
}

/* memcall_mu for the server, which keeps reading faults while it waits:
 * the holder may be a vCPU's memory call waiting for another vCPU that has
 * just faulted (inside KVM_RUN, where no kick reaches it) and counts as
 * stopped only once the server has read its fault. */
static void pod_lock_memcall(struct guest *g, int fd)
{
    while (pthread_mutex_trylock(&g->memcall_mu) != 0) {
        pod_drain(g, fd);
        struct pollfd p = {fd, POLLIN, 0};
        (void)poll(&p, 1, 1);
    }
}

/* The server's hold: as hold_vcpus, but while it waits it keeps reading
 * faults (a vCPU that faults meanwhile waits in the fault, inside KVM_RUN
 * perhaps, where no kick reaches it: it counts as stopped once read). */
static void pod_hold(struct guest *g, int fd)
{
    __atomic_add_fetch(&g->hold, 1, __ATOMIC_ACQ_REL);
    bump_gen(g);
    uint64_t pm = __atomic_load_n(&g->parked_mask, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < g->nr_vcpus; i++)
        if (!(pm & (1ULL << i)))
            g->x->ops->kick(g->x, i);
    for (;;) {
        pod_drain(g, fd);
        uint32_t parked = ld32(&g->parked), running = ld32(&g->running);
        if (stopped_vcpus(g, -1, false) >= running)
            break;
        for (unsigned i = 0; i < g->nr_vcpus; i++)
            g->x->ops->kick(g->x, i);
        futex_wait(&g->parked, parked, 1000 * 1000);
    }
}

/*
 * A read of a PoD gfn never written: the zero page, write-protected, over
 * the 2M around it (or its 4K leaf), so reading PoD memory takes nothing
 * from the PoD cache (no populate, no reclaim of what was just populated:
 * no thrash).  The vCPUs are stopped meanwhile, so that no write lands on
 * the zero page before it is write-protected (that write would go to
 * anonymous memory, not to the guest's).  A later write is a
 * write-protect fault: populated then.  0, or -errno (then populate).
 */
static int pod_zero_read(struct guest *g, int fd, uint64_t gfn)
{
    struct domain *d = g->d;
    struct guest_exec *x = g->x;
    pod_hold(g, fd);
    pod_lock_memcall(g, fd);
    domain_lock(d);
    enum p2m_type t;
    unsigned o;
    (void)p2m_get_entry(d->p2m, gfn, &t, &o);
    int rc = -EAGAIN;
    if (t == p2m_pod) {
        unsigned zo = o < PAGE_ORDER_2M ? o : PAGE_ORDER_2M;
        uint64_t base = gfn & ~(order_pages(zo) - 1);
        uint64_t lo = x->ops->gfn_hva(x, base), len = order_pages(zo) << PAGE_SHIFT;
        struct uffdio_zeropage z = {.range = {lo, len}, .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE};
        rc = ioctl(fd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST ? -errno : 0;
        /* (DONTWAKE goes with un-protecting only) */
        struct uffdio_writeprotect w = {.range = {lo, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
        if (rc == 0 && ioctl(fd, UFFDIO_WRITEPROTECT, &w) < 0)
            rc = -errno;
        if (rc < 0) {
            /* whatever zero pages went in must not stay writable: back to
             * missing (the placeholder again) */
            (void)madvise((void *)(uintptr_t)lo, len, MADV_DONTNEED);
        }
    }
    domain_unlock(d);
    pthread_mutex_unlock(&g->memcall_mu);
    release_vcpus(g);
    return rc;
}

/* Serve one fault at host address hva by vCPU v (-1: unknown), a write
 * (to a missing page or to a read's zero page) or not. */
static void pod_serve(struct guest *g, int fd, uint64_t hva, int v, bool write)
{
    struct domain *d = g->d;
    struct guest_exec *x = g->x;
    uint64_t gfn = x->ops->hva_gfn(x, hva);
    unsigned vi = v >= 0 ? (unsigned)v : 0;
    int rc;
    g->pod.faults++;
    /* memcall_mu first (every mirror sync holds it), then d->lock */
    pod_lock_memcall(g, fd);
    domain_lock(d);
    enum p2m_type t = p2m_invalid;
    unsigned o = 0;
    if (gfn != INVALID_GFN)
        (void)p2m_get_entry(d->p2m, gfn, &t, &o);
    if (p2m_is_ram(t) && x->ops->gpa_ptr(x, gfn << PAGE_SHIFT)) {
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
        g->pod.already++;
        pod_wake_vcpu(g, fd, hva, v); /* another fault populated it */
        return;
    }
    if (p2m_is_ram(t)) {
        /* RAM the mirror does not show yet: the full way (a sync) */
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
        rc = -ENOSPC;
        goto held;
    }
    if (t == p2m_pod && !write) {
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
        if (pod_zero_read(g, fd, gfn) == 0) {
            g->pod.zero_reads++;
            pod_wake_vcpu(g, fd, hva, v);
            return;
        }
        /* not PoD any more, or the zero page could not go in: as a write */
        pod_lock_memcall(g, fd);
        domain_lock(d);
        (void)p2m_get_entry(d->p2m, gfn, &t, &o);
        if (t != p2m_pod) {
            domain_unlock(d);
            pthread_mutex_unlock(&g->memcall_mu);
            rc = -ENOSPC;
            goto held; /* a sync sorts it out */
        }
    }
    if (t != p2m_pod) {
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
        g->pod.outside++;
        char what[160];
        snprintf(what, sizeof(what), "access outside RAM at gpa %#llx (neither RAM nor PoD)",
                 (unsigned long long)(gfn << PAGE_SHIFT));
        claim_fault(g, vi, -EFAULT, 0, 0, gfn << PAGE_SHIFT, what);
        kick_all(g);
        pod_unblock(g, fd, hva, v);
        return;
    }
    rc = pod_demand_populate_cached(d, gfn);
    if (rc == 0) {
        mfn_t mfn = p2m_get_entry(d->p2m, gfn, &t, &o);
        gfn_t base = gfn & ~(order_pages(o) - 1);
        rc = p2m_is_ram(t) ? x->ops->pod_mapped(x, base, o, mfn - (gfn - base)) : -EINVAL;
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
        if (rc == 0) {
            g->pod.served_cached++;
            pod_wake_vcpu(g, fd, hva, v);
            return;
        }
        /* the mirror could not take it alone: the full way below */
    } else {
        domain_unlock(d);
        pthread_mutex_unlock(&g->memcall_mu);
    }
held:
    if (rc != -ESRCH) {
        /* post-copy: the map stays as it is until every page is here */
        while (ld32(&g->postcopy)) {
            pod_drain(g, fd);
            struct pollfd p = {fd, POLLIN, 0};
            (void)poll(&p, 1, 1);
        }
        pod_hold(g, fd);
        pod_lock_memcall(g, fd);
        for (unsigned k = 0; k < 1000; k++) {
            domain_lock(d);
            rc = pod_demand_populate(d, gfn);
            domain_unlock(d);
            if (rc != -EAGAIN)
                break; /* -EAGAIN: a sweep ran out of budget; it resumes */
        }
        long sy = x->ops->sync(x);
        g->st.syncs++;
        if (sy < 0) {
            forget_params(g);
            rc = rc < 0 ? rc : (int)sy;
        }
        pthread_mutex_unlock(&g->memcall_mu);
        release_vcpus(g);
        g->pod.served_held++;
    }
    if (rc < 0) {
        char what[200];
        snprintf(what, sizeof(what), "PoD fault at gpa %#llx: %s",
                 (unsigned long long)(gfn << PAGE_SHIFT),
                 d->crashed ? "the domain crashed: out of PoD memory (the guest touched more "
                              "than its target and no zero page was left to reclaim)"
                            : strerror(-rc));
        claim_fault(g, vi, rc == -ESRCH ? -ENOMEM : rc, 0, 0, gfn << PAGE_SHIFT, what);
        kick_all(g);
        pod_unblock(g, fd, hva, v);
        return;
    }
    pod_wake_vcpu(g, fd, hva, v);
}

static void *pod_server_main(void *arg)
{
    struct guest *g = arg;
    int fd = g->x->ops->pod_fd(g->x);
    (void)pthread_setname_np(pthread_self(), "hugevm-pod");
    for (;;) {
        bool paused = __atomic_load_n(&g->pod_paused, __ATOMIC_ACQUIRE);
        struct pollfd p[2] = {{g->pod_wake[0], POLLIN, 0}, {fd, paused ? 0 : POLLIN, 0}};
        if (poll(p, 2, 1000) < 0 && errno != EINTR)
            break;
        if (p[0].revents) {
            char buf[64];
            (void)!read(g->pod_wake[0], buf, sizeof(buf));
            if (__atomic_load_n(&g->pod_stop, __ATOMIC_ACQUIRE))
                break;
        }
        __atomic_add_fetch(&g->pod_serving, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&g->pod_paused, __ATOMIC_SEQ_CST)) {
            pod_drain(g, fd);
            while (pod_qn) {
                struct pod_fault f = pod_q[pod_qh];
                pod_qh = (pod_qh + 1) % POD_QUEUE;
                pod_qn--;
                pod_serve(g, fd, f.hva, f.vcpu, f.write);
            }
            if (g->x->ops->retired_bytes && g->x->ops->retired_bytes(g->x) > POD_RETIRED_MAX) {
                /* the run lists replaced fault by fault: a sync with the
                 * vCPUs held frees them and compacts the mirror's runs */
                pod_hold(g, fd);
                pod_lock_memcall(g, fd);
                if (g->x->ops->sync(g->x) < 0)
                    forget_params(g);
                g->st.syncs++;
                pthread_mutex_unlock(&g->memcall_mu);
                release_vcpus(g);
            }
        }
        __atomic_sub_fetch(&g->pod_serving, 1, __ATOMIC_ACQ_REL);
        futex_wake(&g->pod_serving);
    }
    return NULL;
}

/* 0, or -errno: then a touch of a PoD placeholder would wait forever, so
 * the guest must not start. */
static int pod_server_start(struct guest *g)
{
    if (g->pod_live || !g->x->ops->pod_fd || g->x->ops->pod_fd(g->x) < 0)
        return 0;
    if (pipe2(g->pod_wake, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    __atomic_store_n(&g->pod_stop, 0, __ATOMIC_RELEASE);
    int rc = pthread_create(&g->pod_thread, NULL, pod_server_main, g);
    if (rc != 0) {
        close(g->pod_wake[0]);
        close(g->pod_wake[1]);
        return -rc;
    }
    g->pod_live = true;
    return 0;
}

static void pod_server_stop(struct guest *g)
{
    if (!g->pod_live)
        return;
    __atomic_store_n(&g->pod_stop, 1, __ATOMIC_RELEASE);
    pod_kick(g);
    pthread_join(g->pod_thread, NULL);
    close(g->pod_wake[0]);
    close(g->pod_wake[1]);
    g->pod_live = false;
}

/* ---- program guests: vCPU threads ------------------------------------------------ */

struct vcpu_arg {
    struct guest *g;
    unsigned i;
};

static void *vcpu_main(void *arg)
{
    struct vcpu_arg *va = arg;
    struct guest *g = va->g;
    unsigned i = va->i;
    free(va);
    __atomic_store_n(&g->tid[i], (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
    char name[16];
    snprintf(name, sizeof(name), "hugevm-vcpu%u", i);
    (void)pthread_setname_np(pthread_self(), name);
    int rc = 0;
    for (;;) {
        if (__atomic_load_n(&g->hold, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&g->halt, __ATOMIC_ACQUIRE)) {
            if (guest_park(g, i))
                break;
            continue;
        }
        struct guest_exit ex = {0};
        rc = g->x->ops->run(g->x, i, &ex);
        /* out of the guest: not waiting in a PoD fault, whatever the server
         * has read */
        __atomic_fetch_and(&g->blocked_mask, ~(1ULL << i), __ATOMIC_ACQ_REL);
        __atomic_add_fetch(&g->st.exits, 1, __ATOMIC_RELAXED);
        if (rc < 0) {
            char what[200];
            snprintf(what, sizeof(what), "the %s backend failed: %s", g->x->ops->name,
                     ex.what[0] ? ex.what : strerror(-rc));
            claim_fault(g, i, rc, 0, 0, 0, what);
            break;
        }
        char what[200];
        if (ex.kind == GUEST_EXIT_KICK)
            continue;
        if (ex.kind == GUEST_EXIT_CALL) {
            int r = guest_serve_call(g, i, ex.call);
            if (r == 1)
                continue;
            rc = r;
            break;
        }
        if (ex.kind == GUEST_EXIT_EXCEPTION) {
            /* a #GP at an in/out: a port the I/O bitmap does not open */
            const uint8_t *ip = ex.vector == 13 ? g->x->ops->gpa_ptr(g->x, ex.rip) : NULL;
            char port[96] = "";
            if (ip && ((ex.rip + 1) & (PAGE_SIZE - 1)) != 0) {
                if (ip[0] == 0xe6 || ip[0] == 0xe7 || ip[0] == 0xe4 || ip[0] == 0xe5)
                    snprintf(port, sizeof(port), " (%s port %#x: only `out %#x, al` is a call)",
                             ip[0] >= 0xe6 ? "out to" : "in from", ip[1], HVG_PORT);
                else if (ip[0] >= 0xec && ip[0] <= 0xef)
                    snprintf(port, sizeof(port), " (%s the port in dx: only `out %#x, al` is a "
                             "call)", ip[0] >= 0xee ? "out to" : "in from", HVG_PORT);
            }
            if (ex.vector == 14)
                snprintf(what, sizeof(what), "%s (vector %u) at rip %#llx, address %#llx, "
                         "error code %#llx", vector_name(ex.vector), ex.vector,
                         (unsigned long long)ex.rip, (unsigned long long)ex.addr,
                         (unsigned long long)ex.error_code);
            else
                snprintf(what, sizeof(what), "%s (vector %u) at rip %#llx, error code %#llx%s",
                         vector_name(ex.vector), ex.vector, (unsigned long long)ex.rip,
                         (unsigned long long)ex.error_code, port);
            rc = -EFAULT;
            claim_fault(g, i, rc, ex.vector, ex.rip, ex.addr, what);
        } else if (ex.kind == GUEST_EXIT_FAULT) {
            snprintf(what, sizeof(what), "%s of gpa %#llx outside guest RAM at rip %#llx",
                     ex.write ? "write" : "read", (unsigned long long)ex.gpa,
                     (unsigned long long)ex.rip);
            rc = -EFAULT;
            claim_fault(g, i, rc, 0, ex.rip, ex.gpa, what);
        } else {
            snprintf(what, sizeof(what), "%s", ex.what[0] ? ex.what : "backend error");
            rc = ex.err ? ex.err : -EIO;
            claim_fault(g, i, rc, 0, ex.rip, 0, what);
        }
        break;
    }
    g->vcpu_rc[i] = rc;
    if (g->x->ops->thread_exit)
        g->x->ops->thread_exit(g->x, i);
    if (rc < 0) /* one vCPU's fault stops the guest */
        for (unsigned k = 0; k < g->nr_vcpus; k++)
            if (k != i)
                g->x->ops->kick(g->x, k);
    __atomic_sub_fetch(&g->running, 1, __ATOMIC_ACQ_REL);
    futex_wake(&g->running);
    futex_wake(&g->parked);
    return NULL;
}

/* ---- program guests: create ---------------------------------------------------- */

struct mem_walk {
    struct hvg_extent ext[HVG_MAX_EXTENTS];
    uint32_t n;
    bool too_many;
    gfn_t sys_missing; /* first system gfn that is not RAM (0: none) */
    uint64_t sys_seen;
};

static bool sys_gfn(gfn_t g)
{
    return g >= 0x10 && g < (HVG_SYSTEM_END >> PAGE_SHIFT) &&
           !(g >= VGA_HOLE_GFN && g < VGA_HOLE_GFN + VGA_HOLE_NR);
}

static int mem_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                    ept_entry_t *e)
{
    struct mem_walk *w = ctx;
    (void)mfn, (void)e;
    /* workload memory is RAM or PoD (populated on first touch) */
    if (!p2m_is_ram(type) && type != p2m_pod)
        return 0;
    uint64_t nr = order_pages(order);
    gfn_t sys_end = HVG_SYSTEM_END >> PAGE_SHIFT;
    for (gfn_t g = gfn; g < gfn + nr && g < sys_end && p2m_is_ram(type); g++)
        w->sys_seen += sys_gfn(g);
    if (gfn + nr <= sys_end)
        return 0;
    if (gfn < sys_end) {
        nr -= sys_end - gfn;
        gfn = sys_end;
    }
    uint64_t gpa = gfn << PAGE_SHIFT;
    if (w->n && w->ext[w->n - 1].gpa + (w->ext[w->n - 1].pages << PAGE_SHIFT) == gpa) {
        w->ext[w->n - 1].pages += nr;
        return 0;
    }
    if (w->n == HVG_MAX_EXTENTS) {
        w->too_many = true;
        return 0;
    }
    w->ext[w->n++] = (struct hvg_extent){gpa, nr};
    return 0;
}

static uint64_t tsc_hz_estimate(void)
{
    static uint64_t hz;
    if (hz)
        return hz;
    uint32_t lo, hi;
    uint64_t t0 = hv_now_ns();
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    uint64_t c0 = (uint64_t)hi << 32 | lo;
    sleep_us(20000);
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    uint64_t c1 = (uint64_t)hi << 32 | lo, t1 = hv_now_ns();
    hz = (uint64_t)((double)(c1 - c0) * 1e9 / (double)(t1 - t0));
    return hz;
}

/* Load the program (flat built-in or a user's ELF) and write the parameter
 * pages; zero the stacks. */
static int load_guest(struct guest *g, const struct mem_walk *mw, char *why, size_t len)
{
    struct guest_exec *x = g->x;
    uint8_t *img = hv_calloc(1, HVG_PROG_MAX);
    if (!img)
        return -ENOMEM;
    int rc = 0;
    if (g->pc.program) {
        rc = guest_prog_load(g->pc.program, g->pc.program_len, img, &g->entry, why, len);
    } else {
        if (hvg_prog_workloads_len > HVG_PROG_MAX) {
            rc = -ENOEXEC;
            snprintf(why, len, "the built-in guest program is larger than HVG_PROG_MAX");
        }
        memcpy(img, hvg_prog_workloads, hvg_prog_workloads_len);
        g->entry = HVG_PROG_GPA;
    }
    /* copy page by page through the mirror (the pages need not be
     * contiguous on the host) */
    for (uint64_t off = 0; rc == 0 && off < HVG_PROG_MAX; off += PAGE_SIZE) {
        uint8_t *dst = x->ops->gpa_ptr(x, HVG_PROG_GPA + off);
        if (!dst) {
            rc = -EINVAL;
            snprintf(why, len, "the program area (gpa %#llx) is not guest RAM",
                     (unsigned long long)(HVG_PROG_GPA + off));
            break;
        }
        memcpy(dst, img + off, PAGE_SIZE);
    }
    free(img);
    for (uint64_t a = HVG_STACK_TOP(0) - HVG_STACK_BYTES;
         rc == 0 && a < HVG_STACK_TOP(g->nr_vcpus - 1); a += PAGE_SIZE) {
        uint8_t *dst = x->ops->gpa_ptr(x, a);
        if (dst)
            memset(dst, 0, PAGE_SIZE);
    }
    double theta = g->pc.zipf_theta > 0 ? g->pc.zipf_theta : 0.99;
    union {
        double d;
        uint64_t u;
    } tb = {theta};
    static const uint32_t def_ppm[HVG_NR_WORKLOADS] = {0, 1000000, 0, 200000, 1000000, 0};
    for (unsigned i = 0; rc == 0 && i < g->nr_vcpus; i++) {
        struct hvg_param *p = param_of(g, i);
        if (!p) {
            rc = -EINVAL;
            snprintf(why, len, "vCPU %u's parameter page (gpa %#llx) is not guest RAM", i,
                     (unsigned long long)HVG_PARAM_GPA(i));
            break;
        }
        memset(p, 0, PAGE_SIZE);
        *p = (struct hvg_param){
            .magic = HVG_MAGIC,
            .abi = HVG_ABI_VERSION,
            .vcpu = i,
            .nr_vcpus = g->nr_vcpus,
            .workload = g->pc.program ? HVG_WL_CUSTOM : g->pc.workload,
            .guest_page_order = x->guest_page_order,
            .seed = g->pc.seed,
            .ops = g->pc.ops,
            .write_ppm = g->pc.write_ppm_set ? g->pc.write_ppm : def_ppm[g->pc.workload],
            .wss_ppm = g->pc.wss_ppm,
            .write_rate = g->pc.write_rate,
            .tsc_hz = tsc_hz_estimate(),
            .zipf_theta_bits = tb.u,
            .batch = g->pc.batch ? g->pc.batch : 4096,
            .nr_extents = mw->n,
            .flags = (g->pc.touch_first ? HVG_F_TOUCH : 0) |
                     (g->pc.balloon_4k ? HVG_F_BALLOON_4K : 0) |
                     (g->pc.balloon_scrub ? HVG_F_BALLOON_SCRUB : 0),
            .balloon_pages = g->pc.balloon_pages,
        };
        memcpy(p->ext, mw->ext, mw->n * sizeof(mw->ext[0]));
        if (i == 0) {
            g->tmpl = hv_malloc(sizeof(*p));
            if (!g->tmpl) {
                rc = -ENOMEM;
                break;
            }
            memcpy(g->tmpl, p, sizeof(*p));
        }
        rc = x->ops->reset(x, i, g->entry, HVG_STACK_TOP(i), HVG_PARAM_GPA(i));
        if (rc < 0)
            snprintf(why, len, "setting vCPU %u's registers: %s", i, strerror(-rc));
    }
    return rc;
}

int guest_create_prog(struct domain *d, enum guest_backend b, const struct guest_prog_config *pc,
                      struct guest **out, char *why, size_t len)
{
    char dummy[8];
    if (!why || !len)
        why = dummy, len = sizeof(dummy);
    why[0] = 0;
    if (b != GUEST_BACKEND_KVM && b != GUEST_BACKEND_NATIVE) {
        snprintf(why, len, "backend %s does not run guest programs", guest_backend_name(b));
        return -EINVAL;
    }
    if (pc->nr_vcpus == 0 || pc->nr_vcpus > HVG_MAX_VCPUS) {
        snprintf(why, len, "%u vCPUs: a program guest has 1 to %u", pc->nr_vcpus,
                 HVG_MAX_VCPUS);
        return -EINVAL;
    }
    if (!pc->program && (pc->workload >= HVG_WL_CUSTOM || pc->write_ppm > 1000000u ||
                         pc->wss_ppm > 1000000u || !(pc->zipf_theta >= 0 && pc->zipf_theta < 1))) {
        snprintf(why, len, "bad workload parameters (workload %u, write %u ppm, wss %u ppm, "
                 "theta %g)", pc->workload, pc->write_ppm, pc->wss_ppm, pc->zipf_theta);
        return -EINVAL;
    }
    struct mem_walk *mw = hv_calloc(1, sizeof(*mw));
    if (!mw)
        return -ENOMEM;
    pthread_mutex_lock(&d->lock);
    /* a PoD guest's runtime pages (the first 4 MiB) are populated now:
     * the host writes them before any vCPU runs */
    int rc = 0;
    for (gfn_t gf = 0x10; rc == 0 && gf < (HVG_SYSTEM_END >> PAGE_SHIFT); gf++) {
        enum p2m_type t;
        (void)p2m_get_entry(d->p2m, gf, &t, NULL);
        /* from the cache: a reclaim would take back the zero pages just
         * populated before the host writes them */
        if (t == p2m_pod && (rc = pod_demand_populate_cached(d, gf)) == -ENOSPC)
            rc = pod_demand_populate(d, gf);
        if (rc < 0)
            snprintf(why, len, "populating the PoD guest's runtime pages (gfn %#llx): %s",
                     (unsigned long long)gf, strerror(-rc));
    }
    if (rc == 0)
        rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, mem_leaf, mw);
    pthread_mutex_unlock(&d->lock);
    uint64_t sys_need = 0;
    for (gfn_t gf = 0; gf < (HVG_SYSTEM_END >> PAGE_SHIFT); gf++)
        sys_need += sys_gfn(gf);
    if (rc == 0 && mw->sys_seen != sys_need) {
        snprintf(why, len, "the guest's first %llu MiB (gfn 0x10-0x%llx, but the VGA hole) must "
                 "be RAM", (unsigned long long)(HVG_SYSTEM_END >> 20),
                 (unsigned long long)((HVG_SYSTEM_END >> PAGE_SHIFT) - 1));
        rc = -EINVAL;
    } else if (rc == 0 && (mw->too_many || mw->n == 0)) {
        snprintf(why, len, mw->n ? "guest RAM above %llu MiB is in more than %u runs"
                                 : "no guest RAM above %llu MiB for the workloads",
                 (unsigned long long)(HVG_SYSTEM_END >> 20), HVG_MAX_EXTENTS);
        rc = -EINVAL;
    }
    if (rc < 0) {
        free(mw);
        return rc;
    }
    struct guest *g = guest_alloc(d, b);
    if (!g) {
        free(mw);
        return -ENOMEM;
    }
    g->pc = *pc;
    g->nr_vcpus = pc->nr_vcpus;
    g->fresh = true;
    rc = b == GUEST_BACKEND_KVM
             ? kvm_exec_create(g, g->d, g->nr_vcpus, pc->guest_page_order, &g->x, why, len)
             : native_exec_create(g, g->d, g->nr_vcpus, &g->x, why, len);
    if (rc == 0)
        rc = load_guest(g, mw, why, len);
    free(mw);
    if (rc < 0) {
        guest_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* ---- life cycle ------------------------------------------------------------------- */

static bool is_prog(const struct guest *g) { return g->backend != GUEST_BACKEND_SOFT; }

void guest_destroy(struct guest *g)
{
    if (!g)
        return;
    guest_stop(g);
    for (unsigned i = 0; i < g->nr_vcpus && !is_prog(g); i++) {
        workload_destroy(g->w[i]);
        vcpu_destroy(g->v[i]);
    }
    if (g->x)
        g->x->ops->destroy(g->x);
    free(g->tmpl);
    pthread_mutex_destroy(&g->mu);
    pthread_mutex_destroy(&g->memcall_mu);
    pthread_mutex_destroy(&g->memcall_serial);
    pthread_cond_destroy(&g->cv);
    free(g);
}

int guest_start(struct guest *g)
{
    if (g->started || !g->nr_vcpus)
        return 0;
    g->stop = g->pause_req = g->paused = g->exited = false;
    g->err = 0;
    if (!is_prog(g)) {
        int rc = pthread_create(&g->thread, NULL, runner_main, g);
        if (rc)
            return -rc;
        g->started = true;
        return 0;
    }
    guest_signals_install();
    int prc = pod_server_start(g); /* before any vCPU can touch PoD memory */
    if (prc < 0)
        return prc;
    __atomic_store_n(&g->halt, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&g->running, g->nr_vcpus, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        struct vcpu_arg *va = malloc(sizeof(*va));
        if (va)
            *va = (struct vcpu_arg){g, i};
        int rc = va ? pthread_create(&g->threads[i], NULL, vcpu_main, va) : ENOMEM;
        if (rc) {
            free(va);
            /* the threads started so far stop; this vCPU never ran */
            __atomic_sub_fetch(&g->running, g->nr_vcpus - i, __ATOMIC_ACQ_REL);
            __atomic_store_n(&g->halt, 1, __ATOMIC_RELEASE);
            bump_gen(g);
            for (unsigned k = 0; k < i; k++) {
                g->x->ops->kick(g->x, k);
                pthread_join(g->threads[k], NULL);
            }
            pod_server_stop(g);
            return -rc;
        }
    }
    g->threads_live = true;
    g->started = true;
    return 0;
}

void guest_pause(struct guest *g)
{
    pthread_mutex_lock(&g->mu);
    g->pause_req = true;
    if (!is_prog(g)) {
        /* pause_req also stops guest_call for a guest without a runner */
        while (g->started && !g->paused && !g->exited)
            pthread_cond_wait(&g->cv, &g->mu);
    } else {
        hold_vcpus_how(g, -1, true);
        /* the fault server maps nothing more until resume: wait for the
         * fault it may be serving */
        __atomic_store_n(&g->pod_paused, 1, __ATOMIC_SEQ_CST);
        for (uint32_t v; (v = __atomic_load_n(&g->pod_serving, __ATOMIC_SEQ_CST)) != 0;)
            futex_wait(&g->pod_serving, v, 10 * 1000 * 1000);
        g->paused = true;
    }
    pthread_mutex_unlock(&g->mu);
}

void guest_resume(struct guest *g)
{
    pthread_mutex_lock(&g->mu);
    g->pause_req = false;
    if (is_prog(g)) {
        g->paused = false;
        __atomic_store_n(&g->pod_paused, 0, __ATOMIC_RELEASE);
        pod_kick(g);
        release_vcpus(g);
    }
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int guest_call(struct guest *g, int (*fn)(struct domain *d, void *ctx), void *ctx)
{
    int rc = -EAGAIN;
    postcopy_wait(g);
    pthread_mutex_lock(&g->mu);
    if (!g->pause_req && !g->stop) {
        if (is_prog(g)) {
            /* a vCPU's memory call is over (or waits, counted as parked):
             * the two never change memory or sync the mirror together;
             * strict: no vCPU waiting in a PoD fault either (see
             * memory_call) */
            pthread_mutex_lock(&g->memcall_serial);
            hold_vcpus_how(g, -1, true);
            pthread_mutex_lock(&g->memcall_mu);
        }
        domain_lock(g->d);
        rc = fn(g->d, ctx);
        domain_unlock(g->d);
        if (is_prog(g)) {
            long s = g->x->ops->sync(g->x);
            g->st.syncs++;
            if (s < 0)
                forget_params(g);
            if (s < 0 && rc >= 0)
                rc = (int)s; /* the mirror is empty: the vCPUs fault rather
                              * than reach frames the domain gave back */
            pthread_mutex_unlock(&g->memcall_mu);
            release_vcpus(g);
            pthread_mutex_unlock(&g->memcall_serial);
        }
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

/* ---- log-dirty ----------------------------------------------------------------- */

/* Program guests: every vCPU stopped (held, on top of a pause if there is
 * one) and guest memory calls shut out, for a change of the domain's log
 * or of the backend's; quiesce_end syncs the mirror (the domain's log
 * changes the p2m's generation, and the vCPUs refuse a stale mirror). */
static void quiesce(struct guest *g)
{
    postcopy_wait(g);
    pthread_mutex_lock(&g->mu);
    pthread_mutex_lock(&g->memcall_serial);
    hold_vcpus_how(g, -1, true); /* strict: memslot flags change (memory_call) */
    pthread_mutex_lock(&g->memcall_mu);
}

static int quiesce_end(struct guest *g, int rc)
{
    long s = g->x->ops->sync(g->x);
    g->st.syncs++;
    if (s < 0)
        forget_params(g);
    if (s < 0 && rc >= 0)
        rc = (int)s;
    pthread_mutex_unlock(&g->memcall_mu);
    release_vcpus(g);
    pthread_mutex_unlock(&g->memcall_serial);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

int guest_log_dirty_enable(struct guest *g, enum dirty_mode mode, char *why, size_t len)
{
    if (dirty_enabled(g->d)) {
        snprintf(why, len, "log-dirty is already on");
        return -EBUSY;
    }
    if (!is_prog(g)) {
        int rc = dirty_enable(g->d, mode);
        if (rc < 0)
            snprintf(why, len, "enabling log-dirty (%s): %s", dirty_mode_name(mode),
                     strerror(-rc));
        return rc;
    }
    if (!g->x->ops->log_dirty) {
        snprintf(why, len, "the %s backend has no dirty log of guest writes", g->x->ops->name);
        return -ENOTSUP;
    }
    quiesce(g);
    int rc = dirty_enable(g->d, mode);
    if (rc < 0) {
        snprintf(why, len, "enabling log-dirty (%s): %s", dirty_mode_name(mode), strerror(-rc));
    } else if ((rc = g->x->ops->log_dirty(g->x, true)) < 0) {
        snprintf(why, len, "enabling the %s dirty log: %s", g->x->ops->name, strerror(-rc));
        if (dirty_disable(g->d, NULL, 0, NULL) < 0)
            snprintf(why + strlen(why), len - strlen(why), "; switching log-dirty off failed");
    }
    return quiesce_end(g, rc);
}

int guest_log_dirty_disable(struct guest *g)
{
    if (!is_prog(g))
        return dirty_disable(g->d, NULL, 0, NULL);
    quiesce(g);
    int rc = g->x->ops->log_dirty(g->x, false);
    int rc2 = dirty_disable(g->d, NULL, 0, NULL);
    return quiesce_end(g, rc < 0 ? rc : rc2);
}

bool guest_log_dirty_on(struct guest *g) { return dirty_enabled(g->d); }

uint64_t guest_dirty_gfns(struct guest *g)
{
    domain_lock(g->d);
    uint64_t n = dirty_bitmap_gfns(g->d);
    domain_unlock(g->d);
    if (is_prog(g) && g->x->ops->dirty_gfns) {
        uint64_t k = g->x->ops->dirty_gfns(g->x);
        n = k > n ? k : n;
    }
    return n;
}

int guest_harvest(struct guest *g, uint64_t *bm, uint64_t nr, uint64_t *dirty)
{
    int rc;
    if (!is_prog(g)) {
        rc = dirty_harvest(g->d, bm, nr, NULL);
    } else if (!g->x->ops->harvest) {
        return -ENOTSUP;
    } else if (nr < guest_dirty_gfns(g)) {
        return -EINVAL;
    } else {
        quiesce(g);
        /* -ENOMEM: the domain's log lost track (every page is dirty for
         * the caller); the backend's is still read, to re-arm it */
        rc = dirty_harvest(g->d, bm, nr, NULL);
        if (rc == 0 || rc == -ENOMEM) {
            int k = g->x->ops->harvest(g->x, bm, nr);
            rc = k < 0 ? k : rc;
        }
        rc = quiesce_end(g, rc);
    }
    if (rc == 0 && dirty) {
        uint64_t n = 0;
        for (uint64_t w = 0; w < (nr + 63) / 64; w++)
            n += (uint64_t)__builtin_popcountll(bm[w]);
        *dirty = n;
    }
    return rc;
}

int guest_can_migrate(struct guest *g, char *why, size_t len)
{
    if (!is_prog(g))
        return 0;
    if (!g->x->ops->log_dirty || !g->x->ops->harvest) {
        snprintf(why, len, "the %s backend has no dirty log of guest writes: a live migration "
                 "could not know what the guest wrote (use the kvm backend)", g->x->ops->name);
        return -ENOTSUP;
    }
    if (!g->x->ops->get_state) {
        snprintf(why, len, "the %s backend cannot capture its vCPUs' state", g->x->ops->name);
        return -ENOTSUP;
    }
    if (g->backend == GUEST_BACKEND_NATIVE) {
        char r[200];
        int rc = native_dirty_log_probe(r, sizeof(r));
        if (rc < 0) {
            snprintf(why, len, "the native backend cannot migrate here: %s", r);
            return rc;
        }
    }
    return 0;
}

const char *guest_dirty_source(struct guest *g)
{
    if (!is_prog(g))
        return "the domain's log (soft vCPUs: PML model)";
    return g->x->ops->dirty_source ? g->x->ops->dirty_source(g->x) : "none";
}

int guest_encode(struct guest *g, struct hvctx_buf *b)
{
    if (is_prog(g))
        return guest_prog_encode(g, b);
    return g->nr_vcpus ? guest_state_encode(b, g->nr_vcpus, g->v, g->w, &g->wc) : 0;
}

void guest_stop(struct guest *g)
{
    if (!g->started)
        return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    if (!is_prog(g)) {
        pthread_join(g->thread, NULL);
    } else {
        __atomic_store_n(&g->halt, 1, __ATOMIC_RELEASE);
        bump_gen(g);
        /* a stopped guest's faults are still served (a vCPU waiting in
         * one must come out to stop): the server goes last */
        __atomic_store_n(&g->pod_paused, 0, __ATOMIC_RELEASE);
        pod_kick(g);
        if (g->threads_live) {
            kick_all(g);
            for (unsigned i = 0; i < g->nr_vcpus; i++)
                pthread_join(g->threads[i], NULL);
            g->threads_live = false;
        }
        pod_server_stop(g);
    }
    g->started = false;
}

int guest_wait(struct guest *g, uint64_t timeout_ns)
{
    if (!is_prog(g))
        return -EINVAL;
    uint64_t t0 = hv_now_ns();
    for (;;) {
        uint32_t r = ld32(&g->running);
        if (r == 0 || __atomic_load_n(&g->fault_claimed, __ATOMIC_ACQUIRE))
            break;
        uint64_t el = hv_now_ns() - t0;
        if (timeout_ns && el >= timeout_ns)
            return -ETIMEDOUT;
        uint64_t w = timeout_ns ? timeout_ns - el : 0;
        futex_wait(&g->running, r, w && w < 100000000 ? w : 100000000);
    }
    guest_stop(g);
    return g->fault_claimed ? (g->err ? g->err : -EIO) : 0;
}

int guest_finish(struct guest *g, uint64_t timeout_ns)
{
    if (!is_prog(g))
        return -EINVAL;
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        struct hvg_param *p = param_of(g, i);
        if (p)
            __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    }
    int rc = guest_wait(g, timeout_ns);
    if (rc == -ETIMEDOUT)
        guest_stop(g);
    return rc;
}

/* ---- inspection --------------------------------------------------------------------- */

uint64_t guest_accesses(struct guest *g)
{
    if (!is_prog(g))
        return __atomic_load_n(&g->accesses, __ATOMIC_RELAXED);
    uint64_t n = 0;
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        struct hvg_param *p = param_of(g, i);
        if (p)
            n += __atomic_load_n(&p->st.accesses, __ATOMIC_RELAXED);
    }
    return n;
}

bool guest_running_phase(struct guest *g)
{
    if (!is_prog(g))
        return true;
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        struct hvg_param *p = param_of(g, i);
        if (!p || __atomic_load_n(&p->phase, __ATOMIC_ACQUIRE) < HVG_PHASE_RUN)
            return false;
    }
    return true;
}

int guest_vcpu_state(struct guest *g, unsigned i, struct hvg_wl_state *st)
{
    if (!is_prog(g) || i >= g->nr_vcpus)
        return -EINVAL;
    struct hvg_param *p = param_of(g, i);
    if (!p)
        return -EFAULT;
    /* ops is published last: read it first, then the rest */
    uint64_t ops = __atomic_load_n(&p->st.ops, __ATOMIC_ACQUIRE);
    *st = p->st;
    st->ops = ops;
    return 0;
}

int guest_mmu_pages(struct guest *g, uint64_t pages[3])
{
    if (!is_prog(g) || !g->x->ops->mmu_pages)
        return -ENOTSUP;
    return g->x->ops->mmu_pages(g->x, pages);
}

struct prefault_walk {
    struct guest *g;
    gfn_t lo, hi;
    int rc;
};

static int prefault_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                         ept_entry_t *e)
{
    struct prefault_walk *w = ctx;
    (void)mfn, (void)e;
    if (!p2m_is_ram(type))
        return 0; /* PoD gfns stay for their first touch (the fault server) */
    gfn_t lo = gfn > w->lo ? gfn : w->lo, hi = gfn + order_pages(order);
    hi = hi < w->hi ? hi : w->hi;
    uint8_t *p = lo < hi ? guest_gpa_ptr(w->g, lo << PAGE_SHIFT) : NULL;
    if (!p)
        return 0;
    uint64_t bytes = (hi - lo) << PAGE_SHIFT;
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, bytes, MADV_POPULATE_WRITE) == 0)
        return 0;
#endif
    for (uint64_t k = 0; k < bytes; k += PAGE_SIZE)
        __atomic_fetch_add((volatile uint8_t *)(p + k), 0, __ATOMIC_RELAXED);
    return 0;
}

int64_t guest_prefault(struct guest *g)
{
    if (!is_prog(g) || g->started)
        return -EINVAL;
    uint64_t t0 = hv_now_ns();
    for (uint32_t e = 0; e < g->tmpl->nr_extents; e++) {
        const struct hvg_extent *x = &g->tmpl->ext[e];
        struct prefault_walk w = {g, x->gpa >> PAGE_SHIFT, (x->gpa >> PAGE_SHIFT) + x->pages, 0};
        domain_lock(g->d);
        (void)p2m_for_each_leaf(g->d->p2m, w.lo, x->pages, prefault_leaf, &w);
        domain_unlock(g->d);
    }
    return (int64_t)(hv_now_ns() - t0);
}

int guest_host_mapping(struct guest *g, uint64_t *rss, uint64_t *pmd)
{
    if (!is_prog(g) || !g->x->ops->host_mapping)
        return -ENOTSUP;
    return g->x->ops->host_mapping(g->x, rss, pmd);
}

unsigned guest_page_order(const struct guest *g)
{
    return is_prog(g) ? g->x->guest_page_order : 0;
}

void *guest_gpa_ptr(struct guest *g, uint64_t gpa)
{
    return is_prog(g) ? g->x->ops->gpa_ptr(g->x, gpa) : NULL;
}

/* ---- ELF ---------------------------------------------------------------------------- */

int guest_prog_load(const void *elf, size_t len, uint8_t *img, uint64_t *entry, char *why,
                    size_t whylen)
{
    const uint8_t *b = elf;
    Elf64_Ehdr eh;
    memset(img, 0, HVG_PROG_MAX);
    if (len < sizeof(eh) || memcmp(b, ELFMAG, SELFMAG) != 0) {
        snprintf(why, whylen, "not an ELF file (%zu bytes, no ELF magic at offset 0)", len);
        return -ENOEXEC;
    }
    memcpy(&eh, b, sizeof(eh));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
        snprintf(why, whylen, "not a 64-bit little-endian ELF (class %u, data %u at offset 4)",
                 eh.e_ident[EI_CLASS], eh.e_ident[EI_DATA]);
        return -ENOEXEC;
    }
    if (eh.e_machine != EM_X86_64 || eh.e_type != ET_EXEC) {
        snprintf(why, whylen, "not an x86-64 executable (e_machine %u, e_type %u): link it with "
                 "guest/guest.ld, without -pie", eh.e_machine, eh.e_type);
        return -ENOEXEC;
    }
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64 ||
        eh.e_phoff > len || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > len - eh.e_phoff) {
        snprintf(why, whylen, "bad program header table (offset %llu, %u entries of %u bytes) "
                 "in a %zu-byte file", (unsigned long long)eh.e_phoff, eh.e_phnum,
                 eh.e_phentsize, len);
        return -ENOEXEC;
    }
    bool entry_ok = false;
    unsigned loads = 0;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, b + eh.e_phoff + i * sizeof(ph), sizeof(ph));
        if (ph.p_type == PT_INTERP || ph.p_type == PT_DYNAMIC) {
            snprintf(why, whylen, "program header %u asks for dynamic linking: a guest is "
                     "static and freestanding", i);
            return -ENOEXEC;
        }
        if (ph.p_type != PT_LOAD)
            continue;
        loads++;
        uint64_t lo = HVG_PROG_GPA, hi = HVG_PROG_GPA + HVG_PROG_MAX;
        if (ph.p_filesz > ph.p_memsz || ph.p_vaddr < lo || ph.p_memsz > hi - lo ||
            ph.p_vaddr - lo > hi - lo - ph.p_memsz) {
            snprintf(why, whylen, "segment %u (vaddr %#llx, %llu bytes) is outside the program "
                     "area [%#llx, %#llx)", i, (unsigned long long)ph.p_vaddr,
                     (unsigned long long)ph.p_memsz, (unsigned long long)lo,
                     (unsigned long long)hi);
            return -ENOEXEC;
        }
        if (ph.p_offset > len || ph.p_filesz > len - ph.p_offset) {
            snprintf(why, whylen, "segment %u's %llu bytes at file offset %llu lie beyond the "
                     "end of the %zu-byte file", i, (unsigned long long)ph.p_filesz,
                     (unsigned long long)ph.p_offset, len);
            return -ENOEXEC;
        }
        memcpy(img + (ph.p_vaddr - lo), b + ph.p_offset, ph.p_filesz);
        if ((ph.p_flags & PF_X) && eh.e_entry >= ph.p_vaddr &&
            eh.e_entry < ph.p_vaddr + ph.p_memsz)
            entry_ok = true;
    }
    if (!loads) {
        snprintf(why, whylen, "no PT_LOAD segment");
        return -ENOEXEC;
    }
    if (!entry_ok) {
        snprintf(why, whylen, "entry point %#llx is not inside an executable segment",
                 (unsigned long long)eh.e_entry);
        return -ENOEXEC;
    }
    *entry = eh.e_entry;
    return 0;
}

/* ---- saving and resuming program guests ---------------------------------------- */

int guest_prog_encode(struct guest *g, struct hvctx_buf *b)
{
    if (!is_prog(g) || !g->x->ops->get_state)
        return -ENOTSUP;
    if (g->started && !g->paused)
        return -EBUSY;
    struct hvctx_prog_vcpu *s = hv_calloc(1, sizeof(*s));
    struct hvctx_prog_ext *e = g->x->ops->get_ext ? hv_malloc(sizeof(*e)) : NULL;
    if (!s || (g->x->ops->get_ext && !e)) {
        free(s);
        free(e);
        return -ENOMEM;
    }
    int rc = 0;
    for (unsigned i = 0; rc == 0 && i < g->nr_vcpus; i++) {
        memset(s, 0, sizeof(*s));
        rc = g->x->ops->get_state(g->x, i, s);
        if (rc < 0)
            break;
        s->vcpu = i;
        s->nr_vcpus = g->nr_vcpus;
        s->backend = (uint32_t)g->backend;
        s->flags = g->fresh ? HVCTX_PROG_F_FRESH : 0;
        rc = hvctx_add(b, HVCTX_PROG_VCPU, HVCTX_F_CRITICAL, s, sizeof(*s));
        if (rc == 0 && e) {
            memset(e, 0, offsetof(struct hvctx_prog_ext, xsave));
            rc = g->x->ops->get_ext(g->x, i, e);
            if (rc == 0)
                rc = guest_state_prog_ext_encode(b, i, e);
        }
    }
    free(s);
    free(e);
    return rc;
}

int guest_prog_decode(const void *area, size_t len, struct guest_prog_state *st, char *err,
                      size_t errlen)
{
    const uint8_t *a = area;
    bool seen[HVG_MAX_VCPUS] = {0};
    unsigned nr = 0, found = 0;
    struct guest_state_ext_seen ext = {0, 0};
    size_t ext_at = 0;
    memset(st, 0, sizeof(*st));
    for (size_t pos = 0;;) {
        struct hvctx_tlv t;
        const uint8_t *val;
        size_t at = pos;
        int more = hvctx_area_next(a, len, &pos, &t, &val, err, errlen);
        if (more <= 0) {
            if (more < 0)
                return more;
            break;
        }
        if (t.type == HVCTX_PROG_VCPU) {
            struct hvctx_prog_vcpu s;
            if (t.length != sizeof(s)) {
                snprintf(err, errlen, "HVM_CONTEXT: PROG_VCPU TLV at %zu of %u bytes (want %zu)",
                         at, t.length, sizeof(s));
                return -EBADMSG;
            }
            memcpy(&s, val, sizeof(s));
            if (s.nr_vcpus == 0 || s.nr_vcpus > HVG_MAX_VCPUS || s.vcpu >= s.nr_vcpus ||
                (nr && s.nr_vcpus != nr) || seen[s.vcpu] ||
                (s.backend != GUEST_BACKEND_KVM && s.backend != GUEST_BACKEND_NATIVE) ||
                (found && s.backend != st->v[0].backend) ||
                (s.backend == GUEST_BACKEND_KVM && s.guest_page_order != PAGE_ORDER_2M &&
                 s.guest_page_order != PAGE_ORDER_1G) ||
                (s.backend == GUEST_BACKEND_NATIVE && s.guest_page_order != 0) ||
                (found && s.guest_page_order != st->v[0].guest_page_order) ||
                (found && (s.flags & HVCTX_PROG_F_FRESH) != (st->v[0].flags & HVCTX_PROG_F_FRESH))) {
                snprintf(err, errlen, "HVM_CONTEXT: PROG_VCPU TLV at %zu: vCPU %u of %u, backend "
                         "%u, guest page order %u: inconsistent", at, s.vcpu, s.nr_vcpus,
                         s.backend, s.guest_page_order);
                return -EBADMSG;
            }
            nr = s.nr_vcpus;
            seen[s.vcpu] = true;
            st->v[s.vcpu] = s;
            found++;
        } else if (t.type == HVCTX_PROG_XSAVE || t.type == HVCTX_PROG_MSRS) {
            if (!ext.xsave && !ext.msrs)
                ext_at = at;
            int rc = guest_state_prog_ext_decode(t.type, val, t.length, at, st->ext,
                                                 HVG_MAX_VCPUS, &ext, err, errlen);
            if (rc < 0)
                return rc;
        }
    }
    if (!found && (ext.xsave || ext.msrs)) {
        snprintf(err, errlen, "HVM_CONTEXT: %s TLV at %zu without the PROG_VCPU TLVs it "
                 "extends", ext.xsave ? "PROG_XSAVE" : "PROG_MSRS", ext_at);
        return -EBADMSG;
    }
    if (!found)
        return 0;
    if (found != nr) {
        snprintf(err, errlen, "HVM_CONTEXT: %u of %u program vCPUs", found, nr);
        return -EBADMSG;
    }
    int rc = guest_state_prog_ext_check(&ext, nr, st->v[0].backend == GUEST_BACKEND_KVM, err,
                                        errlen);
    if (rc < 0)
        return rc;
    st->has_xsave = ext.xsave != 0;
    st->has_msrs = ext.msrs != 0;
    st->nr_vcpus = nr;
    return 1;
}

enum guest_backend guest_prog_state_backend(const struct guest_prog_state *st)
{
    return st->v[0].backend == GUEST_BACKEND_NATIVE ? GUEST_BACKEND_NATIVE : GUEST_BACKEND_KVM;
}

int guest_create_prog_resume(struct domain *d, const struct guest_prog_state *st,
                             struct guest **out, char *why, size_t len)
{
    if (st->nr_vcpus == 0 || st->nr_vcpus > HVG_MAX_VCPUS) {
        snprintf(why, len, "no program vCPU state");
        return -EINVAL;
    }
    enum guest_backend b = guest_prog_state_backend(st);
    struct guest *g = guest_alloc(d, b);
    if (!g)
        return -ENOMEM;
    g->nr_vcpus = st->nr_vcpus;
    g->fresh = (st->v[0].flags & HVCTX_PROG_F_FRESH) != 0;
    guest_prog_config_default(&g->pc, HVG_WL_UNIFORM);
    g->pc.nr_vcpus = st->nr_vcpus;
    int rc = b == GUEST_BACKEND_KVM
                 ? kvm_exec_create(g, g->d, g->nr_vcpus, st->v[0].guest_page_order, &g->x, why,
                                   len)
                 : native_exec_create(g, g->d, g->nr_vcpus, &g->x, why, len);
    if (rc == 0 && !g->x->ops->set_state) {
        snprintf(why, len, "the %s backend cannot set a vCPU's state", g->x->ops->name);
        rc = -ENOTSUP;
    }
    struct hvg_param *p = rc == 0 ? param_of(g, 0) : NULL;
    if (rc == 0 && !p) {
        snprintf(why, len, "vCPU 0's parameter page (gpa %#llx) is not guest RAM",
                 (unsigned long long)HVG_PARAM_GPA(0));
        rc = -EINVAL;
    }
    if (rc == 0) {
        /* the parameter page came with the guest's memory: checked as the
         * workload itself checks it before the host relies on it */
        g->tmpl = hv_malloc(sizeof(*g->tmpl));
        struct hvg_wl w;
        struct hvg_wl_state wst;
        if (!g->tmpl) {
            rc = -ENOMEM;
        } else {
            memcpy(g->tmpl, p, sizeof(*p));
            g->tmpl->vcpu = 0;
            if (g->tmpl->nr_vcpus != g->nr_vcpus || hvg_wl_check(&w, g->tmpl, &wst) < 0) {
                snprintf(why, len, "vCPU 0's parameter page does not describe this guest");
                rc = -EINVAL;
            }
            g->pc.workload = (enum hvg_workload)g->tmpl->workload;
            g->pc.seed = g->tmpl->seed;
            g->pc.ops = g->tmpl->ops;
        }
    }
    for (unsigned i = 0; rc == 0 && i < g->nr_vcpus; i++) {
        rc = g->x->ops->set_state(g->x, i, &st->v[i]);
        if (rc < 0) {
            snprintf(why, len, "vCPU %u's saved state: %s", i,
                     rc == -EPERM     ? "not a CPL 3 long-mode state on this VM's system pages"
                     : rc == -ENOTSUP ? "the guest ran with XSAVE enabled (CR4.OSXSAVE), which "
                                        "this host's KVM does not offer"
                                      : strerror(-rc));
        } else if (st->has_xsave || st->has_msrs) {
            /* the XSAVE area over set_state's FPU (the same registers, and
             * the rest), the MSRs (the TSC goes on from where it stopped) */
            char xwhy[200] = "";
            if (!g->x->ops->set_ext) {
                snprintf(xwhy, sizeof(xwhy), "the %s backend carries none", g->x->ops->name);
                rc = -ENOTSUP;
            } else {
                rc = g->x->ops->set_ext(g->x, i, &st->ext[i], xwhy, sizeof(xwhy));
            }
            if (rc < 0)
                snprintf(why, len, "vCPU %u's saved XSAVE area and MSRs: %s", i, xwhy);
        }
    }
    if (rc < 0) {
        guest_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

/*
 * test_migrate.c - live migration over TCP: loopback migrations with each
 * log-dirty mode and 1-4 vCPUs under a writing workload (per-page checksums
 * at pause time equal the receiver's, superpage counts equal the sender's
 * before migration, the workload's data intact after resuming on the
 * receiver), fault injection (the connection cut at random byte offsets by
 * the sender's socket writer and by a proxy thread: a healthy sender, no
 * receiver domain, then a retry that succeeds), hostile peers on both
 * sides, and sender and receiver as separate processes over loopback and
 * across two network namespaces.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "migrate.h"
#include "net.h"

/* 2 GiB guest: the first 1G holds the VGA hole (4K in the first 2M, then 2M
 * leaves), the second 1G is one 1G leaf. */
#define GUEST_GFNS (1ULL << 19)

/* ---- a model of what the workload wrote: gpa -> last value ------------------ */

#define MODEL_CAP (1u << 23)
struct model {
    uint64_t *key, *val;
    uint64_t n;
    bool overflow; /* more distinct words written than the model holds */
};

static struct model *model_new(void)
{
    struct model *m = calloc(1, sizeof(*m));
    m->key = calloc(MODEL_CAP, 8);
    m->val = calloc(MODEL_CAP, 8);
    assert_non_null(m->key);
    assert_non_null(m->val);
    return m;
}

static void model_free(struct model *m)
{
    free(m->key);
    free(m->val);
    free(m);
}

/* Called by the runner thread only (one at a time: sender, then receiver). */
static void model_put(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct model *m = ctx;
    (void)vcpu;
    uint64_t k = gpa + 1, i = (k * 0x9E3779B97F4A7C15ULL) >> 43;
    while (m->key[i] && m->key[i] != k)
        i = (i + 1) & (MODEL_CAP - 1);
    if (!m->key[i]) {
        /* Runner thread: no cmocka assertion here; model_check reports it. */
        if (m->n >= MODEL_CAP / 2) {
            m->overflow = true;
            return;
        }
        m->key[i] = k;
        m->n++;
    }
    m->val[i] = val;
}

/* Every value the model holds reads back from d's memory. */
static void model_check(const struct model *mo, struct domain *d)
{
    uint64_t bad = 0;
    if (mo->overflow)
        fail_msg("the workload wrote more distinct words than the model holds (%u): "
                 "lower its rate or working set", MODEL_CAP / 2);
    for (uint64_t i = 0; i < MODEL_CAP; i++) {
        if (!mo->key[i])
            continue;
        uint64_t gpa = mo->key[i] - 1, got;
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, gpa >> PAGE_SHIFT, &t, NULL);
        assert_true(p2m_is_ram(t));
        memcpy(&got, (uint8_t *)machine_ptr(d->m, mfn) + (gpa & (PAGE_SIZE - 1)), 8);
        bad += got != mo->val[i];
    }
    if (bad)
        fail_msg("%llu of %llu written words lost", (unsigned long long)bad,
                 (unsigned long long)mo->n);
}

/* ---- per-page checksums (hole-aware: never commits untouched memory) -------- */

/* hashes[gfn] for gfn < GUEST_GFNS: XXH64 of the page, 0 when not RAM. */
static void page_hashes(struct domain *d, uint64_t *hashes)
{
    static const uint8_t zero[PAGE_SIZE];
    uint64_t zh = XXH64(zero, PAGE_SIZE, 0);
    struct machine_holes c;
    machine_holes_init(&c, d->m);
    for (gfn_t g = 0; g < GUEST_GFNS; g++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
        if (!p2m_is_ram(t)) {
            hashes[g] = 0;
            continue;
        }
        hashes[g] = machine_offset_in_hole(&c, machine_offset(mfn)) ? zh
                                                     : XXH64(machine_ptr(d->m, mfn), PAGE_SIZE, 0);
    }
}

static void on_paused_hash(void *ctx, struct domain *d) { page_hashes(d, ctx); }

/* ---- the sender ------------------------------------------------------------------ */

struct sender_env {
    struct machine *m;
    struct domain *d;
    struct migrate_guest *g;
    struct model *model;
    struct migrate_leaves before;
};

static void sender_init(struct sender_env *e, unsigned nv, uint64_t rate, double wss)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(machine_create(&e->m, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(e->m, &c, &e->d), 0);
    assert_int_equal(domain_populate(e->d, 0, GUEST_GFNS, NULL), 0);
    e->before = (struct migrate_leaves){domain_pages_1g(e->d), domain_pages_2m(e->d),
                                        domain_pages_4k(e->d)};
    assert_int_equal(e->before.p1g, 1);
    e->model = model_new();
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.seed = 42 + nv;
    wc.wss = wss;
    wc.write_rate = rate;
    wc.quantum = 512;
    wc.on_write = model_put;
    wc.ctx = e->model;
    assert_int_equal(migrate_guest_create(e->d, nv, NULL, &wc, &e->g), 0);
    assert_int_equal(migrate_guest_start(e->g), 0);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* After a failed migration: log-dirty off, superpages back, audits pass,
 * every written word intact, and the guest still running. */
static void sender_healthy(struct sender_env *e, const struct migrate_report *rep)
{
    assert_false(dirty_enabled(e->d));
    assert_int_equal(rep->after_abort.p1g, e->before.p1g);
    assert_int_equal(rep->after_abort.p2m, e->before.p2m);
    assert_int_equal(rep->after_abort.p4k, e->before.p4k);
    uint64_t a0 = __atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED);
    sleep_ms(30);
    migrate_guest_pause(e->g);
    if (e->g->started) { /* it kept running through the failure */
        assert_true(e->g->accesses > a0);
        assert_false(e->g->exited);
    }
    AUDIT_OK(domain_audit(e->d));
    AUDIT_OK(frames_audit(e->m->frames));
    model_check(e->model, e->d);
    migrate_guest_resume(e->g);
}

static void sender_fini(struct sender_env *e)
{
    migrate_guest_destroy(e->g);
    domain_destroy(e->d);
    AUDIT_OK(frames_audit(e->m->frames));
    machine_destroy(e->m);
    model_free(e->model);
}

/* ---- the receiver, in a thread with its own machine ------------------------------- */

struct rx_env {
    struct machine *m;
    int lfd;
    uint16_t port;
    struct sockaddr_in sa;
    struct migrate_recv_opts o;
    struct migrate_recv_result res;
    int rc;
    pthread_t t;
};

static void *rx_main(void *arg)
{
    struct rx_env *r = arg;
    int fd;
    r->rc = net_accept(r->lfd, 30000, &fd);
    if (r->rc < 0) {
        snprintf(r->res.err, sizeof(r->res.err), "accept: %s", strerror(-r->rc));
        return NULL;
    }
    r->rc = migrate_receive(r->m, fd, &r->o, &r->res);
    close(fd);
    return NULL;
}

static void rx_listen(struct rx_env *r)
{
    assert_int_equal(net_parse_addr("127.0.0.1:0", &r->sa), 0);
    assert_int_equal(net_listen(&r->sa, &r->lfd, &r->port), 0);
    r->sa.sin_port = htons(r->port);
}

static void rx_start(struct rx_env *r, struct machine *m, struct model *mo)
{
    memset(r, 0, sizeof(*r));
    r->m = m;
    r->o.timeout_ms = 20000;
    r->o.on_write = model_put;
    r->o.ctx = mo;
    rx_listen(r);
    assert_int_equal(pthread_create(&r->t, NULL, rx_main, r), 0);
}

static void rx_join(struct rx_env *r)
{
    pthread_join(r->t, NULL);
    close(r->lfd);
}

/* No domain left on the receiver's machine: every frame is free. */
static void rx_nothing_left(struct rx_env *r)
{
    assert_null(r->res.g);
    struct frame_stats fs;
    frames_get_stats(r->m->frames, &fs);
    assert_int_equal(fs.free_frames, r->m->nr_frames);
    AUDIT_OK(frames_audit(r->m->frames));
}

static int connect_to(uint16_t port)
{
    struct sockaddr_in sa;
    int fd;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    sa.sin_port = htons(port);
    assert_int_equal(net_connect(&sa, 5000, &fd), 0);
    return fd;
}

/* One successful migration of e to a fresh receiver; checks everything and
 * resumes the guest there. */
static void migrate_ok(struct sender_env *e, enum dirty_mode mode, bool compress,
                       struct migrate_report *rep)
{
    struct machine *rm;
    struct rx_env rx;
    uint64_t *hs = calloc(GUEST_GFNS, 8), *hr = calloc(GUEST_GFNS, 8);
    assert_non_null(hs);
    assert_non_null(hr);
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, e->model);
    struct migrate_opts o = {.mode = mode, .compress = compress, .on_paused = on_paused_hash,
                             .ctx = hs, .timeout_ms = 20000};
    int fd = connect_to(rx.port);
    int rc = migrate_send(e->g, fd, &o, rep);
    close(fd);
    rx_join(&rx);
    if (rc < 0 || rx.rc < 0)
        fail_msg("migration failed: sender: %s; receiver: %s", rep->err, rx.res.err);
    print_message("# %s%s, %u vCPU(s): %u rounds (%s), %llu data + %llu zero pages, %llu wire "
                  "bytes, downtime %.1f ms, leaves 1G %llu 2M %llu 4K %llu during log-dirty\n",
                  dirty_mode_name(mode), compress ? " +zstd" : "", e->g->nr_vcpus, rep->nr_rounds,
                  migrate_end_name(rep->end), (unsigned long long)rep->st.pages_data,
                  (unsigned long long)rep->st.pages_zero, (unsigned long long)rep->st.wire_bytes,
                  rep->downtime_s * 1e3, (unsigned long long)rep->logdirty.p1g,
                  (unsigned long long)rep->logdirty.p2m, (unsigned long long)rep->logdirty.p4k);
    assert_int_not_equal(rep->end, MIGRATE_END_none);
    struct domain *rd = rx.res.g->d;
    /* per-page checksums at pause time == the receiver's */
    page_hashes(rd, hr);
    assert_memory_equal(hs, hr, GUEST_GFNS * 8);
    assert_true(rep->verified);
    assert_true(rep->digest_sender == rep->digest_receiver);
    /* superpages: the receiver has what the sender had before migrating */
    assert_int_equal(domain_pages_1g(rd), e->before.p1g);
    assert_int_equal(domain_pages_2m(rd), e->before.p2m);
    assert_int_equal(domain_pages_4k(rd), e->before.p4k);
    assert_int_equal(rep->receiver.p1g, e->before.p1g);
    AUDIT_OK(domain_audit(rd));
    AUDIT_OK(frames_audit(rm->frames));
    /* the sender's copy: paused, log-dirty off */
    assert_false(dirty_enabled(e->d));
    /* resume on the receiver: the data written so far is intact, and the
     * workload continues where it stopped, still consistent */
    struct migrate_guest *g = rx.res.g;
    assert_int_equal(g->nr_vcpus, e->g->nr_vcpus);
    model_check(e->model, rd);
    assert_int_equal(migrate_guest_start(g), 0);
    sleep_ms(50);
    migrate_guest_stop(g);
    assert_int_equal(g->err, 0);
    assert_true(g->accesses > 0);
    model_check(e->model, rd);
    AUDIT_OK(domain_audit(rd));
    migrate_guest_destroy(g);
    domain_destroy(rd);
    migrate_recv_result_free(&rx.res);
    AUDIT_OK(frames_audit(rm->frames));
    machine_destroy(rm);
    free(hs);
    free(hr);
}

/* ---- migrations under each mode and vCPU count ------------------------------------ */

static void run_mode(enum dirty_mode mode, unsigned nv, bool compress)
{
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    sender_init(&e, nv, 40000, 0.02);
    sleep_ms(60);
    migrate_ok(&e, mode, compress, rep);
    free(rep);
    sender_fini(&e);
}

static void test_split_on_write(void **state)
{
    (void)state;
    run_mode(DIRTY_SPLIT_ON_WRITE, 1, false);
    run_mode(DIRTY_SPLIT_ON_WRITE, 4, true);
}

static void test_eager_split(void **state)
{
    (void)state;
    run_mode(DIRTY_EAGER_SPLIT, 2, false);
    run_mode(DIRTY_EAGER_SPLIT, 3, false);
}

static void test_coarse(void **state)
{
    (void)state;
    run_mode(DIRTY_COARSE, 1, true);
    run_mode(DIRTY_COARSE, 4, false);
}

/* Rounds end by each rule: an idle guest fits the downtime target at once;
 * an unlimited writer over a small set stops falling; max_rounds 1 caps. */
static void test_end_rules(void **state)
{
    (void)state;
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    sender_init(&e, 1, 1000, 0.001);
    migrate_ok(&e, DIRTY_SPLIT_ON_WRITE, false, rep);
    assert_int_equal(rep->end, MIGRATE_END_downtime);
    sender_fini(&e);
    /* unlimited rate over 1800 pages: at most 921600 distinct words */
    sender_init(&e, 2, 0, 0.0035);
    sleep_ms(30);
    migrate_ok(&e, DIRTY_SPLIT_ON_WRITE, false, rep);
    print_message("# unlimited writer: ended by %s after %u rounds\n", migrate_end_name(rep->end),
                  rep->nr_rounds);
    assert_true(rep->end == MIGRATE_END_not_falling || rep->end == MIGRATE_END_max_rounds ||
                rep->end == MIGRATE_END_downtime);
    sender_fini(&e);
    free(rep);
}

/* ---- fault injection ---------------------------------------------------------------- */

/* One failed attempt: the sender cuts after `cut` bytes (or a proxy does
 * when proxy_cut is set). */
struct proxy {
    int lfd, rfd_port;
    uint16_t port;
    uint64_t cut; /* bytes client -> server forwarded before both are closed */
    pthread_t t;
};

static void *proxy_main(void *arg)
{
    struct proxy *p = arg;
    int c, s;
    if (net_accept(p->lfd, 10000, &c) < 0)
        return NULL;
    s = connect_to((uint16_t)p->rfd_port);
    uint64_t fwd = 0;
    uint8_t *buf = malloc(65536);
    assert_non_null(buf);
    struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    for (int idle = 0; idle < 400;) {
        int n = poll(pf, 2, 50);
        if (n <= 0) {
            idle++;
            continue;
        }
        if (pf[0].revents) {
            size_t want = 65536;
            if (want > p->cut - fwd)
                want = (size_t)(p->cut - fwd);
            ssize_t r = recv(c, buf, want, 0);
            if (r <= 0 || net_write_all(s, buf, (size_t)r) < 0)
                break;
            fwd += (uint64_t)r;
            if (fwd >= p->cut)
                break;
        }
        if (pf[1].revents) {
            ssize_t r = recv(s, buf, 65536, 0);
            if (r <= 0 || net_write_all(c, buf, (size_t)r) < 0)
                break;
        }
    }
    free(buf);
    shutdown(c, SHUT_RDWR);
    shutdown(s, SHUT_RDWR);
    close(c);
    close(s);
    return NULL;
}

static void failed_attempt(struct sender_env *e, uint64_t cut, bool proxy_cut, bool compress)
{
    struct machine *rm;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, e->model);
    struct migrate_opts o = {.compress = compress, .timeout_ms = 5000};
    struct proxy px = {.cut = cut, .rfd_port = rx.port};
    int fd;
    if (proxy_cut) {
        struct sockaddr_in sa;
        assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
        assert_int_equal(net_listen(&sa, &px.lfd, &px.port), 0);
        assert_int_equal(pthread_create(&px.t, NULL, proxy_main, &px), 0);
        fd = connect_to(px.port);
    } else {
        o.fail_after_bytes = cut;
        fd = connect_to(rx.port);
    }
    int rc = migrate_send(e->g, fd, &o, rep);
    close(fd);
    if (proxy_cut) {
        pthread_join(px.t, NULL);
        close(px.lfd);
    }
    rx_join(&rx);
    if (rc == 0)
        fail_msg("cut at %llu (%s): the migration succeeded", (unsigned long long)cut,
                 proxy_cut ? "proxy" : "sender");
    assert_true(rx.rc < 0);
    assert_true(rep->err[0] != 0);
    assert_true(rx.res.err[0] != 0);
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    sender_healthy(e, rep);
    free(rep);
}

/* Move e's guest to a receiver and back home (a migration the test throws
 * away), returning the wire bytes it took. */
static uint64_t trial_migration(struct sender_env *e, uint64_t *round0)
{
    struct machine *rm;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, e->model);
    struct migrate_opts o = {.timeout_ms = 20000};
    int fd = connect_to(rx.port);
    assert_int_equal(migrate_send(e->g, fd, &o, rep), 0);
    close(fd);
    rx_join(&rx);
    assert_int_equal(rx.rc, 0);
    uint64_t total = rep->st.wire_bytes;
    if (round0)
        *round0 = rep->rounds[0].wire_bytes;
    struct domain *rd = rx.res.g->d;
    migrate_guest_destroy(rx.res.g);
    domain_destroy(rd);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    migrate_guest_resume(e->g); /* the sender's copy was kept: run it again */
    free(rep);
    return total;
}

/*
 * Cuts while the guest writes fall inside round 0 (whose length does not
 * depend on the writes); then, with the guest idle (a stream of fixed
 * length T), cuts anywhere up to the last byte, including inside DONE and
 * COMMIT.  A proxy that swallows the tail of COMMIT is the one cut nothing
 * can survive (the sender has sent everything and commits; the receiver
 * never sees COMMIT): proxy cuts stop before COMMIT.
 */
static void cut_runs(bool proxy_cut, unsigned runs, uint64_t seed)
{
    struct sender_env e;
    sender_init(&e, 2, 2000, 0.01);
    uint64_t r0 = 0;
    (void)trial_migration(&e, &r0);
    struct hv_rng r = {seed};
    static const uint64_t edges[] = {1, 23, 24, 40, 48, 4096};
    unsigned live = runs / 2;
    for (unsigned i = 0; i < live; i++) {
        uint64_t cut = i < ARRAY_SIZE(edges) ? edges[i] : 1 + hv_rng_below(&r, r0 - 1);
        failed_attempt(&e, cut, proxy_cut, i & 1);
    }
    migrate_guest_stop(e.g);
    uint64_t t = trial_migration(&e, NULL);
    uint64_t tail[] = {t - 1, t - 23, t - 24, t - 25, t - 48, t - 49, t - 200};
    for (unsigned i = 0; i < runs - live; i++) {
        uint64_t cut = i < ARRAY_SIZE(tail) ? tail[i] : 1 + hv_rng_below(&r, t - 1);
        if (proxy_cut && cut > t - 25)
            cut = t - 25 - i;
        failed_attempt(&e, cut, proxy_cut, false);
    }
    print_message("# %u cuts (%s), round 0 %llu bytes, idle stream %llu bytes: sender healthy, "
                  "nothing left on the receiver each time\n", runs,
                  proxy_cut ? "proxy closes both sides" : "sender shuts its socket down",
                  (unsigned long long)r0, (unsigned long long)t);
    /* a retry, live again, succeeds */
    assert_int_equal(migrate_guest_start(e.g), 0);
    sleep_ms(30);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    migrate_ok(&e, DIRTY_SPLIT_ON_WRITE, false, rep);
    free(rep);
    sender_fini(&e);
}

static void test_cut_by_sender(void **state)
{
    (void)state;
    cut_runs(false, 14, 11);
}

static void test_cut_by_proxy(void **state)
{
    (void)state;
    cut_runs(true, 10, 12);
}

/* ---- hostile peers ----------------------------------------------------------------- */

static void frame(uint8_t *out, uint16_t type, uint32_t raw, uint32_t wire, const void *body,
                  bool good_sum)
{
    struct mig_frame h = {htole32(MIG_MAGIC), htole16(type), 0, htole32(raw), htole32(wire),
                          htole64((body ? XXH3_64bits(body, raw) : 0) ^ (good_sum ? 0 : 1))};
    memcpy(out, &h, sizeof(h));
}

/* Feed `bytes` to a receiver; it must fail with rc and a message holding
 * `what`, and leave nothing on its machine. */
static void hostile_sender(const void *bytes, size_t len, int rc, const char *what)
{
    struct machine *rm;
    struct rx_env rx;
    assert_int_equal(machine_create(&rm, 1 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, NULL);
    int fd = connect_to(rx.port);
    assert_int_equal(net_write_all(fd, bytes, len), 0);
    shutdown(fd, SHUT_WR);
    rx_join(&rx);
    close(fd);
    print_message("# hostile sender -> receiver: %s\n", rx.res.err);
    assert_int_equal(rx.rc, rc);
    assert_non_null(strstr(rx.res.err, what));
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
}

static void test_hostile_sender(void **state)
{
    (void)state;
    static const char http[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    hostile_sender(http, sizeof(http) - 1, -EBADMSG, "magic");
    struct mig_hello hello = {htole32(MIG_VERSION), 0};
    uint8_t buf[256];
    /* a DATA frame claiming 64 MiB */
    frame(buf, MIG_HELLO, sizeof(hello), sizeof(hello), &hello, true);
    memcpy(buf + 24, &hello, 8);
    frame(buf + 32, MIG_DATA, 64u << 20, 64u << 20, NULL, true);
    hostile_sender(buf, 56, -EMSGSIZE, "over the limit");
    /* a DATA frame whose checksum is wrong */
    static const uint8_t junk[16] = "0123456789abcdef";
    frame(buf + 32, MIG_DATA, 16, 16, junk, false);
    memcpy(buf + 56, junk, 16);
    hostile_sender(buf, 72, -EBADMSG, "checksum mismatch");
    /* well-framed bytes that are not a migration stream */
    static const uint8_t junk32[32] = "not a stream, not at all, no....";
    frame(buf + 32, MIG_DATA, 32, 32, junk32, true);
    memcpy(buf + 56, junk32, 32);
    hostile_sender(buf, 88, -EBADMSG, "marker");
    /* a wrong protocol version */
    struct mig_hello v9 = {htole32(9), 0};
    frame(buf, MIG_HELLO, 8, 8, &v9, true);
    memcpy(buf + 24, &v9, 8);
    hostile_sender(buf, 32, -EPROTONOSUPPORT, "version 9");
}

struct fake_rx {
    int lfd;
    uint16_t port;
    pthread_t t;
    const void *reply;
    size_t len;
};

static void *fake_rx_main(void *arg)
{
    struct fake_rx *f = arg;
    int fd;
    uint8_t hello[32];
    if (net_accept(f->lfd, 10000, &fd) < 0)
        return NULL;
    if (net_read_all(fd, hello, sizeof(hello), NULL) == 0)
        if (net_write_all(fd, f->reply, f->len) < 0)
            print_message("# fake receiver: write failed\n");
    sleep_ms(100);
    close(fd);
    return NULL;
}

static void test_hostile_receiver(void **state)
{
    (void)state;
    struct sender_env e;
    sender_init(&e, 1, 2000, 0.01);
    static const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    for (int k = 0; k < 2; k++) {
        struct fake_rx f = {.reply = junk, .len = sizeof(junk) - 1};
        uint8_t ready[32];
        if (k == 1) { /* a READY frame of the wrong size */
            struct mig_hello h = {htole32(MIG_VERSION), 0};
            frame(ready, MIG_READY, 4, 4, &h, true);
            memcpy(ready + 24, &h, 8);
            f.reply = ready;
            f.len = 28;
        }
        struct sockaddr_in sa;
        assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
        assert_int_equal(net_listen(&sa, &f.lfd, &f.port), 0);
        assert_int_equal(pthread_create(&f.t, NULL, fake_rx_main, &f), 0);
        int fd = connect_to(f.port);
        struct migrate_opts o = {.timeout_ms = 5000};
        int rc = migrate_send(e.g, fd, &o, rep);
        close(fd);
        pthread_join(f.t, NULL);
        close(f.lfd);
        print_message("# hostile receiver -> sender: %s\n", rep->err);
        assert_int_equal(rc, -EPROTO);
        assert_non_null(strstr(rep->err, k ? "READY" : "not a hugevm migration peer"));
        sender_healthy(&e, rep);
    }
    /* the inject hook: garbage stream bytes make the receiver fail; the
     * sender survives and learns why when it can */
    struct machine *rm;
    struct rx_env rx;
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, e.model);
    static const char bad[] = "this is not a XENF stream, not at all";
    struct migrate_opts o = {.timeout_ms = 5000, .inject = bad, .inject_len = sizeof(bad)};
    int fd = connect_to(rx.port);
    int rc = migrate_send(e.g, fd, &o, rep);
    close(fd);
    rx_join(&rx);
    print_message("# garbage stream: receiver: %s\n#   sender: %s\n", rx.res.err, rep->err);
    assert_true(rc < 0);
    assert_true(rx.rc < 0);
    assert_non_null(strstr(rx.res.err, "marker"));
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    sender_healthy(&e, rep);
    free(rep);
    sender_fini(&e);
}

/* ---- live streams: the last word about a pfn wins ----------------------------------- */

/* The byte every data page of pfn carries in record `rec` of the stream below. */
static uint8_t page_byte(gfn_t pfn, unsigned rec) { return (uint8_t)(1 + (pfn * 7 + rec) % 250); }

/* One PAGE_DATA record: n entries {pfn[i], type[i]}, data pages filled with page_byte. */
static void put_record(struct stream_writer *w, const gfn_t *pfn, const unsigned *type,
                       uint32_t n, unsigned rec)
{
    uint32_t ndata = 0;
    for (uint32_t i = 0; i < n; i++)
        ndata += type[i] == STREAM_PAGE_NOTAB;
    struct stream_page_data_header h = {htole32(n), 0};
    assert_int_equal(stream_record_begin(w, STREAM_REC_PAGE_DATA,
                                         8 + 8 * n + PAGE_SIZE * ndata), 0);
    assert_int_equal(stream_write_part(w, &h, sizeof(h)), 0);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = htole64(stream_pfn_entry(pfn[i], type[i]));
        assert_int_equal(stream_write_part(w, &e, 8), 0);
    }
    static uint8_t page[PAGE_SIZE];
    for (uint32_t i = 0; i < n; i++)
        if (type[i] == STREAM_PAGE_NOTAB) {
            memset(page, page_byte(pfn[i], rec), PAGE_SIZE);
            assert_int_equal(stream_write_part(w, page, PAGE_SIZE), 0);
        }
    assert_int_equal(stream_record_end(w), 0);
}

/* n pfns from `first`, all of one type. */
static void put_range(struct stream_writer *w, gfn_t first, uint32_t n, unsigned type,
                      unsigned rec)
{
    gfn_t *pfn = calloc(n, sizeof(*pfn));
    unsigned *t = calloc(n, sizeof(*t));
    for (uint32_t i = 0; i < n; i++) {
        pfn[i] = first + i;
        t[i] = type;
    }
    put_record(w, pfn, t, n, rec);
    free(pfn);
    free(t);
}

static void expect_page(struct domain *d, gfn_t pfn, int byte)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, pfn, &t, NULL);
    if (byte < 0) {
        if (t != p2m_invalid)
            fail_msg("pfn %#llx should be a hole, is %s", (unsigned long long)pfn,
                     p2m_type_name(t));
        return;
    }
    assert_true(p2m_is_ram(t));
    const uint8_t *p = machine_ptr(d->m, mfn);
    for (size_t i = 0; i < PAGE_SIZE; i += 511)
        if (p[i] != (uint8_t)byte)
            fail_msg("pfn %#llx byte %zu is %u, want %d", (unsigned long long)pfn, i, p[i],
                     byte);
}

/*
 * A stream where pfns go from populated to holes and back, as a live
 * migration sends a guest whose memory map changes.  A saved-file restore
 * refuses it (conflicting duplicate); a live restore applies the last word:
 *  - 0x200..0x3ff data, then 0x205 and 0x206 holes: that 2M is split (one
 *    level: a 2M leaf into 4K leaves) and the two frames freed;
 *  - 0x400..0x5ff zero, then holes, then data again: one 2M leaf again;
 *  - 0x800 a hole, then data; 0x801 data and a hole in the same record (its
 *    data goes in first, then the frame is freed);
 *  - 0x40000.. a 1G of zero, then 0x40200..0x403ff holes: the 1G is split
 *    into 2M leaves (not to 4K) and that 2M freed whole.
 */
static void test_live_stream_repeats(void **state)
{
    (void)state;
    struct machine *m;
    assert_int_equal(machine_create(&m, 2 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    assert_int_equal(stream_write_headers(&w), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0), 0);
    put_range(&w, 0x200, 512, STREAM_PAGE_NOTAB, 1);
    put_range(&w, 0x205, 2, STREAM_PAGE_XTAB, 2); /* record #2: rejected in a file */
    put_range(&w, 0x400, 512, STREAM_PAGE_XALLOC, 3);
    put_range(&w, 0x40000, 1u << 18, STREAM_PAGE_XALLOC, 3);
    put_range(&w, 0x400, 512, STREAM_PAGE_XTAB, 4);
    put_range(&w, 0x40200, 512, STREAM_PAGE_XTAB, 4);
    put_range(&w, 0x800, 1, STREAM_PAGE_XTAB, 5);
    put_range(&w, 0x400, 512, STREAM_PAGE_NOTAB, 6);
    gfn_t pfn[3] = {0x800, 0x801, 0x801};
    unsigned type[3] = {STREAM_PAGE_NOTAB, STREAM_PAGE_NOTAB, STREAM_PAGE_XTAB};
    put_record(&w, pfn, type, 3, 7);
    assert_int_equal(stream_write_record(&w, STREAM_REC_END, NULL, 0), 0);

    /* a saved file: a pfn populated earlier and now a hole is refused */
    struct stream_mem src;
    struct restore_result rr;
    stream_mem_source(&src, &io, mem.buf, mem.len);
    assert_int_equal(stream_restore(m, &io, NULL, &rr), -EEXIST);
    print_message("# file stream: %s\n", rr.err);
    assert_non_null(strstr(rr.err, "conflicting duplicate"));
    assert_non_null(strstr(rr.err, "record #2 PAGE_DATA"));
    assert_null(rr.d);
    rx_nothing_left(&(struct rx_env){.m = m});

    /* a live migration stream: the last word wins */
    struct restore_opts ro = {.live = true};
    stream_mem_source(&src, &io, mem.buf, mem.len);
    assert_int_equal(stream_restore(m, &io, &ro, &rr), 0);
    struct domain *d = rr.d;
    AUDIT_OK(domain_audit(d));
    AUDIT_OK(frames_audit(m->frames));
    for (gfn_t g = 0x200; g < 0x400; g++)
        expect_page(d, g, g == 0x205 || g == 0x206 ? -1 : page_byte(g, 1));
    for (gfn_t g = 0x400; g < 0x600; g += 37)
        expect_page(d, g, page_byte(g, 6));
    expect_page(d, 0x800, page_byte(0x800, 7));
    expect_page(d, 0x801, -1);
    expect_page(d, 0x40200, -1);
    expect_page(d, 0x403ff, -1);
    expect_page(d, 0x40400, 0);
    unsigned o;
    p2m_get_entry(d->p2m, 0x400, NULL, &o);
    assert_int_equal(o, PAGE_ORDER_2M);
    p2m_get_entry(d->p2m, 0x210, NULL, &o);
    assert_int_equal(o, PAGE_ORDER_4K);
    assert_int_equal(domain_pages_1g(d), 0);
    assert_int_equal(domain_pages_2m(d), 1 + 511);
    assert_int_equal(domain_pages_4k(d), 510 + 1);
    assert_int_equal(d->tot_pages, 510 + 512 + 1 + (1u << 18) - 512);
    assert_int_equal(rr.pages_dropped, 2 + 512 + 512 + 1);
    print_message("# live stream: %llu pfns dropped, leaves 2M %llu 4K %llu\n",
                  (unsigned long long)rr.pages_dropped, (unsigned long long)domain_pages_2m(d),
                  (unsigned long long)domain_pages_4k(d));
    domain_destroy(d);
    restore_result_free(&rr);
    stream_mem_free(&mem);
    rx_nothing_left(&(struct rx_env){.m = m});
    machine_destroy(m);
}

/* ---- separate processes: loopback and two network namespaces ------------------------ */

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Exit status, or -1 after killing it at the deadline. */
static int wait_deadline(pid_t pid, int secs)
{
    for (int i = 0; i < secs * 20; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        sleep_ms(50);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static bool file_has(const char *path, const char *key, const char *val)
{
    char buf[65536];
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strstr(buf, key);
    if (!p)
        return false;
    p += strlen(key);
    while (*p == ':' || *p == ' ' || *p == '"')
        p++;
    return strncmp(p, val, strlen(val)) == 0;
}

/* Receiver and sender as two processes, each optionally inside a network
 * namespace (ns NULL: this one).  Returns a message on failure, NULL if ok. */
static const char *two_processes(const char *hv, const char *ns_rx, const char *ns_tx,
                                 const char *rx_ip, char *why, size_t wlen)
{
    char dir[] = "/tmp/hvmigXXXXXX";
    if (!mkdtemp(dir))
        return "mkdtemp failed";
    char portf[96], rlog[96], slog[96], listen[64], to[64];
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(rlog, sizeof(rlog), "%s/receiver.json", dir);
    snprintf(slog, sizeof(slog), "%s/sender.json", dir);
    snprintf(listen, sizeof(listen), "%s:0", rx_ip);
    char *rargv[32], *sargv[32];
    int n = 0;
    if (ns_rx) {
        rargv[n++] = "ip", rargv[n++] = "netns", rargv[n++] = "exec";
        rargv[n++] = (char *)ns_rx;
    }
    char *rtail[] = {(char *)hv, "receive", "--listen", listen, "--port-file", portf, "--run",
                     "0.3", "--attempts", "1", "--accept-timeout", "60", "--host-mem", "4G",
                     "--json", NULL};
    memcpy(rargv + n, rtail, sizeof(rtail));
    pid_t rp = spawn(rargv, rlog);
    unsigned port = 0;
    for (int i = 0; i < 400 && !port; i++) {
        FILE *f = fopen(portf, "r");
        if (f) {
            if (fscanf(f, "%u", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (!port)
            sleep_ms(50);
    }
    const char *err = NULL;
    if (!port) {
        kill(rp, SIGKILL);
        waitpid(rp, NULL, 0);
        err = "the receiver did not start";
        goto out;
    }
    snprintf(to, sizeof(to), "%s:%u", rx_ip, port);
    n = 0;
    if (ns_tx) {
        sargv[n++] = "ip", sargv[n++] = "netns", sargv[n++] = "exec";
        sargv[n++] = (char *)ns_tx;
    }
    char *stail[] = {(char *)hv, "migrate", "--to", to, "--guest-mem", "1G", "--vcpus", "2",
                     "--after", "0.3", "--write-rate", "20000", "--wss", "0.2", "--timeout", "30",
                     "--json", NULL};
    memcpy(sargv + n, stail, sizeof(stail));
    pid_t sp = spawn(sargv, slog);
    int ss = wait_deadline(sp, 80), rs = wait_deadline(rp, 20);
    if (ss != 0 || rs != 0) {
        snprintf(why, wlen, "sender exited %d, receiver %d (logs in %s)", ss, rs, dir);
        return why; /* keep the logs */
    }
    if (!file_has(slog, "\"checksums_match\"", "true") || !file_has(rlog, "\"audit\"", "ok")) {
        snprintf(why, wlen, "no matching checksums or audit in %s", dir);
        return why;
    }
out:
    unlink(portf);
    unlink(rlog);
    unlink(slog);
    rmdir(dir);
    return err;
}

static void test_processes_loopback(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32], why[512];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    const char *err = two_processes(hv, NULL, NULL, "127.0.0.1", why, sizeof(why));
    if (err)
        fail_msg("%s", err);
    print_message("# hugevm receive and hugevm migrate as two processes over 127.0.0.1: ok\n");
}

static int sh(const char *fmt, ...) HV_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    strncat(cmd, " >/dev/null 2>&1", sizeof(cmd) - strlen(cmd) - 1);
    return system(cmd);
}

static void test_processes_netns(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32], why[512], a[32], b[32];
    const char *reason = NULL;
    if (!hugevm_path(hv, sizeof(hv)))
        reason = "the hugevm binary is not built next to this test";
    else if (geteuid() != 0)
        reason = "network namespaces need root";
    else if (sh("ip -V") != 0)
        reason = "iproute2 (ip) is not installed (scripts/deps.sh installs it)";
    unsigned id = (unsigned)getpid() % 100000;
    snprintf(a, sizeof(a), "hvmA%u", id);
    snprintf(b, sizeof(b), "hvmB%u", id);
    if (!reason && sh("ip netns add %s", a) != 0)
        reason = "this machine does not allow creating network namespaces";
    if (reason) {
        print_message("# SKIP reason: %s\n", reason);
        skip();
    }
    const char *err = NULL;
    if (sh("ip netns add %s", b) || sh("ip link add hva%u type veth peer name hvb%u", id, id) ||
        sh("ip link set hva%u netns %s", id, a) || sh("ip link set hvb%u netns %s", id, b) ||
        sh("ip -n %s addr add 10.231.77.1/24 dev hva%u", a, id) ||
        sh("ip -n %s addr add 10.231.77.2/24 dev hvb%u", b, id) ||
        sh("ip -n %s link set hva%u up", a, id) || sh("ip -n %s link set hvb%u up", b, id) ||
        sh("ip -n %s link set lo up", a) || sh("ip -n %s link set lo up", b))
        err = "setting up the namespaces and the veth pair failed";
    if (!err)
        err = two_processes(hv, b, a, "10.231.77.2", why, sizeof(why));
    sh("ip netns del %s", a); /* the veth pair goes with them */
    sh("ip netns del %s", b);
    sh("ip link del hva%u", id);
    if (err)
        fail_msg("%s", err);
    print_message("# sender in netns %s (10.231.77.1), receiver in netns %s (10.231.77.2) over a "
                  "veth pair: ok\n", a, b);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_split_on_write),
    cmocka_unit_test(test_eager_split),
    cmocka_unit_test(test_coarse),
    cmocka_unit_test(test_end_rules),
    cmocka_unit_test(test_cut_by_sender),
    cmocka_unit_test(test_cut_by_proxy),
    cmocka_unit_test(test_hostile_sender),
    cmocka_unit_test(test_hostile_receiver),
    cmocka_unit_test(test_live_stream_repeats),
    cmocka_unit_test(test_processes_loopback),
    cmocka_unit_test(test_processes_netns),
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

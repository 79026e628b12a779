/*
 * test_migrate.c - live migration over TCP: loopback migrations with each
 * log-dirty mode and 1-4 vCPUs under a writing workload (per-page checksums
 * at pause time equal the receiver's, superpage counts equal the sender's
 * before migration, the workload's data intact after resuming on the
 * receiver), fault injection (the connection cut at random byte offsets by
 * the sender's socket writer and by a proxy thread: a healthy sender, no
 * receiver domain, then a retry that succeeds), the commit window (COMMIT
 * lost: both copies kept paused in doubt; RESUMED lost: the receiver runs,
 * the sender's copy is kept paused in doubt), hostile peers on both
 * sides, and sender and receiver as separate processes over loopback and
 * across two network namespaces.  The memory map changing during the
 * migration: a PoD guest demand-populating and zero-swept, a guest
 * ballooned out and in and given RAM above its top while rounds run (the
 * receiver equals the sender at pause gfn by gfn: RAM, hole or PoD, page
 * checksums, PoD accounting); and a stream whose pfns go from populated to
 * holes and back, refused from a file, applied by a live restore.  No
 * other domain's bytes on the wire: a guest ballooning out while another
 * domain on the machine takes and marks the memory at once (the sender's
 * quarantine keeps the frames it may still read; a proxy searches the
 * stream for the marker).
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
#include "proc.h"

#include <arpa/inet.h>
#include <dirent.h>
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

#include "balloon.h"
#include "chan.h"
#include "migrate.h"
#include "net.h"
#include "postcopy.h"

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

/* ---- plain channels over a test's sockets ---------------------------------------- */

/* migrate_send / migrate_receive over a plain channel on a dup of fd: the
 * test keeps fd (a cut shuts the socket down for both). */
static struct chan *plain_chan_owned(int fd);
static struct chan *plain_chan(int fd)
{
    int d = dup(fd);
    assert_true(d >= 0);
    return plain_chan_owned(d);
}

/* A plain channel that owns fd. */
static struct chan *plain_chan_owned(int fd)
{
    struct chan *ch;
    char err[CHAN_ERR_LEN];
    assert_int_equal(chan_open(fd, NULL, 0, &ch, err, sizeof(err)), 0);
    return ch;
}

static int send_fd(struct guest *g, int fd, const struct migrate_opts *o,
                   struct migrate_report *rep)
{
    struct chan *ch = plain_chan(fd);
    int rc = migrate_send(g, ch, o, rep);
    chan_close(ch);
    return rc;
}

static int recv_fd(struct machine *m, int fd, const struct migrate_recv_opts *o,
                   struct migrate_recv_result *res)
{
    struct chan *ch = plain_chan(fd);
    int rc = migrate_receive(m, ch, o, res);
    chan_close(ch);
    return rc;
}

/* ---- the sender ------------------------------------------------------------------ */

struct sender_env {
    struct machine *m;
    struct domain *d;
    struct guest *g;
    struct model *model;
    struct migrate_leaves before;
};

/* The sender's guest: nv vCPUs running the writer workload into e->model. */
static void start_writer(struct sender_env *e, unsigned nv, uint64_t seed, uint64_t rate,
                         double wss)
{
    e->model = model_new();
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.seed = seed;
    wc.wss = wss;
    wc.write_rate = rate;
    wc.quantum = 512;
    wc.on_write = model_put;
    wc.ctx = e->model;
    assert_int_equal(guest_create_soft(e->d, nv, NULL, &wc, &e->g), 0);
    assert_int_equal(guest_start(e->g), 0);
}

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
    start_writer(e, nv, 42 + nv, rate, wss);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The receiver runs the migrated guest for a moment: the data written before
 * the migration is intact before and after; then everything is torn down
 * and the receiving machine is empty and consistent. */
static void resume_on_receiver(const struct model *mo, struct guest *g,
                               struct migrate_recv_result *res, struct machine *rm)
{
    struct domain *rd = g->d;
    model_check(mo, rd);
    assert_int_equal(guest_start(g), 0);
    sleep_ms(50);
    /* a loaded host may not have run the runner yet: give it up to 5 s */
    for (int i = 0; i < 100 && !__atomic_load_n(&g->accesses, __ATOMIC_RELAXED); i++)
        sleep_ms(50);
    guest_stop(g);
    assert_int_equal(g->err, 0);
    assert_true(g->accesses > 0);
    model_check(mo, rd);
    AUDIT_OK(domain_audit(rd));
    guest_destroy(g);
    domain_destroy(rd);
    migrate_recv_result_free(res);
    AUDIT_OK(frames_audit(rm->frames));
    machine_destroy(rm);
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
    guest_pause(e->g);
    if (e->g->started) { /* it kept running through the failure */
        assert_true(e->g->accesses > a0);
        assert_false(e->g->exited);
    }
    AUDIT_OK(domain_audit(e->d));
    AUDIT_OK(frames_audit(e->m->frames));
    model_check(e->model, e->d);
    guest_resume(e->g);
}

static void sender_fini(struct sender_env *e)
{
    guest_destroy(e->g);
    domain_destroy(e->d);
    AUDIT_OK(frames_audit(e->m->frames));
    machine_destroy(e->m);
    model_free(e->model);
}

/* How a test's migration uses parallel channels. */
struct chans {
    unsigned n;          /* channels asked for (0: one) */
    bool rx_one;         /* the receiver takes one only (no join) */
    unsigned delay_us;   /* further channels write slowly (out of order) */
    bool strangers;      /* before each further channel, a connection that names
                          * another migration (the receiver must turn it away) */
    double max_bandwidth; /* migrate_opts.max_bandwidth */
    uint16_t port;
    unsigned refused;    /* strangers that got ABORT */
    uint64_t seed;
};

/* ---- the receiver, in a thread with its own machine ------------------------------- */

struct rx_env {
    struct machine *m;
    int lfd;
    uint16_t port;
    struct sockaddr_in sa;
    struct migrate_recv_opts o;
    struct migrate_recv_result res;
    int rc;
    bool hold_fd; /* keep the connection open until rx_join */
    int fd;
    pthread_t t;
};

/* migrate_recv_opts.join: the next connection on the receiver's listener,
 * as a plain channel. */
static struct chan *join_next(void *ctx, uint64_t by, char *err, size_t len)
{
    struct rx_env *r = ctx;
    uint64_t now = hv_now_ns();
    int fd, rc = net_accept(r->lfd, by > now ? (int)((by - now) / 1000000) + 1 : 1, &fd);
    if (rc < 0) {
        snprintf(err, len, "accept: %s", strerror(-rc));
        return NULL;
    }
    struct chan *ch;
    char e[CHAN_ERR_LEN];
    if (chan_open(fd, NULL, 0, &ch, e, sizeof(e)) < 0) {
        snprintf(err, len, "%s", e);
        return NULL;
    }
    return ch;
}

static void *rx_main(void *arg)
{
    struct rx_env *r = arg;
    int fd;
    r->rc = net_accept(r->lfd, 30000, &fd);
    if (r->rc < 0) {
        snprintf(r->res.err, sizeof(r->res.err), "accept: %s", strerror(-r->rc));
        return NULL;
    }
    r->rc = recv_fd(r->m, fd, &r->o, &r->res);
    if (r->hold_fd)
        r->fd = fd;
    else
        close(fd);
    return NULL;
}

static void rx_listen(struct rx_env *r)
{
    assert_int_equal(net_parse_addr("127.0.0.1:0", &r->sa), 0);
    assert_int_equal(net_listen(&r->sa, &r->lfd, &r->port), 0);
    r->sa.sin_port = htons(r->port);
}

/* cut: 1 cut_before_commit, 2 cut_before_resumed (both keep the
 * connection open until rx_join), 0 neither; ch (may be NULL): parallel
 * channels taken unless ch->rx_one. */
static void rx_start_ch(struct rx_env *r, struct machine *m, struct model *mo, int cut,
                        const struct chans *ch)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->m = m;
    r->o.timeout_ms = 20000;
    r->o.on_write = model_put;
    r->o.ctx = mo;
    r->o.cut_before_commit = cut == 1;
    r->o.cut_before_resumed = cut == 2;
    r->o.audit_digest = true; /* the kept digest == the restored memory's */
    r->hold_fd = cut != 0;
    if (ch && !ch->rx_one) {
        r->o.join = join_next;
        r->o.jctx = r;
    }
    rx_listen(r);
    assert_int_equal(pthread_create(&r->t, NULL, rx_main, r), 0);
}

static void rx_start_cut(struct rx_env *r, struct machine *m, struct model *mo, int cut)
{
    rx_start_ch(r, m, mo, cut, NULL);
}

static void rx_start(struct rx_env *r, struct machine *m, struct model *mo)
{
    rx_start_cut(r, m, mo, 0);
}

static void rx_join(struct rx_env *r)
{
    pthread_join(r->t, NULL);
    if (r->fd >= 0)
        close(r->fd);
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

/* ---- parallel channels: the sender's further connections ------------------------ */

/* A channel whose writes each wait a random while first (up to delay_us):
 * with several, frames dealt in turn arrive out of order. */
struct slow_chan {
    struct chan c;
    struct chan *in;
    unsigned delay_us;
    struct hv_rng r;
};

static long slow_write(struct chan *c, const void *buf, size_t len)
{
    struct slow_chan *s = (struct slow_chan *)c;
    struct timespec ts = {0, (long)hv_rng_below(&s->r, s->delay_us + 1) * 1000};
    nanosleep(&ts, NULL);
    return s->in->ops->write(s->in, buf, len);
}
static long slow_read(struct chan *c, void *buf, size_t len)
{
    struct slow_chan *s = (struct slow_chan *)c;
    return s->in->ops->read(s->in, buf, len);
}
static int slow_poll_in(struct chan *c, int ms)
{
    struct slow_chan *s = (struct slow_chan *)c;
    return s->in->ops->poll_in(s->in, ms);
}
static int slow_set_timeout(struct chan *c, int ms)
{
    struct slow_chan *s = (struct slow_chan *)c;
    return chan_set_timeout(s->in, ms);
}
static void slow_cut(struct chan *c) { chan_cut(((struct slow_chan *)c)->in); }
static void slow_close(struct chan *c)
{
    struct slow_chan *s = (struct slow_chan *)c;
    chan_close(s->in);
    free(s);
}
static const struct chan_ops slow_ops = {.read = slow_read, .write = slow_write,
                                         .poll_in = slow_poll_in,
                                         .set_timeout = slow_set_timeout, .cut = slow_cut,
                                         .close = slow_close};

/* A stranger: HELLO {channels, index 1, a token of no migration here};
 * the receiver answers ABORT. */
static void stranger(struct chans *c)
{
    int fd = connect_to(c->port);
    struct {
        struct mig_hello h;
        struct mig_hello_channels c;
    } hello = {{htole32(MIG_VERSION), htole32(MIG_HELLO_CHANNELS)},
               {htole32(c->n), htole32(1), htole64(0x5742)}};
    struct mig_frame h;
    migrate_frame_header(&h, MIG_HELLO, 0, sizeof(hello), sizeof(hello),
                         XXH3_64bits(&hello, sizeof(hello)));
    assert_int_equal(net_write_all(fd, &h, sizeof(h)), 0);
    assert_int_equal(net_write_all(fd, &hello, sizeof(hello)), 0);
    struct mig_frame a;
    assert_int_equal(net_set_timeouts(fd, 10000), 0);
    assert_int_equal(net_read_all(fd, &a, sizeof(a), NULL), 0);
    assert_int_equal(le16toh(a.type), MIG_ABORT);
    char why[MIG_CTRL_MAX + 1] = "";
    uint32_t n = le32toh(a.raw_len);
    assert_true(n < sizeof(why));
    assert_int_equal(net_read_all(fd, why, n, NULL), 0);
    assert_non_null(strstr(why, "another migration's token"));
    c->refused++;
    close(fd);
}

static struct chan *open_next(void *ctx, char *err, size_t len)
{
    struct chans *c = ctx;
    (void)err;
    (void)len;
    if (c->strangers)
        stranger(c);
    struct chan *ch = plain_chan_owned(connect_to(c->port));
    if (!c->delay_us)
        return ch;
    struct slow_chan *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->c = *ch;
    s->c.ops = &slow_ops;
    s->in = ch;
    s->delay_us = c->delay_us;
    s->r.s = ++c->seed;
    return &s->c;
}

static void chans_apply(struct chans *c, struct migrate_opts *o, struct rx_env *rx)
{
    if (!c)
        return;
    c->port = rx->port;
    o->channels = c->n;
    o->max_bandwidth = c->max_bandwidth;
    o->open_channel = open_next;
    o->open_ctx = c;
}

static void migrate_ok_ch(struct sender_env *e, enum dirty_mode mode, bool compress,
                          struct chans *ch, struct migrate_report *rep);

/* One successful migration of e to a fresh receiver; checks everything and
 * resumes the guest there. */
static void migrate_ok(struct sender_env *e, enum dirty_mode mode, bool compress,
                       struct migrate_report *rep)
{
    migrate_ok_ch(e, mode, compress, NULL, rep);
}

static void migrate_ok_ch(struct sender_env *e, enum dirty_mode mode, bool compress,
                          struct chans *ch, struct migrate_report *rep)
{
    struct machine *rm;
    struct rx_env rx;
    uint64_t *hs = calloc(GUEST_GFNS, 8), *hr = calloc(GUEST_GFNS, 8);
    assert_non_null(hs);
    assert_non_null(hr);
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start_ch(&rx, rm, e->model, 0, ch);
    struct migrate_opts o = {.mode = mode, .compress = compress, .on_paused = on_paused_hash,
                             .ctx = hs, .timeout_ms = 20000, .audit_digest = true};
    chans_apply(ch, &o, &rx);
    int fd = connect_to(rx.port);
    int rc = send_fd(e->g, fd, &o, rep);
    close(fd);
    rx_join(&rx);
    if (rc < 0 || rx.rc < 0)
        fail_msg("migration failed: sender: %s; receiver: %s", rep->err, rx.res.err);
    if (ch && ch->n > 1) {
        unsigned n = ch->rx_one ? 1 : ch->n;
        print_message("# %u channels asked for, %u ran (%s); bytes per channel:", ch->n,
                      rep->channels, rep->channels_why);
        for (unsigned i = 0; i < rep->channels; i++)
            print_message(" %llu", (unsigned long long)rep->channel_bytes[i]);
        print_message("\n");
        assert_int_equal(rep->channels, n);
        assert_int_equal(rx.res.channels, n);
        uint64_t sum = 0;
        for (unsigned i = 0; i < n; i++) {
            /* dealt in turn: every channel carried about its share */
            assert_true(rep->channel_bytes[i] > rep->st.wire_bytes / n / 4);
            sum += rep->channel_bytes[i];
        }
        assert_true(sum == rep->st.wire_bytes);
        assert_true(rx.res.wire_bytes > 0);
        if (ch->rx_one)
            assert_non_null(strstr(rep->channels_why, "takes one"));
    }
    /* the sender returned 0: RESUMED came, nobody is in doubt */
    assert_false(rep->in_doubt);
    assert_false(rx.res.in_doubt);
    assert_false(rx.res.resumed_unsent);
    print_message("# %s%s, %u vCPU(s): %u rounds (%s), %llu data + %llu zero pages, %llu wire "
                  "bytes, downtime %.1f ms, leaves 1G %llu 2M %llu 4K %llu during log-dirty\n",
                  dirty_mode_name(mode), compress ? " +zstd" : "", e->g->nr_vcpus, rep->nr_rounds,
                  migrate_end_name(rep->end), (unsigned long long)rep->st.pages_data,
                  (unsigned long long)rep->st.pages_zero, (unsigned long long)rep->st.wire_bytes,
                  rep->downtime_s * 1e3, (unsigned long long)rep->logdirty.p1g,
                  (unsigned long long)rep->logdirty.p2m, (unsigned long long)rep->logdirty.p4k);
    assert_int_not_equal(rep->end, MIGRATE_END_none);
    /* the receiver took in the pre-copy rounds before the pause (SYNC) */
    assert_true(rep->catch_up_s > 0);
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
    struct guest *g = rx.res.g;
    assert_int_equal(g->nr_vcpus, e->g->nr_vcpus);
    resume_on_receiver(e->model, g, &rx.res, rm);
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

/* ---- the memory digest, kept page by page ---------------------------------------- */

/*
 * The digest (stream.h) is a sum of per-page terms kept as pages are sent
 * and received, not read from memory at the pause.  A guest whose vCPU is
 * not running (so that which pages go in which round is known): page W is
 * written through the vCPU (logged dirty) after round 0, so it goes in
 * round 0 with its first bytes and in the final round with its last; page
 * Q is never written after round 0.  Faults injected at the sender, under
 * the frame checksums (the frames carry the bytes as sent): a bit flipped
 * in W, W left out of the final round, W's first copy replayed after its
 * last; each must fail the migration at the receiver's digest check, the
 * receiver keeping nothing and the sender's guest left as it was.  Q
 * replayed (a duplicate of the same bytes) and no fault must succeed, and
 * then both sides' audits (the digest from all of memory) agree with the
 * kept one.  A page written behind the dirty log's back (Q, at the pause)
 * is what a kept digest cannot see: the sender's audit must.
 */
#define DIG_W (GUEST_GFNS - 300)
#define DIG_Q (GUEST_GFNS - 200)

struct dig_env {
    struct guest *g;
    unsigned writes;
    int err;
    bool behind_back; /* on_paused: change Q without the dirty log */
};

static int dig_write_op(struct domain *d, void *ctx)
{
    struct dig_env *e = ctx;
    (void)d;
    /* the vCPU is stopped and d->lock held: an access like the guest's */
    return vcpu_write(e->g->v[0], (uint64_t)DIG_W << PAGE_SHIFT, 0xd16e57000ULL + ++e->writes);
}

static void dig_on_round(void *ctx, const struct migrate_round *r)
{
    struct dig_env *e = ctx;
    (void)r;
    int rc = guest_call(e->g, dig_write_op, e);
    if (rc < 0 && !e->err)
        e->err = rc;
}

static void dig_on_paused(void *ctx, struct domain *d)
{
    struct dig_env *e = ctx;
    if (!e->behind_back)
        return;
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, DIG_Q, &t, NULL);
    ((volatile uint8_t *)machine_ptr(d->m, mfn))[100] ^= 1;
}

static uint64_t page_hash_of(struct domain *d, gfn_t g)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
    assert_true(p2m_is_ram(t));
    return XXH64(machine_ptr(d->m, mfn), PAGE_SIZE, 0);
}

/* One migration of a fresh quiet guest with fault f on gfn; want_ok: it
 * must succeed, else fail on the digest (`why` in the receiver's error). */
static void digest_case(enum migrate_page_fault f, gfn_t gfn, bool behind_back, bool want_ok,
                        const char *why)
{
    struct machine *sm, *rm;
    struct domain *d;
    struct domain_config c;
    struct dig_env e = {.behind_back = behind_back};
    domain_config_default(&c);
    assert_int_equal(machine_create(&sm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    assert_int_equal(domain_create(sm, &c, &d), 0);
    assert_int_equal(domain_populate(d, 0, GUEST_GFNS, NULL), 0);
    /* some data pages (W and Q among them), the rest zero */
    struct hv_rng r = {7};
    for (gfn_t g = GUEST_GFNS - 512; g < GUEST_GFNS; g++) {
        enum p2m_type t;
        uint64_t *p = machine_ptr(sm, p2m_get_entry(d->p2m, g, &t, NULL));
        for (unsigned i = 0; i < 512; i += 8)
            p[i] = hv_rng_next(&r);
    }
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    assert_int_equal(guest_create_soft(d, 1, NULL, &wc, &e.g), 0); /* not started */
    uint64_t before = migrate_digest(d, NULL), w_before = page_hash_of(d, DIG_W);
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    struct rx_env rx;
    rx_start(&rx, rm, NULL);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    struct migrate_opts o = {.timeout_ms = 20000, .fault_page = f, .fault_gfn = gfn,
                             .audit_digest = true, .on_round = dig_on_round,
                             .on_paused = dig_on_paused, .ctx = &e};
    int fd = connect_to(rx.port);
    int rc = send_fd(e.g, fd, &o, rep);
    close(fd);
    rx_join(&rx);
    assert_int_equal(e.err, 0);
    assert_true(e.writes >= 1);
    print_message("# digest, fault %d on %#llx%s: %s / %s\n", (int)f, (unsigned long long)gfn,
                  behind_back ? ", Q changed behind the log" : "", rc ? rep->err : "ok",
                  rx.rc ? rx.res.err : "ok");
    if (want_ok) {
        if (rc < 0 || rx.rc < 0)
            fail_msg("migration failed: sender: %s; receiver: %s", rep->err, rx.res.err);
        assert_true(rep->verified);
        assert_true(rep->digest_sender == rep->digest_receiver);
        struct domain *rd = rx.res.g->d;
        /* the kept digest is the digest of memory, on both sides */
        assert_true(migrate_digest(d, NULL) == rep->digest_sender);
        assert_true(migrate_digest(rd, NULL) == rep->digest_sender);
        assert_true(page_hash_of(rd, DIG_W) == page_hash_of(d, DIG_W));
        assert_true(page_hash_of(rd, DIG_W) != w_before); /* it did change */
        assert_true(page_hash_of(rd, DIG_Q) == page_hash_of(d, DIG_Q));
        guest_destroy(rx.res.g);
        domain_destroy(rd);
        migrate_recv_result_free(&rx.res);
    } else {
        assert_true(rc < 0);
        assert_false(rep->in_doubt);
        assert_false(rep->verified);
        assert_non_null(strstr(behind_back ? rep->err : rx.res.err, why));
        if (!behind_back) {
            assert_int_equal(rx.rc, -EBADMSG);
            assert_non_null(strstr(rep->err, "memory digest mismatch"));
        }
        rx_nothing_left(&rx);
        migrate_recv_result_free(&rx.res);
        /* the sender's guest is as it was, writes included, log-dirty off */
        assert_false(dirty_enabled(d));
        assert_false(migrate_digest(d, NULL) == before);
    }
    AUDIT_OK(domain_audit(d));
    free(rep);
    guest_destroy(e.g);
    domain_destroy(d);
    AUDIT_OK(frames_audit(sm->frames));
    AUDIT_OK(frames_audit(rm->frames));
    machine_destroy(sm);
    machine_destroy(rm);
}

/* A post-copy sender's state in doubt (migrate_pc_state_encode/decode):
 * it comes back as it went, and a TLV that is malformed, repeated, or
 * names a pending pfn that is not RAM of the restored copy above the
 * system area is refused with a message that says which. */
static void pc_tlv(struct hvctx_buf *b, const struct hvctx_postcopy *h, const uint64_t *w,
                   uint32_t nw, uint32_t len)
{
    uint8_t v[sizeof(*h) + 8 * 64] = {0};
    assert_true(nw <= 64);
    memcpy(v, h, sizeof(*h));
    memcpy(v + sizeof(*h), w, 8 * nw);
    assert_int_equal(hvctx_add(b, HVCTX_POSTCOPY, 0, v, len), 0);
}

static void pc_refused(const struct hvctx_buf *b, struct domain *d, const char *want)
{
    struct migrate_pc_state st;
    char err[300] = "";
    int rc = migrate_pc_state_decode(b->p + sizeof(struct hvctx_header),
                                     b->len - sizeof(struct hvctx_header), d, &st, err,
                                     sizeof(err));
    if (rc != -EBADMSG || !strstr(err, want))
        fail_msg("decode gave %d (%s), want -EBADMSG naming '%s'", rc, err, want);
    assert_null(st.pending);
}

static void test_pc_state(void **state)
{
    (void)state;
    struct machine *m;
    struct domain *d;
    struct domain_config c;
    assert_int_equal(machine_create(&m, 256 * MiB, FRAME_POLICY_FRAGPOOL), 0);
    domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    /* RAM [0, 16 MiB) and [24 MiB, 32 MiB): a hole between */
    assert_int_equal(domain_populate(d, 0, 4096, NULL), 0);
    assert_int_equal(domain_populate(d, 6144, 2048, NULL), 0);
    struct hv_rng r = {(uint64_t)hv_now_ns() | 1};
    print_message("# rng %llu\n", (unsigned long long)r.s);
    const gfn_t low = HVG_SYSTEM_END >> PAGE_SHIFT, top = 8192;
    for (int round = 0; round < 20; round++) {
        /* random pending pfns in RAM above the system area */
        uint64_t *pend = calloc(top / 64, 8);
        assert_non_null(pend);
        unsigned n = (unsigned)(hv_rng_next(&r) % 300);
        for (unsigned i = 0; i < n; i++) {
            gfn_t g = low + hv_rng_next(&r) % (top - low);
            if (g < 4096 || g >= 6144)
                pend[g / 64] |= 1ULL << (g % 64);
        }
        struct migrate_pc_state in = {hv_rng_next(&r), hv_rng_next(&r), hv_rng_next(&r), top,
                                      pend}, out;
        struct hvctx_buf b;
        assert_int_equal(hvctx_begin(&b), 0);
        uint64_t other = 7;
        assert_int_equal(hvctx_add(&b, HVCTX_POD_CACHE, 0, &other, 8), 0);
        assert_int_equal(migrate_pc_state_encode(&in, &b), 0);
        char err[300] = "";
        int rc = migrate_pc_state_decode(b.p + sizeof(struct hvctx_header),
                                         b.len - sizeof(struct hvctx_header), d, &out, err,
                                         sizeof(err));
        if (rc != 1)
            fail_msg("round trip: %d (%s)", rc, err);
        assert_int_equal(out.id, in.id);
        assert_int_equal(out.digest, in.digest);
        assert_int_equal(out.pages, in.pages);
        assert_int_equal(out.nr_gfns, top); /* the copy's RAM bounds it */
        assert_memory_equal(out.pending, pend, top / 8);
        migrate_pc_state_free(&out);
        /* without a domain (inspect): the same state, the TLV's extent */
        rc = migrate_pc_state_decode(b.p + sizeof(struct hvctx_header),
                                     b.len - sizeof(struct hvctx_header), NULL, &out, err,
                                     sizeof(err));
        assert_int_equal(rc, 1);
        assert_int_equal(out.id, in.id);
        assert_true(out.nr_gfns <= top);
        assert_memory_equal(out.pending, pend, (out.nr_gfns + 63) / 64 * 8);
        migrate_pc_state_free(&out);
        hvctx_free(&b);
        free(pend);
    }
    /* none there: 0 */
    struct hvctx_buf b;
    struct migrate_pc_state st;
    char err[300];
    uint64_t other = 7;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(hvctx_add(&b, HVCTX_POD_CACHE, 0, &other, 8), 0);
    assert_int_equal(migrate_pc_state_decode(b.p + sizeof(struct hvctx_header),
                                             b.len - sizeof(struct hvctx_header), d, &st, err,
                                             sizeof(err)), 0);
    hvctx_free(&b);
    struct hvctx_postcopy h = {1, 2, 3, low / 64, 1, 0};
    uint64_t w[2] = {1, 0};
    struct {
        struct hvctx_postcopy h;
        uint64_t w0;
        uint32_t nw, len;
        const char *want;
    } cases[] = {
        {h, 1, 1, sizeof(h) - 8, "at least"},
        {h, 1, 1, sizeof(h) + 16, "malformed"},                       /* length != words */
        {{1, 2, 3, low / 64, 1, 9}, 1, 1, sizeof(h) + 8, "reserved 9"},
        {{1, 2, 3, top / 64, 1, 0}, 1, 1, sizeof(h) + 8, "beyond the domain"},
        {{1, 2, 3, 0, 1, 0}, 1ULL << 10, 1, sizeof(h) + 8, "system area"},
        {{1, 2, 3, 4096 / 64 + 3, 1, 0}, 1ULL << 5, 1, sizeof(h) + 8, "not RAM"},
        {{1, 2, 3, ~0ULL, 1, 0}, 1, 1, sizeof(h) + 8, "beyond the domain"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        assert_int_equal(hvctx_begin(&b), 0);
        w[0] = cases[i].w0;
        pc_tlv(&b, &cases[i].h, w, cases[i].nw,
               cases[i].len);
        pc_refused(&b, d, cases[i].want);
        hvctx_free(&b);
    }
    /* twice */
    assert_int_equal(hvctx_begin(&b), 0);
    w[0] = 1;
    pc_tlv(&b, &h, w, 1, sizeof(h) + 8);
    pc_tlv(&b, &h, w, 1, sizeof(h) + 8);
    pc_refused(&b, d, "a second POSTCOPY");
    /* cut short: the last TLV overruns the area */
    assert_int_equal(migrate_pc_state_decode(b.p + sizeof(struct hvctx_header),
                                             b.len - sizeof(struct hvctx_header) - 8, d, &st,
                                             err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "overruns"));
    assert_null(st.pending);
    hvctx_free(&b);
    /* a copy that is not the memory at the switch is refused before
     * anything goes to the receiver (no connection needed to find out) */
    uint64_t pend[128] = {0};
    pend[low / 64] = 1;
    struct migrate_pc_state good = {7, 0, 0, top, pend};
    good.digest = migrate_digest(d, &good.pages);
    struct migrate_pc_state wrong = good;
    wrong.digest ^= 1ULL << (hv_rng_next(&r) % 64);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    assert_int_equal(migrate_postcopy_serve(d, NULL, &wrong, NULL, rep), -EBADMSG);
    assert_non_null(strstr(rep->err, "not the memory paused at the switch"));
    wrong = good;
    wrong.pages++;
    assert_int_equal(migrate_postcopy_serve(d, NULL, &wrong, NULL, rep), -EBADMSG);
    assert_non_null(strstr(rep->err, "not the memory paused at the switch"));
    free(rep);
    domain_destroy(d);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
}

static void test_digest_faults(void **state)
{
    (void)state;
    digest_case(MIGRATE_FAULT_NONE, 0, false, true, NULL);
    digest_case(MIGRATE_FAULT_DUP, DIG_Q, false, true, NULL); /* same bytes again: harmless */
    digest_case(MIGRATE_FAULT_WRONG, DIG_W, false, false, "memory digest mismatch");
    digest_case(MIGRATE_FAULT_DROP, DIG_W, false, false, "memory digest mismatch");
    digest_case(MIGRATE_FAULT_DUP, DIG_W, false, false, "memory digest mismatch");
    digest_case(MIGRATE_FAULT_NONE, 0, true, false, "digest audit");
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

static void failed_attempt_ch(struct sender_env *e, uint64_t cut, bool proxy_cut, bool compress,
                              bool rx_may_doubt, struct chans *ch, unsigned fail_channel)
{
    struct machine *rm;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start_ch(&rx, rm, e->model, 0, ch);
    struct migrate_opts o = {.compress = compress, .timeout_ms = 5000,
                             .fail_channel = fail_channel};
    chans_apply(ch, &o, &rx);
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
    int rc = send_fd(e->g, fd, &o, rep);
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
    if (ch) {
        print_message("#   sender: %s\n#   receiver: %s\n", rep->err, rx.res.err);
        /* the failure names the channel that was cut */
        char name[32];
        snprintf(name, sizeof(name), "channel %u", fail_channel);
        assert_non_null(strstr(rep->err, name));
    }
    /* COMMIT never left whole: the sender is not in doubt, it runs again */
    assert_false(rep->in_doubt);
    assert_int_not_equal(rc, -EINPROGRESS);
    if (rx.rc == -EINPROGRESS) {
        /* but a receiver that got its RESULT {ok} out whole cannot know
         * that: it keeps its copy paused in doubt (here the sender's is the
         * one to run).  One whose RESULT write failed (the sender's socket
         * shut first) knows the sender cannot commit: it destroys. */
        if (!rx_may_doubt)
            fail_msg("cut at %llu: receiver in doubt: %s", (unsigned long long)cut, rx.res.err);
        assert_true(rx.res.in_doubt);
        assert_non_null(rx.res.g);
        assert_false(rx.res.g->started);
        AUDIT_OK(domain_audit(rx.res.g->d));
        AUDIT_OK(frames_audit(rm->frames));
        struct domain *rd = rx.res.g->d;
        guest_destroy(rx.res.g);
        domain_destroy(rd);
        rx.res.g = NULL;
    } else {
        assert_false(rx.res.in_doubt);
        assert_int_not_equal(rx.rc, -EINPROGRESS);
    }
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    sender_healthy(e, rep);
    free(rep);
}

static void failed_attempt(struct sender_env *e, uint64_t cut, bool proxy_cut, bool compress,
                           bool rx_may_doubt)
{
    failed_attempt_ch(e, cut, proxy_cut, compress, rx_may_doubt, NULL, 0);
}

/* Move e's guest to a receiver and back home (a migration the test throws
 * away), returning the wire bytes it took. */
static uint64_t trial_migration_ch(struct sender_env *e, uint64_t *round0, struct chans *ch,
                                   uint64_t *chan_bytes)
{
    struct machine *rm;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start_ch(&rx, rm, e->model, 0, ch);
    struct migrate_opts o = {.timeout_ms = 20000};
    chans_apply(ch, &o, &rx);
    int fd = connect_to(rx.port);
    assert_int_equal(send_fd(e->g, fd, &o, rep), 0);
    close(fd);
    rx_join(&rx);
    assert_int_equal(rx.rc, 0);
    uint64_t total = rep->st.wire_bytes;
    if (round0)
        *round0 = rep->rounds[0].wire_bytes;
    if (chan_bytes)
        memcpy(chan_bytes, rep->channel_bytes, sizeof(rep->channel_bytes));
    struct domain *rd = rx.res.g->d;
    guest_destroy(rx.res.g);
    domain_destroy(rd);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    guest_resume(e->g); /* the sender's copy was kept: run it again */
    free(rep);
    return total;
}

static uint64_t trial_migration(struct sender_env *e, uint64_t *round0)
{
    return trial_migration_ch(e, round0, NULL, NULL);
}

/*
 * Cuts while the guest writes fall inside round 0 (whose length does not
 * depend on the writes); then, with the guest idle (a stream of fixed
 * length T), cuts anywhere up to the last byte, including inside DONE and
 * COMMIT.  A sender cut inside COMMIT keeps the sender's copy (its COMMIT
 * did not leave whole) and the receiver's, paused in doubt.  A proxy that
 * swallows the tail of a COMMIT the sender wrote whole leaves both in doubt
 * (test_commit_lost): proxy cuts stop before COMMIT.
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
        failed_attempt(&e, cut, proxy_cut, i & 1, false);
    }
    guest_stop(e.g);
    uint64_t t = trial_migration(&e, NULL);
    uint64_t tail[] = {t - 1, t - 23, t - 24, t - 25, t - 48, t - 49, t - 200};
    for (unsigned i = 0; i < runs - live; i++) {
        uint64_t cut = i < ARRAY_SIZE(tail) ? tail[i] : 1 + hv_rng_below(&r, t - 1);
        if (proxy_cut && cut > t - 25)
            cut = t - 25 - i;
        /* DONE ends 24 bytes before the end: a cut at or after it lets
         * DONE through (RESULT {ok} may get out: the receiver may be in
         * doubt), but not COMMIT whole: the sender runs on */
        failed_attempt(&e, cut, proxy_cut, false, cut >= t - 24);
    }
    print_message("# %u cuts (%s), round 0 %llu bytes, idle stream %llu bytes: sender healthy, "
                  "nothing running on the receiver each time\n", runs,
                  proxy_cut ? "proxy closes both sides" : "sender shuts its socket down",
                  (unsigned long long)r0, (unsigned long long)t);
    /* a retry, live again, succeeds */
    assert_int_equal(guest_start(e.g), 0);
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

/* ---- parallel channels ------------------------------------------------------------ */

/*
 * Frames dealt over 2 and 3 channels: every page and the digest as with
 * one (migrate_ok's checks), every channel carrying its share; with
 * further channels that write after random delays (frames arrive out of
 * order, and the receiver puts them back in order), with compression,
 * under each dirty mode; a receiver that takes one channel gets one; a
 * connection naming another migration is turned away while the real
 * channels join.
 */
static void test_channels(void **state)
{
    (void)state;
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    sender_init(&e, 3, 40000, 0.02);
    sleep_ms(60);
    struct chans c2 = {.n = 2, .seed = 1};
    migrate_ok_ch(&e, DIRTY_SPLIT_ON_WRITE, false, &c2, rep);
    sender_fini(&e);

    sender_init(&e, 4, 40000, 0.02);
    sleep_ms(60);
    struct chans c3 = {.n = 3, .delay_us = 400, .seed = 2};
    memset(rep, 0, sizeof(*rep));
    migrate_ok_ch(&e, DIRTY_EAGER_SPLIT, true, &c3, rep);
    sender_fini(&e);

    sender_init(&e, 2, 40000, 0.02);
    sleep_ms(30);
    struct chans one = {.n = 3, .rx_one = true};
    memset(rep, 0, sizeof(*rep));
    migrate_ok_ch(&e, DIRTY_SPLIT_ON_WRITE, false, &one, rep);
    sender_fini(&e);

    sender_init(&e, 2, 40000, 0.02);
    sleep_ms(30);
    struct chans st = {.n = MIG_MAX_CHANNELS, .strangers = true, .delay_us = 100, .seed = 3};
    memset(rep, 0, sizeof(*rep));
    migrate_ok_ch(&e, DIRTY_SPLIT_ON_WRITE, false, &st, rep);
    assert_int_equal(st.refused, MIG_MAX_CHANNELS - 1);
    sender_fini(&e);

    /* paced to 40 MB/s over 3 channels: every byte takes its time (the
     * first write goes at once) */
    sender_init(&e, 2, 2000, 0.01);
    sleep_ms(30);
    struct chans paced = {.n = 3, .max_bandwidth = 40e6, .seed = 4};
    memset(rep, 0, sizeof(*rep));
    migrate_ok_ch(&e, DIRTY_SPLIT_ON_WRITE, false, &paced, rep);
    const struct migrate_round *r0 = &rep->rounds[0];
    double w0 = (double)r0->wire_bytes, most = 40.0 * w0 / (w0 - MIG_FRAME_RAW - 4096) * 1.02;
    print_message("# paced at 40 MB/s: round 0 %.1f MB at %.1f MB/s (at most %.1f)\n", w0 / 1e6,
                  r0->mb_per_s, most);
    assert_true(w0 > 4 * MIG_FRAME_RAW);
    assert_true(r0->mb_per_s <= most);
    sender_fini(&e);
    free(rep);
}

/*
 * One channel of three cut at a random offset inside round 0 (the sender
 * shuts its socket down), each channel in turn: the migration fails as
 * with one channel (the sender's guest runs on with log-dirty off and its
 * superpages back, nothing is left on the receiver); then a migration
 * over three channels succeeds.
 */
static void test_channels_cut(void **state)
{
    (void)state;
    struct sender_env e;
    sender_init(&e, 2, 2000, 0.01);
    uint64_t bytes[MIG_MAX_CHANNELS];
    struct chans t = {.n = 3, .seed = 9};
    (void)trial_migration_ch(&e, NULL, &t, bytes);
    struct hv_rng r = {77};
    for (unsigned i = 0; i < 6; i++) {
        struct chans c = {.n = 3, .delay_us = i & 1 ? 200 : 0, .seed = 10 + i};
        unsigned which = i % 3;
        /* anywhere in the first half of what the channel carries (the
         * guest writes: the stream's length varies a little) */
        uint64_t cut = 1 + hv_rng_below(&r, bytes[which] / 2);
        print_message("# channel %u of 3 cut after %llu bytes\n", which,
                      (unsigned long long)cut);
        failed_attempt_ch(&e, cut, false, false, false, &c, which);
    }
    struct chans c = {.n = 3, .seed = 99};
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    migrate_ok_ch(&e, DIRTY_SPLIT_ON_WRITE, false, &c, rep);
    free(rep);
    sender_fini(&e);
}

/* ---- the commit window -------------------------------------------------------------- */

/* The sender after COMMIT left without RESUMED: in doubt, paused (it does
 * not run), log-dirty off, not destroyed, its memory what it was at pause
 * (hs: the page checksums taken at pause). */
static void sender_in_doubt(struct sender_env *e, const struct migrate_report *rep, int rc,
                            const uint64_t *hs)
{
    if (rc != -EINPROGRESS)
        fail_msg("sender not in doubt: rc %d: %s", rc, rep->err);
    assert_int_equal(rep->rc, -EINPROGRESS);
    assert_true(rep->in_doubt);
    assert_non_null(strstr(rep->err, "IN DOUBT"));
    assert_false(dirty_enabled(e->d));
    assert_true(e->g->paused);
    uint64_t a0 = __atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED);
    sleep_ms(30);
    assert_int_equal(__atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED), a0);
    uint64_t *h = calloc(GUEST_GFNS, 8);
    assert_non_null(h);
    page_hashes(e->d, h);
    assert_memory_equal(hs, h, GUEST_GFNS * 8);
    free(h);
    assert_true(migrate_digest(e->d, NULL) == rep->digest_sender);
    model_check(e->model, e->d);
    AUDIT_OK(domain_audit(e->d));
    AUDIT_OK(frames_audit(e->m->frames));
}

/* The receiver's copy equals the sender's at pause. */
static void rx_copy_equal(struct rx_env *rx, const struct migrate_report *rep, const uint64_t *hs,
                          struct model *mo)
{
    assert_non_null(rx->res.g);
    struct domain *rd = rx->res.g->d;
    uint64_t *h = calloc(GUEST_GFNS, 8);
    assert_non_null(h);
    page_hashes(rd, h);
    assert_memory_equal(hs, h, GUEST_GFNS * 8);
    free(h);
    assert_true(migrate_digest(rd, NULL) == rep->digest_sender);
    model_check(mo, rd);
    AUDIT_OK(domain_audit(rd));
    AUDIT_OK(frames_audit(rx->m->frames));
}

/* Run the receiver's copy a little: it works and its data is intact. */
static void rx_run(struct rx_env *rx, struct sender_env *e)
{
    struct guest *g = rx->res.g;
    uint64_t a0 = __atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED);
    assert_int_equal(guest_start(g), 0);
    sleep_ms(50);
    guest_stop(g);
    /* the sender's copy stayed paused meanwhile: never two running */
    assert_int_equal(__atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED), a0);
    assert_int_equal(g->err, 0);
    assert_true(g->accesses > 0);
    model_check(e->model, g->d);
    AUDIT_OK(domain_audit(g->d));
    struct domain *rd = g->d;
    guest_destroy(g);
    domain_destroy(rd);
    rx->res.g = NULL;
    AUDIT_OK(frames_audit(rx->m->frames));
}

/* COMMIT lost on the way (the receiver drops the connection after RESULT
 * {ok}, before it reads COMMIT): both sides keep their copy paused in
 * doubt, both equal to the guest at pause; neither runs.  Then the doubt is
 * ended by running the receiver's copy. */
static void test_commit_lost(void **state)
{
    (void)state;
    struct sender_env e;
    struct machine *rm;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    uint64_t *hs = calloc(GUEST_GFNS, 8);
    assert_non_null(rep);
    assert_non_null(hs);
    sender_init(&e, 2, 20000, 0.02);
    sleep_ms(30);
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start_cut(&rx, rm, e.model, 1);
    struct migrate_opts o = {.on_paused = on_paused_hash, .ctx = hs, .timeout_ms = 5000};
    int fd = connect_to(rx.port);
    int rc = send_fd(e.g, fd, &o, rep);
    /* the receiver is done (in doubt) before its connection closes: the
     * sender's COMMIT went out whole */
    close(fd);
    rx_join(&rx);
    print_message("# COMMIT lost: sender: %s\n#   receiver: %s\n", rep->err, rx.res.err);
    sender_in_doubt(&e, rep, rc, hs);
    if (rx.rc != -EINPROGRESS)
        fail_msg("receiver not in doubt: rc %d: %s", rx.rc, rx.res.err);
    assert_true(rx.res.in_doubt);
    assert_non_null(strstr(rx.res.err, "IN DOUBT"));
    assert_false(rx.res.g->started);
    rx_copy_equal(&rx, rep, hs, e.model);
    rx_run(&rx, &e);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    sender_fini(&e);
    free(hs);
    free(rep);
}

/* RESUMED lost (the receiver cuts instead of sending it; or the sender
 * cuts right after COMMIT): the receiver owns the guest and runs it, the
 * sender is in doubt, paused and not destroyed. */
static void test_resumed_lost(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        struct sender_env e;
        struct machine *rm;
        struct rx_env rx;
        struct migrate_report *rep = calloc(1, sizeof(*rep));
        uint64_t *hs = calloc(GUEST_GFNS, 8);
        assert_non_null(rep);
        assert_non_null(hs);
        sender_init(&e, 2, 20000, 0.02);
        sleep_ms(30);
        assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
        rx_start_cut(&rx, rm, e.model, k == 0 ? 2 : 0);
        struct migrate_opts o = {.on_paused = on_paused_hash, .ctx = hs, .timeout_ms = 5000,
                                 .cut_after_commit = k == 1};
        int fd = connect_to(rx.port);
        int rc = send_fd(e.g, fd, &o, rep);
        close(fd);
        rx_join(&rx);
        print_message("# RESUMED lost (%s): sender: %s\n", k ? "sender cuts after COMMIT" :
                      "receiver cuts before RESUMED", rep->err);
        if (rx.rc != 0)
            fail_msg("receiver failed: %s", rx.res.err);
        assert_false(rx.res.in_doubt);
        if (k == 0)
            assert_true(rx.res.resumed_unsent);
        sender_in_doubt(&e, rep, rc, hs);
        rx_copy_equal(&rx, rep, hs, e.model);
        rx_run(&rx, &e);
        migrate_recv_result_free(&rx.res);
        machine_destroy(rm);
        sender_fini(&e);
        free(hs);
        free(rep);
    }
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
    /* channels: more than MIG_MAX_CHANNELS, a first connection naming
     * index 1, and the 24-byte HELLO without its flag */
    struct {
        struct mig_hello h;
        struct mig_hello_channels c;
    } hc = {{htole32(MIG_VERSION), htole32(MIG_HELLO_CHANNELS)},
            {htole32(MIG_MAX_CHANNELS + 1), 0, 7}};
    frame(buf, MIG_HELLO, sizeof(hc), sizeof(hc), &hc, true);
    memcpy(buf + 24, &hc, sizeof(hc));
    hostile_sender(buf, 48, -EPROTO, "offers 9 channels");
    hc.c = (struct mig_hello_channels){htole32(2), htole32(1), 7};
    frame(buf, MIG_HELLO, sizeof(hc), sizeof(hc), &hc, true);
    memcpy(buf + 24, &hc, sizeof(hc));
    hostile_sender(buf, 48, -EPROTO, "index 1");
    hc.h.flags = 0;
    frame(buf, MIG_HELLO, sizeof(hc), sizeof(hc), &hc, true);
    memcpy(buf + 24, &hc, sizeof(hc));
    hostile_sender(buf, 48, -EPROTO, "flags 0");
    /* SYNC from a sender that did not offer it, and one of the wrong size */
    uint64_t one = htole64(1);
    frame(buf, MIG_HELLO, 8, 8, &hello, true);
    memcpy(buf + 24, &hello, 8);
    frame(buf + 32, MIG_SYNC, 8, 8, &one, true);
    memcpy(buf + 56, &one, 8);
    hostile_sender(buf, 64, -EPROTO, "SYNC frame of 8 bytes inside the stream");
    struct mig_hello hs = {htole32(MIG_VERSION), htole32(MIG_HELLO_SYNC)};
    frame(buf, MIG_HELLO, 8, 8, &hs, true);
    memcpy(buf + 24, &hs, 8);
    frame(buf + 32, MIG_SYNC, 4, 4, &one, true);
    memcpy(buf + 56, &one, 4);
    hostile_sender(buf, 60, -EPROTO, "SYNC frame of 4 bytes");
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
        int rc = send_fd(e.g, fd, &o, rep);
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
    int rc = send_fd(e.g, fd, &o, rep);
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

/* ---- the memory map changes during the migration ------------------------------------ */

/* The guest and 32 MiB above it, where RAM is populated during a migration. */
#define EXTRA_GFNS (1ULL << 13)
#define LIVE_GFNS (GUEST_GFNS + EXTRA_GFNS)
/* The balloon takes 2M blocks from the top of the guest, at most this many. */
#define BALLOON_GFNS (1ULL << 14)

enum { KIND_HOLE = 0, KIND_RAM = 1, KIND_POD = 2 };

/* One side's guest: per gfn of [0, LIVE_GFNS) its kind and, for RAM, its
 * page hash; the accounting. */
struct snap {
    uint64_t *hash;
    uint8_t *kind;
    uint64_t ram_pages, tot_pages, pod_entries, pod_cache, pod_target;
};

static void snap_take(struct snap *s, struct domain *d)
{
    static const uint8_t zero[PAGE_SIZE];
    uint64_t zh = XXH64(zero, PAGE_SIZE, 0);
    struct machine_holes c;
    machine_holes_init(&c, d->m);
    if (!s->hash) {
        s->hash = calloc(LIVE_GFNS, 8);
        s->kind = calloc(LIVE_GFNS, 1);
        assert_non_null(s->hash);
        assert_non_null(s->kind);
    }
    s->ram_pages = 0;
    for (gfn_t g = 0; g < LIVE_GFNS; g++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
        s->hash[g] = 0;
        s->kind[g] = p2m_is_ram(t) ? KIND_RAM : t == p2m_pod ? KIND_POD : KIND_HOLE;
        if (!p2m_is_ram(t))
            continue;
        s->ram_pages++;
        s->hash[g] = machine_offset_in_hole(&c, machine_offset(mfn))
                         ? zh : XXH64(machine_ptr(d->m, mfn), PAGE_SIZE, 0);
    }
    s->tot_pages = d->tot_pages;
    s->pod_entries = d->pod.entry_count;
    s->pod_cache = d->pod.count;
    s->pod_target = d->pod.target;
}

static void snap_free(struct snap *s)
{
    free(s->hash);
    free(s->kind);
}

static void on_paused_snap(void *ctx, struct domain *d) { snap_take(ctx, d); }

/* The receiver's guest is the sender's at pause time, gfn by gfn. */
static void snap_equal(const struct snap *tx, const struct snap *rx)
{
    static const char *const kn[] = {"a hole", "RAM", "PoD"};
    for (gfn_t g = 0; g < LIVE_GFNS; g++) {
        if (tx->kind[g] != rx->kind[g])
            fail_msg("gfn %#llx is %s on the sender at pause, %s on the receiver",
                     (unsigned long long)g, kn[tx->kind[g]], kn[rx->kind[g]]);
        if (tx->hash[g] != rx->hash[g])
            fail_msg("gfn %#llx: page checksum %#llx on the sender at pause, %#llx on the "
                     "receiver", (unsigned long long)g, (unsigned long long)tx->hash[g],
                     (unsigned long long)rx->hash[g]);
    }
    assert_int_equal(rx->ram_pages, tx->ram_pages);
    assert_int_equal(rx->pod_entries, tx->pod_entries);
    assert_int_equal(rx->pod_cache, tx->pod_cache);
    assert_int_equal(rx->pod_target, tx->pod_target);
    assert_int_equal(rx->tot_pages, tx->tot_pages);
}

/* Another thread changing the memory map on the guest's behalf (its balloon
 * driver, a PoD sweep) while the rounds run: one op per millisecond through
 * guest_call, so that none happens once the guest is paused. */
struct churn {
    struct guest *g;
    int (*op)(struct domain *d, void *ctx);
    void *ctx;
    unsigned nap_us; /* between ops; 0: 1000 */
    bool stop;
    uint64_t calls, refused, nomem;
    int err;
    pthread_t t;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        int rc = guest_call(c->g, c->op, c->ctx);
        if (rc == -EAGAIN) {
            c->refused++;
        } else if (rc == -ENOMEM) {
            /* the frames the guest gave back a moment ago are parked by the
             * quarantine until the sender's next batch (migrate.h); a
             * sender slowed down by a loaded host parks them longer.  A
             * balloon driver retries, and so does this one. */
            c->nomem++;
        } else if (rc < 0) {
            c->err = rc; /* reported by the test thread */
            break;
        } else {
            c->calls++;
        }
        unsigned us = c->nap_us ? c->nap_us : 1000;
        struct timespec ts = {0, (long)us * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* Balloon out and back in at the top of the guest, 16 MiB a step, then
 * populate RAM above the guest and give it back, 8 MiB a step; over and
 * over.  Every 2M block it touches lies in [GUEST_GFNS - BALLOON_GFNS,
 * LIVE_GFNS). */
struct balloon_churn {
    struct balloon b;
    unsigned phase;
    uint64_t extra; /* pages populated above the guest */
    uint64_t steps;
};

static int balloon_op(struct domain *d, void *ctx)
{
    struct balloon_churn *c = ctx;
    int rc = 0;
    switch (c->phase) {
    case 0:
        rc = balloon_set_target(&c->b, balloon_current(&c->b) - 8 * 512);
        if (c->b.pages_out >= BALLOON_GFNS)
            c->phase = 1;
        break;
    case 1:
        rc = balloon_set_target(&c->b, balloon_current(&c->b) + 8 * 512);
        if (c->b.pages_out == 0)
            c->phase = 2;
        break;
    case 2:
        rc = domain_populate(d, GUEST_GFNS + c->extra, 4 * 512, NULL);
        c->extra += rc == 0 ? 4 * 512 : 0;
        if (c->extra == EXTRA_GFNS)
            c->phase = 3;
        break;
    default: {
        long r = domain_decrease_reservation(d, GUEST_GFNS + c->extra - 4 * 512, 4 * 512);
        rc = r < 0 ? (int)r : 0;
        c->extra -= r == 4 * 512 ? 4 * 512 : 0;
        if (c->extra == 0)
            c->phase = 0;
    }
    }
    c->steps++;
    return rc;
}

/* Zero-sweep the guest: zero 4K pages the writer has not reached yet go back
 * to the PoD cache (RAM -> PoD), and come back when it writes them. */
struct sweep_churn {
    uint64_t reclaimed;
};

static int sweep_op(struct domain *d, void *ctx)
{
    struct sweep_churn *c = ctx;
    c->reclaimed += (uint64_t)pod_zero_sweep(d, 0, GUEST_GFNS);
    return 0;
}

/* A PoD guest: GUEST_GFNS of PoD entries backed by half as much memory. */
static void sender_init_pod(struct sender_env *e, unsigned nv, uint64_t rate, double wss)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(machine_create(&e->m, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(e->m, &c, &e->d), 0);
    assert_int_equal(domain_populate_flags(e->d, 0, GUEST_GFNS, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(e->d, GUEST_GFNS / 2), 0);
    start_writer(e, nv, 77 + nv, rate, wss);
}

/* Order of the leaf mapping each 2M block of the guest (0xff: not RAM). */
static uint8_t *block_orders(struct domain *d)
{
    uint8_t *o = malloc(LIVE_GFNS >> 9);
    assert_non_null(o);
    for (gfn_t b = 0; b < LIVE_GFNS >> 9; b++) {
        enum p2m_type t;
        unsigned ord;
        p2m_get_entry(d->p2m, b << 9, &t, &ord);
        o[b] = p2m_is_ram(t) ? (uint8_t)ord : 0xff;
    }
    return o;
}

/*
 * Migrate e while `op` (may be NULL) changes the memory map from another
 * thread: the receiver's guest equals the sender's at pause gfn by gfn
 * (RAM, hole or PoD; RAM page checksums; PoD entries, cache and target),
 * the memory digests match, both sides pass their audits, and the 2M
 * blocks outside [touch_lo, touch_hi) are the superpages they are on the
 * sender after the migration (merged back).  Resumes the guest on the
 * receiver and checks the workload's data there.
 */
static void migrate_live_map(struct sender_env *e, enum dirty_mode mode,
                             int (*op)(struct domain *d, void *ctx), void *op_ctx,
                             gfn_t touch_lo, gfn_t touch_hi, struct migrate_report *rep,
                             struct churn *ch, uint64_t *dropped)
{
    struct machine *rm;
    struct rx_env rx;
    struct snap tx = {0}, rxs = {0};
    assert_int_equal(machine_create(&rm, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
    rx_start(&rx, rm, e->model);
    memset(ch, 0, sizeof(*ch));
    *ch = (struct churn){.g = e->g, .op = op, .ctx = op_ctx};
    if (op)
        assert_int_equal(pthread_create(&ch->t, NULL, churn_main, ch), 0);
    struct migrate_opts o = {.mode = mode, .on_paused = on_paused_snap, .ctx = &tx,
                             .timeout_ms = 20000, .audit_digest = true};
    int fd = connect_to(rx.port);
    int rc = send_fd(e->g, fd, &o, rep);
    close(fd);
    if (op) {
        __atomic_store_n(&ch->stop, true, __ATOMIC_RELEASE);
        pthread_join(ch->t, NULL);
    }
    rx_join(&rx);
    if (rc < 0 || rx.rc < 0)
        fail_msg("migration failed: sender: %s; receiver: %s", rep->err, rx.res.err);
    if (ch->err)
        fail_msg("the map-changing thread failed: %s", strerror(-ch->err));
    assert_true(rep->verified);
    assert_true(rep->digest_sender == rep->digest_receiver);
    struct domain *rd = rx.res.g->d;
    *dropped = rx.res.rr.pages_dropped;
    snap_take(&rxs, rd);
    snap_equal(&tx, &rxs);
    AUDIT_OK(domain_audit(rd));
    AUDIT_OK(pod_audit(rd));
    AUDIT_OK(frames_audit(rm->frames));
    AUDIT_OK(domain_audit(e->d));
    AUDIT_OK(pod_audit(e->d));
    AUDIT_OK(frames_audit(e->m->frames));
    assert_false(dirty_enabled(e->d));
    /* superpages where the map did not change: as on the sender, merged
     * back (a 1G region the map changed in is compared at 2M: the sender
     * may get its 1G back when the allocator returns the same frames) */
    uint8_t *os = block_orders(e->d), *orx = block_orders(rd);
    uint64_t same = 0, sp = 0, touched_differ = 0;
    for (gfn_t b = 0; b < LIVE_GFNS >> 9; b++) {
        gfn_t g = b << 9, g1 = g & ~((1ULL << PAGE_ORDER_1G) - 1);
        bool touched = g >= touch_lo && g < touch_hi;
        if (touched) {
            touched_differ += os[b] != orx[b];
            continue;
        }
        if (g1 + (1ULL << PAGE_ORDER_1G) > touch_lo && g1 < touch_hi) {
            os[b] = os[b] == PAGE_ORDER_1G ? PAGE_ORDER_2M : os[b];
            orx[b] = orx[b] == PAGE_ORDER_1G ? PAGE_ORDER_2M : orx[b];
        }
        if (os[b] != orx[b])
            fail_msg("2M block %#llx: leaf order %d on the sender, %d on the receiver",
                     (unsigned long long)b, os[b] == 0xff ? -1 : os[b],
                     orx[b] == 0xff ? -1 : orx[b]);
        same++;
        sp += orx[b] != 0xff && orx[b] >= PAGE_ORDER_2M;
    }
    print_message("# %s: %u rounds (%s), %llu data + %llu zero pages, %llu holes sent; map "
                  "changes %llu (refused at pause %llu); at pause RAM %llu pages, PoD entries "
                  "%llu, cache %llu; receiver 1G %llu 2M %llu 4K %llu; untouched 2M blocks "
                  "%llu (%llu superpages) as on the sender, touched ones differing %llu\n",
                  dirty_mode_name(mode), rep->nr_rounds, migrate_end_name(rep->end),
                  (unsigned long long)rep->st.pages_data, (unsigned long long)rep->st.pages_zero,
                  (unsigned long long)rep->st.pages_xtab, (unsigned long long)ch->calls,
                  (unsigned long long)ch->refused, (unsigned long long)tx.ram_pages,
                  (unsigned long long)tx.pod_entries, (unsigned long long)tx.pod_cache,
                  (unsigned long long)domain_pages_1g(rd), (unsigned long long)domain_pages_2m(rd),
                  (unsigned long long)domain_pages_4k(rd), (unsigned long long)same,
                  (unsigned long long)sp, (unsigned long long)touched_differ);
    free(os);
    free(orx);
    /* resume on the receiver: the data written so far is intact */
    struct guest *g = rx.res.g;
    resume_on_receiver(e->model, g, &rx.res, rm);
    snap_free(&tx);
    snap_free(&rxs);
}

/* (a) A PoD guest migrates while its writer demand-populates PoD entries
 * and a zero sweep turns untouched RAM back into PoD entries: the receiver
 * has the PoD entries, populated pages and contents of the sender at pause. */
/* ---- post-copy of soft vCPUs --------------------------------------------------------- */

struct pc_rx {
    struct machine *m;
    bool channels; /* take the sender's further channels (the preempt one) */
    int lfd;
    uint16_t port;
    struct model *mo;
    struct migrate_recv_result res;
    struct postcopy_rx_report pcr;
    int rc, arm_rc, wait_rc;
    char why[256];
    pthread_t t;
};

/* The receiver: migrate_receive, post-copy armed, the guest started at
 * once; a connection that fails is replaced by the sender's next
 * (migrate_postcopy_accept); then the guest runs a moment and stops. */
static void *pc_rx_main(void *arg)
{
    struct pc_rx *r = arg;
    int fd;
    if ((r->rc = net_accept(r->lfd, 30000, &fd)) < 0)
        return NULL;
    struct chan *ch = plain_chan(fd);
    close(fd);
    struct migrate_recv_opts o = {.timeout_ms = 20000, .on_write = model_put, .ctx = r->mo,
                                  .postcopy_ok = true, .audit_digest = true};
    struct rx_env jr = {.lfd = r->lfd};
    if (r->channels) {
        o.join = join_next;
        o.jctx = &jr;
    }
    r->rc = migrate_receive(r->m, ch, &o, &r->res);
    if (r->rc == 0 && r->res.postcopy) {
        struct postcopy_rx *pc = NULL;
        struct guest *g = r->res.g;
        r->arm_rc = postcopy_rx_start(g, ch, r->res.pc_preempt, r->res.pc_runs, r->res.pc_nruns,
                                      r->res.pc_id, r->res.digest, r->res.pc_pages, 20000, &pc,
                                      r->why, sizeof(r->why));
        r->res.pc_preempt = NULL;
        if (r->arm_rc == 0 && (r->arm_rc = guest_start(g)) == 0) {
            while ((r->wait_rc = postcopy_rx_wait(pc, &r->pcr)) == -ENOTCONN) {
                chan_close(ch);
                ch = NULL;
                if (net_accept(r->lfd, 30000, &fd) < 0)
                    break;
                ch = plain_chan(fd);
                close(fd);
                if (migrate_postcopy_accept(ch, postcopy_rx_id(pc), 5000, r->why,
                                            sizeof(r->why)) < 0 ||
                    postcopy_rx_resume(pc, ch, r->why, sizeof(r->why)) < 0)
                    break;
            }
            if (r->wait_rc < 0) { /* (free first: it lets go waiting vCPUs) */
                postcopy_rx_free(pc);
                pc = NULL;
            }
            sleep_ms(50);
            guest_stop(g);
        }
        postcopy_rx_free(pc);
    }
    if (ch)
        chan_close(ch);
    return NULL;
}

static struct chan *pc_reconnect_to(void *ctx, char *err, size_t len)
{
    uint16_t port = *(uint16_t *)ctx;
    int fd = connect_to(port);
    struct chan *ch = plain_chan(fd);
    close(fd);
    (void)err, (void)len;
    return ch;
}

/*
 * Soft vCPUs in post-copy: the guest resumes on the receiver at the switch
 * and its accesses to pages not there yet wait for them; the written-word
 * model (both sides' writes) reads back whole, the digests agree, the
 * receiver has the sender's leaves and every region it waited for.  Then
 * the same with the connection cut at a random page after the switch and
 * resumed on a new one.
 */
static void test_postcopy_soft(void **state)
{
    (void)state;
    struct hv_rng rng = {(uint64_t)hv_now_ns() | 1};
    print_message("# rng %llu\n", (unsigned long long)rng.s);
    for (int k = 0; k < 4; k++) {
        int cut = k & 1;
        bool chans = k >= 2; /* two channels: answers on the preempt one */
        struct sender_env e;
        struct migrate_report *rep = calloc(1, sizeof(*rep));
        assert_non_null(rep);
        sender_init(&e, 2, 40000, 0.05);
        sleep_ms(100);
        struct pc_rx *r = calloc(1, sizeof(*r));
        assert_non_null(r);
        assert_int_equal(machine_create(&r->m, 3 * GiB, FRAME_POLICY_FRAGPOOL), 0);
        r->mo = e.model;
        r->channels = chans;
        struct sockaddr_in sa;
        assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
        assert_int_equal(net_listen(&sa, &r->lfd, &r->port), 0);
        assert_int_equal(pthread_create(&r->t, NULL, pc_rx_main, r), 0);
        struct migrate_opts o = {.postcopy = true, .timeout_ms = 20000, .audit_digest = true};
        if (cut) {
            o.pc_cut_after_pages = 1 + hv_rng_next(&rng) % 1500;
            o.pc_reconnect = pc_reconnect_to;
            o.pc_ctx = &r->port;
        }
        if (chans) {
            o.channels = 2;
            o.open_channel = pc_reconnect_to;
            o.open_ctx = &r->port;
        }
        int fd = connect_to(r->port);
        int rc = send_fd(e.g, fd, &o, rep);
        close(fd);
        pthread_join(r->t, NULL);
        close(r->lfd);
        if (rc < 0 || r->rc < 0 || r->arm_rc < 0 || r->wait_rc < 0)
            fail_msg("post-copy: sender %d (%s); receiver %d/%d/%d (%s; %s; %s)", rc, rep->err,
                     r->rc, r->arm_rc, r->wait_rc, r->res.err, r->why, r->pcr.err);
        assert_true(rep->postcopy);
        assert_true(rep->pc.pending > 0);
        assert_int_equal(rep->pc.pushed + rep->pc.urgent >= rep->pc.pending, true);
        assert_true(rep->verified);
        assert_int_equal(rep->digest_sender, rep->digest_receiver);
        assert_int_equal(r->pcr.digest, rep->digest_sender);
        assert_int_equal(rep->pc.reconnects, (uint64_t)cut);
        assert_int_equal(r->pcr.links, 1 + cut);
        assert_int_equal(r->pcr.st.pending, rep->pc.pending);
        assert_int_equal(r->pcr.st.regions_whole, r->pcr.st.regions);
        assert_int_equal(rep->channels, chans ? 2 : 1);
        /* answers came on the preempt channel only with two channels, and
         * (cut: the resumed connection carries them) not after a resume */
        if (chans && !cut && r->pcr.st.pages_urgent)
            assert_true(r->pcr.st.pages_preempt > 0);
        if (!chans)
            assert_int_equal(r->pcr.st.pages_preempt, 0);
        struct guest *g = r->res.g;
        struct domain *rd = g->d;
        assert_int_equal(g->err, 0);
        assert_true(g->accesses > 0);
        assert_int_equal(domain_pages_1g(rd), e.before.p1g);
        assert_int_equal(domain_pages_2m(rd), e.before.p2m);
        assert_int_equal(domain_pages_4k(rd), e.before.p4k);
        model_check(e.model, rd); /* both sides' writes, whole */
        AUDIT_OK(domain_audit(rd));
        print_message("# soft post-copy%s%s: %llu pages after the switch (%llu waited for by "
                      "vCPUs, %llu answers, %llu of them on the preempt channel) over %llu 2M "
                      "regions; downtime %.1f ms\n", chans ? ", 2 channels" : "",
                      cut ? ", cut and resumed" : "", (unsigned long long)rep->pc.pending,
                      (unsigned long long)r->pcr.st.faults_missing,
                      (unsigned long long)r->pcr.st.pages_urgent,
                      (unsigned long long)r->pcr.st.pages_preempt,
                      (unsigned long long)r->pcr.st.regions, rep->downtime_s * 1e3);
        guest_destroy(g);
        domain_destroy(rd);
        migrate_recv_result_free(&r->res);
        AUDIT_OK(frames_audit(r->m->frames));
        machine_destroy(r->m);
        free(r);
        free(rep);
        sender_fini(&e);
    }
}

static void test_pod_guest(void **state)
{
    (void)state;
    static const enum dirty_mode modes[] = {DIRTY_SPLIT_ON_WRITE, DIRTY_COARSE};
    for (unsigned i = 0; i < ARRAY_SIZE(modes); i++) {
        struct sender_env e;
        struct migrate_report *rep = calloc(1, sizeof(*rep));
        struct churn ch;
        struct sweep_churn sw = {0};
        sender_init_pod(&e, 1 + i, 40000, 0.02);
        sleep_ms(60);
        uint64_t entries0 = e.d->pod.entry_count;
        /* demand populate and the sweep may touch any 2M block */
        uint64_t dropped;
        migrate_live_map(&e, modes[i], sweep_op, &sw, 0, LIVE_GFNS, rep, &ch, &dropped);
        print_message("# PoD guest: %llu PoD pages at the start, zero sweep reclaimed %llu "
                      "pages during the migration, demand populates 2M %llu 4K %llu\n",
                      (unsigned long long)entries0, (unsigned long long)sw.reclaimed,
                      (unsigned long long)e.d->pod.stats.demand_2m,
                      (unsigned long long)e.d->pod.stats.demand_4k);
        assert_true(e.d->pod.entry_count > 0);
        assert_true(ch.calls > 0);
        free(rep);
        sender_fini(&e);
    }
}

/* (b) Balloon out and back in, and RAM populated above the guest and given
 * back, while the rounds run. */
static void test_map_changes(void **state)
{
    (void)state;
    static const enum dirty_mode modes[] = {DIRTY_SPLIT_ON_WRITE, DIRTY_EAGER_SPLIT,
                                            DIRTY_COARSE};
    uint64_t xtab = 0, dropped = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(modes); i++) {
        struct sender_env e;
        struct migrate_report *rep = calloc(1, sizeof(*rep));
        struct churn ch;
        struct balloon_churn bc = {0};
        sender_init(&e, 1 + (i & 1), 40000, 0.02);
        assert_int_equal(balloon_init(&bc.b, e.d, GUEST_GFNS << PAGE_SHIFT), 0);
        sleep_ms(30);
        uint64_t d1 = 0;
        migrate_live_map(&e, modes[i], balloon_op, &bc, GUEST_GFNS - BALLOON_GFNS, LIVE_GFNS,
                         rep, &ch, &d1);
        xtab += rep->st.pages_xtab;
        dropped += d1;
        print_message("# balloon: %llu steps, %llu pages out and %llu above the guest at the "
                      "end\n", (unsigned long long)bc.steps,
                      (unsigned long long)bc.b.pages_out, (unsigned long long)bc.extra);
        assert_true(ch.calls > 0);
        AUDIT_OK(balloon_audit(&bc.b));
        balloon_fini(&bc.b);
        free(rep);
        sender_fini(&e);
    }
    /* RAM went away while rounds ran: holes were sent, frames freed there */
    print_message("# %llu pfns sent as holes, %llu populated pfns freed by the receivers\n",
                  (unsigned long long)xtab, (unsigned long long)dropped);
    assert_true(xtab > 0);
}

/* ---- quarantine: no other domain's bytes on the wire ------------------------------ */

/* A 128 MiB guest and, on the same 256 MiB machine, another domain that
 * holds every other frame: a frame the guest gives back is the only memory
 * the other domain can get. */
#define LEAK_GUEST_GFNS (1ULL << 15)
#define LEAK_LO (4096ULL)                 /* above the writer's working set */
#define LEAK_OTHER_GFN (2 * GFN_4G)        /* where the other domain takes it */
#define LEAK_MARK 0x4b52414d4b41454cULL    /* "LEAKMARK" */

/* The sender's bytes on their way to the receiver, searched for the marker
 * (4 words in a row, never written by the guest). */
struct leak_proxy {
    int lfd;
    uint16_t port, rx_port;
    uint64_t hits, bytes;
    pthread_t t;
};

static void *leak_proxy_main(void *arg)
{
    struct leak_proxy *p = arg;
    const uint64_t pat[4] = {LEAK_MARK, LEAK_MARK, LEAK_MARK, LEAK_MARK};
    const size_t keep = sizeof(pat) - 1, cap = 1 << 20;
    int c, s;
    if (net_accept(p->lfd, 10000, &c) < 0)
        return NULL;
    s = connect_to(p->rx_port);
    uint8_t *buf = malloc(keep + cap), *back = malloc(65536);
    assert_non_null(buf);
    assert_non_null(back);
    size_t have = 0; /* the previous read's last `keep` bytes lead buf */
    struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    for (int idle = 0; idle < 600;) {
        int n = poll(pf, 2, 50);
        if (n <= 0) {
            idle++;
            continue;
        }
        if (pf[0].revents) {
            ssize_t r = recv(c, buf + have, cap, 0);
            if (r <= 0 || net_write_all(s, buf + have, (size_t)r) < 0)
                break;
            p->bytes += (uint64_t)r;
            size_t len = have + (size_t)r;
            for (const uint8_t *q = buf; (q = memmem(q, len - (size_t)(q - buf), pat,
                                                     sizeof(pat))) != NULL;
                 q += sizeof(pat))
                p->hits++;
            have = len < keep ? len : keep;
            memmove(buf, buf + len - have, have);
        }
        if (pf[1].revents) {
            ssize_t r = recv(s, back, 65536, 0);
            if (r <= 0 || net_write_all(c, back, (size_t)r) < 0)
                break;
        }
    }
    free(buf);
    free(back);
    shutdown(c, SHUT_RDWR);
    shutdown(s, SHUT_RDWR);
    close(c);
    close(s);
    return NULL;
}

/* Balloon a random 2M block of the guest out; the other domain takes 2M at
 * once and fills it with the marker (under quarantine it finds no memory).
 * Next call: the other domain gives its 2M back and the block is ballooned
 * in again (retried while the frames are parked) and refilled with data,
 * so that the sender reads it. */
struct leak_churn {
    struct domain *other;
    struct hv_rng rng;
    gfn_t block; /* ballooned out, or INVALID_GFN */
    bool other_has;
    uint64_t outs, marked, nomem;
};

static void leak_fill(struct domain *d, gfn_t gfn, uint64_t nr, bool mark)
{
    static uint64_t marker[PAGE_SIZE / 8];
    if (!marker[0])
        for (size_t i = 0; i < PAGE_SIZE / 8; i++)
            marker[i] = LEAK_MARK;
    for (gfn_t g = gfn; g < gfn + nr; g++) {
        enum p2m_type t;
        mfn_t x = p2m_get_entry(d->p2m, g, &t, NULL);
        if (mark)
            memcpy(machine_ptr(d->m, x), marker, PAGE_SIZE);
        else
            memset(machine_ptr(d->m, x), (int)(1 + g % 251), PAGE_SIZE);
    }
}

static int leak_op(struct domain *d, void *ctx)
{
    struct leak_churn *c = ctx;
    int rc;
    if (c->block == INVALID_GFN) {
        gfn_t b = LEAK_LO + hv_rng_below(&c->rng, (LEAK_GUEST_GFNS - LEAK_LO) / 512) * 512;
        long r = domain_decrease_reservation(d, b, 512);
        if (r != 512)
            return r < 0 ? (int)r : -EIO;
        c->block = b;
        c->outs++;
        rc = domain_populate(c->other, LEAK_OTHER_GFN, 512, NULL);
        if (rc == -ENOMEM) {
            c->nomem++;
            return 0;
        }
        if (rc < 0)
            return rc;
        leak_fill(c->other, LEAK_OTHER_GFN, 512, true);
        c->other_has = true;
        c->marked++;
        return 0;
    }
    if (c->other_has) {
        if (domain_decrease_reservation(c->other, LEAK_OTHER_GFN, 512) != 512)
            return -EIO;
        c->other_has = false;
    }
    rc = domain_populate(d, c->block, 512, NULL);
    if (rc == -ENOMEM) { /* still parked: the sender has not released them */
        c->nomem++;
        return 0;
    }
    if (rc < 0)
        return rc;
    leak_fill(d, c->block, 512, false); /* marked dirty by the populate */
    c->block = INVALID_GFN;
    return 0;
}

/*
 * While pre-copy runs, another thread balloons 2M blocks of the guest out
 * and, in the same breath, another domain on the machine takes the freed
 * memory and fills it with a marker.  The sender reads pages outside
 * d->lock, so without the quarantine a frame translated just before it was
 * ballooned out is read after the other domain filled it, and the marker
 * goes on the wire.  A proxy searches the stream: the marker never appears.
 */
static void test_no_foreign_bytes(void **state)
{
    (void)state;
    struct machine *m, *rm;
    assert_int_equal(machine_create(&m, 256 * MiB, FRAME_POLICY_FRAGPOOL), 0);
    assert_int_equal(machine_create(&rm, 256 * MiB, FRAME_POLICY_FRAGPOOL), 0);
    struct domain_config cfg;
    domain_config_default(&cfg);
    struct domain *d, *other;
    assert_int_equal(domain_create(m, &cfg, &d), 0);
    assert_int_equal(domain_create(m, &cfg, &other), 0);
    assert_int_equal(domain_populate(d, 0, LEAK_GUEST_GFNS, NULL), 0);
    leak_fill(d, 0, VGA_HOLE_GFN, false);
    leak_fill(d, VGA_HOLE_GFN + VGA_HOLE_NR, LEAK_GUEST_GFNS - VGA_HOLE_GFN - VGA_HOLE_NR, false);
    struct frame_stats fs;
    frames_get_stats(m->frames, &fs);
    assert_int_equal(domain_populate(other, GFN_4G, fs.free_frames, NULL), 0);
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.seed = 5;
    wc.wss = 0.05;
    wc.write_rate = 20000;
    wc.quantum = 512;
    struct guest *g;
    assert_int_equal(guest_create_soft(d, 1, NULL, &wc, &g), 0);
    assert_int_equal(guest_start(g), 0);

    struct leak_churn lc = {.other = other, .rng = {11}, .block = INVALID_GFN};
    struct churn ch = {.g = g, .op = leak_op, .ctx = &lc, .nap_us = 100};
    assert_int_equal(pthread_create(&ch.t, NULL, churn_main, &ch), 0);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    for (unsigned run = 0; run < 3; run++) {
        struct rx_env rx;
        rx_start(&rx, rm, NULL);
        struct leak_proxy px = {.rx_port = rx.port};
        struct sockaddr_in sa;
        assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
        assert_int_equal(net_listen(&sa, &px.lfd, &px.port), 0);
        assert_int_equal(pthread_create(&px.t, NULL, leak_proxy_main, &px), 0);
        struct migrate_opts o = {.mode = run == 1 ? DIRTY_COARSE : DIRTY_SPLIT_ON_WRITE,
                                 .max_rounds = 30, .timeout_ms = 20000};
        uint64_t outs0 = lc.outs, marked0 = lc.marked, nomem0 = lc.nomem;
        int fd = connect_to(px.port);
        int rc = send_fd(g, fd, &o, rep);
        close(fd);
        pthread_join(px.t, NULL);
        close(px.lfd);
        rx_join(&rx);
        print_message("# foreign bytes, %s: %u rounds (%s), %llu data pages, %llu holes, "
                      "%llu frames parked; %llu blocks ballooned out, %llu marked by the "
                      "other domain, %llu allocations refused (parked); %llu stream bytes "
                      "seen, marker found %llu times\n", dirty_mode_name(o.mode),
                      rep->nr_rounds, migrate_end_name(rep->end),
                      (unsigned long long)rep->st.pages_data,
                      (unsigned long long)rep->st.pages_xtab,
                      (unsigned long long)rep->st.pages_parked,
                      (unsigned long long)(lc.outs - outs0),
                      (unsigned long long)(lc.marked - marked0),
                      (unsigned long long)(lc.nomem - nomem0), (unsigned long long)px.bytes,
                      (unsigned long long)px.hits);
        if (rc < 0 || rx.rc < 0)
            fail_msg("migration failed: sender: %s; receiver: %s", rep->err, rx.res.err);
        if (ch.err)
            fail_msg("the map-changing thread failed: %s", strerror(-ch.err));
        assert_true(rep->verified);
        assert_true(px.bytes >= rep->st.wire_bytes);
        if (px.hits)
            fail_msg("another domain's marker crossed the wire %llu times",
                     (unsigned long long)px.hits);
        /* quarantine over: nothing parked, the sender's accounting whole */
        assert_false(d->quarantine.on);
        assert_int_equal(d->quarantine.pages, 0);
        AUDIT_OK(domain_audit(d));
        AUDIT_OK(domain_audit(other));
        AUDIT_OK(frames_audit(m->frames));
        struct domain *rd = rx.res.g->d;
        AUDIT_OK(domain_audit(rd));
        guest_destroy(rx.res.g);
        domain_destroy(rd);
        migrate_recv_result_free(&rx.res);
        guest_resume(g); /* the sender's copy was kept: run it again */
    }
    __atomic_store_n(&ch.stop, true, __ATOMIC_RELEASE);
    pthread_join(ch.t, NULL);
    assert_true(lc.outs > 0);
    machine_destroy(rm);
    guest_destroy(g);
    domain_destroy(d);
    domain_destroy(other);
    AUDIT_OK(frames_audit(m->frames));
    frames_get_stats(m->frames, &fs);
    assert_int_equal(fs.free_frames, m->nr_frames);
    machine_destroy(m);
    free(rep);
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
    struct restore_opts ro = {.live = true, .digest = true};
    stream_mem_source(&src, &io, mem.buf, mem.len);
    assert_int_equal(stream_restore(m, &io, &ro, &rr), 0);
    struct domain *d = rr.d;
    AUDIT_OK(domain_audit(d));
    /* the digest kept entry by entry (pages replaced, dropped, populated
     * again, a data page then a hole in one record) is memory's */
    uint64_t pages = 0;
    assert_true(rr.digest == migrate_digest(d, &pages));
    assert_int_equal(rr.digest_pages, pages);
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

/* A fresh 256-bit pre-shared key in dir/psk (mode 0600). */
static void write_psk(const char *dir, char *path, size_t len)
{
    assert_true(write_psk_file(dir, path, len));
}

/* Receiver and sender as two processes, each optionally inside a network
 * namespace (ns NULL: this one).  Returns a message on failure, NULL if ok. */
static const char *two_processes(const char *hv, const char *ns_rx, const char *ns_tx,
                                 const char *rx_ip, char *why, size_t wlen)
{
    char dir[] = "/tmp/hvmigXXXXXX";
    if (!mkdtemp(dir))
        return "mkdtemp failed";
    char portf[96], rlog[96], slog[96], listen[64], to[64], psk[96];
    write_psk(dir, psk, sizeof(psk));
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
                     "--psk-file", psk, "--json", NULL};
    memcpy(rargv + n, rtail, sizeof(rtail));
    pid_t rp = spawn(rargv, rlog);
    unsigned port = wait_port_file(portf, 20);
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
                     "--channels", "3", "--psk-file", psk, "--json", NULL};
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
    /* three TLS channels, each authenticated, joined out of the lobby */
    if (!file_has(slog, "\"channels\"", "3") || !file_has(rlog, "\"channels\"", "3")) {
        snprintf(why, wlen, "the migration did not run on 3 channels (logs in %s)", dir);
        return why;
    }
out:
    unlink(portf);
    unlink(rlog);
    unlink(slog);
    unlink(psk);
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

/* A receiver process left in doubt (the sender cuts after RESULT {ok}: its
 * COMMIT never leaves, it runs on): hugevm receive saves the paused guest,
 * exits 3, and hugevm restore --run resumes the saved copy. */
static void test_process_receiver_in_doubt(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    char dir[] = "/tmp/hvdoubtXXXXXX";
    assert_non_null(mkdtemp(dir));
    char portf[96], rlog[96], saved[96], relog[96], psk[96];
    write_psk(dir, psk, sizeof(psk));
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(rlog, sizeof(rlog), "%s/receiver.json", dir);
    snprintf(saved, sizeof(saved), "%s/in-doubt.hvs", dir);
    snprintf(relog, sizeof(relog), "%s/restore.json", dir);
    char *rargv[] = {hv, "receive", "--listen", "127.0.0.1:0", "--port-file", portf,
                     "--attempts", "1", "--accept-timeout", "60", "--host-mem", "4G",
                     "--in-doubt-save", saved, "--psk-file", psk, "--json", NULL};
    pid_t rp = spawn(rargv, rlog);
    unsigned port = wait_port_file(portf, 20);
    assert_true(port != 0);
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    sender_init(&e, 2, 20000, 0.02);
    sleep_ms(30);
    struct migrate_opts o = {.timeout_ms = 20000, .cut_before_commit = true};
    struct chan_tls *tls;
    struct chan *ch;
    char err[CHAN_ERR_LEN];
    struct chan_creds cr = {.psk_file = psk};
    assert_int_equal(chan_tls_create(&cr, false, &tls, err, sizeof(err)), 0);
    if (chan_open(connect_to((uint16_t)port), tls, 10000, &ch, err, sizeof(err)) < 0)
        fail_msg("TLS to the receiver process: %s", err);
    int rc = migrate_send(e.g, ch, &o, rep);
    chan_close(ch);
    chan_tls_destroy(tls);
    assert_true(rc < 0);
    assert_false(rep->in_doubt);
    assert_true(rep->verified);
    sender_healthy(&e, rep); /* its COMMIT never left: it runs on */
    int rs = wait_deadline(rp, 60);
    if (rs != 3)
        fail_msg("receiver exited %d, not 3 (in doubt); log in %s", rs, rlog);
    assert_true(file_has(rlog, "\"in_doubt\"", "true"));
    assert_true(file_has(rlog, "\"in_doubt_saved\"", saved));
    assert_true(file_has(rlog, "\"audit\"", "ok"));
    char *xargv[] = {hv, "restore", saved, "--run", "--seconds", "0.2", "--host-mem", "4G",
                     "--json", NULL};
    int xs = wait_deadline(spawn(xargv, relog), 60);
    if (xs != 0)
        fail_msg("hugevm restore --run of the in-doubt copy exited %d; log in %s", xs, relog);
    print_message("# receiver process in doubt: exit 3, saved copy restored and run\n");
    unlink(portf);
    unlink(rlog);
    unlink(saved);
    unlink(relog);
    unlink(psk);
    rmdir(dir);
    free(rep);
    sender_fini(&e);
}

/* True once path contains needle (polls up to secs; 0: looks once). */
static bool wait_log(const char *path, const char *needle, int secs)
{
    for (int i = 0; i == 0 || i < secs * 20; i++) {
        char buf[65536];
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            fclose(f);
            buf[n] = 0;
            if (strstr(buf, needle))
                return true;
        }
        sleep_ms(50);
    }
    return false;
}

static bool still_running(pid_t pid)
{
    int st;
    return waitpid(pid, &st, WNOHANG) == 0;
}

/* A receiver process left in doubt whose save fails everywhere (its
 * --in-doubt-save directory and $TMPDIR do not exist, as a full or broken
 * disk would): it must not exit with the only copy.  It retries, then waits
 * with its PID printed, refuses SIGTERM, and saves on SIGUSR1 once the
 * directory is there; the file it names is whole (0600) and resumes. */
static void test_process_in_doubt_save_fails(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    char dir[] = "/tmp/hvdoubtXXXXXX";
    assert_non_null(mkdtemp(dir));
    char portf[96], rlog[96], sub[96], saved[128], tmpd[96], relog[96];
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(rlog, sizeof(rlog), "%s/receiver.json", dir);
    snprintf(sub, sizeof(sub), "%s/later", dir);
    snprintf(saved, sizeof(saved), "%s/in-doubt.hvs", sub);
    snprintf(tmpd, sizeof(tmpd), "%s/no-tmp", dir);
    snprintf(relog, sizeof(relog), "%s/restore.json", dir);
    char *rargv[] = {hv, "receive", "--listen", "127.0.0.1:0", "--port-file", portf,
                     "--attempts", "1", "--accept-timeout", "60", "--host-mem", "4G",
                     "--in-doubt-save", saved, "--insecure", "--json", NULL};
    char *old_tmp = getenv("TMPDIR") ? strdup(getenv("TMPDIR")) : NULL;
    setenv("TMPDIR", tmpd, 1);
    pid_t rp = spawn(rargv, rlog);
    if (old_tmp)
        setenv("TMPDIR", old_tmp, 1);
    else
        unsetenv("TMPDIR");
    free(old_tmp);
    unsigned port = wait_port_file(portf, 20);
    assert_true(port != 0);
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    sender_init(&e, 2, 20000, 0.02);
    sleep_ms(30);
    struct migrate_opts o = {.timeout_ms = 20000, .cut_before_commit = true};
    int fd = connect_to((uint16_t)port);
    int rc = send_fd(e.g, fd, &o, rep);
    close(fd);
    assert_true(rc < 0);
    assert_false(rep->in_doubt);
    sender_healthy(&e, rep);

    /* a SIGTERM while it still retries on its own does not end it either */
    if (!wait_log(rlog, "retrying in", 60))
        fail_msg("the receiver did not retry its failed save; log in %s", rlog);
    assert_int_equal(kill(rp, SIGTERM), 0);
    /* every path failed DOUBT_ROUNDS times: it waits, alive, and says how */
    if (!wait_log(rlog, "NOT SAVED", 60))
        fail_msg("the receiver did not report its unsaved guest; log in %s", rlog);
    assert_true(still_running(rp));
    assert_true(wait_log(rlog, "kill -USR1", 1));
    /* no file of any name was left behind by the failures */
    assert_int_equal(access(sub, F_OK), -1);
    assert_int_equal(access(tmpd, F_OK), -1);
    assert_false(wait_log(rlog, "in_doubt_saved", 0));
    /* SIGTERM would destroy the only copy: refused */
    assert_int_equal(kill(rp, SIGTERM), 0);
    assert_true(wait_log(rlog, "refusing signal", 10));
    sleep_ms(200);
    assert_true(still_running(rp));
    /* the operator makes room and asks for a retry */
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(kill(rp, SIGUSR1), 0);
    int rs = wait_deadline(rp, 60);
    if (rs != 3)
        fail_msg("receiver exited %d, not 3 (in doubt); log in %s", rs, rlog);
    assert_true(file_has(rlog, "\"in_doubt_saved\"", saved));
    struct stat st;
    assert_int_equal(stat(saved, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    char *xargv[] = {hv, "restore", saved, "--run", "--seconds", "0.2", "--host-mem", "4G",
                     "--json", NULL};
    int xs = wait_deadline(spawn(xargv, relog), 60);
    if (xs != 0)
        fail_msg("hugevm restore --run of the in-doubt copy exited %d; log in %s", xs, relog);
    print_message("# in-doubt save failing everywhere: waited alive, refused SIGTERM, saved on "
                  "SIGUSR1, restored\n");
    unlink(saved);
    rmdir(sub);
    unlink(portf);
    unlink(rlog);
    unlink(relog);
    rmdir(dir);
    free(rep);
    sender_fini(&e);
}

/* A sender process left in doubt (the test's receiver swallows RESUMED)
 * whose --in-doubt-save name is a symlink planted to another file: that
 * file is neither followed nor replaced, the guest is saved at a fresh
 * name beside it (0600), and that name is the one reported. */
static void test_process_sender_in_doubt_symlink(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    char dir[] = "/tmp/hvdoubtXXXXXX";
    assert_non_null(mkdtemp(dir));
    char slog[96], victim[96], planted[96], to[64];
    snprintf(slog, sizeof(slog), "%s/sender.json", dir);
    snprintf(victim, sizeof(victim), "%s/victim", dir);
    snprintf(planted, sizeof(planted), "%s/in-doubt.hvs", dir);
    FILE *f = fopen(victim, "w");
    assert_non_null(f);
    fputs("precious", f);
    fclose(f);
    assert_int_equal(symlink(victim, planted), 0);

    struct machine *rm = new_machine(1 * GiB);
    struct model *mo = model_new();
    struct rx_env rx;
    rx_start_cut(&rx, rm, mo, 2); /* COMMIT arrives, RESUMED never leaves */
    snprintf(to, sizeof(to), "127.0.0.1:%u", rx.port);
    char *sargv[] = {hv, "migrate", "--to", to, "--guest-mem", "128M", "--host-mem", "1G",
                     "--vcpus", "1", "--after", "0.2", "--write-rate", "20000", "--timeout", "5",
                     "--in-doubt-save", planted, "--insecure", "--json", NULL};
    int ss = wait_deadline(spawn(sargv, slog), 90);
    rx_join(&rx);
    if (ss != 3)
        fail_msg("sender exited %d, not 3 (in doubt); log in %s", ss, slog);
    assert_int_equal(rx.rc, 0); /* the receiver owns the guest */
    /* the planted link and its target are untouched */
    char buf[32] = "";
    f = fopen(victim, "r");
    assert_non_null(f);
    assert_non_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    assert_string_equal(buf, "precious");
    struct stat st;
    assert_int_equal(lstat(planted, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    /* the copy went to PLANTED.PID-1, and that is the name reported */
    char alt[160];
    snprintf(alt, sizeof(alt), "%s.", planted);
    assert_true(file_has(slog, "\"in_doubt_saved\"", alt));
    assert_true(wait_log(slog, "exists already", 1));
    DIR *dd = opendir(dir);
    assert_non_null(dd);
    unsigned found = 0;
    for (struct dirent *de; (de = readdir(dd));) {
        char pth[PATH_MAX];
        snprintf(pth, sizeof(pth), "%s/%s", dir, de->d_name);
        if (!strncmp(de->d_name, "in-doubt.hvs.", 13)) {
            assert_int_equal(stat(pth, &st), 0);
            assert_int_equal(st.st_mode & 07777, 0600);
            assert_true(st.st_size > (128 << 10));
            found++;
        }
        assert_null(strstr(de->d_name, ".tmp")); /* no temporary left */
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            unlink(pth);
    }
    closedir(dd);
    assert_int_equal(found, 1);
    rmdir(dir);
    if (rx.res.g) {
        struct domain *rd = rx.res.g->d;
        guest_destroy(rx.res.g);
        domain_destroy(rd);
    }
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
    model_free(mo);
    print_message("# sender in doubt with a symlink planted at its save name: not followed, "
                  "saved beside it (0600)\n");
}

/* A peer that accepts a migration and cuts it after some bytes. */
struct cutter {
    int lfd;
    uint16_t port;
    size_t cut_after;
    pthread_t t;
};

static void *cutter_main(void *arg)
{
    struct cutter *c = arg;
    int fd;
    if (net_accept(c->lfd, 30000, &fd) < 0)
        return NULL;
    static uint8_t buf[1 << 16];
    size_t got = 0;
    while (got < c->cut_after) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    shutdown(fd, SHUT_RDWR);
    close(fd);
    return NULL;
}

/* hugevm run --migrate-to whose migration fails midway (the peer cuts it
 * inside round 0): the guest runs on for the rest of --seconds and
 * --save-on-failure keeps it in a file that restores and runs; without it
 * the run still goes to its end, and says how to keep the guest. */
static void test_process_run_migrate_fails(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    char dir[] = "/tmp/hvrunfailXXXXXX";
    assert_non_null(mkdtemp(dir));
    char log[96], saved[96], relog[96], to[64];
    snprintf(log, sizeof(log), "%s/run.json", dir);
    snprintf(saved, sizeof(saved), "%s/kept.hvs", dir);
    snprintf(relog, sizeof(relog), "%s/restore.json", dir);
    for (int with_save = 1; with_save >= 0; with_save--) {
        struct cutter c = {.cut_after = 4 << 20};
        struct sockaddr_in sa;
        assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
        assert_int_equal(net_listen(&sa, &c.lfd, &c.port), 0);
        assert_int_equal(pthread_create(&c.t, NULL, cutter_main, &c), 0);
        snprintf(to, sizeof(to), "127.0.0.1:%u", c.port);
        char *argv[] = {hv, "run", "--guest-mem", "128M", "--workload", "writer",
                        "--write-rate", "20000", "--seconds", "2", "--after", "0.2",
                        "--migrate-to", to, "--insecure", "--json",
                        with_save ? "--save-on-failure" : NULL,
                        saved, NULL};
        uint64_t t0 = hv_now_ns();
        int st = wait_deadline(spawn(argv, log), 90);
        double s = (double)(hv_now_ns() - t0) / 1e9;
        pthread_join(c.t, NULL);
        close(c.lfd);
        if (st != 1)
            fail_msg("run --migrate-to to a cutting peer exited %d, not 1; log in %s", st, log);
        assert_true(file_has(log, "\"guest_kept\"", "true"));
        assert_true(file_has(log, "\"ok\"", "false"));
        assert_true(s >= 1.8); /* it ran to the end of --seconds */
        if (!with_save) {
            assert_true(file_has(log, "\"saved_on_failure\"", ","));
            continue;
        }
        assert_true(file_has(log, "\"saved_on_failure\"", saved));
        struct stat sb;
        assert_int_equal(stat(saved, &sb), 0);
        assert_int_equal(sb.st_mode & 07777, 0600);
        char *xargv[] = {hv, "restore", saved, "--run", "--seconds", "0.2", "--host-mem", "1G",
                         "--json", NULL};
        int xs = wait_deadline(spawn(xargv, relog), 60);
        if (xs != 0 || !file_has(relog, "\"resumed\"", "true"))
            fail_msg("restore --run of the kept guest exited %d; log in %s", xs, relog);
    }
    unlink(saved);
    unlink(log);
    unlink(relog);
    rmdir(dir);
    print_message("# run --migrate-to cut midway: the guest ran to the end of --seconds, "
                  "--save-on-failure kept it and it resumed\n");
}

/* ---- receiver availability: deadlines, strangers, busy -------------------------- */

/* A peer on port that writes bytes in pieces of `chunk` every gap_ms, and
 * notes when the receiver closed the connection on it (seconds after it
 * connected; < 0: never, within the bytes and 20 s after them). */
struct trickle {
    uint16_t port;
    const uint8_t *bytes;
    size_t len, chunk;
    unsigned gap_ms;
    double closed_s;
    char seen[512]; /* the receiver's last bytes, printable */
    pthread_t t;
};

static bool peer_closed(int fd, struct trickle *tr)
{
    uint8_t buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0)
            return true;
        if (n < 0)
            return errno != EAGAIN && errno != EWOULDBLOCK;
        size_t k = 0;
        for (ssize_t j = 0; j < n && k + 1 < sizeof(tr->seen); j++)
            if (buf[j] >= 0x20 && buf[j] < 0x7f)
                tr->seen[k++] = (char)buf[j];
        if (k)
            tr->seen[k] = 0;
    }
}

static void *trickle_main(void *arg)
{
    struct trickle *tr = arg;
    int fd = connect_to(tr->port);
    uint64_t t0 = hv_now_ns();
    tr->closed_s = -1;
    for (size_t off = 0; off < tr->len; off += tr->chunk) {
        size_t n = tr->len - off < tr->chunk ? tr->len - off : tr->chunk;
        if (peer_closed(fd, tr) || send(fd, tr->bytes + off, n, MSG_NOSIGNAL) < 0)
            goto closed;
        sleep_ms(tr->gap_ms);
    }
    for (int i = 0; i < 400; i++) {
        if (peer_closed(fd, tr))
            goto closed;
        sleep_ms(50);
    }
    close(fd);
    return NULL;
closed:
    tr->closed_s = (double)(hv_now_ns() - t0) / 1e9;
    close(fd);
    return NULL;
}

static void trickle_run(struct trickle *tr)
{
    assert_int_equal(pthread_create(&tr->t, NULL, trickle_main, tr), 0);
    pthread_join(tr->t, NULL);
}

/* A HELLO frame (version v) into out (32 bytes). */
static size_t hello_bytes(uint8_t *out, uint32_t v)
{
    struct mig_hello h = {htole32(v), htole32(MIG_HELLO_VERIFY)};
    frame(out, MIG_HELLO, sizeof(h), sizeof(h), &h, true);
    memcpy(out + sizeof(struct mig_frame), &h, sizeof(h));
    return sizeof(struct mig_frame) + sizeof(h);
}

/* Start a receiver thread with these deadlines. */
static void rx_start_deadlines(struct rx_env *r, struct machine *m, int handshake_ms,
                               int timeout_ms, uint64_t total_ms)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->m = m;
    r->o.handshake_ms = handshake_ms;
    r->o.timeout_ms = timeout_ms;
    r->o.total_ms = total_ms;
    rx_listen(r);
    assert_int_equal(pthread_create(&r->t, NULL, rx_main, r), 0);
}

/* Bytes that trickle in do not extend a deadline: a HELLO sent one byte
 * every 150 ms is cut at the handshake's deadline (not counted as a
 * sender); after the handshake, a DATA frame trickled the same way is cut
 * at the frame's deadline; and small frames each on time are cut at the
 * migration's deadline.  Each error names the deadline. */
static void test_receiver_deadlines(void **state)
{
    (void)state;
    struct machine *rm = new_machine(1 * GiB);
    uint8_t buf[4096];
    struct rx_env rx;
    struct trickle tr;

    /* the handshake: 32 bytes at 150 ms would take 4.8 s; deadline 0.6 s */
    size_t n = hello_bytes(buf, MIG_VERSION);
    rx_start_deadlines(&rx, rm, 600, 20000, 0);
    tr = (struct trickle){.port = rx.port, .bytes = buf, .len = n, .chunk = 1, .gap_ms = 150};
    trickle_run(&tr);
    rx_join(&rx);
    print_message("# handshake trickle: cut after %.2f s: %s\n", tr.closed_s, rx.res.err);
    assert_int_equal(rx.rc, -ETIMEDOUT);
    assert_false(rx.res.handshake_passed);
    assert_non_null(strstr(rx.res.err, "handshake's deadline"));
    assert_true(tr.closed_s > 0.4 && tr.closed_s < 2.5);
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);

    /* a frame after the handshake: HELLO at once, then a 4 KiB DATA frame
     * one byte every 150 ms; the frame's deadline is 1 s */
    n = hello_bytes(buf, MIG_VERSION);
    uint8_t body[64] = {0};
    frame(buf + n, MIG_DATA, 4096, 4096, NULL, true);
    memcpy(buf + n + sizeof(struct mig_frame), body, sizeof(body));
    rx_start_deadlines(&rx, rm, 20000, 1000, 0);
    int fd = connect_to(rx.port);
    assert_int_equal(net_write_all(fd, buf, n), 0);
    tr = (struct trickle){.bytes = buf + n, .len = sizeof(struct mig_frame) + sizeof(body),
                          .chunk = 1, .gap_ms = 150};
    uint64_t t0 = hv_now_ns();
    for (size_t off = 0; off < tr.len && !peer_closed(fd, &tr); off++) {
        if (send(fd, tr.bytes + off, 1, MSG_NOSIGNAL) < 0)
            break;
        sleep_ms(150);
    }
    double cut = (double)(hv_now_ns() - t0) / 1e9;
    rx_join(&rx);
    close(fd);
    print_message("# frame trickle after the handshake: cut after %.2f s: %s\n", cut,
                  rx.res.err);
    assert_true(rx.res.handshake_passed);
    assert_non_null(strstr(rx.res.err, "frame's deadline"));
    assert_true(cut < 3.5); /* 88 bytes at 150 ms would be 13 s */
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);

    /* frames each on time, the whole too long: the stream's first 24 bytes
     * as 24 one-byte DATA frames, one every 100 ms; migration deadline 1 s */
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    assert_int_equal(stream_write_headers(&w), 0);
    n = hello_bytes(buf, MIG_VERSION);
    rx_start_deadlines(&rx, rm, 20000, 20000, 1000);
    fd = connect_to(rx.port);
    assert_int_equal(net_write_all(fd, buf, n), 0);
    t0 = hv_now_ns();
    for (size_t k = 0; k < 24 && !peer_closed(fd, &tr); k++) {
        uint8_t f[sizeof(struct mig_frame) + 1];
        frame(f, MIG_DATA, 1, 1, mem.buf + k, true);
        f[sizeof(struct mig_frame)] = mem.buf[k];
        if (send(fd, f, sizeof(f), MSG_NOSIGNAL) < 0)
            break;
        sleep_ms(100);
    }
    cut = (double)(hv_now_ns() - t0) / 1e9;
    rx_join(&rx);
    close(fd);
    stream_mem_free(&mem);
    print_message("# frames on time, whole too long: cut after %.2f s: %s\n", cut, rx.res.err);
    assert_non_null(strstr(rx.res.err, "migration's deadline"));
    assert_true(cut < 2.2);
    rx_nothing_left(&rx);
    migrate_recv_result_free(&rx.res);
    machine_destroy(rm);
}

struct slow_rx {
    int lfd;
    uint16_t port;
    pthread_t t;
};

/* A fake receiver: reads HELLO, then trickles a valid READY a byte every
 * 300 ms (9.6 s in all), then waits for the sender to go. */
static void *slow_rx_main(void *arg)
{
    struct slow_rx *r = arg;
    int fd;
    if (net_accept(r->lfd, 20000, &fd) < 0)
        return NULL;
    uint8_t hb[64], ready[64];
    (void)!net_read_all(fd, hb, 32, NULL);
    size_t n = hello_bytes(ready, MIG_VERSION);
    ((struct mig_frame *)ready)->type = htole16(MIG_READY);
    struct trickle tr = {0};
    for (size_t k = 0; k < n && !peer_closed(fd, &tr); k++) {
        if (send(fd, ready + k, 1, MSG_NOSIGNAL) < 0)
            break;
        sleep_ms(300);
    }
    close(fd);
    return NULL;
}

/* The sender's control frames are whole within its timeout too: a fake
 * receiver trickling READY cannot hold it (its guest runs on). */
static void test_sender_trickled(void **state)
{
    (void)state;
    struct slow_rx r;
    struct sockaddr_in sa;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    assert_int_equal(net_listen(&sa, &r.lfd, &r.port), 0);
    assert_int_equal(pthread_create(&r.t, NULL, slow_rx_main, &r), 0);
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    sender_init(&e, 1, 20000, 0.02);
    struct migrate_opts o = {.timeout_ms = 1000};
    int fd = connect_to(r.port);
    uint64_t t0 = hv_now_ns();
    int rc = send_fd(e.g, fd, &o, rep);
    double s = (double)(hv_now_ns() - t0) / 1e9;
    close(fd);
    pthread_join(r.t, NULL);
    close(r.lfd);
    print_message("# READY trickled: the sender gave up after %.2f s: %s\n", s, rep->err);
    assert_int_equal(rc, -ETIMEDOUT);
    assert_non_null(strstr(rep->err, "READY"));
    assert_true(s < 3.0);
    sender_healthy(&e, rep);
    free(rep);
    sender_fini(&e);
}

struct busy_probe {
    uint16_t port;
    double answered_s; /* < 0: no answer */
    char seen[512];
};

/* From the sender's first round: a second connection to the receiver must
 * get ABORT "busy" at once. */
static void probe_busy(void *ctx, const struct migrate_round *r)
{
    struct busy_probe *b = ctx;
    if (r->index != 0 || b->answered_s >= 0)
        return;
    uint8_t hb[64];
    size_t n = hello_bytes(hb, MIG_VERSION);
    int fd = connect_to(b->port);
    uint64_t t0 = hv_now_ns();
    (void)!send(fd, hb, n, MSG_NOSIGNAL);
    struct trickle tr = {0};
    for (int i = 0; i < 100; i++) {
        if (peer_closed(fd, &tr)) {
            b->answered_s = (double)(hv_now_ns() - t0) / 1e9;
            break;
        }
        sleep_ms(20);
    }
    snprintf(b->seen, sizeof(b->seen), "%s", tr.seen);
    close(fd);
}

/* hugevm receive with its default --attempts 3: three junk connections
 * (garbage, an immediate close, a HELLO of another version), a peer that
 * trickles its HELLO, and one that passes the handshake then trickles its
 * data (an attempt, cut by --timeout) do not keep a real sender out: it
 * migrates, and a connection arriving meanwhile is turned away at once
 * with the reason. */
static void test_process_receiver_available(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test (%s)\n",
                      hv);
        skip();
    }
    char dir[] = "/tmp/hvavailXXXXXX";
    assert_non_null(mkdtemp(dir));
    char portf[96], rlog[96];
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(rlog, sizeof(rlog), "%s/receiver.json", dir);
    char *rargv[] = {hv, "receive", "--listen", "127.0.0.1:0", "--port-file", portf,
                     "--accept-timeout", "120", "--host-mem", "4G", "--timeout", "2",
                     "--handshake-timeout", "3", "--run", "0.1", "--insecure", "--json", NULL};
    pid_t rp = spawn(rargv, rlog);
    unsigned port = wait_port_file(portf, 20);
    assert_true(port != 0);
    uint8_t buf[256];

    static const char http[] = "GET / HTTP/1.0\r\n\r\n";
    struct trickle tr = {.port = (uint16_t)port, .bytes = (const uint8_t *)http,
                         .len = sizeof(http) - 1, .chunk = sizeof(http), .gap_ms = 0};
    trickle_run(&tr);
    assert_true(tr.closed_s >= 0);
    close(connect_to((uint16_t)port));
    size_t n = hello_bytes(buf, 99);
    tr = (struct trickle){.port = (uint16_t)port, .bytes = buf, .len = n, .chunk = n};
    trickle_run(&tr);
    assert_true(tr.closed_s >= 0);
    n = hello_bytes(buf, MIG_VERSION);
    tr = (struct trickle){.port = (uint16_t)port, .bytes = buf, .len = n, .chunk = 1,
                          .gap_ms = 200};
    trickle_run(&tr);
    print_message("# HELLO trickled: cut after %.2f s\n", tr.closed_s);
    assert_true(tr.closed_s > 2 && tr.closed_s < 6);
    /* passes the handshake, then trickles: one attempt, cut by --timeout 2 */
    n = hello_bytes(buf, MIG_VERSION);
    frame(buf + n, MIG_DATA, 4096, 4096, NULL, true);
    memset(buf + n + sizeof(struct mig_frame), 0, 64);
    int fd = connect_to((uint16_t)port);
    assert_int_equal(net_write_all(fd, buf, n), 0);
    uint64_t t0 = hv_now_ns();
    struct trickle seen = {0};
    for (size_t off = n; off < n + sizeof(struct mig_frame) + 64 && !peer_closed(fd, &seen);
         off++) {
        if (send(fd, buf + off, 1, MSG_NOSIGNAL) < 0)
            break;
        sleep_ms(150);
    }
    double cut = (double)(hv_now_ns() - t0) / 1e9;
    close(fd);
    print_message("# DATA trickled after the handshake: cut after %.2f s\n", cut);
    assert_true(cut < 5);

    /* the real sender, behind eight peers trickling their HELLO at once
     * (12.8 s each; served one after the other they would hold it 8 x 3 s,
     * past its 10 s timeout) */
    struct sender_env e;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    assert_non_null(rep);
    sender_init(&e, 1, 20000, 0.02);
    uint8_t hb[64];
    n = hello_bytes(hb, MIG_VERSION);
    struct trickle crowd[8];
    for (unsigned i = 0; i < 8; i++) {
        crowd[i] = (struct trickle){.port = (uint16_t)port, .bytes = hb, .len = n, .chunk = 1,
                                    .gap_ms = 400};
        assert_int_equal(pthread_create(&crowd[i].t, NULL, trickle_main, &crowd[i]), 0);
    }
    sleep_ms(300); /* they are in first */
    struct busy_probe probe = {.port = (uint16_t)port, .answered_s = -1};
    struct migrate_opts o = {.timeout_ms = 10000, .on_round = probe_busy, .ctx = &probe};
    fd = connect_to((uint16_t)port);
    int rc = send_fd(e.g, fd, &o, rep);
    close(fd);
    for (unsigned i = 0; i < 8; i++)
        pthread_join(crowd[i].t, NULL);
    if (rc != 0)
        fail_msg("the real sender failed: %s (receiver log %s)", rep->err, rlog);
    /* the crowd was turned away when the migration began, with the reason */
    for (unsigned i = 0; i < 8; i++) {
        if (crowd[i].closed_s < 0 || crowd[i].closed_s > 6 ||
            !strstr(crowd[i].seen, "receiver busy"))
            fail_msg("trickler %u: closed after %.2f s, saw \"%s\"", i, crowd[i].closed_s,
                     crowd[i].seen);
    }
    int rs = wait_deadline(rp, 60);
    if (rs != 0)
        fail_msg("receiver exited %d; log in %s", rs, rlog);
    assert_true(file_has(rlog, "\"ok\"", "true"));
    assert_true(file_has(rlog, "\"attempt\"", "2"));
    assert_true(wait_log(rlog, "not counted against --attempts", 0));
    print_message("# a connection during the migration: answered after %.3f s: %s\n",
                  probe.answered_s, probe.seen);
    assert_true(probe.answered_s >= 0 && probe.answered_s < 1.0);
    assert_non_null(strstr(probe.seen, "receiver busy"));
    unlink(portf);
    unlink(rlog);
    rmdir(dir);
    free(rep);
    sender_fini(&e);
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
    cmocka_unit_test(test_digest_faults),
    cmocka_unit_test(test_cut_by_sender),
    cmocka_unit_test(test_cut_by_proxy),
    cmocka_unit_test(test_channels),
    cmocka_unit_test(test_channels_cut),
    cmocka_unit_test(test_commit_lost),
    cmocka_unit_test(test_resumed_lost),
    cmocka_unit_test(test_hostile_sender),
    cmocka_unit_test(test_hostile_receiver),
    cmocka_unit_test(test_live_stream_repeats),
    cmocka_unit_test(test_pod_guest),
    cmocka_unit_test(test_postcopy_soft),
    cmocka_unit_test(test_map_changes),
    cmocka_unit_test(test_no_foreign_bytes),
    cmocka_unit_test(test_processes_loopback),
    cmocka_unit_test(test_processes_netns),
    cmocka_unit_test(test_process_receiver_in_doubt),
    cmocka_unit_test(test_process_in_doubt_save_fails),
    cmocka_unit_test(test_process_sender_in_doubt_symlink),
    cmocka_unit_test(test_process_run_migrate_fails),
    cmocka_unit_test(test_receiver_deadlines),
    cmocka_unit_test(test_sender_trickled),
    cmocka_unit_test(test_process_receiver_available),
    cmocka_unit_test(test_pc_state),
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TEST_FILTER")) /* run only the tests matching a pattern */
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

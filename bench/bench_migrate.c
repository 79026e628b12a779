/*
 * bench_migrate.c - live migration over loopback TCP of a 2 GiB guest whose
 * every page holds data (half random, half a repeated pattern: zstd finds
 * about 2:1), at two dirty rates, with and without compression.  Each case
 * reports total time, downtime, bytes per round, and the throughput of the
 * full-copy round next to a plain TCP transfer of the same number of bytes
 * over loopback measured in the same run (the limit; goal: ratio >= 0.5),
 * received as the migration receives: into the receiving machine's memory,
 * GiBs of it, not into one buffer that stays in the cache (that flattering
 * figure is reported too, as *_vs_hot_buffer),
 * and the CPU cores busy during the full copy (sender, receiver and guest
 * share the host's cores over loopback).  The receiver's machine is
 * resident (committed when created, outside the timing, as a hypervisor's
 * RAM is): a lazy one runs at the host's first-touch speed, which
 * bench_stream reports.  Compressed cases also give the stream rate before
 * compression (what the guest gains) against the same limit.  Each case runs HUGEVM_BENCH_MIGRATE_RUNS
 * times (default 3); figures are medians.
 *
 * TLS: the 20k case again over TLS 1.3 (pre-shared key, AES-128-GCM), a
 * plain and a TLS migration in turn, run after run: the TLS full-copy rate
 * is set against the plain migration's of the same run (goal: ratio >=
 * 0.70), and against plain TCP.  The handshake is outside the timing (it
 * happens before migrate_send, as in hugevm migrate).
 *
 * Parallel channels: in the same runs, plain and TLS again over
 * HUGEVM_BENCH_MIGRATE_CHANNELS channels (default 2), each set against its
 * one-channel migration of the same run (*_<n>ch_vs_1ch) and against plain
 * TCP.  The further channels connect inside migrate_send (their TLS
 * handshakes are in the timing of the whole migration, not of its full
 * copy).
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "chan.h"
#include "machine.h"
#include "migrate.h"
#include "net.h"

#define GUEST (2 * GiB)

struct sink {
    int lfd;
    uint64_t bytes;
    struct machine *m;
    struct migrate_recv_result res;
    int rc;
    double busy; /* receiving thread: CPU time / wall time */
    uint8_t *dst; /* plain sink: receive into [dst, dst + dst_len) in turn */
    size_t dst_len;
    struct chan_tls *tls; /* migration over TLS (NULL: plain) */
    struct sockaddr_in sa; /* where the sender's further channels connect */
};

/* The PSK contexts of the TLS case (created once). */
static struct chan_tls *tls_server, *tls_client;

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *plain_sink(void *arg)
{
    struct sink *s = arg;
    int fd;
    if (net_accept(s->lfd, 10000, &fd) < 0)
        return NULL;
    uint8_t *hot = s->dst ? NULL : malloc(MiB);
    size_t off = 0;
    for (;;) {
        uint8_t *p = s->dst ? s->dst + off : hot;
        size_t room = s->dst ? s->dst_len - off : MiB;
        ssize_t n = recv(fd, p, room < MiB ? room : MiB, 0);
        if (n <= 0)
            break;
        s->bytes += (uint64_t)n;
        if (s->dst && (off += (size_t)n) == s->dst_len)
            off = 0;
    }
    free(hot);
    close(fd);
    return NULL;
}

/* migrate_recv_opts.join: the sender's next channel. */
static struct chan *sink_join(void *ctx, uint64_t by, char *err, size_t len)
{
    struct sink *s = ctx;
    uint64_t now = hv_now_ns();
    int fd;
    if (net_accept(s->lfd, by > now ? (int)((by - now) / 1000000) + 1 : 1, &fd) < 0) {
        snprintf(err, len, "no further channel");
        return NULL;
    }
    struct chan *ch;
    return chan_open(fd, s->tls, 10000, &ch, err, len) < 0 ? NULL : ch;
}

/* migrate_opts.open_channel: a further channel to the sink. */
static struct chan *sink_connect(void *ctx, char *err, size_t len)
{
    struct sink *s = ctx;
    int fd;
    if (net_connect(&s->sa, 5000, &fd) < 0) {
        snprintf(err, len, "connect");
        return NULL;
    }
    struct chan *ch;
    return chan_open(fd, s->tls ? tls_client : NULL, 10000, &ch, err, len) < 0 ? NULL : ch;
}

static void *mig_sink(void *arg)
{
    struct sink *s = arg;
    (void)pthread_setname_np(pthread_self(), "bench-receive");
    int fd;
    s->rc = -ETIMEDOUT;
    if (net_accept(s->lfd, 10000, &fd) < 0)
        return NULL;
    struct chan *ch;
    char err[CHAN_ERR_LEN];
    s->rc = chan_open(fd, s->tls, 10000, &ch, err, sizeof(err));
    if (s->rc < 0) {
        snprintf(s->res.err, sizeof(s->res.err), "%s", err);
        return NULL;
    }
    double c0 = thread_cpu_s();
    uint64_t t0 = hv_now_ns();
    struct migrate_recv_opts o = {.join = sink_join, .jctx = s};
    s->rc = migrate_receive(s->m, ch, &o, &s->res);
    s->busy = (thread_cpu_s() - c0) * 1e9 / (double)(hv_now_ns() - t0);
    chan_close(ch);
    return NULL;
}

static int listen_any(int *lfd, struct sockaddr_in *sa)
{
    uint16_t port;
    if (net_parse_addr("127.0.0.1:0", sa) < 0 || net_listen(sa, lfd, &port) < 0)
        return -1;
    sa->sin_port = htons(port);
    return 0;
}

/* MB/s of a plain loopback TCP transfer of `bytes`. */
/* MB/s of a plain TCP transfer of `bytes` over loopback from a 1 MiB
 * buffer, received into [dst, dst + len) in turn (the receiving machine's
 * memory, as the migration receives into), or into one 1 MiB buffer that
 * stays in the cache (dst NULL: a flattering limit, reported for
 * comparison). */
static double cpu_s(void);

static double plain_tcp(uint64_t bytes, uint8_t *dst, size_t len, double *us_per_mb)
{
    struct sink s = {.dst = dst, .dst_len = len};
    struct sockaddr_in sa;
    pthread_t t;
    int fd;
    if (listen_any(&s.lfd, &sa) < 0 || pthread_create(&t, NULL, plain_sink, &s))
        return 0;
    if (net_connect(&sa, 5000, &fd) < 0)
        bench_fail("net_connect(plain TCP)");
    uint8_t *buf = malloc(MiB);
    memset(buf, 0x5a, MiB);
    double c0 = cpu_s();
    uint64_t t0 = hv_now_ns();
    for (uint64_t sent = 0; sent < bytes; sent += MiB)
        if (net_write_all(fd, buf, MiB) < 0)
            break;
    shutdown(fd, SHUT_WR);
    pthread_join(t, NULL);
    double mbs = (double)s.bytes * 1e3 / (double)(hv_now_ns() - t0);
    if (us_per_mb) /* both ends' CPU (this process's) per MB moved */
        *us_per_mb = s.bytes ? (cpu_s() - c0) * 1e12 / (double)s.bytes : 0;
    close(fd);
    close(s.lfd);
    free(buf);
    return mbs;
}

/* The random case: every page is random data (nothing for zstd or the
 * zero check), as the downtime goal states it. */
static bool fill_random;

static void fill(struct domain *d)
{
    struct hv_rng r = {1};
    for (gfn_t g = 0; g < GUEST >> PAGE_SHIFT; g++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
        if (!p2m_is_ram(t))
            continue;
        uint64_t *p = machine_ptr(d->m, mfn);
        for (unsigned i = 0; i < 256; i++)
            p[i] = hv_rng_next(&r);
        for (unsigned i = 256; i < 512; i++)
            p[i] = fill_random ? hv_rng_next(&r) : 0x0101010101010101ULL * (g & 0xff);
    }
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

struct cpu_mark {
    double cpu0, cpu_r0;
};

static void on_round(void *ctx, const struct migrate_round *r)
{
    struct cpu_mark *c = ctx;
    if (r->index == 0)
        c->cpu_r0 = cpu_s() - c->cpu0;
}

enum { M_TOTAL, M_DOWN, M_ROUNDS, M_R0, M_S0, M_OVERALL, M_LIMIT, M_LIMIT_HOT, M_CPU, M_RBUSY, M_SBUSY, M_GIBS, M_DIGEST, M_FINAL, M_CPU_MB, M_LIMIT_CPU_MB, M_MIB0,
       M_NR = M_MIB0 + 6 };

/* One migration; m[] gets its figures.  false when it failed. */
static bool run_once(const char *tag, uint64_t rate, bool compress, bool tls, unsigned nch,
                     double *m)
{
    struct machine *sm, *rm;
    struct domain *d;
    struct domain_config c;
    struct guest *g;
    bool ok = false;
    domain_config_default(&c);
    if (machine_create(&sm, GUEST + GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create(sender)");
    struct machine_opts ro = {.bytes = GUEST + 512 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                              .resident = true};
    int rc = machine_create_opts(&rm, &ro);
    if (rc < 0)
        bench_fail_rc("machine_create_opts(receiver, resident)", rc);
    if (domain_create(sm, &c, &d) < 0)
        bench_fail("domain_create");
    if (domain_populate_guest(d, GUEST, NULL) < 0)
        bench_fail("domain_populate_guest");
    fill(d);
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.wss = 0.25;
    wc.write_rate = rate;
    if (guest_create_soft(d, 1, NULL, &wc, &g) < 0)
        bench_fail("guest_create_soft");
    if (guest_start(g) < 0)
        bench_fail("guest_start");
    struct sink s = {.m = rm, .tls = tls ? tls_server : NULL};
    struct sockaddr_in sa;
    pthread_t t;
    int fd;
    if (listen_any(&s.lfd, &sa) < 0)
        bench_fail("listen on 127.0.0.1");
    s.sa = sa;
    if (pthread_create(&t, NULL, mig_sink, &s))
        bench_fail("pthread_create(receiver)");
    if (net_connect(&sa, 5000, &fd) < 0)
        bench_fail("net_connect(migration)");
    struct chan *ch;
    char err[CHAN_ERR_LEN];
    if (chan_open(fd, tls ? tls_client : NULL, 10000, &ch, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", tag, err);
        bench_fail("chan_open(migration)");
    }
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    struct cpu_mark cm = {cpu_s(), 0};
    struct migrate_opts o = {.compress = compress, .on_round = on_round, .ctx = &cm,
                             .channels = nch, .open_channel = sink_connect, .open_ctx = &s};
    /* HUGEVM_BENCH_MIGRATE_DOWNTIME_MS: the sender's downtime target
     * (default MIGRATE_DEFAULT_DOWNTIME_MS) */
    const char *dt = getenv("HUGEVM_BENCH_MIGRATE_DOWNTIME_MS");
    if (dt)
        o.downtime_ms = strtod(dt, NULL);
    /* HUGEVM_BENCH_WHOLE_SUMS=1: frames checksummed whole (pages hashed
     * twice on each side, as before MIG_F_SEGS), for side-by-side runs */
    const char *ws = getenv("HUGEVM_BENCH_WHOLE_SUMS");
    o.whole_frame_sums = ws && !strcmp(ws, "1");
    double c0 = thread_cpu_s();
    uint64_t t0 = hv_now_ns();
    rc = migrate_send(g, ch, &o, rep);
    double sbusy = (thread_cpu_s() - c0) * 1e9 / (double)(hv_now_ns() - t0);
    chan_close(ch);
    pthread_join(t, NULL);
    close(s.lfd);
    if (rc < 0 || s.rc < 0) {
        fprintf(stderr, "%s: migration failed: %s / %s\n", tag, rep->err, s.res.err);
    } else if (rep->channels != (nch ? nch : 1)) {
        fprintf(stderr, "%s: %u channels ran, not %u: %s\n", tag, rep->channels, nch,
                rep->channels_why);
    } else {
        const struct migrate_round *r0 = &rep->rounds[0];
        m[M_TOTAL] = rep->total_s;
        m[M_DOWN] = rep->downtime_s * 1e3;
        m[M_DIGEST] = rep->digest_s * 1e3;
        m[M_FINAL] = (double)rep->rounds[rep->nr_rounds - 1].ns / 1e6;
        m[M_ROUNDS] = rep->nr_rounds;
        m[M_R0] = r0->mb_per_s;
        m[M_S0] = r0->ns ? (double)r0->stream_bytes * 1e3 / (double)r0->ns : 0;
        m[M_OVERALL] = (double)rep->st.wire_bytes / rep->total_s / 1e6;
        m[M_CPU] = r0->ns ? cm.cpu_r0 * 1e9 / (double)r0->ns : 0;
        m[M_CPU_MB] = r0->wire_bytes ? cm.cpu_r0 * 1e12 / (double)r0->wire_bytes : 0;
        m[M_GIBS] = (double)GUEST / GiB / rep->total_s;
        m[M_RBUSY] = s.busy;
        m[M_SBUSY] = sbusy;
        for (unsigned i = 0; i < 6; i++)
            m[M_MIB0 + i] = i < rep->nr_rounds ? (double)rep->rounds[i].wire_bytes / MiB : 0;
        ok = true;
    }
    uint64_t wire = rep->st.wire_bytes;
    free(rep);
    if (s.res.g) {
        struct domain *rd = s.res.g->d;
        guest_destroy(s.res.g);
        domain_destroy(rd);
    }
    migrate_recv_result_free(&s.res);
    guest_destroy(g);
    domain_destroy(d);
    machine_destroy(sm);
    if (ok) { /* the limits: into the receiver's (now free) memory, and hot */
        m[M_LIMIT] = plain_tcp(wire, rm->base, GUEST, &m[M_LIMIT_CPU_MB]);
        m[M_LIMIT_HOT] = plain_tcp(wire, NULL, 0, NULL);
    }
    machine_destroy(rm);
    return ok;
}

#define MAX_RUNS 15

static void one_case(bench_add_fn add, uint64_t rate, bool compress, unsigned runs)
{
    char name[96], tag[48];
    snprintf(tag, sizeof(tag), "migrate_%s%lluk%s", fill_random ? "random_" : "",
             (unsigned long long)(rate / 1000), compress ? "_zstd" : "");
    static double m[MAX_RUNS][M_NR], col[MAX_RUNS], med[M_NR];
    unsigned n = 0;
    for (unsigned i = 0; i < runs; i++)
        if (run_once(tag, rate, compress, false, 1, m[n]))
            n++;
    if (!n)
        return;
    for (unsigned f = 0; f < M_NR; f++) {
        for (unsigned i = 0; i < n; i++)
            col[i] = m[i][f];
        med[f] = bench_median(col, (int)n);
    }
    /* the ratios: medians of the per-run ratios (each against its own limit) */
    double r_full[MAX_RUNS], r_all[MAX_RUNS], r_s[MAX_RUNS], r_hot[MAX_RUNS];
    for (unsigned i = 0; i < n; i++) {
        r_hot[i] = m[i][M_LIMIT_HOT] > 0 ? m[i][M_R0] / m[i][M_LIMIT_HOT] : 0;
        r_s[i] = m[i][M_LIMIT] > 0 ? m[i][M_S0] / m[i][M_LIMIT] : 0;
        r_full[i] = m[i][M_LIMIT] > 0 ? m[i][M_R0] / m[i][M_LIMIT] : 0;
        r_all[i] = m[i][M_LIMIT] > 0 ? m[i][M_OVERALL] / m[i][M_LIMIT] : 0;
    }
    double rf = bench_median(r_full, (int)n), ra = bench_median(r_all, (int)n);
    snprintf(name, sizeof(name), "%s_runs", tag);
    add(name, n, "runs", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_total_s", tag);
    add(name, med[M_TOTAL], "s", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_downtime_ms", tag);
    add(name, med[M_DOWN], "ms", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_downtime_final_round_ms", tag);
    add(name, med[M_FINAL], "ms", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_digest_at_pause_ms", tag);
    add(name, med[M_DIGEST], "ms", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_rounds", tag);
    add(name, med[M_ROUNDS], "rounds", 0, NULL, 0);
    for (unsigned i = 0; i < 6 && med[M_MIB0 + i] > 0; i++) {
        snprintf(name, sizeof(name), "%s_round%u_mib", tag, i);
        add(name, med[M_MIB0 + i], "MiB", 0, NULL, 0);
    }
    snprintf(name, sizeof(name), "%s_full_copy_mb_per_s", tag);
    add(name, med[M_R0], "MB/s", med[M_LIMIT], "plain_tcp_mb_per_s", rf);
    snprintf(name, sizeof(name), "%s_full_copy_vs_hot_buffer", tag);
    add(name, med[M_R0], "MB/s", med[M_LIMIT_HOT], "plain_tcp_hot_buffer_mb_per_s",
        bench_median(r_hot, (int)n));
    if (compress) { /* what the guest gains: stream bytes before compression */
        snprintf(name, sizeof(name), "%s_full_copy_stream_mb_per_s", tag);
        add(name, med[M_S0], "MB/s", med[M_LIMIT], "plain_tcp_mb_per_s",
            bench_median(r_s, (int)n));
    }
    snprintf(name, sizeof(name), "%s_overall_mb_per_s", tag);
    add(name, med[M_OVERALL], "MB/s", med[M_LIMIT], "plain_tcp_mb_per_s", ra);
    snprintf(name, sizeof(name), "%s_full_copy_cpu_cores", tag);
    add(name, med[M_CPU], "cores", 0, NULL, 0);
    /* CPU per byte, both ends (all of this process's threads): where the
     * cores are shared, the migration cannot run faster than plain TCP by
     * more than plain TCP's CPU per byte over its own (the ratio here) */
    double r_cpu[MAX_RUNS];
    for (unsigned i = 0; i < n; i++)
        r_cpu[i] = m[i][M_CPU_MB] > 0 ? m[i][M_LIMIT_CPU_MB] / m[i][M_CPU_MB] : 0;
    snprintf(name, sizeof(name), "%s_full_copy_cpu_us_per_mb", tag);
    add(name, med[M_CPU_MB], "us/MB", med[M_LIMIT_CPU_MB], "plain_tcp_cpu_us_per_mb",
        bench_median(r_cpu, (int)n));
    snprintf(name, sizeof(name), "%s_receiver_thread_busy", tag);
    add(name, med[M_RBUSY], "cpu/wall", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_migration_thread_busy", tag);
    add(name, med[M_SBUSY], "cpu/wall", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_guest_gib_per_s", tag);
    add(name, med[M_GIBS], "GiB/s", 0, NULL, 0);
}

/* PSK contexts for both sides from a throw-away key file.  false: none. */
static bool tls_setup(void)
{
    char path[] = "/tmp/hugevm-bench-pskXXXXXX";
    int fd = mkstemp(path); /* mode 0600 */
    if (fd < 0)
        return false;
    char line[80] = "bench:";
    struct hv_rng r = {hv_now_ns() | 1};
    for (int i = 0; i < 16; i++)
        snprintf(line + 6 + 2 * i, 3, "%02x", (unsigned)(hv_rng_next(&r) & 0xff));
    bool ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line);
    close(fd);
    char err[CHAN_ERR_LEN];
    struct chan_creds cr = {.psk_file = path};
    if (ok && (chan_tls_create(&cr, true, &tls_server, err, sizeof(err)) < 0 ||
               chan_tls_create(&cr, false, &tls_client, err, sizeof(err)) < 0)) {
        fprintf(stderr, "bench: TLS: %s\n", err);
        ok = false;
    }
    unlink(path);
    return ok;
}

/* A full-copy rate over nch channels against the same run's over one
 * and against plain TCP. */
static void channels_figures(bench_add_fn add, const char *tag, unsigned nch, unsigned n,
                             double (*one)[M_NR], double (*many)[M_NR])
{
    char name[96];
    double v1[MAX_RUNS], vn[MAX_RUNS], lim[MAX_RUNS], r1[MAX_RUNS], rt[MAX_RUNS];
    for (unsigned i = 0; i < n; i++) {
        v1[i] = one[i][M_R0];
        vn[i] = many[i][M_R0];
        lim[i] = many[i][M_LIMIT];
        r1[i] = v1[i] > 0 ? vn[i] / v1[i] : 0;
        rt[i] = lim[i] > 0 ? vn[i] / lim[i] : 0;
    }
    snprintf(name, sizeof(name), "%s_%uch_vs_1ch_full_copy_mb_per_s", tag, nch);
    add(name, bench_median(vn, (int)n), "MB/s", bench_median(v1, (int)n),
        "one_channel_full_copy_mb_per_s", bench_median(r1, (int)n));
    snprintf(name, sizeof(name), "%s_%uch_full_copy_vs_tcp", tag, nch);
    add(name, bench_median(vn, (int)n), "MB/s", bench_median(lim, (int)n), "plain_tcp_mb_per_s",
        bench_median(rt, (int)n));
}

/* Plain and TLS migrations in turn, on one channel and on nch; the TLS
 * full copy against the plain one of the same run, each on nch channels
 * against the same on one. */
static void tls_case(bench_add_fn add, uint64_t rate, unsigned runs)
{
    char name[80], tag[48], ptag[48];
    snprintf(tag, sizeof(tag), "migrate_%lluk_tls", (unsigned long long)(rate / 1000));
    snprintf(ptag, sizeof(ptag), "migrate_%lluk_plain", (unsigned long long)(rate / 1000));
    static double mp[MAX_RUNS][M_NR], mt[MAX_RUNS][M_NR], mpn[MAX_RUNS][M_NR],
        mtn[MAX_RUNS][M_NR];
    double ratio[MAX_RUNS], r_tcp[MAX_RUNS], vt[MAX_RUNS], vp[MAX_RUNS], lim[MAX_RUNS];
    double rb[MAX_RUNS], sb[MAX_RUNS];
    const char *env = getenv("HUGEVM_BENCH_MIGRATE_CHANNELS");
    unsigned nch = env ? (unsigned)strtoul(env, NULL, 10) : 2;
    if (nch < 2 || nch > MIG_MAX_CHANNELS)
        nch = 2;
    unsigned n = 0;
    if (!tls_setup())
        return;
    for (unsigned i = 0; i < runs; i++) {
        if (!run_once(tag, rate, false, false, 1, mp[n]) ||
            !run_once(tag, rate, false, true, 1, mt[n]) ||
            !run_once(tag, rate, false, false, nch, mpn[n]) ||
            !run_once(tag, rate, false, true, nch, mtn[n]))
            continue;
        vp[n] = mp[n][M_R0];
        vt[n] = mt[n][M_R0];
        lim[n] = mt[n][M_LIMIT];
        ratio[n] = vp[n] > 0 ? vt[n] / vp[n] : 0;
        r_tcp[n] = lim[n] > 0 ? vt[n] / lim[n] : 0;
        rb[n] = mt[n][M_RBUSY];
        sb[n] = mt[n][M_SBUSY];
        n++;
    }
    chan_tls_destroy(tls_server);
    chan_tls_destroy(tls_client);
    tls_server = tls_client = NULL;
    if (!n)
        return;
    snprintf(name, sizeof(name), "%s_runs", tag);
    add(name, n, "runs", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_full_copy_mb_per_s", tag);
    add(name, bench_median(vt, (int)n), "MB/s", bench_median(vp, (int)n),
        "plain_migration_full_copy_mb_per_s", bench_median(ratio, (int)n));
    snprintf(name, sizeof(name), "%s_full_copy_vs_tcp", tag);
    add(name, bench_median(vt, (int)n), "MB/s", bench_median(lim, (int)n), "plain_tcp_mb_per_s",
        bench_median(r_tcp, (int)n));
    snprintf(name, sizeof(name), "%s_receiver_thread_busy", tag);
    add(name, bench_median(rb, (int)n), "cpu/wall", 0, NULL, 0);
    snprintf(name, sizeof(name), "%s_migration_thread_busy", tag);
    add(name, bench_median(sb, (int)n), "cpu/wall", 0, NULL, 0);
    channels_figures(add, ptag, nch, n, mp, mpn);
    channels_figures(add, tag, nch, n, mt, mtn);
}

void bench_migrate(bench_add_fn add)
{
    static const uint64_t rates[] = {20000, 100000};
    const char *env = getenv("HUGEVM_BENCH_MIGRATE_RUNS");
    unsigned runs = env ? (unsigned)strtoul(env, NULL, 10) : 3;
    if (runs < 1)
        runs = 1;
    if (runs > MAX_RUNS)
        runs = MAX_RUNS;
    /* HUGEVM_BENCH_MIGRATE_TLS=only: the TLS comparison alone;
     * HUGEVM_BENCH_MIGRATE_RANDOM=only: the random-data case alone */
    const char *tls_env = getenv("HUGEVM_BENCH_MIGRATE_TLS");
    const char *rnd_env = getenv("HUGEVM_BENCH_MIGRATE_RANDOM");
    bool only_tls = tls_env && !strcmp(tls_env, "only");
    bool only_rnd = rnd_env && !strcmp(rnd_env, "only");
    if (!only_tls) { /* every page random, a light writer: the downtime goal's case */
        fill_random = true;
        one_case(add, rates[0], false, runs);
        fill_random = false;
    }
    if (only_rnd)
        return;
    for (size_t i = 0; i < ARRAY_SIZE(rates) && !only_tls; i++) {
        one_case(add, rates[i], false, runs);
        one_case(add, rates[i], true, runs);
    }
    tls_case(add, rates[0], runs);
}

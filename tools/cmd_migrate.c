/*
 * cmd_migrate.c - `hugevm migrate` (live-migrate a running guest to a
 * receiver over TCP), `hugevm receive` (accept migrations and resume the
 * guest); the sender itself, which `hugevm run --migrate-to` also uses,
 * is migrate_guest.c.
 *
 * Output: a progress line per pre-copy round on stderr when it is a
 * terminal; a report (total time, downtime, bytes per round, rounds and the
 * rule that ended them, leaf counts before, during log-dirty and on the
 * receiver, digests) as text or, with --json, as one JSON document.
 *
 * In doubt (migrate.h: COMMIT left without RESUMED on the sender; RESULT
 * {ok} out without COMMIT or ABORT on the receiver), either command saves
 * its paused guest to --in-doubt-save FILE, prints IN DOUBT with which copy
 * to resume (hugevm restore FILE --run) and exits with CLI_EXIT_IN_DOUBT.
 * The paused guest is then the only copy this side has, so the process
 * does not exit before it is saved (cli_keep_in_doubt, migrate_guest.c): a failed save is
 * retried with backoff, at a fresh name beside FILE when FILE exists, and
 * in $TMPDIR (or /tmp); when all of that failed DOUBT_ROUNDS times, the
 * process says so with its PID and waits, the guest paused in memory: it
 * retries on SIGUSR1 and by itself every DOUBT_WAIT_S seconds, and refuses
 * SIGTERM, SIGINT and SIGHUP (they would destroy the only copy); only
 * SIGKILL, an operator's deliberate choice, ends it unsaved.  Every file is
 * written with safefile.h (0600, no partial file, nothing replaced), and
 * only a file that was written whole is ever named.
 *
 * A migration that fails outright leaves the guest running on the sender
 * (migrate.h); cli_migrate_domain keeps running it for the rest of the
 * run's seconds and can then save it (--save-on-failure FILE).
 *
 * Transport: TLS 1.3 with a pre-shared key or certificates (chan.h),
 * handshake and peer check before any migration byte; plain TCP only with
 * --insecure on both sides.  receive listens on 127.0.0.1 unless --listen
 * names another address.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"
#include "migrate.h"
#include "net.h"
#include "postcopy.h"

/* ---- report ------------------------------------------------------------------- */

static void progress(void *ctx, const struct migrate_round *r)
{
    (void)ctx;
    if (!isatty(STDERR_FILENO))
        return;
    fprintf(stderr, "round %-2u %9llu pages (%llu zero) %8.1f MB/s  dirty %9.0f pages/s  "
            "remaining %8llu  ETA %.3f s\n", r->index,
            (unsigned long long)(r->pages_data + r->pages_zero),
            (unsigned long long)r->pages_zero, r->mb_per_s, r->dirty_per_s,
            (unsigned long long)r->remaining, r->eta_s);
}

/* ---- sender ------------------------------------------------------------------ */

static struct {
    const char *to, *log_dirty, *doubt_file, *fail_save, *backend, *fill, *resume_pc;
    uint64_t guest_mem, host_mem, max_rounds, retries, precopy_rounds, channels, max_bw;
    double after, downtime_ms, write_frac, timeout_s, pc_recover_s;
    bool compress, json, postcopy, postcopy_auto;
    int zstd_level;
    struct cli_tls_opts tls;
} mo = {
    .guest_mem = 4 * GiB,
    .after = 1.0,
    .write_frac = -1,
    .timeout_s = 30,
    .pc_recover_s = 60,
    .backend = "auto",
};

static struct cli_workload_spec wl = {
    .def = {.workload = "writer", .vcpus = 2, .write_rate = 100000, .seed = 1, .wss = 0.25},
    .names = "seq, uniform, zipf or writer",
    .rate_what = "accesses",
    .seed_also = "",
};

/* --zstd-level N: zstd's own scale, negative levels are its fast ones. */
static int parse_level(void *dest, const char *arg)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < -100 || v > 19 || v == 0)
        return -EINVAL; /* -100..-1 or 1..19 */
    *(int *)dest = (int)v;
    return 0;
}

static int run_migrate(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    enum workload_kind kind;
    struct migrate_opts mopts = {0};
    char b1[32];
    if (argc)
        return cli_error("migrate: unexpected argument '%s'", argv[0]);
    if (mo.resume_pc) {
        /* no guest here: the saved copy finishes a post-copy migration */
        if (!mo.to)
            return cli_error("migrate: --resume-postcopy needs --to ADDR:PORT, the receiver "
                             "that waits for the pages");
        if (mo.timeout_s <= 0)
            return cli_error("migrate: bad --timeout");
        struct chan_tls *rtls = NULL;
        if (cli_tls_setup("migrate", &mo.tls, false, &rtls) != 0)
            return 1;
        mopts.timeout_ms = cli_ms(mo.timeout_s);
        mopts.max_bandwidth = (double)mo.max_bw;
        mopts.pc_recover_ms = cli_ms(mo.pc_recover_s);
        int st = cli_resume_postcopy(mo.resume_pc, mo.to, &mopts, rtls, mo.host_mem, mo.json);
        chan_tls_destroy(rtls);
        return st;
    }
    int backend;
    char bwhy[300];
    if (cli_backend("migrate", mo.backend, NULL, false, &backend, bwhy, sizeof(bwhy)))
        return 1;
    if (!mo.json)
        printf("backend: %s (%s)\n", guest_backend_name((enum guest_backend)backend), bwhy);
    if (!mo.to)
        return cli_error("migrate: --to ADDR:PORT is required");
    if (workload_parse(wl.v.workload, &kind) < 0)
        return cli_error("migrate: unknown workload '%s'", wl.v.workload);
    if (mo.log_dirty && dirty_mode_parse(mo.log_dirty, &mopts.mode) < 0)
        return cli_error("migrate: unknown log-dirty mode '%s'", mo.log_dirty);
    if (wl.v.vcpus == 0 || wl.v.vcpus > MIGRATE_MAX_VCPUS)
        return cli_error("migrate: --vcpus must be in 1..%d", MIGRATE_MAX_VCPUS);
    if (mo.guest_mem == 0 || mo.guest_mem % (2 * MiB))
        return cli_error("migrate: --guest-mem must be a positive multiple of 2 MiB");
    if (wl.v.wss < 0 || wl.v.wss > 1 || mo.after < 0 || mo.timeout_s <= 0 || mo.downtime_ms < 0)
        return cli_error("migrate: bad --wss, --after, --timeout or --downtime");
    if (!mo.host_mem)
        mo.host_mem = (mo.guest_mem + mo.guest_mem / 4 + 64 * MiB + GiB - 1) & ~(GiB - 1);
    struct chan_tls *tls = NULL;
    if (cli_tls_setup("migrate", &mo.tls, false, &tls) != 0)
        return 1;
    mopts.downtime_ms = mo.downtime_ms;
    mopts.max_rounds = (unsigned)mo.max_rounds;
    mopts.compress = mo.compress || mo.zstd_level;
    mopts.zstd_level = mo.zstd_level;
    mopts.timeout_ms = cli_ms(mo.timeout_s);
    mopts.on_round = progress;
    if (mo.precopy_rounds && !mo.postcopy)
        return cli_error("migrate: --precopy-rounds goes with --postcopy");
    if (mo.precopy_rounds > MIGRATE_MAX_ROUNDS)
        return cli_error("migrate: --precopy-rounds must be in 1..%d", MIGRATE_MAX_ROUNDS);
    mopts.postcopy = mo.postcopy;
    mopts.postcopy_auto = mo.postcopy_auto;
    mopts.precopy_rounds = (unsigned)mo.precopy_rounds;
    mopts.pc_recover_ms = cli_ms(mo.pc_recover_s);
    if (cli_channels("migrate", mo.channels, &mopts.channels) != 0)
        return 1;
    mopts.max_bandwidth = (double)mo.max_bw;

    if (cli_machine_create("migrate", &m, mo.host_mem, false, NULL) < 0) {
        chan_tls_destroy(tls);
        return 1;
    }
    int rc;
    struct domain_config cfg;
    domain_config_default(&cfg);
    rc = domain_create(m, &cfg, &d);
    if (rc == 0)
        rc = domain_populate_guest(d, mo.guest_mem, NULL);
    int status = 1;
    if (rc < 0) {
        cli_error("migrate: cannot build the guest: %s", strerror(-rc));
    } else if (mo.fill && cli_fill_from_file("migrate", d, mo.guest_mem, mo.fill) != 0) {
        /* said why */
    } else {
        if (!mo.json)
            printf("guest %s on a %s machine: pages_1g %llu pages_2m %llu pages_4k %llu\n",
                   hv_fmt_size(mo.guest_mem, b1, sizeof(b1)),
                   hv_fmt_size(mo.host_mem, b1 + 16, 16), (unsigned long long)domain_pages_1g(d),
                   (unsigned long long)domain_pages_2m(d), (unsigned long long)domain_pages_4k(d));
        struct workload_config wc;
        workload_config_default(&wc, kind);
        wc.seed = wl.v.seed;
        wc.write_frac = mo.write_frac;
        wc.wss = wl.v.wss;
        wc.write_rate = wl.v.write_rate;
        if (backend != GUEST_BACKEND_SOFT) {
            /* a real guest: the built-in C workload on KVM */
            struct cli_prog_run pr = {
                .backend = backend, .why = bwhy, .guest_mem = mo.guest_mem,
                .vcpus = (unsigned)wl.v.vcpus, .workload = wl.v.workload, .guest_page = "auto",
                .seed = wl.v.seed, .write_rate = wl.v.write_rate,
                .write_frac = mo.write_frac, .wss = wl.v.wss, .json = mo.json,
                .migrate_to = mo.to, .after = mo.after, .mopts = &mopts, .tls = tls,
                .retries = mo.retries, .doubt_file = mo.doubt_file, .fail_save = mo.fail_save,
            };
            status = cli_run_program(d, &pr);
        } else {
            status = cli_migrate_domain(d, (unsigned)wl.v.vcpus, NULL, &wc, mo.to, mo.after,
                                        &mopts, tls, mo.retries, mo.doubt_file, 0, mo.fail_save,
                                        mo.json);
        }
    }
    domain_destroy(d);
    machine_destroy(m);
    chan_tls_destroy(tls);
    return status;
}

static struct opt migrate_opts_table[] = {
    {"to", OPT_STR, &mo.to, "ADDR:PORT", "the receiver (hugevm receive --listen)", NULL},
    {"backend", OPT_STR, &mo.backend, "NAME", "vCPU backend of the migrated guest: kvm (the "
     "built-in C workload as a real guest; KVM's dirty log feeds the rounds), native (the same "
     "program as host code; userfaultfd write-protect logs its writes), soft, or auto "
     "(default: kvm where /dev/kvm works, else soft)", NULL},
    {"guest-mem", OPT_SIZE, &mo.guest_mem, "SIZE", "guest RAM (default 4G)", NULL},
    {"host-mem", OPT_SIZE, &mo.host_mem, "SIZE", "machine size (default: guest + 25% + 64M, in GiB)", NULL},
    CLI_WORKLOAD_OPTS(wl),
    {"write-frac", OPT_FRAC, &mo.write_frac, "F", "fraction of accesses that write (default per workload)", NULL},
    {"fill", OPT_STR, &mo.fill, "FILE", "guest RAM is FILE's bytes from gfn 0 before the guest "
     "starts (the rest zero): the same content as another hypervisor's file-backed RAM", NULL},
    {"after", OPT_SECONDS, &mo.after, "S", "run the guest S seconds before migrating (default 1)", NULL},
    {"log-dirty", OPT_STR, &mo.log_dirty, "MODE", "split-on-write (default), eager-split or coarse", NULL},
    {"downtime", OPT_DBL, &mo.downtime_ms, "MS", "downtime target in ms (default 20)", NULL},
    {"max-rounds", OPT_U64, &mo.max_rounds, "N", "pre-copy rounds after the full copy (default 10)", NULL},
    {"postcopy", OPT_FLAG, &mo.postcopy, NULL, "switch to post-copy after --precopy-rounds: "
     "the guest resumes on the receiver at once and its pages left follow, on demand and in the "
     "background (kvm and native guests)", NULL},
    {"precopy-rounds", OPT_U64, &mo.precopy_rounds, "N", "with --postcopy: pre-copy rounds "
     "before the switch, the full copy included (default 1)", NULL},
    {"postcopy-auto", OPT_FLAG, &mo.postcopy_auto, NULL, "pre-copy, but switch to post-copy "
     "where it would end by --max-rounds or a dirty rate that stopped falling", NULL},
    CLI_POSTCOPY_RECOVER_OPT(mo.pc_recover_s),
    {"resume-postcopy", OPT_STR, &mo.resume_pc, "FILE", "finish the post-copy migration whose "
     "sender saved FILE in doubt (the receiver still waiting for its pages): send what the "
     "receiver misses to --to; FILE is removed when the receiver holds every page", NULL},
    {"compress", OPT_FLAG, &mo.compress, NULL, "zstd-compress every frame (level 1)", NULL},
    {"zstd-level", OPT_FUNC, &mo.zstd_level, "N", "compress at zstd level N (implies --compress; "
     "-1..-7 trade ratio for speed on fast links)", parse_level},
    CLI_CHANNELS_OPT(mo.channels),
    CLI_BANDWIDTH_OPT(mo.max_bw),
    {"timeout", OPT_SECONDS, &mo.timeout_s, "S", "socket and confirmation timeout (default 30)", NULL},
    {"retries", OPT_U64, &mo.retries, "N", "attempts again after a failure (default 0)", NULL},
    {"in-doubt-save", OPT_STR, &mo.doubt_file, "FILE", "if RESUMED does not come after COMMIT, "
     "save the paused guest there (default hugevm-in-doubt-sender-PID.hvs; exit 3)", NULL},
    {"save-on-failure", OPT_STR, &mo.fail_save, "FILE", "if the migration fails, save the "
     "guest (which runs on here) there before exiting", NULL},
    CLI_TLS_OPTS(mo.tls),
    {"json", OPT_FLAG, &mo.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_migrate = {
    .name = "migrate",
    .summary = "live-migrate a running guest to a receiver over TLS 1.3 (pre-copy rounds)",
    .run = run_migrate,
    .opts = migrate_opts_table,
    .workload = &wl,
    .no_guest_opt = "resume-postcopy",
    .no_guest_allow = (const char *const[]){"to", "psk-file", "tls-cert", "tls-key", "tls-ca",
                                            "tls-authz", "insecure", "timeout", "max-bandwidth",
                                            "postcopy-recover", "host-mem", "json", NULL},
};

/* ---- receiver ------------------------------------------------------------------ */

/*
 * Availability: connections wait in a lobby (below), up to LOBBY_MAX at
 * once, until one has sent a HELLO's worth of bytes; that one is served,
 * under the receiver's deadlines (migrate.h: --handshake-timeout for HELLO,
 * --timeout per frame, --max-time for the whole migration).  A peer that
 * sends nothing or trickles its bytes never blocks the others: it waits in
 * the lobby and is dropped at --handshake-timeout.  Only peers that pass the
 * handshake (migrate.h's hook: with authentication, authenticated peers)
 * count against --attempts; others are logged and dropped, and
 * --accept-timeout bounds the whole wait for a sender that passes it.
 * From the handshake on, those still in the lobby and a refuser thread
 * answer every other connection at once with ABORT "receiver busy" and
 * close it, until this migration is over (the guest resumed or kept in
 * doubt) or failed.
 */
static struct {
    const char *listen, *port_file, *doubt_file, *backend;
    uint64_t host_mem, attempts;
    double run_s, timeout_s, accept_s, handshake_s, max_s, pc_wait_s;
    bool json, resident;
    struct cli_tls_opts tls;
} ro = {
    .host_mem = 16 * GiB,
    .attempts = 3,
    .run_s = 1.0,
    .timeout_s = 30,
    .accept_s = 120,
    .handshake_s = MIGRATE_DEFAULT_HANDSHAKE_MS / 1000.0,
    .max_s = MIGRATE_DEFAULT_TOTAL_MS / 1000.0,
    .pc_wait_s = 600,
    .backend = "auto",
};

#define BUSY_REASON "receiver busy: another migration is in progress here; try again later"

struct lobby;
struct refuser {
    int lfd;
    struct lobby *lobby; /* connections waiting for their handshake */
    int stop[2];       /* a byte on stop[1] ends the thread */
    pthread_t t;
    bool running;
    uint64_t refused;
};

/* Answer one connection with ABORT "busy": read what it sent already (a
 * close with unread bytes would reset the connection and could drop the
 * answer), send, half-close, and give it a moment to close first. */
static void refuse_one(int fd)
{
    char junk[4096];
    while (recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
        ;
    (void)!migrate_refuse(fd, BUSY_REASON);
    shutdown(fd, SHUT_WR);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (int i = 0; i < 4 && poll(&p, 1, 50) > 0; i++)
        if (recv(fd, junk, sizeof(junk), MSG_DONTWAIT) <= 0)
            break;
    close(fd);
}

static void *refuser_main(void *arg)
{
    struct refuser *r = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = r->lfd, .events = POLLIN}, {.fd = r->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        refuse_one(fd);
        r->refused++;
        fprintf(stderr, "hugevm: receive: a connection during the migration was turned away "
                "(busy)\n");
    }
    return NULL;
}

/*
 * The lobby: connections wait here, several at once, until one has sent a
 * whole HELLO's worth of bytes (or closed, or overstayed the handshake
 * deadline); that one is served.  So a peer that trickles its first bytes
 * or sends nothing holds a place in the lobby, not the receiver: a real
 * sender arriving behind it is served as soon as its HELLO is in.
 */
#define LOBBY_MAX 32

struct lobby {
    int fd[LOBBY_MAX];
    uint64_t since[LOBBY_MAX];
    unsigned n;
    uint64_t strangers; /* dropped: closed, overstayed, or no room */
};

static void lobby_drop(struct lobby *l, unsigned i, const char *why)
{
    fprintf(stderr, "hugevm: receive: dropped a connection that %s (not counted against "
            "--attempts)\n", why);
    close(l->fd[i]);
    l->fd[i] = l->fd[--l->n];
    l->since[i] = l->since[l->n];
    l->strangers++;
}

/* Turn away everyone waiting (a migration has started). */
static void lobby_refuse_all(struct lobby *l)
{
    while (l->n) {
        refuse_one(l->fd[--l->n]);
        fprintf(stderr, "hugevm: receive: a connection waiting during the migration was turned "
                "away (busy)\n");
    }
}

/* The next connection that has sent at least `first` bytes, into *fd, by
 * deadline `by`: 0, or -ETIMEDOUT, -errno. */
static int lobby_next(struct lobby *l, int lfd, size_t first, uint64_t handshake_ns, uint64_t by,
                      int *fd)
{
    for (;;) {
        uint64_t now = hv_now_ns(), wake = by;
        struct pollfd p[LOBBY_MAX + 1];
        nfds_t np = 1;
        bool partial = false; /* some have sent part of it: look again soon */
        p[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (unsigned i = 0; i < l->n;) {
            int avail = 0;
            char c;
            ssize_t k = recv(l->fd[i], &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                lobby_drop(l, i, "closed before its handshake");
                continue;
            }
            if (k > 0 && ioctl(l->fd[i], FIONREAD, &avail) == 0 && (size_t)avail >= first) {
                *fd = l->fd[i];
                l->fd[i] = l->fd[--l->n];
                l->since[i] = l->since[l->n];
                return 0;
            }
            if (now - l->since[i] >= handshake_ns) {
                lobby_drop(l, i, "sent no whole HELLO within --handshake-timeout");
                continue;
            }
            if (l->since[i] + handshake_ns < wake)
                wake = l->since[i] + handshake_ns;
            if (k > 0) /* readable until it has all: polling it would spin */
                partial = true;
            else
                p[np++] = (struct pollfd){.fd = l->fd[i], .events = POLLIN};
            i++;
        }
        if (now >= by)
            return -ETIMEDOUT;
        uint64_t ms = (wake - now + 999999) / 1000000;
        if (partial && ms > 20)
            ms = 20;
        int rc = poll(p, np, ms > 1000 ? 1000 : (int)ms);
        if (rc < 0 && errno != EINTR)
            return -errno;
        if (rc > 0 && (p[0].revents & POLLIN)) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0 && l->n == LOBBY_MAX) {
                refuse_one(c);
                l->strangers++;
                fprintf(stderr, "hugevm: receive: turned a connection away: %u are waiting for "
                        "their handshake already\n", LOBBY_MAX);
            } else if (c >= 0) {
                l->fd[l->n] = c;
                l->since[l->n++] = hv_now_ns();
            }
        }
    }
}

/* A sender's further channel (migrate_recv_opts.join): the next
 * connection out of the lobby, authenticated like the first; one that
 * fails authentication is dropped and the next one waited for. */
struct joiner {
    int lfd;
    struct lobby *lobby;
    struct chan_tls *tls;
    int tmo;
};

static struct chan *join_channel(void *ctx, uint64_t by, char *err, size_t len)
{
    struct joiner *jn = ctx;
    for (;;) {
        int fd = -1;
        uint64_t now = hv_now_ns();
        int rc = lobby_next(jn->lobby, jn->lfd, sizeof(struct mig_frame) + sizeof(struct mig_hello),
                            by > now ? by - now : 0, by, &fd);
        if (rc < 0) {
            snprintf(err, len, "waiting for a connection: %s", strerror(-rc));
            return NULL;
        }
        struct chan *ch;
        char cerr[CHAN_ERR_LEN];
        if (chan_open(fd, jn->tls, jn->tmo, &ch, cerr, sizeof(cerr)) == 0)
            return ch;
        fprintf(stderr, "hugevm: receive: a connection while channels join refused: %s\n", cerr);
    }
}

/* The handshake hook (migrate_recv_opts.on_handshake): the peer is a
 * sender; turn everyone else away from now on, those waiting in the lobby
 * first. */
static void refuser_start(void *arg)
{
    struct refuser *r = arg;
    if (r->lobby)
        lobby_refuse_all(r->lobby);
    if (r->running || pipe2(r->stop, O_CLOEXEC) < 0)
        return;
    if (pthread_create(&r->t, NULL, refuser_main, r) != 0) {
        close(r->stop[0]);
        close(r->stop[1]);
        return;
    }
    r->running = true;
}

static void refuser_stop(struct refuser *r)
{
    if (!r->running)
        return;
    (void)!write(r->stop[1], "", 1);
    pthread_join(r->t, NULL);
    close(r->stop[0]);
    close(r->stop[1]);
    r->running = false;
}

/* Post-copy on the receiver over time: every 100 ms (for at most
 * PC_SAMPLES), the guest's speed since the last sample, the share of the
 * 2M regions with pages missing at the switch that are whole again, the
 * host's 2M share of the mirror and KVM's 2M mappings. */
#define PC_SAMPLES 600
struct pc_sample {
    double t, accesses_per_s, whole_share, host_2m_share;
    uint64_t kvm_2m;
};
struct pc_sampler {
    struct guest *g;
    struct postcopy_rx *pc; /* under mu; NULL once freed */
    pthread_mutex_t mu;
    pthread_t th;
    int stop;
    uint64_t t0;
    struct pc_sample v[PC_SAMPLES];
    unsigned n;
};

static void *pc_sampler_main(void *arg)
{
    struct pc_sampler *s = arg;
    uint64_t last_t = s->t0, last_a = guest_accesses(s->g);
    double whole = 0;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE) && s->n < PC_SAMPLES) {
        cli_sleep_s(0.1);
        struct pc_sample x = {0};
        uint64_t now = hv_now_ns(), a = guest_accesses(s->g);
        x.t = (double)(now - s->t0) / 1e9;
        x.accesses_per_s = now > last_t ? (double)(a - last_a) * 1e9 / (double)(now - last_t) : 0;
        last_t = now;
        last_a = a;
        pthread_mutex_lock(&s->mu);
        if (s->pc) {
            struct postcopy_rx_stats st;
            postcopy_rx_stats(s->pc, &st);
            whole = st.regions ? (double)st.regions_whole / (double)st.regions : 1;
        } else {
            whole = 1; /* post-copy is over: every region is whole */
        }
        pthread_mutex_unlock(&s->mu);
        x.whole_share = whole;
        uint64_t rss = 0, pmd = 0, pages[3];
        if (guest_host_mapping(s->g, &rss, &pmd) == 0 && rss)
            x.host_2m_share = (double)pmd / (double)rss;
        if (guest_mmu_pages(s->g, pages) == 0)
            x.kvm_2m = pages[1];
        s->v[s->n++] = x;
    }
    return NULL;
}

static void pc_sampler_stop(struct pc_sampler *s)
{
    if (!s || __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE))
        return;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    pthread_join(s->th, NULL);
}

/* Post-copy whose connection failed: the next connection that passes the
 * lobby, the transport's authentication and migrate_postcopy_accept (it
 * names this migration) takes over; others are turned away.  NULL when
 * none came within --postcopy-wait. */
static struct chan *postcopy_reaccept(struct postcopy_rx *pc, int lfd, struct lobby *lobby,
                                      struct chan_tls *tls, const char *why)
{
    fprintf(stderr, "hugevm: receive: post-copy lost its connection (%s); the guest runs on, "
            "its vCPUs that need a missing page wait; waiting up to %.0f s for the sender to "
            "resume\n", why, ro.pc_wait_s);
    uint64_t by = hv_now_ns() + (uint64_t)cli_ms(ro.pc_wait_s) * 1000000;
    while (hv_now_ns() < by) {
        int fd;
        if (lobby_next(lobby, lfd, sizeof(struct mig_frame) + sizeof(struct mig_hello),
                       (uint64_t)cli_ms(ro.handshake_s) * 1000000, by, &fd) < 0)
            return NULL;
        struct chan *ch;
        char err[CHAN_ERR_LEN + 64];
        if (chan_open(fd, tls, cli_ms(ro.timeout_s), &ch, err, sizeof(err)) < 0) {
            fprintf(stderr, "hugevm: receive: a connection during post-copy refused: %s\n", err);
            continue;
        }
        if (migrate_postcopy_accept(ch, postcopy_rx_id(pc), cli_ms(ro.handshake_s), err,
                                    sizeof(err)) < 0 ||
            postcopy_rx_resume(pc, ch, err, sizeof(err)) < 0) {
            fprintf(stderr, "hugevm: receive: a connection during post-copy turned away: %s\n",
                    err);
            chan_close(ch);
            continue;
        }
        fprintf(stderr, "hugevm: receive: post-copy resumed on a new connection\n");
        return ch;
    }
    return NULL;
}

/* Until post-copy ends: connections that fail are replaced by the
 * sender's next (postcopy_reaccept).  0 or the error (pcr says). */
static int postcopy_wait_all(struct postcopy_rx *pc, struct chan **ch, int lfd,
                             struct lobby *lobby, struct chan_tls *tls,
                             struct postcopy_rx_report *pcr)
{
    int prc;
    while ((prc = postcopy_rx_wait(pc, pcr)) == -ENOTCONN) {
        if (*ch)
            chan_close(*ch);
        *ch = postcopy_reaccept(pc, lfd, lobby, tls, pcr->err);
        if (!*ch) {
            size_t l = strlen(pcr->err);
            snprintf(pcr->err + l, sizeof(pcr->err) - l,
                     "; the sender did not come back within %.0f s", ro.pc_wait_s);
            break;
        }
    }
    return prc;
}

/* RESULT {ok} went out, neither COMMIT nor ABORT came: keep the paused
 * guest (saved, since it dies with this process) and say what to do. */
static int receive_in_doubt(struct machine *m, struct migrate_recv_result *res)
{
    struct guest *g = res->g;
    struct domain *d = g->d;
    char path[PATH_MAX];
    cli_keep_in_doubt(g, NULL, 0, ro.doubt_file, "receiver", path, sizeof(path));
    int audit = domain_audit(d);
    if (audit == 0)
        audit = frames_audit(m->frames);
    if (ro.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_bool(&j, "ok", false);
        json_bool(&j, "in_doubt", true);
        json_str(&j, "error", res->err);
        json_str(&j, "in_doubt_saved", path);
        json_bool(&j, "verified", res->verified);
        json_u64(&j, "digest", res->digest);
        json_str(&j, "audit", audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    }
    FILE *f = ro.json ? stderr : stdout;
    fprintf(f, "IN DOUBT: %s\n", res->err);
    fprintf(f, "  The guest was received whole (memory digest %s) and not started here.\n",
            res->verified ? "verified against the sender's" : "not checked");
    fprintf(f, "  It is saved, paused, to %s (written whole, mode 0600).\n", path);
    fprintf(f, "  If the sender reports its guest running (its COMMIT never left), delete this "
            "copy.  If the sender reports IN DOUBT too (or is gone), resume exactly one copy, "
            "this one preferably: `hugevm restore %s --run%s`.\n", path,
            res->g && res->g->backend == GUEST_BACKEND_NATIVE ? " --backend native" : "");
    fprintf(f, "  audit: %s; exit status %d\n", audit ? hv_audit_last() : "ok",
            CLI_EXIT_IN_DOUBT);
    guest_destroy(g);
    domain_destroy(d);
    res->g = NULL;
    migrate_recv_result_free(res);
    return CLI_EXIT_IN_DOUBT;
}

static int run_receive(int argc, char **argv)
{
    struct sockaddr_in sa;
    struct machine *m = NULL;
    struct chan_tls *tls = NULL;
    char b1[64], laddr[80];
    int lfd = -1, status = 1;
    if (argc)
        return cli_error("receive: unexpected argument '%s'", argv[0]);
    int backend;
    char bwhy[300];
    enum guest_backend want;
    bool want_auto;
    if (guest_backend_parse(ro.backend, &want, &want_auto) < 0)
        return cli_error("receive: --backend %s: give kvm, native, soft or auto", ro.backend);
    if (!want_auto &&
        cli_backend("receive", ro.backend, NULL, false, &backend, bwhy, sizeof(bwhy)))
        return 1;
    if (!ro.json)
        printf("backend: %s\n", want_auto ? "auto (the one the guest ran on: soft vCPUs, or KVM "
                                             "for a real guest; native only when asked for)"
                                           : guest_backend_name(want));
    /* loopback unless an address is named: a bare PORT is 127.0.0.1:PORT */
    const char *listen = ro.listen ? ro.listen : "0";
    if (!strchr(listen, ':'))
        snprintf(laddr, sizeof(laddr), "127.0.0.1:%s", listen);
    else
        snprintf(laddr, sizeof(laddr), "%s", listen);
    if (net_parse_addr(laddr, &sa) < 0)
        return cli_error("receive: bad --listen '%s' (want PORT or A.B.C.D:PORT)", listen);
    if (ro.attempts == 0 || ro.timeout_s <= 0 || ro.accept_s <= 0 || ro.handshake_s <= 0 ||
        ro.max_s <= 0)
        return cli_error("receive: --attempts, --timeout, --accept-timeout, --handshake-timeout "
                         "and --max-time must be positive");
    if (cli_tls_setup("receive", &ro.tls, true, &tls) != 0)
        return 1;
    int rc = cli_machine_create("receive", &m, ro.host_mem, ro.resident, ro.json ? NULL : stdout);
    if (rc < 0) {
        chan_tls_destroy(tls);
        return 1;
    }
    uint16_t port;
    rc = net_listen(&sa, &lfd, &port);
    if (rc < 0) {
        cli_error("receive: cannot listen on %s: %s", laddr, strerror(-rc));
        goto out;
    }
    sa.sin_port = htons(port);
    if (ro.port_file) {
        FILE *f = fopen(ro.port_file, "w");
        if (!f || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0) {
            cli_error("receive: cannot write %s", ro.port_file);
            goto out;
        }
    }
    if (!ro.json)
        printf("receiver listening on %s (machine %s, %s)\n", net_fmt_addr(&sa, b1, sizeof(b1)),
               hv_fmt_size(ro.host_mem, b1 + 32, 32),
               tls ? (strcmp(chan_tls_kind(tls), "psk") ? "TLS 1.3, certificates"
                                                        : "TLS 1.3, pre-shared key")
                   : "plain TCP, INSECURE");
    fflush(stdout);
    static struct lobby lobby;
    struct refuser busy = {.lfd = lfd, .lobby = &lobby};
    struct migrate_recv_opts rop = {.timeout_ms = cli_ms(ro.timeout_s),
                                    .handshake_ms = cli_ms(ro.handshake_s),
                                    .total_ms = (uint64_t)cli_ms(ro.max_s),
                                    .on_handshake = refuser_start, .hctx = &busy,
                                    .backend_set = !want_auto, .backend = want,
                                    .postcopy_ok = true};
    struct joiner jn = {.lfd = lfd, .lobby = &lobby, .tls = tls, .tmo = cli_ms(ro.handshake_s)};
    rop.join = join_channel;
    rop.jctx = &jn;
    uint64_t accept_by = hv_now_ns() + (uint64_t)cli_ms(ro.accept_s) * 1000000, strangers = 0;
    for (uint64_t attempt = 1; attempt <= ro.attempts;) {
        int fd = -1;
        rc = lobby_next(&lobby, lfd, sizeof(struct mig_frame) + sizeof(struct mig_hello),
                        (uint64_t)cli_ms(ro.handshake_s) * 1000000, accept_by, &fd);
        if (rc < 0) {
            cli_error("receive: no sender within %.0f s: %s (%llu connection(s) failed the "
                      "handshake)", ro.accept_s, strerror(-rc),
                      (unsigned long long)(strangers + lobby.strangers));
            break;
        }
        struct chan *ch;
        char cerr[CHAN_ERR_LEN];
        rc = chan_open(fd, tls, rop.timeout_ms, &ch, cerr, sizeof(cerr));
        if (rc < 0) {
            /* before any migration byte: no domain was created */
            fprintf(stderr, "hugevm: receive: attempt %llu refused: %s\n  nothing was "
                    "received\n", (unsigned long long)attempt, cerr);
            continue;
        }
        if (!ro.json && ch->secure)
            printf("sender authenticated: %s, %s\n", ch->peer, ch->cipher);
        struct migrate_recv_result res;
        rc = migrate_receive(m, ch, &rop, &res);
        if (rc < 0 || !res.postcopy) {
            chan_close(ch); /* post-copy: its pages still come on it */
            ch = NULL;
        }
        if (rc == -EINPROGRESS && res.in_doubt) {
            status = receive_in_doubt(m, &res);
            break;
        }
        if (rc < 0 && !res.handshake_passed) {
            /* not a sender (or not an authenticated one): not an attempt */
            strangers++;
            fprintf(stderr, "hugevm: receive: dropped a connection that failed the handshake "
                    "(not counted against --attempts): %s\n", res.err);
            migrate_recv_result_free(&res);
            continue;
        }
        refuser_stop(&busy); /* the next connection is served again */
        if (rc < 0) {
            struct frame_stats fs;
            frames_get_stats(m->frames, &fs);
            fprintf(stderr, "hugevm: receive: attempt %llu failed: %s\n  the partial domain "
                    "was destroyed (%llu of %llu frames free)\n", (unsigned long long)attempt,
                    res.err, (unsigned long long)fs.free_frames, (unsigned long long)m->nr_frames);
            migrate_recv_result_free(&res);
            attempt++;
            continue;
        }
        struct guest *g = res.g;
        struct domain *d = g->d;
        uint64_t a0 = g->accesses;
        bool prog = g->backend != GUEST_BACKEND_SOFT;
        struct cli_phase after = {0};
        int64_t prefault_ns = 0;
        int vrc = -ENOTSUP;
        char verr[256] = "";
        if (res.resumed_unsent)
            fprintf(stderr, "hugevm: receive: COMMIT came but RESUMED could not be sent: the "
                    "sender holds its copy paused in doubt; this copy is the guest, the "
                    "sender's must be discarded\n");
        double ran = 0;
        struct postcopy_rx_report pcr = {0};
        struct pc_sampler *smp = NULL;
        double pc_arm_s = 0, pc_rate = 0;
        if (prog) {
            /* a real guest: it runs here for --run-seconds (its speed and
             * KVM's mappings are the "after" phase), finishes at a batch
             * boundary, and the host's replay checks every vCPU */
            a0 = guest_accesses(g);
            int grc = 0;
            struct postcopy_rx *pc = NULL;
            if (res.postcopy) {
                /* post-copy: armed over the pages still to come, and the
                 * guest runs at once (no prefault: that would wait for
                 * them all) */
                char why[256];
                uint64_t ta = hv_now_ns();
                grc = postcopy_rx_start(g, ch, res.pc_preempt, res.pc_runs, res.pc_nruns,
                                        res.pc_id, res.digest, res.pc_pages, rop.timeout_ms,
                                        &pc, why, sizeof(why));
                res.pc_preempt = NULL; /* post-copy's (closed on failure) */
                pc_arm_s = (double)(hv_now_ns() - ta) / 1e9;
                if (grc < 0)
                    snprintf(pcr.err, sizeof(pcr.err), "arming post-copy: %.200s", why);
            } else {
                /* the host maps every page of it before it runs, as the
                 * sender's had been (first touches are not the guest's speed) */
                prefault_ns = guest_prefault(g);
            }
            uint64_t t = hv_now_ns();
            if (grc == 0)
                grc = guest_start(g);
            migrate_recv_trim(&res); /* the guest runs: not in its downtime */
            if (pc && grc == 0) {
                smp = calloc(1, sizeof(*smp));
                if (smp) {
                    smp->g = g;
                    smp->pc = pc;
                    smp->t0 = t;
                    pthread_mutex_init(&smp->mu, NULL);
                    if (pthread_create(&smp->th, NULL, pc_sampler_main, smp) != 0) {
                        free(smp);
                        smp = NULL;
                    }
                }
            }
            if (pc) {
                /* the guest runs while the rest of its memory comes; a
                 * connection that fails is replaced by the sender's next */
                int prc = postcopy_wait_all(pc, &ch, lfd, &lobby, tls, &pcr);
                double s = (double)(hv_now_ns() - t) / 1e9;
                pc_rate = s > 0 ? (double)(guest_accesses(g) - a0) / s : 0;
                if (smp) {
                    pthread_mutex_lock(&smp->mu);
                    smp->pc = NULL;
                    pthread_mutex_unlock(&smp->mu);
                }
                /* (free first: it lets go the vCPUs waiting for pages that
                 * will not come, which a stop cannot reach under KVM) */
                postcopy_rx_free(pc);
                if (prc < 0) {
                    guest_stop(g);
                    grc = prc;
                }
            } else if (res.postcopy) {
                pcr.rc = grc;
            }
            if (ch)
                chan_close(ch);
            ch = NULL;
            if (grc < 0 && res.postcopy && !pcr.err[0])
                snprintf(pcr.err, sizeof(pcr.err), "%s", strerror(-grc));
            if (grc == 0) {
                cli_sleep_s(ro.run_s / 10);
                cli_phase_begin(&after, g);
                cli_sleep_s(ro.run_s - ro.run_s / 10);
                cli_phase_end(&after, g);
                pc_sampler_stop(smp);
                grc = guest_finish(g, 60ULL * 1000 * 1000 * 1000);
            }
            pc_sampler_stop(smp);
            ran = (double)(hv_now_ns() - t) / 1e9;
            vrc = grc == 0 ? guest_verify(g, verr, sizeof(verr)) : grc;
            if (grc != 0 && res.postcopy && pcr.err[0])
                snprintf(verr, sizeof(verr), "post-copy failed after the switch (the guest "
                         "cannot go on: part of its memory never came): %.150s", pcr.err);
            else if (grc != 0)
                snprintf(verr, sizeof(verr), "the guest did not finish: %.200s",
                         g->fault.what[0] ? g->fault.what : strerror(-grc));
            else if (vrc == -EINVAL)
                snprintf(verr, sizeof(verr), "not a fresh built-in workload: nothing to replay");
        } else if ((ro.run_s > 0 || res.postcopy) && g->nr_vcpus) {
            /* soft vCPUs; in post-copy their accesses to missing pages wait */
            struct postcopy_rx *pc = NULL;
            char why[256];
            int grc = 0;
            if (res.postcopy &&
                (grc = postcopy_rx_start(g, ch, res.pc_preempt, res.pc_runs, res.pc_nruns,
                                         res.pc_id, res.digest, res.pc_pages, rop.timeout_ms,
                                         &pc, why, sizeof(why))) < 0)
                snprintf(pcr.err, sizeof(pcr.err), "arming post-copy: %.200s", why);
            res.pc_preempt = NULL;
            if (grc == 0 && guest_start(g) == 0) {
                uint64_t t = hv_now_ns();
                migrate_recv_trim(&res); /* the guest runs: not in its downtime */
                if (pc) {
                    int prc = postcopy_wait_all(pc, &ch, lfd, &lobby, tls, &pcr);
                    pc_rate = (double)(g->accesses - a0) * 1e9 / (double)(hv_now_ns() - t);
                    postcopy_rx_free(pc); /* (first: see above) */
                    pc = NULL;
                    if (prc < 0)
                        guest_stop(g);
                }
                cli_sleep_s(ro.run_s);
                guest_stop(g);
                ran = (double)(hv_now_ns() - t) / 1e9;
            }
            postcopy_rx_free(pc);
            if (ch)
                chan_close(ch);
            ch = NULL;
        }
        int audit = domain_audit(d);
        if (audit == 0)
            audit = frames_audit(m->frames);
        if (ro.json) {
            struct json j;
            json_init(&j, stdout);
            json_obj_begin(&j, NULL);
            json_bool(&j, "ok", true);
            json_u64(&j, "attempt", attempt);
            cli_json_machine_memory(&j, m);
            json_u64(&j, "wire_bytes", res.wire_bytes);
            json_u64(&j, "frames", res.frames);
            json_u64(&j, "channels", res.channels);
            json_dbl(&j, "seconds", res.seconds);
            json_bool(&j, "verified", res.verified);
            json_u64(&j, "digest", res.digest);
            json_u64(&j, "pages_data", res.rr.pages_data);
            json_u64(&j, "pages_xalloc", res.rr.pages_xalloc);
            json_u64(&j, "pages_populated", res.rr.pages_populated);
            json_u64(&j, "prealloc_1g", res.rr.prealloc_1g);
            json_u64(&j, "prealloc_2m", res.rr.prealloc_2m);
            json_u64(&j, "freed_pages", res.rr.freed_pages);
            json_str(&j, "backend", guest_backend_name(g->backend));
            json_u64(&j, "vcpus", g->nr_vcpus);
            json_dbl(&j, "resumed_s", ran);
            json_u64(&j, "resumed_accesses", (prog ? guest_accesses(g) : g->accesses) - a0);
            json_str(&j, "guest_error", g->fault.what[0] ? g->fault.what
                                        : g->err ? strerror(-g->err) : "");
            json_str(&j, "mode", res.postcopy ? "postcopy" : "precopy");
            if (res.postcopy) {
                json_obj_begin(&j, "postcopy");
                json_bool(&j, "ok", pcr.rc == 0 && (!pcr.err[0] || pcr.done_unsent));
                json_bool(&j, "done_unsent", pcr.done_unsent);
                json_str(&j, "error", pcr.err);
                json_dbl(&j, "arm_s", pc_arm_s);
                json_u64(&j, "links", pcr.links);
                json_arr_begin(&j, "timeline");
                for (unsigned k = 0; smp && k < smp->n; k++) {
                    json_obj_begin(&j, NULL);
                    json_dbl(&j, "t", smp->v[k].t);
                    json_dbl(&j, "accesses_per_s", smp->v[k].accesses_per_s);
                    json_dbl(&j, "regions_whole_share", smp->v[k].whole_share);
                    json_dbl(&j, "host_2m_share", smp->v[k].host_2m_share);
                    json_u64(&j, "kvm_pages_2m", smp->v[k].kvm_2m);
                    json_obj_end(&j);
                }
                json_arr_end(&j);
                json_dbl(&j, "whole_s", pcr.whole_s);
                json_dbl(&j, "accesses_per_s", pc_rate);
                json_u64(&j, "fault_p50_ns", pcr.lat_p50_ns);
                json_u64(&j, "fault_p99_ns", pcr.lat_p99_ns);
                json_u64(&j, "fault_max_ns", pcr.lat_max_ns);
#define X(name, desc) json_u64(&j, #name, pcr.st.name);
                POSTCOPY_STAT_FIELDS(X)
#undef X
                json_obj_end(&j);
            }
            if (prog) {
                json_dbl(&j, "prefault_s", prefault_ns > 0 ? (double)prefault_ns / 1e9 : 0);
                json_bool(&j, "guest_verified", vrc == 0);
                if (vrc)
                    json_str(&j, "verify_error", verr);
                json_obj_begin(&j, "phases");
                json_null(&j, "before"); /* the sender's (hugevm migrate --json) */
                json_null(&j, "during");
                cli_json_phase(&j, "after", &after);
                json_obj_end(&j);
            }
            cli_json_domain(&j, "domain", d);
            json_str(&j, "audit", audit ? hv_audit_last() : "ok");
            json_obj_end(&j);
            json_finish(&j);
        } else {
            printf("received in %.3f s: %s in %llu frames, %llu pages with data, %llu zero; "
                   "memory digest %s\n", res.seconds, hv_fmt_size(res.wire_bytes, b1, sizeof(b1)),
                   (unsigned long long)res.frames, (unsigned long long)res.rr.pages_data,
                   (unsigned long long)res.rr.pages_xalloc,
                   res.verified ? "verified against the sender's" : "not checked");
            printf("restored with superpages: pages_1g %llu pages_2m %llu pages_4k %llu "
                   "(preallocated 1G %llu 2M %llu, freed %llu speculative pages)\n",
                   (unsigned long long)domain_pages_1g(d), (unsigned long long)domain_pages_2m(d),
                   (unsigned long long)domain_pages_4k(d), (unsigned long long)res.rr.prealloc_1g,
                   (unsigned long long)res.rr.prealloc_2m, (unsigned long long)res.rr.freed_pages);
            printf("guest resumed here (%s): %u vCPU(s), %llu accesses in %.2f s%s%s\n",
                   guest_backend_name(g->backend), g->nr_vcpus,
                   (unsigned long long)((prog ? guest_accesses(g) : g->accesses) - a0), ran,
                   g->err ? ", stopped: " : "",
                   g->fault.what[0] ? g->fault.what : g->err ? strerror(-g->err) : "");
            if (res.postcopy && pcr.done_unsent)
                printf("post-copy: %s\n", pcr.err);
            if (res.postcopy && pcr.rc == 0 && (!pcr.err[0] || pcr.done_unsent))
                printf("post-copy: armed in %.1f ms; %llu pages came after the switch "
                       "(%llu in the background, %llu on demand), all here %.3f s after "
                       "it; %llu faults waited: service median %.0f us, p99 %.0f us, max "
                       "%.0f us; %llu of %llu 2M regions whole again; the guest ran %.0f "
                       "accesses/s meanwhile\n", pc_arm_s * 1e3,
                       (unsigned long long)pcr.st.pending,
                       (unsigned long long)pcr.st.pages_pushed,
                       (unsigned long long)pcr.st.pages_urgent, pcr.whole_s,
                       (unsigned long long)pcr.st.faults_missing, pcr.lat_p50_ns / 1e3,
                       pcr.lat_p99_ns / 1e3, pcr.lat_max_ns / 1e3,
                       (unsigned long long)pcr.st.regions_whole,
                       (unsigned long long)pcr.st.regions, pc_rate);
            else if (res.postcopy)
                printf("post-copy FAILED after the switch: %s\n", pcr.err);
            /* a few points of the timeline: when regions came back */
            for (unsigned k = 0, step = smp && smp->n > 8 ? smp->n / 8 : 1; smp && k < smp->n;
                 k += step)
                printf("  t %6.2f s: %10.0f accesses/s, %5.1f%% of the regions whole, host "
                       "2M share %5.1f%%%s\n", smp->v[k].t, smp->v[k].accesses_per_s,
                       smp->v[k].whole_share * 100, smp->v[k].host_2m_share * 100,
                       k + step >= smp->n ? " (last)" : "");
            if (prog) {
                if (prefault_ns > 0)
                    printf("host mappings of the guest's memory made before it ran: %.3f s\n",
                           (double)prefault_ns / 1e9);
                cli_print_phase("after, on the receiver:", &after);
                printf("verified: %s%s%s\n", vrc == 0 ? "yes (every vCPU replayed on the host "
                                                        "from its seed: every word and checksum "
                                                        "match, across the migration)" : "no",
                       vrc ? ": " : "", vrc ? verr : "");
            }
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
        }
        /* -EINVAL: not replayable (a user's program); -E2BIG: too long a run to replay */
        status = audit || g->err || (prog && vrc != 0 && vrc != -EINVAL && vrc != -E2BIG) ? 1 : 0;
        if (smp) {
            pc_sampler_stop(smp);
            pthread_mutex_destroy(&smp->mu);
            free(smp);
        }
        guest_destroy(g);
        domain_destroy(d);
        migrate_recv_result_free(&res);
        break;
    }
    refuser_stop(&busy);
    while (lobby.n)
        close(lobby.fd[--lobby.n]);
out:
    if (lfd >= 0)
        close(lfd);
    machine_destroy(m);
    chan_tls_destroy(tls);
    return status;
}

static struct opt receive_opts_table[] = {
    {"backend", OPT_STR, &ro.backend, "NAME", "vCPU backend the guest resumes on: auto (default: "
     "the one it ran on, soft or kvm), or one of soft, kvm, native to refuse guests of the "
     "others (the migration then fails and the sender keeps its guest); native guests are "
     "accepted only with --backend native (their code runs as this process's own)", NULL},
    {"listen", OPT_STR, &ro.listen, "[ADDR:]PORT", "where to listen (port 0: any); without "
     "ADDR, and by default, on 127.0.0.1 only: name another address to accept other hosts", NULL},
    {"port-file", OPT_STR, &ro.port_file, "FILE", "write the port listened on to FILE", NULL},
    {"host-mem", OPT_SIZE, &ro.host_mem, "SIZE", "machine size (default 16G, committed lazily)", NULL},
    {"resident", OPT_FLAG, &ro.resident, NULL, "commit the machine's memory up front, as a "
     "hypervisor's RAM (give a --host-mem that fits; see README)", NULL},
    {"attempts", OPT_U64, &ro.attempts, "N", "migrations (peers that pass the handshake) to "
     "accept until one succeeds (default 3)", NULL},
    {"run", OPT_SECONDS, &ro.run_s, "S", "run the resumed guest S seconds (default 1)", NULL},
    {"timeout", OPT_SECONDS, &ro.timeout_s, "S", "every frame must arrive whole within S "
     "(default 30)", NULL},
    {"in-doubt-save", OPT_STR, &ro.doubt_file, "FILE", "if neither COMMIT nor ABORT comes "
     "after RESULT, save the paused guest there (default hugevm-in-doubt-receiver-PID.hvs; "
     "exit 3)", NULL},
    {"accept-timeout", OPT_SECONDS, &ro.accept_s, "S", "wait at most S in all for a sender that "
     "passes the handshake (default 120)", NULL},
    {"handshake-timeout", OPT_SECONDS, &ro.handshake_s, "S", "a connection's HELLO must arrive "
     "whole within S (default 10)", NULL},
    {"max-time", OPT_SECONDS, &ro.max_s, "S", "a whole migration, HELLO to COMMIT, within S "
     "(default 3600)", NULL},
    {"postcopy-wait", OPT_SECONDS, &ro.pc_wait_s, "S", "post-copy: when the connection fails "
     "after the switch, wait S for the sender to resume it (by itself, or `hugevm migrate "
     "--resume-postcopy` from its saved copy) before the guest is given up (default 600)", NULL},
    CLI_TLS_OPTS(ro.tls),
    {"json", OPT_FLAG, &ro.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_receive = {
    .name = "receive",
    .summary = "receive a live migration (TLS 1.3, or TCP with --insecure) and resume the guest",
    .run = run_receive,
    .opts = receive_opts_table,
};

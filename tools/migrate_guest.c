/*
 * migrate_guest.c - the sending side of a live migration, shared by
 * `hugevm migrate`, `hugevm run --migrate-to` and program guests
 * (run_guest.c): connect (TLS 1.3 or, with --insecure, plain TCP), send with
 * retries, keep the guest running after a failure (--save-on-failure), and
 * the report as text or JSON.  An in-doubt guest (migrate.h) is never lost:
 * cli_keep_in_doubt, which `hugevm receive` uses too, saves it whatever it
 * takes (see cmd_migrate.c's header for the rules).
 */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "migrate.h"
#include "net.h"

/* ---- report ------------------------------------------------------------------- */

static void print_leaves(const char *what, const struct migrate_leaves *l)
{
    printf("  %-26s pages_1g %-6llu pages_2m %-8llu pages_4k %llu\n", what,
           (unsigned long long)l->p1g, (unsigned long long)l->p2m, (unsigned long long)l->p4k);
}

static void json_leaves(struct json *j, const char *key, const struct migrate_leaves *l)
{
    json_obj_begin(j, key);
    json_u64(j, "pages_1g", l->p1g);
    json_u64(j, "pages_2m", l->p2m);
    json_u64(j, "pages_4k", l->p4k);
    json_obj_end(j);
}

static void print_report(const struct migrate_report *r)
{
    char b1[32];
    if (r->in_doubt)
        printf("migration IN DOUBT: %s\n", r->err);
    else if (r->rc < 0)
        printf("migration FAILED: %s\n  the guest keeps running here: log-dirty off, "
               "superpages merged back\n", r->err);
    else
        printf("migration done in %.3f s, downtime %.1f ms (pause to confirmation; it includes "
               "both memory digests, %.1f ms here; before the pause %.1f ms waiting for the "
               "receiver to take in what was on its way)\n", r->total_s, r->downtime_s * 1e3,
               r->digest_s * 1e3, r->catch_up_s * 1e3);
    printf("  pre-copy: %u round(s) then the final one; ended because %s (%s)\n",
           r->nr_rounds ? r->nr_rounds - (r->rc == 0) : 0, migrate_end_desc(r->end),
           migrate_end_name(r->end));
    if (r->channels > 1 || r->channels_why[0]) {
        printf("  %u channel(s)%s%s:", r->channels, r->channels_why[0] ? ", " : "",
               r->channels_why);
        for (unsigned i = 0; i < r->channels; i++)
            printf(" %s", hv_fmt_size(r->channel_bytes[i], b1, sizeof(b1)));
        printf("\n");
    }
    if (r->postcopy)
        printf("  post-copy (%s): %llu pages left at the switch, %llu sent in the background, "
               "%llu as answers to %llu requests, %.3f s after the switch\n", r->postcopy_why,
               (unsigned long long)r->pc.pending, (unsigned long long)r->pc.pushed,
               (unsigned long long)r->pc.urgent, (unsigned long long)r->pc.requests,
               r->pc.seconds);
    for (unsigned i = 0; i < r->nr_rounds; i++) {
        const struct migrate_round *x = &r->rounds[i];
        printf("  round %-2u%s %9llu pages %8llu zero %10s on the wire %8.1f MB/s  dirty "
               "%9.0f/s  left %llu\n", x->index, x->paused ? " (paused)" : "         ",
               (unsigned long long)x->pages_data, (unsigned long long)x->pages_zero,
               hv_fmt_size(x->wire_bytes, b1, sizeof(b1)), x->mb_per_s, x->dirty_per_s,
               (unsigned long long)x->remaining);
    }
#define X(name, desc) printf("  %-16s %14llu  %s\n", #name, (unsigned long long)r->st.name, desc);
    MIGRATE_STAT_FIELDS(X)
#undef X
    printf("  leaf counts:\n");
    print_leaves("before migration:", &r->before);
    print_leaves("during log-dirty (pause):", &r->logdirty);
    if (r->rc == 0)
        print_leaves("on the receiver:", &r->receiver);
    else
        print_leaves(r->in_doubt ? "here, paused in doubt:" : "here after the abort:",
                     &r->after_abort);
    if (r->verified)
        printf("  memory digest: sender %#018llx == receiver %#018llx (%.1f ms): checksums "
               "match\n", (unsigned long long)r->digest_sender,
               (unsigned long long)r->digest_receiver, r->digest_s * 1e3);
}

static void json_report(struct json *j, const char *key, const struct migrate_report *r)
{
    json_obj_begin(j, key);
    json_bool(j, "ok", r->rc == 0);
    json_bool(j, "in_doubt", r->in_doubt);
    json_i64(j, "rc", r->rc);
    json_str(j, "error", r->err);
    json_dbl(j, "total_s", r->total_s);
    json_dbl(j, "downtime_ms", r->downtime_s * 1e3);
    json_dbl(j, "catch_up_ms", r->catch_up_s * 1e3);
    json_str(j, "end_rule", migrate_end_name(r->end));
    json_str(j, "end_reason", migrate_end_desc(r->end));
    json_str(j, "mode", r->postcopy ? "postcopy" : "precopy");
    json_u64(j, "channels", r->channels);
    json_str(j, "channels_why", r->channels_why);
    json_arr_begin(j, "channel_bytes");
    for (unsigned i = 0; i < r->channels; i++)
        json_u64(j, NULL, r->channel_bytes[i]);
    json_arr_end(j);
    if (r->postcopy) {
        json_obj_begin(j, "postcopy");
        json_str(j, "why", r->postcopy_why);
        json_u64(j, "pending", r->pc.pending);
        json_u64(j, "pushed", r->pc.pushed);
        json_u64(j, "urgent", r->pc.urgent);
        json_u64(j, "requests", r->pc.requests);
        json_u64(j, "wire_bytes", r->pc.wire_bytes);
        json_dbl(j, "seconds", r->pc.seconds);
        json_obj_end(j);
    }
    json_arr_begin(j, "rounds");
    for (unsigned i = 0; i < r->nr_rounds; i++) {
        const struct migrate_round *x = &r->rounds[i];
        json_obj_begin(j, NULL);
        json_u64(j, "round", x->index);
        json_bool(j, "paused", x->paused);
        json_u64(j, "pages_data", x->pages_data);
        json_u64(j, "pages_zero", x->pages_zero);
        json_u64(j, "stream_bytes", x->stream_bytes);
        json_u64(j, "wire_bytes", x->wire_bytes);
        json_dbl(j, "seconds", (double)x->ns / 1e9);
        json_dbl(j, "mb_per_s", x->mb_per_s);
        json_dbl(j, "dirty_pages_per_s", x->dirty_per_s);
        json_u64(j, "remaining", x->remaining);
        json_dbl(j, "eta_s", x->eta_s);
        json_obj_end(j);
    }
    json_arr_end(j);
    json_obj_begin(j, "stats");
#define X(name, desc) json_u64(j, #name, r->st.name);
    MIGRATE_STAT_FIELDS(X)
#undef X
    json_obj_end(j);
    json_leaves(j, "leaves_before", &r->before);
    json_leaves(j, "leaves_logdirty", &r->logdirty);
    json_leaves(j, r->rc == 0 ? "leaves_receiver" : "leaves_after_abort",
                r->rc == 0 ? &r->receiver : &r->after_abort);
    json_bool(j, "verified", r->verified);
    json_bool(j, "checksums_match", r->verified && r->digest_sender == r->digest_receiver);
    json_u64(j, "digest_sender", r->digest_sender);
    json_u64(j, "digest_receiver", r->digest_receiver);
    json_obj_end(j);
}

/* ---- transport security --------------------------------------------------------- */

int cli_parse_authz(void *dest, const char *arg)
{
    struct cli_tls_opts *t = dest;
    if (!arg[0] || t->creds.nr_authz >= CHAN_MAX_AUTHZ)
        return -EINVAL;
    t->creds.authz[t->creds.nr_authz++] = arg;
    return 0;
}

int cli_channels(const char *cmd, uint64_t v, unsigned *out)
{
    if (v > MIG_MAX_CHANNELS)
        return cli_error("%s: --channels must be in 1..%u", cmd, MIG_MAX_CHANNELS);
    if (!v) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        v = n < 1 ? 1 : n > 4 ? 4 : (uint64_t)n;
    }
    *out = (unsigned)v;
    return 0;
}

int cli_tls_setup(const char *cmd, const struct cli_tls_opts *t, bool server,
                  struct chan_tls **out)
{
    char err[CHAN_ERR_LEN];
    *out = NULL;
    bool creds = chan_creds_given(&t->creds);
    if (t->insecure && creds)
        return cli_error("%s: --insecure and TLS credentials exclude each other", cmd);
    if (t->insecure) {
        fprintf(stderr, "hugevm: %s: WARNING: --insecure: plain TCP, no authentication and no "
                "encryption; anyone who reaches the %s can read the guest's memory, change it "
                "in flight or %s\n", cmd, server ? "port" : "connection",
                server ? "push a forged guest here" : "pose as the receiver and take the guest");
        return 0;
    }
    if (!creds)
        return cli_error("%s: no credentials: give --psk-file FILE (the same key file on both "
                         "sides), or --tls-cert FILE --tls-key FILE --tls-ca FILE (and "
                         "--tls-authz NAME for the peer allowed), or --insecure on both sides "
                         "for plain, unauthenticated TCP", cmd);
    if (chan_tls_create(&t->creds, server, out, err, sizeof(err)) < 0)
        return cli_error("%s: %s", cmd, err);
    return 0;
}

/* ---- in doubt: the guest is never lost --------------------------------------------- */

#define DOUBT_ROUNDS 3     /* rounds over the paths before waiting for an operator */
#define DOUBT_WAIT_S 60.0  /* then one more round at least this often */

static volatile sig_atomic_t doubt_sig;

static void doubt_handler(int sig)
{
    doubt_sig = sig;
}

/* Save g to path, or, when path exists (never replaced), to a fresh name
 * beside it; *saved gets the name written.  0 or the last error. */
static int doubt_try(struct guest *g, const void *extra, size_t extra_len, const char *role,
                     const char *path, char *saved, size_t len, char *err, size_t errlen)
{
    struct save_result sr;
    int rc = cli_save_running(g, extra, extra_len, path, &sr, err, errlen);
    if (rc == 0)
        snprintf(saved, len, "%s", path);
    if (rc == -EEXIST)
        fprintf(stderr, "hugevm: %s: %s exists already (a file or a link: it is never followed "
                "or replaced); saving beside it under a fresh name\n", role, path);
    for (unsigned n = 1; rc == -EEXIST && n <= 20; n++) {
        char alt[PATH_MAX];
        snprintf(alt, sizeof(alt), "%s.%d-%u", path, (int)getpid(), n);
        rc = cli_save_running(g, extra, extra_len, alt, &sr, err, errlen);
        if (rc == 0)
            snprintf(saved, len, "%s", alt);
    }
    return rc;
}

/*
 * Save the paused guest g, held in doubt by `role` ("sender", "receiver"),
 * and return only when it is saved: *saved then names the whole file.
 * Paths: `given` (NULL: hugevm-in-doubt-ROLE-PID.hvs here), then the same
 * name in $TMPDIR or /tmp; see the file header for the rest.
 */
void cli_keep_in_doubt(struct guest *g, const void *extra, size_t extra_len, const char *given,
                       const char *role, char *saved, size_t len)
{
    char first[PATH_MAX], second[PATH_MAX + 64], err[256];
    if (given)
        snprintf(first, sizeof(first), "%s", given);
    else
        snprintf(first, sizeof(first), "hugevm-in-doubt-%s-%d.hvs", role, (int)getpid());
    const char *tmp = getenv("TMPDIR");
    const char *base = strrchr(first, '/') ? strrchr(first, '/') + 1 : first;
    snprintf(second, sizeof(second), "%s/%s", tmp && *tmp ? tmp : "/tmp", base);
    const char *paths[2] = {first, second};
    struct sigaction sa = {.sa_handler = doubt_handler}, old[4];
    static const int sigs[4] = {SIGUSR1, SIGTERM, SIGINT, SIGHUP};
    double backoff = 0.5;
    /* from here until it is saved, a signal must not end the process */
    doubt_sig = 0;
    sigemptyset(&sa.sa_mask);
    for (unsigned i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, &old[i]);
    for (unsigned round = 1;; round++) {
        for (unsigned i = 0; i < 2; i++) {
            if (doubt_try(g, extra, extra_len, role, paths[i], saved, len, err, sizeof(err)) == 0)
                goto done;
            fprintf(stderr, "hugevm: %s: IN DOUBT: saving the paused guest to %s failed: %s "
                    "(nothing was written under that name)\n", role, paths[i], err);
        }
        if (doubt_sig && doubt_sig != SIGUSR1)
            fprintf(stderr, "hugevm: %s: refusing signal %d: the guest is not saved yet\n",
                    role, (int)doubt_sig);
        doubt_sig = 0;
        if (round < DOUBT_ROUNDS) {
            fprintf(stderr, "hugevm: %s: retrying in %.1f s\n", role, backoff);
            cli_sleep_s(backoff);
            backoff *= 2;
            continue;
        }
        fprintf(stderr, "hugevm: %s: IN DOUBT and NOT SAVED: the paused guest exists only in "
                "this process (PID %d).  Make room or fix %s (or %s), then `kill -USR1 %d` to "
                "retry now; it retries by itself every %.0f s.  SIGTERM, SIGINT and SIGHUP are "
                "refused while the guest is unsaved; SIGKILL discards it.\n", role,
                (int)getpid(), first, second, (int)getpid(), DOUBT_WAIT_S);
        fflush(stderr);
        uint64_t t0 = hv_now_ns();
        for (;;) {
            int sig = doubt_sig;
            doubt_sig = 0;
            if (sig == SIGUSR1)
                break;
            if (sig)
                fprintf(stderr, "hugevm: %s: refusing signal %d: the guest is not saved yet "
                        "(SIGUSR1 retries, SIGKILL discards it)\n", role, sig);
            if ((double)(hv_now_ns() - t0) / 1e9 >= DOUBT_WAIT_S)
                break;
            cli_sleep_s(0.05);
        }
        fprintf(stderr, "hugevm: %s: retrying the in-doubt save\n", role);
    }
done:
    for (unsigned i = 0; i < 4; i++)
        sigaction(sigs[i], &old[i], NULL);
}

/* The guest's speed and mappings while the migration runs: sampled at
 * every pre-copy round (the last one before the pause is the phase's end). */
struct phase_ctx {
    struct guest *g;
    struct cli_phase during;
    const struct migrate_opts *user;
};

static void phase_round(void *ctx, const struct migrate_round *r)
{
    struct phase_ctx *pc = ctx;
    cli_phase_end(&pc->during, pc->g);
    if (pc->user->on_round)
        pc->user->on_round(pc->user->ctx, r);
}

int cli_migrate_domain(struct domain *d, unsigned nv, const struct tlb_config *tc,
                       const struct workload_config *wc, const char *to, double after,
                       const struct migrate_opts *mopts, struct chan_tls *ctls,
                       uint64_t retries, const char *doubt_file, double run_s,
                       const char *fail_save, bool json)
{
    struct guest *g = NULL;
    int rc = guest_create_soft(d, nv, tc, wc, &g);
    if (rc == 0)
        rc = guest_start(g);
    if (rc < 0) {
        guest_destroy(g);
        return cli_error("migrate: cannot start the guest: %s", strerror(-rc));
    }
    int status = cli_migrate_guest(g, workload_name(wc->kind), to, after, mopts, ctls, retries,
                                   doubt_file, run_s, fail_save, json);
    guest_destroy(g);
    return status;
}

/* Another connection to the receiver: a parallel channel
 * (migrate_opts.open_channel), or post-copy's new one after the one in use
 * failed (migrate_opts.pc_reconnect). */
struct reconnect {
    struct sockaddr_in sa;
    struct chan_tls *tls;
    int tmo;
};

static struct chan *connect_again(struct reconnect *r, const char *what, char *err, size_t len)
{
    int fd, rc = net_connect(&r->sa, r->tmo, &fd);
    struct chan *ch = NULL;
    char cerr[CHAN_ERR_LEN];
    if (rc < 0)
        snprintf(err, len, "%s: %s", what, strerror(-rc));
    else if (chan_open(fd, r->tls, r->tmo, &ch, cerr, sizeof(cerr)) < 0)
        snprintf(err, len, "%s: %s", what, cerr);
    return ch;
}

static struct chan *reconnect(void *ctx, char *err, size_t len)
{
    struct chan *ch = connect_again(ctx, "connecting again", err, len);
    if (ch)
        fprintf(stderr, "hugevm: migrate: post-copy: connected again to resume\n");
    return ch;
}

static struct chan *open_channel(void *ctx, char *err, size_t len)
{
    return connect_again(ctx, "connecting a further channel", err, len);
}

/* Post-copy in doubt: what the saved copy needs to finish the migration
 * later (migrate_opts.pc_doubt), as the TLV saved with it. */
struct pc_doubt {
    struct hvctx_buf tl;
    int rc;
};

static void pc_doubt_keep(void *ctx, const struct migrate_pc_state *st)
{
    struct pc_doubt *k = ctx;
    hvctx_free(&k->tl);
    k->rc = hvctx_begin(&k->tl);
    if (k->rc == 0)
        k->rc = migrate_pc_state_encode(st, &k->tl);
    if (k->rc < 0)
        fprintf(stderr, "hugevm: migrate: IN DOUBT: recording the post-copy state failed (%s): "
                "the saved copy can be resumed but not finish the migration\n",
                strerror(-k->rc));
}

int cli_migrate_guest(struct guest *g, const char *what, const char *to, double after,
                      const struct migrate_opts *user_mopts, struct chan_tls *ctls,
                      uint64_t retries, const char *doubt_file, double run_s,
                      const char *fail_save, bool json)
{
    uint64_t t_start = hv_now_ns();
    struct sockaddr_in sa;
    struct domain *d = g->d;
    unsigned nv = g->nr_vcpus;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char b1[64], cwhy[256];
    int status = 1, rc;
    if (!rep)
        return cli_error("migrate: out of memory");
    if (net_parse_addr(to, &sa) < 0) {
        free(rep);
        return cli_error("migrate: bad address '%s' (want A.B.C.D:PORT)", to);
    }
    if (guest_can_migrate(g, cwhy, sizeof(cwhy)) < 0) {
        free(rep);
        return cli_error("migrate: %s", cwhy);
    }
    struct phase_ctx pctx = {.g = g, .user = user_mopts};
    struct migrate_opts mo_ = *user_mopts;
    mo_.on_round = phase_round;
    mo_.ctx = &pctx;
    struct reconnect rcx = {.sa = sa, .tls = ctls,
                            .tmo = mo_.timeout_ms > 0 ? mo_.timeout_ms : 10000};
    struct pc_doubt pcd = {{0}, -ENODATA};
    if (mo_.postcopy || mo_.postcopy_auto) {
        /* --postcopy-recover 0: no new connection, in doubt at once */
        if (mo_.pc_recover_ms > 0) {
            mo_.pc_reconnect = reconnect;
            mo_.pc_ctx = &rcx;
        }
        mo_.pc_doubt = pc_doubt_keep;
        mo_.pc_doubt_ctx = &pcd;
        /* fault injection for the test of --resume-postcopy (README,
         * "Tests"): cut the link after N post-copy pages */
        const char *cut = getenv("HUGEVM_TEST_PC_CUT");
        if (cut && *cut)
            mo_.pc_cut_after_pages = strtoull(cut, NULL, 10);
    }
    if (mo_.channels > 1) {
        mo_.open_channel = open_channel;
        mo_.open_ctx = &rcx;
    }
    const struct migrate_opts *mopts = &mo_;
    if (!json)
        printf("guest running (%s backend, %u vCPU(s), workload %s); migrating to %s after "
               "%.1f s\n", guest_backend_name(g->backend), nv, what,
               net_fmt_addr(&sa, b1, sizeof(b1)), after);
    fflush(stdout);
    struct cli_phase before;
    cli_phase_begin(&before, g);
    cli_sleep_s(after);
    cli_phase_end(&before, g);
    for (uint64_t attempt = 0;; attempt++) {
        int fd;
        struct chan *ch = NULL;
        char cerr[CHAN_ERR_LEN];
        int tmo = mopts->timeout_ms > 0 ? mopts->timeout_ms : 10000;
        rc = net_connect(&sa, tmo, &fd);
        if (rc < 0) {
            rep->rc = rc;
            snprintf(rep->err, sizeof(rep->err), "connecting to %s: %s", to, strerror(-rc));
        } else if ((rc = chan_open(fd, ctls, tmo, &ch, cerr, sizeof(cerr))) < 0) {
            /* nothing of the guest went out: it keeps running here */
            memset(rep, 0, sizeof(*rep));
            rep->rc = rc;
            snprintf(rep->err, sizeof(rep->err), "%s refused: %s", to, cerr);
        } else {
            if (!json && ch->secure)
                printf("connected to %s: %s, peer %s\n", to, ch->cipher, ch->peer);
            cli_phase_begin(&pctx.during, g);
            rc = migrate_send(g, ch, mopts, rep);
            chan_close(ch);
        }
        if (rc == 0 || rep->in_doubt || attempt >= retries)
            break;
        fprintf(stderr, "hugevm: migrate: attempt %llu failed: %s; the guest keeps running "
                "here; retrying\n", (unsigned long long)attempt + 1, rep->err);
        cli_sleep_s(1.0);
    }
    /* in doubt: the paused guest lives only in this process; it is saved
     * (whatever it takes) so that the operator can resume it if the
     * receiver does not run it */
    char dpath[PATH_MAX] = "";
    bool pc_state = rep->in_doubt && pcd.rc == 0;
    if (rep->in_doubt)
        cli_keep_in_doubt(g, pc_state ? pcd.tl.p + sizeof(struct hvctx_header) : NULL,
                          pc_state ? pcd.tl.len - sizeof(struct hvctx_header) : 0, doubt_file,
                          "sender", dpath, sizeof(dpath));
    hvctx_free(&pcd.tl);
    /* failed outright: the guest runs on here (migrate.h); keep it running
     * for the rest of the run, then save it if asked */
    double left = 0;
    char fpath[PATH_MAX] = "", ferr[256] = "";
    int frc = 0;
    if (rc < 0 && !rep->in_doubt) {
        left = run_s - (double)(hv_now_ns() - t_start) / 1e9;
        if (!json)
            printf("migration failed: the guest keeps running here%s", left > 0 ? "" : "\n");
        if (!json && left > 0)
            printf(" for the %.1f s left of the run\n", left);
        fflush(stdout);
        if (left > 0)
            cli_sleep_s(left);
        guest_pause(g);
        if (fail_save) {
            struct save_result sr;
            frc = cli_save_running(g, NULL, 0, fail_save, &sr, ferr, sizeof(ferr));
            if (frc == 0)
                snprintf(fpath, sizeof(fpath), "%s", fail_save);
        }
    }
    if (json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "to", to);
        json_str(&j, "backend", guest_backend_name(g->backend));
        json_str(&j, "dirty_log", rep->dirty_source ? rep->dirty_source : "");
        json_obj_begin(&j, "phases");
        cli_json_phase(&j, "before", &before);
        cli_json_phase(&j, "during", &pctx.during);
        json_null(&j, "after"); /* the receiver's (hugevm receive --json) */
        json_obj_end(&j);
        if (rep->in_doubt) {
            json_str(&j, "in_doubt_saved", dpath);
            json_bool(&j, "postcopy_resumable", pc_state);
        }
        if (rc < 0 && !rep->in_doubt) {
            json_bool(&j, "guest_kept", true);
            json_dbl(&j, "ran_after_failure_s", left > 0 ? left : 0);
            json_str(&j, "saved_on_failure", fpath);
            json_str(&j, "save_on_failure_error", frc == 0 ? "" : ferr);
        }
        json_u64(&j, "vcpus", nv);
        json_str(&j, "workload", what);
        json_str(&j, "log_dirty", dirty_mode_name(mopts->mode));
        json_bool(&j, "compress", mopts->compress);
        json_report(&j, "migration", rep);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        print_report(rep);
        if (rep->dirty_source)
            printf("  guest writes logged by: %s\n", rep->dirty_source);
        printf("  the guest here:\n");
        cli_print_phase("before migration:", &before);
        cli_print_phase("during log-dirty:", &pctx.during);
    }
    if (rep->in_doubt) {
        status = CLI_EXIT_IN_DOUBT;
        FILE *f = json ? stderr : stdout;
        if (rep->postcopy && pc_state) {
            fprintf(f, "IN DOUBT: post-copy failed after the switch: the receiver runs the guest "
                    "without all of its memory; its vCPUs that need a missing page wait for "
                    "this copy's pages (hugevm receive --postcopy-wait).\n");
            fprintf(f, "  This copy, paused at the switch with every page, is saved to %s "
                    "(written whole, mode 0600).\n", dpath);
            fprintf(f, "  Finish the migration: `hugevm migrate --resume-postcopy %s --to %s` "
                    "(with this run's TLS options).  Only if the receiver reports that it gave "
                    "the guest up, resume this copy instead: `hugevm restore %s --run%s` (what "
                    "the guest did on the receiver since the switch is lost then).\n", dpath,
                    to, dpath, g->backend == GUEST_BACKEND_NATIVE ? " --backend native" : "");
        } else {
            if (rep->postcopy)
                fprintf(f, "IN DOUBT: post-copy failed after the switch: the receiver ran the "
                        "guest without all of its memory and cannot go on; this copy is the "
                        "guest as it was at the switch (what it did on the receiver since is "
                        "lost).\n");
            else
                fprintf(f, "IN DOUBT: COMMIT went out but the receiver's RESUMED did not come "
                        "back: the receiver may be running the guest, or may hold it paused in "
                        "doubt too.\n");
            fprintf(f, "  This copy was not resumed and not destroyed: it is saved, paused, to "
                    "%s (written whole, mode 0600).\n", dpath);
            fprintf(f, "  If the receiver runs the guest, delete the saved copy.  If the "
                    "receiver reports IN DOUBT as well (or is gone), resume exactly one copy, "
                    "e.g. `hugevm restore %s --run%s`.\n", dpath,
                    g->backend == GUEST_BACKEND_NATIVE ? " --backend native" : "");
        }
        fprintf(f, "  exit status %d\n", CLI_EXIT_IN_DOUBT);
    } else if (rc == 0) {
        status = 0;
    } else {
        /* nothing lost: the guest still runs here and its memory is sound */
        int a = domain_audit(d);
        if (!json)
            printf("  sender audit after the failure: %s\n", a ? hv_audit_last() : "ok");
        if (fail_save && frc == 0)
            printf("  the guest, kept after the failed migration, is saved to %s: `hugevm "
                   "restore %s --run%s` resumes it\n", fpath, fpath,
                   g->backend == GUEST_BACKEND_NATIVE ? " --backend native" : "");
        else if (fail_save)
            fprintf(stderr, "hugevm: saving the guest kept after the failed migration to %s "
                    "failed: %s (nothing was written under that name)\n", fail_save, ferr);
        else if (!json)
            printf("  the guest ran here to the end of the run; give --save-on-failure FILE to "
                   "keep it past that\n");
    }
    free(rep);
    return status;
}

/* ---- --resume-postcopy: finish a post-copy from the sender's saved copy ------------ */

int cli_resume_postcopy(const char *file, const char *to, const struct migrate_opts *user_mopts,
                        struct chan_tls *ctls, uint64_t host_mem, bool json)
{
    struct sockaddr_in sa;
    if (net_parse_addr(to, &sa) < 0)
        return cli_error("migrate: bad address '%s' (want A.B.C.D:PORT)", to);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_error("migrate: --resume-postcopy %s: %s", file, strerror(errno));
    struct stat fst;
    uint64_t bytes = fstat(fd, &fst) == 0 ? (uint64_t)fst.st_size : 0;
    if (!host_mem)
        host_mem = cli_restore_host_mem(bytes);
    struct machine *m = NULL;
    if (cli_machine_create("migrate", &m, host_mem, false, NULL) < 0) {
        close(fd);
        return 1;
    }
    int status = 1, rc;
    struct stream_fd sf;
    struct stream_io io;
    struct restore_result rr = {0};
    struct migrate_pc_state st = {0};
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    struct chan *ch = NULL;
    char err[320];
    if (!rep || stream_fd_open(&sf, &io, fd) < 0) {
        close(fd);
        cli_error("migrate: out of memory");
        goto out;
    }
    stream_fd_alias(&sf, m->base, m->bytes, m->fd);
    struct restore_opts ro = {.verify_checksum = true};
    rc = stream_restore(m, &io, &ro, &rr);
    stream_fd_free(&sf);
    close(fd);
    if (rc < 0) {
        cli_error("migrate: --resume-postcopy %s: %s (%s)", file, rr.err, strerror(-rc));
        goto out;
    }
    rc = rr.vcpu == RESTORE_VCPU_HUGEVM
             ? migrate_pc_state_decode(rr.context, rr.context_len, rr.d, &st, err, sizeof(err))
             : 0;
    if (rc < 0) {
        cli_error("migrate: --resume-postcopy %s: %s", file, err);
        goto out;
    }
    if (rc == 0) {
        cli_error("migrate: --resume-postcopy %s: not the saved copy of a post-copy sender in "
                  "doubt (no POSTCOPY record): nothing to finish; `hugevm restore %s --run` "
                  "resumes a saved guest", file, file);
        goto out;
    }
    if (!json)
        printf("restored %s: the guest as it was paused at the switch (post-copy %#llx, %llu "
               "pages were left for after it); connecting to %s\n", file,
               (unsigned long long)st.id,
               (unsigned long long)migrate_pc_state_pending(&st), to);
    struct migrate_opts mo_ = *user_mopts;
    int tmo = mo_.timeout_ms > 0 ? mo_.timeout_ms : 10000;
    struct reconnect rcx = {.sa = sa, .tls = ctls, .tmo = tmo};
    mo_.pc_reconnect = mo_.pc_recover_ms > 0 ? reconnect : NULL;
    mo_.pc_ctx = &rcx;
    ch = connect_again(&rcx, "connecting", err, sizeof(err));
    if (!ch) {
        cli_error("migrate: --resume-postcopy: %s: %s; the saved copy %s is kept", to, err, file);
        goto out;
    }
    rc = migrate_postcopy_serve(rr.d, ch, &st, &mo_, rep);
    bool removed = rc == 0 && unlink(file) == 0;
    if (json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "to", to);
        json_str(&j, "resumed_from", file);
        json_bool(&j, "saved_copy_removed", removed);
        json_report(&j, "migration", rep);
        json_obj_end(&j);
        json_finish(&j);
    } else if (rc == 0) {
        printf("post-copy finished from the saved copy in %.3f s: %llu pages sent (%llu as "
               "answers to %llu requests) over %llu connection(s)\n", rep->total_s,
               (unsigned long long)(rep->pc.pushed + rep->pc.urgent),
               (unsigned long long)rep->pc.urgent, (unsigned long long)rep->pc.requests,
               (unsigned long long)(1 + rep->pc.reconnects));
        print_leaves("on the receiver:", &rep->receiver);
        printf("  memory digest: sender %#018llx == receiver %#018llx: the receiver holds every "
               "page\n", (unsigned long long)rep->digest_sender,
               (unsigned long long)rep->digest_receiver);
    }
    if (rc == 0) {
        status = 0;
        if (!json)
            printf("the guest is the receiver's now; the saved copy %s %s\n", file,
                   removed ? "is removed (resuming it would make a second guest)"
                           : "could NOT be removed: delete it, never resume it");
    } else {
        fprintf(json ? stderr : stdout, "resuming post-copy FAILED: %s\n  the saved copy %s is "
                "kept: run this again while the receiver waits (its --postcopy-wait); if the "
                "receiver gave the guest up, `hugevm restore %s --run` resumes this copy\n",
                rep->err, file, file);
    }
out:
    if (ch)
        chan_close(ch);
    migrate_pc_state_free(&st);
    if (rr.d)
        domain_destroy(rr.d);
    restore_result_free(&rr);
    free(rep);
    machine_destroy(m);
    return status;
}

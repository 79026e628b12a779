/*
 * bench_postcopy.c - the `postcopy` group: post-copy migration of a real
 * guest (kvm where /dev/kvm runs guests, else native) next to pre-copy of
 * the same guest, between two hugevm processes over loopback (a native
 * guest lives at fixed host addresses: one per process).
 *
 * For 1, 2 and 4 GiB guests running the writer at 250,000 writes/s per
 * vCPU over its whole slice (2 vCPUs; paced so that the receiver can still
 * replay every write; whether pre-copy can keep up depends on how fast
 * the backend's dirty log lets the guest dirty pages), interleaved:
 *   - pre-copy (`hugevm migrate`, default rules): its downtime;
 *   - post-copy (`--postcopy`, one round before the switch): its downtime
 *     (sender: pause to RESUMED; the receiver arms its fault server
 *     before the guest starts, counted too), the service time of faults
 *     on missing pages (median, 99th percentile), the time until every
 *     page and every 2M region is back, and the guest's accesses per
 *     second meanwhile.
 * Then the case pre-copy cannot converge: the 1 GiB guest over a link
 * the sender paces to 100 MB/s (--max-bandwidth), slower than the guest
 * dirties pages: pre-copy ends when the dirty rate stops falling and
 * sends what is left with the guest paused; post-copy's downtime next to
 * it.
 * Figures are medians over RUNS runs; the limit next to post-copy's
 * downtime is pre-copy's for the same guest.  Every migration must verify
 * on the receiver (the guest replayed) or the group fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "guest.h"

#define RUNS 3

static bool hugevm_bin(char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return false;
    self[n] = 0;
    snprintf(out, len, "%s/../tools/hugevm", dirname(self));
    return access(out, X_OK) == 0;
}

static pid_t spawn_to(char *const argv[], const char *log)
{
    pid_t p = fork();
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return p;
}

static int wait_exit(pid_t p, int secs)
{
    for (int i = 0; i < secs * 10; i++) {
        int st;
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(100000);
    }
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    return -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    if (buf)
        (void)!fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    return buf;
}

/* The number after "key": found after the first occurrence of `within`
 * (NULL: from the start).  NAN when absent. */
static double num_of(const char *buf, const char *within, const char *key)
{
    const char *p = within ? strstr(buf, within) : buf;
    char k[96];
    snprintf(k, sizeof(k), "\"%s\":", key);
    p = p ? strstr(p, k) : NULL;
    if (!p)
        return -1;
    return strtod(p + strlen(k), NULL);
}

struct pc_run {
    double downtime_ms, total_s, p50_us, p99_us, whole_s, rate, arm_ms;
};

/* One migration of a bytes-sized guest to a fresh receiver: 0 and the
 * figures, or -1 (the logs are kept and named). */
static int one(const char *hv, enum guest_backend b, uint64_t bytes, bool postcopy,
               const char *bw, struct pc_run *r)
{
    char dir[] = "/tmp/hvbpcXXXXXX";
    if (!mkdtemp(dir))
        return -1;
    char portf[64], rlog[64], slog[64], gm[32], hm[32], port[16], to[40];
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(rlog, sizeof(rlog), "%s/receiver.json", dir);
    snprintf(slog, sizeof(slog), "%s/sender.json", dir);
    snprintf(gm, sizeof(gm), "%lluM", (unsigned long long)(bytes >> 20));
    snprintf(hm, sizeof(hm), "%lluM", (unsigned long long)((bytes + bytes / 4 + GiB) >> 20));
    const char *be = guest_backend_name(b);
    char *rargv[] = {(char *)hv, "receive", "--listen", "127.0.0.1:0", "--port-file", portf,
                     "--attempts", "1", "--accept-timeout", "600", "--host-mem", hm,
                     "--insecure", "--run", "1", "--backend", (char *)be, "--json", NULL};
    pid_t rp = spawn_to(rargv, rlog);
    unsigned pt = 0;
    for (int i = 0; i < 600 && !pt; i++) {
        FILE *f = fopen(portf, "r");
        if (f) {
            if (fscanf(f, "%u", &pt) != 1)
                pt = 0;
            fclose(f);
        }
        if (!pt)
            usleep(100000);
    }
    if (!pt) {
        kill(rp, SIGKILL);
        waitpid(rp, NULL, 0);
        fprintf(stderr, "postcopy group: the receiver wrote no port (log %s)\n", rlog);
        return -1;
    }
    snprintf(port, sizeof(port), "%u", pt);
    snprintf(to, sizeof(to), "127.0.0.1:%s", port);
    char *sargv[] = {(char *)hv, "migrate", "--to", to, "--backend", (char *)be,
                     "--guest-mem", gm, "--host-mem", hm, "--workload", "writer",
                     "--write-rate", "250000", "--wss", "1", "--vcpus", "2", "--after", "1",
                     "--insecure", "--json", "--max-bandwidth", bw ? (char *)bw : "0",
                     postcopy ? "--postcopy" : NULL, NULL};
    pid_t sp = spawn_to(sargv, slog);
    int ss = wait_exit(sp, 900), rs = wait_exit(rp, 900);
    char *s = slurp(slog), *rv = slurp(rlog);
    int rc = -1;
    if (ss == 0 && rs == 0 && s && rv && strstr(rv, "\"guest_verified\":true")) {
        r->downtime_ms = num_of(s, NULL, "downtime_ms");
        r->total_s = num_of(s, "\"migration\"", "total_s");
        if (postcopy) {
            r->p50_us = num_of(rv, "\"postcopy\":{", "fault_p50_ns") / 1e3;
            r->p99_us = num_of(rv, "\"postcopy\":{", "fault_p99_ns") / 1e3;
            r->whole_s = num_of(rv, "\"postcopy\":{", "whole_s");
            r->rate = num_of(rv, "\"postcopy\":{", "accesses_per_s");
            r->arm_ms = num_of(rv, "\"postcopy\":{", "arm_s") * 1e3;
            r->downtime_ms += r->arm_ms; /* the guest starts after arming */
        }
        rc = 0;
        unlink(portf);
        unlink(rlog);
        unlink(slog);
        rmdir(dir);
    } else {
        fprintf(stderr, "postcopy group: %s migration of %s failed (sender %d, receiver %d): "
                "logs %s %s\n", postcopy ? "post-copy" : "pre-copy", gm, ss, rs, slog, rlog);
    }
    free(s);
    free(rv);
    return rc;
}

void bench_postcopy(bench_add_fn add)
{
    char why[256], hv[PATH_MAX + 32];
    enum guest_backend b = guest_backend_auto(why, sizeof(why));
    if (b != GUEST_BACKEND_KVM) {
        b = GUEST_BACKEND_NATIVE;
        if (native_dirty_log_probe(why, sizeof(why)) < 0) {
            printf("postcopy group: skipped: %s\n", why);
            return;
        }
    }
    if (!hugevm_bin(hv, sizeof(hv))) {
        printf("postcopy group: skipped: no hugevm binary next to the bench (%s)\n", hv);
        return;
    }
    const char *be = guest_backend_name(b);
    printf("postcopy group: %s guests, writer at 250k writes/s per vCPU over its whole slice, 2 vCPUs, "
           "interleaved pre-copy and post-copy, medians of %d\n", be, RUNS);
    static const uint64_t sizes[] = {1 * GiB, 2 * GiB, 4 * GiB};
    /* HUGEVM_BENCH_POSTCOPY_QUICK=1: 1 GiB, one run */
    const char *quick = getenv("HUGEVM_BENCH_POSTCOPY_QUICK");
    bool q = quick && *quick == '1';
    int runs = q ? 1 : RUNS;
    for (unsigned si = 0; si < (q ? 1 : ARRAY_SIZE(sizes)); si++) {
        double pre[RUNS], dt[RUNS], p50[RUNS], p99[RUNS], whole[RUNS], tot[RUNS], rate[RUNS];
        for (int k = 0; k < runs; k++) {
            struct pc_run a = {0}, c = {0};
            if (one(hv, b, sizes[si], false, NULL, &a) < 0 ||
                one(hv, b, sizes[si], true, NULL, &c) < 0)
                bench_fail("a migration in the postcopy group");
            pre[k] = a.downtime_ms;
            dt[k] = c.downtime_ms;
            p50[k] = c.p50_us;
            p99[k] = c.p99_us;
            whole[k] = c.whole_s;
            tot[k] = c.total_s;
            rate[k] = c.rate;
        }
        unsigned gib = (unsigned)(sizes[si] / GiB);
        char name[96];
        double mpre = bench_median(pre, runs), mdt = bench_median(dt, runs);
        snprintf(name, sizeof(name), "%s_postcopy_%ug_downtime_ms", be, gib);
        add(name, mdt, "ms", mpre, "pre-copy's downtime, same guest", mpre > 0 ? mdt / mpre : 0);
        snprintf(name, sizeof(name), "%s_postcopy_%ug_fault_p50_us", be, gib);
        add(name, bench_median(p50, runs), "us", 0, NULL, 0);
        snprintf(name, sizeof(name), "%s_postcopy_%ug_fault_p99_us", be, gib);
        add(name, bench_median(p99, runs), "us", 0, NULL, 0);
        double mt = bench_median(tot, runs), mw = bench_median(whole, runs);
        snprintf(name, sizeof(name), "%s_postcopy_%ug_superpages_back_s", be, gib);
        add(name, mw, "s", mt, "the migration's total time", mt > 0 ? mw / mt : 0);
        snprintf(name, sizeof(name), "%s_postcopy_%ug_guest_macc_per_s_meanwhile", be, gib);
        add(name, bench_median(rate, runs) / 1e6, "Macc/s", 0, NULL, 0);
    }
    /* pre-copy cannot converge: a link slower than the guest dirties */
    double pre[RUNS], dt[RUNS], ptot[RUNS], tot[RUNS];
    for (int k = 0; k < runs; k++) {
        struct pc_run a = {0}, c = {0};
        if (one(hv, b, GiB, false, "100M", &a) < 0 || one(hv, b, GiB, true, "100M", &c) < 0)
            bench_fail("a migration at 100 MB/s in the postcopy group");
        pre[k] = a.downtime_ms;
        dt[k] = c.downtime_ms;
        ptot[k] = a.total_s;
        tot[k] = c.total_s;
    }
    char name[96];
    double mpre = bench_median(pre, runs), mdt = bench_median(dt, runs);
    snprintf(name, sizeof(name), "%s_postcopy_1g_at_100mb_per_s_downtime_ms", be);
    add(name, mdt, "ms", mpre, "pre-copy's downtime, same guest and link", mpre > 0 ? mdt / mpre : 0);
    double mpt = bench_median(ptot, runs), mt = bench_median(tot, runs);
    snprintf(name, sizeof(name), "%s_postcopy_1g_at_100mb_per_s_total_s", be);
    add(name, mt, "s", mpt, "pre-copy's total time", mpt > 0 ? mt / mpt : 0);
}

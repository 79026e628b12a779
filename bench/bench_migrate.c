/*
 * bench_migrate.c - live migration over loopback TCP of a 2 GiB guest whose
 * every page holds data (half random, half a repeated pattern: zstd finds
 * about 2:1), at two dirty rates, with and without compression.  Each case
 * reports total time, downtime, bytes per round, and the throughput of the
 * full-copy round next to a plain TCP transfer of the same number of bytes
 * over loopback measured in the same run (the limit; goal: ratio >= 0.5).
 * One migration per case (each moves gigabytes): expect noise.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate.h"
#include "net.h"

typedef void (*add_fn_t)(const char *, double, const char *, double, const char *, double);

#define GUEST (2 * GiB)

struct sink {
    int lfd;
    uint64_t bytes;
    struct machine *m;
    struct migrate_recv_result res;
    int rc;
};

static void *plain_sink(void *arg)
{
    struct sink *s = arg;
    int fd;
    if (net_accept(s->lfd, 10000, &fd) < 0)
        return NULL;
    uint8_t *buf = malloc(MiB);
    for (;;) {
        ssize_t n = recv(fd, buf, MiB, 0);
        if (n <= 0)
            break;
        s->bytes += (uint64_t)n;
    }
    free(buf);
    close(fd);
    return NULL;
}

static void *mig_sink(void *arg)
{
    struct sink *s = arg;
    int fd;
    s->rc = -ETIMEDOUT;
    if (net_accept(s->lfd, 10000, &fd) < 0)
        return NULL;
    s->rc = migrate_receive(s->m, fd, NULL, &s->res);
    close(fd);
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
static double plain_tcp(uint64_t bytes)
{
    struct sink s = {0};
    struct sockaddr_in sa;
    pthread_t t;
    int fd;
    if (listen_any(&s.lfd, &sa) < 0 || pthread_create(&t, NULL, plain_sink, &s))
        return 0;
    if (net_connect(&sa, 5000, &fd) < 0)
        abort();
    uint8_t *buf = malloc(MiB);
    memset(buf, 0x5a, MiB);
    uint64_t t0 = hv_now_ns();
    for (uint64_t sent = 0; sent < bytes; sent += MiB)
        if (net_write_all(fd, buf, MiB) < 0)
            break;
    shutdown(fd, SHUT_WR);
    pthread_join(t, NULL);
    double mbs = (double)s.bytes * 1e3 / (double)(hv_now_ns() - t0);
    close(fd);
    close(s.lfd);
    free(buf);
    return mbs;
}

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
            p[i] = 0x0101010101010101ULL * (g & 0xff);
    }
}

static void one_case(add_fn_t add, uint64_t rate, bool compress)
{
    struct machine *m, *rm;
    struct domain *d;
    struct domain_config c;
    struct migrate_guest *g;
    char name[64], tag[32];
    snprintf(tag, sizeof(tag), "migrate_%lluk%s", (unsigned long long)(rate / 1000),
             compress ? "_zstd" : "");
    domain_config_default(&c);
    if (machine_create(&m, GUEST + GiB, FRAME_POLICY_FRAGPOOL) < 0 ||
        machine_create(&rm, GUEST + 2 * GiB, FRAME_POLICY_FRAGPOOL) < 0 ||
        domain_create(m, &c, &d) < 0 || domain_populate_guest(d, GUEST, NULL) < 0)
        abort();
    fill(d);
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.wss = 0.25;
    wc.write_rate = rate;
    if (migrate_guest_create(d, 1, NULL, &wc, &g) < 0 || migrate_guest_start(g) < 0)
        abort();
    struct sink s = {.m = rm};
    struct sockaddr_in sa;
    pthread_t t;
    int fd;
    if (listen_any(&s.lfd, &sa) < 0 || pthread_create(&t, NULL, mig_sink, &s) ||
        net_connect(&sa, 5000, &fd) < 0)
        abort();
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    struct migrate_opts o = {.compress = compress, .no_verify = true};
    int rc = migrate_send(g, fd, &o, rep);
    close(fd);
    pthread_join(t, NULL);
    close(s.lfd);
    if (rc < 0 || s.rc < 0) {
        fprintf(stderr, "%s: migration failed: %s / %s\n", tag, rep->err, s.res.err);
    } else {
        const struct migrate_round *r0 = &rep->rounds[0];
        double limit = plain_tcp(rep->st.wire_bytes);
        double thr = (double)rep->st.wire_bytes / rep->total_s / 1e6;
        snprintf(name, sizeof(name), "%s_total_s", tag);
        add(name, rep->total_s, "s", 0, NULL, 0);
        snprintf(name, sizeof(name), "%s_downtime_ms", tag);
        add(name, rep->downtime_s * 1e3, "ms", 0, NULL, 0);
        snprintf(name, sizeof(name), "%s_rounds", tag);
        add(name, rep->nr_rounds, "rounds", 0, NULL, 0);
        for (unsigned i = 0; i < rep->nr_rounds && i < 6; i++) {
            snprintf(name, sizeof(name), "%s_round%u_mib", tag, i);
            add(name, (double)rep->rounds[i].wire_bytes / MiB, "MiB", 0, NULL, 0);
        }
        snprintf(name, sizeof(name), "%s_full_copy_mb_per_s", tag);
        add(name, r0->mb_per_s, "MB/s", limit, "plain_tcp_mb_per_s", r0->mb_per_s / limit);
        snprintf(name, sizeof(name), "%s_overall_mb_per_s", tag);
        add(name, thr, "MB/s", limit, "plain_tcp_mb_per_s", thr / limit);
        snprintf(name, sizeof(name), "%s_guest_gib_per_s", tag);
        add(name, (double)GUEST / GiB / rep->total_s, "GiB/s", 0, NULL, 0);
    }
    free(rep);
    if (s.res.g) {
        struct domain *rd = s.res.g->d;
        migrate_guest_destroy(s.res.g);
        domain_destroy(rd);
    }
    migrate_recv_result_free(&s.res);
    migrate_guest_destroy(g);
    domain_destroy(d);
    machine_destroy(m);
    machine_destroy(rm);
}

void bench_migrate(add_fn_t add);
void bench_migrate(add_fn_t add)
{
    static const uint64_t rates[] = {20000, 100000};
    for (size_t i = 0; i < ARRAY_SIZE(rates); i++) {
        one_case(add, rates[i], false);
        one_case(add, rates[i], true);
    }
}

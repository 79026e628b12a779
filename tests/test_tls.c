/*
 * test_tls.c - authenticated, encrypted migration (chan.h): a guest moves
 * over TLS 1.3 with a pre-shared key and with X.509 certificates (a CA,
 * certificates and keys made for the test with the openssl command, thrown
 * away after), the receiver's memory digest equal to the sender's.  Then
 * every peer that must be refused is: a wrong PSK, a certificate of
 * another CA, a certificate the allow-list does not name, a plain sender
 * against a TLS receiver (a real migrate_send of a guest: a forged guest
 * pushed without credentials) and a TLS sender against a plain receiver.
 * Each is refused before any guest byte is accepted: the receiver never
 * reaches migrate_receive and its machine holds no frame; the sender's
 * guest runs on, log-dirty off.  A proxy that flips one byte in flight
 * (in the handshake, in the guest's pages) fails the migration on both
 * sides, the sender keeping its guest.  A peer that sends a guest without
 * the memory digest (its DONE rewritten on the way, over --insecure) gets
 * nothing resumed.  Credential files: a world-readable key or PSK file,
 * a key under 128 bits, malformed PSK lines and mixed credentials are
 * refused with a message naming the file; the hugevm command refuses to
 * migrate without credentials or --insecure and warns with --insecure.
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
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "chan.h"
#include "migrate.h"
#include "net.h"

#define GUEST_GFNS (1ULL << 14) /* 64 MiB */

static char dir[] = "/tmp/hvtlsXXXXXX";
static bool have_certs;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static const char *path(const char *name)
{
    static char buf[8][PATH_MAX];
    static unsigned k;
    char *p = buf[k++ % 8];
    snprintf(p, PATH_MAX, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *name, const char *text, mode_t mode)
{
    const char *p = path(name);
    unlink(p);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* "ID:" and 2 * bytes random hex digits. */
static void write_psk(const char *name, const char *id, unsigned bytes, mode_t mode)
{
    static uint64_t seed = 0x9e3779b97f4a7c15ULL;
    char line[512];
    struct hv_rng r = {seed ^ hv_now_ns()};
    seed += 0x1234567;
    int n = snprintf(line, sizeof(line), "%s:", id);
    for (unsigned i = 0; i < bytes; i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%02x",
                      (unsigned)(hv_rng_next(&r) & 0xff));
    snprintf(line + n, sizeof(line) - (size_t)n, "\n");
    write_file(name, line, mode);
}

static int sh(const char *fmt, ...) HV_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    strncat(cmd, " >/dev/null 2>&1", sizeof(cmd) - strlen(cmd) - 1);
    return system(cmd);
}

/* A CA (ca.pem, ca.key) and a leaf certificate NAME.pem / NAME.key for
 * subject CN cn with subjectAltName san, signed by it. */
static int make_ca(const char *ca)
{
    return sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
              "-keyout %s.key -out %s.pem -subj /CN=%s -days 2 && chmod 600 %s.key",
              dir, ca, ca, ca, ca);
}

static int make_leaf(const char *ca, const char *name, const char *cn, const char *san)
{
    return sh("cd %s && printf 'subjectAltName=%s\\n' > %s.ext && "
              "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s.key "
              "-out %s.csr -subj /CN=%s && chmod 600 %s.key && "
              "openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial "
              "-out %s.pem -days 2 -extfile %s.ext",
              dir, san, name, name, name, cn, name, name, ca, ca, name, name);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    have_certs = sh("openssl version") == 0 && make_ca("ca") == 0 && make_ca("evilca") == 0 &&
                 make_leaf("ca", "receiver", "hv-receiver", "DNS:receiver.hv.test") == 0 &&
                 make_leaf("ca", "sender", "hv-sender", "DNS:sender.hv.test,IP:127.0.0.1") == 0 &&
                 make_leaf("ca", "other", "hv-other", "DNS:other.hv.test") == 0 &&
                 make_leaf("evilca", "intruder", "hv-sender", "DNS:sender.hv.test") == 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sh("rm -rf %s", dir);
    return 0;
}

static void need_certs(void)
{
    if (!have_certs) {
        print_message("# SKIP reason: the openssl command could not make the test CA and "
                      "certificates (scripts/deps.sh installs openssl)\n");
        skip();
    }
}

static struct chan_tls *tls_new(const struct chan_creds *cr, bool server)
{
    struct chan_tls *t;
    char err[CHAN_ERR_LEN];
    if (chan_tls_create(cr, server, &t, err, sizeof(err)) < 0)
        fail_msg("chan_tls_create: %s", err);
    return t;
}

static struct chan_tls *psk_tls(const char *file, bool server)
{
    struct chan_creds cr = {.psk_file = path(file)};
    return tls_new(&cr, server);
}

static struct chan_tls *x509_tls(const char *ca, const char *name, bool server,
                                 const char *authz)
{
    char c[PATH_MAX], k[PATH_MAX], a[PATH_MAX];
    snprintf(c, sizeof(c), "%s/%s.pem", dir, name);
    snprintf(k, sizeof(k), "%s/%s.key", dir, name);
    snprintf(a, sizeof(a), "%s/%s.pem", dir, ca);
    struct chan_creds cr = {.cert_file = c, .key_file = k, .ca_file = a};
    if (authz)
        cr.authz[cr.nr_authz++] = authz;
    return tls_new(&cr, server);
}

/* ---- sender: a small guest with a writing vCPU ---------------------------------- */

struct sender_env {
    struct machine *m;
    struct domain *d;
    struct guest *g;
};

static void sender_init(struct sender_env *e)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(machine_create(&e->m, 256 * MiB, FRAME_POLICY_FRAGPOOL), 0);
    struct domain_config c;
    domain_config_default(&c);
    assert_int_equal(domain_create(e->m, &c, &e->d), 0);
    assert_int_equal(domain_populate(e->d, 0, GUEST_GFNS, NULL), 0);
    /* every page holds data: the stream is as long as the guest */
    for (gfn_t g = 0; g < GUEST_GFNS; g++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(e->d->p2m, g, &t, NULL);
        if (p2m_is_ram(t))
            memset(machine_ptr(e->m, mfn), (int)(g % 251) + 1, PAGE_SIZE);
    }
    struct workload_config wc;
    workload_config_default(&wc, WL_WRITER);
    wc.seed = 7;
    wc.wss = 0.05;
    wc.write_rate = 20000;
    wc.quantum = 256;
    assert_int_equal(guest_create_soft(e->d, 1, NULL, &wc, &e->g), 0);
    assert_int_equal(guest_start(e->g), 0);
    sleep_ms(20);
}

/* The migration failed: log-dirty off, the guest still running, audits
 * clean. */
static void sender_keeps_guest(struct sender_env *e, const struct migrate_report *rep, int rc)
{
    assert_true(rc < 0);
    assert_false(rep->in_doubt);
    assert_int_not_equal(rc, -EINPROGRESS);
    assert_false(dirty_enabled(e->d));
    uint64_t a0 = __atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED);
    sleep_ms(40);
    assert_true(__atomic_load_n(&e->g->accesses, __ATOMIC_RELAXED) > a0);
    assert_false(e->g->paused);
    AUDIT_OK(domain_audit(e->d));
}

static void sender_fini(struct sender_env *e)
{
    guest_destroy(e->g);
    domain_destroy(e->d);
    AUDIT_OK(frames_audit(e->m->frames));
    machine_destroy(e->m);
}

/* ---- receiver thread ------------------------------------------------------------- */

struct rx_env {
    struct machine *m;
    struct chan_tls *tls;
    int lfd;
    uint16_t port;
    int hs_rc;                 /* chan_open's */
    char hs_err[CHAN_ERR_LEN];
    bool received;             /* migrate_receive ran */
    int rc;
    struct migrate_recv_result res;
    pthread_t t;
};

static void *rx_main(void *arg)
{
    struct rx_env *r = arg;
    int fd;
    struct chan *ch;
    r->hs_rc = net_accept(r->lfd, 20000, &fd);
    if (r->hs_rc < 0) {
        snprintf(r->hs_err, sizeof(r->hs_err), "accept: %s", strerror(-r->hs_rc));
        return NULL;
    }
    r->hs_rc = chan_open(fd, r->tls, 5000, &ch, r->hs_err, sizeof(r->hs_err));
    if (r->hs_rc < 0)
        return NULL;
    struct migrate_recv_opts o = {.timeout_ms = 5000};
    r->received = true;
    r->rc = migrate_receive(r->m, ch, &o, &r->res);
    chan_close(ch);
    return NULL;
}

static void rx_start(struct rx_env *r, struct chan_tls *tls)
{
    memset(r, 0, sizeof(*r));
    r->tls = tls;
    assert_int_equal(machine_create(&r->m, 256 * MiB, FRAME_POLICY_FRAGPOOL), 0);
    struct sockaddr_in sa;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    assert_int_equal(net_listen(&sa, &r->lfd, &r->port), 0);
    assert_int_equal(pthread_create(&r->t, NULL, rx_main, r), 0);
}

/* Nothing on the receiver's machine: every frame free. */
static void rx_nothing(struct rx_env *r)
{
    assert_null(r->res.g);
    struct frame_stats fs;
    frames_get_stats(r->m->frames, &fs);
    assert_int_equal(fs.free_frames, r->m->nr_frames);
    AUDIT_OK(frames_audit(r->m->frames));
}

/* A migration refused: the receiver is not in doubt and keeps nothing,
 * the sender's guest runs on (sender_keeps_guest). */
static void nothing_moved(struct sender_env *e, struct rx_env *rx,
                          const struct migrate_report *rep, int rc)
{
    assert_int_not_equal(rx->rc, -EINPROGRESS);
    rx_nothing(rx);
    sender_keeps_guest(e, rep, rc);
}

static void rx_fini(struct rx_env *r)
{
    if (r->res.g) {
        struct domain *d = r->res.g->d;
        guest_destroy(r->res.g);
        domain_destroy(d);
        r->res.g = NULL;
    }
    migrate_recv_result_free(&r->res);
    close(r->lfd);
    AUDIT_OK(frames_audit(r->m->frames));
    machine_destroy(r->m);
}

static int connect_port(uint16_t port)
{
    struct sockaddr_in sa;
    int fd;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    sa.sin_port = htons(port);
    assert_int_equal(net_connect(&sa, 5000, &fd), 0);
    return fd;
}

/* Migrate e to port over tls (NULL: plain): chan_open's result in *hs
 * (and its message in hs_err); migrate_send's returned when it ran. */
static int send_to_opts(struct sender_env *e, uint16_t port, struct chan_tls *tls,
                        const struct migrate_opts *o, struct migrate_report *rep, int *hs,
                        char *hs_err)
{
    struct chan *ch;
    memset(rep, 0, sizeof(*rep));
    *hs = chan_open(connect_port(port), tls, 5000, &ch, hs_err, CHAN_ERR_LEN);
    if (*hs < 0) {
        rep->rc = *hs;
        return *hs;
    }
    int rc = migrate_send(e->g, ch, o, rep);
    chan_close(ch);
    return rc;
}

static int send_to(struct sender_env *e, uint16_t port, struct chan_tls *tls,
                   struct migrate_report *rep, int *hs, char *hs_err)
{
    struct migrate_opts o = {.timeout_ms = 5000};
    return send_to_opts(e, port, tls, &o, rep, hs, hs_err);
}

/* ---- migrations that must succeed ---------------------------------------------------- */

static void migrate_ok(struct chan_tls *stls, struct chan_tls *rtls, const char *want_peer)
{
    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN];
    int hs;
    assert_non_null(rep);
    sender_init(&e);
    rx_start(&rx, rtls);
    int rc = send_to(&e, rx.port, stls, rep, &hs, hs_err);
    pthread_join(rx.t, NULL);
    if (hs < 0 || rx.hs_rc < 0)
        fail_msg("handshake: sender: %s; receiver: %s", hs_err, rx.hs_err);
    if (rc < 0 || rx.rc < 0)
        fail_msg("migration: sender: %s; receiver: %s", rep->err, rx.res.err);
    assert_true(rep->verified);
    assert_true(rx.res.verified);
    assert_true(rep->digest_sender == rep->digest_receiver);
    assert_true(rx.res.digest == rep->digest_sender);
    /* the guest's memory as it is on the receiver */
    assert_true(migrate_digest(rx.res.g->d, NULL) == rep->digest_sender);
    AUDIT_OK(domain_audit(rx.res.g->d));
    print_message("# %s: %llu wire bytes, digest %#llx on both sides\n", want_peer,
                  (unsigned long long)rep->st.wire_bytes,
                  (unsigned long long)rep->digest_sender);
    rx_fini(&rx);
    sender_fini(&e);
    free(rep);
}

static void test_psk_migration(void **state)
{
    (void)state;
    write_psk("good.psk", "hv-pair", 32, 0600);
    struct chan_tls *s = psk_tls("good.psk", false), *r = psk_tls("good.psk", true);
    assert_string_equal(chan_tls_kind(s), "psk");
    migrate_ok(s, r, "PSK");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
}

static void test_cert_migration(void **state)
{
    (void)state;
    need_certs();
    /* each side allows exactly the other: by CN, and by a DNS SAN */
    struct chan_tls *s = x509_tls("ca", "sender", false, "hv-receiver");
    struct chan_tls *r = x509_tls("ca", "receiver", true, "sender.hv.test");
    assert_string_equal(chan_tls_kind(s), "x509");
    migrate_ok(s, r, "X.509 with an allow-list");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
    /* an IP SAN, and no allow-list on the sender (any cert of the CA) */
    s = x509_tls("ca", "sender", false, NULL);
    r = x509_tls("ca", "receiver", true, "127.0.0.1");
    migrate_ok(s, r, "X.509, IP subjectAltName");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
}

/* ---- peers that must be refused ------------------------------------------------------ */

/* The receiver refuses in the handshake (what = its message); nothing was
 * received; the sender's guest runs on. */
static void refused(struct chan_tls *stls, struct chan_tls *rtls, const char *what)
{
    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN] = "";
    int hs;
    assert_non_null(rep);
    sender_init(&e);
    rx_start(&rx, rtls);
    int rc = send_to(&e, rx.port, stls, rep, &hs, hs_err);
    pthread_join(rx.t, NULL);
    print_message("# %s: receiver: %s\n#   sender: %s\n", what, rx.hs_err,
                  hs < 0 ? hs_err : rep->err);
    if (rx.hs_rc == 0)
        fail_msg("%s: the receiver accepted the peer (migration rc %d: %s)", what, rx.rc,
                 rx.res.err);
    assert_true(rx.hs_err[0] != 0);
    assert_false(rx.received); /* not one migration byte was read */
    nothing_moved(&e, &rx, rep, rc);
    /* a sender whose handshake completed saw nothing back but a refusal */
    if (hs == 0)
        assert_int_equal(rep->st.pages_data, 0);
    rx_fini(&rx);
    sender_fini(&e);
    free(rep);
}

static void test_wrong_psk(void **state)
{
    (void)state;
    write_psk("a.psk", "hv-pair", 32, 0600);
    write_psk("b.psk", "hv-pair", 32, 0600); /* same identity, another key */
    write_psk("c.psk", "stranger", 32, 0600);
    struct chan_tls *ra = psk_tls("a.psk", true);
    struct chan_tls *sb = psk_tls("b.psk", false), *sc = psk_tls("c.psk", false);
    refused(sb, ra, "wrong key");
    refused(sc, ra, "unknown identity");
    chan_tls_destroy(ra);
    chan_tls_destroy(sb);
    chan_tls_destroy(sc);
}

static void test_untrusted_cert(void **state)
{
    (void)state;
    need_certs();
    struct chan_tls *r = x509_tls("ca", "receiver", true, "hv-sender");
    /* the right name, signed by another CA */
    struct chan_tls *s = x509_tls("ca", "intruder", false, NULL);
    refused(s, r, "certificate of another CA");
    chan_tls_destroy(s);
    /* a PSK client against a certificate server */
    write_psk("x.psk", "hv-pair", 32, 0600);
    s = psk_tls("x.psk", false);
    refused(s, r, "PSK client, certificate server");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
}

static void test_cert_not_allowed(void **state)
{
    (void)state;
    need_certs();
    struct chan_tls *r = x509_tls("ca", "receiver", true, "hv-sender");
    /* signed by the right CA, not on the allow-list */
    struct chan_tls *s = x509_tls("ca", "other", false, NULL);
    refused(s, r, "certificate not in the allow-list");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
    /* the sender's own allow-list: a receiver that is not the one named */
    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN];
    int hs;
    sender_init(&e);
    s = x509_tls("ca", "sender", false, "hv-receiver");
    r = x509_tls("ca", "other", true, NULL); /* poses as the receiver */
    rx_start(&rx, r);
    int rc = send_to(&e, rx.port, s, rep, &hs, hs_err);
    pthread_join(rx.t, NULL);
    print_message("# a receiver the sender does not allow: sender: %s\n", hs_err);
    assert_true(hs < 0);
    assert_non_null(strstr(hs_err, "tls-authz"));
    assert_false(rx.received);
    nothing_moved(&e, &rx, rep, rc);
    rx_fini(&rx);
    sender_fini(&e);
    chan_tls_destroy(s);
    chan_tls_destroy(r);
    free(rep);
}

/* A sender without credentials pushing a guest (a real migrate_send over
 * plain TCP: a forged guest as far as the receiver knows) is refused; so
 * is a TLS sender by a plain receiver (it never sends a guest byte in
 * clear). */
static void test_plain_peer(void **state)
{
    (void)state;
    write_psk("p.psk", "hv-pair", 32, 0600);
    struct chan_tls *r = psk_tls("p.psk", true), *s = psk_tls("p.psk", false);
    refused(NULL, r, "plain sender, TLS receiver");

    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN];
    int hs;
    sender_init(&e);
    rx_start(&rx, NULL);
    int rc = send_to(&e, rx.port, s, rep, &hs, hs_err);
    pthread_join(rx.t, NULL);
    print_message("# TLS sender, plain receiver: sender: %s\n#   receiver: %s\n", hs_err,
                  rx.res.err);
    assert_true(hs < 0);
    assert_true(rx.rc < 0);
    nothing_moved(&e, &rx, rep, rc);
    rx_fini(&rx);
    sender_fini(&e);
    chan_tls_destroy(r);
    chan_tls_destroy(s);
    free(rep);
}

/* ---- a man in the middle ----------------------------------------------------------------- */

/* Where a frame-aware man in the middle flips one bit of the first DATA
 * frame with a page table (MIG_F_SEGS) that has a byte of that kind. */
enum seg_flip {
    SEG_FLIP_NONE,
    SEG_FLIP_PAGE,   /* a byte of a page hashed alone */
    SEG_FLIP_RAW,    /* a stream byte between those pages: a PAGE_DATA entry's pfn */
    SEG_FLIP_OFFSET, /* the table: a page's offset */
    SEG_FLIP_COUNT,  /* the table: the number of pages */
};

/* Forwards both ways; flips one bit of the byte at offset `flip` of the
 * sender's direction (UINT64_MAX: none).  With `done_no_digest`, it parses
 * the sender's migration frames (plain) and rewrites DONE to carry no
 * digest, checksum fixed: a guest without its digest.  With `seg_flip`, it
 * parses them too, counts the frames with page tables and flips as said. */
struct mitm {
    int lfd, to_port;
    uint16_t port;
    uint64_t flip;
    bool done_no_digest, rewrote;
    bool frames; /* forward frame by frame (parsed), counting seg_frames */
    enum seg_flip seg_flip;
    unsigned seg_frames; /* DATA frames with a page table seen */
    bool flipped;
    pthread_t t;
};

/* Flip p->seg_flip's byte in the MIG_F_SEGS frame (h, its wire bytes at
 * buf), if the frame has one of that kind. */
static void mitm_seg_flip(struct mitm *p, const struct mig_frame *h, uint8_t *buf)
{
    uint32_t raw = le32toh(h->raw_len), wire = le32toh(h->wire_len), n, off0, end = 0;
    uint8_t *data = buf + (wire - raw);
    memcpy(&n, buf, 4);
    memcpy(&off0, buf + 4, 4);
    n = le32toh(n);
    off0 = le32toh(off0);
    switch (p->seg_flip) {
    case SEG_FLIP_PAGE:
        data[off0 + 100] ^= 0x10;
        break;
    case SEG_FLIP_RAW:
        /* deep in round 0 (the first frames hold the stream's head, which
         * the reader checks as it comes, before the frame's last byte: a
         * byte flipped there is refused by those checks, with whole-frame
         * checksums too), in the first run of 1 KiB or more between
         * pages: a PAGE_DATA record's header and entries; an entry's pfn
         * one off is nothing the stream reader can see */
        if (p->seg_frames < 3)
            return;
        for (uint32_t k = 0; k <= n; k++) {
            uint32_t o = raw;
            if (k < n) {
                memcpy(&o, buf + 4 + 4 * k, 4);
                o = le32toh(o);
            }
            if (o - end >= 1024) {
                data[end + 16 + 8 * ((o - end - 16) / 16)] ^= 0x01;
                p->flipped = true;
                return;
            }
            end = o + PAGE_SIZE;
        }
        return;
    case SEG_FLIP_OFFSET:
        buf[4] ^= 0x10; /* the first page's offset, 16 off */
        break;
    case SEG_FLIP_COUNT:
        buf[0] ^= 0x01;
        break;
    case SEG_FLIP_NONE:
        return;
    }
    p->flipped = true;
}

static void mitm_forward_frames(int c, int s, struct mitm *p)
{
    /* sender -> receiver: frame by frame; receiver -> sender: as it comes */
    uint8_t *buf = malloc(MIG_FRAME_RAW + 4096);
    assert_non_null(buf);
    struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    for (int idle = 0; idle < 200;) {
        if (poll(pf, 2, 50) <= 0) {
            idle++;
            continue;
        }
        if (pf[0].revents) {
            struct mig_frame h;
            if (net_read_all(c, &h, sizeof(h), NULL) < 0)
                break;
            uint32_t wire = le32toh(h.wire_len);
            if (wire > MIG_FRAME_RAW + 4096 || net_read_all(c, buf, wire, NULL) < 0)
                break;
            if (le16toh(h.type) == MIG_DATA && (le16toh(h.flags) & MIG_F_SEGS)) {
                p->seg_frames++;
                if (!p->flipped)
                    mitm_seg_flip(p, &h, buf);
            }
            if (p->done_no_digest && le16toh(h.type) == MIG_DONE &&
                wire == sizeof(struct mig_done)) {
                struct mig_done dn = {0};
                memcpy(buf, &dn, sizeof(dn));
                h.checksum = htole64(XXH3_64bits(buf, wire));
                p->rewrote = true;
            }
            if (net_write_all(s, &h, sizeof(h)) < 0 || net_write_all(s, buf, wire) < 0)
                break;
        }
        if (pf[1].revents) {
            ssize_t r = recv(s, buf, 65536, 0);
            if (r <= 0 || net_write_all(c, buf, (size_t)r) < 0)
                break;
        }
    }
    free(buf);
}

static void *mitm_main(void *arg)
{
    struct mitm *p = arg;
    int c, s;
    if (net_accept(p->lfd, 10000, &c) < 0)
        return NULL;
    s = connect_port((uint16_t)p->to_port);
    if (p->done_no_digest || p->frames) {
        mitm_forward_frames(c, s, p);
    } else {
        uint8_t *buf = malloc(65536);
        assert_non_null(buf);
        uint64_t fwd = 0;
        struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
        for (int idle = 0; idle < 200;) {
            if (poll(pf, 2, 50) <= 0) {
                idle++;
                continue;
            }
            if (pf[0].revents) {
                ssize_t r = recv(c, buf, 65536, 0);
                if (r <= 0)
                    break;
                if (p->flip >= fwd && p->flip < fwd + (uint64_t)r)
                    buf[p->flip - fwd] ^= 0x10;
                fwd += (uint64_t)r;
                if (net_write_all(s, buf, (size_t)r) < 0)
                    break;
            }
            if (pf[1].revents) {
                ssize_t r = recv(s, buf, 65536, 0);
                if (r <= 0 || net_write_all(c, buf, (size_t)r) < 0)
                    break;
            }
        }
        free(buf);
    }
    shutdown(c, SHUT_RDWR);
    shutdown(s, SHUT_RDWR);
    close(c);
    close(s);
    return NULL;
}

/* Migrate e's guest to rx through the proxy px (its to_port and faults
 * set): starts px, sends, waits for px and the receiver.  migrate_send's
 * rc. */
static int send_via(struct mitm *px, struct sender_env *e, struct rx_env *rx,
                    struct chan_tls *stls, const struct migrate_opts *o,
                    struct migrate_report *rep, int *hs, char *hs_err)
{
    struct sockaddr_in sa;
    assert_int_equal(net_parse_addr("127.0.0.1:0", &sa), 0);
    assert_int_equal(net_listen(&sa, &px->lfd, &px->port), 0);
    assert_int_equal(pthread_create(&px->t, NULL, mitm_main, px), 0);
    int rc = send_to_opts(e, px->port, stls, o, rep, hs, hs_err);
    pthread_join(px->t, NULL);
    pthread_join(rx->t, NULL);
    close(px->lfd);
    return rc;
}

static void mitm_run(struct chan_tls *stls, struct chan_tls *rtls, uint64_t flip,
                     bool done_no_digest, const char *what)
{
    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN] = "";
    int hs;
    assert_non_null(rep);
    sender_init(&e);
    rx_start(&rx, rtls);
    struct mitm px = {.to_port = rx.port, .flip = flip, .done_no_digest = done_no_digest};
    struct migrate_opts o = {.timeout_ms = 5000};
    int rc = send_via(&px, &e, &rx, stls, &o, rep, &hs, hs_err);
    print_message("# %s: sender: %s\n#   receiver: %s%s\n", what, hs < 0 ? hs_err : rep->err,
                  rx.hs_rc < 0 ? rx.hs_err : rx.res.err,
                  rx.rc == -EINPROGRESS ? " (in doubt)" : "");
    if (done_no_digest) {
        assert_true(px.rewrote);
        assert_non_null(strstr(rx.res.err, "no memory digest"));
    }
    /* both sides fail; the receiver resumes nothing, the sender's guest
     * runs on */
    assert_true(rx.hs_rc < 0 || rx.rc < 0);
    nothing_moved(&e, &rx, rep, rc);
    rx_fini(&rx);
    sender_fini(&e);
    free(rep);
}

static void test_tamper_in_flight(void **state)
{
    (void)state;
    write_psk("m.psk", "hv-pair", 32, 0600);
    struct chan_tls *s = psk_tls("m.psk", false), *r = psk_tls("m.psk", true);
    /* inside the ClientHello; inside the first pages of round 0; deep in
     * round 0 */
    mitm_run(s, r, 100, false, "one bit flipped in the handshake");
    mitm_run(s, r, 300 << 10, false, "one bit flipped in the guest's pages");
    mitm_run(s, r, 20 << 20, false, "one bit flipped 20 MiB in");
    chan_tls_destroy(s);
    chan_tls_destroy(r);
}

/* Pages hashed once (MIG_F_SEGS), over plain TCP: a bit flipped in a page,
 * in a stream byte between pages (record headers, page entries), in a
 * page's offset or in the page count of the table must fail the
 * migration at that frame (checksum or page table), as a whole-frame
 * checksum does; untouched, the frames do carry page tables, and a
 * sender asked for whole-frame checksums sends none (and the receiver
 * takes those as before). */
static void seg_run(enum seg_flip f, bool whole, const char *what)
{
    struct sender_env e;
    struct rx_env rx;
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    char hs_err[CHAN_ERR_LEN] = "";
    int hs;
    assert_non_null(rep);
    sender_init(&e);
    rx_start(&rx, NULL);
    struct mitm px = {.to_port = rx.port, .flip = UINT64_MAX, .frames = true, .seg_flip = f};
    struct migrate_opts o = {.timeout_ms = 5000, .whole_frame_sums = whole};
    int rc = send_via(&px, &e, &rx, NULL, &o, rep, &hs, hs_err);
    print_message("# %s: %u frames with page tables; sender: %s\n#   receiver: %s\n", what,
                  px.seg_frames, rep->err, rx.res.err);
    if (f == SEG_FLIP_NONE) {
        if (rc < 0 || rx.rc < 0)
            fail_msg("%s: sender: %s; receiver: %s", what, rep->err, rx.res.err);
        assert_true(rx.res.verified);
        assert_true(rx.res.digest == rep->digest_sender);
        assert_true(migrate_digest(rx.res.g->d, NULL) == rep->digest_sender);
        if (whole)
            assert_int_equal(px.seg_frames, 0);
        else
            assert_true(px.seg_frames > 0);
    } else {
        assert_true(px.flipped);
        assert_true(rx.rc < 0);
        if (!strstr(rx.res.err, "checksum mismatch") && !strstr(rx.res.err, "page table"))
            fail_msg("%s: not refused at the frame: %s", what, rx.res.err);
        nothing_moved(&e, &rx, rep, rc);
    }
    rx_fini(&rx);
    sender_fini(&e);
    free(rep);
}

static void test_page_tables(void **state)
{
    (void)state;
    seg_run(SEG_FLIP_NONE, false, "pages hashed once, untouched");
    seg_run(SEG_FLIP_NONE, true, "whole-frame checksums, untouched");
    seg_run(SEG_FLIP_PAGE, false, "one bit flipped in a page hashed alone");
    seg_run(SEG_FLIP_RAW, false, "one bit flipped between the pages");
    seg_run(SEG_FLIP_OFFSET, false, "one bit flipped in a page's offset");
    seg_run(SEG_FLIP_COUNT, false, "one bit flipped in the page count");
}

/* The receiver checks the digest whatever the sender says: a guest sent
 * without it (plain, both sides --insecure) is not resumed. */
static void test_forged_no_digest(void **state)
{
    (void)state;
    mitm_run(NULL, NULL, UINT64_MAX, true, "DONE without a digest");
}

/* ---- credential files ---------------------------------------------------------------- */

static void creds_refused(const struct chan_creds *cr, int want, const char *what)
{
    struct chan_tls *t = NULL;
    char err[CHAN_ERR_LEN] = "";
    int rc = chan_tls_create(cr, true, &t, err, sizeof(err));
    print_message("# refused: %s\n", err);
    assert_int_equal(rc, want);
    assert_null(t);
    assert_non_null(strstr(err, what));
}

static void test_credential_files(void **state)
{
    (void)state;
    struct chan_creds cr = {.psk_file = path("w.psk")};
    write_psk("w.psk", "hv", 32, 0644);
    creds_refused(&cr, -EPERM, "readable by every user");
    write_psk("w.psk", "hv", 32, 0602);
    creds_refused(&cr, -EPERM, "writable by every user");
    write_psk("w.psk", "hv", 15, 0600);
    creds_refused(&cr, -EINVAL, "120 bits, shorter than the 128");
    write_file("w.psk", "no-colon-here\n", 0600);
    creds_refused(&cr, -EINVAL, "no ':'");
    write_file("w.psk", "hv:00112233445566778899aabbccddeeXY\n", 0600);
    creds_refused(&cr, -EINVAL, "non-hex character at column 34");
    write_file("w.psk", ":00112233445566778899aabbccddeeff\n", 0600);
    creds_refused(&cr, -EINVAL, "identity");
    write_file("w.psk", "", 0600);
    creds_refused(&cr, -EINVAL, "empty");
    cr.psk_file = path("missing.psk");
    creds_refused(&cr, -ENOENT, "missing.psk");
    /* exactly 128 bits is enough */
    write_psk("ok.psk", "hv", 16, 0600);
    cr.psk_file = path("ok.psk");
    chan_tls_destroy(psk_tls("ok.psk", true));
    /* mixed or incomplete */
    cr.cert_file = path("sender.pem");
    creds_refused(&cr, -EINVAL, "not both");
    struct chan_creds half = {.cert_file = path("sender.pem")};
    creds_refused(&half, -EINVAL, "--tls-key --tls-ca");
    creds_refused(&(struct chan_creds){0}, -EINVAL, "no TLS credentials");
    if (have_certs) {
        char cmd[PATH_MAX * 2];
        snprintf(cmd, sizeof(cmd), "%s/sender.key", dir);
        assert_int_equal(chmod(cmd, 0644), 0);
        struct chan_creds open_key = {.cert_file = path("sender.pem"),
                                      .key_file = path("sender.key"), .ca_file = path("ca.pem")};
        creds_refused(&open_key, -EPERM, "private key");
        assert_int_equal(chmod(cmd, 0600), 0);
        struct chan_creds wrong = {.cert_file = path("sender.pem"),
                                   .key_file = path("other.key"), .ca_file = path("ca.pem")};
        creds_refused(&wrong, -EINVAL, "mismatch");
    }
}

/* ---- the command line ------------------------------------------------------------------ */

static int run_cmd(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static bool log_has(const char *log, const char *what)
{
    char buf[8192];
    FILE *f = fopen(log, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, what) != NULL;
}

static void test_cli_policy(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary is not built next to this test\n");
        skip();
    }
    char log[PATH_MAX];
    snprintf(log, sizeof(log), "%s/cli.log", dir);
    /* no credentials: refused, saying what to give */
    char *a1[] = {hv, "receive", "--attempts", "1", "--accept-timeout", "1", NULL};
    assert_int_equal(run_cmd(a1, log), 1);
    assert_true(log_has(log, "--psk-file"));
    assert_true(log_has(log, "--insecure"));
    char *a2[] = {hv, "migrate", "--to", "127.0.0.1:9", "--guest-mem", "2M", NULL};
    assert_int_equal(run_cmd(a2, log), 1);
    assert_true(log_has(log, "no credentials"));
    char *a3[] = {hv, "run", "--migrate-to", "127.0.0.1:9", "--guest-mem", "2M", NULL};
    assert_int_equal(run_cmd(a3, log), 1);
    assert_true(log_has(log, "no credentials"));
    /* a world-readable key: refused before anything else happens */
    write_psk("cli.psk", "hv", 32, 0644);
    char *a4[] = {hv, "receive", "--psk-file", (char *)path("cli.psk"), "--attempts", "1",
                  "--accept-timeout", "1", NULL};
    assert_int_equal(run_cmd(a4, log), 1);
    assert_true(log_has(log, "chmod o-rwx"));
    /* --insecure: a warning; by default on loopback */
    char *a5[] = {hv, "receive", "--insecure", "--attempts", "1", "--accept-timeout", "0.2",
                  "--host-mem", "64M", NULL};
    run_cmd(a5, log);
    assert_true(log_has(log, "WARNING: --insecure"));
    assert_true(log_has(log, "listening on 127.0.0.1:"));
    char *a6[] = {hv, "receive", "--insecure", "--psk-file", (char *)path("cli.psk"), NULL};
    assert_int_equal(run_cmd(a6, log), 1);
    assert_true(log_has(log, "exclude each other"));
    unlink(log);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_psk_migration),
    cmocka_unit_test(test_cert_migration),
    cmocka_unit_test(test_wrong_psk),
    cmocka_unit_test(test_untrusted_cert),
    cmocka_unit_test(test_cert_not_allowed),
    cmocka_unit_test(test_plain_peer),
    cmocka_unit_test(test_tamper_in_flight),
    cmocka_unit_test(test_forged_no_digest),
    cmocka_unit_test(test_page_tables),
    cmocka_unit_test(test_credential_files),
    cmocka_unit_test(test_cli_policy),
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    hv_test_filter();
    return cmocka_run_group_tests(tests, setup, teardown);
}

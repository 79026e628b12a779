/*
 * chan.h - the byte channel a migration runs over: plain TCP or TLS 1.3 on
 * TCP (OpenSSL 3); anything else that fills in struct chan_ops (the wire
 * fuzzer's scripted channel).  migrate_send and migrate_receive speak
 * their frames over a struct chan and know nothing of what carries them;
 * a later change may bind several channels to one migration.
 *
 * TLS: version 1.3 only, mutual authentication always, by one of
 *   - a pre-shared key (chan_creds.psk_file): a file holding one line
 *     "IDENTITY:HEXKEY" (IDENTITY 1..128 printable characters other than
 *     ':', HEXKEY 32..128 hex digits = 128..512 bits).  The file must not
 *     be readable or writable by others (mode o-rwx); a shorter key is
 *     refused.  Both sides use the same file; the handshake (psk_dhe_ke:
 *     the key plus an ephemeral ECDHE, forward secret) fails unless both
 *     hold the same identity and key.
 *   - X.509 certificates: this side's certificate chain (cert_file, PEM),
 *     its private key (key_file, PEM, not readable by others), and the CA
 *     (ca_file, PEM) the peer's certificate must chain to; the server asks
 *     for the client's certificate and refuses a connection without one.
 *     authz[] (optional) is an allow-list of peer identities: the peer's
 *     certificate must carry one of them as its subject CN or as a DNS or
 *     IP subjectAltName, compared exactly (no wildcards).  Without it any
 *     certificate the CA signed is accepted.
 * The TLS records authenticate and encrypt everything (AES-GCM): a byte
 * changed in flight fails the connection (-EBADMSG) at the record that
 * holds it.  The migration frames keep their own checksums inside.
 *
 * Plain (no credentials) is only for callers that asked for it explicitly
 * (hugevm --insecure): anyone on the path can read, change or forge it.
 *
 * Threads: one reader and one writer may not use a TLS channel at the
 * same time (OpenSSL's rule); migrate.c reads only while its writer thread
 * is idle.  Timeouts: chan_set_timeout bounds every read and write
 * (-ETIMEDOUT), like net_set_timeouts.
 */
#ifndef HUGEVM_CHAN_H
#define HUGEVM_CHAN_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"

#define CHAN_MAX_AUTHZ 16
#define CHAN_PSK_MIN_BYTES 16 /* 128 bits */
#define CHAN_PSK_MAX_BYTES 64
#define CHAN_ERR_LEN 256

struct chan_creds {
    const char *psk_file;
    const char *cert_file, *key_file, *ca_file;
    const char *authz[CHAN_MAX_AUTHZ];
    unsigned nr_authz;
};

/* True when cr names any credential. */
bool chan_creds_given(const struct chan_creds *cr);

struct chan;
struct chan_ops {
    /* Up to len bytes (> 0), 0 at end of stream, or -errno. */
    long (*read)(struct chan *c, void *buf, size_t len);
    /* Up to len bytes (> 0) or -errno. */
    long (*write)(struct chan *c, const void *buf, size_t len);
    /* Optional: what is there now, without waiting: up to len bytes
     * (> 0), 0 at end of stream, -EAGAIN (nothing yet), -errno. */
    long (*read_now)(struct chan *c, void *buf, size_t len);
    /* Readable within timeout_ms: 1, 0 (not yet), -errno. */
    int (*poll_in)(struct chan *c, int timeout_ms);
    /* Bound every later read and write (0: none). */
    int (*set_timeout)(struct chan *c, int timeout_ms);
    /* Cut the connection both ways at once, without any goodbye (fault
     * injection): later reads and writes fail. */
    void (*cut)(struct chan *c);
    void (*close)(struct chan *c); /* frees c */
};

struct chan {
    const struct chan_ops *ops;
    int fd;             /* the socket, or -1 */
    bool secure;        /* authenticated and encrypted */
    char peer[160];     /* who the peer proved to be ("psk:ID", "cert:CN"), or "" */
    const char *cipher; /* the TLS cipher suite, or "none" */
    char err[160];      /* the last failure in detail (TLS alerts), or "" */
    int timeout_ms;     /* what chan_set_timeout set (0: none) */
};

/* What the last failed read or write of c was (rc: its -errno). */
const char *chan_strerror(const struct chan *c, int rc);

/* A TLS context: credentials loaded and checked once, for any number of
 * connections (opaque). */
struct chan_tls;

/*
 * Load and check cr for the server (receiver) or client (sender) side.
 * Every problem gets a message naming the file and what is wrong with it:
 * -ENOENT/-EACCES (cannot read), -EPERM (readable by others), -EINVAL
 * (format, key too short, incomplete or conflicting credentials),
 * -ENOMEM.
 */
int chan_tls_create(const struct chan_creds *cr, bool server, struct chan_tls **out, char *err,
                    size_t errlen) HV_MUST_CHECK;
void chan_tls_destroy(struct chan_tls *t);
/* "psk" or "x509". */
const char *chan_tls_kind(const struct chan_tls *t);

/*
 * A channel over the connected socket fd, which it owns from now on (also
 * on failure: fd is closed).  t NULL: plain.  Otherwise the TLS handshake
 * runs here, bounded by timeout_ms, and the peer is authenticated (and
 * checked against the allow-list) before this returns: -ECONNREFUSED (the
 * peer failed authentication or is not allowed, or speaks no TLS),
 * -ETIMEDOUT, -ECONNRESET, -errno, with err saying why.
 */
int chan_open(int fd, struct chan_tls *t, int timeout_ms, struct chan **out, char *err,
              size_t errlen) HV_MUST_CHECK;

/* Close (and free) c; NULL is fine. */
void chan_close(struct chan *c);

/* Write all len bytes.  0, -ETIMEDOUT, -EPIPE, -ECONNRESET, -errno. */
int chan_write_all(struct chan *c, const void *buf, size_t len) HV_MUST_CHECK;
/* Read exactly len bytes.  0, -ENODATA (the peer closed first: *got bytes
 * arrived, got may be NULL), -ETIMEDOUT, -EBADMSG (a TLS record failed its
 * authentication: tampering), -errno. */
int chan_read_all(struct chan *c, void *buf, size_t len, size_t *got) HV_MUST_CHECK;
/* The same, whole by deadline_ns (hv_now_ns clock): -ETIMEDOUT once it has
 * passed, however the peer trickles its bytes (each read is bounded by
 * what is left; inside one TLS record a read may wait up to that long per
 * piece of the record the peer sends).  The channel's timeout is changed. */
int chan_read_all_by(struct chan *c, void *buf, size_t len, size_t *got,
                     uint64_t deadline_ns) HV_MUST_CHECK;

static inline int chan_poll_in(struct chan *c, int timeout_ms)
{
    return c->ops->poll_in(c, timeout_ms);
}
static inline int chan_set_timeout(struct chan *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
    return c->ops->set_timeout(c, timeout_ms);
}
static inline void chan_cut(struct chan *c) { c->ops->cut(c); }

#endif

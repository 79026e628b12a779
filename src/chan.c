/*
 * chan.c - plain and TLS channels (see chan.h).
 *
 * TLS is OpenSSL 3 on a socket BIO of our own: send() with MSG_NOSIGNAL
 * (a peer that goes away must not raise SIGPIPE in a library) and recv(),
 * with a timeout left to SO_RCVTIMEO / SO_SNDTIMEO (an EAGAIN is no retry
 * here: it becomes -ETIMEDOUT).  Records are read ahead 64 KiB at a time
 * (four 16 KiB records per recv instead of two recvs per record).
 *
 * PSK in TLS 1.3: the client offers the external PSK (its identity and a
 * binder computed with the key) through the psk_use_session callback; the
 * server finds it by identity in psk_find_session.  A server that does not
 * know the identity, or whose key differs (the binder does not verify),
 * fails the handshake; so does a client whose server does not prove the
 * same key in its Finished.  psk_dhe_ke is OpenSSL's default mode: the
 * session key also depends on an ephemeral ECDHE share.
 */
#include "chan.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net.h"

#define PSK_ID_MAX 128
#define READ_AHEAD (64u << 10)

struct chan_tls {
    SSL_CTX *ctx;
    bool server, psk;
    char psk_id[PSK_ID_MAX + 1];
    uint8_t key[CHAN_PSK_MAX_BYTES];
    size_t key_len;
    char authz[CHAN_MAX_AUTHZ][256];
    unsigned nr_authz;
};

bool chan_creds_given(const struct chan_creds *cr)
{
    return cr && (cr->psk_file || cr->cert_file || cr->key_file || cr->ca_file || cr->nr_authz);
}

/* ---- generic -------------------------------------------------------------------- */

int chan_write_all(struct chan *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        long n = c->ops->write(c, p, len);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int chan_read_all(struct chan *c, void *buf, size_t len, size_t *got)
{
    uint8_t *p = buf;
    size_t done = 0;
    int rc = 0;
    while (done < len) {
        long n = c->ops->read(c, p + done, len - done);
        if (n < 0) {
            rc = (int)n;
            break;
        }
        if (n == 0) {
            rc = -ENODATA;
            break;
        }
        done += (size_t)n;
    }
    if (got)
        *got = done;
    return rc;
}

const char *chan_strerror(const struct chan *c, int rc)
{
    return c && c->err[0] ? c->err : strerror(-rc);
}

void chan_close(struct chan *c)
{
    if (c)
        c->ops->close(c);
}

static int poll_fd(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n >= 0)
            return n > 0;
        if (errno != EINTR)
            return -errno;
    }
}

static int sock_errno(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
}

/* ---- plain ---------------------------------------------------------------------- */

static long plain_read(struct chan *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, MSG_WAITALL);
        if (n >= 0)
            return (long)n;
        if (errno != EINTR)
            return sock_errno();
    }
}

static long plain_read_now(struct chan *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, MSG_DONTWAIT);
        if (n >= 0)
            return (long)n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        if (errno != EINTR)
            return sock_errno();
    }
}

static long plain_write(struct chan *c, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return (long)n;
        if (errno != EINTR)
            return sock_errno();
    }
}

static int plain_poll_in(struct chan *c, int timeout_ms) { return poll_fd(c->fd, timeout_ms); }
static int fd_set_timeout(struct chan *c, int timeout_ms)
{
    return net_set_timeouts(c->fd, timeout_ms);
}
static void fd_cut(struct chan *c) { shutdown(c->fd, SHUT_RDWR); }
static void plain_close(struct chan *c)
{
    close(c->fd);
    free(c);
}

static const struct chan_ops plain_ops = {
    .read = plain_read,
    .write = plain_write,
    .read_now = plain_read_now,
    .poll_in = plain_poll_in,
    .set_timeout = fd_set_timeout,
    .cut = fd_cut,
    .close = plain_close,
};

/* ---- the socket BIO: send(MSG_NOSIGNAL) / recv ------------------------------------------ */

/*
 * Records are gathered into sends of up to WBUF bytes (16 records): one
 * send per 16 KiB record cost more in system calls than the encryption.
 * Whatever is gathered goes out on BIO_flush, which OpenSSL calls after
 * each handshake flight and alert, and tls_write after each write: no
 * byte waits in the buffer once a chan call returns.
 */
#define WBUF (256u << 10)

struct sock_bio {
    int fd;
    size_t wlen;
    uint8_t *wbuf;
    bool nowait; /* reads take what the socket holds (tls_read_now) */
};

/* Send all of p; 1, or 0 with errno (a timeout is final: no retry flag). */
static int send_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

static int bio_flush_out(struct sock_bio *sb)
{
    size_t n = sb->wlen;
    sb->wlen = 0;
    return send_all(sb->fd, sb->wbuf, n);
}

static int bio_write(BIO *b, const char *buf, size_t len, size_t *done)
{
    struct sock_bio *sb = BIO_get_data(b);
    if (sb->wlen + len > WBUF && !bio_flush_out(sb))
        return 0;
    if (len >= WBUF) {
        if (!send_all(sb->fd, (const uint8_t *)buf, len))
            return 0;
    } else {
        memcpy(sb->wbuf + sb->wlen, buf, len);
        sb->wlen += len;
    }
    *done = len;
    return 1;
}

static int bio_read(BIO *b, char *buf, size_t len, size_t *done)
{
    struct sock_bio *sb = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t n = recv(sb->fd, buf, len, sb->nowait ? MSG_DONTWAIT : 0);
        if (n > 0) {
            *done = (size_t)n;
            return 1;
        }
        if (n == 0) {
            BIO_set_flags(b, BIO_FLAGS_IN_EOF);
            return 0;
        }
        if (sb->nowait && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            BIO_set_retry_read(b); /* SSL_ERROR_WANT_READ: nothing whole yet */
            return 0;
        }
        if (errno != EINTR)
            return 0;
    }
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return bio_flush_out(BIO_get_data(b));
    case BIO_CTRL_EOF:
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0;
    }
}

static BIO_METHOD *bio_method(void)
{
    static BIO_METHOD *meth;
    if (!__atomic_load_n(&meth, __ATOMIC_ACQUIRE)) {
        /* racing first calls make two methods at worst; one leaks */
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hugevm-sock");
        if (!m || !BIO_meth_set_write_ex(m, bio_write) || !BIO_meth_set_read_ex(m, bio_read) ||
            !BIO_meth_set_ctrl(m, bio_ctrl)) {
            BIO_meth_free(m);
            return NULL;
        }
        if (!__atomic_compare_exchange_n(&meth, &(BIO_METHOD *){NULL}, m, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            BIO_meth_free(m);
    }
    return meth;
}

/* ---- credentials -------------------------------------------------------------------- */

HV_PRINTF(4, 5) static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* OpenSSL's first queued error as text (and the queue emptied). */
static const char *ssl_errstr(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (!e)
        snprintf(buf, len, "no detail from OpenSSL");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

/* Open a secret file: a regular file that others can neither read nor
 * write (it may belong to anyone the system trusts to run hugevm). */
static FILE *open_secret(const char *path, const char *what, int *rc, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        *rc = fail(-errno, err, errlen, "%s %s: %s", what, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        *rc = fail(-EINVAL, err, errlen, "%s %s is not a regular file", what, path);
        return NULL;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        close(fd);
        *rc = fail(-EPERM, err, errlen, "%s %s is %s by every user (mode %04o): a secret must "
                   "not be; chmod o-rwx %s", what, path,
                   st.st_mode & S_IROTH ? "readable" : "writable",
                   (unsigned)(st.st_mode & 07777), path);
        return NULL;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        *rc = fail(-errno, err, errlen, "%s %s: %s", what, path, strerror(errno));
        close(fd);
    }
    return f;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "IDENTITY:HEXKEY\n" (chan.h). */
static int load_psk(struct chan_tls *t, const char *path, char *err, size_t errlen)
{
    int rc = 0;
    FILE *f = open_secret(path, "PSK file", &rc, err, errlen);
    if (!f)
        return rc;
    char line[PSK_ID_MAX + 2 * CHAN_PSK_MAX_BYTES + 8];
    bool got = fgets(line, sizeof(line), f) != NULL;
    bool more = got && !strchr(line, '\n') && fgetc(f) != EOF;
    fclose(f);
    if (!got || more) {
        explicit_bzero(line, sizeof(line));
        return fail(-EINVAL, err, errlen, "PSK file %s: %s (want one line IDENTITY:HEXKEY)",
                    path, got ? "the line is too long" : "it is empty");
    }
    line[strcspn(line, "\r\n")] = 0;
    char *colon = strchr(line, ':');
    size_t idlen = colon ? (size_t)(colon - line) : 0;
    if (!colon || idlen == 0 || idlen > PSK_ID_MAX) {
        explicit_bzero(line, sizeof(line));
        return fail(-EINVAL, err, errlen, "PSK file %s: %s (want one line IDENTITY:HEXKEY, "
                    "IDENTITY of 1..%d characters)", path,
                    !colon ? "no ':' between identity and key" : "bad identity length",
                    PSK_ID_MAX);
    }
    for (size_t i = 0; i < idlen; i++)
        if (line[i] < 0x21 || line[i] > 0x7e) {
            explicit_bzero(line, sizeof(line));
            return fail(-EINVAL, err, errlen, "PSK file %s: the identity has a non-printable "
                        "or blank character at column %zu", path, i + 1);
        }
    const char *hex = colon + 1;
    size_t hl = strlen(hex);
    rc = 0;
    if (hl % 2)
        rc = fail(-EINVAL, err, errlen, "PSK file %s: the key has an odd number of hex digits "
                  "(%zu)", path, hl);
    else if (hl / 2 < CHAN_PSK_MIN_BYTES)
        rc = fail(-EINVAL, err, errlen, "PSK file %s: the key is %zu bits, shorter than the "
                  "%d bits required (give at least %d hex digits, e.g. from `openssl rand -hex "
                  "32`)", path, hl * 4, CHAN_PSK_MIN_BYTES * 8, CHAN_PSK_MIN_BYTES * 2);
    else if (hl / 2 > CHAN_PSK_MAX_BYTES)
        rc = fail(-EINVAL, err, errlen, "PSK file %s: the key is longer than %d bits", path,
                  CHAN_PSK_MAX_BYTES * 8);
    for (size_t i = 0; rc == 0 && i < hl / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            rc = fail(-EINVAL, err, errlen, "PSK file %s: the key has a non-hex character at "
                      "column %zu", path, idlen + 2 + 2 * i + (hi >= 0));
        else
            t->key[i] = (uint8_t)(hi << 4 | lo);
    }
    if (rc == 0) {
        memcpy(t->psk_id, line, idlen);
        t->psk_id[idlen] = 0;
        t->key_len = hl / 2;
    }
    explicit_bzero(line, sizeof(line));
    return rc;
}

static const unsigned char tls13_aes128gcm_sha256[] = {0x13, 0x01};

static SSL_SESSION *psk_session(SSL *ssl, struct chan_tls *t)
{
    const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, tls13_aes128gcm_sha256);
    SSL_SESSION *s = cipher ? SSL_SESSION_new() : NULL;
    if (!s)
        return NULL;
    if (!SSL_SESSION_set1_master_key(s, t->key, t->key_len) ||
        !SSL_SESSION_set_cipher(s, cipher) ||
        !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}

static int tls_index = -1; /* ex_data slot of the SSL_CTX holding its chan_tls */

static struct chan_tls *tls_of(SSL *ssl)
{
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_index);
}

static int psk_use_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
                      SSL_SESSION **sess)
{
    struct chan_tls *t = tls_of(ssl);
    SSL_SESSION *s = psk_session(ssl, t);
    if (!s)
        return 0;
    if (md && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s))) {
        /* a HelloRetryRequest chose a suite of another hash: no PSK then */
        SSL_SESSION_free(s);
        *sess = NULL;
        *id = NULL;
        *idlen = 0;
        return 1;
    }
    *sess = s;
    *id = (const unsigned char *)t->psk_id;
    *idlen = strlen(t->psk_id);
    return 1;
}

static int psk_find_cb(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
    struct chan_tls *t = tls_of(ssl);
    *sess = NULL; /* an unknown identity: no PSK, the handshake fails */
    if (idlen != strlen(t->psk_id) || CRYPTO_memcmp(id, t->psk_id, idlen) != 0)
        return 1;
    *sess = psk_session(ssl, t);
    return *sess ? 1 : 0;
}

static bool cert_has_name(X509 *x, const char *name);

/* The allow-list is checked inside the handshake, on the peer's own
 * certificate (depth 0): a peer that is not allowed gets an alert and no
 * connection. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
    if (!ok || X509_STORE_CTX_get_error_depth(xs) != 0)
        return ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct chan_tls *t = ssl ? tls_of(ssl) : NULL;
    X509 *x = X509_STORE_CTX_get_current_cert(xs);
    if (!t || !x)
        return 0;
    bool allowed = t->nr_authz == 0;
    for (unsigned i = 0; i < t->nr_authz && !allowed; i++)
        allowed = cert_has_name(x, t->authz[i]);
    if (!allowed)
        X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
    return allowed;
}

static int load_x509(struct chan_tls *t, const struct chan_creds *cr, char *err, size_t errlen)
{
    char e[200];
    if (!cr->cert_file || !cr->key_file || !cr->ca_file)
        return fail(-EINVAL, err, errlen, "X.509 needs all three of --tls-cert, --tls-key and "
                    "--tls-ca (missing: %s%s%s)", cr->cert_file ? "" : "--tls-cert ",
                    cr->key_file ? "" : "--tls-key ", cr->ca_file ? "" : "--tls-ca");
    if (SSL_CTX_use_certificate_chain_file(t->ctx, cr->cert_file) != 1)
        return fail(-EINVAL, err, errlen, "certificate %s: %s", cr->cert_file,
                    ssl_errstr(e, sizeof(e)));
    int rc = 0;
    FILE *f = open_secret(cr->key_file, "private key", &rc, err, errlen);
    if (!f)
        return rc;
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k)
        return fail(-EINVAL, err, errlen, "private key %s: %s", cr->key_file,
                    ssl_errstr(e, sizeof(e)));
    rc = SSL_CTX_use_PrivateKey(t->ctx, k);
    EVP_PKEY_free(k);
    if (rc != 1)
        return fail(-EINVAL, err, errlen, "private key %s: %s", cr->key_file,
                    ssl_errstr(e, sizeof(e)));
    if (SSL_CTX_check_private_key(t->ctx) != 1)
        return fail(-EINVAL, err, errlen, "private key %s does not match certificate %s",
                    cr->key_file, cr->cert_file);
    if (SSL_CTX_load_verify_locations(t->ctx, cr->ca_file, NULL) != 1)
        return fail(-EINVAL, err, errlen, "CA certificate %s: %s", cr->ca_file,
                    ssl_errstr(e, sizeof(e)));
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
    return 0;
}

int chan_tls_create(const struct chan_creds *cr, bool server, struct chan_tls **out, char *err,
                    size_t errlen)
{
    char e[200];
    if (!chan_creds_given(cr))
        return fail(-EINVAL, err, errlen, "no TLS credentials given");
    if (cr->psk_file && (cr->cert_file || cr->key_file || cr->ca_file || cr->nr_authz))
        return fail(-EINVAL, err, errlen, "give a pre-shared key (--psk-file) or certificates "
                    "(--tls-cert, --tls-key, --tls-ca, --tls-authz), not both");
    if (cr->nr_authz > CHAN_MAX_AUTHZ)
        return fail(-EINVAL, err, errlen, "at most %d --tls-authz names", CHAN_MAX_AUTHZ);
    struct chan_tls *t = calloc(1, sizeof(*t));
    if (!t)
        return fail(-ENOMEM, err, errlen, "out of memory");
    t->server = server;
    t->psk = cr->psk_file != NULL;
    int rc = 0;
    if (tls_index < 0) {
        int i = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        int none = -1;
        if (i >= 0)
            (void)__atomic_compare_exchange_n(&tls_index, &none, i, false, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE);
    }
    t->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (tls_index < 0 || !t->ctx || !bio_method() ||
        !SSL_CTX_set_ex_data(t->ctx, tls_index, t) ||
        !SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_ciphersuites(t->ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")) {
        rc = fail(-ENOMEM, err, errlen, "setting up OpenSSL: %s", ssl_errstr(e, sizeof(e)));
        goto out;
    }
    /* one connection per migration: no tickets, no resumption */
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    (void)SSL_CTX_set_num_tickets(t->ctx, 0);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                    SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_read_ahead(t->ctx, 1);
    SSL_CTX_set_default_read_buffer_len(t->ctx, READ_AHEAD);
    if (t->psk) {
        rc = load_psk(t, cr->psk_file, err, errlen);
        if (rc < 0)
            goto out;
        if (server)
            SSL_CTX_set_psk_find_session_callback(t->ctx, psk_find_cb);
        else
            SSL_CTX_set_psk_use_session_callback(t->ctx, psk_use_cb);
    } else {
        rc = load_x509(t, cr, err, errlen);
        if (rc < 0)
            goto out;
        for (unsigned i = 0; i < cr->nr_authz; i++) {
            if (!cr->authz[i][0] || strlen(cr->authz[i]) >= sizeof(t->authz[i])) {
                rc = fail(-EINVAL, err, errlen, "--tls-authz '%.60s': empty or too long",
                          cr->authz[i]);
                goto out;
            }
            snprintf(t->authz[i], sizeof(t->authz[i]), "%s", cr->authz[i]);
        }
        t->nr_authz = cr->nr_authz;
    }
out:
    if (rc < 0) {
        chan_tls_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void chan_tls_destroy(struct chan_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    explicit_bzero(t->key, sizeof(t->key));
    free(t);
}

const char *chan_tls_kind(const struct chan_tls *t) { return t->psk ? "psk" : "x509"; }

/* ---- TLS channel ------------------------------------------------------------------------ */

struct tls_chan {
    struct chan c;
    SSL *ssl;
    struct sock_bio sb;
};

/* An OpenSSL I/O failure as -errno. */
static int tls_errno(struct chan *c, SSL *ssl, int ret)
{
    int saved = errno;
    int e = SSL_get_error(ssl, ret);
    unsigned long q = ERR_peek_error();
    int rc;
    switch (e) {
    case SSL_ERROR_ZERO_RETURN:
        rc = 0;
        break;
    case SSL_ERROR_SYSCALL:
        rc = saved == EAGAIN || saved == EWOULDBLOCK ? -ETIMEDOUT : saved ? -saved : -ECONNRESET;
        break;
    case SSL_ERROR_SSL:
        /* a record that fails its authentication tag: changed in flight */
        rc = ERR_GET_REASON(q) == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC ? -EBADMSG
             : ERR_GET_REASON(q) == SSL_R_UNEXPECTED_EOF_WHILE_READING      ? 0
                                                                             : -EPROTO;
        /* the peer's alert for it: the connection failed over there */
        if (rc == -EPROTO && ERR_GET_REASON(q) >= SSL_AD_REASON_OFFSET)
            rc = ERR_GET_REASON(q) == SSL_AD_REASON_OFFSET + SSL_AD_BAD_RECORD_MAC ? -EBADMSG
                                                                                  : -ECONNABORTED;
        break;
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        rc = -ETIMEDOUT;
        break;
    default:
        rc = -EIO;
        break;
    }
    if (e == SSL_ERROR_SSL && q) {
        char b[120];
        ERR_error_string_n(q, b, sizeof(b));
        snprintf(c->err, sizeof(c->err), "%s (TLS: %s)", strerror(rc ? -rc : EPROTO), b);
    } else if (rc < 0) {
        snprintf(c->err, sizeof(c->err), "%s", strerror(-rc));
    }
    ERR_clear_error();
    return rc;
}

static long tls_read(struct chan *c, void *buf, size_t len)
{
    struct tls_chan *t = (struct tls_chan *)c;
    size_t n = 0;
    int ret = SSL_read_ex(t->ssl, buf, len, &n);
    if (ret == 1)
        return (long)n;
    int rc = tls_errno(c, t->ssl, ret);
    (void)bio_flush_out(&t->sb); /* the alert that tells the peer why */
    return rc;
}

/* What is there now: the records whole in the socket (or buffered), without
 * waiting and without a poll and two timeout changes per record; -EAGAIN
 * when no record is whole yet (OpenSSL keeps the part that came). */
static long tls_read_now(struct chan *c, void *buf, size_t len)
{
    struct tls_chan *t = (struct tls_chan *)c;
    size_t n = 0;
    t->sb.nowait = true;
    int ret = SSL_read_ex(t->ssl, buf, len, &n);
    t->sb.nowait = false;
    if (ret == 1)
        return (long)n;
    if (SSL_get_error(t->ssl, ret) == SSL_ERROR_WANT_READ) {
        ERR_clear_error();
        return -EAGAIN;
    }
    int rc = tls_errno(c, t->ssl, ret);
    (void)bio_flush_out(&t->sb);
    return rc;
}

static long tls_write(struct chan *c, const void *buf, size_t len)
{
    struct tls_chan *t = (struct tls_chan *)c;
    size_t n = 0;
    int ret = SSL_write_ex(t->ssl, buf, len, &n);
    if (ret == 1 && bio_flush_out(&t->sb))
        return (long)n;
    int rc = ret == 1 ? sock_errno() : tls_errno(c, t->ssl, ret);
    if (ret == 1)
        snprintf(c->err, sizeof(c->err), "%s", strerror(-rc));
    if (rc == -EPIPE || rc == -ECONNRESET) {
        /* the peer hung up: an alert it sent first says why (in TLS 1.3 a
         * client learns only now that the server refused its certificate) */
        uint8_t b[1];
        size_t got;
        if (poll_fd(c->fd, 0) > 0 && SSL_read_ex(t->ssl, b, 1, &got) != 1) {
            unsigned long q = ERR_peek_error();
            if (ERR_GET_REASON(q) >= SSL_AD_REASON_OFFSET) {
                char e[100];
                ERR_error_string_n(q, e, sizeof(e));
                snprintf(c->err, sizeof(c->err), "the peer hung up with an alert (TLS: %s)", e);
                rc = -ECONNREFUSED;
            }
            ERR_clear_error();
        }
    }
    return rc ? rc : -EPIPE;
}

/* Readable: decrypted bytes waiting, or record bytes OpenSSL has already
 * taken off the socket (read-ahead: SSL_pending does not count those, and
 * the socket may then stay quiet for good), or the socket itself. */
static int tls_poll_in(struct chan *c, int timeout_ms)
{
    struct tls_chan *t = (struct tls_chan *)c;
    if (SSL_pending(t->ssl) > 0 || SSL_has_pending(t->ssl))
        return 1;
    return poll_fd(c->fd, timeout_ms);
}

static void tls_close(struct chan *c)
{
    struct tls_chan *t = (struct tls_chan *)c;
    SSL_free(t->ssl);
    close(c->fd);
    free(t->sb.wbuf);
    free(t);
}

static const struct chan_ops tls_ops = {
    .read = tls_read,
    .write = tls_write,
    .read_now = tls_read_now,
    .poll_in = tls_poll_in,
    .set_timeout = fd_set_timeout,
    .cut = fd_cut,
    .close = tls_close,
};

/* The subject CN of x, or "" (into buf). */
static const char *cert_cn(X509 *x, char *buf, size_t len)
{
    buf[0] = 0;
    X509_NAME *n = X509_get_subject_name(x);
    int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
    ASN1_STRING *s = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)) : NULL;
    if (s && (size_t)ASN1_STRING_length(s) < len &&
        memchr(ASN1_STRING_get0_data(s), 0, (size_t)ASN1_STRING_length(s)) == NULL) {
        memcpy(buf, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
        buf[ASN1_STRING_length(s)] = 0;
    }
    return buf;
}

/* Does x carry name as its CN or a DNS / IP subjectAltName (exactly)? */
static bool cert_has_name(X509 *x, const char *name)
{
    char cn[256];
    if (strcmp(cert_cn(x, cn, sizeof(cn)), name) == 0)
        return true;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    bool found = false;
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && !found; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS) {
            const ASN1_STRING *s = g->d.dNSName;
            found = (size_t)ASN1_STRING_length(s) == strlen(name) &&
                    memcmp(ASN1_STRING_get0_data(s), name, strlen(name)) == 0;
        } else if (g->type == GEN_IPADD) {
            ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
            found = ip && ASN1_STRING_cmp(ip, g->d.iPAddress) == 0;
            ASN1_OCTET_STRING_free(ip);
        }
    }
    GENERAL_NAMES_free(gens);
    return found;
}

int chan_open(int fd, struct chan_tls *tls, int timeout_ms, struct chan **out, char *err,
              size_t errlen)
{
    if (!tls) {
        struct chan *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            return fail(-ENOMEM, err, errlen, "out of memory");
        }
        *c = (struct chan){.ops = &plain_ops, .fd = fd, .cipher = "none"};
        *out = c;
        return 0;
    }
    char e[200];
    int rc = net_set_timeouts(fd, timeout_ms);
    if (rc < 0) {
        close(fd);
        return fail(rc, err, errlen, "setting the socket timeouts: %s", strerror(-rc));
    }
    struct tls_chan *t = calloc(1, sizeof(*t));
    BIO *bio = NULL;
    if (!t || !(t->sb.wbuf = malloc(WBUF)) || !(t->ssl = SSL_new(tls->ctx)) ||
        !(bio = BIO_new(bio_method()))) {
        rc = fail(-ENOMEM, err, errlen, "setting up TLS: %s", ssl_errstr(e, sizeof(e)));
        goto fail;
    }
    t->sb.fd = fd;
    BIO_set_data(bio, &t->sb);
    BIO_set_init(bio, 1);
    SSL_set_bio(t->ssl, bio, bio);
    t->c = (struct chan){.ops = &tls_ops, .fd = fd, .secure = true};
    errno = 0;
    int ret = tls->server ? SSL_accept(t->ssl) : SSL_connect(t->ssl);
    int hs_errno = errno;
    if (!bio_flush_out(&t->sb) && ret == 1) /* the last flight, or an alert */
        ret = -1;
    else
        errno = hs_errno;
    if (ret != 1) {
        int saved = errno;
        int se = SSL_get_error(t->ssl, ret);
        long vr = SSL_get_verify_result(t->ssl);
        if (se == SSL_ERROR_SYSCALL && (saved == EAGAIN || saved == EWOULDBLOCK))
            rc = fail(-ETIMEDOUT, err, errlen, "TLS handshake: no answer within %d ms",
                      timeout_ms);
        else if (se == SSL_ERROR_SYSCALL)
            rc = fail(saved ? -saved : -ECONNRESET, err, errlen, "TLS handshake: the peer "
                      "closed the connection (%s): it may not trust us or may not speak TLS",
                      saved ? strerror(saved) : "end of stream");
        else if (vr == X509_V_ERR_APPLICATION_VERIFICATION)
            rc = fail(-ECONNREFUSED, err, errlen, "TLS handshake: the peer's certificate "
                      "names none of the --tls-authz identities allowed");
        else if (vr != X509_V_OK)
            rc = fail(-ECONNREFUSED, err, errlen, "TLS handshake: the peer's certificate is "
                      "not trusted: %s", X509_verify_cert_error_string(vr));
        else
            rc = fail(-ECONNREFUSED, err, errlen, "TLS handshake failed (%s): %s",
                      tls->psk ? "a different pre-shared key or identity, or a peer without it?"
                               : "a peer without a certificate of our CA, or no TLS?",
                      ssl_errstr(e, sizeof(e)));
        goto fail;
    }
    t->c.cipher = SSL_get_cipher_name(t->ssl);
    if (tls->psk) {
        snprintf(t->c.peer, sizeof(t->c.peer), "psk:%s", tls->psk_id);
    } else {
        X509 *x = SSL_get0_peer_certificate(t->ssl);
        char cn[128];
        if (!x || SSL_get_verify_result(t->ssl) != X509_V_OK) {
            rc = fail(-ECONNREFUSED, err, errlen, "TLS: the peer presented no verified "
                      "certificate");
            goto fail;
        }
        cert_cn(x, cn, sizeof(cn));
        bool ok = tls->nr_authz == 0;
        for (unsigned i = 0; i < tls->nr_authz && !ok; i++)
            ok = cert_has_name(x, tls->authz[i]);
        if (!ok) {
            rc = fail(-ECONNREFUSED, err, errlen, "TLS: the peer's certificate (CN '%s') names "
                      "none of the --tls-authz identities allowed", cn);
            goto fail;
        }
        snprintf(t->c.peer, sizeof(t->c.peer), "cert:%s", cn);
    }
    *out = &t->c;
    return 0;
fail:
    if (t && t->ssl)
        SSL_free(t->ssl); /* frees the BIO */
    else if (bio)
        BIO_free(bio);
    if (t)
        free(t->sb.wbuf);
    free(t);
    ERR_clear_error();
    close(fd);
    return rc;
}

int chan_read_all_by(struct chan *c, void *buf, size_t len, size_t *got, uint64_t deadline_ns)
{
    uint8_t *p = buf;
    size_t done = 0;
    int rc = 0;
    bool timed = false; /* the channel's timeout was changed */
    while (done < len) {
        uint64_t now = hv_now_ns();
        if (now >= deadline_ns) {
            rc = -ETIMEDOUT;
            break;
        }
        if (c->ops->read_now) {
            /* what is there already, without a poll and two timeout
             * changes per read (they were ~10% of a receiver's time) */
            long n = c->ops->read_now(c, p + done, len - done);
            if (n > 0) {
                done += (size_t)n;
                continue;
            }
            if (n == 0) {
                rc = -ENODATA;
                break;
            }
            if (n != -EAGAIN) {
                rc = (int)n;
                break;
            }
        }
        uint64_t ms = (deadline_ns - now + 999999) / 1000000;
        int t = ms > INT_MAX ? INT_MAX : (int)ms;
        rc = c->ops->poll_in(c, t);
        if (rc < 0)
            break;
        if (rc == 0)
            continue; /* the loop checks the clock */
        /* a read that has begun waits at most what is left */
        timed = true;
        if ((rc = c->ops->set_timeout(c, t)) < 0)
            break;
        long n = c->ops->read(c, p + done, len - done);
        if (n == -ETIMEDOUT)
            continue;
        if (n < 0) {
            rc = (int)n;
            break;
        }
        if (n == 0) {
            rc = -ENODATA;
            break;
        }
        done += (size_t)n;
        rc = 0;
    }
    /* the channel's own timeout again, for the reads and writes after */
    int rs = timed ? c->ops->set_timeout(c, c->timeout_ms) : 0;
    if (rc == 0 && rs < 0)
        rc = rs;
    if (got)
        *got = done;
    return rc;
}

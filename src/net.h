/*
 * net.h - the little TCP hugevm needs for live migration: IPv4 "ADDR:PORT"
 * parsing, listen / accept / connect with timeouts, whole-buffer reads and
 * writes that never raise SIGPIPE.
 *
 * Every call is bounded in time: accept and connect take a timeout, and
 * net_set_timeouts() puts SO_RCVTIMEO / SO_SNDTIMEO on a connected socket so
 * that a silent peer turns into -ETIMEDOUT instead of a hang;
 * net_read_all_by bounds a whole read by a deadline, so that a slow peer
 * does too.
 */
#ifndef HUGEVM_NET_H
#define HUGEVM_NET_H

#include <netinet/in.h>

#include "common.h"

/* "A.B.C.D:PORT" (port 0..65535; 0 = any, for listen).  -EINVAL. */
int net_parse_addr(const char *s, struct sockaddr_in *sa) HV_MUST_CHECK;
/* "A.B.C.D:PORT" into buf (returns buf). */
const char *net_fmt_addr(const struct sockaddr_in *sa, char *buf, size_t len);

/* A listening socket (SO_REUSEADDR, backlog NET_BACKLOG); *port receives
 * the bound port (may be NULL).  -errno. */
#define NET_BACKLOG 16
int net_listen(const struct sockaddr_in *sa, int *fd, uint16_t *port) HV_MUST_CHECK;
/* Wait up to timeout_ms (< 0: forever) for a connection.  -ETIMEDOUT, -errno. */
int net_accept(int lfd, int timeout_ms, int *fd) HV_MUST_CHECK;
/* Connect within timeout_ms.  -ETIMEDOUT, -ECONNREFUSED, -errno. */
int net_connect(const struct sockaddr_in *sa, int timeout_ms, int *fd) HV_MUST_CHECK;
/* SO_RCVTIMEO and SO_SNDTIMEO (0: none) and TCP_NODELAY.  -errno. */
int net_set_timeouts(int fd, int timeout_ms) HV_MUST_CHECK;

/* Write all len bytes (MSG_NOSIGNAL).  0, -ETIMEDOUT, -EPIPE, -errno. */
int net_write_all(int fd, const void *buf, size_t len) HV_MUST_CHECK;
/* Read exactly len bytes.  0, -ENODATA (the peer closed first: *got bytes
 * arrived, got may be NULL), -ETIMEDOUT, -errno.  The socket's timeout
 * (net_set_timeouts) bounds each wait for bytes, not the whole read: a
 * peer sending one byte now and then keeps it going. */
int net_read_all(int fd, void *buf, size_t len, size_t *got) HV_MUST_CHECK;
/* The same, all len bytes by deadline_ns (hv_now_ns() clock): -ETIMEDOUT
 * at the deadline however the bytes trickle in.  Ignores SO_RCVTIMEO. */
int net_read_all_by(int fd, void *buf, size_t len, size_t *got,
                    uint64_t deadline_ns) HV_MUST_CHECK;

#endif

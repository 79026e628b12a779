/*
 * net.c - TCP helpers for live migration (see net.h).
 */
#include "net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int net_parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = s ? strrchr(s, ':') : NULL;
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host) || !colon[1])
        return -EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || port > 65535 || colon[1] == '-' || colon[1] == '+')
        return -EINVAL;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return -EINVAL;
    return 0;
}

const char *net_fmt_addr(const struct sockaddr_in *sa, char *buf, size_t len)
{
    char host[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s:%u", host, ntohs(sa->sin_port));
    return buf;
}

int net_listen(const struct sockaddr_in *sa, int *fd, uint16_t *port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    int one = 1;
    (void)setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    if (bind(s, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(s, NET_BACKLOG) < 0 ||
        getsockname(s, (struct sockaddr *)&got, &gl) < 0) {
        int rc = -errno;
        close(s);
        return rc;
    }
    if (port)
        *port = ntohs(got.sin_port);
    *fd = s;
    return 0;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n > 0)
            return 0;
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

int net_accept(int lfd, int timeout_ms, int *fd)
{
    int rc = wait_fd(lfd, POLLIN, timeout_ms);
    if (rc < 0)
        return rc;
    int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        return -errno;
    *fd = s;
    return 0;
}

int net_connect(const struct sockaddr_in *sa, int timeout_ms, int *fd)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return -errno;
    int rc = 0;
    if (connect(s, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
        } else {
            rc = wait_fd(s, POLLOUT, timeout_ms);
            int err = 0;
            socklen_t el = sizeof(err);
            if (rc == 0 && getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
                rc = -errno;
            else if (rc == 0 && err)
                rc = -err;
        }
    }
    if (rc == 0 && fcntl(s, F_SETFL, fcntl(s, F_GETFL) & ~O_NONBLOCK) < 0)
        rc = -errno;
    if (rc < 0) {
        close(s);
        return rc;
    }
    *fd = s;
    return 0;
}

int net_set_timeouts(int fd, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        return -errno;
    return 0;
}

int net_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int net_read_all(int fd, void *buf, size_t len, size_t *got)
{
    uint8_t *p = buf;
    size_t done = 0;
    int rc = 0;
    while (done < len) {
        ssize_t n = recv(fd, p + done, len - done, MSG_WAITALL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
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

int net_read_all_by(int fd, void *buf, size_t len, size_t *got, uint64_t deadline_ns)
{
    uint8_t *p = buf;
    size_t done = 0;
    int rc = 0;
    while (done < len) {
        /* what is there first: a bulk transfer rarely waits */
        ssize_t n = recv(fd, p + done, len - done, MSG_DONTWAIT);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n == 0) {
            rc = -ENODATA;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            rc = -errno;
            break;
        }
        uint64_t now = hv_now_ns();
        if (now >= deadline_ns) {
            rc = -ETIMEDOUT;
            break;
        }
        uint64_t ms = (deadline_ns - now + 999999) / 1000000;
        rc = wait_fd(fd, POLLIN, ms > INT_MAX ? INT_MAX : (int)ms);
        if (rc == -ETIMEDOUT)
            rc = 0; /* the loop checks the clock */
        if (rc < 0)
            break;
    }
    if (got)
        *got = done;
    return rc;
}

/*
 * stream.c - byte sinks/sources and the record writer and reader of the
 * migration stream (format: stream.h, docs/stream.md).
 *
 * The reader never trusts a length: a record header's body_length is
 * checked against STREAM_MAX_BODY before anything is read or allocated, and
 * a body is consumed through stream_read_body, which refuses to read past
 * body_length.  The reader itself allocates nothing; callers size their
 * buffers from lengths the reader has already bounded.
 *
 * Invariants: reader->offset is the number of bytes consumed from the
 * source; while in_record, rec_offset + 8 + (length - body_left) ==
 * offset, and pad_left == padding still to consume.
 */
#include "stream.h"

#include "copy.h"
#include "hash.h"

#include <endian.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define STREAM_FD_BUF (1u << 20)
/* Writes and reads of at least this many bytes bypass the buffer: a write
 * goes out with the pending bytes in one writev (no staging copy of page
 * data), a read into an empty buffer goes straight to the caller. */
#define STREAM_FD_DIRECT (64u << 10)

static uint32_t pad8(uint32_t len) { return (8u - (len & 7u)) & 7u; }

uint64_t stream_zero_page_hash(void)
{
    static const uint8_t zero[PAGE_SIZE];
    static uint64_t h;
    uint64_t v = __atomic_load_n(&h, __ATOMIC_RELAXED);
    if (!v) { /* (XXH3 of a zero page is not 0: computed once, races are harmless) */
        v = XXH3_64bits(zero, PAGE_SIZE);
        __atomic_store_n(&h, v, __ATOMIC_RELAXED);
    }
    return v;
}

const char *stream_rec_name(uint32_t type)
{
    switch (type) {
    case STREAM_REC_END: return "END";
    case STREAM_REC_PAGE_DATA: return "PAGE_DATA";
    case STREAM_REC_X86_PV_INFO: return "X86_PV_INFO";
    case STREAM_REC_X86_PV_P2M_FRAMES: return "X86_PV_P2M_FRAMES";
    case STREAM_REC_X86_PV_VCPU_BASIC: return "X86_PV_VCPU_BASIC";
    case STREAM_REC_X86_PV_VCPU_EXTENDED: return "X86_PV_VCPU_EXTENDED";
    case STREAM_REC_X86_PV_VCPU_XSAVE: return "X86_PV_VCPU_XSAVE";
    case STREAM_REC_SHARED_INFO: return "SHARED_INFO";
    case STREAM_REC_X86_TSC_INFO: return "X86_TSC_INFO";
    case STREAM_REC_HVM_CONTEXT: return "HVM_CONTEXT";
    case STREAM_REC_HVM_PARAMS: return "HVM_PARAMS";
    case STREAM_REC_TOOLSTACK: return "TOOLSTACK";
    case STREAM_REC_X86_PV_VCPU_MSRS: return "X86_PV_VCPU_MSRS";
    case STREAM_REC_VERIFY: return "VERIFY";
    case STREAM_REC_CHECKPOINT: return "CHECKPOINT";
    case STREAM_REC_CHECKPOINT_DIRTY_PFN_LIST: return "CHECKPOINT_DIRTY_PFN_LIST";
    case STREAM_REC_STATIC_DATA_END: return "STATIC_DATA_END";
    case STREAM_REC_X86_CPUID_POLICY: return "X86_CPUID_POLICY";
    case STREAM_REC_X86_MSR_POLICY: return "X86_MSR_POLICY";
    case STREAM_REC_HV_CONFIG: return "HV_CONFIG";
    case STREAM_REC_HV_LAYOUT: return "HV_LAYOUT";
    case STREAM_REC_HV_CHECKSUM: return "HV_CHECKSUM";
    default: return (type & STREAM_REC_OPTIONAL) ? "unknown optional" : "unknown";
    }
}

/* ---- memory buffer -------------------------------------------------------- */

static long mem_read(void *ctx, void *buf, size_t len)
{
    struct stream_mem *m = ctx;
    size_t n = m->len - m->pos;
    if (n > len)
        n = len;
    if (n)
        copy_bulk(buf, m->buf + m->pos, n);
    m->pos += n;
    return (long)n;
}

int stream_mem_reserve(struct stream_mem *m, size_t cap)
{
    if (cap <= m->cap)
        return 0;
    uint8_t *b = realloc(m->owned ? m->buf : NULL, cap);
    if (!b)
        return -ENOMEM;
    m->buf = b;
    m->cap = cap;
    m->owned = true;
    return 0;
}

static int mem_write(void *ctx, const void *buf, size_t len)
{
    struct stream_mem *m = ctx;
    if (len > m->cap - m->len) {
        size_t cap = m->cap ? m->cap : 64 * KiB;
        while (cap - m->len < len) {
            if (cap > SIZE_MAX / 2)
                return -ENOMEM;
            cap *= 2;
        }
        int rc = stream_mem_reserve(m, cap);
        if (rc < 0)
            return rc;
    }
    copy_bulk(m->buf + m->len, buf, len);
    m->len += len;
    return 0;
}

void stream_mem_source(struct stream_mem *m, struct stream_io *io,
                       const void *buf, size_t len)
{
    memset(m, 0, sizeof(*m));
    m->buf = (uint8_t *)(uintptr_t)buf;
    m->len = m->cap = len;
    *io = (struct stream_io){.read = mem_read, .ctx = m};
}

void stream_mem_sink(struct stream_mem *m, struct stream_io *io)
{
    memset(m, 0, sizeof(*m));
    *io = (struct stream_io){.write = mem_write, .ctx = m};
}

void stream_mem_free(struct stream_mem *m)
{
    if (m->owned)
        free(m->buf);
    memset(m, 0, sizeof(*m));
}

/* ---- file descriptor ------------------------------------------------------ */

static int fd_flush(void *ctx)
{
    struct stream_fd *f = ctx;
    size_t off = 0;
    while (off < f->len) {
        ssize_t n = write(f->fd, f->buf + off, f->len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (size_t)n;
    }
    f->len = 0;
    return 0;
}

/* Write pending bytes then [p, p + len) with writev, all of it. */
static int fd_writev_all(struct stream_fd *f, const uint8_t *p, size_t len)
{
    struct iovec iov[2] = {{f->buf, f->len}, {(void *)(uintptr_t)p, len}};
    struct iovec *v = f->len ? iov : iov + 1;
    int nv = f->len ? 2 : 1;
    while (nv) {
        ssize_t n = writev(f->fd, v, nv);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (nv && (size_t)n >= v->iov_len) {
            n -= (ssize_t)v->iov_len;
            v++;
            nv--;
        }
        if (nv) {
            v->iov_base = (uint8_t *)v->iov_base + n;
            v->iov_len -= (size_t)n;
        }
    }
    f->len = 0;
    return 0;
}

/* [p, p + len) lies inside the alias (stream_fd_alias). */
static bool in_alias(const struct stream_fd *f, const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)f->alias, q = (uintptr_t)p;
    return f->alias_len && q >= a && q - a <= f->alias_len && len <= f->alias_len - (q - a);
}

/* Errors that say "sendfile or splice cannot do this here", not "the
 * sink failed": the bytes then go the ordinary way. */
static bool move_unsupported(int e)
{
    return e == EINVAL || e == ENOSYS || e == EOPNOTSUPP || e == EXDEV || e == ESPIPE ||
           e == EBADF;
}

/* Write len bytes of the alias file from offset off to f->fd (nothing is
 * pending in buf) with sendfile: 0 when all went, -errno when the sink
 * failed, 1 when sendfile cannot serve this sink (then *done bytes went,
 * the alias is dropped and the caller writes the rest). */
static int fd_send_alias(struct stream_fd *f, uint64_t off, size_t len, size_t *done)
{
    off_t in = (off_t)off;
    *done = 0;
    while (*done < len) {
        size_t want = len - *done < (1u << 30) ? len - *done : (1u << 30);
        ssize_t n = sendfile(f->fd, f->alias_fd, &in, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && !move_unsupported(errno))
                return -errno;
            f->alias_len = 0; /* (0: the alias file is shorter than it was said to be) */
            return 1;
        }
        *done += (size_t)n;
        f->alias_bytes += (uint64_t)n;
    }
    return 0;
}

static int fd_write(void *ctx, const void *buf, size_t len)
{
    struct stream_fd *f = ctx;
    if (len >= STREAM_FD_DIRECT && in_alias(f, buf, len)) { /* in the kernel */
        int rc = fd_flush(f);
        size_t done = 0;
        if (rc == 0)
            rc = fd_send_alias(f, (uint64_t)((const uint8_t *)buf - f->alias), len, &done);
        if (rc <= 0)
            return rc;
        buf = (const uint8_t *)buf + done;
        len -= done;
    }
    if (len >= STREAM_FD_DIRECT) /* large (page runs): no staging copy */
        return fd_writev_all(f, buf, len);
    if (len <= f->cap - f->len) {
        memcpy(f->buf + f->len, buf, len);
        f->len += len;
        return 0;
    }
    int rc = fd_flush(f);
    if (rc < 0)
        return rc;
    memcpy(f->buf, buf, len);
    f->len = len;
    return 0;
}

/* Leave the mapping: the fd's offset goes where the reader got to, and
 * reads continue with read(). */
static void fd_unmap(struct stream_fd *f)
{
    if (f->map)
        munmap((void *)(uintptr_t)f->map, f->map_len);
    if (f->mapped > 0)
        (void)lseek(f->fd, (off_t)f->map_pos, SEEK_SET);
    f->map = NULL;
    f->map_len = 0;
    f->mapped = -1;
}

/* Map (again, if it grew) the regular file behind f->fd, [0, its size).
 * True when the map now holds bytes at map_pos.  False at the end of the
 * file (f->mapped stays 1) or when the fd cannot be mapped (f->mapped
 * becomes -1: read() from here on). */
static bool fd_map(struct stream_fd *f)
{
    struct stat st;
    if (fstat(f->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        fd_unmap(f);
        return false;
    }
    if (f->mapped == 0) {
        off_t at = lseek(f->fd, 0, SEEK_CUR);
        if (at < 0) {
            fd_unmap(f);
            return false;
        }
        f->map_pos = (uint64_t)at;
        f->mapped = 1;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size <= f->map_len || size <= f->map_pos)
        return false;
    void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, f->fd, 0);
    if (p == MAP_FAILED) {
        fd_unmap(f);
        return false;
    }
    if (f->map)
        munmap((void *)(uintptr_t)f->map, f->map_len);
    (void)madvise(p, (size_t)size, MADV_SEQUENTIAL);
    f->map = p;
    f->map_len = size;
    return true;
}

/*
 * A mapped file that another process truncates while it is read: touching
 * a page beyond the new end raises SIGBUS.  The copy out of the mapping
 * runs under a guard: a SIGBUS handler (installed once, SA_NODEFER so that
 * no signal mask needs saving per copy) that, when the faulting address
 * lies in the mapping this thread is copying from, jumps back out of the
 * copy.  The reader then drops the mapping and goes on with read() from
 * the same offset, which sees the file as it now is: a shrunk file ends
 * there and the record reader reports a truncated stream with the byte
 * offset, like any short stream.  The guard costs one sigsetjmp (no system
 * call) per copy, so the mapped copy keeps its speed; read() throughout
 * would copy twice as slowly.  A SIGBUS anywhere else goes to the handler
 * that was there before (reinstalled, the fault repeats).
 */
static struct sigaction bus_prev;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static _Thread_local sigjmp_buf bus_jmp;
static _Thread_local const uint8_t *volatile bus_lo, *volatile bus_hi;

static void bus_handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    const uint8_t *a = si->si_addr;
    if (bus_lo && a >= bus_lo && a < bus_hi) {
        bus_lo = bus_hi = NULL;
        siglongjmp(bus_jmp, 1);
    }
    sigaction(sig, &bus_prev, NULL);
}

static void bus_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = bus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &bus_prev);
}

/* Copy n bytes at map_pos out of the mapping: false when the file shrank
 * under it (nothing is consumed then). */
static bool fd_copy_mapped(struct stream_fd *f, void *buf, size_t n)
{
    pthread_once(&bus_once, bus_install);
    if (sigsetjmp(bus_jmp, 0))
        return false;
    bus_lo = f->map;
    bus_hi = f->map + f->map_len;
    copy_bulk(buf, f->map + f->map_pos, n);
    bus_lo = bus_hi = NULL;
    return true;
}

/* Move n bytes of the file at map_pos into the alias at dst with splice
 * (file -> pipe -> alias file, offsets explicit on both files): the count
 * moved, or -errno when bytes in the pipe cannot be read back.  Short when
 * the file ended before map_len (it shrank: *ended is set, and the caller
 * reads on with read(), not from the mapping, which would fault) or when
 * splice cannot serve these files (then the alias is dropped and the
 * caller copies the rest out of the mapping as without an alias). */
static long fd_splice_alias(struct stream_fd *f, uint8_t *dst, size_t n, bool *ended)
{
    if (f->pipe[0] < 0) {
        if (pipe2(f->pipe, O_CLOEXEC) < 0) {
            f->pipe[0] = f->pipe[1] = -1;
            f->alias_len = 0;
            return 0;
        }
        (void)fcntl(f->pipe[1], F_SETPIPE_SZ, (int)STREAM_FD_BUF); /* fewer calls; best effort */
    }
    loff_t in = (loff_t)f->map_pos, out = (loff_t)(dst - f->alias);
    size_t done = 0;
    while (done < n) {
        ssize_t k = splice(f->fd, &in, f->pipe[1], NULL, n - done, SPLICE_F_MOVE);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k < 0)
                f->alias_len = 0;
            else
                *ended = true;
            break;
        }
        size_t left = (size_t)k;
        while (left) {
            ssize_t w = splice(f->pipe[0], NULL, f->alias_fd, &out, left, SPLICE_F_MOVE);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            left -= (size_t)w;
            f->alias_bytes += (uint64_t)w;
        }
        if (left) { /* the alias file took no more: the pipe's bytes go the user way */
            uint8_t *q = dst + (size_t)k - left + done;
            while (left) {
                ssize_t r = read(f->pipe[0], q, left);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    return r < 0 ? -errno : -EIO; /* (our own pipe: not seen) */
                q += r;
                left -= (size_t)r;
            }
            f->alias_len = 0;
            done += (size_t)k;
            break;
        }
        done += (size_t)k;
    }
    f->map_pos += done;
    return (long)done;
}

static long fd_read(void *ctx, void *buf, size_t len)
{
    struct stream_fd *f = ctx;
    if (f->mapped >= 0 && f->pos == f->len) {
        if (f->map_pos >= f->map_len && !fd_map(f) && f->mapped > 0)
            return 0; /* the end of the file */
        if (f->mapped > 0) {
            uint64_t n = f->map_len - f->map_pos;
            if (n > len)
                n = len;
            bool ended = false;
            if (n >= STREAM_FD_DIRECT && in_alias(f, buf, (size_t)n)) { /* in the kernel */
                long k = fd_splice_alias(f, buf, (size_t)n, &ended);
                if (k)
                    return k; /* (short when the file ended: the next read finds out) */
            }
            if (ended) {
                fd_unmap(f); /* the file shrank: read() from map_pos on */
            } else if (fd_copy_mapped(f, buf, (size_t)n)) {
                f->map_pos += n;
                return (long)n;
            } else {
                f->bus_faults++;
                fd_unmap(f); /* the file shrank: read() from map_pos on */
            }
        }
    }
    if (f->pos == f->len) {
        if (len >= STREAM_FD_DIRECT) { /* large reads go straight through */
            for (;;) {
                ssize_t n = read(f->fd, buf, len);
                if (n < 0 && errno == EINTR)
                    continue;
                return n < 0 ? -errno : (long)n;
            }
        }
        f->pos = f->len = 0;
        for (;;) {
            ssize_t n = read(f->fd, f->buf, f->cap);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return n < 0 ? -errno : 0;
            f->len = (size_t)n;
            break;
        }
    }
    size_t n = f->len - f->pos;
    if (n > len)
        n = len;
    memcpy(buf, f->buf + f->pos, n);
    f->pos += n;
    return (long)n;
}

int stream_fd_open(struct stream_fd *f, struct stream_io *io, int fd)
{
    memset(f, 0, sizeof(*f));
    f->buf = hv_malloc(STREAM_FD_BUF);
    if (!f->buf)
        return -ENOMEM;
    f->fd = fd;
    f->cap = STREAM_FD_BUF;
    f->alias_fd = f->pipe[0] = f->pipe[1] = -1;
    *io = (struct stream_io){.read = fd_read, .write = fd_write, .flush = fd_flush, .ctx = f};
    return 0;
}

void stream_fd_free(struct stream_fd *f)
{
    free(f->buf);
    f->buf = NULL;
    fd_unmap(f);
    for (int i = 0; i < 2; i++)
        if (f->pipe[i] >= 0)
            close(f->pipe[i]);
    f->pipe[0] = f->pipe[1] = -1;
}

void stream_fd_alias(struct stream_fd *f, const void *base, uint64_t len, int fd)
{
    f->alias = base;
    f->alias_len = fd >= 0 ? len : 0;
    f->alias_fd = fd;
}

/* ---- writer --------------------------------------------------------------- */

static const uint8_t zeros[8];

void stream_writer_init(struct stream_writer *w, struct stream_io *io)
{
    memset(w, 0, sizeof(*w));
    w->io = io;
}

void stream_writer_hash(struct stream_writer *w)
{
    XXH64_reset(&w->xxh, 0);
    w->hashing = w->offset == 0;
}

static int w_raw(struct stream_writer *w, const void *p, size_t len)
{
    int rc = w->io->write(w->io->ctx, p, len);
    if (rc == 0) {
        w->offset += len;
        if (w->hashing)
            XXH64_update(&w->xxh, p, len);
    }
    return rc;
}

int stream_write_checksum(struct stream_writer *w)
{
    if (!w->hashing || w->in_record)
        return -EINVAL;
    struct stream_hv_checksum c = {htole32(STREAM_CSUM_XXH64), 0, htole64(w->offset),
                                   htole64(XXH64_digest(&w->xxh))};
    return stream_write_record(w, STREAM_REC_HV_CHECKSUM, &c, sizeof(c));
}

int stream_write_headers(struct stream_writer *w)
{
    struct stream_image_header ih = {
        .marker = htobe64(STREAM_MARKER),
        .id = htobe32(STREAM_ID),
        .version = htobe32(STREAM_VERSION),
        .options = htobe16(0),
    };
    struct stream_domain_header dh = {
        .type = htole32(STREAM_DHDR_X86_HVM),
        .page_shift = htole16(PAGE_SHIFT),
        .xen_major = htole32(4),
        .xen_minor = htole32(20),
    };
    int rc = w_raw(w, &ih, sizeof(ih));
    return rc < 0 ? rc : w_raw(w, &dh, sizeof(dh));
}

int stream_record_begin(struct stream_writer *w, uint32_t type, uint32_t len)
{
    if (w->in_record || len > STREAM_MAX_BODY)
        return -EINVAL;
    struct stream_rhdr h = {htole32(type), htole32(len)};
    int rc = w_raw(w, &h, sizeof(h));
    if (rc < 0)
        return rc;
    w->in_record = true;
    w->body_left = len;
    w->pad = pad8(len);
    return 0;
}

int stream_write_part(struct stream_writer *w, const void *p, size_t len)
{
    if (!w->in_record || len > w->body_left)
        return -EINVAL;
    if (!len)
        return 0;
    int rc = w_raw(w, p, len);
    if (rc == 0)
        w->body_left -= (uint32_t)len;
    return rc;
}

int stream_write_page(struct stream_writer *w, const void *page, uint64_t *hash)
{
    if (!w->in_record || PAGE_SIZE > w->body_left)
        return -EINVAL;
    if (!w->io->write_page) {
        int rc = w_raw(w, page, PAGE_SIZE);
        if (rc == 0) {
            *hash = hv_hash64(page, PAGE_SIZE);
            w->body_left -= PAGE_SIZE;
        }
        return rc;
    }
    int rc = w->io->write_page(w->io->ctx, page, hash);
    if (rc == 0) {
        w->offset += PAGE_SIZE;
        if (w->hashing)
            XXH64_update(&w->xxh, page, PAGE_SIZE);
        w->body_left -= PAGE_SIZE;
    }
    return rc;
}

int stream_record_end(struct stream_writer *w)
{
    if (!w->in_record || w->body_left)
        return -EINVAL;
    int rc = w->pad ? w_raw(w, zeros, w->pad) : 0;
    if (rc < 0)
        return rc;
    w->in_record = false;
    w->records++;
    return 0;
}

int stream_write_record(struct stream_writer *w, uint32_t type, const void *body,
                        uint32_t len)
{
    int rc = stream_record_begin(w, type, len);
    if (rc == 0 && len)
        rc = stream_write_part(w, body, len);
    return rc < 0 ? rc : stream_record_end(w);
}

int stream_writer_flush(struct stream_writer *w)
{
    return w->io->flush ? w->io->flush(w->io->ctx) : 0;
}

/* ---- reader --------------------------------------------------------------- */

void stream_reader_init(struct stream_reader *r, struct stream_io *io)
{
    memset(r, 0, sizeof(*r));
    r->io = io;
}

void stream_reader_hash(struct stream_reader *r)
{
    XXH64_reset(&r->xxh, 0);
    r->hashing = r->offset == 0;
}

int stream_reader_fail(struct stream_reader *r, int rc, uint64_t at,
                       const char *fmt, ...)
{
    char msg[STREAM_ERR_LEN / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char where[40] = "";
    if (at != UINT64_MAX)
        snprintf(where, sizeof(where), " (byte offset %llu)", (unsigned long long)at);
    if (!r->started)
        snprintf(r->err, sizeof(r->err), "stream headers at offset 0%s: %s", where, msg);
    else
        snprintf(r->err, sizeof(r->err), "record #%llu %s (type %#x) at offset %llu%s: %s",
                 (unsigned long long)r->index, stream_rec_name(r->type), r->type,
                 (unsigned long long)r->rec_offset, where, msg);
    return rc;
}

/* Read exactly len bytes from the source.  -ENODATA at a short stream. */
static int r_raw(struct stream_reader *r, void *buf, size_t len, const char *what)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < len) {
        long n = r->io->read(r->io->ctx, p + got, len - got);
        if (n < 0)
            return stream_reader_fail(r, (int)n, r->offset + got, "reading %s: %s", what,
                                      strerror((int)-n));
        if (n == 0)
            return stream_reader_fail(r, -ENODATA, r->offset + got,
                                      "stream truncated: %zu of %zu bytes of %s", got, len,
                                      what);
        got += (size_t)n;
    }
    r->offset += len;
    if (r->hashing)
        XXH64_update(&r->xxh, buf, len);
    return 0;
}

int stream_read_headers(struct stream_reader *r)
{
    struct stream_image_header ih;
    int rc = r_raw(r, &ih, sizeof(ih), "the image header");
    if (rc < 0)
        return rc;
    if (be64toh(ih.marker) != STREAM_MARKER)
        return stream_reader_fail(r, -EBADMSG, 0, "bad marker %#llx (want ~0)",
                                  (unsigned long long)be64toh(ih.marker));
    if (be32toh(ih.id) != STREAM_ID)
        return stream_reader_fail(r, -EBADMSG, 8, "bad id %#x (want %#x \"XENF\")",
                                  be32toh(ih.id), STREAM_ID);
    r->version = be32toh(ih.version);
    if (r->version != 2 && r->version != 3)
        return stream_reader_fail(r, -EPROTONOSUPPORT, 12,
                                  "unsupported stream version %u (2 and 3 are)", r->version);
    if (be16toh(ih.options) & STREAM_OPT_BIG_ENDIAN)
        return stream_reader_fail(r, -EBADMSG, 16,
                                  "big-endian streams are not supported (options %#x)",
                                  be16toh(ih.options));
    rc = r_raw(r, &r->dhdr, sizeof(r->dhdr), "the domain header");
    if (rc < 0)
        return rc;
    r->dhdr.type = le32toh(r->dhdr.type);
    r->dhdr.page_shift = le16toh(r->dhdr.page_shift);
    r->dhdr.xen_major = le32toh(r->dhdr.xen_major);
    r->dhdr.xen_minor = le32toh(r->dhdr.xen_minor);
    if (r->dhdr.type != STREAM_DHDR_X86_HVM)
        return stream_reader_fail(r, -EBADMSG, 24,
                                  "domain type %u is not x86 HVM (2)", r->dhdr.type);
    if (r->dhdr.page_shift != PAGE_SHIFT)
        return stream_reader_fail(r, -EBADMSG, 28, "page shift %u (want 12)",
                                  r->dhdr.page_shift);
    return 0;
}

static int discard(struct stream_reader *r, uint64_t len, const char *what)
{
    uint8_t buf[4096];
    while (len) {
        size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        int rc = r_raw(r, buf, n, what);
        if (rc < 0)
            return rc;
        len -= n;
    }
    return 0;
}

int stream_skip_body(struct stream_reader *r)
{
    if (!r->in_record)
        return 0;
    int rc = discard(r, r->body_left, "the record body");
    if (rc < 0)
        return rc;
    r->body_left = 0;
    rc = discard(r, r->pad_left, "the record padding");
    if (rc < 0)
        return rc;
    r->pad_left = 0;
    r->in_record = false;
    return 0;
}

int stream_next_record(struct stream_reader *r, struct stream_rhdr *h)
{
    int rc = stream_skip_body(r);
    if (rc < 0)
        return rc;
    if (r->started)
        r->index++;
    r->started = true;
    r->rec_offset = r->offset;
    r->type = 0;
    r->length = 0;
    struct stream_rhdr raw;
    if (r->hashing)
        r->hash_before = XXH64_digest(&r->xxh);
    rc = r_raw(r, &raw, sizeof(raw), "a record header");
    if (rc < 0)
        return rc;
    r->type = le32toh(raw.type);
    r->length = le32toh(raw.length);
    if (r->length > STREAM_MAX_BODY)
        return stream_reader_fail(r, -EMSGSIZE, r->rec_offset + 4,
                                  "body length %u is over the %u-byte limit", r->length,
                                  STREAM_MAX_BODY);
    r->body_left = r->length;
    r->pad_left = pad8(r->length);
    r->in_record = true;
    h->type = r->type;
    h->length = r->length;
    return 0;
}

uint64_t stream_page_hash(const struct stream_reader *r, uint64_t offset, const void *page,
                          bool *own)
{
    uint64_t h;
    if (r->io->page_hash && r->io->page_hash(r->io->ctx, offset, &h))
        return h;
    if (own)
        *own = true;
    return hv_hash64(page, PAGE_SIZE);
}

int stream_read_body(struct stream_reader *r, void *buf, size_t len)
{
    if (!r->in_record || len > r->body_left)
        return stream_reader_fail(r, -EBADMSG, r->offset,
                                  "body too short: need %zu more bytes, %u left", len,
                                  r->in_record ? r->body_left : 0);
    int rc = r_raw(r, buf, len, "the record body");
    if (rc == 0)
        r->body_left -= (uint32_t)len;
    return rc;
}

/*
 * postcopy.c - the receiving side of post-copy migration (see postcopy.h):
 * a minor-fault userfaultfd over the 2M regions with pages still missing,
 * a fault server that maps what is here and requests what is not, and an
 * I/O thread that lands pages in their frames and gives whole regions
 * back to the host's 2M mappings.
 *
 * Locking: p->mu guards the bitmaps, the region counts, the request queue
 * and the waiters; page bytes are copied under it (the fault server waits
 * for at most one frame's pages).  The channel is used by the I/O thread
 * alone (a TLS channel takes one reader and one writer at a time only if
 * they are the same thread: chan.h): the fault server queues requests and
 * wakes it through an eventfd.
 */
#include "postcopy.h"

#include "chan.h"
#include "domain.h"
#include "hash.h"
#include "machine.h"
#include "migrate.h"
#include "p2m.h"
#include "stream.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define REGION_PAGES 512u
#define REQ_QUEUE 4096u

/* A registered piece of the mirror: RAM of one 2M region (for minor
 * faults, and missing ones: a hole of the memfd, arm_leaf). */
struct pc_range {
    uint64_t hva, len;
};

struct pc_waiter {
    gfn_t gfn;
    uint64_t hva;
    uint64_t t; /* when the fault was read */
};

struct postcopy_rx {
    struct guest *g;
    struct domain *d;
    struct machine *m;
    struct chan *ch;
    struct chan *pre; /* the preempt channel: answers only (or NULL) */
    int uffd, wake_fd, stop_fd;
    int timeout_ms;
    pthread_t io_thread, fault_thread;
    bool io_up, fault_up;
    pthread_mutex_t mu;
    /* pfns [0, nbits): missing (still to come) and pending (missing at the
     * switch) */
    uint64_t *missing, *pending;
    gfn_t nbits;
    uint64_t nmissing;
    /* per 2M region: pages missing, and its ranges [first, first + nr) */
    uint32_t *rmissing;
    uint32_t *rfirst;
    uint16_t *rnr;
    uint64_t nregions;
    struct pc_range *ranges;
    size_t nranges, cap_ranges;
    /* requests for the I/O thread */
    gfn_t req[REQ_QUEUE];
    unsigned nreq;
    uint64_t *requested;
    struct pc_waiter *w;
    size_t nw, capw;
    uint64_t *lat;
    size_t nlat, caplat;
    uint64_t digest, pages;
    uint64_t zero_hash;
    uint64_t t0, t_whole;
    struct mig_pc_end end;
    bool end_seen;
    struct postcopy_rx_stats st;
    uint64_t landed, landed_told; /* background frames landed; told the sender */
    pthread_t premap_thread;
    bool premap_up; /* set by the I/O thread (read once it is joined) */
    int premap_stop;
    bool link_lost;   /* the connection failed; waiting for another */
    bool done_unsent; /* whole, but PC_DONE did not go out */
    int link_rc;
    uint64_t id;      /* the migration's post-copy id (PC_PENDING) */
    unsigned links;   /* connections used (1 + resumes) */
    bool soft;        /* soft vCPUs: they wait in soft_wait, no userfaultfd */
    bool closing;     /* rx_free: soft waiters leave with an error */
    unsigned nsoftwait; /* soft vCPUs inside soft_wait */
    pthread_cond_t cv; /* soft_wait: pages landed, or post-copy failed */
    uint8_t *buf; /* one frame */
    uint8_t old[MIG_PC_PAGES_MAX * PAGE_SIZE]; /* stale pages, for their digest terms */
    int rc;
    char err[256];
};

HV_PRINTF(3, 4) static int pcfail(struct postcopy_rx *p, int rc, const char *fmt, ...)
{
    pthread_mutex_lock(&p->mu);
    if (!p->rc) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, sizeof(p->err), fmt, ap);
        va_end(ap);
        p->rc = rc;
    }
    pthread_cond_broadcast(&p->cv); /* soft vCPUs waiting: it will not come */
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* The connection failed (closed, cut, silent): not the guest's end.  The
 * vCPUs waiting for pages keep waiting; postcopy_rx_wait says so and a
 * new connection may take over (postcopy_rx_resume). */
HV_PRINTF(3, 4) static int linkfail(struct postcopy_rx *p, int rc, const char *fmt, ...)
{
    pthread_mutex_lock(&p->mu);
    if (!p->rc && !p->link_lost) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, sizeof(p->err), fmt, ap);
        va_end(ap);
        p->link_lost = true;
        p->link_rc = rc;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static bool tbit(const uint64_t *b, gfn_t i) { return (b[i / 64] >> (i % 64)) & 1; }
static void sbit(uint64_t *b, gfn_t i) { b[i / 64] |= 1ULL << (i % 64); }
/* (atomic: soft vCPUs read `missing` without p->mu; release: the page's
 * bytes are in its frame before its bit clears) */
static void cbit(uint64_t *b, gfn_t i)
{
    __atomic_fetch_and(&b[i / 64], ~(1ULL << (i % 64)), __ATOMIC_RELEASE);
}

static int uffd_open(uint64_t features, int *out)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *out = fd;
    return 0;
}

int postcopy_probe(char *why, size_t len)
{
    int fd = -1, rc = uffd_open(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_THREAD_ID, &fd);
    if (rc < 0) {
        snprintf(why, len, "this host gives no userfaultfd with minor faults on shmem (%s): "
                 "post-copy needs Linux 5.14+ and the right to handle kernel faults (root, or "
                 "vm.unprivileged_userfaultfd=1)", strerror(-rc));
        return rc == -EINVAL ? -ENOTSUP : rc;
    }
    close(fd);
    return 0;
}

/* Map the 4K page at hva (it is here) and wake whoever waits on it. */
static void map_page(struct postcopy_rx *p, uint64_t hva)
{
    struct uffdio_continue c = {.range = {hva, PAGE_SIZE}, .mode = 0};
    if (ioctl(p->uffd, UFFDIO_CONTINUE, &c) == 0)
        return;
    /* mapped already (-EEXIST), or the region was given back meanwhile
     * (unregistering woke its waiters): a wake does no harm */
    struct uffdio_range r = {hva, PAGE_SIZE};
    (void)ioctl(p->uffd, UFFDIO_WAKE, &r);
}

/* Map n pages that are here from gfn on (4K mappings, one call where the
 * mirror range allows: a vCPU touching them later takes no fault). */
static void map_run(struct postcopy_rx *p, gfn_t gfn, uint64_t n)
{
    struct guest_exec *x = p->g->x;
    uint64_t hva = x->ops->gfn_hva(x, gfn);
    struct uffdio_continue c = {.range = {hva, n << PAGE_SHIFT}, .mode = 0};
    if (n > 1 && ioctl(p->uffd, UFFDIO_CONTINUE, &c) == 0)
        return;
    for (uint64_t k = 0; k < n; k++)
        map_page(p, x->ops->gfn_hva(x, gfn + k));
}

static void unregister_region(struct postcopy_rx *p, uint64_t reg)
{
    for (uint32_t k = 0; k < p->rnr[reg]; k++) {
        struct pc_range *r = &p->ranges[p->rfirst[reg] + k];
        struct uffdio_range u = {r->hva, r->len};
        (void)ioctl(p->uffd, UFFDIO_UNREGISTER, &u);
        /* the 4K mappings go: the next touch maps the region with a PMD
         * where the frames are a 2M folio (KVM then maps it at 2M) */
        (void)madvise((void *)(uintptr_t)r->hva, r->len, MADV_DONTNEED);
    }
    p->rnr[reg] = 0;
}

/* ---- the fault server ------------------------------------------------------------- */

/* A page that is here but in a hole of the memfd (zero): allocated, so
 * that it can be mapped (a missing fault: every range is registered for
 * them too). */
static void fill_hole(struct postcopy_rx *p, gfn_t gfn)
{
    enum p2m_type t;
    domain_lock(p->d);
    mfn_t mfn = p2m_get_entry(p->d->p2m, gfn, &t, NULL);
    domain_unlock(p->d);
    if (p2m_is_ram(t))
        (void)fallocate(p->m->fd, FALLOC_FL_KEEP_SIZE, (off_t)machine_offset(mfn), PAGE_SIZE);
}

/* p->mu held: a vCPU waits for missing page gfn (hva: where it faulted,
 * 0 for a soft vCPU); the page is requested unless it was already.
 * 1: wake the I/O thread (wake_io, after p->mu), 0, or -ENOMEM. */
static int wait_for(struct postcopy_rx *p, gfn_t gfn, uint64_t hva)
{
    p->st.faults_missing++;
    if (p->nw == p->capw) {
        size_t n = p->capw ? 2 * p->capw : 64;
        struct pc_waiter *v = realloc(p->w, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        p->w = v;
        p->capw = n;
    }
    p->w[p->nw++] = (struct pc_waiter){gfn, hva, hv_now_ns()};
    if (tbit(p->requested, gfn) || p->nreq == REQ_QUEUE)
        return 0;
    sbit(p->requested, gfn);
    p->req[p->nreq++] = gfn;
    return 1;
}

static void wake_io(struct postcopy_rx *p)
{
    uint64_t one = 1;
    (void)!write(p->wake_fd, &one, sizeof(one));
}

static void serve_fault(struct postcopy_rx *p, uint64_t addr, bool minor)
{
    struct guest_exec *x = p->g->x;
    uint64_t hva = addr & ~(uint64_t)(PAGE_SIZE - 1);
    gfn_t gfn = x->ops->hva_gfn(x, hva);
    pthread_mutex_lock(&p->mu);
    p->st.faults++;
    if (gfn == INVALID_GFN || gfn >= p->nbits || !tbit(p->missing, gfn) || p->rc) {
        pthread_mutex_unlock(&p->mu);
        if (!minor && gfn != INVALID_GFN)
            fill_hole(p, gfn);
        map_page(p, hva);
        return;
    }
    int rc = wait_for(p, gfn, hva);
    pthread_mutex_unlock(&p->mu);
    if (rc < 0)
        pcfail(p, rc, "out of memory for the post-copy waiters");
    else if (rc > 0)
        wake_io(p);
}

static void *fault_main(void *arg)
{
    struct postcopy_rx *p = arg;
    for (;;) {
        struct pollfd f[2] = {{p->uffd, POLLIN, 0}, {p->stop_fd, POLLIN, 0}};
        if (poll(f, 2, -1) < 0 && errno != EINTR)
            break;
        if (f[1].revents)
            break;
        struct uffd_msg m[32];
        ssize_t r = read(p->uffd, m, sizeof(m));
        for (ssize_t k = 0; r > 0 && k < r / (ssize_t)sizeof(m[0]); k++)
            if (m[k].event == UFFD_EVENT_PAGEFAULT)
                serve_fault(p, m[k].arg.pagefault.address,
                            (m[k].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) != 0);
    }
    return NULL;
}

/* A soft vCPU's access to a missing page (domain.h pc_wait): d->lock
 * held on entry and exit, dropped while the page comes. */
static int soft_wait(void *ctx, gfn_t gfn)
{
    struct postcopy_rx *p = ctx;
    struct domain *d = p->d;
    pthread_mutex_lock(&p->mu);
    p->st.faults++;
    if (p->closing) {
        pthread_mutex_unlock(&p->mu);
        return -EIO; /* post-copy is over without this page */
    }
    int w = tbit(p->missing, gfn) && !p->rc ? wait_for(p, gfn, 0) : 0;
    pthread_mutex_unlock(&p->mu);
    if (w < 0)
        return w;
    if (w > 0)
        wake_io(p);
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_lock(&p->mu);
    p->nsoftwait++;
    while (tbit(p->missing, gfn) && !p->rc && !p->closing)
        pthread_cond_wait(&p->cv, &p->mu);
    int rc = tbit(p->missing, gfn) ? (p->rc ? p->rc : -EIO) : 0;
    p->nsoftwait--;
    pthread_cond_broadcast(&p->cv); /* rx_free may wait for the last one */
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_lock(&d->lock);
    return rc;
}

/* The pages of the registered regions that are here already (clean since
 * their last copy) are mapped once, in runs, while the guest starts:
 * otherwise each first touch of one would be a minor fault. */
static void *premap_main(void *arg)
{
    struct postcopy_rx *p = arg;
    struct guest_exec *x = p->g->x;
    for (size_t r = 0; r < p->nranges && !__atomic_load_n(&p->premap_stop, __ATOMIC_ACQUIRE);
         r++) {
        gfn_t lo = x->ops->hva_gfn(x, p->ranges[r].hva);
        gfn_t hi = lo + (p->ranges[r].len >> PAGE_SHIFT);
        for (gfn_t g = lo; g < hi;) {
            pthread_mutex_lock(&p->mu);
            bool here = g >= p->nbits || !tbit(p->missing, g);
            gfn_t e = g + 1;
            while (e < hi && (e >= p->nbits || !tbit(p->missing, e)) == here)
                e++;
            pthread_mutex_unlock(&p->mu);
            if (here)
                map_run(p, g, e - g); /* (a region given back meanwhile: refused, harmless) */
            g = e;
        }
    }
    return NULL;
}

/* ---- the I/O thread --------------------------------------------------------------- */

static int send_frame(struct postcopy_rx *p, uint16_t type, const void *body, uint32_t len)
{
    struct mig_frame h;
    migrate_frame_header(&h, type, 0, len, len, hv_hash64(body, len));
    int rc = chan_write_all(p->ch, &h, sizeof(h));
    if (rc == 0 && len)
        rc = chan_write_all(p->ch, body, len);
    return rc;
}

/* Requests queued by the fault server, and how many background frames
 * have landed (the sender's window), when either has news. */
static int send_requests(struct postcopy_rx *p)
{
    struct {
        struct mig_pc_req h;
        uint64_t v[MIG_PC_REQ_MAX];
    } f;
    pthread_mutex_lock(&p->mu);
    unsigned n = p->nreq < MIG_PC_REQ_MAX ? p->nreq : MIG_PC_REQ_MAX;
    for (unsigned k = 0; k < n; k++)
        f.v[k] = htole64(p->req[k]);
    memmove(p->req, p->req + n, (p->nreq - n) * sizeof(p->req[0]));
    p->nreq -= n;
    p->st.requests += n;
    pthread_mutex_unlock(&p->mu);
    if (!n && p->landed == p->landed_told)
        return 0;
    f.h = (struct mig_pc_req){htole32(n), 0, htole64(p->landed)};
    p->landed_told = p->landed;
    int rc = send_frame(p, MIG_PC_REQ, &f, (uint32_t)(sizeof(f.h) + 8 * n));
    return rc < 0 ? linkfail(p, rc, "post-copy: sending a page request: %s",
                             chan_strerror(p->ch, rc)) : 0;
}

/* A read that failed: tampering (TLS) ends post-copy, anything else is
 * the connection's failure (a new one may take over). */
static int read_failed(struct postcopy_rx *p, struct chan *ch, int rc, const char *what)
{
    const char *why = rc == -ENODATA ? "the sender closed the connection"
                                     : chan_strerror(ch, rc);
    return rc == -EBADMSG ? pcfail(p, rc, "post-copy: %s: %s", what, why)
                          : linkfail(p, rc, "post-copy: %s: %s", what, why);
}

/* One frame (untrusted) from ch into p->buf: 1 with *type and *len, or
 * < 0. */
static int read_frame(struct postcopy_rx *p, struct chan *ch, uint16_t *type, uint32_t *len)
{
    struct mig_frame h;
    size_t got = 0;
    uint64_t by = hv_now_ns() + (uint64_t)p->timeout_ms * 1000000;
    int rc = chan_read_all_by(ch, &h, sizeof(h), &got, by);
    p->st.wire_bytes += got;
    if (rc < 0)
        return read_failed(p, ch, rc, ch == p->pre ? "reading the preempt channel"
                                                   : "reading the connection");
    uint16_t t = le16toh(h.type);
    uint32_t raw = le32toh(h.raw_len), wire = le32toh(h.wire_len);
    uint32_t max = t == MIG_PC_PAGES ? 8 + MIG_PC_PAGES_MAX * (8 + PAGE_SIZE) : MIG_CTRL_MAX;
    if (le32toh(h.magic) != MIG_MAGIC || h.flags || raw != wire ||
        (t != MIG_PC_PAGES && t != MIG_PC_END && t != MIG_ABORT) ||
        (ch == p->pre && t != MIG_PC_PAGES))
        return pcfail(p, -EBADMSG, "post-copy: bad frame after %llu bytes (magic %#x, type %u, "
                      "flags %#x)", (unsigned long long)p->st.wire_bytes, le32toh(h.magic), t,
                      le16toh(h.flags));
    if (raw > max)
        return pcfail(p, -EMSGSIZE, "post-copy: frame of type %u has %u bytes, over the limit "
                      "of %u", t, raw, max);
    rc = chan_read_all_by(ch, p->buf, raw, &got, by);
    p->st.wire_bytes += got;
    if (rc < 0)
        return read_failed(p, ch, rc, "reading a frame body");
    if (hv_hash64(p->buf, raw) != le64toh(h.checksum))
        return pcfail(p, -EBADMSG, "post-copy: frame of type %u failed its checksum", t);
    *type = t;
    *len = raw;
    return 1;
}

static void record_latency(struct postcopy_rx *p, uint64_t ns)
{
    if (p->nlat == p->caplat) {
        size_t n = p->caplat ? 2 * p->caplat : 1024;
        uint64_t *v = realloc(p->lat, n * sizeof(*v));
        if (!v)
            return; /* the statistic only */
        p->lat = v;
        p->caplat = n;
    }
    p->lat[p->nlat++] = ns;
}

/* Write n pages at src to machine frames [mfn, mfn + n), through the
 * memfd rather than a mapping (no page of it is touched from user mode: on
 * a host with shadow paging a first touch costs more than the copy), and
 * move their digest terms from the stale bytes to the new ones. */
static int land_run(struct postcopy_rx *p, const gfn_t *pfns, mfn_t mfn, const uint8_t *src,
                    uint32_t n)
{
    size_t len = (size_t)n << PAGE_SHIFT;
    off_t off = (off_t)machine_offset(mfn);
    ssize_t r = pread(p->m->fd, p->old, len, off);
    if (r == (ssize_t)len)
        r = pwrite(p->m->fd, src, len, off);
    if (r != (ssize_t)len) {
        int e = r < 0 ? errno : EIO;
        return pcfail(p, -e, "post-copy: writing pfn %#llx to its frame: %s",
                      (unsigned long long)pfns[0], strerror(e));
    }
    for (uint32_t k = 0; k < n; k++) {
        size_t o = (size_t)k << PAGE_SHIFT;
        p->digest += stream_digest_term(pfns[k], hv_hash64(src + o, PAGE_SIZE)) -
                     stream_digest_term(pfns[k], hv_hash64(p->old + o, PAGE_SIZE));
    }
    return 0;
}

/* PC_PAGES: every page into its frame, its waiters mapped, whole regions
 * given back. */
static int land_pages(struct postcopy_rx *p, uint32_t len)
{
    struct mig_pc_pages h;
    if (len < sizeof(h))
        return pcfail(p, -EBADMSG, "post-copy: PC_PAGES of %u bytes", len);
    memcpy(&h, p->buf, sizeof(h));
    uint32_t n = le32toh(h.count);
    if (n == 0 || n > MIG_PC_PAGES_MAX || len != 8 + 8ULL * n + PAGE_SIZE * (uint64_t)n)
        return pcfail(p, -EBADMSG, "post-copy: PC_PAGES with count %u in %u bytes", n, len);
    const uint8_t *pfns = p->buf + 8, *data = pfns + 8ULL * n;
    gfn_t pf[MIG_PC_PAGES_MAX];
    mfn_t mf[MIG_PC_PAGES_MAX];
    uint32_t idx[MIG_PC_PAGES_MAX], m = 0;
    uint64_t hvas[MIG_PC_PAGES_MAX * 4];
    unsigned nh = 0;
    uint64_t whole[MIG_PC_PAGES_MAX];
    unsigned nwhole = 0;
    uint64_t ndup = 0;
    char why[160];
    int rc = 0;
    /* which pages are new, and where they go (the bitmaps: `pending` never
     * changes, `missing` only here; d->lock before p->mu, as a soft vCPU
     * waiting in soft_wait holds it: never the other way round) */
    domain_lock(p->d);
    for (uint32_t k = 0; k < n && rc == 0; k++) {
        uint64_t pfn;
        memcpy(&pfn, pfns + 8ULL * k, 8);
        pfn = le64toh(pfn);
        if (pfn >= p->nbits || !tbit(p->pending, pfn)) {
            rc = -EBADMSG;
            snprintf(why, sizeof(why), "post-copy: the sender sent pfn %#llx, which was not "
                     "pending", (unsigned long long)pfn);
            break;
        }
        bool dup = !tbit(p->missing, pfn);
        for (uint32_t i = 0; i < m && !dup; i++)
            dup = pf[i] == pfn;
        if (dup) {
            ndup++; /* the guest may have written it since: keep ours */
            continue;
        }
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(p->d->p2m, pfn, &t, NULL);
        if (!p2m_is_ram(t)) {
            rc = -EIO;
            snprintf(why, sizeof(why), "post-copy: pending pfn %#llx is no longer RAM here",
                     (unsigned long long)pfn);
            break;
        }
        pf[m] = pfn;
        mf[m] = mfn;
        idx[m++] = k;
    }
    domain_unlock(p->d);
    if (rc < 0)
        return pcfail(p, rc, "%s", why);
    pthread_mutex_lock(&p->mu);
    p->st.pages_dup += ndup;
    /* runs of pages that come one after the other and go to consecutive
     * frames: one read of the stale bytes and one write each */
    for (uint32_t i = 0; i < m && rc == 0;) {
        uint32_t k = 1;
        while (i + k < m && mf[i + k] == mf[i] + k && idx[i + k] == idx[i] + k)
            k++;
        pthread_mutex_unlock(&p->mu); /* pcfail takes it */
        rc = land_run(p, pf + i, mf[i], data + ((size_t)idx[i] << PAGE_SHIFT), k);
        pthread_mutex_lock(&p->mu);
        i += k;
    }
    uint64_t now = hv_now_ns();
    for (uint32_t i = 0; i < m && rc == 0; i++) {
        gfn_t pfn = pf[i];
        cbit(p->missing, pfn);
        p->nmissing--;
        if (le32toh(h.urgent))
            p->st.pages_urgent++;
        else
            p->st.pages_pushed++;
        uint64_t reg = pfn / REGION_PAGES;
        if (--p->rmissing[reg] == 0)
            whole[nwhole++] = reg;
        for (size_t w = 0; w < p->nw;) {
            if (p->w[w].gfn != pfn) {
                w++;
                continue;
            }
            if (nh < ARRAY_SIZE(hvas))
                hvas[nh++] = p->w[w].hva;
            record_latency(p, now - p->w[w].t);
            p->w[w] = p->w[--p->nw];
        }
    }
    if (p->nmissing == 0 && !p->t_whole)
        p->t_whole = hv_now_ns();
    if (p->soft && m)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    /* what landed is mapped at once (runs of pfns), not at the vCPUs'
     * next touches: a minor fault per 4K page would cost the guest more
     * than the copy */
    for (uint32_t i = 0; i < m && rc == 0 && !p->soft;) {
        uint32_t k = 1;
        while (i + k < m && pf[i + k] == pf[i] + k)
            k++;
        map_run(p, pf[i], k);
        i += k;
    }
    for (unsigned i = 0; i < nh && !p->soft; i++)
        map_page(p, hvas[i]);
    for (unsigned i = 0; i < nwhole; i++) {
        unregister_region(p, whole[i]);
        p->st.regions_whole++;
    }
    return rc;
}

static int send_done(struct postcopy_rx *p, int status, const char *msg)
{
    struct mig_result r;
    memset(&r, 0, sizeof(r));
    r.status = (int32_t)htole32((uint32_t)status);
    r.verified = htole32(status == 0);
    r.digest = htole64(p->digest);
    r.pages = htole64(p->pages);
    domain_lock(p->d);
    r.pages_1g = htole64(domain_pages_1g(p->d));
    r.pages_2m = htole64(domain_pages_2m(p->d));
    r.pages_4k = htole64(domain_pages_4k(p->d));
    domain_unlock(p->d);
    snprintf(r.msg, sizeof(r.msg), "%.200s", msg ? msg : "");
    return send_frame(p, MIG_PC_DONE, &r, sizeof(r));
}

static void *io_main(void *arg)
{
    struct postcopy_rx *p = arg;
    int rc = 0;
    /* the premap starts here, not in postcopy_rx_start: the guest's
     * start need not wait for one more thread (on 2 busy cores, creating
     * it there cost 1-5 ms of the downtime) */
    if (!p->soft && !p->premap_up &&
        pthread_create(&p->premap_thread, NULL, premap_main, p) == 0)
        p->premap_up = true; /* (without it, touches map the pages one by one) */
    while (rc == 0) {
        rc = send_requests(p);
        if (rc < 0)
            break;
        pthread_mutex_lock(&p->mu);
        bool done = p->end_seen && p->nmissing == 0;
        pthread_mutex_unlock(&p->mu);
        if (done)
            break;
        /* answers on the preempt channel first, then the connection */
        struct chan *from = NULL;
        int in = p->pre ? chan_poll_in(p->pre, 0) : 0;
        if (in > 0)
            from = p->pre;
        else if (in == 0 && (in = chan_poll_in(p->ch, 0)) > 0)
            from = p->ch;
        if (in < 0) {
            rc = linkfail(p, in, "post-copy: %s", chan_strerror(p->ch, in));
            break;
        }
        if (!from) {
            /* wait for the peer or for a request, whichever comes first */
            const unsigned W = 2;
            struct pollfd f[3] = {{p->ch->fd, POLLIN, 0}, {p->pre ? p->pre->fd : -1, POLLIN, 0},
                                  {p->wake_fd, POLLIN, 0}};
            int pr = poll(f, 3, p->timeout_ms);
            if (pr < 0 && errno != EINTR) {
                rc = pcfail(p, -errno, "post-copy: poll: %s", strerror(errno));
                break;
            }
            if (pr == 0) {
                rc = linkfail(p, -ETIMEDOUT, "post-copy: nothing from the sender for %d ms "
                              "with %llu pages missing", p->timeout_ms,
                              (unsigned long long)postcopy_rx_missing(p));
                break;
            }
            if (f[W].revents) {
                uint64_t v;
                (void)!read(p->wake_fd, &v, sizeof(v));
            }
            if (f[1].revents & (POLLIN | POLLHUP | POLLERR))
                from = p->pre;
            else if (f[0].revents & (POLLIN | POLLHUP | POLLERR))
                from = p->ch;
            else
                continue;
        }
        uint16_t t = 0;
        uint32_t len = 0;
        rc = read_frame(p, from, &t, &len);
        if (rc < 0)
            break;
        rc = 0;
        if (t == MIG_PC_PAGES) {
            if (from == p->pre && len >= 8) {
                uint32_t cnt;
                memcpy(&cnt, p->buf, 4);
                p->st.pages_preempt += le32toh(cnt);
            }
            rc = land_pages(p, len);
            if (len >= 8 && !p->buf[4]) /* (urgent is a little-endian u32 at 4) */
                p->landed++;
        } else if (t == MIG_ABORT) {
            rc = pcfail(p, -ECONNABORTED, "post-copy: the sender aborted: %.200s",
                        migrate_reason(p->buf, len, MIG_CTRL_MAX));
        } else if (len != sizeof(p->end) || p->end_seen) {
            rc = pcfail(p, -EBADMSG, "post-copy: PC_END of %u bytes%s", len,
                        p->end_seen ? " (a second one)" : "");
        } else {
            memcpy(&p->end, p->buf, sizeof(p->end));
            pthread_mutex_lock(&p->mu);
            p->end_seen = true;
            uint64_t left = p->nmissing;
            pthread_mutex_unlock(&p->mu);
            /* with a preempt channel the last answers may still be on
             * their way there (two connections keep no order between
             * them): they are waited for, within the timeout */
            if (left && !p->pre)
                rc = pcfail(p, -EPROTO, "post-copy: the sender ended with %llu pending pages "
                            "never sent", (unsigned long long)left);
        }
    }
    if (rc == 0) {
        uint64_t sd = le64toh(p->end.digest), sp = le64toh(p->end.pages);
        if (sd != p->digest || sp != p->pages)
            rc = pcfail(p, -EBADMSG, "post-copy: memory digest mismatch: sender %#llx (%llu "
                        "pages), receiver %#llx (%llu pages)", (unsigned long long)sd,
                        (unsigned long long)sp, (unsigned long long)p->digest,
                        (unsigned long long)p->pages);
        int src = send_done(p, rc, rc ? p->err : NULL);
        if (rc == 0 && src < 0) {
            /* every page is here and checked: the guest is whole and runs
             * on; the sender, without PC_DONE, keeps its copy in doubt */
            pthread_mutex_lock(&p->mu);
            p->done_unsent = true;
            snprintf(p->err, sizeof(p->err), "every page is here, but PC_DONE could not be "
                     "sent (%s): the sender keeps its copy paused in doubt and must discard it",
                     chan_strerror(p->ch, src));
            pthread_mutex_unlock(&p->mu);
        }
    } else if (!p->link_lost) {
        (void)send_done(p, rc, p->err); /* best effort: the link may be gone */
    }
    return NULL;
}

/* ---- set-up and tear-down ----------------------------------------------------------- */

/* The pending runs (ascending, apart) against the leaves, in one walk:
 * every pfn of every run in a RAM leaf, no gap. */
struct ram_check {
    const struct postcopy_run *runs;
    size_t nruns, i; /* the run being checked */
    gfn_t pos;       /* its first pfn not yet seen in a RAM leaf */
    gfn_t bad;       /* a pfn that is not RAM, or INVALID_GFN */
};

static int ram_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                    ept_entry_t *e)
{
    struct ram_check *c = ctx;
    (void)mfn, (void)e;
    gfn_t end = gfn + order_pages(order);
    while (c->i < c->nruns) {
        if (c->pos < gfn || (c->pos < end && !p2m_is_ram(type))) {
            c->bad = c->pos; /* in no leaf, or in one that is not RAM */
            return 1;
        }
        if (c->pos >= end)
            return 0;
        gfn_t run_end = c->runs[c->i].pfn + c->runs[c->i].nr;
        if (run_end > end) {
            c->pos = end;
            return 0;
        }
        if (++c->i < c->nruns)
            c->pos = c->runs[c->i].pfn;
    }
    return 1;
}

struct arm_ctx {
    struct postcopy_rx *p;
    uint64_t reg;
    int rc;
};

/* One RAM leaf piece of a pending region: unmapped, registered, its
 * frames present in the memfd (a minor fault needs a page-cache page). */
static int arm_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                    ept_entry_t *unused)
{
    (void)unused;
    struct arm_ctx *a = ctx;
    struct postcopy_rx *p = a->p;
    if (!p2m_is_ram(type))
        return 0;
    gfn_t lo = a->reg * REGION_PAGES, hi = lo + REGION_PAGES;
    gfn_t s = gfn > lo ? gfn : lo, e = gfn + order_pages(order) < hi ? gfn + order_pages(order) : hi;
    if (s >= e)
        return 0;
    struct guest_exec *x = p->g->x;
    uint64_t hva = x->ops->gfn_hva(x, s), len = (e - s) << PAGE_SHIFT;
    if (hva == 0 || hva == INVALID_GFN || x->ops->hva_gfn(x, hva + len - 1) != e - 1)
        return a->rc = -EINVAL;
    if (p->nranges == p->cap_ranges) {
        size_t n = p->cap_ranges ? 2 * p->cap_ranges : 256;
        struct pc_range *v = realloc(p->ranges, n * sizeof(*v));
        if (!v)
            return a->rc = -ENOMEM;
        p->ranges = v;
        p->cap_ranges = n;
    }
    /* a hole of the memfd is a missing page, not a minor fault, so every
     * range is registered for both: a touch of a hole is caught as missing
     * and the page allocated then (serve_fault).  Which pages are holes is
     * not asked page by page (mincore over a 4 GiB guest's pending
     * regions took 30 ms of the downtime here).  Where shmem THP gives 2M
     * folios, a region with a hole is allocated now through the
     * machine's mapping instead (a region in a hole: one folio, one PMD
     * later); SEEK_HOLE finds it in one call (a 2M folio is one entry of
     * the page cache).  A resident machine has no holes. */
    off_t off = (off_t)machine_offset(mfn + (s - gfn));
    if (!p->m->resident && thp_shmem_usable(p->m->thp) &&
        lseek(p->m->fd, off, SEEK_HOLE) < off + (off_t)len)
        (void)madvise(machine_ptr(p->m, mfn + (s - gfn)), len, MADV_POPULATE_WRITE);
    /* registered and unmapped later, adjacent ranges together (arm_all) */
    p->ranges[p->nranges++] = (struct pc_range){hva, len};
    p->rnr[a->reg]++;
    return 0;
}

/* Register and unmap the ranges: adjacent ones in one call each (in the
 * downtime: a 4 GiB guest has thousands of regions). */
static int arm_all(struct postcopy_rx *p)
{
    for (size_t i = 0; i < p->nranges;) {
        size_t k = i + 1;
        uint64_t end = p->ranges[i].hva + p->ranges[i].len;
        while (k < p->nranges && p->ranges[k].hva == end) {
            end += p->ranges[k].len;
            k++;
        }
        uint64_t len = end - p->ranges[i].hva;
        struct uffdio_register r = {.range = {p->ranges[i].hva, len},
                                    .mode = UFFDIO_REGISTER_MODE_MINOR |
                                            UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(p->uffd, UFFDIO_REGISTER, &r) < 0)
            return -errno; /* (rx_free unregisters what was, region by region) */
        (void)madvise((void *)(uintptr_t)p->ranges[i].hva, len, MADV_DONTNEED);
        i = k;
    }
    return 0;
}

static void rx_free(struct postcopy_rx *p)
{
    if (p->premap_up) {
        __atomic_store_n(&p->premap_stop, 1, __ATOMIC_RELEASE);
        pthread_join(p->premap_thread, NULL);
    }
    if (p->fault_up) {
        uint64_t one = 1;
        (void)!write(p->stop_fd, &one, sizeof(one));
        pthread_join(p->fault_thread, NULL);
    }
    if (p->soft && p->d) {
        /* soft vCPUs waiting for a page that will not come leave first */
        pthread_mutex_lock(&p->mu);
        p->closing = true;
        pthread_cond_broadcast(&p->cv);
        while (p->nsoftwait)
            pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        domain_lock(p->d);
        if (p->d->pc_ctx == p) {
            __atomic_store_n(&p->d->pc_missing, NULL, __ATOMIC_RELEASE);
            p->d->pc_wait = NULL;
            p->d->pc_ctx = NULL;
            p->d->pc_nbits = 0;
        }
        domain_unlock(p->d);
    }
    if (p->uffd >= 0) {
        for (uint64_t r = 0; r < p->nregions; r++)
            if (p->rnr && p->rnr[r])
                unregister_region(p, r);
        close(p->uffd);
    }
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    if (p->stop_fd >= 0)
        close(p->stop_fd);
    if (p->g)
        guest_postcopy_end(p->g);
    chan_close(p->pre);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->missing);
    free(p->pending);
    free(p->requested);
    free(p->rmissing);
    free(p->rfirst);
    free(p->rnr);
    free(p->ranges);
    free(p->w);
    free(p->lat);
    free(p->buf);
    free(p);
}

int postcopy_rx_start(struct guest *g, struct chan *ch, struct chan *pre,
                      const struct postcopy_run *runs, size_t nruns, uint64_t id, uint64_t digest,
                      uint64_t pages, int timeout_ms, struct postcopy_rx **out, char *why,
                      size_t len)
{
    *out = NULL;
    if (g->started) {
        snprintf(why, len, "post-copy must be armed before the guest starts");
        chan_close(pre);
        return -EINVAL;
    }
    struct domain *d = g->d;
    struct postcopy_rx *p = hv_calloc(1, sizeof(*p));
    if (!p) {
        snprintf(why, len, "out of memory");
        chan_close(pre);
        return -ENOMEM;
    }
    p->g = g;
    p->d = d;
    p->m = d->m;
    p->ch = ch;
    p->pre = pre;
    p->uffd = p->wake_fd = p->stop_fd = -1;
    p->timeout_ms = timeout_ms > 0 ? timeout_ms : MIGRATE_DEFAULT_TIMEOUT_MS;
    p->digest = digest;
    p->pages = pages;
    p->id = id;
    p->links = 1;
    p->soft = g->backend == GUEST_BACKEND_SOFT;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    guest_postcopy_begin(g);
    int rc = 0;
    /* the runs: ascending, apart, RAM here, above the system area */
    gfn_t top = 0, low = HVG_SYSTEM_END >> PAGE_SHIFT;
    for (size_t i = 0; i < nruns; i++) {
        gfn_t s = runs[i].pfn;
        uint64_t n = runs[i].nr;
        if (n == 0 || s < low || s < top || n > P2M_GFN_LIMIT || s >= P2M_GFN_LIMIT - n) {
            snprintf(why, len, "pending run %zu (pfn %#llx, %llu pages) is empty, below the "
                     "system area's end, out of order or beyond the pfn limit", i,
                     (unsigned long long)s, (unsigned long long)n);
            rc = -EINVAL;
            goto fail;
        }
        top = s + n;
        p->nmissing += n;
    }
    if (p->nmissing > d->tot_pages) {
        snprintf(why, len, "%llu pending pages, more than the domain's %llu",
                 (unsigned long long)p->nmissing, (unsigned long long)d->tot_pages);
        rc = -EINVAL;
        goto fail;
    }
    p->st.pending = p->nmissing;
    p->nbits = top;
    p->nregions = (top + REGION_PAGES - 1) / REGION_PAGES;
    size_t words = (p->nbits + 63) / 64;
    p->missing = hv_calloc(words ? words : 1, 8);
    p->pending = hv_calloc(words ? words : 1, 8);
    p->requested = hv_calloc(words ? words : 1, 8);
    p->rmissing = hv_calloc(p->nregions ? p->nregions : 1, sizeof(*p->rmissing));
    p->rfirst = hv_calloc(p->nregions ? p->nregions : 1, sizeof(*p->rfirst));
    p->rnr = hv_calloc(p->nregions ? p->nregions : 1, sizeof(*p->rnr));
    p->buf = hv_malloc(8 + MIG_PC_PAGES_MAX * (8 + PAGE_SIZE) + MIG_CTRL_MAX);

    if (!p->missing || !p->pending || !p->requested || !p->rmissing || !p->rfirst || !p->rnr ||
        !p->buf) {
        snprintf(why, len, "out of memory for the post-copy state");
        rc = -ENOMEM;
        goto fail;
    }
    /* every pending pfn is RAM here (checked leaf by leaf, in one walk:
     * this is in the downtime), then the bitmaps and the per-region
     * counts, run by run */
    if (nruns) {
        struct ram_check rcx = {runs, nruns, 0, runs[0].pfn, INVALID_GFN};
        domain_lock(d);
        int wr = p2m_for_each_leaf(d->p2m, runs[0].pfn, top - runs[0].pfn, ram_leaf, &rcx);
        domain_unlock(d);
        if (wr < 0 || rcx.bad != INVALID_GFN || rcx.i < nruns) {
            snprintf(why, len, "pending pfn %#llx is not RAM in the restored domain",
                     (unsigned long long)(rcx.bad != INVALID_GFN ? rcx.bad : rcx.pos));
            rc = -EINVAL;
            goto fail;
        }
    }
    for (size_t i = 0; i < nruns; i++)
        for (gfn_t f = runs[i].pfn, e = runs[i].pfn + runs[i].nr; f < e;) {
            gfn_t reg_end = (f / REGION_PAGES + 1) * REGION_PAGES, to = e < reg_end ? e : reg_end;
            if (p->rmissing[f / REGION_PAGES] == 0)
                p->st.regions++;
            p->rmissing[f / REGION_PAGES] += (uint32_t)(to - f);
            for (; f < to; f++) {
                if (!(f % 64) && to - f >= 64) {
                    p->missing[f / 64] = p->pending[f / 64] = ~0ULL;
                    f += 63;
                    continue;
                }
                sbit(p->missing, f);
                sbit(p->pending, f);
            }
        }
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake_fd < 0 || p->stop_fd < 0) {
        rc = -errno;
        snprintf(why, len, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (p->soft) {
        /* soft vCPUs reach memory through the p2m model: their accesses
         * to missing pages wait in soft_wait (domain.h) */
        domain_lock(d);
        d->pc_nbits = p->nbits;
        d->pc_ctx = p;
        d->pc_wait = soft_wait;
        __atomic_store_n(&d->pc_missing, p->missing, __ATOMIC_RELEASE);
        domain_unlock(d);
        goto threads;
    }
    rc = uffd_open(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_THREAD_ID, &p->uffd);
    if (rc < 0) {
        if (postcopy_probe(why, len) == 0)
            snprintf(why, len, "userfaultfd: %s", strerror(-rc));
        rc = rc == -EINVAL ? -ENOTSUP : rc;
        goto fail;
    }
    /* register every pending region's RAM in the mirror */
    for (uint64_t r = 0; r < p->nregions; r++) {
        if (!p->rmissing[r])
            continue;
        struct arm_ctx a = {p, r, 0};
        p->rfirst[r] = (uint32_t)p->nranges;
        domain_lock(d);
        int wr = p2m_for_each_leaf(d->p2m, r * REGION_PAGES, REGION_PAGES, arm_leaf,
                                   &a);
        domain_unlock(d);
        if (wr < 0 || a.rc < 0) {
            rc = a.rc < 0 ? a.rc : wr;
            snprintf(why, len, "the mirror of pfns %#llx..: %s",
                     (unsigned long long)(r * REGION_PAGES), strerror(-rc));
            goto fail;
        }
    }
    if ((rc = arm_all(p)) < 0) {
        snprintf(why, len, "registering the mirror for minor faults: %s", strerror(-rc));
        goto fail;
    }
    if ((rc = -pthread_create(&p->fault_thread, NULL, fault_main, p)) < 0) {
        snprintf(why, len, "starting the fault server: %s", strerror(-rc));
        goto fail;
    }
    p->fault_up = true;
threads:
    p->zero_hash = stream_zero_page_hash();
    p->t0 = hv_now_ns();
    if ((rc = -pthread_create(&p->io_thread, NULL, io_main, p)) < 0) {
        snprintf(why, len, "starting the post-copy reader: %s", strerror(-rc));
        goto fail;
    }
    p->io_up = true;
    *out = p;
    return 0;
fail:
    rx_free(p);
    return rc;
}

uint64_t postcopy_rx_missing(struct postcopy_rx *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t n = p->nmissing;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void postcopy_rx_stats(struct postcopy_rx *p, struct postcopy_rx_stats *st)
{
    pthread_mutex_lock(&p->mu);
    *st = p->st;
    pthread_mutex_unlock(&p->mu);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int postcopy_rx_wait(struct postcopy_rx *p, struct postcopy_rx_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    if (p->io_up)
        pthread_join(p->io_thread, NULL);
    p->io_up = false;
    pthread_mutex_lock(&p->mu);
    rep->rc = p->rc ? p->rc : p->link_lost ? -ENOTCONN : 0;
    rep->link_lost = !p->rc && p->link_lost;
    snprintf(rep->err, sizeof(rep->err), "%s", p->err);
    rep->st = p->st;
    rep->links = p->links;
    rep->done_unsent = p->done_unsent;
    rep->whole_s = p->t_whole ? (double)(p->t_whole - p->t0) / 1e9 : 0;
    rep->verified = rep->rc == 0;
    rep->digest = p->digest;
    if (p->nlat) {
        uint64_t *v = malloc(p->nlat * sizeof(*v));
        if (v) {
            memcpy(v, p->lat, p->nlat * sizeof(*v));
            qsort(v, p->nlat, sizeof(*v), cmp_u64);
            rep->lat_p50_ns = v[p->nlat / 2];
            rep->lat_p99_ns = v[(p->nlat * 99) / 100];
            rep->lat_max_ns = v[p->nlat - 1];
            free(v);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return rep->rc;
}

uint64_t postcopy_rx_id(const struct postcopy_rx *p) { return p->id; }

int postcopy_rx_resume(struct postcopy_rx *p, struct chan *ch, char *why, size_t len)
{
    if (p->io_up || !p->link_lost || p->rc) {
        snprintf(why, len, "this post-copy migration is not waiting for a connection");
        return -EINVAL;
    }
    /* what is still missing, as the bitmap PC_PENDING carries it, so the
     * sender sends exactly that (pages in flight when the link failed
     * are lost with it) */
    pthread_mutex_lock(&p->mu);
    size_t words = (p->nbits + 63) / 64, lo = 0, hi = words;
    while (lo < hi && !p->missing[lo])
        lo++;
    while (hi > lo && !p->missing[hi - 1])
        hi--;
    size_t cap = sizeof(struct mig_pc_pending) + 8 * MIG_PC_PENDING_MAX_WORDS;
    uint8_t *f = malloc(cap);
    int rc = f ? 0 : -ENOMEM;
    p->ch = ch;
    /* one connection from here on: the answers come on it too */
    chan_close(p->pre);
    p->pre = NULL;
    do {
        size_t n = hi - lo < MIG_PC_PENDING_MAX_WORDS ? hi - lo : MIG_PC_PENDING_MAX_WORDS;
        struct mig_pc_pending h = {htole32((uint32_t)n), htole32(lo + n == hi),
                                   htole64(64ULL * lo), htole64(p->id)};
        if (rc < 0)
            break;
        memcpy(f, &h, sizeof(h));
        for (size_t i = 0; i < n; i++) {
            uint64_t w = htole64(p->missing[lo + i]);
            memcpy(f + sizeof(h) + 8 * i, &w, 8);
        }
        rc = send_frame(p, MIG_PC_PENDING, f, (uint32_t)(sizeof(h) + 8 * n));
        lo += n;
    } while (rc == 0 && lo < hi);
    free(f);
    if (rc == 0) {
        /* requests that went with the old connection: again */
        memset(p->requested, 0, ((p->nbits + 63) / 64) * 8);
        p->nreq = 0;
        for (size_t i = 0; i < p->nw && p->nreq < REQ_QUEUE; i++)
            if (!tbit(p->requested, p->w[i].gfn)) {
                sbit(p->requested, p->w[i].gfn);
                p->req[p->nreq++] = p->w[i].gfn;
            }
        p->landed = p->landed_told = 0;
        p->link_lost = false;
        p->link_rc = 0;
        p->err[0] = 0;
        p->links++;
    }
    pthread_mutex_unlock(&p->mu);
    if (rc < 0) {
        snprintf(why, len, "sending what is still missing: %s", chan_strerror(ch, rc));
        pthread_mutex_lock(&p->mu);
        p->link_lost = true;
        pthread_mutex_unlock(&p->mu);
        return rc;
    }
    if ((rc = -pthread_create(&p->io_thread, NULL, io_main, p)) < 0) {
        snprintf(why, len, "starting the post-copy reader: %s", strerror(-rc));
        return rc;
    }
    p->io_up = true;
    return 0;
}

void postcopy_rx_free(struct postcopy_rx *p)
{
    if (!p)
        return;
    if (p->io_up) {
        pthread_join(p->io_thread, NULL);
        p->io_up = false;
    }
    /* on failure the regions left are given back too: every vCPU waiting
     * in one goes on (on stale memory: the caller stops the guest first) */
    rx_free(p);
}

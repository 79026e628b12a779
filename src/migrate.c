/*
 * migrate.c - live migration: the frame pipeline, the pre-copy sender and
 * the live receiver (protocol and rules: migrate.h; the guest runner is
 * guest.c's).
 *
 * Sender threads: the caller's thread is the migration thread (harvests,
 * reads pages, builds, checksums and compresses frames); a writer thread
 * owns the socket while frames are queued; the guest's runner thread runs
 * vCPU quanta under d->lock.  Frame buffers form a ring of PIPE_BUFS slots:
 * [head, head + count) are sealed and queued (the writer holds `head` until
 * it is written), slot head + count is the one being filled.
 *
 * Invariants: every RAM page is sent in round 0 after log-dirty is on, so
 * a page's last write before the pause is either read by a round or logged
 * and sent by a later one (dirty.h's guarantee); the final round is sent
 * with the guest parked, so the receiver's memory equals the sender's at
 * pause time.
 *
 * The memory map may change while rounds run (balloon, populate, PoD
 * demand populate and zero reclaim; log-dirty splits keep the frames):
 * every such change marks its gfns dirty (dirty.h), so it is sent by the
 * next round.  The migration thread therefore translates each batch of
 * gfns under d->lock, just before reading it: RAM goes as data (or XALLOC
 * when zero), anything else (a hole, a PoD entry) as XTAB, which a live
 * receiver applies (restore.c: the last word about a pfn wins).  PoD
 * entries travel in the tail (HVM_CONTEXT, taken at pause).  The pages of
 * a batch are read after the lock is dropped (the guest must not stall on
 * the socket), so the guest may give a translated frame back before it is
 * read.  Quarantine (domain.h) keeps such a frame from reaching another
 * domain: from before the stream head until the sender is done, the domain
 * parks the frames it frees (still its own, bytes intact), and
 * translate_batch releases them, under d->lock, before it translates the
 * next batch: at that point every page of the earlier batches has been
 * zero-checked and copied into a frame buffer, and the migration thread
 * is the only one that reads guest pages.  So a stale translation reads
 * at worst the domain's own old bytes (or, after a PoD reclaim, another
 * gfn of the same domain); its gfn is dirty by then, the next round (the
 * final one at the latest) sends it again, and those bytes never survive
 * on the receiver.  Nothing of another domain ever goes on the wire.  The
 * quarantine ends (everything released) on every exit of migrate_send.
 * Map changes must stop at the pause like the vCPUs (guest_call).
 */
#include "migrate.h"

#include <endian.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "chan.h"
#include "hash.h"
#include "guest_state.h"
#include "zero.h"

#define PIPE_BUFS 4
#define BATCH 1024u

/* ---- zero pages without reading: holes of the machine memfd ---------------------- */

/* A cached window of the memfd known to be a hole (or one data page).
 * SEEK_DATA from a hole returns the next data offset: one call covers a
 * whole untouched range, so an untouched guest is never read (reading a
 * shmem hole would commit it). */

/* ---- digest ------------------------------------------------------------------------ */

struct digest_ctx {
    struct machine *m;
    struct machine_holes dm;
    uint64_t zero_hash, acc, pages;
    const uint64_t *known; /* pfns below nknown without a bit read as zero */
    gfn_t nknown;
};

static int digest_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                       ept_entry_t *e)
{
    struct digest_ctx *c = ctx;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    for (uint64_t i = 0; i < order_pages(order); i++) {
        gfn_t g = gfn + i;
        bool zero = (c->known && g < c->nknown && !(c->known[g / 64] >> (g % 64) & 1)) ||
                    machine_offset_in_hole(&c->dm, machine_offset(mfn + i));
        uint64_t h = zero ? c->zero_hash : hv_hash64(machine_ptr(c->m, mfn + i), PAGE_SIZE);
        c->acc += stream_digest_term(g, h);
    }
    c->pages += order_pages(order);
    return 0;
}

uint64_t migrate_digest(struct domain *d, uint64_t *pages)
{
    return migrate_digest_known(d, NULL, 0, pages);
}

uint64_t migrate_digest_known(struct domain *d, const uint64_t *data_bits, gfn_t nr,
                              uint64_t *pages)
{
    struct digest_ctx c = {.m = d->m, .known = data_bits, .nknown = nr};
    machine_holes_init(&c.dm, d->m);
    c.zero_hash = stream_zero_page_hash();
    (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, digest_leaf, &c);
    if (pages)
        *pages = c.pages;
    return c.acc;
}

/* ---- end rules ---------------------------------------------------------------------- */

static const char *const end_names[] = {
#define X(name, desc) #name,
    MIGRATE_END_FIELDS(X)
#undef X
};
static const char *const end_descs[] = {
#define X(name, desc) desc,
    MIGRATE_END_FIELDS(X)
#undef X
};
const char *migrate_end_name(enum migrate_end e)
{
    return (unsigned)e < ARRAY_SIZE(end_names) ? end_names[e] : "?";
}
const char *migrate_end_desc(enum migrate_end e)
{
    return (unsigned)e < ARRAY_SIZE(end_descs) ? end_descs[e] : "?";
}

/* ---- frames --------------------------------------------------------------------------- */

void migrate_frame_header(struct mig_frame *h, uint16_t type, uint16_t flags, uint32_t raw_len,
                          uint32_t wire_len, uint64_t sum)
{
    h->magic = htole32(MIG_MAGIC);
    h->type = htole16(type);
    h->flags = htole16(flags);
    h->raw_len = htole32(raw_len);
    h->wire_len = htole32(wire_len);
    h->checksum = htole64(sum);
}

char *migrate_reason(void *buf, size_t len, size_t cap)
{
    char *r = buf;
    r[len < cap ? len : cap - 1] = 0;
    for (char *c = r; *c; c++)
        if (*c < 0x20 || *c > 0x7e)
            *c = '?';
    return r;
}

static const char *frame_name(unsigned t)
{
    static const char *const n[] = {"?",       "HELLO",      "READY",    "DATA",   "DONE",
                                    "RESULT",  "COMMIT",     "ABORT",    "RESUMED",
                                    "PC_PENDING", "PC_PAGES", "PC_REQ", "PC_END", "PC_DONE",
                                    "PC_RESUME",  "SYNC",     "SYNCED"};
    return t < ARRAY_SIZE(n) ? n[t] : "unknown";
}

/* Send one control frame directly (the pipe's writer must be idle). */
static int send_ctrl(struct chan *ch, uint16_t type, const void *body, uint32_t len)
{
    struct mig_frame h;
    migrate_frame_header(&h, type, 0, len, len, XXH3_64bits(body, len));
    int rc = chan_write_all(ch, &h, sizeof(h));
    return rc < 0 || !len ? rc : chan_write_all(ch, body, len);
}

/* The deadline for a whole control frame: the channel's timeout from now
 * (chan_set_timeout), so that a peer trickling bytes cannot stretch it. */
static uint64_t ctrl_deadline(const struct chan *ch)
{
    int ms = ch->timeout_ms > 0 ? ch->timeout_ms : MIGRATE_DEFAULT_TIMEOUT_MS;
    return hv_now_ns() + (uint64_t)ms * 1000000;
}

/*
 * Read one control frame of type `want` with exactly `len` body bytes
 * (untrusted: every field checked), whole within the socket's timeout.  An
 * ABORT frame instead becomes -ECONNABORTED with its reason.  err gets a
 * message on failure.
 */
static int recv_ctrl(struct chan *ch, uint16_t want, void *body, uint32_t len, char *err, size_t errlen,
                     const char *peer)
{
    struct mig_frame h;
    size_t got = 0;
    uint64_t by = ctrl_deadline(ch);
    int rc = chan_read_all_by(ch, &h, sizeof(h), &got, by);
    if (rc < 0) {
        snprintf(err, errlen, "waiting for %s from the %s: %s", frame_name(want), peer,
                 rc == -ENODATA ? "connection closed" : chan_strerror(ch, rc));
        return rc;
    }
    uint16_t type = le16toh(h.type);
    uint32_t raw = le32toh(h.raw_len), wire = le32toh(h.wire_len);
    if (le32toh(h.magic) != MIG_MAGIC) {
        snprintf(err, errlen, "the %s sent a frame with magic %#x (want %#x \"HVMF\"): not a "
                 "hugevm migration peer", peer, le32toh(h.magic), MIG_MAGIC);
        return -EPROTO;
    }
    if (type == MIG_ABORT && raw == wire && raw <= MIG_CTRL_MAX && !h.flags) {
        char msg[MIG_CTRL_MAX + 1];
        rc = chan_read_all_by(ch, msg, raw, NULL, by);
        snprintf(err, errlen, "the %s aborted: %.200s", peer,
                 migrate_reason(msg, rc == 0 ? raw : 0, sizeof(msg)));
        return -ECONNABORTED;
    }
    if (type != want || raw != len || wire != len || h.flags) {
        snprintf(err, errlen, "the %s sent %s frame (type %u, %u/%u bytes, flags %#x) where %s "
                 "of %u bytes belongs", peer, frame_name(type), type, raw, wire,
                 le16toh(h.flags), frame_name(want), len);
        return -EPROTO;
    }
    rc = chan_read_all_by(ch, body, len, NULL, by);
    if (rc < 0) {
        snprintf(err, errlen, "reading %s from the %s: %s", frame_name(want), peer,
                 rc == -ENODATA ? "connection closed" : chan_strerror(ch, rc));
        return rc;
    }
    if (XXH3_64bits(body, len) != le64toh(h.checksum)) {
        snprintf(err, errlen, "%s from the %s: checksum mismatch", frame_name(want), peer);
        return -EBADMSG;
    }
    return 0;
}

/* ---- the sender's frame pipeline ------------------------------------------------------- */

/* Frame buffers keep FBUF_HEAD bytes in front of the payload: the header
 * (and a MIG_F_SEGS frame's page table) is put right before it (raw or
 * zbuf), so a frame is one send, not a 24-byte one and then the payload. */
#define FBUF_HEAD 2048u
_Static_assert(FBUF_HEAD >= sizeof(struct mig_frame) + 4 + 4 * MIG_SEGS_MAX, "FBUF_HEAD");

struct fbuf {
    uint8_t *raw, *zbuf;   /* payloads, FBUF_HEAD bytes into their allocations */
    uint8_t *out;          /* raw, its page table in front of it, or zbuf */
    size_t raw_len, out_len;
    struct mig_frame h;
    uint32_t nseg;         /* pages hashed alone (MIG_F_SEGS), at offsets seg[] */
    uint32_t seg[MIG_SEGS_MAX];
};

/* The sender's pace on the wire (migrate_opts.max_bandwidth): every
 * write, on any channel, takes its bytes' time; a write waits until the
 * writes before it have had theirs, so the wire rate stays at the limit
 * averaged over any frame. */
struct pace {
    pthread_mutex_t mu;
    double ns_per_byte; /* 0: no limit */
    uint64_t next;      /* when the wire is free again (hv_now_ns) */
};

static void pace_take(struct pace *pc, size_t len)
{
    if (!pc || pc->ns_per_byte <= 0)
        return;
    pthread_mutex_lock(&pc->mu);
    uint64_t now = hv_now_ns(), at = pc->next > now ? pc->next : now;
    pc->next = at + (uint64_t)((double)len * pc->ns_per_byte);
    pthread_mutex_unlock(&pc->mu);
    if (at > now) {
        struct timespec ts = {(time_t)((at - now) / 1000000000),
                              (long)((at - now) % 1000000000)};
        nanosleep(&ts, NULL);
    }
}

struct pipe {
    struct chan *ch;
    struct pace *pace;     /* the sender's, or NULL */
    unsigned index;        /* the channel's (0: the first) */
    char who[24];          /* "channel N: " with parallel channels, else "" */
    struct fbuf b[PIPE_BUFS];
    uint8_t *mem;          /* the slots' buffers (hv_big_alloc, mem_len bytes) */
    size_t mem_len, zcap;
    unsigned head, count;  /* queued slots (under mu) */
    unsigned fill;         /* the producer's slot: (head + count) % PIPE_BUFS */
    bool filling;          /* slot `fill` is being filled (producer only) */
    size_t hashed;         /* bytes of slot `fill` in xs already (producer only) */
    XXH3_state_t *xs;      /* checksum of slot `fill`, taken as it is filled */
    bool quit;
    int werr;
    char werr_msg[160];
    uint64_t written, frames;
    uint64_t fail_after;
    bool compress;
    bool segs;             /* pages hashed once (MIG_F_SEGS): the receiver takes them */
    int level;
    ZSTD_CCtx *cctx;
    pthread_t thread;
    bool thread_up;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* The producer checksums a frame in pieces of about this size as it fills
 * it. */
#define PIPE_HASH_PIECE (64u << 10)

static int pipe_send(struct pipe *p, const void *buf, size_t len)
{
    uint64_t written;
    pthread_mutex_lock(&p->mu);
    written = p->written;
    pthread_mutex_unlock(&p->mu);
    if (p->fail_after && written + len >= p->fail_after) {
        size_t n = p->fail_after > written ? (size_t)(p->fail_after - written) : 0;
        if (n && chan_write_all(p->ch, buf, n) == 0)
            written += n;
        chan_cut(p->ch);
        snprintf(p->werr_msg, sizeof(p->werr_msg),
                 "%sconnection cut by fault injection after %llu bytes", p->who,
                 (unsigned long long)p->fail_after);
        pthread_mutex_lock(&p->mu);
        p->written = written;
        pthread_mutex_unlock(&p->mu);
        return -ECONNRESET;
    }
    pace_take(p->pace, len);
    int rc = chan_write_all(p->ch, buf, len);
    if (rc < 0) {
        snprintf(p->werr_msg, sizeof(p->werr_msg), "%swriting to the socket after %llu bytes: "
                 "%s", p->who, (unsigned long long)written, chan_strerror(p->ch, rc));
        return rc;
    }
    pthread_mutex_lock(&p->mu);
    p->written += len;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static void *writer_main(void *arg)
{
    struct pipe *p = arg;
    (void)pthread_setname_np(pthread_self(), "hugevm-send");
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->count && !p->quit)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->count) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        struct fbuf *b = &p->b[p->head];
        int werr = p->werr;
        pthread_mutex_unlock(&p->mu);
        int rc = 0;
        if (!werr) { /* after an error, queued frames are dropped */
            memcpy(b->out - sizeof(b->h), &b->h, sizeof(b->h));
            rc = pipe_send(p, b->out - sizeof(b->h), sizeof(b->h) + b->out_len);
        }
        pthread_mutex_lock(&p->mu);
        if (rc < 0 && !p->werr)
            p->werr = rc;
        if (rc == 0 && !werr)
            p->frames++;
        p->head = (p->head + 1) % PIPE_BUFS;
        p->count--;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

static int pipe_init(struct pipe *p, struct chan *ch, unsigned index, unsigned nch, bool compress,
                     int level, uint64_t fail_after)
{
    memset(p, 0, sizeof(*p));
    p->ch = ch;
    p->index = index;
    if (nch > 1)
        snprintf(p->who, sizeof(p->who), "channel %u: ", index);
    p->compress = compress;
    p->level = level ? level : 1;
    p->fail_after = fail_after;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->zcap = ZSTD_compressBound(MIG_FRAME_RAW);
    /* the slots' buffers in one block (huge pages where they can be: their
     * first fills do not fault 4 KiB at a time, common.h) */
    size_t raw = FBUF_HEAD + MIG_FRAME_RAW, z = compress ? FBUF_HEAD + p->zcap : 0;
    raw = (raw + 63) & ~(size_t)63;
    z = (z + 63) & ~(size_t)63;
    p->mem_len = PIPE_BUFS * (raw + z);
    if (!(p->mem = hv_big_alloc(p->mem_len, true)))
        return -ENOMEM;
    for (unsigned i = 0; i < PIPE_BUFS; i++) {
        p->b[i].raw = p->mem + i * raw + FBUF_HEAD;
        p->b[i].zbuf = compress ? p->mem + PIPE_BUFS * raw + i * z + FBUF_HEAD : NULL;
    }
    if (compress && !(p->cctx = ZSTD_createCCtx()))
        return -ENOMEM;
    if (!(p->xs = XXH3_createState()))
        return -ENOMEM;
    int rc = pthread_create(&p->thread, NULL, writer_main, p);
    if (rc)
        return -rc;
    p->thread_up = true;
    return 0;
}

static void pipe_fini(struct pipe *p)
{
    if (p->thread_up) {
        pthread_mutex_lock(&p->mu);
        p->quit = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    hv_big_free(p->mem, p->mem_len);
    ZSTD_freeCCtx(p->cctx);
    XXH3_freeState(p->xs);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

static struct fbuf *pipe_cur(struct pipe *p) { return &p->b[p->fill]; }

/* Get a slot to fill (waits for the writer).  The writer's error, if any. */
static int pipe_take(struct pipe *p)
{
    if (p->filling)
        return 0;
    pthread_mutex_lock(&p->mu);
    while (p->count == PIPE_BUFS && !p->werr)
        pthread_cond_wait(&p->cv, &p->mu);
    int rc = p->werr;
    pthread_mutex_unlock(&p->mu);
    if (rc)
        return rc;
    p->filling = true;
    pipe_cur(p)->raw_len = 0;
    pipe_cur(p)->nseg = 0;
    p->hashed = 0;
    hv_hash_reset(p->xs);
    return 0;
}

/* Hash what was added to the slot being filled since the last call: while
 * it is still in the cache (a whole 1 MiB frame hashed at seal time came
 * from DRAM). */
static void pipe_hash(struct pipe *p)
{
    struct fbuf *b = pipe_cur(p);
    hv_hash_update(p->xs, b->raw + p->hashed, b->raw_len - p->hashed);
    p->hashed = b->raw_len;
}

/* Checksum, compress and queue the slot being filled.  A frame with pages
 * hashed alone gets its page table in front (MIG_F_SEGS; never
 * compressed: p->segs is off when compressing). */
static int pipe_seal(struct pipe *p, uint16_t type)
{
    struct fbuf *b = pipe_cur(p);
    uint16_t flags = 0;
    pipe_hash(p);
    b->out = b->raw;
    b->out_len = b->raw_len;
    if (b->nseg) {
        uint8_t *t = b->raw - 4 - 4 * (size_t)b->nseg;
        uint32_t v = htole32(b->nseg);
        memcpy(t, &v, 4);
        for (uint32_t i = 0; i < b->nseg; i++) {
            v = htole32(b->seg[i]);
            memcpy(t + 4 + 4 * (size_t)i, &v, 4);
        }
        hv_hash_update(p->xs, t, 4 + 4 * (size_t)b->nseg);
        b->out = t;
        b->out_len += 4 + 4 * (size_t)b->nseg;
        flags = MIG_F_SEGS;
    }
    uint64_t sum = hv_hash_digest(p->xs);
    if (p->compress && type == MIG_DATA && b->raw_len && !b->nseg) {
        size_t z = ZSTD_compressCCtx(p->cctx, b->zbuf, p->zcap, b->raw, b->raw_len, p->level);
        if (!ZSTD_isError(z) && z < b->raw_len) {
            b->out = b->zbuf;
            b->out_len = z;
            flags = MIG_F_ZSTD;
        }
    }
    migrate_frame_header(&b->h, type, flags, (uint32_t)b->raw_len, (uint32_t)b->out_len, sum);
    pthread_mutex_lock(&p->mu);
    p->count++;
    p->fill = (p->fill + 1) % PIPE_BUFS;
    p->filling = false;
    int rc = p->werr;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* Put up to len stream bytes into DATA frames, sealing the frame when it
 * is full: bytes taken (> 0; p->filling is false after a seal) or -errno. */
static long pipe_fill(struct pipe *p, const void *buf, size_t len)
{
    int rc = pipe_take(p);
    if (rc < 0)
        return rc;
    struct fbuf *b = pipe_cur(p);
    size_t n = MIG_FRAME_RAW - b->raw_len;
    if (n > len)
        n = len;
    memcpy(b->raw + b->raw_len, buf, n);
    b->raw_len += n;
    if (b->raw_len - p->hashed >= PIPE_HASH_PIECE)
        pipe_hash(p);
    if (b->raw_len == MIG_FRAME_RAW && (rc = pipe_seal(p, MIG_DATA)) < 0)
        return rc;
    return (long)n;
}

/* One page of the stream into the frame being filled, hashed alone there
 * (MIG_F_SEGS): copied, then its copy hashed (in the cache), so the hash
 * is of the bytes sent whatever the guest does to the page meanwhile; the
 * hash goes into the frame's checksum in the page's place and to *hash.
 * 1: taken; 0: not (no room for a whole page, or p->segs off); -errno. */
static int pipe_page(struct pipe *p, const void *page, uint64_t *hash)
{
    if (!p->segs)
        return 0;
    int rc = pipe_take(p);
    if (rc < 0)
        return rc;
    struct fbuf *b = pipe_cur(p);
    if (MIG_FRAME_RAW - b->raw_len < PAGE_SIZE)
        return 0;
    pipe_hash(p); /* the bytes before it */
    uint8_t *dst = b->raw + b->raw_len;
    memcpy(dst, page, PAGE_SIZE);
    uint64_t h = hv_hash64(dst, PAGE_SIZE), le = htole64(h);
    hv_hash_update(p->xs, &le, sizeof(le));
    b->seg[b->nseg++] = (uint32_t)b->raw_len;
    b->raw_len += PAGE_SIZE;
    p->hashed = b->raw_len;
    *hash = h;
    if (b->raw_len == MIG_FRAME_RAW && (rc = pipe_seal(p, MIG_DATA)) < 0)
        return rc;
    return 1;
}

/* Wait until every queued frame of p is on the socket. */
static int pipe_drain(struct pipe *p)
{
    int rc = p->filling ? pipe_seal(p, MIG_DATA) : 0;
    pthread_mutex_lock(&p->mu);
    while (p->count && !p->werr)
        pthread_cond_wait(&p->cv, &p->mu);
    if (rc == 0)
        rc = p->werr;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static uint64_t pipe_written(struct pipe *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t w = p->written;
    pthread_mutex_unlock(&p->mu);
    return w;
}

/* ---- sender -------------------------------------------------------------------------- */

/* A run of gfns that were RAM when round 0 started. */
struct ram_run {
    gfn_t gfn;
    uint64_t nr;
};

struct sender {
    struct guest *g;
    struct domain *d;
    const struct migrate_opts *o;
    struct migrate_report *rep;
    struct pipe pipe;        /* channel 0's */
    struct pipe *more;       /* channels 1..nch-1's */
    unsigned nch, cur;       /* channels; the one the next frame goes to */
    bool striping;           /* frames dealt in turn (after the handshake, up to DONE) */
    struct pace pace;        /* migrate_opts.max_bandwidth */
    struct stream_io io;
    struct stream_writer w;
    struct machine_holes dm;
    struct ram_run *runs;
    size_t nruns, cap;
    uint64_t *bitmap, *fresh, nr_gfns;
    gfn_t pfn[BATCH];
    mfn_t mfn[BATCH];  /* INVALID_MFN: not RAM when translated (XTAB) */
    uint64_t entries[BATCH];
    const void *data[BATCH];
    gfn_t data_pfn[BATCH];
    unsigned n;
    struct migrate_round *r; /* the round being sent */
    /* The memory digest (stream.h), kept as pages are sent: the term of
     * what was last sent for gfn (0: nothing, or a hole) is
     * term[gfn / 512][gfn % 512], a chunk allocated with its first term
     * (so a guest with RAM high up costs 8 bytes per pointer per 2M of
     * gfn space, like the dirty bitmap, not 8 per gfn); dsum is their
     * sum, dpages how many are not 0.  Every RAM page at the pause was
     * last sent with its bytes at the pause (the dirty log's guarantee),
     * so dsum is the digest of memory at the pause. */
    uint64_t **term, nterm, dsum, dpages, zero_hash;
    struct hv_arena term_arena; /* the chunks of term (hv_big_alloc: no 4 KiB faults) */
    uint8_t *fault_copy;     /* MIGRATE_FAULT_WRONG / _DUP: a page's bytes */
    bool fault_have;         /* _DUP: fault_copy holds the first copy sent */
    /* post-copy: pages left for after the switch (bit set: not sent yet) */
    uint64_t *pending, npending;
    uint64_t *pc_all;     /* the pending set at the switch (what a resume may ask for) */
    uint64_t pc_id;       /* this post-copy migration's id */
    bool pc_link;         /* the last post-copy failure was the connection's */
    char pc_err[200];
    struct chan *pc_ch;   /* a connection made to resume (closed at the end) */
    uint8_t *pc_buf;
    bool pc_restored;     /* migrate_postcopy_serve: no terms, dsum is memory's digest */
    uint8_t *page_copy; /* post-copy possible: a page not hashed in its frame is copied once,
                         * then sent (out_page) */
};

/* ---- the frames' way out: one pipe per channel, frames dealt in turn ------------------ */

static struct pipe *out_pipe(struct sender *s, unsigned i) { return i ? &s->more[i - 1] : &s->pipe; }
static struct pipe *out_cur(struct sender *s) { return out_pipe(s, s->cur); }
static void out_next(struct sender *s)
{
    if (s->striping)
        s->cur = (s->cur + 1) % s->nch;
}

/* stream_io write: the stream's bytes into DATA frames, frame by frame on
 * the channels in turn. */
static int out_write(void *ctx, const void *buf, size_t len)
{
    struct sender *s = ctx;
    const uint8_t *src = buf;
    while (len) {
        struct pipe *p = out_cur(s);
        long n = pipe_fill(p, src, len);
        if (n < 0)
            return (int)n;
        src += n;
        len -= (size_t)n;
        if (!p->filling)
            out_next(s);
    }
    return 0;
}

/* stream_io write_page: a page hashed as it goes out.  In its frame when
 * it fits whole there and the receiver takes page tables (hashed once:
 * digest term and frame checksum, of the bytes sent).  Else written as
 * stream bytes (the frame checksum covers them as sent) and hashed after
 * for the digest: a page the guest changed meanwhile is dirty and goes
 * again, its term replaced; when post-copy may follow it is copied once
 * first and the copy hashed and sent, since a page left for after the
 * switch is not sent again before DONE, whose digest must be exactly what
 * the receiver holds. */
static int out_page(void *ctx, const void *page, uint64_t *hash)
{
    struct sender *s = ctx;
    struct pipe *p = out_cur(s);
    int rc = pipe_page(p, page, hash);
    if (rc < 0)
        return rc;
    if (rc) {
        if (!p->filling)
            out_next(s);
        return 0;
    }
    const uint8_t *src = page;
    if (s->page_copy) {
        memcpy(s->page_copy, page, PAGE_SIZE);
        src = s->page_copy;
    }
    rc = out_write(s, src, PAGE_SIZE);
    *hash = hv_hash64(src, PAGE_SIZE);
    return rc;
}

static int out_flush(void *ctx)
{
    struct sender *s = ctx;
    struct pipe *p = out_cur(s);
    if (!p->filling)
        return 0;
    int rc = pipe_seal(p, MIG_DATA);
    out_next(s);
    return rc;
}

/* A control frame on pipe p (after the data queued on it). */
static int pipe_ctrl(struct pipe *p, uint16_t type, const void *body, uint32_t len)
{
    int rc = pipe_take(p);
    if (rc < 0)
        return rc;
    struct fbuf *b = pipe_cur(p);
    if (len)
        memcpy(b->raw, body, len);
    b->raw_len = len;
    return pipe_seal(p, type);
}

/* Queue a control frame after the data so far, in its turn. */
static int out_ctrl(struct sender *s, uint16_t type, const void *body, uint32_t len)
{
    int rc = out_flush(s);
    if (rc < 0)
        return rc;
    rc = pipe_ctrl(out_cur(s), type, body, len);
    out_next(s);
    return rc;
}

/* Wait until every queued frame is on its socket. */
static int out_drain(struct sender *s)
{
    int rc = out_flush(s);
    for (unsigned i = 0; i < s->nch; i++) {
        int r = pipe_drain(out_pipe(s, i));
        if (rc == 0)
            rc = r;
    }
    return rc;
}

static uint64_t out_written(struct sender *s)
{
    uint64_t w = 0;
    for (unsigned i = 0; i < s->nch; i++)
        w += pipe_written(out_pipe(s, i));
    return w;
}

/* The first channel whose writer failed, or NULL. */
static struct pipe *out_failed(struct sender *s)
{
    for (unsigned i = 0; i < s->nch; i++)
        if (out_pipe(s, i)->werr)
            return out_pipe(s, i);
    return NULL;
}

static int collect_run(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                       ept_entry_t *e)
{
    struct sender *s = ctx;
    (void)e;
    (void)mfn;
    if (!p2m_is_ram(type))
        return 0;
    uint64_t nr = order_pages(order);
    struct ram_run *last = s->nruns ? &s->runs[s->nruns - 1] : NULL;
    if (last && last->gfn + last->nr == gfn) {
        last->nr += nr;
        return 0;
    }
    if (s->nruns == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct ram_run *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        if (s->nruns)
            memcpy(v, s->runs, s->nruns * sizeof(*v));
        free(s->runs);
        s->runs = v;
        s->cap = cap;
    }
    s->runs[s->nruns++] = (struct ram_run){gfn, nr};
    return 0;
}

/* Translate the collected pfns under the current p2m (d->lock: the vCPUs
 * and guest_call change it only under the lock).  The earlier
 * batches are read by now: the frames parked meanwhile are freed first. */
static void translate_batch(struct sender *s)
{
    struct domain *d = s->d;
    domain_lock(d);
    (void)domain_quarantine_release(d);
    for (unsigned k = 0; k < s->n; k++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, s->pfn[k], &t, NULL);
        s->mfn[k] = p2m_is_ram(t) ? mfn : INVALID_MFN;
    }
    domain_unlock(d);
}

/* gfn's digest term is now t (0: none).  -ENOMEM. */
static int term_set(struct sender *s, gfn_t gfn, uint64_t t)
{
    uint64_t c = gfn / 512;
    if (c >= s->nterm) {
        if (!t)
            return 0;
        uint64_t n = s->nterm ? s->nterm : 1024;
        while (n <= c)
            n *= 2;
        uint64_t **v = hv_calloc(n, sizeof(*v));
        if (!v)
            return -ENOMEM;
        if (s->nterm)
            memcpy(v, s->term, s->nterm * sizeof(*v));
        free(s->term);
        s->term = v;
        s->nterm = n;
    }
    if (!s->term[c]) {
        if (!t)
            return 0;
        if (!(s->term[c] = hv_arena_alloc(&s->term_arena, 512 * sizeof(uint64_t))))
            return -ENOMEM;
    }
    uint64_t old = s->term[c][gfn % 512];
    s->dsum += t - old;
    s->dpages += (uint64_t)(t != 0) - (uint64_t)(old != 0);
    s->term[c][gfn % 512] = t;
    return 0;
}

/* The bytes that go on the wire for data page k of the batch (pfn's):
 * the page itself, or under fault injection a changed copy of it. */
static const void *wire_page(struct sender *s, gfn_t pfn, const void *page)
{
    const struct migrate_opts *o = s->o;
    if (pfn != o->fault_gfn || !s->fault_copy)
        return page;
    if (o->fault_page == MIGRATE_FAULT_WRONG) {
        memcpy(s->fault_copy, page, PAGE_SIZE);
        s->fault_copy[PAGE_SIZE / 2] ^= 0x10;
        return s->fault_copy;
    }
    if (o->fault_page == MIGRATE_FAULT_DUP && !s->fault_have) {
        memcpy(s->fault_copy, page, PAGE_SIZE);
        s->fault_have = true;
    }
    return page;
}

/* MIGRATE_FAULT_DUP, at the end of the final round: the first copy of
 * fault_gfn sent again (the digest keeps the term of the last real one). */
static int send_fault_dup(struct sender *s)
{
    if (s->o->fault_page != MIGRATE_FAULT_DUP || !s->fault_have)
        return 0;
    uint64_t e = htole64(stream_pfn_entry(s->o->fault_gfn, STREAM_PAGE_NOTAB));
    struct stream_page_data_header h = {htole32(1), 0};
    int rc = stream_record_begin(&s->w, STREAM_REC_PAGE_DATA, 8 + 8 + PAGE_SIZE);
    if (rc == 0)
        rc = stream_write_part(&s->w, &h, sizeof(h));
    if (rc == 0)
        rc = stream_write_part(&s->w, &e, sizeof(e));
    if (rc == 0)
        rc = stream_write_part(&s->w, s->fault_copy, PAGE_SIZE);
    return rc == 0 ? stream_record_end(&s->w) : rc;
}

/* One PAGE_DATA record for the collected pfns; each page's digest term is
 * taken as it is sent: a data page is hashed right after it was copied
 * into the frame (in cache), a zero page or a hole costs no read. */
static int send_batch(struct sender *s)
{
    struct domain *d = s->d;
    uint32_t ndata = 0;
    translate_batch(s);
    /* The guest writes meanwhile: a hole seen earlier may hold data now.
     * A hole window is trusted for one batch only (a page written after
     * its window was taken is dirty and goes again in the next round); a
     * data window stays data. */
    machine_holes_forget(&s->dm);
    unsigned nent = 0;
    int rc = 0;
    for (unsigned k = 0; k < s->n && rc == 0; k++) {
        gfn_t pfn = s->pfn[k];
        bool drop = s->o->fault_page == MIGRATE_FAULT_DROP && pfn == s->o->fault_gfn &&
                    s->r->paused;
        if (s->mfn[k] == INVALID_MFN) { /* a hole or a PoD entry now */
            if (!drop)
                s->entries[nent++] = htole64(stream_pfn_entry(pfn, STREAM_PAGE_XTAB));
            s->r->pages_xtab++;
            rc = term_set(s, pfn, 0);
            continue;
        }
        const void *ptr = machine_ptr(d->m, s->mfn[k]);
        bool zero = machine_offset_in_hole(&s->dm, machine_offset(s->mfn[k])) || zero_check(ptr, PAGE_SIZE);
        if (zero) {
            s->r->pages_zero++;
            rc = term_set(s, pfn, stream_digest_term(pfn, s->zero_hash));
        } else if (drop) { /* counted as sent, never sent */
            rc = term_set(s, pfn, stream_digest_term(pfn, hv_hash64(ptr, PAGE_SIZE)));
        } else {
            s->data_pfn[ndata] = pfn;
            s->data[ndata++] = ptr;
        }
        if (!drop)
            s->entries[nent++] = htole64(stream_pfn_entry(pfn, zero ? STREAM_PAGE_XALLOC
                                                                   : STREAM_PAGE_NOTAB));
    }
    s->r->pages_data += ndata;
    s->n = 0;
    if (rc < 0 || !nent)
        return rc;
    uint64_t len = 8 + 8ULL * nent + PAGE_SIZE * ndata;
    struct stream_page_data_header h = {htole32(nent), 0};
    uint64_t off0 = s->w.offset;
    rc = stream_record_begin(&s->w, STREAM_REC_PAGE_DATA, (uint32_t)len);
    if (rc == 0)
        rc = stream_write_part(&s->w, &h, sizeof(h));
    if (rc == 0)
        rc = stream_write_part(&s->w, s->entries, 8ULL * nent);
    for (uint32_t k = 0; k < ndata && rc == 0; k++) {
        /* the term of the bytes sent, hashed once as they went into the
         * frame (out_page; a page the guest changes meanwhile is dirty:
         * sent again, term replaced); under fault injection, the term of
         * the page, not of the changed bytes sent */
        const uint8_t *page = s->data[k];
        const void *wire = wire_page(s, s->data_pfn[k], page);
        uint64_t ph = 0;
        if (wire != page) {
            rc = stream_write_part(&s->w, wire, PAGE_SIZE);
            ph = hv_hash64(page, PAGE_SIZE);
        } else {
            rc = stream_write_page(&s->w, page, &ph);
        }
        if (rc == 0)
            rc = term_set(s, s->data_pfn[k], stream_digest_term(s->data_pfn[k], ph));
    }
    if (rc == 0)
        rc = stream_record_end(&s->w);
    s->r->stream_bytes += s->w.offset - off0;
    return rc;
}

static int add_pfn(struct sender *s, gfn_t g)
{
    s->pfn[s->n] = g;
    return ++s->n == BATCH ? send_batch(s) : 0;
}

/* Round 0: every gfn of the runs collected after log-dirty went on. */
static int send_all(struct sender *s)
{
    for (size_t i = 0; i < s->nruns; i++)
        for (uint64_t k = 0; k < s->runs[i].nr; k++) {
            int rc = add_pfn(s, s->runs[i].gfn + k);
            if (rc < 0)
                return rc;
        }
    return s->n ? send_batch(s) : 0;
}

/* Later rounds: every gfn set in bm (whatever it is now). */
static int send_dirty(struct sender *s, const uint64_t *bm)
{
    for (uint64_t w = 0; w < (s->nr_gfns + 63) / 64; w++)
        for (uint64_t b = bm[w]; b; b &= b - 1) {
            int rc = add_pfn(s, w * 64 + (uint64_t)__builtin_ctzll(b));
            if (rc < 0)
                return rc;
        }
    return s->n ? send_batch(s) : 0;
}

/* ---- post-copy, the sending side (postcopy.h has the whole protocol) ---------------- */

HV_PRINTF(3, 4) static int sfail(struct sender *s, int rc, const char *fmt, ...);

struct pc_split_ctx {
    struct sender *s;
    gfn_t low;
};

/* One leaf of the p2m: its dirty pages that were sent before (a term)
 * go to s->pending, a bitmap word at a time (one look at the leaf's type,
 * not a p2m lookup and a term per page: a 4 GiB guest has most of a
 * million of them, in the pause). */
static int pc_split_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                         ept_entry_t *e)
{
    struct pc_split_ctx *c = ctx;
    struct sender *s = c->s;
    (void)mfn, (void)e;
    if (!p2m_is_ram(type))
        return 0;
    gfn_t lo = gfn > c->low ? gfn : c->low, hi = gfn + order_pages(order);
    hi = hi < s->nr_gfns ? hi : s->nr_gfns;
    for (gfn_t w = lo / 64; lo < hi && w <= (hi - 1) / 64; w++) {
        uint64_t mask = ~0ULL;
        if (w * 64 < lo)
            mask &= ~0ULL << (lo % 64);
        if (w * 64 + 64 > hi)
            mask &= ~0ULL >> (64 - hi % 64);
        uint64_t b = s->bitmap[w] & mask, chunk = w / 8, sent = 0;
        if (!b || chunk >= s->nterm || !s->term[chunk])
            continue;
        /* (a word's 64 terms are one run of one chunk's array) */
        const uint64_t *t = s->term[chunk] + (w % 8) * 64;
        for (unsigned i = 0; i < 64; i++)
            sent |= (uint64_t)(t[i] != 0) << i;
        b &= sent;
        s->pending[w] |= b;
        s->bitmap[w] &= ~b;
        s->npending += (uint64_t)__builtin_popcountll(b);
    }
    return 0;
}

/*
 * At the switch, guest paused, dirty set harvested into s->bitmap: the
 * pages that stay for after the switch move from the bitmap to
 * s->pending.  They are RAM now and on the receiver (their last copy
 * went there: a term), above the system area (the program, its stacks,
 * page tables and parameter pages go in the final round: the receiver
 * builds its vCPUs from them).  The rest goes as usual.
 */
static int pc_split(struct sender *s)
{
    size_t words = (s->nr_gfns + 63) / 64;
    s->pending = hv_calloc(words ? words : 1, 8);
    if (!s->pending)
        return -ENOMEM;
    struct pc_split_ctx c = {s, HVG_SYSTEM_END >> PAGE_SHIFT};
    if (s->nr_gfns > c.low) {
        domain_lock(s->d);
        /* (a walk that fails leaves pages in the bitmap: the final round) */
        (void)p2m_for_each_leaf(s->d->p2m, c.low, s->nr_gfns - c.low, pc_split_leaf, &c);
        domain_unlock(s->d);
    }
    s->pc_all = hv_malloc((words ? words : 1) * 8);
    if (!s->pc_all)
        return -ENOMEM;
    memcpy(s->pc_all, s->pending, words * 8);
    /* an id for a connection that resumes this post-copy to name it */
    if (getrandom(&s->pc_id, sizeof(s->pc_id), 0) != sizeof(s->pc_id))
        s->pc_id = hv_now_ns() ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* PC_PENDING frames: the bitmap of pending pfns from its first word
 * with a bit to its last (1 MiB covers 32 GiB of pfns), after END. */
static int pc_send_pending(struct sender *s)
{
    struct mig_pc_pending *h = hv_malloc(MIG_FRAME_RAW);
    if (!h)
        return -ENOMEM;
    size_t words = (s->nr_gfns + 63) / 64, lo = 0, hi = words;
    while (lo < hi && !s->pending[lo])
        lo++;
    while (hi > lo && !s->pending[hi - 1])
        hi--;
    int rc = 0;
    do {
        size_t n = hi - lo < MIG_PC_PENDING_MAX_WORDS ? hi - lo : MIG_PC_PENDING_MAX_WORDS;
        *h = (struct mig_pc_pending){htole32((uint32_t)n), htole32(lo + n == hi),
                                     htole64(64ULL * lo), htole64(s->pc_id)};
        uint64_t *v = (uint64_t *)(h + 1);
        for (size_t i = 0; i < n; i++)
            v[i] = htole64(s->pending[lo + i]);
        rc = out_ctrl(s, MIG_PC_PENDING, h, (uint32_t)(sizeof(*h) + 8 * n));
        lo += n;
    } while (rc == 0 && lo < hi);
    free(h);
    return rc;
}

/* Post-copy requests and background order. */
#define PC_URGENT_MAX 1024u
#define PC_HOT_MAX 16u

struct pc_push {
    gfn_t urgent[PC_URGENT_MAX];
    unsigned nurgent;
    uint64_t hot[PC_HOT_MAX]; /* 2M regions near recent faults, newest last */
    unsigned nhot;
    gfn_t cursor;             /* the sequential background scan */
    uint64_t left;            /* pending pages not sent yet */
    struct mig_result done;
    bool done_seen, end_sent;
    uint64_t bg_sent, landed; /* background frames sent, landed (the window) */
};

/* The connection failed (not the receiver, not the bytes): a resume may
 * go on from here (migrate_opts.pc_reconnect). */
HV_PRINTF(3, 4) static int pc_linkfail(struct sender *s, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->pc_err, sizeof(s->pc_err), fmt, ap);
    va_end(ap);
    s->pc_link = true;
    return rc;
}

static bool pc_is_pending(const struct sender *s, gfn_t g)
{
    return g < s->nr_gfns && (s->pending[g / 64] >> (g % 64) & 1);
}

/* One frame from the receiver (a request, PC_DONE or ABORT), whole by
 * the channel's timeout: 0, or -errno with rep->err. */
static int pc_read(struct sender *s, struct pc_push *q)
{
    struct chan *ch = s->pc_ch ? s->pc_ch : s->pipe.ch;
    struct mig_frame h;
    uint8_t body[MIG_CTRL_MAX + 1];
    uint64_t by = ctrl_deadline(ch);
    int rc = chan_read_all_by(ch, &h, sizeof(h), NULL, by);
    if (rc < 0)
        return pc_linkfail(s, rc, "post-copy: reading from the receiver: %s",
                           rc == -ENODATA ? "connection closed" : chan_strerror(ch, rc));
    uint16_t t = le16toh(h.type);
    uint32_t len = le32toh(h.raw_len);
    if (le32toh(h.magic) != MIG_MAGIC || h.flags || len != le32toh(h.wire_len) ||
        len > MIG_CTRL_MAX || (t != MIG_PC_REQ && t != MIG_PC_DONE && t != MIG_ABORT) ||
        (t == MIG_PC_REQ && (len < sizeof(struct mig_pc_req) || len % 8 ||
                             len > sizeof(struct mig_pc_req) + 8 * MIG_PC_REQ_MAX)) ||
        (t == MIG_PC_DONE && len != sizeof(q->done)))
        return sfail(s, -EPROTO, "post-copy: the receiver sent a bad frame (type %u, %u bytes)",
                     t, len);
    rc = chan_read_all_by(ch, body, len, NULL, by);
    if (rc < 0)
        return pc_linkfail(s, rc, "post-copy: reading from the receiver: %s",
                           rc == -ENODATA ? "connection closed" : chan_strerror(ch, rc));
    if (hv_hash64(body, len) != le64toh(h.checksum))
        return sfail(s, -EBADMSG, "post-copy: a frame from the receiver failed its checksum");
    if (t == MIG_ABORT)
        return sfail(s, -ECONNABORTED, "post-copy: the receiver aborted: %.200s",
                     migrate_reason(body, len, sizeof(body)));
    if (t == MIG_PC_DONE) {
        memcpy(&q->done, body, sizeof(q->done));
        q->done_seen = true;
        return 0;
    }
    struct mig_pc_req rh;
    memcpy(&rh, body, sizeof(rh));
    uint32_t n = le32toh(rh.count);
    uint64_t landed = le64toh(rh.landed);
    if (len != sizeof(rh) + 8ULL * n || landed < q->landed || landed > q->bg_sent)
        return sfail(s, -EPROTO, "post-copy: the receiver sent a bad request (%u pfns in %u "
                     "bytes, %llu frames landed of %llu sent)", n, len,
                     (unsigned long long)landed, (unsigned long long)q->bg_sent);
    q->landed = landed;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t g;
        memcpy(&g, body + sizeof(rh) + 8 * k, 8);
        g = le64toh(g);
        s->rep->pc.requests++;
        if (!pc_is_pending(s, g))
            continue; /* on its way already (or not ours to send: ignored) */
        if (q->nurgent < PC_URGENT_MAX)
            q->urgent[q->nurgent++] = g;
        /* its region goes next in the background (once in the list) */
        uint64_t reg = g / 512;
        unsigned nh = 0;
        for (unsigned i = 0; i < q->nhot; i++)
            if (q->hot[i] != reg)
                q->hot[nh++] = q->hot[i];
        if (nh == PC_HOT_MAX)
            memmove(q->hot, q->hot + 1, (--nh) * sizeof(q->hot[0]));
        q->hot[nh++] = reg;
        q->nhot = nh;
    }
    return 0;
}

/* One PC_PAGES frame of n pfns (pending, distinct), straight to the
 * channel; each page's digest term becomes the one of the bytes sent. */
static int pc_send_pages(struct sender *s, struct pc_push *q, struct chan *ch, const gfn_t *pfns,
                         uint32_t n, bool urgent)
{
    struct domain *d = s->d;
    uint8_t *b = s->pc_buf + sizeof(struct mig_frame);
    struct mig_pc_pages ph = {htole32(n), htole32(urgent)};
    memcpy(b, &ph, sizeof(ph));
    int rc = 0;
    domain_lock(d);
    for (uint32_t k = 0; k < n && rc == 0; k++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, pfns[k], &t, NULL);
        if (!p2m_is_ram(t)) {
            rc = sfail(s, -EIO, "post-copy: pfn %#llx is no longer RAM on the sender",
                       (unsigned long long)pfns[k]);
            break;
        }
        uint64_t e = htole64(pfns[k]);
        memcpy(b + 8 + 8ULL * k, &e, 8);
        uint8_t *dst = b + 8 + 8ULL * n + ((size_t)k << PAGE_SHIFT);
        memcpy(dst, machine_ptr(d->m, mfn), PAGE_SIZE);
        if (!s->pc_restored)
            rc = term_set(s, pfns[k], stream_digest_term(pfns[k], hv_hash64(dst, PAGE_SIZE)));
        s->pending[pfns[k] / 64] &= ~(1ULL << (pfns[k] % 64));
    }
    domain_unlock(d);
    if (rc < 0)
        return rc;
    uint32_t len = 8 + 8 * n + (n << PAGE_SHIFT);
    migrate_frame_header((struct mig_frame *)(void *)s->pc_buf, MIG_PC_PAGES, 0, len, len,
                         hv_hash64(b, len));
    uint64_t before = s->rep->pc.pushed + s->rep->pc.urgent;
    if (s->o->pc_cut_after_pages && before + n > s->o->pc_cut_after_pages &&
        !s->rep->pc.reconnects) {
        chan_cut(ch);
        return pc_linkfail(s, -ECONNRESET, "post-copy: connection cut by fault injection after "
                           "%llu pages", (unsigned long long)before);
    }
    pace_take(&s->pace, sizeof(struct mig_frame) + len);
    rc = chan_write_all(ch, s->pc_buf, sizeof(struct mig_frame) + len);
    if (rc < 0)
        return pc_linkfail(s, rc, "post-copy: sending pages: %s", chan_strerror(ch, rc));
    s->rep->pc.wire_bytes += sizeof(struct mig_frame) + len;
    q->left -= n;
    if (urgent)
        s->rep->pc.urgent += n;
    else
        s->rep->pc.pushed += n;
    return 0;
}

/* The next background pages: what is left of the regions near recent
 * faults first (newest first), then the sequential scan. */
static uint32_t pc_next(struct sender *s, struct pc_push *q, gfn_t *out)
{
    uint32_t n = 0;
    while (q->nhot && n < MIG_PC_BG_PAGES) {
        gfn_t lo = q->hot[q->nhot - 1] * 512;
        for (gfn_t g = lo; g < lo + 512 && n < MIG_PC_BG_PAGES; g++)
            if (pc_is_pending(s, g))
                out[n++] = g;
        if (n < MIG_PC_BG_PAGES)
            q->nhot--; /* that region is all sent */
    }
    for (; q->cursor < s->nr_gfns && n < MIG_PC_BG_PAGES; q->cursor++) {
        if (!(q->cursor % 64) && !s->pending[q->cursor / 64]) {
            q->cursor += 63;
            continue;
        }
        if (pc_is_pending(s, q->cursor)) {
            bool dup = false;
            for (uint32_t k = 0; k < n && !dup; k++)
                dup = out[k] == q->cursor;
            if (!dup)
                out[n++] = q->cursor;
        }
    }
    return n;
}

/*
 * A new connection takes over a post-copy whose connection failed: HELLO
 * with MIG_HELLO_PC_RESUME, READY, PC_RESUME {id}; the receiver answers
 * with what it still misses (PC_PENDING pieces, each naming the id), which
 * becomes the pending set (it must lie within the one at the switch).
 */
static int pc_resume(struct sender *s, struct chan *ch)
{
    struct mig_hello hello = {htole32(MIG_VERSION), htole32(MIG_HELLO_VERIFY |
                                                            MIG_HELLO_POSTCOPY |
                                                            MIG_HELLO_PC_RESUME)};
    int rc = chan_set_timeout(ch, s->o->timeout_ms > 0 ? s->o->timeout_ms
                                                       : MIGRATE_DEFAULT_TIMEOUT_MS);
    if (rc == 0)
        rc = send_ctrl(ch, MIG_HELLO, &hello, sizeof(hello));
    if (rc < 0)
        return pc_linkfail(s, rc, "post-copy resume: sending HELLO: %s", chan_strerror(ch, rc));
    struct mig_hello ready;
    rc = recv_ctrl(ch, MIG_READY, &ready, sizeof(ready), s->pc_err, sizeof(s->pc_err),
                   "receiver");
    if (rc == 0 && !(le32toh(ready.flags) & MIG_HELLO_PC_RESUME))
        rc = -EPROTO;
    if (rc < 0) {
        s->pc_link = true;
        if (rc == -EPROTO)
            snprintf(s->pc_err, sizeof(s->pc_err), "post-copy resume: the receiver does not "
                     "resume post-copy migrations");
        return rc;
    }
    uint64_t id = htole64(s->pc_id);
    rc = send_ctrl(ch, MIG_PC_RESUME, &id, sizeof(id));
    if (rc < 0)
        return pc_linkfail(s, rc, "post-copy resume: sending PC_RESUME: %s",
                           chan_strerror(ch, rc));
    size_t words = (s->nr_gfns + 63) / 64;
    uint64_t *bm = hv_calloc(words ? words : 1, 8), next = 0, n = 0;
    uint8_t *body = hv_malloc(MIG_FRAME_RAW);
    rc = bm && body ? 0 : -ENOMEM;
    for (bool last = false; rc == 0 && !last;) {
        struct mig_frame h;
        uint64_t by = ctrl_deadline(ch);
        rc = chan_read_all_by(ch, &h, sizeof(h), NULL, by);
        uint32_t len = le32toh(h.raw_len);
        if (rc == 0 && le16toh(h.type) == MIG_ABORT && len <= MIG_CTRL_MAX) {
            rc = chan_read_all_by(ch, body, len, NULL, by);
            snprintf(s->pc_err, sizeof(s->pc_err), "post-copy resume: the receiver refused: "
                     "%.150s", migrate_reason(body, rc == 0 ? len : 0, MIG_FRAME_RAW));
            rc = -ECONNABORTED;
            break;
        }
        if (rc == 0 && (le32toh(h.magic) != MIG_MAGIC || le16toh(h.type) != MIG_PC_PENDING ||
                        h.flags || len != le32toh(h.wire_len) || len > MIG_FRAME_RAW ||
                        len < sizeof(struct mig_pc_pending)))
            rc = -EPROTO;
        if (rc == 0)
            rc = chan_read_all_by(ch, body, len, NULL, by);
        if (rc == 0 && hv_hash64(body, len) != le64toh(h.checksum))
            rc = -EBADMSG;
        struct mig_pc_pending ph;
        if (rc == 0) {
            memcpy(&ph, body, sizeof(ph));
            uint64_t first = le64toh(ph.first_pfn), nw = le32toh(ph.nr_words);
            last = le32toh(ph.last) != 0;
            if (len != sizeof(ph) + 8 * nw || first % 64 || first < next ||
                first / 64 + nw > words || le64toh(ph.id) != s->pc_id)
                rc = -EPROTO;
            for (uint64_t w = 0; rc == 0 && w < nw; w++) {
                uint64_t v;
                memcpy(&v, body + sizeof(ph) + 8 * w, 8);
                v = le64toh(v);
                if (v & ~s->pc_all[first / 64 + w])
                    rc = -EPROTO; /* never pending: not the receiver's to ask */
                bm[first / 64 + w] = v;
                n += (uint64_t)__builtin_popcountll(v);
            }
            next = first + 64 * nw;
        }
    }
    if (rc == 0) {
        memcpy(s->pending, bm, words * 8);
        s->npending = n;
    } else if (rc != -ECONNABORTED) {
        bool proto = rc == -EPROTO || rc == -EBADMSG;
        snprintf(s->pc_err, sizeof(s->pc_err), "post-copy resume: %s",
                 proto ? "the receiver's list of missing pages is malformed or names pages "
                         "never pending"
                       : chan_strerror(ch, rc));
        s->pc_link = !proto;
    }
    free(bm);
    free(body);
    return rc;
}

/*
 * After RESUMED: every pending page goes, answers to requests first (each
 * between two background frames, at most MIG_PC_WINDOW of which are ever
 * unlanded), then PC_END with the digest of every page at the pause, then
 * PC_DONE must come back with the same digest.  A connection that fails
 * meanwhile is replaced (migrate_opts.pc_reconnect) until pc_recover_ms
 * have passed since it failed: the receiver says what it still misses and
 * everything goes on.
 */
static int pc_push_all(struct sender *s, struct pc_push *q)
{
    struct chan *ch = s->pc_ch ? s->pc_ch : s->pipe.ch;
    int rc = 0;
    gfn_t pick[MIG_PC_PAGES_MAX];
    while (rc == 0 && !q->done_seen) {
        /* what the receiver asked for meanwhile; block only when everything
         * is sent or the window is full */
        bool full = q->bg_sent - q->landed >= MIG_PC_WINDOW && !q->nurgent;
        int in = chan_poll_in(ch, q->end_sent || full ? ch->timeout_ms : 0);
        if (in < 0)
            return pc_linkfail(s, in, "post-copy: %s", chan_strerror(ch, in));
        if (in > 0) {
            rc = pc_read(s, q);
            continue;
        }
        if (q->end_sent || full)
            return pc_linkfail(s, -ETIMEDOUT, "post-copy: no word from the receiver in %d ms "
                               "%s", ch->timeout_ms,
                               q->end_sent ? "after PC_END" : "(frames not landed)");
        uint32_t n = 0;
        while (q->nurgent && n < MIG_PC_PAGES_MAX) {
            gfn_t g = q->urgent[--q->nurgent];
            bool dup = false;
            for (uint32_t k = 0; k < n && !dup; k++)
                dup = pick[k] == g;
            if (!dup && pc_is_pending(s, g))
                pick[n++] = g;
        }
        if (n) {
            /* answers on the preempt channel (channel 1 of several, until
             * a connection had to be replaced): no background page
             * queued on channel 0 is in their way */
            struct chan *uch = !s->pc_ch && s->nch > 1 ? s->more[0].ch : ch;
            rc = pc_send_pages(s, q, uch, pick, n, true);
            continue;
        }
        n = pc_next(s, q, pick);
        if (n) {
            rc = pc_send_pages(s, q, ch, pick, n, false);
            q->bg_sent++;
            continue;
        }
        struct mig_pc_end e = {htole64(s->dsum), htole64(s->dpages),
                               htole64(s->rep->pc.pushed), htole64(s->rep->pc.urgent)};
        rc = send_ctrl(ch, MIG_PC_END, &e, sizeof(e));
        if (rc < 0)
            return pc_linkfail(s, rc, "post-copy: sending PC_END: %s", chan_strerror(ch, rc));
        q->end_sent = true;
    }
    return rc;
}

static int pc_run(struct sender *s)
{
    struct pc_push *q = hv_calloc(1, sizeof(*q));
    s->pc_buf = hv_malloc(sizeof(struct mig_frame) + 8 + MIG_PC_PAGES_MAX * (8 + PAGE_SIZE));
    if (!q || !s->pc_buf) {
        free(q);
        return sfail(s, -ENOMEM, "post-copy: out of memory");
    }
    q->left = s->npending;
    int rc;
    for (;;) {
        s->pc_link = false;
        rc = pc_push_all(s, q);
        if (rc == 0 || !s->pc_link || !s->o->pc_reconnect)
            break;
        /* the connection failed: the receiver keeps its guest, waiting;
         * connect again until pc_recover_ms have passed */
        uint64_t by = hv_now_ns() + (uint64_t)(s->o->pc_recover_ms > 0 ? s->o->pc_recover_ms
                                                                        : 60000) * 1000000;
        char first[sizeof(s->pc_err)];
        snprintf(first, sizeof(first), "%s", s->pc_err);
        bool resumed = false;
        while (!resumed && hv_now_ns() < by) {
            if (s->pc_ch)
                chan_close(s->pc_ch);
            s->pc_ch = s->o->pc_reconnect(s->o->pc_ctx, s->pc_err, sizeof(s->pc_err));
            s->rep->pc.reconnect_attempts++;
            if (s->pc_ch) {
                s->pc_link = false;
                rc = pc_resume(s, s->pc_ch);
                if (rc == 0) {
                    resumed = true;
                    break;
                }
                if (!s->pc_link)
                    break; /* refused or malformed: no point in trying again */
            }
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (!resumed) {
            size_t l = strlen(first);
            snprintf(first + l, sizeof(first) - l, "; no resume: %.80s", s->pc_err);
            snprintf(s->pc_err, sizeof(s->pc_err), "%s", first);
            rc = rc < 0 ? rc : -ENOTCONN;
            break;
        }
        s->rep->pc.reconnects++;
        /* the receiver's list is the pending set now; the window starts
         * again, requests went with the old connection */
        q->left = s->npending;
        q->nurgent = q->nhot = 0;
        q->cursor = 0;
        q->bg_sent = q->landed = 0;
        q->end_sent = false;
    }
    if (rc < 0 && s->pc_link)
        rc = sfail(s, rc, "%s", s->pc_err);
    if (rc == 0) {
        struct mig_result *r = &q->done;
        r->msg[sizeof(r->msg) - 1] = 0;
        int32_t status = (int32_t)le32toh((uint32_t)r->status);
        s->rep->receiver = (struct migrate_leaves){le64toh(r->pages_1g), le64toh(r->pages_2m),
                                                   le64toh(r->pages_4k)};
        s->rep->digest_receiver = le64toh(r->digest);
        if (status < 0)
            rc = sfail(s, status > -4096 ? status : -EPROTO, "post-copy: the receiver failed: "
                       "%s", r->msg);
        else if (q->left)
            rc = sfail(s, -EPROTO, "post-copy: the receiver said done with %llu pages unsent",
                       (unsigned long long)q->left);
        else if (s->rep->digest_receiver != s->dsum || le64toh(r->pages) != s->dpages)
            rc = sfail(s, -EBADMSG, "post-copy: memory digest mismatch: sender %#llx (%llu "
                       "pages), receiver %#llx (%llu pages)", (unsigned long long)s->dsum,
                       (unsigned long long)s->dpages,
                       (unsigned long long)s->rep->digest_receiver,
                       (unsigned long long)le64toh(r->pages));
        s->rep->digest_sender = s->dsum;
    }
    free(q);
    return rc;
}

static uint64_t bm_count(const uint64_t *bm, uint64_t nr_gfns)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < (nr_gfns + 63) / 64; i++)
        n += (uint64_t)__builtin_popcountll(bm[i]);
    return n;
}

/* Size the bitmaps for the log's current coverage (it grows when RAM is
 * populated above it during the migration), keeping what s->bitmap holds.
 * -ENOMEM. */
static int bitmaps_fit(struct sender *s)
{
    domain_lock(s->d);
    domain_unlock(s->d);
    uint64_t nr = guest_dirty_gfns(s->g);
    if (nr <= s->nr_gfns && s->bitmap)
        return 0;
    size_t words = (nr + 63) / 64 + 1, old = s->bitmap ? (s->nr_gfns + 63) / 64 : 0;
    uint64_t *b = hv_calloc(words, 8), *f = hv_calloc(words, 8);
    if (!b || !f) {
        free(b);
        free(f);
        return -ENOMEM;
    }
    if (old)
        memcpy(b, s->bitmap, old * 8);
    free(s->bitmap);
    free(s->fresh);
    s->bitmap = b;
    s->fresh = f;
    s->nr_gfns = nr;
    return 0;
}

/* Harvest and OR into s->bitmap (pages still to send: the final harvest
 * adds to what the last pre-copy harvest found); a lost log (-ENOMEM)
 * means every page is dirty.  *dirty: pages now pending. */
static int harvest(struct sender *s, uint64_t *dirty)
{
    int rc;
    for (unsigned tries = 0;; tries++) {
        rc = guest_harvest(s->g, s->fresh, s->nr_gfns, NULL);
        if (rc != -EINVAL || tries == 8 || !guest_log_dirty_on(s->g))
            break;
        rc = bitmaps_fit(s); /* the log grew since: RAM populated above it */
        if (rc < 0)
            return rc;
    }
    size_t words = (s->nr_gfns + 63) / 64;
    if (rc == -ENOMEM) {
        memset(s->fresh, 0xff, words * 8);
        rc = 0;
    }
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < words; i++)
        s->bitmap[i] |= s->fresh[i];
    *dirty = bm_count(s->bitmap, s->nr_gfns);
    return 0;
}

static void leaves_now(struct domain *d, struct migrate_leaves *l)
{
    l->p1g = domain_pages_1g(d);
    l->p2m = domain_pages_2m(d);
    l->p4k = domain_pages_4k(d);
}

/* After a failure: if the writer is gone, look for a RESULT the receiver
 * sent before closing, for a better reason. */
static void peek_result(struct sender *s)
{
    if (chan_poll_in(s->pipe.ch, 200) != 1)
        return;
    struct mig_result res;
    char err[STREAM_ERR_LEN];
    int rc = recv_ctrl(s->pipe.ch, MIG_RESULT, &res, sizeof(res), err, sizeof(err), "receiver");
    size_t l = strlen(s->rep->err);
    if (rc == 0 && (int32_t)le32toh((uint32_t)res.status) < 0) {
        res.msg[sizeof(res.msg) - 1] = 0;
        snprintf(s->rep->err + l, sizeof(s->rep->err) - l, "; the receiver said: %s", res.msg);
    } else if (rc < 0 && strstr(err, "aborted")) {
        /* an ABORT with its reason (a busy receiver turns senders away so) */
        snprintf(s->rep->err + l, sizeof(s->rep->err) - l, "; %.200s", err);
    }
}

HV_PRINTF(3, 4) static int sfail(struct sender *s, int rc, const char *fmt, ...)
{
    if (s->rep->err[0])
        return rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->rep->err, sizeof(s->rep->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* Close a round: drain, measure. */
static int end_round(struct sender *s, uint64_t t0, uint64_t wire0)
{
    int rc = out_drain(s);
    struct migrate_round *r = s->r;
    r->ns = hv_now_ns() - t0;
    r->wire_bytes = out_written(s) - wire0;
    r->mb_per_s = r->ns ? (double)r->wire_bytes * 1e3 / (double)r->ns : 0;
    s->rep->st.pages_data += r->pages_data;
    s->rep->st.pages_zero += r->pages_zero;
    s->rep->st.pages_xtab += r->pages_xtab;
    s->rep->st.stream_bytes += r->stream_bytes;
    return rc;
}

struct hello_ch {
    struct mig_hello h;
    struct mig_hello_channels c;
};

/* SYNC, then wait for SYNCED: every byte sent so far is in the receiver.
 * The tag is the SYNC's number (one per migration). */
static int catch_up(struct sender *s, double *secs)
{
    uint64_t t0 = hv_now_ns(), tag = htole64(1), back = 0;
    int rc = out_ctrl(s, MIG_SYNC, &tag, sizeof(tag));
    if (rc == 0)
        rc = out_drain(s);
    if (rc < 0) {
        struct pipe *f = out_failed(s);
        return sfail(s, rc, "sending SYNC: %s", f ? f->werr_msg : strerror(-rc));
    }
    rc = recv_ctrl(s->pipe.ch, MIG_SYNCED, &back, sizeof(back), s->rep->err,
                   sizeof(s->rep->err), "receiver");
    if (rc == 0 && back != tag)
        rc = sfail(s, -EPROTO, "the receiver's SYNCED names another SYNC");
    *secs = (double)(hv_now_ns() - t0) / 1e9;
    return rc;
}

/* Open channels 1..want-1 (the receiver took them): each connection gets
 * its pipe, then its own HELLO {index, token} and the receiver's READY. */
static int open_channels(struct sender *s, unsigned want, uint64_t token, int timeout)
{
    const struct migrate_opts *o = s->o;
    if (!(s->more = hv_calloc(want - 1, sizeof(*s->more))))
        return sfail(s, -ENOMEM, "out of memory for %u channels", want);
    for (unsigned i = 1; i < want; i++) {
        char err[STREAM_ERR_LEN / 2] = "";
        struct chan *c = o->open_channel(o->open_ctx, err, sizeof(err));
        if (!c)
            return sfail(s, -ECONNREFUSED, "opening channel %u of %u: %s", i, want,
                         err[0] ? err : "failed");
        struct pipe *p = &s->more[i - 1];
        int rc = chan_set_timeout(c, timeout);
        if (rc < 0) {
            chan_close(c);
            return sfail(s, rc, "channel %u: %s", i, strerror(-rc));
        }
        rc = pipe_init(p, c, i, want, o->compress, o->zstd_level,
                       o->fail_channel == i ? o->fail_after_bytes : 0);
        p->pace = &s->pace;
        s->nch = i + 1; /* p is torn down with the others from here on */
        if (rc < 0)
            return sfail(s, rc, "channel %u: setting up: %s", i, strerror(-rc));
        struct hello_ch hello = {{htole32(MIG_VERSION), htole32(MIG_HELLO_CHANNELS)},
                                 {htole32(want), htole32(i), htole64(token)}};
        struct mig_hello ready;
        rc = pipe_ctrl(p, MIG_HELLO, &hello, sizeof(hello));
        if (rc == 0)
            rc = pipe_drain(p);
        if (rc < 0)
            return sfail(s, rc, "channel %u: sending HELLO: %s", i, p->werr_msg);
        rc = recv_ctrl(c, MIG_READY, &ready, sizeof(ready), err, sizeof(err), "receiver");
        if (rc == 0 && (le32toh(ready.version) != MIG_VERSION ||
                        !(le32toh(ready.flags) & MIG_HELLO_CHANNELS)))
            return sfail(s, -EPROTO, "channel %u: the receiver's READY (version %u, flags %#x) "
                         "does not take it", i, le32toh(ready.version), le32toh(ready.flags));
        if (rc < 0)
            return sfail(s, rc, "channel %u: %s", i, err);
    }
    return 0;
}

/* A sender of d (rep cleared): NULL with rep->rc and rep->err when out of
 * memory.  *o becomes the defaults when NULL. */
static struct sender *sender_new(struct domain *d, const struct migrate_opts **o,
                                 struct migrate_report *rep)
{
    static const struct migrate_opts defaults;
    struct sender *s = hv_calloc(1, sizeof(*s));
    memset(rep, 0, sizeof(*rep));
    if (!s) {
        snprintf(rep->err, sizeof(rep->err), "out of memory");
        rep->rc = -ENOMEM;
        return NULL;
    }
    *o = *o ? *o : &defaults;
    s->d = d;
    s->o = *o;
    s->rep = rep;
    pthread_mutex_init(&s->pace.mu, NULL);
    s->pace.ns_per_byte = (*o)->max_bandwidth > 0 ? 1e9 / (*o)->max_bandwidth : 0;
    return s;
}

/* Post-copy's part of the sender, and the sender. */
static void sender_free(struct sender *s)
{
    free(s->pending);
    free(s->pc_all);
    if (s->pc_ch)
        chan_close(s->pc_ch);
    free(s->pc_buf);
    pthread_mutex_destroy(&s->pace.mu);
    free(s);
}

int migrate_send(struct guest *g, struct chan *ch, const struct migrate_opts *o,
                 struct migrate_report *rep)
{
    struct sender *s = sender_new(g->d, &o, rep);
    if (!s)
        return rep->rc;
    s->g = g;
    struct domain *d = g->d;
    double downtime_ms = o->downtime_ms > 0 ? o->downtime_ms : MIGRATE_DEFAULT_DOWNTIME_MS;
    unsigned max_rounds = o->max_rounds ? o->max_rounds : MIGRATE_DEFAULT_ROUNDS;
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : MIGRATE_DEFAULT_TIMEOUT_MS;
    if (max_rounds > MIGRATE_MAX_ROUNDS)
        max_rounds = MIGRATE_MAX_ROUNDS;
    uint64_t t0 = hv_now_ns(), t_pause = 0, acc0 = guest_accesses(g), parked0 = 0;
    bool paused = false, committed = false, quarantined = false, in_doubt = false;
    struct hvctx_buf tl = {0};
    int rc;

    bool may_pc = o->postcopy || o->postcopy_auto;
    if (may_pc && g->backend == GUEST_BACKEND_SOFT && d->pod.entry_count) {
        /* a soft vCPU's PoD fault may sweep for zero pages, and on the
         * receiver a stale page left for later may read as zero */
        rc = sfail(s, -ENOTSUP, "post-copy of soft vCPUs over PoD memory is not supported (%llu "
                   "PoD pages): use pre-copy, or a kvm or native guest",
                   (unsigned long long)d->pod.entry_count);
        goto out;
    }
    domain_lock(d);
    bool crashed = d->crashed;
    leaves_now(d, &rep->before);
    domain_unlock(d);
    if (crashed || dirty_enabled(d)) {
        rc = sfail(s, crashed ? -ESRCH : -EBUSY, "%s",
                   crashed ? "the domain has crashed" : "log-dirty is already on");
        goto out;
    }
    rep->dirty_source = guest_dirty_source(g);
    if ((rc = guest_can_migrate(g, rep->err, sizeof(rep->err))) < 0)
        goto out;
    unsigned want = o->channels > 1 ? o->channels : 1;
    if (want > MIG_MAX_CHANNELS || (want > 1 && !o->open_channel)) {
        rc = want > MIG_MAX_CHANNELS
                 ? sfail(s, -EINVAL, "%u channels: at most %u", want, MIG_MAX_CHANNELS)
                 : sfail(s, -EINVAL, "%u channels: no way to open more than one", want);
        goto out;
    }
    rc = chan_set_timeout(ch, timeout);
    if (rc == 0) {
        s->nch = 1;
        rc = pipe_init(&s->pipe, ch, 0, want, o->compress, o->zstd_level,
                       o->fail_channel == 0 ? o->fail_after_bytes : 0);
        s->pipe.pace = &s->pace;
    }
    if (rc < 0) {
        rc = sfail(s, rc, "setting up the connection: %s", strerror(-rc));
        goto out;
    }
    s->zero_hash = stream_zero_page_hash();
    if (o->fault_page != MIGRATE_FAULT_NONE && !(s->fault_copy = hv_malloc(PAGE_SIZE))) {
        rc = sfail(s, -ENOMEM, "out of memory");
        goto out;
    }
    s->io = (struct stream_io){.write = out_write, .flush = out_flush, .write_page = out_page,
                               .ctx = s};
    stream_writer_init(&s->w, &s->io);
    machine_holes_init(&s->dm, d->m);

    /* handshake */
    if (may_pc && !(s->page_copy = hv_malloc(PAGE_SIZE))) {
        rc = sfail(s, -ENOMEM, "out of memory");
        goto out;
    }
    uint64_t token = 0;
    if (want > 1 && getrandom(&token, sizeof(token), 0) != sizeof(token)) {
        rc = sfail(s, -EIO, "no random token for the channels: %s", strerror(errno));
        goto out;
    }
    struct hello_ch hello = {
        {htole32(MIG_VERSION), htole32(MIG_HELLO_VERIFY | MIG_HELLO_SYNC |
                                        (o->whole_frame_sums ? 0 : MIG_HELLO_SEGS) |
                                        (may_pc ? MIG_HELLO_POSTCOPY : 0) |
                                        (want > 1 ? MIG_HELLO_CHANNELS : 0))},
        {htole32(want), 0, htole64(token)}};
    rc = out_ctrl(s, MIG_HELLO, &hello, want > 1 ? sizeof(hello) : sizeof(hello.h));
    if (rc == 0)
        rc = out_drain(s);
    if (rc < 0) {
        rc = sfail(s, rc, "sending HELLO: %s", s->pipe.werr_msg);
        peek_result(s); /* a busy receiver said why before it closed */
        goto out;
    }
    struct mig_hello ready;
    rc = recv_ctrl(ch, MIG_READY, &ready, sizeof(ready), rep->err, sizeof(rep->err), "receiver");
    if (rc == 0 && le32toh(ready.version) != MIG_VERSION)
        rc = sfail(s, -EPROTONOSUPPORT, "the receiver speaks migration version %u, not %u",
                   le32toh(ready.version), MIG_VERSION);
    if (rc == 0 && may_pc && !(le32toh(ready.flags) & MIG_HELLO_POSTCOPY))
        rc = sfail(s, -EPROTONOSUPPORT, "the receiver does not accept post-copy migrations");
    if (rc == 0 && want > 1) {
        if (le32toh(ready.flags) & MIG_HELLO_CHANNELS)
            rc = open_channels(s, want, token, timeout);
        else
            snprintf(rep->channels_why, sizeof(rep->channels_why), "%u asked for; the receiver "
                     "takes one", want);
    }
    if (rc < 0)
        goto out;
    bool sync = le32toh(ready.flags) & MIG_HELLO_SYNC;
    /* pages hashed once where the receiver takes it (not under zstd,
     * which compresses the frame as a whole) */
    for (unsigned i = 0; i < s->nch; i++)
        out_pipe(s, i)->segs = !o->whole_frame_sums && !out_pipe(s, i)->compress &&
                               (le32toh(ready.flags) & MIG_HELLO_SEGS);
    rep->channels = s->nch;
    s->striping = true;
    if (o->inject_len && (rc = out_write(s, o->inject, o->inject_len)) < 0)
        goto wfail;

    /* static part (the guest as it starts: its PoD entries travel again in
     * the tail), then log-dirty on, then round 0 over the RAM present once
     * log-dirty is on (what changes later is marked and sent later); from
     * here until the end, frames the guest frees are parked (quarantine) */
    struct save_result sres;
    domain_lock(d);
    domain_quarantine_begin(d);
    quarantined = true;
    parked0 = d->quarantine.parked;
    rc = stream_save_head(d, &s->w, false, &sres, rep->err, sizeof(rep->err));
    domain_unlock(d);
    if (rc < 0) {
        if (out_failed(s))
            goto wfail;
        rc = sfail(s, rc, "writing the stream head: %s", strerror(-rc));
        goto out;
    }
    rc = guest_log_dirty_enable(g, o->mode, rep->err, sizeof(rep->err));
    if (rc < 0)
        goto out;
    domain_lock(d);
    rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, collect_run, s);
    domain_unlock(d);
    if (rc == 0)
        rc = bitmaps_fit(s);
    if (rc < 0) {
        rc = sfail(s, rc, "out of memory for the RAM runs and the dirty bitmap");
        goto out;
    }
    for (size_t i = 0; i < s->nruns; i++)
        rep->st.pages_ram += s->runs[i].nr;

    double link = 0;          /* bytes/s */
    uint64_t prev_dirty = UINT64_MAX, last_harvest = hv_now_ns();
    for (unsigned k = 0;; k++) {
        s->r = &rep->rounds[rep->nr_rounds++];
        s->r->index = k;
        uint64_t rt = hv_now_ns(), w0 = out_written(s);
        rc = k ? send_dirty(s, s->bitmap) : send_all(s);
        if (rc == 0)
            rc = end_round(s, rt, w0);
        if (rc < 0)
            goto wfail;
        memset(s->bitmap, 0, (s->nr_gfns + 63) / 64 * 8);
        if (s->r->wire_bytes >= MiB || link == 0)
            link = s->r->ns ? (double)s->r->wire_bytes * 1e9 / (double)s->r->ns : 0;
        uint64_t dirty = 0;
        rc = harvest(s, &dirty);
        if (rc < 0) {
            rc = sfail(s, rc, "harvesting the dirty log: %s", strerror(-rc));
            goto out;
        }
        uint64_t now = hv_now_ns();
        s->r->dirty_per_s = (double)dirty * 1e9 / (double)(now - last_harvest);
        last_harvest = now;
        s->r->remaining = dirty;
        /* wire bytes per dirty page: a data page with its entry, compressed
         * as the stream has been so far */
        double ratio = rep->st.stream_bytes ? (double)(out_written(s)) /
                                                  (double)rep->st.stream_bytes
                                            : 1.0;
        double per_page = (PAGE_SIZE + 8) * (ratio < 1 ? ratio : 1);
        s->r->eta_s = link > 0 ? (double)dirty * per_page / link : 0;
        if (o->on_round)
            o->on_round(o->ctx, s->r);
        unsigned pc_rounds = o->precopy_rounds ? o->precopy_rounds : 1;
        if (o->postcopy && k + 1 >= pc_rounds)
            rep->end = MIGRATE_END_postcopy;
        else if (s->r->eta_s * 1e3 <= downtime_ms)
            rep->end = MIGRATE_END_downtime;
        else if (k >= max_rounds)
            rep->end = MIGRATE_END_max_rounds;
        else if (k >= 1 && (double)dirty >= 0.9 * (double)prev_dirty)
            rep->end = MIGRATE_END_not_falling;
        if (rep->end != MIGRATE_END_none)
            break;
        prev_dirty = dirty;
    }

    /* the receiver takes in what is on its way while the guest runs on,
     * not while it is paused */
    if (sync && (rc = catch_up(s, &rep->catch_up_s)) < 0)
        goto out;

    /* stop and copy */
    guest_pause(g);
    paused = true;
    t_pause = hv_now_ns();
    if (g->exited && g->err) {
        rc = sfail(s, g->err, "the guest stopped on an error: %s", strerror(-g->err));
        goto out;
    }
    if (g->fault_claimed) {
        rc = sfail(s, g->err ? g->err : -EIO, "the guest failed: %s", g->fault.what);
        goto out;
    }
    uint64_t dirty;
    rc = harvest(s, &dirty);
    if (rc < 0) {
        rc = sfail(s, rc, "harvesting the dirty log: %s", strerror(-rc));
        goto out;
    }
    leaves_now(d, &rep->logdirty);
    if (o->on_paused)
        o->on_paused(o->ctx, d);
    if (o->postcopy || (o->postcopy_auto && rep->end != MIGRATE_END_downtime)) {
        rc = pc_split(s);
        if (rc < 0) {
            rc = sfail(s, rc, "out of memory for the post-copy set");
            goto out;
        }
        rep->postcopy = s->npending > 0;
        rep->postcopy_why = !rep->postcopy ? "nothing left for post-copy at the switch"
                            : o->postcopy ? "asked for (--postcopy)"
                                          : migrate_end_desc(rep->end);
        rep->pc.pending = s->npending;
    }
    s->r = &rep->rounds[rep->nr_rounds++];
    s->r->index = rep->nr_rounds - 1;
    s->r->paused = true;
    uint64_t rt = hv_now_ns(), w0 = out_written(s);
    rc = send_dirty(s, s->bitmap);
    if (rc == 0)
        rc = send_fault_dup(s);
    if (rc == 0) {
        rc = hvctx_begin(&tl);
        if (rc == 0)
            rc = guest_encode(g, &tl);
        if (rc < 0) {
            rc = sfail(s, rc, "encoding the vCPU state: %s", strerror(-rc));
            goto out;
        }
        uint64_t off0 = s->w.offset;
        rc = stream_save_tail(d, &s->w, tl.p + sizeof(struct hvctx_header),
                              tl.len - sizeof(struct hvctx_header), rep->err, sizeof(rep->err));
        s->r->stream_bytes += s->w.offset - off0;
    }
    if (rc == 0 && may_pc)
        rc = s->pending ? pc_send_pending(s) : out_ctrl(s, MIG_PC_PENDING,
                                                        &(struct mig_pc_pending){0, htole32(1), 0, 0},
                                                        sizeof(struct mig_pc_pending));
    if (rc == 0)
        rc = end_round(s, rt, w0);
    if (rc < 0)
        goto wfail;
    /* the digest was kept page by page as they were sent (nothing to read
     * here); the audit reads all of memory to check that (post-copy: the
     * pages left for later count with the terms of their last copies,
     * which is what the receiver holds of them) */
    uint64_t td = hv_now_ns(), pages = s->dpages;
    struct mig_done done = {0};
    rep->digest_sender = s->dsum;
    if (o->audit_digest && !rep->postcopy) {
        uint64_t apages = 0, a = migrate_digest(d, &apages);
        if (a != s->dsum || apages != s->dpages) {
            rc = sfail(s, -EBADMSG, "digest audit: memory at the pause has digest %#llx (%llu "
                       "pages), the pages sent add up to %#llx (%llu pages)",
                       (unsigned long long)a, (unsigned long long)apages,
                       (unsigned long long)s->dsum, (unsigned long long)s->dpages);
            goto out;
        }
    }
    done.digest = htole64(rep->digest_sender);
    done.pages = htole64(pages);
    done.verify = htole32(1);
    rep->digest_s = (double)(hv_now_ns() - td) / 1e9;
    rc = out_ctrl(s, MIG_DONE, &done, sizeof(done));
    if (rc == 0)
        rc = out_drain(s);
    if (rc < 0)
        goto wfail;
    /* everything from here on goes on the first channel */
    s->striping = false;
    s->cur = 0;
    struct mig_result res;
    rc = recv_ctrl(ch, MIG_RESULT, &res, sizeof(res), rep->err, sizeof(rep->err), "receiver");
    if (rc < 0)
        goto out;
    res.msg[sizeof(res.msg) - 1] = 0;
    int32_t status = (int32_t)le32toh((uint32_t)res.status);
    if (status < 0) {
        rc = sfail(s, status > -4096 ? status : -EPROTO, "the receiver failed: %s", res.msg);
        goto out;
    }
    rep->receiver = (struct migrate_leaves){le64toh(res.pages_1g), le64toh(res.pages_2m),
                                            le64toh(res.pages_4k)};
    rep->digest_receiver = le64toh(res.digest);
    if (!le32toh(res.verified) || rep->digest_receiver != rep->digest_sender ||
        le64toh(res.pages) != pages) {
        rc = sfail(s, -EBADMSG, "memory digest mismatch: sender %#llx (%llu pages), "
                   "receiver %#llx (%llu pages)", (unsigned long long)rep->digest_sender,
                   (unsigned long long)pages, (unsigned long long)rep->digest_receiver,
                   (unsigned long long)le64toh(res.pages));
        goto out;
    }
    rep->verified = true;
    /* COMMIT: a write that fails leaves part of it at most on the wire
     * (the receiver cannot act on it); once it is whole on the socket, the
     * receiver may run the guest, so from then on this copy never runs
     * again: it is destroyed after RESUMED, or kept paused in doubt. */
    if (o->cut_before_commit) {
        chan_cut(ch);
        rc = sfail(s, -ECONNRESET, "connection cut by fault injection before COMMIT");
        goto out;
    }
    rc = out_ctrl(s, MIG_COMMIT, NULL, 0);
    if (rc == 0)
        rc = out_drain(s);
    if (rc < 0)
        goto wfail;
    in_doubt = true;
    rep->downtime_s = (double)(hv_now_ns() - t_pause) / 1e9;
    char rerr[STREAM_ERR_LEN / 2], none[1];
    if (o->cut_after_commit) {
        /* a RESUMED already in the socket would still be read: do not */
        chan_cut(ch);
        snprintf(rerr, sizeof(rerr), "connection cut by fault injection after COMMIT");
        rc = -ECONNRESET;
    } else {
        rc = recv_ctrl(ch, MIG_RESUMED, none, 0, rerr, sizeof(rerr), "receiver");
    }
    if (rc < 0) {
        snprintf(rep->err, sizeof(rep->err), "IN DOUBT: COMMIT was sent but RESUMED did not "
                 "arrive (%.120s): the receiver may be running the guest; this copy is kept "
                 "paused, neither resumed nor destroyed", rerr);
        rc = -EINPROGRESS;
        goto out;
    }
    in_doubt = false;
    if (rep->postcopy) {
        /* the guest runs on the receiver now, missing the pending pages:
         * this copy holds them until PC_DONE */
        uint64_t tp = hv_now_ns();
        rc = pc_run(s);
        rep->pc.seconds = (double)(hv_now_ns() - tp) / 1e9;
        if (rc < 0) {
            size_t l = strlen(rep->err);
            snprintf(rep->err + l, sizeof(rep->err) - l, "; post-copy failed after the switch: "
                     "the guest runs on the receiver without all of its memory, this copy is "
                     "kept paused (in doubt)");
            in_doubt = true;
            goto out;
        }
        if (o->audit_digest) {
            uint64_t apages = 0, a = migrate_digest(d, &apages);
            if (a != s->dsum || apages != s->dpages) {
                rc = sfail(s, -EBADMSG, "digest audit after post-copy: memory has digest %#llx "
                           "(%llu pages), the pages sent add up to %#llx (%llu pages)",
                           (unsigned long long)a, (unsigned long long)apages,
                           (unsigned long long)s->dsum, (unsigned long long)s->dpages);
                in_doubt = true;
                goto out;
            }
        }
    }
    committed = true;
    goto out;

wfail:
    if (out_failed(s)) {
        struct pipe *f = out_failed(s);
        rc = sfail(s, f->werr, "%s", f->werr_msg);
        /* the receiver's reason comes on the first channel, read only
         * once its writer is idle */
        if (f == &s->pipe || pipe_drain(&s->pipe) == 0)
            peek_result(s);
    } else {
        rc = sfail(s, rc, "writing the stream: %s", strerror(-rc));
    }
out:
    if (!committed && !in_doubt) {
        /* tell the receiver why, best effort (bounded by the socket
         * timeout): on every channel while frames are dealt in turn (it
         * may be waiting on any of them) */
        for (unsigned i = 0; i < (s->striping ? s->nch : 1); i++) {
            struct pipe *p = out_pipe(s, i);
            if (i < s->nch && p->thread_up && !p->werr && pipe_drain(p) == 0 &&
                pipe_ctrl(p, MIG_ABORT, rep->err, (uint32_t)strnlen(rep->err, 200)) == 0)
                (void)pipe_drain(p);
        }
    }
    rep->st.wire_bytes = out_written(s);
    for (unsigned i = 0; i < s->nch; i++) {
        struct pipe *p = out_pipe(s, i);
        rep->channel_bytes[i] = pipe_written(p);
        rep->st.frames += p->frames;
        if (p->thread_up || p->b[0].raw)
            pipe_fini(p);
        if (i)
            chan_close(p->ch);
    }
    free(s->more);
    if (quarantined) {
        /* no page is read any more: free what is parked, park no more */
        domain_lock(d);
        rep->st.pages_parked = d->quarantine.parked - parked0;
        domain_quarantine_end(d);
        domain_unlock(d);
    }
    if (dirty_enabled(d)) {
        /* committed: the copy is about to be destroyed, but log-dirty must
         * not outlive the migration either way */
        if (!paused)
            guest_pause(g);
        if (guest_log_dirty_disable(g) < 0 && !committed && !rep->err[0])
            snprintf(rep->err, sizeof(rep->err), "disabling log-dirty failed");
        if (!paused)
            guest_resume(g);
    }
    if (!committed) {
        leaves_now(d, &rep->after_abort);
        if (paused && !in_doubt)
            guest_resume(g);
        if (rc == 0)
            rc = -EIO;
    }
    if (in_doubt && rep->postcopy && s->pc_all && o->pc_doubt) {
        /* what a saved copy needs to finish the migration later */
        struct migrate_pc_state st = {.id = s->pc_id, .nr_gfns = s->nr_gfns,
                                      .pending = s->pc_all};
        st.digest = migrate_digest(d, &st.pages);
        o->pc_doubt(o->pc_doubt_ctx, &st);
    }
    rep->in_doubt = in_doubt;
    rep->rc = committed ? 0 : rc;
    rep->total_s = (double)(hv_now_ns() - t0) / 1e9;
    rep->st.guest_accesses = guest_accesses(g) - acc0;
    hvctx_free(&tl);
    free(s->runs);
    free(s->bitmap);
    free(s->fresh);
    hv_arena_free(&s->term_arena);
    free(s->term);
    free(s->fault_copy);
    free(s->page_copy);
    sender_free(s);
    return rep->rc;
}

/* ---- post-copy in doubt, finished from a saved copy ---------------------------------- */

int migrate_pc_state_encode(const struct migrate_pc_state *st, struct hvctx_buf *b)
{
    size_t words = (st->nr_gfns + 63) / 64, lo = 0, hi = words;
    while (lo < hi && !st->pending[lo])
        lo++;
    while (hi > lo && !st->pending[hi - 1])
        hi--;
    if (hi - lo > (UINT32_MAX - sizeof(struct hvctx_postcopy)) / 8)
        return -EINVAL;
    size_t len = sizeof(struct hvctx_postcopy) + 8 * (hi - lo);
    uint8_t *v = hv_malloc(len);
    if (!v)
        return -ENOMEM;
    struct hvctx_postcopy h = {htole64(st->id), htole64(st->digest), htole64(st->pages),
                               htole64(lo), htole32((uint32_t)(hi - lo)), 0};
    memcpy(v, &h, sizeof(h));
    for (size_t w = lo; w < hi; w++) {
        uint64_t x = htole64(st->pending[w]);
        memcpy(v + sizeof(h) + 8 * (w - lo), &x, 8);
    }
    int rc = hvctx_add(b, HVCTX_POSTCOPY, 0, v, (uint32_t)len);
    free(v);
    return rc;
}

uint64_t migrate_pc_state_pending(const struct migrate_pc_state *st)
{
    return bm_count(st->pending, st->nr_gfns);
}

void migrate_pc_state_free(struct migrate_pc_state *st)
{
    free(st->pending);
    memset(st, 0, sizeof(*st));
}

static int top_ram_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                        ept_entry_t *e)
{
    (void)mfn, (void)e;
    if (p2m_is_ram(type))
        *(gfn_t *)ctx = gfn + order_pages(order);
    return 0;
}

int migrate_pc_state_decode(const void *area, size_t len, struct domain *d,
                            struct migrate_pc_state *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    for (size_t pos = 0;;) {
        struct hvctx_tlv t;
        const uint8_t *val;
        size_t at = pos;
        int more = hvctx_area_next(area, len, &pos, &t, &val, err, errlen);
        if (more < 0)
            goto bad;
        if (!more)
            break;
        if (t.type != HVCTX_POSTCOPY)
            continue;
        struct hvctx_postcopy h;
        uint32_t tl = t.length;
        if (st->pending) {
            snprintf(err, errlen, "HVM_CONTEXT: a second POSTCOPY TLV at %zu", at);
            goto bad;
        }
        if (tl < sizeof(h)) {
            snprintf(err, errlen, "HVM_CONTEXT: POSTCOPY TLV at %zu of %u bytes (at least %zu)",
                     at, tl, sizeof(h));
            goto bad;
        }
        memcpy(&h, val, sizeof(h));
        uint64_t first = le64toh(h.first_word), nw = le32toh(h.nr_words);
        /* the domain's RAM bounds the bitmap (not the file's say-so);
         * without one, the TLV does (at most its own length) */
        gfn_t top = 0;
        if (d)
            (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, top_ram_leaf, &top);
        else if (first <= P2M_GFN_LIMIT / 64 && nw <= P2M_GFN_LIMIT / 64 - first)
            top = 64 * (first + nw);
        size_t words = (top + 63) / 64;
        if (tl != sizeof(h) + 8 * nw || h.reserved || first > words || nw > words - first) {
            snprintf(err, errlen, "HVM_CONTEXT: POSTCOPY TLV at %zu: %llu words from word %llu in "
                     "%u bytes, reserved %u: malformed or beyond the domain's RAM (%llu words)",
                     at, (unsigned long long)nw, (unsigned long long)first, tl,
                     le32toh(h.reserved), (unsigned long long)words);
            goto bad;
        }
        st->pending = hv_calloc(words ? words : 1, 8);
        if (!st->pending) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        st->id = le64toh(h.id);
        st->digest = le64toh(h.digest);
        st->pages = le64toh(h.pages);
        st->nr_gfns = top;
        for (uint64_t w = 0; w < nw; w++) {
            uint64_t x;
            memcpy(&x, val + sizeof(h) + 8 * w, 8);
            st->pending[first + w] = le64toh(x);
        }
        /* each pending pfn RAM of d above the system area */
        if (!d)
            continue;
        domain_lock(d);
        for (uint64_t w = first; w < first + nw; w++)
            for (uint64_t b = st->pending[w]; b; b &= b - 1) {
                gfn_t g = 64 * w + (gfn_t)__builtin_ctzll(b);
                enum p2m_type ty;
                (void)p2m_get_entry(d->p2m, g, &ty, NULL);
                if (g < (HVG_SYSTEM_END >> PAGE_SHIFT) || !p2m_is_ram(ty)) {
                    domain_unlock(d);
                    snprintf(err, errlen, "HVM_CONTEXT: POSTCOPY TLV: pfn %#llx is pending but %s",
                             (unsigned long long)g, p2m_is_ram(ty) ? "in the system area"
                                                                  : "not RAM of the copy");
                    goto bad;
                }
            }
        domain_unlock(d);
    }
    return st->pending ? 1 : 0;
bad:
    migrate_pc_state_free(st);
    return -EBADMSG;
}

int migrate_postcopy_serve(struct domain *d, struct chan *ch, const struct migrate_pc_state *st,
                           const struct migrate_opts *o, struct migrate_report *rep)
{
    struct sender *s = sender_new(d, &o, rep);
    if (!s)
        return rep->rc;
    uint64_t t0 = hv_now_ns();
    s->pipe.ch = ch; /* the caller's: never closed here */
    s->nch = 1;
    s->pc_restored = true;
    s->pc_id = st->id;
    s->nr_gfns = st->nr_gfns;
    rep->end = MIGRATE_END_postcopy;
    rep->postcopy = true;
    rep->postcopy_why = "resumed from the sender's saved copy";
    rep->channels = 1;
    leaves_now(d, &rep->before);
    size_t words = (st->nr_gfns + 63) / 64;
    int rc;
    s->pending = hv_calloc(words ? words : 1, 8);
    s->pc_all = hv_malloc((words ? words : 1) * 8);
    if (!s->pending || !s->pc_all) {
        rc = sfail(s, -ENOMEM, "out of memory");
        goto out;
    }
    memcpy(s->pc_all, st->pending, words * 8);
    rep->pc.pending = bm_count(st->pending, st->nr_gfns);
    /* the copy must be the memory at the switch: the receiver's digest
     * is built on it, page by page */
    uint64_t t1 = hv_now_ns();
    s->dsum = migrate_digest(d, &s->dpages);
    rep->digest_s = (double)(hv_now_ns() - t1) / 1e9;
    if (s->dsum != st->digest || s->dpages != st->pages) {
        rc = sfail(s, -EBADMSG, "the restored copy is not the memory paused at the switch: "
                   "digest %#llx (%llu pages), the switch's %#llx (%llu pages)",
                   (unsigned long long)s->dsum, (unsigned long long)s->dpages,
                   (unsigned long long)st->digest, (unsigned long long)st->pages);
        goto out;
    }
    rc = pc_resume(s, ch);
    if (rc < 0) {
        rc = sfail(s, rc, "%s", s->pc_err);
        goto out;
    }
    rc = pc_run(s);
    rep->pc.seconds = (double)(hv_now_ns() - t1) / 1e9;
    rep->verified = rc == 0;
out:
    rep->rc = rc;
    rep->total_s = (double)(hv_now_ns() - t0) / 1e9;
    rep->st.wire_bytes = rep->pc.wire_bytes;
    rep->channel_bytes[0] = rep->pc.wire_bytes;
    sender_free(s);
    return rc;
}

/* ---- receiver ------------------------------------------------------------------------ */

/*
 * A DATA frame over RX_STAGE_MAX bytes that is not compressed is streamed:
 * its header is read, then its payload goes from the socket straight into
 * the buffers stream_restore reads into (for a data run, the restore's copy
 * buffer), without a staging copy; small reads go through a RX_CHUNK piece
 * of x->raw.  The checksum is computed as the bytes arrive and checked when
 * the frame's last byte is in, before any later frame is read: a bad frame
 * fails the migration (stream_restore then destroys its domain), only
 * later.  Smaller frames, compressed frames and control frames are read
 * whole and checked first.
 */
#define RX_STAGE_MAX (64u << 10)
#define RX_CHUNK 4096u

/*
 * A frame's checksum, taken as its bytes land (in the cache), in either
 * scheme: the raw bytes in order, or with a page table (MIG_F_SEGS) each
 * page hashed alone and its hash taken in its place, the table last.  The
 * pages' hashes are kept: the memory digest takes them (rx_page_hash)
 * instead of hashing the pages again.
 */
struct fsum {
    XXH3_state_t *xs, *ps;   /* the frame's; a page that lands in two reads */
    uint32_t n, i;           /* pages in the table; the next one to finish */
    size_t pos;              /* frame bytes taken so far */
    uint32_t off[MIG_SEGS_MAX];
    uint64_t ph[MIG_SEGS_MAX]; /* hashes of pages [0, i) */
    uint8_t table[4 + 4 * MIG_SEGS_MAX]; /* as sent */
};

static int fsum_init(struct fsum *f)
{
    f->xs = XXH3_createState();
    f->ps = XXH3_createState();
    return f->xs && f->ps ? 0 : -ENOMEM;
}

static void fsum_fini(struct fsum *f)
{
    XXH3_freeState(f->xs);
    XXH3_freeState(f->ps);
}

static void fsum_start(struct fsum *f)
{
    hv_hash_reset(f->xs);
    f->n = f->i = 0;
    f->pos = 0;
}

/* The page table of a MIG_F_SEGS frame of raw bytes (untrusted: tlen bytes
 * at t, tlen = wire_len - raw_len, which frame_check bounded): 0, or
 * -EBADMSG with err naming the entry. */
static int fsum_table(struct fsum *f, const uint8_t *t, size_t tlen, uint32_t raw,
                      const char *who, uint64_t at, char *err, size_t errlen)
{
    uint32_t n;
    memcpy(&n, t, 4);
    n = le32toh(n);
    if ((size_t)n != (tlen - 4) / 4) {
        snprintf(err, errlen, "%sDATA frame at byte offset %llu: page table of %u pages in "
                 "%zu bytes", who, (unsigned long long)at, n, tlen);
        return -EBADMSG;
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t o;
        memcpy(&o, t + 4 + 4 * (size_t)k, 4);
        o = le32toh(o);
        if ((k && o - f->off[k - 1] < PAGE_SIZE) || (k && o < f->off[k - 1]) ||
            o > raw - PAGE_SIZE) {
            snprintf(err, errlen, "%sDATA frame at byte offset %llu: page table entry %u "
                     "(offset %u) overlaps the one before or ends past the %u raw bytes", who,
                     (unsigned long long)at, k, o, raw);
            return -EBADMSG;
        }
        f->off[k] = o;
    }
    memcpy(f->table, t, tlen);
    f->n = n;
    return 0;
}

/* The frame's next len bytes, at p. */
static void fsum_add(struct fsum *f, const uint8_t *p, size_t len)
{
    while (len) {
        size_t k = len;
        if (f->i < f->n && f->pos >= f->off[f->i]) { /* inside page i */
            size_t in = f->pos - f->off[f->i];
            if (k > PAGE_SIZE - in)
                k = PAGE_SIZE - in;
            bool done = in + k == PAGE_SIZE;
            uint64_t h = 0;
            if (!in && done) {
                h = hv_hash64(p, PAGE_SIZE);
            } else {
                if (!in)
                    hv_hash_reset(f->ps);
                hv_hash_update(f->ps, p, k);
                if (done)
                    h = hv_hash_digest(f->ps);
            }
            if (done) {
                uint64_t le = htole64(h);
                hv_hash_update(f->xs, &le, sizeof(le));
                f->ph[f->i++] = h;
            }
        } else {
            if (f->i < f->n && f->off[f->i] - f->pos < k)
                k = f->off[f->i] - f->pos;
            hv_hash_update(f->xs, p, k);
        }
        p += k;
        len -= k;
        f->pos += k;
    }
}

static uint64_t fsum_end(struct fsum *f)
{
    if (f->n)
        hv_hash_update(f->xs, f->table, 4 + 4 * (size_t)f->n);
    return hv_hash_digest(f->xs);
}

/* Page hashes kept for the digest: the last RX_RING pages hashed alone,
 * by stream offset (ascending). */
#define RX_RING 512u

struct lane;
struct rx {
    struct chan *ch;
    const uint8_t *data; /* the current frame's bytes: raw, or a lane's slot */
    uint64_t by;         /* the current frame's deadline (hv_now_ns) */
    uint64_t end_by;     /* the migration's deadline */
    int frame_ms;        /* a frame's time (the handshake's for HELLO) */
    const char *phase;   /* "handshake" or "frame", for timeout messages */
    uint8_t *raw, *wire;
    size_t len, pos, wcap;
    size_t avail;        /* frame bytes [pos, avail) are in x->raw */
    size_t stage0;       /* the frame byte x->raw[0] holds */
    size_t left;         /* streamed frame: payload bytes still on the socket */
    uint64_t sum, at;    /* streamed frame: expected checksum, its offset */
    struct fsum fs;      /* channel 0's frame checksum */
    uint32_t pushed;     /* pages of fs already in the ring */
    uint64_t sbase, snext; /* stream offsets of the DATA frame's first byte, of the next's */
    struct {
        uint64_t off, h;
    } ring[RX_RING];
    uint64_t rn;         /* pages ever put in the ring */
    ZSTD_DCtx *dctx;
    uint64_t offset, frames;
    bool aborted;        /* an ABORT frame came */
    bool sync;           /* the sender may send SYNC (MIG_HELLO_SYNC) */
    /* parallel channels: frame seq comes on channel seq % (nlanes + 1);
     * channel i > 0 is read ahead by lanes[i - 1] */
    struct lane *lanes;
    unsigned nlanes, lanes_cap;
    uint64_t seq;
    struct lane *held;   /* the lane whose slot x->data is */
    uint64_t lane_bytes, lane_frames;
    const char *who;     /* "channel 0: " with parallel channels, else "" */
    char err[STREAM_ERR_LEN / 2];
};

HV_PRINTF(3, 4) static int rxfail(struct rx *x, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, sizeof(x->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* Why a read failed, in words; a timeout names the deadline that passed. */
static const char *rx_why(const struct rx *x, int rc)
{
    if (rc == -ENODATA)
        return "connection closed";
    if (rc != -ETIMEDOUT)
        return chan_strerror(x->ch, rc);
    if (x->by >= x->end_by)
        return "the migration's deadline passed";
    return x->phase[0] == 'h' ? "the handshake's deadline passed (no whole HELLO in time)"
                              : "the frame's deadline passed (not whole within the timeout)";
}

/* Received bytes are read and checksummed in pieces of up to this size
 * (a whole frame), each hashed right after it lands.  They land where the
 * restore wants them (guest memory): landing in a buffer that stays in the
 * cache, hashing there and copying on cost more (the copy) than it saved.
 * Pieces of 64 KiB kept the hash in the cache but made every read return
 * a window update to the sender, whose ACK, processed in the receiver's
 * own context on loopback, pushed the sender's queued data through the
 * stack there: a third of the receiver's time, which bounds one channel.
 * 2 GiB of random data on one channel (`hugevm migrate --fill` to
 * `hugevm receive --resident`, 5 interleaved runs): 1.04 s median with 64
 * KiB pieces, 0.91 s with 256 KiB, 0.81 s with 1 MiB (with
 * RESTORE_PIECE_HASHED to match). */
#define RX_HASH_PIECE MIG_FRAME_RAW

static void ring_push(struct rx *x, uint64_t off, uint64_t h)
{
    x->ring[x->rn % RX_RING].off = off;
    x->ring[x->rn % RX_RING].h = h;
    x->rn++;
}

/* The pages of channel 0's frame hashed since the last call, to the ring. */
static void rx_push(struct rx *x)
{
    for (; x->pushed < x->fs.i; x->pushed++)
        ring_push(x, x->sbase + x->fs.off[x->pushed], x->fs.ph[x->pushed]);
}

/* stream_io page_hash: a page of the stream hashed alone as it landed. */
static bool rx_page_hash(void *ctx, uint64_t offset, uint64_t *hash)
{
    struct rx *x = ctx;
    uint64_t lo = x->rn > RX_RING ? x->rn - RX_RING : 0, hi = x->rn;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2, o = x->ring[mid % RX_RING].off;
        if (o == offset) {
            *hash = x->ring[mid % RX_RING].h;
            return true;
        }
        if (o < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Read n streamed payload bytes into dst; checks the checksum after the
 * frame's last byte. */
static int rx_stream_in(struct rx *x, void *dst, size_t n)
{
    uint8_t *p = dst;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < RX_HASH_PIECE ? n - done : RX_HASH_PIECE, got = 0;
        int rc = chan_read_all_by(x->ch, p + done, k, &got, x->by);
        x->offset += got;
        if (rc < 0)
            return rxfail(x, rc, "%sDATA frame at byte offset %llu: %s after %zu of %zu bytes",
                          x->who, (unsigned long long)x->at, rx_why(x, rc),
                          x->len - x->left + done + got, x->len);
        fsum_add(&x->fs, p + done, k);
        done += k;
    }
    rx_push(x);
    x->left -= n;
    if (!x->left && fsum_end(&x->fs) != x->sum)
        return rxfail(x, -EBADMSG, "%sDATA frame at byte offset %llu: checksum mismatch",
                      x->who, (unsigned long long)x->at);
    return 0;
}

/* Finish a streamed frame nobody reads to the end (checks it). */
static int rx_stream_finish(struct rx *x)
{
    while (x->left) {
        size_t n = x->left < MIG_FRAME_RAW ? x->left : MIG_FRAME_RAW;
        int rc = rx_stream_in(x, x->raw, n);
        if (rc < 0)
            return rc;
    }
    x->pos = x->avail = x->len = x->stage0 = 0;
    return 0;
}

/* A frame header (untrusted) at byte offset `at` of channel `who`: 0, or
 * -errno with err saying what is wrong. */
static int frame_check(const struct mig_frame *h, size_t wcap, const char *who, uint64_t at,
                       char *err, size_t errlen)
{
    uint32_t raw = le32toh(h->raw_len), wire = le32toh(h->wire_len);
    uint16_t t = le16toh(h->type), flags = le16toh(h->flags);
    if (le32toh(h->magic) != MIG_MAGIC) {
        snprintf(err, errlen, "%sframe at byte offset %llu: magic %#x is not %#x \"HVMF\" (not "
                 "a hugevm migration sender?)", who, (unsigned long long)at,
                 le32toh(h->magic), MIG_MAGIC);
        return -EBADMSG;
    }
    if (t < MIG_HELLO || t > MIG_FRAME_TYPES || (flags & ~(MIG_F_ZSTD | MIG_F_SEGS)) ||
        (flags && t != MIG_DATA) || (flags & MIG_F_ZSTD && flags & MIG_F_SEGS)) {
        snprintf(err, errlen, "%sframe at byte offset %llu: bad type %u or flags %#x", who,
                 (unsigned long long)at, t, flags);
        return -EBADMSG;
    }
    uint32_t max = t == MIG_DATA || t == MIG_PC_PENDING ? MIG_FRAME_RAW : MIG_CTRL_MAX;
    if ((flags & MIG_F_SEGS) && raw <= max &&
        (wire < raw + 8 || (wire - raw) % 4 || (wire - raw - 4) / 4 > raw / PAGE_SIZE)) {
        snprintf(err, errlen, "%sframe at byte offset %llu: DATA frame of %u bytes with a page "
                 "table of %u bytes (4 + 4 per page, 1 to %u pages)", who,
                 (unsigned long long)at, raw, wire - raw, raw / (uint32_t)PAGE_SIZE);
        return -EBADMSG;
    }
    if (raw > max || wire > wcap ||
        (!(flags & (MIG_F_ZSTD | MIG_F_SEGS)) && wire != raw)) {
        snprintf(err, errlen, "%sframe at byte offset %llu: %s of %u bytes (%u on the wire) is "
                 "over the limit of %u", who, (unsigned long long)at, frame_name(t), raw, wire,
                 max);
        return -EMSGSIZE;
    }
    return 0;
}

/* ---- the receiver's other channels: a reader thread each ---------------------------- */

/*
 * Channel i > 0 is read by its lane: a thread that reads frame after frame
 * into LANE_SLOTS slots, checks each (header, decompression, checksum)
 * and queues it; the receiver takes them in their turn (rx_frame) and
 * gives each slot back when it moves on.  The thread reads without a
 * deadline of its own: the receiver's deadlines apply where it waits for a
 * lane's frame, and a lane it stops is cut first.  A lane that fails
 * keeps the frames it queued before and reports its error in their place.
 */
#define LANE_SLOTS 4
#define LANE_STOP_S 2

struct lane_frame {
    uint8_t *raw;
    uint32_t len;
    uint16_t type;
    uint32_t n;                 /* pages hashed alone (MIG_F_SEGS) */
    uint32_t off[MIG_SEGS_MAX]; /* their frame offsets and hashes */
    uint64_t ph[MIG_SEGS_MAX];
};

struct lane {
    struct chan *ch;
    unsigned index;
    pthread_t t;
    bool up;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* on CLOCK_MONOTONIC (hv_now_ns) */
    struct lane_frame slot[LANE_SLOTS];
    unsigned head, count;
    bool quit;
    int wake;            /* eventfd: quit while waiting for a frame */
    int err;             /* after the queued frames */
    char msg[STREAM_ERR_LEN / 2];
    uint8_t *wire;
    size_t wcap;
    ZSTD_DCtx *dctx;
    struct fsum fs;
    uint64_t offset, frames; /* the thread's; read after it ended */
};

static void *lane_main(void *arg)
{
    struct lane *l = arg;
    char who[24], msg[sizeof(l->msg)] = "";
    int rc = 0;
    snprintf(who, sizeof(who), "channel %u: ", l->index);
    (void)pthread_setname_np(pthread_self(), "hugevm-lane");
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (l->count == LANE_SLOTS && !l->quit)
            pthread_cond_wait(&l->cv, &l->mu);
        struct lane_frame *f = &l->slot[(l->head + l->count) % LANE_SLOTS];
        bool quit = l->quit;
        pthread_mutex_unlock(&l->mu);
        if (quit)
            return NULL;
        /* wait for the next frame's first byte, or to be told to stop:
         * a lane stopped so has read nothing of what comes after (the
         * channel may go on carrying post-copy's answers) */
        while ((rc = chan_poll_in(l->ch, 0)) == 0) {
            struct pollfd pf[2] = {{l->ch->fd, POLLIN, 0}, {l->wake, POLLIN, 0}};
            if (poll(pf, 2, -1) < 0 && errno != EINTR) {
                rc = -errno;
                break;
            }
            if (pf[1].revents)
                return NULL;
        }
        if (rc < 0) {
            snprintf(msg, sizeof(msg), "%s%s", who, chan_strerror(l->ch, rc));
            break;
        }
        struct mig_frame h;
        uint64_t at = l->offset;
        size_t got = 0;
        rc = chan_read_all(l->ch, &h, sizeof(h), &got);
        l->offset += got;
        if (rc < 0) {
            snprintf(msg, sizeof(msg), "%s%s at byte offset %llu", who,
                     rc == -ENODATA ? "the sender closed the connection"
                                    : chan_strerror(l->ch, rc),
                     (unsigned long long)l->offset);
            break;
        }
        if ((rc = frame_check(&h, l->wcap, who, at, msg, sizeof(msg))) < 0)
            break;
        uint32_t raw = le32toh(h.raw_len), wire = le32toh(h.wire_len);
        uint16_t t = le16toh(h.type), flags = le16toh(h.flags);
        fsum_start(&l->fs);
        if (flags & MIG_F_SEGS) { /* the page table first */
            got = 0;
            rc = chan_read_all(l->ch, l->wire, wire - raw, &got);
            l->offset += got;
            if (rc == 0)
                rc = fsum_table(&l->fs, l->wire, wire - raw, raw, who, at, msg, sizeof(msg));
            else
                snprintf(msg, sizeof(msg), "%sDATA frame at byte offset %llu: %s in its page "
                         "table", who, (unsigned long long)at,
                         rc == -ENODATA ? "connection closed" : chan_strerror(l->ch, rc));
            if (rc < 0)
                break;
            wire = raw;
        }
        got = 0;
        rc = chan_read_all(l->ch, (flags & MIG_F_ZSTD) ? l->wire : f->raw, wire, &got);
        l->offset += got;
        if (rc < 0) {
            snprintf(msg, sizeof(msg), "%s%s frame at byte offset %llu: %s after %zu of %u bytes",
                     who, frame_name(t), (unsigned long long)at,
                     rc == -ENODATA ? "connection closed" : chan_strerror(l->ch, rc), got, wire);
            break;
        }
        if (flags & MIG_F_ZSTD) {
            size_t n = ZSTD_decompressDCtx(l->dctx, f->raw, MIG_FRAME_RAW, l->wire, wire);
            if (ZSTD_isError(n) || n != raw) {
                rc = -EBADMSG;
                snprintf(msg, sizeof(msg), "%sDATA frame at byte offset %llu: zstd payload %s",
                         who, (unsigned long long)at,
                         ZSTD_isError(n) ? ZSTD_getErrorName(n) : "has the wrong length");
                break;
            }
        }
        fsum_add(&l->fs, f->raw, raw);
        if (fsum_end(&l->fs) != le64toh(h.checksum)) {
            rc = -EBADMSG;
            snprintf(msg, sizeof(msg), "%s%s frame at byte offset %llu: checksum mismatch", who,
                     frame_name(t), (unsigned long long)at);
            break;
        }
        l->frames++;
        f->n = l->fs.n;
        memcpy(f->off, l->fs.off, 4 * (size_t)f->n);
        memcpy(f->ph, l->fs.ph, 8 * (size_t)f->n);
        pthread_mutex_lock(&l->mu);
        f->len = raw;
        f->type = t;
        l->count++;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
    pthread_mutex_lock(&l->mu);
    l->err = rc;
    snprintf(l->msg, sizeof(l->msg), "%s", msg);
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Start lane l on channel ch (it owns ch from now on, also on failure). */
static int lane_start(struct lane *l, struct chan *ch, unsigned index, size_t wcap)
{
    pthread_condattr_t ca;
    l->ch = ch;
    l->index = index;
    l->wcap = wcap;
    if ((l->wake = eventfd(0, EFD_CLOEXEC)) < 0)
        return -errno;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (unsigned i = 0; i < LANE_SLOTS; i++)
        if (!(l->slot[i].raw = hv_malloc(MIG_FRAME_RAW)))
            return -ENOMEM;
    if (!(l->wire = hv_malloc(wcap)) || !(l->dctx = ZSTD_createDCtx()) || fsum_init(&l->fs) < 0)
        return -ENOMEM;
    int rc = chan_set_timeout(ch, 0);
    if (rc < 0)
        return rc;
    rc = pthread_create(&l->t, NULL, lane_main, l);
    if (rc)
        return -rc;
    l->up = true;
    return 0;
}

/* Give back the slot x->data is (the receiver moved on). */
static void lane_release(struct rx *x)
{
    struct lane *l = x->held;
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->head = (l->head + 1) % LANE_SLOTS;
    l->count--;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    x->held = NULL;
}

/* Stop every lane (join, free) and go on with channel 0 alone.  With
 * keep (post-copy's answers), channel 1 is not cut: its lane stops
 * between frames and *keep gets the channel; every other is cut. */
static void lanes_stop_keep(struct rx *x, struct chan **keep)
{
    lane_release(x);
    for (unsigned i = 0; i < x->lanes_cap; i++) {
        struct lane *l = &x->lanes[i];
        if (!l->ch)
            continue;
        bool kept = keep && i == 0 && l->up;
        if (l->up) {
            pthread_mutex_lock(&l->mu);
            l->quit = true;
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
            if (eventfd_write(l->wake, 1) < 0 || !kept)
                chan_cut(l->ch);
            /* a lane to keep stops between frames at once; one caught
             * inside a frame (bytes after DONE: a sender that sent more)
             * is cut after LANE_STOP_S and not kept */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += LANE_STOP_S;
            if (kept && pthread_timedjoin_np(l->t, NULL, &ts) != 0) {
                chan_cut(l->ch);
                kept = false;
                pthread_join(l->t, NULL);
            } else if (!kept) {
                pthread_join(l->t, NULL);
            }
        }
        if (l->wake > 0)
            close(l->wake);
        /* a lane that read past DONE (a sender that sent more) or failed
         * leaves no channel to keep */
        if (kept && (l->count || l->err))
            kept = false;
        x->lane_bytes += l->offset;
        x->lane_frames += l->frames;
        for (unsigned k = 0; k < LANE_SLOTS; k++)
            free(l->slot[k].raw);
        free(l->wire);
        ZSTD_freeDCtx(l->dctx);
        fsum_fini(&l->fs);
        if (kept)
            *keep = l->ch;
        else
            chan_close(l->ch);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
    }
    free(x->lanes);
    x->lanes = NULL;
    x->nlanes = x->lanes_cap = 0;
    x->who = "";
}

static void lanes_stop(struct rx *x) { lanes_stop_keep(x, NULL); }

/* The next frame from lane l, by x->by. */
static int lane_take(struct rx *x, struct lane *l, uint16_t *type)
{
    struct timespec ts = {(time_t)(x->by / 1000000000), (long)(x->by % 1000000000)};
    pthread_mutex_lock(&l->mu);
    while (!l->count && !l->err)
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT)
            break;
    if (!l->count) {
        int rc = l->err ? l->err : -ETIMEDOUT;
        if (l->err)
            rxfail(x, rc, "%s", l->msg);
        else
            rxfail(x, rc, "channel %u: waiting for frame %llu: %s", l->index,
                   (unsigned long long)x->seq, rx_why(x, rc));
        pthread_mutex_unlock(&l->mu);
        return rc;
    }
    struct lane_frame *f = &l->slot[l->head];
    pthread_mutex_unlock(&l->mu);
    x->held = l;
    x->data = f->raw;
    x->len = x->avail = f->len;
    x->pos = x->stage0 = 0;
    *type = f->type;
    if (f->type == MIG_DATA) {
        x->sbase = x->snext;
        x->snext += f->len;
        for (uint32_t k = 0; k < f->n; k++)
            ring_push(x, x->sbase + f->off[k], f->ph[k]);
    }
    return 0;
}

/* Read one frame (untrusted) into x->raw, or its header only when stream
 * is set and it is a large uncompressed DATA frame; *type gets its type.
 * With parallel channels, from the channel whose turn it is. */
static int rx_frame(struct rx *x, uint16_t *type, bool stream)
{
    struct mig_frame h;
    lane_release(x);
    if (x->nlanes) {
        unsigned c = (unsigned)(x->seq++ % (x->nlanes + 1));
        if (c) {
            x->by = hv_now_ns() + (uint64_t)x->frame_ms * 1000000;
            if (x->by > x->end_by)
                x->by = x->end_by;
            return lane_take(x, &x->lanes[c - 1], type);
        }
    }
    x->data = x->raw;
    if (x->left) {
        int rc0 = rx_stream_finish(x);
        if (rc0 < 0)
            return rc0;
    }
    uint64_t at = x->offset;
    size_t got = 0;
    uint64_t now = hv_now_ns();
    x->by = now + (uint64_t)x->frame_ms * 1000000;
    if (x->by > x->end_by)
        x->by = x->end_by;
    int rc = chan_read_all_by(x->ch, &h, sizeof(h), &got, x->by);
    x->offset += got;
    if (rc == -ENODATA)
        return rxfail(x, rc, "%sthe sender closed the connection at byte offset %llu%s",
                      x->who, (unsigned long long)x->offset,
                      got ? " (inside a frame header)" : "");
    if (rc < 0)
        return rxfail(x, rc, "%sreading the connection at byte offset %llu: %s", x->who,
                      (unsigned long long)x->offset, rx_why(x, rc));
    uint32_t raw = le32toh(h.raw_len), wire = le32toh(h.wire_len);
    uint16_t t = le16toh(h.type), flags = le16toh(h.flags);
    if ((rc = frame_check(&h, x->wcap, x->who, at, x->err, sizeof(x->err))) < 0)
        return rc;
    fsum_start(&x->fs);
    x->pushed = 0;
    if (flags & MIG_F_SEGS) { /* the page table first */
        rc = chan_read_all_by(x->ch, x->wire, wire - raw, &got, x->by);
        x->offset += got;
        if (rc < 0)
            return rxfail(x, rc, "%sDATA frame at byte offset %llu: %s in its page table",
                          x->who, (unsigned long long)at, rx_why(x, rc));
        if ((rc = fsum_table(&x->fs, x->wire, wire - raw, raw, x->who, at, x->err,
                             sizeof(x->err))) < 0)
            return rc;
        wire = raw;
    }
    if (t == MIG_DATA) {
        x->sbase = x->snext;
        x->snext += raw;
    }
    if (stream && t == MIG_DATA && !(flags & MIG_F_ZSTD) && raw > RX_STAGE_MAX) {
        x->frames++;
        x->len = x->left = raw;
        x->pos = x->avail = x->stage0 = 0;
        x->sum = le64toh(h.checksum);
        x->at = at;
        *type = t;
        return 0;
    }
    uint8_t *dst = (flags & MIG_F_ZSTD) ? x->wire : x->raw;
    rc = chan_read_all_by(x->ch, dst, wire, &got, x->by);
    x->offset += got;
    if (rc < 0)
        return rxfail(x, rc, "%s%s frame at byte offset %llu: %s after %zu of %u bytes",
                      x->who, frame_name(t), (unsigned long long)at, rx_why(x, rc), got, wire);
    if (flags & MIG_F_ZSTD) {
        size_t n = ZSTD_decompressDCtx(x->dctx, x->raw, MIG_FRAME_RAW, x->wire, wire);
        if (ZSTD_isError(n) || n != raw)
            return rxfail(x, -EBADMSG, "%sDATA frame at byte offset %llu: zstd payload %s",
                          x->who, (unsigned long long)at,
                          ZSTD_isError(n) ? ZSTD_getErrorName(n) : "has the wrong length");
    }
    fsum_add(&x->fs, x->raw, raw);
    if (fsum_end(&x->fs) != le64toh(h.checksum))
        return rxfail(x, -EBADMSG, "%s%s frame at byte offset %llu: checksum mismatch",
                      x->who, frame_name(t), (unsigned long long)at);
    rx_push(x);
    x->frames++;
    x->len = x->avail = raw;
    x->pos = x->stage0 = 0;
    *type = t;
    return 0;
}

/* The frame in x->raw is ABORT: the sender's reason, as the error. */
static int rx_aborted(struct rx *x)
{
    x->aborted = true;
    return rxfail(x, -ECONNABORTED, "the sender aborted: %.200s",
                  migrate_reason((void *)x->data, x->len, MIG_CTRL_MAX));
}

/* The next frame, read whole, outside the stream; an ABORT is the
 * sender's reason as the error. */
static int rx_next(struct rx *x, uint16_t *t)
{
    int rc = rx_frame(x, t, false);
    return rc < 0 ? rc : *t == MIG_ABORT ? rx_aborted(x) : 0;
}

/* A control frame of type `want` with exactly len bytes. */
static int rx_ctrl(struct rx *x, uint16_t want, void *body, size_t len)
{
    uint16_t t = 0;
    int rc = rx_next(x, &t);
    if (rc < 0)
        return rc;
    if (t != want || x->len != len)
        return rxfail(x, -EPROTO, "expected %s (%zu bytes), got %s (%zu bytes)",
                      frame_name(want), len, frame_name(t), x->len);
    if (len)
        memcpy(body, x->data, len);
    x->pos = x->len;
    return 0;
}

static long rx_read(void *ctx, void *buf, size_t len)
{
    struct rx *x = ctx;
    while (x->pos == x->len) {
        uint16_t t = 0;
        int rc = rx_frame(x, &t, true);
        if (rc < 0)
            return rc;
        if (t == MIG_ABORT) {
            x->pos = x->len;
            return rx_aborted(x);
        }
        if (t == MIG_SYNC && x->sync && x->len == 8) {
            /* everything before it is in: say so (its tag back) */
            x->pos = x->len;
            if ((rc = send_ctrl(x->ch, MIG_SYNCED, x->data, 8)) < 0)
                return rxfail(x, rc, "sending SYNCED: %s", chan_strerror(x->ch, rc));
            continue;
        }
        if (t != MIG_DATA) {
            x->pos = x->len;
            return rxfail(x, -EPROTO, "%s frame of %zu bytes inside the stream (before END)",
                          frame_name(t), x->len);
        }
    }
    if (x->pos == x->avail) { /* a streamed frame: more from the socket */
        if (len >= RX_CHUNK || len >= x->left) {
            size_t n = len < x->left ? len : x->left;
            int rc = rx_stream_in(x, buf, n);
            if (rc < 0)
                return rc;
            x->pos += n;
            x->avail = x->pos;
            return (long)n;
        }
        size_t n = x->left < RX_CHUNK ? x->left : RX_CHUNK;
        int rc = rx_stream_in(x, x->raw, n);
        if (rc < 0)
            return rc;
        x->stage0 = x->pos; /* x->raw[0] is frame byte stage0 */
        x->avail = x->pos + n;
    }
    size_t n = x->avail - x->pos < len ? x->avail - x->pos : len;
    memcpy(buf, x->data + (x->pos - x->stage0), n);
    x->pos += n;
    return (long)n;
}

/* Post-copy: the PC_PENDING frames after END, as runs (untrusted: the
 * runs are checked against the domain by postcopy_rx_start; here the
 * pieces must ascend, stay below the pfn limit, and name no more pages
 * than the domain's RAM). */
static int rx_pending(struct rx *x, const struct domain *d, struct migrate_recv_result *res)
{
    size_t cap = 0;
    uint64_t pages = 0, next = 0;
    for (;;) {
        uint16_t t = 0;
        int rc = rx_next(x, &t);
        if (rc < 0)
            return rc;
        if (t != MIG_PC_PENDING)
            return rxfail(x, -EPROTO, "expected PC_PENDING, got %s", frame_name(t));
        struct mig_pc_pending h;
        if (x->len < sizeof(h))
            return rxfail(x, -EBADMSG, "PC_PENDING of %zu bytes", x->len);
        memcpy(&h, x->data, sizeof(h));
        uint32_t n = le32toh(h.nr_words);
        uint64_t first = le64toh(h.first_pfn);
        if (x->len != sizeof(h) + 8ULL * n || le32toh(h.last) > 1 || first % 64 ||
            first < next || first >= P2M_GFN_LIMIT || n > (P2M_GFN_LIMIT - first) / 64)
            return rxfail(x, -EBADMSG, "PC_PENDING: %u words from pfn %#llx in %zu bytes (last "
                          "%u, the previous piece ended at pfn %#llx)", n,
                          (unsigned long long)first, x->len, le32toh(h.last),
                          (unsigned long long)next);
        next = first + 64ULL * n;
        if (res->pc_id && le64toh(h.id) != res->pc_id)
            return rxfail(x, -EBADMSG, "PC_PENDING: the pieces name two ids");
        res->pc_id = le64toh(h.id);
        for (uint32_t w = 0; w < n; w++) {
            uint64_t v;
            memcpy(&v, x->data + sizeof(h) + 8ULL * w, 8);
            v = le64toh(v);
            pages += (uint64_t)__builtin_popcountll(v);
            if (pages > d->tot_pages)
                return rxfail(x, -EBADMSG, "PC_PENDING names more pages than the domain's %llu",
                              (unsigned long long)d->tot_pages);
            /* a run of ones at a time (most words are all ones or none) */
            while (v) {
                unsigned b = (unsigned)__builtin_ctzll(v);
                uint64_t zeros = ~(v >> b);
                unsigned k = zeros ? (unsigned)__builtin_ctzll(zeros) : 64;
                v = b + k >= 64 ? 0 : v & (~0ULL << (b + k));
                gfn_t g = first + 64ULL * w + b;
                struct postcopy_run *last = res->pc_nruns ? &res->pc_runs[res->pc_nruns - 1]
                                                          : NULL;
                if (last && last->pfn + last->nr == g) {
                    last->nr += k;
                    continue;
                }
                if (res->pc_nruns == cap) {
                    size_t c = cap ? 2 * cap : 256;
                    struct postcopy_run *r = realloc(res->pc_runs, c * sizeof(*r));
                    if (!r)
                        return rxfail(x, -ENOMEM, "out of memory for the post-copy runs");
                    res->pc_runs = r;
                    cap = c;
                }
                res->pc_runs[res->pc_nruns++] = (struct postcopy_run){g, k};
            }
        }
        x->pos = x->len;
        if (le32toh(h.last))
            return 0;
    }
}

/* Rebuild the guest's vCPUs and workloads from the HVM_CONTEXT TLV area
 * (untrusted: guest_state checks everything before use).  An area without
 * vCPU state gives a guest without vCPUs.  A program guest's state is
 * decoded into ps (the caller's, pages touched before the downtime; NULL:
 * out of memory). */
static int guest_from_context(struct domain *d, const void *a, size_t len,
                              const struct migrate_recv_opts *o, struct guest_prog_state *ps,
                              struct guest **out, char *err, size_t errlen)
{
    if (!ps) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = guest_prog_decode(a, len, ps, err, errlen);
    bool prog = rc > 0;
    enum guest_backend b = prog ? guest_prog_state_backend(ps) : GUEST_BACKEND_SOFT;
    if (rc >= 0 && o->backend_set && o->backend != b) {
        snprintf(err, errlen, "the guest runs on the %s backend; this receiver resumes guests "
                 "on %s only", guest_backend_name(b), guest_backend_name(o->backend));
        return -EMEDIUMTYPE;
    }
    if (rc >= 0 && b == GUEST_BACKEND_NATIVE && !o->backend_set) {
        /* a native guest's code would run as this process's own code: only
         * when the receiver asked for native guests by name */
        snprintf(err, errlen, "the guest runs on the native backend, whose code runs as the "
                 "receiving process's own: this receiver accepts native guests only when asked "
                 "to (--backend native)");
        return -EPERM;
    }
    if (prog) {
        /* a program guest: its vCPUs on the backend it ran on (a receiver
         * whose KVM cannot create them fails here, before RESULT) */
        char why[STREAM_ERR_LEN / 2];
        rc = guest_create_prog_resume(d, ps, out, why, sizeof(why));
        if (rc < 0)
            snprintf(err, errlen, "resuming the %s guest: %s",
                     guest_backend_name(guest_prog_state_backend(ps)), why);
    }
    if (prog || rc < 0)
        return rc;
    struct guest_state *gs = hv_malloc(sizeof(*gs));
    struct guest *g = NULL;
    rc = -ENOMEM;
    if (!gs || guest_create_soft(d, 0, NULL, NULL, &g) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = guest_state_decode(a, len, gs, err, errlen);
    if (rc == 0 && errlen)
        err[0] = '\0'; /* no vCPU state: not an error here */
    if (rc > 0) {
        rc = guest_state_build(d, gs, o->on_write, o->ctx, g->v, g->w, err, errlen);
        if (rc == 0) {
            g->nr_vcpus = gs->nr_vcpus;
            g->tc = gs->v[0].tc;
            g->wc = gs->v[0].wc;
            g->wc.on_write = o->on_write;
            g->wc.ctx = o->ctx;
        }
    }
    if (rc < 0)
        guest_destroy(g);
    else
        *out = g;
out:
    free(gs);
    return rc;
}

static int send_result(struct chan *ch, int status, const struct domain *d, bool verified,
                        uint64_t digest, uint64_t pages, const char *msg)
{
    struct mig_result r;
    memset(&r, 0, sizeof(r));
    r.status = (int32_t)htole32((uint32_t)status);
    r.verified = htole32(verified);
    r.digest = htole64(digest);
    r.pages = htole64(pages);
    if (d) {
        r.pages_1g = htole64(domain_pages_1g(d));
        r.pages_2m = htole64(domain_pages_2m(d));
        r.pages_4k = htole64(domain_pages_4k(d));
    }
    snprintf(r.msg, sizeof(r.msg), "%.200s", msg ? msg : "");
    return send_ctrl(ch, MIG_RESULT, &r, sizeof(r));
}

/* HELLO on the first connection: 8 bytes, or 24 offering channels. */
static int rx_hello(struct rx *x, struct hello_ch *hello)
{
    uint16_t t = 0;
    int rc = rx_next(x, &t);
    if (rc < 0)
        return rc;
    if (t != MIG_HELLO || (x->len != sizeof(hello->h) && x->len != sizeof(*hello)))
        return rxfail(x, -EPROTO, "expected HELLO (8 or 24 bytes), got %s (%zu bytes)",
                      frame_name(t), x->len);
    memcpy(hello, x->data, x->len);
    x->pos = x->len;
    uint32_t flags = le32toh(hello->h.flags), n = le32toh(hello->c.channels);
    if (le32toh(hello->h.version) != MIG_VERSION)
        return rxfail(x, -EPROTONOSUPPORT, "the sender speaks migration version %u, not %u",
                      le32toh(hello->h.version), MIG_VERSION);
    if ((flags & MIG_HELLO_CHANNELS) != (x->len == sizeof(*hello) ? MIG_HELLO_CHANNELS : 0) ||
        ((flags & MIG_HELLO_CHANNELS) &&
         (n < 2 || n > MIG_MAX_CHANNELS || le32toh(hello->c.index) != 0)))
        return rxfail(x, -EPROTO, "HELLO (%zu bytes, flags %#x) offers %u channels, index %u: "
                      "2 to %u channels, index 0, in 24 bytes", x->len, flags, n,
                      le32toh(hello->c.index), MIG_MAX_CHANNELS);
    return 0;
}

/* The sender's other channels join: want - 1 connections (o->join), each
 * with a HELLO naming the token and an index of its own, by the handshake
 * deadline; a connection that names anything else is turned away with
 * ABORT and the receiver waits on. */
static int rx_join(struct rx *x, const struct migrate_recv_opts *o, unsigned want, uint64_t token)
{
    if (!(x->lanes = hv_calloc(want - 1, sizeof(*x->lanes))))
        return rxfail(x, -ENOMEM, "out of memory for %u channels", want);
    x->lanes_cap = want - 1;
    int hs = o->handshake_ms > 0 ? o->handshake_ms : MIGRATE_DEFAULT_HANDSHAKE_MS;
    uint64_t by = hv_now_ns() + (uint64_t)hs * 1000000;
    by = by < x->end_by ? by : x->end_by;
    unsigned refused = 0;
    char last[STREAM_ERR_LEN / 2] = "";
    for (unsigned joined = 1; joined < want;) {
        char err[STREAM_ERR_LEN / 2] = "";
        struct chan *c = o->join(o->jctx, by, err, sizeof(err));
        if (!c)
            return rxfail(x, -ETIMEDOUT, "%u of %u channels joined: %s (%u connections turned "
                          "away%s%.100s)", joined, want, err[0] ? err : "no more connections",
                          refused, refused ? ", the last: " : "", last);
        struct hello_ch h;
        int rc = chan_set_timeout(c, hs);
        if (rc == 0)
            rc = recv_ctrl(c, MIG_HELLO, &h, sizeof(h), err, sizeof(err), "joining connection");
        unsigned i = le32toh(h.c.index);
        if (rc == 0 && (le32toh(h.h.version) != MIG_VERSION ||
                        le32toh(h.h.flags) != MIG_HELLO_CHANNELS ||
                        le32toh(h.c.channels) != want || le64toh(h.c.token) != token || i == 0 ||
                        i >= want || x->lanes[i - 1].ch)) {
            snprintf(err, sizeof(err), "refused a connection that does not join the migration "
                     "in progress (HELLO version %u, flags %#x, channel %u of %u%s)",
                     le32toh(h.h.version), le32toh(h.h.flags), i, le32toh(h.c.channels),
                     le64toh(h.c.token) != token ? ", another migration's token" : "");
            (void)send_ctrl(c, MIG_ABORT, err, (uint32_t)strlen(err));
            rc = -EPROTO;
        }
        if (rc < 0) {
            refused++;
            snprintf(last, sizeof(last), "%s", err);
            chan_close(c);
            continue;
        }
        struct mig_hello ready = {htole32(MIG_VERSION), htole32(MIG_HELLO_CHANNELS)};
        rc = send_ctrl(c, MIG_READY, &ready, sizeof(ready));
        if (rc < 0) {
            rxfail(x, rc, "channel %u: sending READY: %s", i, chan_strerror(c, rc));
            chan_close(c);
            return rc;
        }
        if ((rc = lane_start(&x->lanes[i - 1], c, i, x->wcap)) < 0)
            return rxfail(x, rc, "channel %u: setting up: %s", i, strerror(-rc));
        joined++;
    }
    x->nlanes = want - 1;
    x->seq = 0;
    x->who = "channel 0: ";
    return 0;
}

int migrate_receive(struct machine *m, struct chan *ch, const struct migrate_recv_opts *o,
                    struct migrate_recv_result *res)
{
    static const struct migrate_recv_opts defaults;
    struct rx x = {.ch = ch, .phase = "handshake", .who = ""};
    struct domain *d = NULL;
    struct guest *g = NULL;
    struct guest_prog_state *ps = NULL;
    o = o ? o : &defaults;
    memset(res, 0, sizeof(*res));
    uint64_t t0 = hv_now_ns();
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : MIGRATE_DEFAULT_TIMEOUT_MS;
    x.frame_ms = o->handshake_ms > 0 ? o->handshake_ms : MIGRATE_DEFAULT_HANDSHAKE_MS;
    x.end_by = t0 + (o->total_ms ? o->total_ms : MIGRATE_DEFAULT_TOTAL_MS) * 1000000;
    x.wcap = ZSTD_compressBound(MIG_FRAME_RAW);
    x.raw = hv_malloc(MIG_FRAME_RAW);
    x.wire = hv_malloc(x.wcap);
    x.dctx = ZSTD_createDCtx();
    int rc = (!x.raw || !x.wire || !x.dctx || fsum_init(&x.fs) < 0) ? -ENOMEM
                                                                       : chan_set_timeout(ch, timeout);
    if (rc < 0) {
        rxfail(&x, rc, "setting up: %s", strerror(-rc));
        goto fail;
    }
    struct hello_ch hello = {0};
    rc = rx_hello(&x, &hello);
    if (rc < 0)
        goto fail;
    unsigned want = (le32toh(hello.h.flags) & MIG_HELLO_CHANNELS) ? le32toh(hello.c.channels) : 1;
    bool pc = (le32toh(hello.h.flags) & MIG_HELLO_POSTCOPY) && o->postcopy_ok;
    bool lanes = want > 1 && o->join;
    x.sync = le32toh(hello.h.flags) & MIG_HELLO_SYNC;
    /* page tables (MIG_F_SEGS): read whenever they come; echoed so that
     * the sender sends them */
    uint32_t segs = le32toh(hello.h.flags) & MIG_HELLO_SEGS;
    struct mig_hello ready = {htole32(MIG_VERSION), htole32((pc ? MIG_HELLO_POSTCOPY : 0) |
                                                            (lanes ? MIG_HELLO_CHANNELS : 0) |
                                                            (x.sync ? MIG_HELLO_SYNC : 0) | segs)};
    rc = send_ctrl(ch, MIG_READY, &ready, sizeof(ready));
    if (rc < 0) {
        rxfail(&x, rc, "sending READY: %s", chan_strerror(ch, rc));
        goto fail;
    }
    /* the handshake hook (migrate.h): from here on the peer is a sender
     * (called once its other channels joined: the hook's caller turns
     * every other connection away) */
    res->handshake_passed = true;
    if (lanes && (rc = rx_join(&x, o, want, le64toh(hello.c.token))) < 0)
        goto fail;
    res->channels = x.nlanes + 1;
    if (o->on_handshake)
        o->on_handshake(o->hctx);
    x.frame_ms = timeout;
    x.phase = "frame";
    struct stream_io io = {.read = rx_read, .page_hash = rx_page_hash, .ctx = &x};
    /* live: the memory map may change meanwhile.  digest: the restore
     * keeps the memory digest page by page as pages land (stream.h), so
     * nothing reads memory again after END.  track_data: for the audit,
     * which then reads only the pfns that got data. */
    struct restore_opts ro = {.live = true, .digest = true, .track_data = o->audit_digest,
                              .keep_state = true};
    /* a program guest's state is decoded into this at the end, in the
     * downtime: its pages are touched now (578 KB: about 1.4 ms of first
     * touches on this host) */
    ps = hv_malloc(sizeof(*ps));
    if (ps)
        memset(ps, 0, sizeof(*ps));
    rc = stream_restore(m, &io, &ro, &res->rr);
    if (rc < 0) {
        if (x.err[0] && res->rr.err[0])
            snprintf(res->err, sizeof(res->err), "%.150s (stream: %.150s)", x.err, res->rr.err);
        else
            snprintf(res->err, sizeof(res->err), "%s", res->rr.err[0] ? res->rr.err : x.err);
        goto fail_msg;
    }
    d = res->rr.d;
    res->rr.d = NULL;
    if (pc && (rc = rx_pending(&x, d, res)) < 0)
        goto fail;
    struct mig_done done;
    rc = rx_ctrl(&x, MIG_DONE, &done, sizeof(done));
    if (rc < 0)
        goto fail;
    rc = guest_from_context(d, res->rr.context, res->rr.context_len, o, ps, &g, res->err,
                            sizeof(res->err));
    res->scratch = ps; /* freed once the guest runs (migrate_recv_trim) */
    ps = NULL;
    if (rc < 0)
        goto fail_msg;
    /* the digest is always checked, whatever the sender's HELLO said: a
     * sender that offers none gets nothing resumed here */
    uint64_t pages = 0;
    if (le32toh(done.verify) != 1) {
        rc = -EBADMSG;
        snprintf(res->err, sizeof(res->err), "the sender sent no memory digest (DONE verify "
                 "%u): this receiver always checks it", le32toh(done.verify));
        goto fail_msg;
    }
    res->digest = res->rr.digest;
    pages = res->rr.digest_pages;
    if (o->audit_digest) {
        uint64_t apages = 0;
        uint64_t a = migrate_digest_known(d, res->rr.data_bits, res->rr.data_bits_nr, &apages);
        if (a != res->digest || apages != pages) {
            rc = -EBADMSG;
            snprintf(res->err, sizeof(res->err), "digest audit: the restored memory has digest "
                     "%#llx (%llu pages), the pages received add up to %#llx (%llu pages)",
                     (unsigned long long)a, (unsigned long long)apages,
                     (unsigned long long)res->digest, (unsigned long long)pages);
            goto fail_msg;
        }
    }
    res->verified = true;
    if (res->digest != le64toh(done.digest) || pages != le64toh(done.pages)) {
        rc = -EBADMSG;
        snprintf(res->err, sizeof(res->err), "memory digest mismatch: sender %#llx (%llu "
                 "pages), receiver %#llx (%llu pages)", (unsigned long long)le64toh(done.digest),
                 (unsigned long long)le64toh(done.pages), (unsigned long long)res->digest,
                 (unsigned long long)pages);
        goto fail_msg;
    }
    /* a RESULT not written whole cannot be acted on: the sender will not
     * commit, this copy goes */
    rc = send_result(ch, 0, d, res->verified, res->digest, pages, NULL);
    if (rc < 0) {
        snprintf(res->err, sizeof(res->err), "sending RESULT: %s", chan_strerror(ch, rc));
        goto fail_msg;
    }
    /* nothing comes on the other channels after DONE, but post-copy's
     * answers to requests come on channel 1 when there is one; their
     * threads and buffers go while COMMIT is on its way (not before
     * RESULT: the sender's pause waits for that) */
    lanes_stop_keep(&x, pc && res->pc_nruns ? &res->pc_preempt : NULL);
    if (o->cut_before_commit) {
        chan_cut(ch);
        rc = rxfail(&x, -ECONNRESET, "connection cut by fault injection before COMMIT");
    } else {
        rc = rx_ctrl(&x, MIG_COMMIT, NULL, 0);
    }
    if (rc < 0 && !x.aborted) {
        /* the sender may have committed (its COMMIT lost) or not: keep the
         * guest, paused, for the caller to decide */
        snprintf(res->err, sizeof(res->err), "IN DOUBT: RESULT was sent but neither COMMIT nor "
                 "ABORT arrived (%.150s): the sender may hold its copy paused in doubt or may run "
                 "it again; this copy is kept paused", x.err[0] ? x.err : strerror(-rc));
        res->g = g;
        res->in_doubt = true;
        rc = -EINPROGRESS;
        goto out;
    }
    if (rc < 0) {
        snprintf(res->err, sizeof(res->err), "%s", x.err);
        guest_destroy(g);
        domain_destroy(d);
        goto out;
    }
    /* COMMIT: the guest is this side's now, whatever happens to RESUMED */
    res->g = g;
    res->postcopy = res->pc_nruns > 0;
    res->pc_pages = pages;
    if (o->cut_before_resumed) {
        chan_cut(ch);
        res->resumed_unsent = true;
    } else if (send_ctrl(ch, MIG_RESUMED, "", 0) < 0) {
        res->resumed_unsent = true;
    }
    goto out;

fail:
    snprintf(res->err, sizeof(res->err), "%s", x.err[0] ? x.err : strerror(-rc));
fail_msg:
    (void)send_result(ch, rc, NULL, false, 0, 0, res->err);
    guest_destroy(g);
    domain_destroy(d);
out:
    free(ps);
    lanes_stop(&x);
    res->wire_bytes = x.offset + x.lane_bytes;
    res->frames = x.frames + x.lane_frames;
    res->seconds = (double)(hv_now_ns() - t0) / 1e9;
    free(x.raw);
    free(x.wire);
    ZSTD_freeDCtx(x.dctx);
    fsum_fini(&x.fs);
    return rc;
}

int migrate_postcopy_accept(struct chan *ch, uint64_t id, int timeout_ms, char *err,
                            size_t errlen)
{
    int rc = chan_set_timeout(ch, timeout_ms > 0 ? timeout_ms : MIGRATE_DEFAULT_HANDSHAKE_MS);
    struct mig_hello hello;
    if (rc == 0)
        rc = recv_ctrl(ch, MIG_HELLO, &hello, sizeof(hello), err, errlen, "sender");
    else
        snprintf(err, errlen, "setting up: %s", strerror(-rc));
    if (rc < 0)
        return rc;
    uint32_t flags = le32toh(hello.flags);
    const char *no = le32toh(hello.version) != MIG_VERSION ? "another migration version"
                     : !(flags & MIG_HELLO_PC_RESUME)
                         ? "a new migration while a post-copy migration waits for its sender"
                         : NULL;
    if (no) {
        snprintf(err, errlen, "refused %s", no);
        (void)send_ctrl(ch, MIG_ABORT, err, (uint32_t)strlen(err));
        return -EPROTO;
    }
    struct mig_hello ready = {htole32(MIG_VERSION), htole32(MIG_HELLO_POSTCOPY |
                                                            MIG_HELLO_PC_RESUME)};
    rc = send_ctrl(ch, MIG_READY, &ready, sizeof(ready));
    uint64_t got = 0;
    if (rc == 0)
        rc = recv_ctrl(ch, MIG_PC_RESUME, &got, sizeof(got), err, errlen, "sender");
    else
        snprintf(err, errlen, "sending READY: %s", chan_strerror(ch, rc));
    if (rc < 0)
        return rc;
    if (le64toh(got) != id) {
        snprintf(err, errlen, "no post-copy migration %#llx here (the one waiting is %#llx)",
                 (unsigned long long)le64toh(got), (unsigned long long)id);
        (void)send_ctrl(ch, MIG_ABORT, err, (uint32_t)strlen(err));
        return -ESRCH;
    }
    return 0;
}

void migrate_recv_trim(struct migrate_recv_result *res)
{
    restore_state_free(&res->rr);
    free(res->scratch);
    res->scratch = NULL;
}

void migrate_recv_result_free(struct migrate_recv_result *res)
{
    migrate_recv_trim(res);
    chan_close(res->pc_preempt);
    res->pc_preempt = NULL;
    restore_result_free(&res->rr);
    free(res->pc_runs);
    res->pc_runs = NULL;
    res->pc_nruns = 0;
}

int migrate_refuse(int fd, const char *reason)
{
    uint8_t buf[sizeof(struct mig_frame) + 256];
    size_t len = strnlen(reason, 256);
    struct mig_frame h;
    migrate_frame_header(&h, MIG_ABORT, 0, (uint32_t)len, (uint32_t)len, XXH3_64bits(reason, len));
    memcpy(buf, &h, sizeof(h));
    memcpy(buf + sizeof(h), reason, len);
    ssize_t n = send(fd, buf, sizeof(h) + len, MSG_NOSIGNAL | MSG_DONTWAIT);
    return n < 0 ? -errno : (size_t)n == sizeof(h) + len ? 0 : -EAGAIN;
}

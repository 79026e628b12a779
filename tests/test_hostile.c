/*
 * test_hostile.c - streams and files built to hurt restore, inspect and a
 * receiver (issue 12: "restore bounded by what the domain can hold",
 * "files"), each built here by hand:
 *
 *  - amplification: a 2 MiB stream of 2^18 XTAB entries, one per 1 GiB
 *    region; XALLOC entries spread one per 1 GiB region (sparse) with a
 *    small and a large max_pages; each shape goes through a dry run (what
 *    `hugevm inspect` does), a restore and a live restore (what `hugevm
 *    receive` does) in a forked child, which reports its peak RSS growth
 *    (VmHWM after resetting it with /proc/self/clear_refs) and its time;
 *    both must stay within a constant plus a multiple of the stream's size;
 *  - CPU: a GUEST_MEM TLV covering 2^36 gfns with the zipf workload is
 *    refused before anything is summed, a GUEST_MEM that fits builds;
 *  - counts: pages beyond the stream's own max_pages, one flipped bit in a
 *    pfn entry (a page silently lost before: tot_pages 4063 for 4064) and
 *    one flipped byte of page data (only the HV_CHECKSUM record sees it):
 *    the dry run and the restore give the same answer, and `hugevm
 *    inspect` and `hugevm restore` print the same problem;
 *  - files: a stream file truncated while a restore reads it through its
 *    mapping is a truncated stream with an offset, not SIGBUS; a `hugevm
 *    save` that fails (full file system, in a private mount namespace)
 *    leaves no file; `--guest-mem` beyond the host's memory is refused
 *    unless `--overcommit`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guest_state.h"
#include "migrate.h"
#include "save.h"
#include "testutil.h"

/* ---- building streams by hand -------------------------------------------------------- */

struct sb {
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
};

static void cfg_tlv(struct hvctx_buf *b, uint64_t max_pages, uint64_t max_gfn, uint64_t tot)
{
    struct hvctx_config c = {htole64(max_pages), htole64(max_gfn), 0, htole64(tot), 0, 0};
    assert_int_equal(hvctx_add(b, HVCTX_CONFIG, 0, &c, sizeof(c)), 0);
}

/* Headers, HV_CONFIG (when max_pages), STATIC_DATA_END. */
static void sb_begin(struct sb *b, uint64_t max_pages, uint64_t max_gfn, uint64_t tot)
{
    stream_mem_sink(&b->mem, &b->io);
    stream_writer_init(&b->w, &b->io);
    stream_writer_hash(&b->w);
    assert_int_equal(stream_write_headers(&b->w), 0);
    if (max_pages) {
        struct hvctx_buf x;
        assert_int_equal(hvctx_begin(&x), 0);
        cfg_tlv(&x, max_pages, max_gfn, tot);
        hvctx_finish(&x);
        assert_int_equal(stream_write_record(&b->w, STREAM_REC_HV_CONFIG, x.p, (uint32_t)x.len), 0);
        hvctx_free(&x);
    }
    assert_int_equal(stream_write_record(&b->w, STREAM_REC_STATIC_DATA_END, NULL, 0), 0);
}

/* One PAGE_DATA record of n entries without data (XTAB/XALLOC). */
static void sb_pages(struct sb *b, const uint64_t *e, uint32_t n)
{
    uint32_t len = 8 + 8 * n;
    uint32_t hdr[2] = {htole32(n), 0};
    assert_int_equal(stream_record_begin(&b->w, STREAM_REC_PAGE_DATA, len), 0);
    assert_int_equal(stream_write_part(&b->w, hdr, 8), 0);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t x = htole64(e[i]);
        assert_int_equal(stream_write_part(&b->w, &x, 8), 0);
    }
    assert_int_equal(stream_record_end(&b->w), 0);
}

/* HVM_CONTEXT (a blob with `tlvs`, when given), HV_CHECKSUM, END. */
static void sb_end(struct sb *b, const struct hvctx_buf *ctx)
{
    if (ctx)
        assert_int_equal(stream_write_record(&b->w, STREAM_REC_HVM_CONTEXT, ctx->p,
                                             (uint32_t)ctx->len), 0);
    assert_int_equal(stream_write_checksum(&b->w), 0);
    assert_int_equal(stream_write_record(&b->w, STREAM_REC_END, NULL, 0), 0);
}

static int restore_buf(struct machine *m, const void *buf, size_t len,
                       const struct restore_opts *o, struct restore_result *rr)
{
    struct stream_mem src;
    struct stream_io io;
    stream_mem_source(&src, &io, buf, len);
    return stream_restore(m, &io, o, rr);
}

/* ---- measuring in a child -------------------------------------------------------------- */

enum mode { M_DRY, M_RESTORE, M_LIVE };
static const char *const mode_name[] = {"dry run", "restore", "live restore"};

struct outcome {
    int rc;
    long rss_kb;   /* peak RSS growth while restoring */
    double secs;
    uint64_t tot_pages, spec_trims;
    char err[STREAM_ERR_LEN];
};

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, key, k) && line[k] == ':') {
            v = atol(line + k + 1);
            break;
        }
    if (f)
        fclose(f);
    return v;
}

/* Restore buf in a forked child (machine of mbytes unless a dry run):
 * its rc, error, peak RSS growth and time. */
static struct outcome measure(const void *buf, size_t len, enum mode mode, uint64_t mbytes)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct outcome out = {0};
        struct machine *m = mode == M_DRY ? NULL : new_machine(mbytes);
        struct restore_opts o = {.dry_run = mode == M_DRY, .live = mode == M_LIVE,
                                 .verify_checksum = true};
        struct restore_result rr;
        long rss0 = status_kb("VmRSS");
        int fd = open("/proc/self/clear_refs", O_WRONLY);
        if (fd >= 0) { /* reset VmHWM to the current RSS */
            if (write(fd, "5", 1) != 1)
                rss0 = -1;
            close(fd);
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        out.rc = restore_buf(m, buf, len, &o, &rr);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        out.rss_kb = status_kb("VmHWM") - rss0;
        out.secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        out.tot_pages = rr.d ? rr.d->tot_pages : 0;
        out.spec_trims = rr.spec_trims;
        snprintf(out.err, sizeof(out.err), "%s", rr.err);
        if (write(p[1], &out, sizeof(out)) != (ssize_t)sizeof(out))
            _exit(2);
        _exit(0); /* no teardown: the process goes */
    }
    close(p[1]);
    struct outcome out;
    ssize_t n = read(p[0], &out, sizeof(out));
    close(p[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (n != (ssize_t)sizeof(out) || !WIFEXITED(st) || WEXITSTATUS(st))
        fail_msg("%s: the child died (status %#x)", mode_name[mode], st);
    return out;
}

/* Peak RSS growth allowed for a stream of len bytes that populates
 * `pages` pages: 48 MiB (ASan's own allocator and quarantine included),
 * 16 bytes per stream byte, and 512 bytes per page populated (1/8 of the
 * guest RAM the stream stands for: region state is ~200 bytes per 2M
 * region with a populated page, its hash slot 16-32).  The shapes below
 * cost 1 GB and more without the bounds. */
static long rss_bound_kb(size_t len, uint64_t pages)
{
    return 48 * 1024 + (long)(16 * len / 1024) + (long)(pages / 2);
}

static void check_bounded(const char *what, const struct outcome *o, size_t len,
                          uint64_t pages, double max_s)
{
    long bound = rss_bound_kb(len, pages);
    print_message("# %-44s rc %4d  peak RSS +%6ld KiB (bound %6ld)  %.3f s (bound %.0f)\n", what,
                  o->rc, o->rss_kb, bound, o->secs, max_s);
    if (o->rss_kb > bound)
        fail_msg("%s: peak RSS grew %ld KiB for a %zu-byte stream", what, o->rss_kb, len);
    if (o->secs > max_s)
        fail_msg("%s: %.2f s", what, o->secs);
}

/* ---- amplification ------------------------------------------------------------------- */

static void test_xtab_one_per_1g(void **state)
{
    (void)state;
    uint32_t n = 1u << 18; /* every 1G region of the 2^36-pfn space */
    uint64_t *e = malloc(8ULL * n);
    assert_non_null(e);
    for (uint32_t i = 0; i < n; i++)
        e[i] = stream_pfn_entry((gfn_t)i << PAGE_ORDER_1G, STREAM_PAGE_XTAB);
    struct sb b;
    sb_begin(&b, 0, 0, 0); /* a foreign stream: the pfn limit is the p2m's */
    sb_pages(&b, e, n);
    sb_end(&b, NULL);
    free(e);
    assert_true(b.mem.len > 2 * MiB && b.mem.len < 2 * MiB + 4096);
    for (enum mode md = M_DRY; md <= M_LIVE; md++) {
        struct outcome o = measure(b.mem.buf, b.mem.len, md, 64 * MiB);
        char what[96];
        snprintf(what, sizeof(what), "2^18 XTAB, one per 1G: %s", mode_name[md]);
        if (o.rc)
            fail_msg("%s: %s", what, o.err);
        assert_int_equal(o.tot_pages, 0);
        check_bounded(what, &o, b.mem.len, 0, 20);
    }
    stream_mem_free(&b.mem);
}

/* n XALLOC pages, one per 1G region (every `stride` regions), under a
 * configuration of max_pages = tot_pages = n. */
static struct sb sparse_xalloc(uint32_t n, uint32_t stride)
{
    uint64_t *e = malloc(8ULL * n);
    assert_non_null(e);
    for (uint32_t i = 0; i < n; i++)
        e[i] = stream_pfn_entry(((gfn_t)i * stride) << PAGE_ORDER_1G, STREAM_PAGE_XALLOC);
    struct sb b;
    sb_begin(&b, n, P2M_GFN_LIMIT, n);
    sb_pages(&b, e, n);
    struct hvctx_buf ctx;
    assert_int_equal(hvctx_begin(&ctx), 0);
    cfg_tlv(&ctx, n, P2M_GFN_LIMIT, n);
    hvctx_finish(&ctx);
    sb_end(&b, &ctx);
    hvctx_free(&ctx);
    free(e);
    return b;
}

static void test_sparse_xalloc(void **state)
{
    (void)state;
    /* 1024 pages over 2^34 pfns: speculation (1G, then 2M extents) stays
     * within max_pages, is trimmed once, and the restore succeeds where
     * it used to fill the machine with 1G extents and fail -EDQUOT */
    struct sb b = sparse_xalloc(1024, 64);
    struct outcome dry = measure(b.mem.buf, b.mem.len, M_DRY, 0);
    struct outcome real = measure(b.mem.buf, b.mem.len, M_RESTORE, 1 * GiB);
    if (dry.rc || real.rc)
        fail_msg("dry run %d (%s), restore %d (%s)", dry.rc, dry.err, real.rc, real.err);
    assert_int_equal(real.tot_pages, 1024);
    assert_true(real.spec_trims <= 1);
    check_bounded("1024 XALLOC sparse over 2^34 pfns: restore", &real, b.mem.len, 1024, 20);
    stream_mem_free(&b.mem);

    /* 2^18 pages, one per 1G region of the whole pfn space: the dry run
     * accepts it; a restore on a small machine runs out of p2m tables
     * (the domain cannot hold it) and says so, within the bounds */
    b = sparse_xalloc(1u << 18, 1);
    dry = measure(b.mem.buf, b.mem.len, M_DRY, 0);
    if (dry.rc)
        fail_msg("dry run: %s", dry.err);
    check_bounded("2^18 XALLOC, one per 1G: dry run", &dry, b.mem.len, 1u << 18, 20);
    real = measure(b.mem.buf, b.mem.len, M_RESTORE, 256 * MiB);
    if (real.rc && real.rc != -ENOMEM)
        fail_msg("restore: %d %s", real.rc, real.err);
    size_t len = b.mem.len;
    stream_mem_free(&b.mem);
    check_bounded("2^18 XALLOC, one per 1G: restore", &real, len, 1u << 18, 60);
}

/* ---- counts: one validator ---------------------------------------------------------------- */

/* The dry run and the restore of buf: the same rc and the same message. */
static int same_verdict(struct machine *m, const void *buf, size_t len, bool verify,
                        const char *needle)
{
    struct restore_result dry, real;
    struct restore_opts od = {.dry_run = true, .verify_checksum = verify};
    struct restore_opts orr = {.verify_checksum = verify};
    int rd = restore_buf(NULL, buf, len, &od, &dry);
    int rr = restore_buf(m, buf, len, &orr, &real);
    if (rd != rr || strcmp(dry.err, real.err))
        fail_msg("dry run %d '%s', restore %d '%s'", rd, dry.err, rr, real.err);
    if (needle && !strstr(real.err, needle))
        fail_msg("'%s' lacks '%s'", real.err, needle);
    if (rr == 0) {
        domain_destroy(real.d);
        restore_result_free(&real);
        restore_result_free(&dry);
    }
    assert_int_equal(frames_owned(m->frames, real.domid), 0);
    return rr;
}

static void test_pages_beyond_max_pages(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    uint64_t e[1024];
    for (unsigned i = 0; i < 1024; i++)
        e[i] = stream_pfn_entry(0x1000 + i, STREAM_PAGE_XALLOC);
    struct sb b;
    sb_begin(&b, 512, 0x10000, 512);
    sb_pages(&b, e, 1024);
    sb_end(&b, NULL);
    assert_int_equal(same_verdict(m, b.mem.buf, b.mem.len, true, "max_pages"), -EDQUOT);
    stream_mem_free(&b.mem);
    /* a late configuration (HVM_CONTEXT only) is checked at END, alike */
    sb_begin(&b, 0, 0, 0);
    sb_pages(&b, e, 1024);
    struct hvctx_buf ctx;
    assert_int_equal(hvctx_begin(&ctx), 0);
    cfg_tlv(&ctx, 512, 0x10000, 512);
    hvctx_finish(&ctx);
    sb_end(&b, &ctx);
    hvctx_free(&ctx);
    assert_int_equal(same_verdict(m, b.mem.buf, b.mem.len, true, "max_pages"), -EDQUOT);
    stream_mem_free(&b.mem);
    /* and tot_pages that does not match what the stream carries */
    sb_begin(&b, 2048, 0x10000, 1000);
    sb_pages(&b, e, 1024);
    sb_end(&b, NULL);
    assert_int_equal(same_verdict(m, b.mem.buf, b.mem.len, true, "tot_pages 1000"), -EBADMSG);
    stream_mem_free(&b.mem);
    /* the control: the same pages under a configuration that holds them */
    sb_begin(&b, 1024, 0x10000, 1024);
    sb_pages(&b, e, 1024);
    sb_end(&b, NULL);
    assert_int_equal(same_verdict(m, b.mem.buf, b.mem.len, true, NULL), 0);
    stream_mem_free(&b.mem);
    machine_destroy(m);
}

/* A saved guest of 4064 pages with content. */
static void saved_4064(struct machine *m, struct stream_mem *mem)
{
    struct domain *d;
    struct domain_config dc;
    domain_config_default(&dc);
    assert_int_equal(domain_create(m, &dc, &d), 0);
    assert_int_equal(domain_populate(d, 0x100000, 4064, NULL), 0);
    for (gfn_t g = 0x100000; g < 0x100000 + 4064; g += 3) {
        uint8_t *p = machine_ptr(m, p2m_get_entry(d->p2m, g, NULL, NULL));
        memset(p, (int)(g & 0xff) | 1, PAGE_SIZE);
    }
    struct stream_io io;
    char err[256];
    struct save_opts so = {.batch = 512};
    struct save_result sr;
    stream_mem_sink(mem, &io);
    if (stream_save(d, &io, &so, &sr, err, sizeof(err)))
        fail_msg("save: %s", err);
    assert_int_equal(d->tot_pages, 4064);
    domain_destroy(d);
}

/* Offset of entry k of the first PAGE_DATA record, and of its data. */
static size_t first_page_data(const struct stream_mem *mem, size_t *data)
{
    size_t off = 40;
    for (;;) {
        uint32_t t, l;
        assert_true(off + 8 <= mem->len);
        memcpy(&t, mem->buf + off, 4);
        memcpy(&l, mem->buf + off + 4, 4);
        if (t == STREAM_REC_PAGE_DATA) {
            uint32_t n;
            memcpy(&n, mem->buf + off + 8, 4);
            *data = off + 16 + 8ULL * n;
            return off + 16;
        }
        off += 8 + ((l + 7u) & ~7u);
    }
}

static void test_flipped_bits(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    struct stream_mem mem;
    saved_4064(m, &mem);
    assert_int_equal(same_verdict(m, mem.buf, mem.len, true, NULL), 0);
    /* one bit of a populated pfn: it now names its neighbour, a page is
     * lost (restore used to exit 0 with tot_pages 4063) */
    size_t data, ent = first_page_data(&mem, &data), k = 0;
    uint64_t e;
    for (;; k++) {
        memcpy(&e, mem.buf + ent + 8 * k, 8);
        gfn_t pfn = stream_entry_pfn(e);
        if (stream_entry_type(e) != STREAM_PAGE_XTAB && pfn >= 0x100000 &&
            (pfn ^ 1) < 0x100000 + 4064 && (pfn ^ 1) >= 0x100000)
            break;
    }
    uint8_t *p = malloc(mem.len);
    memcpy(p, mem.buf, mem.len);
    p[ent + 8 * k] ^= 1;
    assert_int_equal(same_verdict(m, p, mem.len, true, "checksum mismatch"), -EBADMSG);
    assert_int_equal(same_verdict(m, p, mem.len, false, "tot_pages 4064"), -EBADMSG);
    /* one byte of page data: only the checksum sees it */
    memcpy(p, mem.buf, mem.len);
    p[data + 100] ^= 0x20;
    assert_int_equal(same_verdict(m, p, mem.len, true, "checksum mismatch"), -EBADMSG);
    assert_int_equal(same_verdict(m, p, mem.len, false, NULL), 0);
    free(p);
    stream_mem_free(&mem);
    machine_destroy(m);
}

/* ---- CPU: GUEST_MEM ---------------------------------------------------------------------- */

static void test_guest_mem_bounded(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    uint64_t e[1024];
    for (unsigned i = 0; i < 1024; i++)
        e[i] = stream_pfn_entry(0x1000 + i, STREAM_PAGE_XALLOC);
    static const uint64_t spans[2][2] = {{0, 1ULL << 36}, {0x1000, 1024}};
    for (int fits = 0; fits < 2; fits++) {
        struct sb b;
        sb_begin(&b, 1024, 0x10000, 1024);
        sb_pages(&b, e, 1024);
        struct hvctx_buf ctx;
        assert_int_equal(hvctx_begin(&ctx), 0);
        cfg_tlv(&ctx, 1024, 0x10000, 1024);
        struct mig_vcpu_tlv vt = {0, htole32(1), 0, 0, {htole32(64), htole32(32), 0},
                                  {htole32(4), htole32(4), htole32(4)}};
        double frac = -1;
        uint64_t fb;
        memcpy(&fb, &frac, 8);
        struct mig_workload_tlv wt = {0, htole32(WL_ZIPF), 0, 0, htole64(1), 0, htole64(fb),
                                      0, 0, htole64(7), 0, 0, 0, 0, 0};
        uint32_t mh[2] = {htole32(1), 0};
        uint64_t mx[2] = {htole64(spans[fits][0]), htole64(spans[fits][1])};
        uint8_t mem[24];
        memcpy(mem, mh, 8);
        memcpy(mem + 8, mx, 16);
        assert_int_equal(hvctx_add(&ctx, HVCTX_VCPU, 0, &vt, sizeof(vt)), 0);
        assert_int_equal(hvctx_add(&ctx, HVCTX_WORKLOAD, 0, &wt, sizeof(wt)), 0);
        assert_int_equal(hvctx_add(&ctx, HVCTX_GUEST_MEM, 0, mem, sizeof(mem)), 0);
        hvctx_finish(&ctx);
        sb_end(&b, &ctx);
        hvctx_free(&ctx);
        struct restore_result rr;
        struct restore_opts ro = {.verify_checksum = true};
        int rc = restore_buf(m, b.mem.buf, b.mem.len, &ro, &rr);
        if (rc)
            fail_msg("restore: %s", rr.err);
        struct guest_state *gs = calloc(1, sizeof(*gs));
        char err[320] = "";
        assert_int_equal(guest_state_decode(rr.context, rr.context_len, gs, err, sizeof(err)), 1);
        struct vcpu *v[1] = {0};
        struct workload *w[1] = {0};
        uint64_t t0 = hv_now_ns();
        rc = guest_state_build(rr.d, gs, NULL, NULL, v, w, err, sizeof(err));
        double secs = (double)(hv_now_ns() - t0) / 1e9;
        print_message("# GUEST_MEM of %llu pages, zipf: build %d (%s) in %.3f s\n",
                      (unsigned long long)spans[fits][1], rc, rc ? err : "ok", secs);
        if (fits) {
            if (rc)
                fail_msg("a GUEST_MEM that fits: %s", err);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_non_null(strstr(err, "GUEST_MEM"));
            assert_int_equal(guest_state_check(gs, rr.d->max_pages, err, sizeof(err)), -EINVAL);
        }
        assert_true(secs < 2);
        workload_destroy(w[0]);
        vcpu_destroy(v[0]);
        free(gs);
        domain_destroy(rr.d);
        restore_result_free(&rr);
        stream_mem_free(&b.mem);
    }
    machine_destroy(m);
}

/* ---- files ----------------------------------------------------------------------------- */

struct cutter {
    int fd;
    uint64_t at_index;
    off_t to;
    bool done;
};

static void cut_on_record(void *ctx, uint64_t index, uint32_t type, uint32_t length,
                          uint64_t offset)
{
    struct cutter *c = ctx;
    (void)type;
    (void)length;
    (void)offset;
    if (index == c->at_index && !c->done) {
        assert_int_equal(ftruncate(c->fd, c->to), 0);
        c->done = true;
    }
}

static void test_file_truncated_while_read(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    struct stream_mem mem;
    saved_4064(m, &mem);
    char path[] = "/tmp/hvhostileXXXXXX";
    for (int dry = 0; dry < 2; dry++) {
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, mem.buf, mem.len), (ssize_t)mem.len);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        struct stream_fd sf;
        struct stream_io io;
        assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
        /* after the 3rd record's header the file loses all but 64 KiB */
        struct cutter cut = {.fd = fd, .at_index = 3, .to = 64 * 1024};
        struct restore_opts ro = {.dry_run = dry, .verify_checksum = true,
                                  .on_record = cut_on_record, .record_ctx = &cut};
        struct restore_result rr;
        int rc = stream_restore(dry ? NULL : m, &io, &ro, &rr);
        unsigned faults = sf.bus_faults;
        stream_fd_free(&sf);
        close(fd);
        unlink(path);
        memcpy(path + strlen(path) - 6, "XXXXXX", 6);
        print_message("# file cut to 64 KiB under a %s: %d, %u SIGBUS caught: %s\n",
                      dry ? "dry run" : "restore", rc, faults, rr.err);
        assert_true(cut.done);
        assert_int_equal(rc, -ENODATA);
        assert_non_null(strstr(rr.err, "truncated"));
        assert_non_null(strstr(rr.err, "offset"));
        assert_true(faults >= 1); /* the mapped copy did fault, and was caught */
        assert_int_equal(frames_owned(m->frames, rr.domid), 0);
    }
    stream_mem_free(&mem);
    machine_destroy(m);
}

/* ---- the command line -------------------------------------------------------------------- */

static int run_quiet(char *const argv[])
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static bool dir_empty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    bool empty = true;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = false;
    if (d)
        closedir(d);
    return empty;
}

static void test_cli_files(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary was not found (%s)\n", hv);
        skip();
    }
    /* --guest-mem beyond MemTotal + SwapTotal */
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kb, host = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %llu", &kb) == 1 || sscanf(line, "SwapTotal: %llu", &kb) == 1)
            host += kb;
    if (f)
        fclose(f);
    char big[32];
    snprintf(big, sizeof(big), "%lluM", host / 1024 + 4096);
    char *pop[] = {hv, "populate", "--guest-mem", big, NULL};
    assert_int_not_equal(run_quiet(pop), 0);
    char *pop_oc[] = {hv, "populate", "--guest-mem", big, "--overcommit", NULL};
    assert_int_equal(run_quiet(pop_oc), 0);

    /* inspect and restore agree on a stream beyond its own max_pages */
    char dir[] = "/tmp/hvhostileXXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[64], out1[64], out2[64];
    snprintf(file, sizeof(file), "%s/over.hvs", dir);
    snprintf(out1, sizeof(out1), "%s/inspect.out", dir);
    snprintf(out2, sizeof(out2), "%s/restore.out", dir);
    uint64_t e[1024];
    for (unsigned i = 0; i < 1024; i++)
        e[i] = stream_pfn_entry(0x1000 + i, STREAM_PAGE_XALLOC);
    struct sb b;
    sb_begin(&b, 512, 0x10000, 512);
    sb_pages(&b, e, 1024);
    sb_end(&b, NULL);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_int_equal(write(fd, b.mem.buf, b.mem.len), (ssize_t)b.mem.len);
    close(fd);
    stream_mem_free(&b.mem);
    char *insp[] = {hv, "inspect", file, NULL};
    char *rest[] = {hv, "restore", file, "--host-mem", "256M", NULL};
    for (int i = 0; i < 2; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int o = open(i ? out2 : out1, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(o, 1);
            dup2(o, 2);
            execv(hv, i ? rest : insp);
            _exit(127);
        }
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 1);
    }
    char t1[4096] = "", t2[4096] = "";
    f = fopen(out1, "r");
    assert_true(fread(t1, 1, sizeof(t1) - 1, f) > 0);
    fclose(f);
    f = fopen(out2, "r");
    assert_true(fread(t2, 1, sizeof(t2) - 1, f) > 0);
    fclose(f);
    const char *needle = "the stream populates more than max_pages (512) pages";
    if (!strstr(t1, needle) || !strstr(t2, needle))
        fail_msg("inspect said:\n%s\nrestore said:\n%s", t1, t2);
    unlink(file);
    unlink(out1);
    unlink(out2);

    /* a save that fails (a 256 KiB file system in a private mount
     * namespace) leaves no file behind */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("hvtiny", dir, "tmpfs", 0, "size=256k") < 0)
            _exit(77);
        char sfile[64];
        snprintf(sfile, sizeof(sfile), "%s/full.hvs", dir);
        char *sv[] = {hv, "save", sfile, "--guest-mem", "64M", NULL};
        int rc = run_quiet(sv);
        _exit(rc == 0 ? 10 : !dir_empty(dir) ? 11 : 0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77) {
        print_message("# no private mount namespace here: the full-disk save is not tried\n");
    } else {
        if (WEXITSTATUS(st) == 10)
            fail_msg("hugevm save on a full file system exited 0");
        if (WEXITSTATUS(st) == 11)
            fail_msg("a failed hugevm save left a file behind");
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    rmdir(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_xtab_one_per_1g),
    cmocka_unit_test(test_sparse_xalloc),
    cmocka_unit_test(test_pages_beyond_max_pages),
    cmocka_unit_test(test_flipped_bits),
    cmocka_unit_test(test_guest_mem_bounded),
    cmocka_unit_test(test_file_truncated_while_read),
    cmocka_unit_test(test_cli_files),
};

int main(void)
{
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

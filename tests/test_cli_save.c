/*
 * test_cli_save.c - save a running guest with its vCPU/workload state and
 * resume it after restore (guest_state.h, `hugevm run --save`, `hugevm
 * restore --run`).
 *
 *  - round trips: a guest runs N accesses, is saved with its vCPU state
 *    into an in-memory stream and restored on another machine; memory
 *    (per-page XXH3 digest) and leaves equal the source's; the resumed
 *    workload then makes exactly the writes the source makes when it
 *    continues (same memory digest after M more accesses), and each vCPU's
 *    writes before + after the save are a prefix-consistent continuation of
 *    one uninterrupted run of N + M accesses on a fresh guest (the PRNG
 *    position travels);
 *  - streams without usable vCPU state (saved without a running guest, a
 *    foreign producer) restore memory and say so; corrupt vCPU TLVs are
 *    refused and a position that does not fit the guest builds nothing;
 *  - the command line end to end through the built binary (HUGEVM_BIN, set
 *    by meson, or tools/hugevm next to this test's directory).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <endian.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest_state.h"
#include "migrate.h"
#include "save.h"
#include "testutil.h"

#define GUEST (64 * MiB)
#define MAXV 4

/* ---- write logs --------------------------------------------------------------------- */

struct wlog {
    uint64_t *gpa, *val;
    size_t n, cap;
};
struct logs {
    struct wlog v[MAXV];
};

static void on_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct logs *L = ctx;
    assert_true(vcpu < MAXV);
    struct wlog *l = &L->v[vcpu];
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        l->gpa = realloc(l->gpa, l->cap * 8);
        l->val = realloc(l->val, l->cap * 8);
        assert_non_null(l->gpa);
        assert_non_null(l->val);
    }
    l->gpa[l->n] = gpa;
    l->val[l->n++] = val;
}

static void logs_free(struct logs *L)
{
    for (unsigned i = 0; i < MAXV; i++) {
        free(L->v[i].gpa);
        free(L->v[i].val);
    }
    memset(L, 0, sizeof(*L));
}

/* ---- a small guest: 2M leaves, a 4K-only range, the VGA hole ----------------------------- */

struct tguest {
    struct domain *d;
    unsigned nv;
    struct vcpu *v[MAXV];
    struct workload *w[MAXV];
    struct workload_config wc;
};

static struct domain *new_saved_domain(struct machine *m)
{
    struct domain_config cfg;
    domain_config_default(&cfg);
    cfg.nr_4k_ranges = 1;
    cfg.ranges_4k[0] = (struct gfn_range){(32 * MiB) >> PAGE_SHIFT, 512};
    struct domain *d;
    assert_int_equal(domain_create(m, &cfg, &d), 0);
    assert_int_equal(domain_populate_guest(d, GUEST, NULL), 0);
    return d;
}

static void tguest_init(struct tguest *g, struct machine *m, enum workload_kind kind, unsigned nv,
                       unsigned quantum, struct logs *L)
{
    memset(g, 0, sizeof(*g));
    g->d = new_saved_domain(m);
    g->nv = nv;
    workload_config_default(&g->wc, kind);
    g->wc.seed = 42 + kind;
    g->wc.quantum = quantum;
    if (kind == WL_SEQ)
        g->wc.write_frac = 0.5;
    g->wc.on_write = on_write;
    g->wc.ctx = L;
    struct tlb_config tc;
    tlb_config_default(&tc);
    tc.entries[0] = 64; /* a small TLB: misses and walks happen */
    tc.ways[0] = 4;
    for (unsigned i = 0; i < nv; i++) {
        assert_int_equal(vcpu_create(g->d, i, &tc, &g->v[i]), 0);
        assert_int_equal(workload_create(g->d, &g->wc, i, nv, &g->w[i]), 0);
    }
}

static void tguest_fini(struct tguest *g)
{
    for (unsigned i = 0; i < MAXV; i++) {
        workload_destroy(g->w[i]);
        vcpu_destroy(g->v[i]);
    }
    domain_destroy(g->d);
    memset(g, 0, sizeof(*g));
}

static void save_mem(struct domain *d, const void *tlvs, size_t len, struct stream_mem *mem,
                     struct save_result *sr)
{
    struct stream_io io;
    char err[256];
    stream_mem_sink(mem, &io);
    struct save_opts so = {.extra_tlvs = tlvs, .extra_tlvs_len = len};
    int rc = stream_save(d, &io, &so, sr, err, sizeof(err));
    if (rc < 0)
        fail_msg("stream_save: %s", err);
}

static void save_guest(struct tguest *g, struct stream_mem *mem, struct save_result *sr)
{
    struct hvctx_buf b;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(guest_state_encode(&b, g->nv, g->v, g->w, &g->wc), 0);
    save_mem(g->d, b.p + sizeof(struct hvctx_header), b.len - sizeof(struct hvctx_header), mem,
             sr);
    hvctx_free(&b);
}

static void restore_mem(struct machine *m, struct stream_mem *mem, struct restore_result *rr)
{
    struct stream_io io;
    struct stream_mem src; /* (a source over the sink's bytes: the sink keeps them) */
    stream_mem_source(&src, &io, mem->buf, mem->len);
    int rc = stream_restore(m, &io, NULL, rr);
    if (rc < 0)
        fail_msg("stream_restore: %s", rr->err);
}

/* ---- round trips ------------------------------------------------------------------------ */

static void roundtrip(enum workload_kind kind, unsigned nv, unsigned quantum, uint64_t n,
                      uint64_t mm)
{
    struct machine *m1 = new_machine(512 * MiB), *m2 = new_machine(256 * MiB);
    struct logs ref = {0}, src = {0}, res = {0};
    struct tguest g;

    /* the uninterrupted run: N + M accesses in one call, on a fresh guest */
    tguest_init(&g, m1, kind, nv, quantum, &ref);
    assert_int_equal(workload_run(g.v, g.w, nv, n + mm, 0, NULL), 0);
    tguest_fini(&g);

    /* the source: N accesses, then saved with its vCPU state */
    tguest_init(&g, m1, kind, nv, quantum, &src);
    assert_int_equal(workload_run(g.v, g.w, nv, n, 0, NULL), 0);
    uint64_t pages_src, dig_src = migrate_digest(g.d, &pages_src);
    struct stream_mem mem = {0};
    struct save_result sr;
    save_guest(&g, &mem, &sr);
    assert_int_equal(sr.extents_1g, domain_pages_1g(g.d));
    assert_int_equal(sr.extents_2m, domain_pages_2m(g.d));
    assert_int_equal(sr.pages_4k, domain_pages_4k(g.d));

    /* restore on another machine: memory and leaves equal the source's */
    struct restore_result rr;
    restore_mem(m2, &mem, &rr);
    assert_int_equal(rr.vcpu, RESTORE_VCPU_HUGEVM);
    struct domain *d2 = rr.d;
    uint64_t pages_dst, dig_dst = migrate_digest(d2, &pages_dst);
    assert_int_equal(pages_dst, pages_src);
    assert_true(dig_dst == dig_src);
    assert_int_equal(domain_pages_1g(d2), domain_pages_1g(g.d));
    assert_int_equal(domain_pages_2m(d2), domain_pages_2m(g.d));
    assert_int_equal(domain_pages_4k(d2), domain_pages_4k(g.d));
    audit_all(d2);

    /* rebuild and resume */
    struct guest_state *gs = calloc(1, sizeof(*gs));
    char err[256];
    assert_int_equal(guest_state_decode(rr.context, rr.context_len, gs, err, sizeof(err)), 1);
    assert_int_equal(gs->nr_vcpus, nv);
    struct vcpu *v2[GUEST_STATE_MAX_VCPUS];
    struct workload *w2[GUEST_STATE_MAX_VCPUS];
    if (guest_state_build(d2, gs, on_write, &res, v2, w2, err, sizeof(err)) < 0)
        fail_msg("guest_state_build: %s", err);
    struct workload_result r2, r1;
    assert_int_equal(workload_run(v2, w2, nv, mm, 0, &r2), 0);

    /* the source goes on as if nothing happened: the same writes, the same memory */
    /* (its workloads keep logging into src: N writes, then these M) */
    assert_int_equal(workload_run(g.v, g.w, nv, mm, 0, &r1), 0);
    assert_int_equal(r2.accesses, r1.accesses);
    assert_int_equal(r2.writes, r1.writes);
    assert_true(r2.checksum == r1.checksum);
    assert_true(migrate_digest(d2, NULL) == migrate_digest(g.d, NULL));
    assert_int_equal(domain_pages_2m(d2), domain_pages_2m(g.d));
    assert_int_equal(domain_pages_4k(d2), domain_pages_4k(g.d));
    uint64_t total_res = 0, total_cmp = 0;
    for (unsigned i = 0; i < nv; i++) {
        /* src logged N then M accesses' writes; res logged the resumed M */
        struct wlog *s = &src.v[i], *r = &res.v[i], *u = &ref.v[i];
        total_res += r->n;
        assert_true(s->n >= r->n);
        size_t before = s->n - r->n; /* the source's writes before the save */
        assert_memory_equal(s->gpa + before, r->gpa, r->n * 8);
        assert_memory_equal(s->val + before, r->val, r->n * 8);
        /* before ++ resumed is a continuation of the uninterrupted run (the
         * interleaving of vCPUs may end each at a different point) */
        size_t cmp = s->n < u->n ? s->n : u->n;
        assert_true(cmp >= before);
        total_cmp += cmp - before;
        assert_memory_equal(s->gpa, u->gpa, cmp * 8);
        assert_memory_equal(s->val, u->val, cmp * 8);
    }
    assert_true(total_res > 0);
    assert_true(total_cmp >= total_res / 2);
    audit_all(d2);
    print_message("# %s, %u vCPU(s): %llu + %llu accesses, %llu writes resumed (%llu "
                  "checked against an uninterrupted run); leaves 2m %llu 4k %llu; digest %#llx\n",
                  workload_name(kind), nv, (unsigned long long)n, (unsigned long long)r2.accesses,
                  (unsigned long long)total_res, (unsigned long long)total_cmp,
                  (unsigned long long)domain_pages_2m(d2), (unsigned long long)domain_pages_4k(d2),
                  (unsigned long long)dig_dst);

    for (unsigned i = 0; i < nv; i++) {
        workload_destroy(w2[i]);
        vcpu_destroy(v2[i]);
    }
    free(gs);
    domain_destroy(d2);
    restore_result_free(&rr);
    AUDIT_OK(frames_audit(m2->frames));
    stream_mem_free(&mem);
    tguest_fini(&g);
    logs_free(&ref);
    logs_free(&src);
    logs_free(&res);
    machine_destroy(m1);
    machine_destroy(m2);
}

static void test_uniform_1(void **state)
{
    (void)state;
    roundtrip(WL_UNIFORM, 1, 4096, 30000, 30000);
}

static void test_writer_2(void **state)
{
    (void)state;
    roundtrip(WL_WRITER, 2, 4096, 24000, 24000);
}

static void test_zipf_3_random_quanta(void **state)
{
    (void)state;
    roundtrip(WL_ZIPF, 3, 0, 20000, 20000);
}

static void test_seq_2(void **state)
{
    (void)state;
    roundtrip(WL_SEQ, 2, 1000, 20000, 20000);
}

/* ---- no usable vCPU state ------------------------------------------------------------------ */

static void test_no_vcpu_state(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_saved_domain(m);
    struct stream_mem mem = {0};
    struct save_result sr;
    save_mem(d, NULL, 0, &mem, &sr); /* hugevm's context, no vCPU TLVs */
    domain_destroy(d);
    struct restore_result rr;
    restore_mem(m, &mem, &rr);
    assert_int_equal(rr.vcpu, RESTORE_VCPU_HUGEVM);
    struct guest_state *gs = calloc(1, sizeof(*gs));
    char err[256] = "";
    assert_int_equal(guest_state_decode(rr.context, rr.context_len, gs, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "no vCPU state"));
    assert_int_equal(gs->nr_vcpus, 0);
    audit_all(rr.d);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    stream_mem_free(&mem);

    /* a foreign producer: 2 MiB of pfns, an opaque HVM_CONTEXT */
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    assert_int_equal(stream_write_headers(&w), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0), 0);
    uint64_t e[512];
    for (unsigned k = 0; k < 512; k++)
        e[k] = htole64(stream_pfn_entry(1024 + k, STREAM_PAGE_XALLOC));
    uint32_t hdr[2] = {htole32(512), 0};
    assert_int_equal(stream_record_begin(&w, STREAM_REC_PAGE_DATA, 8 + sizeof(e)), 0);
    assert_int_equal(stream_write_part(&w, hdr, 8), 0);
    assert_int_equal(stream_write_part(&w, e, sizeof(e)), 0);
    assert_int_equal(stream_record_end(&w), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_HVM_CONTEXT, "not hugevm's state", 18), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_END, NULL, 0), 0);
    restore_mem(m, &mem, &rr);
    assert_int_equal(rr.vcpu, RESTORE_VCPU_FOREIGN);
    assert_non_null(strstr(rr.note, "not usable"));
    assert_int_equal(domain_pages_2m(rr.d), 1);
    assert_null(rr.context);
    audit_all(rr.d);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    stream_mem_free(&mem);
    AUDIT_OK(frames_audit(m->frames));
    free(gs);
    machine_destroy(m);
}

/* ---- corrupt or unfitting vCPU state ---------------------------------------------------------- */

static void test_corrupt_state(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct logs L = {0};
    struct tguest g;
    tguest_init(&g, m, WL_WRITER, 2, 4096, &L);
    assert_int_equal(workload_run(g.v, g.w, 2, 1000, 0, NULL), 0);
    struct hvctx_buf b;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(guest_state_encode(&b, 2, g.v, g.w, &g.wc), 0);
    const uint8_t *area = b.p + sizeof(struct hvctx_header);
    size_t len = b.len - sizeof(struct hvctx_header);
    /* layout: {VCPU 0, WORKLOAD 0, VCPU 1, WORKLOAD 1, GUEST_MEM}, each 8 + value */
    const size_t vsz = 8 + sizeof(struct mig_vcpu_tlv), wsz = 8 + sizeof(struct mig_workload_tlv);
    const size_t nmem = workload_extents(g.w[0], NULL, 0), gm = 2 * (vsz + wsz);
    assert_true(nmem >= 1);
    assert_int_equal(len, gm + 8 + 8 + 16 * nmem);
    struct guest_state *gs = calloc(1, sizeof(*gs));
    uint8_t *x = malloc(len);
    char err[256];
    static const struct {
        size_t off;
        uint32_t val;
        unsigned width;
        const char *want;
    } cases[] = {
        {4, 16, 4, "VCPU TLV of 16 bytes"},                     /* bad length */
        {vsz + wsz + 8, 0, 4, "given twice"},                   /* vCPU 1 claims id 0 */
        {8 + 4, 3, 4, "inconsistent with 2 vCPUs"},             /* nr_vcpus */
        {vsz + 8 + 4, 9, 4, "implausible workload"},            /* kind */
        {8 + 8, 5, 4, "implausible TLB"},                       /* guest order */
        {8 + 28, 0, 4, "implausible TLB"},                      /* ways[0] = 0 */
        {4, 0x7fffffff, 4, "overruns"},                         /* length over the area */
        {2 * (vsz + wsz) + 8, 0, 4, "GUEST_MEM: 0 extents"},    /* count */
        {2 * (vsz + wsz) + 24, 0, 4, "GUEST_MEM extent 0"},     /* its nr */
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        memcpy(x, area, len);
        uint32_t le = htole32(cases[k].val);
        memcpy(x + cases[k].off, &le, cases[k].width);
        err[0] = 0;
        int rc = guest_state_decode(x, len, gs, err, sizeof(err));
        if (rc != -EBADMSG || !strstr(err, cases[k].want))
            fail_msg("case %zu: rc %d, err '%s', want '%s'", k, rc, err, cases[k].want);
        assert_int_equal(gs->nr_vcpus, 0);
    }
    /* a missing WORKLOAD TLV (truncate the area after vCPU 1's VCPU TLV) */
    assert_int_equal(guest_state_decode(area, 2 * vsz + wsz, gs, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "incomplete"));
    /* every truncation is refused or reads as incomplete, never overruns;
     * without GUEST_MEM the state is complete (older streams) */
    for (size_t cut = 1; cut < len; cut++) {
        int rc = guest_state_decode(area, cut, gs, err, sizeof(err));
        assert_true(rc == (cut == gm ? 1 : -EBADMSG));
        assert_int_equal(gs->nr_mem, 0);
    }
    assert_int_equal(guest_state_decode(area, len, gs, err, sizeof(err)), 1);
    assert_int_equal(gs->nr_mem, nmem);

    /* valid bytes, but the position lies outside vCPU 1's slice of a smaller
     * guest: decode accepts, build refuses and leaves nothing */
    assert_int_equal(guest_state_decode(area, len, gs, err, sizeof(err)), 1);
    struct domain_config cfg;
    domain_config_default(&cfg);
    struct domain *d2;
    assert_int_equal(domain_create(m, &cfg, &d2), 0);
    assert_int_equal(domain_populate_guest(d2, 16 * MiB, NULL), 0);
    gs->v[1].ws.pos = UINT64_MAX / 2;
    struct vcpu *v2[GUEST_STATE_MAX_VCPUS];
    struct workload *w2[GUEST_STATE_MAX_VCPUS];
    int rc = guest_state_build(d2, gs, NULL, NULL, v2, w2, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "vCPU 1"));
    for (unsigned i = 0; i < 2; i++) {
        assert_null(v2[i]);
        assert_null(w2[i]);
    }
    audit_all(d2);
    domain_destroy(d2);
    free(x);
    free(gs);
    hvctx_free(&b);
    tguest_fini(&g);
    logs_free(&L);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
}

/* ---- the command line ------------------------------------------------------------------- */

/* Run argv with stdout to `out` (stderr appended to it too); exit status. */
static int run_to(char *const argv[], const char *out)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* The value after "key": inside the object that follows "within" (NULL:
 * anywhere), as text up to the next ',' or '}'. */
static void json_get(const char *doc, const char *within, const char *key, char *out,
                     size_t len)
{
    const char *p = doc;
    char k[96];
    if (within) {
        snprintf(k, sizeof(k), "\"%s\":{", within);
        p = strstr(p, k);
        if (!p)
            fail_msg("no object \"%s\" in: %.400s", within, doc);
    }
    snprintf(k, sizeof(k), "\"%s\":", key);
    p = strstr(p, k);
    if (!p)
        fail_msg("no key \"%s\" in: %.400s", key, doc);
    p += strlen(k);
    size_t n = strcspn(p, ",}");
    snprintf(out, len, "%.*s", (int)(n < len - 1 ? n : len - 1), p);
}

static void expect(const char *doc, const char *within, const char *key, const char *val)
{
    char got[128];
    json_get(doc, within, key, got, sizeof(got));
    if (strcmp(got, val))
        fail_msg("%s%s%s = %s, want %s", within ? within : "", within ? "." : "", key, got, val);
}

static void test_cli_end_to_end(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary was not found (%s)\n", hv);
        skip();
    }
    char dir[] = "/tmp/hvsaveXXXXXX";
    assert_non_null(mkdtemp(dir));
    char f1[64], f2[64], f3[64], f4[64], out[64];
    snprintf(f1, sizeof(f1), "%s/run.hvs", dir);
    snprintf(f2, sizeof(f2), "%s/novcpu.hvs", dir);
    snprintf(f3, sizeof(f3), "%s/big.hvs", dir);
    snprintf(f4, sizeof(f4), "%s/native.hvs", dir);
    snprintf(out, sizeof(out), "%s/out", dir);
    char a[64], b[64], c[64];

    /* an uninterrupted run of 2 x 16384 accesses (whole quanta of 4096 per
     * vCPU, so the interleaving is the same): the reference checksum of the
     * values read (zipf reads the hot words both vCPUs wrote: memory and the
     * PRNG positions matter) */
    char *ref[] = {hv, "run", "--guest-mem", "64M", "--workload", "zipf", "--write-frac", "0.5",
                   "--vcpus", "2", "--seed", "9", "--accesses", "32768", "--json", NULL};
    assert_int_equal(run_to(ref, out), 0);
    char *doc = slurp(out);
    char ref_sum[64];
    json_get(doc, NULL, "checksum", ref_sum, sizeof(ref_sum));
    assert_string_not_equal(ref_sum, "0");
    free(doc);

    /* the first half, saved */
    char *run[] = {hv, "run", "--guest-mem", "64M", "--workload", "zipf", "--write-frac", "0.5",
                   "--vcpus", "2", "--seed", "9", "--accesses", "16384", "--save", f1, "--json",
                   NULL};
    assert_int_equal(run_to(run, out), 0);
    doc = slurp(out);
    expect(doc, "save", "saved", "true");
    expect(doc, NULL, "audit", "\"ok\"");
    json_get(doc, "leaves", "pages_4k", a, sizeof(a));
    json_get(doc, "leaves", "pages_2m", b, sizeof(b));
    json_get(doc, "leaves", "pages_1g", c, sizeof(c));
    free(doc);

    char *insp[] = {hv, "inspect", f1, "--json", NULL};
    assert_int_equal(run_to(insp, out), 0);
    doc = slurp(out);
    expect(doc, NULL, "valid", "true");
    free(doc);

    /* the second half, resumed from the file */
    char *res[] = {hv, "restore", f1, "--run", "--accesses", "16384", "--host-mem", "1G",
                   "--json", NULL};
    assert_int_equal(run_to(res, out), 0);
    doc = slurp(out);
    expect(doc, NULL, "vcpu_state_usable", "true");
    expect(doc, NULL, "resumed", "true");
    expect(doc, "vcpu_state", "vcpus", "2");
    expect(doc, "run", "accesses", "16384");
    expect(doc, "run", "checksum", ref_sum);
    expect(doc, "leaves_restored", "pages_4k", a);
    expect(doc, "leaves_restored", "pages_2m", b);
    expect(doc, "leaves_restored", "pages_1g", c);
    expect(doc, NULL, "audit", "\"ok\"");
    free(doc);
    /* and in text */
    char *rest[] = {hv, "restore", f1, "--run", "--accesses", "1000", "--host-mem", "1G", NULL};
    assert_int_equal(run_to(rest, out), 0);
    doc = slurp(out);
    assert_non_null(strstr(doc, "resumed 2 vCPU(s)"));
    assert_non_null(strstr(doc, "audit: ok"));
    free(doc);

    /* 1G, 2M and 4K leaves: a 2 GiB guest, little of it written */
    char *big[] = {hv, "run", "--guest-mem", "2G", "--workload", "writer", "--wss", "0.002",
                   "--accesses", "4000", "--save", f3, "--json", NULL};
    assert_int_equal(run_to(big, out), 0);
    doc = slurp(out);
    json_get(doc, "leaves", "pages_4k", a, sizeof(a));
    json_get(doc, "leaves", "pages_2m", b, sizeof(b));
    json_get(doc, "leaves", "pages_1g", c, sizeof(c));
    assert_string_not_equal(c, "0");
    free(doc);
    char *resb[] = {hv, "restore", f3, "--run", "--accesses", "4000", "--host-mem", "3G",
                    "--json", NULL};
    assert_int_equal(run_to(resb, out), 0);
    doc = slurp(out);
    expect(doc, NULL, "resumed", "true");
    expect(doc, "leaves_restored", "pages_4k", a);
    expect(doc, "leaves_restored", "pages_2m", b);
    expect(doc, "leaves_restored", "pages_1g", c);
    expect(doc, NULL, "audit", "\"ok\"");
    free(doc);

    /* saved without a running guest: memory restored, --run says why not (exit 2) */
    char *sv[] = {hv, "save", f2, "--guest-mem", "64M", NULL};
    assert_int_equal(run_to(sv, out), 0);
    char *rn[] = {hv, "restore", f2, "--run", "--host-mem", "1G", "--json", NULL};
    assert_int_equal(run_to(rn, out), 2);
    doc = slurp(out);
    expect(doc, NULL, "vcpu_state_usable", "false");
    expect(doc, NULL, "resumed", "false");
    expect(doc, NULL, "audit", "\"ok\"");
    assert_non_null(strstr(doc, "vCPU state not usable"));
    free(doc);
    char *rn2[] = {hv, "restore", f2, "--host-mem", "1G", NULL}; /* without --run: fine */
    assert_int_equal(run_to(rn2, out), 0);

    /* a program guest (native backend): inspect describes its vCPUs */
    char *nat[] = {hv, "run", "--backend", "native", "--guest-mem", "256M", "--vcpus", "2",
                   "--seconds", "0.3", "--save", f4, NULL};
    if (run_to(nat, out) == 0) {
        char *in2[] = {hv, "inspect", f4, "--json", NULL};
        assert_int_equal(run_to(in2, out), 0);
        doc = slurp(out);
        expect(doc, NULL, "vcpu_state_usable", "true");
        assert_non_null(strstr(doc, "program guest: 2 vCPU(s) of the native backend"));
        free(doc);
    } else {
        print_message("# the native backend does not run here: inspect of a program guest "
                      "not checked\n");
    }

    /* bad combinations are refused */
    char *bad1[] = {hv, "run", "--guest-mem", "64M", "--map", "2M", "--save", f2, NULL};
    assert_int_equal(run_to(bad1, out), 1);
    char *bad2[] = {hv, "restore", f1, "--accesses", "10", NULL};
    assert_int_equal(run_to(bad2, out), 1);

    unlink(f1);
    unlink(f2);
    unlink(f3);
    unlink(f4);
    unlink(out);
    rmdir(dir);
    print_message("# hugevm run --save, inspect, restore --run (json and text): resumed "
                  "checksum equals an uninterrupted run's (%s)\n", ref_sum);
}

static int dir_count(const char *dir);

/* Run argv with stdout/stderr to `out` while `dir` is a 1 MiB tmpfs in a
 * private mount namespace (a full disk); *left gets the entries left in
 * it afterwards.  Exit status, or -1 when mount namespaces are refused. */
static int run_full_disk(char *const argv[], const char *out, const char *dir, int *left)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        int res[2] = {-1, 0};
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700") < 0) {
            (void)!write(pfd[1], res, sizeof(res));
            _exit(0);
        }
        pid_t c = fork();
        if (c == 0) {
            int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
            execv(argv[0], argv);
            _exit(127);
        }
        int st;
        waitpid(c, &st, 0);
        res[0] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        res[1] = dir_count(dir);
        (void)!write(pfd[1], res, sizeof(res));
        _exit(0);
    }
    close(pfd[1]);
    int res[2] = {-1, 0};
    assert_int_equal(read(pfd[0], res, sizeof(res)), (ssize_t)sizeof(res));
    close(pfd[0]);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    *left = res[1];
    return res[0];
}

static int dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* A save that fails midway (the disk fills) leaves no file, not even a
 * partial one, and says the name was not written; an existing file (or a
 * symlink) is never replaced or followed; a finished save is mode 0600. */
static void test_cli_save_failures(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary was not found (%s)\n", hv);
        skip();
    }
    char dir[] = "/tmp/hvsavefXXXXXX", out[] = "/tmp/hvsavefXXXXXX.out";
    assert_non_null(mkdtemp(dir));
    memcpy(out, dir, strlen(dir));
    char f[96], victim[96];
    snprintf(f, sizeof(f), "%s/img.hvs", dir);
    snprintf(victim, sizeof(victim), "%s/victim", dir);

    /* hugevm save and run --save with 1 MiB of disk: refused, nothing left */
    char *sv[] = {hv, "save", f, "--guest-mem", "64M", NULL};
    char *rs[] = {hv, "run", "--guest-mem", "64M", "--accesses", "1000", "--save", f, "--json",
                  NULL};
    int left = -1;
    int st = run_full_disk(sv, out, dir, &left);
    char *doc;
    if (st == -1) {
        print_message("# no mount namespace here: the full-disk case is not run\n");
    } else {
        doc = slurp(out);
        if (st != 1 || !strstr(doc, "nothing was written under that name"))
            fail_msg("save on a full disk: exit %d: %.300s", st, doc);
        free(doc);
        assert_int_equal(left, 0);
        st = run_full_disk(rs, out, dir, &left);
        doc = slurp(out);
        if (st != 1 || !strstr(doc, "\"saved\":false"))
            fail_msg("run --save on a full disk: exit %d: %.300s", st, doc);
        free(doc);
        assert_int_equal(left, 0);
    }

    /* an existing file and a symlink at the name: refused, untouched */
    FILE *vf = fopen(victim, "w");
    assert_non_null(vf);
    fputs("precious", vf);
    fclose(vf);
    assert_int_equal(symlink(victim, f), 0);
    assert_int_equal(run_to(sv, out), 1);
    doc = slurp(out);
    assert_non_null(strstr(doc, "exists already"));
    free(doc);
    assert_int_equal(run_to(rs, out), 1);
    unlink(f);
    assert_int_equal(run_to((char *[]){hv, "save", victim, "--guest-mem", "64M", NULL}, out), 1);
    doc = slurp(victim);
    assert_string_equal(doc, "precious");
    free(doc);
    assert_int_equal(dir_count(dir), 1);
    unlink(victim);

    /* and a save that has room: 0600, the only entry */
    assert_int_equal(run_to(sv, out), 0);
    struct stat sb;
    assert_int_equal(stat(f, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0600);
    assert_int_equal(dir_count(dir), 1);
    unlink(f);
    unlink(out);
    rmdir(dir);
    print_message("# save/run --save on a full disk leave no file; existing names and symlinks "
                  "are never replaced\n");
}

/* `--fill FILE` (tools/fill.c): the saved guest's RAM is the file's bytes,
 * page for page, zero pages travelling as zero and the RAM past a shorter
 * file zero; a file larger than the guest, a missing one, or --fill with
 * --balloon are refused by name (save and migrate alike). */
static void test_cli_fill(void **state)
{
    (void)state;
    char hv[PATH_MAX + 32];
    if (!hugevm_path(hv, sizeof(hv))) {
        print_message("# SKIP reason: the hugevm binary was not found (%s)\n", hv);
        skip();
    }
    char dir[] = "/tmp/hvfillXXXXXX";
    assert_non_null(mkdtemp(dir));
    char content[64], big[64], img[64], out[64], missing[64];
    snprintf(content, sizeof(content), "%s/content", dir);
    snprintf(big, sizeof(big), "%s/big", dir);
    snprintf(img, sizeof(img), "%s/img.hvs", dir);
    snprintf(out, sizeof(out), "%s/out", dir);
    snprintf(missing, sizeof(missing), "%s/missing", dir);

    /* 5 MiB + 3 pages + 100 bytes: every third page zero, the others
     * random, the last (partial) page random too: it straddles 2M leaves */
    const size_t len = 5 * MiB + 3 * PAGE_SIZE + 100, pages = (len + PAGE_SIZE - 1) / PAGE_SIZE;
    uint8_t *want = calloc(1, pages * PAGE_SIZE);
    assert_non_null(want);
    struct hv_rng r = {77};
    size_t nonzero = 0; /* data pages the guest gets: not those of the VGA hole */
    for (size_t pg = 0; pg < pages; pg++) {
        if (pg % 3 == 0)
            continue;
        uint64_t *p = (uint64_t *)(want + pg * PAGE_SIZE);
        for (unsigned k = 0; k < PAGE_SIZE / 8; k++)
            p[k] = hv_rng_next(&r) | 1;
        nonzero += pg < VGA_HOLE_GFN || pg >= VGA_HOLE_GFN + VGA_HOLE_NR;
    }
    memset(want + len, 0, pages * PAGE_SIZE - len); /* past the file: zero in the guest */
    if (pages % 3 == 1) /* the partial page must hold data for the count below */
        fail_msg("test layout: the last page is a zero one");
    FILE *f = fopen(content, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(want, 1, len, f), len);
    fclose(f);

    char *sv[] = {hv, "save", img, "--guest-mem", "16M", "--fill", content, "--json", NULL};
    assert_int_equal(run_to(sv, out), 0);
    char *doc = slurp(out);
    char got[64];
    snprintf(got, sizeof(got), "%zu", nonzero);
    expect(doc, NULL, "pages_data", got);
    snprintf(got, sizeof(got), "%llu",
             (unsigned long long)(16 * MiB / PAGE_SIZE - VGA_HOLE_NR - nonzero));
    expect(doc, NULL, "pages_zero", got);
    free(doc);

    /* restore it here and compare every RAM page of the guest's 16 MiB: each
     * holds the file's bytes at its address (the VGA hole is no RAM) */
    struct machine *m = new_machine(256 * MiB);
    int fd = open(img, O_RDONLY);
    assert_true(fd >= 0);
    struct stream_fd sfd;
    struct stream_io io;
    struct restore_result rr;
    assert_int_equal(stream_fd_open(&sfd, &io, fd), 0);
    int rc = stream_restore(m, &io, NULL, &rr);
    stream_fd_free(&sfd);
    close(fd);
    if (rc < 0)
        fail_msg("stream_restore: %s", rr.err);
    static const uint8_t zero[PAGE_SIZE];
    for (gfn_t g = 0; g < 16 * MiB / PAGE_SIZE; g++) {
        enum p2m_type t;
        unsigned lo;
        mfn_t mfn = p2m_get_entry(rr.d->p2m, g, &t, &lo);
        bool vga = g >= VGA_HOLE_GFN && g < VGA_HOLE_GFN + VGA_HOLE_NR;
        assert_true(p2m_is_ram(t) == !vga);
        if (vga)
            continue;
        const void *exp = g < pages ? want + g * PAGE_SIZE : zero;
        if (memcmp(machine_ptr(m, mfn), exp, PAGE_SIZE))
            fail_msg("gfn 0x%llx differs from the --fill file", (unsigned long long)g);
    }
    domain_destroy(rr.d);
    restore_result_free(&rr);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
    unlink(img);

    /* a file larger than the guest, a missing file, --fill with --balloon */
    f = fopen(big, "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), 16 * MiB + 1), 0);
    fclose(f);
    char *sb[] = {hv, "save", img, "--guest-mem", "16M", "--fill", big, NULL};
    assert_int_equal(run_to(sb, out), 1);
    doc = slurp(out);
    if (!strstr(doc, big) || !strstr(doc, "more than the guest's RAM"))
        fail_msg("a file larger than the guest: %.300s", doc);
    free(doc);
    char *sm[] = {hv, "save", img, "--guest-mem", "16M", "--fill", missing, NULL};
    assert_int_equal(run_to(sm, out), 1);
    doc = slurp(out);
    if (!strstr(doc, missing) || !strstr(doc, "No such file"))
        fail_msg("a missing file: %.300s", doc);
    free(doc);
    char *sbl[] = {hv, "save", img, "--guest-mem", "16M", "--fill", content, "--balloon",
                   "0x100000+0x200000", NULL};
    assert_int_equal(run_to(sbl, out), 1);
    doc = slurp(out);
    assert_non_null(strstr(doc, "do not go together"));
    free(doc);
    assert_int_equal(access(img, F_OK), -1); /* no image from any of them */
    char *mg[] = {hv, "migrate", "--to", "127.0.0.1:1", "--insecure", "--backend", "soft",
                  "--guest-mem", "16M", "--fill", big, NULL};
    assert_int_equal(run_to(mg, out), 1);
    doc = slurp(out);
    if (!strstr(doc, "migrate: --fill") || !strstr(doc, "more than the guest's RAM"))
        fail_msg("migrate --fill with a file larger than the guest: %.300s", doc);
    free(doc);

    unlink(content);
    unlink(big);
    unlink(out);
    rmdir(dir);
    free(want);
    print_message("# save --fill: %zu data pages of %zu, every page equal to the file's after "
                  "restore; larger, missing and --balloon refused\n", nonzero, pages);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_uniform_1),
    cmocka_unit_test(test_writer_2),
    cmocka_unit_test(test_zipf_3_random_quanta),
    cmocka_unit_test(test_seq_2),
    cmocka_unit_test(test_no_vcpu_state),
    cmocka_unit_test(test_corrupt_state),
    cmocka_unit_test(test_cli_end_to_end),
    cmocka_unit_test(test_cli_save_failures),
    cmocka_unit_test(test_cli_fill),
};

int main(void)
{
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

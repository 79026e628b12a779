/*
 * test_guest_state.c - a KVM vCPU's XSAVE area, XCRs and MSRs as
 * HVM_CONTEXT TLVs (PROG_XSAVE, PROG_MSRS; guest_state.h), without KVM:
 * the encode/decode round trip byte for byte, through a whole stream
 * (save and restore keep the critical TLVs for the vCPU decoder), hostile
 * TLVs refused with the TLV, its offset and the field named, every
 * truncation refused, the consistency rules (every vCPU or none, none for
 * a native guest, none without PROG_VCPU), and the rule for a soft
 * restore given KVM vCPU state.  And the framing of any TLV area
 * (hvctx_area_next) against a list of the TLVs put in, cut at every byte,
 * with the three decoders that walk such areas refusing each cut alike.
 */
#include <endian.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"

#include "guest.h"
#include "guest_state.h"
#include "migrate.h"
#include "save.h"
#include "stream.h"

#define NV 2u
#define XLEN 4096u

/* A plausible extended state of vCPU v: XCR0 x87|SSE|AVX, an XSAVE area
 * with those three features in use, and every MSR of the list. */
static void make_ext(struct hvctx_prog_ext *e, unsigned v)
{
    memset(e, 0, sizeof(*e));
    e->xsave_len = XLEN;
    for (unsigned k = 0; k < XLEN; k++)
        e->xsave[k] = (uint8_t)(k * 7 + v);
    uint32_t mxcsr = htole32(0x1f80);
    memcpy(e->xsave + 24, &mxcsr, 4);
    memset(e->xsave + 512, 0, 64); /* the header */
    uint64_t bv = htole64(7);
    memcpy(e->xsave + 512, &bv, 8);
    e->nr_xcrs = 1;
    e->xcrs[0] = (struct hvctx_reg){0, 0, 7};
    static const uint32_t idx[] = {
#define X(i, name) i,
        HVCTX_PROG_MSR_LIST(X)
#undef X
    };
    for (unsigned k = 0; k < ARRAY_SIZE(idx); k++) {
        uint64_t val = 0x1000 * (k + 1) + v;
        if (idx[k] == 0x277u)
            val = 0x0007040600070406ULL; /* PAT's reset value */
        if (idx[k] == HVCTX_MSR_IA32_TSC)
            val = (1ULL << 50) + v;
        e->msrs[e->nr_msrs++] = (struct hvctx_reg){idx[k], 0, val};
    }
}

/* PROG_VCPU (KVM, 2M guest pages) for each of NV vCPUs, then each vCPU's
 * extended TLVs when `ext`; backend b. */
static void build(struct hvctx_buf *b, bool ext, uint32_t backend, struct hvctx_prog_ext *e)
{
    assert_int_equal(hvctx_begin(b), 0);
    for (unsigned v = 0; v < NV; v++) {
        struct hvctx_prog_vcpu s;
        memset(&s, 0, sizeof(s));
        s.vcpu = v;
        s.nr_vcpus = NV;
        s.backend = backend;
        s.guest_page_order = backend == GUEST_BACKEND_KVM ? PAGE_ORDER_2M : 0;
        assert_int_equal(hvctx_add(b, HVCTX_PROG_VCPU, HVCTX_F_CRITICAL, &s, sizeof(s)), 0);
    }
    if (ext)
        for (unsigned v = 0; v < NV; v++) {
            make_ext(&e[v], v);
            assert_int_equal(guest_state_prog_ext_encode(b, v, &e[v]), 0);
        }
}

static const uint8_t *area_of(const struct hvctx_buf *b, size_t *len)
{
    *len = b->len - sizeof(struct hvctx_header);
    return b->p + sizeof(struct hvctx_header);
}

/* Offset of the n-th TLV of `type` in the area (its header). */
static size_t find_tlv(const uint8_t *a, size_t len, uint16_t type, unsigned n)
{
    for (size_t pos = 0; pos + 8 <= len;) {
        struct hvctx_tlv t;
        memcpy(&t, a + pos, 8);
        if (t.type == type && n-- == 0)
            return pos;
        pos += 8 + ((t.length + 7u) & ~7u);
    }
    fail_msg("no TLV of type %u", type);
    return 0;
}

static void check_equal(const struct guest_prog_state *ps, const struct hvctx_prog_ext *e)
{
    for (unsigned v = 0; v < NV; v++) {
        const struct hvctx_prog_ext *d = &ps->ext[v];
        assert_int_equal(d->xsave_len, e[v].xsave_len);
        assert_memory_equal(d->xsave, e[v].xsave, XLEN);
        assert_int_equal(d->nr_xcrs, 1);
        assert_int_equal(d->xcrs[0].value, 7);
        assert_int_equal(d->nr_msrs, e[v].nr_msrs);
        assert_memory_equal(d->msrs, e[v].msrs, e[v].nr_msrs * sizeof(e[v].msrs[0]));
    }
}

/* The round trip, in an area and through a whole stream. */
static void test_roundtrip(void **s)
{
    (void)s;
    struct hvctx_prog_ext *e = calloc(NV, sizeof(*e));
    struct guest_prog_state *ps = malloc(sizeof(*ps));
    assert_non_null(e);
    assert_non_null(ps);
    struct hvctx_buf b;
    char err[256] = "";
    size_t len;
    build(&b, true, GUEST_BACKEND_KVM, e);
    const uint8_t *a = area_of(&b, &len);
    if (guest_prog_decode(a, len, ps, err, sizeof(err)) != 1)
        fail_msg("decode: %s", err);
    assert_int_equal(ps->nr_vcpus, NV);
    assert_true(ps->has_xsave);
    assert_true(ps->has_msrs);
    check_equal(ps, e);
    /* both TLVs are critical, and their names are known */
    struct hvctx_tlv t;
    memcpy(&t, a + find_tlv(a, len, HVCTX_PROG_XSAVE, 0), 8);
    assert_int_equal(t.flags & HVCTX_F_CRITICAL, HVCTX_F_CRITICAL);
    memcpy(&t, a + find_tlv(a, len, HVCTX_PROG_MSRS, 1), 8);
    assert_int_equal(t.flags & HVCTX_F_CRITICAL, HVCTX_F_CRITICAL);
    assert_string_equal(guest_state_msr_name(HVCTX_MSR_IA32_TSC), "IA32_TSC");
    assert_null(guest_state_msr_name(0x1a0));

    /* a stream saved with them: restore keeps them for the vCPU decoder */
    struct machine *m = new_machine(64 * MiB);
    struct domain *d = new_guest(m, 16 * MiB);
    struct stream_mem mem = {0}, src;
    struct stream_io io;
    struct save_result sr;
    struct restore_result rr;
    stream_mem_sink(&mem, &io);
    struct save_opts so = {.extra_tlvs = a, .extra_tlvs_len = len};
    if (stream_save(d, &io, &so, &sr, err, sizeof(err)) < 0)
        fail_msg("stream_save: %s", err);
    domain_destroy(d);
    stream_mem_source(&src, &io, mem.buf, mem.len);
    if (stream_restore(m, &io, NULL, &rr) < 0)
        fail_msg("stream_restore: %s", rr.err);
    memset(ps, 0xa5, sizeof(*ps));
    if (guest_prog_decode(rr.context, rr.context_len, ps, err, sizeof(err)) != 1)
        fail_msg("decode after restore: %s", err);
    check_equal(ps, e);
    /* the soft decoder leaves a program guest's state to the program path */
    struct guest_state *gs = malloc(sizeof(*gs));
    assert_non_null(gs);
    assert_int_equal(guest_state_decode(rr.context, rr.context_len, gs, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "no soft vCPU state"));
    free(gs);
    restore_result_free(&rr);
    domain_destroy(rr.d);
    stream_mem_free(&mem);
    assert_machine_empty(m);
    machine_destroy(m);

    /* without the new TLVs (a stream written before them): still a
     * complete state, resumed with KVM's defaults for the rest */
    hvctx_free(&b);
    build(&b, false, GUEST_BACKEND_KVM, e);
    a = area_of(&b, &len);
    assert_int_equal(guest_prog_decode(a, len, ps, err, sizeof(err)), 1);
    assert_false(ps->has_xsave);
    assert_false(ps->has_msrs);
    hvctx_free(&b);
    free(ps);
    free(e);
}

struct mutation {
    uint16_t type; /* the TLV patched */
    unsigned nth;  /* which of that type (0: vCPU 0's) */
    size_t off;    /* in its value */
    unsigned width;
    uint64_t val;
    const char *want; /* in the error, besides the TLV's name and offset */
};

/* Hostile TLVs: each mutation alone is refused with -EBADMSG, an error
 * naming the TLV and its offset and the field; every truncation of the
 * area is refused, never read beyond. */
static void test_hostile(void **s)
{
    (void)s;
    struct hvctx_prog_ext *e = calloc(NV, sizeof(*e));
    struct guest_prog_state *ps = malloc(sizeof(*ps));
    assert_non_null(e);
    assert_non_null(ps);
    struct hvctx_buf b;
    char err[320];
    size_t len;
    build(&b, true, GUEST_BACKEND_KVM, e);
    const uint8_t *a = area_of(&b, &len);
    uint8_t *x = malloc(len);
    assert_non_null(x);
    const size_t xr = 16, xa = 32;  /* PROG_XSAVE: its XCR entry, its area */
    const size_t mr = 16;            /* PROG_MSRS: the first entry */
    const struct mutation cases[] = {
        {HVCTX_PROG_XSAVE, 0, 0, 2, 2, "version 2"},
        {HVCTX_PROG_MSRS, 0, 0, 2, 0, "version 0"},
        {HVCTX_PROG_XSAVE, 0, 2, 2, 1, "reserved field"},
        {HVCTX_PROG_MSRS, 0, 4, 4, 40, "vCPU 40 out of range"},
        {HVCTX_PROG_MSRS, 1, 4, 4, 0, "given twice"},
        {HVCTX_PROG_XSAVE, 0, 8, 4, 17, "17 XCRs"},
        {HVCTX_PROG_XSAVE, 0, 12, 4, 100, "XSAVE area of 100 bytes"},
        {HVCTX_PROG_XSAVE, 0, 12, 4, 20000, "XSAVE area of 20000 bytes"},
        {HVCTX_PROG_XSAVE, 0, 12, 4, XLEN - 2, "XSAVE area of 4094 bytes"},
        {HVCTX_PROG_XSAVE, 0, 12, 4, XLEN - 4, "in 4128 bytes"},
        {HVCTX_PROG_XSAVE, 0, xr, 4, 1, "XCR 1"},
        {HVCTX_PROG_XSAVE, 0, xr + 4, 4, 1, "reserved word"},
        {HVCTX_PROG_XSAVE, 0, xr + 8, 8, 6, "XCR0 0x6"},
        {HVCTX_PROG_XSAVE, 0, xr + 8, 8, 5, "AVX needs SSE"},
        {HVCTX_PROG_XSAVE, 0, xr + 8, 8, 0x27, "XCR0 0x27"},
        {HVCTX_PROG_XSAVE, 0, xa + 24, 4, 0x10000, "MXCSR 0x10000"},
        {HVCTX_PROG_XSAVE, 0, xa + 520, 8, 1ULL << 63, "not the standard format"},
        {HVCTX_PROG_XSAVE, 0, xa + 560, 1, 1, "reserved bytes"},
        {HVCTX_PROG_XSAVE, 0, xa + 512, 8, 0x107, "XSTATE_BV 0x107"},
        {HVCTX_PROG_MSRS, 0, 8, 4, 33, "33 MSRs"},
        {HVCTX_PROG_MSRS, 0, 8, 4, 3, "3 MSRs in"},
        {HVCTX_PROG_MSRS, 0, 12, 4, 1, "reserved word set"},
        {HVCTX_PROG_MSRS, 0, mr, 4, 0x1234, "MSR 0x1234 is not one"},
        {HVCTX_PROG_MSRS, 0, mr, 4, 0xc0000084, "MSR SFMASK given twice"},
        {HVCTX_PROG_MSRS, 0, mr + 4, 4, 9, "reserved word set"},
    };
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        const struct mutation *c = &cases[k];
        memcpy(x, a, len);
        size_t at = find_tlv(x, len, c->type, c->nth);
        uint64_t le = htole64(c->val);
        memcpy(x + at + 8 + c->off, &le, c->width);
        err[0] = 0;
        int rc = guest_prog_decode(x, len, ps, err, sizeof(err));
        char where[64];
        snprintf(where, sizeof(where), "%s TLV at %zu",
                 c->type == HVCTX_PROG_XSAVE ? "PROG_XSAVE" : "PROG_MSRS", at);
        if (rc != -EBADMSG || !strstr(err, c->want) || !strstr(err, where))
            fail_msg("case %zu: rc %d, err '%s', want '%s' and '%s'", k, rc, err, c->want,
                     where);
    }
    /* MSR values KVM would refuse: by name, with the entry's offset */
    static const struct {
        uint32_t msr;
        uint64_t val;
        const char *want;
    } values[] = {
        {0xc0000082u, 0x0100000000000000ULL, "MSR LSTAR = 0x100000000000000: not a canonical"},
        {0x00000277u, 0x0007040600070402ULL, "MSR IA32_PAT"},
        {0xc0000103u, 1ULL << 32, "MSR TSC_AUX = 0x100000000: bits 32-63"},
    };
    for (size_t k = 0; k < ARRAY_SIZE(values); k++) {
        memcpy(x, a, len);
        size_t at = find_tlv(x, len, HVCTX_PROG_MSRS, 0);
        unsigned i = 0;
        while (e[0].msrs[i].index != values[k].msr)
            i++;
        uint64_t le = htole64(values[k].val);
        memcpy(x + at + 8 + 16 + 16 * i + 8, &le, 8);
        char off[48];
        snprintf(off, sizeof(off), "entry %u (offset %zu)", i, at + 8 + 16 + 16 * i);
        assert_int_equal(guest_prog_decode(x, len, ps, err, sizeof(err)), -EBADMSG);
        if (!strstr(err, values[k].want) || !strstr(err, off))
            fail_msg("MSR value %zu: '%s'", k, err);
    }
    /* every truncation: refused, never a read beyond */
    size_t x0 = find_tlv(a, len, HVCTX_PROG_XSAVE, 0);
    for (size_t cut = 0; cut < len; cut++) {
        /* cut before the first PROG_XSAVE: a state without them (as
         * written before they existed), else refused */
        int rc = guest_prog_decode(a, cut, ps, err, sizeof(err));
        if (rc != (cut == 0 ? 0 : cut == x0 ? 1 : -EBADMSG))
            fail_msg("cut at %zu of %zu: %d (%s)", cut, len, rc, err);
    }
    assert_int_equal(guest_prog_decode(a, len, ps, err, sizeof(err)), 1);

    /* PROG_XSAVE for one vCPU of two (vCPU 1's dropped: the area up to
     * vCPU 1's PROG_XSAVE, then what follows it) */
    size_t x1 = find_tlv(a, len, HVCTX_PROG_XSAVE, 1), m1 = find_tlv(a, len, HVCTX_PROG_MSRS, 1);
    memcpy(x, a, x1);
    memcpy(x + x1, a + m1, len - m1);
    assert_int_equal(guest_prog_decode(x, x1 + len - m1, ps, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "every vCPU has one or none does"));
    /* the extended TLVs without any PROG_VCPU */
    assert_int_equal(guest_prog_decode(a + x0, len - x0, ps, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "PROG_XSAVE TLV at 0 without the PROG_VCPU"));
    hvctx_free(&b);

    /* a native guest carries none */
    build(&b, true, GUEST_BACKEND_NATIVE, e);
    a = area_of(&b, &len);
    assert_int_equal(guest_prog_decode(a, len, ps, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "for a native guest"));
    hvctx_free(&b);
    free(x);
    free(ps);
    free(e);
}

/*
 * The rule for a soft restore (guest_state_decode) given KVM vCPU state: a
 * stream of soft vCPUs (VCPU and WORKLOAD TLVs) that also holds PROG_VCPU,
 * PROG_XSAVE or PROG_MSRS is contradictory and refused, naming the first
 * such TLV and its offset; a stream with KVM state only is no soft
 * guest's (0: the program path takes it).
 */
static void test_soft_rule(void **s)
{
    (void)s;
    struct machine *m = new_machine(64 * MiB);
    struct domain *d = new_guest(m, 16 * MiB);
    struct vcpu *v[NV];
    struct workload *w[NV];
    struct tlb_config tc;
    struct workload_config wc;
    tlb_config_default(&tc);
    workload_config_default(&wc, WL_UNIFORM);
    for (unsigned i = 0; i < NV; i++) {
        assert_int_equal(vcpu_create(d, i, &tc, &v[i]), 0);
        assert_int_equal(workload_create(d, &wc, i, NV, &w[i]), 0);
    }
    struct hvctx_buf b;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(guest_state_encode(&b, NV, v, w, &wc), 0);
    size_t soft_len = b.len - sizeof(struct hvctx_header);
    struct guest_state *gs = malloc(sizeof(*gs));
    char err[256];
    assert_non_null(gs);
    assert_int_equal(guest_state_decode(b.p + sizeof(struct hvctx_header), soft_len, gs, err,
                                        sizeof(err)), 1);
    struct hvctx_prog_ext *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    make_ext(e, 0);
    e->xsave_len = 0; /* PROG_MSRS alone */
    assert_int_equal(guest_state_prog_ext_encode(&b, 0, e), 0);
    assert_int_equal(guest_state_decode(b.p + sizeof(struct hvctx_header),
                                        b.len - sizeof(struct hvctx_header), gs, err,
                                        sizeof(err)), -EBADMSG);
    char want[64];
    snprintf(want, sizeof(want), "PROG_MSRS TLV at %zu", soft_len);
    if (!strstr(err, want) || !strstr(err, "in a stream of soft vCPUs"))
        fail_msg("'%s', want '%s'", err, want);
    assert_int_equal(gs->nr_vcpus, 0);
    hvctx_free(&b);
    free(e);
    free(gs);
    for (unsigned i = 0; i < NV; i++) {
        workload_destroy(w[i]);
        vcpu_destroy(v[i]);
    }
    domain_destroy(d);
    assert_machine_empty(m);
    machine_destroy(m);
}

/*
 * TLV framing: random areas of TLVs of types no decoder knows (so each
 * skips them), walked by hvctx_area_next against the list put in; every
 * cut of the area: the TLVs wholly before it, then the end (a cut between
 * TLVs) or -EBADMSG naming the first cut TLV's offset and what is wrong
 * (header or value cut); the decoders of soft vCPU state, program vCPU
 * state and post-copy state refuse the same cuts with the same words and
 * see nothing of theirs in the others.  A length pointing past the area
 * is refused where it is.
 */
static void test_tlv_framing(void **s)
{
    (void)s;
    struct hv_rng r = {0x71f0ull};
    struct guest_state *gs = calloc(1, sizeof(*gs));
    struct guest_prog_state *ps = calloc(1, sizeof(*ps));
    assert_non_null(gs);
    assert_non_null(ps);
    for (int iter = 0; iter < 60; iter++) {
        enum { MAXT = 10 };
        size_t off[MAXT + 1];
        uint32_t len[MAXT];
        uint16_t type[MAXT];
        uint8_t val[MAXT][100];
        unsigned n = (unsigned)hv_rng_below(&r, MAXT + 1);
        struct hvctx_buf b;
        assert_int_equal(hvctx_begin(&b), 0);
        off[0] = 0;
        for (unsigned i = 0; i < n; i++) {
            type[i] = (uint16_t)(0x7000 + hv_rng_below(&r, 0x800));
            len[i] = (uint32_t)hv_rng_below(&r, sizeof(val[i]) + 1);
            for (uint32_t k = 0; k < len[i]; k++)
                val[i][k] = (uint8_t)hv_rng_next(&r);
            assert_int_equal(hvctx_add(&b, type[i], 0, val[i], len[i]), 0);
            off[i + 1] = off[i] + 8 + ((len[i] + 7u) & ~7u);
        }
        const uint8_t *area = b.p + sizeof(struct hvctx_header);
        size_t alen = b.len - sizeof(struct hvctx_header);
        assert_int_equal(alen, off[n]);
        for (size_t cut = 0; cut <= alen; cut++) {
            unsigned whole = 0;
            while (whole < n && off[whole + 1] <= cut)
                whole++;
            bool boundary = cut == off[whole];
            char want[96] = "", err[256] = "";
            if (!boundary)
                snprintf(want, sizeof(want), cut - off[whole] < 8
                         ? "HVM_CONTEXT: truncated TLV header at %zu"
                         : "HVM_CONTEXT: TLV at %zu overruns the area", off[whole]);
            size_t pos = 0;
            struct hvctx_tlv t;
            const uint8_t *v;
            for (unsigned i = 0; i < whole; i++) {
                assert_int_equal(hvctx_area_next(area, cut, &pos, &t, &v, err, sizeof(err)), 1);
                assert_int_equal(t.type, type[i]);
                assert_int_equal(t.length, len[i]);
                assert_ptr_equal(v, area + off[i] + 8);
                assert_memory_equal(v, val[i], len[i]);
                assert_int_equal(pos, off[i + 1]);
            }
            assert_int_equal(hvctx_area_next(area, cut, &pos, &t, &v, err, sizeof(err)),
                             boundary ? 0 : -EBADMSG);
            if (!boundary)
                assert_string_equal(err, want);
            /* the decoders: none of their TLVs here, so a whole area is
             * "nothing", a cut one the walker's words */
            err[0] = 0;
            assert_int_equal(guest_state_decode(area, cut, gs, err, sizeof(err)),
                             boundary ? 0 : -EBADMSG);
            if (!boundary)
                assert_string_equal(err, want);
            err[0] = 0;
            assert_int_equal(guest_prog_decode(area, cut, ps, err, sizeof(err)),
                             boundary ? 0 : -EBADMSG);
            if (!boundary)
                assert_string_equal(err, want);
            struct migrate_pc_state st;
            err[0] = 0;
            assert_int_equal(migrate_pc_state_decode(area, cut, NULL, &st, err, sizeof(err)),
                             boundary ? 0 : -EBADMSG);
            assert_null(st.pending);
            if (!boundary)
                assert_string_equal(err, want);
        }
        /* one TLV's length past the end of the area, up to 2^32 - 1 */
        if (n) {
            unsigned i = (unsigned)hv_rng_below(&r, n);
            uint8_t *copy = malloc(alen);
            assert_non_null(copy);
            memcpy(copy, area, alen);
            uint32_t bad = (uint32_t)(alen - off[i] - 8 + 1 + hv_rng_below(&r, 1u << 31));
            bad = htole32(bad);
            memcpy(copy + off[i] + 4, &bad, 4);
            char want[96], err[256];
            snprintf(want, sizeof(want), "HVM_CONTEXT: TLV at %zu overruns the area", off[i]);
            size_t pos = 0;
            struct hvctx_tlv t;
            const uint8_t *v;
            for (unsigned k = 0; k < i; k++)
                assert_int_equal(hvctx_area_next(copy, alen, &pos, &t, &v, err, sizeof(err)), 1);
            assert_int_equal(hvctx_area_next(copy, alen, &pos, &t, &v, err, sizeof(err)),
                             -EBADMSG);
            assert_string_equal(err, want);
            assert_int_equal(guest_prog_decode(copy, alen, ps, err, sizeof(err)), -EBADMSG);
            assert_string_equal(err, want);
            free(copy);
        }
        hvctx_free(&b);
    }
    free(gs);
    free(ps);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_soft_rule),
        cmocka_unit_test(test_tlv_framing),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * guest_state.c - vCPU and workload state as HVM_CONTEXT TLVs (see
 * guest_state.h, which also holds the wire structs); save/restore and live
 * migration (migrate.c) both encode and decode through this file: soft
 * vCPUs directly, a KVM vCPU's XSAVE area and MSRs through guest.c's
 * program-guest encoder and decoder.
 */
#include "guest_state.h"

#include <endian.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t dbl_bits(double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    return htole64(u);
}

static double dbl_of(uint64_t le)
{
    uint64_t u = le64toh(le);
    double x;
    memcpy(&x, &u, 8);
    return x;
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) HV_PRINTF(4, 5);
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* HVCTX_GUEST_MEM: the extents every workload addresses (left out when
 * they differ or are too many: the receiver then uses its own memory). */
static int encode_mem(struct hvctx_buf *b, unsigned n, struct workload *const *w)
{
    size_t nr = workload_extents(w[0], NULL, 0);
    if (nr == 0 || nr > GUEST_STATE_MAX_MEM)
        return 0;
    size_t len = 8 + 16 * nr;
    uint8_t *p = hv_malloc(len);
    struct gfn_range *a = hv_malloc(nr * sizeof(*a)), *o = hv_malloc(nr * sizeof(*o));
    int rc = -ENOMEM;
    if (!p || !a || !o)
        goto out;
    (void)workload_extents(w[0], a, nr);
    rc = 0;
    for (unsigned i = 1; i < n; i++)
        if (workload_extents(w[i], o, nr) != nr || memcmp(o, a, nr * sizeof(*a)))
            goto out; /* not one memory: say nothing */
    uint32_t hdr[2] = {htole32((uint32_t)nr), 0};
    memcpy(p, hdr, 8);
    for (size_t i = 0; i < nr; i++) {
        uint64_t x[2] = {htole64(a[i].gfn), htole64(a[i].nr)};
        memcpy(p + 8 + 16 * i, x, 16);
    }
    rc = hvctx_add(b, HVCTX_GUEST_MEM, 0, p, (uint32_t)len);
out:
    free(p);
    free(a);
    free(o);
    return rc;
}

/* Extent i of a checked HVCTX_GUEST_MEM value. */
static struct gfn_range mem_extent(const uint8_t *mem, size_t i)
{
    uint64_t x[2];
    memcpy(x, mem + 16 * i, 16);
    return (struct gfn_range){le64toh(x[0]), le64toh(x[1])};
}

static int decode_mem(const uint8_t *val, uint32_t l, struct guest_state *gs, char *err,
                      size_t errlen)
{
    uint32_t n;
    if (gs->nr_mem)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: GUEST_MEM given twice");
    if (l < 8)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: GUEST_MEM TLV of %u bytes", l);
    memcpy(&n, val, 4);
    n = le32toh(n);
    if (n == 0 || n > GUEST_STATE_MAX_MEM || l != 8 + 16ULL * n)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: GUEST_MEM: %u extents in %u bytes", n,
                    l);
    gfn_t end = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct gfn_range r = mem_extent(val + 8, i);
        if (r.nr == 0 || r.gfn < end || r.gfn >= P2M_GFN_LIMIT || r.nr > P2M_GFN_LIMIT - r.gfn)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: GUEST_MEM extent %u (gfn %#llx, "
                        "%llu pages) out of order or beyond the gfn space", i,
                        (unsigned long long)r.gfn, (unsigned long long)r.nr);
        end = r.gfn + r.nr;
    }
    gs->mem = val + 8;
    gs->nr_mem = n;
    return 0;
}

int guest_state_encode(struct hvctx_buf *b, unsigned n, struct vcpu *const *v,
                       struct workload *const *w, const struct workload_config *wc)
{
    if (n == 0 || n > GUEST_STATE_MAX_VCPUS)
        return -EINVAL;
    int rc = 0;
    for (unsigned i = 0; i < n && rc == 0; i++) {
        const struct tlb_config *c = &v[i]->cfg;
        struct mig_vcpu_tlv vt = {htole32(i), htole32(n), htole32(c->guest_order), 0, {0}, {0}};
        for (unsigned k = 0; k < 3; k++) {
            vt.entries[k] = htole32(c->entries[k]);
            vt.ways[k] = htole32(c->ways[k]);
        }
        rc = hvctx_add(b, HVCTX_VCPU, 0, &vt, sizeof(vt));
        struct workload_state st;
        workload_get_state(w[i], &st);
        struct mig_workload_tlv wt = {
            htole32(i), htole32((uint32_t)wc->kind), htole32(wc->quantum), 0,
            htole64(wc->seed), htole64(wc->write_rate), dbl_bits(wc->write_frac),
            dbl_bits(wc->zipf_theta), dbl_bits(wc->wss), htole64(st.rng), htole64(st.pos),
            htole64(st.pass), htole64(st.seq), htole64(st.checksum), htole64(st.writes)};
        if (rc == 0)
            rc = hvctx_add(b, HVCTX_WORKLOAD, 0, &wt, sizeof(wt));
    }
    return rc == 0 ? encode_mem(b, n, w) : rc;
}

/* One vCPU's TLVs -> its configuration and state, checked. */
static int decode_one(unsigned i, const struct mig_vcpu_tlv *vt, const struct mig_workload_tlv *wt,
                      struct guest_vcpu_state *s, char *err, size_t errlen)
{
    struct tlb_config *tc = &s->tc;
    tlb_config_default(tc);
    tc->guest_order = le32toh(vt->guest_order);
    bool bad = tc->guest_order != PAGE_ORDER_4K && tc->guest_order != PAGE_ORDER_2M &&
               tc->guest_order != PAGE_ORDER_1G;
    for (unsigned k = 0; k < 3; k++) {
        tc->entries[k] = le32toh(vt->entries[k]);
        tc->ways[k] = le32toh(vt->ways[k]);
        if (tc->entries[k] > 65536 || tc->ways[k] == 0 || tc->ways[k] > 64)
            bad = true;
    }
    if (bad)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: vCPU %u: implausible TLB geometry", i);
    uint32_t kind = le32toh(wt->kind);
    struct workload_config *wc = &s->wc;
    workload_config_default(wc, kind < WL_NR_KINDS ? (enum workload_kind)kind : WL_SEQ);
    wc->seed = le64toh(wt->seed);
    wc->write_rate = le64toh(wt->write_rate);
    wc->quantum = le32toh(wt->quantum);
    wc->write_frac = dbl_of(wt->write_frac);
    wc->zipf_theta = dbl_of(wt->zipf_theta);
    wc->wss = dbl_of(wt->wss);
    if (kind >= WL_NR_KINDS || wc->quantum > (1u << 20) || !isfinite(wc->write_frac) ||
        !isfinite(wc->zipf_theta) || !isfinite(wc->wss) || wc->write_frac < -1 ||
        wc->write_frac > 1 || wc->zipf_theta < 0 || wc->zipf_theta >= 1 || wc->wss < 0 ||
        wc->wss > 1)
        return fail(err, errlen, -EBADMSG,
                    "HVM_CONTEXT: vCPU %u: implausible workload configuration", i);
    s->ws = (struct workload_state){le64toh(wt->rng), le64toh(wt->pos), le64toh(wt->pass),
                                    le64toh(wt->seq), le64toh(wt->checksum),
                                    le64toh(wt->writes)};
    return 0;
}

int guest_state_decode(const void *area, size_t len, struct guest_state *gs, char *err,
                       size_t errlen)
{
    const uint8_t *a = area;
    bool have_v[GUEST_STATE_MAX_VCPUS] = {0}, have_w[GUEST_STATE_MAX_VCPUS] = {0};
    unsigned nr = 0, seen = 0;
    size_t pos = 0, kvm_at = 0;
    uint16_t kvm_type = 0; /* the first KVM vCPU-state TLV (guest_state.h's rule) */
    int rc = 0;
    struct mig_vcpu_tlv *vt = hv_calloc(GUEST_STATE_MAX_VCPUS, sizeof(*vt));
    struct mig_workload_tlv *wt = hv_calloc(GUEST_STATE_MAX_VCPUS, sizeof(*wt));
    memset(gs, 0, sizeof(*gs));
    if (!vt || !wt) {
        rc = fail(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        struct hvctx_tlv t;
        const uint8_t *val;
        size_t at = pos;
        int more = hvctx_area_next(a, len, &pos, &t, &val, err, errlen);
        if (more < 0) {
            rc = more;
            goto out;
        }
        if (!more)
            break;
        if (t.type == HVCTX_GUEST_MEM) {
            rc = decode_mem(val, t.length, gs, err, errlen);
            if (rc < 0)
                goto out;
            continue;
        }
        if (!kvm_type && (t.type == HVCTX_PROG_VCPU || t.type == HVCTX_PROG_XSAVE ||
                          t.type == HVCTX_PROG_MSRS)) {
            kvm_type = t.type;
            kvm_at = at;
        }
        if (t.type != HVCTX_VCPU && t.type != HVCTX_WORKLOAD)
            continue;
        seen++;
        bool is_v = t.type == HVCTX_VCPU;
        size_t want = is_v ? sizeof(struct mig_vcpu_tlv) : sizeof(struct mig_workload_tlv);
        if (t.length != want) {
            rc = fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV of %u bytes (want %zu)",
                      is_v ? "VCPU" : "WORKLOAD", t.length, want);
            goto out;
        }
        uint32_t id;
        memcpy(&id, val, 4);
        id = le32toh(id);
        if (id >= GUEST_STATE_MAX_VCPUS || (is_v ? have_v[id] : have_w[id])) {
            rc = fail(err, errlen, -EBADMSG, "HVM_CONTEXT: vCPU %u out of range or given twice",
                      id);
            goto out;
        }
        if (is_v) {
            memcpy(&vt[id], val, sizeof(vt[id]));
            have_v[id] = true;
            nr = nr > id + 1 ? nr : id + 1;
        } else {
            memcpy(&wt[id], val, sizeof(wt[id]));
            have_w[id] = true;
        }
    }
    if (seen && kvm_type) {
        rc = fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV at %zu: a program guest's vCPU "
                  "state in a stream of soft vCPUs (VCPU and WORKLOAD TLVs): one guest has one "
                  "kind of vCPU", kvm_type == HVCTX_PROG_VCPU    ? "PROG_VCPU"
                                  : kvm_type == HVCTX_PROG_XSAVE ? "PROG_XSAVE"
                                                                 : "PROG_MSRS",
                  kvm_at);
        goto out;
    }
    if (!seen) {
        rc = fail(err, errlen, 0, kvm_type ? "the stream carries no soft vCPU state (it holds a "
                                             "program guest's vCPUs: kvm or native)"
                                           : "the stream carries no vCPU state (saved without "
                                             "a running guest)");
        goto out;
    }
    for (unsigned i = 0; i < GUEST_STATE_MAX_VCPUS; i++) {
        if (have_v[i] != have_w[i] || (i < nr && !have_v[i]) ||
            (have_v[i] && le32toh(vt[i].nr_vcpus) != nr)) {
            rc = fail(err, errlen, -EBADMSG, "HVM_CONTEXT: vCPU %u: state incomplete or "
                      "inconsistent with %u vCPUs", i, nr);
            goto out;
        }
    }
    for (unsigned i = 0; i < nr && rc == 0; i++)
        rc = decode_one(i, &vt[i], &wt[i], &gs->v[i], err, errlen);
    if (rc == 0) {
        gs->nr_vcpus = nr;
        rc = 1;
    }
out:
    if (rc <= 0) {
        gs->nr_vcpus = 0;
        gs->mem = NULL;
        gs->nr_mem = 0;
    }
    free(vt);
    free(wt);
    return rc;
}

int guest_state_check(const struct guest_state *gs, uint64_t max_pages, char *err,
                      size_t errlen)
{
    uint64_t pages = 0;
    for (uint32_t i = 0; i < gs->nr_mem; i++)
        pages += mem_extent(gs->mem, i).nr; /* (decode_mem: disjoint, below 2^36 each) */
    if (pages > max_pages)
        return fail(err, errlen, -EINVAL, "HVM_CONTEXT: GUEST_MEM covers %llu pages, the domain "
                    "holds at most %llu (max_pages)", (unsigned long long)pages,
                    (unsigned long long)max_pages);
    return 0;
}

int guest_state_build(struct domain *d, const struct guest_state *gs,
                      void (*on_write)(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val),
                      void *ctx, struct vcpu **v, struct workload **w, char *err, size_t errlen)
{
    unsigned n = gs->nr_vcpus;
    if (n == 0 || n > GUEST_STATE_MAX_VCPUS)
        return fail(err, errlen, -EINVAL, "no vCPU state to build");
    int rc = 0;
    for (unsigned i = 0; i < n; i++)
        v[i] = NULL, w[i] = NULL;
    rc = guest_state_check(gs, d->max_pages, err, errlen);
    if (rc < 0)
        return rc;
    struct gfn_range *mem = NULL;
    if (gs->nr_mem) {
        mem = hv_malloc(gs->nr_mem * sizeof(*mem));
        if (!mem)
            return fail(err, errlen, -ENOMEM, "out of memory");
        for (uint32_t i = 0; i < gs->nr_mem; i++)
            mem[i] = mem_extent(gs->mem, i);
    }
    for (unsigned i = 0; i < n && rc == 0; i++) {
        struct workload_config wc = gs->v[i].wc;
        wc.on_write = on_write;
        wc.ctx = ctx;
        const char *what = "creating the vCPU";
        rc = vcpu_create(d, i, &gs->v[i].tc, &v[i]);
        if (rc == 0) {
            what = "creating the workload";
            rc = mem ? workload_create_on(&wc, i, n, mem, gs->nr_mem, &w[i])
                     : workload_create(d, &wc, i, n, &w[i]);
        }
        if (rc == 0) {
            what = "setting the workload's position (it does not fit this guest's memory)";
            rc = workload_set_state(w[i], &gs->v[i].ws);
        }
        if (rc < 0)
            fail(err, errlen, rc, "vCPU %u: cannot rebuild it from the saved state: %s: %s", i,
                 what, strerror(-rc));
    }
    if (rc < 0)
        for (unsigned i = 0; i < n; i++) {
            workload_destroy(w[i]);
            vcpu_destroy(v[i]);
            v[i] = NULL, w[i] = NULL;
        }
    free(mem);
    return rc;
}

/* ---- a KVM vCPU's XSAVE area, XCRs and MSRs ------------------------------ */

/* XSAVE area offsets (standard format, Intel SDM vol. 1, 13.4). */
#define XS_MXCSR 24u
#define XS_XSTATE_BV 512u
#define XS_XCOMP_BV 520u
#define XS_HEADER_END 576u
/* XCR0 features */
#define XF_X87 0x1ULL
#define XF_SSE 0x2ULL
#define XF_AVX 0x4ULL
#define XF_MPX 0x18ULL
#define XF_AVX512 0xe0ULL
/* The features an XSAVE area in KVM's user layout may hold: x87 .. PKRU
 * but Intel PT (bit 8, supervisor), AMX's two, APX.  KVM's user layout has
 * every feature the guest's CPUID offers in XSTATE_BV, not only XCR0's
 * (PKRU is there with XCR0 7); KVM checks them against that CPUID. */
#define XF_USER 0xe02ffULL

const char *guest_state_msr_name(uint32_t index)
{
    switch (index) {
#define X(idx, name)                                                           \
    case idx:                                                                  \
        return #name;
        HVCTX_PROG_MSR_LIST(X)
#undef X
    default:
        return NULL;
    }
}

static uint64_t le64_at(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return le64toh(x);
}

static void add_regs(uint8_t *p, const struct hvctx_reg *r, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct hvctx_reg w = {htole32(r[i].index), 0, htole64(r[i].value)};
        memcpy(p + 16 * i, &w, 16);
    }
}

int guest_state_prog_ext_encode(struct hvctx_buf *b, unsigned vcpu, const struct hvctx_prog_ext *e)
{
    if (e->nr_xcrs > HVCTX_MAX_XCRS || e->nr_msrs > HVCTX_MAX_MSRS ||
        e->xsave_len > HVCTX_XSAVE_MAX || (e->xsave_len && e->xsave_len < HVCTX_XSAVE_MIN) ||
        e->xsave_len % 4)
        return -EINVAL;
    size_t cap = sizeof(struct hvctx_prog_xsave_tlv) + 16 * HVCTX_MAX_XCRS + HVCTX_XSAVE_MAX;
    uint8_t *p = hv_malloc(cap);
    if (!p)
        return -ENOMEM;
    int rc = 0;
    if (e->xsave_len) {
        struct hvctx_prog_xsave_tlv h = {htole16(HVCTX_PROG_EXT_VERSION), 0, htole32(vcpu),
                                         htole32(e->nr_xcrs), htole32(e->xsave_len)};
        memcpy(p, &h, sizeof(h));
        add_regs(p + sizeof(h), e->xcrs, e->nr_xcrs);
        memcpy(p + sizeof(h) + 16 * e->nr_xcrs, e->xsave, e->xsave_len);
        rc = hvctx_add(b, HVCTX_PROG_XSAVE, HVCTX_F_CRITICAL, p,
                       (uint32_t)(sizeof(h) + 16 * e->nr_xcrs + e->xsave_len));
    }
    if (rc == 0 && e->nr_msrs) {
        struct hvctx_prog_msrs_tlv h = {htole16(HVCTX_PROG_EXT_VERSION), 0, htole32(vcpu),
                                        htole32(e->nr_msrs), 0};
        memcpy(p, &h, sizeof(h));
        add_regs(p + sizeof(h), e->msrs, e->nr_msrs);
        rc = hvctx_add(b, HVCTX_PROG_MSRS, HVCTX_F_CRITICAL, p,
                       (uint32_t)(sizeof(h) + 16 * e->nr_msrs));
    }
    free(p);
    return rc;
}

/* Canonical in the widest paging KVM offers (57 bits): KVM checks the
 * vCPU's own width when the value is set. */
static bool canonical(uint64_t a)
{
    return (uint64_t)(((int64_t)(a << 7)) >> 7) == a;
}

/* What KVM would refuse in an MSR's value (NULL: fine). */
static const char *msr_value_fault(uint32_t index, uint64_t v)
{
    switch (index) {
    case 0x00000175u: /* SYSENTER_ESP */
    case 0x00000176u: /* SYSENTER_EIP */
    case 0xc0000082u: /* LSTAR */
    case 0xc0000083u: /* CSTAR */
    case 0xc0000102u: /* KERNEL_GS_BASE */
        return canonical(v) ? NULL : "not a canonical address";
    case 0x00000277u: /* PAT: memory types 0, 1, 4, 5, 6, 7 in each byte */
        for (unsigned k = 0; k < 8; k++) {
            unsigned t = (unsigned)(v >> (8 * k)) & 0xff;
            if (t > 7 || t == 2 || t == 3)
                return "a PAT entry that is no memory type";
        }
        return NULL;
    case 0xc0000103u: /* TSC_AUX */
        return v >> 32 ? "bits 32-63 set" : NULL;
    default:
        return NULL;
    }
}

static int decode_xsave(const uint8_t *val, uint32_t len, size_t at, struct hvctx_prog_ext *e,
                        char *err, size_t errlen)
{
    struct hvctx_prog_xsave_tlv h;
    memcpy(&h, val, sizeof(h));
    uint32_t nx = le32toh(h.nr_xcrs), xl = le32toh(h.xsave_len);
    if (nx > HVCTX_MAX_XCRS || xl < HVCTX_XSAVE_MIN || xl > HVCTX_XSAVE_MAX || xl % 4 ||
        len != sizeof(h) + 16ULL * nx + xl)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: %u XCRs and an "
                    "XSAVE area of %u bytes in %u bytes (at most %u XCRs, an area of %u to %u "
                    "bytes, a multiple of 4)", at, nx, xl, len, HVCTX_MAX_XCRS, HVCTX_XSAVE_MIN,
                    HVCTX_XSAVE_MAX);
    const uint8_t *r = val + sizeof(h);
    for (uint32_t i = 0; i < nx; i++) {
        struct hvctx_reg x;
        memcpy(&x, r + 16 * i, 16);
        uint32_t idx = le32toh(x.index);
        uint64_t v = le64toh(x.value);
        size_t off = at + 8 + sizeof(h) + 16 * i;
        if (idx != 0 || x.reserved || i > 0)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: XCR entry %u "
                        "(offset %zu): XCR %u%s (only XCR0, once, is known)", at, i, off, idx,
                        x.reserved ? " with its reserved word set" : "");
        if (!(v & XF_X87) || ((v & XF_AVX) && !(v & XF_SSE)) ||
            ((v & XF_MPX) && (v & XF_MPX) != XF_MPX) ||
            ((v & XF_AVX512) && ((v & XF_AVX512) != XF_AVX512 || !(v & XF_AVX))) || v >> 63)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: XCR0 %#llx "
                        "(offset %zu) breaks the architecture's rules (x87 always; AVX needs "
                        "SSE; AVX-512's three features together and with AVX)", at,
                        (unsigned long long)v, off);
        e->xcrs[i] = (struct hvctx_reg){idx, 0, v};
    }
    const uint8_t *xs = r + 16 * nx;
    size_t xo = at + 8 + sizeof(h) + 16 * nx; /* the area's offset */
    uint32_t mxcsr;
    memcpy(&mxcsr, xs + XS_MXCSR, 4);
    mxcsr = le32toh(mxcsr);
    uint64_t bv = le64_at(xs + XS_XSTATE_BV), comp = le64_at(xs + XS_XCOMP_BV);
    bool rsvd = false;
    for (unsigned k = XS_XCOMP_BV + 8; k < XS_HEADER_END; k++)
        rsvd |= xs[k] != 0;
    if (mxcsr >> 16)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: MXCSR %#x "
                    "(offset %zu) sets reserved bits", at, mxcsr, xo + XS_MXCSR);
    if (comp || rsvd)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: the XSAVE "
                    "header (offset %zu) is not the standard format (XCOMP_BV %#llx%s)", at,
                    xo + XS_XCOMP_BV, (unsigned long long)comp,
                    rsvd ? ", reserved bytes set" : "");
    if (bv & ~XF_USER)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_XSAVE TLV at %zu: XSTATE_BV %#llx "
                    "(offset %zu) holds features that are no user state (%#llx)", at,
                    (unsigned long long)bv, xo + XS_XSTATE_BV, (unsigned long long)XF_USER);
    e->nr_xcrs = nx;
    e->xsave_len = xl;
    memcpy(e->xsave, xs, xl);
    return 0;
}

static int decode_msrs(const uint8_t *val, uint32_t len, size_t at, struct hvctx_prog_ext *e,
                       char *err, size_t errlen)
{
    struct hvctx_prog_msrs_tlv h;
    memcpy(&h, val, sizeof(h));
    uint32_t n = le32toh(h.nr_msrs);
    if (h.reserved1 || n > HVCTX_MAX_MSRS || len != sizeof(h) + 16ULL * n)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_MSRS TLV at %zu: %u MSRs in %u "
                    "bytes (at most %u%s)", at, n, len, HVCTX_MAX_MSRS,
                    h.reserved1 ? "; reserved word set" : "");
    for (uint32_t i = 0; i < n; i++) {
        struct hvctx_reg x;
        memcpy(&x, val + sizeof(h) + 16 * i, 16);
        uint32_t idx = le32toh(x.index);
        uint64_t v = le64toh(x.value);
        size_t off = at + 8 + sizeof(h) + 16 * i;
        const char *name = guest_state_msr_name(idx);
        if (!name)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_MSRS TLV at %zu: entry %u "
                        "(offset %zu): MSR %#x is not one a vCPU's state carries", at, i, off,
                        idx);
        for (uint32_t k = 0; k < i; k++)
            if (e->msrs[k].index == idx)
                return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_MSRS TLV at %zu: entry %u "
                            "(offset %zu): MSR %s given twice", at, i, off, name);
        const char *why = x.reserved ? "reserved word set" : msr_value_fault(idx, v);
        if (why)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: PROG_MSRS TLV at %zu: entry %u "
                        "(offset %zu): MSR %s = %#llx: %s", at, i, off, name,
                        (unsigned long long)v, why);
        e->msrs[i] = (struct hvctx_reg){idx, 0, v};
    }
    e->nr_msrs = n;
    return 0;
}

int guest_state_prog_ext_decode(uint16_t type, const uint8_t *val, uint32_t len, size_t at,
                                struct hvctx_prog_ext *ext, unsigned nr_ext,
                                struct guest_state_ext_seen *seen, char *err, size_t errlen)
{
    bool xs = type == HVCTX_PROG_XSAVE;
    const char *what = xs ? "PROG_XSAVE" : "PROG_MSRS";
    if (type != HVCTX_PROG_XSAVE && type != HVCTX_PROG_MSRS)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: TLV at %zu: type %u is no vCPU "
                    "extension", at, type);
    struct hvctx_prog_msrs_tlv h; /* the common first 8 bytes */
    if (len < sizeof(h))
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV at %zu of %u bytes (its header "
                    "alone is %zu)", what, at, len, sizeof(h));
    memcpy(&h, val, sizeof(h));
    uint16_t ver = le16toh(h.version);
    uint32_t v = le32toh(h.vcpu);
    if (ver != HVCTX_PROG_EXT_VERSION)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV at %zu: version %u (this reader "
                    "knows version %u)", what, at, ver, HVCTX_PROG_EXT_VERSION);
    if (h.reserved0)
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV at %zu: reserved field set",
                    what, at);
    uint64_t *mask = xs ? &seen->xsave : &seen->msrs;
    if (v >= nr_ext || v >= 64 || (*mask >> v & 1))
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLV at %zu: vCPU %u out of range "
                    "(%u) or given twice", what, at, v, nr_ext);
    int rc = xs ? decode_xsave(val, len, at, &ext[v], err, errlen)
                : decode_msrs(val, len, at, &ext[v], err, errlen);
    if (rc == 0)
        *mask |= 1ULL << v;
    return rc;
}

int guest_state_prog_ext_check(const struct guest_state_ext_seen *seen, unsigned nr_vcpus,
                               bool kvm, char *err, size_t errlen)
{
    uint64_t all = nr_vcpus >= 64 ? ~0ULL : (1ULL << nr_vcpus) - 1;
    if (!kvm && (seen->xsave | seen->msrs))
        return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLVs for a native guest, whose "
                    "vCPUs carry no XSAVE area or MSRs of their own",
                    seen->xsave ? "PROG_XSAVE" : "PROG_MSRS");
    for (unsigned k = 0; k < 2; k++) {
        uint64_t m = k ? seen->msrs : seen->xsave;
        if (m && m != all)
            return fail(err, errlen, -EBADMSG, "HVM_CONTEXT: %s TLVs for vCPUs %#llx of %u: "
                        "every vCPU has one or none does", k ? "PROG_MSRS" : "PROG_XSAVE",
                        (unsigned long long)m, nr_vcpus);
    }
    return 0;
}

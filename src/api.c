/*
 * api.c - the public interface (include/hugevm.h) over the internal one.
 *
 * Each handle wraps the internal object and what the public verbs need
 * besides it (a domain's host balloon and the vCPU state a restore brought;
 * a guest's domain handle; a migration's TLS context).  Every failure
 * stores its detail in a thread-local buffer (hugevm_last_error) and
 * returns the internal negative errno unchanged.  The public enums and
 * limits are checked against the internal ones at compile time.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hugevm.h"
#include "hugevm_version.h"

#include "balloon.h"
#include "chan.h"
#include "defrag.h"
#include "dirty.h"
#include "domain.h"
#include "guest.h"
#include "guest_state.h"
#include "kvm.h"
#include "machine.h"
#include "migrate.h"
#include "net.h"
#include "save.h"
#include "stream.h"

_Static_assert(HUGEVM_MAX_4K_RANGES == DOMAIN_MAX_4K_RANGES, "4K ranges");
_Static_assert(HUGEVM_MAX_VCPUS == HVG_MAX_VCPUS, "vCPUs");
_Static_assert((int)HUGEVM_POLICY_FRAGPOOL == (int)FRAME_POLICY_FRAGPOOL &&
               (int)HUGEVM_POLICY_BUDDY == (int)FRAME_POLICY_BUDDY, "policies");
_Static_assert((int)HUGEVM_DIRTY_SPLIT_ON_WRITE == (int)DIRTY_SPLIT_ON_WRITE &&
               (int)HUGEVM_DIRTY_EAGER_SPLIT == (int)DIRTY_EAGER_SPLIT &&
               (int)HUGEVM_DIRTY_COARSE == (int)DIRTY_COARSE, "dirty modes");
_Static_assert((int)HUGEVM_WL_SEQ == (int)HVG_WL_SEQ && (int)HUGEVM_WL_UNIFORM == (int)HVG_WL_UNIFORM &&
               (int)HUGEVM_WL_CHASE == (int)HVG_WL_CHASE && (int)HUGEVM_WL_ZIPF == (int)HVG_WL_ZIPF &&
               (int)HUGEVM_WL_WRITER == (int)HVG_WL_WRITER, "workloads");
_Static_assert(sizeof(((struct hugevm_migration_config *)0)->authz) /
               sizeof(((struct hugevm_migration_config *)0)->authz[0]) == CHAN_MAX_AUTHZ,
               "authz");

struct hugevm_machine {
    struct machine *m;
};

struct hugevm_domain {
    struct domain *d;
    uint64_t guest_bytes;   /* what hugevm_domain_populate laid out (balloon, defrag) */
    struct balloon *balloon; /* the host-driven balloon, made at first use */
    struct defrag_stats defrag;
    uint8_t *context;       /* a restore's hugevm HVM_CONTEXT TLVs (vCPU state) */
    size_t context_len;
};

struct hugevm_guest {
    struct guest *g;
    hugevm_domain *dom;
    bool owns_dom;          /* a received guest: the caller destroys dom */
    struct guest_prog_state *resume; /* kept while the guest lives */
};

struct hugevm_migration {
    struct chan_tls *tls;   /* NULL: insecure */
    struct hugevm_migration_config c;
};

/* ---- errors ------------------------------------------------------------------ */

static _Thread_local char last_err[512];

HV_PRINTF(2, 3) static int fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof(last_err), fmt, ap);
    va_end(ap);
    return rc;
}

static void ok(void) { last_err[0] = 0; }

const char *hugevm_version(void) { return HUGEVM_VERSION_STRING; }

const char *hugevm_last_error(void) { return last_err; }

const char *hugevm_strerror(int rc)
{
    static _Thread_local char other[160];
    switch (rc < 0 ? -rc : rc) {
    case 0: return "success";
    case ENOMEM: return "out of memory: the machine has no free extent for this (give the machine "
                        "more bytes or destroy a domain), or the host refused an allocation";
    case EDQUOT: return "the domain's max_bytes would be exceeded: raise it or populate less";
    case EINVAL: return "an argument is out of range or misaligned (sizes are multiples of 2 MiB, "
                        "orders 0, 9 or 18): hugevm_last_error() names it";
    case ENODEV: return "this backend cannot run here (kvm needs a usable /dev/kvm): use "
                        "HUGEVM_BACKEND_AUTO, NATIVE or SOFT";
    case ENOTSUP: return "not possible on this backend or in this state: hugevm_last_error() "
                         "says what is missing";
    case EBUSY: return "busy: pause the guest, or turn log-dirty off, first";
    case EAGAIN: return "the guest is paused or stopped: resume it first";
    case EBADMSG: return "malformed or mismatching data (a corrupt or tampered stream, a failed "
                         "verification): hugevm_last_error() says where; do not use the result";
    case ENODATA: return "the stream ended early: the file is truncated; use a complete save";
    case EPROTONOSUPPORT: return "the stream's format version is not supported by this library";
    case EMSGSIZE: return "a stream record is longer than allowed: the stream is not trustworthy";
    case ERANGE: return "a value is out of range (a pfn beyond the domain): the stream does not "
                        "fit this machine or is corrupt";
    case EEXIST: return "already there (a conflicting duplicate in a stream, a mapped gfn)";
    case ETIMEDOUT: return "timed out: the guest or the peer did not finish in time; allow more "
                           "time or check the peer";
    case EINPROGRESS: return "the migration is in doubt: the peer may run the guest; keep this copy "
                             "paused until you know, never run both";
    case EACCES: return "a key file is readable or writable by others (chmod 600 it), or access "
                        "was refused";
    case ENOENT: return "not found (no vCPU state in the stream, a missing file)";
    case EUCLEAN: return "an internal invariant is broken (a bug in hugevm): report it with "
                         "hugevm_last_error()";
    case ECONNRESET:
    case EPIPE: return "the peer closed the connection: see its side's error";
    case ECANCELED: return "cancelled: the guest failed before this step";
    case ENOEXEC: return "the guest program is not an ELF64 x86-64 image for the guest ABI";
    default:
        snprintf(other, sizeof(other), "%s (errno %d)", strerror(rc < 0 ? -rc : rc),
                 rc < 0 ? -rc : rc);
        return other;
    }
}

/* ---- machine ------------------------------------------------------------------ */

void hugevm_machine_config_default(struct hugevm_machine_config *c)
{
    memset(c, 0, sizeof(*c));
    c->policy = HUGEVM_POLICY_FRAGPOOL;
}

int hugevm_machine_create(const struct hugevm_machine_config *c, hugevm_machine **out)
{
    *out = NULL;
    if (!c || c->bytes == 0 || c->bytes % (2 * MiB))
        return fail(-EINVAL, "machine: bytes must be a positive multiple of 2 MiB");
    if (c->policy != HUGEVM_POLICY_FRAGPOOL && c->policy != HUGEVM_POLICY_BUDDY)
        return fail(-EINVAL, "machine: unknown frame policy %d", (int)c->policy);
    hugevm_machine *hm = calloc(1, sizeof(*hm));
    if (!hm)
        return fail(-ENOMEM, "machine: out of memory");
    struct machine_opts o = {.bytes = c->bytes, .policy = (enum frame_policy)c->policy,
                             .resident = c->resident};
    int rc = machine_create_opts(&hm->m, &o);
    if (rc < 0) {
        free(hm);
        return fail(rc, "machine of %llu bytes: %s", (unsigned long long)c->bytes,
                    strerror(-rc));
    }
    ok();
    *out = hm;
    return 0;
}

void hugevm_machine_destroy(hugevm_machine *m)
{
    if (!m)
        return;
    machine_destroy(m->m);
    free(m);
}

int hugevm_machine_info(const hugevm_machine *hm, struct hugevm_machine_info *out)
{
    const struct machine *m = hm->m;
    struct frame_stats st;
    frames_get_stats(m->frames, &st);
    memset(out, 0, sizeof(*out));
    out->bytes = m->bytes;
    out->frames = st.nr_frames;
    out->free_frames = st.free_frames;
    out->allocatable_2m = frames_allocatable(m->frames, PAGE_ORDER_2M);
    out->allocatable_1g = frames_allocatable(m->frames, PAGE_ORDER_1G);
    out->resident_bytes = machine_resident_bytes(m);
    out->host_thp_usable = thp_shmem_usable(m->thp);
    snprintf(out->host_thp, sizeof(out->host_thp), "%s", thp_shmem_name(m->thp));
    return 0;
}

int hugevm_machine_stats(const hugevm_machine *hm, hugevm_stat_fn fn, void *ctx)
{
    const struct machine *m = hm->m;
    struct frame_stats st;
    char name[48];
    frames_get_stats(m->frames, &st);
    fn(ctx, "nr_frames", st.nr_frames, "4K frames of the machine");
    fn(ctx, "free_frames", st.free_frames, "4K frames free");
    for (unsigned o = 0; o < NR_ORDERS; o++) {
        snprintf(name, sizeof(name), "free_extents_order_%u", o);
        fn(ctx, name, st.free_extents[o], "free extents of exactly this order");
    }
    for (unsigned o = 0; o < NR_ORDERS; o++) {
        snprintf(name, sizeof(name), "allocs_order_%u", o);
        fn(ctx, name, st.allocs[o], "successful allocations of this order");
        snprintf(name, sizeof(name), "alloc_failures_order_%u", o);
        fn(ctx, name, st.alloc_failures[o], "failed allocations of this order");
    }
    fn(ctx, "frees", st.frees, "extents freed");
    fn(ctx, "frag_blocks", st.frag_blocks, "2M blocks split below order 9");
    fn(ctx, "frag_regions", st.frag_regions, "1G regions split below order 18");
    fn(ctx, "allocatable_2m", frames_allocatable(m->frames, PAGE_ORDER_2M),
       "2M extents that could be allocated now");
    fn(ctx, "allocatable_1g", frames_allocatable(m->frames, PAGE_ORDER_1G),
       "1G extents that could be allocated now");
    fn(ctx, "scrub_punched_bytes", m->stats.scrub_punched_bytes, "freed by PUNCH_HOLE");
    fn(ctx, "scrub_zeroed_bytes", m->stats.scrub_zeroed_bytes, "zeroed with memset");
    fn(ctx, "scrub_skipped_bytes", m->stats.scrub_skipped_bytes, "never touched: nothing to do");
    fn(ctx, "scrub_calls", m->stats.scrub_calls, "scrub calls");
    fn(ctx, "prefault_ns", m->stats.prefault_ns, "resident machine: time to commit it");
    fn(ctx, "resident_bytes", machine_resident_bytes(m), "host RAM backing the machine");
    return 0;
}

int hugevm_machine_fragment(hugevm_machine *hm, double fraction, uint64_t seed)
{
    struct machine *m = hm->m;
    if (!(fraction >= 0 && fraction <= 1))
        return fail(-EINVAL, "fragment: fraction must be within 0..1");
    struct frame_stats st;
    frames_get_stats(m->frames, &st);
    domid_t churner = ++m->next_domid;
    uint64_t ops = 0;
    double tgt = fraction * (double)st.free_frames / (double)st.nr_frames;
    int rc = frames_fragment(m->frames, churner, tgt, 0.7, seed, &ops);
    if (rc < 0)
        return fail(rc, "fragment: %s", strerror(-rc));
    ok();
    return 0;
}

/* ---- domain ---------------------------------------------------------------------- */

void hugevm_domain_config_default(struct hugevm_domain_config *c)
{
    memset(c, 0, sizeof(*c));
    c->mmio_hole_bytes = DEFAULT_MMIO_HOLE;
}

static hugevm_domain *domain_wrap(struct domain *d)
{
    hugevm_domain *hd = calloc(1, sizeof(*hd));
    if (hd)
        hd->d = d;
    return hd;
}

int hugevm_domain_create(hugevm_machine *m, const struct hugevm_domain_config *c,
                         hugevm_domain **out)
{
    struct domain_config dc;
    *out = NULL;
    domain_config_default(&dc);
    if (c) {
        if (c->max_bytes % PAGE_SIZE || c->nr_4k_ranges > HUGEVM_MAX_4K_RANGES)
            return fail(-EINVAL, "domain: max_bytes must be a multiple of 4 KiB and "
                        "nr_4k_ranges at most %d", HUGEVM_MAX_4K_RANGES);
        dc.max_pages = c->max_bytes >> PAGE_SHIFT;
        dc.mmio_hole_bytes = c->no_mmio_hole ? 0 : c->mmio_hole_bytes ? c->mmio_hole_bytes
                                                                        : DEFAULT_MMIO_HOLE;
        dc.no_vga_hole = c->no_vga_hole;
        dc.nr_4k_ranges = c->nr_4k_ranges;
        for (unsigned i = 0; i < c->nr_4k_ranges; i++) {
            dc.ranges_4k[i].gfn = c->ranges_4k[i].gfn;
            dc.ranges_4k[i].nr = c->ranges_4k[i].nr;
        }
    }
    struct domain *d;
    int rc = domain_create(m->m, &dc, &d);
    if (rc < 0)
        return fail(rc, "domain: %s", rc == -EINVAL ? "bad configuration (the MMIO hole must "
                    "be a multiple of 2 MiB below 4 GiB; 4K ranges inside the p2m)"
                    : strerror(-rc));
    hugevm_domain *hd = domain_wrap(d);
    if (!hd) {
        domain_destroy(d);
        return fail(-ENOMEM, "domain: out of memory");
    }
    ok();
    *out = hd;
    return 0;
}

void hugevm_domain_destroy(hugevm_domain *hd)
{
    if (!hd)
        return;
    if (hd->balloon) {
        balloon_fini(hd->balloon);
        free(hd->balloon);
    }
    free(hd->context);
    domain_destroy(hd->d);
    free(hd);
}

int hugevm_domain_populate(hugevm_domain *hd, uint64_t bytes, unsigned flags)
{
    if (bytes == 0 || bytes % (2 * MiB) || (flags & ~HUGEVM_POPULATE_POD))
        return fail(-EINVAL, "populate: bytes must be a positive multiple of 2 MiB");
    int rc = domain_populate_guest_flags(hd->d, bytes,
                                         flags & HUGEVM_POPULATE_POD ? DOMAIN_POPULATE_POD : 0,
                                         NULL);
    if (rc < 0)
        return fail(rc, "populate %llu MiB: %s (nothing of it stays)",
                    (unsigned long long)(bytes / MiB), strerror(-rc));
    hd->guest_bytes = bytes;
    ok();
    return 0;
}

int hugevm_domain_populate_range(hugevm_domain *hd, uint64_t gfn, uint64_t nr, unsigned flags)
{
    if (flags & ~HUGEVM_POPULATE_POD)
        return fail(-EINVAL, "populate: unknown flags 0x%x", flags);
    int rc = domain_populate_flags(hd->d, gfn, nr,
                                   flags & HUGEVM_POPULATE_POD ? DOMAIN_POPULATE_POD : 0, NULL);
    if (rc < 0)
        return fail(rc, "populate gfn 0x%llx + %llu: %s", (unsigned long long)gfn,
                    (unsigned long long)nr, strerror(-rc));
    ok();
    return 0;
}

int64_t hugevm_domain_decrease_reservation(hugevm_domain *hd, uint64_t gfn, uint64_t nr)
{
    long r = domain_decrease_reservation(hd->d, gfn, nr);
    if (r < 0)
        return fail((int)r, "decrease_reservation: %s", strerror((int)-r));
    ok();
    return r;
}

int hugevm_domain_balloon(hugevm_domain *hd, uint64_t target_bytes)
{
    if (!hd->guest_bytes)
        return fail(-EINVAL, "balloon: populate the domain with hugevm_domain_populate first");
    if (!hd->balloon) {
        struct balloon *b = calloc(1, sizeof(*b));
        if (!b)
            return fail(-ENOMEM, "balloon: out of memory");
        int rc = balloon_init(b, hd->d, hd->guest_bytes);
        if (rc < 0) {
            free(b);
            return fail(rc, "balloon: %s", strerror(-rc));
        }
        hd->balloon = b;
    }
    domain_lock(hd->d);
    int rc = balloon_set_target(hd->balloon, target_bytes >> PAGE_SHIFT);
    domain_unlock(hd->d);
    if (rc < 0)
        return fail(rc, "balloon to %llu MiB: %s (it stopped at %llu MiB)",
                    (unsigned long long)(target_bytes / MiB), strerror(-rc),
                    (unsigned long long)(balloon_current(hd->balloon) * PAGE_SIZE / MiB));
    ok();
    return 0;
}

int hugevm_domain_pod_set_target(hugevm_domain *hd, uint64_t target_bytes)
{
    domain_lock(hd->d);
    int rc = pod_set_target(hd->d, target_bytes >> PAGE_SHIFT);
    domain_unlock(hd->d);
    if (rc < 0)
        return fail(rc, "PoD target %llu MiB: %s", (unsigned long long)(target_bytes / MiB),
                    strerror(-rc));
    ok();
    return 0;
}

int hugevm_domain_defrag(hugevm_domain *hd, unsigned order, double mib_per_s)
{
    if (order != PAGE_ORDER_2M && order != PAGE_ORDER_1G)
        return fail(-EINVAL, "defrag: order must be 9 (2M) or 18 (1G)");
    if (!hd->guest_bytes)
        return fail(-EINVAL, "defrag: populate the domain with hugevm_domain_populate first");
    struct gfn_range r[2];
    unsigned n = domain_guest_layout(hd->d, hd->guest_bytes, r);
    for (unsigned i = 0; i < n; i++) {
        gfn_t lo = r[i].gfn & ~(order_pages(order) - 1);
        gfn_t hi = (r[i].gfn + r[i].nr + order_pages(order) - 1) & ~(order_pages(order) - 1);
        int rc = defrag_run(hd->d, lo, hi - lo, order, mib_per_s, &hd->defrag);
        if (rc < 0)
            return fail(rc, "defrag: %s", rc == -EBUSY ? "log-dirty is on" : strerror(-rc));
    }
    ok();
    return 0;
}

int hugevm_domain_logdirty_enable(hugevm_domain *hd, enum hugevm_dirty_mode mode)
{
    if ((unsigned)mode >= DIRTY_NR_MODES)
        return fail(-EINVAL, "log-dirty: unknown mode %d", (int)mode);
    int rc = dirty_enable(hd->d, (enum dirty_mode)mode); /* takes d->lock itself */
    if (rc < 0)
        return fail(rc, "log-dirty enable: %s", strerror(-rc));
    ok();
    return 0;
}

uint64_t hugevm_domain_logdirty_gfns(const hugevm_domain *hd)
{
    return dirty_bitmap_gfns(hd->d);
}

int64_t hugevm_domain_logdirty_harvest(hugevm_domain *hd, uint64_t *bitmap, uint64_t nr_gfns)
{
    struct dirty_round r = {0};
    int rc = dirty_harvest(hd->d, bitmap, nr_gfns, &r);
    if (rc < 0)
        return fail(rc, "log-dirty harvest: %s", rc == -ENOMEM ? "log-dirty lost track "
                    "(treat every page as dirty)" : "off, or the bitmap is too small");
    ok();
    return (int64_t)r.dirty_pages;
}

int hugevm_domain_logdirty_disable(hugevm_domain *hd, uint64_t *final, uint64_t nr_gfns,
                                   struct hugevm_logdirty_result *res)
{
    struct dirty_disable_result dr;
    memset(&dr, 0, sizeof(dr));
    int rc = dirty_disable(hd->d, final, nr_gfns, &dr);
    if (rc < 0)
        return fail(rc, "log-dirty disable: off, or the bitmap is too small");
    if (res) {
        res->split_1g = dr.split_1g;
        res->split_2m = dr.split_2m;
        res->recovered_1g = dr.recovered_1g;
        res->recovered_2m = dr.recovered_2m;
        res->lost_1g = dr.lost_1g;
        res->lost_2m = dr.lost_2m;
    }
    ok();
    return 0;
}

int hugevm_domain_info(const hugevm_domain *hd, struct hugevm_domain_info *out)
{
    const struct domain *d = hd->d;
    memset(out, 0, sizeof(*out));
    out->domid = d->domid;
    out->tot_pages = d->tot_pages;
    out->max_pages = d->max_pages;
    out->leaves_1g = domain_pages_1g(d);
    out->leaves_2m = domain_pages_2m(d);
    out->leaves_4k = domain_pages_4k(d);
    out->pod_entries = d->pod.entry_count;
    out->pod_cache_pages = d->pod.count;
    out->ram_bytes = ((out->leaves_1g << PAGE_ORDER_1G) + (out->leaves_2m << PAGE_ORDER_2M) +
                     out->leaves_4k) * PAGE_SIZE;
    out->crashed = d->crashed;
    const char *ev = domain_last_event(d);
    snprintf(out->last_event, sizeof(out->last_event), "%s", ev ? ev : "");
    return 0;
}

int hugevm_domain_stats(const hugevm_domain *hd, hugevm_stat_fn fn, void *ctx)
{
    const struct domain *d = hd->d;
#define X(name, desc) fn(ctx, #name, d->stats.name, desc);
    DOMAIN_STAT_FIELDS(X)
#undef X
#define X(name, desc) fn(ctx, "pod_" #name, d->pod.stats.name, desc);
    POD_STAT_FIELDS(X)
#undef X
#define X(name, desc) fn(ctx, "defrag_" #name, hd->defrag.name, desc);
    DEFRAG_STAT_FIELDS(X)
#undef X
    if (hd->balloon) {
#define X(name, desc) fn(ctx, "balloon_" #name, hd->balloon->stats.name, desc);
        BALLOON_STAT_FIELDS(X)
#undef X
    }
    if (dirty_enabled(d)) {
        struct dirty_stats st;
        dirty_get_stats(d, &st);
#define X(name, desc) fn(ctx, "dirty_" #name, st.name, desc);
        DIRTY_STAT_FIELDS(X)
#undef X
    }
    fn(ctx, "quarantine_parked", d->quarantine.parked, "frames ever parked while a sender read");
    fn(ctx, "p2m_table_bytes", p2m_table_bytes(d->p2m), "bytes of p2m tables");
    return 0;
}

int hugevm_domain_audit(const hugevm_domain *hd)
{
    int rc = domain_audit(hd->d);
    if (rc == 0)
        rc = frames_audit(hd->d->m->frames);
    if (rc == 0 && hd->balloon)
        rc = balloon_audit(hd->balloon);
    if (rc < 0)
        return fail(rc, "audit: %s", hv_audit_last());
    ok();
    return 0;
}

uint64_t hugevm_domain_digest(hugevm_domain *hd)
{
    return migrate_digest(hd->d, NULL);
}

void *hugevm_domain_page(hugevm_domain *hd, uint64_t gfn)
{
    enum p2m_type t;
    if (gfn >= P2M_GFN_LIMIT)
        return NULL;
    mfn_t mfn = p2m_get_entry(hd->d->p2m, gfn, &t, NULL);
    if (!p2m_is_ram(t) || mfn == INVALID_MFN)
        return NULL;
    return machine_ptr(hd->d->m, mfn);
}

/* ---- save and restore -------------------------------------------------------------- */

static int save_fd(struct domain *d, int fd, const void *tlvs, size_t len,
                   struct hugevm_save_info *out)
{
    struct stream_fd sf;
    struct stream_io io;
    struct save_result sr;
    char err[256] = "";
    memset(&sr, 0, sizeof(sr));
    int rc = stream_fd_open(&sf, &io, fd);
    if (rc < 0)
        return fail(rc, "save: out of memory");
    stream_fd_alias(&sf, d->m->base, d->m->bytes, d->m->fd); /* page data: sendfile */
    struct save_opts so = {.extra_tlvs = tlvs, .extra_tlvs_len = len};
    rc = stream_save(d, &io, &so, &sr, err, sizeof(err));
    stream_fd_free(&sf);
    if (rc < 0)
        return fail(rc, "save: %s", err[0] ? err : strerror(-rc));
    if (out) {
        memset(out, 0, sizeof(*out));
        out->bytes = sr.bytes;
        out->pages_data = sr.pages_data;
        out->pages_zero = sr.pages_zero;
        out->records = sr.records;
        out->extents_1g = sr.extents_1g;
        out->extents_2m = sr.extents_2m;
        out->pages_4k = sr.pages_4k;
        out->seconds = sr.seconds;
    }
    ok();
    return 0;
}

int hugevm_domain_save(hugevm_domain *hd, int fd, struct hugevm_save_info *out)
{
    return save_fd(hd->d, fd, NULL, 0, out);
}

int hugevm_domain_restore(hugevm_machine *m, int fd, hugevm_domain **out,
                          struct hugevm_restore_info *info)
{
    struct stream_fd sf;
    struct stream_io io;
    struct restore_result rr;
    *out = NULL;
    memset(&rr, 0, sizeof(rr));
    int rc = stream_fd_open(&sf, &io, fd);
    if (rc < 0)
        return fail(rc, "restore: out of memory");
    stream_fd_alias(&sf, m->m->base, m->m->bytes, m->m->fd); /* page data: splice */
    struct restore_opts ro = {.verify_checksum = true};
    rc = stream_restore(m->m, &io, &ro, &rr);
    stream_fd_free(&sf);
    if (rc < 0) {
        fail(rc, "restore: %s", rr.err[0] ? rr.err : strerror(-rc));
        restore_result_free(&rr);
        return rc;
    }
    hugevm_domain *hd = domain_wrap(rr.d);
    if (!hd) {
        domain_destroy(rr.d);
        restore_result_free(&rr);
        return fail(-ENOMEM, "restore: out of memory");
    }
    hd->context = rr.context;
    hd->context_len = rr.context_len;
    hd->guest_bytes =
        ((rr.pages_1g << PAGE_ORDER_1G) + (rr.pages_2m << PAGE_ORDER_2M) + rr.pages_4k) * PAGE_SIZE;
    rr.context = NULL;
    if (info) {
        memset(info, 0, sizeof(*info));
        info->bytes = rr.bytes;
        info->records = rr.records;
        info->pages_data = rr.pages_data;
        info->pages_1g = rr.pages_1g;
        info->pages_2m = rr.pages_2m;
        info->pages_4k = rr.pages_4k;
        info->fallback_nomem = rr.fallback_nomem;
        info->checksum_verified = rr.checksum_verified;
        info->seconds = rr.seconds;
        info->has_guest = false;
        if (rr.vcpu == RESTORE_VCPU_HUGEVM && hd->context) {
            /* vCPUs of either kind (the context also holds the domain's
             * configuration, which every hugevm stream has) */
            char why[256];
            struct guest_prog_state *ps = malloc(sizeof(*ps));
            struct guest_state *gs = calloc(1, sizeof(*gs));
            info->has_guest =
                (ps && guest_prog_decode(hd->context, hd->context_len, ps, why, sizeof(why)) == 1) ||
                (gs && guest_state_decode(hd->context, hd->context_len, gs, why, sizeof(why)) == 1);
            free(ps);
            free(gs);
        }
    }
    restore_result_free(&rr);
    ok();
    *out = hd;
    return 0;
}

/* ---- guests --------------------------------------------------------------------- */

static enum hugevm_backend to_public(enum guest_backend b)
{
    return b == GUEST_BACKEND_KVM ? HUGEVM_BACKEND_KVM
           : b == GUEST_BACKEND_NATIVE ? HUGEVM_BACKEND_NATIVE : HUGEVM_BACKEND_SOFT;
}

enum hugevm_backend hugevm_backend_pick(bool program, char *why, size_t len)
{
    char tmp[256];
    enum guest_backend b = guest_backend_auto(tmp, sizeof(tmp));
    /* guest_backend_auto says "NAME: reason"; the caller has the name */
    const char *reason = strchr(tmp, ':') ? strchr(tmp, ':') + 2 : tmp;
    if (program && b == GUEST_BACKEND_SOFT) {
        if (why && len)
            snprintf(why, len, "%s; the guest program runs as host code instead", reason);
        return HUGEVM_BACKEND_NATIVE;
    }
    if (why && len)
        snprintf(why, len, "%s", reason);
    return to_public(b);
}

const char *hugevm_backend_name(enum hugevm_backend b)
{
    switch (b) {
    case HUGEVM_BACKEND_AUTO: return "auto";
    case HUGEVM_BACKEND_SOFT: return "soft";
    case HUGEVM_BACKEND_KVM: return "kvm";
    case HUGEVM_BACKEND_NATIVE: return "native";
    }
    return "unknown";
}

int hugevm_host_info(struct hugevm_host_info *out)
{
    memset(out, 0, sizeof(*out));
    long pages = sysconf(_SC_PHYS_PAGES);
    out->ram_bytes = pages > 0 ? (uint64_t)pages * PAGE_SIZE : 0;
    enum thp_shmem t = thp_shmem_read();
    snprintf(out->thp_shmem, sizeof(out->thp_shmem), "%s", thp_shmem_name(t));
    out->thp_usable = thp_shmem_usable(t);
    snprintf(out->thp_explain, sizeof(out->thp_explain), "%s", thp_shmem_explain(t));
    out->kvm = kvm_probe(out->kvm_why, sizeof(out->kvm_why)) == 0;
    if (out->kvm)
        out->kvm_why[0] = 0;
    out->auto_backend = hugevm_backend_pick(false, out->auto_why, sizeof(out->auto_why));
    return 0;
}

void hugevm_guest_config_default(struct hugevm_guest_config *c)
{
    memset(c, 0, sizeof(*c));
    c->backend = HUGEVM_BACKEND_AUTO;
    c->nr_vcpus = 1;
    c->workload = HUGEVM_WL_UNIFORM;
    c->seed = 1;
    c->console_fd = -1;
}

static int guest_wrap(struct guest *g, hugevm_domain *hd, bool owns, hugevm_guest **out)
{
    hugevm_guest *hg = calloc(1, sizeof(*hg));
    if (!hg) {
        guest_destroy(g);
        return fail(-ENOMEM, "guest: out of memory");
    }
    hg->g = g;
    hg->dom = hd;
    hg->owns_dom = owns;
    *out = hg;
    ok();
    return 0;
}

int hugevm_guest_create(hugevm_domain *hd, const struct hugevm_guest_config *c,
                        hugevm_guest **out)
{
    struct guest *g = NULL;
    char why[256] = "";
    int rc;
    *out = NULL;
    if (!c || c->nr_vcpus == 0 || c->nr_vcpus > HUGEVM_MAX_VCPUS ||
        (unsigned)c->workload > HUGEVM_WL_WRITER || c->balloon_bytes % (2 * MiB))
        return fail(-EINVAL, "guest: 1..%d vCPUs, a known workload, balloon_bytes a multiple "
                    "of 2 MiB", HUGEVM_MAX_VCPUS);
    enum hugevm_backend b = c->backend;
    if (b == HUGEVM_BACKEND_AUTO)
        b = hugevm_backend_pick(c->program != NULL || c->balloon_bytes, NULL, 0);
    if (b == HUGEVM_BACKEND_SOFT) {
        static const enum workload_kind soft_kind[] = {WL_SEQ, WL_UNIFORM, WL_NR_KINDS, WL_ZIPF,
                                                       WL_WRITER};
        if (c->program || c->balloon_bytes || soft_kind[c->workload] == WL_NR_KINDS)
            return fail(-EINVAL, "guest: soft vCPUs run seq, uniform, zipf or writer, without "
                        "a guest program or its balloon driver (use kvm or native)");
        struct workload_config wc;
        workload_config_default(&wc, soft_kind[c->workload]);
        wc.seed = c->seed;
        wc.write_rate = c->write_rate;
        rc = guest_create_soft(hd->d, c->nr_vcpus, NULL, &wc, &g);
        if (rc < 0)
            return fail(rc, "soft guest: %s", strerror(-rc));
    } else if (b == HUGEVM_BACKEND_KVM || b == HUGEVM_BACKEND_NATIVE) {
        struct guest_prog_config pc;
        guest_prog_config_default(&pc, (enum hvg_workload)c->workload);
        pc.nr_vcpus = c->nr_vcpus;
        pc.seed = c->seed;
        pc.ops = c->ops;
        pc.write_rate = c->write_rate;
        pc.balloon_pages = c->balloon_bytes >> PAGE_SHIFT;
        pc.program = c->program;
        pc.program_len = c->program_len;
        pc.console_fd = c->console_fd;
        rc = guest_create_prog(hd->d, b == HUGEVM_BACKEND_KVM ? GUEST_BACKEND_KVM
                                                              : GUEST_BACKEND_NATIVE,
                               &pc, &g, why, sizeof(why));
        if (rc < 0)
            return fail(rc, "%s guest: %s", hugevm_backend_name(b), why[0] ? why : strerror(-rc));
    } else {
        return fail(-EINVAL, "guest: unknown backend %d", (int)b);
    }
    return guest_wrap(g, hd, false, out);
}

int hugevm_guest_create_restored(hugevm_domain *hd, hugevm_guest **out)
{
    char why[256] = "";
    *out = NULL;
    if (!hd->context)
        return fail(-ENOENT, "restored guest: the stream carried no hugevm vCPU state");
    struct guest_prog_state *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return fail(-ENOMEM, "restored guest: out of memory");
    int rc = guest_prog_decode(hd->context, hd->context_len, ps, why, sizeof(why));
    if (rc < 0) {
        free(ps);
        return fail(rc, "restored guest: %s", why);
    }
    if (rc == 0) {
        free(ps);
        struct guest_state *gs = calloc(1, sizeof(*gs));
        rc = gs ? guest_state_decode(hd->context, hd->context_len, gs, why, sizeof(why)) : 0;
        free(gs);
        if (rc == 1)
            return fail(-ENOTSUP, "restored guest: the stream holds soft vCPUs; resume them "
                        "with `hugevm restore FILE --run`");
        return fail(-ENOENT, "restored guest: the stream carried no vCPU state");
    }
    struct guest *g;
    rc = guest_create_prog_resume(hd->d, ps, &g, why, sizeof(why));
    if (rc < 0) {
        free(ps);
        return fail(rc, "restored guest: %s", why);
    }
    rc = guest_wrap(g, hd, false, out);
    if (rc == 0)
        (*out)->resume = ps;
    else
        free(ps);
    return rc;
}

void hugevm_guest_destroy(hugevm_guest *hg)
{
    if (!hg)
        return;
    guest_destroy(hg->g);
    free(hg->resume);
    free(hg);
}

enum hugevm_backend hugevm_guest_backend(const hugevm_guest *hg)
{
    return to_public(hg->g->backend);
}

hugevm_domain *hugevm_guest_domain(hugevm_guest *hg) { return hg->dom; }

int hugevm_guest_start(hugevm_guest *hg)
{
    int rc = guest_start(hg->g);
    if (rc < 0)
        return fail(rc, "guest start: %s", strerror(-rc));
    ok();
    return 0;
}

void hugevm_guest_pause(hugevm_guest *hg) { guest_pause(hg->g); }
void hugevm_guest_resume(hugevm_guest *hg) { guest_resume(hg->g); }

static int guest_end_rc(hugevm_guest *hg, int rc, const char *what)
{
    if (rc < 0)
        return fail(rc, "%s: %s", what, hg->g->fault.what[0] ? hg->g->fault.what
                    : rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
    ok();
    return 0;
}

int hugevm_guest_wait(hugevm_guest *hg, uint64_t timeout_ms)
{
    return guest_end_rc(hg, guest_wait(hg->g, timeout_ms * 1000000ULL), "guest wait");
}

int hugevm_guest_finish(hugevm_guest *hg, uint64_t timeout_ms)
{
    return guest_end_rc(hg, guest_finish(hg->g, timeout_ms * 1000000ULL), "guest finish");
}

static struct hvg_param *param0(hugevm_guest *hg)
{
    if (hg->g->backend == GUEST_BACKEND_SOFT)
        return NULL;
    return guest_gpa_ptr(hg->g, HVG_PARAM_GPA(0));
}

int hugevm_guest_balloon(hugevm_guest *hg, uint64_t pages_out, uint64_t timeout_ms)
{
    struct hvg_param *p = param0(hg);
    if (!p)
        return fail(-ENOTSUP, "balloon: soft guests have no balloon driver (use "
                    "hugevm_domain_balloon)");
    if (pages_out % 512 || pages_out > p->balloon_pages)
        return fail(-EINVAL, "balloon: %llu pages: a multiple of 512, at most the %llu the "
                    "guest's balloon has (balloon_bytes)", (unsigned long long)pages_out,
                    (unsigned long long)p->balloon_pages);
    __atomic_store_n(&p->balloon_target, pages_out, __ATOMIC_RELEASE);
    uint64_t t0 = hv_now_ns();
    for (;;) {
        if (__atomic_load_n(&p->balloon_current, __ATOMIC_ACQUIRE) == pages_out)
            break;
        if (p->balloon_error || hg->g->fault_claimed)
            return fail(-EIO, "balloon: the driver stopped at %llu pages (error %lld)%s%s",
                        (unsigned long long)p->balloon_current, (long long)p->balloon_error,
                        hg->g->fault.what[0] ? ": " : "", hg->g->fault.what);
        if (timeout_ms && hv_now_ns() - t0 > timeout_ms * 1000000ULL)
            return fail(-ETIMEDOUT, "balloon: the driver reached %llu of %llu pages in time",
                        (unsigned long long)p->balloon_current, (unsigned long long)pages_out);
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    ok();
    return 0;
}

int hugevm_guest_verify(hugevm_guest *hg)
{
    char why[256] = "";
    int rc = guest_verify(hg->g, why, sizeof(why));
    if (rc < 0)
        return fail(rc, "verify: %s", why[0] ? why : strerror(-rc));
    ok();
    return 0;
}

int hugevm_guest_save(hugevm_guest *hg, int fd, struct hugevm_save_info *out)
{
    struct guest *g = hg->g;
    struct hvctx_buf tl;
    int rc = hvctx_begin(&tl);
    if (rc < 0)
        return fail(rc, "save: out of memory");
    rc = guest_encode(g, &tl);
    if (rc < 0) {
        hvctx_free(&tl);
        return fail(rc, "save: capturing the vCPUs: %s", rc == -EBUSY ? "pause the guest first"
                    : rc == -ESRCH ? "a native vCPU is not in guest code (resume, pause again)"
                    : strerror(-rc));
    }
    rc = save_fd(g->d, fd, tl.p + sizeof(struct hvctx_header),
                 tl.len - sizeof(struct hvctx_header), out);
    hvctx_free(&tl);
    return rc;
}

int hugevm_guest_info(hugevm_guest *hg, struct hugevm_guest_info *out)
{
    struct guest *g = hg->g;
    uint64_t mmu[3];
    memset(out, 0, sizeof(*out));
    out->backend = to_public(g->backend);
    out->nr_vcpus = g->nr_vcpus;
    out->accesses = guest_accesses(g);
    if (guest_mmu_pages(g, mmu) == 0) {
        out->have_kvm_leaves = true;
        out->kvm_4k = mmu[0];
        out->kvm_2m = mmu[1];
        out->kvm_1g = mmu[2];
    }
    struct hvg_param *p = param0(hg);
    if (p) {
        out->balloon_pages_out = __atomic_load_n(&p->balloon_current, __ATOMIC_ACQUIRE);
        out->balloon_2m_failed = p->balloon_2m_failed;
        out->balloon_fallback_4k = p->balloon_fallback_4k;
        out->balloon_calls = p->balloon_calls;
        out->balloon_error = p->balloon_error;
    }
    snprintf(out->fault, sizeof(out->fault), "%s", g->fault.what);
    return 0;
}

int hugevm_guest_stats(hugevm_guest *hg, hugevm_stat_fn fn, void *ctx)
{
    struct guest *g = hg->g;
#define X(name, desc) fn(ctx, #name, g->st.name, desc);
    GUEST_STAT_FIELDS(X)
#undef X
    fn(ctx, "accesses", guest_accesses(g), "memory operations so far");
    return 0;
}

/* ---- live migration --------------------------------------------------------------- */

void hugevm_migration_config_default(struct hugevm_migration_config *c)
{
    memset(c, 0, sizeof(*c));
    c->mode = HUGEVM_DIRTY_SPLIT_ON_WRITE;
}

int hugevm_migration_create(const struct hugevm_migration_config *c, bool receiver,
                            hugevm_migration **out)
{
    struct chan_creds cr;
    char err[CHAN_ERR_LEN] = "";
    *out = NULL;
    memset(&cr, 0, sizeof(cr));
    if (!c || c->nr_authz > CHAN_MAX_AUTHZ || (unsigned)c->mode >= DIRTY_NR_MODES)
        return fail(-EINVAL, "migration: bad configuration");
    cr.psk_file = c->psk_file;
    cr.cert_file = c->cert_file;
    cr.key_file = c->key_file;
    cr.ca_file = c->ca_file;
    for (unsigned i = 0; i < c->nr_authz; i++)
        cr.authz[i] = c->authz[i];
    cr.nr_authz = c->nr_authz;
    bool creds = chan_creds_given(&cr);
    if (creds == c->insecure)
        return fail(-EINVAL, "migration: %s", creds ? "credentials and insecure together"
                    : "no credentials: give a PSK file or certificates (or insecure, plain "
                      "TCP, on both sides)");
    hugevm_migration *mg = calloc(1, sizeof(*mg));
    if (!mg)
        return fail(-ENOMEM, "migration: out of memory");
    mg->c = *c;
    if (creds) {
        int rc = chan_tls_create(&cr, receiver, &mg->tls, err, sizeof(err));
        if (rc < 0) {
            free(mg);
            return fail(rc, "migration: %s", err);
        }
    }
    ok();
    *out = mg;
    return 0;
}

void hugevm_migration_destroy(hugevm_migration *mg)
{
    if (!mg)
        return;
    chan_tls_destroy(mg->tls);
    free(mg);
}

/* A channel over a dup of the caller's socket (which stays the caller's). */
static int api_chan(hugevm_migration *mg, int fd, struct chan **ch, char *err, size_t len)
{
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
        snprintf(err, len, "socket %d: %s", fd, strerror(errno));
        return -errno;
    }
    return chan_open(d, mg->tls, mg->c.timeout_ms, ch, err, len);
}

/* The sender's further channels: the caller's sockets, in order. */
struct api_fds {
    hugevm_migration *mg;
    const int *fds;
    unsigned n, next;
};

static struct chan *api_open_channel(void *ctx, char *err, size_t len)
{
    struct api_fds *a = ctx;
    struct chan *ch = NULL;
    if (a->next >= a->n)
        snprintf(err, len, "no socket left for another channel");
    else
        (void)api_chan(a->mg, a->fds[a->next++], &ch, err, len);
    return ch;
}

/* The receiver's further channels: accepted from the caller's listening
 * socket. */
struct api_join {
    hugevm_migration *mg;
    int lfd;
};

static struct chan *api_join(void *ctx, uint64_t by, char *err, size_t len)
{
    struct api_join *a = ctx;
    uint64_t now = hv_now_ns();
    int fd, rc = net_accept(a->lfd, by > now ? (int)((by - now) / 1000000) + 1 : 1, &fd);
    struct chan *ch = NULL;
    if (rc < 0)
        snprintf(err, len, "accepting a channel: %s", strerror(-rc));
    else if (chan_open(fd, a->mg->tls, a->mg->c.timeout_ms, &ch, err, len) < 0)
        ch = NULL;
    return ch;
}

int hugevm_migration_send(hugevm_migration *mg, hugevm_guest *hg, int fd,
                          struct hugevm_migration_info *info)
{
    return hugevm_migration_send_channels(mg, hg, &fd, 1, info);
}

int hugevm_migration_send_channels(hugevm_migration *mg, hugevm_guest *hg, const int *fds,
                                   unsigned n, struct hugevm_migration_info *info)
{
    char err[CHAN_ERR_LEN] = "";
    struct chan *ch = NULL;
    if (n < 1 || n > MIG_MAX_CHANNELS)
        return fail(-EINVAL, "migration: %u channels (1..%u)", n, MIG_MAX_CHANNELS);
    int rc = api_chan(mg, fds[0], &ch, err, sizeof(err));
    if (rc < 0)
        return fail(rc, "migration: %s", err);
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    if (!rep) {
        chan_close(ch);
        return fail(-ENOMEM, "migration: out of memory");
    }
    struct api_fds more = {mg, fds, n, 1};
    struct migrate_opts mo = {.mode = (enum dirty_mode)mg->c.mode,
                              .downtime_ms = mg->c.downtime_ms, .max_rounds = mg->c.max_rounds,
                              .compress = mg->c.compress, .timeout_ms = mg->c.timeout_ms,
                              .channels = n, .open_channel = api_open_channel,
                              .open_ctx = &more};
    rc = migrate_send(hg->g, ch, &mo, rep);
    if (info) {
        memset(info, 0, sizeof(*info));
        info->rounds = rep->nr_rounds;
        info->total_s = rep->total_s;
        info->downtime_s = rep->downtime_s;
        info->pages_data = rep->st.pages_data;
        info->wire_bytes = rep->st.wire_bytes;
        info->before_1g = rep->before.p1g;
        info->before_2m = rep->before.p2m;
        info->before_4k = rep->before.p4k;
        info->receiver_1g = rep->receiver.p1g;
        info->receiver_2m = rep->receiver.p2m;
        info->receiver_4k = rep->receiver.p4k;
        info->verified = rep->verified;
        info->in_doubt = rep->in_doubt;
    }
    if (rc < 0)
        fail(rc, "migration: %s", rep->err[0] ? rep->err : strerror(-rc));
    else
        ok();
    free(rep);
    chan_close(ch);
    return rc;
}

int hugevm_migration_receive(hugevm_migration *mg, hugevm_machine *m, int fd,
                             hugevm_guest **out, struct hugevm_migration_info *info)
{
    return hugevm_migration_receive_channels(mg, m, fd, -1, out, info);
}

int hugevm_migration_receive_channels(hugevm_migration *mg, hugevm_machine *m, int fd, int lfd,
                                      hugevm_guest **out, struct hugevm_migration_info *info)
{
    char err[CHAN_ERR_LEN] = "";
    struct chan *ch = NULL;
    *out = NULL;
    int rc = api_chan(mg, fd, &ch, err, sizeof(err));
    if (rc < 0)
        return fail(rc, "migration: %s", err);
    struct migrate_recv_result *res = calloc(1, sizeof(*res));
    if (!res) {
        chan_close(ch);
        return fail(-ENOMEM, "migration: out of memory");
    }
    struct api_join jn = {mg, lfd};
    struct migrate_recv_opts ro = {.timeout_ms = mg->c.timeout_ms,
                                   .join = lfd >= 0 ? api_join : NULL, .jctx = &jn};
    rc = migrate_receive(m->m, ch, &ro, res);
    chan_close(ch);
    if (info) {
        memset(info, 0, sizeof(*info));
        info->total_s = res->seconds;
        info->wire_bytes = res->wire_bytes;
        info->pages_data = res->rr.pages_data;
        info->receiver_1g = res->rr.pages_1g;
        info->receiver_2m = res->rr.pages_2m;
        info->receiver_4k = res->rr.pages_4k;
        info->verified = res->verified;
        info->in_doubt = res->in_doubt;
    }
    if (res->g) {
        struct domain *d = res->g->d;
        hugevm_domain *hd = domain_wrap(d);
        int wr = hd ? guest_wrap(res->g, hd, true, out) : -ENOMEM;
        if (wr < 0) {
            if (!hd)
                guest_destroy(res->g);
            free(hd);
            domain_destroy(d);
            rc = fail(-ENOMEM, "migration: out of memory");
        }
    }
    if (rc < 0 && !*out)
        fail(rc, "migration: %s", res->err[0] ? res->err : strerror(-rc));
    else if (rc < 0)
        fail(rc, "migration in doubt: %s", res->err[0] ? res->err : strerror(-rc));
    else
        ok();
    migrate_recv_result_free(res);
    free(res);
    return rc;
}

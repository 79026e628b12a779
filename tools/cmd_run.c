/*
 * cmd_run.c - `hugevm run`: populate a guest, run a seeded workload on soft
 * vCPUs, report throughput, TLB misses, 2-D walk references and leaf counts
 * before and after; with --log-dirty MODE, run it in rounds with log-dirty
 * on, harvesting after each round, then disable and report the superpages
 * merged back.  With --save FILE, the guest is then saved as a migration
 * stream with its vCPU and workload state (HVM_CONTEXT TLVs, guest_state.h)
 * so that `hugevm restore FILE --run` resumes the workload where it stopped.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "dirty.h"
#include "domain.h"
#include "guest.h"
#include "migrate.h"
#include "save.h"
#include "vcpu.h"
#include "workload.h"

#define MAX_VCPUS 64

static struct {
    uint64_t guest_mem, host_mem, accesses, rounds;
    uint64_t pod_target; /* bytes; 0: no PoD */
    double seconds, write_frac, theta;
    const char *log_dirty, *guest_page, *map;
    const char *migrate_to; /* --migrate-to: live-migrate after --after S */
    const char *save;       /* --save FILE: save the guest after the run */
    const char *backend, *guest_program;
    const char *fail_save;  /* --save-on-failure FILE: after a failed --migrate-to */
    const char *doubt_file; /* --in-doubt-save FILE: --migrate-to left in doubt */
    double after;
    double pc_recover_s;     /* --postcopy-recover S */
    uint64_t precopy_rounds; /* --postcopy: pre-copy rounds before the switch */
    uint64_t channels;       /* --migrate-to: parallel connections (0: the default) */
    uint64_t max_bw;         /* --migrate-to: bytes/s on the wire (0: no limit) */
    bool json, no_audit, postcopy;
    struct cli_tls_opts tls; /* with --migrate-to */
} o = {
    .guest_mem = 1 * GiB,
    .rounds = 4,
    .write_frac = -1,
    .guest_page = "auto",
    .map = "1G",
    .backend = "auto",
    .pc_recover_s = 60,
};

static struct cli_workload_spec wl = {
    .def = {.workload = "uniform", .vcpus = 1, .seed = 1, .wss = 1.0},
    .names = "seq, uniform (gups), chase (kvm, native), zipf or writer",
    .rate_what = "writer: pages",
    .seed_also = "",
};

static int parse_order(const char *s, unsigned *order)
{
    if (!strcasecmp(s, "4k"))
        *order = PAGE_ORDER_4K;
    else if (!strcasecmp(s, "2m"))
        *order = PAGE_ORDER_2M;
    else if (!strcasecmp(s, "1g"))
        *order = PAGE_ORDER_1G;
    else
        return -EINVAL;
    return 0;
}

struct totals {
    struct vcpu_stats st;
};

static void sum_stats(struct vcpu *const *v, unsigned n, struct vcpu_stats *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < n; i++) {
#define X(name, desc) t->name += v[i]->st.name;
        VCPU_STAT_FIELDS(X)
#undef X
    }
}

static void print_leaves(const char *what, const struct domain *d)
{
    printf("%-16s pages_1g %-6llu pages_2m %-8llu pages_4k %llu\n", what,
           (unsigned long long)domain_pages_1g(d), (unsigned long long)domain_pages_2m(d),
           (unsigned long long)domain_pages_4k(d));
}

static void json_leaves(struct json *j, const char *key, uint64_t p4k, uint64_t p2m,
                        uint64_t p1g)
{
    json_obj_begin(j, key);
    json_u64(j, "pages_4k", p4k);
    json_u64(j, "pages_2m", p2m);
    json_u64(j, "pages_1g", p1g);
    json_obj_end(j);
}

static int run_run(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    struct vcpu *v[MAX_VCPUS] = {0};
    struct workload *w[MAX_VCPUS] = {0};
    uint64_t *bitmap = NULL;
    enum workload_kind kind;
    enum dirty_mode mode = DIRTY_SPLIT_ON_WRITE;
    unsigned guest_order = PAGE_ORDER_2M, map_order;
    int rc, status = 1;
    char b1[32];

    if (argc)
        return cli_error("run: unexpected argument '%s'", argv[0]);
    int backend;
    char bwhy[300];
    const char *soft_only = o.log_dirty && !o.migrate_to ? "--log-dirty" : NULL;
    bool need_prog = o.guest_program || !strcmp(wl.v.workload, "chase");
    if (cli_backend("run", o.backend, soft_only, need_prog, &backend, bwhy, sizeof(bwhy)))
        return 1;
    bool prog = backend != GUEST_BACKEND_SOFT;
    if (!strcasecmp(o.guest_page, "auto"))
        o.guest_page = prog ? "auto" : "2M";
    if (!prog && workload_parse(wl.v.workload, &kind) < 0)
        return cli_error("run: unknown workload '%s' (seq, uniform, zipf, writer; chase needs "
                         "the kvm or native backend)", wl.v.workload);
    if (o.log_dirty && dirty_mode_parse(o.log_dirty, &mode) < 0)
        return cli_error("run: unknown log-dirty mode '%s' (split-on-write, eager-split, coarse)",
                         o.log_dirty);
    if ((!prog && parse_order(o.guest_page, &guest_order) < 0) || parse_order(o.map, &map_order) < 0)
        return cli_error("run: --guest-page and --map take 4K, 2M or 1G");
    if (wl.v.vcpus == 0 || wl.v.vcpus > MAX_VCPUS)
        return cli_error("run: --vcpus must be in 1..%d", MAX_VCPUS);
    if (o.guest_mem == 0 || o.guest_mem % PAGE_SIZE)
        return cli_error("run: --guest-mem must be a positive multiple of 4 KiB");
    if (o.rounds == 0)
        return cli_error("run: --rounds must be positive");
    if (o.seconds < 0 || (o.seconds > 0 && o.accesses))
        return cli_error("run: give --seconds or --accesses, not both");
    if (!o.seconds && !o.accesses)
        o.accesses = 10000000;
    if ((o.fail_save || o.doubt_file) && !o.migrate_to)
        return cli_error("run: --save-on-failure and --in-doubt-save go with --migrate-to");
    if (o.fail_save && map_order == PAGE_ORDER_2M)
        return cli_error("run: --save-on-failure with --map 2M: the stream does not carry the "
                         "2M cap (use --map 1G or 4K)");
    if ((o.postcopy || o.precopy_rounds) && !o.migrate_to)
        return cli_error("run: --postcopy and --precopy-rounds go with --migrate-to");
    if (o.precopy_rounds && !o.postcopy)
        return cli_error("run: --precopy-rounds goes with --postcopy");
    if (o.precopy_rounds > MIGRATE_MAX_ROUNDS)
        return cli_error("run: --precopy-rounds must be in 1..%d", MIGRATE_MAX_ROUNDS);
    if (o.save && o.migrate_to)
        return cli_error("run: give --save or --migrate-to, not both");
    if (!o.migrate_to && (o.tls.insecure || chan_creds_given(&o.tls.creds)))
        return cli_error("run: --psk-file, --tls-* and --insecure go with --migrate-to");
    if ((o.channels || o.max_bw) && !o.migrate_to)
        return cli_error("run: --channels and --max-bandwidth go with --migrate-to");
    unsigned channels = 0;
    if (o.migrate_to && cli_channels("run", o.channels, &channels) != 0)
        return 1;
    struct chan_tls *tls = NULL;
    if (o.migrate_to && cli_tls_setup("run", &o.tls, false, &tls) != 0)
        return 1;
    if (o.save && map_order == PAGE_ORDER_2M)
        return cli_error("run: --save with --map 2M: the stream does not carry the 2M cap, a "
                         "restore would rebuild 1G leaves (use --map 1G or 4K)");
    if (!o.host_mem)
        o.host_mem = (o.guest_mem + o.guest_mem / 4 + 64 * MiB + GiB - 1) & ~(GiB - 1);
    unsigned nv = (unsigned)wl.v.vcpus;

    if (cli_machine_create("run", &m, o.host_mem, false, NULL) < 0) {
        chan_tls_destroy(tls);
        return 1;
    }
    struct domain_config cfg;
    domain_config_default(&cfg);
    struct gfn_range lay[2];
    if (map_order == PAGE_ORDER_4K) {
        /* the whole layout 4K-only */
        struct domain probe = {.mmio_hole_start = GFN_4G - (DEFAULT_MMIO_HOLE >> PAGE_SHIFT)};
        unsigned n = domain_guest_layout(&probe, o.guest_mem, lay);
        cfg.nr_4k_ranges = n;
        for (unsigned i = 0; i < n; i++)
            cfg.ranges_4k[i] = lay[i];
    }
    rc = domain_create(m, &cfg, &d);
    if (rc < 0) {
        cli_error("run: cannot create the domain: %s", strerror(-rc));
        goto out;
    }
    if (o.pod_target) {
        /* PoD guest: PoD entries for all of it, real memory up to the target */
        rc = domain_populate_guest_flags(d, o.guest_mem, DOMAIN_POPULATE_POD, NULL);
        if (rc == 0)
            rc = pod_set_target(d, o.pod_target >> PAGE_SHIFT);
    } else {
        rc = domain_populate_guest(d, o.guest_mem, NULL);
    }
    if (rc < 0) {
        cli_error("run: populating the guest failed: %s", strerror(-rc));
        goto out;
    }
    if (map_order == PAGE_ORDER_2M) {
        /* 2M at most: split every 1G leaf, keep it split */
        d->no_auto_coalesce = true;
        p2m_set_auto_coalesce(d->p2m, false);
        unsigned n = domain_guest_layout(d, o.guest_mem, lay);
        for (unsigned i = 0; i < n; i++)
            for (gfn_t g = lay[i].gfn; g < lay[i].gfn + lay[i].nr; g += order_pages(9)) {
                unsigned order;
                p2m_get_entry(d->p2m, g, NULL, &order);
                if (order == PAGE_ORDER_1G && p2m_split(d->p2m, g) < 0) {
                    cli_error("run: cannot split to 2M: out of p2m tables");
                    goto out;
                }
            }
    }
    uint64_t b4k = domain_pages_4k(d), b2m = domain_pages_2m(d), b1g = domain_pages_1g(d);
    if (prog) {
        struct migrate_opts pmopts = {.mode = mode, .postcopy = o.postcopy,
                                      .precopy_rounds = (unsigned)o.precopy_rounds,
                                      .channels = channels, .max_bandwidth = (double)o.max_bw,
                                      .pc_recover_ms = cli_ms(o.pc_recover_s)};
        struct cli_prog_run pr = {
            .backend = backend, .why = bwhy, .guest_mem = o.guest_mem, .vcpus = nv,
            .workload = wl.v.workload, .guest_page = o.guest_page,
            .program_path = o.guest_program, .accesses = o.seconds > 0 ? 0 : o.accesses,
            .seconds = o.seconds, .seed = wl.v.seed, .write_rate = wl.v.write_rate,
            .write_frac = o.write_frac, .wss = wl.v.wss, .theta = o.theta, .json = o.json,
            .no_audit = o.no_audit, .save = o.save, .migrate_to = o.migrate_to,
            .after = o.after, .mopts = &pmopts, .tls = tls, .doubt_file = o.doubt_file,
            .fail_save = o.fail_save,
        };
        status = cli_run_program(d, &pr);
        goto out;
    }

    struct tlb_config tc;
    tlb_config_default(&tc);
    tc.guest_order = guest_order;
    struct workload_config wc;
    workload_config_default(&wc, kind);
    wc.seed = wl.v.seed;
    wc.write_frac = o.write_frac;
    wc.wss = wl.v.wss;
    wc.zipf_theta = o.theta;
    wc.write_rate = wl.v.write_rate;
    if (o.migrate_to) {
        /* live migration: the guest runs on its own thread (cmd_migrate.c) */
        struct migrate_opts mopts = {.mode = mode, .postcopy = o.postcopy,
                                     .precopy_rounds = (unsigned)o.precopy_rounds,
                                     .channels = channels, .max_bandwidth = (double)o.max_bw,
                                     .pc_recover_ms = cli_ms(o.pc_recover_s)};
        status = cli_migrate_domain(d, nv, &tc, &wc, o.migrate_to, o.after, &mopts, tls, 0,
                                    o.doubt_file, o.seconds, o.fail_save, o.json);
        goto out;
    }
    for (unsigned i = 0; i < nv; i++) {
        rc = vcpu_create(d, i, &tc, &v[i]);
        if (rc == 0)
            rc = workload_create(d, &wc, i, nv, &w[i]);
        if (rc < 0) {
            cli_error("run: cannot create vCPU %u: %s", i, strerror(-rc));
            goto out;
        }
    }

    struct json j;
    if (o.json) {
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "backend", "soft");
        json_str(&j, "backend_why", bwhy);
        json_u64(&j, "guest_bytes", o.guest_mem);
        json_str(&j, "workload", workload_name(kind));
        json_u64(&j, "vcpus", nv);
        json_u64(&j, "seed", wl.v.seed);
        json_str(&j, "guest_page", o.guest_page);
        json_str(&j, "map", o.map);
        json_leaves(&j, "leaves_before", b4k, b2m, b1g);
    } else {
        printf("backend: soft (%s)\n", bwhy);
        printf("guest %s, workload %s, %u vCPU(s), guest pages %s, mapped at most %s\n",
               hv_fmt_size(o.guest_mem, b1, sizeof(b1)), workload_name(kind), nv,
               o.guest_page, o.map);
        print_leaves("before:", d);
    }

    struct workload_result total = {0};
    uint64_t rounds = o.log_dirty ? o.rounds : 1;
    uint64_t per_acc = o.accesses ? (o.accesses + rounds - 1) / rounds : 0;
    uint64_t per_ns = o.seconds > 0 ? (uint64_t)(o.seconds * 1e9 / (double)rounds) : 0;
    uint64_t nr_gfns = 0;
    int audit = 0;
    if (o.log_dirty) {
        uint64_t t0 = hv_now_ns();
        rc = dirty_enable(d, mode);
        double en = (double)(hv_now_ns() - t0) / 1e9;
        if (rc < 0) {
            cli_error("run: enabling log-dirty failed: %s", strerror(-rc));
            goto out_json;
        }
        nr_gfns = dirty_bitmap_gfns(d);
        bitmap = calloc((nr_gfns + 63) / 64, sizeof(uint64_t));
        if (!bitmap) {
            cli_error("run: out of memory");
            goto out_json;
        }
        if (o.json) {
            json_obj_begin(&j, "log_dirty");
            json_str(&j, "mode", dirty_mode_name(mode));
            json_dbl(&j, "enable_s", en);
            json_leaves(&j, "leaves_enabled", domain_pages_4k(d), domain_pages_2m(d),
                        domain_pages_1g(d));
            json_arr_begin(&j, "rounds");
        } else {
            printf("log-dirty %s enabled in %.3f ms\n", dirty_mode_name(mode), en * 1e3);
            print_leaves("enabled:", d);
        }
    }
    for (uint64_t r = 0; r < rounds; r++) {
        struct workload_result res;
        rc = workload_run(v, w, nv, per_acc, per_ns, &res);
        total.accesses += res.accesses;
        total.writes += res.writes;
        total.ns += res.ns;
        total.checksum += res.checksum;
        if (rc < 0) {
            cli_error("run: the workload stopped: %s", strerror(-rc));
            break;
        }
        if (!o.log_dirty)
            break;
        struct dirty_round rd;
        rc = dirty_harvest(d, bitmap, nr_gfns, &rd);
        if (rc < 0) {
            cli_error("run: harvest failed: %s", strerror(-rc));
            break;
        }
        if (o.json) {
            json_obj_begin(&j, NULL);
            json_u64(&j, "round", r + 1);
            json_u64(&j, "accesses", res.accesses);
            json_u64(&j, "writes", res.writes);
            json_dbl(&j, "run_s", (double)res.ns / 1e9);
            json_u64(&j, "dirty_pages", rd.dirty_pages);
            json_u64(&j, "overmarked_pages", rd.overmarked_pages);
            json_u64(&j, "pml_flushed", rd.pml_flushed);
            json_dbl(&j, "harvest_s", (double)rd.ns / 1e9);
            json_u64(&j, "pages_4k", domain_pages_4k(d));
            json_u64(&j, "pages_2m", domain_pages_2m(d));
            json_u64(&j, "pages_1g", domain_pages_1g(d));
            json_obj_end(&j);
        } else {
            printf("round %-3llu %10llu accesses %9llu writes in %8.3f ms; dirty %8llu pages "
                   "(overmarked %llu), harvest %.3f ms; pages_1g %llu pages_2m %llu pages_4k %llu\n",
                   (unsigned long long)(r + 1), (unsigned long long)res.accesses,
                   (unsigned long long)res.writes, (double)res.ns / 1e6,
                   (unsigned long long)rd.dirty_pages, (unsigned long long)rd.overmarked_pages,
                   (double)rd.ns / 1e6, (unsigned long long)domain_pages_1g(d),
                   (unsigned long long)domain_pages_2m(d), (unsigned long long)domain_pages_4k(d));
        }
    }
    int run_rc = rc;
    if (o.log_dirty) {
        struct dirty_disable_result dr;
        uint64_t t0 = hv_now_ns();
        int drc = dirty_disable(d, NULL, 0, &dr);
        double ds = (double)(hv_now_ns() - t0) / 1e9;
        if (o.json) {
            json_arr_end(&j);
            json_obj_begin(&j, "disable");
            json_dbl(&j, "disable_s", ds);
            json_u64(&j, "split_1g", dr.split_1g);
            json_u64(&j, "split_2m", dr.split_2m);
            json_u64(&j, "recovered_1g", dr.recovered_1g);
            json_u64(&j, "recovered_2m", dr.recovered_2m);
            json_u64(&j, "lost_1g", dr.lost_1g);
            json_u64(&j, "lost_2m", dr.lost_2m);
#define X(name, desc) json_u64(&j, "lost_" #name, dr.lost_##name);
            DIRTY_LOST_FIELDS(X)
#undef X
            json_u64(&j, "pages_4k", dr.pages_4k_after);
            json_u64(&j, "pages_2m", dr.pages_2m_after);
            json_u64(&j, "pages_1g", dr.pages_1g_after);
            json_obj_begin(&j, "stats");
#define X(name, desc) json_u64(&j, #name, dr.stats.name);
            DIRTY_STAT_FIELDS(X)
#undef X
            json_obj_end(&j);
            json_obj_end(&j);
            json_obj_end(&j);
        } else {
            printf("log-dirty disabled in %.3f ms: split 1G %llu 2M %llu; recovered 1G %llu "
                   "2M %llu; not recovered 1G %llu 2M %llu\n",
                   ds * 1e3, (unsigned long long)dr.split_1g, (unsigned long long)dr.split_2m,
                   (unsigned long long)dr.recovered_1g, (unsigned long long)dr.recovered_2m,
                   (unsigned long long)dr.lost_1g, (unsigned long long)dr.lost_2m);
#define X(name, desc)                                                          \
    if (dr.lost_##name)                                                        \
        printf("    not recovered: %llu, %s\n", (unsigned long long)dr.lost_##name, desc);
            DIRTY_LOST_FIELDS(X)
#undef X
#define X(name, desc)                                                          \
    if (dr.stats.name)                                                         \
        printf("    %-18s %12llu  %s\n", #name, (unsigned long long)dr.stats.name, desc);
            DIRTY_STAT_FIELDS(X)
#undef X
        }
        if (drc < 0 && run_rc == 0)
            run_rc = drc;
    }
    /* --save: after the run (and log-dirty off), with the vCPU state */
    struct save_result sr = {0};
    char serr[256] = "";
    int save_rc = 0;
    if (o.save && run_rc == 0) {
        save_rc = cli_save_guest(d, v, w, nv, &wc, o.save, &sr, serr, sizeof(serr));
        if (save_rc < 0)
            cli_error("run: saving to %s: %s (nothing was written under that name)", o.save,
                      serr);
    }
    struct vcpu_stats st;
    sum_stats(v, nv, &st);
    double secs = (double)total.ns / 1e9;
    double mpm = st.accesses ? (double)st.tlb_misses * 1e6 / (double)st.accesses : 0;
    if (!o.no_audit) {
        audit = domain_audit(d);
        if (audit == 0)
            audit = frames_audit(m->frames);
    }
    if (o.json) {
        json_u64(&j, "accesses", total.accesses);
        json_u64(&j, "writes", total.writes);
        json_dbl(&j, "seconds", secs);
        json_dbl(&j, "accesses_per_s", secs > 0 ? (double)total.accesses / secs : 0);
        json_bool(&j, "verified", false); /* soft workloads are checked by the tests' models */
        json_null(&j, "kvm_pages_4k");
        json_null(&j, "kvm_pages_2m");
        json_null(&j, "kvm_pages_1g");
        json_dbl(&j, "tlb_misses_per_million", mpm);
        json_obj_begin(&j, "vcpu");
#define X(name, desc) json_u64(&j, #name, st.name);
        VCPU_STAT_FIELDS(X)
#undef X
        json_obj_end(&j);
        json_leaves(&j, "leaves_after", domain_pages_4k(d), domain_pages_2m(d),
                    domain_pages_1g(d));
        json_u64(&j, "pages_4k", domain_pages_4k(d));
        json_u64(&j, "pages_2m", domain_pages_2m(d));
        json_u64(&j, "pages_1g", domain_pages_1g(d));
        json_u64(&j, "checksum", total.checksum);
        if (o.pod_target)
            cli_json_pod(&j, "pod", d);
        if (o.save) {
            json_obj_begin(&j, "save");
            json_str(&j, "file", o.save);
            json_bool(&j, "saved", o.save && run_rc == 0 && save_rc == 0);
            if (save_rc < 0)
                json_str(&j, "error", serr);
            json_u64(&j, "bytes", sr.bytes);
            json_u64(&j, "records", sr.records);
            json_u64(&j, "pages_data", sr.pages_data);
            json_u64(&j, "pages_zero", sr.pages_zero);
            json_u64(&j, "pages_xtab", sr.pages_xtab);
            json_u64(&j, "vcpus", nv);
            json_leaves(&j, "leaves", sr.pages_4k, sr.extents_2m, sr.extents_1g);
            json_dbl(&j, "seconds", sr.seconds);
            json_obj_end(&j);
        }
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("%llu accesses (%llu writes) in %.3f s: %.2f M accesses/s\n",
               (unsigned long long)total.accesses, (unsigned long long)total.writes, secs,
               secs > 0 ? (double)total.accesses / secs / 1e6 : 0);
        printf("TLB: hits %llu misses %llu (%.1f per million accesses; filled 4K %llu 2M %llu "
               "1G %llu), flushes %llu\n",
               (unsigned long long)st.tlb_hits, (unsigned long long)st.tlb_misses, mpm,
               (unsigned long long)st.miss_4k, (unsigned long long)st.miss_2m,
               (unsigned long long)st.miss_1g, (unsigned long long)st.tlb_flushes);
        printf("2-D walks: %llu, %llu memory references (%.1f per walk), EPT violations %llu\n",
               (unsigned long long)st.walks, (unsigned long long)st.walk_refs,
               st.walks ? (double)st.walk_refs / (double)st.walks : 0,
               (unsigned long long)st.ept_violations);
        print_leaves("after:", d);
        if (o.pod_target)
            cli_print_pod(d, stdout);
        if (o.save && run_rc == 0 && save_rc == 0)
        {
            printf("saved to %s with %u vCPU(s) and their workload positions in HVM_CONTEXT\n",
                   o.save, nv);
            cli_print_saved(stdout, &sr);
            printf("  resume with: hugevm restore %s --run\n", o.save);
        }
        if (!o.no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = run_rc < 0 || save_rc < 0 || audit ? 1 : 0;
    goto out;
out_json:
    if (o.json) {
        json_obj_end(&j);
        json_finish(&j);
    }
out:
    if (d && dirty_enabled(d) && dirty_disable(d, NULL, 0, NULL) < 0)
        cli_error("run: disabling log-dirty failed");
    for (unsigned i = 0; i < MAX_VCPUS; i++) {
        workload_destroy(w[i]);
        vcpu_destroy(v[i]);
    }
    free(bitmap);
    domain_destroy(d);
    machine_destroy(m);
    chan_tls_destroy(tls);
    return status;
}

static struct opt run_opts[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM (default 1G)", NULL},
    {"pod-target", OPT_SIZE, &o.pod_target, "SIZE", "populate on demand: PoD guest backed by SIZE of real memory", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: guest + 25% + 64M, in GiB)", NULL},
    {"backend", OPT_STR, &o.backend, "NAME", "kvm (real guest code under /dev/kvm), soft (software vCPUs with a TLB model), native (guest code as host code) or auto (default: kvm where /dev/kvm works, else soft)", NULL},
    {"guest-program", OPT_STR, &o.guest_program, "FILE", "run your own freestanding ELF64 guest (guest/hugevm_guest.h; examples/hello.c) instead of the built-in workloads", NULL},
    CLI_WORKLOAD_OPTS(wl),
    {"seconds", OPT_SECONDS, &o.seconds, "S", "run for S seconds of wall time", NULL},
    {"accesses", OPT_U64, &o.accesses, "N", "run N guest accesses in total (default 10M)", NULL},
    {"log-dirty", OPT_STR, &o.log_dirty, "MODE", "split-on-write, eager-split or coarse: run in rounds with log-dirty", NULL},
    {"rounds", OPT_U64, &o.rounds, "N", "log-dirty rounds, one harvest each (default 4)", NULL},
    {"write-frac", OPT_FRAC, &o.write_frac, "F", "fraction of accesses that write (default per workload)", NULL},
    {"theta", OPT_DBL, &o.theta, "T", "zipf: skew in (0, 1) (default 0.99)", NULL},
    {"guest-page", OPT_STR, &o.guest_page, "SIZE", "page size of the guest's own paging: soft 4K, 2M (default) or 1G; kvm 2M, 1G or auto (default: the largest the guest's CPUID offers)", NULL},
    {"map", OPT_STR, &o.map, "SIZE", "largest p2m leaf: 4K, 2M or 1G (default)", NULL},
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the p2m/domain/frame audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {"migrate-to", OPT_STR, &o.migrate_to, "ADDR:PORT", "live-migrate the running guest to a receiver (hugevm receive)", NULL},
    {"after", OPT_SECONDS, &o.after, "S", "with --migrate-to: run S seconds first (default 0)", NULL},
    {"postcopy", OPT_FLAG, &o.postcopy, NULL, "with --migrate-to: switch to post-copy after "
     "--precopy-rounds (kvm and native guests; see hugevm-migrate(1))", NULL},
    {"precopy-rounds", OPT_U64, &o.precopy_rounds, "N", "with --postcopy: pre-copy rounds "
     "before the switch, the full copy included (default 1)", NULL},
    CLI_POSTCOPY_RECOVER_OPT(o.pc_recover_s),
    CLI_CHANNELS_OPT(o.channels),
    CLI_BANDWIDTH_OPT(o.max_bw),
    {"in-doubt-save", OPT_STR, &o.doubt_file, "FILE", "with --migrate-to: if RESUMED does not "
     "come after COMMIT, save the paused guest there (default hugevm-in-doubt-sender-PID.hvs; "
     "exit 3)", NULL},
    {"save-on-failure", OPT_STR, &o.fail_save, "FILE", "with --migrate-to: if the migration "
     "fails, the guest runs on here for the rest of --seconds, then is saved to FILE", NULL},
    CLI_TLS_OPTS(o.tls),
    {"save", OPT_STR, &o.save, "FILE", "then save the guest with its vCPU/workload state (hugevm restore FILE --run resumes it)", NULL},
    {0},
};

const struct cmd cmd_run = {
    .name = "run",
    .summary = "run a guest: C workloads under KVM, or soft vCPUs (TLB, walks) optionally under log-dirty",
    .run = run_run,
    .opts = run_opts,
    .workload = &wl,
};

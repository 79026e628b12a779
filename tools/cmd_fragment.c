/*
 * cmd_fragment.c - `hugevm fragment`: the fragmentation scenario.  The same
 * deterministic 4K/2M churn runs through each frame-allocator policy; the
 * table shows how many 2M and 1G extents each leaves allocatable.
 */
#include <string.h>

#include "cli.h"
#include "frames.h"

static struct {
    uint64_t host_mem, seed;
    double target, mix_4k;
    bool json;
} o = {
    .host_mem = 16 * GiB,
    .seed = 1,
    .target = 0.3,
    .mix_4k = 0.7,
};

struct outcome {
    int rc;
    uint64_t ops, ns;
    uint64_t alloc_2m, alloc_1g, frag_blocks;
    double unusable_2m, unusable_1g, extfrag_2m, extfrag_1g;
};

static struct outcome run_policy(enum frame_policy pol)
{
    struct outcome r = {0};
    struct frames *f;
    r.rc = frames_create(&f, o.host_mem >> PAGE_SHIFT, pol);
    if (r.rc < 0)
        return r;
    uint64_t t0 = hv_now_ns();
    r.rc = frames_fragment(f, 1, o.target, o.mix_4k, o.seed, &r.ops);
    r.ns = hv_now_ns() - t0;
    if (r.rc == 0) {
        struct frame_stats st;
        frames_get_stats(f, &st);
        r.alloc_2m = frames_allocatable(f, PAGE_ORDER_2M);
        r.alloc_1g = frames_allocatable(f, PAGE_ORDER_1G);
        r.frag_blocks = st.frag_blocks;
        r.unusable_2m = frames_unusable_index(f, PAGE_ORDER_2M);
        r.unusable_1g = frames_unusable_index(f, PAGE_ORDER_1G);
        r.extfrag_2m = frames_extfrag_index(f, PAGE_ORDER_2M);
        r.extfrag_1g = frames_extfrag_index(f, PAGE_ORDER_1G);
        r.rc = frames_audit(f);
    }
    frames_destroy(f);
    return r;
}

static int run_fragment(int argc, char **argv)
{
    if (argc)
        return cli_error("fragment: unexpected argument '%s'", argv[0]);
    if (o.target <= 0 || o.target >= 1 || o.mix_4k <= 0 || o.mix_4k > 1)
        return cli_error("fragment: --target must be in (0, 1) and --mix-4k in (0, 1]");
    if (o.host_mem < 2 * GiB || o.host_mem % (2 * MiB))
        return cli_error("fragment: --host-mem must be >= 2G and a multiple of 2M");
    static const enum frame_policy pols[] = {FRAME_POLICY_FRAGPOOL, FRAME_POLICY_BUDDY};
    struct outcome r[2];
    for (int i = 0; i < 2; i++) {
        r[i] = run_policy(pols[i]);
        if (r[i].rc < 0)
            return cli_error("fragment: %s: %s", frame_policy_name(pols[i]),
                             r[i].rc == -EUCLEAN ? hv_audit_last() : strerror(-r[i].rc));
    }
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_u64(&j, "host_bytes", o.host_mem);
        json_dbl(&j, "target", o.target);
        json_dbl(&j, "mix_4k", o.mix_4k);
        json_u64(&j, "seed", o.seed);
        json_arr_begin(&j, "policies");
        for (int i = 0; i < 2; i++) {
            json_obj_begin(&j, NULL);
            json_str(&j, "policy", frame_policy_name(pols[i]));
            json_u64(&j, "ops", r[i].ops);
            json_dbl(&j, "ns_per_op", r[i].ops ? (double)r[i].ns / r[i].ops : 0);
            json_u64(&j, "allocatable_2m", r[i].alloc_2m);
            json_u64(&j, "allocatable_1g", r[i].alloc_1g);
            json_u64(&j, "frag_blocks", r[i].frag_blocks);
            json_dbl(&j, "unusable_index_2m", r[i].unusable_2m);
            json_dbl(&j, "unusable_index_1g", r[i].unusable_1g);
            json_dbl(&j, "extfrag_index_2m", r[i].extfrag_2m);
            json_dbl(&j, "extfrag_index_1g", r[i].extfrag_1g);
            json_obj_end(&j);
        }
        json_arr_end(&j);
        json_obj_end(&j);
        json_finish(&j);
        return 0;
    }
    char b[32];
    printf("churn: %s host, until other domains hold %.0f%% of it in 4K pieces; "
           "%.0f%% of operations at 4K, the rest 2M; seed %llu\n",
           hv_fmt_size(o.host_mem, b, sizeof(b)), o.target * 100, o.mix_4k * 100,
           (unsigned long long)o.seed);
    printf("%-9s %10s %8s %14s %14s %11s %11s %11s %11s\n", "policy", "ops", "ns/op",
           "allocatable2M", "allocatable1G", "unusable2M", "unusable1G", "extfrag2M",
           "extfrag1G");
    for (int i = 0; i < 2; i++)
        printf("%-9s %10llu %8.0f %14llu %14llu %11.3f %11.3f %11.3f %11.3f\n",
               frame_policy_name(pols[i]), (unsigned long long)r[i].ops,
               r[i].ops ? (double)r[i].ns / r[i].ops : 0,
               (unsigned long long)r[i].alloc_2m, (unsigned long long)r[i].alloc_1g,
               r[i].unusable_2m, r[i].unusable_1g, r[i].extfrag_2m, r[i].extfrag_1g);
    return 0;
}

static struct opt fragment_opts[] = {
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default 16G)", NULL},
    {"target", OPT_FRAC, &o.target, "F", "fraction of the host left in 4K pieces (default 0.3)", NULL},
    {"mix-4k", OPT_FRAC, &o.mix_4k, "F", "fraction of churn operations at 4K (default 0.7)", NULL},
    {"seed", OPT_U64, &o.seed, "N", "churn seed", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_fragment = {
    .name = "fragment",
    .summary = "compare frame-allocator policies under the same 4K/2M churn",
    .run = run_fragment,
    .opts = fragment_opts,
};

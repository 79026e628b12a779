/*
 * cmd_info.c - `hugevm info`: what this host offers hugevm, and what an
 * administrator must set for guests to get host superpages.
 *
 * Backends: which vCPU backends run here and which one `--backend auto`
 * picks, with the reason.  Host superpages: the shmem THP setting (hugevm's
 * machine is a memfd: its 2M host pages come from shmem THP) and what it
 * implies; the hugetlbfs pool, which hugevm does not use (README: a
 * hugetlb machine cannot hold the 4K leaves the VGA hole, ballooning and
 * log-dirty need), shown so nobody reserves pages for nothing.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "hugevm.h" /* the public API suffices here (hugevm_host_info) */

static bool opt_json;

static uint64_t meminfo(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long v = 0;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10);
            break;
        }
    if (f)
        fclose(f);
    return v;
}

static const char *thp_advice(const struct hugevm_host_info *h)
{
    if (h->thp_usable)
        return "nothing to set: guests get 2M host pages where their p2m has 2M or 1G leaves";
    if (!strcmp(h->thp_shmem, "never"))
        return "as root: echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled "
               "(hugevm advises its own mappings only); until then guests run on 4K host "
               "pages and KVM maps them at 4K whatever hugevm's p2m holds";
    if (!strcmp(h->thp_shmem, "deny"))
        return "shmem THP is denied on this host: guests run on 4K host pages";
    return "the shmem THP setting is unreadable: host superpages are unknown";
}

static int run_info(int argc, char **argv)
{
    (void)argv;
    if (argc)
        return cli_error("info: no positional arguments expected");
    struct hugevm_host_info h;
    hugevm_host_info(&h);
    bool have_kvm = h.kvm;
    const char *kvm_why = h.kvm_why, *auto_why = h.auto_why;
    const char *ab = hugevm_backend_name(h.auto_backend);
    uint64_t host = h.ram_bytes;
    uint64_t huge_total = meminfo("HugePages_Total"), huge_free = meminfo("HugePages_Free");
    uint64_t huge_kb = meminfo("Hugepagesize");
    if (opt_json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "version", hugevm_version());
        json_u64(&j, "host_bytes", host);
        json_str(&j, "thp_shmem", h.thp_shmem);
        json_bool(&j, "thp_shmem_usable", h.thp_usable);
        json_str(&j, "thp_advice", thp_advice(&h));
        json_bool(&j, "kvm", have_kvm);
        if (!have_kvm)
            json_str(&j, "kvm_why", kvm_why);
        json_str(&j, "backend_auto", ab);
        json_str(&j, "backend_auto_why", auto_why);
        json_obj_begin(&j, "backends");
        json_bool(&j, "soft", true);
        json_bool(&j, "kvm", have_kvm);
        json_bool(&j, "native", true);
        json_obj_end(&j);
        json_obj_begin(&j, "hugetlb");
        json_u64(&j, "pages_total", huge_total);
        json_u64(&j, "pages_free", huge_free);
        json_u64(&j, "page_bytes", huge_kb << 10);
        json_bool(&j, "used_by_hugevm", false);
        json_obj_end(&j);
        json_obj_end(&j);
        json_finish(&j);
        return 0;
    }
    char b[32];
    printf("hugevm %s\nhost memory: %s\n", hugevm_version(), hv_fmt_size(host, b, sizeof(b)));
    printf("backends:\n");
    printf("  kvm     %s\n", have_kvm ? "usable: real guest code under /dev/kvm" : kvm_why);
    printf("  soft    usable: software vCPUs (EPT walker, TLB model, PML)\n");
    printf("  native  usable: guest programs run as host code (no KVM counters, no dirty log)\n");
    printf("  --backend auto picks %s (%s)\n", ab, auto_why);
    printf("host superpages (hugevm's machine is a memfd: shmem THP):\n");
    printf("  shmem THP: %s\n    %s\n", h.thp_shmem, h.thp_explain);
    printf("    to do: %s\n", thp_advice(&h));
    printf("  hugetlbfs: %llu pages of %llu KiB reserved, %llu free; hugevm does not use them "
           "(a hugetlb machine has no 4K pages for the VGA hole, ballooning and log-dirty: see "
           "the README)\n", (unsigned long long)huge_total, (unsigned long long)huge_kb,
           (unsigned long long)huge_free);
    return 0;
}

static struct opt info_opts[] = {
    {"json", OPT_FLAG, &opt_json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_info = {
    .name = "info",
    .summary = "what this host offers: backends, host superpages (shmem THP), memory",
    .run = run_info,
    .opts = info_opts,
};

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
#include "guest.h"
#include "kvm.h"
#include "machine.h"

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

static const char *thp_advice(enum thp_shmem t)
{
    switch (t) {
    case THP_SHMEM_ADVISE:
    case THP_SHMEM_ALWAYS:
    case THP_SHMEM_WITHIN_SIZE:
    case THP_SHMEM_FORCE:
        return "nothing to set: guests get 2M host pages where their p2m has 2M or 1G leaves";
    case THP_SHMEM_NEVER:
        return "as root: echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled "
               "(hugevm advises its own mappings only); until then guests run on 4K host "
               "pages and KVM maps them at 4K whatever hugevm's p2m holds";
    case THP_SHMEM_DENY:
        return "shmem THP is denied on this host: guests run on 4K host pages";
    default:
        return "the shmem THP setting is unreadable: host superpages are unknown";
    }
}

static int run_info(int argc, char **argv)
{
    (void)argv;
    if (argc)
        return cli_error("info: no positional arguments expected");
    enum thp_shmem t = thp_shmem_read();
    char kvm_why[256] = "", auto_why[300];
    bool have_kvm = kvm_probe(kvm_why, sizeof(kvm_why)) == 0;
    enum guest_backend ab = guest_backend_auto(auto_why, sizeof(auto_why));
    long pages = sysconf(_SC_PHYS_PAGES);
    uint64_t host = pages > 0 ? (uint64_t)pages * PAGE_SIZE : 0;
    uint64_t huge_total = meminfo("HugePages_Total"), huge_free = meminfo("HugePages_Free");
    uint64_t huge_kb = meminfo("Hugepagesize");
    if (opt_json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_u64(&j, "host_bytes", host);
        json_str(&j, "thp_shmem", thp_shmem_name(t));
        json_bool(&j, "thp_shmem_usable", thp_shmem_usable(t));
        json_str(&j, "thp_advice", thp_advice(t));
        json_bool(&j, "kvm", have_kvm);
        if (!have_kvm)
            json_str(&j, "kvm_why", kvm_why);
        json_str(&j, "backend_auto", guest_backend_name(ab));
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
    printf("host memory: %s\n", hv_fmt_size(host, b, sizeof(b)));
    printf("backends:\n");
    printf("  kvm     %s\n", have_kvm ? "usable: real guest code under /dev/kvm" : kvm_why);
    printf("  soft    usable: software vCPUs (EPT walker, TLB model, PML)\n");
    printf("  native  usable: guest programs run as host code (no KVM counters, no dirty log)\n");
    printf("  --backend auto picks %s (%s)\n", guest_backend_name(ab), auto_why);
    printf("host superpages (hugevm's machine is a memfd: shmem THP):\n");
    printf("  shmem THP: %s\n    %s\n", thp_shmem_name(t), thp_shmem_explain(t));
    printf("    to do: %s\n", thp_advice(t));
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

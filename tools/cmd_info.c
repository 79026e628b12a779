/*
 * cmd_info.c - `hugevm info`: what this host offers hugevm.
 */
#include <fcntl.h>
#include <unistd.h>

#include "cli.h"
#include "machine.h"

static bool opt_json;

static int run_info(int argc, char **argv)
{
    (void)argv;
    if (argc)
        return cli_error("info: no positional arguments expected");
    enum thp_shmem t = thp_shmem_read();
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    bool have_kvm = kvm >= 0;
    if (kvm >= 0)
        close(kvm);
    long pages = sysconf(_SC_PHYS_PAGES);
    uint64_t host = pages > 0 ? (uint64_t)pages * PAGE_SIZE : 0;
    if (opt_json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "thp_shmem", thp_shmem_name(t));
        json_bool(&j, "thp_shmem_usable", thp_shmem_usable(t));
        json_bool(&j, "kvm", have_kvm);
        json_u64(&j, "host_bytes", host);
        json_obj_end(&j);
        json_finish(&j);
        return 0;
    }
    char b[32];
    printf("host memory: %s\n", hv_fmt_size(host, b, sizeof(b)));
    printf("host shmem THP: %s\n  %s\n", thp_shmem_name(t), thp_shmem_explain(t));
    printf("/dev/kvm: %s\n", have_kvm ? "available" : "not available");
    return 0;
}

static struct opt info_opts[] = {
    {"json", OPT_FLAG, &opt_json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_info = {
    .name = "info",
    .summary = "what this host offers: shmem THP, /dev/kvm, memory",
    .run = run_info,
    .opts = info_opts,
};

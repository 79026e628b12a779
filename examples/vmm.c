/*
 * vmm.c - an example VMM on libhugevm, using only <hugevm.h>.
 *
 * What a VMM does with guest memory, start to end, with the p2m's leaf
 * counts printed at each step so that you can watch the superpages:
 *
 *   1. a machine (the host memory hugevm manages) and a 2 GiB domain,
 *      populated 1G first, then 2M, then 4K around the VGA hole;
 *   2. a guest booted from the guest programs embedded in the library:
 *      under KVM when /dev/kvm works, else natively (the same program run
 *      as host code), which the output says, with why.  Its workload is the
 *      paced writer, so that it is still running at step 4 on any host;
 *   3. the guest's own balloon driver gives 256 MiB back while its
 *      workload runs on every vCPU, and takes it again (2M extents; the
 *      host refuses a 2M it cannot serve as 2M and the guest falls back to
 *      4K by itself);
 *   4. the running guest is paused mid-workload and saved to a file, its
 *      vCPUs with it (Xen's migration-stream layout), then destroyed with
 *      its domain;
 *   5. the file is restored onto the same machine (the memory must have the
 *      same digest, the superpages must come back) and the guest resumed
 *      from it, on the backend it was saved from;
 *   6. the guest runs on to the end of its workload, and the host replays
 *      every vCPU's work from the start and compares every word of guest
 *      memory (hugevm_guest_verify): nothing was lost on the way.
 *
 * Build against an installed libhugevm:
 *     cc -o vmm vmm.c $(pkg-config --cflags --libs hugevm)
 * Run: ./vmm [SAVEFILE] [--backend kvm|native] [--guest-mib N]
 * (exit status 0: every check held; --guest-mib makes the guest smaller
 * than 2 GiB, which a native guest in a program built with ASan needs:
 * the sanitizer's shadow memory takes the host addresses above 2 GiB - 32K
 * that the native backend would map the guest at).
 */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, mkstemp */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hugevm.h>

#define BALLOON_BYTES (256ULL << 20)
#define PAGES(bytes) ((bytes) / 4096)
#define VCPUS 2
#define WRITE_RATE 50000ULL /* writes/s per vCPU: the writer is paced */
#define OPS 150000ULL       /* per vCPU: at least 3 s of work */

static int failures;
static uint64_t guest_bytes = 2ULL << 30;

/* Print the error of a failed call, with what libhugevm says to do. */
static int check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "vmm: %s: %s\n    %s\n", what, hugevm_last_error(), hugevm_strerror(rc));
        failures++;
    }
    return rc;
}

static void expect(int cond, const char *what)
{
    printf("  check: %-58s %s\n", what, cond ? "ok" : "FAILED");
    if (!cond)
        failures++;
}

/* The leaf counts of the domain's p2m, and its accounting. */
static struct hugevm_domain_info leaves(const char *step, const hugevm_domain *d)
{
    struct hugevm_domain_info di;
    hugevm_domain_info(d, &di);
    printf("%-28s leaves 1G %4" PRIu64 "  2M %5" PRIu64 "  4K %7" PRIu64
           "   tot_pages %" PRIu64 " (%" PRIu64 " MiB)\n",
           step, di.leaves_1g, di.leaves_2m, di.leaves_4k, di.tot_pages,
           di.tot_pages * 4096 >> 20);
    return di;
}

/* hugevm_domain_stats calls this once per counter; print the nonzero
 * fallback counters (what the superpage policy could not do). */
static void print_fallback(void *ctx, const char *name, uint64_t value, const char *desc)
{
    (void)ctx;
    if (value && (strstr(name, "fallback") || strstr(name, "refused")))
        printf("    %-24s %8" PRIu64 "  %s\n", name, value, desc);
}

static void print_guest(const char *step, hugevm_guest *g)
{
    struct hugevm_guest_info gi;
    hugevm_guest_info(g, &gi);
    printf("guest %s: %" PRIu64 " accesses; balloon driver: %" PRIu64 " MiB out, %" PRIu64
           " memory calls, %" PRIu64 " 2M extents refused, %" PRIu64 " 4K pages instead\n",
           step, gi.accesses, gi.balloon_pages_out * 4096 >> 20, gi.balloon_calls,
           gi.balloon_2m_failed, gi.balloon_fallback_4k);
    if (gi.have_kvm_leaves)
        printf("KVM's own mappings: 4K %" PRIu64 "  2M %" PRIu64 "  1G %" PRIu64 "\n",
               gi.kvm_4k, gi.kvm_2m, gi.kvm_1g);
}

/* Steps 2-4: boot the guest, balloon it, pause it mid-workload and save it
 * with its vCPUs to fd.  0, or -1 when a step failed. */
static int boot_balloon_save(hugevm_domain *d, enum hugevm_backend backend, int fd,
                             const char *path, struct hugevm_domain_info *saved,
                             uint64_t *digest, uint64_t *accesses)
{
    struct hugevm_guest_config gc;
    hugevm_guest *g = NULL;
    struct hugevm_save_info si;
    int rc = -1;

    hugevm_guest_config_default(&gc);
    gc.backend = backend;
    gc.nr_vcpus = VCPUS;
    gc.workload = HUGEVM_WL_WRITER;   /* writes paced at write_rate per vCPU */
    gc.write_rate = WRITE_RATE;
    gc.ops = OPS;                     /* then the workload ends by itself */
    gc.seed = 42;
    gc.balloon_bytes = BALLOON_BYTES; /* the top of its memory is the balloon's */
    if (check(hugevm_guest_create(d, &gc, &g), "creating the guest") < 0 ||
        check(hugevm_guest_start(g), "starting the guest") < 0)
        goto out;
    printf("guest: %u vCPUs on the %s backend, workload writer (%llu writes/s per vCPU, "
           "%llu each), balloon of %llu MiB\n", gc.nr_vcpus,
           hugevm_backend_name(hugevm_guest_backend(g)), (unsigned long long)WRITE_RATE,
           (unsigned long long)OPS, (unsigned long long)(BALLOON_BYTES >> 20));
    struct hugevm_domain_info before = leaves("booted:", d);

    /* inflate: the guest gives BALLOON_BYTES back, in 2M extents */
    int brc = check(hugevm_guest_balloon(g, PAGES(BALLOON_BYTES), 120000),
                    "inflating the balloon");
    struct hugevm_domain_info in = leaves("balloon inflated:", d);
    expect(brc == 0 && in.tot_pages == before.tot_pages - PAGES(BALLOON_BYTES),
           "the domain gave back exactly the balloon");
    expect(in.leaves_4k == before.leaves_4k, "no superpage was broken into 4K leaves");

    /* deflate: it asks for the memory again, 2M extents where the host has them */
    brc = check(hugevm_guest_balloon(g, 0, 120000), "deflating the balloon");
    struct hugevm_domain_info out_ = leaves("balloon deflated:", d);
    expect(brc == 0 && out_.tot_pages == before.tot_pages, "the guest has all its memory again");

    /* pause the vCPUs where they are and save the guest with them */
    hugevm_guest_pause(g);
    struct hugevm_guest_info gi;
    hugevm_guest_info(g, &gi);
    *accesses = gi.accesses;
    print_guest("paused", g);
    expect(gi.fault[0] == 0 && gi.accesses < VCPUS * OPS,
           "the guest was paused in the middle of its workload");
    *digest = hugevm_domain_digest(d);
    if (check(hugevm_guest_save(g, fd, &si), "saving the guest") < 0)
        goto out;
    printf("saved to %s: %" PRIu64 " bytes, %" PRIu64 " data pages, %" PRIu64
           " zero pages, in %.3f s\n", path, si.bytes, si.pages_data, si.pages_zero,
           si.seconds);
    *saved = leaves("saved:", d);
    rc = 0;
out:
    hugevm_guest_destroy(g);
    return rc;
}

/* Steps 5-6: restore the domain and the guest from fd, let the guest
 * finish its workload and check its results. */
static hugevm_domain *restore_run_verify(hugevm_machine *m, int fd,
                                         const struct hugevm_domain_info *saved,
                                         uint64_t digest, uint64_t accesses)
{
    hugevm_domain *d = NULL;
    hugevm_guest *g = NULL;
    struct hugevm_restore_info ri;

    if (lseek(fd, 0, SEEK_SET) != 0 ||
        check(hugevm_domain_restore(m, fd, &d, &ri), "restoring") < 0) {
        failures++;
        return NULL;
    }
    printf("restored in %.3f s, %" PRIu64 " superpages fell back%s\n", ri.seconds,
           ri.fallback_nomem, ri.checksum_verified ? ", stream checksum verified" : "");
    struct hugevm_domain_info back = leaves("restored:", d);
    expect(hugevm_domain_digest(d) == digest, "the restored memory has the same digest");
    expect(back.tot_pages == saved->tot_pages, "the restored domain has as many pages");
    expect(back.leaves_1g == saved->leaves_1g && back.leaves_2m >= saved->leaves_2m,
           "the superpages came back");
    expect(ri.has_guest, "the file carries the guest's vCPUs");
    if (check(hugevm_guest_create_restored(d, &g), "resuming the guest") < 0 ||
        check(hugevm_guest_start(g), "starting the resumed guest") < 0)
        goto out;
    printf("guest resumed on the %s backend\n", hugevm_backend_name(hugevm_guest_backend(g)));

    /* the rest of its workload, then the host's replay of all of it */
    int rc = check(hugevm_guest_wait(g, 120000), "waiting for the guest's end");
    struct hugevm_guest_info gi;
    hugevm_guest_info(g, &gi);
    print_guest("ended", g);
    expect(rc == 0 && gi.accesses > accesses && gi.accesses == VCPUS * OPS,
           "the resumed guest ran on to its end");
    expect(rc == 0 && check(hugevm_guest_verify(g), "verifying the guest") == 0,
           "the host's replay matches every word of guest memory");
out:
    hugevm_guest_destroy(g);
    return d;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    enum hugevm_backend backend = HUGEVM_BACKEND_AUTO;
    char why[256];

    setvbuf(stdout, NULL, _IOLBF, 0); /* lines in order with stderr */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            i++;
            backend = !strcmp(argv[i], "kvm")      ? HUGEVM_BACKEND_KVM
                      : !strcmp(argv[i], "native") ? HUGEVM_BACKEND_NATIVE
                                                   : HUGEVM_BACKEND_AUTO;
        } else if (!strcmp(argv[i], "--guest-mib") && i + 1 < argc) {
            guest_bytes = strtoull(argv[++i], NULL, 10) << 20;
            if (guest_bytes < (512ULL << 20) || guest_bytes % (2 << 20)) {
                fprintf(stderr, "vmm: --guest-mib: at least 512, even\n");
                return 2;
            }
        } else {
            path = argv[i];
        }
    }
    printf("libhugevm %s\n", hugevm_version());
    /* a guest program runs under KVM where /dev/kvm works, else natively */
    if (backend == HUGEVM_BACKEND_AUTO)
        backend = hugevm_backend_pick(true, why, sizeof(why));
    else
        snprintf(why, sizeof(why), "asked for on the command line");
    printf("backend: %s (%s)\n", hugevm_backend_name(backend), why);

    /* 1. the machine and a 2 GiB domain (or --guest-mib) */
    struct hugevm_machine_config mc;
    hugevm_machine_config_default(&mc);
    mc.bytes = guest_bytes + (64ULL << 20);
    hugevm_machine *m = NULL;
    if (check(hugevm_machine_create(&mc, &m), "creating the machine") < 0)
        return 1;
    struct hugevm_machine_info mi;
    hugevm_machine_info(m, &mi);
    printf("machine: %" PRIu64 " MiB, host shmem THP '%s' (%s)\n", mi.bytes >> 20, mi.host_thp,
           mi.host_thp_usable ? "host 2M pages" : "the host maps 4K pages only");

    struct hugevm_domain_config dc;
    hugevm_domain_config_default(&dc);
    dc.max_bytes = guest_bytes;
    hugevm_domain *d = NULL;
    if (check(hugevm_domain_create(m, &dc, &d), "creating the domain") < 0 ||
        check(hugevm_domain_populate(d, guest_bytes, 0), "populating the domain") < 0) {
        hugevm_domain_destroy(d);
        hugevm_machine_destroy(m);
        return 1;
    }
    char step[64];
    snprintf(step, sizeof(step), "populated %" PRIu64 " MiB:", guest_bytes >> 20);
    struct hugevm_domain_info populated = leaves(step, d);
    if (guest_bytes >= (2ULL << 30))
        expect(populated.leaves_1g >= 1, "the 1G-aligned gigabyte is one 1G leaf");
    expect(populated.leaves_4k < 512, "4K leaves only around the VGA hole");

    char tmpl[] = "/tmp/hugevm-vmm-XXXXXX";
    int fd = path ? open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : mkstemp(tmpl);
    if (fd < 0) {
        fprintf(stderr, "vmm: %s: %s\n", path ? path : tmpl, strerror(errno));
        hugevm_domain_destroy(d);
        hugevm_machine_destroy(m);
        return 1;
    }
    if (!path)
        path = tmpl;

    /* 2-4. boot, balloon, pause and save the running guest */
    struct hugevm_domain_info saved;
    uint64_t digest = 0, accesses = 0;
    int rc = boot_balloon_save(d, backend, fd, path, &saved, &digest, &accesses);
    printf("fallbacks counted by the domain (none is silent):\n");
    hugevm_domain_stats(d, print_fallback, NULL);
    check(hugevm_domain_audit(d), "auditing the domain");
    /* the guest is gone; so goes its domain: the file holds both */
    hugevm_domain_destroy(d);
    d = NULL;

    /* 5-6. restore, resume, finish, verify */
    if (rc == 0)
        d = restore_run_verify(m, fd, &saved, digest, accesses);
    if (d) {
        expect(check(hugevm_domain_audit(d), "auditing the restored domain") == 0,
               "the restored domain passes its audit");
        leaves("at the end:", d);
    }
    close(fd);
    if (path == tmpl)
        unlink(tmpl);
    hugevm_domain_destroy(d);
    hugevm_machine_destroy(m);
    printf("%s\n", failures ? "vmm: SOME CHECKS FAILED" : "vmm: every check held");
    return failures ? 1 : 0;
}

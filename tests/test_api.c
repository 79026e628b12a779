/*
 * test_api.c - libhugevm's public API (include/hugevm.h), used only
 * through that header, the way a VMM would: errors with their messages,
 * populate and the leaf counts, the host balloon and PoD with the audit,
 * log-dirty, save and restore through a file descriptor with the digest,
 * a soft guest saved with its vCPUs, and a live migration of a soft guest
 * over loopback TCP (plain: the TLS paths are test_tls's).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "hugevm.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)

static hugevm_machine *machine(uint64_t bytes)
{
    struct hugevm_machine_config mc;
    hugevm_machine *m = NULL;
    hugevm_machine_config_default(&mc);
    mc.bytes = bytes;
    assert_int_equal(hugevm_machine_create(&mc, &m), 0);
    return m;
}

static hugevm_domain *domain(hugevm_machine *m, uint64_t bytes)
{
    struct hugevm_domain_config dc;
    hugevm_domain *d = NULL;
    hugevm_domain_config_default(&dc);
    assert_int_equal(hugevm_domain_create(m, &dc, &d), 0);
    assert_int_equal(hugevm_domain_populate(d, bytes, 0), 0);
    return d;
}

static void audit(const hugevm_domain *d)
{
    int rc = hugevm_domain_audit(d);
    if (rc)
        fail_msg("audit: %s", hugevm_last_error());
}

static void test_errors(void **state)
{
    (void)state;
    struct hugevm_machine_config mc;
    hugevm_machine *m = (hugevm_machine *)1;
    hugevm_machine_config_default(&mc);
    mc.bytes = 3 * MiB; /* not a multiple of 2 MiB */
    assert_int_equal(hugevm_machine_create(&mc, &m), -EINVAL);
    assert_null(m);
    assert_non_null(strstr(hugevm_last_error(), "2 MiB"));
    assert_non_null(strstr(hugevm_strerror(-EINVAL), "hugevm_last_error"));
    assert_non_null(strstr(hugevm_strerror(-ENODEV), "NATIVE"));
    assert_non_null(strstr(hugevm_strerror(-ENOMEM), "machine"));
    assert_true(strlen(hugevm_strerror(-12345)) > 0);
    assert_string_equal(hugevm_backend_name(HUGEVM_BACKEND_NATIVE), "native");
    /* more than the machine holds: over the domain's limit (the machine,
     * by default), nothing left behind */
    m = machine(64 * MiB);
    struct hugevm_domain_config dc;
    hugevm_domain *d;
    hugevm_domain_config_default(&dc);
    assert_int_equal(hugevm_domain_create(m, &dc, &d), 0);
    assert_int_equal(hugevm_domain_populate(d, 128 * MiB, 0), -EDQUOT);
    assert_non_null(strstr(hugevm_strerror(-EDQUOT), "max_bytes"));
    struct hugevm_domain_info di;
    hugevm_domain_info(d, &di);
    assert_int_equal(di.tot_pages, 0);
    audit(d);
    /* a soft guest cannot have a balloon driver */
    struct hugevm_guest_config gc;
    hugevm_guest *g = NULL;
    hugevm_guest_config_default(&gc);
    gc.backend = HUGEVM_BACKEND_SOFT;
    gc.balloon_bytes = 2 * MiB;
    assert_int_equal(hugevm_guest_create(d, &gc, &g), -EINVAL);
    assert_null(g);
    hugevm_domain_destroy(d);
    hugevm_machine_destroy(m);
    assert_non_null(hugevm_version());
}

static void test_populate_balloon_pod(void **state)
{
    (void)state;
    hugevm_machine *m = machine(2 * GiB + 64 * MiB);
    hugevm_domain *d = domain(m, 2 * GiB);
    struct hugevm_domain_info di;
    hugevm_domain_info(d, &di);
    /* gigabyte 0 holds the VGA hole: 2M leaves and 4K around the hole;
     * gigabyte 1 is one 1G leaf */
    assert_int_equal(di.leaves_1g, 1);
    assert_int_equal(di.leaves_2m, 511);
    assert_int_equal(di.leaves_4k, 512 - 32);
    assert_int_equal(di.tot_pages, (2 * GiB >> 12) - 32);
    assert_int_equal(di.ram_bytes, 2 * GiB - 32 * 4096);

    /* the host balloon takes 2M extents where it can: no superpage is
     * split into 4K leaves (the 1G is split into 2M ones) */
    uint64_t full = di.tot_pages * 4096;
    assert_int_equal(hugevm_domain_balloon(d, full - 256 * MiB), 0);
    hugevm_domain_info(d, &di);
    assert_int_equal(di.tot_pages, (full - 256 * MiB) >> 12);
    assert_int_equal(di.leaves_4k, 512 - 32);
    assert_int_equal(di.leaves_1g, 0);
    assert_int_equal(di.leaves_2m, 511 + 512 - 128);
    audit(d);
    assert_int_equal(hugevm_domain_balloon(d, full), 0);
    hugevm_domain_info(d, &di);
    assert_int_equal(di.tot_pages, full >> 12);
    assert_int_equal(di.leaves_4k, 512 - 32);
    audit(d);

    hugevm_domain_destroy(d);

    /* PoD: entries, then a target that sizes the cache */
    struct hugevm_domain_config dc;
    hugevm_domain_config_default(&dc);
    assert_int_equal(hugevm_domain_create(m, &dc, &d), 0);
    assert_int_equal(hugevm_domain_populate(d, 1 * GiB, HUGEVM_POPULATE_POD), 0);
    hugevm_domain_info(d, &di);
    assert_int_equal(di.pod_entries, (1 * GiB >> 12) - 32);
    assert_int_equal(di.leaves_1g + di.leaves_2m, 0);
    assert_int_equal(hugevm_domain_pod_set_target(d, 256 * MiB), 0);
    hugevm_domain_info(d, &di);
    assert_int_equal(di.pod_cache_pages, 256 * MiB >> 12);
    audit(d);
    hugevm_domain_destroy(d);
    hugevm_machine_destroy(m);
}

struct count {
    uint64_t populated_1g, populated_2m, n;
};

static void count_stat(void *ctx, const char *name, uint64_t v, const char *desc)
{
    struct count *c = ctx;
    assert_non_null(desc);
    c->n++;
    if (!strcmp(name, "populated_1g"))
        c->populated_1g = v;
    if (!strcmp(name, "populated_2m"))
        c->populated_2m = v;
}

static void test_stats_logdirty(void **state)
{
    (void)state;
    hugevm_machine *m = machine(1 * GiB + 64 * MiB);
    struct hugevm_domain_config dc;
    hugevm_domain *d;
    hugevm_domain_config_default(&dc);
    dc.no_vga_hole = true;
    assert_int_equal(hugevm_domain_create(m, &dc, &d), 0);
    assert_int_equal(hugevm_domain_populate(d, 1 * GiB, 0), 0);
    struct count c = {0};
    assert_int_equal(hugevm_domain_stats(d, count_stat, &c), 0);
    assert_int_equal(c.populated_1g, 1);
    assert_int_equal(c.populated_2m, 0);
    assert_true(c.n > 20);
    c = (struct count){0};
    assert_int_equal(hugevm_machine_stats(m, count_stat, &c), 0);
    assert_true(c.n > 40);

    /* log-dirty: eager split breaks the 1G leaf; disable merges it back */
    assert_int_equal(hugevm_domain_logdirty_enable(d, HUGEVM_DIRTY_EAGER_SPLIT), 0);
    uint64_t nr = hugevm_domain_logdirty_gfns(d);
    assert_true(nr >= (1 * GiB >> 12));
    uint64_t *bm = calloc((nr + 63) / 64, 8);
    assert_non_null(bm);
    assert_true(hugevm_domain_logdirty_harvest(d, bm, nr) >= 0);
    struct hugevm_domain_info di;
    hugevm_domain_info(d, &di);
    assert_int_equal(di.leaves_1g, 0);
    struct hugevm_logdirty_result lr;
    assert_int_equal(hugevm_domain_logdirty_disable(d, bm, nr, &lr), 0);
    assert_int_equal(lr.split_1g, 1);
    assert_int_equal(lr.recovered_1g, 1);
    hugevm_domain_info(d, &di);
    assert_int_equal(di.leaves_1g, 1);
    assert_int_equal(hugevm_domain_logdirty_harvest(d, bm, nr), -EINVAL); /* off now */
    free(bm);
    audit(d);
    hugevm_domain_destroy(d);
    hugevm_machine_destroy(m);
}

static void test_save_restore(void **state)
{
    (void)state;
    hugevm_machine *m = machine(2 * GiB + 64 * MiB);
    hugevm_domain *d = domain(m, 1 * GiB);
    /* write a pattern through the host mapping of a few pages */
    for (uint64_t gfn = 0x100; gfn < 0x40000; gfn += 4097) {
        uint64_t *p = hugevm_domain_page(d, gfn);
        assert_non_null(p);
        p[7] = gfn * 0x9E3779B97F4A7C15ULL;
    }
    assert_null(hugevm_domain_page(d, 0xa0)); /* VGA hole */
    uint64_t digest = hugevm_domain_digest(d);
    struct hugevm_domain_info before, after;
    hugevm_domain_info(d, &before);
    int fd = memfd_create("test_api", 0);
    assert_true(fd >= 0);
    struct hugevm_save_info si;
    assert_int_equal(hugevm_domain_save(d, fd, &si), 0);
    assert_true(si.pages_data >= 64 && si.bytes > 0);
    hugevm_domain_destroy(d);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    struct hugevm_restore_info ri;
    assert_int_equal(hugevm_domain_restore(m, fd, &d, &ri), 0);
    assert_true(ri.checksum_verified);
    assert_false(ri.has_guest);
    assert_int_equal(hugevm_domain_digest(d), digest);
    hugevm_domain_info(d, &after);
    assert_int_equal(after.tot_pages, before.tot_pages);
    assert_int_equal(after.leaves_2m, before.leaves_2m);
    assert_int_equal(after.leaves_4k, before.leaves_4k);
    audit(d);
    hugevm_guest *g = NULL;
    assert_int_equal(hugevm_guest_create_restored(d, &g), -ENOENT);
    hugevm_domain_destroy(d);

    /* a truncated stream: an error naming the offset, nothing left */
    assert_int_equal(ftruncate(fd, (off_t)(si.bytes / 2)), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    d = (hugevm_domain *)1;
    int rc = hugevm_domain_restore(m, fd, &d, &ri);
    assert_true(rc == -ENODATA || rc == -EBADMSG);
    assert_null(d);
    assert_true(strlen(hugevm_last_error()) > 0);
    struct hugevm_machine_info mi;
    hugevm_machine_info(m, &mi);
    assert_int_equal(mi.free_frames, mi.frames);
    close(fd);
    hugevm_machine_destroy(m);
}

static hugevm_guest *soft_guest(hugevm_domain *d)
{
    struct hugevm_guest_config gc;
    hugevm_guest *g = NULL;
    hugevm_guest_config_default(&gc);
    gc.backend = HUGEVM_BACKEND_SOFT;
    gc.nr_vcpus = 2;
    gc.workload = HUGEVM_WL_WRITER;
    gc.write_rate = 20000;
    assert_int_equal(hugevm_guest_create(d, &gc, &g), 0);
    assert_int_equal(hugevm_guest_backend(g), HUGEVM_BACKEND_SOFT);
    assert_ptr_equal(hugevm_guest_domain(g), d);
    return g;
}

static void test_soft_guest_save(void **state)
{
    (void)state;
    hugevm_machine *m = machine(512 * MiB);
    hugevm_domain *d = domain(m, 256 * MiB);
    hugevm_guest *g = soft_guest(d);
    assert_int_equal(hugevm_guest_start(g), 0);
    usleep(100 * 1000);
    hugevm_guest_pause(g);
    struct hugevm_guest_info gi;
    hugevm_guest_info(g, &gi);
    assert_true(gi.accesses > 0);
    assert_false(gi.have_kvm_leaves);
    int fd = memfd_create("test_api_guest", 0);
    assert_true(fd >= 0);
    struct hugevm_save_info si;
    assert_int_equal(hugevm_guest_save(g, fd, &si), 0);
    hugevm_guest_resume(g);
    hugevm_guest_destroy(g);
    hugevm_domain_destroy(d);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    struct hugevm_restore_info ri;
    assert_int_equal(hugevm_domain_restore(m, fd, &d, &ri), 0);
    assert_true(ri.has_guest);
    /* soft vCPU state is resumed by hugevm restore --run, not by the API */
    assert_int_equal(hugevm_guest_create_restored(d, &g), -ENOTSUP);
    hugevm_domain_destroy(d);
    close(fd);
    hugevm_machine_destroy(m);
}

/* A program guest (kvm where /dev/kvm runs guests, else native) saved
 * running with its vCPUs, restored into a new domain, resumed on the
 * backend it was saved from, run to the end of its workload and replayed
 * by the host: what examples/vmm.c shows, checked here. */
static void test_program_guest_save(void **state)
{
    (void)state;
    enum { OPS = 20000 }; /* per vCPU, paced at 20000/s: about a second */
    hugevm_machine *m = machine(512 * MiB);
    hugevm_domain *d = domain(m, 256 * MiB);
    struct hugevm_guest_config gc;
    hugevm_guest *g = NULL;
    hugevm_guest_config_default(&gc);
    gc.backend = hugevm_backend_pick(true, NULL, 0);
    gc.nr_vcpus = 2;
    gc.workload = HUGEVM_WL_WRITER;
    gc.write_rate = 20000;
    gc.ops = OPS;
    gc.seed = 7;
    assert_int_equal(hugevm_guest_create(d, &gc, &g), 0);
    enum hugevm_backend b = hugevm_guest_backend(g);
    assert_true(b == HUGEVM_BACKEND_KVM || b == HUGEVM_BACKEND_NATIVE);
    assert_int_equal(hugevm_guest_start(g), 0);
    usleep(200 * 1000);
    int fd = memfd_create("test_api_prog", 0);
    assert_true(fd >= 0);
    struct hugevm_save_info si;
    /* a running guest is refused, with what to do */
    assert_int_equal(hugevm_guest_save(g, fd, &si), -EBUSY);
    assert_non_null(strstr(hugevm_last_error(), "pause"));
    hugevm_guest_pause(g);
    struct hugevm_guest_info gi;
    hugevm_guest_info(g, &gi);
    uint64_t at = gi.accesses;
    assert_true(at > 0 && at < 2 * OPS); /* mid-workload */
    uint64_t digest = hugevm_domain_digest(d);
    assert_int_equal(hugevm_guest_save(g, fd, &si), 0);
    assert_true(si.pages_data > 0);
    hugevm_guest_destroy(g);
    hugevm_domain_destroy(d);

    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    struct hugevm_restore_info ri;
    assert_int_equal(hugevm_domain_restore(m, fd, &d, &ri), 0);
    assert_true(ri.has_guest);
    assert_true(hugevm_domain_digest(d) == digest);
    assert_int_equal(hugevm_guest_create_restored(d, &g), 0);
    assert_int_equal(hugevm_guest_backend(g), b);
    assert_int_equal(hugevm_guest_start(g), 0);
    assert_int_equal(hugevm_guest_wait(g, 60000), 0);
    hugevm_guest_info(g, &gi);
    assert_int_equal(gi.accesses, 2 * OPS);
    if (hugevm_guest_verify(g) != 0)
        fail_msg("verify after the restore: %s", hugevm_last_error());
    /* the replay is no formality: one word changed behind the guest's back */
    uint64_t *w = hugevm_domain_page(d, (16 * MiB) >> 12);
    assert_non_null(w);
    w[3] ^= 0x5a5a;
    assert_int_equal(hugevm_guest_verify(g), -EBADMSG);
    w[3] ^= 0x5a5a;
    assert_int_equal(hugevm_guest_verify(g), 0);
    print_message("# %s guest saved after %llu of %u accesses, restored, resumed and verified\n",
                  hugevm_backend_name(b), (unsigned long long)at, 2 * OPS);
    hugevm_guest_destroy(g);
    assert_int_equal(hugevm_domain_audit(d), 0);
    hugevm_domain_destroy(d);
    close(fd);
    hugevm_machine_destroy(m);
}

/* A guest saved with its balloon inflated deflates after the restore:
 * the memory it asks back lies above its RAM at the restore (the native
 * mirror used to end there, and the deflate crashed the process). */
static void test_program_guest_balloon_saved(void **state)
{
    (void)state;
    hugevm_machine *m = machine(512 * MiB);
    hugevm_domain *d = domain(m, 256 * MiB);
    struct hugevm_guest_config gc;
    hugevm_guest *g = NULL;
    hugevm_guest_config_default(&gc);
    gc.backend = hugevm_backend_pick(true, NULL, 0);
    gc.nr_vcpus = 2;
    gc.workload = HUGEVM_WL_WRITER;
    gc.write_rate = 5000;
    gc.balloon_bytes = 64 * MiB;
    assert_int_equal(hugevm_guest_create(d, &gc, &g), 0);
    assert_int_equal(hugevm_guest_start(g), 0);
    struct hugevm_domain_info di0, di;
    hugevm_domain_info(d, &di0);
    assert_int_equal(hugevm_guest_balloon(g, (64 * MiB) >> 12, 120000), 0);
    hugevm_guest_pause(g);
    int fd = memfd_create("test_api_balloon", 0);
    assert_true(fd >= 0);
    struct hugevm_save_info si;
    assert_int_equal(hugevm_guest_save(g, fd, &si), 0);
    hugevm_guest_destroy(g);
    hugevm_domain_destroy(d);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    struct hugevm_restore_info ri;
    assert_int_equal(hugevm_domain_restore(m, fd, &d, &ri), 0);
    hugevm_domain_info(d, &di);
    assert_true(di.tot_pages + ((64 * MiB) >> 12) == di0.tot_pages);
    assert_int_equal(hugevm_guest_create_restored(d, &g), 0);
    assert_int_equal(hugevm_guest_start(g), 0);
    if (hugevm_guest_balloon(g, 0, 120000) != 0)
        fail_msg("deflating after the restore: %s", hugevm_last_error());
    hugevm_domain_info(d, &di);
    assert_int_equal(di.tot_pages, di0.tot_pages);
    hugevm_guest_destroy(g);
    assert_int_equal(hugevm_domain_audit(d), 0);
    hugevm_domain_destroy(d);
    close(fd);
    hugevm_machine_destroy(m);
}

struct rx {
    pthread_t t;
    hugevm_migration *mg;
    hugevm_machine *m;
    int fd, rc, lfd;
    hugevm_guest *g;
    struct hugevm_migration_info info;
};

static void *rx_main(void *arg)
{
    struct rx *r = arg;
    r->rc = r->lfd >= 0 ? hugevm_migration_receive_channels(r->mg, r->m, r->fd, r->lfd, &r->g,
                                                            &r->info)
                        : hugevm_migration_receive(r->mg, r->m, r->fd, &r->g, &r->info);
    return NULL;
}

/* A migration of a running soft guest over nch channels (over TLS with a
 * pre-shared key when psk): every page arrives, the leaves too, and the
 * caller's sockets are still open after. */
static void api_migration(unsigned nch, bool psk)
{
    struct hugevm_migration_config c;
    hugevm_migration *tx = NULL;
    hugevm_migration_config_default(&c);
    /* neither credentials nor insecure: refused, with what to give */
    assert_int_equal(hugevm_migration_create(&c, false, &tx), -EINVAL);
    assert_non_null(strstr(hugevm_last_error(), "PSK"));
    char key[] = "/tmp/hugevm-test-api-pskXXXXXX";
    if (psk) {
        int kfd = mkstemp(key); /* mode 0600 */
        static const char line[] = "api:00112233445566778899aabbccddeeff0011223344556677";
        assert_true(kfd >= 0);
        assert_int_equal(write(kfd, line, sizeof(line) - 1), (ssize_t)sizeof(line) - 1);
        close(kfd);
        c.psk_file = key;
    } else {
        c.insecure = true;
    }
    c.timeout_ms = 20000;
    assert_int_equal(hugevm_migration_create(&c, false, &tx), 0);
    struct rx r = {0};
    assert_int_equal(hugevm_migration_create(&c, true, &r.mg), 0);

    hugevm_machine *m = machine(512 * MiB);
    r.m = machine(512 * MiB);
    hugevm_domain *d = domain(m, 256 * MiB);
    hugevm_guest *g = soft_guest(d);
    assert_int_equal(hugevm_guest_start(g), 0);
    /* a TCP connection over loopback */
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), sv[2];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_true(ls >= 0);
    assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(ls, 8), 0);
    assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(sv[0], (struct sockaddr *)&sa, sizeof(sa)), 0);
    sv[1] = accept(ls, NULL, NULL);
    assert_true(sv[1] >= 0);
    r.fd = sv[1];
    r.lfd = nch > 1 ? ls : -1;
    /* the further channels: connected now, accepted by the receiver */
    int fds[8] = {sv[0]};
    for (unsigned i = 1; i < nch; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
    }
    assert_int_equal(pthread_create(&r.t, NULL, rx_main, &r), 0);
    struct hugevm_migration_info info;
    int rc = nch > 1 ? hugevm_migration_send_channels(tx, g, fds, nch, &info)
                     : hugevm_migration_send(tx, g, sv[0], &info);
    pthread_join(r.t, NULL);
    /* the receiver took every further channel: none is left waiting */
    struct pollfd lp = {.fd = ls, .events = POLLIN};
    assert_int_equal(poll(&lp, 1, 0), 0);
    close(ls);
    if (psk)
        unlink(key);
    if (rc || r.rc)
        fail_msg("send %d (%s), receive %d", rc, hugevm_last_error(), r.rc);
    assert_true(info.verified);
    assert_true(r.info.verified);
    assert_true(info.rounds >= 1);
    assert_non_null(r.g);
    struct hugevm_domain_info a, b;
    hugevm_domain_info(d, &a);
    hugevm_domain *rd = hugevm_guest_domain(r.g);
    hugevm_domain_info(rd, &b);
    assert_int_equal(a.tot_pages, b.tot_pages);
    assert_int_equal(hugevm_domain_digest(d), hugevm_domain_digest(rd));
    audit(rd);
    hugevm_guest_destroy(g);
    hugevm_domain_destroy(d);
    hugevm_guest_destroy(r.g);
    hugevm_domain_destroy(rd);
    /* the caller's sockets are still the caller's */
    for (unsigned i = 0; i < nch; i++)
        assert_int_equal(fcntl(fds[i], F_GETFD), FD_CLOEXEC);
    assert_true(fcntl(sv[1], F_GETFD) >= 0);
    for (unsigned i = 0; i < nch; i++)
        close(fds[i]);
    close(sv[1]);
    hugevm_migration_destroy(tx);
    hugevm_migration_destroy(r.mg);
    hugevm_machine_destroy(m);
    hugevm_machine_destroy(r.m);
}

static void test_migration(void **state)
{
    (void)state;
    api_migration(1, false);
}

/* Three channels, each its own TLS stream. */
static void test_migration_channels(void **state)
{
    (void)state;
    api_migration(3, true);
}

static void test_host_info(void **state)
{
    (void)state;
    struct hugevm_host_info h;
    char why[256];
    assert_int_equal(hugevm_host_info(&h), 0);
    assert_true(h.ram_bytes > 0);
    assert_true(strlen(h.thp_shmem) > 0);
    assert_true(h.kvm || strlen(h.kvm_why) > 0);
    assert_int_equal(h.auto_backend, h.kvm ? HUGEVM_BACKEND_KVM : HUGEVM_BACKEND_SOFT);
    enum hugevm_backend b = hugevm_backend_pick(true, why, sizeof(why));
    assert_int_equal(b, h.kvm ? HUGEVM_BACKEND_KVM : HUGEVM_BACKEND_NATIVE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_host_info),
        cmocka_unit_test(test_migration_channels),
        cmocka_unit_test(test_populate_balloon_pod),
        cmocka_unit_test(test_stats_logdirty),
        cmocka_unit_test(test_save_restore),
        cmocka_unit_test(test_soft_guest_save),
        cmocka_unit_test(test_program_guest_save),
        cmocka_unit_test(test_program_guest_balloon_saved),
        cmocka_unit_test(test_migration),
    };
    /* HUGEVM_TEST_FILTER=PATTERN: only the matching cases (as in every
     * test; this one keeps to the public header, not testutil.h) */
    const char *filter = getenv("HUGEVM_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

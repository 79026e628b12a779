/*
 * bench_stream.c - save/restore throughput and restored superpage coverage.
 *
 * A multi-GiB guest (HUGEVM_BENCH_STREAM_GIB, default 2) is populated and
 * its memory touched, then saved to and restored from an in-memory stream
 * and a file (page cache), each next to memcpy bandwidth measured in the
 * same run over the same amount of memory (ratio = stream GB/s / memcpy
 * GB/s); restores are also set against the first-touch write bandwidth of
 * a fresh machine measured in the same run (the fault-bound limit when
 * shmem THP is off).  Restores run into two machines: a lazy one (frames
 * committed by the restore's own writes) and a resident one (committed and
 * mapped when created, as a hypervisor's RAM is; its one-off prefault rate
 * is reported too), where restore is one copy and memcpy is the limit.
 * A save to a file is also set against write() of as many bytes into the
 * same file (page-cache allocation bounds both) and, with every page data,
 * against a kernel copy (sendfile, as `cat`) of the saved file into a new
 * one: the limit of a save that sends its page data from the memfd.  Saves to and restores
 * from the file take page data through the machine's memfd (sendfile,
 * splice: stream_fd_alias), as `hugevm save` and `restore` do.  Two contents: every page non-zero ("data") and one page in 64
 * non-zero ("zero": the rest travels as XALLOC, throughput counted in
 * guest RAM covered).  Coverage: the share of populated pages mapped by
 * 1G/2M leaves after a restore, against what Xen's 2025 rule (2M only for
 * 512 consecutive pfns of one PAGE_DATA record ending on a 2M boundary)
 * gets on the same stream, for Xen-like batches of 1024 in gfn order,
 * batches of 1000 (cut extents), reverse and random order.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "bench.h"
#include "save.h"

#define SRUNS 5

/* memcpy bandwidth over `bytes`, GB/s, between two committed buffers of up
 * to 1 GiB: larger than the last-level cache (480 MiB on some hosts), so
 * the figure is DRAM bandwidth, as a save or restore of GiBs sees it. */
static double memcpy_gbs(uint64_t bytes)
{
    size_t len = bytes < GiB ? (size_t)bytes : GiB;
    uint8_t *a = malloc(len), *b = malloc(len);
    if (!a || !b)
        bench_fail("malloc");
    memset(a, 3, len);
    memset(b, 4, len);
    uint64_t ns = 0;
    for (uint64_t done = 0; done < bytes; done += len)
        ns += (uint64_t)((double)len / bench_memcpy_gbs(b, a, len));
    free(a);
    free(b);
    return (double)bytes / (double)ns;
}

/* write() bandwidth of `bytes` into the (emptied) file fd from a committed
 * buffer, GB/s: the page-cache limit a save to a file runs against. */
static double file_write_gbs(int fd, uint64_t bytes)
{
    size_t len = 64 * MiB;
    uint8_t *a = malloc(len);
    if (!a)
        bench_fail("malloc");
    memset(a, 5, len);
    if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
        bench_fail("ftruncate/lseek of the stream file");
    uint64_t t = hv_now_ns();
    for (uint64_t done = 0; done < bytes; done += len)
        for (size_t off = 0; off < len;) {
            ssize_t n = write(fd, a + off, len - off);
            if (n <= 0)
                bench_fail("write of the stream file");
            off += (size_t)n;
        }
    double gbs = (double)bytes / (double)(hv_now_ns() - t);
    free(a);
    if (fdatasync(fd) < 0)
        bench_fail("fdatasync of the stream file");
    return gbs;
}

/* Kernel copy bandwidth from the file `from` (all of it, as saved) into
 * the emptied file `to`, GB/s: sendfile between page caches, the path of
 * `cat FILE > NEW`, which a save that sends its page data out of the
 * machine's memfd (stream_fd_alias) takes too.  With every page data, the
 * file holds about the guest's bytes, so this is the limit of a save to a
 * new file (page-cache allocation of the new file's pages included). */
static double file_copy_gbs(int from, int to)
{
    off_t size = lseek(from, 0, SEEK_END);
    if (size <= 0 || ftruncate(to, 0) < 0 || lseek(to, 0, SEEK_SET) < 0)
        bench_fail("lseek/ftruncate for the file copy");
    off_t in = 0;
    uint64_t t = hv_now_ns();
    while (in < size) {
        ssize_t n = sendfile(to, from, &in, (size_t)(size - in));
        if (n <= 0)
            bench_fail("sendfile of the stream file");
    }
    double gbs = (double)size / (double)(hv_now_ns() - t);
    if (ftruncate(to, 0) < 0)
        bench_fail("ftruncate of the copy");
    return gbs;
}

/* First-touch write bandwidth of fresh machine memory, GB/s: a new machine
 * of `bytes` written once with memset.  Without shmem THP every 4K costs a
 * shmem allocation, a zeroing and a page fault (and, in a VM, whatever the
 * hypervisor charges for guest memory it has to back again), so this, not
 * memcpy, bounds how fast a restore can fill fresh frames. */
static double first_touch_gbs(uint64_t bytes)
{
    struct machine *m;
    if (machine_create(&m, bytes, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create");
    uint64_t t = hv_now_ns();
    memset(m->base, 0x5a, bytes);
    double gbs = (double)bytes / (double)(hv_now_ns() - t);
    bench_sink += m->base[bytes / 2];
    machine_destroy(m);
    return gbs;
}

static void touch(struct domain *d, unsigned every)
{
    for (gfn_t g = 0; g < (GFN_4G << 2);) {
        enum p2m_type t;
        unsigned lo;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &lo);
        uint64_t step = order_pages(lo) - (g & (order_pages(lo) - 1));
        if (p2m_is_ram(t))
            for (uint64_t i = 0; i < step; i++)
                if ((g + i) % every == 0)
                    memset(machine_ptr(d->m, mfn + i), (int)((g + i) & 0x7f) | 1, PAGE_SIZE);
        g += step;
    }
}

/* Restore the stream in io into machine m, destroy the domain; GB/s of
 * guest RAM. */
static double restore_once(struct machine *m, struct stream_io *io, uint64_t guest,
                           const char *what)
{
    struct restore_result rr;
    int rc = stream_restore(m, io, NULL, &rr);
    if (rc < 0)
        bench_fail_rc(what, rc);
    double gbs = (double)guest / 1e9 / rr.seconds;
    domain_destroy(rr.d);
    restore_result_free(&rr);
    return gbs;
}

enum { T_SAVE_MEM, T_REST_MEM, T_REST_MEM_RES, T_SAVE_FILE, T_REST_FILE, T_REST_FILE_RES,
       T_MEMCPY, T_TOUCH, T_WRITE, T_COPY, T_N };

/* The median of the per-run ratios x[r] / lim[r]: each run against the
 * limit measured next to it, which a noisy host disturbs less than a ratio
 * of medians taken minutes apart. */
static double run_ratio(const double *x, const double *lim)
{
    double r[SRUNS];
    for (int i = 0; i < SRUNS; i++)
        r[i] = lim[i] > 0 ? x[i] / lim[i] : 0;
    return bench_median(r, SRUNS);
}

static void throughput(bench_add_fn add, uint64_t guest, unsigned every, const char *tag)
{
    struct machine *m, *lazy, *res;
    struct domain *d;
    struct domain_config c;
    if (machine_create(&m, guest + GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create(save side)");
    if (machine_create(&lazy, guest + 2 * GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create(restore side)");
    struct machine_opts ro = {.bytes = guest + 256 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                              .resident = true};
    int rc = machine_create_opts(&res, &ro);
    if (rc < 0)
        bench_fail_rc("machine_create_opts(resident restore side)", rc);
    domain_config_default(&c);
    if (domain_create(m, &c, &d) < 0)
        bench_fail("domain_create");
    if (domain_populate_guest(d, guest, NULL) < 0)
        bench_fail("domain_populate_guest");
    touch(d, every);
    double v[T_N][SRUNS];
    char path[] = "/tmp/hugevm-bench-stream-XXXXXX", path2[] = "/tmp/hugevm-bench-copy-XXXXXX";
    int fd = mkstemp(path), fd2 = mkstemp(path2);
    if (fd < 0 || fd2 < 0)
        bench_fail("mkstemp");
    unlink(path);
    unlink(path2);
    for (int r = 0; r < SRUNS; r++) {
        struct stream_mem sm, src;
        struct stream_io io;
        struct save_result sr;
        stream_mem_sink(&sm, &io);
        if (stream_mem_reserve(&sm, guest / every + guest / 256 + 64 * MiB) < 0)
            bench_fail("stream_mem_reserve");
        memset(sm.buf, 0, sm.cap); /* commit the sink outside the timing */
        if (stream_save(d, &io, NULL, &sr, NULL, 0) < 0)
            bench_fail("stream_save(mem)");
        v[T_SAVE_MEM][r] = (double)guest / 1e9 / sr.seconds;
        stream_mem_source(&src, &io, sm.buf, sm.len);
        v[T_REST_MEM][r] = restore_once(lazy, &io, guest, "stream_restore(mem)");
        stream_mem_source(&src, &io, sm.buf, sm.len);
        v[T_REST_MEM_RES][r] = restore_once(res, &io, guest, "stream_restore(mem, resident)");
        stream_mem_free(&sm);

        struct stream_fd sf;
        if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
            bench_fail("ftruncate/lseek of the stream file");
        if (stream_fd_open(&sf, &io, fd) < 0)
            bench_fail("stream_fd_open(save)");
        stream_fd_alias(&sf, m->base, m->bytes, m->fd); /* as hugevm save: sendfile */
        if (stream_save(d, &io, NULL, &sr, NULL, 0) < 0)
            bench_fail("stream_save(file)");
        v[T_SAVE_FILE][r] = (double)guest / 1e9 / sr.seconds;
        stream_fd_free(&sf);
        /* Untimed: write the stream back now, so that background writeback
         * of this run's file does not steal a core from later figures. */
        if (fdatasync(fd) < 0)
            bench_fail("fdatasync of the stream file");
        for (int k = 0; k < 2; k++) {
            if (lseek(fd, 0, SEEK_SET) < 0)
                bench_fail("lseek of the stream file");
            if (stream_fd_open(&sf, &io, fd) < 0)
                bench_fail("stream_fd_open(restore)");
            struct machine *to = k ? res : lazy;
            stream_fd_alias(&sf, to->base, to->bytes, to->fd); /* as hugevm restore: splice */
            v[k ? T_REST_FILE_RES : T_REST_FILE][r] =
                restore_once(k ? res : lazy, &io, guest, "stream_restore(file)");
            stream_fd_free(&sf);
        }
        v[T_COPY][r] = file_copy_gbs(fd, fd2);
        v[T_WRITE][r] = file_write_gbs(fd, guest);
        v[T_MEMCPY][r] = memcpy_gbs(guest);
        v[T_TOUCH][r] = first_touch_gbs(guest);
    }
    close(fd);
    close(fd2);
    double lim = bench_median(v[T_MEMCPY], SRUNS), ftl = bench_median(v[T_TOUCH], SRUNS);
    static const struct {
        int k;
        const char *what;
        int vs; /* a second limit: T_TOUCH (into a lazy machine), T_WRITE */
    } fig[] = {
        {T_SAVE_MEM, "save_mem", 0},
        {T_REST_MEM_RES, "restore_mem_resident", 0},
        {T_REST_MEM, "restore_mem", T_TOUCH},
        {T_SAVE_FILE, "save_file", T_WRITE},
        {T_REST_FILE_RES, "restore_file_resident", 0},
        {T_REST_FILE, "restore_file", T_TOUCH},
    };
    char name[80];
    for (size_t i = 0; i < ARRAY_SIZE(fig); i++) {
        double x = bench_median(v[fig[i].k], SRUNS);
        snprintf(name, sizeof(name), "stream_%s_%s_gb_per_s", fig[i].what, tag);
        add(name, x, "GB/s", lim, "memcpy_gb_per_s", run_ratio(v[fig[i].k], v[T_MEMCPY]));
        if (fig[i].vs == T_TOUCH) {
            snprintf(name, sizeof(name), "stream_%s_%s_vs_touch", fig[i].what, tag);
            add(name, x, "GB/s", ftl, "first_touch_gb_per_s", run_ratio(v[fig[i].k], v[T_TOUCH]));
        } else if (fig[i].vs == T_WRITE) {
            double wl = bench_median(v[T_WRITE], SRUNS);
            snprintf(name, sizeof(name), "stream_%s_%s_vs_write", fig[i].what, tag);
            add(name, x, "GB/s", wl, "file_write_gb_per_s", run_ratio(v[fig[i].k], v[T_WRITE]));
            if (every == 1) { /* the file holds the guest's bytes: cat's copy is the limit */
                double cl = bench_median(v[T_COPY], SRUNS);
                snprintf(name, sizeof(name), "stream_%s_%s_vs_copy", fig[i].what, tag);
                add(name, x, "GB/s", cl, "file_copy_gb_per_s", run_ratio(v[fig[i].k], v[T_COPY]));
            }
        }
    }
    snprintf(name, sizeof(name), "machine_first_touch_%s_gb_per_s", tag);
    add(name, ftl, "GB/s", lim, "memcpy_gb_per_s", run_ratio(v[T_TOUCH], v[T_MEMCPY]));
    snprintf(name, sizeof(name), "machine_prefault_%s_gb_per_s", tag);
    double pf = (double)res->bytes / (double)res->stats.prefault_ns;
    add(name, pf, "GB/s", lim, "memcpy_gb_per_s", pf / lim);
    domain_destroy(d);
    machine_destroy(m);
    machine_destroy(lazy);
    machine_destroy(res);
}

/* Superpage coverage: share of populated pages under 1G/2M leaves. */
static void coverage(bench_add_fn add, uint64_t guest)
{
    struct machine *m;
    struct domain *d;
    struct domain_config c;
    if (machine_create(&m, guest + GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create");
    domain_config_default(&c);
    if (domain_create(m, &c, &d) < 0)
        bench_fail("domain_create");
    if (domain_populate_guest(d, guest, NULL) < 0)
        bench_fail("domain_populate_guest");
    touch(d, 512);
    static const struct {
        const char *name;
        enum save_page_order order;
        uint32_t batch;
    } cases[] = {
        {"batch1024", SAVE_ORDER_GFN, 1024},
        {"batch1000", SAVE_ORDER_GFN, 1000},
        {"reverse", SAVE_ORDER_REVERSE, 1024},
        {"random", SAVE_ORDER_RANDOM, 1024},
    };
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        struct stream_mem sm;
        struct stream_io io;
        struct restore_result rr;
        struct save_opts so = {.order = cases[k].order, .batch = cases[k].batch, .seed = 5,
                               .no_optional = true};
        stream_mem_sink(&sm, &io);
        if (stream_save(d, &io, &so, NULL, NULL, 0) < 0)
            bench_fail("stream_save(coverage)");
        struct stream_mem src;
        stream_mem_source(&src, &io, sm.buf, sm.len);
        struct restore_opts ro = {.dry_run = true};
        if (stream_restore(NULL, &io, &ro, &rr) < 0)
            bench_fail("stream_restore(dry run)");
        double pop = (double)rr.pages_populated;
        double hv = (double)(rr.pages_1g * 262144 + rr.pages_2m * 512) / pop * 100;
        double xen = (double)(rr.xen_2m * 512) / pop * 100;
        char name[64];
        snprintf(name, sizeof(name), "restore_superpage_pct_%s", cases[k].name);
        add(name, hv, "%", 0, NULL, 0);
        snprintf(name, sizeof(name), "xen2025_superpage_pct_%s", cases[k].name);
        add(name, xen, "%", 0, NULL, 0);
        restore_result_free(&rr);
        stream_mem_free(&sm);
    }
    domain_destroy(d);
    machine_destroy(m);
}

void bench_stream(bench_add_fn add)
{
    const char *env = getenv("HUGEVM_BENCH_STREAM_GIB");
    uint64_t gib = env ? strtoull(env, NULL, 0) : 2;
    if (gib < 1 || gib > 64)
        gib = 2;
    throughput(add, gib * GiB, 1, "data");
    throughput(add, gib * GiB, 64, "zero");
    coverage(add, 2 * gib * GiB);
}

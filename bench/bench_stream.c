/*
 * bench_stream.c - save/restore throughput and restored superpage coverage.
 *
 * A multi-GiB guest (HUGEVM_BENCH_STREAM_GIB, default 2) is populated and
 * its memory touched, then saved to and restored from an in-memory stream
 * and a file (page cache), each next to memcpy bandwidth measured in the
 * same run over the same amount of memory (ratio = stream GB/s / memcpy
 * GB/s); restores are also set against the first-touch write bandwidth of
 * a fresh machine measured in the same run (the fault-bound limit when
 * shmem THP is off).  Two contents: every page non-zero ("data") and one page in 64
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
#include <unistd.h>

#include "bench.h"
#include "save.h"

#define SRUNS 3

/* memcpy bandwidth over `bytes` in 256 MiB pieces, GB/s. */
static double memcpy_gbs(uint64_t bytes)
{
    size_t len = 256 * MiB;
    uint8_t *a = malloc(len), *b = malloc(len);
    if (!a || !b)
        bench_fail("malloc");
    memset(a, 3, len);
    memset(b, 4, len);
    uint64_t t = hv_now_ns(), sum = 0;
    for (uint64_t done = 0; done < bytes; done += len) {
        a[done / len % len] = (uint8_t)done;
        memcpy(b, a, len);
        __asm__ volatile("" : : "r"(b) : "memory");
        sum += b[done / len % len];
    }
    double gbs = (double)bytes / (double)(hv_now_ns() - t);
    bench_sink += sum;
    free(a);
    free(b);
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

static void throughput(bench_add_fn add, uint64_t guest, unsigned every, const char *tag)
{
    struct machine *m, *m2;
    struct domain *d;
    struct domain_config c;
    if (machine_create(&m, guest + GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create(save side)");
    if (machine_create(&m2, guest + 2 * GiB, FRAME_POLICY_FRAGPOOL) < 0)
        bench_fail("machine_create(restore side)");
    domain_config_default(&c);
    if (domain_create(m, &c, &d) < 0)
        bench_fail("domain_create");
    if (domain_populate_guest(d, guest, NULL) < 0)
        bench_fail("domain_populate_guest");
    touch(d, every);
    double mem_save[SRUNS], mem_rest[SRUNS], file_save[SRUNS], file_rest[SRUNS], mc[SRUNS],
        ft[SRUNS];
    char path[] = "/tmp/hugevm-bench-stream-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        bench_fail("mkstemp");
    unlink(path);
    for (int r = 0; r < SRUNS; r++) {
        struct stream_mem sm;
        struct stream_io io;
        struct save_result sr;
        struct restore_result rr;
        stream_mem_sink(&sm, &io);
        if (stream_mem_reserve(&sm, guest / every + guest / 256 + 64 * MiB) < 0)
            bench_fail("stream_mem_reserve");
        memset(sm.buf, 0, sm.cap); /* commit the sink outside the timing */
        if (stream_save(d, &io, NULL, &sr, NULL, 0) < 0)
            bench_fail("stream_save(mem)");
        mem_save[r] = (double)guest / 1e9 / sr.seconds;
        struct stream_mem src;
        stream_mem_source(&src, &io, sm.buf, sm.len);
        if (stream_restore(m2, &io, NULL, &rr) < 0)
            bench_fail("stream_restore(mem)");
        mem_rest[r] = (double)guest / 1e9 / rr.seconds;
        domain_destroy(rr.d);
        restore_result_free(&rr);
        stream_mem_free(&sm);

        struct stream_fd sf;
        if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
            bench_fail("ftruncate/lseek of the stream file");
        if (stream_fd_open(&sf, &io, fd) < 0)
            bench_fail("stream_fd_open(save)");
        if (stream_save(d, &io, NULL, &sr, NULL, 0) < 0)
            bench_fail("stream_save(file)");
        file_save[r] = (double)guest / 1e9 / sr.seconds;
        stream_fd_free(&sf);
        /* Untimed: write the stream back now, so that background writeback
         * of this run's file does not steal a core from later figures. */
        if (fdatasync(fd) < 0)
            bench_fail("fdatasync of the stream file");
        if (lseek(fd, 0, SEEK_SET) < 0)
            bench_fail("lseek of the stream file");
        if (stream_fd_open(&sf, &io, fd) < 0)
            bench_fail("stream_fd_open(restore)");
        if (stream_restore(m2, &io, NULL, &rr) < 0)
            bench_fail("stream_restore(file)");
        file_rest[r] = (double)guest / 1e9 / rr.seconds;
        stream_fd_free(&sf);
        domain_destroy(rr.d);
        restore_result_free(&rr);
        mc[r] = memcpy_gbs(guest);
        ft[r] = first_touch_gbs(guest);
    }
    close(fd);
    double lim = bench_median(mc, SRUNS), ftl = bench_median(ft, SRUNS);
    static const char *const what[] = {"save_mem", "restore_mem", "save_file", "restore_file"};
    double *vals[] = {mem_save, mem_rest, file_save, file_rest};
    char name[64];
    for (int k = 0; k < 4; k++) {
        double v = bench_median(vals[k], SRUNS);
        snprintf(name, sizeof(name), "stream_%s_%s_gb_per_s", what[k], tag);
        add(name, v, "GB/s", lim, "memcpy_gb_per_s", v / lim);
        if (k == 1 || k == 3) { /* restores also against the first-touch limit */
            snprintf(name, sizeof(name), "stream_%s_%s_vs_touch", what[k], tag);
            add(name, v, "GB/s", ftl, "first_touch_gb_per_s", v / ftl);
        }
    }
    snprintf(name, sizeof(name), "machine_first_touch_%s_gb_per_s", tag);
    add(name, ftl, "GB/s", lim, "memcpy_gb_per_s", ftl / lim);
    domain_destroy(d);
    machine_destroy(m);
    machine_destroy(m2);
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

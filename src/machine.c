/*
 * machine.c - one memfd of host memory, its mapping, and frame scrubbing.
 *
 * The memfd is sized once with ftruncate (no blocks allocated), mapped once
 * MAP_SHARED|MAP_NORESERVE and advised MADV_HUGEPAGE, so only touched frames
 * cost host RAM.  The frame allocator calls machine_scrub() for every extent
 * it frees; afterwards the extent reads as zero:
 *   - never touched (mincore: not resident, and the host has no swap):
 *     nothing to do, it is a hole and reads as zero;
 *   - order >= 9: fallocate(PUNCH_HOLE) returns the blocks to the host; no
 *     byte is written and RSS drops;
 *   - smaller: memset when wholly resident (cheaper than a syscall that may
 *     split a huge page), PUNCH_HOLE when partly resident (memset would
 *     commit the rest).
 * A resident machine is committed at create (fallocate, then
 * MADV_POPULATE_WRITE to map it; only the latter when shmem THP is usable,
 * as fallocate has no mapping to ask for huge pages) and always scrubs with
 * memset: its memory stays with it until machine_destroy.
 */
#include "machine.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

static const char thp_path[] = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

static void machine_scrub(void *ctx, mfn_t mfn, unsigned order)
{
    struct machine *m = ctx;
    uint64_t off = machine_offset(mfn);
    uint64_t len = order_pages(order) << PAGE_SHIFT;
    size_t npages = (size_t)order_pages(order);
    size_t resident = npages;

    m->stats.scrub_calls++;
    if (m->resident) {
        memset(m->base + off, 0, len);
        m->stats.scrub_zeroed_bytes += len;
        return;
    }
    /* mincore tells which pages are in the memfd's page cache.  Without swap
     * a page that is not there is a hole and already reads as zero; with
     * swap it may be swapped out, so it must be punched. */
    if (m->residency && mincore(m->base + off, len, m->residency) == 0) {
        resident = 0;
        for (size_t i = 0; i < npages; i++)
            resident += m->residency[i] & 1;
    }
    if (resident == 0 && !m->swap_possible) {
        m->stats.scrub_skipped_bytes += len;
        return;
    }
    if ((order >= PAGE_ORDER_2M || resident < npages) &&
        fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0) {
        m->stats.scrub_punched_bytes += len;
        return;
    }
    memset(m->base + off, 0, len);
    m->stats.scrub_zeroed_bytes += len;
}

/* A /proc/meminfo figure in bytes; false when it cannot be read. */
static bool meminfo_read(const char *key, uint64_t *out)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    bool found = false;
    size_t kl = strlen(key);
    if (!f)
        return false;
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned long long kb;
        if (!strncmp(line, key, kl) && line[kl] == ':' &&
            sscanf(line + kl + 1, " %llu kB", &kb) == 1) {
            *out = (uint64_t)kb << 10;
            found = true;
        }
    }
    fclose(f);
    return found;
}

/* True unless /proc/meminfo says SwapTotal is 0 (unknown counts as swap). */
static bool swap_configured(void)
{
    uint64_t swap;
    return !meminfo_read("SwapTotal", &swap) || swap != 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Commit and map all of a resident machine's memory. */
static int prefault(struct machine *m)
{
    uint64_t t0 = hv_now_ns();
    if (!thp_shmem_usable(m->thp) && fallocate(m->fd, 0, 0, (off_t)m->bytes) < 0)
        return errno == ENOSPC ? -ENOMEM : -errno;
    if (madvise(m->base, m->bytes, MADV_POPULATE_WRITE) < 0) {
        if (errno != EINVAL) /* EINVAL: kernel older than 5.14 */
            return errno == EFAULT ? -ENOMEM : -errno;
        /* The blocks are allocated (or THP is on and faults may fail with
         * SIGBUS only on a host out of memory): touch every page. */
        for (uint64_t off = 0; off < m->bytes; off += PAGE_SIZE)
            ((volatile uint8_t *)m->base)[off] = 0;
    } else {
        /* Then one write per page from this process, and one by the kernel
         * through the same addresses (read() of /dev/zero, best effort).
         * Under a hypervisor with shadow paging (this host's PVM) the
         * populate builds the guest kernel's page tables only: the first
         * user write to each page, and separately the first kernel write
         * to it through the user address (a recv() into guest memory),
         * each still trap to the hypervisor, 5-7 us a page (1.4-1.8 s per
         * GiB: most of what a migration into "committed" memory cost).
         * Elsewhere each pass costs about a cache miss per page.  The bytes
         * are zero already, and stay zero. */
        for (uint64_t off = 0; off < m->bytes; off += PAGE_SIZE)
            ((volatile uint8_t *)m->base)[off] = 0;
        int z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
        for (uint64_t off = 0; z >= 0 && off < m->bytes;) {
            size_t n = m->bytes - off < (1u << 20) ? (size_t)(m->bytes - off) : (1u << 20);
            ssize_t r = read(z, (uint8_t *)m->base + off, n);
            if (r <= 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            off += (uint64_t)r;
        }
        if (z >= 0)
            close(z);
    }
    m->stats.prefault_ns = hv_now_ns() - t0;
    return 0;
}

int machine_create(struct machine **out, uint64_t bytes, enum frame_policy policy)
{
    struct machine_opts o = {.bytes = bytes, .policy = policy};
    return machine_create_opts(out, &o);
}

int machine_create_opts(struct machine **out, const struct machine_opts *o)
{
    int rc;
    uint64_t bytes = o->bytes;
    enum frame_policy policy = o->policy;
    if (bytes == 0 || bytes % (2 * MiB) || bytes > (1ULL << 46))
        return -EINVAL;
    struct machine *m = hv_calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->bytes = bytes;
    m->nr_frames = bytes >> PAGE_SHIFT;
    m->thp = thp_shmem_read();
    m->swap_possible = swap_configured();

    m->fd = memfd_create("hugevm-machine", MFD_CLOEXEC);
    if (m->fd < 0) {
        rc = -errno;
        goto err_free;
    }
    if (ftruncate(m->fd, (off_t)bytes) < 0) {
        rc = -errno;
        goto err_fd;
    }
    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_NORESERVE, m->fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        goto err_fd;
    }
    m->base = base;
    /* Advice only: failing to get huge pages is never an error. */
    (void)madvise(m->base, bytes, MADV_HUGEPAGE);
    m->resident = o->resident;
    if (m->resident) {
        /* Committing more than the host has would end in the OOM killer,
         * not in an error: refuse it up front. */
        uint64_t avail;
        if (meminfo_read("MemAvailable", &avail) && bytes > avail) {
            rc = -ENOMEM;
            goto err_map;
        }
        if ((rc = prefault(m)) < 0)
            goto err_map;
    }

    /* One residency vector for the largest extent; without it every scrub
     * simply punches or zeroes. */
    m->residency = malloc((size_t)order_pages(MAX_ORDER));
    rc = frames_create_huge(&m->frames, m->nr_frames, policy, m->resident);
    if (rc < 0)
        goto err_map;
    frames_set_scrub(m->frames, machine_scrub, m);
    *out = m;
    return 0;

err_map:
    free(m->residency);
    munmap(m->base, bytes);
err_fd:
    close(m->fd);
err_free:
    free(m);
    return rc;
}

void machine_destroy(struct machine *m)
{
    if (!m)
        return;
    frames_destroy(m->frames);
    free(m->residency);
    munmap(m->base, m->bytes);
    close(m->fd);
    free(m);
}

bool machine_offset_in_hole(struct machine_holes *dm, uint64_t off)
{
    const struct machine *m = dm->m;
    if (m->resident || off >= m->bytes)
        return false; /* committed: no holes (beyond the end: read it) */
    if (!m->swap_possible) {
        const uint64_t span = (uint64_t)MACHINE_HOLES_CHUNK << PAGE_SHIFT;
        if (dm->chunk == UINT64_MAX || off < dm->chunk || off >= dm->chunk + span) {
            uint64_t lo = off & ~(span - 1), len = m->bytes - lo < span ? m->bytes - lo : span;
            if (mincore(m->base + lo, len, dm->vec) < 0)
                return false; /* unknown: read the page */
            dm->chunk = lo;
        }
        return !(dm->vec[(off - dm->chunk) >> PAGE_SHIFT] & 1);
    }
    if (off >= dm->lo && off < dm->hi)
        return !dm->data;
    int fd = m->fd;
    off_t ds = lseek(fd, (off_t)off, SEEK_DATA);
    if (ds < 0) {
        if (errno == ENXIO) { /* hole up to the end */
            dm->lo = off;
            dm->hi = UINT64_MAX;
            dm->data = false;
            return true;
        }
        dm->lo = dm->hi = 0; /* unknown: read the page */
        return false;
    }
    if ((uint64_t)ds > off) {
        dm->lo = off;
        dm->hi = (uint64_t)ds;
        dm->data = false;
        return true;
    }
    off_t he = lseek(fd, (off_t)off, SEEK_HOLE);
    dm->lo = off;
    dm->hi = he > (off_t)off ? (uint64_t)he : off + PAGE_SIZE;
    dm->data = true;
    return false;
}

uint64_t machine_resident_bytes(const struct machine *m)
{
    struct stat st;
    if (fstat(m->fd, &st) < 0)
        return 0;
    return (uint64_t)st.st_blocks * 512u;
}

static const struct {
    const char *word;
    enum thp_shmem val;
} thp_words[] = {
    {"never", THP_SHMEM_NEVER},           {"deny", THP_SHMEM_DENY},
    {"advise", THP_SHMEM_ADVISE},         {"within_size", THP_SHMEM_WITHIN_SIZE},
    {"always", THP_SHMEM_ALWAYS},         {"force", THP_SHMEM_FORCE},
};

enum thp_shmem thp_shmem_read(void)
{
    char buf[256];
    FILE *f = fopen(thp_path, "r");
    if (!f)
        return THP_SHMEM_UNKNOWN;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The selected value is in brackets: "always within_size [advise] ..." */
    char *l = strchr(buf, '['), *r = l ? strchr(l, ']') : NULL;
    if (!l || !r)
        return THP_SHMEM_UNKNOWN;
    *r = 0;
    for (size_t i = 0; i < ARRAY_SIZE(thp_words); i++)
        if (!strcmp(l + 1, thp_words[i].word))
            return thp_words[i].val;
    return THP_SHMEM_UNKNOWN;
}

const char *thp_shmem_name(enum thp_shmem t)
{
    for (size_t i = 0; i < ARRAY_SIZE(thp_words); i++)
        if (thp_words[i].val == t)
            return thp_words[i].word;
    return "unknown";
}

bool thp_shmem_usable(enum thp_shmem t)
{
    return t == THP_SHMEM_ADVISE || t == THP_SHMEM_WITHIN_SIZE ||
           t == THP_SHMEM_ALWAYS || t == THP_SHMEM_FORCE;
}

const char *thp_shmem_explain(enum thp_shmem t)
{
    if (thp_shmem_usable(t))
        return "shmem THP available: 2M-aligned machine extents can be backed "
               "by host huge pages, so a 2M p2m leaf is also a 2M host "
               "mapping (one TLB entry, one fault per 2M)";
    return "shmem THP unavailable: the machine is backed by 4K host pages; "
           "p2m superpages still shorten hugevm's own walks and keep the "
           "guest layout, but host mappings (and a KVM guest's EPT) stay 4K, "
           "each 2M costs 512 host faults on first touch (root can set "
           "shmem_enabled to 'advise')";
}

int thp_shmem_try_enable(void)
{
    enum thp_shmem t = thp_shmem_read();
    if (thp_shmem_usable(t))
        return 0;
    if (t == THP_SHMEM_UNKNOWN || t == THP_SHMEM_DENY)
        return -ENOTSUP;
    if (geteuid() != 0)
        return -EPERM;
    FILE *f = fopen(thp_path, "w");
    if (!f)
        return -errno;
    int ok = fputs("advise", f) >= 0;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok)
        return -EIO;
    return thp_shmem_usable(thp_shmem_read()) ? 0 : -EIO;
}

int thp_shmem_set(enum thp_shmem t)
{
    if (t == THP_SHMEM_UNKNOWN)
        return -EINVAL;
    if (thp_shmem_read() == t)
        return 0;
    FILE *f = fopen(thp_path, "w");
    if (!f)
        return -errno;
    int ok = fputs(thp_shmem_name(t), f) >= 0;
    if (fclose(f) != 0)
        ok = 0;
    return ok && thp_shmem_read() == t ? 0 : -EIO;
}

int host_mapping_measure(uint64_t lo, uint64_t hi, struct host_mapping *hm)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -errno;
    char line[512];
    bool in = false;
    *hm = (struct host_mapping){0};
    while (fgets(line, sizeof(line), f)) {
        unsigned long long s, e, kb;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s", &s, &e, perms) == 3) {
            in = s >= lo && e <= hi && perms[3] == 's';
            hm->vmas += in;
            continue;
        }
        if (!in)
            continue;
        if (sscanf(line, "Rss: %llu kB", &kb) == 1)
            hm->rss_bytes += kb << 10;
        else if (sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1 ||
                 sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1)
            hm->pmd_mapped_bytes += kb << 10;
    }
    fclose(f);
    return 0;
}

/*
 * fill.c - `--fill FILE` of `hugevm save` and `hugevm migrate`: the guest's
 * RAM is the bytes of FILE, in gfn order from gfn 0 over the ranges the
 * guest was populated with (domain_guest_layout), so that another
 * hypervisor given the same file as its guest RAM (QEMU's
 * memory-backend-file, scripts/bench-peers.sh) moves the same bytes.
 *
 * Contract: file offset = the guest-physical address for RAM below the
 * MMIO hole (the layout's ranges one after the other, as QEMU's pc.ram), so
 * every byte of the file lands at its address in guest RAM, zero bytes
 * included (every RAM page the file covers is written, from user space, as
 * a guest whose memory is that file has it all present); the bytes of gfns that are not
 * RAM (the legacy VGA hole, 0xa0000-0xbffff) are not used; RAM beyond a
 * shorter file stays as it was (zero).  A file larger than the guest's RAM,
 * one that cannot be opened, or a read error is refused with the file's
 * name (and the offset); on error the caller destroys the guest.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "domain.h"
#include "machine.h"
#include "p2m.h"

/* Read up to len bytes at offset off into dst; 0, or the error (a short
 * file is not one: *got says how many came). */
static int pread_full(int fd, void *dst, size_t len, uint64_t off, size_t *got)
{
    *got = 0;
    while (*got < len) {
        ssize_t k = pread(fd, (char *)dst + *got, len - *got, (off_t)(off + *got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            break;
        *got += (size_t)k;
    }
    return 0;
}

#define FILL_BUF (1u << 20)

/* Fill len bytes of guest memory at dst from the file at off, through buf
 * (FILL_BUF bytes): copied in from user space, as a guest writes its
 * memory, not by the kernel straight into it.  Under a shadow-paging
 * hypervisor (README: --resident) the first user access to each page
 * traps whether or not the kernel wrote it; a guest that wrote its memory
 * has paid that, and the sender then reads it at memory speed.  0 or the
 * error; *got as pread_full. */
static int fill_leaf(int fd, uint8_t *dst, size_t len, uint64_t off, uint8_t *buf, size_t *got)
{
    *got = 0;
    while (*got < len) {
        size_t want = len - *got < FILL_BUF ? len - *got : FILL_BUF, n;
        int rc = pread_full(fd, buf, want, off + *got, &n);
        if (rc < 0)
            return rc;
        memcpy(dst + *got, buf, n);
        *got += n;
        if (n < want)
            break;
    }
    return 0;
}

int cli_fill_from_file(const char *cmd, struct domain *d, uint64_t guest_mem, const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_error("%s: --fill %s: %s", cmd, path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cli_error("%s: --fill %s: not a regular file", cmd, path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > guest_mem) {
        close(fd);
        return cli_error("%s: --fill %s: the file has %llu bytes, more than the guest's RAM "
                         "(%llu bytes, --guest-mem)", cmd, path, (unsigned long long)size,
                         (unsigned long long)guest_mem);
    }
    uint8_t *buf = hv_malloc(FILL_BUF);
    if (!buf) {
        close(fd);
        return cli_error("%s: --fill: out of memory", cmd);
    }
    struct gfn_range r[2];
    unsigned n = domain_guest_layout(d, guest_mem, r);
    uint64_t base = 0; /* file offset of range k's first gfn */
    int status = 0;
    for (unsigned k = 0; k < n && !status && base < size; base += r[k].nr << PAGE_SHIFT, k++) {
        for (gfn_t g = r[k].gfn; g < r[k].gfn + r[k].nr;) {
            uint64_t off = base + ((g - r[k].gfn) << PAGE_SHIFT);
            if (off >= size)
                break;
            enum p2m_type t;
            unsigned lo;
            mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &lo);
            /* the rest of this leaf (or hole), within the range */
            uint64_t in = order_pages(lo) - (g & (order_pages(lo) - 1));
            if (in > r[k].gfn + r[k].nr - g)
                in = r[k].gfn + r[k].nr - g;
            if (p2m_is_ram(t)) { /* contiguous frames */
                size_t got;
                int rc = fill_leaf(fd, machine_ptr(d->m, mfn), in << PAGE_SHIFT, off, buf, &got);
                if (rc < 0) {
                    status = cli_error("%s: --fill %s: read error at offset %llu: %s", cmd,
                                       path, (unsigned long long)off, strerror(-rc));
                    break;
                }
                if (got < (in << PAGE_SHIFT) && off + got != size) {
                    status = cli_error("%s: --fill %s: ends at offset %llu, not at its size "
                                       "%llu (did it change?)", cmd, path,
                                       (unsigned long long)(off + got), (unsigned long long)size);
                    break;
                }
            }
            g += in;
        }
    }
    free(buf);
    close(fd);
    return status;
}

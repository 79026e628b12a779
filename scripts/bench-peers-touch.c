/*
 * bench-peers-touch.c - an LD_PRELOAD for QEMU in `make bench-peers` with
 * BENCH_PEERS_QEMU_TOUCH=1: madvise(MADV_POPULATE_WRITE) fails with EINVAL,
 * so QEMU's prealloc=on takes its own path for kernels without it and
 * touches every page from user space.  On a shadow-paging host the first
 * user access to each page traps even after the kernel populated it, and
 * hugevm's --resident touches from user space (README), so this gives
 * QEMU's receiver the same kind of commitment.  Nothing else changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int madvise(void *addr, size_t len, int advice)
{
    static int (*real)(void *, size_t, int);
    if (advice == MADV_POPULATE_WRITE) {
        errno = EINVAL;
        return -1;
    }
    if (!real) {
        void *sym = dlsym(RTLD_NEXT, "madvise");
        memcpy(&real, &sym, sizeof(real)); /* POSIX: dlsym's result is callable */
    }
    return real ? real(addr, len, advice) : (errno = ENOSYS, -1);
}

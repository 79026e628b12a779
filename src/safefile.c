/*
 * safefile.c - temporary file, fsync, rename without replacing (safefile.h).
 */
#include "safefile.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static void sf_reset(struct safefile *sf)
{
    sf->fd = -1;
    sf->dirfd = -1;
    sf->name[0] = sf->tmp[0] = '\0';
}

int safefile_create(struct safefile *sf, const char *path)
{
    sf_reset(sf);
    if (!path || !*path)
        return -EINVAL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char dir[4096];
    if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
        return -EISDIR;
    if (strlen(base) >= sizeof(sf->name) - 32 || (size_t)(base - path) >= sizeof(dir))
        return -ENAMETOOLONG;
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    snprintf(sf->name, sizeof(sf->name), "%s", base);
    int rc;
    sf->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sf->dirfd < 0)
        return -errno;
    struct stat st;
    if (fstatat(sf->dirfd, sf->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        rc = -EEXIST;
        goto fail;
    }
    if (errno != ENOENT) {
        rc = -errno;
        goto fail;
    }
    for (int tries = 0; tries < 16; tries++) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = hv_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)tries;
        snprintf(sf->tmp, sizeof(sf->tmp), ".%s.%012llx.tmp", sf->name,
                 (unsigned long long)(r & 0xffffffffffffULL));
        sf->fd = openat(sf->dirfd, sf->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        0600);
        if (sf->fd >= 0)
            return 0;
        if (errno != EEXIST) {
            rc = -errno;
            goto fail;
        }
    }
    rc = -EEXIST;
fail:
    sf->tmp[0] = '\0';
    safefile_abort(sf);
    return rc;
}

/* Rename tmp to name, refusing to replace it. */
static int rename_noreplace(int dirfd, const char *tmp, const char *name)
{
    if (renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* no RENAME_NOREPLACE on this file system: a hard link refuses an
     * existing name as well */
    if (linkat(dirfd, tmp, dirfd, name, 0) < 0)
        return -errno;
    (void)unlinkat(dirfd, tmp, 0);
    return 0;
}

int safefile_commit(struct safefile *sf)
{
    int rc = 0;
    if (sf->fd < 0 || !sf->tmp[0])
        return -EBADF;
    if (fsync(sf->fd) < 0)
        rc = -errno;
    if (close(sf->fd) < 0 && rc == 0)
        rc = -errno;
    sf->fd = -1;
    if (rc == 0)
        rc = rename_noreplace(sf->dirfd, sf->tmp, sf->name);
    if (rc < 0) {
        safefile_abort(sf);
        return rc;
    }
    sf->tmp[0] = '\0';
    if (fsync(sf->dirfd) < 0) {
        /* whole but its name may not survive a crash: a failure, and a
         * failure leaves no file (the name is ours: RENAME_NOREPLACE) */
        rc = -errno;
        (void)unlinkat(sf->dirfd, sf->name, 0);
    }
    close(sf->dirfd);
    sf->dirfd = -1;
    return rc;
}

void safefile_abort(struct safefile *sf)
{
    if (sf->fd >= 0)
        close(sf->fd);
    sf->fd = -1;
    if (sf->dirfd >= 0) {
        if (sf->tmp[0])
            (void)unlinkat(sf->dirfd, sf->tmp, 0);
        close(sf->dirfd);
    }
    sf->dirfd = -1;
    sf->tmp[0] = '\0';
}

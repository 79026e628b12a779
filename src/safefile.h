/*
 * safefile.h - create a file so that nobody ever sees it half written, and
 * so that nothing already there is followed, replaced or truncated.
 *
 * safefile_create opens a fresh temporary file next to the final name
 * (".NAME.XXXXXXXXXXXX.tmp", random suffix, in the same directory so that
 * the rename stays on one file system) with O_CREAT | O_EXCL | O_NOFOLLOW,
 * mode 0600: a symlink or a file planted under the temporary name makes it
 * try another name, never write through it.  The caller writes sf->fd.
 * safefile_commit syncs the data (fsync), renames the temporary file over
 * the final name with renameat2(RENAME_NOREPLACE) (where the file system
 * lacks it, link + unlink, which also refuse an existing name) and syncs
 * the directory, so that after 0 the file is complete, durable and has its
 * name.  Every failure, in create, commit or abort, removes the temporary
 * file: no partial file is ever left, and the final name is never created
 * by a failure.  An existing final name (a file, a symlink, anything) is
 * -EEXIST: it is never replaced.
 *
 * Used for every guest image hugevm writes: `hugevm save`, `run --save`,
 * the in-doubt save of migrate/receive and `run --save-on-failure`.
 */
#ifndef HUGEVM_SAFEFILE_H
#define HUGEVM_SAFEFILE_H

#include "common.h"

struct safefile {
    int fd;          /* the temporary file, for writing; -1 when closed */
    int dirfd;       /* the final name's directory */
    char name[256];  /* final name within dirfd */
    char tmp[300];   /* temporary name within dirfd ("" when removed) */
};

/* Open a temporary file for path.  -EEXIST (path exists: nothing is
 * created), -ENAMETOOLONG, -ENOENT/-EACCES/-errno for the directory. */
int safefile_create(struct safefile *sf, const char *path) HV_MUST_CHECK;
/* fsync, rename to the final name without replacing anything, fsync the
 * directory, close.  0; on any error the temporary file is removed and
 * the final name not created: -EEXIST (it appeared meanwhile), -ENOSPC,
 * -EIO, -errno. */
int safefile_commit(struct safefile *sf) HV_MUST_CHECK;
/* Close and remove the temporary file (after a failed write); idempotent,
 * and a no-op after safefile_commit. */
void safefile_abort(struct safefile *sf);

#endif

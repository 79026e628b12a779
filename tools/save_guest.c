/*
 * save_guest.c - a guest saved to a fresh file as a migration stream with
 * its vCPU and workload state (HVM_CONTEXT TLVs, guest_state.h): what
 * `run --save`, a program guest's save, the in-doubt save and
 * --save-on-failure share (cli.h).  Files go through safefile.h: 0600, no
 * partial file, nothing replaced; a progress bar on a terminal.
 */
#include <string.h>

#include "cli.h"
#include "guest.h"
#include "guest_state.h"
#include "safefile.h"
#include "save.h"

/* Save d with its vCPUs and workloads to `path` (cli.h). */
int cli_save_guest(struct domain *d, struct vcpu *const *v, struct workload *const *w,
                      unsigned nv, const struct workload_config *wc, const char *path,
                      struct save_result *sr, char *err, size_t errlen)
{
    struct hvctx_buf tl;
    int rc = hvctx_begin(&tl);
    if (rc == 0)
        rc = guest_state_encode(&tl, nv, v, w, wc);
    if (rc < 0) {
        snprintf(err, errlen, "encoding the vCPU state: %s", strerror(-rc));
        hvctx_free(&tl);
        return rc;
    }
    rc = cli_save_tlvs(d, tl.p + sizeof(struct hvctx_header), tl.len - sizeof(struct hvctx_header),
                       path, sr, err, errlen);
    hvctx_free(&tl);
    return rc;
}

int cli_save_running(struct guest *g, const void *extra, size_t extra_len, const char *path,
                     struct save_result *sr, char *err, size_t errlen)
{
    struct hvctx_buf tl;
    int rc = hvctx_begin(&tl);
    if (rc == 0)
        rc = guest_encode(g, &tl);
    if (rc == 0 && extra_len)
        rc = hvctx_append(&tl, extra, extra_len);
    if (rc < 0) {
        snprintf(err, errlen, "capturing the vCPU state: %s", strerror(-rc));
        hvctx_free(&tl);
        return rc;
    }
    rc = cli_save_tlvs(g->d, tl.p + sizeof(struct hvctx_header),
                       tl.len - sizeof(struct hvctx_header), path, sr, err, errlen);
    hvctx_free(&tl);
    return rc;
}

int cli_save_tlvs(struct domain *d, const void *tlvs, size_t len, const char *path,
                  struct save_result *sr, char *err, size_t errlen)
{
    struct safefile out;
    int rc = safefile_create(&out, path);
    if (rc < 0) {
        snprintf(err, errlen, "%s", rc == -EEXIST ? "the file exists already (it is never "
                 "replaced: remove it or give another name)" : strerror(-rc));
        return rc;
    }
    struct stream_fd sf;
    struct stream_io io;
    rc = stream_fd_open(&sf, &io, out.fd);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
    } else {
        stream_fd_alias(&sf, d->m->base, d->m->bytes, d->m->fd); /* page data: sendfile */
        struct save_opts so = {.extra_tlvs = tlvs, .extra_tlvs_len = len,
                               .progress = cli_save_progress};
        rc = stream_save(d, &io, &so, sr, err, errlen);
        stream_fd_free(&sf);
    }
    if (rc == 0) {
        rc = safefile_commit(&out);
        if (rc < 0)
            snprintf(err, errlen, "%s", rc == -EEXIST ? "the file appeared meanwhile (it is "
                     "never replaced)" : strerror(-rc));
    }
    safefile_abort(&out); /* after a failure: no partial file is left */
    return rc;
}

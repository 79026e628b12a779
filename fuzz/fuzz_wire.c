/*
 * fuzz_wire.c - libFuzzer target for the migration wire protocol: the
 * frames a receiver parses (HELLO, DATA with the stream inside,
 * PC_PENDING when HELLO asks for post-copy, DONE, COMMIT/ABORT; with
 * several channels, the joining HELLOs and every channel's frames:
 * migrate_receive) and those a sender parses (READY, RESULT,
 * RESUMED: migrate_send), over a scripted channel (wire_common.h: byte 0
 * picks the side).
 *
 * Receiver: whatever the bytes, it either resumes a guest whose domain
 * passes domain_audit (a transcript with the right digest and COMMIT), or
 * keeps one paused in doubt (RESULT went out, then nothing), or fails
 * with a message and every frame of its machine back in the allocator.
 * Sender: it either completes (the bytes confirmed its digest and sent
 * RESUMED), or is in doubt (COMMIT out, no RESUMED), or fails with its
 * guest intact: log-dirty off, not paused, domain_audit clean, and its
 * memory digest unchanged.  Anything else aborts.
 *
 * Build: scripts/fuzz.sh SECONDS fuzz_wire.
 */
#include <stdio.h>
#include <stdlib.h>

#include "wire_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct machine *rx_machine, *tx_machine;

static void check(bool ok, const char *what, const char *msg)
{
    if (!ok) {
        fprintf(stderr, "fuzz_wire: invariant broken: %s (%s; audit: %s)\n", what,
                msg ? msg : "", hv_audit_last());
        abort();
    }
}

static void all_free(struct machine *m, const char *who)
{
    struct frame_stats st;
    frames_get_stats(m->frames, &st);
    check(st.free_frames == m->nr_frames, "frames left allocated", who);
}

/* Parallel channels: the further scripted channels, handed out in order. */
struct joins {
    struct script_chan sc[MIG_MAX_CHANNELS];
    unsigned n, next;
};

static struct chan *fuzz_join(void *ctx, uint64_t by, char *err, size_t len)
{
    struct joins *j = ctx;
    (void)by;
    if (j->next >= j->n) {
        snprintf(err, len, "no further scripted channel");
        return NULL;
    }
    return &j->sc[j->next++].c;
}

static void fuzz_receiver(const uint8_t *data, size_t size, bool multi)
{
    static struct joins j;
    struct script_chan sc;
    memset(&j, 0, sizeof(j));
    if (multi) { /* [u32 length][bytes] per channel, channel 0 first */
        size_t at = 0;
        const uint8_t *c0 = NULL;
        size_t n0 = 0;
        for (unsigned k = 0; k < MIG_MAX_CHANNELS && at + 4 <= size; k++) {
            uint32_t n;
            memcpy(&n, data + at, 4);
            n = le32toh(n);
            at += 4;
            if (n > size - at)
                n = (uint32_t)(size - at);
            if (k == 0) {
                c0 = data + at;
                n0 = n;
            } else {
                script_init(&j.sc[j.n++], data + at, n, NULL, 0);
            }
            at += n;
        }
        data = c0 ? c0 : data;
        size = c0 ? n0 : 0;
    }
    script_init(&sc, data, size, NULL, 0);
    /* post-copy accepted: a HELLO that asks for it brings PC_PENDING (the
     * receiver's bitmap parser) into reach; arming is the caller's */
    struct migrate_recv_opts o = {.timeout_ms = 1000, .postcopy_ok = true,
                                  .join = multi ? fuzz_join : NULL, .jctx = &j};
    struct migrate_recv_result res;
    int rc = migrate_receive(rx_machine, &sc.c, &o, &res);
    if (getenv("FUZZ_WIRE_VERBOSE")) /* what a seed or a crash input does */
        fprintf(stderr, "fuzz_wire: receiver: rc %d, %u channel(s): %s\n", rc, res.channels,
                res.err);
    if (res.postcopy) {
        check(rc == 0 && res.pc_nruns > 0, "post-copy runs without a guest", res.err);
        uint64_t n = 0;
        for (size_t i = 0; i < res.pc_nruns; i++) {
            check(res.pc_runs[i].nr > 0 && (i == 0 || res.pc_runs[i].pfn >
                                            res.pc_runs[i - 1].pfn + res.pc_runs[i - 1].nr),
                  "pending runs not ascending, apart and non-empty", NULL);
            n += res.pc_runs[i].nr;
        }
        check(n <= res.g->d->tot_pages, "more pending pages than the domain has", NULL);
    }
    if (rc == 0 || rc == -EINPROGRESS) {
        check(res.g != NULL, "a receiver that succeeded has no guest", res.err);
        check(res.verified, "a guest taken without its digest checked", res.err);
        check(domain_audit(res.g->d) == 0, "domain_audit of the received guest", res.err);
        struct domain *d = res.g->d;
        guest_destroy(res.g);
        domain_destroy(d);
    } else {
        check(res.g == NULL, "a failed receiver left a guest", res.err);
        check(res.err[0] != 0, "a failed receiver without a message", NULL);
    }
    migrate_recv_result_free(&res);
    all_free(rx_machine, "receiver");
}

static void fuzz_sender(const uint8_t *data, size_t size)
{
    struct domain *d;
    struct guest *g;
    if (wire_guest(tx_machine, &d, &g) < 0)
        abort();
    uint64_t before = migrate_digest(d, NULL);
    struct script_chan sc;
    script_init(&sc, data, size, NULL, 0);
    struct migrate_opts o = {.timeout_ms = 1000};
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    if (!rep)
        abort();
    int rc = migrate_send(g, &sc.c, &o, rep);
    check(!dirty_enabled(d), "log-dirty left on", rep->err);
    if (rc == 0) {
        check(rep->verified && rep->digest_receiver == rep->digest_sender,
              "committed without the receiver's digest", rep->err);
    } else if (rc == -EINPROGRESS) {
        check(rep->in_doubt && g->pause_req, "in doubt but not held paused", rep->err);
    } else {
        check(!rep->in_doubt && !g->pause_req, "a failed sender did not resume", rep->err);
        check(rep->err[0] != 0, "a failed sender without a message", NULL);
        check(domain_audit(d) == 0, "domain_audit after a failure", rep->err);
        check(migrate_digest(d, NULL) == before, "the guest changed", rep->err);
    }
    free(rep);
    guest_destroy(g);
    domain_destroy(d);
    all_free(tx_machine, "sender");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!rx_machine && (machine_create(&rx_machine, 256 * MiB, FRAME_POLICY_FRAGPOOL) < 0 ||
                        machine_create(&tx_machine, 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0))
        abort();
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_sender(data + 1, size - 1);
    else
        fuzz_receiver(data + 1, size - 1, data[0] & WIRE_MULTI);
    return 0;
}

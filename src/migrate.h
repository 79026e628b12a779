/*
 * migrate.h - live migration over a channel (chan.h: TLS 1.3 or, when asked
 * for, plain TCP) with pre-copy rounds.
 *
 * Wire: a connection carries frames (struct mig_frame, 24 bytes, little-
 * endian, then wire_len bytes).  DATA frames carry the migration stream of
 * stream.h (headers, HV_CONFIG, HV_LAYOUT, STATIC_DATA_END, PAGE_DATA
 * records in rounds, X86_TSC_INFO, HVM_PARAMS, HVM_CONTEXT, END) cut at
 * arbitrary byte boundaries, each frame optionally zstd-compressed and
 * always checksummed (XXH3-64 of the raw bytes, or with MIG_F_SEGS of the
 * raw bytes with each page's hash in its place).  Compression is a property
 * of the transport: the stream inside stays plain Xen layout and is read by
 * stream_restore unchanged.  The frames travel over a channel (chan.h):
 * TLS 1.3 with both peers authenticated before the first frame, or plain
 * TCP when the caller asked for it; the checksums catch corruption, TLS
 * catches tampering, and the receiver checks the memory digest always.
 *
 *   sender                                   receiver
 *   HELLO {version, flags}          ->
 *                                   <-       READY {version}
 *   DATA ... (round 0: every RAM page; rounds 1..n: pages dirtied meanwhile,
 *            guest running, XTAB for those no longer RAM)
 *   SYNC (MIG_HELLO_SYNC)           ->
 *                                   <-       SYNCED (all of the above is in)
 *   DATA ... (final round: guest paused; tail with the PoD entries at
 *            pause; END)
 *   DONE {digest of every page at pause,  ->  stream_restore has seen END
 *         kept as pages were sent}
 *                                   <-       RESULT {status, digest, leaves}
 *   COMMIT (or ABORT)               ->       the receiver owns the guest
 *                                            (or destroys it)
 *                                   <-       RESUMED
 *   the sender destroys its copy
 *
 * Sender (migrate_send): log-dirty on; round 0 sends every RAM page; each
 * round measures the link rate (wire bytes / round time) and the dirty rate
 * (pages harvested / time since the last harvest).  Pre-copy ends, and the
 * rule is reported, when (1) the dirty set left fits the downtime target at
 * the measured link rate, (2) the maximum number of rounds is reached, or
 * (3) the dirty rate stopped falling: the dirty set left is not at least 10%
 * smaller than the previous round's.  Then the guest is paused, the last
 * dirty pages and the vCPU/workload state (HVM_CONTEXT TLVs HVCTX_VCPU and
 * HVCTX_WORKLOAD) go out, and the sender waits for RESULT.
 *
 * Pipeline: the migration thread reads pages (zero pages travel as XALLOC,
 * without data; a page in a hole of the machine memfd is zero without being
 * read), copies them into 1 MiB frame buffers, checksums and compresses each
 * frame; a writer thread sends sealed frames, so page reading, zero
 * detection, checksums and compression overlap socket writes.  Pages in a
 * hole of the memfd are found without reading them (machine_holes: mincore
 * per 2M chunk, or SEEK_DATA/SEEK_HOLE on hosts with swap), so only
 * resident pages are zero-checked.  The receiver reads
 * large uncompressed DATA frames straight into the buffers stream_restore
 * reads into and checks their checksum as the last byte arrives (a bad
 * frame still fails the migration before END is acted on).
 *
 * Memory digest (stream.h): the sum of one term per RAM page, kept by
 * both sides as pages go and land, so that nothing reads all of memory
 * while the guest is paused; only the final round's pages change it at
 * the pause.  It is as strong as a digest read at the pause against a
 * page that is wrong, missing or stale on the receiver (whatever the
 * wire or the restore did); it does not see a page the guest wrote
 * without the dirty log noticing (sent once, never again): audit_digest
 * (tests) reads all of memory at the pause and checks the kept sum.
 *
 * Nothing lost: any failure before RESULT (connection loss, timeout, a
 * receiver error, a digest mismatch, hostile bytes), a RESULT that is not
 * ok, or a COMMIT the sender could not write whole, leaves the sender with
 * log-dirty off, its superpages merged back and its guest running; the
 * receiver destroys its partial domain (stream_restore does on error), and
 * so does a receiver that gets ABORT after its RESULT.
 *
 * Never two copies, never none: the last messages decide who owns the
 * guest, and a side that cannot know keeps its copy paused "in doubt"
 * (-EINPROGRESS, in_doubt set) rather than run it or destroy it:
 *   - the receiver runs the guest only after COMMIT arrived; it then sends
 *     RESUMED (a RESUMED that cannot be sent does not change that);
 *   - the sender resumes its copy only if COMMIT never left whole (the
 *     receiver cannot have it), and destroys it only after RESUMED;
 *   - a sender whose COMMIT left but who gets no RESUMED (connection lost,
 *     timeout, anything else) keeps its copy paused in doubt: the receiver
 *     may be running the guest, or may hold it in doubt itself;
 *   - a receiver that sent RESULT {ok} and then gets neither COMMIT nor
 *     ABORT (connection lost, timeout, a broken frame) keeps its restored
 *     copy paused in doubt: the sender may hold its copy in doubt, or may
 *     run it again (its COMMIT never left).
 * Two copies in doubt are the same guest at the same instant (the digests
 * matched); whoever ends the doubt (an operator; see hugevm migrate and
 * receive) runs one: the receiver's if it is not running anywhere.  No
 * protocol removes the window (the last message can always be lost); this
 * one only makes it visible and keeps the guest in it.
 *
 * Post-copy (migrate_opts.postcopy, postcopy_auto; postcopy.h has the
 * receiving side): HELLO carries MIG_HELLO_POSTCOPY and READY must echo
 * it.  At the switch the final round leaves out the data of the RAM pages
 * dirtied since their last copy (above the system area, held by the
 * receiver); END is followed by PC_PENDING (the bitmap of those pfns, in
 * pieces; an empty last piece when nothing is pending), then DONE, whose
 * digest is of what was sent (each page copied once, then hashed and
 * sent, so that a page left pending has the term of the bytes the
 * receiver holds).  RESULT, COMMIT and RESUMED are as above; then
 *   sender -> PC_PAGES (answers first, background at most MIG_PC_WINDOW
 *             frames ahead of what the receiver says it landed) ... PC_END
 *             {digest of every page at the pause}
 *             With parallel channels, answers (urgent PC_PAGES) go on
 *             channel 1, the preempt channel, where no background page
 *             queued on channel 0 delays them; the receiver keeps channel
 *             1 after DONE for that (migrate_recv_result.pc_preempt) and
 *             waits for answers still on their way there after PC_END.
 *             A resumed post-copy runs on its one new connection.
 *   receiver -> PC_REQ {pfns, frames landed} ... PC_DONE {mig_result}
 * The commit window for post-copy: COMMIT still moves the guest (the
 * receiver runs it from then on, the sender never again), but the sender
 * does not destroy its copy at RESUMED: it keeps it, paused, with every
 * page, until PC_DONE {ok} says the receiver holds them all and the
 * digests agree; only then is the migration done (rc 0).  A connection
 * that fails after COMMIT is replaced (pc_reconnect, for pc_recover_ms):
 * HELLO {MIG_HELLO_PC_RESUME} -> READY, PC_RESUME {id} -> the receiver's
 * PC_PENDING (what it still misses, naming the id), and the exchange
 * above goes on.  Anything else after COMMIT (no connection back in time,
 * a bad frame, PC_DONE with an error) ends with rc < 0 and in_doubt set:
 * the receiver's guest cannot go on (pages missing) unless its sender
 * comes back, and the sender's paused copy is the guest as it was at the
 * switch.  migrate_opts.pc_doubt hands out what a saved copy of it needs
 * to be that sender later (migrate_postcopy_serve, in another process,
 * while the receiver still waits): until the receiver's PC_DONE, or its
 * word that it gave the guest up, that copy must be kept and must not
 * run.  Before COMMIT
 * everything is as in pre-copy: a failure leaves the sender's guest
 * running.
 *
 * Parallel channels (migrate_opts.channels, MIG_HELLO_CHANNELS): the
 * frames from the first one after the handshake to DONE are dealt to the
 * channels in turn, frame k on channel k mod N, whatever its type; the
 * receiver reads them back in that order (a reader thread per extra
 * channel checks and decompresses its frames ahead), so the stream, its
 * rounds and PC_PENDING are exactly what one channel carries.  After
 * DONE everything (RESULT, COMMIT, RESUMED, post-copy) is on the first
 * channel; the others carry nothing more and are closed at the end.  An
 * ABORT before then goes on every channel, so the receiver finds it
 * wherever it waits.  A channel that fails fails the migration, as any
 * connection loss does: nothing is lost.  Each channel is a connection of
 * its own, authenticated and encrypted like the first (TLS: one stream
 * per channel, so encryption runs on as many cores).
 *
 * Memory map changes during migration: RAM populated or removed while
 * rounds run (balloon, populate, PoD demand populate and zero reclaim) is
 * marked dirty (dirty.h), so the next round translates it under the current
 * p2m and sends it: data or XALLOC when it is RAM, XTAB when it is a hole
 * or a PoD entry now; the receiver, restoring in live mode, frees a pfn
 * sent as XTAB after it was populated and populates a former hole
 * (save.h).  PoD entries and the PoD target and cache travel in the tail
 * (HVM_CONTEXT, taken at pause): the receiver rebuilds exactly the entries
 * left at pause.  Changes made on behalf of the guest must go through
 * guest_call, which stops them at the pause with the vCPUs.
 * Pages are read outside d->lock, so while migrate_send runs the domain is
 * in quarantine (domain.h): a frame it frees is parked, not handed to
 * another domain, until the sender has read every batch translated before
 * (it releases them between batches and at the end, whatever the outcome):
 * no other domain's bytes ever go on the wire.
 */
#ifndef HUGEVM_MIGRATE_H
#define HUGEVM_MIGRATE_H

#include <pthread.h>

#include "common.h"
#include "dirty.h"
#include "guest.h"
#include "guest_state.h"
#include "save.h"
#include "vcpu.h"
#include "workload.h"

/* A run of pfns left for after a post-copy switch (postcopy.h). */
struct postcopy_run {
    gfn_t pfn;
    uint64_t nr;
};

#define MIGRATE_MAX_VCPUS GUEST_MAX_VCPUS
#define MIGRATE_MAX_ROUNDS 60     /* iterative rounds after the full copy */
#define MIGRATE_DEFAULT_ROUNDS 10
#define MIGRATE_DEFAULT_DOWNTIME_MS 20.0
#define MIGRATE_DEFAULT_TIMEOUT_MS 30000
#define MIGRATE_DEFAULT_HANDSHAKE_MS 10000
#define MIGRATE_DEFAULT_TOTAL_MS (3600ULL * 1000)

/* ---- wire ------------------------------------------------------------------ */

#define MIG_MAGIC 0x464d5648u /* "HVMF" */
/* 2: the memory map may change during the migration (XTAB after data, PoD
 * entries from the tail); a version-1 receiver would refuse such a stream
 * halfway, so the handshake refuses it up front. */
/* 3: RESUMED, the receiver's last word; a version-2 sender would destroy
 * its copy without waiting for it. */
/* 4: the memory digest is the sum of per-page terms (stream.h), kept as
 * pages are sent and received; a version-3 peer's would never match. */
#define MIG_VERSION 4u
#define MIG_FRAME_RAW (1u << 20)  /* raw bytes per DATA frame, at most */
#define MIG_CTRL_MAX 4096u        /* control frame bodies, at most */

enum mig_frame_type {
    MIG_HELLO = 1,
    MIG_READY = 2,
    MIG_DATA = 3,
    MIG_DONE = 4,
    MIG_RESULT = 5,
    MIG_COMMIT = 6,
    MIG_ABORT = 7, /* body: a reason string */
    MIG_RESUMED = 8, /* receiver -> sender after COMMIT: the guest is its now */
    /* post-copy (postcopy.h): */
    MIG_PC_PENDING = 9, /* sender -> receiver after END: runs still to come */
    MIG_PC_PAGES = 10,  /* sender -> receiver after RESUMED: pages (struct mig_pc_pages) */
    MIG_PC_REQ = 11,    /* receiver -> sender: pfns a vCPU waits for */
    MIG_PC_END = 12,    /* sender -> receiver: every pending page sent (struct mig_pc_end) */
    MIG_PC_DONE = 13,   /* receiver -> sender: every page here (struct mig_result) */
    MIG_PC_RESUME = 14, /* sender -> receiver on a new connection: u64 id */
    MIG_SYNC = 15,      /* sender -> receiver in the stream: u64; answer when all before is in */
    MIG_SYNCED = 16,    /* receiver -> sender: the SYNC's u64 */
};
#define MIG_FRAME_TYPES 16
#define MIG_F_ZSTD 0x1u /* payload is one zstd frame of raw_len bytes */
/* DATA only, never with MIG_F_ZSTD, only from a sender whose HELLO offered
 * MIG_HELLO_SEGS and whose receiver echoed it: pages hashed once.  The
 * payload (wire_len = raw_len + 4 + 4 n bytes) starts with a page table,
 * u32 n (1..raw_len / 4096), then n u32 offsets into the raw bytes,
 * ascending, each at least 4096 after the one before, the last at most
 * raw_len - 4096; the raw_len stream bytes follow.  Each [off, off + 4096)
 * is a page of the stream hashed alone (XXH3-64); the checksum is the
 * XXH3-64 of the raw bytes with every such page replaced by its hash
 * (8 bytes, little-endian), then the table (u32 n, the offsets) as sent.
 * A bit flipped in a page changes its hash, one elsewhere in the raw bytes
 * or in the table changes what is hashed: the frame is refused either way,
 * as a whole-frame checksum would be.  The receiver keeps the pages'
 * hashes for the memory digest (stream.h), so each page's bytes are
 * hashed once on each side, not twice (frame, then digest). */
#define MIG_F_SEGS 0x2u
#define MIG_SEGS_MAX (MIG_FRAME_RAW / 4096u)

struct mig_frame {
    uint32_t magic;
    uint16_t type;
    uint16_t flags;
    uint32_t raw_len;  /* payload bytes after decompression */
    uint32_t wire_len; /* payload bytes that follow */
    uint64_t checksum; /* XXH3-64 of the raw payload (MIG_F_SEGS: see there) */
};
_Static_assert(sizeof(struct mig_frame) == 24, "migration frame header");

/* The sender sends a digest.  Informative only: the receiver always
 * computes its own and refuses a DONE without one (DONE.verify != 1). */
#define MIG_HELLO_VERIFY 0x1u
/* The sender may switch to post-copy: after END come MIG_PC_PENDING frames
 * (none pending: a plain pre-copy end).  A receiver that can receive a
 * post-copy migration says so by echoing the flag in READY. */
#define MIG_HELLO_POSTCOPY 0x2u
/* A new connection resuming a post-copy whose connection failed: after
 * READY (echoing it) comes MIG_PC_RESUME {u64 id}, and the receiver
 * answers with what it still misses (MIG_PC_PENDING, receiver -> sender),
 * or ABORT. */
#define MIG_HELLO_PC_RESUME 0x4u
/* Parallel channels: the HELLO body goes on with struct mig_hello_channels
 * (24 bytes in all).  On the first connection (index 0) it offers
 * `channels` connections in all; a receiver that takes them echoes the
 * flag in READY, and the sender then opens the others one by one, each
 * with a HELLO of its own naming its index and the same token, answered
 * by a READY on it.  Without the echo the migration runs on one. */
#define MIG_HELLO_CHANNELS 0x8u
/* The receiver answers SYNC: before it pauses the guest the sender sends
 * SYNC after the last pre-copy round and waits for SYNCED, which the
 * receiver sends once it has taken in every byte before it, so the pause
 * does not wait for the bytes still in the sockets' buffers (megabytes
 * over a fast link: milliseconds of downtime).  A receiver that takes it
 * echoes the flag in READY. */
#define MIG_HELLO_SYNC 0x10u
/* The sender may send DATA frames with page tables (MIG_F_SEGS); a
 * receiver that reads them echoes the flag in READY.  Without the echo
 * every frame is checksummed whole (an older receiver). */
#define MIG_HELLO_SEGS 0x20u
#define MIG_MAX_CHANNELS 8u
struct mig_hello {
    uint32_t version;
    uint32_t flags;
};
_Static_assert(sizeof(struct mig_hello) == 8, "HELLO");
struct mig_hello_channels {
    uint32_t channels; /* 2..MIG_MAX_CHANNELS */
    uint32_t index;    /* 0: the first connection */
    uint64_t token;    /* the migration's (random): a joining connection names it */
};
_Static_assert(sizeof(struct mig_hello_channels) == 16, "HELLO channels");

struct mig_done {
    uint64_t digest;
    uint64_t pages;
    uint32_t verify;
    uint32_t reserved;
};
_Static_assert(sizeof(struct mig_done) == 24, "DONE");

struct mig_result {
    int32_t status;    /* 0 or -errno */
    uint32_t verified; /* digest computed */
    uint64_t digest;
    uint64_t pages;
    uint64_t pages_1g, pages_2m, pages_4k;
    char msg[216];     /* NUL-terminated reason when status < 0 */
};
_Static_assert(sizeof(struct mig_result) == 264, "RESULT");

/* Post-copy.  PC_PENDING: a piece of the bitmap of pending pfns, nr_words
 * u64 words from pfn first_pfn (a multiple of 64) on: bit b of word w is
 * pfn first_pfn + 64 w + b.  Pieces come in ascending order, `last` set on
 * the final one (which may be empty). */
struct mig_pc_pending {
    uint32_t nr_words;
    uint32_t last;
    uint64_t first_pfn;
    uint64_t id;       /* the post-copy migration's id (the sender's choice) */
};
_Static_assert(sizeof(struct mig_pc_pending) == 24, "PC_PENDING");
#define MIG_PC_PENDING_MAX_WORDS ((MIG_FRAME_RAW - 24) / 8)
/* PC_PAGES: count pfns (u64), then count pages of data.  urgent: they
 * answer a request (PC_REQ). */
struct mig_pc_pages {
    uint32_t count;
    uint32_t urgent;
};
_Static_assert(sizeof(struct mig_pc_pages) == 8, "PC_PAGES");
#define MIG_PC_PAGES_MAX 64u /* pages per PC_PAGES frame */
/* PC_REQ: count pfns (u64) a vCPU waits for follow; landed counts the
 * background PC_PAGES frames the receiver has landed so far.  The sender
 * keeps at most MIG_PC_WINDOW background frames unlanded, so an answer
 * never waits behind more than that (the socket buffers would hold
 * megabytes of background otherwise). */
struct mig_pc_req {
    uint32_t count;
    uint32_t reserved;
    uint64_t landed;
};
_Static_assert(sizeof(struct mig_pc_req) == 16, "PC_REQ");
#define MIG_PC_REQ_MAX 64u     /* pfns per PC_REQ frame */
#define MIG_PC_BG_PAGES 32u    /* pages per background PC_PAGES frame */
#define MIG_PC_WINDOW 2u       /* background frames on their way, at most */
struct mig_pc_end {
    uint64_t digest; /* of every page at the pause, now that all are sent */
    uint64_t pages;
    uint64_t pushed, urgent; /* pages sent in the background, as answers */
};
_Static_assert(sizeof(struct mig_pc_end) == 32, "PC_END");

/* An ABORT's reason (untrusted: len bytes at buf, cap its size) made a
 * printable string in place: cut at cap - 1, anything not printable
 * ASCII as '?'.  Returns buf. */
char *migrate_reason(void *buf, size_t len, size_t cap);

/* Frame headers (migrate.c; postcopy.c writes its frames with it). */
void migrate_frame_header(struct mig_frame *h, uint16_t type, uint16_t flags, uint32_t raw_len,
                          uint32_t wire_len, uint64_t sum);

/* The HVM_CONTEXT TLVs carrying the guest (struct mig_vcpu_tlv, struct
 * mig_workload_tlv) are guest_state.h's: it encodes and decodes them for
 * both migration and save/restore. */
_Static_assert(GUEST_STATE_MAX_VCPUS == MIGRATE_MAX_VCPUS, "one vCPU limit");

/* ---- a running guest --------------------------------------------------------- */

/* The running guest is guest.h's (struct guest: its vCPUs, pause/resume,
 * guest_call); migration pauses it for the final round. */

/* Digest of guest memory, read from memory: the sum of
 * stream_digest_term(gfn, XXH3-64(page)) over every RAM gfn (stream.h);
 * leaf sizes do not matter.  *pages (may be NULL) gets the RAM page count.
 * The guest must be paused.  A migration does not call it (both sides keep
 * the same sum term by term as pages go and come) except to audit that
 * (migrate_opts.audit_digest, migrate_recv_opts.audit_digest). */
uint64_t migrate_digest(struct domain *d, uint64_t *pages);
/* The same digest, reading only the pfns set in data_bits (nr bits; pfns
 * at or beyond nr are read): the caller knows the others are zero, as a
 * restore with track_data does.  Equal to migrate_digest when it is right. */
uint64_t migrate_digest_known(struct domain *d, const uint64_t *data_bits, gfn_t nr,
                              uint64_t *pages);

/* ---- sender ------------------------------------------------------------------ */

#define MIGRATE_END_FIELDS(X)                                                  \
    X(none, "pre-copy did not finish")                                         \
    X(downtime, "the dirty set left fits the downtime target")                 \
    X(max_rounds, "the maximum number of rounds was reached")                  \
    X(not_falling, "the dirty rate stopped falling")                         \
    X(postcopy, "the pre-copy rounds asked for before post-copy are done")

enum migrate_end {
#define X(name, desc) MIGRATE_END_##name,
    MIGRATE_END_FIELDS(X)
#undef X
};
const char *migrate_end_name(enum migrate_end e);
const char *migrate_end_desc(enum migrate_end e);

struct migrate_round {
    unsigned index;          /* 0 = the full copy */
    bool paused;             /* the final round, guest paused */
    uint64_t pages_data, pages_zero;
    uint64_t pages_xtab;     /* pfns no longer RAM (ballooned, PoD again) */
    uint64_t stream_bytes;   /* stream bytes before compression */
    uint64_t wire_bytes;     /* bytes on the socket */
    uint64_t ns;
    double mb_per_s;         /* wire bytes / round time (the link rate) */
    double dirty_per_s;      /* pages dirtied per second while it ran */
    uint64_t remaining;      /* dirty pages left after it */
    double eta_s;            /* remaining / link rate */
};

/*
 * A post-copy sender's copy in doubt, finished later (hugevm migrate
 * --resume-postcopy): the paused guest is saved with this state (an
 * HVCTX_POSTCOPY TLV in its HVM_CONTEXT blob, migrate_pc_state_encode),
 * restored in a new process, and migrate_postcopy_serve connects to the
 * receiver, which still waits for its pages (its --postcopy-wait), names
 * the migration by id and sends what the receiver still misses.  The
 * receiver's list must lie within `pending` (a page that was never left
 * for later is the receiver's own, maybe written since: sending the old
 * one would go back in time); the digest at the switch checks that the
 * restored copy is the memory that was paused.
 */
struct migrate_pc_state {
    uint64_t id;             /* the migration's post-copy id (PC_PENDING, PC_RESUME) */
    uint64_t digest, pages;  /* migrate_digest of memory at the switch */
    gfn_t nr_gfns;           /* bits in pending */
    uint64_t *pending;       /* the pfns left for after the switch */
};

/* HVCTX_POSTCOPY's value: this, then nr_words bitmap words (little-endian)
 * from pfn 64 * first_word. */
struct hvctx_postcopy {
    uint64_t id, digest, pages;
    uint64_t first_word;
    uint32_t nr_words;
    uint32_t reserved;       /* 0 */
};
_Static_assert(sizeof(struct hvctx_postcopy) == 40, "hvctx post-copy");

struct migrate_opts {
    enum dirty_mode mode;
    double downtime_ms;      /* 0: MIGRATE_DEFAULT_DOWNTIME_MS */
    unsigned max_rounds;     /* iterative rounds; 0: MIGRATE_DEFAULT_ROUNDS */
    bool compress;
    int zstd_level;          /* 0: 1 */
    int timeout_ms;          /* socket and confirmation; 0: default */
    /* Fault injection: cut the connection (shutdown) after this many bytes
     * were written to the socket (0: never); with parallel channels, the
     * connection of channel fail_channel (0: the first). */
    uint64_t fail_after_bytes;
    unsigned fail_channel;
    /* Parallel channels: connections in all (0 or 1: ch only; at most
     * MIG_MAX_CHANNELS).  The others are opened with open_channel (each
     * connected to the same receiver and authenticated, like ch; NULL with
     * err[] when it cannot), after the receiver accepted them; they are
     * closed by migrate_send.  A receiver that takes one channel only gets
     * one (the report says so). */
    unsigned channels;
    struct chan *(*open_channel)(void *open_ctx, char *err, size_t len);
    void *open_ctx;
    /* The sender's rate on the wire, bytes per second over all channels,
     * post-copy included (0: as fast as it goes), like QEMU's
     * max-bandwidth: a migration that shares its link, or a test of one
     * that cannot converge. */
    double max_bandwidth;
    /* Fault injection: cut the connection (shutdown) right after COMMIT is
     * on the socket, before RESUMED is read. */
    bool cut_after_commit;
    /* Fault injection: cut the connection after RESULT {ok} instead of
     * sending COMMIT (it never leaves: this copy runs again, the receiver
     * is left in doubt). */
    bool cut_before_commit;
    /* Fault injection for the memory digest (tests): what goes on the wire
     * for page fault_gfn differs from what the sender's digest counts:
     * WRONG, one bit flipped each time it is sent with data; DROP, its
     * entry left out of the final round (the receiver keeps the copy of an
     * earlier round, if any); DUP, the bytes of its first data
     * copy sent again for it at the end of the final round (stale if the
     * guest wrote it since, harmless otherwise).  Frame checksums cover
     * the bytes as sent: only the digest can tell. */
    enum migrate_page_fault {
        MIGRATE_FAULT_NONE,
        MIGRATE_FAULT_WRONG,
        MIGRATE_FAULT_DROP,
        MIGRATE_FAULT_DUP,
    } fault_page;
    gfn_t fault_gfn;
    /* Audit (tests): at the pause, after the final round, also compute the
     * digest from all of memory (migrate_digest, which costs the downtime
     * it reads) and fail the migration if the one kept page by page
     * differs: a page written but never logged dirty, a translation that
     * went stale, a term not replaced. */
    bool audit_digest;
    /* Every DATA frame checksummed whole, as before MIG_HELLO_SEGS (tests;
     * benchmarks: the two schemes side by side). */
    bool whole_frame_sums;
    /* Fault injection: send these bytes as DATA right after HELLO (tests). */
    const void *inject;
    size_t inject_len;
    /* Post-copy (postcopy.h): switch after precopy_rounds rounds (the
     * full copy included; 0: 1), or with postcopy_auto only where pre-copy
     * would end by max_rounds or not_falling (a dirty set that does not fit
     * the downtime target).  The receiver must accept post-copy. */
    bool postcopy, postcopy_auto;
    unsigned precopy_rounds;
    /* Fault injection (tests): cut the connection after this many post-copy
     * pages were sent (0: never; once). */
    uint64_t pc_cut_after_pages;
    /* Post-copy: a new connection to the receiver when the one in use
     * failed after the switch (NULL: none, the failure is final), tried
     * until pc_recover_ms (0: 60 s) have passed; err[] says why it could
     * not.  It is closed by migrate_send. */
    struct chan *(*pc_reconnect)(void *pc_ctx, char *err, size_t len);
    void *pc_ctx;
    int pc_recover_ms;
    /* Post-copy in doubt (after COMMIT: RESUMED did not come, or post-copy
     * failed for good): called before migrate_send returns, g paused at
     * the switch, with what a saved copy of g needs to finish the
     * migration later (migrate_postcopy_serve); st lives for the call
     * only.  May be NULL. */
    void (*pc_doubt)(void *pc_doubt_ctx, const struct migrate_pc_state *st);
    void *pc_doubt_ctx;
    void (*on_round)(void *ctx, const struct migrate_round *r);
    /* The guest is paused and its memory final (tests take checksums). */
    void (*on_paused)(void *ctx, struct domain *d);
    void *ctx;
};

#define MIGRATE_STAT_FIELDS(X)                                                 \
    X(pages_data, "pages sent with data")                                      \
    X(pages_zero, "zero pages sent without data")                              \
    X(pages_xtab, "pfns sent as holes (RAM removed during the migration)")     \
    X(stream_bytes, "stream bytes before compression")                         \
    X(wire_bytes, "bytes written to the socket")                              \
    X(frames, "frames sent")                                                   \
    X(pages_ram, "RAM pages of the guest")                                     \
    X(pages_parked, "frames the guest freed during the migration, parked until read") \
    X(guest_accesses, "guest accesses made during the migration")

struct migrate_stats {
#define X(name, desc) uint64_t name;
    MIGRATE_STAT_FIELDS(X)
#undef X
};

struct migrate_leaves {
    uint64_t p1g, p2m, p4k;
};

struct migrate_report {
    int rc;
    char err[STREAM_ERR_LEN];
    enum migrate_end end;
    unsigned nr_rounds;
    struct migrate_round rounds[MIGRATE_MAX_ROUNDS + 2];
    double total_s, downtime_s;
    double digest_s;         /* spent at the pause on the digest (the audit, when on) */
    struct migrate_leaves before, logdirty, receiver, after_abort;
    bool verified;
    uint64_t digest_sender, digest_receiver;
    const char *dirty_source; /* where the guest's writes were logged */
    /* COMMIT left, RESUMED did not arrive: rc -EINPROGRESS, the guest is
     * kept paused (not resumed, not destroyed); the receiver may run it. */
    bool in_doubt;
    struct migrate_stats st;
    /* waiting for the receiver to take in what was on its way before the
     * pause (SYNC; 0 when the receiver does not answer SYNC) */
    double catch_up_s;
    /* parallel channels: how many ran, why not as many as asked, and the
     * bytes each carried */
    unsigned channels;
    char channels_why[120];
    uint64_t channel_bytes[MIG_MAX_CHANNELS];
    /* post-copy: whether it ran, why, and what it sent after the switch */
    bool postcopy;
    const char *postcopy_why;
    struct migrate_pc_stats {
        uint64_t pending;  /* pages left for after the switch */
        uint64_t pushed;   /* sent in the background */
        uint64_t urgent;   /* sent as answers to requests */
        uint64_t requests; /* pfns requested (some were on their way already) */
        uint64_t wire_bytes;
        double seconds;    /* RESUMED to PC_DONE */
        uint64_t reconnects;         /* connections that resumed it */
        uint64_t reconnect_attempts;
    } pc;
};

struct chan;

/*
 * Migrate g's domain over the connected channel ch (authenticated already,
 * when it is TLS).  The runner may be
 * running (live) or not.  0: the receiver confirmed, got COMMIT and sent
 * RESUMED; g is paused and log-dirty is off: the caller destroys the
 * sender's copy.  -EINPROGRESS with rep->in_doubt: COMMIT left but RESUMED
 * did not come; g is paused, log-dirty off: the caller must neither resume
 * nor destroy it before it knows whether the receiver runs the guest.
 * Other < 0: rep->err says why; log-dirty is off, superpages are merged
 * back (rep->after_abort) and g runs again if it was running.  ch is not
 * closed.
 */
int migrate_send(struct guest *g, struct chan *ch, const struct migrate_opts *o,
                 struct migrate_report *rep) HV_MUST_CHECK;

/* Add st as an HVCTX_POSTCOPY TLV to b: 0 or -ENOMEM. */
int migrate_pc_state_encode(const struct migrate_pc_state *st, struct hvctx_buf *b) HV_MUST_CHECK;
/* Find and check the HVCTX_POSTCOPY TLV in a restored HVM_CONTEXT TLV area
 * (restore_result.context) against d, the domain restored with it: every
 * pending pfn must be RAM of d above the system area (d NULL: a dry run's
 * look, nothing checked against a domain).  1 and *st (free its
 * pending with migrate_pc_state_free), 0 when there is none, -EBADMSG or
 * -ENOMEM with err[]. */
int migrate_pc_state_decode(const void *area, size_t len, struct domain *d,
                            struct migrate_pc_state *st, char *err, size_t errlen) HV_MUST_CHECK;
void migrate_pc_state_free(struct migrate_pc_state *st);
/* The pages st->pending names. */
uint64_t migrate_pc_state_pending(const struct migrate_pc_state *st);
/*
 * Finish a post-copy migration from d, a restored copy of its sender's
 * paused guest (nothing runs on it), over ch (connected to the receiver,
 * authenticated like the migration's): PC_RESUME {st->id}, the receiver's
 * list of what it misses, then the pages and PC_END as migrate_send's
 * post-copy does, o->pc_reconnect replacing a connection that fails (o's
 * timeout_ms, max_bandwidth and pc_* fields count; the rest is ignored).
 * d's digest must be st's first (-EBADMSG: not the memory at the switch).
 * 0: PC_DONE came with the same digest, the receiver holds every page: d
 * may be destroyed.  < 0: rep->err says why; ch is not closed.
 */
int migrate_postcopy_serve(struct domain *d, struct chan *ch, const struct migrate_pc_state *st,
                           const struct migrate_opts *o, struct migrate_report *rep) HV_MUST_CHECK;

/* ---- receiver ---------------------------------------------------------------- */

/*
 * Receiver deadlines, so that a slow or silent peer cannot hold it (each is
 * -ETIMEDOUT, and the error says which one passed):
 *   - handshake_ms: the HELLO frame, whole, from the start of the call;
 *   - timeout_ms: every later frame, whole, from when the receiver starts
 *     waiting for it (a frame carries at most 1 MiB of a round, so a round
 *     is a sequence of frames each on time), RESULT to COMMIT included; it
 *     is also the socket's send timeout;
 *   - total_ms: the whole migration, HELLO to COMMIT.
 * Bytes that trickle in do not extend any of them.
 *
 * The handshake hook: a peer has "passed the handshake" when its HELLO was
 * a well-formed frame of this protocol version and READY went back.  That
 * is the one place where the receiver starts treating a connection as a
 * sender rather than a stranger: res->handshake_passed is set and
 * on_handshake(hctx) is called (hugevm receive counts such peers against
 * --attempts and from then on turns other connections away).  A transport
 * that authenticates its peer (TLS) must have done so by then: only an
 * authenticated peer can pass.
 */
struct migrate_recv_opts {
    int timeout_ms;          /* 0: default */
    int handshake_ms;        /* 0: MIGRATE_DEFAULT_HANDSHAKE_MS */
    uint64_t total_ms;       /* 0: MIGRATE_DEFAULT_TOTAL_MS */
    void (*on_handshake)(void *hctx); /* may be NULL */
    void *hctx;
    /* Fault injection: after RESULT {ok}, cut the connection (shutdown)
     * instead of reading COMMIT (a COMMIT lost on the way). */
    bool cut_before_commit;
    /* Fault injection: after COMMIT, cut the connection instead of sending
     * RESUMED (a RESUMED lost on the way). */
    bool cut_before_resumed;
    /* Audit (tests): at END also compute the digest from the restored
     * memory (migrate_digest_known) and fail if the one kept page by page
     * as pages landed differs. */
    bool audit_digest;
    /* Refuse a guest that would resume on another backend than this one
     * (the migration fails before RESULT: the sender keeps its guest);
     * unset: the guest resumes on the backend it ran on (soft vCPUs on
     * soft, kvm guests on kvm), except native guests, refused unless asked
     * for by name (their code would run as this process's own). */
    bool backend_set;
    enum guest_backend backend;
    /* Parallel channels: the next connection to this receiver,
     * authenticated like the first, by deadline (hv_now_ns clock), or NULL
     * with err[] (a stranger in its place is the callback's to turn
     * away; migrate_receive refuses, with ABORT, one that passes but names
     * another migration).  NULL callback: one channel only. */
    struct chan *(*join)(void *jctx, uint64_t deadline_ns, char *err, size_t len);
    void *jctx;
    /* Accept a post-copy migration: the guest then comes back with
     * res->postcopy set and the pending runs, and the caller must arm
     * postcopy_rx_start on the same channel before it starts the guest. */
    bool postcopy_ok;
    /* Given to the rebuilt workloads (the sender's callback stays there). */
    void (*on_write)(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val);
    void *ctx;
};

struct migrate_recv_result {
    struct guest *g; /* the migrated guest (not started); NULL on error */
    struct restore_result rr;
    bool verified;
    uint64_t digest;
    uint64_t wire_bytes, frames;
    unsigned channels;       /* connections the migration came over */
    double seconds;
    /* RESULT {ok} sent, then neither COMMIT nor ABORT: rc -EINPROGRESS and
     * g holds the restored guest, paused (not started): the sender may run
     * it again or hold it in doubt too. */
    bool in_doubt;
    bool resumed_unsent;     /* committed, but RESUMED could not be sent */
    bool handshake_passed;   /* see migrate_recv_opts: the peer is a sender */
    /* post-copy: pages the sender sends after RESUMED (postcopy.h) */
    bool postcopy;
    struct postcopy_run *pc_runs;
    size_t pc_nruns;
    uint64_t pc_pages;
    uint64_t pc_id;          /* what a resuming connection names */
    /* the preempt channel: channel 1 of a migration over several, kept
     * for post-copy's answers to requests, which background pages on
     * channel 0 cannot delay (hand it to postcopy_rx_start; NULL: none) */
    struct chan *pc_preempt;
    char err[STREAM_ERR_LEN];
    void *scratch;           /* freed by migrate_recv_trim */
};

/*
 * Receive one migration on the connected channel ch onto machine m (the
 * peer authenticated already, when it is TLS).  The memory digest is
 * always checked: a DONE without the sender's digest, or with another one,
 * fails the migration.  0 and
 * res->g (not started: the caller runs it; destroy with
 * guest_destroy, then domain_destroy(res->g->d)) after COMMIT, with
 * RESUMED sent (resumed_unsent if that failed: the guest is still this
 * side's).  -EINPROGRESS with res->in_doubt and res->g (the same, paused):
 * the caller decides.  Other < 0 with res->err, and no domain left on m.
 */
int migrate_receive(struct machine *m, struct chan *ch, const struct migrate_recv_opts *o,
                    struct migrate_recv_result *res) HV_MUST_CHECK;
/* Free what res holds besides the guest. */
void migrate_recv_result_free(struct migrate_recv_result *res);
/* Free the restore's bookkeeping that migrate_receive kept so as not to
 * spend the downtime giving memory back (restore_opts.keep_state): call it
 * once the guest runs; migrate_recv_result_free does it otherwise. */
void migrate_recv_trim(struct migrate_recv_result *res);

/* A connection that comes to resume the post-copy migration `id` whose
 * connection failed (postcopy_rx_wait said -ENOTCONN): its HELLO must ask
 * for a resume and its PC_RESUME name id, within timeout_ms each (0: the
 * handshake default).  0: hand ch to postcopy_rx_resume.  Else -errno with
 * err (the peer got ABORT with the reason where it was one). */
int migrate_postcopy_accept(struct chan *ch, uint64_t id, int timeout_ms, char *err,
                            size_t errlen) HV_MUST_CHECK;
/* Turn away a connection that is not served (a receiver busy with another
 * migration): an ABORT frame with the reason, which a sender reports as
 * "the receiver aborted: REASON", written without blocking (best effort);
 * fd is not closed.  0 or -errno. */
int migrate_refuse(int fd, const char *reason) HV_MUST_CHECK;

#endif

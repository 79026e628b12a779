/*
 * fuzz_stream.c - libFuzzer target for the stream reader and restore.
 *
 * Every input is restored twice onto one small machine: as a dry run
 * (hugevm inspect) and for real (under Xen's 2025 rule when bit 3 of its
 * length is set), both checking an HV_CHECKSUM record.
 * Whatever the bytes, the restore must either succeed with a domain that
 * passes domain_audit, or fail with every frame back in the allocator
 * (frames_audit clean, nothing owned); and the dry run must give the
 * restore's verdict (one validator), unless the restore ran out of machine
 * memory or p2m tables first (-ENOMEM, -EDQUOT: a small machine), which a
 * dry run cannot know.  Any other outcome aborts, which libFuzzer reports as a
 * crash.
 *
 * Build: scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 */
#include <stdio.h>
#include <stdlib.h>

#include "guest.h"
#include "guest_state.h"
#include "migrate.h"
#include "save.h"

static struct machine *machine;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_stream: invariant broken: %s (%s)\n", what, hv_audit_last());
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!machine && machine_create(&machine, 256 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
        abort();
    struct stream_mem mem;
    struct stream_io io;
    struct restore_result rr;
    /* a pfn limit for streams without hugevm's configuration: 8 GiB */
    struct restore_opts dry = {.dry_run = true, .max_gfn = 2u << 20, .verify_checksum = true};
    stream_mem_source(&mem, &io, data, size);
    int dry_rc = stream_restore(machine, &io, &dry, &rr);
    if (dry_rc == 0)
        check(rr.d == NULL, "dry run built a domain");
    restore_result_free(&rr);

    /* about half of the inputs (valid streams are multiples of 8 bytes)
     * are restored under Xen's 2025 rule (for the bench's comparison):
     * the same verdict, its own allocation path */
    struct restore_opts real = {.max_gfn = 2u << 20, .verify_checksum = true,
                                .xen_2025_rule = (size >> 3) & 1};
    stream_mem_source(&mem, &io, data, size);
    int rc = stream_restore(machine, &io, &real, &rr);
    if (rc != dry_rc && rc != -ENOMEM && rc != -EDQUOT) {
        fprintf(stderr, "fuzz_stream: dry run %d, restore %d: %s\n", dry_rc, rc, rr.err);
        check(false, "the dry run and the restore disagree");
    }
    if (rc == 0 && rr.context) {
        static struct guest_prog_state ps;
        static struct guest_state gs;
        char err[256] = "";
        int p = guest_prog_decode(rr.context, rr.context_len, &ps, err, sizeof(err));
        check(p == 1 || p == 0 || (p == -EBADMSG && err[0]), "the program vCPU decoder");
        check(p != 1 || (ps.nr_vcpus > 0 && ps.nr_vcpus <= HVG_MAX_VCPUS),
              "program vCPUs out of range");
        err[0] = 0;
        int sv = guest_state_decode(rr.context, rr.context_len, &gs, err, sizeof(err));
        check(sv == 1 || sv == 0 || (sv == -EBADMSG && err[0]), "the soft vCPU decoder");
        struct migrate_pc_state pst;
        err[0] = 0;
        int pc = migrate_pc_state_decode(rr.context, rr.context_len, rr.d, &pst, err,
                                         sizeof(err));
        check(pc == 1 || pc == 0 || ((pc == -EBADMSG || pc == -ENOMEM) && err[0]),
              "the post-copy state decoder");
        check(pc == 1 ? pst.pending && pst.nr_gfns <= P2M_GFN_LIMIT : !pst.pending,
              "post-copy state out of range");
        migrate_pc_state_free(&pst);
        err[0] = 0;
        pc = migrate_pc_state_decode(rr.context, rr.context_len, NULL, &pst, err, sizeof(err));
        check(pc == 1 || pc == 0 || ((pc == -EBADMSG || pc == -ENOMEM) && err[0]),
              "the post-copy state decoder without a domain");
        migrate_pc_state_free(&pst);
    }
    if (rc == 0) {
        check(rr.d != NULL, "success without a domain");
        check(domain_audit(rr.d) == 0, "domain_audit after restore");
        domain_destroy(rr.d);
    } else {
        check(rr.d == NULL, "failure left a domain");
        check(rr.err[0] != 0, "failure without a message");
    }
    restore_result_free(&rr);
    struct frame_stats st;
    frames_get_stats(machine->frames, &st);
    check(st.free_frames == machine->nr_frames, "frames left allocated");
    return 0;
}

/*
 * cli.h - the table-driven command line.
 *
 * Each subcommand is one struct cmd in its own cmd_*.c file: a name, a
 * one-line summary, an option table and a run function.  commands.c lists
 * the commands; cli.c parses options and prints --help from the tables;
 * hugevm.c dispatches.
 */
#ifndef HUGEVM_CLI_H
#define HUGEVM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "chan.h"
#include "common.h"
#include "json.h"

/*
 * Numbers are parsed by one parser (cli_parse_number) for every kind, and
 * refused with the option's name and the reason: empty, not a number,
 * trailing junk, a sign, NaN, an infinity, overflow, or out of the
 * kind's bounds: OPT_U64 and OPT_SIZE any uint64_t; OPT_DBL any finite
 * value >= 0; OPT_FRAC 0..1; OPT_SECONDS 0..CLI_SECONDS_MAX and OPT_MSEC
 * the same in milliseconds, so that every duration, in milliseconds, fits
 * an int and, in nanoseconds, a uint64_t.
 * A command checks tighter bounds (a timeout > 0) itself.
 */
enum opt_kind {
    OPT_FLAG,    /* bool *, no argument */
    OPT_SIZE,    /* uint64_t *, "8G", "256M", "4096" */
    OPT_U64,     /* uint64_t *, decimal or 0x hex */
    OPT_DBL,     /* double *, finite */
    OPT_FRAC,    /* double *, a fraction 0..1 */
    OPT_SECONDS, /* double *, a duration in seconds, finite */
    OPT_MSEC,    /* uint64_t *, a duration in whole milliseconds */
    OPT_STR,     /* const char ** */
    OPT_FUNC,    /* int fn(void *dest, const char *arg): custom, may repeat */
};

/* 24 days: as milliseconds it still fits an int (net.h timeouts). */
#define CLI_SECONDS_MAX 2073600.0

struct opt {
    const char *name; /* without the leading "--" */
    enum opt_kind kind;
    void *dest;
    const char *arg;  /* placeholder shown in --help, e.g. "SIZE" */
    const char *help;
    int (*fn)(void *dest, const char *arg);
};

struct cli_workload_spec;

struct cmd {
    const char *name;
    const char *summary;
    const char *usage_extra; /* positional arguments, or NULL */
    /* Called with options already parsed into the dest pointers, and the
     * remaining positional arguments.  Returns the process exit status. */
    int (*run)(int argc, char **argv);
    struct opt *opts; /* terminated by {0}; read it through cli_opts() */
    /* The command's workload options (CLI_WORKLOAD_OPTS in opts), NULL
     * when it has none. */
    struct cli_workload_spec *workload;
    /* An option that, given, makes the command run no guest of its own
     * (migrate --resume-postcopy): --guest-mem is not checked against the
     * host then, and an option not in no_guest_allow (NULL-terminated
     * names) is refused rather than ignored.  NULL: none. */
    const char *no_guest_opt;
    const char *const *no_guest_allow;
};

/*
 * The workload options of the commands that run a guest (balloon, defrag,
 * migrate, run): --workload --vcpus --write-rate --wss --seed, and
 * --settle-ms where the guest runs around an operation.  One table
 * (CLI_WORKLOAD_OPTS, CLI_WORKLOAD_SETTLE_OPT) for all of them; what
 * differs per command is data in its struct cli_workload_spec: the
 * defaults, which workloads it runs, what --write-rate paces, and when
 * the guest runs.  The help texts name the command's defaults; they are
 * written from the spec when cli_opts() first reads the table, which is
 * also when the defaults are copied into `v` (before any option is
 * parsed).
 */
struct cli_workload {
    const char *workload; /* NULL: no guest runs (unless the command needs one) */
    uint64_t vcpus, write_rate, seed, settle_ms;
    double wss;
};
enum { CLI_WL_WORKLOAD, CLI_WL_VCPUS, CLI_WL_RATE, CLI_WL_WSS, CLI_WL_SEED, CLI_WL_SETTLE,
       CLI_WL_NR };
struct cli_workload_spec {
    struct cli_workload def; /* the command's defaults */
    const char *names;       /* the workloads --workload takes */
    /* What --write-rate paces: soft vCPUs under the guest runner pace
     * every access, `run`'s own soft loop and program guests the writer. */
    const char *rate_what;
    bool meanwhile;          /* the guest runs only with --workload */
    const char *seed_also;   /* what else --seed seeds ("": nothing) */
    const char *settle_when; /* --settle-ms: when the guest runs this long */
    struct cli_workload v;   /* the values parsed */
    bool ready;
    char help[CLI_WL_NR][192];
};
#define CLI_WORKLOAD_OPTS(s)                                                                  \
    {"workload", OPT_STR, &(s).v.workload, "NAME", (s).help[CLI_WL_WORKLOAD], NULL},           \
    {"vcpus", OPT_U64, &(s).v.vcpus, "N", (s).help[CLI_WL_VCPUS], NULL},                        \
    {"write-rate", OPT_U64, &(s).v.write_rate, "N", (s).help[CLI_WL_RATE], NULL},               \
    {"wss", OPT_FRAC, &(s).v.wss, "F", (s).help[CLI_WL_WSS], NULL},                             \
    {"seed", OPT_U64, &(s).v.seed, "N", (s).help[CLI_WL_SEED], NULL}
#define CLI_WORKLOAD_SETTLE_OPT(s)                                                            \
    {"settle-ms", OPT_MSEC, &(s).v.settle_ms, "MS", (s).help[CLI_WL_SETTLE], NULL}
/* c's option table, its workload options' defaults and help filled in. */
const struct opt *cli_opts(const struct cmd *c);

/* Every command, in the order of `hugevm --help` (commands.c). */
const struct cmd *const *cli_commands(size_t *n);
/* The command takes --overcommit (it has a --guest-mem option). */
bool cli_has_overcommit(const struct cmd *c);
#define CLI_OVERCOMMIT_HELP "allow a --guest-mem beyond the host's memory plus swap"
/* hugevm(1) (command NULL) or hugevm-COMMAND(1) as troff, and the bash
 * completion, generated from the tables (doc.c).  0, or 1 after an error. */
int cli_man(const char *command, FILE *out);
int cli_completion(FILE *out);

/* Parse argv (after the command name) with the command's option table.
 * Returns the number of positional arguments left in argv (compacted to the
 * front), or -1 after printing an error, or -2 if --help was printed. */
int cli_parse(const struct cmd *c, int argc, char **argv);
void cli_help(const struct cmd *c, FILE *out);
/* Parse arg for o (a number kind) into o->dest; on error, why into why
 * (e.g. "not a number", "NaN", "at most 2073600") and -EINVAL/-ERANGE,
 * o->dest untouched. */
int cli_parse_number(const struct opt *o, const char *arg, char *why, size_t whylen)
    HV_MUST_CHECK;
/* A duration checked by OPT_SECONDS, in milliseconds (rounded up, >= 1
 * when s > 0). */
int cli_ms(double s);

/* Shared helpers for the commands. */
int cli_error(const char *fmt, ...) HV_PRINTF(1, 2); /* prints, returns 1 */
struct domain;
struct machine;
/* Human table of a domain's leaf counts and populate statistics. */
void cli_print_domain(const struct domain *d, FILE *out);
void cli_json_domain(struct json *j, const char *key, const struct domain *d);
void cli_print_frames(const struct machine *m, FILE *out);
void cli_json_frames(struct json *j, const char *key, const struct machine *m);
void cli_print_thp(const struct machine *m, FILE *out);
/* Create a command's machine; on failure prints "CMD: cannot create ..."
 * and returns the error.  A resident machine (--resident) says on `info`
 * (NULL: nothing) how long committing it took. */
int cli_machine_create(const char *cmd, struct machine **m, uint64_t bytes, bool resident,
                       FILE *info) HV_MUST_CHECK;
/* A guest of `bytes` must fit in the host's MemTotal + SwapTotal unless
 * `overcommit`: 0, or -E2BIG after printing why.  cli_parse applies it to
 * every command with a --guest-mem option, which all take --overcommit. */
int cli_check_guest_mem(const char *cmd, uint64_t bytes, bool overcommit) HV_MUST_CHECK;
/* --fill FILE (fill.c): guest RAM is FILE's bytes, file offset = guest-physical
 * address below the MMIO hole (non-RAM gfns skip theirs), every RAM page the
 * file covers written, the rest left zero; a file larger than guest_mem or
 * unreadable is refused with its name (and offset).  0, or 1 after printing
 * "CMD: --fill FILE: why". */
int cli_fill_from_file(const char *cmd, struct domain *d, uint64_t guest_mem,
                       const char *path) HV_MUST_CHECK;
/* "resident": bool, "prefault_s": seconds spent committing it. */
void cli_json_machine_memory(struct json *j, const struct machine *m);
/* PoD state and statistics of a domain (cache, populated per order, sweeps,
 * reclaim, crash reason). */
void cli_print_pod(const struct domain *d, FILE *out);
void cli_json_pod(struct json *j, const char *key, const struct domain *d);

extern const struct cmd cmd_populate;
extern const struct cmd cmd_fragment;
extern const struct cmd cmd_info;
extern const struct cmd cmd_run;
extern const struct cmd cmd_balloon;
extern const struct cmd cmd_defrag;
extern const struct cmd cmd_save;
extern const struct cmd cmd_restore;
extern const struct cmd cmd_inspect;
extern const struct cmd cmd_migrate;
extern const struct cmd cmd_receive;
/* Live-migrate d (populated, no vCPUs of the caller running) with nv soft
 * vCPUs running wc, after `after` seconds, to ADDR:PORT `to`; prints the
 * report (migrate_guest.c; `hugevm migrate` and `hugevm run --migrate-to`).
 * Returns the exit status; on success the caller destroys its copy.  tls:
 * who the receiver must be (cli_tls_setup; NULL: plain, --insecure).  In
 * doubt (the receiver may run the guest, RESUMED did not come), the paused
 * guest is saved to doubt_file (NULL: hugevm-in-doubt-sender-PID.hvs; it
 * does not return before the guest is saved somewhere: cli_keep_in_doubt)
 * and the status is CLI_EXIT_IN_DOUBT.  When the migration fails outright
 * the guest keeps running here until run_s seconds after the call, then is
 * paused and, with fail_save, saved there (status 1 either way). */
#define CLI_EXIT_IN_DOUBT 3

/* Who may connect, for migrate, receive and run --migrate-to
 * (migrate_guest.c): a pre-shared key, certificates, or --insecure. */
struct cli_tls_opts {
    struct chan_creds creds;
    bool insecure;
};
/* --tls-authz NAME (repeatable); dest is a struct cli_tls_opts. */
int cli_parse_authz(void *dest, const char *arg);
#define CLI_TLS_OPTS(t)                                                                       \
    {"psk-file", OPT_STR, &(t).creds.psk_file, "FILE", "TLS 1.3 with this pre-shared key, "   \
     "the same file on both sides: one line IDENTITY:HEXKEY, at least 128 bits, not readable " \
     "by others (e.g. umask 077; echo \"hv:$(openssl rand -hex 32)\" > key)", NULL},        \
    {"tls-cert", OPT_STR, &(t).creds.cert_file, "FILE", "TLS 1.3 with X.509: this side's "    \
     "certificate chain (PEM)", NULL},                                                        \
    {"tls-key", OPT_STR, &(t).creds.key_file, "FILE", "its private key (PEM, not readable by " \
     "others)", NULL},                                                                        \
    {"tls-ca", OPT_STR, &(t).creds.ca_file, "FILE", "the CA the peer's certificate must "     \
     "chain to (PEM)", NULL},                                                                 \
    {"tls-authz", OPT_FUNC, &(t), "NAME", "accept only a peer whose certificate names NAME "  \
     "(subject CN or subjectAltName, exactly); repeatable (default: any the CA signed)",      \
     cli_parse_authz},                                                                        \
    {"insecure", OPT_FLAG, &(t).insecure, NULL, "plain TCP: no authentication, no "           \
     "encryption (both sides must say so)", NULL}
/* --channels N for migrate and run --migrate-to: the migration's
 * connections (migrate_opts.channels); 0 (not given): the default, from
 * the cores (cli_channels). */
#define CLI_CHANNELS_OPT(v)                                                                   \
    {"channels", OPT_U64, &(v), "N", "parallel connections to the receiver, frames dealt "    \
     "over them in turn, each with its own thread (and TLS stream) on both sides: 1.."      \
     "8 (default: the cores, at most 4)", NULL}
/* --max-bandwidth SIZE: the sender's rate on the wire, per second
 * (migrate_opts.max_bandwidth; 0: no limit). */
#define CLI_BANDWIDTH_OPT(v)                                                                  \
    {"max-bandwidth", OPT_SIZE, &(v), "SIZE", "at most SIZE bytes per second on the wire, "   \
     "all channels and post-copy included (e.g. 100M; default: no limit)", NULL}
/* --postcopy-recover S (migrate, run --migrate-to). */
#define CLI_POSTCOPY_RECOVER_OPT(v)                                                           \
    {"postcopy-recover", OPT_SECONDS, &(v), "S", "post-copy: when the connection fails after " \
     "the switch, connect again for up to S to finish it (default 60; 0: do not, save the "   \
     "paused copy in doubt at once for `hugevm migrate --resume-postcopy`)", NULL}
/* The channels for a --channels value v (0: the default): 0 and *out, or 1
 * after saying what is wrong. */
int cli_channels(const char *cmd, uint64_t v, unsigned *out);
/* The TLS context the options ask for: 0 and *out (NULL for --insecure,
 * after a warning on stderr), or 1 after printing what is missing or
 * wrong. */
int cli_tls_setup(const char *cmd, const struct cli_tls_opts *t, bool server,
                  struct chan_tls **out);
/* One phase of a running guest (before a migration, during log-dirty,
 * after it on the receiver or a restored guest): its own speed (accesses
 * made per second over the phase), KVM's 4K/2M/1G mapping counts and the
 * share of its memory the host maps with 2M pages at the phase's end
 * (report.c).  Issue 11's "phases" object. */
struct guest;
struct save_result;
struct cli_phase {
    bool valid, have_kvm, have_host;
    uint64_t t0, a0, accesses, kvm[3];
    double seconds, accesses_per_s, pmd_share;
};
/* The PoD fault server's counts of a program guest (report.c). */
void cli_print_guest_pod(const struct guest *g, FILE *out);
void cli_json_guest_pod(struct json *j, const char *key, const struct guest *g);
void cli_phase_begin(struct cli_phase *p, struct guest *g);
void cli_phase_end(struct cli_phase *p, struct guest *g);
void cli_json_phase(struct json *j, const char *key, const struct cli_phase *p);
void cli_print_phase(const char *what, const struct cli_phase *p);

struct tlb_config;
struct workload_config;
struct migrate_opts;
/* Live-migrate the started guest g (any backend that can: guest.h
 * guest_can_migrate) to `to` after `after` seconds, with retries, the
 * in-doubt save and --save-on-failure, printing the report (migrate_guest.c).
 * `what` names the workload.  g is not destroyed.  Exit status. */
int cli_migrate_guest(struct guest *g, const char *what, const char *to, double after,
                      const struct migrate_opts *mopts, struct chan_tls *tls, uint64_t retries,
                      const char *doubt_file, double run_s, const char *fail_save, bool json);
/* Save the paused guest g with its vCPU state (any backend that can
 * capture it) and `extra` (encoded TLVs, may be NULL) to path, a fresh
 * file. */
int cli_save_running(struct guest *g, const void *extra, size_t extra_len, const char *path,
                     struct save_result *sr, char *err, size_t errlen);
/* `hugevm migrate --resume-postcopy FILE`: finish the post-copy migration
 * whose sender saved FILE in doubt, connecting to `to` (migrate_guest.c).
 * mopts: timeout_ms, max_bandwidth, pc_recover_ms.  Exit status. */
int cli_resume_postcopy(const char *file, const char *to, const struct migrate_opts *mopts,
                        struct chan_tls *tls, uint64_t host_mem, bool json);
/* The same for a soft-vCPU guest started on d (migrate_guest.c). */
int cli_migrate_domain(struct domain *d, unsigned nv, const struct tlb_config *tc,
                       const struct workload_config *wc, const char *to, double after,
                       const struct migrate_opts *mopts, struct chan_tls *tls,
                       uint64_t retries, const char *doubt_file, double run_s,
                       const char *fail_save, bool json);
/* Save d with its vCPUs and workloads (as hugevm run --save: hugevm restore
 * FILE --run resumes it) to path; d must not change meanwhile (save_guest.c). */
struct vcpu;
struct workload;
struct save_result;
int cli_save_guest(struct domain *d, struct vcpu *const *v, struct workload *const *w,
                   unsigned nv, const struct workload_config *wc, const char *path,
                   struct save_result *sr, char *err, size_t errlen);
/* `hugevm run` on a program backend (kvm, native), on the domain d that
 * cmd_run.c built (run_guest.c).  Returns the exit status. */
struct guest_prog_state;
struct cli_prog_run {
    int backend;          /* enum guest_backend: kvm or native */
    const char *why;      /* why this backend runs */
    uint64_t guest_mem;
    unsigned vcpus;
    const char *workload, *guest_page, *program_path;
    uint64_t accesses;    /* operations in all (0: --seconds) */
    double seconds;
    uint64_t seed, write_rate;
    double write_frac, wss, theta;
    bool json, no_audit;
    const char *save;     /* save the guest, paused, when the timed run ends */
    /* --migrate-to: live-migrate it after `after` s (run_s: --seconds,
     * how long it runs on here when the migration fails). */
    const char *migrate_to;
    double after;
    const struct migrate_opts *mopts;
    struct chan_tls *tls;
    uint64_t retries;
    const char *doubt_file, *fail_save;
    /* Resume this saved guest (restore --run) instead of starting one:
     * the domain holds its memory; workload options are ignored. */
    const struct guest_prog_state *resume;
};
int cli_run_program(struct domain *d, const struct cli_prog_run *a);
/* Save d to path (a fresh file: safefile.h) with these HVM_CONTEXT TLVs
 * (save_guest.c). */
int cli_save_tlvs(struct domain *d, const void *tlvs, size_t len, const char *path,
                  struct save_result *sr, char *err, size_t errlen);
/* `hugevm balloon --backend kvm|native`: the guest's own balloon driver on
 * the domain d of guest_mem (balloon_guest.c).  Returns the exit status. */
struct cli_balloon_prog {
    int backend;
    const char *why;
    uint64_t guest_mem, target;
    unsigned vcpus;
    const char *workload;
    uint64_t seed, write_rate;
    double fragment;
    bool no_deflate, json, no_audit;
    bool give_back_4k; /* the driver zeroes each extent and gives it back as 4K pages */
};
int cli_balloon_program(struct machine *m, struct domain *d, const struct cli_balloon_prog *a);
/* Resolve --backend for a command: "auto" picks kvm where /dev/kvm runs
 * guests, else soft (or native when only a program backend will do:
 * need_prog); soft_only names an option that needs soft vCPUs (NULL: none),
 * which makes auto pick soft and an explicit kvm/native an error.  why[]
 * says which backend and why.  0, or 1 after printing an error. */
int cli_backend(const char *cmd, const char *arg, const char *soft_only, bool need_prog,
                int *backend, char *why, size_t len);
/* A progress bar on stderr when it is a terminal (save/restore; report.c). */
void cli_progress(const char *what, uint64_t done, uint64_t total);
/* Every save and restore of the tools (save, restore, run --save, the
 * program guests' and the in-doubt saves) reports through these
 * (report.c).  Progress: save_opts.progress (pfns done of total) and
 * restore_opts.progress (bytes read; progress_ctx points at the stream's
 * size in bytes): a bar when the guest or the stream is 256 MiB or more.
 * Summary: one line with the stream's size, records, pages and speed. */
struct restore_result;
void cli_save_progress(void *ctx, uint64_t done, uint64_t total);
void cli_restore_progress(void *ctx, uint64_t bytes_read);
/* A machine for restoring a stream file of `bytes` (restore, migrate
 * --resume-postcopy): its pages with room for speculative extents. */
uint64_t cli_restore_host_mem(uint64_t bytes);
void cli_print_saved(FILE *out, const struct save_result *r);
void cli_print_restored(FILE *out, const struct restore_result *r);
/* Sleep s seconds (cli.c). */
void cli_sleep_s(double s);
/* Save the paused guest g, held in doubt by `role` ("sender", "receiver"),
 * with `extra` TLVs (cli_save_running), and return only when it is saved:
 * *saved then names the whole file (migrate_guest.c). */
void cli_keep_in_doubt(struct guest *g, const void *extra, size_t extra_len, const char *given,
                       const char *role, char *saved, size_t len);

#endif

/*
 * test_cli_numbers.c - numbers on the command line (cli.h: one parser for
 * OPT_SIZE, OPT_U64, OPT_DBL, OPT_FRAC and OPT_SECONDS), through the built
 * binary (HUGEVM_BIN, set by meson).
 *
 *  - hostile values (NaN, infinities, negatives, overflow, trailing junk,
 *    durations whose milliseconds overflow an int) are refused with exit
 *    status 2 and a message naming the option and the reason, before any
 *    guest is built;
 *  - the values they used to be confused with still work: a short
 *    --accept-timeout times out in about its own time, a 0.05 s run runs;
 *  - the parser itself (cli_parse_number is in the binary, not the
 *    library, so it is exercised through it) keeps valid edge values;
 *  - migrate --resume-postcopy refuses the options that do not apply to
 *    it (it runs no guest of its own) instead of ignoring them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "testutil.h"

static char hv[PATH_MAX + 32];
static char dir[] = "/tmp/hvnumXXXXXX";
static char out[PATH_MAX];

/* Run argv (NULL-terminated) with stdout and stderr to `out`; exit status. */
static int run_to(char *const argv[])
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(void)
{
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 16);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int setup(void **state)
{
    (void)state;
    if (!hugevm_path(hv, sizeof(hv)))
        return 0;
    assert_non_null(mkdtemp(dir));
    snprintf(out, sizeof(out), "%s/out", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(out);
    rmdir(dir);
    return 0;
}

#define NEED_BIN()                                                                         \
    do {                                                                                   \
        if (access(hv, X_OK) != 0) {                                                       \
            print_message("# SKIP reason: the hugevm binary was not found\n");             \
            skip();                                                                        \
        }                                                                                  \
    } while (0)

struct refusal {
    const char *cmd, *opt, *val;
    const char *why; /* substring of the message */
};

/* Each value is refused with exit 2, a message "CMD: --OPT: bad value 'VAL':
 * WHY", and nothing else on the output (no guest was built). */
static void test_hostile_values_refused(void **state)
{
    (void)state;
    NEED_BIN();
    static const struct refusal r[] = {
        {"run", "seconds", "-1", "negative"},
        {"run", "seconds", "nan", "NaN"},
        {"run", "seconds", "NAN", "NaN"},
        {"run", "seconds", "inf", "infinite"},
        {"run", "seconds", "-inf", "negative"},
        {"run", "seconds", "infinity", "infinite"},
        {"run", "seconds", "1e400", "out of range"},
        {"run", "seconds", "3000000", "at most 2073600"},
        {"run", "seconds", "1s", "trailing 's'"},
        {"run", "seconds", "", "empty"},
        {"run", "after", "-1", "negative"},
        {"run", "after", "-0.5", "negative"},
        {"run", "vcpus", "-1", "negative"},
        {"run", "vcpus", " 1", "not a number"},
        {"run", "vcpus", "18446744073709551616", "too large"},
        {"run", "vcpus", "2x", "trailing 'x'"},
        {"run", "accesses", "0x", "not a whole number"},
        {"run", "guest-mem", "-64M", "negative"},
        {"run", "guest-mem", "64Q", "not a size"},
        {"run", "guest-mem", "99999999999T", "too large"},
        {"run", "wss", "1.5", "at most 1"},
        {"run", "write-frac", "nan", "NaN"},
        {"run", "theta", "inf", "infinite"},
        {"restore", "seconds", "nan", "NaN"},
        {"migrate", "timeout", "1e10", "at most 2073600"},
        {"migrate", "after", "inf", "infinite"},
        {"migrate", "downtime", "-5", "negative"},
        {"receive", "accept-timeout", "3000000", "at most 2073600"},
        {"receive", "accept-timeout", "1e10", "at most 2073600"},
        {"receive", "accept-timeout", "nan", "NaN"},
        {"receive", "timeout", "-3", "negative"},
        {"receive", "run", "inf", "infinite"},
        {"receive", "attempts", "-1", "negative"},
        {"balloon", "settle-ms", "2073600001", "at most 2073600000 ms"},
        {"defrag", "settle-ms", "-1", "negative"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(r); i++) {
        char opt[64], want[256];
        snprintf(opt, sizeof(opt), "--%s", r[i].opt);
        char *argv[] = {hv, (char *)r[i].cmd, "--guest-mem", "16M", opt, (char *)r[i].val,
                        NULL};
        if (!strcmp(r[i].opt, "guest-mem")) {
            argv[2] = opt;
            argv[3] = (char *)r[i].val;
            argv[4] = NULL;
        }
        if (!strcmp(r[i].cmd, "receive") || !strcmp(r[i].cmd, "restore") ||
            !strcmp(r[i].cmd, "balloon") || !strcmp(r[i].cmd, "defrag")) {
            argv[2] = opt; /* no --guest-mem there */
            argv[3] = (char *)r[i].val;
            argv[4] = NULL;
        }
        int st = run_to(argv);
        char *doc = slurp();
        snprintf(want, sizeof(want), "%s: --%s: bad value '%s': ", r[i].cmd, r[i].opt, r[i].val);
        if (st != 2 || !strstr(doc, want) || !strstr(doc, r[i].why))
            fail_msg("%s --%s '%s': exit %d, want 2 and \"%s...%s\"; got: %.300s", r[i].cmd,
                     r[i].opt, r[i].val, st, want, r[i].why, doc);
        /* one line: refused before anything was built or printed */
        if (strchr(doc, '\n') != strrchr(doc, '\n'))
            fail_msg("%s --%s '%s': more than the refusal was printed: %.300s", r[i].cmd,
                     r[i].opt, r[i].val, doc);
        free(doc);
    }
    print_message("# %zu hostile numbers refused with the option's name\n", ARRAY_SIZE(r));
}

/* Durations convert without losing themselves: a fractional accept timeout
 * waits about that long (it used to be truncated to whole milliseconds of
 * an int), and valid edge values are taken. */
static void test_durations_work(void **state)
{
    (void)state;
    NEED_BIN();
    char *recv[] = {hv, "receive", "--listen", "127.0.0.1:0", "--host-mem", "64M",
                    "--accept-timeout", "0.4", "--insecure", NULL};
    uint64_t t0 = hv_now_ns();
    int st = run_to(recv);
    double s = (double)(hv_now_ns() - t0) / 1e9;
    char *doc = slurp();
    if (st != 1 || !strstr(doc, "no sender within"))
        fail_msg("receive --accept-timeout 0.4: exit %d: %.300s", st, doc);
    free(doc);
    assert_true(s >= 0.35);
    assert_true(s < 10); /* ASan start-up included */

    char *run[] = {hv, "run", "--guest-mem", "16M", "--seconds", "0.05", "--json", NULL};
    st = run_to(run);
    doc = slurp();
    if (st != 0)
        fail_msg("run --seconds 0.05: exit %d: %.300s", st, doc);
    free(doc);
    /* the maximum duration is a duration, not an error (parsing only:
     * --help after it stops before anything runs) */
    char *max[] = {hv, "receive", "--accept-timeout", "2073600", "--help", NULL};
    assert_int_equal(run_to(max), 0);
    char *hex[] = {hv, "run", "--vcpus", "0x1", "--guest-mem", "16M", "--accesses", "1000",
                   "--wss", "1", "--write-frac", "0", NULL};
    st = run_to(hex);
    doc = slurp();
    if (st != 0)
        fail_msg("run with edge values: exit %d: %.300s", st, doc);
    free(doc);
    print_message("# --accept-timeout 0.4 timed out after %.2f s\n", s);
}

/* migrate --resume-postcopy runs no guest of its own (the saved copy is
 * the guest): an option about the guest or the migration's shape is
 * refused with its name, wherever it stands, not ignored; the options it
 * takes pass the parser. */
static void test_resume_postcopy_options(void **state)
{
    (void)state;
    NEED_BIN();
    static const char *const stray[][2] = {
        {"--guest-mem", "1G"}, {"--channels", "2"}, {"--compress", NULL},
        {"--fill", "/etc/hostname"}, {"--postcopy", NULL}, {"--vcpus", "3"},
        {"--downtime", "5"}, {"--save-on-failure", "/tmp/x"}, {"--backend", "soft"},
    };
    char file[PATH_MAX];
    snprintf(file, sizeof(file), "%s/none.hvs", dir);
    for (size_t i = 0; i < ARRAY_SIZE(stray); i++) {
        for (int after = 0; after < 2; after++) {
            char *argv[12];
            int n = 0;
            argv[n++] = hv;
            argv[n++] = "migrate";
            if (after) {
                argv[n++] = "--resume-postcopy";
                argv[n++] = file;
            }
            argv[n++] = (char *)stray[i][0];
            if (stray[i][1])
                argv[n++] = (char *)stray[i][1];
            if (!after) {
                argv[n++] = "--resume-postcopy";
                argv[n++] = file;
            }
            argv[n++] = "--to";
            argv[n++] = "127.0.0.1:1";
            argv[n++] = "--insecure";
            argv[n] = NULL;
            int st = run_to(argv);
            char *doc = slurp(), want[128];
            snprintf(want, sizeof(want), "migrate: %s does not apply with --resume-postcopy",
                     stray[i][0]);
            if (st != 2 || !strstr(doc, want) || strchr(doc, '\n') != strrchr(doc, '\n'))
                fail_msg("%s with --resume-postcopy (%s it): exit %d, want 2 and one line "
                         "\"%s\"; got: %.300s", stray[i][0], after ? "after" : "before", st,
                         want, doc);
            free(doc);
        }
    }
    /* what it takes: past the parser, to the missing file */
    char *ok[] = {hv, "migrate", "--resume-postcopy", file, "--to", "127.0.0.1:1", "--insecure",
                  "--timeout", "2", "--max-bandwidth", "100M", "--postcopy-recover", "1",
                  "--host-mem", "64M", "--json", NULL};
    int st = run_to(ok);
    char *doc = slurp();
    if (st != 1 || strstr(doc, "does not apply") || !strstr(doc, "none.hvs"))
        fail_msg("--resume-postcopy with the options it takes: exit %d: %.300s", st, doc);
    free(doc);
    print_message("# %zu options refused with --resume-postcopy, before and after it\n",
                  ARRAY_SIZE(stray));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_hostile_values_refused),
    cmocka_unit_test(test_durations_work),
    cmocka_unit_test(test_resume_postcopy_options),
};

int main(void)
{
    hv_test_filter();
    return cmocka_run_group_tests(tests, setup, teardown);
}

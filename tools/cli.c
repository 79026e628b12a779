/*
 * cli.c - what every subcommand shares on the command line: errors, option
 * parsing from the tables of cli.h (numbers through one checked parser),
 * --help from the same tables, the --guest-mem check against the host.
 * It calls no subcommand: the command table is commands.c, dispatch is
 * hugevm.c.
 */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli.h"

int cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("hugevm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

static void workload_prepare(struct cli_workload_spec *s)
{
    const struct cli_workload *d = &s->def;
    char rate[32];
    if (s->ready)
        return;
    s->v = *d;
    if (s->meanwhile)
        snprintf(s->help[CLI_WL_WORKLOAD], sizeof(s->help[0]), "run the guest meanwhile: %s",
                 s->names);
    else
        snprintf(s->help[CLI_WL_WORKLOAD], sizeof(s->help[0]), "%s (default %s)", s->names,
                 d->workload);
    snprintf(s->help[CLI_WL_VCPUS], sizeof(s->help[0]), "vCPUs running the workload (soft: "
             "interleaved deterministically; kvm, native: one thread each, each on its own "
             "slice) (default %llu)", (unsigned long long)d->vcpus);
    if (d->write_rate)
        snprintf(rate, sizeof(rate), "%llu", (unsigned long long)d->write_rate);
    else
        snprintf(rate, sizeof(rate), "unlimited");
    snprintf(s->help[CLI_WL_RATE], sizeof(s->help[0]), "%s per second per vCPU, 0 = unlimited "
             "(default %s)", s->rate_what, rate);
    snprintf(s->help[CLI_WL_WSS], sizeof(s->help[0]), "writer: fraction of its slice written "
             "per pass (default %g)", d->wss);
    snprintf(s->help[CLI_WL_SEED], sizeof(s->help[0]), "seed of the workload%s (default %llu)",
             s->seed_also, (unsigned long long)d->seed);
    snprintf(s->help[CLI_WL_SETTLE], sizeof(s->help[0]), "with --workload: guest runs this "
             "long %s (default %llu)", s->settle_when ? s->settle_when : "",
             (unsigned long long)d->settle_ms);
    s->ready = true;
}

const struct opt *cli_opts(const struct cmd *c)
{
    if (c->workload)
        workload_prepare(c->workload);
    return c->opts;
}

static const struct opt *find_opt(const struct cmd *c, const char *name)
{
    for (const struct opt *o = cli_opts(c); o && o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    return NULL;
}

void cli_help(const struct cmd *c, FILE *out)
{
    fprintf(out, "usage: hugevm %s [options]%s%s\n  %s\n\noptions:\n", c->name,
            c->usage_extra ? " " : "", c->usage_extra ? c->usage_extra : "",
            c->summary);
    for (const struct opt *o = cli_opts(c); o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");
        fprintf(out, "  %-26s %s\n", left, o->help);
    }
    if (cli_has_overcommit(c))
        fprintf(out, "  %-26s %s\n", "--overcommit", CLI_OVERCOMMIT_HELP);
    fprintf(out, "  %-26s %s\n", "--help", "show this help");
}

bool cli_has_overcommit(const struct cmd *c) { return find_opt(c, "guest-mem") != NULL; }

/* Reject what strtoull and strtod would quietly accept: leading spaces
 * and signs (strtoull wraps "-1"), "nan", "inf". */
static int number_start(const char *arg, char *why, size_t whylen)
{
    if (!arg || !*arg) {
        snprintf(why, whylen, "empty");
        return -EINVAL;
    }
    if (*arg == '-') {
        snprintf(why, whylen, "negative");
        return -ERANGE;
    }
    if (!isdigit((unsigned char)*arg) && *arg != '.') {
        if (!strncasecmp(arg, "nan", 3) || !strncasecmp(arg, "+nan", 4))
            snprintf(why, whylen, "NaN is not a number");
        else if (!strncasecmp(arg, "inf", 3) || !strncasecmp(arg, "+inf", 4))
            snprintf(why, whylen, "infinite");
        else
            snprintf(why, whylen, "not a number");
        return -EINVAL;
    }
    return 0;
}

int cli_parse_number(const struct opt *o, const char *arg, char *why, size_t whylen)
{
    char *end;
    int rc = number_start(arg, why, whylen);
    if (rc < 0)
        return rc;
    if (o->kind == OPT_SIZE || o->kind == OPT_U64 || o->kind == OPT_MSEC) {
        uint64_t v;
        if (o->kind == OPT_SIZE) {
            rc = hv_parse_size(arg, &v);
            if (rc == -ERANGE) {
                snprintf(why, whylen, "too large");
                return rc;
            }
            if (rc < 0) {
                snprintf(why, whylen, "not a size (e.g. 4096, 256M, 8G)");
                return rc;
            }
        } else {
            errno = 0;
            unsigned long long u = strtoull(arg, &end, 0);
            if (errno == ERANGE) {
                snprintf(why, whylen, "too large (over %llu)", ULLONG_MAX);
                return -ERANGE;
            }
            if (errno || end == arg || *end) {
                snprintf(why, whylen, "not a whole number%s%s%s", *end ? " (trailing '" : "",
                         *end ? end : "", *end ? "')" : "");
                return -EINVAL;
            }
            v = u;
        }
        if (o->kind == OPT_MSEC && (double)v > CLI_SECONDS_MAX * 1000) {
            snprintf(why, whylen, "at most %.0f ms (24 days)", CLI_SECONDS_MAX * 1000);
            return -ERANGE;
        }
        *(uint64_t *)o->dest = v;
        return 0;
    }
    errno = 0;
    double v = strtod(arg, &end);
    if (end == arg || *end) {
        snprintf(why, whylen, "not a number%s%s%s", *end ? " (trailing '" : "",
                 *end ? end : "", *end ? "')" : "");
        return -EINVAL;
    }
    if (isnan(v) || isinf(v) || errno == ERANGE) {
        snprintf(why, whylen, "%s", isnan(v) ? "NaN is not a number" : "out of range");
        return -ERANGE;
    }
    double hi = o->kind == OPT_SECONDS ? CLI_SECONDS_MAX : o->kind == OPT_FRAC ? 1 : DBL_MAX;
    if (v > hi) {
        if (o->kind == OPT_SECONDS)
            snprintf(why, whylen, "at most %.0f seconds (24 days)", hi);
        else
            snprintf(why, whylen, "a fraction: at most 1");
        return -ERANGE;
    }
    *(double *)o->dest = v;
    return 0;
}

int cli_ms(double s)
{
    if (!(s > 0))
        return 0;
    if (s >= CLI_SECONDS_MAX)
        return (int)(CLI_SECONDS_MAX * 1000);
    return (int)ceil(s * 1000);
}

static int set_opt(const struct opt *o, const char *arg, char *why, size_t whylen)
{
    int rc = 0;
    switch (o->kind) {
    case OPT_FLAG:
        *(bool *)o->dest = true;
        break;
    case OPT_SIZE:
    case OPT_U64:
    case OPT_DBL:
    case OPT_FRAC:
    case OPT_SECONDS:
    case OPT_MSEC:
        rc = cli_parse_number(o, arg, why, whylen);
        break;
    case OPT_STR:
        *(const char **)o->dest = arg;
        break;
    case OPT_FUNC:
        rc = o->fn(o->dest, arg);
        break;
    }
    return rc;
}

int cli_parse(const struct cmd *c, int argc, char **argv)
{
    int npos = 0;
    /* find_opt reads cli_opts(c): the workload defaults are in place before
     * any option is parsed */
    const struct opt *gm = find_opt(c, "guest-mem");
    bool overcommit = false, no_guest = false;
    const char *stray = NULL; /* an option that does not apply without a guest */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_help(c, stdout);
            return -2;
        }
        if (gm && strcmp(a, "--overcommit") == 0) {
            overcommit = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == 0) {
            argv[npos++] = argv[i];
            continue;
        }
        const char *name = a + 2, *val = NULL;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = cli_opts(c);
        for (; o && o->name; o++)
            if (strlen(o->name) == nlen && strncmp(o->name, name, nlen) == 0)
                break;
        if (!o || !o->name) {
            cli_error("%s: unknown option '%s' (see hugevm %s --help)", c->name, a,
                      c->name);
            return -1;
        }
        if (c->no_guest_opt && !strcmp(o->name, c->no_guest_opt))
            no_guest = true;
        else if (c->no_guest_allow && !stray) {
            const char *const *k = c->no_guest_allow;
            while (*k && strcmp(*k, o->name))
                k++;
            if (!*k)
                stray = o->name;
        }
        if (o->kind != OPT_FLAG) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else {
                cli_error("%s: option --%s needs %s", c->name, o->name,
                          o->arg ? o->arg : "a value");
                return -1;
            }
        } else if (eq) {
            cli_error("%s: option --%s takes no value", c->name, o->name);
            return -1;
        }
        char why[128] = "";
        if (set_opt(o, val, why, sizeof(why)) < 0) {
            if (why[0])
                cli_error("%s: --%s: bad value '%s': %s", c->name, o->name, val, why);
            else
                cli_error("%s: --%s: bad value '%s' (%s)", c->name, o->name, val,
                          o->arg ? o->arg : "value");
            return -1;
        }
    }
    if (no_guest && stray) {
        char ok[400] = "";
        size_t at = 0;
        for (const char *const *n = c->no_guest_allow; *n && at < sizeof(ok); n++)
            at += (size_t)snprintf(ok + at, sizeof(ok) - at, "%s--%s", at ? " " : "", *n);
        cli_error("%s: --%s does not apply with --%s, which runs no guest here (it takes %s)",
                  c->name, stray, c->no_guest_opt, ok);
        return -1;
    }
    if (gm && gm->kind == OPT_SIZE && !no_guest &&
        cli_check_guest_mem(c->name, *(const uint64_t *)gm->dest, overcommit) < 0)
        return -1;
    return npos;
}

void cli_sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* A /proc/meminfo figure ("MemTotal") in bytes, or 0. */
static uint64_t meminfo_bytes(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[160];
    uint64_t v = 0;
    size_t klen = strlen(key);
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long long kb;
        if (!strncmp(line, key, klen) && line[klen] == ':' &&
            sscanf(line + klen + 1, "%llu", &kb) == 1) {
            v = (uint64_t)kb * 1024;
            break;
        }
    }
    if (f)
        fclose(f);
    return v;
}

int cli_check_guest_mem(const char *cmd, uint64_t bytes, bool overcommit)
{
    char b1[32], b2[32];
    uint64_t ram = meminfo_bytes("MemTotal"), host = ram + meminfo_bytes("SwapTotal");
    if (overcommit || !ram || bytes <= host)
        return 0;
    cli_error("%s: --guest-mem %s is more than this host's memory (%s: MemTotal plus "
              "SwapTotal); give --overcommit to run it all the same (only touched memory "
              "costs host RAM)", cmd, hv_fmt_size(bytes, b1, sizeof(b1)),
              hv_fmt_size(host, b2, sizeof(b2)));
    return -E2BIG;
}

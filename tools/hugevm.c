/*
 * hugevm.c - the command line: dispatch, option parsing, --help, and the
 * printing helpers shared by the subcommands.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "domain.h"

static const struct cmd *const commands[] = {
    &cmd_populate,
    &cmd_fragment,
    &cmd_info,
    &cmd_run,
    &cmd_balloon,
    &cmd_defrag,
    &cmd_save,
    &cmd_restore,
    &cmd_inspect,
    &cmd_migrate,
    &cmd_receive,
    &cmd_kvm,
};

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

static const struct opt *find_opt(const struct cmd *c, const char *name)
{
    for (const struct opt *o = c->opts; o && o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    return NULL;
}

void cli_help(const struct cmd *c, FILE *out)
{
    fprintf(out, "usage: hugevm %s [options]%s%s\n  %s\n\noptions:\n", c->name,
            c->usage_extra ? " " : "", c->usage_extra ? c->usage_extra : "",
            c->summary);
    for (const struct opt *o = c->opts; o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");
        fprintf(out, "  %-26s %s\n", left, o->help);
    }
    if (find_opt(c, "guest-mem"))
        fprintf(out, "  %-26s %s\n", "--overcommit",
                "allow a --guest-mem beyond the host's memory plus swap");
    fprintf(out, "  %-26s %s\n", "--help", "show this help");
}

static int set_opt(const struct opt *o, const char *arg)
{
    int rc = 0;
    char *end;
    switch (o->kind) {
    case OPT_FLAG:
        *(bool *)o->dest = true;
        break;
    case OPT_SIZE:
        rc = hv_parse_size(arg, o->dest);
        break;
    case OPT_U64:
        errno = 0;
        *(uint64_t *)o->dest = strtoull(arg, &end, 0);
        if (errno || end == arg || *end || *arg == '-')
            rc = -EINVAL;
        break;
    case OPT_DBL:
        *(double *)o->dest = strtod(arg, &end);
        if (end == arg || *end)
            rc = -EINVAL;
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
    const struct opt *gm = find_opt(c, "guest-mem");
    bool overcommit = false;
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
        const struct opt *o = c->opts;
        for (; o && o->name; o++)
            if (strlen(o->name) == nlen && strncmp(o->name, name, nlen) == 0)
                break;
        if (!o || !o->name) {
            cli_error("%s: unknown option '%s' (see hugevm %s --help)", c->name, a,
                      c->name);
            return -1;
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
        if (set_opt(o, val) < 0) {
            cli_error("%s: bad value '%s' for --%s (%s)", c->name, val, o->name,
                      o->arg ? o->arg : "value");
            return -1;
        }
    }
    if (gm && gm->kind == OPT_SIZE &&
        cli_check_guest_mem(c->name, *(const uint64_t *)gm->dest, overcommit) < 0)
        return -1;
    return npos;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: hugevm COMMAND [options]\n\n"
                 "hugevm: guest memory that keeps its superpages.\n\ncommands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(out, "\n'hugevm COMMAND --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        const struct cmd *c = commands[i];
        if (strcmp(argv[1], c->name) != 0)
            continue;
        int n = cli_parse(c, argc - 2, argv + 2);
        if (n == -2)
            return 0;
        if (n < 0)
            return 2;
        return c->run(n, argv + 2);
    }
    cli_error("unknown command '%s'", argv[1]);
    usage(stderr);
    return 2;
}

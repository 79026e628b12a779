/*
 * hugevm.c - main(): the top-level usage, --version, the man page and
 * completion generators, and dispatch to a subcommand through the table
 * (commands.c) after its options are parsed (cli.c).
 */
#include <string.h>

#include "cli.h"
#include "hugevm.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: hugevm COMMAND [options]\n\n"
                 "hugevm: guest memory that keeps its superpages.\n\ncommands:\n");
    size_t n;
    const struct cmd *const *commands = cli_commands(&n);
    for (size_t i = 0; i < n; i++)
        fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(out, "\n'hugevm COMMAND --help' describes a command's options; 'hugevm --version'\n"
                 "prints the version; 'man hugevm-COMMAND' has the same in a man page.\n");
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
    if (!strcmp(argv[1], "--version")) {
        printf("hugevm %s\n", hugevm_version());
        return 0;
    }
    /* generators for the build (docs/meson.build): man pages, completion */
    if (!strcmp(argv[1], "--man"))
        return argc > 3 ? 2 : cli_man(argc == 3 ? argv[2] : NULL, stdout) ? 2 : 0;
    if (!strcmp(argv[1], "--completion"))
        return argc > 2 ? 2 : cli_completion(stdout);
    size_t nc;
    const struct cmd *const *commands = cli_commands(&nc);
    for (size_t i = 0; i < nc; i++) {
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

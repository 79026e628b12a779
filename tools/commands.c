/*
 * commands.c - the table of subcommands (kvmtool's kvm_commands[]): one
 * struct cmd per cmd_*.c, in the order `hugevm --help` and the man pages
 * list them.  main() dispatches through it and doc.c generates the man
 * pages and the completion from it.
 */
#include "cli.h"

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
};

const struct cmd *const *cli_commands(size_t *n)
{
    *n = ARRAY_SIZE(commands);
    return commands;
}

/* ctl/main.c - the meerkat command: dispatches to start (supervisor) or ctl (admin). */
#include <stdio.h>
#include <string.h>

#include "ctl.h"

static void usage(void)
{
    fprintf(stderr,
            "usage: meerkat start [-c FILE] [--log-level LEVEL]   start every configured process and supervise them\n"
            "       meerkat ctl [-c FILE] COMMAND ...               administer a running cluster\n"
            "commands:\n"
            "  health | top | register | passwd | unregister | sessions | kick | push | reload   (meerkat ctl -h for details)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    if (strcmp(argv[1], "start") == 0)
        return ctl_start(argc - 1, argv + 1);
    if (strcmp(argv[1], "ctl") == 0)
        return ctl_admin(argc - 1, argv + 1);
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage();
        return 0;
    }
    fprintf(stderr, "meerkat: unknown command %s\n", argv[1]);
    usage();
    return 2;
}

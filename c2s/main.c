/* c2s/main.c - meerkat-c2s: client connections. */
#include <stdlib.h>

#include "node.h"

int main(int argc, char **argv)
{
    struct node n;
    if (node_init(&n, argc, argv, CFG_ROLE_C2S, NULL, NULL) == -1)
        return 1;
    node_run(&n);
    node_fini(&n);
    return 0;
}

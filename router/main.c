/* router/main.c - meerkat-router: session registry and stanza routing. */
#include <stdlib.h>

#include "node.h"

int main(int argc, char **argv)
{
    struct node n;
    if (node_init(&n, argc, argv, CFG_ROLE_ROUTER, NULL, NULL) == -1)
        return 1;
    node_run(&n);
    node_fini(&n);
    return 0;
}

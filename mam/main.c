/* mam/main.c - meerkat-mam: message archive and offline store. */
#include <stdlib.h>

#include "node.h"

int main(int argc, char **argv)
{
    struct node n;
    if (node_init(&n, argc, argv, CFG_ROLE_MAM, NULL, NULL) == -1)
        return 1;
    node_run(&n);
    node_fini(&n);
    return 0;
}

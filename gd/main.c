/* gd/main.c - meerkat-gd: global distribution: Redis routing table and links to other data centers (joins the bus; not built yet). */
#include <stdlib.h>

#include "node.h"

int main(int argc, char **argv)
{
    struct node n;
    if (node_init(&n, argc, argv, CFG_ROLE_GD, NULL, NULL) == -1)
        return 1;
    node_run(&n);
    node_fini(&n);
    return 0;
}

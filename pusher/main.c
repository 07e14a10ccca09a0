/* pusher/main.c - meerkat-pusher: event pusher: push notifications, HTTP callbacks, Amazon SNS (joins the bus; backends not built yet). */
#include <stdlib.h>

#include "node.h"
#include "pusher.h"

int main(int argc, char **argv)
{
    struct node n;
    if (http_global_init() == -1) return 1;
    if (node_init(&n, argc, argv, CFG_ROLE_PUSHER, NULL, NULL) == -1)
        return 1;
    node_run(&n);
    node_fini(&n);
    return 0;
}

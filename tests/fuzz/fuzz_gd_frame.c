/* tests/fuzz/fuzz_gd_frame.c - libFuzzer target: what the inter-DC link's inbox does with hostile bytes from a trusted peer's connection (gd_link_classify), and that what it would hand on holds what the link promises. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gd/link.h"
#include "env.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *verdict = gd_link_classify("dc-b", "dc-a", data, size);
    if (verdict == NULL)
        abort();
    if (strcmp(verdict, "received") != 0)
        return 0;
    /* Handed on: a GdFrame from the connection's own data center, on the channel, of
     * a version we read, from another data center, with a hop left. */
    Mk__Envelope *e = env_decode(data, size);
    if (e == NULL || e->payload_case != MK__ENVELOPE__PAYLOAD_GD_FRAME || strcmp(e->sender, "dc-a") != 0
        || e->rc_seq == 0 || e->gd_frame->version > GD_LINK_VERSION || e->gd_frame->ttl == 0
        || e->gd_frame->origin == NULL || e->gd_frame->origin[0] == '\0' || strcmp(e->gd_frame->origin, "dc-b") == 0)
        abort();
    env_free(&e);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

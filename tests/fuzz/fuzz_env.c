/* tests/fuzz/fuzz_env.c - libFuzzer target: env_decode on hostile bytes, and whatever it accepts must re-pack and decode again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "env.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Mk__Envelope *e = env_decode(data, size);
    if (e == NULL)
        return 0;
    (void)env_payload_name(e);
    struct buf once, twice;
    buf_init(&once);
    buf_init(&twice);
    env_pack(e, &once);
    Mk__Envelope *again = env_decode(once.data, once.len);
    if (again == NULL)
        abort();    /* we accepted it, packed it, and cannot read our own output */
    /* The first pack normalises (field order, packed repeats, dropped duplicates);
     * from then on packing is a fixed point. */
    env_pack(again, &twice);
    if (twice.len != once.len || memcmp(twice.data, once.data, once.len) != 0)
        abort();
    env_free(&again);
    env_free(&e);
    buf_release(&once);
    buf_release(&twice);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

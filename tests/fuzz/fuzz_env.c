/* tests/fuzz/fuzz_env.c - libFuzzer target: env_decode on hostile bytes, and whatever it accepts must re-pack and decode again; every fan-out template it carries (a Deliver's, a Fanout's) is made whole for its recipients (env_route_fill) as a c2s or router would. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "env.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* t made whole for to, as the c2s (a Deliver) and the router (a Fanout) do: refused, or
 * the template's bytes with to's escaped text inside. */
static void fill(const Mk__Route *t, const char *to, struct buf *xml)
{
    Mk__Route w;
    if (t == NULL || env_route_fill(t, to, xml, &w) == -1)
        return;
    if (w.xml.len < t->xml.len || w.to_at != 0 || w.to != to)
        abort();
}

static void fill_templates(const Mk__Envelope *e)
{
    struct buf xml;
    buf_init(&xml);
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_DELIVER && e->deliver != NULL) {
        const Mk__Deliver *d = e->deliver;
        for (size_t i = 0; i < d->n_session_jids; i++) {
            fill(d->route, d->session_jids[i], &xml);
            for (size_t j = 0; j < d->n_more; j++)
                fill(d->more[j], d->session_jids[i], &xml);
        }
    } else if (e->payload_case == MK__ENVELOPE__PAYLOAD_FANOUT && e->fanout != NULL) {
        for (size_t i = 0; i < e->fanout->n_to; i++)
            for (size_t j = 0; j < e->fanout->n_stanzas; j++)
                fill(e->fanout->stanzas[j], e->fanout->to[i], &xml);
    }
    buf_release(&xml);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Mk__Envelope *e = env_decode(data, size);
    if (e == NULL)
        return 0;
    (void)env_payload_name(e);
    fill_templates(e);
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

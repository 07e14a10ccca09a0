/* common/env.c - bus envelopes: the only module that packs and unpacks the generated protobuf-c code. */
#include "env.h"

#include <errno.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "xml.h"

/* A decoded envelope lives in one block: protobuf-c's allocations for it (the message
 * structs, every string and byte field) are carved from the block's area instead of one
 * malloc and free each (nine for a push event: a tenth of the pusher's CPU per event).
 * What does not fit is malloc'ed and freed as before. The Envelope struct itself is kept
 * in the block's own slot, ahead of the area, so env_free finds the block from it.
 * Memory: a 243-byte push event takes one 880-byte block where its nine pieces took about
 * 580 bytes with malloc's headers (the area's slack, and the Envelope's first copy left in
 * it); ENV_BLOCK_SLACK covers a Deliver with its Route, the chat path's largest. */
struct env_block {
    size_t cap;                    /* bytes of area */
    size_t used;
    alignas(max_align_t) Mk__Envelope slot;
    alignas(max_align_t) unsigned char area[];
};

/* Area bytes per frame byte beyond the frame's length: room for the structs of a
 * typical envelope (Envelope, its payload and their alignment padding). */
#define ENV_BLOCK_SLACK 512u

static void *block_alloc(void *data, size_t size)
{
    struct env_block *b = data;
    size_t n = (size + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
    if (n >= size && b->cap - b->used >= n) {
        void *p = b->area + b->used;
        b->used += n;
        return p;
    }
    /* As protobuf-c's own allocator: a size no memory holds fails the decode, not the process. */
    return malloc(size != 0 ? size : 1);
}

static void block_free(void *data, void *p)
{
    const struct env_block *b = data;
    uintptr_t q = (uintptr_t)p;
    if (q >= (uintptr_t)b && q < (uintptr_t)(b->area + b->cap))
        return;   /* the slot or the area: freed with the block */
    free(p);
}

static struct env_block *block_of(Mk__Envelope *e)
{
    return (struct env_block *)(void *)((char *)e - offsetof(struct env_block, slot));
}

/* Frees what protobuf-c allocated outside the block, then the block. */
static void block_release(struct env_block *b)
{
    ProtobufCAllocator a = { block_alloc, block_free, b };
    mk__envelope__free_unpacked(&b->slot, &a);
    free(b);
}

/* protobuf-c keeps an unknown field numbered 0 when its tag is written in a long
 * varint form, but refuses the short form it writes back on pack: such an envelope
 * would decode here and be unreadable once forwarded. Field 0 is invalid protobuf,
 * so refuse it, at every depth (the schema has no recursive messages). */
static bool fields_valid(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0)
            return false;
    }
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *subs = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++) {
                if (subs[j] != NULL && !fields_valid(subs[j]))
                    return false;
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            && *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;   /* another member of the oneof owns the union */
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
        if (sub != NULL && !fields_valid(sub))
            return false;
    }
    return true;
}

Mk__Envelope *env_decode(const void *data, size_t len)
{
    /* protobuf-c reads nothing when len is 0, but never hand it NULL with a length. */
    if (data == NULL && len > 0)
        return NULL;
    size_t cap = len + ENV_BLOCK_SLACK;
    struct env_block *b = xmalloc(sizeof *b + cap);
    b->cap = cap;
    b->used = 0;
    ProtobufCAllocator a = { block_alloc, block_free, b };
    Mk__Envelope *u = mk__envelope__unpack(&a, len, data);
    if (u == NULL) {
        free(b);   /* protobuf-c freed what it had allocated */
        return NULL;
    }
    /* The message struct moves into the slot (nothing points at it: only it points at its
     * fields); its old place is in the area, or was malloc'ed when the area was full. */
    memcpy(&b->slot, u, sizeof b->slot);
    block_free(b, u);
    Mk__Envelope *e = &b->slot;
    if (e->version > ENV_VERSION || e->sender == NULL || e->sender[0] == '\0'
        || e->payload_case == MK__ENVELOPE__PAYLOAD__NOT_SET || !fields_valid(&e->base)) {
        block_release(b);
        return NULL;
    }
    return e;
}

void env_free(Mk__Envelope **ep)
{
    if (ep == NULL || *ep == NULL)
        return;
    block_release(block_of(*ep));
    *ep = NULL;
}

void env_pack(Mk__Envelope *e, struct buf *out)
{
    e->version = ENV_VERSION;
    size_t n = mk__envelope__get_packed_size(e);
    buf_reserve(out, n);
    size_t written = mk__envelope__pack(e, (uint8_t *)out->data + out->len);
    /* get_packed_size and pack walk the same fields: a mismatch is memory corruption. */
    if (written != n)
        abort();
    out->len += written;
}

const char *env_payload_name(const Mk__Envelope *e)
{
    if (e == NULL)
        return "none";
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_HELLO:         return "hello";
    case MK__ENVELOPE__PAYLOAD_ACK:           return "ack";
    case MK__ENVELOPE__PAYLOAD_ROUTE:         return "route";
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:  return "session_open";
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE: return "session_close";
    case MK__ENVELOPE__PAYLOAD_SESSION_CONFIRMED: return "session_confirmed";
    case MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE: return "handover_fence";
    case MK__ENVELOPE__PAYLOAD_DELIVER:       return "deliver";
    case MK__ENVELOPE__PAYLOAD_CUSTODY_DONE:  return "custody_done";
    case MK__ENVELOPE__PAYLOAD_FANOUT:        return "fanout";
    case MK__ENVELOPE__PAYLOAD_RESYNC:        return "resync";
    case MK__ENVELOPE__PAYLOAD_PROBE:         return "probe";
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:       return "archive";
    case MK__ENVELOPE__PAYLOAD_MAM_QUERY:     return "mam_query";
    case MK__ENVELOPE__PAYLOAD_MAM_RESULT:    return "mam_result";
    case MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH: return "offline_fetch";
    case MK__ENVELOPE__PAYLOAD_KICK:          return "kick";
    case MK__ENVELOPE__PAYLOAD_SESSION_LIST:  return "session_list";
    case MK__ENVELOPE__PAYLOAD_TEST:          return "test";
    case MK__ENVELOPE__PAYLOAD_AUTH_EVENT:    return "auth_event";
    case MK__ENVELOPE__PAYLOAD_GD_FORWARD:    return "gd_forward";
    case MK__ENVELOPE__PAYLOAD_GD_SYNC:       return "gd_sync";
    case MK__ENVELOPE__PAYLOAD_GD_FRAME:      return "gd_frame";
    case MK__ENVELOPE__PAYLOAD__NOT_SET:      break;
    default:                                  return "unknown";
    }
    return "none";
}

void env_route_init(Mk__Route *r, Mk__StanzaKind kind, const char *from, const char *to, const char *type,
                    const char *id, const char *xml, size_t len)
{
    mk__route__init(r);
    r->kind = kind;
    r->from = (char *)from;
    r->to = (char *)to;
    r->type = (char *)(type ? type : "");
    r->id = (char *)(id ? id : "");
    r->xml.data = (uint8_t *)xml;
    r->xml.len = len;
}

int env_route_fill(const Mk__Route *tmpl, const char *to, struct buf *xml, Mk__Route *out)
{
    if (tmpl == NULL || to == NULL || tmpl->to_at == 0 || tmpl->to_at > tmpl->xml.len || tmpl->xml.data == NULL) {
        errno = EINVAL;
        return -1;
    }
    size_t at = tmpl->to_at;
    xml->len = 0;
    buf_reserve(xml, tmpl->xml.len + strlen(to) + 16);
    buf_append(xml, tmpl->xml.data, at);
    xml_escape(xml, to, strlen(to));
    buf_append(xml, tmpl->xml.data + at, tmpl->xml.len - at);
    *out = *tmpl;
    out->to = (char *)to;
    out->to_at = 0;
    out->xml.data = (uint8_t *)xml->data;
    out->xml.len = xml->len;
    return 0;
}

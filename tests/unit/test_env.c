/* tests/unit/test_env.c - envelope decode/pack: every payload round-trips, hostile frames are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"
#include "env.h"

/* Storage for one envelope of every payload kind, built on the stack the way
 * callers build them (generated initialisers, borrowed fields). */
struct sample {
    Mk__Envelope      env;
    Mk__Hello         hello;
    Mk__Ack           ack;
    Mk__Route         route;
    Mk__Route         inner_route;
    Mk__SessionOpen   open;
    Mk__SessionOpen   opens[2];
    Mk__SessionOpen  *open_ptrs[2];
    Mk__SessionClose  close;
    Mk__Deliver       deliver;
    uint64_t          session_ids[3];
    Mk__Resync        resync;
    Mk__Probe         probe;
    Mk__ArchiveWrite  archive;
    Mk__MamQuery      mam_query;
    Mk__MamResult     mam_result;
    Mk__OfflineFetch  offline;
    Mk__Kick          kick;
    Mk__SessionList   list;
    Mk__Test          test;
    Mk__AuthEvent     auth_event;
};

static const Mk__Envelope__PayloadCase all_kinds[] = {
    MK__ENVELOPE__PAYLOAD_HELLO,        MK__ENVELOPE__PAYLOAD_ACK,
    MK__ENVELOPE__PAYLOAD_ROUTE,        MK__ENVELOPE__PAYLOAD_SESSION_OPEN,
    MK__ENVELOPE__PAYLOAD_SESSION_CLOSE, MK__ENVELOPE__PAYLOAD_DELIVER,
    MK__ENVELOPE__PAYLOAD_RESYNC,       MK__ENVELOPE__PAYLOAD_PROBE,
    MK__ENVELOPE__PAYLOAD_ARCHIVE,      MK__ENVELOPE__PAYLOAD_MAM_QUERY,
    MK__ENVELOPE__PAYLOAD_MAM_RESULT,   MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH,
    MK__ENVELOPE__PAYLOAD_KICK,         MK__ENVELOPE__PAYLOAD_SESSION_LIST,
    MK__ENVELOPE__PAYLOAD_TEST,         MK__ENVELOPE__PAYLOAD_AUTH_EVENT,
};

static const char xml[] = "<message to='b@x' type='chat'><body>hi</body></message>";

static void build_route(Mk__Route *r)
{
    mk__route__init(r);
    r->kind = MK__STANZA_KIND__STANZA_KIND_MESSAGE;
    r->from = (char *)"a@x/res";
    r->to = (char *)"b@x";
    r->type = (char *)"chat";
    r->id = (char *)"m1";
    r->xml.data = (uint8_t *)xml;
    r->xml.len = sizeof xml - 1;
    r->has_body = 1;
    r->hops = 2;
}

static void build_open(Mk__SessionOpen *o, uint64_t id)
{
    mk__session_open__init(o);
    o->jid = (char *)"a@x/res";
    o->c2s = (char *)"c2s.0";
    o->session_id = id;
    o->priority = -5;
    o->available = 1;
    o->login_us = 1700000000000000ull;
}

static void build_sample(struct sample *s, Mk__Envelope__PayloadCase kind)
{
    memset(s, 0, sizeof *s);
    Mk__Envelope *e = &s->env;
    mk__envelope__init(e);
    e->sender = (char *)"router.1";
    e->trace_id = 0x1234567890abcdefull;
    e->rc_epoch = 1700000000123456ull;
    e->rc_seq = 42;
    e->payload_case = kind;
    switch (kind) {
    case MK__ENVELOPE__PAYLOAD_HELLO:
        mk__hello__init(&s->hello);
        s->hello.role = (char *)"router";
        s->hello.started_us = 99;
        s->hello.reply = 1;
        e->hello = &s->hello;
        break;
    case MK__ENVELOPE__PAYLOAD_ACK:
        mk__ack__init(&s->ack);
        s->ack.epoch = 7;
        s->ack.upto = 1000000;
        e->ack = &s->ack;
        break;
    case MK__ENVELOPE__PAYLOAD_ROUTE:
        build_route(&s->route);
        e->route = &s->route;
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:
        build_open(&s->open, 77);
        e->session_open = &s->open;
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        mk__session_close__init(&s->close);
        s->close.jid = (char *)"a@x/res";
        s->close.c2s = (char *)"c2s.1";
        s->close.session_id = 5;
        s->close.reason = (char *)"conflict";
        e->session_close = &s->close;
        break;
    case MK__ENVELOPE__PAYLOAD_DELIVER:
        mk__deliver__init(&s->deliver);
        build_route(&s->inner_route);
        s->session_ids[0] = 1;
        s->session_ids[1] = 300;
        s->session_ids[2] = UINT64_MAX;
        s->deliver.n_session_ids = 3;
        s->deliver.session_ids = s->session_ids;
        s->deliver.route = &s->inner_route;
        e->deliver = &s->deliver;
        break;
    case MK__ENVELOPE__PAYLOAD_RESYNC:
        mk__resync__init(&s->resync);
        build_open(&s->opens[0], 1);
        build_open(&s->opens[1], 2);
        s->open_ptrs[0] = &s->opens[0];
        s->open_ptrs[1] = &s->opens[1];
        s->resync.router = (char *)"router.0";
        s->resync.n_sessions = 2;
        s->resync.sessions = s->open_ptrs;
        s->resync.done = 1;
        e->resync = &s->resync;
        break;
    case MK__ENVELOPE__PAYLOAD_PROBE:
        mk__probe__init(&s->probe);
        s->probe.jid = (char *)"b@x";
        e->probe = &s->probe;
        break;
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        mk__archive_write__init(&s->archive);
        s->archive.owner = (char *)"a@x";
        s->archive.peer = (char *)"b@x";
        s->archive.peer_resource = (char *)"phone";
        s->archive.outgoing = 1;
        s->archive.mam_id = 123456789;
        s->archive.origin_id = (char *)"o-1";
        s->archive.xml.data = (uint8_t *)xml;
        s->archive.xml.len = sizeof xml - 1;
        s->archive.body = (char *)"hi";
        s->archive.offline = 1;
        s->archive.stamp_us = 1700000000000001ull;
        e->archive = &s->archive;
        break;
    case MK__ENVELOPE__PAYLOAD_MAM_QUERY:
        mk__mam_query__init(&s->mam_query);
        s->mam_query.owner = (char *)"a@x";
        s->mam_query.c2s = (char *)"c2s.0";
        s->mam_query.session_id = 9;
        s->mam_query.xml.data = (uint8_t *)"<iq/>";
        s->mam_query.xml.len = 5;
        s->mam_query.from = (char *)"a@x/res";
        e->mam_query = &s->mam_query;
        break;
    case MK__ENVELOPE__PAYLOAD_MAM_RESULT:
        mk__mam_result__init(&s->mam_result);
        s->mam_result.session_id = 9;
        s->mam_result.xml.data = (uint8_t *)xml;
        s->mam_result.xml.len = sizeof xml - 1;
        s->mam_result.last = 1;
        e->mam_result = &s->mam_result;
        break;
    case MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH:
        mk__offline_fetch__init(&s->offline);
        s->offline.owner = (char *)"a@x";
        s->offline.c2s = (char *)"c2s.2";
        s->offline.session_id = 11;
        e->offline_fetch = &s->offline;
        break;
    case MK__ENVELOPE__PAYLOAD_KICK:
        mk__kick__init(&s->kick);
        s->kick.jid = (char *)"a@x";
        s->kick.reason = (char *)"admin";
        e->kick = &s->kick;
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_LIST:
        mk__session_list__init(&s->list);
        build_open(&s->opens[0], 3);
        s->open_ptrs[0] = &s->opens[0];
        s->list.n_sessions = 1;
        s->list.sessions = s->open_ptrs;
        s->list.reply_to = (char *)"ctl.0";
        e->session_list = &s->list;
        break;
    case MK__ENVELOPE__PAYLOAD_TEST:
        mk__test__init(&s->test);
        s->test.n = 100000;
        s->test.pad.data = (uint8_t *)"\0\1\2\3";
        s->test.pad.len = 4;
        e->test = &s->test;
        break;
    case MK__ENVELOPE__PAYLOAD_AUTH_EVENT:
        mk__auth_event__init(&s->auth_event);
        s->auth_event.kind = MK__AUTH_EVENT_KIND__AUTH_EVENT_REGISTERED;
        s->auth_event.address = "2001:db8::7";
        s->auth_event.account = "alice@example.com";
        e->auth_event = &s->auth_event;
        break;
    default:
        fail();
    }
}

static void assert_route_equal(const Mk__Route *a, const Mk__Route *b)
{
    assert_int_equal(a->kind, b->kind);
    assert_string_equal(a->from, b->from);
    assert_string_equal(a->to, b->to);
    assert_string_equal(a->type, b->type);
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->xml.len, b->xml.len);
    assert_memory_equal(a->xml.data, b->xml.data, a->xml.len);
    assert_int_equal(a->has_body, b->has_body);
    assert_int_equal(a->hops, b->hops);
}

static void assert_open_equal(const Mk__SessionOpen *a, const Mk__SessionOpen *b)
{
    assert_string_equal(a->jid, b->jid);
    assert_string_equal(a->c2s, b->c2s);
    assert_int_equal(a->session_id, b->session_id);
    assert_int_equal(a->priority, b->priority);
    assert_int_equal(a->available, b->available);
    assert_int_equal(a->login_us, b->login_us);
}

/* Field-by-field comparison of what was built and what came back. */
static void assert_envelope_equal(const Mk__Envelope *a, const Mk__Envelope *b)
{
    assert_int_equal(b->version, ENV_VERSION);
    assert_string_equal(a->sender, b->sender);
    assert_int_equal(a->trace_id, b->trace_id);
    assert_int_equal(a->rc_epoch, b->rc_epoch);
    assert_int_equal(a->rc_seq, b->rc_seq);
    assert_int_equal(a->payload_case, b->payload_case);
    switch (a->payload_case) {
    case MK__ENVELOPE__PAYLOAD_HELLO:
        assert_string_equal(a->hello->role, b->hello->role);
        assert_int_equal(a->hello->started_us, b->hello->started_us);
        assert_int_equal(a->hello->reply, b->hello->reply);
        break;
    case MK__ENVELOPE__PAYLOAD_ACK:
        assert_int_equal(a->ack->epoch, b->ack->epoch);
        assert_int_equal(a->ack->upto, b->ack->upto);
        break;
    case MK__ENVELOPE__PAYLOAD_ROUTE:
        assert_route_equal(a->route, b->route);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:
        assert_open_equal(a->session_open, b->session_open);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        assert_string_equal(a->session_close->jid, b->session_close->jid);
        assert_string_equal(a->session_close->c2s, b->session_close->c2s);
        assert_int_equal(a->session_close->session_id, b->session_close->session_id);
        assert_string_equal(a->session_close->reason, b->session_close->reason);
        break;
    case MK__ENVELOPE__PAYLOAD_DELIVER:
        assert_int_equal(a->deliver->n_session_ids, b->deliver->n_session_ids);
        for (size_t i = 0; i < a->deliver->n_session_ids; i++)
            assert_int_equal(a->deliver->session_ids[i], b->deliver->session_ids[i]);
        assert_route_equal(a->deliver->route, b->deliver->route);
        break;
    case MK__ENVELOPE__PAYLOAD_RESYNC:
        assert_string_equal(a->resync->router, b->resync->router);
        assert_int_equal(a->resync->n_sessions, b->resync->n_sessions);
        for (size_t i = 0; i < a->resync->n_sessions; i++)
            assert_open_equal(a->resync->sessions[i], b->resync->sessions[i]);
        assert_int_equal(a->resync->done, b->resync->done);
        break;
    case MK__ENVELOPE__PAYLOAD_PROBE:
        assert_string_equal(a->probe->jid, b->probe->jid);
        break;
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        assert_string_equal(a->archive->owner, b->archive->owner);
        assert_string_equal(a->archive->peer, b->archive->peer);
        assert_string_equal(a->archive->peer_resource, b->archive->peer_resource);
        assert_int_equal(a->archive->outgoing, b->archive->outgoing);
        assert_int_equal(a->archive->mam_id, b->archive->mam_id);
        assert_string_equal(a->archive->origin_id, b->archive->origin_id);
        assert_int_equal(a->archive->xml.len, b->archive->xml.len);
        assert_memory_equal(a->archive->xml.data, b->archive->xml.data, a->archive->xml.len);
        assert_string_equal(a->archive->body, b->archive->body);
        assert_int_equal(a->archive->offline, b->archive->offline);
        assert_int_equal(a->archive->stamp_us, b->archive->stamp_us);
        break;
    case MK__ENVELOPE__PAYLOAD_MAM_QUERY:
        assert_string_equal(a->mam_query->owner, b->mam_query->owner);
        assert_string_equal(a->mam_query->c2s, b->mam_query->c2s);
        assert_int_equal(a->mam_query->session_id, b->mam_query->session_id);
        assert_int_equal(a->mam_query->xml.len, b->mam_query->xml.len);
        assert_memory_equal(a->mam_query->xml.data, b->mam_query->xml.data, a->mam_query->xml.len);
        assert_string_equal(a->mam_query->from, b->mam_query->from);
        break;
    case MK__ENVELOPE__PAYLOAD_MAM_RESULT:
        assert_int_equal(a->mam_result->session_id, b->mam_result->session_id);
        assert_int_equal(a->mam_result->xml.len, b->mam_result->xml.len);
        assert_memory_equal(a->mam_result->xml.data, b->mam_result->xml.data, a->mam_result->xml.len);
        assert_int_equal(a->mam_result->last, b->mam_result->last);
        break;
    case MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH:
        assert_string_equal(a->offline_fetch->owner, b->offline_fetch->owner);
        assert_string_equal(a->offline_fetch->c2s, b->offline_fetch->c2s);
        assert_int_equal(a->offline_fetch->session_id, b->offline_fetch->session_id);
        break;
    case MK__ENVELOPE__PAYLOAD_KICK:
        assert_string_equal(a->kick->jid, b->kick->jid);
        assert_string_equal(a->kick->reason, b->kick->reason);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_LIST:
        assert_int_equal(a->session_list->n_sessions, b->session_list->n_sessions);
        assert_open_equal(a->session_list->sessions[0], b->session_list->sessions[0]);
        assert_string_equal(a->session_list->reply_to, b->session_list->reply_to);
        assert_int_equal(a->session_list->done, b->session_list->done);
        break;
    case MK__ENVELOPE__PAYLOAD_TEST:
        assert_int_equal(a->test->n, b->test->n);
        assert_int_equal(a->test->pad.len, b->test->pad.len);
        assert_memory_equal(a->test->pad.data, b->test->pad.data, a->test->pad.len);
        break;
    case MK__ENVELOPE__PAYLOAD_AUTH_EVENT:
        assert_int_equal(a->auth_event->kind, b->auth_event->kind);
        assert_string_equal(a->auth_event->address, b->auth_event->address);
        assert_string_equal(a->auth_event->account, b->auth_event->account);
        break;
    default:
        fail();
    }
}

/* With MK_ENV_CORPUS_DIR set, also writes each packed sample there: that is how the
 * fuzz seed corpus tests/fuzz/corpus/env/ was made. */
static void write_corpus_as(const char *name, const struct buf *b)
{
    const char *dir = getenv("MK_ENV_CORPUS_DIR");
    if (dir == NULL)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
    assert_int_equal(fclose(f), 0);
}

static void maybe_write_corpus(const Mk__Envelope *e, const struct buf *b)
{
    write_corpus_as(env_payload_name(e), b);
}

static void test_round_trip_every_payload(void **state)
{
    for (size_t k = 0; k < sizeof all_kinds / sizeof all_kinds[0]; k++) {
        struct sample s;
        build_sample(&s, all_kinds[k]);
        struct buf b;
        buf_init(&b);
        env_pack(&s.env, &b);
        assert_int_equal(s.env.version, ENV_VERSION);
        maybe_write_corpus(&s.env, &b);
        Mk__Envelope *d = env_decode(b.data, b.len);
        assert_non_null(d);
        assert_envelope_equal(&s.env, d);
        assert_string_equal(env_payload_name(d), env_payload_name(&s.env));
        assert_string_not_equal(env_payload_name(d), "none");
        env_free(&d);
        assert_null(d);
        buf_release(&b);
    }
    env_free(NULL);
}

static void test_pack_appends(void **state)
{
    struct sample s;
    build_sample(&s, MK__ENVELOPE__PAYLOAD_ACK);
    struct buf b;
    buf_init(&b);
    buf_append(&b, "xy", 2);
    env_pack(&s.env, &b);
    Mk__Envelope *d = env_decode(b.data + 2, b.len - 2);
    assert_non_null(d);
    assert_int_equal(d->ack->upto, 1000000);
    env_free(&d);
    buf_release(&b);
}

static void test_payload_names(void **state)
{
    Mk__Envelope e = MK__ENVELOPE__INIT;
    assert_string_equal(env_payload_name(&e), "none");
    assert_string_equal(env_payload_name(NULL), "none");
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    assert_string_equal(env_payload_name(&e), "route");
    e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    assert_string_equal(env_payload_name(&e), "hello");
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    assert_string_equal(env_payload_name(&e), "archive");
}

static void test_garbage_rejected(void **state)
{
    static const char *const garbage[] = {
        "hello world",
        "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        "<message/>",
        "\x0a\xff\xff\xff\xff\x0f",     /* field 1 as a length-delimited run past the end */
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        assert_null(env_decode(garbage[i], strlen(garbage[i])));
    assert_null(env_decode("", 0));
    assert_null(env_decode(NULL, 0));
    assert_null(env_decode(NULL, 5));

    /* Pseudo-random frames: none may crash; almost all must be refused. */
    uint32_t x = 12345;
    unsigned char frame[64];
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(round % sizeof frame);
        for (size_t j = 0; j < len; j++) {
            x = x * 1103515245u + 12345u;
            frame[j] = (unsigned char)(x >> 16);
        }
        Mk__Envelope *d = env_decode(frame, len);
        if (d != NULL) {
            assert_true(d->sender[0] != '\0');
            assert_true(d->payload_case != MK__ENVELOPE__PAYLOAD__NOT_SET);
        }
        env_free(&d);
    }
}

/* Packs a Kick envelope by hand, with extra bytes inside the Kick (inner) and after
 * the envelope (outer), so stray fields can be planted at both depths. */
static void pack_kick_with(struct buf *b, const char *inner, size_t inner_len,
                           const char *outer, size_t outer_len)
{
    struct sample s;
    build_sample(&s, MK__ENVELOPE__PAYLOAD_KICK);
    uint8_t kick[128];
    size_t klen = mk__kick__pack(&s.kick, kick);
    assert_true(klen + inner_len < 128);
    memcpy(kick + klen, inner, inner_len);
    klen += inner_len;
    s.env.payload_case = MK__ENVELOPE__PAYLOAD__NOT_SET;
    buf_reset(b);
    env_pack(&s.env, b);
    buf_append(b, "\xb2\x01", 2);            /* field 22 (kick), length-delimited */
    uint8_t len = (uint8_t)klen;
    buf_append(b, &len, 1);
    buf_append(b, kick, klen);
    buf_append(b, outer, outer_len);
}

/* Field number 0 in a long tag form: protobuf-c would keep it and then pack a frame
 * it cannot read back (found by fuzz_env). Refused at the top level and nested. */
static void test_field_zero_rejected(void **state)
{
    static const char field0[] = "\x81\x00" "\x01\x02\x03\x04\x05\x06\x07\x08";
    static const char field99[] = "\x98\x06\x01";   /* field 99 varint: unknown, valid */
    struct buf b;
    buf_init(&b);
    pack_kick_with(&b, "", 0, "", 0);
    Mk__Envelope *d = env_decode(b.data, b.len);
    assert_non_null(d);
    assert_string_equal(d->kick->reason, "admin");
    env_free(&d);

    pack_kick_with(&b, field99, sizeof field99 - 1, field99, sizeof field99 - 1);
    d = env_decode(b.data, b.len);
    assert_non_null(d);     /* a newer sender's fields are kept, not refused */
    env_free(&d);

    pack_kick_with(&b, "", 0, field0, sizeof field0 - 1);
    assert_null(env_decode(b.data, b.len));
    pack_kick_with(&b, field0, sizeof field0 - 1, "", 0);
    assert_null(env_decode(b.data, b.len));
    buf_release(&b);
}

static void test_truncated_rejected(void **state)
{
    for (size_t k = 0; k < sizeof all_kinds / sizeof all_kinds[0]; k++) {
        struct sample s;
        build_sample(&s, all_kinds[k]);
        struct buf b;
        buf_init(&b);
        env_pack(&s.env, &b);
        /* The payload is the last field packed (highest numbers) and a sub-message:
         * every cut inside the frame lands inside a field or drops the payload. */
        for (size_t cut = 0; cut < b.len; cut++) {
            Mk__Envelope *d = env_decode(b.data, cut);
            assert_null(d);
        }
        buf_release(&b);
    }
}

static void test_newer_version_rejected(void **state)
{
    struct sample s;
    build_sample(&s, MK__ENVELOPE__PAYLOAD_PROBE);
    /* Packed through the generated code directly: env_pack would stamp ENV_VERSION. */
    s.env.version = ENV_VERSION + 1;
    size_t n = mk__envelope__get_packed_size(&s.env);
    uint8_t *raw = malloc(n);
    assert_non_null(raw);
    mk__envelope__pack(&s.env, raw);
    assert_null(env_decode(raw, n));

    /* Version 0 (a sender that predates the field) is accepted. */
    s.env.version = 0;
    n = mk__envelope__pack(&s.env, raw);
    Mk__Envelope *d = env_decode(raw, n);
    assert_non_null(d);
    env_free(&d);
    free(raw);
}

static void test_empty_sender_and_payload_rejected(void **state)
{
    struct sample s;
    build_sample(&s, MK__ENVELOPE__PAYLOAD_KICK);
    struct buf b;
    buf_init(&b);
    s.env.sender = (char *)"";
    env_pack(&s.env, &b);
    assert_null(env_decode(b.data, b.len));

    buf_reset(&b);
    s.env.sender = (char *)"c2s.0";
    s.env.payload_case = MK__ENVELOPE__PAYLOAD__NOT_SET;
    env_pack(&s.env, &b);
    assert_null(env_decode(b.data, b.len));
    buf_release(&b);
}

/* A fan-out template made whole for each recipient: the JID escaped at to_at, the rest
 * of the bytes and the routing fields as they were. */
static void test_route_fill(void **state)
{
    (void)state;
    static const char tmpl_xml[] = "<message from='r@muc.x/n' type='groupchat' to=''><body>a&amp;b</body></message>";
    Mk__Route t;
    env_route_init(&t, MK__STANZA_KIND__STANZA_KIND_MESSAGE, "r@muc.x/n", "", "groupchat", "m1", tmpl_xml,
                   sizeof tmpl_xml - 1);
    t.to_at = (uint32_t)(strstr(tmpl_xml, "to=''") - tmpl_xml + 4);
    t.has_body = true;
    t.hops = 2;
    struct buf out;
    buf_init(&out);
    Mk__Route w;
    assert_int_equal(env_route_fill(&t, "b@x/phone", &out, &w), 0);
    assert_string_equal(w.to, "b@x/phone");
    assert_int_equal(w.to_at, 0);
    assert_int_equal(w.hops, 2);
    assert_true(w.has_body);
    assert_string_equal(w.from, "r@muc.x/n");
    assert_string_equal(w.id, "m1");
    static const char want[] =
        "<message from='r@muc.x/n' type='groupchat' to='b@x/phone'><body>a&amp;b</body></message>";
    assert_int_equal(w.xml.len, sizeof want - 1);
    assert_memory_equal(w.xml.data, want, sizeof want - 1);
    /* A resource may hold what XML escapes; the buffer is emptied first. */
    assert_int_equal(env_route_fill(&t, "c@x/a'<&", &out, &w), 0);
    static const char want2[] =
        "<message from='r@muc.x/n' type='groupchat' to='c@x/a&apos;&lt;&amp;'><body>a&amp;b</body></message>";
    assert_int_equal(w.xml.len, sizeof want2 - 1);
    assert_memory_equal(w.xml.data, want2, sizeof want2 - 1);
    /* Not a template, or an offset past the bytes (a hostile frame): refused. */
    Mk__Route bad = t;
    bad.to_at = 0;
    assert_int_equal(env_route_fill(&bad, "b@x/p", &out, &w), -1);
    bad.to_at = (uint32_t)sizeof tmpl_xml;
    assert_int_equal(env_route_fill(&bad, "b@x/p", &out, &w), -1);
    bad.to_at = (uint32_t)(sizeof tmpl_xml - 1);   /* at the very end: allowed */
    assert_int_equal(env_route_fill(&bad, "b@x/p", &out, &w), 0);
    assert_int_equal(env_route_fill(&t, NULL, &out, &w), -1);
    buf_release(&out);
}

/* A fan-out Deliver (templates, sessions and their JIDs) and a Fanout survive the bus. */
/* An envelope whose decoded form is far larger than its frame (thousands of empty
 * strings and empty routes: 2 bytes each on the wire, a pointer, a struct or a padded
 * allocation each once decoded) outgrows the block env_decode carves it from: the rest
 * is allocated on its own, every value reads back, and env_free releases all of it (the
 * unit target runs under LeakSanitizer); cut short anywhere, the frame is refused and
 * nothing it had allocated is left behind. */
static void test_decode_beyond_the_block(void **state)
{
    (void)state;
    enum { N = 3000 };
    static char *to[N];
    static Mk__Route routes[N];
    static Mk__Route *stanzas[N];
    static char name[N][8];
    for (size_t i = 0; i < N; i++) {
        snprintf(name[i], sizeof name[i], "%zu", i % 7 == 0 ? i : 0);
        to[i] = i % 7 == 0 ? name[i] : (char *)"";
        env_route_init(&routes[i], MK__STANZA_KIND__STANZA_KIND_MESSAGE, "", "", NULL, NULL, "", 0);
        routes[i].to_at = (uint32_t)i;
        stanzas[i] = &routes[i];
    }
    Mk__Fanout f = MK__FANOUT__INIT;
    f.n_stanzas = N;
    f.stanzas = stanzas;
    f.n_to = N;
    f.to = to;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.sender = (char *)"router.1";
    e.payload_case = MK__ENVELOPE__PAYLOAD_FANOUT;
    e.fanout = &f;
    struct buf b;
    buf_init(&b);
    env_pack(&e, &b);
    assert_true(b.len < (size_t)N * sizeof(Mk__Route));   /* decoded, it cannot fit len + slack */
    Mk__Envelope *got = env_decode(b.data, b.len);
    assert_non_null(got);
    assert_string_equal(got->sender, "router.1");
    assert_int_equal(got->fanout->n_stanzas, N);
    assert_int_equal(got->fanout->n_to, N);
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(got->fanout->to[i], to[i]);
        assert_int_equal(got->fanout->stanzas[i]->to_at, i);
    }
    env_free(&got);
    assert_null(got);
    for (size_t cut = b.len - 1; cut > 0; cut -= cut > 4000 ? 997 : 1) {
        got = env_decode(b.data, cut);
        env_free(&got);
    }
    buf_release(&b);
}

static void test_fanout_round_trip(void **state)
{
    (void)state;
    static const char x1[] = "<presence from='r@m/a' to=''/>";
    static const char x2[] = "<message from='r@m' to='' type='groupchat'><subject/></message>";
    Mk__Route r1, r2;
    env_route_init(&r1, MK__STANZA_KIND__STANZA_KIND_PRESENCE, "r@m/a", "", NULL, NULL, x1, sizeof x1 - 1);
    r1.to_at = 27;
    env_route_init(&r2, MK__STANZA_KIND__STANZA_KIND_MESSAGE, "r@m", "", "groupchat", NULL, x2, sizeof x2 - 1);
    r2.to_at = 24;
    Mk__Route *more[1] = {&r2};
    uint64_t ids[2] = {7, 9};
    char *jids[2] = {(char *)"a@x/1", (char *)"b@x/2"};
    Mk__Deliver d = MK__DELIVER__INIT;
    d.route = &r1;
    d.n_more = 1;
    d.more = more;
    d.n_session_ids = 2;
    d.session_ids = ids;
    d.n_session_jids = 2;
    d.session_jids = jids;
    d.custody_id = 5;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.sender = (char *)"router.0";
    e.payload_case = MK__ENVELOPE__PAYLOAD_DELIVER;
    e.deliver = &d;
    struct buf b;
    buf_init(&b);
    env_pack(&e, &b);
    write_corpus_as("deliver_fanout", &b);
    Mk__Envelope *got = env_decode(b.data, b.len);
    assert_non_null(got);
    const Mk__Deliver *g = got->deliver;
    assert_int_equal(g->n_session_ids, 2);
    assert_int_equal(g->n_session_jids, 2);
    assert_string_equal(g->session_jids[1], "b@x/2");
    assert_int_equal(g->n_more, 1);
    assert_int_equal(g->route->to_at, 27);
    assert_int_equal(g->more[0]->to_at, 24);
    struct buf out;
    buf_init(&out);
    Mk__Route w;
    assert_int_equal(env_route_fill(g->more[0], g->session_jids[1], &out, &w), 0);
    static const char want[] = "<message from='r@m' to='b@x/2' type='groupchat'><subject/></message>";
    assert_int_equal(w.xml.len, sizeof want - 1);
    assert_memory_equal(w.xml.data, want, sizeof want - 1);
    env_free(&got);

    Mk__Route *stanzas[2] = {&r1, &r2};
    Mk__Fanout f = MK__FANOUT__INIT;
    f.n_stanzas = 2;
    f.stanzas = stanzas;
    f.n_to = 2;
    f.to = jids;
    e.payload_case = MK__ENVELOPE__PAYLOAD_FANOUT;
    e.fanout = &f;
    buf_reset(&b);
    env_pack(&e, &b);
    write_corpus_as("fanout", &b);
    got = env_decode(b.data, b.len);
    assert_non_null(got);
    assert_string_equal(env_payload_name(got), "fanout");
    assert_int_equal(got->fanout->n_stanzas, 2);
    assert_int_equal(got->fanout->n_to, 2);
    assert_string_equal(got->fanout->to[0], "a@x/1");
    assert_int_equal(env_route_fill(got->fanout->stanzas[0], got->fanout->to[0], &out, &w), 0);
    static const char want1[] = "<presence from='r@m/a' to='a@x/1'/>";
    assert_int_equal(w.xml.len, sizeof want1 - 1);
    assert_memory_equal(w.xml.data, want1, sizeof want1 - 1);
    env_free(&got);
    buf_release(&out);
    buf_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_fill),
        cmocka_unit_test(test_fanout_round_trip),
        cmocka_unit_test(test_decode_beyond_the_block),
        cmocka_unit_test(test_round_trip_every_payload),
        cmocka_unit_test(test_pack_appends),
        cmocka_unit_test(test_payload_names),
        cmocka_unit_test(test_garbage_rejected),
        cmocka_unit_test(test_field_zero_rejected),
        cmocka_unit_test(test_truncated_rejected),
        cmocka_unit_test(test_newer_version_rejected),
        cmocka_unit_test(test_empty_sender_and_payload_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* tests/unit/test_router.c - the router's session table and its RFC 6121 routing decision, without a bus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"
#include "../../router/router.h"
#include "util.h"

#define MSG MK__STANZA_KIND__STANZA_KIND_MESSAGE
#define PRES MK__STANZA_KIND__STANZA_KIND_PRESENCE
#define IQ MK__STANZA_KIND__STANZA_KIND_IQ

/* --- helpers ---------------------------------------------------------------------------- */

struct evicted {
    char full[128];
    char c2s[32];
    uint64_t session_id;
    char reason[32];
};

struct evict_log {
    struct evicted e[64];
    size_t n;
};

static void record_evict(void *ud, const struct router_sess *s, const char *reason)
{
    struct evict_log *log = ud;
    assert_true(log->n < MK_ARRAY_LEN(log->e));
    struct evicted *ev = &log->e[log->n++];
    mk_strlcpy(ev->full, s->full, sizeof ev->full);
    mk_strlcpy(ev->c2s, s->c2s->id, sizeof ev->c2s);
    ev->session_id = s->session_id;
    mk_strlcpy(ev->reason, reason, sizeof ev->reason);
}

static int setup(void **state)
{
    struct sess_table *t = xcalloc(1, sizeof *t);
    sess_table_init(t);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct sess_table *t = *state;
    sess_table_release(t);
    free(t);
    return 0;
}

static struct router_sess *open_full(struct sess_table *t, const char *full, const char *c2s, uint64_t id,
                                     int prio, bool avail, uint64_t login_us, unsigned max, struct evict_log *log)
{
    struct sess_info in = {
        .full = full,
        .c2s = c2s,
        .session_id = id,
        .priority = prio,
        .available = avail,
        .interested = true,
        .login_us = login_us,
    };
    return sess_table_open(t, &in, max, log ? record_evict : NULL, log);
}

static struct router_sess *open_s(struct sess_table *t, const char *full, uint64_t id, int prio, bool avail)
{
    return open_full(t, full, "c2s.0", id, prio, avail, id, 10, NULL);
}

static bool is_local(void *ud, const char *d, size_t n)
{
    return (n == 9 && memcmp(d, "localhost", 9) == 0) || (n == 11 && memcmp(d, "example.com", 11) == 0);
}

static Mk__Route mk_route(Mk__StanzaKind kind, const char *from, const char *to, const char *type, bool body)
{
    Mk__Route r = MK__ROUTE__INIT;
    r.kind = kind;
    r.from = (char *)from;
    r.to = (char *)to;
    r.type = (char *)type;
    r.id = (char *)"id1";
    r.xml.data = (uint8_t *)"<message/>";
    r.xml.len = 10;
    r.has_body = body;
    return r;
}

static void decide(const struct sess_table *t, Mk__StanzaKind kind, const char *to, const char *type, bool body,
                   struct route_decision *d)
{
    Mk__Route r = mk_route(kind, "sender@example.com/pc", to, type, body);
    route_decide(t, &r, is_local, NULL, d);
}

/* Asserts that d delivers to exactly the sessions with the ids given (any order), 0-terminated. */
static void assert_targets(struct route_decision *d, ...)
{
    va_list ap;
    uint64_t want[32];
    size_t n = 0;
    va_start(ap, d);
    for (uint64_t id; (id = va_arg(ap, uint64_t)) != 0;)
        want[n++] = id;
    va_end(ap);
    assert_int_equal(d->action, ROUTE_ACTION_DELIVER);
    assert_int_equal(d->ntargets, n);
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < d->ntargets; j++)
            found = found || d->targets[j]->session_id == want[i];
        assert_true(found);
    }
    route_decision_release(d);
}

static void assert_action(struct route_decision *d, enum route_action a, const char *condition)
{
    assert_int_equal(d->action, a);
    assert_int_equal(d->ntargets, 0);
    if (condition != NULL) {
        assert_string_equal(d->condition, condition);
        assert_string_equal(d->error_type, "cancel");
    }
    route_decision_release(d);
}

/* --- JID split ------------------------------------------------------------------------------ */

static void test_jid_split(void **state)
{
    struct jid_view v;
    assert_int_equal(router_jid_split("a@b/c", &v), 0);
    assert_int_equal(v.bare_len, 3);
    assert_int_equal(v.domain_off, 2);
    assert_int_equal(v.domain_len, 1);
    assert_true(v.has_local);
    assert_string_equal(v.resource, "c");
    assert_int_equal(router_jid_split("a@b/c@d/e", &v), 0);
    assert_int_equal(v.bare_len, 3);
    assert_string_equal(v.resource, "c@d/e");
    assert_int_equal(router_jid_split("example.com", &v), 0);
    assert_false(v.has_local);
    assert_null(v.resource);
    assert_int_equal(v.domain_len, 11);
    assert_int_equal(router_jid_split("example.com/r", &v), 0);
    assert_false(v.has_local);
    assert_int_equal(router_jid_split("", &v), -1);
    assert_int_equal(router_jid_split(NULL, &v), -1);
    assert_int_equal(router_jid_split("@b", &v), -1);
    assert_int_equal(router_jid_split("a@", &v), -1);
    assert_int_equal(router_jid_split("a@/r", &v), -1);
    assert_int_equal(router_jid_split("a@b/", &v), -1);
    assert_int_equal(router_jid_split("/r", &v), -1);
}

/* --- the session table ------------------------------------------------------------------------ */

static void test_open_update_close(void **state)
{
    struct sess_table *t = *state;
    struct router_sess *s = open_s(t, "alice@localhost/pc", 1, 0, false);
    assert_non_null(s);
    assert_int_equal(t->nsessions, 1);
    assert_int_equal(t->nusers, 1);
    assert_ptr_equal(sess_table_find(t, "alice@localhost/pc"), s);
    assert_null(sess_table_find(t, "alice@localhost/phone"));
    assert_null(sess_table_find(t, "alice@localhost"));
    /* Re-sent SessionOpen: an update in place. */
    struct router_sess *s2 = open_s(t, "alice@localhost/pc", 1, 7, true);
    assert_ptr_equal(s2, s);
    assert_int_equal(s->priority, 7);
    assert_true(s->available);
    assert_int_equal(t->nsessions, 1);
    open_s(t, "alice@localhost/phone", 2, 0, true);
    assert_int_equal(t->nsessions, 2);
    assert_int_equal(t->nusers, 1);
    assert_int_equal(sess_table_user(t, "alice@localhost", 15)->nsessions, 2);
    /* A close with another session id, or from another c2s, is stale: ignored. */
    assert_int_equal(sess_table_close(t, "alice@localhost/pc", "c2s.0", 99), -1);
    assert_int_equal(sess_table_close(t, "alice@localhost/pc", "c2s.1", 1), -1);
    assert_int_equal(sess_table_close(t, "alice@localhost/nope", "c2s.0", 1), -1);
    assert_int_equal(sess_table_close(t, NULL, "c2s.0", 1), -1);
    assert_int_equal(sess_table_close(t, "alice@localhost/pc", NULL, 1), -1);
    assert_int_equal(t->nsessions, 2);
    assert_int_equal(sess_table_close(t, "alice@localhost/pc", "c2s.0", 1), 0);
    assert_int_equal(sess_table_close(t, "alice@localhost/phone", "c2s.0", 2), 0);
    assert_int_equal(t->nsessions, 0);
    assert_int_equal(t->nusers, 0);
    assert_null(sess_table_user(t, "alice@localhost", 15));
    /* Bad input. */
    assert_null(open_s(t, "alice@localhost", 3, 0, true));
    assert_null(open_s(t, "", 3, 0, true));
    assert_null(open_s(t, NULL, 3, 0, true));
    assert_null(open_full(t, "alice@localhost/x", "", 3, 0, true, 0, 10, NULL));
    assert_null(open_full(t, "alice@localhost/x", NULL, 3, 0, true, 0, 10, NULL));
    assert_int_equal(t->nsessions, 0);
    assert_int_equal(t->nusers, 0);
}

static void test_conflict(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    open_full(t, "bob@localhost/pc", "c2s.0", 1, 0, true, 100, 10, &log);
    open_full(t, "bob@localhost/phone", "c2s.0", 2, 0, true, 100, 10, &log);
    assert_int_equal(log.n, 0);
    /* Same full JID logs in on another c2s: the old session is told "conflict". */
    struct router_sess *s = open_full(t, "bob@localhost/pc", "c2s.1", 5, 0, true, 200, 10, &log);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.e[0].full, "bob@localhost/pc");
    assert_string_equal(log.e[0].c2s, "c2s.0");
    assert_int_equal(log.e[0].session_id, 1);
    assert_string_equal(log.e[0].reason, "conflict");
    assert_ptr_equal(sess_table_find(t, "bob@localhost/pc"), s);
    assert_string_equal(s->c2s->id, "c2s.1");
    assert_int_equal(s->session_id, 5);
    assert_int_equal(t->nsessions, 2);
    /* The old c2s's SessionClose for it is stale now. */
    assert_int_equal(sess_table_close(t, "bob@localhost/pc", "c2s.0", 1), -1);
    assert_ptr_equal(sess_table_find(t, "bob@localhost/pc"), s);
    /* Same c2s, new session id: a conflict too. */
    open_full(t, "bob@localhost/pc", "c2s.1", 6, 0, true, 300, 10, &log);
    assert_int_equal(log.n, 2);
    assert_int_equal(log.e[1].session_id, 5);
    assert_string_equal(log.e[1].c2s, "c2s.1");
    /* The purge of c2s.0 must not touch the replaced session now on c2s.1. */
    assert_int_equal(sess_table_purge_c2s(t, "c2s.0"), 1);
    assert_non_null(sess_table_find(t, "bob@localhost/pc"));
    assert_null(sess_table_find(t, "bob@localhost/phone"));
}

/* Issue 11 item 1: the session that lost a conflict sends its unavailable presence (a
 * SessionOpen update) before its close; it must not take the JID back. */
static void test_conflict_late_update_of_loser(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    open_full(t, "bob@localhost/x", "c2s.0", 1, 0, true, 100, 10, &log);
    struct router_sess *s = open_full(t, "bob@localhost/x", "c2s.1", 2, 0, false, 200, 10, &log);
    assert_int_equal(log.n, 1);
    assert_int_equal(log.e[0].session_id, 1);
    struct sess_info upd = {
        .full = "bob@localhost/x", .c2s = "c2s.0", .session_id = 1, .available = false,
        .login_us = 100, .update = true,
    };
    assert_ptr_equal(sess_table_open(t, &upd, 10, record_evict, &log), s);
    assert_int_equal(log.n, 1);
    assert_int_equal(s->session_id, 2);
    assert_string_equal(s->c2s->id, "c2s.1");
    assert_int_equal(sess_table_close(t, "bob@localhost/x", "c2s.0", 1), -1);
    assert_ptr_equal(sess_table_find(t, "bob@localhost/x"), s);
    /* An update of the holder itself applies. */
    upd.c2s = "c2s.1";
    upd.session_id = 2;
    upd.login_us = 200;
    upd.available = true;
    assert_ptr_equal(sess_table_open(t, &upd, 10, record_evict, &log), s);
    assert_true(s->available);
    /* An update for a JID nobody holds registers it (a router that lost its table). */
    upd.full = "bob@localhost/y";
    assert_non_null(sess_table_open(t, &upd, 10, record_evict, &log));
    assert_int_equal(t->nsessions, 2);
    /* A re-registration (after a router restart) of an older login loses: it is the
     * one told to close, and the table keeps the newer. */
    struct router_sess *old = open_full(t, "bob@localhost/x", "c2s.0", 1, 0, true, 100, 10, &log);
    assert_ptr_equal(old, s);
    assert_int_equal(log.n, 2);
    assert_string_equal(log.e[1].c2s, "c2s.0");
    assert_int_equal(log.e[1].session_id, 1);
    assert_string_equal(log.e[1].reason, "conflict");
    assert_int_equal(s->session_id, 2);
}

static void test_max_sessions(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    open_full(t, "carol@localhost/a", "c2s.0", 1, 0, true, 1000, 3, &log);
    open_full(t, "carol@localhost/b", "c2s.1", 2, 0, true, 2000, 3, &log);
    open_full(t, "carol@localhost/c", "c2s.0", 3, 0, true, 3000, 3, &log);
    assert_int_equal(log.n, 0);
    /* A fourth login replaces the oldest. */
    open_full(t, "carol@localhost/d", "c2s.1", 4, 0, true, 4000, 3, &log);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.e[0].full, "carol@localhost/a");
    assert_string_equal(log.e[0].reason, "policy-violation");
    assert_int_equal(t->nsessions, 3);
    assert_null(sess_table_find(t, "carol@localhost/a"));
    /* An update of an existing session never evicts. */
    open_full(t, "carol@localhost/b", "c2s.1", 2, 5, true, 2000, 3, &log);
    assert_int_equal(log.n, 1);
    /* The new one is never the victim, even with an older login time (clock skew). */
    open_full(t, "carol@localhost/e", "c2s.0", 5, 0, true, 10, 3, &log);
    assert_int_equal(log.n, 2);
    assert_string_equal(log.e[1].full, "carol@localhost/b");
    assert_non_null(sess_table_find(t, "carol@localhost/e"));
    /* Equal login times: the first inserted is the oldest. */
    open_full(t, "dave@localhost/1", "c2s.0", 11, 0, true, 7, 2, &log);
    open_full(t, "dave@localhost/2", "c2s.0", 12, 0, true, 7, 2, &log);
    open_full(t, "dave@localhost/3", "c2s.0", 13, 0, true, 7, 2, &log);
    assert_int_equal(log.n, 3);
    assert_string_equal(log.e[2].full, "dave@localhost/1");
    /* A lower limit (after a restart) trims down to it at the next open. */
    open_full(t, "carol@localhost/f", "c2s.0", 6, 0, true, 5000, 1, &log);
    assert_int_equal(log.n, 6);
    assert_int_equal(sess_table_user(t, "carol@localhost", 15)->nsessions, 1);
    assert_non_null(sess_table_find(t, "carol@localhost/f"));
    /* 0 = no limit. */
    for (uint64_t i = 0; i < 40; i++) {
        char full[64];
        snprintf(full, sizeof full, "erin@localhost/r%llu", (unsigned long long)i);
        assert_non_null(open_full(t, full, "c2s.0", 100 + i, 0, true, i, 0, &log));
    }
    assert_int_equal(log.n, 6);
    assert_int_equal(sess_table_user(t, "erin@localhost", 14)->nsessions, 40);
}

static void test_purge_c2s(void **state)
{
    struct sess_table *t = *state;
    open_full(t, "a@localhost/1", "c2s.0", 1, 0, true, 0, 10, NULL);
    open_full(t, "a@localhost/2", "c2s.1", 2, 0, true, 0, 10, NULL);
    open_full(t, "b@localhost/1", "c2s.0", 3, 0, true, 0, 10, NULL);
    open_full(t, "c@localhost/1", "c2s.1", 4, 0, true, 0, 10, NULL);
    assert_int_equal(t->nusers, 3);
    assert_int_equal(sess_table_purge_c2s(t, "c2s.0"), 2);
    assert_int_equal(t->nsessions, 2);
    assert_int_equal(t->nusers, 2);
    assert_null(sess_table_find(t, "a@localhost/1"));
    assert_non_null(sess_table_find(t, "a@localhost/2"));
    assert_null(sess_table_user(t, "b@localhost", 11));
    assert_int_equal(sess_table_purge_c2s(t, "c2s.0"), 0);
    assert_int_equal(sess_table_purge_c2s(t, "c2s.9"), 0);
    assert_int_equal(sess_table_purge_c2s(t, NULL), 0);
    /* The c2s comes back: its sessions re-register. */
    open_full(t, "b@localhost/1", "c2s.0", 1, 0, true, 0, 10, NULL);
    assert_int_equal(t->nsessions, 3);
    assert_int_equal(sess_table_purge_c2s(t, "c2s.1"), 2);
    assert_int_equal(sess_table_purge_c2s(t, "c2s.0"), 1);
    assert_int_equal(t->nsessions, 0);
    assert_int_equal(t->nusers, 0);
}

/* Keeps the users whose bare JID does not start with "m" (the moved ones do). */
static bool keep_not_m(void *ud, const char *bare, size_t len)
{
    (*(size_t *)ud)++;
    return len == 0 || bare[0] != 'm';
}

/* A reload gave some users to another shard: all their sessions go, nothing is evicted
 * (no callback: nobody is told), the others stay. */
static void test_drop_users(void **state)
{
    struct sess_table *t = *state;
    open_full(t, "ma@localhost/1", "c2s.0", 1, 0, true, 0, 10, NULL);
    open_full(t, "ma@localhost/2", "c2s.1", 2, 0, true, 0, 10, NULL);
    open_full(t, "ma@localhost/3", "c2s.1", 3, 0, true, 0, 10, NULL);
    open_full(t, "sb@localhost/1", "c2s.0", 4, 0, true, 0, 10, NULL);
    open_full(t, "mc@localhost/1", "c2s.1", 5, 0, true, 0, 10, NULL);
    open_full(t, "sd@localhost/1", "c2s.1", 6, 0, true, 0, 10, NULL);
    size_t asked = 0;
    assert_int_equal(sess_table_drop_users(t, keep_not_m, &asked), 4);
    assert_int_equal(asked, 4);                              /* once per user */
    assert_int_equal(t->nusers, 2);
    assert_int_equal(t->nsessions, 2);
    assert_null(sess_table_user(t, "ma@localhost", 12));
    assert_null(sess_table_find(t, "mc@localhost/1"));
    assert_non_null(sess_table_find(t, "sb@localhost/1"));
    assert_non_null(sess_table_find(t, "sd@localhost/1"));
    /* The c2s lists stay right: purging a c2s finds only its remaining sessions. */
    assert_int_equal(sess_table_purge_c2s(t, "c2s.1"), 1);
    assert_int_equal(sess_table_drop_users(t, keep_not_m, &asked), 0);
    assert_int_equal(t->nsessions, 1);
}

static void test_kick(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    open_full(t, "a@localhost/1", "c2s.0", 1, 0, true, 0, 10, NULL);
    open_full(t, "a@localhost/2", "c2s.1", 2, 0, true, 0, 10, NULL);
    open_full(t, "a@localhost/3", "c2s.1", 3, 0, true, 0, 10, NULL);
    open_full(t, "b@localhost/1", "c2s.0", 4, 0, true, 0, 10, NULL);
    assert_int_equal(sess_table_kick(t, "a@localhost/2", "kicked", record_evict, &log), 1);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.e[0].full, "a@localhost/2");
    assert_string_equal(log.e[0].c2s, "c2s.1");
    assert_string_equal(log.e[0].reason, "kicked");
    assert_null(sess_table_find(t, "a@localhost/2"));
    assert_int_equal(sess_table_kick(t, "a@localhost/2", "kicked", record_evict, &log), 0);
    assert_int_equal(sess_table_kick(t, "a@localhost", "kicked", record_evict, &log), 2);
    assert_int_equal(log.n, 3);
    assert_null(sess_table_user(t, "a@localhost", 11));
    assert_int_equal(sess_table_kick(t, "nobody@localhost", "kicked", record_evict, &log), 0);
    assert_int_equal(sess_table_kick(t, "", "kicked", record_evict, &log), 0);
    assert_int_equal(sess_table_kick(t, NULL, "kicked", record_evict, &log), 0);
    assert_int_equal(sess_table_kick(t, "b@localhost", "removed", NULL, NULL), 1);
    assert_int_equal(t->nsessions, 0);
    assert_int_equal(t->nusers, 0);
}

static void count_cb(void *ud, const struct router_sess *s)
{
    (*(size_t *)ud)++;
}

static void test_many_users(void **state)
{
    struct sess_table *t = *state;
    enum { N = 50000 };
    char full[64];
    for (unsigned i = 0; i < N; i++) {
        snprintf(full, sizeof full, "user%u@localhost/r%u", i, i % 3);
        assert_non_null(open_full(t, full, i % 2 ? "c2s.1" : "c2s.0", i + 1, 0, true, 0, 10, NULL));
    }
    assert_int_equal(t->nusers, N);
    assert_true(t->nbuckets >= N);
    size_t n = 0;
    sess_table_foreach(t, count_cb, &n);
    assert_int_equal(n, N);
    for (unsigned i = 0; i < N; i += 997) {
        snprintf(full, sizeof full, "user%u@localhost/r%u", i, i % 3);
        struct router_sess *s = sess_table_find(t, full);
        assert_non_null(s);
        assert_int_equal(s->session_id, i + 1);
    }
    assert_int_equal(sess_table_purge_c2s(t, "c2s.1"), N / 2);
    assert_int_equal(t->nusers, N / 2);
}

/* --- the routing decision ---------------------------------------------------------------------- */

static void test_full_jid_present(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    /* Unavailable and negative priority do not matter for a full JID. */
    open_s(t, "alice@localhost/pc", 1, -5, false);
    open_s(t, "alice@localhost/phone", 2, 10, true);
    decide(t, MSG, "alice@localhost/pc", "chat", true, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, MSG, "alice@localhost/pc", "groupchat", true, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, MSG, "alice@localhost/pc", "error", false, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, PRES, "alice@localhost/pc", "", false, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, PRES, "alice@localhost/pc", "probe", false, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, IQ, "alice@localhost/pc", "get", false, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, IQ, "alice@localhost/phone", "result", false, &d);
    assert_targets(&d, 2ull, 0ull);
}

static void test_full_jid_absent(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "alice@localhost/a", 1, 5, true);
    open_s(t, "alice@localhost/b", 2, 1, true);
    open_s(t, "alice@localhost/c", 3, 5, false);
    /* message chat/normal/headline: as if to the bare JID. */
    decide(t, MSG, "alice@localhost/gone", "chat", true, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, MSG, "alice@localhost/gone", "", true, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, MSG, "alice@localhost/gone", "normal", true, &d);
    assert_targets(&d, 1ull, 0ull);
    decide(t, MSG, "alice@localhost/gone", "headline", false, &d);
    assert_targets(&d, 1ull, 2ull, 0ull);
    /* groupchat: service-unavailable; error: dropped. */
    decide(t, MSG, "alice@localhost/gone", "groupchat", true, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, MSG, "alice@localhost/gone", "error", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* presence: subscription types as if to the bare JID, the others dropped. */
    const char *subs[] = {"subscribe", "subscribed", "unsubscribe", "unsubscribed"};
    for (size_t i = 0; i < MK_ARRAY_LEN(subs); i++) {
        decide(t, PRES, "alice@localhost/gone", subs[i], false, &d);
        assert_targets(&d, 1ull, 2ull, 0ull);
    }
    const char *others[] = {"", "unavailable", "probe", "error"};
    for (size_t i = 0; i < MK_ARRAY_LEN(others); i++) {
        decide(t, PRES, "alice@localhost/gone", others[i], false, &d);
        assert_action(&d, ROUTE_ACTION_DROP, NULL);
    }
    /* iq: get/set bounce, result/error dropped. */
    decide(t, IQ, "alice@localhost/gone", "get", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, IQ, "alice@localhost/gone", "set", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, IQ, "alice@localhost/gone", "result", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, IQ, "alice@localhost/gone", "error", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* A user with no session at all: iq bounces; chat with a body goes offline. */
    decide(t, IQ, "nobody@localhost/x", "get", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, MSG, "nobody@localhost/x", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_OFFLINE, NULL);
    decide(t, PRES, "nobody@localhost/x", "subscribe", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
}

static void test_bare_message_priority(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "bob@localhost/a", 1, 5, true);
    open_s(t, "bob@localhost/b", 2, 5, true);
    open_s(t, "bob@localhost/c", 3, 1, true);
    open_s(t, "bob@localhost/d", 4, -1, true);
    open_s(t, "bob@localhost/e", 5, 9, false);   /* unavailable: ignored */
    /* chat/normal: every session tied at the highest priority. */
    decide(t, MSG, "bob@localhost", "chat", true, &d);
    assert_targets(&d, 1ull, 2ull, 0ull);
    decide(t, MSG, "bob@localhost", "", true, &d);
    assert_targets(&d, 1ull, 2ull, 0ull);
    decide(t, MSG, "bob@localhost", "normal", false, &d);
    assert_targets(&d, 1ull, 2ull, 0ull);
    /* headline: every available session with priority >= 0. */
    decide(t, MSG, "bob@localhost", "headline", false, &d);
    assert_targets(&d, 1ull, 2ull, 3ull, 0ull);
    /* groupchat to a bare JID: service-unavailable. */
    decide(t, MSG, "bob@localhost", "groupchat", true, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    /* An error message to a bare JID with sessions goes to the best one. */
    decide(t, MSG, "bob@localhost", "error", false, &d);
    assert_targets(&d, 1ull, 2ull, 0ull);
    /* One session at 0 and one priority 2: the 2 wins alone. */
    open_s(t, "carl@localhost/a", 11, 0, true);
    open_s(t, "carl@localhost/b", 12, 2, true);
    decide(t, MSG, "carl@localhost", "chat", true, &d);
    assert_targets(&d, 12ull, 0ull);
    /* Priority 0 is deliverable. */
    open_s(t, "carl@localhost/b", 12, -3, true);
    decide(t, MSG, "carl@localhost", "chat", true, &d);
    assert_targets(&d, 11ull, 0ull);
}

static void test_bare_message_unavailable(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    /* Only negative priorities and unavailable sessions: nobody gets messages. */
    open_s(t, "dan@localhost/a", 1, -1, true);
    open_s(t, "dan@localhost/b", 2, -128, true);
    open_s(t, "dan@localhost/c", 3, 5, false);
    decide(t, MSG, "dan@localhost", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_OFFLINE, NULL);
    decide(t, MSG, "dan@localhost", "", true, &d);
    assert_action(&d, ROUTE_ACTION_OFFLINE, NULL);
    decide(t, MSG, "dan@localhost", "normal", true, &d);
    assert_action(&d, ROUTE_ACTION_OFFLINE, NULL);
    /* Bodiless (chat states), headline, error: dropped silently. */
    decide(t, MSG, "dan@localhost", "chat", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, MSG, "dan@localhost", "headline", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, MSG, "dan@localhost", "error", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, MSG, "dan@localhost", "groupchat", true, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    /* XEP-0334 no-store. */
    Mk__Route r = mk_route(MSG, "s@localhost/x", "dan@localhost", "chat", true);
    r.no_store = true;
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* Nobody at all. */
    decide(t, MSG, "nobody@localhost", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_OFFLINE, NULL);
    decide(t, MSG, "nobody@localhost", "headline", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* A domain JID has no offline storage. */
    decide(t, MSG, "localhost", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
}

static void test_bare_presence(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "eve@localhost/a", 1, 5, true);
    open_s(t, "eve@localhost/b", 2, -1, true);
    open_s(t, "eve@localhost/c", 3, 0, false);
    const char *types[] = {"", "unavailable", "probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"};
    for (size_t i = 0; i < MK_ARRAY_LEN(types); i++) {
        decide(t, PRES, "eve@localhost", types[i], false, &d);
        assert_targets(&d, 1ull, 2ull, 0ull);
    }
    open_s(t, "fay@localhost/a", 4, 5, false);
    for (size_t i = 0; i < MK_ARRAY_LEN(types); i++) {
        decide(t, PRES, "fay@localhost", types[i], false, &d);
        assert_action(&d, ROUTE_ACTION_DROP, NULL);
        decide(t, PRES, "nobody@localhost", types[i], false, &d);
        assert_action(&d, ROUTE_ACTION_DROP, NULL);
    }
}

static void test_bare_iq(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "gus@localhost/a", 1, 5, true);
    decide(t, IQ, "gus@localhost", "get", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, IQ, "gus@localhost", "set", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
    decide(t, IQ, "gus@localhost", "result", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, IQ, "gus@localhost", "error", false, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* The account pushing to itself (roster, block list): every session, available or not. */
    open_s(t, "gus@localhost/b", 2, -1, false);
    Mk__Route r = mk_route(IQ, "gus@localhost", "gus@localhost", "set", false);
    route_decide(t, &r, is_local, NULL, &d);
    assert_targets(&d, (uint64_t)1, (uint64_t)2, (uint64_t)0);
    r = mk_route(IQ, "gus@localhost/a", "gus@localhost", "set", false);
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "service-unavailable");
}

static void test_remote_and_guards(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "hal@localhost/a", 1, 5, true);
    decide(t, MSG, "someone@remote.org", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "remote-server-not-found");
    decide(t, IQ, "someone@remote.org/r", "get", false, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "remote-server-not-found");
    decide(t, MSG, "someone@remote.org", "error", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* Domains are compared exactly: a suffix is not local. */
    decide(t, MSG, "x@xlocalhost", "chat", true, &d);
    assert_action(&d, ROUTE_ACTION_ERROR, "remote-server-not-found");
    /* The loop guard. */
    Mk__Route r = mk_route(MSG, "s@localhost/x", "hal@localhost", "chat", true);
    r.hops = ROUTER_MAX_HOPS;
    route_decide(t, &r, is_local, NULL, &d);
    assert_targets(&d, 1ull, 0ull);
    r.hops = ROUTER_MAX_HOPS + 1;
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    assert_string_equal(d.reason, "loop");
    /* Malformed to: bounce jid-malformed (never for errors and presence). */
    decide(t, MSG, "@localhost", "chat", true, &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    assert_string_equal(d.condition, "jid-malformed");
    assert_string_equal(d.error_type, "modify");
    route_decision_release(&d);
    decide(t, MSG, "", "error", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    decide(t, PRES, "", "subscribe", true, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
}

static void test_missing_fields(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    open_s(t, "ida@localhost/a", 1, 5, true);
    route_decide(t, NULL, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    Mk__Route r = MK__ROUTE__INIT;   /* every string "" */
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    /* No sender: delivered (an error answering a bad address has none), never bounced or stored. */
    r = mk_route(MSG, NULL, "ida@localhost", "chat", true);
    route_decide(t, &r, is_local, NULL, &d);
    assert_targets(&d, 1ull, 0ull);
    r = mk_route(MSG, "", "nobody@localhost", "chat", true);
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    assert_string_equal(d.reason, "no_sender");
    r = mk_route(IQ, "", "ida@localhost/zz", "get", false);
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    r = mk_route(MSG, "s@localhost/x", NULL, "chat", true);
    route_decide(t, &r, is_local, NULL, &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    route_decision_release(&d);
    r = mk_route(MSG, "s@localhost/x", "ida@localhost", NULL, true);   /* no type = normal */
    route_decide(t, &r, is_local, NULL, &d);
    assert_targets(&d, 1ull, 0ull);
    r = mk_route((Mk__StanzaKind)77, "s@localhost/x", "ida@localhost", "chat", true);
    route_decide(t, &r, is_local, NULL, &d);
    assert_action(&d, ROUTE_ACTION_DROP, NULL);
    r = mk_route(MSG, "s@localhost/x", "ida@localhost", "chat", true);
    route_decide(t, &r, NULL, NULL, &d);   /* no domain check: nothing is local */
    assert_action(&d, ROUTE_ACTION_ERROR, "remote-server-not-found");
}

static void test_many_targets(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    char full[64];
    for (unsigned i = 1; i <= 40; i++) {
        snprintf(full, sizeof full, "jon@localhost/r%u", i);
        open_full(t, full, i % 2 ? "c2s.0" : "c2s.1", i, 1, true, i, 0, NULL);
    }
    decide(t, MSG, "jon@localhost", "chat", true, &d);
    assert_int_equal(d.action, ROUTE_ACTION_DELIVER);
    assert_int_equal(d.ntargets, 40);
    route_decision_release(&d);
    decide(t, PRES, "jon@localhost", "", false, &d);
    assert_int_equal(d.ntargets, 40);
    route_decision_release(&d);
}

static void test_error_xml(void **state)
{
    struct buf b;
    buf_init(&b);
    route_error_xml(&b, MSG, "bob@localhost", "al'i&<ce>@localhost/r\"", "i'd", "cancel", "service-unavailable");
    assert_string_equal(buf_cstr(&b),
                        "<message from='bob@localhost' to='al&apos;i&amp;&lt;ce&gt;@localhost/r&quot;' type='error' "
                        "id='i&apos;d'><error type='cancel'><service-unavailable "
                        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
    buf_reset(&b);
    route_error_xml(&b, IQ, "a@localhost/r", "b@localhost/s", "", "cancel", "service-unavailable");
    assert_string_equal(buf_cstr(&b), "<iq from='a@localhost/r' to='b@localhost/s' type='error'><error "
                                      "type='cancel'><service-unavailable "
                                      "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
    buf_reset(&b);
    route_error_xml(&b, PRES, NULL, "b@localhost", NULL, "cancel", "remote-server-not-found");
    assert_string_equal(buf_cstr(&b), "<presence to='b@localhost' type='error'><error type='cancel'>"
                                      "<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                                      "</error></presence>");
    buf_release(&b);
    assert_string_equal(route_kind_name(IQ), "iq");
    assert_string_equal(route_kind_name(PRES), "presence");
    assert_string_equal(route_kind_name(MSG), "message");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jid_split),
        T(test_open_update_close),
        T(test_conflict),
        T(test_conflict_late_update_of_loser),
        T(test_max_sessions),
        T(test_purge_c2s),
        T(test_drop_users),
        T(test_kick),
        T(test_many_users),
        T(test_full_jid_present),
        T(test_full_jid_absent),
        T(test_bare_message_priority),
        T(test_bare_message_unavailable),
        T(test_bare_presence),
        T(test_bare_iq),
        T(test_remote_and_guards),
        T(test_missing_fields),
        T(test_many_targets),
        cmocka_unit_test(test_error_xml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

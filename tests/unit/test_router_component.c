/* tests/unit/test_router_component.c - external components (XEP-0114) in the router's table and routing decision, without a bus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../router/router.h"
#include "util.h"

#define MSG MK__STANZA_KIND__STANZA_KIND_MESSAGE
#define PRES MK__STANZA_KIND__STANZA_KIND_PRESENCE
#define IQ MK__STANZA_KIND__STANZA_KIND_IQ

struct evict_log {
    char full[8][64];
    char c2s[8][16];
    uint64_t id[8];
    char reason[8][32];
    size_t n;
};

static void record_evict(void *ud, const struct router_sess *s, const char *reason)
{
    struct evict_log *log = ud;
    assert_true(log->n < 8);
    mk_strlcpy(log->full[log->n], s->full, sizeof log->full[0]);
    mk_strlcpy(log->c2s[log->n], s->c2s->id, sizeof log->c2s[0]);
    log->id[log->n] = s->session_id;
    mk_strlcpy(log->reason[log->n], reason, sizeof log->reason[0]);
    log->n++;
}

static bool is_local(void *ud, const char *d, size_t n)
{
    (void)ud;
    return n == 9 && memcmp(d, "localhost", 9) == 0;
}

static int setup(void **state)
{
    struct sess_table *t = xcalloc(1, sizeof *t);
    sess_table_init(t);
    router_component_add(t, "comp.example");
    router_component_add(t, "push.example");
    router_component_add(t, "comp.example");   /* once only */
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

static int open_comp(struct sess_table *t, const char *domain, const char *c2s, uint64_t id, uint64_t login_us,
                     struct evict_log *log)
{
    struct sess_info in = {.full = domain, .c2s = c2s, .session_id = id, .login_us = login_us, .available = true};
    return router_component_open(t, &in, log ? record_evict : NULL, log);
}

static void decide(const struct sess_table *t, Mk__StanzaKind kind, const char *to, const char *type,
                   struct route_decision *d)
{
    Mk__Route r = MK__ROUTE__INIT;
    r.kind = kind;
    r.from = (char *)"alice@localhost/pc";
    r.to = (char *)to;
    r.type = (char *)type;
    r.id = (char *)"i1";
    r.has_body = true;
    route_decide(t, &r, is_local, NULL, d);
}

static void test_jid_is_domain(void **state)
{
    (void)state;
    assert_true(router_jid_is_domain("comp.example"));
    assert_false(router_jid_is_domain("a@comp.example"));
    assert_false(router_jid_is_domain("comp.example/r"));
    assert_false(router_jid_is_domain(""));
    assert_false(router_jid_is_domain(NULL));
}

static void test_routes_any_jid_at_the_domain(void **state)
{
    struct sess_table *t = *state;
    assert_int_equal(t->ncomponents, 2);
    assert_int_equal(open_comp(t, "comp.example", "c2s.1", 77, 1000, NULL), 0);
    assert_int_equal(router_component_connected(t), 1);
    const char *tos[] = {"comp.example", "room@comp.example", "room@comp.example/nick", "comp.example/x"};
    for (size_t i = 0; i < MK_ARRAY_LEN(tos); i++) {
        const char *types[] = {"chat", "", "groupchat", "error"};
        for (size_t k = 0; k < MK_ARRAY_LEN(types); k++) {
            struct route_decision d;
            decide(t, MSG, tos[i], types[k], &d);
            assert_int_equal(d.action, ROUTE_ACTION_COMPONENT);
            assert_int_equal(d.ntargets, 1);
            assert_int_equal(d.targets[0]->session_id, 77);
            assert_string_equal(d.targets[0]->c2s->id, "c2s.1");
            route_decision_release(&d);
        }
        struct route_decision d;
        decide(t, IQ, tos[i], "get", &d);
        assert_int_equal(d.action, ROUTE_ACTION_COMPONENT);
        route_decision_release(&d);
        decide(t, PRES, tos[i], "", &d);
        assert_int_equal(d.action, ROUTE_ACTION_COMPONENT);
        route_decision_release(&d);
    }
    /* Local users and unknown domains are routed as before. */
    struct route_decision d;
    decide(t, MSG, "bob@localhost", "chat", &d);
    assert_int_equal(d.action, ROUTE_ACTION_OFFLINE);
    route_decision_release(&d);
    decide(t, MSG, "x@comp.example.org", "chat", &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    assert_string_equal(d.condition, "remote-server-not-found");
    route_decision_release(&d);
    /* A suffix or prefix of a component domain is not it. */
    decide(t, MSG, "x@omp.example", "chat", &d);
    assert_string_equal(d.condition, "remote-server-not-found");
    route_decision_release(&d);
}

static void test_away_component_answers_wait(void **state)
{
    struct sess_table *t = *state;
    struct route_decision d;
    decide(t, MSG, "push.example", "chat", &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    assert_string_equal(d.error_type, "wait");
    assert_string_equal(d.condition, "service-unavailable");
    route_decision_release(&d);
    decide(t, IQ, "u@push.example", "set", &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    assert_string_equal(d.condition, "service-unavailable");
    route_decision_release(&d);
    /* Nothing answers an answer or presence. */
    const struct {
        Mk__StanzaKind kind;
        const char *type;
    } quiet[] = {{IQ, "result"}, {IQ, "error"}, {MSG, "error"}, {PRES, ""}, {PRES, "subscribe"}};
    for (size_t i = 0; i < MK_ARRAY_LEN(quiet); i++) {
        decide(t, quiet[i].kind, "push.example", quiet[i].type, &d);
        assert_int_equal(d.action, ROUTE_ACTION_DROP);
        route_decision_release(&d);
    }
}

static void test_newer_connection_replaces(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    assert_int_equal(open_comp(t, "comp.example", "c2s.0", 1, 1000, &log), 0);
    assert_int_equal(log.n, 0);
    /* The same connection again (a re-registration): nothing evicted. */
    assert_int_equal(open_comp(t, "comp.example", "c2s.0", 1, 1000, &log), 0);
    assert_int_equal(log.n, 0);
    /* A newer one on another c2s: the old is told to go. */
    assert_int_equal(open_comp(t, "comp.example", "c2s.1", 2, 2000, &log), 0);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.full[0], "comp.example");
    assert_string_equal(log.c2s[0], "c2s.0");
    assert_int_equal(log.id[0], 1);
    assert_string_equal(log.reason[0], "conflict");
    /* The older one arriving late (another shard's order, or a resync) loses: the table
     * keeps the newer one. Every shard so ends with the same holder. */
    assert_int_equal(open_comp(t, "comp.example", "c2s.0", 1, 1000, &log), 1);
    assert_int_equal(log.n, 2);
    assert_string_equal(log.c2s[1], "c2s.0");
    assert_int_equal(log.id[1], 1);
    struct route_decision d;
    decide(t, MSG, "comp.example", "chat", &d);
    assert_int_equal(d.targets[0]->session_id, 2);
    assert_string_equal(d.targets[0]->c2s->id, "c2s.1");
    route_decision_release(&d);
    /* The old connection's close does not remove the new one. */
    assert_int_equal(router_component_close(t, "comp.example", "c2s.0", 1), -1);
    assert_int_equal(router_component_connected(t), 1);
    assert_int_equal(router_component_close(t, "comp.example", "c2s.1", 2), 0);
    assert_int_equal(router_component_connected(t), 0);
    assert_int_equal(router_component_close(t, "comp.example", "c2s.1", 2), -1);
}

static void test_only_configured_domains(void **state)
{
    struct sess_table *t = *state;
    assert_int_equal(open_comp(t, "evil.example", "c2s.0", 5, 1, NULL), -1);
    assert_int_equal(open_comp(t, "comp.example", "", 5, 1, NULL), -1);
    assert_int_equal(router_component_connected(t), 0);
    struct route_decision d;
    decide(t, MSG, "evil.example", "chat", &d);
    assert_string_equal(d.condition, "remote-server-not-found");
    route_decision_release(&d);
}

static void test_c2s_restart_forgets(void **state)
{
    struct sess_table *t = *state;
    assert_int_equal(open_comp(t, "comp.example", "c2s.0", 1, 10, NULL), 0);
    assert_int_equal(open_comp(t, "push.example", "c2s.1", 2, 10, NULL), 0);
    struct sess_info in = {.full = "bob@localhost/r", .c2s = "c2s.0", .session_id = 3, .login_us = 10};
    assert_non_null(sess_table_open(t, &in, 10, NULL, NULL));
    assert_int_equal(sess_table_purge_c2s(t, "c2s.0"), 2);
    assert_int_equal(router_component_connected(t), 1);
    struct route_decision d;
    decide(t, MSG, "comp.example", "chat", &d);
    assert_int_equal(d.action, ROUTE_ACTION_ERROR);
    route_decision_release(&d);
    decide(t, MSG, "push.example", "chat", &d);
    assert_int_equal(d.action, ROUTE_ACTION_COMPONENT);
    route_decision_release(&d);
}

static void test_kick(void **state)
{
    struct sess_table *t = *state;
    struct evict_log log = {0};
    assert_int_equal(router_component_kick(t, "comp.example", "kicked", record_evict, &log), 0);
    assert_int_equal(open_comp(t, "comp.example", "c2s.0", 9, 10, NULL), 0);
    assert_int_equal(router_component_kick(t, "comp.example", "kicked", record_evict, &log), 1);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.reason[0], "kicked");
    assert_int_equal(log.id[0], 9);
    assert_int_equal(router_component_connected(t), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jid_is_domain),
        cmocka_unit_test_setup_teardown(test_routes_any_jid_at_the_domain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_away_component_answers_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_connection_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_configured_domains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_c2s_restart_forgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kick, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

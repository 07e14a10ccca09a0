/* tests/unit/test_router_muc.c - the pure helpers of router/muc.c (which history a joiner's <history/> asks for, XEP-0082 stamps) and the stored form of a persistent room (router/muc_state.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../router/muc.h"
#include "../../router/muc_state.h"
#include "buf.h"
#include "util.h"
#include "xml.h"

/* The <x xmlns=muc/> of a join with the given <history/> attributes ("" for none). */
static struct xml_node *join_x(const char *history_attrs)
{
    char doc[512];
    if (history_attrs == NULL)
        snprintf(doc, sizeof doc, "<x xmlns='" NS_MUC "'/>");
    else
        snprintf(doc, sizeof doc, "<x xmlns='" NS_MUC "'><history %s/></x>", history_attrs);
    char err[128];
    struct xml_node *x = xml_parse_document(doc, strlen(doc), err, sizeof err);
    assert_non_null(x);
    return x;
}

static size_t count(const char *attrs, const int64_t *stamps, size_t kept, int64_t now)
{
    struct xml_node *x = join_x(attrs);
    size_t n = muc_history_count(x, stamps, kept, now);
    xml_free(&x);
    return n;
}

static void test_history_count(void **state)
{
    (void)state;
    const int64_t s = 1000000;   /* one second in µs */
    const int64_t stamps[5] = {100 * s, 200 * s, 300 * s, 400 * s, 500 * s};
    const int64_t now = 500 * s;
    assert_int_equal(muc_history_count(NULL, stamps, 5, now), 5);        /* no <x/>: all kept */
    assert_int_equal(count(NULL, stamps, 5, now), 5);                    /* no <history/> */
    assert_int_equal(count("", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='2'", stamps, 5, now), 2);
    assert_int_equal(count("maxstanzas='0'", stamps, 5, now), 0);
    assert_int_equal(count("maxstanzas='99'", stamps, 5, now), 5);
    assert_int_equal(count("maxchars='0'", stamps, 5, now), 0);          /* XEP-0045 7.2.14: none */
    assert_int_equal(count("maxchars='500'", stamps, 5, now), 5);        /* not counted in characters */
    assert_int_equal(count("seconds='150'", stamps, 5, now), 2);         /* 400 and 500 are 150 s old or less */
    assert_int_equal(count("seconds='0'", stamps, 5, now), 1);           /* only what is this instant's */
    assert_int_equal(count("seconds='99999999999'", stamps, 5, now), 5); /* before the epoch: all */
    assert_int_equal(count("seconds='150' maxstanzas='1'", stamps, 5, now), 1);
    /* unparsable values are ignored */
    assert_int_equal(count("maxstanzas='-1'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='2x'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas=''", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='99999999999999999999999'", stamps, 5, now), 5);
    assert_int_equal(count("seconds='zz'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='3'", stamps, 0, now), 0);         /* nothing kept */
}

static void test_history_wrong_namespace(void **state)
{
    (void)state;
    const int64_t stamps[2] = {1, 2};
    const char doc[] = "<x xmlns='" NS_MUC "'><history xmlns='other' maxstanzas='0'/></x>";
    char err[128];
    struct xml_node *x = xml_parse_document(doc, sizeof doc - 1, err, sizeof err);
    assert_non_null(x);
    assert_int_equal(muc_history_count(x, stamps, 2, 3), 2);
    xml_free(&x);
}

static void test_stamp(void **state)
{
    (void)state;
    char out[40];
    muc_stamp(out, sizeof out, 0);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    muc_stamp(out, sizeof out, 1796284558123456LL);   /* 2026-12-03T07:55:58.123456Z */
    assert_string_equal(out, "2026-12-03T07:55:58.123Z");
}

/* A room's state, written and read back: every field as it was, 4-byte UTF-8 and XML
 * specials included; absent optional parts stay absent. */
static void test_state_round_trip(void **state)
{
    (void)state;
    struct muc_aff_entry affs[] = {
        {(char *)"alice@example.org", MUC_AFF_OWNER, (char *)"Al'ice \xf0\x9f\x98\x80"},
        {(char *)"bob@example.org", MUC_AFF_MEMBER, (char *)"bob"},
        {(char *)"eve@example.org", MUC_AFF_OUTCAST, NULL},
        {(char *)"carol@example.org", MUC_AFF_ADMIN, NULL},
    };
    struct muc_state in = {
        .creator = (char *)"alice@example.org",
        .conf = {.name = (char *)"Caf\xc3\xa9 <&> '\"' \xf0\x9f\x98\x80", .desc = (char *)"", .password = (char *)"p w",
                 .public_room = false, .persistent = true, .members_only = true, .moderated = true,
                 .change_subject = false, .allow_invites = false, .semi_anonymous = true, .max_users = 42,
                 .no_archive = true},
        .subject = (char *)"line1\nline2 ]]> &amp;",
        .subject_nick = (char *)"Al'ice",
        .affs = affs,
        .naffs = 4,
    };
    struct buf b;
    buf_init(&b);
    muc_state_write(&in, &b);
    struct muc_state out;
    char err[160] = "";
    if (muc_state_read(b.data, b.len, 1000, &out, err, sizeof err) != 0)
        fail_msg("read: %s\n%.*s", err, (int)b.len, b.data);
    assert_string_equal(out.creator, in.creator);
    assert_string_equal(out.conf.name, in.conf.name);
    assert_string_equal(out.conf.desc, "");
    assert_string_equal(out.conf.password, "p w");
    assert_false(out.conf.public_room);
    assert_true(out.conf.persistent);
    assert_true(out.conf.members_only);
    assert_true(out.conf.moderated);
    assert_false(out.conf.change_subject);
    assert_false(out.conf.allow_invites);
    assert_true(out.conf.semi_anonymous);
    assert_int_equal(out.conf.max_users, 42);
    assert_true(out.conf.no_archive);
    assert_string_equal(out.subject, in.subject);
    assert_string_equal(out.subject_nick, in.subject_nick);
    assert_int_equal(out.naffs, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(out.affs[i].bare, affs[i].bare);
        assert_int_equal(out.affs[i].aff, affs[i].aff);
        if (affs[i].nick == NULL)
            assert_null(out.affs[i].nick);
        else
            assert_string_equal(out.affs[i].nick, affs[i].nick);
    }
    /* Written again, the same bytes. */
    struct buf b2;
    buf_init(&b2);
    muc_state_write(&out, &b2);
    assert_int_equal(b2.len, b.len);
    assert_memory_equal(b2.data, b.data, b.len);
    muc_state_release(&out);
    buf_release(&b2);
    buf_release(&b);

    /* The defaults, nothing optional. */
    struct muc_state bare = {.creator = (char *)"x@y", .conf = {.public_room = true, .change_subject = true,
                                                                .allow_invites = true, .max_users = 200,
                                                                .persistent = true}};
    buf_init(&b);
    muc_state_write(&bare, &b);
    buf_append(&b, "", 1);
    assert_string_equal(b.data, "<room xmlns='urn:meerkat:muc-room:1' creator='x@y'><config public='1' members_only='0' "
                                "moderated='0' change_subject='1' allow_invites='1' whois='anyone' max_users='200' "
                                "archive='1'/></room>");
    assert_int_equal(muc_state_read(b.data, b.len - 1, 1000, &out, err, sizeof err), 0);
    assert_null(out.conf.name);
    assert_null(out.conf.desc);
    assert_null(out.conf.password);
    assert_null(out.subject);
    assert_null(out.subject_nick);
    assert_int_equal(out.naffs, 0);
    assert_true(out.conf.public_room && out.conf.change_subject && out.conf.allow_invites);
    assert_false(out.conf.no_archive);
    muc_state_release(&out);
    muc_state_release(&out);   /* twice: zeroed, nothing freed again */
    buf_release(&b);
    /* A temporary room's row (it archives): read back temporary. */
    bare.conf.persistent = false;
    buf_init(&b);
    muc_state_write(&bare, &b);
    buf_append(&b, "", 1);
    assert_non_null(strstr(b.data, " archive='1' temporary='1'/>"));
    assert_int_equal(muc_state_read(b.data, b.len - 1, 1000, &out, err, sizeof err), 0);
    assert_false(out.conf.persistent);
    muc_state_release(&out);
    buf_release(&b);
    /* A row written before rooms had archives: archiving on (the default). */
    static const char old[] = "<room xmlns='urn:meerkat:muc-room:1' creator='x@y'><config public='1' members_only='0' "
                              "moderated='0' change_subject='1' allow_invites='1' whois='anyone' max_users='200'/></room>";
    assert_int_equal(muc_state_read(old, sizeof old - 1, 1000, &out, err, sizeof err), 0);
    assert_false(out.conf.no_archive);
    muc_state_release(&out);
}

static void refused(const char *doc, size_t max_affs, const char *why)
{
    struct muc_state out;
    char err[160] = "";
    if (muc_state_read(doc, strlen(doc), max_affs, &out, err, sizeof err) != -1)
        fail_msg("accepted: %s", doc);
    if (strstr(err, why) == NULL)
        fail_msg("\"%s\" does not say \"%s\" for %s", err, why, doc);
    muc_state_release(&out);
}

#define CFG "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' whois='anyone' max_users='5'/>"
#define ROOM "<room xmlns='urn:meerkat:muc-room:1' creator='a@b'>"

/* What the store could hold that is not a room's state is refused, saying why. */
static void test_state_refused(void **state)
{
    (void)state;
    refused("", 10, "not well-formed");
    refused("<room", 10, "not well-formed");
    refused("<room xmlns='urn:other' creator='a@b'>" CFG "</room>", 10, "not a <room");
    refused("<x xmlns='urn:meerkat:muc-room:1' creator='a@b'>" CFG "</x>", 10, "not a <room");
    refused("<room xmlns='urn:meerkat:muc-room:1'>" CFG "</room>", 10, "creator");
    refused("<room xmlns='urn:meerkat:muc-room:1' creator='A@b'>" CFG "</room>", 10, "creator");   /* not prepared */
    refused("<room xmlns='urn:meerkat:muc-room:1' creator='a@b/r'>" CFG "</room>", 10, "creator"); /* not bare */
    refused(ROOM "</room>", 10, "no <config/>");
    refused(ROOM CFG CFG "</room>", 10, "<config/> twice");
    refused(ROOM "<config public='yes' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone' max_users='5'/></room>", 10, "public");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='all' max_users='5'/></room>", 10, "whois");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone' max_users='0'/></room>", 10, "max_users");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone' max_users='99999999999'/></room>", 10, "max_users");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone'/></room>", 10, "max_users");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone' max_users='5' archive='yes'/></room>", 10, "archive");
    refused(ROOM CFG "<name>a</name><name>b</name></room>", 10, "<name/> twice");
    refused(ROOM "<config public='1' members_only='0' moderated='0' change_subject='1' allow_invites='1' "
                 "whois='anyone' max_users='5' temporary='yes'/></room>", 10, "temporary");
    refused(ROOM CFG "<aff jid='c@d' affiliation='none'/></room>", 10, "<aff/>");
    refused(ROOM CFG "<aff jid='c@d' affiliation='king'/></room>", 10, "<aff/>");
    refused(ROOM CFG "<aff affiliation='member'/></room>", 10, "<aff/>");
    refused(ROOM CFG "<aff jid='c@d/r' affiliation='member'/></room>", 10, "<aff/>");
    refused(ROOM CFG "<aff jid='c@d' affiliation='member'/><aff jid='e@d' affiliation='admin'/>"
                     "<aff jid='c@d' affiliation='owner'/></room>", 10, "affiliated twice");
    refused(ROOM CFG "<aff jid='c@d' affiliation='member'/><aff jid='e@d' affiliation='admin'/></room>", 1,
            "more than 1 affiliations");
    refused(ROOM CFG "<!DOCTYPE x><x/></room>", 10, "not well-formed");
    /* A reserved nick belongs to one JID, and never to an outcast. */
    refused(ROOM CFG "<aff jid='c@d' affiliation='member' nick='n'/><aff jid='e@d' affiliation='admin'/>"
                     "<aff jid='f@d' affiliation='owner' nick='n'/></room>", 10, "nick reserved twice");
    refused(ROOM CFG "<aff jid='c@d' affiliation='outcast' nick='n'/></room>", 10, "outcast");
    refused(ROOM CFG "<aff jid='c@d' affiliation='member' nick=''/></room>", 10, "empty nick");
    /* A newer writer's additions are skipped, and elements of other namespaces. */
    struct muc_state out;
    char err[160];
    const char *doc = ROOM CFG "<future x='1'/><name xmlns='urn:other'>no</name><name>yes</name></room>";
    assert_int_equal(muc_state_read(doc, strlen(doc), 10, &out, err, sizeof err), 0);
    assert_string_equal(out.conf.name, "yes");
    muc_state_release(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_history_count),
        cmocka_unit_test(test_history_wrong_namespace),
        cmocka_unit_test(test_stamp),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_state_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

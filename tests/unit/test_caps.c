/* tests/unit/test_caps.c - c2s/caps.c: XEP-0115 verification strings (the XEP's worked examples 5.2 and 5.3 as vectors), the ill-formed answers 5.4 refuses, and the <c/> of a presence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../c2s/caps.h"
#include "xml.h"

static struct xml_node *doc(const char *s)
{
    char err[160];
    struct xml_node *n = xml_parse_document(s, strlen(s), err, sizeof err);
    if (!n)
        fail_msg("parse: %s", err);
    return n;
}

static char *ver_of(const char *s)
{
    static char ver[CAPS_VER_MAX];
    char err[96] = "";
    struct xml_node *q = doc(s);
    int rc = caps_ver(q, ver, sizeof ver, err, sizeof err);
    xml_free(&q);
    if (rc != 0)
        return NULL;
    return ver;
}

#define Q_OPEN "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>"

/* XEP-0115 5.2: the simple example. */
static void test_simple_example(void **state)
{
    (void)state;
    const char *q = Q_OPEN
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/muc'/>"
        "</query>";
    assert_string_equal(ver_of(q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    /* Order in the answer does not matter. */
    const char *shuffled = Q_OPEN
        "<feature var='http://jabber.org/protocol/muc'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/>"
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        "</query>";
    assert_string_equal(ver_of(shuffled), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    struct xml_node *n = doc(q);
    assert_true(caps_verify(n, "QgayPKawpkPSDYmwT/WM94uAlu0="));
    assert_false(caps_verify(n, "QgayPKawpkPSDYmwT/WM94uAlu1="));
    assert_false(caps_verify(n, NULL));
    xml_free(&n);
}

/* XEP-0115 5.3: the complex example (xml:lang, a non-ASCII name, an extended form). */
static void test_complex_example(void **state)
{
    (void)state;
    const char *q = "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>"
        "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
        "<identity xml:lang='el' category='client' name='\xce\xa8 0.11' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/muc'/>"
        "<x xmlns='jabber:x:data' type='result'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>"
        "<field var='ip_version'><value>ipv4</value><value>ipv6</value></field>"
        "<field var='os'><value>Mac</value></field>"
        "<field var='os_version'><value>10.5.1</value></field>"
        "<field var='software'><value>Psi</value></field>"
        "<field var='software_version'><value>0.11</value></field>"
        "</x></query>";
    assert_string_equal(ver_of(q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    /* Fields and values in another order: the same string. */
    const char *shuffled = "<query xmlns='http://jabber.org/protocol/disco#info'>"
        "<x xmlns='jabber:x:data' type='result'>"
        "<field var='software_version'><value>0.11</value></field>"
        "<field var='ip_version'><value>ipv6</value><value>ipv4</value></field>"
        "<field var='os_version'><value>10.5.1</value></field>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>"
        "<field var='software'><value>Psi</value></field>"
        "<field var='os'><value>Mac</value></field>"
        "</x>"
        "<feature var='http://jabber.org/protocol/muc'/>"
        "<identity xml:lang='el' category='client' name='\xce\xa8 0.11' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/>"
        "</query>";
    assert_string_equal(ver_of(shuffled), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    /* A form whose FORM_TYPE is not hidden is left out (5.4): the simple example's hash
     * with such a form added is unchanged. */
    const char *unhidden = Q_OPEN
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        "<feature var='http://jabber.org/protocol/disco#info'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/muc'/>"
        "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE'><value>urn:x</value></field></x>"
        "</query>";
    assert_string_equal(ver_of(unhidden), "QgayPKawpkPSDYmwT/WM94uAlu0=");
}

/* XEP-0115 5.4: ill-formed answers are refused, never hashed. */
static void test_ill_formed(void **state)
{
    (void)state;
    assert_null(ver_of("<query xmlns='http://jabber.org/protocol/disco#info'>"
                       "<feature var='a'/><feature var='a'/></query>"));
    assert_null(ver_of("<query xmlns='http://jabber.org/protocol/disco#info'>"
                       "<identity category='c' type='t'/><identity category='c' type='t'/></query>"));
    assert_null(ver_of("<query xmlns='http://jabber.org/protocol/disco#info'>"
                       "<x xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>u</value></field></x>"
                       "<x xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>u</value></field></x>"
                       "</query>"));
    assert_null(ver_of("<query xmlns='http://jabber.org/protocol/disco#info'>"
                       "<x xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>u</value><value>v</value>"
                       "</field></x></query>"));
    /* Empty: the hash of the empty string. */
    assert_string_equal(ver_of("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
                        "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
    /* Too many parts. */
    char *big = malloc(5000 * 32 + 200);
    size_t o = (size_t)sprintf(big, "<query xmlns='http://jabber.org/protocol/disco#info'>");
    for (int i = 0; i < 5000; i++)
        o += (size_t)sprintf(big + o, "<feature var='f%d'/>", i);
    sprintf(big + o, "</query>");
    assert_null(ver_of(big));
    free(big);
    char small[8], err[96];
    struct xml_node *n = doc("<query xmlns='http://jabber.org/protocol/disco#info'/>");
    assert_int_equal(caps_ver(n, small, sizeof small, err, sizeof err), -1);
    xml_free(&n);
}

static void test_presence_caps(void **state)
{
    (void)state;
    const char *node, *ver;
    struct xml_node *p = doc("<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                             "node='http://x' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>");
    assert_true(caps_of_presence(p, &node, &ver));
    assert_string_equal(node, "http://x");
    assert_string_equal(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    xml_free(&p);
    const char *refused[] = {
        "<presence xmlns='jabber:client'/>",
        "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' node='n' ver='1.0'/></presence>",
        "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='md5' node='n' "
        "ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
        "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
        "ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
        "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' "
        "ver='short'/></presence>",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        p = doc(refused[i]);
        assert_false(caps_of_presence(p, &node, &ver));
        xml_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_example),
        cmocka_unit_test(test_complex_example),
        cmocka_unit_test(test_ill_formed),
        cmocka_unit_test(test_presence_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

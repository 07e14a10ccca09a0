/* tests/unit/test_xml.c - the XMPP stream parser, element trees and the serializer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "buf.h"
#include "util.h"
#include "xml.h"

#define STREAM_HEADER \
    "<?xml version='1.0'?>" \
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'" \
    " to='example.com' version='1.0' xml:lang='en'>"

/* --- a recorder: every event as one line of text --------------------------------- */

struct recorder {
    struct xml_parser *parser;
    struct buf trace;
    int opens, stanzas, closes, errors;
    enum xml_error_kind error;
    struct xml_node *kept;            /* the last stanza, kept when keep is set */
    bool keep;
    const char *reset_on;             /* reset when a stanza with this name arrives */
    const char *stop_on;              /* stop when a stanza with this name arrives */
    bool error_text;                  /* ERROR lines carry xml_parser_error_text() */
    int idle_in_callback;             /* xml_parser_idle() calls from the callback that said true */
};

static void on_event(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct recorder *r = ud;
    switch (kind) {
    case XML_EVENT_STREAM_OPEN:
        r->opens++;
        buf_append_str(&r->trace, "OPEN ");
        xml_serialize(*node, NULL, &r->trace);
        buf_append_str(&r->trace, "\n");
        break;
    case XML_EVENT_STANZA:
        r->stanzas++;
        buf_append_str(&r->trace, "STANZA ");
        xml_serialize(*node, xml_parser_stream_ns(r->parser), &r->trace);
        buf_append_str(&r->trace, "\n");
        if (r->reset_on != NULL && strcmp((*node)->name, r->reset_on) == 0)
            xml_parser_reset(r->parser);
        if (r->stop_on != NULL && strcmp((*node)->name, r->stop_on) == 0)
            xml_parser_stop(r->parser);
        if (r->keep) {
            xml_free(&r->kept);
            r->kept = *node;
            *node = NULL;
        }
        break;
    case XML_EVENT_STREAM_CLOSE:
        r->closes++;
        buf_append_str(&r->trace, "CLOSE\n");
        break;
    case XML_EVENT_ERROR:
        assert_null(node);
        r->errors++;
        r->error = xml_parser_error(r->parser);
        buf_printf(&r->trace, "ERROR %s", xml_error_condition(r->error));
        if (r->error_text)
            buf_printf(&r->trace, " (%s)", xml_parser_error_text(r->parser));
        buf_append_str(&r->trace, "\n");
        break;
    }
    /* Never allowed from inside the callback: expat is on the stack. */
    if (xml_parser_idle(r->parser))
        r->idle_in_callback++;
}

static void recorder_init(struct recorder *r, const struct xml_limits *limits)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->trace);
    r->parser = xml_parser_new(limits, on_event, r);
}

static void recorder_release(struct recorder *r)
{
    xml_parser_free(&r->parser);
    assert_null(r->parser);
    xml_free(&r->kept);
    buf_release(&r->trace);
}

/* Feeds s in pieces: whole when seed is 0, byte by byte when seed is 1,
 * otherwise in pseudo-random pieces of 1..64 bytes. */
static void feed_split(struct recorder *r, const char *s, size_t n, uint32_t seed)
{
    size_t off = 0;
    uint32_t x = seed * 2654435761u + 1;
    while (off < n) {
        size_t len = n - off;
        if (seed == 1) {
            len = 1;
        } else if (seed > 1) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t piece = 1 + x % 64;
            if (piece < len)
                len = piece;
        }
        xml_parser_feed(r->parser, s + off, len);
        off += len;
    }
    /* The input pauses here: what the parser kept back (a long token's tail) is parsed. */
    xml_parser_flush(r->parser);
}

static enum xml_error_kind stream_error(const char *s, size_t n, const struct xml_limits *limits)
{
    struct recorder r;
    recorder_init(&r, limits);
    int rc = xml_parser_feed(r.parser, s, n);
    enum xml_error_kind kind = r.error;
    if (kind != XML_ERROR_NONE) {
        assert_int_equal(rc, -1);
        assert_int_equal(r.errors, 1);
        /* The parser stays failed: no second event, -1 again. */
        assert_int_equal(xml_parser_feed(r.parser, "<a/>", 4), -1);
        assert_int_equal(r.errors, 1);
        assert_true(strlen(xml_parser_error_text(r.parser)) > 0);
    } else {
        assert_int_equal(rc, 0);
    }
    recorder_release(&r);
    return kind;
}

static enum xml_error_kind stanza_error(const char *stanza)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, STREAM_HEADER);
    buf_append_str(&b, stanza);
    enum xml_error_kind kind = stream_error(b.data, b.len, NULL);
    buf_release(&b);
    return kind;
}

/* --- streams ------------------------------------------------------------------- */

static const char normal_stream[] =
    STREAM_HEADER
    "\n  <message to='juliet@example.com/balcony' type='chat' id='m1'>"
    "<body>Wherefore art thou, Romeo? caf\xc3\xa9 \xf0\x9f\x98\x80 &amp; &lt;3 &#x263A;</body>"
    "<thread>t&#49;</thread></message>\r\n"
    "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq> "
    "<presence><status><![CDATA[<away> & ]]>back soon</status><x xmlns=''/></presence>"
    "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    "<resource>a&quot;b</resource></bind></iq>\t"
    "</stream:stream>";

static void test_stream_basic(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    r.keep = true;
    assert_null(xml_parser_stream_ns(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, normal_stream, strlen(normal_stream)), 0);
    assert_int_equal(r.opens, 1);
    assert_int_equal(r.stanzas, 4);
    assert_int_equal(r.closes, 1);
    assert_int_equal(r.errors, 0);
    assert_int_equal(xml_parser_error(r.parser), XML_ERROR_NONE);
    assert_string_equal(xml_parser_stream_ns(r.parser), XML_NS_CLIENT);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    const char *t = buf_cstr(&r.trace);
    assert_non_null(strstr(t, "OPEN <stream xmlns=\"http://etherx.jabber.org/streams\" to=\"example.com\" "
                              "version=\"1.0\" xml:lang=\"en\"/>\n"));
    assert_non_null(strstr(t, "STANZA <message to=\"juliet@example.com/balcony\" type=\"chat\" id=\"m1\">"
                              "<body>Wherefore art thou, Romeo? caf\xc3\xa9 \xf0\x9f\x98\x80 &amp; &lt;3 "
                              "\xe2\x98\xba</body><thread>t1</thread></message>\n"));
    assert_non_null(strstr(t, "STANZA <iq type=\"get\" id=\"r1\"><query xmlns=\"jabber:iq:roster\"/></iq>\n"));
    assert_non_null(strstr(t, "<status>&lt;away&gt; &amp; back soon</status><x xmlns=\"\"/></presence>\n"));
    assert_non_null(strstr(t, "CLOSE\n"));

    /* The last stanza, kept by the callback. */
    struct xml_node *iq = r.kept;
    assert_non_null(iq);
    assert_string_equal(iq->name, "iq");
    assert_string_equal(iq->ns, XML_NS_CLIENT);
    assert_null(iq->parent);
    struct xml_node *bind = xml_child(iq, "bind", "urn:ietf:params:xml:ns:xmpp-bind");
    assert_non_null(bind);
    char *res = xml_text(xml_child(bind, "resource", NULL));
    assert_string_equal(res, "a\"b");
    free(res);

    /* After the close, input is ignored, even junk. */
    assert_int_equal(xml_parser_feed(r.parser, "junk<", 5), 0);
    assert_int_equal(r.errors, 0);
    recorder_release(&r);
}

static void test_stream_header_node(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
    assert_int_equal(r.opens, 1);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    /* Whitespace keepalives leave nothing pending. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(xml_parser_feed(r.parser, " ", 1), 0);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    /* A partial stanza is pending. */
    assert_int_equal(xml_parser_feed(r.parser, "<message><bo", 12), 0);
    assert_int_equal(xml_parser_pending(r.parser), 12);
    assert_int_equal(xml_parser_feed(r.parser, "dy>x</body></message>", 21), 0);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    assert_int_equal(r.stanzas, 1);
    recorder_release(&r);
}

static void keep_open(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct xml_node **out = ud;
    if (kind == XML_EVENT_STREAM_OPEN) {
        *out = *node;
        *node = NULL;
    }
}

static void test_stream_open_node(void **state)
{
    struct xml_node *hdr = NULL;
    struct xml_parser *p = xml_parser_new(NULL, keep_open, &hdr);
    assert_int_equal(xml_parser_feed(p, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
    assert_non_null(hdr);
    assert_string_equal(hdr->name, "stream");
    assert_string_equal(hdr->ns, XML_NS_STREAM);
    assert_null(hdr->first_child);
    assert_int_equal(hdr->nattrs, 3);   /* namespace declarations are not attributes */
    assert_string_equal(xml_attr(hdr, "to"), "example.com");
    assert_string_equal(xml_attr(hdr, "version"), "1.0");
    assert_null(xml_attr(hdr, "lang"));
    assert_string_equal(xml_attr_ns(hdr, XML_NS_XML, "lang"), "en");
    assert_null(xml_attr(hdr, "xmlns"));
    xml_free(&hdr);
    xml_parser_free(&p);
    assert_null(p);
    xml_parser_free(&p);   /* NULL-safe */
}

static void test_splits_identical(void **state)
{
    struct recorder whole;
    recorder_init(&whole, NULL);
    feed_split(&whole, normal_stream, strlen(normal_stream), 0);
    assert_int_equal(whole.closes, 1);
    for (uint32_t seed = 1; seed < 400; seed++) {
        struct recorder r;
        recorder_init(&r, NULL);
        feed_split(&r, normal_stream, strlen(normal_stream), seed);
        assert_string_equal(buf_cstr(&r.trace), buf_cstr(&whole.trace));
        recorder_release(&r);
    }
    recorder_release(&whole);

    /* The same holds for a stream that ends in an error. */
    static const char bad[] = STREAM_HEADER "<message><body>x</body></message><iq><!-- no --></iq>";
    struct recorder w2;
    recorder_init(&w2, NULL);
    feed_split(&w2, bad, strlen(bad), 0);
    assert_int_equal(w2.error, XML_ERROR_RESTRICTED_XML);
    for (uint32_t seed = 1; seed < 100; seed++) {
        struct recorder r;
        recorder_init(&r, NULL);
        feed_split(&r, bad, strlen(bad), seed);
        assert_string_equal(buf_cstr(&r.trace), buf_cstr(&w2.trace));
        recorder_release(&r);
    }
    recorder_release(&w2);
}

/* --- hostile input --------------------------------------------------------------- */

static void test_restricted_xml(void **state)
{
    static const char laughs[] =
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
        "<!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
        "<!ENTITY lol2 '&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;'>"
        "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>"
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol3;";
    assert_int_equal(stream_error(laughs, strlen(laughs), NULL), XML_ERROR_RESTRICTED_XML);
    static const char xxe[] =
        "<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&xxe;";
    assert_int_equal(stream_error(xxe, strlen(xxe), NULL), XML_ERROR_RESTRICTED_XML);
    static const char ext_dtd[] = "<!DOCTYPE stream SYSTEM 'http://evil.example/x.dtd'>";
    assert_int_equal(stream_error(ext_dtd, strlen(ext_dtd), NULL), XML_ERROR_RESTRICTED_XML);
    static const char doctype[] = "<!DOCTYPE stream>";
    assert_int_equal(stream_error(doctype, strlen(doctype), NULL), XML_ERROR_RESTRICTED_XML);
    static const char pi_prolog[] = "<?xml-stylesheet href='x'?><stream:stream/>";
    assert_int_equal(stream_error(pi_prolog, strlen(pi_prolog), NULL), XML_ERROR_RESTRICTED_XML);
    static const char comment_prolog[] = "<!-- hi --><stream:stream/>";
    assert_int_equal(stream_error(comment_prolog, strlen(comment_prolog), NULL), XML_ERROR_RESTRICTED_XML);

    assert_int_equal(stanza_error("<message><?php echo 1; ?></message>"), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(stanza_error("<?foo?>"), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(stanza_error("<message><!-- c --></message>"), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(stanza_error("<!-- between stanzas -->"), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(stanza_error("<message><body>&nbsp;</body></message>"), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(stanza_error("<message to='&foo;'/>"), XML_ERROR_RESTRICTED_XML);
    /* A DOCTYPE after the root started is simply malformed. */
    assert_int_equal(stanza_error("<!DOCTYPE x>"), XML_ERROR_NOT_WELL_FORMED);
    /* Predefined entities and character references are fine. */
    assert_int_equal(stanza_error("<message><body>&amp;&lt;&gt;&quot;&apos;&#65;&#x1F600;</body></message>"),
                     XML_ERROR_NONE);
}

static void test_not_well_formed(void **state)
{
    static const char *const bad[] = {
        "<message><body>\xc0\xaf</body></message>",          /* overlong '/' */
        "<message><body>\xe0\x80\xaf</body></message>",      /* overlong, 3 bytes */
        "<message><body>\xf0\x80\x80\xaf</body></message>",  /* overlong, 4 bytes */
        "<message><body>\xed\xa0\x80</body></message>",      /* surrogate U+D800 */
        "<message><body>\xe2\x82</body></message>",          /* truncated */
        "<message><body>\xf5\x80\x80\x80</body></message>",  /* above U+10FFFF */
        "<message><body>\xef\xbf\xbe</body></message>",      /* U+FFFE */
        "<message><body>\x01</body></message>",              /* control character */
        "<message><body>&#0;</body></message>",
        "<message><body>&#xD800;</body></message>",
        "<message to='\xed\xbf\xbf'/>",                      /* surrogate in an attribute */
        "<message to='\xc3'/>",                              /* truncated in an attribute */
        "<message><body></message>",                         /* mismatched tags */
        "<message a='1' a='2'/>",                            /* duplicate attribute */
        "<message xmlns:p='u1' xmlns:q='u1' p:a='1' q:a='2'/>",  /* duplicate after resolution */
        "<p:message/>",                                      /* unbound prefix */
        "hello",                                             /* text between stanzas */
        " <message/> x",
        "<message/><?xml version='1.0'?>",                   /* misplaced declaration */
        "<<",
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++) {
        enum xml_error_kind k = stanza_error(bad[i]);
        if (k != XML_ERROR_NOT_WELL_FORMED)
            fail_msg("case %zu (%s): got %s", i, bad[i], xml_error_condition(k));
    }
    /* Invalid UTF-8 split across feeds is still caught. */
    struct recorder r;
    recorder_init(&r, NULL);
    feed_split(&r, STREAM_HEADER "<message><body>\xe2", strlen(STREAM_HEADER) + 16, 0);
    assert_int_equal(r.errors, 0);
    assert_int_equal(xml_parser_feed(r.parser, "\x28\xa1", 2), -1);
    assert_int_equal(r.error, XML_ERROR_NOT_WELL_FORMED);
    recorder_release(&r);
    /* UTF-16, which expat would detect from the first bytes, under any split. */
    static const char *const utf16[] = { "<\0s\0", "\0<\0s", "\xff\xfe<\0", "\xfe\xff\0<", "a\0\0W" };
    for (size_t i = 0; i < MK_ARRAY_LEN(utf16); i++) {
        for (uint32_t seed = 0; seed < 3; seed++) {
            recorder_init(&r, NULL);
            feed_split(&r, utf16[i], 4, seed);
            assert_int_equal(r.error, XML_ERROR_NOT_WELL_FORMED);
            recorder_release(&r);
        }
    }
    /* A declared encoding other than UTF-8 does not change how bytes are read. */
    static const char latin1[] = "<?xml version='1.0' encoding='ISO-8859-1'?>"
                                 "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
                                 "<m>\xe9</m>";
    assert_int_equal(stream_error(latin1, strlen(latin1), NULL), XML_ERROR_NOT_WELL_FORMED);
}

static void test_stream_element(void **state)
{
    static const char wrong_ns[] = "<stream:stream xmlns:stream='http://example.com/streams'>";
    assert_int_equal(stream_error(wrong_ns, strlen(wrong_ns), NULL), XML_ERROR_INVALID_NAMESPACE);
    static const char no_ns[] = "<stream>";
    assert_int_equal(stream_error(no_ns, strlen(no_ns), NULL), XML_ERROR_INVALID_NAMESPACE);
    static const char not_stream[] = "<html xmlns='http://www.w3.org/1999/xhtml'><body/>";
    assert_int_equal(stream_error(not_stream, strlen(not_stream), NULL), XML_ERROR_BAD_FORMAT);
    static const char wrong_name[] = "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>";
    assert_int_equal(stream_error(wrong_name, strlen(wrong_name), NULL), XML_ERROR_BAD_FORMAT);
    static const char http[] = "GET / HTTP/1.1\r\n";
    assert_int_equal(stream_error(http, strlen(http), NULL), XML_ERROR_NOT_WELL_FORMED);
    static const char empty_stream[] = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>";
    assert_int_equal(stream_error(empty_stream, strlen(empty_stream), NULL), XML_ERROR_NONE);
}

static char *big_buffer(const char *prefix, char fill, size_t total)
{
    char *s = xmalloc(total);
    size_t plen = strlen(prefix);
    memcpy(s, prefix, plen);
    memset(s + plen, fill, total - plen);
    return s;
}

static long max_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

#define TEN_MIB (10u * 1024 * 1024)

/* Feeds s in chunks; the error must fire long before the end and nothing past
 * the cap may stay pending. Returns the bytes fed until the error. */
static size_t feed_until_error(const char *s, size_t n, size_t chunk, enum xml_error_kind want)
{
    struct recorder r;
    recorder_init(&r, NULL);
    size_t off = 0;
    while (off < n && r.errors == 0) {
        size_t len = n - off < chunk ? n - off : chunk;
        xml_parser_feed(r.parser, s + off, len);
        off += len;
        assert_true(xml_parser_pending(r.parser) <= 65536 + 8192);
    }
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.error, want);
    recorder_release(&r);
    return off;
}

static void test_huge_stanza(void **state)
{
    char *s = big_buffer(STREAM_HEADER "<message><body>", 'a', TEN_MIB);
    size_t fed = feed_until_error(s, TEN_MIB, 4096, XML_ERROR_POLICY_VIOLATION);
    assert_true(fed <= strlen(STREAM_HEADER) + 65536 + 8192);
    /* Byte by byte across the cap. */
    fed = feed_until_error(s, 200000, 1, XML_ERROR_POLICY_VIOLATION);
    assert_true(fed <= strlen(STREAM_HEADER) + 65536 + 2);
    free(s);
}

static void test_huge_attribute(void **state)
{
    char *s = big_buffer(STREAM_HEADER "<message to='", 'a', TEN_MIB);
    size_t fed = feed_until_error(s, TEN_MIB, 65536, XML_ERROR_POLICY_VIOLATION);
    assert_true(fed <= strlen(STREAM_HEADER) + 3 * 65536);

    /* All 10 MiB in one call: expat must not be handed (and buffer) all of it. */
    long before = max_rss_kib();
    struct recorder r;
    recorder_init(&r, NULL);
    assert_int_equal(xml_parser_feed(r.parser, s, TEN_MIB), -1);
    assert_int_equal(r.error, XML_ERROR_POLICY_VIOLATION);
    recorder_release(&r);
    assert_true(max_rss_kib() - before < 8 * 1024);
    free(s);

    /* A giant stream header start tag, and a giant name. */
    s = big_buffer("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='", 'b', TEN_MIB);
    feed_until_error(s, TEN_MIB, 100000, XML_ERROR_POLICY_VIOLATION);
    free(s);
    s = big_buffer(STREAM_HEADER "<m", 'c', TEN_MIB);
    feed_until_error(s, TEN_MIB, 100000, XML_ERROR_POLICY_VIOLATION);
    free(s);
    /* Endless whitespace before the header, and between stanzas. */
    s = big_buffer("", ' ', TEN_MIB);
    feed_until_error(s, TEN_MIB, 100000, XML_ERROR_POLICY_VIOLATION);
    free(s);
    s = big_buffer(STREAM_HEADER, '\n', TEN_MIB);
    feed_until_error(s, TEN_MIB, 100000, XML_ERROR_POLICY_VIOLATION);
    free(s);
}

/* Expat before 2.6 rescans a partial token on every call: a 60 KiB start tag sent
 * 100 bytes at a time would cost about 18 MB of scanning. Deferral keeps it linear. */
static void test_big_tag_in_small_pieces_is_linear(void **state)
{
    size_t tag = 60 * 1024;
    char *s = big_buffer("<message to='", 'a', tag);
    struct buf in;
    buf_init(&in);
    buf_append_str(&in, STREAM_HEADER);
    buf_append(&in, s, tag);
    buf_append_str(&in, "'><body>hi</body></message>");
    free(s);
    struct recorder r;
    recorder_init(&r, NULL);
    for (size_t off = 0; off < in.len; off += 100) {
        size_t len = in.len - off < 100 ? in.len - off : 100;
        assert_int_equal(xml_parser_feed(r.parser, in.data + off, len), 0);
        assert_true(xml_parser_pending(r.parser) <= 65536 + 8192);
    }
    /* The last piece, short behind a long partial token, may wait for the flush. */
    assert_int_equal(xml_parser_flush(r.parser), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(r.errors, 0);
    assert_int_equal(r.stanzas, 1);
    unsigned long long scanned = xml_parser_scanned(r.parser);
    assert_true(scanned >= in.len);
    assert_true(scanned < 4 * (unsigned long long)in.len);
    recorder_release(&r);
    buf_release(&in);

    /* Past the cap the same way: refused, and nothing past the cap kept. */
    s = big_buffer(STREAM_HEADER "<message to='", 'a', 1u << 20);
    size_t fed = feed_until_error(s, 1u << 20, 100, XML_ERROR_POLICY_VIOLATION);
    assert_true(fed <= strlen(STREAM_HEADER) + 65536 + 200);
    free(s);
}

/* Deferred bytes are parsed by the flush, and pieces that catch up with the
 * partial token go through at once. */
static void test_deferred_input_flush(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    char *s = big_buffer(STREAM_HEADER "<message to='", 'a', strlen(STREAM_HEADER) + 8000);
    assert_int_equal(xml_parser_feed(r.parser, s, strlen(STREAM_HEADER) + 8000), 0);
    assert_int_equal(r.opens, 1);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(xml_parser_feed(r.parser, "'/>", 3), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 3);
    assert_int_equal(r.stanzas, 0);
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_flush(r.parser), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(r.stanzas, 1);
    assert_int_equal(xml_parser_flush(r.parser), 0);   /* nothing waiting: nothing happens */
    /* A small tag: no deferral at all. */
    assert_int_equal(xml_parser_feed(r.parser, "<iq type='get' id='x", 20), 0);
    assert_int_equal(xml_parser_feed(r.parser, "'/>", 3), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(r.stanzas, 2);
    /* A piece as long as the partial token goes through. */
    assert_int_equal(xml_parser_feed(r.parser, s + strlen(STREAM_HEADER), 8000), 0);
    assert_int_equal(xml_parser_feed(r.parser, s + strlen(STREAM_HEADER) + 100, 4000), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 4000);
    memcpy(s + strlen(STREAM_HEADER) + 4100 - 3, "'/>", 3);
    assert_int_equal(xml_parser_feed(r.parser, s + strlen(STREAM_HEADER) + 100, 4000), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(r.stanzas, 3);
    /* A reset drops deferred bytes. */
    memset(s + strlen(STREAM_HEADER) + 13, 'a', 8000 - 13);
    assert_int_equal(xml_parser_feed(r.parser, s + strlen(STREAM_HEADER), 5000), 0);
    assert_int_equal(xml_parser_feed(r.parser, "aa", 2), 0);
    assert_int_equal(xml_parser_deferred(r.parser), 2);
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_deferred(r.parser), 0);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    assert_int_equal(r.errors, 0);
    free(s);
    recorder_release(&r);
}

static void test_limits(void **state)
{
    /* 10,000 nested elements. */
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, STREAM_HEADER);
    for (int i = 0; i < 10000; i++)
        buf_append_str(&b, "<a>");
    assert_int_equal(stream_error(b.data, b.len, NULL), XML_ERROR_POLICY_VIOLATION);
    /* The depth limit counts the stanza itself as level 1. */
    struct xml_limits lim = { .max_depth = 3 };
    buf_reset(&b);
    buf_append_str(&b, STREAM_HEADER "<a><b><c/></b></a>");
    assert_int_equal(stream_error(b.data, b.len, &lim), XML_ERROR_NONE);
    buf_reset(&b);
    buf_append_str(&b, STREAM_HEADER "<a><b><c><d/></c></b></a>");
    assert_int_equal(stream_error(b.data, b.len, &lim), XML_ERROR_POLICY_VIOLATION);

    /* Attribute count: 64 pass, 65 do not; namespace declarations do not count. */
    for (int n = 64; n <= 65; n++) {
        buf_reset(&b);
        buf_append_str(&b, STREAM_HEADER "<message xmlns:p='urn:p' xmlns='jabber:client'");
        for (int i = 0; i < n; i++)
            buf_printf(&b, " a%d='%d'", i, i);
        buf_append_str(&b, "/>");
        assert_int_equal(stream_error(b.data, b.len, NULL),
                         n == 64 ? XML_ERROR_NONE : XML_ERROR_POLICY_VIOLATION);
    }
    struct xml_limits two = { .max_attrs = 2 };
    static const char hdr3[] = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='1' b='2' c='3'>";
    assert_int_equal(stream_error(hdr3, strlen(hdr3), &two), XML_ERROR_POLICY_VIOLATION);

    /* Stanza size: exactly the cap passes, one more byte does not, whatever the
     * split. The cap applies to the stream header too (about 170 bytes here). */
    struct xml_limits small = { .max_stanza_bytes = 300 };
    for (int extra = 0; extra <= 1; extra++) {
        buf_reset(&b);
        buf_append_str(&b, STREAM_HEADER);
        size_t start = b.len;
        buf_append_str(&b, "<message><body>");
        while (b.len - start < (size_t)(300 + extra) - strlen("</body></message>"))
            buf_append(&b, "z", 1);
        buf_append_str(&b, "</body></message>");
        assert_int_equal(b.len - start, 300 + extra);
        for (uint32_t seed = 0; seed < 20; seed++) {
            struct recorder r;
            recorder_init(&r, &small);
            feed_split(&r, b.data, b.len, seed);
            assert_int_equal(r.error, extra ? XML_ERROR_POLICY_VIOLATION : XML_ERROR_NONE);
            assert_int_equal(r.stanzas, extra ? 0 : 1);
            recorder_release(&r);
        }
    }
    buf_release(&b);
}

/* --- restarts ------------------------------------------------------------------ */

static void test_reset_in_callback(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    r.reset_on = "starttls";
    /* Bytes after <starttls/> in the same feed belong to the old stream (in real
     * life they would be TLS records) and are discarded. */
    static const char before[] = STREAM_HEADER "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                 "<message>discarded</message>garbage<<<";
    assert_int_equal(xml_parser_feed(r.parser, before, strlen(before)), 0);
    assert_int_equal(r.opens, 1);
    assert_int_equal(r.stanzas, 1);
    assert_int_equal(r.errors, 0);
    assert_null(xml_parser_stream_ns(r.parser));
    assert_int_equal(xml_parser_pending(r.parser), 0);
    /* The new stream starts with a new header, XML declaration included. */
    static const char after[] = STREAM_HEADER "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABy</auth>";
    feed_split(&r, after, strlen(after), 1);
    assert_int_equal(r.opens, 2);
    assert_int_equal(r.stanzas, 2);
    assert_int_equal(r.errors, 0);
    assert_string_equal(xml_parser_stream_ns(r.parser), XML_NS_CLIENT);
    assert_non_null(strstr(buf_cstr(&r.trace), "STANZA <auth xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\" "
                                               "mechanism=\"PLAIN\">AGp1bGlldABy</auth>\n"));
    assert_null(strstr(buf_cstr(&r.trace), "discarded"));

    /* Reset from outside a callback, in the middle of a stanza. */
    assert_int_equal(xml_parser_feed(r.parser, "<message><bo", 12), 0);
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_pending(r.parser), 0);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "<a/>", strlen(STREAM_HEADER) + 4), 0);
    assert_int_equal(r.opens, 3);
    assert_int_equal(r.stanzas, 3);

    /* Reset after an error and after a close. */
    assert_int_equal(xml_parser_feed(r.parser, "<!-- x -->", 10), -1);
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_error(r.parser), XML_ERROR_NONE);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "</stream:stream>", strlen(STREAM_HEADER) + 16), 0);
    assert_int_equal(r.closes, 1);
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
    assert_int_equal(r.opens, 5);
    recorder_release(&r);
}

static void test_stop_in_callback(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    r.stop_on = "close";
    static const char s[] = STREAM_HEADER "<a/><close/><b/><!-- would be an error -->";
    assert_int_equal(xml_parser_feed(r.parser, s, strlen(s)), 0);
    assert_int_equal(r.stanzas, 2);
    assert_int_equal(r.errors, 0);
    assert_int_equal(xml_parser_feed(r.parser, "<c/>", 4), 0);
    assert_int_equal(r.stanzas, 2);
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "<c/>", strlen(STREAM_HEADER) + 4), 0);
    assert_int_equal(r.stanzas, 3);
    recorder_release(&r);
}

/* --- serialization --------------------------------------------------------------- */

static char *serialize(const struct xml_node *n, const char *parent_ns)
{
    struct buf b;
    buf_init(&b);
    xml_serialize(n, parent_ns, &b);
    char *s = xstrdup(buf_cstr(&b));
    buf_release(&b);
    return s;
}

static void test_escape(void **state)
{
    struct buf b;
    buf_init(&b);
    xml_escape(&b, "a&b<c>d\"e'f\tg\nh\ri", 17);
    assert_string_equal(buf_cstr(&b), "a&amp;b&lt;c&gt;d&quot;e&apos;f&#9;g&#10;h&#13;i");
    buf_reset(&b);
    /* Not XML characters: invalid UTF-8, a control character, a surrogate. */
    xml_escape(&b, "x\xff" "y\x01z\xed\xa0\x80\xf0\x9f\x98\x80", 12);
    assert_string_equal(buf_cstr(&b), "x\xef\xbf\xbdy\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                      "\xf0\x9f\x98\x80");
    buf_release(&b);
}

static void test_serialize_round_trip(void **state)
{
    static const char emoji[] = "\xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd";
    struct xml_node *m = xml_node_new("message", XML_NS_CLIENT);
    xml_set_attr(m, "to", "a&b@example.com/<r>\"q\"'s'");
    xml_set_attr(m, "id", "line1\nline2\ttab\rcr");
    xml_set_attr_ns(m, XML_NS_XML, "lang", "de");
    xml_set_attr_ns(m, "urn:x", "flag", "1");
    xml_set_attr_ns(m, "urn:y", "other", "2");
    xml_set_attr_ns(m, "urn:x", "flag2", "3");
    struct xml_node *body = xml_add_child(m, "body", NULL);
    xml_add_text(body, "1 < 2 && 3 > 2 ]]> ", 19);
    xml_add_text(body, emoji, strlen(emoji));
    xml_add_text(body, " \"q\" 'a' \r\n", 11);
    struct xml_node *x = xml_add_child(m, "x", "jabber:x:data");
    xml_add_child(x, "field", NULL);
    xml_add_child(m, "y", "");

    char *s1 = serialize(m, XML_NS_CLIENT);
    assert_non_null(strstr(s1, "<message xmlns:ns3=\"urn:x\" xmlns:ns4=\"urn:y\" to=\"a&amp;b@example.com/&lt;r&gt;"
                               "&quot;q&quot;&apos;s&apos;\" id=\"line1&#10;line2&#9;tab&#13;cr\" xml:lang=\"de\" "
                               "ns3:flag=\"1\" ns4:other=\"2\" ns3:flag2=\"3\">"));
    assert_non_null(strstr(s1, "<body>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; "));
    assert_non_null(strstr(s1, "<x xmlns=\"jabber:x:data\"><field/></x><y xmlns=\"\"/></message>"));

    char err[128] = "";
    struct xml_node *p = xml_parse_document(s1, strlen(s1), err, sizeof err);
    assert_non_null(p);
    assert_string_equal(p->ns, "");   /* the default namespace was left out */
    assert_string_equal(xml_attr(p, "to"), "a&b@example.com/<r>\"q\"'s'");
    assert_string_equal(xml_attr(p, "id"), "line1\nline2\ttab\rcr");
    assert_string_equal(xml_attr_ns(p, XML_NS_XML, "lang"), "de");
    assert_string_equal(xml_attr_ns(p, "urn:x", "flag2"), "3");
    assert_string_equal(xml_attr_ns(p, "urn:y", "other"), "2");
    char *t = xml_text(xml_child(p, "body", NULL));
    char want[64];
    snprintf(want, sizeof want, "1 < 2 && 3 > 2 ]]> %s \"q\" 'a' \r\n", emoji);
    assert_string_equal(t, want);
    free(t);
    free(s1);

    /* With full namespaces: parse -> serialize -> parse -> serialize is stable. */
    s1 = serialize(m, NULL);
    struct xml_node *p1 = xml_parse_document(s1, strlen(s1), err, sizeof err);
    assert_non_null(p1);
    char *s2 = serialize(p1, NULL);
    struct xml_node *p2 = xml_parse_document(s2, strlen(s2), err, sizeof err);
    assert_non_null(p2);
    char *s3 = serialize(p2, NULL);
    assert_string_equal(s2, s3);
    assert_string_equal(p2->ns, XML_NS_CLIENT);
    assert_string_equal(xml_child(p2, "body", NULL)->ns, XML_NS_CLIENT);
    assert_string_equal(xml_child(p2, "y", NULL)->ns, "");
    free(s1);
    free(s2);
    free(s3);
    xml_free(&p);
    xml_free(&p1);
    xml_free(&p2);
    xml_free(&m);

    /* A text node alone, and an element without a namespace under none. */
    struct xml_node *e = xml_node_new("e", NULL);
    xml_add_text(e, "a<b", 3);
    s1 = serialize(e, NULL);
    assert_string_equal(s1, "<e>a&lt;b</e>");
    free(s1);
    s1 = serialize(e->first_child, NULL);
    assert_string_equal(s1, "a&lt;b");
    free(s1);
    xml_free(&e);
}

/* --- documents and trees ------------------------------------------------------ */

static void test_parse_document(void **state)
{
    char err[160];
    static const char good[] = "<?xml version='1.0'?>\n<iq xmlns='jabber:client' type='result' id='1'>"
                               "<query xmlns='jabber:iq:version'><name>Meerkat</name></query></iq>\n";
    struct xml_node *n = xml_parse_document(good, strlen(good), err, sizeof err);
    assert_non_null(n);
    assert_string_equal(n->name, "iq");
    assert_string_equal(n->ns, XML_NS_CLIENT);
    struct xml_node *q = xml_child(n, "query", "jabber:iq:version");
    assert_non_null(q);
    assert_ptr_equal(q->parent, n);
    char *name = xml_text(xml_child(q, "name", "jabber:iq:version"));
    assert_string_equal(name, "Meerkat");
    free(name);
    xml_free(&n);

    static const char *const bad[] = {
        "",
        "   ",
        "<a>",
        "<a></b>",
        "<a/><b/>",
        "<a/>junk",
        "text",
        "<!DOCTYPE a><a/>",
        "<a/><!-- trailing comment -->",
        "<?pi?><a/>",
        "<a>&ent;</a>",
        "<a>\xff</a>",
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        n = xml_parse_document(bad[i], strlen(bad[i]), err, sizeof err);
        if (n != NULL)
            fail_msg("case %zu parsed", i);
        assert_true(strlen(err) > 0);
    }
    /* Deep nesting is refused here too. */
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 10000; i++)
        buf_append_str(&b, "<a>");
    for (int i = 0; i < 10000; i++)
        buf_append_str(&b, "</a>");
    n = xml_parse_document(b.data, b.len, err, sizeof err);
    assert_null(n);
    assert_non_null(strstr(err, "policy-violation"));
    /* err may be NULL. */
    assert_null(xml_parse_document("<", 1, NULL, 0));
    /* A document may be larger than a stanza. */
    buf_reset(&b);
    buf_append_str(&b, "<a>");
    for (int i = 0; i < 100000; i++)
        buf_append_str(&b, "xy");
    buf_append_str(&b, "</a>");
    n = xml_parse_document(b.data, b.len, err, sizeof err);
    assert_non_null(n);
    assert_int_equal(n->first_child->text_len, 200000);
    assert_null(n->first_child->next);   /* one text node, grown in place */
    xml_free(&n);
    buf_release(&b);
}

static void test_tree_helpers(void **state)
{
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    assert_null(xml_first_elem(iq));
    char *t = xml_text(iq);
    assert_string_equal(t, "");
    free(t);
    xml_add_text(iq, "a", 1);
    struct xml_node *q1 = xml_add_child(iq, "query", "ns1");
    xml_add_text(iq, "b", 1);
    struct xml_node *q2 = xml_add_child(iq, "query", "ns2");
    struct xml_node *other = xml_add_child(iq, "other", "ns1");
    xml_add_text(iq, "c", 1);

    assert_ptr_equal(xml_first_elem(iq), q1);
    assert_ptr_equal(xml_child(iq, "query", NULL), q1);
    assert_ptr_equal(xml_child(iq, "query", "ns2"), q2);
    assert_ptr_equal(xml_child(iq, NULL, "ns1"), q1);
    assert_null(xml_child(iq, "missing", NULL));
    assert_ptr_equal(xml_next(q1, "query", NULL), q2);
    assert_ptr_equal(xml_next(q1, NULL, "ns1"), other);
    assert_null(xml_next(q2, "query", NULL));
    t = xml_text(iq);
    assert_string_equal(t, "abc");
    free(t);

    /* Attributes: set, replace, remove, namespaces kept apart. */
    xml_set_attr(iq, "type", "get");
    xml_set_attr(iq, "id", "1");
    xml_set_attr_ns(iq, XML_NS_XML, "lang", "en");
    xml_set_attr(iq, "lang", "plain");
    assert_string_equal(xml_attr(iq, "type"), "get");
    xml_set_attr(iq, "type", "set");
    assert_string_equal(xml_attr(iq, "type"), "set");
    assert_int_equal(iq->nattrs, 4);
    xml_set_attr(iq, "type", xml_attr(iq, "type"));   /* value borrowed from itself */
    assert_string_equal(xml_attr(iq, "type"), "set");
    assert_string_equal(xml_attr_ns(iq, XML_NS_XML, "lang"), "en");
    assert_string_equal(xml_attr(iq, "lang"), "plain");
    xml_set_attr(iq, "type", NULL);
    assert_null(xml_attr(iq, "type"));
    assert_int_equal(iq->nattrs, 3);
    assert_string_equal(xml_attr(iq, "id"), "1");
    xml_set_attr(iq, "absent", NULL);
    assert_int_equal(iq->nattrs, 3);
    xml_set_attr_ns(iq, XML_NS_XML, "lang", NULL);
    assert_null(xml_attr_ns(iq, XML_NS_XML, "lang"));
    assert_string_equal(xml_attr(iq, "lang"), "plain");

    /* Clone is deep and independent. */
    xml_set_attr(q1, "node", "n");
    xml_add_text(xml_add_child(q1, "item", NULL), "deep", 4);
    struct xml_node *c = xml_clone(iq);
    assert_null(c->parent);
    char *s1 = serialize(iq, NULL), *s2 = serialize(c, NULL);
    assert_string_equal(s1, s2);
    free(s2);
    xml_set_attr(xml_child(c, "query", "ns1"), "node", "changed");
    assert_string_equal(xml_attr(q1, "node"), "n");
    assert_ptr_equal(xml_child(xml_child(c, "query", "ns1"), "item", NULL)->parent, xml_child(c, "query", "ns1"));
    xml_free(&c);
    assert_null(c);

    /* Remove: first, middle and last child; then re-append elsewhere. */
    xml_remove(q2);
    assert_null(q2->parent);
    assert_ptr_equal(xml_next(q1, "query", NULL), NULL);
    struct xml_node *ctext = iq->last_child;
    xml_remove(ctext);
    assert_string_equal(ctext->text, "c");
    xml_free(&ctext);
    assert_ptr_equal(iq->last_child, other);
    struct xml_node *a = iq->first_child;  /* the "a" text */
    xml_remove(a);
    xml_free(&a);
    t = xml_text(iq);
    assert_string_equal(t, "b");
    free(t);
    xml_append(q1, q2);
    assert_ptr_equal(q2->parent, q1);
    xml_append(iq, q2);                    /* moving unlinks from the old parent */
    assert_ptr_equal(iq->last_child, q2);
    assert_null(xml_child(q1, "query", NULL));
    /* Freeing a child unlinks it. */
    xml_free(&other);
    assert_null(xml_child(iq, "other", NULL));
    assert_ptr_equal(q1->next->next, q2);  /* q1, "b", q2 */
    free(s1);
    xml_free(&iq);
    xml_free(&iq);
    xml_free(NULL);
}

static void test_packed_tree(void **state)
{
    static const char doc[] =
        "<presence xmlns='jabber:client' xml:lang='en' from='a@b/c'><show>away</show>"
        "<status>out &amp; about \xf0\x9f\x98\x80</status><priority>-1</priority>"
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/>"
        "<x xmlns='urn:x' xmlns:p='urn:p' p:a='1'><y/>text<z>t</z></x></presence>";
    char err[128];
    struct xml_node *n = xml_parse_document(doc, strlen(doc), err, sizeof err);
    assert_non_null(n);
    struct xml_packed *pk = xml_pack(n);
    const struct xml_node *root = xml_packed_root(pk);
    char *s1 = serialize(n, XML_NS_CLIENT), *s2 = serialize(root, XML_NS_CLIENT);
    assert_string_equal(s1, s2);
    /* links are the packed copy's own, not the source's */
    xml_free(&n);
    assert_null(root->parent);
    const struct xml_node *last = NULL;
    for (const struct xml_node *k = root->first_child; k != NULL; k = k->next) {
        assert_ptr_equal(k->parent, root);
        last = k;
    }
    assert_ptr_equal(root->last_child, last);
    assert_string_equal(xml_attr(xml_child(root, "c", "http://jabber.org/protocol/caps"), "ver"), "v=");
    /* a clone of the packed tree is an ordinary one: changed and freed as usual */
    struct xml_node *c = xml_clone(root);
    xml_set_attr(c, "from", "d@e/f");
    xml_free(&c);
    char *s3 = serialize(root, XML_NS_CLIENT);
    assert_string_equal(s1, s3);
    xml_packed_free(&pk);
    assert_null(pk);
    xml_packed_free(&pk);
    assert_null(xml_pack(NULL));
    assert_null(xml_packed_root(NULL));
    free(s1);
    free(s2);
    free(s3);
}

static void test_tree_deep_free(void **state)
{
    /* A tree built by code may be deeper than any parse limit. */
    struct xml_node *root = xml_node_new("r", NULL), *n = root;
    for (int i = 0; i < 200000; i++)
        n = xml_add_child(n, "d", NULL);
    xml_free(&root);
    assert_null(root);
}

/* --- hibernation (xml_parser_idle) ------------------------------------------------ */

/* Like feed_split (pieces of at most 4, 16 or 64 bytes by seed, so that many
 * feeds end between stanzas), but calls xml_parser_idle after every feed when
 * idle is set, and records per feed what the caller can see: feed result,
 * pending bytes, error, stream ns. Returns how many calls released expat. */
static int feed_split_idle(struct recorder *r, const char *s, size_t n, uint32_t seed, bool idle,
                           struct buf *steps)
{
    size_t off = 0;
    int idles = 0;
    uint32_t x = seed * 2654435761u + 1;
    while (off < n) {
        size_t len = n - off;
        if (seed == 1) {
            len = 1;
        } else if (seed > 1) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t piece = 1 + x % (4u << 2 * (seed % 3));
            if (piece < len)
                len = piece;
        }
        int rc = xml_parser_feed(r->parser, s + off, len);
        off += len;
        if (idle && xml_parser_idle(r->parser)) {
            idles++;
            assert_int_equal(xml_parser_pending(r->parser), 0);
            /* A second call has nothing left to release. */
            assert_false(xml_parser_idle(r->parser));
        }
        const char *ns = xml_parser_stream_ns(r->parser);
        buf_printf(steps, "%d %zu %d %s\n", rc, xml_parser_pending(r->parser),
                   (int)xml_parser_error(r->parser), ns != NULL ? ns : "-");
    }
    return idles;
}

/* The stream fed under many splits, once plainly and once with
 * xml_parser_idle after every feed: events, stanzas, error texts and what the
 * caller sees between feeds must be identical. Returns the number of
 * successful hibernations over all runs. */
static int check_idle_identical(const char *s, const struct xml_limits *limits, uint32_t seeds,
                                const char *want_end)
{
    size_t n = strlen(s);
    int idles = 0;
    for (uint32_t seed = 0; seed < seeds; seed++) {
        struct recorder plain, hib;
        struct buf plain_steps, hib_steps;
        buf_init(&plain_steps);
        buf_init(&hib_steps);
        recorder_init(&plain, limits);
        recorder_init(&hib, limits);
        plain.error_text = hib.error_text = true;
        feed_split_idle(&plain, s, n, seed, false, &plain_steps);
        idles += feed_split_idle(&hib, s, n, seed, true, &hib_steps);
        if (strcmp(buf_cstr(&plain.trace), buf_cstr(&hib.trace)) != 0)
            fail_msg("seed %u: events differ\n--- plain\n%s--- hibernated\n%s", seed,
                     buf_cstr(&plain.trace), buf_cstr(&hib.trace));
        assert_string_equal(buf_cstr(&plain_steps), buf_cstr(&hib_steps));
        assert_int_equal(hib.idle_in_callback, 0);
        if (want_end != NULL) {
            const char *t = buf_cstr(&plain.trace);
            size_t tl = strlen(t), wl = strlen(want_end);
            if (tl < wl || strcmp(t + tl - wl, want_end) != 0)
                fail_msg("seed %u: trace does not end with %s:\n%s", seed, want_end, t);
        }
        recorder_release(&plain);
        recorder_release(&hib);
        buf_release(&plain_steps);
        buf_release(&hib_steps);
    }
    return idles;
}

static void test_idle_events_identical(void **state)
{
    assert_true(check_idle_identical(normal_stream, NULL, 300, "CLOSE\n") > 300);

    /* Another prefix for the streams namespace, more declarations on the header
     * (one used only after a hibernation), URIs that need escaping to be
     * declared again, keepalives of every kind, and a CDATA section between
     * stanzas (whitespace, but not a place to hibernate). */
    static const char other_prefix[] =
        "<?xml version='1.0'?>\n"
        "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server'"
        " xmlns:db='jabber:server:dialback' xmlns:odd='urn:x&amp;y&lt;&quot;&apos;&gt;&#9;&#10;\xc3\xa9'"
        " xmlns:xml='http://www.w3.org/XML/1998/namespace' from='a.example' to='b.example' version='1.0'>\n"
        "<s:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></s:features>\r\n"
        "<db:result from='a.example' to='b.example'>abc</db:result> \t "
        "<message odd:flag='1' xml:lang='de'><odd:x/><body>hi</body></message>&#32;&#x0A;"
        "<![CDATA[ \n ]]>"
        "<iq type='get' id='2'/>\n\n"
        "<s:error><odd:y/></s:error>"
        "</s:stream>";
    assert_true(check_idle_identical(other_prefix, NULL, 300, "CLOSE\n") > 300);

    /* The streams namespace as the default namespace: the stream element has no prefix. */
    static const char no_prefix[] =
        "<stream xmlns='http://etherx.jabber.org/streams' xmlns:c='jabber:client'>"
        "<c:message><c:body>x</c:body></c:message> <features/> </stream>";
    assert_true(check_idle_identical(no_prefix, NULL, 200, "CLOSE\n") > 100);

    /* Errors after hibernations, with line and column in their text. */
    static const char *const bad[] = {
        STREAM_HEADER "\n<a/>\n  <b/>\n\t<c><d></c>",
        STREAM_HEADER "<a/>\xc3\xa9<b/>",
        STREAM_HEADER "<a/> <b/>\n <c>\xc3\x28</c>",
        STREAM_HEADER "<a/> <!-- comment --> <b/>",
        STREAM_HEADER "<a/> <?pi x?> <b/>",
        STREAM_HEADER "<a/> <!DOCTYPE x> <b/>",
        STREAM_HEADER "<a/> <?xml version='1.0'?>",
        STREAM_HEADER "<a/> &foo; <b/>",
        STREAM_HEADER "<a/> <p:b/>",
        STREAM_HEADER "<a/> </stream> ",
        STREAM_HEADER "<a/> ]]> <b/>",
        STREAM_HEADER "<a/> <b/><b/>\xff<c/>",
        STREAM_HEADER "<a/>   \r\n \r\n <b a='1' a='2'/>",
        "<s:stream xmlns:s='http://etherx.jabber.org/streams'><a/> </stream:stream>",
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++)
        assert_true(check_idle_identical(bad[i], NULL, 120, NULL) > 0);

    /* Limits crossed after hibernations: stanza size, whitespace run, depth, attributes. */
    struct xml_limits small = { .max_stanza_bytes = 300, .max_depth = 3, .max_attrs = 3 };
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, STREAM_HEADER "<a/>");
    for (int i = 0; i < 299; i++)
        buf_append_str(&b, " ");
    buf_append_str(&b, "<b/> ");
    for (int i = 0; i < 301; i++)
        buf_append_str(&b, "\n");
    buf_append_str(&b, "<c/>");
    assert_true(check_idle_identical(buf_cstr(&b), &small, 120, "ERROR policy-violation "
                                     "(more than 300 bytes of whitespace between stanzas)\n") > 0);
    buf_reset(&b);
    buf_append_str(&b, STREAM_HEADER "<a/> <message><body>");
    for (int i = 0; i < 300; i++)
        buf_append_str(&b, "z");
    buf_append_str(&b, "</body></message>");
    assert_true(check_idle_identical(buf_cstr(&b), &small, 120, "ERROR policy-violation "
                                     "(a stanza exceeds the limit of 300 bytes)\n") > 0);
    static const char deep[] = STREAM_HEADER "<a><b><c/></b></a> <a><b><c><d/></c></b></a>";
    assert_true(check_idle_identical(deep, &small, 120, "ERROR policy-violation "
                                     "(elements nest deeper than 3 levels)\n") > 0);
    static const char attrs[] = STREAM_HEADER "<a x='1' y='2' z='3'/> <a w='0' x='1' y='2' z='3'/>";
    assert_true(check_idle_identical(attrs, &small, 120, "ERROR policy-violation "
                                     "(an element has more than 3 attributes)\n") > 0);
    buf_release(&b);
}

static void test_idle_refused(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    /* Before the stream and in the middle of its header. */
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER, 30), 0);
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER + 30, strlen(STREAM_HEADER) - 30), 0);
    assert_int_equal(r.opens, 1);
    assert_true(xml_parser_idle(r.parser));
    assert_false(xml_parser_idle(r.parser));   /* already idle */

    /* Mid-stanza, mid-tag, a held CR, half a UTF-8 character, a CDATA section,
     * a partial close tag: refused, and the stream goes on as if never asked. */
    static const char *const partial[][2] = {
        { "<message><bo", "dy>x</body></message>" },
        { "<", "iq/>" },
        { "<iq", "/>" },
        { "<iq/", ">" },
        { "\r", "\n" },
        { "<a>\xc3", "\xa9</a>" },
        { "<![CDATA[ ", " ]]>" },
        { "<![CDATA[", "]]>" },
        { "&#3", "2;" },
        { "</stream:str", "eam>" },
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(partial); i++) {
        struct recorder plain;
        recorder_init(&plain, NULL);
        xml_parser_feed(plain.parser, STREAM_HEADER, strlen(STREAM_HEADER));
        xml_parser_feed(plain.parser, partial[i][0], strlen(partial[i][0]));
        xml_parser_feed(plain.parser, partial[i][1], strlen(partial[i][1]));

        struct recorder h;
        recorder_init(&h, NULL);
        xml_parser_feed(h.parser, STREAM_HEADER, strlen(STREAM_HEADER));
        assert_true(xml_parser_idle(h.parser));
        xml_parser_feed(h.parser, partial[i][0], strlen(partial[i][0]));
        size_t pending = xml_parser_pending(h.parser);
        if (xml_parser_idle(h.parser))
            fail_msg("case %zu: hibernated after %s", i, partial[i][0]);
        assert_int_equal(xml_parser_pending(h.parser), pending);
        xml_parser_feed(h.parser, partial[i][1], strlen(partial[i][1]));
        assert_string_equal(buf_cstr(&h.trace), buf_cstr(&plain.trace));
        assert_int_equal(h.errors, 0);
        recorder_release(&h);
        recorder_release(&plain);
    }

    /* From inside the callback (the recorder tries at every event). */
    assert_int_equal(xml_parser_feed(r.parser, "<a/><b/>", 8), 0);
    assert_int_equal(r.stanzas, 2);
    assert_int_equal(r.idle_in_callback, 0);

    /* Stopped, then closed, then failed: refused; nothing changes. */
    r.stop_on = "stop";
    assert_int_equal(xml_parser_feed(r.parser, "<stop/>", 7), 0);
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, "<c/>", 4), 0);
    assert_int_equal(r.stanzas, 3);
    xml_parser_reset(r.parser);
    r.stop_on = NULL;
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "</stream:stream>", strlen(STREAM_HEADER) + 16), 0);
    assert_int_equal(r.closes, 1);
    assert_false(xml_parser_idle(r.parser));
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "<!-- x -->", strlen(STREAM_HEADER) + 10), -1);
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_error(r.parser), XML_ERROR_RESTRICTED_XML);
    assert_int_equal(xml_parser_feed(r.parser, "<a/>", 4), -1);
    assert_int_equal(r.errors, 1);
    recorder_release(&r);

    /* An empty feed does not wake a hibernated parser, and it stays idle. */
    recorder_init(&r, NULL);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
    assert_true(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, "", 0), 0);
    assert_false(xml_parser_idle(r.parser));
    recorder_release(&r);   /* freeing a hibernated parser */
}

/* Feeds a whole string and hibernates; the parser must agree to. */
static void feed_and_idle(struct recorder *r, const char *s)
{
    assert_int_equal(xml_parser_feed(r->parser, s, strlen(s)), 0);
    assert_true(xml_parser_idle(r->parser));
}

static void test_idle_hostile(void **state)
{
    static const struct {
        const char *input;
        enum xml_error_kind want;
    } cases[] = {
        { "<!-- comment -->", XML_ERROR_RESTRICTED_XML },
        { "<message><!-- c --></message>", XML_ERROR_RESTRICTED_XML },
        { "<?php echo 1; ?>", XML_ERROR_RESTRICTED_XML },
        { "<message><body>&nbsp;</body></message>", XML_ERROR_RESTRICTED_XML },
        /* As without hibernation, a DOCTYPE inside the stream is malformed. */
        { "<!DOCTYPE x [<!ENTITY a 'b'>]>", XML_ERROR_NOT_WELL_FORMED },
        { "<?xml version='1.0'?>", XML_ERROR_NOT_WELL_FORMED },
        { "<message><body>\xc0\xaf</body></message>", XML_ERROR_NOT_WELL_FORMED },
        { "<message><body>\xed\xa0\x80</body></message>", XML_ERROR_NOT_WELL_FORMED },
        { "\xff", XML_ERROR_NOT_WELL_FORMED },
        { "\xef\xbb\xbf", XML_ERROR_NOT_WELL_FORMED },   /* a BOM is text, not whitespace */
        { "<message to='\xc3'/>", XML_ERROR_NOT_WELL_FORMED },
        { "<p:message/>", XML_ERROR_NOT_WELL_FORMED },
        { "hello", XML_ERROR_NOT_WELL_FORMED },
        { "</message>", XML_ERROR_NOT_WELL_FORMED },
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(cases); i++) {
        for (uint32_t seed = 0; seed < 3; seed++) {
            struct recorder r;
            recorder_init(&r, NULL);
            feed_and_idle(&r, STREAM_HEADER);
            feed_and_idle(&r, "<a/>");
            feed_split(&r, cases[i].input, strlen(cases[i].input), seed);
            if (r.error != cases[i].want)
                fail_msg("case %zu (%s): got %s", i, cases[i].input, xml_error_condition(r.error));
            assert_int_equal(r.errors, 1);
            assert_false(xml_parser_idle(r.parser));
            assert_int_equal(xml_parser_feed(r.parser, "<b/>", 4), -1);
            assert_int_equal(r.errors, 1);
            recorder_release(&r);
        }
    }
}

static void test_idle_limits(void **state)
{
    /* A stanza as large as the cap passes after a hibernation; one byte more does not. */
    struct xml_limits small = { .max_stanza_bytes = 300 };
    struct buf b;
    buf_init(&b);
    for (int extra = 0; extra <= 1; extra++) {
        buf_reset(&b);
        buf_append_str(&b, "<message><body>");
        while (b.len < (size_t)(300 + extra) - strlen("</body></message>"))
            buf_append(&b, "z", 1);
        buf_append_str(&b, "</body></message>");
        for (uint32_t seed = 0; seed < 10; seed++) {
            struct recorder r;
            recorder_init(&r, &small);
            feed_and_idle(&r, STREAM_HEADER);
            feed_split(&r, b.data, b.len, seed);
            assert_int_equal(r.error, extra ? XML_ERROR_POLICY_VIOLATION : XML_ERROR_NONE);
            assert_int_equal(r.stanzas, extra ? 0 : 1);
            recorder_release(&r);
        }
    }
    /* A huge stanza after a hibernation: caught early, nothing past the cap pending. */
    char *s = big_buffer("<message><body>", 'a', TEN_MIB);
    struct recorder r;
    recorder_init(&r, NULL);
    feed_and_idle(&r, STREAM_HEADER "<a/>");
    size_t off = 0;
    while (off < TEN_MIB && r.errors == 0) {
        xml_parser_feed(r.parser, s + off, 4096);
        off += 4096;
        assert_true(xml_parser_pending(r.parser) <= 65536 + 8192);
    }
    assert_int_equal(r.error, XML_ERROR_POLICY_VIOLATION);
    assert_true(off <= 65536 + 8192);
    recorder_release(&r);
    free(s);

    /* Whitespace keepalives: the run between stanzas keeps counting across
     * hibernations (they are not a way around the cap). */
    recorder_init(&r, &small);
    feed_and_idle(&r, STREAM_HEADER "<a/>");
    for (int i = 0; i < 300; i++)
        feed_and_idle(&r, " ");
    assert_int_equal(xml_parser_feed(r.parser, " ", 1), -1);
    assert_int_equal(r.error, XML_ERROR_POLICY_VIOLATION);
    recorder_release(&r);

    /* Depth: the stanza is level 1 after a resume too. */
    struct xml_limits lim = { .max_depth = 2 };
    recorder_init(&r, &lim);
    feed_and_idle(&r, STREAM_HEADER);
    feed_and_idle(&r, "<a><b/></a>");
    assert_int_equal(xml_parser_feed(r.parser, "<a><b><c/></b></a>", 18), -1);
    assert_int_equal(r.error, XML_ERROR_POLICY_VIOLATION);
    assert_int_equal(r.stanzas, 1);
    recorder_release(&r);
    buf_release(&b);
}

static void test_idle_reset_close(void **state)
{
    struct recorder r;
    recorder_init(&r, NULL);
    /* Reset while hibernated (STARTTLS answered, say): a new header follows,
     * this time with another prefix and default namespace. */
    feed_and_idle(&r, STREAM_HEADER "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    xml_parser_reset(r.parser);
    assert_null(xml_parser_stream_ns(r.parser));
    assert_int_equal(xml_parser_pending(r.parser), 0);
    assert_false(xml_parser_idle(r.parser));
    static const char hdr2[] = "<?xml version='1.0'?><x:stream xmlns:x='http://etherx.jabber.org/streams'"
                               " xmlns='jabber:server' xmlns:db='jabber:server:dialback'>";
    feed_split(&r, hdr2, strlen(hdr2), 1);
    assert_int_equal(r.opens, 2);
    assert_string_equal(xml_parser_stream_ns(r.parser), "jabber:server");
    assert_true(xml_parser_idle(r.parser));
    assert_string_equal(xml_parser_stream_ns(r.parser), "jabber:server");
    r.keep = true;
    feed_and_idle(&r, "<db:verify id='1'/>");
    assert_string_equal(r.kept->ns, "jabber:server:dialback");
    feed_and_idle(&r, "<presence/>");
    assert_string_equal(r.kept->ns, "jabber:server");
    /* The old prefix is not declared any more; the new close tag closes. */
    struct recorder r2;
    recorder_init(&r2, NULL);
    feed_and_idle(&r2, hdr2);
    assert_int_equal(xml_parser_feed(r2.parser, "</stream:stream>", 16), -1);
    assert_int_equal(r2.error, XML_ERROR_NOT_WELL_FORMED);
    recorder_release(&r2);
    assert_int_equal(xml_parser_feed(r.parser, "</x:stream>", 11), 0);
    assert_int_equal(r.closes, 1);
    assert_int_equal(r.errors, 0);
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, "junk<", 5), 0);

    /* Reset after a close, then a reset from the callback on the first feed
     * after a hibernation: the rest of that feed is discarded. */
    xml_parser_reset(r.parser);
    feed_and_idle(&r, STREAM_HEADER);
    r.reset_on = "starttls";
    static const char tls[] = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message>gone</message><<<";
    assert_int_equal(xml_parser_feed(r.parser, tls, strlen(tls)), 0);
    assert_null(strstr(buf_cstr(&r.trace), "gone"));
    assert_null(xml_parser_stream_ns(r.parser));
    feed_and_idle(&r, STREAM_HEADER);
    assert_int_equal(r.opens, 4);
    assert_string_equal(xml_parser_stream_ns(r.parser), XML_NS_CLIENT);
    /* Stop while hibernated: later feeds are ignored until a reset. */
    xml_parser_stop(r.parser);
    assert_int_equal(xml_parser_feed(r.parser, "<a/>", 4), 0);
    assert_false(xml_parser_idle(r.parser));
    int stanzas = r.stanzas;
    xml_parser_reset(r.parser);
    assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "<a/>", strlen(STREAM_HEADER) + 4), 0);
    assert_int_equal(r.stanzas, stanzas + 1);
    /* Close right after a hibernation, split byte by byte. */
    assert_true(xml_parser_idle(r.parser));
    feed_split(&r, "</stream:stream>", 16, 1);
    assert_int_equal(r.closes, 2);
    assert_int_equal(r.errors, 0);
    recorder_release(&r);
}

/* Resident set size in bytes, from /proc/self/statm. */
static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    long long size = 0, resident = -1;
    if (fscanf(f, "%lld %lld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define IDLE_MEMORY_ARG "--idle-memory"
#define IDLE_PARSERS 2000

/* Feeds a stream header and one stanza to a new parser of r; true if all went well. */
static bool open_with_stanza(struct recorder *r)
{
    static const char stanza[] = "<presence><show>away</show><status>gone</status></presence>";
    recorder_init(r, NULL);
    bool ok = xml_parser_feed(r->parser, STREAM_HEADER, strlen(STREAM_HEADER)) == 0 &&
              xml_parser_feed(r->parser, stanza, strlen(stanza)) == 0 && r->stanzas == 1;
    buf_release(&r->trace);   /* the recorder's own memory is not the parser's */
    return ok;
}

/* Run in a process of its own (test_idle_memory execs this binary with
 * IDLE_MEMORY_ARG) so that memory freed by other tests cannot hide growth.
 * Prints the RSS growth per parser with and without hibernation; exit status 0
 * when hibernated parsers cost under 1.5 KiB each. */
static int idle_memory_report(void)
{
    struct recorder *idle = xcalloc(IDLE_PARSERS, sizeof *idle);
    struct recorder *busy = xcalloc(IDLE_PARSERS, sizeof *busy);
    /* Their pages count before the first figure, not in it. */
    for (size_t i = 0; i < IDLE_PARSERS * sizeof *idle; i++) {
        ((volatile char *)idle)[i] = 0;
        ((volatile char *)busy)[i] = 0;
    }
    bool ok = true;
    long long rss0 = rss_bytes();
    /* Without hibernation. */
    for (int i = 0; i < IDLE_PARSERS; i++)
        ok = open_with_stanza(&busy[i]) && ok;
    long long rss1 = rss_bytes();
    /* Connections that go idle one after another: each expat parser is freed
     * before the next connection needs one, as on a busy server. */
    for (int i = 0; i < IDLE_PARSERS; i++)
        ok = open_with_stanza(&idle[i]) && xml_parser_idle(idle[i].parser) && ok;
    long long rss2 = rss_bytes();
    double per_busy = (double)(rss1 - rss0) / IDLE_PARSERS;
    double per_idle = (double)(rss2 - rss1) / IDLE_PARSERS;
    printf("    RSS per parser (stream header + one stanza, %d parsers): %.0f bytes not hibernated, "
           "%.0f bytes hibernated\n", IDLE_PARSERS, per_busy, per_idle);

    /* Every one of them still works: wake, another stanza, close. */
    for (int i = 0; i < IDLE_PARSERS; i++) {
        for (int k = 0; k < 2; k++) {
            struct recorder *r = k ? &busy[i] : &idle[i];
            ok = xml_parser_feed(r->parser, "<a/></stream:stream>", 20) == 0 && ok;
            ok = r->stanzas == 2 && r->closes == 1 && r->errors == 0 && ok;
            recorder_release(r);
        }
    }
    free(idle);
    free(busy);
    if (!ok) {
        printf("    a parser misbehaved\n");
        return 1;
    }
#ifdef UNDER_ASAN
    /* Red zones and the quarantine of freed memory make the figures meaningless. */
    printf("    (AddressSanitizer build: figures not checked)\n");
    return 0;
#else
    if (rss0 <= 0 || per_busy < 4 * 1024 || per_idle >= 1.5 * 1024) {
        printf("    want > 4096 bytes without and < 1536 bytes with hibernation\n");
        return 1;
    }
    return 0;
#endif
}

static void test_idle_memory(void **state)
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        execl("/proc/self/exe", "test_xml", IDLE_MEMORY_ARG, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* --- expat's memory region --------------------------------------------------------- */

/* A stanza far bigger than the region's first chunk, whole and in pieces. */
static void test_region_big_stanza(void **state)
{
    const size_t body = 60 * 1024;
    struct buf s;
    buf_init(&s);
    buf_append_str(&s, "<message><body>");
    for (size_t i = 0; i < body; i++)
        buf_append(&s, &"abcdefghij"[i % 10], 1);
    buf_append_str(&s, "</body></message>");
    struct buf a;   /* the same text as an attribute value */
    buf_init(&a);
    buf_append_str(&a, "<message to='");
    buf_append(&a, s.data + 15, body);
    buf_append_str(&a, "'/>");
    for (uint32_t seed = 0; seed < 4; seed++) {
        for (int attr = 0; attr < 2; attr++) {
            struct recorder r;
            recorder_init(&r, NULL);
            r.keep = true;
            const struct buf *in = attr ? &a : &s;
            feed_split(&r, STREAM_HEADER, strlen(STREAM_HEADER), 0);
            /* Seed 1 (byte by byte) would cost expat 2.5 O(n^2) on the attribute. */
            feed_split(&r, in->data, in->len, seed == 1 ? 0 : seed);
            assert_int_equal(r.errors, 0);
            assert_int_equal(r.stanzas, 1);
            assert_non_null(r.kept);
            char *text = attr ? xstrdup(xml_attr(r.kept, "to")) : xml_text(xml_child(r.kept, "body", NULL));
            assert_int_equal(strlen(text), body);
            assert_memory_equal(text, s.data + 15, body);
            free(text);
            /* The stream goes on, hibernated or not. */
            xml_parser_idle(r.parser);
            feed_split(&r, "<presence/>", 11, seed);
            assert_string_equal(r.kept->name, "presence");
            assert_int_equal(r.errors, 0);
            recorder_release(&r);
        }
    }
    /* Twenty of them in one feed: expat reuses its buffers, no cap is reached. */
    struct buf many;
    buf_init(&many);
    buf_append_str(&many, STREAM_HEADER);
    for (int i = 0; i < 20; i++) {
        buf_append(&many, a.data, a.len);
        buf_append(&many, s.data, s.len);
    }
    struct recorder r;
    recorder_init(&r, NULL);
    assert_int_equal(xml_parser_feed(r.parser, many.data, many.len), 0);
    assert_int_equal(r.stanzas, 40);
    /* Expat grew by far more than a stanza: the feed recycled it already. */
    assert_false(xml_parser_idle(r.parser));
    assert_int_equal(xml_parser_feed(r.parser, "<a/></stream:stream>", 20), 0);
    assert_int_equal(r.stanzas, 41);
    assert_int_equal(r.closes, 1);
    recorder_release(&r);
    buf_release(&many);
    buf_release(&a);
    buf_release(&s);
}

/* A stanza under the size cap whose tag makes expat allocate about 16 bytes per
 * byte (namespace declarations, not counted as attributes): the region cap
 * turns it into a policy-violation, not a crash or a giant parser. */
static void test_region_cap(void **state)
{
    struct buf s;
    buf_init(&s);
    buf_append_str(&s, "<message");
    for (int i = 0; s.len < 60 * 1024; i++)
        buf_printf(&s, " xmlns:p%d='u'", i);
    buf_append_str(&s, "/>");
    static const size_t pieces[] = { 0, 4096, 100 };
    for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
        struct recorder r;
        recorder_init(&r, NULL);
        r.error_text = true;
        assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
        size_t off = 0;
        int rc = 0;
        while (off < s.len && rc == 0) {
            size_t len = pieces[k] == 0 || s.len - off < pieces[k] ? s.len - off : pieces[k];
            rc = xml_parser_feed(r.parser, s.data + off, len);
            off += len;
        }
        if (rc == 0)
            rc = xml_parser_flush(r.parser);
        assert_int_equal(rc, -1);
        assert_int_equal(r.errors, 1);
        assert_int_equal(r.stanzas, 0);
        assert_int_equal(r.error, XML_ERROR_POLICY_VIOLATION);
        assert_non_null(strstr(xml_parser_error_text(r.parser), "memory limit of 524288 bytes"));
        assert_int_equal(xml_parser_feed(r.parser, "<a/>", 4), -1);
        /* A reset gives a fresh region. */
        xml_parser_reset(r.parser);
        assert_int_equal(xml_parser_feed(r.parser, STREAM_HEADER "<a/>", strlen(STREAM_HEADER) + 4), 0);
        assert_int_equal(r.stanzas, 1);
        recorder_release(&r);
    }
    /* Two hundred declarations are fine. */
    buf_reset(&s);
    buf_append_str(&s, "<message");
    for (int i = 0; i < 200; i++)
        buf_printf(&s, " xmlns:p%d='u'", i);
    buf_append_str(&s, "/>");
    struct recorder r;
    recorder_init(&r, NULL);
    feed_split(&r, STREAM_HEADER, strlen(STREAM_HEADER), 0);
    feed_split(&r, s.data, s.len, 7);
    assert_int_equal(r.errors, 0);
    assert_int_equal(r.stanzas, 1);
    recorder_release(&r);
    buf_release(&s);
}

/* A callback that uses other parsers, while expat allocates for its own on
 * both sides of the call: each must keep to its own region. */
struct nest {
    struct recorder inner;
    const char *big;           /* a stanza that makes the inner expat grow */
    int calls;
    int outer_stanzas;
};

static void on_nest_event(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct nest *n = ud;
    if (kind != XML_EVENT_STANZA)
        return;
    n->outer_stanzas++;
    switch (n->calls++ % 3) {
    case 0:
        assert_int_equal(xml_parser_feed(n->inner.parser, n->big, strlen(n->big)), 0);
        break;
    case 1:
        assert_int_equal(xml_parser_feed(n->inner.parser, "<a/>", 4), 0);
        xml_parser_idle(n->inner.parser);
        break;
    default:
        xml_parser_reset(n->inner.parser);
        assert_int_equal(xml_parser_feed(n->inner.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
        break;
    }
    char err[160];
    struct xml_node *doc = xml_parse_document("<x><y a='1'/></x>", 17, err, sizeof err);
    assert_non_null(doc);
    xml_free(&doc);
}

static void test_region_nested(void **state)
{
    char *big = big_buffer("<message to='", 'b', 40000);
    memcpy(big + 40000 - 4, "'/>", 4);
    struct nest n = { .big = big };
    recorder_init(&n.inner, NULL);
    assert_int_equal(xml_parser_feed(n.inner.parser, STREAM_HEADER, strlen(STREAM_HEADER)), 0);
    struct xml_parser *outer = xml_parser_new(NULL, on_nest_event, &n);
    struct buf in;
    buf_init(&in);
    buf_append_str(&in, STREAM_HEADER);
    for (int i = 0; i < 9; i++) {
        buf_append_str(&in, "<presence/>");
        buf_append_str(&in, big);
    }
    assert_int_equal(xml_parser_feed(outer, in.data, in.len), 0);
    assert_int_equal(n.outer_stanzas, 18);
    assert_int_equal(xml_parser_error(outer), XML_ERROR_NONE);
    assert_int_equal(n.inner.errors, 0);
    assert_int_equal(n.inner.opens, 7);
    assert_int_equal(n.inner.stanzas, 12);
    xml_parser_free(&outer);
    recorder_release(&n.inner);
    buf_release(&in);
    free(big);
}

#define REGION_MEMORY_ARG "--region-memory"
#define CONN_BYTES 2048

/* Run in a process of its own (test_region_memory). Parsers are created
 * interleaved with 2 KiB allocations that stay (a connection's other state),
 * so that parser memory from malloc would share pages with them; then all
 * parsers hibernate. RSS must fall by at least 70% of what the parsers had
 * added. Exit status 0 when it does. */
static int region_memory_report(void)
{
    struct recorder *rs = xcalloc(IDLE_PARSERS, sizeof *rs);
    char **conns = xcalloc(IDLE_PARSERS, sizeof *conns);
    for (size_t i = 0; i < IDLE_PARSERS * sizeof *rs; i++)
        ((volatile char *)rs)[i] = 0;
    for (size_t i = 0; i < IDLE_PARSERS * sizeof *conns; i++)
        ((volatile char *)conns)[i] = 0;
    bool ok = true;
    long long rss0 = rss_bytes();
    for (int i = 0; i < IDLE_PARSERS; i++) {
        conns[i] = xmalloc(CONN_BYTES);
        memset(conns[i], i & 0xff, CONN_BYTES);
        ok = open_with_stanza(&rs[i]) && ok;
    }
    long long rss1 = rss_bytes();
    for (int i = 0; i < IDLE_PARSERS; i++)
        ok = xml_parser_idle(rs[i].parser) && ok;
    long long rss2 = rss_bytes();
    malloc_trim(0);   /* as c2s does after a sweep */
    long long rss3 = rss_bytes();
    /* The connections' blocks are written in full: what is not theirs is the
     * parsers' (expat's region and the parser's own few hundred bytes). */
    long long conn_bytes = (long long)IDLE_PARSERS * (CONN_BYTES + 16);
    long long added = rss1 - rss0 - conn_bytes;
    long long dropped = rss1 - rss3;
    printf("    %d parsers interleaved with %d x %d-byte blocks: RSS +%lld bytes in all, %lld per parser "
           "without the blocks;\n    after hibernating all: -%lld bytes (-%lld after malloc_trim), "
           "%lld per parser, %.0f%% of what the parsers added\n",
           IDLE_PARSERS, IDLE_PARSERS, CONN_BYTES, rss1 - rss0, added / IDLE_PARSERS, rss1 - rss2,
           dropped, dropped / IDLE_PARSERS, added > 0 ? 100.0 * (double)dropped / (double)added : 0.0);
    for (int i = 0; i < IDLE_PARSERS; i++) {
        struct recorder *r = &rs[i];
        ok = xml_parser_feed(r->parser, "<a/></stream:stream>", 20) == 0 && ok;
        ok = r->stanzas == 2 && r->closes == 1 && r->errors == 0 && ok;
        ok = conns[i][CONN_BYTES - 1] == (char)(i & 0xff) && ok;
        recorder_release(r);
        free(conns[i]);
    }
    free(rs);
    free(conns);
    if (!ok) {
        printf("    a parser misbehaved\n");
        return 1;
    }
#ifdef UNDER_ASAN
    printf("    (AddressSanitizer build: figures not checked)\n");
    return 0;
#else
    if (rss0 <= 0 || added < 4096LL * IDLE_PARSERS || dropped * 10 < added * 7) {
        printf("    want parsers adding > 4096 bytes each, and at least 70%% of it back\n");
        return 1;
    }
    return 0;
#endif
}

static void test_region_memory(void **state)
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        execl("/proc/self/exe", "test_xml", REGION_MEMORY_ARG, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Freed parsers' first chunks are kept for the next parsers, and given back by
 * xml_trim_cache once a sweep saw none taken. */
static void test_chunk_cache(void **state)
{
    xml_trim_cache();
    xml_trim_cache();
    assert_int_equal(xml_cache_chunks(), 0);
    struct xml_node *hdr = NULL;
    struct xml_parser *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = xml_parser_new(NULL, keep_open, &hdr);
        assert_int_equal(xml_parser_feed(p[i], STREAM_HEADER, strlen(STREAM_HEADER)), 0);
        xml_free(&hdr);
    }
    for (int i = 0; i < 3; i++)
        xml_parser_free(&p[i]);
    assert_int_equal(xml_cache_chunks(), 3);
    /* A new parser takes a kept chunk: the next trim keeps the rest. */
    p[0] = xml_parser_new(NULL, keep_open, &hdr);
    assert_int_equal(xml_parser_feed(p[0], STREAM_HEADER "<a/>", strlen(STREAM_HEADER "<a/>")), 0);
    xml_free(&hdr);
    assert_int_equal(xml_cache_chunks(), 2);
    xml_trim_cache();
    assert_int_equal(xml_cache_chunks(), 2);
    xml_parser_free(&p[0]);
    /* Nothing taken since: everything goes back. */
    xml_trim_cache();
    assert_int_equal(xml_cache_chunks(), 0);
}

static void test_error_conditions(void **state)
{
    assert_string_equal(xml_error_condition(XML_ERROR_NOT_WELL_FORMED), "not-well-formed");
    assert_string_equal(xml_error_condition(XML_ERROR_RESTRICTED_XML), "restricted-xml");
    assert_string_equal(xml_error_condition(XML_ERROR_POLICY_VIOLATION), "policy-violation");
    assert_string_equal(xml_error_condition(XML_ERROR_INVALID_NAMESPACE), "invalid-namespace");
    assert_string_equal(xml_error_condition(XML_ERROR_BAD_FORMAT), "bad-format");
    assert_string_equal(xml_error_condition(XML_ERROR_NONE), "undefined-condition");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], IDLE_MEMORY_ARG) == 0)
        return idle_memory_report();
    if (argc == 2 && strcmp(argv[1], REGION_MEMORY_ARG) == 0)
        return region_memory_report();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_basic),
        cmocka_unit_test(test_stream_header_node),
        cmocka_unit_test(test_stream_open_node),
        cmocka_unit_test(test_splits_identical),
        cmocka_unit_test(test_restricted_xml),
        cmocka_unit_test(test_not_well_formed),
        cmocka_unit_test(test_stream_element),
        cmocka_unit_test(test_huge_stanza),
        cmocka_unit_test(test_huge_attribute),
        cmocka_unit_test(test_big_tag_in_small_pieces_is_linear),
        cmocka_unit_test(test_deferred_input_flush),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_reset_in_callback),
        cmocka_unit_test(test_stop_in_callback),
        cmocka_unit_test(test_idle_events_identical),
        cmocka_unit_test(test_idle_refused),
        cmocka_unit_test(test_idle_hostile),
        cmocka_unit_test(test_idle_limits),
        cmocka_unit_test(test_idle_reset_close),
        cmocka_unit_test(test_idle_memory),
        cmocka_unit_test(test_region_big_stanza),
        cmocka_unit_test(test_region_cap),
        cmocka_unit_test(test_region_nested),
        cmocka_unit_test(test_region_memory),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_serialize_round_trip),
        cmocka_unit_test(test_parse_document),
        cmocka_unit_test(test_tree_helpers),
        cmocka_unit_test(test_tree_deep_free),
        cmocka_unit_test(test_packed_tree),
        cmocka_unit_test(test_error_conditions),
        cmocka_unit_test(test_chunk_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

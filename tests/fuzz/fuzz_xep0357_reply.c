/* tests/fuzz/fuzz_xep0357_reply.c - libFuzzer target for the XEP-0357 backend: an app server's reply read, a stored form read, and what is built from them re-read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../pusher/xep0357_wire.h"
#include "buf.h"
#include "util.h"
#include "xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* No raw control byte and no unescaped quote inside the JSON's strings, and the braces
 * balance outside them. */
static void check_json(const struct buf *b)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (in_str) {
            if (c < 0x20)
                abort();
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"')
            in_str = true;
        else if (c == '{')
            depth++;
        else if (c == '}' && --depth < 0)
            abort();
    }
    if (in_str || depth != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The bytes as a reply from an app server. */
    const char *cond;
    enum xep_verdict v = xep_iq_verdict("error", (const char *)data, size, &cond);
    if (v != XEP_VERDICT_DISABLE && v != XEP_VERDICT_RETRY && v != XEP_VERDICT_FAIL)
        abort();
    if (cond == NULL || strlen(cond) > 32)
        abort();

    /* The bytes as a stored form, and as the message's body: the publish IQ built from
     * them is one well-formed stanza, the MongoosePush JSON is well formed. */
    char *text = xstrndup((const char *)data, size);
    struct xep_reg r;
    if (xep_reg_init(&r, "pubsub.example", "node", text) == 0) {
        struct xep_summary sum = {3, "alice@localhost", text};
        struct buf iq;
        buf_init(&iq);
        xep_publish_iq(&iq, "localhost", "mkpush-pusher.0-1", &r, &sum);
        char err[128];
        struct xml_node *back = xml_parse_stanza(iq.data, iq.len, err, sizeof err);
        /* A body that is not valid UTF-8 or holds characters XML cannot carry makes any
         * stanza unreadable (the emitters only pass bodies that came out of the parser);
         * the form's values came out of the parser, so with a good body it must read. */
        struct xml_node *probe = xml_node_new("message", XML_NS_CLIENT);
        xml_add_text(probe, text, strlen(text));
        struct buf pb;
        buf_init(&pb);
        xml_serialize(probe, XML_NS_CLIENT, &pb);
        struct xml_node *pback = xml_parse_stanza(pb.data, pb.len, err, sizeof err);
        if (pback != NULL && back == NULL) {
            fprintf(stderr, "publish IQ unreadable: %s\n", err);
            abort();
        }
        xml_free(&pback);
        xml_free(&probe);
        buf_release(&pb);
        xml_free(&back);
        buf_release(&iq);
        struct buf url, json;
        buf_init(&url);
        buf_init(&json);
        if (xep_mpush_request(&url, &json, "http://127.0.0.1:1/", "v3", &r, &sum, err, sizeof err) == 0) {
            check_json(&json);
            for (size_t i = strlen("http://127.0.0.1:1/v3/notification/"); i < url.len; i++)
                if (strchr("/?#", url.data[i]) != NULL || (unsigned char)url.data[i] <= ' ')
                    abort();
        }
        buf_release(&url);
        buf_release(&json);
        xep_reg_release(&r);
    }
    free(text);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

/* tests/fuzz/fuzz_sns_reply.c - libFuzzer target for the SNS backend's reading of replies, and its JSON and form encoding of any body. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../pusher/sns_wire.h"
#include "buf.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_printable(const char *s, const char *what)
{
    if (s == NULL)
        return;
    size_t n = strlen(s);
    if (n > 4 * 256) {
        fprintf(stderr, "%s longer than its bound: %zu\n", what, n);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) {
            fprintf(stderr, "%s has a byte that is not printable at %zu\n", what, i);
            abort();
        }
    }
}

/* A JSON string literal as sns_json_string writes it: quoted, no raw control byte, no
 * unescaped quote, valid UTF-8 (checked byte by byte, without a library). */
static void check_json_string(const struct buf *b)
{
    const unsigned char *s = (const unsigned char *)b->data;
    size_t n = b->len;
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        abort();
    for (size_t i = 1; i < n - 1; i++) {
        if (s[i] < 0x20)
            abort();
        if (s[i] == '\\') {
            i++;
            if (i >= n - 1 || strchr("\"\\bfnrtu", s[i]) == NULL)
                abort();
            continue;
        }
        if (s[i] == '"')
            abort();
        if (s[i] >= 0x80) {
            size_t len = s[i] >= 0xf0 ? 4 : s[i] >= 0xe0 ? 3 : s[i] >= 0xc2 ? 2 : 0;
            if (len == 0 || s[i] > 0xf4 || i + len > n - 1)
                abort();
            for (size_t k = 1; k < len; k++)
                if ((s[i + k] & 0xc0) != 0x80)
                    abort();
            i += len - 1;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sns_reply r;
    int rc = sns_reply_parse((const char *)data, size, &r);
    if (rc == 0) {
        if ((r.message_id == NULL) == (r.code == NULL))
            abort();
    } else if (r.message_id != NULL || r.code != NULL || r.message != NULL) {
        abort();
    }
    check_printable(r.message_id, "message id");
    check_printable(r.code, "code");
    check_printable(r.message, "message");
    static const long statuses[] = { 0, 200, 400, 403, 429, 500 };
    for (size_t i = 0; i < MK_ARRAY_LEN(statuses); i++) {
        enum sns_verdict v = sns_verdict(statuses[i], rc == 0 ? &r : NULL);
        if (statuses[i] == 200 && v != SNS_VERDICT_OK)
            abort();
        if ((statuses[i] == 0 || statuses[i] >= 429) && v != SNS_VERDICT_RETRY)
            abort();
    }
    sns_reply_release(&r);

    struct buf json;
    buf_init(&json);
    sns_json_string(&json, (const char *)data, size);
    check_json_string(&json);
    buf_release(&json);

    /* The same bytes as a chat message's body (up to a NUL, as protobuf strings are):
     * the form body is nothing but unreserved characters, '=', '&' and %XX escapes. */
    char *body = xstrndup((const char *)data, size);
    struct cfg_push_backend c;
    memset(&c, 0, sizeof c);
    c.sns_region = (char *)"eu-west-1";
    c.sns_account_id = (char *)"123456789012";
    c.sns_endpoint = (char *)"https://sns.eu-west-1.amazonaws.com/";
    c.sns_pm_topic = (char *)"pm";
    c.aws_access_key_id = (char *)"AKIDEXAMPLE";
    c.aws_secret_access_key = (char *)"secret";
    Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
    ev.id = (char *)"c2s.0.1.1";
    ev.user = (char *)"alice@localhost";
    ev.from = (char *)"alice@localhost/r";
    ev.to = (char *)"bob@localhost";
    ev.type = (char *)"chat";
    ev.body = body;
    ev.has_body = true;
    struct sns_request req;
    char err[200];
    if (sns_build_publish(&c, &ev, 1767323045, &req, err, sizeof err) != SNS_BUILD_OK)
        abort();
    for (size_t i = 0; i < req.body.len; i++) {
        unsigned char ch = (unsigned char)req.body.data[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              strchr("-_.~=&%", ch) != NULL))
            abort();
    }
    sns_request_release(&req);
    free(body);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

/* pusher/sns_wire.h - Amazon SNS Publish on the wire: the signed query-API request for an event, and SNS's reply (pure functions, no I/O). */
#ifndef MK_PUSHER_SNS_WIRE_H
#define MK_PUSHER_SNS_WIRE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "cfg.h"
#include "meerkat.pb-c.h"

/* What is published for an event (MongooseIM's SNS format, so its subscribers work):
 *   ONLINE / OFFLINE      -> presence_topic  {"present":true|false,"user_id":"<user's bare JID>"}
 *   SENT of type "chat"   -> pm_topic        {"from_user_id":"<bare>","message":"<body>","to_user_id":"<bare>"}
 *   GROUPCHAT             -> muc_topic       same keys; to_user_id is the room's bare JID
 * Any other event, or a kind whose topic is not configured, publishes nothing.
 * The JSON has exactly those keys (sorted, as MongooseIM's encoder writes them), strings
 * escaped per RFC 8259 with non-ASCII text as raw UTF-8 (an invalid UTF-8 byte, which the
 * XML parser upstream never lets through, would become U+FFFD).
 * The topic ARN is arn:aws:sns:{region}:{account_id}:{topic}.
 *
 * MessageAttributes (AWS's MessageAttributes.entry.N.Name / .Value.DataType /
 * .Value.StringValue form), so that subscription filter policies can select events
 * without parsing the message:
 *   event_kind     String  online | offline | chat | groupchat
 *   event_id       String  the event id, stable across re-sends: a subscriber can de-duplicate
 *                          (delivery is at least once)
 *   event_time_us  Number   when it happened, microseconds since the epoch
 *   user_id        String  bare JID of the local user the event belongs to */

/* One Publish request, ready for http_send. */
struct sns_request {
    char *url;                 /* the endpoint as configured */
    struct buf body;           /* application/x-www-form-urlencoded; charset=utf-8 */
    char *headers[8];          /* "Name: value" lines, NULL-terminated (Host, Content-Type, X-Amz-*,
                                * Authorization): the Authorization line and the token are secrets'
                                * products, never logged */
    char *topic_arn;
    char *message;             /* the JSON published */
    const char *kind;          /* the event_kind attribute */
};

/* Why nothing is built. */
enum sns_build_result {
    SNS_BUILD_OK = 0,          /* *out is a request */
    SNS_BUILD_SKIP,            /* the event has nothing to publish (kind, type or topic): *out is empty */
    SNS_BUILD_ERROR,           /* a request cannot be made (bad endpoint, credentials): err says why */
};

/* Builds and signs the Publish of ev for backend cfg (endpoint, region, account_id,
 * signing_region, topics, credentials) at time now (seconds since the epoch). Borrows
 * cfg and ev; fills *out (release it with sns_request_release in every case). */
enum sns_build_result sns_build_publish(const struct cfg_push_backend *cfg, const Mk__PushEvent *ev, int64_t now,
                                        struct sns_request *out, char *err, size_t errlen);
void sns_request_release(struct sns_request *r);

/* Appends the JSON string literal of s[0..n) to out (quotes included). */
void sns_json_string(struct buf *out, const char *s, size_t n);

/* SNS's reply: <PublishResponse><PublishResult><MessageId> on success,
 * <ErrorResponse><Error><Type/><Code/><Message/></Error> on failure (an <Error> root, as
 * some compatible endpoints send, is taken too). Strings are copied, at most 256 bytes
 * each, and made printable (mk_sanitize) so that they can go into a log line. */
struct sns_reply {
    char *message_id;          /* NULL when none */
    char *code;                /* error code, NULL when none */
    char *message;             /* error message, NULL when none */
};

/* Parses body (any bytes, borrowed). Returns 0 when it is an SNS reply (one of the two
 * shapes above), -1 when it is not (not XML, another document): *out is then empty.
 * Release *out with sns_reply_release in every case. */
int sns_reply_parse(const char *body, size_t len, struct sns_reply *out);
void sns_reply_release(struct sns_reply *r);

/* What one attempt's answer means, as enum push_outcome values (pusher/pusher.h) without
 * the dependency: */
enum sns_verdict {
    SNS_VERDICT_OK = 0,        /* 2xx: published */
    SNS_VERDICT_RETRY,         /* no answer (connection, timeout), 5xx, 429, or an AWS throttling /
                                * unavailable code (Throttling comes as a 400) */
    SNS_VERDICT_FAIL,          /* any other answer: bad credentials, signature, topic, request */
};
/* status 0 = no HTTP answer; reply may be NULL (unparsed). */
enum sns_verdict sns_verdict(long status, const struct sns_reply *reply);
#endif

/* common/sigv4.h - AWS Signature Version 4 (AWS4-HMAC-SHA256) for HTTP requests, with OpenSSL; any AWS client can use it. */
#ifndef MK_COMMON_SIGV4_H
#define MK_COMMON_SIGV4_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Credentials (borrowed). session_token is NULL for long-term keys; with temporary
 * (STS) credentials it is sent as x-amz-security-token and signed. */
struct sigv4_key {
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token;
};

/* A header to sign, as the request sends it (any case; the value is trimmed and its
 * runs of spaces collapsed in the canonical form). Repeated names are joined with
 * "," in the order given, as the specification says. */
struct sigv4_header {
    const char *name;
    const char *value;
};

/* What is signed (everything borrowed). */
struct sigv4_request {
    const char *method;                  /* "GET", "POST", ... */
    const char *host;                    /* the Host header as sent: host or host:port */
    const char *path;                    /* raw (not yet encoded) path; NULL or "" = "/" */
    const char *query;                   /* the query string without '?', NULL = none */
    const struct sigv4_header *headers;  /* other headers to sign (Content-Type ...), may be NULL */
    size_t nheaders;
    const void *body;                    /* NULL only with body_len 0 */
    size_t body_len;
    const char *region;                  /* signing region, e.g. "eu-west-1" */
    const char *service;                 /* e.g. "sns" */
    int64_t now;                         /* signing time, seconds since the epoch (UTC) */
    bool sign_content_sha256;            /* also send and sign x-amz-content-sha256 */
};

/* The result: the caller sends x-amz-date: amz_date, Authorization: authorization, and
 * x-amz-content-sha256: content_sha256 when asked for, x-amz-security-token when the key
 * has a token. canonical_request and string_to_sign are kept for tests and for the
 * "what did we sign" question when a server says SignatureDoesNotMatch: neither holds
 * the secret (the session token is in the canonical request). */
struct sigv4_signed {
    char amz_date[17];                   /* YYYYMMDDTHHMMSSZ */
    char content_sha256[65];             /* lowercase hex SHA-256 of the body */
    char signature[65];                  /* lowercase hex */
    struct buf authorization;            /* "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..." */
    struct buf canonical_request;
    struct buf string_to_sign;
};

/* Signs req with key. Borrows both; fills *out (initialised here; release it with
 * sigv4_signed_release whatever the result). Returns 0, or -1 with a sentence in err for
 * input that cannot be signed: a missing field, a header name that is not a token, a
 * header value with CR, LF or NUL (header injection), a time out of range. */
int sigv4_sign(const struct sigv4_request *req, const struct sigv4_key *key, struct sigv4_signed *out,
               char *err, size_t errlen);
/* Frees the buffers of *s (NULL-safe; the struct may be reused after). */
void sigv4_signed_release(struct sigv4_signed *s);

/* Appends the n bytes of s to out percent-encoded the AWS way (RFC 3986): A-Z a-z 0-9
 * - _ . ~ kept, every other byte %XX with uppercase hex; '/' kept when keep_slash.
 * The encoding of the canonical request, and of AWS query-API form bodies. */
void sigv4_uri_encode(struct buf *out, const char *s, size_t n, bool keep_slash);
#endif

/* common/scram.c - SCRAM-SHA-1/256(-PLUS) server, stored SCRAM keys, SASL PLAIN, base64 and SASLprep. */
#include "scram.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stringprep.h>

#include "util.h"

/* Every SASL message we accept is far smaller; anything larger is hostile. */
#define SCRAM_MAX_MSG 4096
/* The store is trusted, but a corrupted row must not make one login burn minutes of CPU. */
#define SCRAM_MAX_ITER (1u << 22)
#define SCRAM_SALT_LEN 16
#define SCRAM_SNONCE_BYTES 24
/* Largest salt whose base64 form fits struct scram_cred's salt field. */
#define SCRAM_MAX_SALT 45
#define SCRAM_MAX_CBIND 64

enum scram_step {
    SCRAM_STEP_START = 0,   /* waiting for client-first-message */
    SCRAM_STEP_FIRST,       /* client-first parsed, server-first not written yet */
    SCRAM_STEP_FINAL,       /* waiting for client-final-message */
    SCRAM_STEP_DONE,        /* succeeded or failed: no further step is accepted */
};

struct scram_server {
    enum scram_hash hash;
    bool plus;
    char *cbind_type;                /* NULL: this connection offers no channel binding */
    unsigned char *cbind_data;
    size_t cbind_len;
    enum scram_step step;
    char gs2_cbind_flag;             /* 'n', 'y' or 'p' */
    char *gs2_header;                /* raw, up to and including the second comma */
    size_t gs2_header_len;
    char *client_first_bare;
    char *user;                      /* SASLprepped authcid */
    char *authzid;                   /* NULL when absent */
    char *client_nonce;
    char *test_snonce;               /* injected server nonce (tests only) */
    char *nonce;                     /* client nonce + server nonce */
    char *server_first;
    unsigned char stored_key[SCRAM_MAX_KEY];
    unsigned char server_key[SCRAM_MAX_KEY];
};

static const EVP_MD *scram_md(enum scram_hash h)
{
    return h == SCRAM_SHA256 ? EVP_sha256() : EVP_sha1();
}

static size_t scram_hash_len(enum scram_hash h)
{
    return h == SCRAM_SHA256 ? 32 : 20;
}

/* ---- base64 ------------------------------------------------------------------- */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Encodes n bytes as base64 with padding into out and NUL-terminates it. Borrows
 * both buffers. Returns the encoded length, or 0 (out set to "" when outlen > 0)
 * when out cannot hold 4*ceil(n/3)+1 bytes. */
size_t b64_encode(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t need = (n + 2) / 3 * 4;
    if (n > (SIZE_MAX - 3) / 4 * 3 || outlen < need + 1) {
        if (outlen > 0)
            out[0] = '\0';
        return 0;
    }
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = b64_alphabet[v >> 6 & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = b64_alphabet[v >> 6 & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes n characters of canonical base64 (RFC 4648 section 4, padded, no
 * whitespace, zero pad bits) into out. Borrows both buffers. Returns the decoded
 * length, or -1 for a bad character, bad padding, non-zero pad bits or when the
 * result does not fit in outlen. */
long b64_decode(const char *in, size_t n, unsigned char *out, size_t outlen)
{
    if (n % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        const unsigned char *q = (const unsigned char *)in + i;
        int pad = 0;
        if (q[3] == '=') {
            pad = q[2] == '=' ? 2 : 1;
            if (i + 4 != n)
                return -1;  /* padding only in the last quantum */
        }
        int v0 = b64_value(q[0]), v1 = b64_value(q[1]);
        int v2 = pad == 2 ? 0 : b64_value(q[2]);
        int v3 = pad >= 1 ? 0 : b64_value(q[3]);
        if (v0 < 0 || v1 < 0 || v2 < 0 || v3 < 0)
            return -1;
        uint32_t v = (uint32_t)v0 << 18 | (uint32_t)v1 << 12 | (uint32_t)v2 << 6 | (uint32_t)v3;
        if ((pad == 2 && (v & 0xffff) != 0) || (pad == 1 && (v & 0xff) != 0))
            return -1;  /* non-canonical: bits beyond the data must be zero */
        size_t take = 3 - (size_t)pad;
        if (o + take > outlen)
            return -1;
        out[o++] = (unsigned char)(v >> 16);
        if (take > 1)
            out[o++] = (unsigned char)(v >> 8);
        if (take > 2)
            out[o++] = (unsigned char)v;
    }
    return (long)o;
}

/* ---- SASLprep ------------------------------------------------------------------ */

/* Applies SASLprep (RFC 4013) to the UTF-8 string s, treating it as a stored
 * string (unassigned code points are refused). Borrows s. Returns a new string
 * (xfree it) or NULL when s is not valid UTF-8, contains prohibited output or
 * fails the bidi rules, or is longer than 4096 bytes. */
char *scram_saslprep(const char *s)
{
    size_t n = strlen(s);
    if (n > SCRAM_MAX_MSG)
        return NULL;
    /* Mapping and NFKC can make the string grow; retry with a larger buffer. */
    for (size_t cap = n * 2 + 16; cap <= n * 20 + 64; cap *= 2) {
        char *buf = xmalloc(cap);
        memcpy(buf, s, n + 1);
        int rc = stringprep(buf, cap, STRINGPREP_NO_UNASSIGNED, stringprep_saslprep);
        if (rc == STRINGPREP_OK)
            return buf;
        free(buf);
        if (rc != STRINGPREP_TOO_SMALL_BUFFER)
            return NULL;
    }
    return NULL;
}

/* ---- stored credentials -------------------------------------------------------- */

static int scram_hmac(enum scram_hash h, const unsigned char *key, size_t keylen, const void *data, size_t n,
                      unsigned char *out)
{
    unsigned int len = 0;
    if (HMAC(scram_md(h), key, (int)keylen, data, n, out, &len) == NULL || len != scram_hash_len(h))
        return -1;
    return 0;
}

static int scram_digest(enum scram_hash h, const unsigned char *data, size_t n, unsigned char *out)
{
    unsigned int len = 0;
    if (EVP_Digest(data, n, out, &len, scram_md(h), NULL) != 1 || len != scram_hash_len(h))
        return -1;
    return 0;
}

/* SaltedPassword -> (StoredKey, ServerKey), as RFC 5802 section 3 defines them. */
static int scram_keys(enum scram_hash h, const char *prepped, const unsigned char *salt, size_t saltlen,
                      unsigned iter, unsigned char *stored_key, unsigned char *server_key)
{
    size_t hl = scram_hash_len(h);
    unsigned char salted[SCRAM_MAX_KEY], client_key[SCRAM_MAX_KEY];
    int rc = -1;
    if (PKCS5_PBKDF2_HMAC(prepped, (int)strlen(prepped), salt, (int)saltlen, (int)iter, scram_md(h), (int)hl,
                          salted) != 1)
        goto out;
    if (scram_hmac(h, salted, hl, "Client Key", 10, client_key) == -1 ||
        scram_digest(h, client_key, hl, stored_key) == -1 ||
        scram_hmac(h, salted, hl, "Server Key", 10, server_key) == -1)
        goto out;
    rc = 0;
out:
    OPENSSL_cleanse(salted, sizeof salted);
    OPENSSL_cleanse(client_key, sizeof client_key);
    return rc;
}

/* Derives credentials from password (SASLprepped here) with the given salt: the
 * deterministic half of scram_cred_make, also used to reproduce published test
 * vectors and to import keys. iter 0 means SCRAM_DEFAULT_ITER. Borrows every
 * pointer. Returns 0, or -1 when the password is empty or not valid SASLprep
 * input, or the salt (1-45 bytes) or iteration count is out of range. */
int scram_cred_from_salt(enum scram_hash h, const char *password, const unsigned char *salt, size_t saltlen,
                         unsigned iter, struct scram_cred *out)
{
    if (iter == 0)
        iter = SCRAM_DEFAULT_ITER;
    if (saltlen == 0 || saltlen > SCRAM_MAX_SALT || iter > SCRAM_MAX_ITER)
        return -1;
    char *prepped = scram_saslprep(password);
    if (prepped == NULL)
        return -1;
    unsigned char stored[SCRAM_MAX_KEY], server[SCRAM_MAX_KEY];
    int rc = -1;
    if (prepped[0] != '\0' && scram_keys(h, prepped, salt, saltlen, iter, stored, server) == 0) {
        size_t hl = scram_hash_len(h);
        memset(out, 0, sizeof *out);
        b64_encode(salt, saltlen, out->salt, sizeof out->salt);
        out->iter = iter;
        b64_encode(stored, hl, out->stored_key, sizeof out->stored_key);
        b64_encode(server, hl, out->server_key, sizeof out->server_key);
        rc = 0;
    }
    OPENSSL_cleanse(prepped, strlen(prepped));
    free(prepped);
    return rc;
}

/* Derives credentials from a password (after SASLprep) with a random 16-byte salt;
 * iter 0 means SCRAM_DEFAULT_ITER. Borrows password, fills *out. Returns 0, or -1
 * when the password is empty or not valid SASLprep input (or the CSPRNG fails). */
int scram_cred_make(enum scram_hash h, const char *password, unsigned iter, struct scram_cred *out)
{
    unsigned char salt[SCRAM_SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return -1;
    return scram_cred_from_salt(h, password, salt, sizeof salt, iter, out);
}

/* Decodes the salt and keys of c. Returns the salt length or -1 when c is malformed. */
static long scram_cred_decode(enum scram_hash h, const struct scram_cred *c, unsigned char *salt,
                              unsigned char *stored, unsigned char *server)
{
    size_t hl = scram_hash_len(h);
    if (memchr(c->salt, '\0', sizeof c->salt) == NULL || memchr(c->stored_key, '\0', sizeof c->stored_key) == NULL ||
        memchr(c->server_key, '\0', sizeof c->server_key) == NULL)
        return -1;
    if (c->iter == 0 || c->iter > SCRAM_MAX_ITER)
        return -1;
    long saltlen = b64_decode(c->salt, strlen(c->salt), salt, SCRAM_MAX_SALT);
    if (saltlen <= 0)
        return -1;
    if (b64_decode(c->stored_key, strlen(c->stored_key), stored, SCRAM_MAX_KEY) != (long)hl ||
        b64_decode(c->server_key, strlen(c->server_key), server, SCRAM_MAX_KEY) != (long)hl)
        return -1;
    return saltlen;
}

/* Checks a clear password (SASL PLAIN, password change) against credentials made
 * for hash h. Borrows both. Returns true only when the SASLprepped password derives
 * the same StoredKey and ServerKey; false for a wrong password or malformed c. */
bool scram_cred_check(enum scram_hash h, const struct scram_cred *c, const char *password)
{
    unsigned char salt[SCRAM_MAX_SALT], want_stored[SCRAM_MAX_KEY], want_server[SCRAM_MAX_KEY];
    unsigned char stored[SCRAM_MAX_KEY], server[SCRAM_MAX_KEY];
    long saltlen = scram_cred_decode(h, c, salt, want_stored, want_server);
    if (saltlen < 0)
        return false;
    char *prepped = scram_saslprep(password);
    if (prepped == NULL)
        return false;
    bool ok = false;
    size_t hl = scram_hash_len(h);
    if (prepped[0] != '\0' && scram_keys(h, prepped, salt, (size_t)saltlen, c->iter, stored, server) == 0)
        ok = (CRYPTO_memcmp(stored, want_stored, hl) | CRYPTO_memcmp(server, want_server, hl)) == 0;
    OPENSSL_cleanse(prepped, strlen(prepped));
    free(prepped);
    return ok;
}

/* ---- SASL PLAIN ------------------------------------------------------------------ */

static int plain_copy(const char *p, size_t n, char *out, size_t outlen)
{
    if (n >= outlen)
        return -1;
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

/* Splits the SASL PLAIN message "authzid\0authcid\0passwd" (RFC 4616) into three
 * NUL-terminated strings. authzid may be empty; authcid and passwd may not; the
 * message holds exactly two NULs and at most 4096 bytes. Borrows every buffer.
 * Returns 0, or -1 when the message is malformed or a part does not fit. */
int sasl_plain_parse(const char *msg, size_t len, char *authzid, size_t azlen, char *authcid, size_t aclen,
                     char *passwd, size_t pwlen)
{
    if (len > SCRAM_MAX_MSG)
        return -1;
    const char *end = msg + len;
    const char *nul1 = memchr(msg, '\0', len);
    if (nul1 == NULL)
        return -1;
    const char *nul2 = memchr(nul1 + 1, '\0', (size_t)(end - nul1 - 1));
    if (nul2 == NULL || memchr(nul2 + 1, '\0', (size_t)(end - nul2 - 1)) != NULL)
        return -1;
    size_t zl = (size_t)(nul1 - msg), cl = (size_t)(nul2 - nul1 - 1), pl = (size_t)(end - nul2 - 1);
    if (cl == 0 || pl == 0)
        return -1;
    if (plain_copy(msg, zl, authzid, azlen) == -1 || plain_copy(nul1 + 1, cl, authcid, aclen) == -1 ||
        plain_copy(nul2 + 1, pl, passwd, pwlen) == -1)
        return -1;
    return 0;
}

/* ---- SCRAM server ----------------------------------------------------------------- */

/* Makes a server-side SCRAM exchange for hash h. plus: the client picked the -PLUS
 * mechanism. cbind_type/cbind_data: the channel binding this connection offers, or
 * NULL on a plain connection (data up to 64 bytes). Copies what it needs, borrows
 * nothing. Never returns NULL; an impossible combination (plus without a binding)
 * fails later in scram_server_start with "invalid-mechanism". */
struct scram_server *scram_server_new(enum scram_hash h, bool plus, const char *cbind_type,
                                      const unsigned char *cbind_data, size_t cbind_len)
{
    struct scram_server *s = xcalloc(1, sizeof *s);
    s->hash = h == SCRAM_SHA256 ? SCRAM_SHA256 : SCRAM_SHA1;
    s->plus = plus;
    if (cbind_type != NULL && cbind_len > 0 && cbind_len <= SCRAM_MAX_CBIND && cbind_data != NULL) {
        s->cbind_type = xstrdup(cbind_type);
        s->cbind_data = xmalloc(cbind_len);
        memcpy(s->cbind_data, cbind_data, cbind_len);
        s->cbind_len = cbind_len;
    }
    return s;
}

/* Frees *sp and sets it to NULL; NULL-safe. Wipes the key material. */
void scram_server_free(struct scram_server **sp)
{
    struct scram_server *s = *sp;
    if (s == NULL)
        return;
    free(s->cbind_type);
    free(s->cbind_data);
    free(s->gs2_header);
    free(s->client_first_bare);
    free(s->user);
    free(s->authzid);
    free(s->client_nonce);
    free(s->test_snonce);
    free(s->nonce);
    free(s->server_first);
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
    *sp = NULL;
}

/* Injects the server half of the nonce instead of a random one. For unit tests that
 * replay published exchanges only: a predictable nonce allows replay attacks.
 * Must be called before scram_server_first. Borrows snonce (printable, no ','). */
void scram_server_set_nonce_for_test(struct scram_server *s, const char *snonce)
{
    free(s->test_snonce);
    s->test_snonce = xstrdup(snonce);
}

/* The authorization identity the client asked for in client-first-message, or NULL
 * when it gave none. Valid UTF-8, '=2C'/'=3D' decoded, not SASLprepped; borrowed
 * from the state. The caller decides whether the authcid may act as it. */
const char *scram_server_authzid(const struct scram_server *s)
{
    return s->authzid;
}

static bool utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

/* Decodes a saslname (RFC 5802: "=2C" is ',', "=3D" is '='; no other '=').
 * Returns a new string, or NULL when it is empty or badly escaped. */
static char *saslname_decode(const char *p, size_t n)
{
    if (n == 0)
        return NULL;
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '=') {
            out[o++] = p[i];
        } else if (n - i >= 3 && p[i + 1] == '2' && p[i + 2] == 'C') {
            out[o++] = ',';
            i += 2;
        } else if (n - i >= 3 && p[i + 1] == '3' && p[i + 2] == 'D') {
            out[o++] = '=';
            i += 2;
        } else {
            free(out);
            return NULL;
        }
    }
    out[o] = '\0';
    return out;
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* printable = %x21-2B / %x2D-7E: the characters of a nonce. */
static bool nonce_valid(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e || p[i] == ',')
            return false;
    return true;
}

/* cb-name = 1*(ALPHA / DIGIT / "." / "-") */
static bool cbname_valid(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(p[i]) && !(p[i] >= '0' && p[i] <= '9') && p[i] != '.' && p[i] != '-')
            return false;
    return true;
}

/* Length of the attribute starting at p (up to the next ',' or end). */
static size_t attr_len(const char *p, const char *end)
{
    const char *c = memchr(p, ',', (size_t)(end - p));
    return c ? (size_t)(c - p) : (size_t)(end - p);
}

static int scram_fail(struct scram_server *s, const char **cond, const char *why)
{
    s->step = SCRAM_STEP_DONE;
    if (cond != NULL)
        *cond = why;
    return -1;
}

/* Step 1: parses client-first-message (raw bytes after base64 decoding):
 * gs2-cbind-flag "," [authzid] "," ["m=" ...] "n=" user "," "r=" nonce ["," ext].
 * Borrows msg. On success writes the SASLprepped authcid (borrowed from the state)
 * into *user and returns 0. Returns -1 with *cond: "malformed-request" for bad
 * syntax, an m= extension, a username SASLprep refuses or a 'p' flag on a non-PLUS
 * mechanism; "invalid-authzid" for an authzid that is not UTF-8; "not-authorized"
 * for a channel-binding mismatch ('y' while the server offers -PLUS, a 'p' type
 * other than the connection's); "invalid-mechanism" for -PLUS on a connection
 * without channel binding. */
int scram_server_start(struct scram_server *s, const char *msg, size_t len, const char **user, const char **cond)
{
    if (s->step != SCRAM_STEP_START)
        return scram_fail(s, cond, "malformed-request");
    if (s->plus && s->cbind_type == NULL)
        return scram_fail(s, cond, "invalid-mechanism");
    if (len == 0 || len > SCRAM_MAX_MSG || memchr(msg, '\0', len) != NULL)
        return scram_fail(s, cond, "malformed-request");
    const char *p = msg, *end = msg + len;
    const char *cbname = NULL;
    size_t cbname_len = 0;

    /* gs2-cbind-flag */
    size_t n = attr_len(p, end);
    if (n == 1 && (p[0] == 'n' || p[0] == 'y')) {
        s->gs2_cbind_flag = p[0];
    } else if (n >= 2 && p[0] == 'p' && p[1] == '=' && cbname_valid(p + 2, n - 2)) {
        s->gs2_cbind_flag = 'p';
        cbname = p + 2;
        cbname_len = n - 2;
    } else {
        return scram_fail(s, cond, "malformed-request");
    }
    p += n;
    if (p == end)
        return scram_fail(s, cond, "malformed-request");
    p++;

    /* [authzid] "," */
    n = attr_len(p, end);
    if (n > 0) {
        if (n < 2 || p[0] != 'a' || p[1] != '=')
            return scram_fail(s, cond, "malformed-request");
        s->authzid = saslname_decode(p + 2, n - 2);
        if (s->authzid == NULL)
            return scram_fail(s, cond, "malformed-request");
        if (!utf8_valid((const unsigned char *)s->authzid, strlen(s->authzid)))
            return scram_fail(s, cond, "invalid-authzid");
    }
    p += n;
    if (p == end)
        return scram_fail(s, cond, "malformed-request");
    p++;
    s->gs2_header_len = (size_t)(p - msg);
    s->gs2_header = xstrndup(msg, s->gs2_header_len);

    /* client-first-message-bare */
    const char *bare = p;
    n = attr_len(p, end);
    if (n < 2 || p[0] != 'n' || p[1] != '=')  /* also refuses "m=": no mandatory extension is supported */
        return scram_fail(s, cond, "malformed-request");
    char *authcid = saslname_decode(p + 2, n - 2);
    if (authcid == NULL)
        return scram_fail(s, cond, "malformed-request");
    s->user = scram_saslprep(authcid);
    free(authcid);
    if (s->user == NULL || s->user[0] == '\0')
        return scram_fail(s, cond, "malformed-request");
    p += n;
    if (p == end)
        return scram_fail(s, cond, "malformed-request");
    p++;
    n = attr_len(p, end);
    if (n < 2 || p[0] != 'r' || p[1] != '=' || !nonce_valid(p + 2, n - 2))
        return scram_fail(s, cond, "malformed-request");
    s->client_nonce = xstrndup(p + 2, n - 2);
    p += n;
    while (p < end) {  /* optional extensions: ALPHA "=" value, ignored */
        p++;
        n = attr_len(p, end);
        if (n < 2 || !is_alpha(p[0]) || p[1] != '=')
            return scram_fail(s, cond, "malformed-request");
        p += n;
    }
    s->client_first_bare = xstrndup(bare, (size_t)(end - bare));

    /* Channel-binding policy, RFC 5802 section 6 and 7. */
    switch (s->gs2_cbind_flag) {
    case 'n':
        if (s->plus)
            return scram_fail(s, cond, "malformed-request");
        break;
    case 'y':
        if (s->plus)
            return scram_fail(s, cond, "malformed-request");
        /* The client could bind but believes we cannot, yet we offered -PLUS:
         * someone stripped it from our mechanism list. */
        if (s->cbind_type != NULL)
            return scram_fail(s, cond, "not-authorized");
        break;
    case 'p':
        if (!s->plus)
            return scram_fail(s, cond, "malformed-request");
        if (strlen(s->cbind_type) != cbname_len || memcmp(s->cbind_type, cbname, cbname_len) != 0)
            return scram_fail(s, cond, "not-authorized");
        break;
    }
    s->step = SCRAM_STEP_FIRST;
    *user = s->user;
    return 0;
}

/* The secret that makes fake salts for unknown users stable and unpredictable from
 * outside: random per process unless scram_set_fake_secret gave one the whole
 * cluster shares. */
static unsigned char fake_secret_bytes[32];
static bool fake_secret_ready;

void scram_set_fake_secret(const void *seed, size_t len)
{
    unsigned int n = 0;
    HMAC(EVP_sha256(), "meerkat scram fake salt", 23, seed, len, fake_secret_bytes, &n);
    fake_secret_ready = n == sizeof fake_secret_bytes;
}

static int fake_secret(unsigned char **out)
{
    unsigned char *secret = fake_secret_bytes;
    bool ready = fake_secret_ready;
    if (!ready) {
        if (RAND_bytes(secret, sizeof fake_secret_bytes) != 1)
            return -1;
        fake_secret_ready = true;
    }
    *out = secret;
    return 0;
}

/* Makes the credentials of an unknown user: a salt derived from the username, the
 * default iteration count and random keys no proof can match. */
static int fake_cred(struct scram_server *s, struct scram_cred *c)
{
    unsigned char *secret, mac[32], keys[2 * SCRAM_MAX_KEY];
    unsigned int maclen = 0;
    if (fake_secret(&secret) == -1)
        return -1;
    char *input = xasprintf("%s:%s", s->hash == SCRAM_SHA256 ? "SHA-256" : "SHA-1", s->user);
    unsigned char *r = HMAC(EVP_sha256(), secret, 32, (const unsigned char *)input, strlen(input), mac, &maclen);
    free(input);
    if (r == NULL || RAND_bytes(keys, sizeof keys) != 1)
        return -1;
    size_t hl = scram_hash_len(s->hash);
    memset(c, 0, sizeof *c);
    b64_encode(mac, SCRAM_SALT_LEN, c->salt, sizeof c->salt);
    c->iter = SCRAM_DEFAULT_ITER;
    b64_encode(keys, hl, c->stored_key, sizeof c->stored_key);
    b64_encode(keys + SCRAM_MAX_KEY, hl, c->server_key, sizeof c->server_key);
    return 0;
}

/* Step 2: given the user's credentials (NULL if unknown: a fake salt derived from
 * the username is sent and the exchange fails at the proof, so the answer does not
 * reveal whether the user exists), writes "r=<nonce>,s=<salt>,i=<iter>" into out
 * (NUL-terminated). Borrows cred and out. Returns the length, or -1 when called out
 * of order, cred is malformed or out is too small. */
int scram_server_first(struct scram_server *s, const struct scram_cred *cred, char *out, size_t outlen)
{
    if (s->step != SCRAM_STEP_FIRST)
        return scram_fail(s, NULL, NULL);
    struct scram_cred fake;
    if (cred == NULL) {
        if (fake_cred(s, &fake) == -1)
            return scram_fail(s, NULL, NULL);
        cred = &fake;
    }
    unsigned char salt[SCRAM_MAX_SALT];
    if (scram_cred_decode(s->hash, cred, salt, s->stored_key, s->server_key) < 0)
        return scram_fail(s, NULL, NULL);

    char snonce[64];
    if (s->test_snonce != NULL) {
        mk_strlcpy(snonce, s->test_snonce, sizeof snonce);
    } else {
        unsigned char rnd[SCRAM_SNONCE_BYTES];
        if (RAND_bytes(rnd, sizeof rnd) != 1)
            return scram_fail(s, NULL, NULL);
        b64_encode(rnd, sizeof rnd, snonce, sizeof snonce);
    }
    s->nonce = xasprintf("%s%s", s->client_nonce, snonce);
    s->server_first = xasprintf("r=%s,s=%s,i=%u", s->nonce, cred->salt, cred->iter);
    OPENSSL_cleanse(&fake, sizeof fake);
    size_t n = strlen(s->server_first);
    if (n + 1 > outlen || n > SCRAM_MAX_MSG)
        return scram_fail(s, NULL, NULL);
    memcpy(out, s->server_first, n + 1);
    s->step = SCRAM_STEP_FINAL;
    return (int)n;
}

/* Step 3: checks client-final-message "c=<cbind>,r=<nonce>[,ext],p=<proof>": the
 * channel-binding input must be exactly the gs2 header of step 1 (followed by the
 * connection's binding data for a 'p' flag), the nonce ours, and the proof must
 * yield StoredKey. Borrows msg and out. On success writes "v=<ServerSignature>"
 * into out (NUL-terminated) and returns its length. Returns -1 with *cond:
 * "malformed-request" (bad syntax or base64, out of order), "not-authorized"
 * (binding, nonce or proof mismatch, unknown user), "temporary-auth-failure" (out
 * too small or a crypto failure). */
int scram_server_final(struct scram_server *s, const char *msg, size_t len, char *out, size_t outlen,
                       const char **cond)
{
    if (s->step != SCRAM_STEP_FINAL)
        return scram_fail(s, cond, "malformed-request");
    if (len == 0 || len > SCRAM_MAX_MSG || memchr(msg, '\0', len) != NULL)
        return scram_fail(s, cond, "malformed-request");
    const char *p = msg, *end = msg + len;
    size_t hl = scram_hash_len(s->hash);

    size_t n = attr_len(p, end);
    if (n < 2 || p[0] != 'c' || p[1] != '=' || p + n == end)
        return scram_fail(s, cond, "malformed-request");
    const char *cval = p + 2;
    size_t cval_len = n - 2;
    p += n + 1;
    n = attr_len(p, end);
    if (n < 2 || p[0] != 'r' || p[1] != '=' || !nonce_valid(p + 2, n - 2) || p + n == end)
        return scram_fail(s, cond, "malformed-request");
    const char *rval = p + 2;
    size_t rval_len = n - 2;
    p += n;
    const char *proof = NULL;
    size_t proof_len = 0;
    const char *without_proof_end = NULL;
    while (p < end) {
        without_proof_end = p;
        p++;
        n = attr_len(p, end);
        if (n < 2 || !is_alpha(p[0]) || p[1] != '=')
            return scram_fail(s, cond, "malformed-request");
        if (p[0] == 'p') {
            if (p + n != end)  /* the proof is the last attribute */
                return scram_fail(s, cond, "malformed-request");
            proof = p + 2;
            proof_len = n - 2;
        }
        p += n;
    }
    if (proof == NULL)
        return scram_fail(s, cond, "malformed-request");

    unsigned char cbind[SCRAM_MAX_MSG], proof_raw[SCRAM_MAX_KEY];
    long cbind_len = b64_decode(cval, cval_len, cbind, sizeof cbind);
    if (cbind_len < 0 || b64_decode(proof, proof_len, proof_raw, sizeof proof_raw) != (long)hl)
        return scram_fail(s, cond, "malformed-request");

    bool bind_ok;
    size_t want_len = s->gs2_header_len + (s->gs2_cbind_flag == 'p' ? s->cbind_len : 0);
    if ((size_t)cbind_len != want_len) {
        bind_ok = false;
    } else {
        bind_ok = memcmp(cbind, s->gs2_header, s->gs2_header_len) == 0;
        if (s->gs2_cbind_flag == 'p')
            bind_ok = bind_ok && CRYPTO_memcmp(cbind + s->gs2_header_len, s->cbind_data, s->cbind_len) == 0;
    }
    if (!bind_ok)
        return scram_fail(s, cond, "not-authorized");
    if (rval_len != strlen(s->nonce) || memcmp(rval, s->nonce, rval_len) != 0)
        return scram_fail(s, cond, "not-authorized");

    char *auth_message = xasprintf("%s,%s,%.*s", s->client_first_bare, s->server_first,
                                   (int)(without_proof_end - msg), msg);
    unsigned char client_sig[SCRAM_MAX_KEY], client_key[SCRAM_MAX_KEY], stored[SCRAM_MAX_KEY];
    unsigned char server_sig[SCRAM_MAX_KEY];
    int rc = -1;
    const char *why = "temporary-auth-failure";
    if (scram_hmac(s->hash, s->stored_key, hl, auth_message, strlen(auth_message), client_sig) == -1)
        goto out;
    for (size_t i = 0; i < hl; i++)
        client_key[i] = proof_raw[i] ^ client_sig[i];
    if (scram_digest(s->hash, client_key, hl, stored) == -1)
        goto out;
    if (CRYPTO_memcmp(stored, s->stored_key, hl) != 0) {
        why = "not-authorized";
        goto out;
    }
    if (scram_hmac(s->hash, s->server_key, hl, auth_message, strlen(auth_message), server_sig) == -1)
        goto out;
    if (outlen < 3 + (hl + 2) / 3 * 4 + 1)
        goto out;
    memcpy(out, "v=", 2);
    rc = 2 + (int)b64_encode(server_sig, hl, out + 2, outlen - 2);
out:
    OPENSSL_cleanse(client_key, sizeof client_key);
    free(auth_message);
    if (rc == -1)
        return scram_fail(s, cond, why);
    s->step = SCRAM_STEP_DONE;
    return rc;
}

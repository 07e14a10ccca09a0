/* common/scram.h - SASL mechanisms over stored SCRAM keys: PLAIN, SCRAM-SHA-1/256 and their -PLUS forms (RFC 5802, 7677, 5929/9266). */
#ifndef MK_COMMON_SCRAM_H
#define MK_COMMON_SCRAM_H
#include <stdbool.h>
#include <stddef.h>

enum scram_hash {
    SCRAM_SHA1 = 0,
    SCRAM_SHA256,
};

#define SCRAM_MAX_KEY 32
#define SCRAM_DEFAULT_ITER 4096

/* What the store keeps for one hash: never the password. Text forms are base64. */
struct scram_cred {
    char salt[64];          /* base64 */
    unsigned iter;
    char stored_key[64];    /* base64 */
    char server_key[64];    /* base64 */
};

/* Derives credentials from a password (after SASLprep) with a random 16-byte salt.
 * Returns 0, or -1 when the password is not valid SASLprep input. */
int scram_cred_make(enum scram_hash h, const char *password, unsigned iter, struct scram_cred *out);
/* Checks a clear password (SASL PLAIN, registration change) against credentials. */
bool scram_cred_check(enum scram_hash h, const struct scram_cred *c, const char *password);
/* The deterministic half of scram_cred_make: credentials for a given salt (1-45
 * bytes). Used to reproduce published test vectors and to import keys; iter 0 means
 * SCRAM_DEFAULT_ITER. Borrows everything. Returns 0 or -1 (bad password or salt). */
int scram_cred_from_salt(enum scram_hash h, const char *password, const unsigned char *salt, size_t saltlen,
                         unsigned iter, struct scram_cred *out);

/* Server side of one SCRAM exchange. */
struct scram_server;

/* cbind_type: the channel binding this connection can offer ("tls-exporter",
 * "tls-server-end-point"), or NULL on a plain connection; cbind_data its bytes.
 * plus: the client chose the -PLUS mechanism. Borrows nothing. */
struct scram_server *scram_server_new(enum scram_hash h, bool plus, const char *cbind_type,
                                      const unsigned char *cbind_data, size_t cbind_len);
void scram_server_free(struct scram_server **sp);
/* The authzid of client-first-message ('=2C'/'=3D' decoded, valid UTF-8), or NULL
 * when absent; borrowed from the state. The caller decides whether it is allowed. */
const char *scram_server_authzid(const struct scram_server *s);
/* TESTS ONLY: uses snonce (borrowed, printable, no ',') as the server half of the
 * nonce instead of 24 random bytes, to replay published exchanges. Call before
 * scram_server_first. A predictable nonce allows replays: never call it in a server. */
void scram_server_set_nonce_for_test(struct scram_server *s, const char *snonce);

/* Step 1: parses client-first-message (raw bytes after base64 decoding). On success
 * writes the authcid (SASLprepped username, borrowed from the state) into *user and
 * returns 0; the caller looks the credentials up and calls scram_server_first.
 * Returns -1 with a SASL failure condition in *cond ("malformed-request",
 * "invalid-authzid", "not-authorized" for a channel-binding mismatch such as a
 * 'y' flag while the server offers -PLUS, "invalid-mechanism"). */
int scram_server_start(struct scram_server *s, const char *msg, size_t len, const char **user, const char **cond);
/* Step 2: given the user's credentials (NULL if unknown: a fake exchange follows so
 * the answer does not reveal that the user does not exist), writes
 * server-first-message into out (NUL-terminated). Returns its length or -1. */
int scram_server_first(struct scram_server *s, const struct scram_cred *cred, char *out, size_t outlen);
/* Step 3: checks client-final-message: channel binding, nonce, proof. On success
 * writes server-final-message ("v=...") into out and returns its length; on failure
 * returns -1 with *cond ("not-authorized", "malformed-request"). */
int scram_server_final(struct scram_server *s, const char *msg, size_t len, char *out, size_t outlen,
                       const char **cond);

/* Seeds the secret behind unknown users' fake salts (borrowed bytes, e.g. the TLS
 * key every c2s of the cluster reads), so that every c2s answers an unknown user
 * with the same salt and the answer does not tell that the user does not exist. */
void scram_set_fake_secret(const void *seed, size_t len);

/* SASL PLAIN message "authzid\0authcid\0passwd": splits it. Returns 0 or -1 (malformed). */
int sasl_plain_parse(const char *msg, size_t len, char *authzid, size_t azlen, char *authcid, size_t aclen,
                     char *passwd, size_t pwlen);

/* base64 (RFC 4648, no line breaks). decode returns the length or -1 for bad input. */
size_t b64_encode(const unsigned char *in, size_t n, char *out, size_t outlen);
long b64_decode(const char *in, size_t n, unsigned char *out, size_t outlen);

/* SASLprep (RFC 4013) via libidn; returns a new string or NULL when prohibited. */
char *scram_saslprep(const char *s);
#endif

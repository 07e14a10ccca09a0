/* tests/unit/test_scram.c - SCRAM server against RFC vectors and a test-side client, PLAIN, base64, SASLprep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "scram.h"
#include "util.h"

/* ---- a tiny SCRAM client, computed here independently of the server code ---- */

static const EVP_MD *md_of(enum scram_hash h)
{
    return h == SCRAM_SHA256 ? EVP_sha256() : EVP_sha1();
}

/* Copies the value of attribute "<k>=" from a server-first-message. */
static void attr_value(const char *msg, char k, char *out, size_t outlen)
{
    for (const char *p = msg; p != NULL && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if (p[0] == k && p[1] == '=') {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p - 2) : strlen(p + 2);
            assert_true(n < outlen);
            memcpy(out, p + 2, n);
            out[n] = '\0';
            return;
        }
    }
    fail_msg("no %c= in %s", k, msg);
}

/* Builds client-final-message for password and the expected server-final-message.
 * cbind is appended to the gs2 header in c= (pass NULL/0 without channel binding). */
static void client_final(enum scram_hash h, const char *password, const char *gs2, const unsigned char *cbind,
                         size_t cbind_len, const char *first_bare, const char *server_first, char *final,
                         size_t final_len, char *want_v, size_t want_v_len)
{
    const EVP_MD *md = md_of(h);
    int hl = EVP_MD_get_size(md);
    char nonce[256], salt_b64[128], iter_s[32];
    unsigned char salt[64];
    attr_value(server_first, 'r', nonce, sizeof nonce);
    attr_value(server_first, 's', salt_b64, sizeof salt_b64);
    attr_value(server_first, 'i', iter_s, sizeof iter_s);
    long saltlen = b64_decode(salt_b64, strlen(salt_b64), salt, sizeof salt);
    assert_true(saltlen > 0);

    unsigned char salted[64], client_key[64], stored[64], server_key[64], client_sig[64], server_sig[64];
    unsigned char proof[64];
    unsigned int len;
    assert_int_equal(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)saltlen, atoi(iter_s), md, hl,
                                       salted), 1);
    HMAC(md, salted, hl, (const unsigned char *)"Client Key", 10, client_key, &len);
    EVP_Digest(client_key, (size_t)hl, stored, &len, md, NULL);
    HMAC(md, salted, hl, (const unsigned char *)"Server Key", 10, server_key, &len);

    unsigned char cb_input[256];
    size_t gl = strlen(gs2);
    memcpy(cb_input, gs2, gl);
    if (cbind_len > 0)
        memcpy(cb_input + gl, cbind, cbind_len);
    char c_b64[400];
    b64_encode(cb_input, gl + cbind_len, c_b64, sizeof c_b64);
    char *without_proof = xasprintf("c=%s,r=%s", c_b64, nonce);
    char *auth_message = xasprintf("%s,%s,%s", first_bare, server_first, without_proof);
    HMAC(md, stored, hl, (const unsigned char *)auth_message, strlen(auth_message), client_sig, &len);
    HMAC(md, server_key, hl, (const unsigned char *)auth_message, strlen(auth_message), server_sig, &len);
    for (int i = 0; i < hl; i++)
        proof[i] = client_key[i] ^ client_sig[i];
    char proof_b64[100], sig_b64[100];
    b64_encode(proof, (size_t)hl, proof_b64, sizeof proof_b64);
    b64_encode(server_sig, (size_t)hl, sig_b64, sizeof sig_b64);
    snprintf(final, final_len, "%s,p=%s", without_proof, proof_b64);
    snprintf(want_v, want_v_len, "v=%s", sig_b64);
    free(without_proof);
    free(auth_message);
}

static void cred_for(enum scram_hash h, const char *password, const char *salt_b64, struct scram_cred *c)
{
    unsigned char salt[64];
    long n = b64_decode(salt_b64, strlen(salt_b64), salt, sizeof salt);
    assert_true(n > 0);
    assert_int_equal(scram_cred_from_salt(h, password, salt, (size_t)n, 4096, c), 0);
}

/* Runs one exchange; returns the result of scram_server_final and its condition. */
struct exchange {
    enum scram_hash hash;
    bool plus;
    const char *server_cb_type;
    const unsigned char *server_cb;
    size_t server_cb_len;
    const char *gs2;                 /* client's gs2 header */
    const unsigned char *client_cb;  /* appended to the gs2 header in c= */
    size_t client_cb_len;
    const char *user;
    const char *password;            /* the client's */
    const struct scram_cred *cred;   /* the server's; NULL: unknown user */
    char server_first[512];
    const char *cond;
    const char *authzid;
};

static int run_exchange(struct exchange *x)
{
    struct scram_server *s = scram_server_new(x->hash, x->plus, x->server_cb_type, x->server_cb, x->server_cb_len);
    char first[512], bare[256], final[512], want_v[128], out[256];
    snprintf(bare, sizeof bare, "n=%s,r=rOprNGfwEbeRWgbNEkqO", x->user);
    snprintf(first, sizeof first, "%s%s", x->gs2, bare);
    const char *user = NULL;
    x->cond = NULL;
    int rc = scram_server_start(s, first, strlen(first), &user, &x->cond);
    if (rc == 0) {
        assert_string_equal(user, x->user);
        x->authzid = scram_server_authzid(s) ? xstrdup(scram_server_authzid(s)) : NULL;
        int n = scram_server_first(s, x->cred, x->server_first, sizeof x->server_first);
        assert_true(n > 0);
        assert_int_equal((size_t)n, strlen(x->server_first));
        client_final(x->hash, x->password, x->gs2, x->client_cb, x->client_cb_len, bare, x->server_first, final,
                     sizeof final, want_v, sizeof want_v);
        rc = scram_server_final(s, final, strlen(final), out, sizeof out, &x->cond);
        if (rc >= 0) {
            assert_int_equal((size_t)rc, strlen(out));
            assert_string_equal(out, want_v);
        }
    }
    scram_server_free(&s);
    assert_null(s);
    return rc;
}

/* ---- RFC vectors ------------------------------------------------------------ */

static void replay(enum scram_hash h, const char *salt_b64, const char *cfirst, const char *snonce,
                   const char *sfirst, const char *cfinal, const char *sfinal)
{
    struct scram_cred c;
    cred_for(h, "pencil", salt_b64, &c);
    struct scram_server *s = scram_server_new(h, false, NULL, NULL, 0);
    const char *user, *cond = NULL;
    assert_int_equal(scram_server_start(s, cfirst, strlen(cfirst), &user, &cond), 0);
    assert_string_equal(user, "user");
    assert_null(scram_server_authzid(s));
    scram_server_set_nonce_for_test(s, snonce);
    char out[512];
    assert_int_equal(scram_server_first(s, &c, out, sizeof out), (int)strlen(sfirst));
    assert_string_equal(out, sfirst);
    assert_int_equal(scram_server_final(s, cfinal, strlen(cfinal), out, sizeof out, &cond), (int)strlen(sfinal));
    assert_string_equal(out, sfinal);
    /* The exchange is over: nothing more is accepted. */
    assert_int_equal(scram_server_final(s, cfinal, strlen(cfinal), out, sizeof out, &cond), -1);
    scram_server_free(&s);

    /* The test-side client reproduces the published proof and signature. */
    char final[512], want_v[128];
    client_final(h, "pencil", "n,,", NULL, 0, strchr(cfirst, 'n') + 3, sfirst, final, sizeof final, want_v,
                 sizeof want_v);
    assert_string_equal(final, cfinal);
    assert_string_equal(want_v, sfinal);
    assert_true(scram_cred_check(h, &c, "pencil"));
    assert_false(scram_cred_check(h, &c, "pencil "));
}

static void test_rfc5802_sha1(void **state)
{
    replay(SCRAM_SHA1, "QSXCR+Q6sek8bf92", "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j",
           "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
           "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

static void test_rfc7677_sha256(void **state)
{
    replay(SCRAM_SHA256, "W22ZaJ0SNY7soEsUEjb6gQ==", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
           "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
           "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
           "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
           "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

/* ---- full exchanges ----------------------------------------------------------- */

static const unsigned char cb_a[32] = "0123456789abcdef0123456789abcdef";
static const unsigned char cb_b[32] = "0123456789abcdef0123456789abcdeX";

static void test_exchange_all(void **state)
{
    for (int hi = 0; hi < 2; hi++) {
        enum scram_hash h = hi ? SCRAM_SHA256 : SCRAM_SHA1;
        struct scram_cred c;
        assert_int_equal(scram_cred_make(h, "s3cr\xc3\xa9t", 0, &c), 0);
        assert_int_equal(c.iter, SCRAM_DEFAULT_ITER);

        /* no channel binding, plain connection */
        struct exchange x = {.hash = h, .gs2 = "n,,", .user = "juliet", .password = "s3cr\xc3\xa9t", .cred = &c};
        assert_true(run_exchange(&x) > 0);
        /* 'y' on a connection that cannot bind is fine */
        x.gs2 = "y,,";
        assert_true(run_exchange(&x) > 0);
        /* 'n' on a TLS connection: the client simply does not bind */
        x.gs2 = "n,,";
        x.server_cb_type = "tls-exporter", x.server_cb = cb_a, x.server_cb_len = 32;
        assert_true(run_exchange(&x) > 0);
        /* -PLUS with tls-exporter and with tls-server-end-point */
        x.plus = true;
        x.gs2 = "p=tls-exporter,,";
        x.client_cb = cb_a, x.client_cb_len = 32;
        assert_true(run_exchange(&x) > 0);
        x.server_cb_type = "tls-server-end-point";
        x.gs2 = "p=tls-server-end-point,,";
        assert_true(run_exchange(&x) > 0);
        /* authzid with escapes, exposed to the caller */
        x.gs2 = "p=tls-server-end-point,a=romeo=2Cx=3Dy,";
        assert_true(run_exchange(&x) > 0);
        assert_string_equal(x.authzid, "romeo,x=y");
        free((char *)x.authzid);
    }
}

static void test_wrong_password(void **state)
{
    struct scram_cred c;
    assert_int_equal(scram_cred_make(SCRAM_SHA256, "pencil", 4096, &c), 0);
    struct exchange x = {.hash = SCRAM_SHA256, .gs2 = "n,,", .user = "user", .password = "pencil2", .cred = &c};
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "not-authorized");
}

static void test_unknown_user(void **state)
{
    struct scram_cred c;
    assert_int_equal(scram_cred_make(SCRAM_SHA1, "pencil", 4096, &c), 0);
    struct exchange real = {.hash = SCRAM_SHA1, .gs2 = "n,,", .user = "user", .password = "pencil", .cred = &c};
    assert_true(run_exchange(&real) > 0);
    struct exchange ghost = {.hash = SCRAM_SHA1, .gs2 = "n,,", .user = "ghost", .password = "pencil"};
    assert_int_equal(run_exchange(&ghost), -1);
    assert_string_equal(ghost.cond, "not-authorized");

    /* Same shape as a real server-first: nonce and salt lengths, iteration count. */
    char rn[256], gn[256], rs[64], gsalt[64], ri[16], gi[16];
    attr_value(real.server_first, 'r', rn, sizeof rn);
    attr_value(ghost.server_first, 'r', gn, sizeof gn);
    attr_value(real.server_first, 's', rs, sizeof rs);
    attr_value(ghost.server_first, 's', gsalt, sizeof gsalt);
    attr_value(real.server_first, 'i', ri, sizeof ri);
    attr_value(ghost.server_first, 'i', gi, sizeof gi);
    assert_int_equal(strlen(rn), strlen(gn));
    assert_int_equal(strlen(rs), strlen(gsalt));
    assert_string_equal(ri, gi);
    assert_int_equal(strncmp(gn, "rOprNGfwEbeRWgbNEkqO", 20), 0);

    /* The fake salt is stable for a name (a retry does not expose the user as fake)
     * and differs between names. */
    struct exchange again = ghost;
    assert_int_equal(run_exchange(&again), -1);
    char gsalt2[64];
    attr_value(again.server_first, 's', gsalt2, sizeof gsalt2);
    assert_string_equal(gsalt, gsalt2);
    char gn2[256];
    attr_value(again.server_first, 'r', gn2, sizeof gn2);
    assert_string_not_equal(gn, gn2);  /* fresh server nonce every time */
    struct exchange other = {.hash = SCRAM_SHA1, .gs2 = "n,,", .user = "ghost2", .password = "x"};
    assert_int_equal(run_exchange(&other), -1);
    char osalt[64];
    attr_value(other.server_first, 's', osalt, sizeof osalt);
    assert_string_not_equal(osalt, gsalt);
}

static void test_channel_binding_failures(void **state)
{
    struct scram_cred c;
    assert_int_equal(scram_cred_make(SCRAM_SHA256, "pencil", 4096, &c), 0);
    struct exchange x = {.hash = SCRAM_SHA256, .plus = true, .server_cb_type = "tls-exporter", .server_cb = cb_a,
                         .server_cb_len = 32, .gs2 = "p=tls-exporter,,", .client_cb = cb_b, .client_cb_len = 32,
                         .user = "user", .password = "pencil", .cred = &c};
    /* the client's binding data differ: another TLS session (MITM) */
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "not-authorized");
    /* the client's data is missing from c= */
    x.client_cb = NULL, x.client_cb_len = 0;
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "not-authorized");
    /* c= carries another gs2 header than client-first did */
    struct scram_server *s = scram_server_new(SCRAM_SHA256, false, NULL, NULL, 0);
    const char *user, *cond;
    char out[512], final[512], want[128];
    const char *first = "n,,n=user,r=abc";
    assert_int_equal(scram_server_start(s, first, strlen(first), &user, &cond), 0);
    assert_true(scram_server_first(s, &c, out, sizeof out) > 0);
    client_final(SCRAM_SHA256, "pencil", "y,,", NULL, 0, "n=user,r=abc", out, final, sizeof final, want,
                 sizeof want);
    assert_int_equal(scram_server_final(s, final, strlen(final), out, sizeof out, &cond), -1);
    assert_string_equal(cond, "not-authorized");
    scram_server_free(&s);

    /* 'y' while the server offers -PLUS: a downgrade */
    x = (struct exchange){.hash = SCRAM_SHA256, .server_cb_type = "tls-exporter", .server_cb = cb_a,
                          .server_cb_len = 32, .gs2 = "y,,", .user = "user", .password = "pencil", .cred = &c};
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "not-authorized");
    /* p= with a type this connection does not offer */
    x.plus = true;
    x.gs2 = "p=tls-server-end-point,,";
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "not-authorized");
    /* p= on the non-PLUS mechanism, and n/y on the -PLUS one */
    x.plus = false;
    x.gs2 = "p=tls-exporter,,";
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "malformed-request");
    x.plus = true;
    x.gs2 = "n,,";
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "malformed-request");
    /* -PLUS on a connection that has no binding */
    x.server_cb_type = NULL, x.server_cb = NULL, x.server_cb_len = 0;
    x.gs2 = "p=tls-exporter,,";
    assert_int_equal(run_exchange(&x), -1);
    assert_string_equal(x.cond, "invalid-mechanism");
}

/* ---- malformed input ---------------------------------------------------------- */

static void start_fails(const char *msg, size_t len, const char *want)
{
    struct scram_server *s = scram_server_new(SCRAM_SHA1, false, NULL, NULL, 0);
    const char *user = NULL, *cond = NULL;
    assert_int_equal(scram_server_start(s, msg, len, &user, &cond), -1);
    assert_non_null(cond);
    assert_string_equal(cond, want);
    assert_null(user);
    /* a failed exchange stays failed */
    char out[256];
    assert_int_equal(scram_server_first(s, NULL, out, sizeof out), -1);
    scram_server_free(&s);
}

static void final_fails(const char *cfinal, size_t len, const char *want)
{
    struct scram_cred c;
    cred_for(SCRAM_SHA1, "pencil", "QSXCR+Q6sek8bf92", &c);
    struct scram_server *s = scram_server_new(SCRAM_SHA1, false, NULL, NULL, 0);
    const char *user, *cond = NULL;
    const char *first = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
    assert_int_equal(scram_server_start(s, first, strlen(first), &user, &cond), 0);
    scram_server_set_nonce_for_test(s, "3rfcNHYJY1ZVvWVs7j");
    char out[512];
    assert_true(scram_server_first(s, &c, out, sizeof out) > 0);
    assert_int_equal(scram_server_final(s, cfinal, len, out, sizeof out, &cond), -1);
    assert_non_null(cond);
    assert_string_equal(cond, want);
    scram_server_free(&s);
}

#define STARTF(m, w) start_fails(m, sizeof(m) - 1, w)
#define FINALF(m, w) final_fails(m, sizeof(m) - 1, w)

static void test_malformed(void **state)
{
    STARTF("", "malformed-request");
    STARTF("n,,n=user", "malformed-request");                      /* no r= */
    STARTF("n,,n=user,r=", "malformed-request");                   /* empty nonce */
    STARTF("n,,r=abc,n=user", "malformed-request");                /* wrong order */
    STARTF("n,,m=ext,n=user,r=abc", "malformed-request");          /* mandatory extension */
    STARTF("n,,n=us\0er,r=abc", "malformed-request");              /* embedded NUL */
    STARTF("n,,n=us=2Xer,r=abc", "malformed-request");             /* bad escape */
    STARTF("n,,n=us=2,r=abc", "malformed-request");                /* truncated escape */
    STARTF("n,,n=us,er,r=abc", "malformed-request");               /* bare comma */
    STARTF("n,,n=,r=abc", "malformed-request");                    /* empty user */
    STARTF("n,,n=\x07,r=abc", "malformed-request");                /* SASLprep prohibits */
    STARTF("n,,n=\xff,r=abc", "malformed-request");                /* not UTF-8 */
    STARTF("x,,n=user,r=abc", "malformed-request");                /* unknown flag */
    STARTF("p=,,n=user,r=abc", "malformed-request");               /* empty cb-name */
    STARTF("n,b=x,n=user,r=abc", "malformed-request");             /* not an authzid */
    STARTF("n,a=,n=user,r=abc", "malformed-request");              /* empty authzid */
    STARTF("n,a=\xc0\x80,n=user,r=abc", "invalid-authzid");        /* overlong UTF-8 */
    STARTF("n,n=user,r=abc", "malformed-request");                 /* one comma only */
    STARTF("n,,n=user,r=ab c", "malformed-request");               /* nonce not printable */
    STARTF("n,,n=user,r=abc,1=x", "malformed-request");            /* extension name not ALPHA */
    size_t big = 5000;
    char *huge = xmalloc(big);
    memset(huge, 'a', big);
    memcpy(huge, "n,,n=user,r=", 12);
    start_fails(huge, big, "malformed-request");
    free(huge);

    /* an extension after the nonce is ignored */
    struct scram_server *s = scram_server_new(SCRAM_SHA1, false, NULL, NULL, 0);
    const char *user, *cond;
    assert_int_equal(scram_server_start(s, "n,,n=u=3Dv,r=abc,x=1", 20, &user, &cond), 0);
    assert_string_equal(user, "u=v");
    /* out of order: final before first */
    char out[256];
    assert_int_equal(scram_server_final(s, "c=biws,r=abc,p=AAAA", 19, out, sizeof out, &cond), -1);
    assert_string_equal(cond, "malformed-request");
    scram_server_free(&s);
    scram_server_free(&s);  /* NULL-safe */

    FINALF("c=biws,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "malformed-request");  /* no r= */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j", "malformed-request");  /* no p= */
    FINALF("c=bi*s,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "malformed-request");  /* bad base64 in c= */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts",
           "malformed-request");  /* bad base64 in p= */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4TsAAAA",
           "malformed-request");  /* proof of the wrong length */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=,x=y",
           "malformed-request");  /* proof not last */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=\0",
           "malformed-request");  /* embedded NUL */
    FINALF("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,c=biws,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "malformed-request");  /* wrong order */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7X,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "not-authorized");  /* another nonce */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Tt=",
           "malformed-request");  /* non-canonical base64 */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=w0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "not-authorized");  /* wrong proof */
    FINALF("c=eSws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "not-authorized");  /* c= says "y,," */
    char *hugef = xmalloc(5000);
    memset(hugef, 'A', 5000);
    memcpy(hugef, "c=", 2);
    final_fails(hugef, 5000, "malformed-request");
    free(hugef);
    /* an extension before the proof is accepted and is part of AuthMessage */
    FINALF("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,x=1,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
           "not-authorized");
}

/* ---- stored credentials ----------------------------------------------------------- */

static void test_cred(void **state)
{
    struct scram_cred a, b;
    assert_int_equal(scram_cred_make(SCRAM_SHA256, "pencil", 4096, &a), 0);
    assert_int_equal(scram_cred_make(SCRAM_SHA256, "pencil", 4096, &b), 0);
    assert_string_not_equal(a.salt, b.salt);  /* random salts */
    assert_int_equal(strlen(a.salt), 24);
    assert_int_equal(strlen(a.stored_key), 44);
    assert_true(scram_cred_check(SCRAM_SHA256, &a, "pencil"));
    assert_false(scram_cred_check(SCRAM_SHA256, &a, "Pencil"));
    assert_false(scram_cred_check(SCRAM_SHA1, &a, "pencil"));  /* keys of the wrong size */
    /* SASLprep applies: U+00AD (soft hyphen) maps to nothing */
    assert_true(scram_cred_check(SCRAM_SHA256, &a, "pen\xc2\xad" "cil"));
    assert_int_equal(scram_cred_make(SCRAM_SHA1, "pencil", 4096, &b), 0);
    assert_int_equal(strlen(b.stored_key), 28);
    assert_true(scram_cred_check(SCRAM_SHA1, &b, "pencil"));
    assert_int_equal(scram_cred_make(SCRAM_SHA1, "", 4096, &b), -1);
    assert_int_equal(scram_cred_make(SCRAM_SHA1, "a\x07", 4096, &b), -1);
    assert_int_equal(scram_cred_make(SCRAM_SHA1, "pencil", 100000000u, &b), -1);
    /* malformed stored rows never match */
    struct scram_cred bad = a;
    strcpy(bad.salt, "!!!!");
    assert_false(scram_cred_check(SCRAM_SHA256, &bad, "pencil"));
    bad = a;
    bad.iter = 0;
    assert_false(scram_cred_check(SCRAM_SHA256, &bad, "pencil"));
    bad = a;
    memset(bad.stored_key, 'A', sizeof bad.stored_key);
    assert_false(scram_cred_check(SCRAM_SHA256, &bad, "pencil"));
    /* and make server-first fail */
    struct scram_server *s = scram_server_new(SCRAM_SHA256, false, NULL, NULL, 0);
    const char *user, *cond;
    char out[256];
    assert_int_equal(scram_server_start(s, "n,,n=u,r=abc", 12, &user, &cond), 0);
    assert_int_equal(scram_server_first(s, &bad, out, sizeof out), -1);
    scram_server_free(&s);
}

/* ---- PLAIN ---------------------------------------------------------------------- */

static void test_plain(void **state)
{
    char z[64], c[64], p[64];
    assert_int_equal(sasl_plain_parse("\0tim\0tanstaaftanstaaf", 21, z, sizeof z, c, sizeof c, p, sizeof p), 0);
    assert_string_equal(z, "");
    assert_string_equal(c, "tim");
    assert_string_equal(p, "tanstaaftanstaaf");
    assert_int_equal(sasl_plain_parse("Ursel\0Kurt\0xipj3plmq", 20, z, sizeof z, c, sizeof c, p, sizeof p), 0);
    assert_string_equal(z, "Ursel");
    assert_string_equal(c, "Kurt");
    assert_string_equal(p, "xipj3plmq");

    assert_int_equal(sasl_plain_parse("", 0, z, sizeof z, c, sizeof c, p, sizeof p), -1);
    assert_int_equal(sasl_plain_parse("tim", 3, z, sizeof z, c, sizeof c, p, sizeof p), -1);
    assert_int_equal(sasl_plain_parse("\0tim", 4, z, sizeof z, c, sizeof c, p, sizeof p), -1);
    assert_int_equal(sasl_plain_parse("\0tim\0", 5, z, sizeof z, c, sizeof c, p, sizeof p), -1);   /* no passwd */
    assert_int_equal(sasl_plain_parse("\0\0pw", 4, z, sizeof z, c, sizeof c, p, sizeof p), -1);    /* no authcid */
    assert_int_equal(sasl_plain_parse("\0tim\0p\0w", 8, z, sizeof z, c, sizeof c, p, sizeof p), -1); /* 3 NULs */
    assert_int_equal(sasl_plain_parse("\0tim\0pw", 7, z, sizeof z, c, 3, p, sizeof p), -1);       /* too long */
    assert_int_equal(sasl_plain_parse("\0tim\0pw", 7, z, sizeof z, c, 4, p, sizeof p), 0);
    char *huge = xcalloc(1, 5000);
    huge[1] = 'a';
    memset(huge + 3, 'b', 4997);
    assert_int_equal(sasl_plain_parse(huge, 5000, z, sizeof z, c, sizeof c, p, sizeof p), -1);
    free(huge);
}

/* ---- base64 --------------------------------------------------------------------- */

static void test_base64(void **state)
{
    static const char *vec[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                   {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                   {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < MK_ARRAY_LEN(vec); i++) {
        char enc[32];
        unsigned char dec[32];
        size_t n = strlen(vec[i][0]);
        assert_int_equal(b64_encode((const unsigned char *)vec[i][0], n, enc, sizeof enc), strlen(vec[i][1]));
        assert_string_equal(enc, vec[i][1]);
        assert_int_equal(b64_decode(vec[i][1], strlen(vec[i][1]), dec, sizeof dec), (long)n);
        assert_memory_equal(dec, vec[i][0], n);
    }
    unsigned char all[256], back[256];
    char enc[400];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    size_t n = b64_encode(all, 256, enc, sizeof enc);
    assert_int_equal(n, 344);
    assert_int_equal(b64_decode(enc, n, back, sizeof back), 256);
    assert_memory_equal(all, back, 256);

    char small[8];
    assert_int_equal(b64_encode((const unsigned char *)"foobar", 6, small, 8), 0);  /* needs 9 */
    assert_string_equal(small, "");
    assert_int_equal(b64_encode((const unsigned char *)"foobar", 6, enc, 9), 8);

    unsigned char out[16];
    static const char *bad[] = {"Zg=", "Zg", "Z===", "====", "Zg==Zg==", "Zm9*", "Zm9v\n", "Zm 9v", "Zh==",
                                "Zm9=", "Z=g=", "Zm8=Zm9v", "=Zg="};
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++)
        assert_int_equal(b64_decode(bad[i], strlen(bad[i]), out, sizeof out), -1);
    assert_int_equal(b64_decode("Zm\0v", 4, out, sizeof out), -1);
    assert_int_equal(b64_decode("Zm9vYmFy", 8, out, 5), -1);  /* does not fit */
    assert_int_equal(b64_decode("Zm9vYmFy", 8, out, 6), 6);
}

/* ---- SASLprep, RFC 4013 section 3 ------------------------------------------------- */

static void prep_is(const char *in, const char *want)
{
    char *out = scram_saslprep(in);
    if (want == NULL) {
        assert_null(out);
        return;
    }
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
}

static void test_saslprep(void **state)
{
    prep_is("I\xc2\xadX", "IX");          /* 1: SOFT HYPHEN mapped to nothing */
    prep_is("user", "user");              /* 2: no transformation */
    prep_is("USER", "USER");              /* 3: case preserved */
    prep_is("\xc2\xaa", "a");             /* 4: output is NFKC */
    prep_is("\xe2\x85\xa8", "IX");        /* 5: ROMAN NUMERAL NINE, NFKC */
    prep_is("\x07", NULL);                /* 6: prohibited character */
    prep_is("\xd8\xa7" "1", NULL);        /* 7: bidi check */
    prep_is("a\xc2\xa0" "b", "a b");      /* non-ASCII space maps to SPACE */
    prep_is("\xff", NULL);                /* not UTF-8 */
    prep_is("", "");
    char *big = xmalloc(5000);
    memset(big, 'a', 4999);
    big[4999] = '\0';
    prep_is(big, NULL);
    big[4096] = '\0';
    char *out = scram_saslprep(big);
    assert_non_null(out);
    assert_int_equal(strlen(out), 4096);
    free(out);
    free(big);
    /* growth: each U+FB03 (ffi ligature, 3 bytes) becomes 3 bytes "ffi"; U+FDFA grows a lot */
    prep_is("\xef\xac\x83\xef\xac\x83", "ffiffi");
    out = scram_saslprep("\xef\xb7\xba\xef\xb7\xba\xef\xb7\xba");
    assert_non_null(out);
    assert_true(strlen(out) > 9 * 3);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc5802_sha1),
        cmocka_unit_test(test_rfc7677_sha256),
        cmocka_unit_test(test_exchange_all),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_unknown_user),
        cmocka_unit_test(test_channel_binding_failures),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_cred),
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_saslprep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

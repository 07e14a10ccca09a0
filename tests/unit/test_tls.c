/* tests/unit/test_tls.c - self-signed certificates, server contexts and channel bindings over in-process handshakes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util.h"

#define DOMAIN "example.org"

struct paths {
    char root[64];
    char *cert;
    char *key;
};

static int setup(void **state)
{
    struct paths *p = xcalloc(1, sizeof *p);
    strcpy(p->root, "/tmp/mk_test_tls_XXXXXX");
    if (mkdtemp(p->root) == NULL)
        return -1;
    p->cert = xasprintf("%s/etc/certs/" DOMAIN ".crt", p->root);
    p->key = xasprintf("%s/private/" DOMAIN ".key", p->root);
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    struct paths *p = *state;
    char *cmd = xasprintf("rm -rf '%s'", p->root);
    int rc = system(cmd);
    free(cmd);
    free(p->cert);
    free(p->key);
    free(p);
    return rc == 0 ? 0 : -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = xcalloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    assert_true(n > 0);
    fclose(f);
    return buf;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

/* ---- handshakes over a socketpair ------------------------------------------------ */

struct pair {
    SSL_CTX *client_ctx;
    SSL *client;
    SSL *server;
};

/* Drives both sides of a handshake until both finish; non-blocking, in one thread. */
static void handshake(SSL_CTX *server_ctx, const char *cert_file, int max_version, struct pair *pr)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mk_set_nonblock(sv[0]), 0);
    assert_int_equal(mk_set_nonblock(sv[1]), 0);

    pr->client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(pr->client_ctx);
    assert_int_equal(SSL_CTX_set_max_proto_version(pr->client_ctx, max_version), 1);
    X509 *trusted = load_cert(cert_file);
    assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(pr->client_ctx), trusted), 1);
    X509_free(trusted);
    /* The self-signed leaf is its own trust anchor. */
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(pr->client_ctx), X509_V_FLAG_PARTIAL_CHAIN);
    SSL_CTX_set_verify(pr->client_ctx, SSL_VERIFY_PEER, NULL);

    pr->client = SSL_new(pr->client_ctx);
    pr->server = SSL_new(server_ctx);
    assert_non_null(pr->client);
    assert_non_null(pr->server);
    assert_int_equal(SSL_set1_host(pr->client, DOMAIN), 1);
    static const unsigned char alpn[] = "\x08xmpp-bad\x0bxmpp-client";
    assert_int_equal(SSL_set_alpn_protos(pr->client, alpn, sizeof alpn - 1), 0);
    SSL_set_fd(pr->client, sv[0]);
    SSL_set_fd(pr->server, sv[1]);
    SSL_set_connect_state(pr->client);
    SSL_set_accept_state(pr->server);

    bool cdone = false, sdone = false;
    for (int i = 0; i < 1000 && !(cdone && sdone); i++) {
        SSL *sides[2] = {pr->client, pr->server};
        bool *done[2] = {&cdone, &sdone};
        for (int k = 0; k < 2; k++) {
            if (*done[k])
                continue;
            int rc = SSL_do_handshake(sides[k]);
            if (rc == 1) {
                *done[k] = true;
                continue;
            }
            int e = SSL_get_error(sides[k], rc);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                char buf[256];
                ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
                fail_msg("%s handshake failed: %d %s", k ? "server" : "client", e, buf);
            }
        }
    }
    assert_true(cdone && sdone);
    assert_int_equal(SSL_get_verify_result(pr->client), X509_V_OK);

    /* Application data flows both ways. */
    char buf[16];
    assert_int_equal(SSL_write(pr->client, "ping", 4), 4);
    assert_int_equal(SSL_read(pr->server, buf, sizeof buf), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(SSL_write(pr->server, "pong", 4), 4);
    assert_int_equal(SSL_read(pr->client, buf, sizeof buf), 4);
    assert_memory_equal(buf, "pong", 4);

    const unsigned char *proto = NULL;
    unsigned int plen = 0;
    SSL_get0_alpn_selected(pr->server, &proto, &plen);
    assert_int_equal(plen, 11);
    assert_memory_equal(proto, "xmpp-client", 11);
}

static void pair_free(struct pair *pr)
{
    close(SSL_get_fd(pr->client));
    close(SSL_get_fd(pr->server));
    SSL_free(pr->client);
    SSL_free(pr->server);
    SSL_CTX_free(pr->client_ctx);
}

/* The client's own view of tls-server-end-point: SHA-256 of the server's certificate
 * (the certificate is signed with ECDSA-SHA256). */
static void client_end_point(SSL *client, unsigned char *out)
{
    X509 *peer = SSL_get1_peer_certificate(client);
    assert_non_null(peer);
    unsigned int len = 0;
    assert_int_equal(X509_digest(peer, EVP_sha256(), out, &len), 1);
    assert_int_equal(len, 32);
    X509_free(peer);
}

static void test_handshakes(void **state)
{
    struct paths *p = *state;
    char err[256] = "";
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    SSL_CTX *ctx = tls_server_ctx(p->cert, p->key, err, sizeof err);
    assert_non_null(ctx);
    assert_true(SSL_CTX_get_mode(ctx) & SSL_MODE_RELEASE_BUFFERS);
    assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_COMPRESSION);
    assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);

    unsigned char sb[64], cb[64];

    /* TLS 1.3: tls-exporter, and tls-server-end-point too. */
    struct pair pr;
    handshake(ctx, p->cert, TLS1_3_VERSION, &pr);
    assert_int_equal(SSL_version(pr.server), TLS1_3_VERSION);
    assert_string_equal(tls_best_binding(pr.server), "tls-exporter");
    assert_int_equal(tls_channel_binding(pr.server, "tls-exporter", sb, sizeof sb), 32);
    static const char label[] = "EXPORTER-Channel-Binding";
    assert_int_equal(SSL_export_keying_material(pr.client, cb, 32, label, sizeof label - 1, NULL, 0, 0), 1);
    assert_memory_equal(sb, cb, 32);
    assert_int_equal(tls_channel_binding(pr.server, "tls-exporter", sb, 31), -1);  /* too small */
    assert_int_equal(tls_channel_binding(pr.server, "tls-unique", sb, sizeof sb), -1);
    assert_int_equal(tls_channel_binding(pr.server, "tls-server-end-point", sb, sizeof sb), 32);
    client_end_point(pr.client, cb);
    assert_memory_equal(sb, cb, 32);
    assert_int_equal(tls_channel_binding(pr.client, "tls-server-end-point", cb, sizeof cb), 32);
    assert_memory_equal(sb, cb, 32);
    unsigned char first[32];
    assert_int_equal(tls_channel_binding(pr.server, "tls-exporter", first, sizeof first), 32);
    pair_free(&pr);

    /* A second connection has different exporter bytes, the same end-point hash. */
    handshake(ctx, p->cert, TLS1_3_VERSION, &pr);
    assert_int_equal(tls_channel_binding(pr.server, "tls-exporter", sb, sizeof sb), 32);
    assert_memory_not_equal(sb, first, 32);
    pair_free(&pr);

    /* TLS 1.2: no exporter binding; ECDHE with an AEAD suite. */
    handshake(ctx, p->cert, TLS1_2_VERSION, &pr);
    assert_int_equal(SSL_version(pr.server), TLS1_2_VERSION);
    assert_string_equal(tls_best_binding(pr.server), "tls-server-end-point");
    assert_int_equal(tls_channel_binding(pr.server, "tls-exporter", sb, sizeof sb), -1);
    assert_int_equal(tls_channel_binding(pr.server, "tls-server-end-point", sb, sizeof sb), 32);
    client_end_point(pr.client, cb);
    assert_memory_equal(sb, cb, 32);
    const char *cipher = SSL_get_cipher_name(pr.server);
    assert_non_null(strstr(cipher, "ECDHE-ECDSA-"));
    assert_true(strstr(cipher, "GCM") != NULL || strstr(cipher, "CHACHA20") != NULL);
    pair_free(&pr);

    /* Before a handshake there is nothing to bind to. */
    SSL *fresh = SSL_new(ctx);
    assert_int_equal(tls_channel_binding(fresh, "tls-server-end-point", sb, sizeof sb), -1);
    SSL_free(fresh);
    SSL_CTX_free(ctx);
}

/* ---- the self-signed certificate ---------------------------------------------------- */

static void test_self_signed(void **state)
{
    struct paths *p = *state;
    char err[256] = "";
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(p->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(S_ISREG(st.st_mode));
    ino_t key_ino = st.st_ino;
    char *dir = xasprintf("%s/private", p->root);
    assert_int_equal(count_entries(dir), 1);  /* no temporary file left behind */
    free(dir);

    X509 *x = load_cert(p->cert);
    assert_int_equal(X509_get_version(x), 2);
    assert_int_equal(X509_check_host(x, DOMAIN, 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "other.org", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ca(x), 0);
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, NULL, NULL);
    assert_non_null(bc);
    assert_false(bc->ca);
    BASIC_CONSTRAINTS_free(bc);
    int days = 0, secs = 0;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)), 1);
    assert_true(days >= 3650 && days <= 3653);
    EVP_PKEY *pub = X509_get0_pubkey(x);
    assert_int_equal(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
    assert_int_equal(EVP_PKEY_get_bits(pub), 256);
    assert_true(ASN1_INTEGER_get(X509_get0_serialNumber(x)) != 0);
    X509_free(x);

    /* A second call keeps both files. */
    char *cert1 = slurp(p->cert), *key1 = slurp(p->key);
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    char *cert2 = slurp(p->cert), *key2 = slurp(p->key);
    assert_string_equal(cert1, cert2);
    assert_string_equal(key1, key2);
    free(cert2);
    free(key2);

    /* A lost certificate is remade for the existing key, which stays untouched. */
    assert_int_equal(unlink(p->cert), 0);
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    cert2 = slurp(p->cert);
    key2 = slurp(p->key);
    assert_string_not_equal(cert1, cert2);  /* new serial */
    assert_string_equal(key1, key2);
    assert_int_equal(stat(p->key, &st), 0);
    assert_int_equal(st.st_ino, key_ino);
    SSL_CTX *ctx = tls_server_ctx(p->cert, p->key, err, sizeof err);
    assert_non_null(ctx);
    SSL_CTX_free(ctx);
    free(cert1);
    free(key1);
    free(cert2);
    free(key2);

    /* A lost key means a new pair. */
    assert_int_equal(unlink(p->key), 0);
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    ctx = tls_server_ctx(p->cert, p->key, err, sizeof err);
    assert_non_null(ctx);
    SSL_CTX_free(ctx);
}

/* ---- errors -------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_errors(void **state)
{
    struct paths *p = *state;
    char err[256];
    assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);

    /* missing key */
    char *missing = xasprintf("%s/nope.key", p->root);
    err[0] = '\0';
    assert_null(tls_server_ctx(p->cert, missing, err, sizeof err));
    assert_non_null(strstr(err, "nope.key"));
    /* missing certificate */
    err[0] = '\0';
    assert_null(tls_server_ctx(missing, p->key, err, sizeof err));
    assert_non_null(strstr(err, "certificate"));
    free(missing);

    /* a key that is not a key */
    char *junk = xasprintf("%s/junk.key", p->root);
    write_file(junk, "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n");
    err[0] = '\0';
    assert_null(tls_server_ctx(p->cert, junk, err, sizeof err));
    assert_true(strlen(err) > 0);
    /* ... is never overwritten to make a certificate */
    char *junk_cert = xasprintf("%s/junk.crt", p->root);
    err[0] = '\0';
    assert_int_equal(tls_ensure_self_signed(junk_cert, junk, DOMAIN, err, sizeof err), -1);
    assert_non_null(strstr(err, "junk.key"));
    assert_int_equal(access(junk_cert, F_OK), -1);

    /* an unreadable key (root reads everything: skip that part as root) */
    if (geteuid() != 0) {
        assert_int_equal(chmod(p->key, 0), 0);
        err[0] = '\0';
        assert_null(tls_server_ctx(p->cert, p->key, err, sizeof err));
        assert_true(strlen(err) > 0);
        assert_int_equal(unlink(p->cert), 0);
        err[0] = '\0';
        assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), -1);
        assert_true(strlen(err) > 0);
        assert_int_equal(chmod(p->key, 0600), 0);
        assert_int_equal(tls_ensure_self_signed(p->cert, p->key, DOMAIN, err, sizeof err), 0);
    }

    /* a key path that cannot be read as a file (works as root too) */
    char *key_dir = xasprintf("%s/private", p->root);
    char *dir_cert = xasprintf("%s/dir.crt", p->root);
    err[0] = '\0';
    assert_null(tls_server_ctx(p->cert, key_dir, err, sizeof err));
    assert_true(strlen(err) > 0);
    err[0] = '\0';
    assert_int_equal(tls_ensure_self_signed(dir_cert, key_dir, DOMAIN, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    free(key_dir);
    free(dir_cert);

    /* a key that belongs to another certificate */
    char *other_cert = xasprintf("%s/other/o.crt", p->root), *other_key = xasprintf("%s/other/o.key", p->root);
    assert_int_equal(tls_ensure_self_signed(other_cert, other_key, "other.example", err, sizeof err), 0);
    err[0] = '\0';
    assert_null(tls_server_ctx(p->cert, other_key, err, sizeof err));
    assert_true(strlen(err) > 0);

    /* bad domain, impossible directory */
    err[0] = '\0';
    assert_int_equal(tls_ensure_self_signed(junk_cert, other_key, "bad,DNS:evil", err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    err[0] = '\0';
    assert_int_equal(tls_ensure_self_signed("/dev/null/x/c.crt", "/dev/null/x/c.key", DOMAIN, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    free(junk);
    free(junk_cert);
    free(other_cert);
    free(other_key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_self_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

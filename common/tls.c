/* common/tls.c - OpenSSL server contexts, a self-signed ECDSA certificate, channel-binding data. */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "util.h"

/* TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3: OpenSSL's three suites,
 * AES-128-GCM first (the server's preference wins): its SHA-256 key schedule runs on
 * the CPU's SHA extensions where SHA-384 does not, which is most of a handshake's
 * hashing. */
#define TLS_CIPHERS_12 "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
#define TLS_CIPHERS_13 "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
#define TLS_GROUPS "X25519:P-256:P-384"
#define TLS_ALPN_XMPP "xmpp-client"
#define TLS_CERT_DAYS 3652

/* Writes "what: <first OpenSSL error>" into err and empties the error queue. */
static void tls_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_error();  /* the earliest error is the root cause */
    char reason[256] = "";
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s%s%s", what, reason[0] ? ": " : "", reason);
}

/* ALPN: pick "xmpp-client" when offered; otherwise go on without ALPN, since
 * clients of STARTTLS listeners need not offer any protocol. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                           unsigned int inlen, void *arg)
{
    const size_t want = sizeof TLS_ALPN_XMPP - 1;
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int n = in[i];
        if (n == 0 || n > inlen - i - 1)
            return SSL_TLSEXT_ERR_ALERT_FATAL;  /* malformed list */
        if (n == want && memcmp(in + i + 1, TLS_ALPN_XMPP, want) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += n + 1;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Builds a server SSL_CTX: TLS 1.2 minimum, ECDHE+AEAD suites on TLS 1.2, no
 * compression or renegotiation, SSL_MODE_RELEASE_BUFFERS (idle sessions keep no
 * buffers) with partial and moving writes, read-ahead, a server session cache, no TLS 1.3 tickets,
 * the certificate chain from cert_file and the matching key from key_file (PEM),
 * ALPN "xmpp-client" for direct TLS (XEP-0368). Borrows the paths. Returns a new
 * context (SSL_CTX_free it), or NULL with one sentence in err. */
SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    char what[512];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_err(err, errlen, "cannot create TLS context");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        tls_err(err, errlen, "cannot set the minimum TLS version");
        goto fail;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read(2) per readable socket instead of one per record header and one per
     * body; the read buffer is still released once OpenSSL has handed it all out. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12) != 1) {
        tls_err(err, errlen, "cannot set the TLS 1.2 cipher list");
        goto fail;
    }
    if (SSL_CTX_set_ciphersuites(ctx, TLS_CIPHERS_13) != 1) {
        tls_err(err, errlen, "cannot set the TLS 1.3 cipher suites");
        goto fail;
    }
    if (SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1) {
        tls_err(err, errlen, "cannot set the key-exchange groups");
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    static const unsigned char sid_ctx[] = "meerkat";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    /* No TLS 1.3 tickets unless the caller asks (tls.session_tickets in the config): a ticket
     * costs the server ~25 us of a ~250 us handshake, XMPP clients seldom resume, and
     * each c2s process has its own ticket keys, so behind SO_REUSEPORT a ticket only
     * works when the client lands on the same process again. */
    SSL_CTX_set_num_tickets(ctx, 0);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(what, sizeof what, "cannot load certificate chain %s", cert_file);
        tls_err(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "cannot load private key %s", key_file);
        tls_err(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof what, "private key %s does not match certificate %s", key_file, cert_file);
        tls_err(err, errlen, what);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* 0 when path exists, 1 when it does not, -1 (with err) when stat fails otherwise. */
static int tls_missing(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return 0;
    if (errno == ENOENT)
        return 1;
    snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    return -1;
}

/* mkdir -p of the directory part of path. */
static int tls_mkdirs(const char *path, char *err, size_t errlen)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash == NULL || slash == dir) {
        free(dir);
        return 0;
    }
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
            rc = -1;
            break;
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
    free(dir);
    return rc;
}

/* Writes a key or a certificate to path through a temporary file in the same
 * directory and rename(2), so a crash never leaves a truncated file. */
static int tls_write_pem(const char *path, mode_t mode, EVP_PKEY *pkey, X509 *cert, char *err, size_t errlen)
{
    char *tmp = xasprintf("%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);  /* created 0600: the key is never readable by others */
    if (fd == -1) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    FILE *f = NULL;
    if (fchmod(fd, mode) == -1) {
        snprintf(err, errlen, "cannot chmod %s: %s", tmp, strerror(errno));
        close(fd);
        goto fail;
    }
    f = fdopen(fd, "w");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s: %s", tmp, strerror(errno));
        close(fd);
        goto fail;
    }
    int ok = pkey != NULL ? PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL)
                          : PEM_write_X509(f, cert);
    if (ok != 1) {
        tls_err(err, errlen, "cannot encode PEM");
        goto fail;
    }
    if (fflush(f) == EOF || fsync(fileno(f)) == -1) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    FILE *done = f;
    f = NULL;
    if (fclose(done) == EOF) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) == -1) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    free(tmp);
    return 0;
fail:
    if (f != NULL)
        fclose(f);
    unlink(tmp);
    free(tmp);
    return -1;
}

/* Hostnames only: the domain goes into a certificate, not into a config string. */
static bool tls_domain_valid(const char *domain)
{
    size_t n = strlen(domain);
    if (n == 0 || n > 253 || domain[0] == '.' || domain[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = domain[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static int tls_add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    if (ext == NULL)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

static int tls_add_san(X509 *x, const char *domain)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    int rc = -1;
    if (names == NULL || gn == NULL || ia5 == NULL || ASN1_STRING_set(ia5, domain, (int)strlen(domain)) != 1) {
        ASN1_IA5STRING_free(ia5);
        GENERAL_NAME_free(gn);
        goto out;
    }
    GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
    if (sk_GENERAL_NAME_push(names, gn) == 0) {
        GENERAL_NAME_free(gn);
        goto out;
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) == 1)
        rc = 0;
out:
    GENERAL_NAMES_free(names);
    return rc;
}

/* A random positive 127-bit serial number. */
static int tls_set_serial(X509 *x)
{
    unsigned char rnd[16];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return -1;
    rnd[0] = (rnd[0] & 0x7f) | 0x40;  /* positive and never zero */
    BIGNUM *bn = BN_bin2bn(rnd, sizeof rnd, NULL);
    if (bn == NULL)
        return -1;
    ASN1_INTEGER *serial = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    return serial != NULL ? 0 : -1;
}

static X509 *tls_make_cert(EVP_PKEY *pkey, const char *domain)
{
    X509 *x = X509_new();
    if (x == NULL || X509_set_version(x, 2) != 1 || tls_set_serial(x) == -1)
        goto fail;
    /* An hour of slack for peers whose clock is a little behind. */
    if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), TLS_CERT_DAYS, 0, NULL) == NULL)
        goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    /* ub-common-name is 64: longer domains live in the subjectAltName only. */
    if (strlen(domain) <= 64 &&
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_ASC, (const unsigned char *)domain, -1, -1, 0) != 1)
        goto fail;
    if (X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, pkey) != 1)
        goto fail;
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    if (tls_add_san(x, domain) == -1 || tls_add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") == -1 ||
        tls_add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") == -1 ||
        tls_add_ext(x, &v3, NID_ext_key_usage, "serverAuth,clientAuth") == -1 ||
        tls_add_ext(x, &v3, NID_subject_key_identifier, "hash") == -1)
        goto fail;
    if (X509_sign(x, pkey, EVP_sha256()) <= 0)
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

/* Ensures a certificate and key exist for a development or first-run server. When
 * both files exist nothing is touched. When the certificate is missing but the key
 * exists, a certificate is made for that key (an unreadable or invalid key is an
 * error, never overwritten). When the key is missing, a new ECDSA P-256 key and a
 * self-signed certificate for domain (CN and subjectAltName DNS, CA:FALSE, random
 * serial, 10 years) are written. Missing directories are created; the key file has
 * mode 0600; each file is written to a temporary name and renamed. Borrows every
 * argument. Returns 0, or -1 with one sentence in err. */
int tls_ensure_self_signed(const char *cert_file, const char *key_file, const char *domain,
                           char *err, size_t errlen)
{
    int cert_missing = tls_missing(cert_file, err, errlen);
    int key_missing = tls_missing(key_file, err, errlen);
    if (cert_missing == -1 || key_missing == -1)
        return -1;
    if (!cert_missing && !key_missing)
        return 0;
    if (!tls_domain_valid(domain)) {
        snprintf(err, errlen, "cannot make a certificate for \"%.100s\": not a host name", domain);
        return -1;
    }
    EVP_PKEY *pkey = NULL;
    X509 *cert = NULL;
    int rc = -1;
    if (key_missing) {
        pkey = EVP_EC_gen("P-256");
        if (pkey == NULL) {
            tls_err(err, errlen, "cannot generate a P-256 key");
            goto out;
        }
    } else {
        FILE *f = fopen(key_file, "r");
        if (f == NULL) {
            snprintf(err, errlen, "cannot read private key %s: %s", key_file, strerror(errno));
            goto out;
        }
        pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (pkey == NULL) {
            char what[512];
            snprintf(what, sizeof what, "cannot parse private key %s", key_file);
            tls_err(err, errlen, what);
            goto out;
        }
    }
    cert = tls_make_cert(pkey, domain);
    if (cert == NULL) {
        tls_err(err, errlen, "cannot build the self-signed certificate");
        goto out;
    }
    if (tls_mkdirs(key_file, err, errlen) == -1 || tls_mkdirs(cert_file, err, errlen) == -1)
        goto out;
    /* Key first: a crash in between leaves a key whose certificate the next run makes. */
    if (key_missing && tls_write_pem(key_file, 0600, pkey, NULL, err, errlen) == -1)
        goto out;
    if (tls_write_pem(cert_file, 0644, NULL, cert, err, errlen) == -1)
        goto out;
    rc = 0;
out:
    X509_free(cert);
    EVP_PKEY_free(pkey);
    return rc;
}

/* RFC 5929 section 4.1: the certificate's signature hash, MD5 and SHA-1 become
 * SHA-256; signatures without a separate hash (EdDSA) use SHA-256 too. */
static const EVP_MD *tls_end_point_md(X509 *cert)
{
    int md_nid = NID_undef, pk_nid = NID_undef;
    if (OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid) != 1)
        return EVP_sha256();
    if (md_nid == NID_undef || md_nid == NID_md5 || md_nid == NID_sha1)
        return EVP_sha256();
    const EVP_MD *md = EVP_get_digestbynid(md_nid);
    if (md == NULL || EVP_MD_get_size(md) < 32)
        return EVP_sha256();
    return md;
}

/* Writes the channel-binding data of an established connection into out: type
 * "tls-exporter" (RFC 9266: 32 bytes of keying material with the label
 * "EXPORTER-Channel-Binding" and no context; TLS 1.3 only) or
 * "tls-server-end-point" (RFC 5929: the hash of the server certificate, our own
 * on a server SSL, the peer's on a client SSL). Borrows ssl and out. Returns the
 * length, or -1 when the handshake is not finished, the type is unknown or not
 * available on this connection, or out is too small. */
int tls_channel_binding(SSL *ssl, const char *type, unsigned char *out, size_t outlen)
{
    if (ssl == NULL || type == NULL || !SSL_is_init_finished(ssl))
        return -1;
    if (strcmp(type, "tls-exporter") == 0) {
        static const char label[] = "EXPORTER-Channel-Binding";
        if (SSL_version(ssl) != TLS1_3_VERSION || outlen < 32)
            return -1;
        if (SSL_export_keying_material(ssl, out, 32, label, sizeof label - 1, NULL, 0, 0) != 1) {
            ERR_clear_error();
            return -1;
        }
        return 32;
    }
    if (strcmp(type, "tls-server-end-point") == 0) {
        X509 *cert = SSL_is_server(ssl) ? SSL_get_certificate(ssl) : SSL_get0_peer_certificate(ssl);
        if (cert == NULL)
            return -1;
        const EVP_MD *md = tls_end_point_md(cert);
        unsigned int len = 0;
        unsigned char digest[EVP_MAX_MD_SIZE];
        if (X509_digest(cert, md, digest, &len) != 1 || len > outlen) {
            ERR_clear_error();
            return -1;
        }
        memcpy(out, digest, len);
        return (int)len;
    }
    return -1;
}

/* The binding type this connection supports best: "tls-exporter" on TLS 1.3, else
 * "tls-server-end-point". Borrows ssl; the result is a static string. */
const char *tls_best_binding(SSL *ssl)
{
    return SSL_version(ssl) == TLS1_3_VERSION ? "tls-exporter" : "tls-server-end-point";
}

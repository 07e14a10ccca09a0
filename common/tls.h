/* common/tls.h - OpenSSL server contexts, a self-signed ECDSA certificate, channel-binding data. */
#ifndef MK_COMMON_TLS_H
#define MK_COMMON_TLS_H
#include <stddef.h>

#include <openssl/ssl.h>

/* A server SSL_CTX: TLS 1.2 minimum, the certificate chain and key from files,
 * SSL_MODE_RELEASE_BUFFERS (idle sessions keep no buffers), session tickets on,
 * ECDHE only, ALPN "xmpp-client" accepted for direct TLS (XEP-0368). NULL with err. */
SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* When cert_file or key_file is missing, writes a self-signed ECDSA P-256
 * certificate for domain (CN and subjectAltName DNS) valid for 10 years, key mode
 * 0600, creating directories. Returns 0 when both exist or were written, -1 with err. */
int tls_ensure_self_signed(const char *cert_file, const char *key_file, const char *domain,
                           char *err, size_t errlen);

/* Channel binding of an established connection. type is "tls-exporter" (RFC 9266,
 * TLS 1.3 only) or "tls-server-end-point" (RFC 5929). Writes the bytes into out and
 * returns the length, or -1 when this connection cannot give that type. */
int tls_channel_binding(SSL *ssl, const char *type, unsigned char *out, size_t outlen);
/* The binding type this connection supports best: "tls-exporter" on TLS 1.3, else
 * "tls-server-end-point". */
const char *tls_best_binding(SSL *ssl);
#endif

/* tests/tools/scram_plus_client.c - logs in with SCRAM-SHA-256-PLUS over tls-exporter (RFC 9266), which Python's ssl cannot compute, for the integration tests. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "scram.h"

static int fd;
static SSL *ssl;
static char inbuf[65536];
static size_t inlen;

static void put(const char *s)
{
    size_t n = strlen(s);
    if ((ssl ? SSL_write(ssl, s, (int)n) : (int)write(fd, s, n)) != (int)n) {
        fprintf(stderr, "write failed\n");
        exit(2);
    }
}

/* Reads until needle shows; returns a pointer into inbuf past it, consuming up to there. */
static char *wait_for(const char *needle, char *out, size_t outlen)
{
    for (;;) {
        inbuf[inlen] = '\0';
        char *p = strstr(inbuf, needle);
        if (p != NULL) {
            size_t upto = (size_t)(p - inbuf) + strlen(needle);
            if (out != NULL) {
                size_t k = upto < outlen - 1 ? upto : outlen - 1;
                memcpy(out, inbuf, k);
                out[k] = '\0';
            }
            memmove(inbuf, inbuf + upto, inlen - upto);
            inlen -= upto;
            return out;
        }
        int n = ssl ? SSL_read(ssl, inbuf + inlen, (int)(sizeof inbuf - 1 - inlen))
                    : (int)read(fd, inbuf + inlen, sizeof inbuf - 1 - inlen);
        if (n <= 0) {
            fprintf(stderr, "closed while waiting for %s; got: %s\n", needle, inbuf);
            exit(2);
        }
        inlen += (size_t)n;
    }
}

static void open_stream(void)
{
    put("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    wait_for("</stream:features>", NULL, 0);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT USER PASSWORD [--wrong-binding]\n", argv[0]);
        return 2;
    }
    bool wrong = argc > 4 && strcmp(argv[4], "--wrong-binding") == 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
        perror("connect");
        return 2;
    }
    open_stream();
    put("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    wait_for("<proceed", NULL, 0);
    wait_for("/>", NULL, 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "TLS handshake failed\n");
        return 2;
    }
    open_stream();

    unsigned char cb[32];
    if (SSL_export_keying_material(ssl, cb, sizeof cb, "EXPORTER-Channel-Binding", 24, NULL, 0, 0) != 1)
        return 2;
    if (wrong)
        cb[0] ^= 0xff;
    unsigned char rnd[18];
    char cnonce[32], msg[2048], enc[4096], chal[1024];
    RAND_bytes(rnd, sizeof rnd);
    b64_encode(rnd, sizeof rnd, cnonce, sizeof cnonce);
    const char *gs2 = "p=tls-exporter,,";
    char first_bare[256];
    snprintf(first_bare, sizeof first_bare, "n=%s,r=%s", argv[2], cnonce);
    snprintf(msg, sizeof msg, "%s%s", gs2, first_bare);
    b64_encode((unsigned char *)msg, strlen(msg), enc, sizeof enc);
    char out[8192];
    snprintf(out, sizeof out, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>%s</auth>",
             enc);
    put(out);
    char got[4096];
    wait_for("</challenge>", got, sizeof got);
    char *b = strchr(strstr(got, "<challenge"), '>') + 1;
    *strstr(b, "</challenge>") = '\0';
    long cl = b64_decode(b, strlen(b), (unsigned char *)chal, sizeof chal - 1);
    chal[cl] = '\0';
    char *r = strstr(chal, "r="), *s = strstr(chal, "s="), *i = strstr(chal, "i=");
    char nonce[256], salt64[128];
    sscanf(r + 2, "%255[^,]", nonce);
    sscanf(s + 2, "%127[^,]", salt64);
    int iter = atoi(i + 2);
    unsigned char salt[64], salted[32], ckey[32], stored[32], sig[32], proof[32];
    long sl = b64_decode(salt64, strlen(salt64), salt, sizeof salt);
    PKCS5_PBKDF2_HMAC(argv[3], (int)strlen(argv[3]), salt, (int)sl, iter, EVP_sha256(), 32, salted);
    unsigned int n = 0;
    HMAC(EVP_sha256(), salted, 32, (const unsigned char *)"Client Key", 10, ckey, &n);
    EVP_Digest(ckey, 32, stored, NULL, EVP_sha256(), NULL);
    unsigned char cbind[128];
    size_t gl = strlen(gs2);
    memcpy(cbind, gs2, gl);
    memcpy(cbind + gl, cb, sizeof cb);
    char cbind64[256], final_wo[1024], auth_msg[4096];
    b64_encode(cbind, gl + sizeof cb, cbind64, sizeof cbind64);
    snprintf(final_wo, sizeof final_wo, "c=%s,r=%s", cbind64, nonce);
    snprintf(auth_msg, sizeof auth_msg, "%s,%s,%s", first_bare, chal, final_wo);
    HMAC(EVP_sha256(), stored, 32, (unsigned char *)auth_msg, strlen(auth_msg), sig, &n);
    for (int k = 0; k < 32; k++)
        proof[k] = ckey[k] ^ sig[k];
    char proof64[64];
    b64_encode(proof, 32, proof64, sizeof proof64);
    snprintf(msg, sizeof msg, "%s,p=%s", final_wo, proof64);
    b64_encode((unsigned char *)msg, strlen(msg), enc, sizeof enc);
    snprintf(out, sizeof out, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>", enc);
    put(out);
    for (;;) {
        inbuf[inlen] = '\0';
        if (strstr(inbuf, "<success")) {
            printf("success\n");
            return 0;
        }
        if (strstr(inbuf, "</failure>")) {
            printf("failure\n");
            return 1;
        }
        int k = SSL_read(ssl, inbuf + inlen, (int)(sizeof inbuf - 1 - inlen));
        if (k <= 0)
            return 2;
        inlen += (size_t)k;
    }
}

/* tests/bench/loadgen.c - XMPP load generator: thousands of TLS clients on one libev loop, one JSON line of figures per scenario. */
/* ENGINE is deprecated in OpenSSL 3 but still the only switch to the built-in key
 * decoder: see legacy_ec_keys() */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "scram.h"
#include "util.h"

/*
 * What it does. Every simulated user is one `struct client`: a non-blocking socket
 * with one ev_io, walked through the whole client side of RFC 6120 by a state machine
 * (stream, STARTTLS, optional XEP-0077 registration, SASL, restart, bind, optional
 * session, presence). Incoming bytes are cut into top-level elements by a small
 * scanner that only tracks tag depth: a load generator needs to know which stanza
 * arrived, not its tree, and this keeps its cost per message far below the server's.
 * Writes are queued per client and flushed once per loop iteration (ev_prepare).
 *
 * Scenarios (--scenario):
 *   register  XEP-0077 registration + full login of every account, then close (setup)
 *   login     full logins (TLS + SASL + bind) with bounded concurrency, then close
 *   idle      log every account in, send presence, print the figures, hold
 *   chat      log users in pairs, then offer a fixed total message rate for each
 *             step of --rates, stopping after the first step under --stop-below
 *   muc       log every user in and join them all to one room (--room, nick = user
 *             name, no history), then --senders of them send groupchat messages at
 *             each step's total rate; every occupant's copy is counted, and a
 *             message's latency to its last occupant is taken when its copy count
 *             reaches the room's occupant count
 * Chat bodies carry "s=<step> t=<send time, CLOCK_MONOTONIC µs>", so the receiver
 * (the same process) computes the latency; the clock is system-wide, so several
 * generator processes on one host would agree too.
 */

enum cstate {
    CS_CONNECTING = 0,
    CS_STREAM1,      /* plain stream: header and features (STARTTLS) */
    CS_PROCEED,      /* <starttls/> sent */
    CS_TLS,          /* TLS handshake */
    CS_FEATURES2,    /* restarted over TLS: waiting for mechanisms */
    CS_REGISTER,     /* XEP-0077 set sent */
    CS_CHALLENGE,    /* SCRAM client-first sent */
    CS_SUCCESS,      /* proof (or PLAIN) sent */
    CS_FEATURES3,    /* restarted after SASL: waiting for bind */
    CS_BIND,
    CS_SESSION,
    CS_ONLINE,
    CS_DONE,         /* closed (finished or failed) */
};

enum mech {
    MECH_NONE = 0,
    MECH_PLAIN,
    MECH_SCRAM1,
    MECH_SCRAM256,
};

/* SCRAM salted password of one account, cached across runs (--keycache): the client
 * half of SCRAM costs a PBKDF2 per login otherwise, which would make the generator,
 * not the server, the bottleneck of a login storm. Each cache line carries a tag of
 * the password it was computed from (see password_tag): a run with another
 * --password does not reuse it. */
struct user_key {
    char salt[64];
    unsigned iter;
    int mech;
    unsigned char salted[32];
    bool valid;
    bool fresh;     /* computed in this run: appended to the cache file at exit */
};

struct client {
    ev_io io;
    int fd;
    int idx;                /* account number */
    enum cstate state;
    SSL *ssl;
    struct buf in;          /* received plaintext not yet cut into elements */
    struct buf out;         /* plaintext waiting to be written */
    int events;             /* what io currently waits for */
    bool dirty;             /* on the flush list */
    bool registered;
    bool need_session;
    bool in_stream;         /* the server's stream header of this stream was seen */
    int mechs;              /* bitmask of offered mechanisms (1 << enum mech) */
    int retries;
    int reg_waits;          /* registrations answered type='wait' (server busy hashing) and re-sent */
    uint32_t sm_h;          /* --sm: stanzas received since <enable/> (XEP-0198 h) */
    int64_t t_start;        /* monotonic µs of connect() */
    int64_t t_login;
    struct client *next_dirty;
    char *scram_first_bare; /* client-first-message-bare, kept for AuthMessage */
    unsigned char server_sig[32];
    size_t server_sig_len;
};

enum scenario {
    SC_REGISTER = 0,
    SC_LOGIN,
    SC_IDLE,
    SC_CHAT,
    SC_MUC,
};

struct lat_set {
    int32_t *v;     /* µs */
    size_t n, cap;
};

static struct {
    struct ev_loop *loop;
    SSL_CTX *ctx;
    struct sockaddr_in addr;
    struct sockaddr_in addr2;  /* --host2/--port2: odd-numbered accounts connect here */
    bool has_addr2;
    struct sockaddr_in source; /* --source: the local address every client socket binds to */
    bool has_source;
    const char *domain;
    const char *prefix;
    const char *password;
    const char *resource;
    bool carbons;           /* --carbons: enable XEP-0280 before the initial presence */
    bool sm;                /* --sm: enable XEP-0198 (with resumption) before the initial presence */
    int priority;           /* --priority: of the initial presence (0: none given) */
    enum scenario scenario;
    int mech_pref;          /* MECH_* the user asked for; MECH_NONE = best offered */
    bool do_register;
    int first, users;
    int concurrency;
    double timeout_s;
    double hold_s;
    int body_bytes;
    double duration_s, drain_s, stop_below;
    double rates[64];
    int nrates;
    const char *keycache;

    struct client *clients;
    struct user_key *keys;
    int launched, inflight, online, failed, finished;
    struct lat_set login_lat;
    struct client *dirty;
    ev_prepare flush_w;
    ev_timer sweep_w;
    ev_timer rate_w;
    ev_timer phase_w;
    ev_signal sigint_w, sigterm_w;
    int64_t t0;             /* start of the run */
    int64_t t_all_online;

    /* chat */
    int *senders;           /* client indices taking part, sender order */
    int nsenders;
    int step;
    double rate;
    int64_t step_t0, step_send_end;
    uint64_t step_sent, step_recv, step_late_other;
    uint64_t step_dups;             /* a message received again (a re-sent Route after a router crash) */
    uint64_t step_errors;           /* messages that came back as errors */
    unsigned char *seen;            /* bit per msg_seq: received once */
    size_t seen_bytes;
    struct lat_set chat_lat;
    FILE *lat_log;                  /* --lat-log: one line per message received */
    bool sending;
    int rr;
    unsigned msg_seq;
    double best_rate;
    struct rusage ru_step0;
    char last_fail[200];
    bool quit;

    /* muc */
    const char *room;               /* --room: bare JID of the room */
    int muc_senders;                /* --senders */
    int joined;                     /* self-presences (status 110) received */
    uint64_t muc_presences;         /* room presences received by all occupants */
    uint16_t *copies;               /* per msg_seq: copies received by occupants */
    size_t copies_cap;
    uint64_t step_copies;           /* every occupant's copy of this step's messages */
    uint64_t step_complete;         /* this step's messages that reached every occupant */
    struct lat_set last_lat;        /* per complete message: latency to its last occupant */
} G;

static void client_fail(struct client *c, const char *why);
static void client_launch(struct client *c);
static void client_write(struct client *c, const char *s, size_t n);
static void launch_more(void);
static void chat_begin(void);
static void muc_begin(void);
static void muc_join(struct client *c);

/* ---- small helpers --------------------------------------------------------- */

static void lat_add(struct lat_set *l, int64_t us)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4096;
        l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = us > INT32_MAX ? INT32_MAX : (int32_t)us;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Sorts the set for lat_q_ms (an empty set has no array to give qsort). */
static void lat_sort(struct lat_set *l)
{
    if (l->n > 0)
        qsort(l->v, l->n, sizeof(int32_t), cmp_i32);
}

/* The q-quantile (0..1) of a sorted set in milliseconds; 0 when empty. */
static double lat_q_ms(const struct lat_set *l, double q)
{
    if (l->n == 0)
        return 0;
    size_t i = (size_t)(q * (double)(l->n - 1) + 0.5);
    return l->v[i] / 1000.0;
}

static double cpu_s(const struct rusage *r)
{
    return (double)r->ru_utime.tv_sec + r->ru_utime.tv_usec / 1e6 + (double)r->ru_stime.tv_sec +
           r->ru_stime.tv_usec / 1e6;
}

static void user_name(int idx, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s%d", G.prefix, idx);
}

/* Text content of the first <tag ...>...</tag> in el (NUL-terminated), copied into
 * out; returns its length or -1 when absent. */
static int el_text(const char *el, const char *tag, char *out, size_t outlen)
{
    size_t tl = strlen(tag);
    const char *p = el;
    while ((p = strchr(p, '<')) != NULL) {
        p++;
        if (strncmp(p, tag, tl) == 0 && (p[tl] == '>' || p[tl] == ' ')) {
            const char *s = strchr(p, '>');
            if (s == NULL || s[-1] == '/') {
                if (outlen)
                    out[0] = 0;
                return 0;
            }
            s++;
            const char *e = strchr(s, '<');
            if (e == NULL)
                return -1;
            size_t n = (size_t)(e - s);
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, s, n);
            out[n] = 0;
            return (int)n;
        }
    }
    return -1;
}

/* Is attribute name='val' (either quote) on el's first tag? */
static bool el_attr_is(const char *el, const char *name, const char *val)
{
    const char *end = strchr(el, '>');
    size_t nl = strlen(name), vl = strlen(val);
    for (const char *p = el; p && p < end; p++) {
        p = strstr(p, name);
        if (p == NULL || p >= end)
            return false;
        if (p[-1] == ' ' && p[nl] == '=' && (p[nl + 1] == '\'' || p[nl + 1] == '"'))
            return strncmp(p + nl + 2, val, vl) == 0 && p[nl + 2 + vl] == p[nl + 1];
    }
    return false;
}

/* ---- element scanner --------------------------------------------------------- */

/* Finds the end of the first complete top-level element of p[0..n). Returns its
 * length (including any leading whitespace), 0 when more bytes are needed, -1 on
 * bytes that are not XML. *is_header is set when the element is an opening stream
 * header, which is complete at its first '>'. */
static long scan_element(const char *p, size_t n, bool want_header, bool *is_header)
{
    size_t i = 0;
    int depth = 0;
    *is_header = false;
    while (i < n) {
        if (p[i] != '<') {
            if (depth == 0 && p[i] != ' ' && p[i] != '\n' && p[i] != '\r' && p[i] != '\t')
                return -1;
            const char *lt = memchr(p + i, '<', n - i);
            if (lt == NULL)
                return 0;
            if (depth == 0) {
                for (const char *q = p + i; q < lt; q++)
                    if (*q != ' ' && *q != '\n' && *q != '\r' && *q != '\t')
                        return -1;
            }
            i = (size_t)(lt - p);
            continue;
        }
        if (i + 1 >= n)
            return 0;
        char k = p[i + 1];
        if (k == '?' || k == '!') {
            const char *endmark = k == '?' ? "?>" : (n - i > 3 && p[i + 2] == '-' ? "-->" : (p[i + 2] == '[' ? "]]>" : ">"));
            const char *e = memmem(p + i, n - i, endmark, strlen(endmark));
            if (e == NULL)
                return 0;
            i = (size_t)(e - p) + strlen(endmark);
            if (depth == 0 && k == '?')
                return (long)i;   /* an XML declaration is returned on its own */
            continue;
        }
        /* a start or end tag: find its '>' outside quotes */
        size_t j = i + 1;
        char quote = 0;
        while (j < n) {
            char ch = p[j];
            if (quote) {
                if (ch == quote)
                    quote = 0;
            } else if (ch == '\'' || ch == '"') {
                quote = ch;
            } else if (ch == '>') {
                break;
            }
            j++;
        }
        if (j >= n)
            return 0;
        if (k == '/') {
            depth--;
        } else if (p[j - 1] != '/') {
            if (depth == 0 && want_header && strncmp(p + i, "<stream:stream", 14) == 0) {
                *is_header = true;
                return (long)(j + 1);
            }
            depth++;
        }
        i = j + 1;
        if (depth <= 0)
            return (long)i;
    }
    return 0;
}

/* ---- SCRAM client ------------------------------------------------------------ */

static const EVP_MD *mech_md(int mech, size_t *len)
{
    *len = mech == MECH_SCRAM256 ? 32 : 20;
    return mech == MECH_SCRAM256 ? EVP_sha256() : EVP_sha1();
}

static const char *mech_name(int mech)
{
    switch (mech) {
    case MECH_PLAIN: return "PLAIN";
    case MECH_SCRAM1: return "SCRAM-SHA-1";
    case MECH_SCRAM256: return "SCRAM-SHA-256";
    default: return "none";
    }
}

static void send_auth(struct client *c, int mech)
{
    char user[64], b64[512], raw[256];
    user_name(c->idx, user, sizeof(user));
    struct buf m;
    buf_init(&m);
    if (mech == MECH_PLAIN) {
        int n = snprintf(raw, sizeof(raw), "%c%s%c%s", 0, user, 0, G.password);
        b64_encode((unsigned char *)raw, (size_t)n, b64, sizeof(b64));
        buf_printf(&m, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", b64);
    } else {
        unsigned char nb[18];
        char nonce[32];
        RAND_bytes(nb, sizeof(nb));
        b64_encode(nb, sizeof(nb), nonce, sizeof(nonce));
        xfree(&c->scram_first_bare);
        c->scram_first_bare = xasprintf("n=%s,r=%s", user, nonce);
        int n = snprintf(raw, sizeof(raw), "n,,%s", c->scram_first_bare);
        b64_encode((unsigned char *)raw, (size_t)n, b64, sizeof(b64));
        buf_printf(&m, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='%s'>%s</auth>", mech_name(mech), b64);
    }
    client_write(c, m.data, m.len);
    buf_release(&m);
    c->state = mech == MECH_PLAIN ? CS_SUCCESS : CS_CHALLENGE;
    c->mechs = (c->mechs & 0xff) | (mech << 8);   /* remember the chosen one */
}

static int chosen_mech(const struct client *c)
{
    return c->mechs >> 8;
}

/* Answers a server-first-message; returns 0 or -1 (bad message). */
static int scram_answer(struct client *c, const char *chal_b64)
{
    unsigned char sf[512];
    long sfl = b64_decode(chal_b64, strlen(chal_b64), sf, sizeof(sf) - 1);
    if (sfl <= 0)
        return -1;
    sf[sfl] = 0;
    const char *sfirst = (const char *)sf;
    const char *r = strstr(sfirst, "r="), *s = strstr(sfirst, ",s="), *it = strstr(sfirst, ",i=");
    if (r != sfirst || s == NULL || it == NULL)
        return -1;
    const char *cnonce = strstr(c->scram_first_bare, ",r=") + 3;
    if (strncmp(r + 2, cnonce, strlen(cnonce)) != 0)
        return -1;
    char nonce[256], salt[128];
    size_t nl = (size_t)(s - (r + 2));
    size_t sl = (size_t)(it - (s + 3));
    if (nl >= sizeof(nonce) || sl >= sizeof(salt))
        return -1;
    memcpy(nonce, r + 2, nl);
    nonce[nl] = 0;
    memcpy(salt, s + 3, sl);
    salt[sl] = 0;
    unsigned iter = (unsigned)strtoul(it + 3, NULL, 10);
    if (iter == 0 || iter > 1000000)
        return -1;

    int mech = chosen_mech(c);
    size_t hl;
    const EVP_MD *md = mech_md(mech, &hl);
    struct user_key *k = &G.keys[c->idx - G.first];
    if (!k->valid || k->iter != iter || k->mech != mech || strcmp(k->salt, salt) != 0) {
        unsigned char rawsalt[96];
        long rsl = b64_decode(salt, strlen(salt), rawsalt, sizeof(rawsalt));
        if (rsl <= 0)
            return -1;
        if (PKCS5_PBKDF2_HMAC(G.password, (int)strlen(G.password), rawsalt, (int)rsl, (int)iter, md, (int)hl,
                              k->salted) != 1)
            return -1;
        mk_strlcpy(k->salt, salt, sizeof(k->salt));
        k->iter = iter;
        k->mech = mech;
        k->valid = k->fresh = true;
    }
    unsigned char ckey[32], skey[32], stored[32], csig[32], proof[32];
    unsigned int ol;
    HMAC(md, k->salted, (int)hl, (const unsigned char *)"Client Key", 10, ckey, &ol);
    HMAC(md, k->salted, (int)hl, (const unsigned char *)"Server Key", 10, skey, &ol);
    EVP_Digest(ckey, hl, stored, &ol, md, NULL);
    char cfwp[300];
    snprintf(cfwp, sizeof(cfwp), "c=biws,r=%s", nonce);
    struct buf am;
    buf_init(&am);
    buf_printf(&am, "%s,%s,%s", c->scram_first_bare, sfirst, cfwp);
    HMAC(md, stored, (int)hl, (unsigned char *)am.data, am.len, csig, &ol);
    HMAC(md, skey, (int)hl, (unsigned char *)am.data, am.len, c->server_sig, &ol);
    c->server_sig_len = hl;
    buf_release(&am);
    for (size_t i = 0; i < hl; i++)
        proof[i] = ckey[i] ^ csig[i];
    char pb64[64], final[400], fb64[600];
    b64_encode(proof, hl, pb64, sizeof(pb64));
    int fl = snprintf(final, sizeof(final), "%s,p=%s", cfwp, pb64);
    b64_encode((unsigned char *)final, (size_t)fl, fb64, sizeof(fb64));
    char msg[700];
    int ml = snprintf(msg, sizeof(msg), "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>", fb64);
    client_write(c, msg, (size_t)ml);
    c->state = CS_SUCCESS;
    return 0;
}

/* Checks server-final-message "v=..." against the expected signature. */
static bool scram_verify(const struct client *c, const char *succ_b64)
{
    unsigned char sf[200];
    long n = b64_decode(succ_b64, strlen(succ_b64), sf, sizeof(sf) - 1);
    if (n <= 2)
        return false;
    sf[n] = 0;
    if (sf[0] != 'v' || sf[1] != '=')
        return false;
    unsigned char sig[64];
    long sl = b64_decode((char *)sf + 2, (size_t)n - 2, sig, sizeof(sig));
    return sl == (long)c->server_sig_len && memcmp(sig, c->server_sig, c->server_sig_len) == 0;
}

/* ---- key cache ----------------------------------------------------------------- */

/* First 8 bytes of SHA-256(password), in hex: tells cache lines of another password apart. */
static void password_tag(char out[17])
{
    unsigned char d[32];
    unsigned int dl;
    EVP_Digest(G.password, strlen(G.password), d, &dl, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void keycache_load(void)
{
    if (G.keycache == NULL)
        return;
    FILE *f = fopen(G.keycache, "r");
    if (f == NULL)
        return;
    char line[512], name[128], salt[128], hex[80], tag[32], mytag[17];
    unsigned iter;
    int mech;
    size_t plen = strlen(G.prefix);
    password_tag(mytag);
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%127s %127s %u %d %31s %79s", name, salt, &iter, &mech, tag, hex) != 6)
            continue;
        if (strncmp(name, G.prefix, plen) != 0 || strcmp(tag, mytag) != 0)
            continue;
        int idx = atoi(name + plen);
        if (idx < G.first || idx >= G.first + G.users || strlen(salt) >= sizeof(G.keys[0].salt))
            continue;
        struct user_key *k = &G.keys[idx - G.first];
        size_t hl = strlen(hex) / 2;
        if (hl > sizeof(k->salted))
            continue;
        for (size_t i = 0; i < hl; i++)
            sscanf(hex + 2 * i, "%2hhx", &k->salted[i]);
        mk_strlcpy(k->salt, salt, sizeof(k->salt));
        k->iter = iter;
        k->mech = mech;
        k->valid = true;
    }
    fclose(f);
}

static void keycache_save(void)
{
    if (G.keycache == NULL)
        return;
    FILE *f = fopen(G.keycache, "a");
    if (f == NULL)
        return;
    char tag[17];
    password_tag(tag);
    for (int i = 0; i < G.users; i++) {
        struct user_key *k = &G.keys[i];
        if (!k->fresh)
            continue;
        size_t hl = k->mech == MECH_SCRAM256 ? 32 : 20;
        fprintf(f, "%s%d %s %u %d %s ", G.prefix, G.first + i, k->salt, k->iter, k->mech, tag);
        for (size_t j = 0; j < hl; j++)
            fprintf(f, "%02x", k->salted[j]);
        fputc('\n', f);
    }
    fclose(f);
}

/* ---- I/O ------------------------------------------------------------------------- */

static void set_events(struct client *c, int ev)
{
    if (c->events == ev)
        return;
    ev_io_stop(G.loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    c->events = ev;
    if (ev)
        ev_io_start(G.loop, &c->io);
}

/* Queues bytes for c; they go out at the end of this loop iteration. */
static void client_write(struct client *c, const char *s, size_t n)
{
    buf_append(&c->out, s, n);
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = G.dirty;
        G.dirty = c;
    }
}

static void client_write_str(struct client *c, const char *s)
{
    client_write(c, s, strlen(s));
}

static void client_close(struct client *c)
{
    if (c->fd != -1) {
        ev_io_stop(G.loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
    c->events = 0;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    buf_release(&c->in);
    buf_release(&c->out);
    xfree(&c->scram_first_bare);
}

/* Writes what is queued; returns 0, or -1 when the connection failed (c is closed). */
static int client_flush(struct client *c)
{
    if (c->fd == -1 || c->state == CS_CONNECTING || c->state == CS_TLS)
        return 0;
    size_t off = 0;
    while (off < c->out.len) {
        if (c->ssl) {
            ERR_clear_error();
            int n = SSL_write(c->ssl, c->out.data + off, (int)(c->out.len - off));
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, n);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                    break;
                client_fail(c, "TLS write failed");
                return -1;
            }
            off += (size_t)n;
        } else {
            ssize_t n = write(c->fd, c->out.data + off, c->out.len - off);
            if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                client_fail(c, "write failed");
                return -1;
            }
            off += (size_t)n;
        }
    }
    buf_consume(&c->out, off);
    if (c->out.len == 0) {
        buf_release(&c->out);
        set_events(c, EV_READ);
    } else {
        set_events(c, EV_READ | EV_WRITE);
    }
    return 0;
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    while (G.dirty) {
        struct client *c = G.dirty;
        G.dirty = c->next_dirty;
        c->dirty = false;
        client_flush(c);
    }
}

static void stream_open(struct client *c)
{
    char hdr[300];
    int n = snprintf(hdr, sizeof(hdr),
                     "<?xml version='1.0'?><stream:stream to='%s' version='1.0' xml:lang='en' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
                     G.domain);
    client_write(c, hdr, (size_t)n);
    c->in_stream = false;
}

static void login_done(struct client *c)
{
    c->t_login = mk_mono_us();
    lat_add(&G.login_lat, c->t_login - c->t_start);
    G.inflight--;
    if (G.scenario == SC_REGISTER || G.scenario == SC_LOGIN) {
        client_write_str(c, "</stream:stream>");
        client_flush(c);
        client_close(c);
        c->state = CS_DONE;
        G.finished++;
    } else {
        if (G.carbons)
            client_write_str(c, "<iq type='set' id='carbons1'><enable xmlns='urn:xmpp:carbons:2'/></iq>");
        if (G.sm)
            client_write_str(c, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        if (G.priority != 0) {
            char pres[64];
            int n = snprintf(pres, sizeof pres, "<presence><priority>%d</priority></presence>", G.priority);
            client_write(c, pres, (size_t)n);
        } else {
            client_write_str(c, "<presence/>");
        }
        c->state = CS_ONLINE;
        G.online++;
    }
    launch_more();
}

/* Features after STARTTLS: registration (if asked) then SASL. */
static void auth_or_register(struct client *c)
{
    if (G.do_register && !c->registered) {
        char user[64], msg[512];
        user_name(c->idx, user, sizeof(user));
        int n = snprintf(msg, sizeof(msg),
                         "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>%s</username>"
                         "<password>%s</password></query></iq>",
                         user, G.password);
        client_write(c, msg, (size_t)n);
        c->state = CS_REGISTER;
        return;
    }
    int offered = c->mechs & 0xff;
    int mech = MECH_NONE;
    if (G.mech_pref != MECH_NONE && (offered & (1 << G.mech_pref)))
        mech = G.mech_pref;
    else if (offered & (1 << MECH_SCRAM1))
        mech = MECH_SCRAM1;
    else if (offered & (1 << MECH_SCRAM256))
        mech = MECH_SCRAM256;
    else if (offered & (1 << MECH_PLAIN))
        mech = MECH_PLAIN;
    if (mech == MECH_NONE) {
        client_fail(c, "no usable SASL mechanism offered");
        return;
    }
    send_auth(c, mech);
}

static void on_message(struct client *c, const char *el)
{
    const char *b = strstr(el, "<body>");
    if (b == NULL)
        return;
    int step;
    long long t;
    unsigned n;
    if (sscanf(b + 6, "s=%d t=%lld n=%u", &step, &t, &n) != 3)
        return;
    if (step != G.step) {
        G.step_late_other++;
        return;
    }
    /* An error answer carries the message back: it was not delivered. */
    const char *gt = strchr(el, '>');
    const char *ty = strstr(el, "type='error'");
    if (ty == NULL)
        ty = strstr(el, "type=\"error\"");
    if (ty != NULL && gt != NULL && ty < gt) {
        G.step_errors++;
        return;
    }
    if (G.scenario == SC_MUC) {
        if ((size_t)n >= G.copies_cap) {
            size_t nc = G.copies_cap ? G.copies_cap : 4096;
            while ((size_t)n >= nc)
                nc *= 2;
            G.copies = xrealloc(G.copies, nc * sizeof(*G.copies));
            memset(G.copies + G.copies_cap, 0, (nc - G.copies_cap) * sizeof(*G.copies));
            G.copies_cap = nc;
        }
        int64_t lat = mk_mono_us() - t;
        G.step_copies++;
        lat_add(&G.chat_lat, lat);
        if (++G.copies[n] == (uint16_t)G.joined) {
            G.step_complete++;
            G.step_recv++;
            lat_add(&G.last_lat, lat);
        }
        return;
    }
    if ((size_t)n / 8 >= G.seen_bytes) {
        size_t nb = G.seen_bytes ? G.seen_bytes : 4096;
        while ((size_t)n / 8 >= nb)
            nb *= 2;
        G.seen = xrealloc(G.seen, nb);
        memset(G.seen + G.seen_bytes, 0, nb - G.seen_bytes);
        G.seen_bytes = nb;
    }
    if (G.seen[n / 8] & (1u << (n % 8))) {
        G.step_dups++;
        return;
    }
    G.seen[n / 8] |= (unsigned char)(1u << (n % 8));
    G.step_recv++;
    int64_t now = mk_mono_us();
    lat_add(&G.chat_lat, now - t);
    if (G.lat_log != NULL)
        fprintf(G.lat_log, "%d %lld %lld %u\n", step, t, (long long)(now - t), n);
}

/* One complete element el (NUL-terminated) arrived on c. */
static void on_element(struct client *c, char *el, bool header)
{
    char tmp[512];
    if (header) {
        c->in_stream = true;
        return;
    }
    if (strncmp(el, "<stream:error", 13) == 0 || strncmp(el, "</stream:stream", 15) == 0) {
        char sample[120];
        mk_sanitize(sample, sizeof(sample), el, strlen(el) > 28 ? 28 : strlen(el));
        snprintf(tmp, sizeof(tmp), "stream closed by server in state %d: %s", c->state, sample);
        client_fail(c, tmp);
        return;
    }
    switch (c->state) {
    case CS_STREAM1:
        if (strncmp(el, "<stream:features", 16) != 0)
            return;
        if (strstr(el, "urn:ietf:params:xml:ns:xmpp-tls") == NULL) {
            client_fail(c, "server offers no STARTTLS");
            return;
        }
        client_write_str(c, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        c->state = CS_PROCEED;
        return;
    case CS_PROCEED:
        if (strncmp(el, "<proceed", 8) != 0) {
            client_fail(c, "STARTTLS refused");
            return;
        }
        c->ssl = SSL_new(G.ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        SSL_set_tlsext_host_name(c->ssl, G.domain);
        c->state = CS_TLS;
        return;
    case CS_FEATURES2:
        if (strncmp(el, "<stream:features", 16) != 0)
            return;
        c->mechs = 0;
        if (strstr(el, ">PLAIN<"))
            c->mechs |= 1 << MECH_PLAIN;
        if (strstr(el, ">SCRAM-SHA-1<"))
            c->mechs |= 1 << MECH_SCRAM1;
        if (strstr(el, ">SCRAM-SHA-256<"))
            c->mechs |= 1 << MECH_SCRAM256;
        auth_or_register(c);
        return;
    case CS_REGISTER:
        if (strncmp(el, "<iq", 3) != 0)
            return;
        if (el_attr_is(el, "type", "result") || strstr(el, "<conflict")) {
            c->registered = true;
            auth_or_register(c);
        } else if ((strstr(el, "type='wait'") || strstr(el, "type=\"wait\"")) && c->reg_waits < 1000) {
            /* RFC 6120 8.3.2: 'wait' means try again later; the server's hashing pool was full. */
            c->reg_waits++;
            auth_or_register(c);
        } else {
            mk_sanitize(tmp, sizeof(tmp), el, strlen(el) > 100 ? 100 : strlen(el));
            char why[600];
            snprintf(why, sizeof(why), "registration refused: %s", tmp);
            client_fail(c, why);
        }
        return;
    case CS_CHALLENGE: {
        if (strncmp(el, "<challenge", 10) != 0 || el_text(el, "challenge", tmp, sizeof(tmp)) <= 0 ||
            scram_answer(c, tmp) == -1)
            client_fail(c, "SASL challenge refused or malformed");
        return;
    }
    case CS_SUCCESS:
        if (strncmp(el, "<success", 8) != 0) {
            client_fail(c, "SASL authentication failed");
            return;
        }
        if (chosen_mech(c) != MECH_PLAIN) {
            if (el_text(el, "success", tmp, sizeof(tmp)) <= 0 || !scram_verify(c, tmp)) {
                client_fail(c, "SCRAM server signature does not match");
                return;
            }
        }
        xfree(&c->scram_first_bare);
        stream_open(c);
        c->state = CS_FEATURES3;
        return;
    case CS_FEATURES3: {
        if (strncmp(el, "<stream:features", 16) != 0)
            return;
        const char *sess = strstr(el, "urn:ietf:params:xml:ns:xmpp-session");
        if (sess) {
            /* RFC 3921 session establishment, unless the server marks it optional */
            const char *close = strstr(sess, "</session>");
            const char *opt = strstr(sess, "<optional");
            c->need_session = !(opt && close && opt < close);
        }
        char msg[256];
        int n = snprintf(msg, sizeof(msg),
                         "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                         "<resource>%s</resource></bind></iq>",
                         G.resource);
        client_write(c, msg, (size_t)n);
        c->state = CS_BIND;
        return;
    }
    case CS_BIND:
        if (strncmp(el, "<iq", 3) != 0)
            return;
        if (!el_attr_is(el, "type", "result")) {
            client_fail(c, "bind refused");
            return;
        }
        if (c->need_session) {
            client_write_str(c, "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
            c->state = CS_SESSION;
            return;
        }
        login_done(c);
        return;
    case CS_SESSION:
        if (strncmp(el, "<iq", 3) != 0)
            return;
        if (!el_attr_is(el, "type", "result")) {
            client_fail(c, "session refused");
            return;
        }
        login_done(c);
        return;
    case CS_ONLINE:
        if (G.sm) {
            /* XEP-0198: count every stanza, answer the server's <r/> with the count. */
            if (strncmp(el, "<message", 8) == 0 || strncmp(el, "<iq", 3) == 0 || strncmp(el, "<presence", 9) == 0) {
                c->sm_h++;
            } else if (strncmp(el, "<r ", 3) == 0 || strncmp(el, "<r/", 3) == 0) {
                char a[80];
                int n = snprintf(a, sizeof a, "<a xmlns='urn:xmpp:sm:3' h='%u'/>", c->sm_h);
                client_write(c, a, (size_t)n);
                return;
            }
        }
        if (strncmp(el, "<message", 8) == 0) {
            on_message(c, el);
        } else if (G.scenario == SC_MUC && strncmp(el, "<presence", 9) == 0) {
            /* every occupant gets every occupant's presence once: the join is over, with
             * its broadcasts, at joined^2 presences */
            const char *from = strstr(el, " from='");
            if (from == NULL || strncmp(from + 7, G.room, strlen(G.room)) != 0 || from[7 + strlen(G.room)] != '/')
                return;
            if (++G.muc_presences == (uint64_t)G.online * (uint64_t)G.online && G.joined == G.online)
                chat_begin();
            if (strstr(el, "<status code='110'/>") == NULL || strstr(el, "type='unavailable'") != NULL)
                return;
            if (++G.joined == 1) {
                /* the room exists (client 0 made it): every other user joins */
                for (int i = 1; i < G.users; i++)
                    if (G.clients[i].state == CS_ONLINE)
                        muc_join(&G.clients[i]);
            }
            if (G.joined == G.online && G.muc_presences == (uint64_t)G.online * (uint64_t)G.online)
                chat_begin();
        } else if (strncmp(el, "<iq", 3) == 0 && el_attr_is(el, "type", "get")) {
            /* answer server pings (XEP-0199) so that no server drops an idle client */
            char id[128] = "";
            const char *p = strstr(el, " id=");
            if (p && (p[4] == '\'' || p[4] == '"')) {
                const char *e = strchr(p + 5, p[4]);
                if (e && (size_t)(e - (p + 5)) < sizeof(id)) {
                    memcpy(id, p + 5, (size_t)(e - (p + 5)));
                    id[e - (p + 5)] = 0;
                }
            }
            char from[256] = "";
            p = strstr(el, " from=");
            if (p && (p[6] == '\'' || p[6] == '"')) {
                const char *e = strchr(p + 7, p[6]);
                if (e && (size_t)(e - (p + 7)) < sizeof(from)) {
                    memcpy(from, p + 7, (size_t)(e - (p + 7)));
                    from[e - (p + 7)] = 0;
                }
            }
            char msg[512];
            int n = from[0] ? snprintf(msg, sizeof(msg), "<iq type='result' id='%s' to='%s'/>", id, from)
                            : snprintf(msg, sizeof(msg), "<iq type='result' id='%s'/>", id);
            client_write(c, msg, (size_t)n);
        }
        return;
    default:
        return;
    }
}

/* Cuts c->in into elements and handles each. Returns -1 when c was closed. */
static int client_parse(struct client *c)
{
    size_t off = 0;
    while (off < c->in.len && c->fd != -1) {
        bool header;
        bool want_header = !c->in_stream;
        long n = scan_element(c->in.data + off, c->in.len - off, want_header, &header);
        if (n == 0)
            break;
        if (n < 0) {
            client_fail(c, "server sent bytes that are not XML");
            return -1;
        }
        char *el = c->in.data + off;
        while (*el == ' ' || *el == '\n' || *el == '\r' || *el == '\t')
            el++;
        char *end = c->in.data + off + n;
        char saved = *end;
        *end = 0;
        off += (size_t)n;
        bool decl = el[0] == '<' && el[1] == '?';
        enum cstate before = c->state;
        if (!decl)
            on_element(c, el, header);
        if (c->fd == -1)
            return -1;
        *end = saved;
        if (before == CS_PROCEED && c->state == CS_TLS) {
            off = c->in.len;    /* nothing may follow <proceed/> in clear */
            break;
        }
    }
    buf_consume(&c->in, off);
    if (c->in.len == 0)
        buf_release(&c->in);
    return 0;
}

static void tls_handshake(struct client *c)
{
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        c->state = CS_FEATURES2;
        stream_open(c);
        client_flush(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        set_events(c, EV_READ);
    else if (e == SSL_ERROR_WANT_WRITE)
        set_events(c, EV_READ | EV_WRITE);
    else
        client_fail(c, "TLS handshake failed");
}

static void client_read(struct client *c)
{
    char chunk[16384];
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, chunk, sizeof(chunk));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    break;
                if (e == SSL_ERROR_WANT_WRITE) {
                    set_events(c, EV_READ | EV_WRITE);
                    break;
                }
                client_fail(c, e == SSL_ERROR_ZERO_RETURN ? "server closed TLS" : "TLS read failed");
                return;
            }
            n = r;
        } else {
            n = read(c->fd, chunk, sizeof(chunk));
            if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                client_fail(c, "read failed");
                return;
            }
            if (n == 0) {
                client_fail(c, "server closed the connection");
                return;
            }
        }
        buf_append(&c->in, chunk, (size_t)n);
        if (client_parse(c) == -1)
            return;
        if (c->state == CS_TLS) {
            tls_handshake(c);
            return;
        }
        /* drained (epoll is level-triggered: no read for the EAGAIN) */
        if (c->ssl ? !SSL_has_pending(c->ssl) : (size_t)n < sizeof(chunk))
            break;
    }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct client *c = w->data;
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0) {
            errno = err;
            client_fail(c, "connect failed");
            return;
        }
        c->state = CS_STREAM1;
        stream_open(c);
        client_flush(c);
        return;
    }
    if (c->state == CS_TLS) {
        tls_handshake(c);
        if (c->state == CS_TLS || c->fd == -1)
            return;
    }
    if (revents & EV_WRITE) {
        if (client_flush(c) == -1)
            return;
    }
    if (revents & EV_READ)
        client_read(c);
}

/* ---- lifecycle ----------------------------------------------------------------- */

static void client_fail(struct client *c, const char *why)
{
    bool logging_in = c->state != CS_ONLINE && c->state != CS_DONE;
    int e = errno;
    client_close(c);
    if (logging_in && c->retries < 3 && (c->state == CS_CONNECTING || c->state == CS_STREAM1)) {
        /* a refused or reset connect under a full accept queue: try again */
        c->retries++;
        client_launch(c);
        return;
    }
    if (G.failed < 5 || G.last_fail[0] == 0) {
        fprintf(stderr, "loadgen: %s%d: %s (errno %d)\n", G.prefix, c->idx, why, e);
    }
    snprintf(G.last_fail, sizeof(G.last_fail), "%s", why);
    if (c->state == CS_ONLINE)
        G.online--;
    else if (logging_in)
        G.inflight--;
    c->state = CS_DONE;
    G.failed++;
    launch_more();
}

static void client_launch(struct client *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd == -1) {
        c->retries = 99;
        client_fail(c, "socket failed");
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (G.has_source) {
        /* The port is picked at connect(), per destination (IP_BIND_ADDRESS_NO_PORT): a bind
         * with port 0 would reserve one of the source address's ports for any destination. */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(c->fd, (const struct sockaddr *)&G.source, sizeof(G.source)) == -1) {
            c->retries = 99;
            client_fail(c, "bind to --source failed");
            return;
        }
    }
    c->state = CS_CONNECTING;
    c->in_stream = false;
    c->registered = false;
    c->need_session = false;
    c->io.data = c;
    ev_io_init(&c->io, io_cb, c->fd, EV_WRITE);
    c->events = EV_WRITE;
    /* With a second server, each chat pair has one account on each (two data centers). */
    const struct sockaddr_in *to = G.has_addr2 && ((c->idx - G.first) & 1) ? &G.addr2 : &G.addr;
    if (connect(c->fd, (const struct sockaddr *)to, sizeof(*to)) == -1 && errno != EINPROGRESS) {
        client_fail(c, "connect failed");
        return;
    }
    ev_io_start(G.loop, &c->io);
}

static void launch_more(void)
{
    while (G.inflight < G.concurrency && G.launched < G.users) {
        struct client *c = &G.clients[G.launched++];
        G.inflight++;
        c->t_start = mk_mono_us();
        client_launch(c);
    }
    if (G.launched == G.users && G.inflight == 0 && G.t_all_online == 0) {
        G.t_all_online = mk_mono_us();
        if (G.scenario == SC_CHAT)
            chat_begin();
        else if (G.scenario == SC_MUC)
            muc_begin();
        else if (G.scenario == SC_IDLE) {
            double secs = (double)(G.t_all_online - G.t0) / 1e6;
            lat_sort(&G.login_lat);
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            printf("{\"scenario\":\"idle\",\"sessions\":%d,\"failed\":%d,\"connect_seconds\":%.2f,"
                   "\"logins_per_s\":%.1f,\"login_p99_ms\":%.1f,\"gen_cpu_s\":%.2f}\n",
                   G.online, G.failed, secs, G.online / secs, lat_q_ms(&G.login_lat, 0.99), cpu_s(&ru));
            fflush(stdout);
            ev_timer_stop(G.loop, &G.phase_w);
            ev_timer_set(&G.phase_w, G.hold_s, 0);
            ev_timer_start(G.loop, &G.phase_w);
        } else {
            G.quit = true;
            ev_break(G.loop, EVBREAK_ALL);
        }
    }
}

/* Clients stuck in login past the timeout fail, so a run always ends. */
static void sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    int64_t now = mk_mono_us();
    for (int i = 0; i < G.launched; i++) {
        struct client *c = &G.clients[i];
        if (c->state != CS_ONLINE && c->state != CS_DONE && now - c->t_start > 30000000) {
            c->retries = 99;
            client_fail(c, "login timed out");
        }
    }
}

/* ---- chat ----------------------------------------------------------------------- */

static void step_report(bool last)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    lat_sort(&G.chat_lat);
    if (G.scenario == SC_MUC) {
        lat_sort(&G.last_lat);
        size_t within = 0;
        for (size_t i = 0; i < G.last_lat.n && G.last_lat.v[i] <= 1000000; i++)
            within++;
        double frac = G.step_sent ? (double)within / (double)G.step_sent : 0;
        double secs = (double)(G.step_send_end - G.step_t0) / 1e6;
        printf("{\"event\":\"step\",\"rate\":%.0f,\"seconds\":%.2f,\"occupants\":%d,\"sent\":%llu,"
               "\"delivered_to_all\":%llu,\"delivered_to_all_per_s\":%.1f,\"copies\":%llu,\"errors\":%llu,"
               "\"within_1s\":%.4f,\"last_p50_ms\":%.2f,\"last_p99_ms\":%.2f,\"last_max_ms\":%.2f,"
               "\"copy_p50_ms\":%.2f,\"copy_p99_ms\":%.2f,\"gen_cpu_s\":%.2f}\n",
               G.rate, secs, G.joined, (unsigned long long)G.step_sent, (unsigned long long)G.step_complete,
               secs > 0 ? (double)G.step_complete / secs : 0.0, (unsigned long long)G.step_copies,
               (unsigned long long)G.step_errors, frac, lat_q_ms(&G.last_lat, 0.5), lat_q_ms(&G.last_lat, 0.99),
               G.last_lat.n ? G.last_lat.v[G.last_lat.n - 1] / 1000.0 : 0.0, lat_q_ms(&G.chat_lat, 0.5),
               lat_q_ms(&G.chat_lat, 0.99), cpu_s(&ru) - cpu_s(&G.ru_step0));
        fflush(stdout);
        if (frac >= G.stop_below && G.rate > G.best_rate)
            G.best_rate = G.rate;
        if (frac < G.stop_below || last || G.online < G.nsenders)
            G.step = G.nrates;
        return;
    }
    size_t within = 0;
    for (size_t i = 0; i < G.chat_lat.n && G.chat_lat.v[i] <= 1000000; i++)
        within++;
    double frac = G.step_sent ? (double)within / (double)G.step_sent : 0;
    double secs = (double)(G.step_send_end - G.step_t0) / 1e6;
    printf("{\"event\":\"step\",\"rate\":%.0f,\"seconds\":%.2f,\"sent\":%llu,\"delivered\":%llu,\"within_1s\":%.4f,"
           "\"duplicates\":%llu,\"errors\":%llu,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"p999_ms\":%.2f,\"max_ms\":%.2f,\"online\":%d,\"gen_cpu_s\":%.2f}\n",
           G.rate, secs, (unsigned long long)G.step_sent, (unsigned long long)G.step_recv, frac,
           (unsigned long long)G.step_dups, (unsigned long long)G.step_errors,
           lat_q_ms(&G.chat_lat, 0.5), lat_q_ms(&G.chat_lat, 0.99), lat_q_ms(&G.chat_lat, 0.999),
           G.chat_lat.n ? G.chat_lat.v[G.chat_lat.n - 1] / 1000.0 : 0.0, G.online, cpu_s(&ru) - cpu_s(&G.ru_step0));
    fflush(stdout);
    if (frac >= G.stop_below && G.rate > G.best_rate)
        G.best_rate = G.rate;
    if (frac < G.stop_below || last || G.online < G.nsenders) {
        G.step = G.nrates;   /* no more steps */
    }
}

static void step_start(void)
{
    G.rate = G.rates[G.step];
    G.step_sent = G.step_recv = G.step_dups = G.step_errors = 0;
    G.step_copies = G.step_complete = 0;
    G.chat_lat.n = 0;
    G.last_lat.n = 0;
    G.step_t0 = mk_mono_us();
    G.sending = true;
    getrusage(RUSAGE_SELF, &G.ru_step0);
    printf("{\"event\":\"step_start\",\"rate\":%.0f}\n", G.rate);
    fflush(stdout);
    ev_timer_set(&G.rate_w, 0.002, 0.002);
    ev_timer_start(G.loop, &G.rate_w);
    ev_timer_stop(G.loop, &G.phase_w);
    ev_timer_set(&G.phase_w, G.duration_s, 0);
    ev_timer_start(G.loop, &G.phase_w);
}

static void chat_summary(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"scenario\":\"%s\",\"users\":%d,\"online\":%d,\"failed\":%d,\"login_seconds\":%.2f,"
           "\"max_sustained_msgs_per_s\":%.0f,\"gen_cpu_s\":%.2f}\n",
           G.scenario == SC_MUC ? "muc" : "chat", G.users, G.online, G.failed, (double)(G.t_all_online - G.t0) / 1e6,
           G.best_rate, cpu_s(&ru));
    fflush(stdout);
}

static void rate_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    if (!G.sending || G.nsenders == 0)
        return;
    int64_t now = mk_mono_us();
    uint64_t due = (uint64_t)((double)(now - G.step_t0) * G.rate / 1e6);
    char msg[1024], user[64];
    int offline = 0;   /* senders skipped in a row: all of them means nobody can send */
    while (G.step_sent < due && offline < G.nsenders) {
        struct client *c = &G.clients[G.senders[G.rr]];
        G.rr = (G.rr + 1) % G.nsenders;
        if (c->state != CS_ONLINE) {
            offline++;
            continue;
        }
        offline = 0;
        ++G.msg_seq;
        int n;
        if (G.scenario == SC_MUC) {
            n = snprintf(msg, sizeof(msg), "<message to='%s' type='groupchat' id='m%u'><body>s=%d t=%lld n=%u ",
                         G.room, G.msg_seq, G.step, (long long)now, G.msg_seq);
        } else {
            int peer = (c->idx - G.first) ^ 1;
            user_name(G.first + peer, user, sizeof(user));
            n = snprintf(msg, sizeof(msg), "<message to='%s@%s' type='chat' id='m%u'><body>s=%d t=%lld n=%u ", user,
                         G.domain, G.msg_seq, G.step, (long long)now, G.msg_seq);
        }
        for (int i = 0; i < G.body_bytes && n < (int)sizeof(msg) - 40; i++)
            msg[n++] = 'a' + (char)(i % 26);
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, "</body></message>");
        client_write(c, msg, (size_t)n);
        G.step_sent++;
    }
}

/* Phase timer: the end of a chat step's sending, of its drain, or of the idle hold. */
static void phase_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    if (G.scenario == SC_IDLE) {
        G.quit = true;
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    if (G.step < 0) {
        G.step = 0;
        step_start();
        return;
    }
    if (G.sending) {
        G.sending = false;
        G.step_send_end = mk_mono_us();
        ev_timer_stop(loop, &G.rate_w);
        ev_timer_set(w, 0.05, 0);
        ev_timer_start(loop, w);
        return;
    }
    /* draining: wait until every message arrived or drain_s has passed */
    if (G.step_recv < G.step_sent && (double)(mk_mono_us() - G.step_send_end) / 1e6 < G.drain_s) {
        ev_timer_set(w, 0.05, 0);
        ev_timer_start(loop, w);
        return;
    }
    step_report(G.step + 1 >= G.nrates);
    G.step++;
    if (G.step >= G.nrates) {
        chat_summary();
        G.quit = true;
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    step_start();
}

/* muc: c sends its join presence (nick = its user name, no history). */
static void muc_join(struct client *c)
{
    char msg[512], user[64];
    user_name(c->idx, user, sizeof(user));
    int n = snprintf(msg, sizeof(msg),
                     "<presence to='%s/%s'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>"
                     "</presence>",
                     G.room, user);
    client_write(c, msg, (size_t)n);
}

/* muc: every user is online; the first one makes the room, the others join on its
 * self-presence (on_element), and chat_begin runs when every one has joined. */
static void muc_begin(void)
{
    printf("{\"event\":\"online\",\"online\":%d,\"failed\":%d,\"login_seconds\":%.2f}\n", G.online, G.failed,
           (double)(G.t_all_online - G.t0) / 1e6);
    fflush(stdout);
    if (G.clients[0].state != CS_ONLINE) {
        fprintf(stderr, "loadgen: the room's first user is not online\n");
        G.quit = true;
        ev_break(G.loop, EVBREAK_ALL);
        return;
    }
    muc_join(&G.clients[0]);
}

static void chat_begin(void)
{
    G.senders = xcalloc((size_t)G.users, sizeof(int));
    if (G.scenario == SC_MUC) {
        for (int i = 0; i < G.users && G.nsenders < G.muc_senders; i++)
            if (G.clients[i].state == CS_ONLINE)
                G.senders[G.nsenders++] = i;
        printf("{\"event\":\"joined\",\"occupants\":%d,\"join_seconds\":%.2f}\n", G.joined,
               (double)(mk_mono_us() - G.t_all_online) / 1e6);
    }
    for (int i = 0; G.scenario == SC_CHAT && i + 1 < G.users; i += 2) {
        if (G.clients[i].state == CS_ONLINE && G.clients[i + 1].state == CS_ONLINE) {
            G.senders[G.nsenders++] = i;
            G.senders[G.nsenders++] = i + 1;
        }
    }
    if (G.scenario == SC_CHAT)
        printf("{\"event\":\"online\",\"online\":%d,\"failed\":%d,\"login_seconds\":%.2f}\n", G.online,
               G.failed, (double)(G.t_all_online - G.t0) / 1e6);
    fflush(stdout);
    G.step = 0;
    /* let presence broadcasts and the servers' post-login work settle first */
    G.sending = false;
    G.step_sent = G.step_recv = G.step_dups = G.step_errors = 0;
    ev_timer_stop(G.loop, &G.phase_w);
    G.step = -1;
    ev_timer_set(&G.phase_w, 1.0, 0);
    ev_timer_start(G.loop, &G.phase_w);
}

/* ---- main ----------------------------------------------------------------------- */

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    G.quit = true;
    ev_break(loop, EVBREAK_ALL);
}

static void run_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    fprintf(stderr, "loadgen: run time limit reached\n");
    if (G.scenario == SC_MUC)
        fprintf(stderr, "loadgen: %d of %d joined, %llu room presences received\n", G.joined, G.online,
                (unsigned long long)G.muc_presences);
    ev_break(loop, EVBREAK_ALL);
}

/*
 * The generator's own handshake cost. OpenSSL 3.0 decodes the public key of every
 * certificate it parses through its provider decoder framework: a decoder context
 * built and torn down per handshake (OSSL_DECODER_CTX_new_for_pkey), about 120 µs of a
 * 410 µs client handshake measured in-process, on the same 2 cores the server runs
 * on. X509_PUBKEY decoding takes OpenSSL's built-in (legacy) EC decoder instead when
 * an ENGINE claims the EC key type; this engine claims it and hands back OpenSSL's
 * own built-in EC method, so the key is the same and the server's CertificateVerify
 * signature is still checked (OpenSSL always checks it). Same for every server
 * measured; --provider-keys turns it off to compare.
 */
static int legacy_ec_pmeths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid)
{
    static const int types[] = {EVP_PKEY_EC};
    if (pmeth == NULL) {
        *nids = types;
        return (int)MK_ARRAY_LEN(types);
    }
    *pmeth = nid == EVP_PKEY_EC ? (EVP_PKEY_METHOD *)EVP_PKEY_meth_find(EVP_PKEY_EC) : NULL;
    return *pmeth != NULL;
}

static void legacy_ec_keys(void)
{
    ENGINE *e = ENGINE_new();
    if (e == NULL || !ENGINE_set_id(e, "loadgen-builtin-ec") || !ENGINE_set_name(e, "built-in EC key decoding") ||
        !ENGINE_set_pkey_meths(e, legacy_ec_pmeths) || !ENGINE_register_pkey_meths(e)) {
        fprintf(stderr, "loadgen: built-in EC key decoding not available, using providers\n");
        ERR_clear_error();
    }
    /* kept for the life of the process: the registration table does not own it */
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --scenario register|login|idle|chat|muc [options]\n"
            "  --host A --port P       server (loopback only; default 127.0.0.1:5222)\n"
            "  --host2 A --port2 P     a second server for the odd-numbered accounts, so that every\n"
            "                          chat pair spans both (two data centers); loopback or 10/8\n"
            "                          (the GD test bed's network namespaces on this machine)\n"
            "  --source A              local address each client binds to before connect, a loopback\n"
            "                          address such as 127.0.0.3: one (source, server) address pair\n"
            "                          gives ~28,000 ephemeral ports, so several generators each take\n"
            "                          their own (default: chosen by the kernel, 127.0.0.1)\n"
            "  --domain D              XMPP domain (localhost)\n"
            "  --users N --first K     accounts <prefix>K .. <prefix>K+N-1 (1000, 0)\n"
            "  --prefix S --password S account names and password (bench, bench)\n"
            "  --mech M                SCRAM-SHA-1 | SCRAM-SHA-256 | PLAIN (default: best offered)\n"
            "  --register              XEP-0077 register each account before logging in\n"
            "  --concurrency C         logins in flight at once (200)\n"
            "  --keycache FILE         SCRAM salted-password cache, read and appended\n"
            "  --hold S                idle: seconds to stay connected after the figures (60)\n"
            "  --rates R1,R2,..        chat: offered total msgs/s per step (1000,2000,4000)\n"
            "  --duration S --drain S  chat: seconds per step (10), max drain after it (3)\n"
            "  --stop-below F          chat: stop after a step with fewer delivered within 1 s (0.99)\n"
            "  --body-bytes B          chat: padding in each body (64)\n"
            "  --room JID --senders K  muc: the room every user joins, and how many of them send\n"
            "                          the groupchat messages (1)\n"
            "  --timeout S             hard limit on the whole run (900)\n"
            "  --resource R            resource to bind (lg)\n"
            "  --carbons               enable XEP-0280 carbons before the initial presence\n"
            "  --sm                    enable XEP-0198 stream management (resume='true') before the\n"
            "                          initial presence, and answer the server's <r/>\n"
            "  --priority N            priority of the initial presence (none); e.g. an idle\n"
            "                          second resource per account at -1 with --carbons gets\n"
            "                          the carbon copies of another run's chat\n"
            "  --lat-log FILE          chat: one line per message received to FILE: step, send\n"
            "                          time and latency in us (CLOCK_MONOTONIC, the clock of\n"
            "                          perf record -k CLOCK_MONOTONIC), message number\n"
            "  --provider-keys         decode certificate keys through OpenSSL 3 providers\n"
            "                          (slower; default: the built-in EC decoder)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    G.domain = "localhost";
    G.prefix = "bench";
    G.password = "bench";
    G.resource = "lg";
    G.users = 1000;
    G.concurrency = 200;
    G.hold_s = 60;
    G.duration_s = 10;
    G.drain_s = 3;
    G.stop_below = 0.99;
    G.body_bytes = 64;
    G.timeout_s = 900;
    G.scenario = SC_LOGIN;
    G.rates[0] = 1000, G.rates[1] = 2000, G.rates[2] = 4000;
    G.nrates = 3;
    const char *host = "127.0.0.1";
    int port = 5222;
    const char *host2 = NULL;
    int port2 = 0;
    const char *source = NULL;
    bool provider_keys = false;

    static const struct option opts[] = {
        {"scenario", 1, 0, 's'}, {"host", 1, 0, 'H'},        {"port", 1, 0, 'p'},     {"domain", 1, 0, 'd'},
        {"users", 1, 0, 'n'},    {"first", 1, 0, 'f'},       {"prefix", 1, 0, 'P'},   {"password", 1, 0, 'w'},
        {"mech", 1, 0, 'm'},     {"register", 0, 0, 'r'},    {"concurrency", 1, 0, 'c'}, {"keycache", 1, 0, 'k'},
        {"hold", 1, 0, 'h'},     {"rates", 1, 0, 'R'},       {"duration", 1, 0, 'T'}, {"drain", 1, 0, 'D'},
        {"stop-below", 1, 0, 'S'}, {"body-bytes", 1, 0, 'b'}, {"timeout", 1, 0, 'x'},
        {"provider-keys", 0, 0, 'K'}, {"host2", 1, 0, '2'}, {"port2", 1, 0, '3'},
        {"resource", 1, 0, 'e'}, {"carbons", 0, 0, 'C'}, {"sm", 0, 0, 'M'}, {"priority", 1, 0, 'y'},
        {"source", 1, 0, 'o'},   {"room", 1, 0, 'j'},       {"senders", 1, 0, 'q'},
        {"lat-log", 1, 0, 'l'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's':
            if (strcmp(optarg, "register") == 0) G.scenario = SC_REGISTER, G.do_register = true;
            else if (strcmp(optarg, "login") == 0) G.scenario = SC_LOGIN;
            else if (strcmp(optarg, "idle") == 0) G.scenario = SC_IDLE;
            else if (strcmp(optarg, "chat") == 0) G.scenario = SC_CHAT;
            else if (strcmp(optarg, "muc") == 0) G.scenario = SC_MUC;
            else usage();
            break;
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'd': G.domain = optarg; break;
        case 'n': G.users = atoi(optarg); break;
        case 'f': G.first = atoi(optarg); break;
        case 'P': G.prefix = optarg; break;
        case 'w': G.password = optarg; break;
        case 'm':
            if (strcmp(optarg, "SCRAM-SHA-1") == 0) G.mech_pref = MECH_SCRAM1;
            else if (strcmp(optarg, "SCRAM-SHA-256") == 0) G.mech_pref = MECH_SCRAM256;
            else if (strcmp(optarg, "PLAIN") == 0) G.mech_pref = MECH_PLAIN;
            else usage();
            break;
        case 'r': G.do_register = true; break;
        case 'c': G.concurrency = atoi(optarg); break;
        case 'k': G.keycache = optarg; break;
        case 'h': G.hold_s = atof(optarg); break;
        case 'R': {
            G.nrates = 0;
            for (char *tok = strtok(optarg, ","); tok && G.nrates < (int)MK_ARRAY_LEN(G.rates); tok = strtok(NULL, ","))
                G.rates[G.nrates++] = atof(tok);
            break;
        }
        case 'T': G.duration_s = atof(optarg); break;
        case 'D': G.drain_s = atof(optarg); break;
        case 'S': G.stop_below = atof(optarg); break;
        case 'b': G.body_bytes = atoi(optarg); break;
        case 'x': G.timeout_s = atof(optarg); break;
        case 'K': provider_keys = true; break;
        case '2': host2 = optarg; break;
        case '3': port2 = atoi(optarg); break;
        case 'e': G.resource = optarg; break;
        case 'C': G.carbons = true; break;
        case 'M': G.sm = true; break;
        case 'y': G.priority = atoi(optarg); break;
        case 'o': source = optarg; break;
        case 'j': G.room = optarg; break;
        case 'q': G.muc_senders = atoi(optarg); break;
        case 'l':
            if ((G.lat_log = fopen(optarg, "w")) == NULL) {
                fprintf(stderr, "loadgen: %s: %s\n", optarg, strerror(errno));
                exit(2);
            }
            break;
        default: usage();
        }
    }
    if (G.users <= 0 || G.concurrency <= 0 || G.nrates == 0 || port <= 0 || port > 65535)
        usage();
    if (G.scenario == SC_MUC && (G.room == NULL || strchr(G.room, '@') == NULL || strchr(G.room, '/') != NULL ||
                                 strchr(G.room, '\'') != NULL || G.users > 65535)) {
        fprintf(stderr, "loadgen: --scenario muc needs --room name@service (a bare JID) and at most 65535 users\n");
        return 2;
    }
    if (G.muc_senders <= 0)
        G.muc_senders = 1;
    G.addr.sin_family = AF_INET;
    G.addr.sin_port = htons((uint16_t)port);
    uint32_t net = 0;
    if (inet_pton(AF_INET, host, &G.addr.sin_addr) != 1 ||
        ((net = ntohl(G.addr.sin_addr.s_addr) >> 24) != 127 && !(host2 != NULL && net == 10))) {
        fprintf(stderr, "loadgen: --host must be a loopback IPv4 address (or 10/8 with --host2)\n");
        return 2;
    }
    if (host2 != NULL || port2 != 0) {
        G.addr2.sin_family = AF_INET;
        G.addr2.sin_port = htons((uint16_t)(port2 > 0 ? port2 : port));
        if (host2 == NULL || port2 < 0 || port2 > 65535 || inet_pton(AF_INET, host2, &G.addr2.sin_addr) != 1 ||
            ((net = ntohl(G.addr2.sin_addr.s_addr) >> 24) != 127 && net != 10)) {
            fprintf(stderr, "loadgen: --host2 must be a loopback or 10/8 IPv4 address\n");
            return 2;
        }
        G.has_addr2 = true;
    }
    if (source != NULL) {
        G.source.sin_family = AF_INET;
        G.source.sin_port = 0;
        if (inet_pton(AF_INET, source, &G.source.sin_addr) != 1 || ntohl(G.source.sin_addr.s_addr) >> 24 != 127) {
            fprintf(stderr, "loadgen: --source must be a loopback IPv4 address (127.x.x.x), not '%s'\n", source);
            return 2;
        }
        G.has_source = true;
    }

    /* one descriptor per client: raise the soft limit to the hard one */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)G.users + 64 > rl.rlim_cur) {
            fprintf(stderr, "loadgen: %d users need more descriptors than the limit (%llu)\n", G.users,
                    (unsigned long long)rl.rlim_cur);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);

    if (!provider_keys)
        legacy_ec_keys();
    G.ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(G.ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(G.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(G.ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(G.ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_read_ahead(G.ctx, 1);   /* one read(2) per readable socket, not two per record */

    G.clients = xcalloc((size_t)G.users, sizeof(*G.clients));
    G.keys = xcalloc((size_t)G.users, sizeof(*G.keys));
    for (int i = 0; i < G.users; i++) {
        G.clients[i].fd = -1;
        G.clients[i].idx = G.first + i;
        G.clients[i].state = CS_DONE;
        buf_init(&G.clients[i].in);
        buf_init(&G.clients[i].out);
    }
    keycache_load();

    G.loop = ev_default_loop(EVFLAG_AUTO);
    ev_prepare_init(&G.flush_w, flush_cb);
    ev_prepare_start(G.loop, &G.flush_w);
    ev_timer_init(&G.sweep_w, sweep_cb, 1.0, 1.0);
    ev_timer_start(G.loop, &G.sweep_w);
    ev_timer_init(&G.rate_w, rate_cb, 0.002, 0.002);
    ev_timer_init(&G.phase_w, phase_cb, 1, 0);
    ev_signal_init(&G.sigint_w, stop_cb, SIGINT);
    ev_signal_start(G.loop, &G.sigint_w);
    ev_signal_init(&G.sigterm_w, stop_cb, SIGTERM);
    ev_signal_start(G.loop, &G.sigterm_w);
    ev_timer run_w;
    ev_timer_init(&run_w, run_timeout_cb, G.timeout_s, 0);
    ev_timer_start(G.loop, &run_w);

    G.t0 = mk_mono_us();
    launch_more();
    ev_run(G.loop, 0);

    if (G.scenario == SC_LOGIN || G.scenario == SC_REGISTER) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double secs = (double)((G.t_all_online ? G.t_all_online : mk_mono_us()) - G.t0) / 1e6;
        lat_sort(&G.login_lat);
        printf("{\"scenario\":\"%s\",\"logins\":%zu,\"failed\":%d,\"seconds\":%.2f,\"logins_per_s\":%.1f,"
               "\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,\"concurrency\":%d,\"gen_cpu_s\":%.2f}\n",
               G.scenario == SC_LOGIN ? "login" : "register", G.login_lat.n, G.failed, secs,
               (double)G.login_lat.n / secs, lat_q_ms(&G.login_lat, 0.5), lat_q_ms(&G.login_lat, 0.99),
               G.login_lat.n ? G.login_lat.v[G.login_lat.n - 1] / 1000.0 : 0.0, G.concurrency, cpu_s(&ru));
    } else if ((G.scenario == SC_CHAT || G.scenario == SC_MUC) && G.step < G.nrates && G.t_all_online) {
        chat_summary();   /* stopped early (signal or time limit) */
    }
    fflush(stdout);
    if (G.lat_log != NULL)
        fclose(G.lat_log);
    keycache_save();
    for (int i = 0; i < G.users; i++)
        client_close(&G.clients[i]);
    SSL_CTX_free(G.ctx);
    free(G.clients);
    free(G.keys);
    free(G.senders);
    free(G.login_lat.v);
    free(G.chat_lat.v);
    free(G.seen);
    free(G.copies);
    free(G.last_lat.v);
    return G.failed && G.online == 0 && G.login_lat.n == 0 ? 1 : 0;
}

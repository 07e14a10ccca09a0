/* c2s/conn.c - client connections: accept, TLS, reads into the stream parser, one write per loop iteration, reaping. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "authlimit.h"
#include "c2s.h"
#include "component.h"
#include "log.h"
#include "sm.h"
#include "util.h"
#include "ws.h"

#define READ_CHUNK        16384
#define READ_BUDGET       (4 * READ_CHUNK)   /* per connection per loop iteration: fairness */
#define ACCEPT_BUDGET     256
#define CLOSE_LINGER_S    2.0                 /* a closing stream gets this long to flush */
#define HANDSHAKE_TIMEOUT 15.0
#define DEFERRED_FLUSH_S  0.05                /* input the parser kept back is parsed this late at most */
/* TLS handshake steps per loop iteration. A step that signs costs about a
 * millisecond: a login storm must not make one iteration run dozens of them while
 * everything else waits. A connection over the budget stops watching its socket and
 * joins a FIFO queue (c2s->hs_head); each iteration serves the queue's head first, and
 * while the queue is not empty a newly ready handshake joins its tail, so handshakes
 * are served in the order they became ready. (Leaving the socket ready for the next
 * iteration instead made epoll hand back every waiting socket each iteration, and
 * libev's pending order served the newest first: CPU per login +30%, p99 x5.) */
#define HANDSHAKES_PER_ITERATION 4

static uint64_t conn_serial;

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_flush(struct conn *c);

/* Closed, or detached (its socket is gone, its session waits for resumption). */
static bool conn_gone(const struct conn *c)
{
    return c->closed || c->detached;
}

static void conn_set_events(struct conn *c)
{
    if (conn_gone(c))
        return;
    int ev = 0;
    if (!c->io_paused && !c->bind_wait && !c->in_hs_queue)
        ev |= EV_READ;
    if (c->want_write && !c->in_hs_queue)
        ev |= EV_WRITE;
    if (ev == (c->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&c->io))
        return;
    ev_io_stop(c->c2s->loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev != 0)
        ev_io_start(c->c2s->loop, &c->io);
}

static void conn_free(struct conn *c)
{
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    if (c->fd != -1)
        close(c->fd);
    xml_parser_free(&c->parser);
    component_free(c);
    buf_release(&c->out);
    scram_server_free(&c->scram);
    if (c->ws != NULL) {
        ws_parser_release(&c->ws->in);
        ws_out_release(&c->ws->out);
        buf_release(&c->ws->head);
        buf_release(&c->ws->xml);
        free(c->ws);
    }
    stream_bind_release(c);
    free(c->domain);
    free(c->user);
    free(c->sasl_mech);
    free(c);
}

void conn_resume_input(struct conn *c)
{
    if (conn_gone(c) || c->bind_wait)
        return;
    conn_set_events(c);
    ev_feed_event(c->c2s->loop, &c->io, EV_READ);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    /* Never frees: a closed connection is freed by the reaper once nothing holds it. */
    c->refs--;
}

static void flush_enqueue(struct conn *c);

/* The socket is gone but the session is resumable (XEP-0198): the connection keeps only
 * its session until <resume/> moves it to a new connection (c2s/sm.c) or the timer
 * ends it. The parser is freed at the flush, never here: a parser callback may be on
 * the stack. */
static void conn_detach(struct conn *c, const char *reason)
{
    struct c2s *s = c->c2s;
    log_info("conn_detached", "conn=%llu ip=%s reason=%s", (unsigned long long)c->serial, c->ip, reason);
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->timer);
    if (c->parser != NULL)
        xml_parser_stop(c->parser);
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->tls = false;
    if (c->fd != -1) {
        close(c->fd);
        c->fd = -1;
    }
    buf_release(&c->out);
    c->want_write = c->io_paused = c->starttls_pending = false;
    c->detached = true;
    flush_enqueue(c);
    ev_timer_set(&c->timer, sm_resume_timeout(c->sess), 0.);
    ev_timer_start(s->loop, &c->timer);
}

void conn_close(struct conn *c, const char *reason)
{
    if (c->closed)
        return;
    struct c2s *s = c->c2s;
    if (c->sess != NULL && !c->detached && c->state == CONN_STATE_SESSION && sm_detach(c->sess)) {
        conn_detach(c, reason);
        return;
    }
    c->closed = true;
    log_debug("conn_close", "conn=%llu ip=%s reason=%s", (unsigned long long)c->serial, c->ip, reason);
    if (c->sess != NULL) {
        struct session *sess = c->sess;
        c->sess = NULL;
        session_end(sess, reason);
    }
    if (c->comp != NULL)
        component_end(c, reason);
    if (c->preauth_counted) {
        c->preauth_counted = false;
        authlimit_preauth_end(s->authlimit, c->ip);
    }
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->timer);
    stream_bind_release(c);
    if (c->parser != NULL)
        xml_parser_stop(c->parser);
    /* Unlink now; the memory goes in the reap watcher, after every callback that
     * might still hold c on its stack has returned. */
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->nconns--;
    c->reap_next = s->reap_list;
    s->reap_list = c;
    metric_set(s->m_conns, NULL, (double)s->nconns);
}

/* Frees closed connections nothing holds any more. Runs from the prepare watcher,
 * before the loop blocks: never inside a callback that might have c on its stack. */
static void reap(struct c2s *s)
{
    struct conn **pp = &s->reap_list;
    while (*pp != NULL) {
        struct conn *c = *pp;
        if (c->refs == 0 && !c->in_flush_list && !c->in_deferred_list && !c->in_hs_queue) {
            *pp = c->reap_next;
            conn_free(c);
        } else {
            pp = &c->reap_next;
        }
    }
}

static void flush_enqueue(struct conn *c)
{
    if (!c->in_flush_list) {
        c->in_flush_list = true;
        c->flush_next = c->c2s->flush_list;
        c->c2s->flush_list = c;
    }
}

/* Output is accepted until the closing stream's last bytes are queued. */
static bool conn_writable(const struct conn *c)
{
    return !c->closed && !c->no_more_output && !c->out_full && !c->detached;
}

/* A client that does not read its output may not make the server hold it without
 * bound: once the socket has refused bytes (want_write) and more than
 * limits.max_output_bytes wait, further output is refused and, at this
 * iteration's flush, the stream ends with <resource-constraint/> (queued behind what
 * is pending, for a client that reads after all; the closing linger frees everything
 * if it does not). Ending it here could free the session under a caller that is
 * still using it. Checked after the append, so a single stanza is never cut: out
 * stays within the limit plus one stanza and the error. */
static void out_check(struct conn *c)
{
    if (!c->want_write || c->out.len <= c->c2s->cfg->limits.max_output_bytes || c->out_overflowed)
        return;   /* what one iteration queues for a socket that takes it is written at its end */
    c->out_full = c->out_overflowed = true;
    flush_enqueue(c);
    log_info("output_overflow", "conn=%llu ip=%s pending=%zu", (unsigned long long)c->serial, c->ip, c->out.len);
    metric_inc(c->c2s->m_output_overflow, NULL);
}

void conn_write_raw(struct conn *c, const void *p, size_t n)
{
    if (!conn_writable(c) || n == 0)
        return;
    if (c->ws != NULL) {
        /* RFC 7395: one text frame per top-level element; nothing before the upgrade. */
        if (!c->ws->upgraded)
            return;
        ws_out_write(&c->ws->out, p, n, &c->out);
    } else {
        buf_append(&c->out, p, n);
    }
    flush_enqueue(c);
    out_check(c);
}

void conn_write_nonza(struct conn *c, const char *s)
{
    conn_write_raw(c, s, strlen(s));
}

/* Every stanza for a bound session's client comes here (conn_send too): stream
 * management keeps a copy until the client acknowledges it, detached or not. */
void conn_write(struct conn *c, const void *p, size_t n)
{
    if (c->sess == NULL || c->closed || c->no_more_output || n == 0) {
        conn_write_raw(c, p, n);
        return;
    }
    struct session *sess = c->sess;
    conn_write_raw(c, p, n);
    if (sm_sent(sess, p, n))
        conn_write_nonza(c, "<r xmlns='" NS_SM "'/>");
}

void conn_write_str(struct conn *c, const char *s)
{
    conn_write(c, s, strlen(s));
}

void conn_send(struct conn *c, const struct xml_node *node)
{
    if (c->closed || c->no_more_output)
        return;
    if (c->ws != NULL || (c->sess != NULL && sm_active(c->sess))) {
        /* Through conn_write (WebSocket: framed there), which stream management watches: one more copy of the
         * bytes (stream management keeps one anyway). */
        struct buf b;
        buf_init(&b);
        xml_serialize(node, XML_NS_CLIENT, &b);
        conn_write(c, b.data, b.len);
        buf_release(&b);
        metric_inc(c->c2s->m_stanzas_out, node->name);
        return;
    }
    if (!conn_writable(c))
        return;
    xml_serialize(node, XML_NS_CLIENT, &c->out);
    flush_enqueue(c);
    metric_inc(c->c2s->m_stanzas_out, node->name);
    out_check(c);
}

static void start_closing(struct conn *c)
{
    if (c->detached) {
        /* No socket, nothing to flush: closed at this iteration's flush (not here: a
         * caller may be walking the connection list). */
        c->state = CONN_STATE_CLOSING;
        c->no_more_output = true;
        flush_enqueue(c);
        return;
    }
    c->state = CONN_STATE_CLOSING;
    c->no_more_output = true;
    flush_enqueue(c);
    if (c->parser != NULL)
        xml_parser_stop(c->parser);
    ev_timer_stop(c->c2s->loop, &c->timer);
    ev_timer_set(&c->timer, CLOSE_LINGER_S, 0.);
    ev_timer_start(c->c2s->loop, &c->timer);
}

static void write_stream_header(struct conn *c)
{
    char hdr[512];
    int n;
    if (c->comp != NULL)
        n = snprintf(hdr, sizeof hdr,
                     "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                     "xmlns:stream='http://etherx.jabber.org/streams' id='%s'>",
                     c->stream_id);
    else
        n = snprintf(hdr, sizeof hdr,
                     "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' id='%s' from='%s' version='1.0' xml:lang='en'>",
                     c->stream_id, c->domain ? c->domain : c->c2s->cfg->domains[0]);
    conn_write_raw(c, hdr, (size_t)n);
}

static void stream_error(struct conn *c, const char *condition, const char *content, const char *text,
                         const char *app);

void conn_stream_error(struct conn *c, const char *condition, const char *text)
{
    conn_stream_error_app(c, condition, text, NULL);
}

void conn_sm_overflow(struct conn *c)
{
    if (c->closed || c->out_overflowed)
        return;
    c->out_full = c->out_overflowed = c->sm_overflow = true;
    flush_enqueue(c);
}

void conn_stream_error_app(struct conn *c, const char *condition, const char *text, const char *app)
{
    stream_error(c, condition, NULL, text, app);
}

void conn_see_other_host(struct conn *c, const char *addr)
{
    stream_error(c, "see-other-host", addr, NULL, NULL);
}

/* The stream error of conn_stream_error_app; content (escaped here) goes inside the
 * condition element (RFC 6120 4.9.3.19's address), NULL for an empty one. */
static void stream_error(struct conn *c, const char *condition, const char *content, const char *text,
                         const char *app)
{
    if (c->closed || c->state == CONN_STATE_CLOSING)
        return;
    log_info("stream_error", "conn=%llu ip=%s condition=%s", (unsigned long long)c->serial, c->ip, condition);
    metric_inc(c->c2s->m_stream_errors, condition);
    if (c->stream_id[0] == '\0' || c->state == CONN_STATE_STREAM || c->state == CONN_STATE_TLS_ACCEPT) {
        /* No stream header sent yet on this stream: open one so the error is well-formed. */
        if (c->stream_id[0] == '\0')
            snprintf(c->stream_id, sizeof c->stream_id, "%016llx", (unsigned long long)c->serial);
        write_stream_header(c);
    }
    struct buf b;
    buf_init(&b);
    if (content != NULL) {
        buf_printf(&b, "<stream:error><%s xmlns='urn:ietf:params:xml:ns:xmpp-streams'>", condition);
        xml_escape(&b, content, strlen(content));
        buf_printf(&b, "</%s>", condition);
    } else {
        buf_printf(&b, "<stream:error><%s xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", condition);
    }
    if (text != NULL) {
        buf_append_str(&b, "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>");
        xml_escape(&b, text, strlen(text));
        buf_append_str(&b, "</text>");
    }
    if (app != NULL)
        buf_append_str(&b, app);
    buf_append_str(&b, "</stream:error></stream:stream>");
    conn_write_raw(c, b.data, b.len);
    buf_release(&b);
    if (c->sess != NULL) {
        struct session *sess = c->sess;
        c->sess = NULL;
        session_end(sess, condition);
    }
    if (c->comp != NULL)
        component_end(c, condition);
    start_closing(c);
}

void conn_close_stream(struct conn *c)
{
    if (c->closed || c->state == CONN_STATE_CLOSING)
        return;
    conn_write_nonza(c, "</stream:stream>");
    if (c->sess != NULL) {
        struct session *sess = c->sess;
        c->sess = NULL;
        session_end(sess, "closed");
    }
    if (c->comp != NULL)
        component_end(c, "closed");
    start_closing(c);
}

/* TLS --------------------------------------------------------------------------------- */

static void tls_log_error(struct conn *c, const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    log_info("tls_error", "conn=%llu ip=%s during=%s reason=\"%s\"", (unsigned long long)c->serial, c->ip, what, buf);
}

static int conn_tls_begin(struct conn *c)
{
    c->ssl = SSL_new(c->c2s->tls_ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        tls_log_error(c, "setup");
        return -1;
    }
    SSL_set_accept_state(c->ssl);
    ev_timer_stop(c->c2s->loop, &c->timer);
    ev_timer_set(&c->timer, HANDSHAKE_TIMEOUT, 0.);
    ev_timer_start(c->c2s->loop, &c->timer);
    return 0;
}

/* Drives the handshake. Returns 1 when done, 0 when it needs more I/O, -1 on failure. */
static int conn_tls_handshake(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->tls = true;
        metric_inc(c->c2s->m_tls_handshakes, "ok");
        ev_timer_stop(c->c2s->loop, &c->timer);
        ev_timer_set(&c->timer, (double)c->c2s->cfg->limits.auth_timeout_sec, 0.);
        ev_timer_start(c->c2s->loop, &c->timer);
        c->state = CONN_STATE_STREAM;
        if (c->parser != NULL)
            xml_parser_reset(c->parser);
        c->stream_id[0] = '\0';
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        c->want_write = false;
        conn_set_events(c);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->want_write = true;
        conn_set_events(c);
        return 0;
    }
    metric_inc(c->c2s->m_tls_handshakes, "failed");
    tls_log_error(c, "handshake");
    return -1;
}

/* Writing ------------------------------------------------------------------------------ */

static void conn_flush(struct conn *c)
{
    while (c->out.len > 0) {
        ssize_t n;
        if (c->ssl != NULL && c->tls) {
            ERR_clear_error();
            int r = SSL_write(c->ssl, c->out.data, (int)(c->out.len > 1 << 30 ? 1 << 30 : c->out.len));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    c->want_write = true;
                    conn_set_events(c);
                    out_check(c);
                    return;
                }
                tls_log_error(c, "write");
                conn_close(c, "tls_write_error");
                return;
            }
            n = r;
        } else {
            n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
            if (n == -1) {
                if (errno == EAGAIN || errno == EINTR) {
                    c->want_write = true;
                    conn_set_events(c);
                    out_check(c);
                    return;
                }
                conn_close(c, "write_error");
                return;
            }
        }
        buf_consume(&c->out, (size_t)n);
    }
    /* Everything written: give the buffer back, an idle connection holds none. */
    buf_release(&c->out);
    if (c->want_write) {
        c->want_write = false;
        conn_set_events(c);
    }
    if (c->starttls_pending) {
        c->starttls_pending = false;
        c->state = CONN_STATE_STARTTLS;
        if (conn_tls_begin(c) == -1)
            conn_close(c, "tls_setup_failed");
        return;
    }
    if (c->state == CONN_STATE_CLOSING) {
        if (c->ssl != NULL && c->tls)
            SSL_shutdown(c->ssl);
        conn_close(c, "stream_closed");
    }
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct c2s *s = w->data;
    while (s->flush_list != NULL) {
        struct conn *c = s->flush_list;
        s->flush_list = c->flush_next;
        c->flush_next = NULL;
        c->in_flush_list = false;
        if (c->closed)
            continue;   /* the reaper frees it */
        if (c->out_full) {
            c->out_full = false;
            conn_stream_error(c, "resource-constraint", c->sm_overflow ? "too many stanzas the client has not acknowledged"
                                                                       : "too much output the client has not read");
        }
        if (c->closed)
            continue;
        if (c->detached) {
            if (c->state == CONN_STATE_CLOSING)
                conn_close(c, "stream_closed");
            else
                xml_parser_free(&c->parser);   /* outside every parser callback here */
            continue;
        }
        if (!c->want_write)
            conn_flush(c);
    }
    reap(s);
}

/* Reading ------------------------------------------------------------------------------ */

static bool shaper_allows(struct conn *c, size_t n)
{
    unsigned rate = c->c2s->cfg->limits.shaper_bytes_per_sec;
    if (rate == 0)
        return true;
    int64_t now = mk_mono_us();
    if (now - c->shaper_start_us >= 1000000) {
        c->shaper_start_us = now;
        c->shaper_bytes = 0;
    }
    c->shaper_bytes += n;
    if (c->shaper_bytes <= rate)
        return true;
    /* Over the rate: stop reading until the second is over. */
    c->io_paused = true;
    conn_set_events(c);
    ev_timer_stop(c->c2s->loop, &c->timer);
    double wait = (double)(1000000 - (now - c->shaper_start_us)) / 1e6;
    ev_timer_set(&c->timer, wait > 0.001 ? wait : 0.001, 0.);
    ev_timer_start(c->c2s->loop, &c->timer);
    return false;
}

/* After input went to the parser (rc: what xml_parser_feed or _flush said; data: the
 * bytes, for the log's sample): a parse error ends the stream, so does too much
 * input before authentication; input the parser kept back gets parsed shortly. */
static void conn_parsed(struct conn *c, int rc, const char *data, size_t n)
{
    if (rc == -1 && !c->closed && c->state != CONN_STATE_CLOSING) {
        enum xml_error_kind k = xml_parser_error(c->parser);
        char sample[200];
        mk_sanitize(sample, sizeof sample, data, n < 40 ? n : 40);
        log_info("bad_xml", "conn=%llu ip=%s reason=\"%s\" sample=\"%s\"", (unsigned long long)c->serial, c->ip,
                 xml_parser_error_text(c->parser), sample);
        conn_stream_error(c, xml_error_condition(k), NULL);
    }
    /* Before authentication a client may not make the server hold much. */
    if (!c->closed && c->user == NULL && c->state != CONN_STATE_CLOSING &&
        xml_parser_pending(c->parser) > c->c2s->cfg->limits.max_preauth_bytes)
        conn_stream_error(c, "policy-violation", "too much data before authentication");
    if (!c->closed && !c->in_deferred_list && xml_parser_deferred(c->parser) > 0) {
        struct c2s *s = c->c2s;
        c->in_deferred_list = true;
        c->deferred_next = s->deferred_list;
        s->deferred_list = c;
        if (!ev_is_active(&s->deferred_w)) {
            ev_timer_set(&s->deferred_w, DEFERRED_FLUSH_S, 0.);
            ev_timer_start(s->loop, &s->deferred_w);
        }
    }
}

/* A huge token arriving in small pieces is parsed in pieces as long as itself
 * (xml_parser_feed): what is left when the client pauses is parsed here. */
static void deferred_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct c2s *s = w->data;
    struct conn *list = s->deferred_list;
    s->deferred_list = NULL;
    while (list != NULL) {
        struct conn *c = list;
        list = c->deferred_next;
        c->deferred_next = NULL;
        c->in_deferred_list = false;
        if (conn_gone(c) || c->state == CONN_STATE_CLOSING)
            continue;
        conn_ref(c);
        conn_parsed(c, xml_parser_flush(c->parser), "", 0);
        conn_unref(c);
    }
}

/* WebSocket ---------------------------------------------------------------------------- */

/* Ends a WebSocket connection for a protocol error: a Close frame saying why, then
 * the usual closing (the socket closes once it is written). */
static void ws_fail_close(struct conn *c, unsigned status, const char *why)
{
    log_info("ws_error", "conn=%llu ip=%s status=%u reason=\"%s\"", (unsigned long long)c->serial, c->ip, status, why);
    metric_inc(c->c2s->m_stream_errors, "websocket");
    if (!c->ws->out.closed && conn_writable(c)) {
        c->ws->out.closed = true;
        ws_close_append(&c->out, status, why);
        flush_enqueue(c);
    }
    c->ws->out.closed = true;
    if (c->sess != NULL) {
        struct session *sess = c->sess;
        c->sess = NULL;
        session_end(sess, "websocket_error");
    }
    if (c->comp != NULL)
        component_end(c, "websocket_error");
    start_closing(c);
}

/* One complete text message or control frame from the client. Returns non-zero to
 * stop reading this connection's frames. */
static int ws_on_frame(void *ud, enum ws_opcode op, const char *data, size_t n, unsigned code)
{
    struct conn *c = ud;
    (void)code;
    if (conn_gone(c) || c->state == CONN_STATE_CLOSING)
        return 1;
    struct ws_link *w = c->ws;
    switch (op) {
    case WS_OP_PING:
        if (conn_writable(c)) {
            ws_frame_append(&c->out, WS_OP_PONG, data, n);
            flush_enqueue(c);
        }
        return 0;
    case WS_OP_CLOSE:
        /* The peer is done: our Close answers its, and the stream ends. */
        if (!w->out.closed && conn_writable(c)) {
            w->out.closed = true;
            ws_close_append(&c->out, WS_STATUS_NORMAL, NULL);
            flush_enqueue(c);
        }
        w->out.closed = true;
        conn_close_stream(c);
        return 1;
    case WS_OP_TEXT: {
        char err[160];
        w->xml.len = 0;
        if (ws_in_translate(data, n, &w->xml, err, sizeof err) == -1) {
            conn_stream_error(c, "bad-format", err);
            return 1;
        }
        conn_parsed(c, xml_parser_feed(c->parser, w->xml.len ? w->xml.data : "", w->xml.len), data, n);
        if (!conn_gone(c) && c->state != CONN_STATE_CLOSING && xml_parser_deferred(c->parser) > 0)
            conn_parsed(c, xml_parser_flush(c->parser), "", 0);
        if (conn_gone(c) || c->state == CONN_STATE_CLOSING)
            return 1;
        if (xml_parser_pending(c->parser) > 0) {
            conn_stream_error(c, "bad-format", "a WebSocket message must hold complete XML elements (RFC 7395)");
            return 1;
        }
        if (w->xml.cap > 4096)
            buf_release(&w->xml);
        return 0;
    }
    default:
        return 0;   /* pong: nothing to do */
    }
}

static void ws_frames(struct conn *c, const char *data, size_t n)
{
    struct ws_parser *in = &c->ws->in;
    size_t lim = c->c2s->cfg->limits.max_stanza_bytes;
    if (c->user == NULL && c->c2s->cfg->limits.max_preauth_bytes < lim)
        lim = c->c2s->cfg->limits.max_preauth_bytes;   /* before authentication a client may not make us hold much */
    in->max_message = lim;
    if (ws_parser_feed(in, data, n, ws_on_frame, c) == -1 && !conn_gone(c) && c->state != CONN_STATE_CLOSING)
        ws_fail_close(c, in->status, in->err);
}

/* Bytes from a WebSocket client: the HTTP request head first (the upgrade, or
 * host-meta, or an error answered and closed), then frames. */
static void ws_input(struct conn *c, const char *data, size_t n)
{
    struct ws_link *w = c->ws;
    if (w->upgraded) {
        ws_frames(c, data, n);
        return;
    }
    size_t from = w->head.len > 3 ? w->head.len - 3 : 0;
    buf_append(&w->head, data, n);
    const char *end = NULL;
    for (size_t i = from; i + 4 <= w->head.len; i++)
        if (memcmp(w->head.data + i, "\r\n\r\n", 4) == 0) {
            end = w->head.data + i + 4;
            break;
        }
    if (end == NULL) {
        if (w->head.len > WS_MAX_REQUEST) {
            static const char r[] = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                                    "Connection: close\r\n\r\n";
            buf_append(&c->out, r, sizeof r - 1);
            flush_enqueue(c);
            log_info("ws_http_refused", "conn=%llu ip=%s reason=\"request head too long\"", (unsigned long long)c->serial, c->ip);
            start_closing(c);
        }
        return;
    }
    size_t hl = (size_t)(end - w->head.data);
    enum ws_http_result r = ws_http_answer(w->head.data, hl, w->tls, c->c2s->cfg->domains[0],
                                           (const char *const *)c->c2s->cfg->c2s_ws.origins,
                                           c->c2s->cfg->c2s_ws.norigins, &c->out);
    flush_enqueue(c);
    if (r != WS_HTTP_UPGRADE) {
        char line[80];
        const char *eol = memchr(c->out.data, '\r', c->out.len);
        mk_sanitize(line, sizeof line, c->out.data, eol != NULL ? (size_t)(eol - c->out.data) : 0);
        log_info("ws_http", "conn=%llu ip=%s status=\"%s\"", (unsigned long long)c->serial, c->ip, line);
        start_closing(c);
        return;
    }
    w->upgraded = true;
    struct buf rest;
    buf_init(&rest);
    buf_append(&rest, end, w->head.len - hl);
    buf_release(&w->head);
    if (rest.len > 0)
        ws_frames(c, rest.data, rest.len);
    buf_release(&rest);
}

static void conn_read(struct conn *c)
{
    char data[READ_CHUNK];
    size_t budget = READ_BUDGET;
    while (!conn_gone(c) && c->state != CONN_STATE_CLOSING && budget > 0 && !c->io_paused && !c->bind_wait) {
        ssize_t n;
        if (c->ssl != NULL) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, data, sizeof data);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->want_write = true;
                    conn_set_events(c);
                    return;
                }
                if (e == SSL_ERROR_ZERO_RETURN) {
                    conn_close(c, "tls_closed");
                    return;
                }
                tls_log_error(c, "read");
                conn_close(c, e == SSL_ERROR_SYSCALL ? "peer_closed" : "tls_read_error");
                return;
            }
            n = r;
        } else {
            n = recv(c->fd, data, sizeof data, 0);
            if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                conn_close(c, "read_error");
                return;
            }
            if (n == 0) {
                conn_close(c, "peer_closed");
                return;
            }
        }
        budget -= (size_t)n < budget ? (size_t)n : budget;
        c->last_read_us = mk_mono_us();
        conn_ref(c);
        if (c->ws != NULL)
            ws_input(c, data, (size_t)n);
        else
            conn_parsed(c, xml_parser_feed(c->parser, data, (size_t)n), data, (size_t)n);
        bool gone = conn_gone(c);
        conn_unref(c);
        if (gone)
            return;
        if (c->state == CONN_STATE_STARTTLS || c->starttls_pending)
            return;   /* the rest of the socket is TLS records: read them after the handshake */
        if (!shaper_allows(c, (size_t)n))
            return;
        /* The socket is drained when a read came back short (TLS: and OpenSSL holds
         * nothing more). Epoll is level-triggered: stop here rather than pay one
         * more read(2) for its EAGAIN; anything that arrives meanwhile wakes us. */
        if (c->ssl != NULL ? !SSL_has_pending(c->ssl) : (size_t)n < sizeof data)
            return;
    }
    if (budget == 0 && !conn_gone(c))
        ev_feed_event(c->c2s->loop, &c->io, EV_READ);   /* more may be buffered in TLS: come back */
}

/* Joins the handshake queue's tail; the socket is not watched until its turn. */
static void hs_enqueue(struct conn *c)
{
    struct c2s *s = c->c2s;
    c->in_hs_queue = true;
    c->hs_next = NULL;
    if (s->hs_tail != NULL)
        s->hs_tail->hs_next = c;
    else
        s->hs_head = c;
    s->hs_tail = c;
    conn_set_events(c);
    ev_idle_start(s->loop, &s->hs_idle_w);
}

static void conn_serve(struct conn *c, int revents);

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct conn *c = w->data;
    if (conn_gone(c) || c->in_hs_queue)
        return;
    if (c->ssl != NULL && !c->tls) {
        struct c2s *s = c->c2s;
        if (s->hs_head != NULL || s->handshakes >= HANDSHAKES_PER_ITERATION) {
            hs_enqueue(c);
            return;
        }
    }
    conn_serve(c, revents);
}

/* Runs first in every loop iteration (libev invokes check watchers before the
 * iteration's other callbacks): a new budget, spent on the oldest waiting handshakes. */
static void hs_check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    struct c2s *s = w->data;
    s->handshakes = 0;
    while (s->hs_head != NULL && s->handshakes < HANDSHAKES_PER_ITERATION) {
        struct conn *c = s->hs_head;
        s->hs_head = c->hs_next;
        if (s->hs_head == NULL)
            s->hs_tail = NULL;
        c->hs_next = NULL;
        c->in_hs_queue = false;
        if (c->closed)
            continue;   /* the reaper frees it */
        conn_set_events(c);
        conn_serve(c, EV_READ | (c->want_write ? EV_WRITE : 0));
    }
    if (s->hs_head == NULL)
        ev_idle_stop(loop, &s->hs_idle_w);
}

static void hs_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Nothing to do: being active is what keeps the poll from blocking. */
    (void)loop;
    (void)w;
    (void)revents;
}

static void conn_serve(struct conn *c, int revents)
{
    if (c->ssl != NULL && !c->tls) {
        c->c2s->handshakes++;
        int r = conn_tls_handshake(c);
        if (r == -1) {
            conn_close(c, "tls_handshake_failed");
            return;
        }
        if (r == 0)
            return;
        /* handshake done: a direct-TLS client or the STARTTLS client sends its stream header
         * next, often in the same segment as its Finished, which read-ahead may hold */
        if (SSL_has_pending(c->ssl))
            revents |= EV_READ;
    }
    if ((revents & EV_WRITE) && c->want_write) {
        c->want_write = false;
        conn_set_events(c);
        conn_flush(c);
        if (conn_gone(c))
            return;
    }
    if (revents & EV_READ)
        conn_read(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    if (c->closed)
        return;
    if (c->detached) {
        /* Not resumed in time: the session ends (stream management stores or bounces
         * what the client did not acknowledge). */
        conn_close(c, "resume_timeout");
        return;
    }
    if (c->io_paused) {
        c->io_paused = false;
        c->shaper_start_us = mk_mono_us();
        c->shaper_bytes = 0;
        conn_set_events(c);
        ev_timer_set(&c->timer, (double)c->c2s->cfg->limits.idle_timeout_sec, 0.);
        ev_timer_start(loop, &c->timer);
        ev_feed_event(loop, &c->io, EV_READ);
        return;
    }
    if (c->state == CONN_STATE_CLOSING) {
        conn_close(c, "close_timeout");
        return;
    }
    if (c->ssl != NULL && !c->tls) {
        conn_close(c, "tls_handshake_timeout");
        return;
    }
    if (c->user == NULL) {
        conn_stream_error(c, "connection-timeout", "authentication took too long");
        return;
    }
    /* Idle check without re-arming on every read (libev's recommended pattern). */
    double idle = (double)c->c2s->cfg->limits.idle_timeout_sec;
    double since = (double)(mk_mono_us() - c->last_read_us) / 1e6;
    if (since >= idle && c->comp != NULL) {
        /* A component is a trusted peer that may stay silent (many send no keepalive):
         * a whitespace keepalive instead, as Prosody does; a dead peer shows as a write
         * error, or its unread output reaches limits.max_output_bytes. */
        conn_write(c, " ", 1);
        ev_timer_set(&c->timer, idle, 0.);
        ev_timer_start(loop, &c->timer);
        return;
    }
    if (since >= idle && c->sess != NULL && c->state == CONN_STATE_SESSION && sm_detach(c->sess)) {
        /* A silent client with resumption on (XEP-0198): most likely its network is gone;
         * the session waits for <resume/> instead of ending. */
        conn_detach(c, "idle_timeout");
        return;
    }
    if (since >= idle) {
        conn_stream_error(c, "connection-timeout", "idle for too long");
        return;
    }
    ev_timer_set(&c->timer, idle - since + 0.01, 0.);
    ev_timer_start(loop, &c->timer);
}

/* Accepting ---------------------------------------------------------------------------- */

static void conn_accepted(struct c2s *s, int fd, const struct sockaddr_storage *sa, const struct listener *l)
{
    char ip[48] = "";
    if (sa->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    else if (sa->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    /* Clients only: components authenticate with their secret, on a listener of their own. */
    if (!l->component && !authlimit_preauth_begin(s->authlimit, ip)) {
        metric_inc(s->m_limit_refusals, "preauth_per_ip");
        log_info("preauth_limit", "ip=%s limit=%u", ip, s->cfg->limits.max_preauth_per_ip);
        close(fd);
        return;
    }
    bool direct_tls = l->direct_tls;
    struct conn *c = xcalloc(1, sizeof *c);
    c->preauth_counted = !l->component;
    c->c2s = s;
    c->fd = fd;
    c->serial = ++conn_serial;
    c->direct_tls = direct_tls;
    if (l->websocket) {
        c->ws = xcalloc(1, sizeof *c->ws);
        c->ws->tls = direct_tls;
        buf_init(&c->ws->head);
        buf_init(&c->ws->xml);
        ws_parser_init(&c->ws->in, s->cfg->limits.max_stanza_bytes);
        ws_out_init(&c->ws->out);
    }
    c->state = direct_tls ? CONN_STATE_TLS_ACCEPT : CONN_STATE_STREAM;
    c->last_read_us = mk_mono_us();
    buf_init(&c->out);
    memcpy(c->ip, ip, sizeof c->ip);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (l->component)
        component_attach(c);
    c->parser = xml_parser_new(&s->limits, l->component ? component_on_event : stream_on_event, c);
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_timer_init(&c->timer, conn_timer_cb, (double)s->cfg->limits.auth_timeout_sec, 0.);
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    metric_set(s->m_conns, NULL, (double)s->nconns);
    ev_io_start(s->loop, &c->io);
    ev_timer_start(s->loop, &c->timer);
    if (direct_tls && conn_tls_begin(c) == -1)
        conn_close(c, "tls_setup_failed");
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct listener *l = w->data;
    struct c2s *s = l->c2s;
    for (int i = 0; i < ACCEPT_BUDGET; i++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(l->fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EMFILE || errno == ENFILE)
                log_warn("accept_failed", "errno=%d reason=\"out of file descriptors\"", errno);
            return;
        }
        if (s->stopping) {
            close(fd);
            continue;
        }
        conn_accepted(s, fd, &sa, l);
    }
}

static int listen_on(struct listener *l, const char *host, int port, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "listener host %s is not an IPv4 address", host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Every c2s process listens on the same port; the kernel spreads connections. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1 || listen(fd, 4096) == -1) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    l->fd = fd;
    return 0;
}

int conn_listen(struct c2s *s, char *err, size_t errlen)
{
    const struct cfg *cfg = s->cfg;
    s->nlisteners = 0;
    s->listeners[0].fd = s->listeners[1].fd = s->listeners[2].fd = s->listeners[3].fd = -1;
    if (cfg->c2s.port > 0) {
        if (listen_on(&s->listeners[0], cfg->c2s.host, cfg->c2s.port, err, errlen) == -1)
            return -1;
        s->listeners[0].direct_tls = false;
        s->nlisteners++;
    }
    if (cfg->c2s_tls.port > 0) {
        if (listen_on(&s->listeners[1], cfg->c2s_tls.host, cfg->c2s_tls.port, err, errlen) == -1)
            return -1;
        s->listeners[1].direct_tls = true;
        s->nlisteners++;
    }
    if (cfg->component.port > 0) {
        /* XEP-0114: plain TCP (no TLS in that protocol); meant for a trusted network. */
        if (listen_on(&s->listeners[2], cfg->component.host, cfg->component.port, err, errlen) == -1)
            return -1;
        s->listeners[2].component = true;
        s->nlisteners++;
    }
    if (cfg->c2s_ws.port > 0) {
        /* RFC 7395 WebSocket and XEP-0156 host-meta; wss with the tls cert unless tls: false. */
        if (listen_on(&s->listeners[3], cfg->c2s_ws.host, cfg->c2s_ws.port, err, errlen) == -1)
            return -1;
        s->listeners[3].websocket = true;
        s->listeners[3].direct_tls = cfg->c2s_ws.tls;
        s->nlisteners++;
    }
    for (int i = 0; i < 4; i++) {
        struct listener *l = &s->listeners[i];
        if (l->fd == -1)
            continue;
        l->c2s = s;
        ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
        l->io.data = l;
        ev_io_start(s->loop, &l->io);
    }
    return 0;
}

void conn_stop_listening(struct c2s *s)
{
    for (int i = 0; i < 4; i++) {
        struct listener *l = &s->listeners[i];
        if (l->fd == -1)
            continue;
        ev_io_stop(s->loop, &l->io);
        close(l->fd);
        l->fd = -1;
    }
}

/* Every few seconds, connections silent for a while give their parser's memory back
 * (xml_parser_idle keeps only the stream's namespace context; the next bytes
 * re-create it). A sweep instead of a per-connection timer: one watcher for all. */
#define IDLE_SWEEP_S   5.0
#define IDLE_AFTER_US  (5LL * 1000000)

static void idle_sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct c2s *s = w->data;
    int64_t now = mk_mono_us();
    size_t released = 0;
    for (struct conn *c = s->conns; c != NULL; c = c->next)
        if (!conn_gone(c) && c->parser != NULL && now - c->last_read_us > IDLE_AFTER_US && xml_parser_idle(c->parser))
            released++;
    /* A parser's own pages go back to the kernel as it hibernates; what else the busy
     * spell left free in the heap (buffers, TLS records) goes back here. */
    if (released >= 64)
        malloc_trim(0);
    xml_trim_cache();
}

void conn_init_loop(struct c2s *s)
{
    ev_timer_init(&s->idle_sweep_w, idle_sweep_cb, IDLE_SWEEP_S, IDLE_SWEEP_S);
    s->idle_sweep_w.data = s;
    ev_timer_start(s->loop, &s->idle_sweep_w);
    ev_timer_init(&s->deferred_w, deferred_cb, DEFERRED_FLUSH_S, 0.);
    s->deferred_w.data = s;
    ev_prepare_init(&s->flush_w, flush_cb);
    s->flush_w.data = s;
    ev_prepare_start(s->loop, &s->flush_w);
    ev_check_init(&s->hs_check_w, hs_check_cb);
    s->hs_check_w.data = s;
    ev_check_start(s->loop, &s->hs_check_w);
    ev_idle_init(&s->hs_idle_w, hs_idle_cb);
    s->hs_idle_w.data = s;
}

/* pusher/sns.c - the "sns" backend: Amazon SNS Publish (query API, SigV4) of presence, chat and groupchat events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pusher.h"
#include "sns_wire.h"
#include "util.h"

/* One attempt in flight: what the HTTP callback needs. Listed in the backend's state so
 * that fini frees those whose callback will never come (the pool cancels them). */
struct sns_attempt {
    struct push_backend *backend;
    struct push_job *job;
    struct sns_attempt *prev, *next;
};

struct sns_state {
    struct sns_attempt *in_flight;
};

static void attempt_unlink(struct sns_state *st, struct sns_attempt *a)
{
    if (a->prev != NULL)
        a->prev->next = a->next;
    else
        st->in_flight = a->next;
    if (a->next != NULL)
        a->next->prev = a->prev;
}

static int sns_init(struct push_backend *b, char *err, size_t errlen)
{
    const struct cfg_push_backend *c = b->cfg;
    /* cfg refuses these already; a backend made another way must not sign with nothing. */
    if (c->sns_region == NULL || c->sns_account_id == NULL || c->sns_endpoint == NULL) {
        mk_errf(err, errlen, "backend %s: sns needs region, account_id and an endpoint.", c->name);
        return -1;
    }
    if (c->aws_access_key_id == NULL || *c->aws_access_key_id == '\0' || c->aws_secret_access_key == NULL ||
        *c->aws_secret_access_key == '\0') {
        mk_errf(err, errlen, "backend %s: sns needs an AWS access key id and secret access key.", c->name);
        return -1;
    }
    if (b->http == NULL) {
        mk_errf(err, errlen, "backend %s: no HTTP pool.", c->name);
        return -1;
    }
    b->state = xcalloc(1, sizeof(struct sns_state));
    if (c->sns_presence_topic == NULL && c->sns_pm_topic == NULL && c->sns_muc_topic == NULL)
        log_warn("push_sns_no_topic", "backend=%s note=\"no topic configured: nothing will be published\"", c->name);
    return 0;
}

static void sns_fini(struct push_backend *b)
{
    struct sns_state *st = b->state;
    if (st == NULL)
        return;
    /* Their callbacks will not come: the core frees the pool next, which cancels what it
     * has in flight without calling back. */
    while (st->in_flight != NULL) {
        struct sns_attempt *a = st->in_flight;
        st->in_flight = a->next;
        free(a);
    }
    free(st);
    b->state = NULL;
}

static void sns_done(void *ud, const struct http_response *r)
{
    struct sns_attempt *a = ud;
    attempt_unlink(a->backend->state, a);
    struct sns_reply reply;
    bool parsed = r->status != 0 && sns_reply_parse(r->body, r->body_len, &reply) == 0;
    if (!parsed)
        memset(&reply, 0, sizeof reply);
    enum sns_verdict v = sns_verdict(r->status, parsed ? &reply : NULL);
    char why[640];
    if (r->status == 0)
        snprintf(why, sizeof why, "%s%s", r->timed_out ? "timeout: " : "", r->error ? r->error : "no response");
    else if (reply.code != NULL)
        snprintf(why, sizeof why, "HTTP %ld %s: %s", r->status, reply.code, reply.message ? reply.message : "");
    else
        snprintf(why, sizeof why, "HTTP %ld", r->status);
    if (v == SNS_VERDICT_OK) {
        log_debug("push_sns_published", "backend=%s event=%s message_id=%s seconds=%.6f", a->backend->cfg->name,
                  push_job_event(a->job)->id, reply.message_id ? reply.message_id : "-", r->seconds);
        push_job_finish(a->job, PUSH_OK, -1, NULL);
    } else {
        /* A 4xx Throttling has no Retry-After: the core's backoff applies. */
        push_job_finish(a->job, v == SNS_VERDICT_RETRY ? PUSH_RETRY : PUSH_FAIL, r->retry_after_ms, why);
    }
    sns_reply_release(&reply);
    free(a);
}

static void sns_attempt(struct push_backend *b, struct push_job *job)
{
    const Mk__PushEvent *ev = push_job_event(job);
    struct sns_request req;
    char err[256] = "";
    enum sns_build_result br = sns_build_publish(b->cfg, ev, mk_now_us() / 1000000, &req, err, sizeof err);
    if (br != SNS_BUILD_OK) {
        sns_request_release(&req);
        push_job_finish(job, br == SNS_BUILD_SKIP ? PUSH_SKIP : PUSH_FAIL, -1, br == SNS_BUILD_SKIP ? NULL : err);
        return;
    }
    struct sns_state *st = b->state;
    struct sns_attempt *a = xcalloc(1, sizeof *a);
    a->backend = b;
    a->job = job;
    a->next = st->in_flight;
    if (a->next != NULL)
        a->next->prev = a;
    st->in_flight = a;
    struct http_request hr = {
        .method = "POST",
        .url = req.url,
        .headers = (const char *const *)req.headers,
        .body = req.body.data,
        .body_len = req.body.len,
    };
    /* http_send copies the request: the signed headers are wiped right after. */
    int rc = http_send(b->http, &hr, sns_done, a);
    sns_request_release(&req);
    if (rc == -1) {
        attempt_unlink(st, a);
        free(a);
        push_job_finish(job, PUSH_RETRY, -1, "the HTTP request could not be started");
    }
}

const struct push_backend_ops push_sns_ops = {
    .type = "sns",
    .init = sns_init,
    .fini = sns_fini,
    .attempt = sns_attempt,
    .envelope = NULL,
};

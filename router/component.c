/* router/component.c - the external components (XEP-0114) every router shard knows: configured domains and the c2s holding each connection. */
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "util.h"

bool router_jid_is_domain(const char *jid)
{
    return jid != NULL && *jid != '\0' && strpbrk(jid, "@/") == NULL;
}

static struct router_component *find(const struct sess_table *t, const char *domain, size_t len)
{
    for (size_t i = 0; i < t->ncomponents; i++) {
        struct router_component *c = &t->components[i];
        if (c->domain_len == len && memcmp(c->domain, domain, len) == 0)
            return c;
    }
    return NULL;
}

void router_component_add(struct sess_table *t, const char *domain)
{
    if (find(t, domain, strlen(domain)) != NULL)
        return;
    t->components = xrealloc(t->components, (t->ncomponents + 1) * sizeof *t->components);
    for (size_t i = 0; i < t->ncomponents; i++) {   /* the array moved: point back into it */
        t->components[i].sess.full = t->components[i].domain;
        if (t->components[i].sess.c2s != NULL)
            t->components[i].sess.c2s = &t->components[i].owner;
    }
    struct router_component *c = &t->components[t->ncomponents++];
    memset(c, 0, sizeof *c);
    c->domain = xstrdup(domain);
    c->domain_len = strlen(domain);
    c->sess.full = c->domain;
}

const struct router_component *router_component_find(const struct sess_table *t, const char *domain, size_t len)
{
    return domain != NULL ? find(t, domain, len) : NULL;
}

static void detach(struct router_component *c)
{
    free(c->owner.id);
    c->owner.id = NULL;
    c->sess.c2s = NULL;
    c->sess.session_id = 0;
    c->sess.login_us = 0;
}

static void attach(struct sess_table *t, struct router_component *c, const struct sess_info *in)
{
    free(c->owner.id);
    c->owner.id = xstrdup(in->c2s);
    c->sess.c2s = &c->owner;
    c->sess.session_id = in->session_id;
    c->sess.login_us = in->login_us;
    c->sess.seq = ++t->next_seq;
    c->sess.available = true;
}

int router_component_open(struct sess_table *t, const struct sess_info *in, sess_evict_fn *evict, void *ud)
{
    if (in->full == NULL || in->c2s == NULL || *in->c2s == '\0')
        return -1;
    struct router_component *c = find(t, in->full, strlen(in->full));
    if (c == NULL)
        return -1;
    if (c->sess.c2s != NULL && (c->sess.session_id != in->session_id || strcmp(c->owner.id, in->c2s) != 0)) {
        if (in->update)
            return 0;
        if (in->login_us != 0 && in->login_us < c->sess.login_us) {
            /* The incoming connection is the older one (a re-registration after a router
             * restart of a connection that had already been replaced): it is told to go. */
            struct router_c2s owner = {.id = (char *)in->c2s};
            struct router_sess lost = {.full = c->domain, .c2s = &owner, .session_id = in->session_id,
                                       .login_us = in->login_us};
            if (evict != NULL)
                evict(ud, &lost, "conflict");
            return 1;
        }
        /* A new connection for the domain replaces the one holding it. */
        if (evict != NULL)
            evict(ud, &c->sess, "conflict");
    }
    attach(t, c, in);
    return 0;
}

int router_component_close(struct sess_table *t, const char *domain, const char *c2s, uint64_t session_id)
{
    struct router_component *c = domain != NULL ? find(t, domain, strlen(domain)) : NULL;
    if (c == NULL || c->sess.c2s == NULL || c2s == NULL || c->sess.session_id != session_id ||
        strcmp(c->owner.id, c2s) != 0)
        return -1;
    detach(c);
    return 0;
}

size_t router_component_kick(struct sess_table *t, const char *domain, const char *reason, sess_evict_fn *evict,
                             void *ud)
{
    struct router_component *c = domain != NULL ? find(t, domain, strlen(domain)) : NULL;
    if (c == NULL || c->sess.c2s == NULL)
        return 0;
    if (evict != NULL)
        evict(ud, &c->sess, reason);
    detach(c);
    return 1;
}

size_t router_component_purge_c2s(struct sess_table *t, const char *c2s)
{
    size_t n = 0;
    for (size_t i = 0; c2s != NULL && i < t->ncomponents; i++) {
        struct router_component *c = &t->components[i];
        if (c->sess.c2s != NULL && strcmp(c->owner.id, c2s) == 0) {
            detach(c);
            n++;
        }
    }
    return n;
}

size_t router_component_connected(const struct sess_table *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->ncomponents; i++)
        n += t->components[i].sess.c2s != NULL;
    return n;
}

void router_component_release(struct sess_table *t)
{
    for (size_t i = 0; i < t->ncomponents; i++) {
        free(t->components[i].owner.id);
        free(t->components[i].domain);
    }
    free(t->components);
    t->components = NULL;
    t->ncomponents = 0;
}

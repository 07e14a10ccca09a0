/* ctl/push.c - meerkat ctl push registrations: an account's XEP-0357 registrations, read from the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "cfg.h"
#include "ctl.h"
#include "jid.h"
#include "store.h"
#include "util.h"
#include "xml.h"

struct reg_list {
    bool done;
    int ok;
    char error[256];
    unsigned printed;
};

/* Writes s with control characters and spaces escaped (\xNN), so that one registration
 * stays one line and fields stay apart whatever a client stored. */
static void put_escaped(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= ' ' || *p == '\\' || *p == 0x7f)
            printf("\\x%02x", *p);
        else
            putchar(*p);
    }
}

/* One line per registration: the pubsub service, the node, then var=value for each
 * publish option in the order the client gave them. */
static void list_cb(void *ud, const struct store_result *res)
{
    struct reg_list *l = ud;
    l->done = true;
    l->ok = res->ok;
    if (res->ok != 0) {
        mk_strlcpy(l->error, res->error ? res->error : "?", sizeof l->error);
        return;
    }
    for (size_t r = 0; r < res->nrows; r++) {
        const char *pubsub = res->vals[r * res->ncols];
        const char *node = res->vals[r * res->ncols + 1];
        const char *form = res->vals[r * res->ncols + 2];
        put_escaped(pubsub ? pubsub : "");
        putchar(' ');
        put_escaped(node ? node : "");
        if (form && *form) {
            char err[128];
            struct xml_node *x = xml_parse_document(form, strlen(form), err, sizeof err);
            for (struct xml_node *f = x ? xml_child(x, "field", NULL) : NULL; f; f = xml_next(f, "field", NULL)) {
                struct xml_node *v = xml_child(f, "value", NULL);
                char *text = v ? xml_text(v) : xstrdup("");
                putchar(' ');
                put_escaped(xml_attr(f, "var") ? xml_attr(f, "var") : "");
                putchar('=');
                put_escaped(text);
                free(text);
            }
            if (x == NULL)
                printf(" (unreadable options: %s)", err);
            xml_free(&x);
        }
        putchar('\n');
        l->printed++;
    }
}

int ctl_push(const struct cfg *c, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[0], "registrations") != 0) {
        fprintf(stderr, "usage: meerkat ctl push registrations USER@DOMAIN\n");
        return 2;
    }
    struct jid j;
    struct store *st = ctl_account_store(c, argv[1], &j);
    if (st == NULL)
        return 1;
    struct reg_list l = {0};
    const char *params[] = {j.local, j.domain};
    store_query(st, STORE_PUSH_REG_LIST, params, 2, list_cb, &l);
    store_drain(st);
    store_close(&st);
    jid_release(&j);
    if (!l.done || l.ok != 0) {
        fprintf(stderr, "meerkat ctl: storage error: %s\n", l.error[0] ? l.error : "no answer");
        return 1;
    }
    return 0;
}

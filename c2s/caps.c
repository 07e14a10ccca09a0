/* c2s/caps.c - XEP-0115 entity capabilities: verification strings of disco#info answers (pure helpers). */
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "buf.h"
#include "caps.h"
#include "scram.h"
#include "util.h"

#define NS_DISCO_INFO_ "http://jabber.org/protocol/disco#info"
#define NS_XDATA_      "jabber:x:data"
#define CAPS_MAX_PARTS 4096

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A growable array of owned strings. */
struct strs {
    char **v;
    size_t n;
};

static void strs_add(struct strs *s, char *owned)
{
    s->v = xrealloc(s->v, (s->n + 1) * sizeof *s->v);
    s->v[s->n++] = owned;
}

static void strs_free(struct strs *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* Sorts s; true when two entries are equal. */
static bool strs_sort_dup(struct strs *s)
{
    if (s->n > 1)
        qsort(s->v, s->n, sizeof *s->v, cmp_str);
    for (size_t i = 1; i < s->n; i++)
        if (strcmp(s->v[i - 1], s->v[i]) == 0)
            return true;
    return false;
}

static const char *attr_or_empty(const struct xml_node *n, const char *name)
{
    const char *v = xml_attr(n, name);
    return v ? v : "";
}

/* A keyed part of S: a form by its FORM_TYPE, a field by its var. */
struct form {
    char *type;
    char *part;
};

static int cmp_form(const void *a, const void *b)
{
    return strcmp(((const struct form *)a)->type, ((const struct form *)b)->type);
}

/* The text of the values of field f, each a new string. */
static void field_values(const struct xml_node *f, struct strs *out)
{
    for (struct xml_node *v = xml_child(f, "value", NS_XDATA_); v; v = xml_next(v, "value", NS_XDATA_)) {
        char *t = xml_text(v);
        strs_add(out, t ? t : xstrdup(""));
    }
}

/* One form's part of S ("FORM_TYPE<var<value<...") into *part; its FORM_TYPE into *type.
 * Returns 1 when done, 0 when the form is to be left out (no hidden FORM_TYPE), -1 when
 * ill-formed. */
static int form_part(const struct xml_node *x, char **type, struct buf *part, size_t *budget)
{
    struct xml_node *ft = NULL;
    for (struct xml_node *f = xml_child(x, "field", NS_XDATA_); f; f = xml_next(f, "field", NS_XDATA_)) {
        const char *var = xml_attr(f, "var");
        if (var && strcmp(var, "FORM_TYPE") == 0) {
            if (ft)
                return -1;
            ft = f;
        }
    }
    if (!ft || strcmp(attr_or_empty(ft, "type"), "hidden") != 0)
        return 0;
    struct strs tv = {0};
    field_values(ft, &tv);
    if (tv.n != 1) {
        strs_free(&tv);
        return -1;
    }
    *type = tv.v[0];
    free(tv.v);
    /* Fields sorted by var; each var followed by its sorted values. */
    struct form *fields = NULL;
    size_t nfields = 0;
    int rc = 1;
    for (struct xml_node *f = xml_child(x, "field", NS_XDATA_); f && rc == 1; f = xml_next(f, "field", NS_XDATA_)) {
        const char *var = xml_attr(f, "var");
        if (!var || strcmp(var, "FORM_TYPE") == 0)
            continue;
        struct strs vals = {0};
        field_values(f, &vals);
        if (vals.n + 1 > *budget) {
            rc = -1;
        } else {
            *budget -= vals.n + 1;
            strs_sort_dup(&vals);
            struct buf b;
            buf_init(&b);
            buf_append_str(&b, var);
            buf_append(&b, "<", 1);
            for (size_t i = 0; i < vals.n; i++) {
                buf_append_str(&b, vals.v[i]);
                buf_append(&b, "<", 1);
            }
            buf_append(&b, "", 1);
            fields = xrealloc(fields, (nfields + 1) * sizeof *fields);
            fields[nfields].type = xstrdup(var);
            fields[nfields++].part = b.data;
        }
        strs_free(&vals);
    }
    if (rc == 1) {
        if (nfields > 1)
            qsort(fields, nfields, sizeof *fields, cmp_form);
        buf_append_str(part, *type);
        buf_append(part, "<", 1);
        for (size_t i = 0; i < nfields; i++)
            buf_append_str(part, fields[i].part);
    }
    for (size_t i = 0; i < nfields; i++) {
        free(fields[i].type);
        free(fields[i].part);
    }
    free(fields);
    if (rc != 1) {
        free(*type);
        *type = NULL;
    }
    return rc;
}

int caps_ver(const struct xml_node *query, char *ver, size_t verlen, char *err, size_t errlen)
{
    struct strs ids = {0}, feats = {0};
    struct form *forms = NULL;
    size_t nforms = 0, budget = CAPS_MAX_PARTS;
    struct buf s;
    buf_init(&s);
    int rc = -1;
    if (verlen < CAPS_VER_MAX) {
        mk_errf(err, errlen, "no room for the verification string");
        goto out;
    }
    for (struct xml_node *c = query->first_child; c; c = c->next) {
        if (!c->name || !c->ns)
            continue;
        if (budget == 0) {
            mk_errf(err, errlen, "too many parts");
            goto out;
        }
        if (strcmp(c->ns, NS_DISCO_INFO_) == 0 && strcmp(c->name, "identity") == 0) {
            const char *lang = xml_attr_ns(c, XML_NS_XML, "lang");
            strs_add(&ids, xasprintf("%s/%s/%s/%s", attr_or_empty(c, "category"), attr_or_empty(c, "type"),
                                     lang ? lang : "", attr_or_empty(c, "name")));
            budget--;
        } else if (strcmp(c->ns, NS_DISCO_INFO_) == 0 && strcmp(c->name, "feature") == 0) {
            strs_add(&feats, xstrdup(attr_or_empty(c, "var")));
            budget--;
        } else if (strcmp(c->ns, NS_XDATA_) == 0 && strcmp(c->name, "x") == 0) {
            struct buf part;
            buf_init(&part);
            char *type = NULL;
            budget--;
            int f = form_part(c, &type, &part, &budget);
            if (f == -1) {
                buf_release(&part);
                mk_errf(err, errlen, "an ill-formed extended form");
                goto out;
            }
            if (f == 1) {
                buf_append(&part, "", 1);
                forms = xrealloc(forms, (nforms + 1) * sizeof *forms);
                forms[nforms].type = type;
                forms[nforms].part = part.data;
                nforms++;
            } else {
                buf_release(&part);
            }
        }
    }
    if (strs_sort_dup(&ids)) {
        mk_errf(err, errlen, "a duplicate identity");
        goto out;
    }
    if (strs_sort_dup(&feats)) {
        mk_errf(err, errlen, "a duplicate feature");
        goto out;
    }
    if (nforms > 1)
        qsort(forms, nforms, sizeof *forms, cmp_form);
    for (size_t i = 1; i < nforms; i++) {
        if (strcmp(forms[i - 1].type, forms[i].type) == 0) {
            mk_errf(err, errlen, "two forms with the same FORM_TYPE");
            goto out;
        }
    }
    for (size_t i = 0; i < ids.n; i++) {
        buf_append_str(&s, ids.v[i]);
        buf_append(&s, "<", 1);
    }
    for (size_t i = 0; i < feats.n; i++) {
        buf_append_str(&s, feats.v[i]);
        buf_append(&s, "<", 1);
    }
    for (size_t i = 0; i < nforms; i++)
        buf_append_str(&s, forms[i].part);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)(s.data ? s.data : ""), s.len, md);
    b64_encode(md, sizeof md, ver, verlen);
    rc = 0;
out:
    strs_free(&ids);
    strs_free(&feats);
    for (size_t i = 0; i < nforms; i++) {
        free(forms[i].type);
        free(forms[i].part);
    }
    free(forms);
    buf_release(&s);
    return rc;
}

bool caps_verify(const struct xml_node *query, const char *ver)
{
    char mine[CAPS_VER_MAX], err[96];
    return ver != NULL && caps_ver(query, mine, sizeof mine, err, sizeof err) == 0 && strcmp(mine, ver) == 0;
}

bool caps_of_presence(const struct xml_node *presence, const char **node, const char **ver)
{
    const struct xml_node *c = xml_child(presence, "c", NS_CAPS);
    if (!c)
        return false;
    const char *hash = xml_attr(c, "hash"), *n = xml_attr(c, "node"), *v = xml_attr(c, "ver");
    if (!hash || strcmp(hash, "sha-1") != 0 || !n || !*n || strlen(n) > 1024 || !v || strlen(v) + 1 != CAPS_VER_MAX)
        return false;
    *node = n;
    *ver = v;
    return true;
}

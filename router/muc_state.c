/* router/muc_state.c - the stored form of a persistent group chat room: written as one XML document, read back with every value checked. */
#include "muc_state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "jid.h"
#include "util.h"
#include "xml.h"

const char *const muc_aff_names[5] = {"none", "outcast", "member", "admin", "owner"};

static void put_attr(struct buf *b, const char *name, const char *v)
{
    buf_printf(b, " %s='", name);
    xml_escape(b, v, strlen(v));
    buf_append(b, "'", 1);
}

static void put_elem(struct buf *b, const char *name, const char *text)
{
    if (text == NULL)
        return;
    buf_printf(b, "<%s>", name);
    xml_escape(b, text, strlen(text));
    buf_printf(b, "</%s>", name);
}

void muc_state_write(const struct muc_state *st, struct buf *out)
{
    const struct muc_config *c = &st->conf;
    buf_append_str(out, "<room xmlns='" NS_MUC_STATE "'");
    put_attr(out, "creator", st->creator != NULL ? st->creator : "");
    buf_printf(out,
               "><config public='%d' members_only='%d' moderated='%d' change_subject='%d' allow_invites='%d'"
               " whois='%s' max_users='%u' archive='%d'%s/>",
               c->public_room, c->members_only, c->moderated, c->change_subject, c->allow_invites,
               c->semi_anonymous ? "moderators" : "anyone", c->max_users, !c->no_archive,
               c->persistent ? "" : " temporary='1'");
    put_elem(out, "name", c->name);
    put_elem(out, "desc", c->desc);
    put_elem(out, "password", c->password);
    if (st->subject != NULL) {
        buf_append_str(out, "<subject");
        if (st->subject_nick != NULL)
            put_attr(out, "nick", st->subject_nick);
        buf_append(out, ">", 1);
        xml_escape(out, st->subject, strlen(st->subject));
        buf_append_str(out, "</subject>");
    }
    for (size_t i = 0; i < st->naffs; i++) {
        buf_append_str(out, "<aff");
        put_attr(out, "jid", st->affs[i].bare);
        put_attr(out, "affiliation", muc_aff_names[st->affs[i].aff]);
        if (st->affs[i].nick != NULL)
            put_attr(out, "nick", st->affs[i].nick);
        buf_append_str(out, "/>");
    }
    buf_append_str(out, "</room>");
}

void muc_state_release(struct muc_state *st)
{
    if (st == NULL)
        return;
    free(st->creator);
    free(st->conf.name);
    free(st->conf.desc);
    free(st->conf.password);
    free(st->subject);
    free(st->subject_nick);
    for (size_t i = 0; i < st->naffs; i++) {
        free(st->affs[i].bare);
        free(st->affs[i].nick);
    }
    free(st->affs);
    memset(st, 0, sizeof *st);
}

/* A boolean attribute of el: '0' or '1' only. */
static int bool_attr(const struct xml_node *el, const char *name, bool *out, char *err, size_t errlen)
{
    const char *v = xml_attr(el, name);
    if (v != NULL && (strcmp(v, "0") == 0 || strcmp(v, "1") == 0)) {
        *out = v[0] == '1';
        return 0;
    }
    snprintf(err, errlen, "<config/> %s: 0 or 1 expected", name);
    return -1;
}

/* A prepared bare JID: NULL otherwise. */
static char *bare_jid(const char *s)
{
    if (s == NULL || *s == '\0')
        return NULL;
    char *b = jid_normalize(s, true);
    if (b != NULL && strcmp(b, s) != 0) {
        free(b);
        return NULL;
    }
    return b;
}

static int cmp_aff(const void *a, const void *b)
{
    return strcmp(((const struct muc_aff_entry *)a)->bare, ((const struct muc_aff_entry *)b)->bare);
}

/* By reserved nick, those without one first. */
static int cmp_nick(const void *a, const void *b)
{
    const char *x = ((const struct muc_aff_entry *)a)->nick, *y = ((const struct muc_aff_entry *)b)->nick;
    return x == NULL || y == NULL ? (x != NULL) - (y != NULL) : strcmp(x, y);
}

static int read_config(const struct xml_node *c, struct muc_config *conf, char *err, size_t errlen)
{
    if (bool_attr(c, "public", &conf->public_room, err, errlen) == -1 ||
        bool_attr(c, "members_only", &conf->members_only, err, errlen) == -1 ||
        bool_attr(c, "moderated", &conf->moderated, err, errlen) == -1 ||
        bool_attr(c, "change_subject", &conf->change_subject, err, errlen) == -1 ||
        bool_attr(c, "allow_invites", &conf->allow_invites, err, errlen) == -1)
        return -1;
    const char *whois = xml_attr(c, "whois");
    if (whois == NULL || (strcmp(whois, "anyone") != 0 && strcmp(whois, "moderators") != 0)) {
        snprintf(err, errlen, "<config/> whois: anyone or moderators expected");
        return -1;
    }
    conf->semi_anonymous = strcmp(whois, "moderators") == 0;
    /* archive: absent in a row written before rooms had archives (then on, the default). */
    bool archive = true;
    if (xml_attr(c, "archive") != NULL && bool_attr(c, "archive", &archive, err, errlen) == -1)
        return -1;
    conf->no_archive = !archive;
    /* temporary: the row of a temporary room that archives (absent: a persistent room). */
    bool temporary = false;
    if (xml_attr(c, "temporary") != NULL && bool_attr(c, "temporary", &temporary, err, errlen) == -1)
        return -1;
    conf->persistent = !temporary;
    const char *mu = xml_attr(c, "max_users");
    char *end = NULL;
    errno = 0;
    unsigned long v = mu != NULL && *mu >= '1' && *mu <= '9' ? strtoul(mu, &end, 10) : 0;
    if (v == 0 || errno != 0 || end == NULL || *end != '\0' || v > 0xffffffffUL) {
        snprintf(err, errlen, "<config/> max_users: a positive number expected");
        return -1;
    }
    conf->max_users = (unsigned)v;
    return 0;
}

static int read_doc(const struct xml_node *root, size_t max_affs, struct muc_state *out, char *err, size_t errlen)
{
    if (root->name == NULL || strcmp(root->name, "room") != 0 || root->ns == NULL ||
        strcmp(root->ns, NS_MUC_STATE) != 0) {
        snprintf(err, errlen, "not a <room xmlns='%s'/> document", NS_MUC_STATE);
        return -1;
    }
    out->creator = bare_jid(xml_attr(root, "creator"));
    if (out->creator == NULL) {
        snprintf(err, errlen, "creator: a prepared bare JID expected");
        return -1;
    }
    bool have_config = false;
    size_t cap = 0;
    for (const struct xml_node *c = xml_first_elem(root); c != NULL; c = xml_next(c, NULL, NULL)) {
        if (strcmp(c->ns, NS_MUC_STATE) != 0)
            continue;
        char **text = NULL;
        if (strcmp(c->name, "config") == 0) {
            if (have_config) {
                snprintf(err, errlen, "<config/> twice");
                return -1;
            }
            have_config = true;
            if (read_config(c, &out->conf, err, errlen) == -1)
                return -1;
        } else if (strcmp(c->name, "name") == 0) {
            text = &out->conf.name;
        } else if (strcmp(c->name, "desc") == 0) {
            text = &out->conf.desc;
        } else if (strcmp(c->name, "password") == 0) {
            text = &out->conf.password;
        } else if (strcmp(c->name, "subject") == 0) {
            text = &out->subject;
            const char *nick = xml_attr(c, "nick");
            if (nick != NULL && out->subject_nick == NULL)
                out->subject_nick = xstrdup(nick);
        } else if (strcmp(c->name, "aff") == 0) {
            if (out->naffs >= max_affs) {
                snprintf(err, errlen, "more than %zu affiliations", max_affs);
                return -1;
            }
            enum muc_aff aff = MUC_AFF_NONE;
            const char *an = xml_attr(c, "affiliation");
            for (size_t i = MUC_AFF_OUTCAST; an != NULL && i < MK_ARRAY_LEN(muc_aff_names); i++)
                if (strcmp(an, muc_aff_names[i]) == 0)
                    aff = (enum muc_aff)i;
            char *bare = bare_jid(xml_attr(c, "jid"));
            if (aff == MUC_AFF_NONE || bare == NULL) {
                free(bare);
                snprintf(err, errlen, "<aff/>: a prepared bare JID and outcast, member, admin or owner expected");
                return -1;
            }
            if (out->naffs == cap) {
                cap = cap ? cap * 2 : 8;
                out->affs = xrealloc(out->affs, cap * sizeof *out->affs);
            }
            const char *nick = xml_attr(c, "nick");
            if (nick != NULL && (*nick == '\0' || aff == MUC_AFF_OUTCAST)) {
                free(bare);
                snprintf(err, errlen, "<aff/>: an empty nick, or a nick of an outcast");
                return -1;
            }
            out->affs[out->naffs].bare = bare;
            out->affs[out->naffs].nick = nick != NULL ? xstrdup(nick) : NULL;
            out->affs[out->naffs++].aff = aff;
        }
        if (text != NULL) {
            if (*text != NULL) {
                snprintf(err, errlen, "<%s/> twice", c->name);
                return -1;
            }
            *text = xml_text(c);
        }
    }
    if (!have_config) {
        snprintf(err, errlen, "no <config/>");
        return -1;
    }
    /* Each JID once: checked on a sorted copy (n log n, whatever the count). */
    if (out->naffs > 1) {
        struct muc_aff_entry *sorted = xmalloc(out->naffs * sizeof *sorted);
        memcpy(sorted, out->affs, out->naffs * sizeof *sorted);
        qsort(sorted, out->naffs, sizeof *sorted, cmp_aff);
        const char *dup = NULL;
        for (size_t i = 1; i < out->naffs && dup == NULL; i++)
            if (strcmp(sorted[i - 1].bare, sorted[i].bare) == 0)
                dup = sorted[i].bare;
        if (dup != NULL)
            snprintf(err, errlen, "a JID affiliated twice");
        qsort(sorted, out->naffs, sizeof *sorted, cmp_nick);
        for (size_t i = 1; i < out->naffs && dup == NULL; i++)
            if (sorted[i - 1].nick != NULL && strcmp(sorted[i - 1].nick, sorted[i].nick) == 0) {
                dup = sorted[i].nick;
                snprintf(err, errlen, "a nick reserved twice");
            }
        free(sorted);
        if (dup != NULL)
            return -1;
    }
    return 0;
}

int muc_state_read(const char *data, size_t len, size_t max_affs, struct muc_state *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    char xerr[128];
    struct xml_node *root = xml_parse_document(data, len, xerr, sizeof xerr);
    if (root == NULL) {
        snprintf(err, errlen, "not well-formed: %s", xerr);
        return -1;
    }
    int rc = read_doc(root, max_affs, out, err, errlen);
    xml_free(&root);
    return rc;
}

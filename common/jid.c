/* common/jid.c - XMPP addresses (RFC 7622): split, prepare each part with libidn's stringprep, compare. */
#include "jid.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stringprep.h>

#include "util.h"

/* A part longer than this before preparation is refused without running
 * stringprep. Preparation may shrink a string (characters mapped to nothing,
 * NFKC composition), so the raw limit is looser than JID_PART_MAX; it exists
 * to bound the CPU a hostile address can cost. */
#define JID_RAW_MAX (4 * JID_PART_MAX)

/* Stringprep is not idempotent for every input (NFKC after case folding can
 * produce characters that fold again), so a part is prepared until it stops
 * changing; one that has not settled after this many rounds is refused. */
#define JID_PREP_ROUNDS 4

#define JID_LABEL_MAX 63

enum jid_part {
    JID_PART_LOCAL = 0,
    JID_PART_DOMAIN,
    JID_PART_RESOURCE,
};

static const char *const part_names[] = {
    [JID_PART_LOCAL] = "localpart",
    [JID_PART_DOMAIN] = "domainpart",
    [JID_PART_RESOURCE] = "resourcepart",
};

static const char *const profile_names[] = {
    [JID_PART_LOCAL] = "Nodeprep",
    [JID_PART_DOMAIN] = "Nameprep",
    [JID_PART_RESOURCE] = "Resourceprep",
};

#define set_err mk_errf   /* common/util.h */

/* Decodes n bytes of strict UTF-8 (no overlong forms, no surrogates, nothing
 * above U+10FFFF) into cp, which has room for n code points. Returns the
 * number of code points, or -1 on malformed input. */
static long utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t i = 0;
    long count = 0;
    while (i < n) {
        unsigned char c = s[i];
        uint32_t v, min;
        size_t extra;
        if (c < 0x80) {
            cp[count++] = c;
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            v = c & 0x1f; extra = 1; min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            v = c & 0x0f; extra = 2; min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            v = c & 0x07; extra = 3; min = 0x10000;
        } else {
            return -1;
        }
        if (n - i <= extra)
            return -1;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return -1;
            v = (v << 6) | (s[i + k] & 0x3f);
        }
        if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
            return -1;
        cp[count++] = v;
        i += extra + 1;
    }
    return count;
}

/* Encodes n code points (all valid scalar values) as a new NUL-terminated
 * UTF-8 string; *lenp receives its length. */
static char *utf8_encode(const uint32_t *cp, size_t n, size_t *lenp)
{
    char *out = xmalloc(4 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = cp[i];
        if (v < 0x80) {
            out[o++] = (char)v;
        } else if (v < 0x800) {
            out[o++] = (char)(0xc0 | (v >> 6));
            out[o++] = (char)(0x80 | (v & 0x3f));
        } else if (v < 0x10000) {
            out[o++] = (char)(0xe0 | (v >> 12));
            out[o++] = (char)(0x80 | ((v >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (v & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | (v >> 18));
            out[o++] = (char)(0x80 | ((v >> 12) & 0x3f));
            out[o++] = (char)(0x80 | ((v >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (v & 0x3f));
        }
    }
    out[o] = '\0';
    *lenp = o;
    return out;
}

/* One stringprep pass over in[0..n) into a new array *outp of *outn code
 * points. The output may be longer than the input (case folding maps one
 * character to up to four, NFKC expands further), so the buffer grows until
 * stringprep stops answering "too small". Returns STRINGPREP_OK or its error. */
static int prep_once(const Stringprep_profile *profile, const uint32_t *in, size_t n,
                     uint32_t **outp, size_t *outn)
{
    size_t cap = n + n / 2 + 16;
    /* NFKC expands one code point to at most 18, case folding to 4: a
     * buffer larger than this means something is wrong, not too small. */
    size_t limit = 128 * n + 128;
    for (;;) {
        uint32_t *buf = xmalloc(cap * sizeof *buf);
        memcpy(buf, in, n * sizeof *buf);
        size_t len = n;
        int rc = stringprep_4i(buf, &len, cap, 0, profile);
        if (rc == STRINGPREP_OK) {
            *outp = buf;
            *outn = len;
            return rc;
        }
        free(buf);
        if (rc != STRINGPREP_TOO_SMALL_BUFFER || cap >= limit)
            return rc;
        cap *= 2;
    }
}

/* Writes the sentence for a stringprep failure of the named part. */
static void prep_err(enum jid_part part, int rc, char *err, size_t errlen)
{
    const char *name = part_names[part], *prof = profile_names[part];
    switch (rc) {
    case STRINGPREP_CONTAINS_PROHIBITED:
        set_err(err, errlen, "The %s contains a character that %s forbids.", name, prof);
        break;
    case STRINGPREP_CONTAINS_UNASSIGNED:
        set_err(err, errlen, "The %s contains a code point unassigned in Unicode 3.2.", name);
        break;
    case STRINGPREP_BIDI_BOTH_L_AND_RAL:
    case STRINGPREP_BIDI_LEADTRAIL_NOT_RAL:
    case STRINGPREP_BIDI_CONTAINS_PROHIBITED:
        set_err(err, errlen, "The %s mixes right-to-left and left-to-right text in a way %s forbids.",
                name, prof);
        break;
    default:
        set_err(err, errlen, "The %s could not be prepared with %s (%s).", name, prof,
                stringprep_strerror(rc));
        break;
    }
}

/* "[...]" with an IPv6 address inside: validated with inet_pton and written
 * back in the canonical inet_ntop form, so that equal addresses compare equal. */
static char *prep_ipv6(const char *s, size_t n, char *err, size_t errlen)
{
    char inner[INET6_ADDRSTRLEN + 1], text[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    if (n < 3 || s[n - 1] != ']' || n - 2 > INET6_ADDRSTRLEN) {
        set_err(err, errlen, "The domainpart starts with '[' but is not a bracketed IPv6 address.");
        return NULL;
    }
    memcpy(inner, s + 1, n - 2);
    inner[n - 2] = '\0';
    if (inet_pton(AF_INET6, inner, &addr) != 1 ||
        inet_ntop(AF_INET6, &addr, text, sizeof text) == NULL) {
        set_err(err, errlen, "The domainpart is not a valid IPv6 address literal.");
        return NULL;
    }
    return xasprintf("[%s]", text);
}

/* Checks a nameprep'd domain in place: drops one trailing dot, then enforces
 * non-empty labels of at most 63 bytes, ASCII limited to letters, digits,
 * '-', '_' and '.', and a valid address when it is all digits and dots.
 * Returns 0 or -1 with err. */
static int check_domain(char *d, size_t *lenp, char *err, size_t errlen)
{
    size_t len = *lenp;
    if (len > 0 && d[len - 1] == '.')
        d[--len] = '\0';
    if (len == 0) {
        set_err(err, errlen, "The domainpart is empty.");
        return -1;
    }
    bool numeric = true;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c == '.' || c == '\0') {
            if (label == 0) {
                set_err(err, errlen, "The domainpart contains an empty label.");
                return -1;
            }
            if (label > JID_LABEL_MAX) {
                set_err(err, errlen, "The domainpart contains a label longer than %d bytes.",
                        JID_LABEL_MAX);
                return -1;
            }
            label = 0;
            continue;
        }
        label++;
        if (c < '0' || c > '9')
            numeric = false;
        if (c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')
            continue;
        if (c > 0x20 && c < 0x7f)
            set_err(err, errlen, "The domainpart contains the forbidden character '%c'.", c);
        else
            set_err(err, errlen, "The domainpart contains the forbidden character \\x%02x.", c);
        return -1;
    }
    if (numeric) {
        struct in_addr addr;
        if (inet_pton(AF_INET, d, &addr) != 1) {
            set_err(err, errlen, "The domainpart is all digits and dots but not an IPv4 address.");
            return -1;
        }
    }
    *lenp = len;
    return 0;
}

/* Prepares n bytes of s as the given part. Returns a new string, or NULL with
 * err. */
/* The checks every prepared part gets, whichever way it was prepared. Consumes out. */
static char *prep_finish(enum jid_part part, char *out, size_t len, char *err, size_t errlen)
{
    const char *name = part_names[part];
    if (part == JID_PART_DOMAIN && check_domain(out, &len, err, errlen) == -1) {
        free(out);
        return NULL;
    }
    if (len == 0) {
        free(out);
        set_err(err, errlen, "The %s is empty after %s.", name, profile_names[part]);
        return NULL;
    }
    if (len > JID_PART_MAX) {
        free(out);
        set_err(err, errlen, "The %s is longer than %d bytes after %s.", name, JID_PART_MAX,
                profile_names[part]);
        return NULL;
    }
    return out;
}

/* Almost every JID on the wire is plain ASCII, where the three profiles reduce to
 * "lower-case (except resources), refuse a few characters". Preparing it without
 * stringprep's Unicode tables took most of the c2s's JID cost in the benchmark's
 * profile. Returns the prepared copy, or NULL when s needs the full treatment
 * (non-ASCII, or a character the profile refuses, whose error the full path words). */
static char *prep_ascii(enum jid_part part, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x7f || ch < 0x20)
            return NULL;
        if (part == JID_PART_RESOURCE)
            continue;
        if (ch == ' ')
            return NULL;
        if (part == JID_PART_LOCAL && strchr("\"&'/:<>@", ch) != NULL)
            return NULL;
        if (part == JID_PART_DOMAIN && !(ch == '.' || ch == '-' || ch == '_' || (ch >= '0' && ch <= '9') ||
                                         (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
            return NULL;
    }
    char *out = xstrndup(s, n);
    if (part != JID_PART_RESOURCE)
        for (size_t i = 0; i < n; i++)
            if (out[i] >= 'A' && out[i] <= 'Z')
                out[i] = (char)(out[i] + ('a' - 'A'));
    return out;
}

static char *prep_part(enum jid_part part, const char *s, size_t n, char *err, size_t errlen)
{
    static const Stringprep_profile *const profiles[] = {
        [JID_PART_LOCAL] = stringprep_xmpp_nodeprep,
        [JID_PART_DOMAIN] = stringprep_nameprep,
        [JID_PART_RESOURCE] = stringprep_xmpp_resourceprep,
    };
    const char *name = part_names[part];
    if (n == 0) {
        set_err(err, errlen, "The %s is empty.", name);
        return NULL;
    }
    if (n > JID_RAW_MAX) {
        set_err(err, errlen, "The %s is longer than %d bytes.", name, JID_PART_MAX);
        return NULL;
    }
    if (part == JID_PART_DOMAIN && s[0] == '[')
        return prep_ipv6(s, n, err, errlen);
    char *ascii = prep_ascii(part, s, n);
    if (ascii != NULL)
        return prep_finish(part, ascii, n, err, errlen);

    uint32_t *cur = xmalloc(n * sizeof *cur);
    long count = utf8_decode((const unsigned char *)s, n, cur);
    if (count < 0) {
        free(cur);
        set_err(err, errlen, "The %s is not valid UTF-8.", name);
        return NULL;
    }
    size_t curn = (size_t)count;
    bool stable = false;
    for (int round = 0; round < JID_PREP_ROUNDS && !stable; round++) {
        uint32_t *next;
        size_t nextn;
        int rc = prep_once(profiles[part], cur, curn, &next, &nextn);
        if (rc != STRINGPREP_OK) {
            free(cur);
            prep_err(part, rc, err, errlen);
            return NULL;
        }
        /* The first round always runs twice: once to prepare, once to
         * confirm the result is a fixed point. */
        stable = round > 0 && nextn == curn && memcmp(next, cur, curn * sizeof *cur) == 0;
        free(cur);
        cur = next;
        curn = nextn;
    }
    if (!stable) {
        free(cur);
        set_err(err, errlen, "The %s does not settle to a stable form under %s.", name,
                profile_names[part]);
        return NULL;
    }
    if (part == JID_PART_DOMAIN) {
        for (size_t i = 0; i < curn; i++) {
            /* IDNA treats U+3002 IDEOGRAPHIC FULL STOP as a label separator
             * (U+FF0E and U+FF61 already became '.' or U+3002 under NFKC). */
            if (cur[i] == 0x3002)
                cur[i] = '.';
            else if (cur[i] >= 'A' && cur[i] <= 'Z')
                cur[i] += 'a' - 'A';
        }
    }
    size_t len;
    char *out = utf8_encode(cur, curn, &len);
    free(cur);
    return prep_finish(part, out, len, err, errlen);
}

int jid_parse(const char *s, struct jid *out, char *err, size_t errlen)
{
    if (s == NULL || *s == '\0') {
        set_err(err, errlen, "The JID is empty.");
        return -1;
    }
    /* RFC 7622 section 3.2: the resource starts at the first '/', and may
     * itself contain '/' and '@'; the localpart ends at the first '@' before it. */
    const char *slash = strchr(s, '/');
    size_t head = slash ? (size_t)(slash - s) : strlen(s);
    const char *at = memchr(s, '@', head);
    const char *dom = at ? at + 1 : s;
    size_t domlen = head - (size_t)(dom - s);

    struct jid j = { NULL, NULL, NULL };
    if (at != NULL) {
        if (at == s) {
            set_err(err, errlen, "The JID has an '@' but an empty localpart.");
            return -1;
        }
        j.local = prep_part(JID_PART_LOCAL, s, (size_t)(at - s), err, errlen);
        if (j.local == NULL)
            return -1;
    }
    if (domlen == 0) {
        set_err(err, errlen, "The JID has an empty domainpart.");
        jid_release(&j);
        return -1;
    }
    j.domain = prep_part(JID_PART_DOMAIN, dom, domlen, err, errlen);
    if (j.domain == NULL) {
        jid_release(&j);
        return -1;
    }
    if (slash != NULL) {
        if (slash[1] == '\0') {
            set_err(err, errlen, "The JID has a '/' but an empty resourcepart.");
            jid_release(&j);
            return -1;
        }
        j.resource = prep_part(JID_PART_RESOURCE, slash + 1, strlen(slash + 1), err, errlen);
        if (j.resource == NULL) {
            jid_release(&j);
            return -1;
        }
    }
    *out = j;
    return 0;
}

void jid_release(struct jid *j)
{
    if (j == NULL)
        return;
    xfree(&j->local);
    xfree(&j->domain);
    xfree(&j->resource);
}

void jid_copy(struct jid *dst, const struct jid *src)
{
    dst->local = xstrdup(src->local);
    dst->domain = xstrdup(src->domain);
    dst->resource = xstrdup(src->resource);
}

size_t jid_len(const struct jid *j, bool bare)
{
    size_t n = j->domain ? strlen(j->domain) : 0;
    if (j->local != NULL)
        n += strlen(j->local) + 1;
    if (!bare && j->resource != NULL)
        n += strlen(j->resource) + 1;
    return n;
}

int jid_format(const struct jid *j, bool bare, char *out, size_t outlen)
{
    if (j->domain == NULL)
        return -1;
    size_t n = jid_len(j, bare);
    if (n > INT_MAX || outlen < n + 1)
        return -1;
    size_t o = 0;
    if (j->local != NULL) {
        size_t l = strlen(j->local);
        memcpy(out, j->local, l);
        o = l;
        out[o++] = '@';
    }
    size_t d = strlen(j->domain);
    memcpy(out + o, j->domain, d);
    o += d;
    if (!bare && j->resource != NULL) {
        size_t r = strlen(j->resource);
        out[o++] = '/';
        memcpy(out + o, j->resource, r);
        o += r;
    }
    out[o] = '\0';
    return (int)o;
}

char *jid_to_string(const struct jid *j, bool bare)
{
    size_t n = jid_len(j, bare);
    char *s = xmalloc(n + 1);
    if (jid_format(j, bare, s, n + 1) == -1) {
        free(s);
        return NULL;
    }
    return s;
}

/* Equal strings, where absent (NULL) equals only absent. */
static bool part_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

bool jid_bare_equal(const struct jid *a, const struct jid *b)
{
    return part_equal(a->local, b->local) && part_equal(a->domain, b->domain);
}

bool jid_equal(const struct jid *a, const struct jid *b)
{
    return jid_bare_equal(a, b) && part_equal(a->resource, b->resource);
}

char *jid_nodeprep(const char *s, char *err, size_t errlen)
{
    return prep_part(JID_PART_LOCAL, s ? s : "", s ? strlen(s) : 0, err, errlen);
}

char *jid_resourceprep(const char *s, char *err, size_t errlen)
{
    return prep_part(JID_PART_RESOURCE, s ? s : "", s ? strlen(s) : 0, err, errlen);
}

char *jid_nameprep(const char *s, char *err, size_t errlen)
{
    return prep_part(JID_PART_DOMAIN, s ? s : "", s ? strlen(s) : 0, err, errlen);
}

char *jid_normalize(const char *s, bool bare)
{
    struct jid j;
    if (jid_parse(s, &j, NULL, 0) == -1)
        return NULL;
    char *out = jid_to_string(&j, bare);
    jid_release(&j);
    return out;
}

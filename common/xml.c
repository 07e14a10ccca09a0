/* common/xml.c - a sans-I/O XMPP stream parser over expat, element trees, and a serializer. */
/* xml.h and expat both name an enumerator XML_ERROR_NONE: expat's is renamed
 * while its header is read, so that ours keeps the name inside this file. */
#define XML_ERROR_NONE EXPAT_ERROR_NONE
#include <expat.h>
#undef XML_ERROR_NONE

#include "xml.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

/* Expat joins a namespace URI and a local name with this byte. U+0001 is not
 * an XML 1.0 character, not even as &#1;, so it can never occur in a URI. */
#define XML_NS_SEP '\x01'

/* Input goes to expat at most this many bytes at a time: expat copies a partial
 * token into its own buffer, so the size cap is checked between chunks and expat
 * never holds more than max_stanza_bytes + XML_FEED_CHUNK of one hostile token. */
#define XML_FEED_CHUNK 8192
/* Expat before 2.6 rescans a partial token from its start on every XML_Parse
 * call, so a start tag as large as the cap, fed one byte per call, would cost
 * O(max_stanza_bytes^2) (about 2 s of CPU for 64 KiB). Reparse deferral on our
 * side, as expat 2.6 does inside: once expat holds a partial token of at least
 * XML_DEFER_MIN bytes, new input is kept in the parser until it is at least as
 * long as that token, and then given to expat in one call (each rescan then pays
 * for bytes that doubled the token: linear in all), or until the caller calls xml_parser_flush (a timer: a
 * legitimate client's last piece must not wait for bytes that never come).
 * Below XML_DEFER_MIN a rescan costs little and input goes through at once. */
#define XML_DEFER_MIN 1024

#define XML_DEFAULT_MAX_STANZA 65536
#define XML_DEFAULT_MAX_DEPTH  64
#define XML_DEFAULT_MAX_ATTRS  64

/* ================================================================================
 * trees
 * ================================================================================ */

static bool ns_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

struct xml_node *xml_node_new(const char *name, const char *ns)
{
    struct xml_node *n = xcalloc(1, sizeof *n);
    n->name = xstrdup(name);
    n->ns = xstrdup(ns);
    return n;
}

struct xml_node *xml_append(struct xml_node *parent, struct xml_node *child)
{
    if (child->parent != NULL)
        xml_remove(child);
    child->parent = parent;
    child->next = NULL;
    if (parent->last_child != NULL)
        parent->last_child->next = child;
    else
        parent->first_child = child;
    parent->last_child = child;
    return child;
}

struct xml_node *xml_add_child(struct xml_node *parent, const char *name, const char *ns)
{
    return xml_append(parent, xml_node_new(name, ns));
}

static struct xml_node *text_node_new(const char *text, size_t n)
{
    struct xml_node *t = xcalloc(1, sizeof *t);
    t->text = xstrndup(text, n);
    t->text_len = n;
    return t;
}

void xml_add_text(struct xml_node *parent, const char *text, size_t n)
{
    xml_append(parent, text_node_new(text, n));
}

static struct xml_attr *attr_find(const struct xml_node *n, const char *ns, const char *name)
{
    for (size_t i = 0; i < n->nattrs; i++) {
        struct xml_attr *a = &n->attrs[i];
        if (strcmp(a->name, name) == 0 && ns_eq(a->ns, ns))
            return a;
    }
    return NULL;
}

void xml_set_attr_ns(struct xml_node *n, const char *ns, const char *name, const char *value)
{
    struct xml_attr *a = attr_find(n, ns, name);
    if (a != NULL && value != NULL) {
        char *v = xstrdup(value);   /* value may point into the old one */
        free(a->value);
        a->value = v;
        return;
    }
    if (a != NULL) {
        free(a->name);
        free(a->ns);
        free(a->value);
        size_t i = (size_t)(a - n->attrs);
        memmove(a, a + 1, (n->nattrs - i - 1) * sizeof *a);
        n->nattrs--;
        if (n->nattrs == 0)
            xfree(&n->attrs);
        return;
    }
    if (value == NULL)
        return;
    n->attrs = xrealloc(n->attrs, (n->nattrs + 1) * sizeof *n->attrs);
    a = &n->attrs[n->nattrs++];
    a->name = xstrdup(name);
    a->ns = (ns != NULL && ns[0] != '\0') ? xstrdup(ns) : NULL;
    a->value = xstrdup(value);
}

void xml_set_attr(struct xml_node *n, const char *name, const char *value)
{
    xml_set_attr_ns(n, NULL, name, value);
}

const char *xml_attr_ns(const struct xml_node *n, const char *ns, const char *name)
{
    if (n == NULL || n->name == NULL)
        return NULL;
    struct xml_attr *a = attr_find(n, ns, name);
    return a != NULL ? a->value : NULL;
}

const char *xml_attr(const struct xml_node *n, const char *name)
{
    return xml_attr_ns(n, NULL, name);
}

static bool elem_matches(const struct xml_node *c, const char *name, const char *ns)
{
    if (c->name == NULL)
        return false;
    if (name != NULL && strcmp(c->name, name) != 0)
        return false;
    if (ns != NULL && !ns_eq(c->ns, ns))
        return false;
    return true;
}

struct xml_node *xml_child(const struct xml_node *n, const char *name, const char *ns)
{
    if (n == NULL)
        return NULL;
    for (struct xml_node *c = n->first_child; c != NULL; c = c->next)
        if (elem_matches(c, name, ns))
            return c;
    return NULL;
}

struct xml_node *xml_next(const struct xml_node *c, const char *name, const char *ns)
{
    if (c == NULL)
        return NULL;
    for (struct xml_node *s = c->next; s != NULL; s = s->next)
        if (elem_matches(s, name, ns))
            return s;
    return NULL;
}

struct xml_node *xml_first_elem(const struct xml_node *n)
{
    return xml_child(n, NULL, NULL);
}

char *xml_text(const struct xml_node *n)
{
    size_t len = 0;
    const struct xml_node *c;
    for (c = n != NULL ? n->first_child : NULL; c != NULL; c = c->next)
        if (c->name == NULL)
            len += c->text_len;
    char *s = xmalloc(len + 1);
    len = 0;
    for (c = n != NULL ? n->first_child : NULL; c != NULL; c = c->next) {
        if (c->name == NULL && c->text_len > 0) {
            memcpy(s + len, c->text, c->text_len);
            len += c->text_len;
        }
    }
    s[len] = '\0';
    return s;
}

void xml_remove(struct xml_node *child)
{
    struct xml_node *parent = child->parent;
    if (parent == NULL)
        return;
    struct xml_node *prev = NULL;
    for (struct xml_node *c = parent->first_child; c != NULL; prev = c, c = c->next) {
        if (c != child)
            continue;
        if (prev != NULL)
            prev->next = c->next;
        else
            parent->first_child = c->next;
        if (parent->last_child == c)
            parent->last_child = prev;
        break;
    }
    child->parent = NULL;
    child->next = NULL;
}

struct xml_node *xml_clone(const struct xml_node *n)
{
    if (n == NULL)
        return NULL;
    struct xml_node *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(n->name);
    c->ns = xstrdup(n->ns);
    if (n->text != NULL) {
        c->text = xstrndup(n->text, n->text_len);
        c->text_len = n->text_len;
    }
    if (n->nattrs > 0) {
        c->attrs = xcalloc(n->nattrs, sizeof *c->attrs);
        for (size_t i = 0; i < n->nattrs; i++) {
            c->attrs[i].name = xstrdup(n->attrs[i].name);
            c->attrs[i].ns = xstrdup(n->attrs[i].ns);
            c->attrs[i].value = xstrdup(n->attrs[i].value);
        }
        c->nattrs = n->nattrs;
    }
    for (const struct xml_node *k = n->first_child; k != NULL; k = k->next)
        xml_append(c, xml_clone(k));
    return c;
}

/* --- packed trees: nodes and attribute arrays first, then every string -------- */

struct xml_packed {
    struct xml_node root;   /* the block starts with the root; its subtree follows */
};

static size_t str_size(const char *s)
{
    return s != NULL ? strlen(s) + 1 : 0;
}

/* Adds n's subtree to the bytes of nodes and attribute arrays (*fixed) and of strings (*strs). */
static void pack_size(const struct xml_node *n, size_t *fixed, size_t *strs)
{
    *fixed += sizeof *n + n->nattrs * sizeof *n->attrs;
    *strs += str_size(n->name) + str_size(n->ns) + (n->text != NULL ? n->text_len + 1 : 0);
    for (size_t i = 0; i < n->nattrs; i++)
        *strs += str_size(n->attrs[i].name) + str_size(n->attrs[i].ns) + str_size(n->attrs[i].value);
    for (const struct xml_node *k = n->first_child; k != NULL; k = k->next)
        pack_size(k, fixed, strs);
}

static char *pack_cstr(char **at, const char *s)
{
    return s != NULL ? mk_put_str(at, s, strlen(s)) : NULL;
}

/* Copies n into the node at *fixed (advanced past it and its attributes), its
 * strings at *strs; then its children, appended under it. Returns the copy, unlinked. */
static struct xml_node *pack_node(const struct xml_node *n, char **fixed, char **strs)
{
    struct xml_node *c = (struct xml_node *)(void *)*fixed;
    *fixed += sizeof *c;
    memset(c, 0, sizeof *c);
    c->name = pack_cstr(strs, n->name);
    c->ns = pack_cstr(strs, n->ns);
    if (n->text != NULL) {
        c->text = mk_put_str(strs, n->text, n->text_len);
        c->text_len = n->text_len;
    }
    if (n->nattrs > 0) {
        c->attrs = (struct xml_attr *)(void *)*fixed;
        *fixed += n->nattrs * sizeof *c->attrs;
        for (size_t i = 0; i < n->nattrs; i++) {
            const struct xml_attr *a = &n->attrs[i];
            c->attrs[i].name = pack_cstr(strs, a->name);
            c->attrs[i].ns = pack_cstr(strs, a->ns);
            c->attrs[i].value = pack_cstr(strs, a->value);
        }
        c->nattrs = n->nattrs;
    }
    for (const struct xml_node *k = n->first_child; k != NULL; k = k->next)
        xml_append(c, pack_node(k, fixed, strs));
    return c;
}

struct xml_packed *xml_pack(const struct xml_node *n)
{
    if (n == NULL)
        return NULL;
    size_t fixed = 0, strs = 0;
    pack_size(n, &fixed, &strs);
    /* Sizes are multiples of alignments, and the two alignments are equal: every
     * node and attribute array placed one after another in the first part is aligned. */
    _Static_assert(_Alignof(struct xml_attr) == _Alignof(struct xml_node), "packed layout");
    char *block = xmalloc(fixed + strs);
    char *f = block, *t = block + fixed;
    pack_node(n, &f, &t);
    return (struct xml_packed *)(void *)block;
}

const struct xml_node *xml_packed_root(const struct xml_packed *p)
{
    return p != NULL ? &p->root : NULL;
}

void xml_packed_free(struct xml_packed **pp)
{
    free(*pp);
    *pp = NULL;
}

static void node_release(struct xml_node *n)
{
    for (size_t i = 0; i < n->nattrs; i++) {
        free(n->attrs[i].name);
        free(n->attrs[i].ns);
        free(n->attrs[i].value);
    }
    free(n->attrs);
    free(n->name);
    free(n->ns);
    free(n->text);
    free(n);
}

void xml_free(struct xml_node **np)
{
    if (np == NULL || *np == NULL)
        return;
    struct xml_node *root = *np;
    *np = NULL;
    xml_remove(root);
    /* Iterative post-order walk, so that a deep tree built by code cannot
     * exhaust the stack: detach the first child and descend into it, free a
     * node once it has no children left, then climb back to its parent. */
    struct xml_node *n = root;
    for (;;) {
        struct xml_node *c = n->first_child;
        if (c != NULL) {
            n->first_child = c->next;
            n = c;
            continue;
        }
        struct xml_node *up = n == root ? NULL : n->parent;
        node_release(n);
        if (up == NULL)
            break;
        n = up;
    }
}

/* ================================================================================
 * serialization
 * ================================================================================ */

/* Length (1-4) of the well-formed UTF-8 sequence at s that encodes a character
 * allowed by XML 1.0 (Char production), or 0 if there is none. */
static size_t xml_char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return (c >= 0x20 || c == 0x9 || c == 0xA || c == 0xD) ? 1 : 0;
    size_t len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
        return 0;
    return len;
}

/* Escapes for an attribute value (attr) or for text. Bytes that are not XML
 * characters (invalid UTF-8, control characters) become U+FFFD, so that a tree
 * built by code from untrusted strings still serializes to well-formed XML.
 * In attributes, tab, newline and carriage return are written as character
 * references because attribute-value normalization would turn them into
 * spaces; in text only CR is, because a parser turns a literal CR into LF. */
static void escape(struct buf *out, const char *str, size_t n, bool attr)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;
    buf_reserve(out, n);
    while (i < n) {
        const char *rep = NULL;
        size_t clen = 1;
        switch (s[i]) {
        case '&':  rep = "&amp;"; break;
        case '<':  rep = "&lt;"; break;
        case '>':  rep = "&gt;"; break;
        case '"':  rep = attr ? "&quot;" : NULL; break;
        case '\'': rep = attr ? "&apos;" : NULL; break;
        case '\t': rep = attr ? "&#9;" : NULL; break;
        case '\n': rep = attr ? "&#10;" : NULL; break;
        case '\r': rep = "&#13;"; break;
        default:
            clen = xml_char_len(s + i, n - i);
            if (clen == 0) {
                rep = "\xEF\xBF\xBD";
                clen = 1;
            }
            break;
        }
        if (rep == NULL) {
            i += clen;
            continue;
        }
        buf_append(out, s + run, i - run);
        buf_append_str(out, rep);
        i += clen;
        run = i;
    }
    buf_append(out, s + run, n - run);
}

void xml_escape(struct buf *out, const char *s, size_t n)
{
    escape(out, s, n, true);
}

static bool attr_needs_prefix(const struct xml_attr *a)
{
    return a->ns != NULL && a->ns[0] != '\0' && strcmp(a->ns, XML_NS_XML) != 0;
}

/* Index of the first attribute of n in the same namespace as attribute i: it
 * names the generated prefix ("ns<index>"), declared on this element. */
static size_t attr_prefix_index(const struct xml_node *n, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (attr_needs_prefix(&n->attrs[j]) && strcmp(n->attrs[j].ns, n->attrs[i].ns) == 0)
            return j;
    return i;
}

void xml_serialize(const struct xml_node *n, const char *parent_ns, struct buf *out)
{
    if (n->name == NULL) {
        if (n->text != NULL)
            escape(out, n->text, n->text_len, false);
        return;
    }
    const char *ns = n->ns != NULL ? n->ns : (parent_ns != NULL ? parent_ns : "");
    buf_append(out, "<", 1);
    buf_append_str(out, n->name);
    if (n->ns != NULL && !ns_eq(n->ns, parent_ns)) {
        buf_append_str(out, " xmlns=\"");
        escape(out, n->ns, strlen(n->ns), true);
        buf_append(out, "\"", 1);
    }
    for (size_t i = 0; i < n->nattrs; i++) {
        const struct xml_attr *a = &n->attrs[i];
        if (attr_needs_prefix(a) && attr_prefix_index(n, i) == i) {
            buf_printf(out, " xmlns:ns%zu=\"", i);
            escape(out, a->ns, strlen(a->ns), true);
            buf_append(out, "\"", 1);
        }
    }
    for (size_t i = 0; i < n->nattrs; i++) {
        const struct xml_attr *a = &n->attrs[i];
        buf_append(out, " ", 1);
        if (attr_needs_prefix(a))
            buf_printf(out, "ns%zu:", attr_prefix_index(n, i));
        else if (a->ns != NULL && strcmp(a->ns, XML_NS_XML) == 0)
            buf_append_str(out, "xml:");
        buf_append_str(out, a->name);
        buf_append(out, "=\"", 2);
        if (a->value != NULL)
            escape(out, a->value, strlen(a->value), true);
        buf_append(out, "\"", 1);
    }
    if (n->first_child == NULL) {
        buf_append(out, "/>", 2);
        return;
    }
    buf_append(out, ">", 1);
    for (const struct xml_node *c = n->first_child; c != NULL; c = c->next)
        xml_serialize(c, ns, out);
    buf_append(out, "</", 2);
    buf_append_str(out, n->name);
    buf_append(out, ">", 1);
}

/* ================================================================================
 * expat's memory: one region of pages per stream parser
 * ================================================================================
 * An expat parser makes a few dozen small allocations (about 10 KiB). From
 * malloc they land between the connection's other allocations (OpenSSL,
 * session structs), so freeing them on hibernation leaves partly used pages
 * that stay resident. Each stream parser therefore gets a region: chunks of
 * pages mapped for it alone, bump-allocated, and unmapped all at once when the
 * expat parser is freed (hibernation, reset, xml_parser_free), which hands
 * exactly what expat used back to the kernel.
 *
 * Expat's allocation hooks get no user pointer, so region_current names the
 * region of the parser expat is running for; every call into a stream
 * parser's expat goes between region_enter and region_leave, which nest (a
 * callback may use another parser). This is what makes the stream parser
 * not thread-safe. Documents (xml_parse_document) are parsed and freed at
 * once, so their expat keeps plain malloc.
 *
 * Inside a small chunk, free only marks the block; a run of freed blocks at
 * the end of the chunk is taken back, so expat's stack-like patterns (a
 * buffer replaced by a bigger one) reuse their space. Realloc grows the last
 * block in place when there is room. A request above REGION_LARGE (expat's
 * input buffer or a pool block holding a long attribute value) gets a
 * mapping of its own, grown with mremap and unmapped as soon as it is freed.
 * The region never holds more than cap bytes of mappings: past that, the
 * allocation fails and expat reports XML_ERROR_NO_MEMORY, which becomes a
 * policy-violation error for the stream.
 *
 * With AddressSanitizer, block headers, freed blocks and unused chunk space
 * are poisoned by hand: the chunks come from mmap, which ASan does not watch,
 * but the same code runs as in production and overflows across a block
 * header are still caught (the functions that read the headers are exempt). */

#if defined(__SANITIZE_ADDRESS__)
#define XML_REGION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XML_REGION_ASAN 1
#endif
#endif

#ifdef XML_REGION_ASAN
#include <sanitizer/asan_interface.h>
#define region_poison(p, n)   __asan_poison_memory_region((p), (n))
#define region_unpoison(p, n) __asan_unpoison_memory_region((p), (n))
#define REGION_RAW            __attribute__((no_sanitize_address))
#else
#define region_poison(p, n)   ((void)(p), (void)(n))
#define region_unpoison(p, n) ((void)(p), (void)(n))
#define REGION_RAW
#endif

#define REGION_ALIGN        16u
#define REGION_FIRST_CHUNK  (16u * 1024)   /* holds a parser that saw ordinary stanzas */
#define REGION_MAX_CHUNK    (64u * 1024)
#define REGION_LARGE        (8u * 1024)    /* larger requests get a mapping of their own */
/* The cap: 4 x max_stanza_bytes covers expat's input buffer while it grows
 * (old and new copies of a token up to the stanza cap) and a pool block
 * holding an attribute value as long; the fixed part covers the parser
 * itself, the names it remembers for the stream's life, and the ~16 bytes
 * that expat keeps per byte of a tag made of namespace declarations (which
 * max_attrs does not count) in the 8 KiB it reads before a cap check. */
#define REGION_CAP_FIXED    (256u * 1024)

_Static_assert(REGION_ALIGN % _Alignof(max_align_t) == 0, "blocks must be aligned for any type");

/* At the start of each mapping. */
struct region_chunk {
    struct region_chunk *prev, *next;
    size_t size;              /* bytes mapped, this header included */
    size_t used;              /* where the next block's header goes */
    size_t last;              /* offset of the last block's header; 0: no block */
    bool large;               /* a mapping for one request above REGION_LARGE */
};

/* Before each allocation. */
struct region_block {
    size_t size;              /* bytes asked for */
    uint32_t prev;            /* offset of the previous block's header; 0: none */
    uint32_t freed;
};

_Static_assert(sizeof(struct region_block) == REGION_ALIGN, "a block header keeps alignment");
_Static_assert(REGION_MAX_CHUNK <= UINT32_MAX, "block offsets fit in prev");

#define CHUNK_HDR (((sizeof(struct region_chunk) + REGION_ALIGN - 1) / REGION_ALIGN) * REGION_ALIGN)

struct xml_region {
    struct region_chunk *chunks;   /* newest first */
    size_t mapped;                 /* bytes of all chunks: what cap limits */
    size_t cap;
    size_t next_chunk;             /* size of the next small chunk */
    bool refused;                  /* an allocation failed because of cap */
};

static struct xml_region *region_current;

/* First-size chunks given back by released regions, kept mapped (and faulted in)
 * for the next parser: a login makes and frees three stream parsers, which would
 * otherwise cost three mmap/munmap pairs and their page faults. Bounded, so idle
 * connections still hand their pages back. */
#define REGION_CACHE_MAX 32u
static struct region_chunk *region_cache;
static unsigned region_cache_n;
static bool region_cache_used;   /* a chunk was taken since xml_trim_cache last looked */

static size_t round_to(size_t n, size_t unit)
{
    return (n + unit - 1) / unit * unit;
}

static size_t page_bytes(void)
{
    static size_t page;
    if (page == 0) {
        long v = sysconf(_SC_PAGESIZE);
        page = v > 0 ? (size_t)v : 4096;
    }
    return page;
}

static void region_init(struct xml_region *r, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->cap = cap;
    r->next_chunk = REGION_FIRST_CHUNK;
}

static void region_bug(const char *what)
{
    fprintf(stderr, "level=fatal event=bug what=xml_region_%s\n", what);
    abort();
}

/* Maps a chunk of size bytes (a multiple of the page size), or NULL when the
 * cap or the kernel refuses. */
static struct region_chunk *chunk_map(struct xml_region *r, size_t size, bool large)
{
    if (size > r->cap - r->mapped) {
        r->refused = true;
        return NULL;
    }
    void *m;
    if (!large && size == REGION_FIRST_CHUNK && region_cache != NULL) {
        m = region_cache;
        region_cache = region_cache->next;
        region_cache_n--;
        region_cache_used = true;
    } else {
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
    }
    struct region_chunk *c = m;
    c->prev = NULL;
    c->next = r->chunks;
    if (c->next != NULL)
        c->next->prev = c;
    r->chunks = c;
    c->size = size;
    c->used = CHUNK_HDR;
    c->last = 0;
    c->large = large;
    r->mapped += size;
    region_poison((char *)c + CHUNK_HDR, size - CHUNK_HDR);
    return c;
}

/* Gives a chunk's pages back to the kernel. */
static void chunk_release(struct region_chunk *c)
{
    region_unpoison(c, c->size);   /* the pages may be mapped again by anyone */
    if (munmap(c, c->size) == -1)
        region_bug("munmap");
}

static void chunk_unmap(struct xml_region *r, struct region_chunk *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        r->chunks = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    r->mapped -= c->size;
    if (!c->large && c->size == REGION_FIRST_CHUNK && region_cache_n < REGION_CACHE_MAX) {
        region_poison((char *)c + CHUNK_HDR, c->size - CHUNK_HDR);
        c->next = region_cache;
        region_cache = c;
        region_cache_n++;
        return;
    }
    chunk_release(c);
}

size_t xml_cache_chunks(void)
{
    return region_cache_n;
}

void xml_trim_cache(void)
{
    if (region_cache_used) {
        region_cache_used = false;
        return;
    }
    while (region_cache != NULL) {
        struct region_chunk *c = region_cache;
        region_cache = c->next;
        region_cache_n--;
        chunk_release(c);
    }
}

/* Unmaps everything: expat's parser has just been freed. */
static void region_release(struct xml_region *r)
{
    while (r->chunks != NULL)
        chunk_unmap(r, r->chunks);
    r->next_chunk = REGION_FIRST_CHUNK;
    r->refused = false;
}

/* The chunk holding ptr; a pointer from elsewhere is a bug. */
static struct region_chunk *region_find(struct xml_region *r, const void *ptr)
{
    const char *p = ptr;
    for (struct region_chunk *c = r->chunks; c != NULL; c = c->next)
        if (p > (const char *)c && p < (const char *)c + c->size)
            return c;
    region_bug("foreign_pointer");
    return NULL;
}

/* Places a block of n bytes at c's end, or NULL when it does not fit. */
static REGION_RAW void *chunk_bump(struct region_chunk *c, size_t n)
{
    size_t need = sizeof(struct region_block) + round_to(n, REGION_ALIGN);
    if (c->size - c->used < need)
        return NULL;
    struct region_block *b = (struct region_block *)((char *)c + c->used);
    b->size = n;
    b->prev = (uint32_t)c->last;
    b->freed = 0;
    c->last = c->used;
    c->used += need;
    region_unpoison(b + 1, n);
    return b + 1;
}

static void *region_alloc(struct xml_region *r, size_t n)
{
    if (n == 0)
        n = 1;   /* every block has a byte: its pointer lies inside its chunk */
    if (n > REGION_LARGE) {
        size_t page = page_bytes();
        if (n > SIZE_MAX - CHUNK_HDR - sizeof(struct region_block) - page) {
            r->refused = true;
            return NULL;
        }
        struct region_chunk *c = chunk_map(r, round_to(CHUNK_HDR + sizeof(struct region_block) + n, page), true);
        return c != NULL ? chunk_bump(c, n) : NULL;
    }
    for (struct region_chunk *c = r->chunks; c != NULL; c = c->next) {
        if (c->large)
            continue;
        void *p = chunk_bump(c, n);
        if (p != NULL)
            return p;
    }
    struct region_chunk *c = chunk_map(r, r->next_chunk, false);
    if (c == NULL)
        return NULL;
    if (r->next_chunk < REGION_MAX_CHUNK)
        r->next_chunk *= 2;
    return chunk_bump(c, n);   /* REGION_LARGE fits in any chunk */
}

static REGION_RAW void region_free(struct xml_region *r, void *ptr)
{
    if (ptr == NULL)
        return;
    struct region_chunk *c = region_find(r, ptr);
    if (c->large) {
        chunk_unmap(r, c);
        return;
    }
    struct region_block *b = (struct region_block *)ptr - 1;
    if (b->freed)
        region_bug("double_free");
    b->freed = 1;
    region_poison(ptr, b->size);
    /* Take back the freed blocks at the chunk's end. */
    while (c->last != 0) {
        struct region_block *l = (struct region_block *)((char *)c + c->last);
        if (!l->freed)
            break;
        c->used = c->last;
        c->last = l->prev;
    }
}

/* A large block grows by moving its pages (no copy, no second copy resident). */
static REGION_RAW void *large_grow(struct xml_region *r, struct region_chunk *c, size_t n)
{
    size_t page = page_bytes();
    if (n > SIZE_MAX - CHUNK_HDR - sizeof(struct region_block) - page) {
        r->refused = true;
        return NULL;
    }
    size_t size = round_to(CHUNK_HDR + sizeof(struct region_block) + n, page);
    if (size - c->size > r->cap - r->mapped) {
        r->refused = true;
        return NULL;
    }
    size_t old_size = c->size;
    size_t old_n = ((struct region_block *)((char *)c + CHUNK_HDR))->size;
    region_unpoison(c, old_size);
    struct region_chunk *m = mremap(c, old_size, size, MREMAP_MAYMOVE);
    if (m == MAP_FAILED) {
        region_poison((char *)c + CHUNK_HDR, sizeof(struct region_block));
        region_poison((char *)c + CHUNK_HDR + sizeof(struct region_block) + old_n,
                      old_size - CHUNK_HDR - sizeof(struct region_block) - old_n);
        return NULL;
    }
    if (m->prev != NULL)
        m->prev->next = m;
    else
        r->chunks = m;
    if (m->next != NULL)
        m->next->prev = m;
    r->mapped += size - old_size;
    m->size = size;
    m->used = CHUNK_HDR + sizeof(struct region_block) + round_to(n, REGION_ALIGN);
    struct region_block *b = (struct region_block *)((char *)m + CHUNK_HDR);
    b->size = n;
    region_poison(b, sizeof *b);
    region_unpoison(b + 1, n);
    region_poison((char *)(b + 1) + n, size - CHUNK_HDR - sizeof *b - n);
    return b + 1;
}

static REGION_RAW void *region_realloc(struct xml_region *r, void *ptr, size_t n)
{
    if (ptr == NULL)
        return region_alloc(r, n);
    if (n == 0)
        n = 1;
    struct region_chunk *c = region_find(r, ptr);
    struct region_block *b = (struct region_block *)ptr - 1;
    size_t old = b->size;
    size_t at = (size_t)((char *)b - (char *)c);
    size_t room = c->size - at - sizeof *b;   /* bytes from ptr to the chunk's end */
    bool in_place = n <= old;
    if (!in_place && n <= room) {
        /* A large block owns its mapping; a small one may grow over the
         * chunk's free end, but stays small (a large one can be unmapped
         * alone). */
        in_place = c->large || (c->last == at && n <= REGION_LARGE);
    }
    if (in_place) {
        if (n > old)
            region_unpoison((char *)ptr + old, n - old);
        else
            region_poison((char *)ptr + n, old - n);
        b->size = n;
        if (c->last == at)
            c->used = at + sizeof *b + round_to(n, REGION_ALIGN);
        return ptr;
    }
    if (c->large && n > REGION_LARGE)
        return large_grow(r, c, n);
    void *q = region_alloc(r, n);
    if (q == NULL)
        return NULL;
    memcpy(q, ptr, old < n ? old : n);
    region_free(r, ptr);
    return q;
}

static struct xml_region *region_enter(struct xml_region *r)
{
    struct xml_region *saved = region_current;
    region_current = r;
    return saved;
}

static void region_leave(struct xml_region *saved)
{
    region_current = saved;
}

static struct xml_region *region_now(void)
{
    if (region_current == NULL)
        region_bug("no_current_region");   /* an expat call outside region_enter */
    return region_current;
}

static void *region_malloc_fcn(size_t n)
{
    return region_alloc(region_now(), n);
}

static void *region_realloc_fcn(void *ptr, size_t n)
{
    return region_realloc(region_now(), ptr, n);
}

static void region_free_fcn(void *ptr)
{
    region_free(region_now(), ptr);
}

static const XML_Memory_Handling_Suite region_suite = {
    .malloc_fcn = region_malloc_fcn,
    .realloc_fcn = region_realloc_fcn,
    .free_fcn = region_free_fcn,
};

/* ================================================================================
 * the parser
 * ================================================================================ */

enum xml_stream_state {
    XML_STREAM_HEADER = 0,   /* waiting for <stream:stream> */
    XML_STREAM_OPEN,         /* inside the stream */
    XML_STREAM_CLOSED,       /* </stream:stream> seen: input is ignored */
};

#define XML_ERROR_TEXT_MAX 192

struct xml_parser {
    XML_Parser expat;
    struct xml_limits limits;
    xml_event_fn *cb;
    void *ud;
    enum xml_stream_state state;
    unsigned depth;              /* open elements, the stream element included */
    enum xml_error_kind error;
    struct xml_node *stanza;     /* the top-level child being built, or NULL */
    struct xml_node *cur;        /* its innermost open element */
    struct xml_node *text;       /* last child of cur when it is text still growing */
    size_t text_cap;             /* bytes allocated for text->text */
    long long fed;               /* bytes given to expat since the stream began */
    long long mark;              /* where the bytes counted against the stanza cap start */
    long long ws_run;            /* whitespace bytes between stanzas since the last one */
    long long partial;           /* bytes of the partial token expat holds (rescanned next call) */
    unsigned long long scanned;  /* bytes expat has scanned, rescans included (tests) */
    struct buf deferred;         /* input not yet given to expat (see XML_DEFER_MIN) */
    bool in_parse;               /* inside XML_Parse: expat may not be reset or freed */
    bool halted;                 /* expat was told to stop: late callbacks are ignored */
    bool reset_requested;
    bool stop_requested;
    bool stopped;                /* input ignored until xml_parser_reset */
    bool error_reported;
    bool document;               /* xml_parse_document: the root is the one "stanza" */
    bool in_cdata;               /* inside a CDATA section: expat state we cannot rebuild */
    char *error_text;            /* XML_ERROR_TEXT_MAX bytes once an error is recorded (no room
                                  * kept by the many parsers that never fail) */
    char *stream_ns;             /* default namespace declared on the stream header */
    struct xml_node *document_root;
    /* Hibernation (xml_parser_idle): expat is NULL between stanzas, and the next
     * feed creates a new one that first parses resume_tag. */
    struct buf header_decls;     /* the header's namespace declarations, while it is parsed */
    char *resume_tag;            /* <p:stream xmlns...> re-declaring them, from STREAM_OPEN on */
    long long origin;            /* stream offset of the current expat parser's byte 0 */
    unsigned long line_base;     /* lines of the stream before that parser's first line */
    long long col_base;          /* added to that parser's columns on its first line */
    /* Expat's memory (stream parsers only): see "expat's memory" above. */
    struct xml_region region;
    size_t region_base;          /* bytes mapped once the current expat parser was ready */
};

/* Makes expat stop as soon as the running callback returns. */
static void halt(struct xml_parser *p)
{
    if (p->halted)
        return;
    p->halted = true;
    if (p->in_parse) {
        struct xml_region *saved = region_enter(&p->region);
        XML_StopParser(p->expat, XML_FALSE);
        region_leave(saved);
    }
}

static void fail(struct xml_parser *p, enum xml_error_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct xml_parser *p, enum xml_error_kind kind, const char *fmt, ...)
{
    if (p->halted || p->error != XML_ERROR_NONE)
        return;
    p->error = kind;
    if (p->error_text == NULL)
        p->error_text = xmalloc(XML_ERROR_TEXT_MAX);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->error_text, XML_ERROR_TEXT_MAX, fmt, ap);
    va_end(ap);
    halt(p);
}

/* Positions are offsets in the client's bytes: an expat parser created on
 * resume also counted the synthetic stream tag, which origin takes out. */
static long long event_start(struct xml_parser *p)
{
    return (long long)XML_GetCurrentByteIndex(p->expat) + p->origin;
}

static long long event_end(struct xml_parser *p)
{
    return event_start(p) + XML_GetCurrentByteCount(p->expat);
}

/* Line and column in the client's bytes, for error texts (see event_start). */
static unsigned long stream_line(struct xml_parser *p)
{
    return p->line_base + (unsigned long)XML_GetCurrentLineNumber(p->expat);
}

static unsigned long stream_column(struct xml_parser *p)
{
    long long col = (long long)XML_GetCurrentColumnNumber(p->expat);
    if (XML_GetCurrentLineNumber(p->expat) == 1)
        col += p->col_base;
    return (unsigned long)col;
}

/* Fails if the bytes from mark to upto cross the stanza cap. */
static bool over_cap(struct xml_parser *p, long long upto)
{
    if ((unsigned long long)(upto - p->mark) <= p->limits.max_stanza_bytes)
        return false;
    fail(p, XML_ERROR_POLICY_VIOLATION, "%s exceeds the limit of %zu bytes",
         p->state == XML_STREAM_HEADER && !p->document ? "the stream header" : "a stanza",
         p->limits.max_stanza_bytes);
    return true;
}

static void emit(struct xml_parser *p, enum xml_event_kind kind, struct xml_node *node)
{
    struct xml_node *n = node;
    p->cb(p->ud, kind, n != NULL ? &n : NULL);
    xml_free(&n);
}

/* Expat names a namespaced element or attribute "uri SEP local" or, when it
 * was written with a prefix, "uri SEP local SEP prefix" (triplets are on so
 * that the stream element's prefix can be re-declared on resume). */
static void split_name(const char *qname, char **ns, char **local)
{
    const char *sep = strchr(qname, XML_NS_SEP);
    if (sep != NULL) {
        *ns = xstrndup(qname, (size_t)(sep - qname));
        const char *end = strchr(sep + 1, XML_NS_SEP);
        *local = end != NULL ? xstrndup(sep + 1, (size_t)(end - sep - 1)) : xstrdup(sep + 1);
    } else {
        *ns = NULL;
        *local = xstrdup(qname);
    }
}

/* The prefix a name was written with, or NULL (see split_name). */
static const char *name_prefix(const char *qname)
{
    const char *sep = strchr(qname, XML_NS_SEP);
    if (sep == NULL)
        return NULL;
    sep = strchr(sep + 1, XML_NS_SEP);
    return sep != NULL ? sep + 1 : NULL;
}

static struct xml_node *node_from_expat(const XML_Char *qname, const XML_Char **atts, size_t nattrs)
{
    struct xml_node *n = xcalloc(1, sizeof *n);
    split_name(qname, &n->ns, &n->name);
    if (n->ns == NULL)
        n->ns = xstrdup("");
    if (nattrs > 0) {
        n->attrs = xcalloc(nattrs, sizeof *n->attrs);
        for (size_t i = 0; i < nattrs; i++) {
            split_name(atts[2 * i], &n->attrs[i].ns, &n->attrs[i].name);
            n->attrs[i].value = xstrdup(atts[2 * i + 1]);
        }
        n->nattrs = nattrs;
    }
    return n;
}

static size_t count_attrs(const XML_Char **atts)
{
    size_t n = 0;
    while (atts[2 * n] != NULL)
        n++;
    return n;
}

static void stream_open(struct xml_parser *p, const XML_Char *qname, const XML_Char **atts)
{
    if (over_cap(p, event_end(p)))
        return;
    size_t nattrs = count_attrs(atts);
    if (nattrs > p->limits.max_attrs) {
        fail(p, XML_ERROR_POLICY_VIOLATION, "the stream header has more than %u attributes",
             p->limits.max_attrs);
        return;
    }
    struct xml_node *n = node_from_expat(qname, atts, nattrs);
    if (strcmp(n->name, "stream") != 0) {
        fail(p, XML_ERROR_BAD_FORMAT, "the stream does not start with <stream:stream>");
    } else if (strcmp(n->ns, XML_NS_STREAM) != 0) {
        fail(p, XML_ERROR_INVALID_NAMESPACE, "the stream element is not in namespace %s",
             XML_NS_STREAM);
    }
    if (p->halted) {
        xml_free(&n);
        return;
    }
    /* What a new expat parser must read to be where this one is now: the
     * stream element, under the name the client gave it (so that its close
     * tag matches), with every namespace declared on it. */
    const char *prefix = name_prefix(qname);
    struct buf tag;
    buf_init(&tag);
    buf_append_str(&tag, "<");
    if (prefix != NULL) {
        buf_append_str(&tag, prefix);
        buf_append_str(&tag, ":");
    }
    buf_append_str(&tag, "stream");
    buf_append(&tag, p->header_decls.data, p->header_decls.len);
    buf_append_str(&tag, ">");
    xfree(&p->resume_tag);
    p->resume_tag = xstrndup(tag.data, tag.len);
    buf_release(&tag);
    buf_release(&p->header_decls);
    p->depth = 1;
    p->state = XML_STREAM_OPEN;
    p->mark = event_end(p);
    p->ws_run = 0;
    emit(p, XML_EVENT_STREAM_OPEN, n);
}

static unsigned base_depth(const struct xml_parser *p)
{
    return p->document ? 0 : 1;
}

static void XMLCALL on_start(void *ud, const XML_Char *qname, const XML_Char **atts)
{
    struct xml_parser *p = ud;
    if (p->halted)
        return;
    if (!p->document && p->depth == 0) {
        if (p->state == XML_STREAM_OPEN) {
            /* resume_tag, parsed by a new expat parser: the stream is open already. */
            p->depth = 1;
            return;
        }
        stream_open(p, qname, atts);
        return;
    }
    unsigned level = p->depth + 1 - base_depth(p);   /* 1 = the stanza itself */
    if (level == 1) {
        p->mark = event_start(p);
        p->ws_run = 0;
    }
    if (over_cap(p, event_end(p)))
        return;
    if (level > p->limits.max_depth) {
        fail(p, XML_ERROR_POLICY_VIOLATION, "elements nest deeper than %u levels", p->limits.max_depth);
        return;
    }
    size_t nattrs = count_attrs(atts);
    if (nattrs > p->limits.max_attrs) {
        fail(p, XML_ERROR_POLICY_VIOLATION, "an element has more than %u attributes", p->limits.max_attrs);
        return;
    }
    struct xml_node *n = node_from_expat(qname, atts, nattrs);
    if (level == 1)
        p->stanza = n;
    else
        xml_append(p->cur, n);
    p->cur = n;
    p->text = NULL;
    p->depth++;
}

static void XMLCALL on_end(void *ud, const XML_Char *qname)
{
    struct xml_parser *p = ud;
    if (p->halted)
        return;
    unsigned level = p->depth - base_depth(p);
    long long end = event_end(p);
    p->depth--;
    p->text = NULL;
    if (level == 0) {
        p->mark = end;
        p->state = XML_STREAM_CLOSED;
        /* Stop before the callback, which may reset: nothing after the close
         * tag is parsed, so trailing bytes cannot turn into an error event. */
        halt(p);
        emit(p, XML_EVENT_STREAM_CLOSE, NULL);
        return;
    }
    if (level > 1) {
        p->cur = p->cur->parent;
        return;
    }
    if (over_cap(p, end))
        return;
    struct xml_node *n = p->stanza;
    p->stanza = NULL;
    p->cur = NULL;
    p->mark = end;
    if (p->document) {
        p->document_root = n;
        return;
    }
    emit(p, XML_EVENT_STANZA, n);
}

static void text_append(struct xml_parser *p, const char *s, size_t n)
{
    struct xml_node *t = p->text;
    if (t == NULL) {
        size_t cap = 16;
        while (cap < n + 1)
            cap *= 2;
        t = xcalloc(1, sizeof *t);
        t->text = xmalloc(cap);
        p->text_cap = cap;
        xml_append(p->cur, t);
        p->text = t;
    } else if (t->text_len + n + 1 > p->text_cap) {
        size_t cap = p->text_cap;
        while (cap < t->text_len + n + 1)
            cap *= 2;
        t->text = xrealloc(t->text, cap);
        p->text_cap = cap;
    }
    memcpy(t->text + t->text_len, s, n);
    t->text_len += n;
    t->text[t->text_len] = '\0';
}

static void XMLCALL on_text(void *ud, const XML_Char *s, int len)
{
    struct xml_parser *p = ud;
    if (p->halted || len <= 0)
        return;
    if (p->stanza == NULL) {
        /* Between stanzas RFC 6120 allows only whitespace (keepalives). Other
         * text is reported as not-well-formed: the stream is not a sequence of
         * stanzas any more and there is no closer condition in our set. */
        for (int i = 0; i < len; i++) {
            if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') {
                fail(p, XML_ERROR_NOT_WELL_FORMED, "text other than whitespace between stanzas");
                return;
            }
        }
        /* A run of whitespace is not buffered, but an endless one is no
         * keepalive either: it shares the stanza cap. */
        p->ws_run += len;
        if ((unsigned long long)p->ws_run > p->limits.max_stanza_bytes) {
            fail(p, XML_ERROR_POLICY_VIOLATION, "more than %zu bytes of whitespace between stanzas",
                 p->limits.max_stanza_bytes);
            return;
        }
        p->mark = event_end(p);
        return;
    }
    if (over_cap(p, event_end(p)))
        return;
    text_append(p, s, (size_t)len);
}

static void XMLCALL on_ns_decl(void *ud, const XML_Char *prefix, const XML_Char *uri)
{
    struct xml_parser *p = ud;
    /* Only the stream header's own declarations: in XML_STREAM_OPEN at depth
     * 0, this is resume_tag being parsed again. */
    if (p->halted || p->document || p->depth != 0 || p->state != XML_STREAM_HEADER)
        return;
    const char *value = uri != NULL ? uri : "";
    buf_append_str(&p->header_decls, " xmlns");
    if (prefix != NULL) {
        buf_append_str(&p->header_decls, ":");
        buf_append_str(&p->header_decls, prefix);
    }
    buf_append_str(&p->header_decls, "=\"");
    xml_escape(&p->header_decls, value, strlen(value));
    buf_append_str(&p->header_decls, "\"");
    if (prefix != NULL)
        return;
    xfree(&p->stream_ns);
    p->stream_ns = xstrdup(value);
}

static void XMLCALL on_cdata_start(void *ud)
{
    struct xml_parser *p = ud;
    p->in_cdata = true;
}

static void XMLCALL on_cdata_end(void *ud)
{
    struct xml_parser *p = ud;
    p->in_cdata = false;
}

static void XMLCALL on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int has_internal_subset)
{
    fail(ud, XML_ERROR_RESTRICTED_XML, "a DOCTYPE declaration is not allowed");
}

static void XMLCALL on_entity_decl(void *ud, const XML_Char *name, int is_parameter_entity,
                                   const XML_Char *value, int value_length, const XML_Char *base,
                                   const XML_Char *sysid, const XML_Char *pubid,
                                   const XML_Char *notation)
{
    fail(ud, XML_ERROR_RESTRICTED_XML, "an entity declaration is not allowed");
}

static void XMLCALL on_pi(void *ud, const XML_Char *target, const XML_Char *data)
{
    fail(ud, XML_ERROR_RESTRICTED_XML, "a processing instruction is not allowed");
}

static void XMLCALL on_comment(void *ud, const XML_Char *data)
{
    fail(ud, XML_ERROR_RESTRICTED_XML, "a comment is not allowed");
}

static void XMLCALL on_skipped_entity(void *ud, const XML_Char *name, int is_parameter_entity)
{
    fail(ud, XML_ERROR_RESTRICTED_XML, "a reference to an undeclared entity is not allowed");
}

static void install_handlers(struct xml_parser *p)
{
    XML_SetUserData(p->expat, p);
    XML_SetReturnNSTriplet(p->expat, XML_TRUE);
    XML_SetElementHandler(p->expat, on_start, on_end);
    XML_SetCharacterDataHandler(p->expat, on_text);
    XML_SetCdataSectionHandler(p->expat, on_cdata_start, on_cdata_end);
    XML_SetStartNamespaceDeclHandler(p->expat, on_ns_decl);
    XML_SetStartDoctypeDeclHandler(p->expat, on_doctype);
    XML_SetEntityDeclHandler(p->expat, on_entity_decl);
    XML_SetProcessingInstructionHandler(p->expat, on_pi);
    XML_SetCommentHandler(p->expat, on_comment);
    XML_SetSkippedEntityHandler(p->expat, on_skipped_entity);
    XML_SetParamEntityParsing(p->expat, XML_PARAM_ENTITY_PARSING_NEVER);
}

static enum xml_error_kind map_expat_error(enum XML_Error e)
{
    switch (e) {
    case XML_ERROR_UNDEFINED_ENTITY:
    case XML_ERROR_RECURSIVE_ENTITY_REF:
    case XML_ERROR_PARAM_ENTITY_REF:
    case XML_ERROR_BINARY_ENTITY_REF:
    case XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF:
    case XML_ERROR_EXTERNAL_ENTITY_HANDLING:
    case XML_ERROR_ENTITY_DECLARED_IN_PE:
    case XML_ERROR_NOT_STANDALONE:
#if XML_MAJOR_VERSION > 2 || (XML_MAJOR_VERSION == 2 && XML_MINOR_VERSION >= 4)
    case XML_ERROR_AMPLIFICATION_LIMIT_BREACH:
#endif
        return XML_ERROR_RESTRICTED_XML;
    case XML_ERROR_NO_MEMORY:
        return XML_ERROR_POLICY_VIOLATION;
    default:
        return XML_ERROR_NOT_WELL_FORMED;
    }
}

static void expat_free(struct xml_parser *p);

/* Back to the state of a fresh parser. The expat parser is freed, not reset,
 * so that its region (and whatever a big stanza made expat allocate) goes
 * back to the kernel; the next feed creates one, as after a hibernation. */
static void reset_now(struct xml_parser *p)
{
    if (p->expat != NULL)
        expat_free(p);
    xml_free(&p->stanza);
    xml_free(&p->document_root);
    xfree(&p->stream_ns);
    xfree(&p->resume_tag);
    buf_release(&p->header_decls);
    p->in_cdata = false;
    p->origin = 0;
    p->line_base = 0;
    p->col_base = 0;
    p->cur = NULL;
    p->text = NULL;
    p->text_cap = 0;
    p->state = XML_STREAM_HEADER;
    p->depth = 0;
    p->fed = 0;
    p->mark = 0;
    p->ws_run = 0;
    p->partial = 0;
    buf_release(&p->deferred);
    p->halted = false;
    p->reset_requested = false;
    p->stop_requested = false;
    p->stopped = false;
    p->error_reported = false;
    p->error = XML_ERROR_NONE;
    xfree(&p->error_text);
}

static void expat_create(struct xml_parser *p)
{
    static const XML_Char ns_sep[] = { XML_NS_SEP, '\0' };
    struct xml_region *saved = region_enter(&p->region);
    /* The encoding given here overrides any declaration: XMPP is UTF-8 only. */
    if (p->document)
        p->expat = XML_ParserCreateNS("UTF-8", XML_NS_SEP);
    else
        p->expat = XML_ParserCreate_MM("UTF-8", &region_suite, ns_sep);
    if (p->expat == NULL) {
        fprintf(stderr, "level=fatal event=out_of_memory what=expat\n");
        abort();
    }
    install_handlers(p);
    region_leave(saved);
    p->region_base = p->region.mapped;
}

/* Frees the expat parser and unmaps its region. Not from inside XML_Parse. */
static void expat_free(struct xml_parser *p)
{
    struct xml_region *saved = region_enter(&p->region);
    XML_ParserFree(p->expat);
    region_leave(saved);
    p->expat = NULL;
    region_release(&p->region);
}

static struct xml_parser *parser_create(const struct xml_limits *limits, xml_event_fn *cb,
                                        void *ud, bool document)
{
    struct xml_parser *p = xcalloc(1, sizeof *p);
    buf_init(&p->header_decls);
    p->limits.max_stanza_bytes = XML_DEFAULT_MAX_STANZA;
    p->limits.max_depth = XML_DEFAULT_MAX_DEPTH;
    p->limits.max_attrs = XML_DEFAULT_MAX_ATTRS;
    if (limits != NULL) {
        if (limits->max_stanza_bytes > 0)
            p->limits.max_stanza_bytes = limits->max_stanza_bytes;
        if (limits->max_depth > 0)
            p->limits.max_depth = limits->max_depth;
        if (limits->max_attrs > 0)
            p->limits.max_attrs = limits->max_attrs;
    }
    p->cb = cb;
    p->ud = ud;
    p->document = document;
    size_t stanza = p->limits.max_stanza_bytes;
    region_init(&p->region, stanza <= (SIZE_MAX - REGION_CAP_FIXED) / 4 ? 4 * stanza + REGION_CAP_FIXED
                                                                         : SIZE_MAX);
    expat_create(p);
    return p;
}

/* Hands one bounded chunk to expat, then records an expat error or a crossed cap. */
static void parse_chunk(struct xml_parser *p, const char *data, size_t len, bool final)
{
    /* Even told "UTF-8", expat switches to UTF-16 when the first two bytes
     * hold a NUL or a UTF-16 byte order mark, and whether it does depends on
     * how those bytes were split. None of them can start a UTF-8 stream. */
    for (size_t i = 0; p->fed + (long long)i < 2 && i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == 0x00 || (p->fed + (long long)i == 0 && (c == 0xFE || c == 0xFF))) {
            fail(p, XML_ERROR_NOT_WELL_FORMED, "the stream is not UTF-8");
            return;
        }
    }
    struct xml_region *saved = region_enter(&p->region);
    p->region.refused = false;
    p->in_parse = true;
    enum XML_Status st = XML_Parse(p->expat, data, (int)len, final ? XML_TRUE : XML_FALSE);
    p->in_parse = false;
    region_leave(saved);
    p->scanned += (unsigned long long)(p->partial + (long long)len);
    p->fed += (long long)len;
    /* Outside a callback, expat's current event is where it stopped: the start of
     * the partial token it keeps for the next call. */
    p->partial = 0;
    if (p->expat != NULL && !p->halted) {
        XML_Index at = XML_GetCurrentByteIndex(p->expat);
        if (at >= 0 && (long long)at + p->origin <= p->fed)
            p->partial = p->fed - ((long long)at + p->origin);
    }
    if (st == XML_STATUS_ERROR && !p->halted) {
        enum XML_Error e = XML_GetErrorCode(p->expat);
        if (e == XML_ERROR_NO_MEMORY && p->region.refused) {
            fail(p, XML_ERROR_POLICY_VIOLATION, "line %lu column %lu: parsing needs more than the "
                 "parser's memory limit of %zu bytes", stream_line(p), stream_column(p), p->region.cap);
            return;
        }
        fail(p, map_expat_error(e), "line %lu column %lu: %s", stream_line(p), stream_column(p),
             XML_ErrorString(e));
        return;
    }
    /* What expat holds now (a partial token) and the partial tree both lie
     * after mark; checking here bounds them even if no callback ever fires. */
    if (!p->halted && !final)
        over_cap(p, p->fed);
}

/* Leaves hibernation: a new expat parser, which in an open stream first reads
 * resume_tag. That tag is not the client's: no event, no byte counted (origin),
 * no line or column (line_base, col_base). */
static void resume(struct xml_parser *p)
{
    expat_create(p);
    if (p->state != XML_STREAM_OPEN)
        return;   /* reset while hibernated: a new stream header comes */
    const char *tag = p->resume_tag;
    size_t n = strlen(tag);
    p->depth = 0;
    /* The header was accepted once: its declarations must not fail now on
     * the memory cap because this parser is fed differently. */
    size_t cap = p->region.cap;
    p->region.cap = SIZE_MAX;
    struct xml_region *saved = region_enter(&p->region);
    p->in_parse = true;
    enum XML_Status st = XML_STATUS_OK;
    for (size_t off = 0; off < n && st == XML_STATUS_OK; off += XML_FEED_CHUNK) {
        size_t len = n - off < XML_FEED_CHUNK ? n - off : XML_FEED_CHUNK;
        st = XML_Parse(p->expat, tag + off, (int)len, XML_FALSE);
    }
    p->in_parse = false;
    region_leave(saved);
    p->region.cap = cap;
    p->region_base = p->region.mapped;
    /* Expat accepted these declarations once, so this cannot fail. */
    if (st != XML_STATUS_OK || p->depth != 1 || p->halted || XML_GetCurrentLineNumber(p->expat) != 1 ||
        XML_GetCurrentByteIndex(p->expat) != (XML_Index)n) {
        fprintf(stderr, "level=fatal event=bug what=xml_resume\n");
        abort();
    }
    p->origin = p->fed - (long long)n;
    p->col_base -= (long long)XML_GetCurrentColumnNumber(p->expat);
}

bool xml_parser_idle(struct xml_parser *p)
{
    if (p->expat == NULL || p->document || p->in_parse)
        return false;
    if (p->state != XML_STREAM_OPEN || p->error != XML_ERROR_NONE || p->halted || p->stopped ||
        p->reset_requested || p->stop_requested)
        return false;
    /* Between stanzas, exactly: only the stream element open, no tree being
     * built, and the last event (a stanza's end tag, whitespace, the header)
     * ended at the last byte fed, so expat holds no partial token (a held CR
     * or half a UTF-8 character would leave mark behind). Inside a CDATA
     * section expat's tokenizer is in another mode that a new parser would
     * not be in. Expat's own count of consumed bytes must agree. */
    if (p->depth != 1 || p->stanza != NULL || p->in_cdata || p->mark != p->fed || p->deferred.len > 0)
        return false;
    XML_ParsingStatus status;
    XML_GetParsingStatus(p->expat, &status);
    if (status.parsing != XML_PARSING)
        return false;
    if ((long long)XML_GetCurrentByteIndex(p->expat) + p->origin != p->fed)
        return false;
    /* Where the next byte sits, for error texts. */
    p->line_base = stream_line(p) - 1;
    p->col_base = (long long)stream_column(p);
    expat_free(p);
    p->origin = 0;
    p->partial = 0;
    return true;
}

struct xml_parser *xml_parser_new(const struct xml_limits *limits, xml_event_fn *cb, void *ud)
{
    return parser_create(limits, cb, ud, false);
}

void xml_parser_free(struct xml_parser **pp)
{
    if (pp == NULL || *pp == NULL)
        return;
    struct xml_parser *p = *pp;
    *pp = NULL;
    if (p->expat != NULL)
        expat_free(p);
    xml_free(&p->stanza);
    xml_free(&p->document_root);
    free(p->stream_ns);
    free(p->resume_tag);
    free(p->error_text);
    buf_release(&p->header_decls);
    buf_release(&p->deferred);
    free(p);
}

/* True when n more bytes should wait in p->deferred rather than go to expat now
 * (see XML_DEFER_MIN). Never past the stanza cap: expat must see those bytes to
 * refuse them. */
static bool defer_input(const struct xml_parser *p, size_t n)
{
    if (p->expat == NULL || p->partial < XML_DEFER_MIN)
        return false;
    unsigned long long waiting = (unsigned long long)p->deferred.len + n;
    if (waiting >= (unsigned long long)p->partial)
        return false;
    return (unsigned long long)(p->fed - p->mark) + waiting <= p->limits.max_stanza_bytes;
}

/* Gives data to expat, XML_FEED_CHUNK at a time, and reports what came of it. */
static int feed_expat(struct xml_parser *p, const char *data, size_t n)
{
    if (n > 0 && p->expat == NULL)
        resume(p);
    while (n > 0 && !p->halted) {
        /* Behind a long partial token, one call for as much as the cap leaves room
         * for: each call rescans the token. Expat still never holds more than
         * max_stanza_bytes + XML_FEED_CHUNK of it. */
        size_t chunk = XML_FEED_CHUNK;
        if (p->partial >= XML_DEFER_MIN && (unsigned long long)(p->fed - p->mark) < p->limits.max_stanza_bytes) {
            size_t room = p->limits.max_stanza_bytes - (size_t)(p->fed - p->mark);
            if (room > chunk)
                chunk = room;
        }
        size_t len = n < chunk ? n : chunk;
        parse_chunk(p, data, len, false);
        data += len;
        n -= len;
    }
    if (p->reset_requested) {
        reset_now(p);
        return 0;
    }
    if (p->error != XML_ERROR_NONE) {
        if (!p->error_reported) {
            p->error_reported = true;
            p->cb(p->ud, XML_EVENT_ERROR, NULL);   /* may reset: we are outside expat */
        }
        return -1;
    }
    if (p->stop_requested) {
        p->stopped = true;
        return 0;
    }
    /* A parser that grew well past what it needed when it was created (a big
     * stanza's buffer, names remembered for the stream's life) is recycled as
     * soon as it sits between stanzas, as if it had been idle: a busy stream
     * does not keep that memory, nor reach the cap by accumulating it over feeds. */
    if (p->expat != NULL && p->region.mapped > p->region_base &&
        p->region.mapped - p->region_base > p->region.cap / 4)
        xml_parser_idle(p);
    return 0;
}

int xml_parser_feed(struct xml_parser *p, const char *data, size_t n)
{
    if (p->error != XML_ERROR_NONE)
        return -1;
    if (p->stopped || p->state == XML_STREAM_CLOSED)
        return 0;
    if (n == 0)
        return 0;
    if (defer_input(p, n)) {
        buf_append(&p->deferred, data, n);
        return 0;
    }
    if (p->deferred.len == 0)
        return feed_expat(p, data, n);
    /* Taken out of p first: a callback may reset the parser, which drops p->deferred. */
    struct buf in = p->deferred;
    buf_init(&p->deferred);
    buf_append(&in, data, n);
    int rc = feed_expat(p, in.data, in.len);
    buf_release(&in);
    return rc;
}

int xml_parser_flush(struct xml_parser *p)
{
    if (p->error != XML_ERROR_NONE)
        return -1;
    if (p->deferred.len == 0 || p->stopped || p->state == XML_STREAM_CLOSED)
        return 0;
    struct buf in = p->deferred;
    buf_init(&p->deferred);
    int rc = feed_expat(p, in.data, in.len);
    buf_release(&in);
    return rc;
}

size_t xml_parser_deferred(const struct xml_parser *p)
{
    return p->deferred.len;
}

unsigned long long xml_parser_scanned(const struct xml_parser *p)
{
    return p->scanned;
}

void xml_parser_reset(struct xml_parser *p)
{
    if (p->in_parse) {
        /* Expat is on the stack: it cannot be reset from its own callback.
         * Stop it; xml_parser_feed resets once XML_Parse has returned. */
        p->reset_requested = true;
        halt(p);
        return;
    }
    reset_now(p);
}

void xml_parser_stop(struct xml_parser *p)
{
    if (p->in_parse) {
        if (!p->reset_requested)
            p->stop_requested = true;
        halt(p);
        return;
    }
    p->stopped = true;
}

enum xml_error_kind xml_parser_error(const struct xml_parser *p)
{
    return p->error;
}

const char *xml_parser_error_text(const struct xml_parser *p)
{
    return p->error != XML_ERROR_NONE && p->error_text != NULL ? p->error_text : "no error";
}

size_t xml_parser_pending(const struct xml_parser *p)
{
    if (p->error != XML_ERROR_NONE || p->stopped || p->state == XML_STREAM_CLOSED)
        return 0;
    return (size_t)(p->fed - p->mark) + p->deferred.len;
}

const char *xml_parser_stream_ns(const struct xml_parser *p)
{
    return p->stream_ns;
}

const char *xml_error_condition(enum xml_error_kind kind)
{
    switch (kind) {
    case XML_ERROR_NOT_WELL_FORMED:    return "not-well-formed";
    case XML_ERROR_RESTRICTED_XML:     return "restricted-xml";
    case XML_ERROR_POLICY_VIOLATION:   return "policy-violation";
    case XML_ERROR_INVALID_NAMESPACE:  return "invalid-namespace";
    case XML_ERROR_BAD_FORMAT:         return "bad-format";
    case XML_ERROR_NONE:
    default:                           return "undefined-condition";
    }
}

struct xml_node *xml_parse_document(const char *data, size_t n, char *err, size_t errlen)
{
    /* The document is already in memory, so there is no byte cap; depth,
     * attribute count and the restricted-XML rules are those of a stream. */
    struct xml_limits limits = {
        .max_stanza_bytes = SIZE_MAX,
        .max_depth = XML_DEFAULT_MAX_DEPTH,
        .max_attrs = XML_DEFAULT_MAX_ATTRS,
    };
    struct xml_parser *p = parser_create(&limits, NULL, NULL, true);
    while (n > 0 && !p->halted) {
        size_t len = n < XML_FEED_CHUNK ? n : XML_FEED_CHUNK;
        parse_chunk(p, data, len, false);
        data += len;
        n -= len;
    }
    if (!p->halted)
        parse_chunk(p, "", 0, true);
    struct xml_node *root = NULL;
    if (p->error == XML_ERROR_NONE && p->document_root == NULL)
        fail(p, XML_ERROR_NOT_WELL_FORMED, "no element found");
    if (p->error == XML_ERROR_NONE) {
        root = p->document_root;
        p->document_root = NULL;
    } else if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s: %s", xml_error_condition(p->error), xml_parser_error_text(p));
    }
    xml_parser_free(&p);
    return root;
}

struct xml_node *xml_parse_stanza(const char *p, size_t n, char *err, size_t errlen)
{
    static const char open[] = "<w xmlns='" XML_NS_CLIENT "'>";
    static const char close[] = "</w>";
    if (p == NULL || n == 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "no stanza");
        return NULL;
    }
    /* The bytes carry no xmlns on the stanza (jabber:client is implied, as on the client
     * stream): a wrapper declares it. */
    struct buf doc;
    buf_init(&doc);
    buf_append(&doc, open, sizeof open - 1);
    buf_append(&doc, p, n);
    buf_append(&doc, close, sizeof close - 1);
    struct xml_node *root = xml_parse_document(doc.data, doc.len, err, errlen);
    buf_release(&doc);
    if (root == NULL)
        return NULL;
    struct xml_node *st = xml_first_elem(root);
    if (st == NULL || xml_next(st, NULL, NULL) != NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "not exactly one element");
        xml_free(&root);
        return NULL;
    }
    xml_remove(st);
    xml_free(&root);
    return st;
}

/* common/xml.h - a sans-I/O XMPP stream parser over expat, element trees, and a serializer. */
#ifndef MK_COMMON_XML_H
#define MK_COMMON_XML_H
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

#define XML_NS_STREAM  "http://etherx.jabber.org/streams"
#define XML_NS_CLIENT  "jabber:client"
#define XML_NS_XML     "http://www.w3.org/XML/1998/namespace"

/* An attribute. name is the local name; ns is the namespace URI of a prefixed
 * attribute (xml:lang has ns XML_NS_XML, name "lang") or NULL. Namespace
 * declarations (xmlns, xmlns:p) are not attributes: they are resolved into ns. */
struct xml_attr {
    char *name;
    char *ns;
    char *value;
};

/* An element or a text node. For an element, name is the local name and ns its
 * namespace URI (never NULL for parsed elements); for text, name is NULL and text
 * holds the (unescaped, UTF-8) character data. Children form a singly linked list. */
struct xml_node {
    char *name;
    char *ns;
    char *text;
    size_t text_len;
    struct xml_attr *attrs;
    size_t nattrs;
    struct xml_node *parent;
    struct xml_node *first_child;
    struct xml_node *last_child;
    struct xml_node *next;
};

/* --- trees ------------------------------------------------------------------- */
/* New element; name and ns are copied; ns may be NULL (inherits when serialized). */
struct xml_node *xml_node_new(const char *name, const char *ns);
/* Appends child to parent; consumes child. Returns child. */
struct xml_node *xml_append(struct xml_node *parent, struct xml_node *child);
/* Creates and appends a child element; returns it (owned by parent). */
struct xml_node *xml_add_child(struct xml_node *parent, const char *name, const char *ns);
/* Appends a text node with n bytes of text (copied). */
void xml_add_text(struct xml_node *parent, const char *text, size_t n);
/* Sets (replacing) or, with value NULL, removes attribute name (no namespace). */
void xml_set_attr(struct xml_node *n, const char *name, const char *value);
void xml_set_attr_ns(struct xml_node *n, const char *ns, const char *name, const char *value);
/* Returns the attribute's value or NULL (borrowed). */
const char *xml_attr(const struct xml_node *n, const char *name);
const char *xml_attr_ns(const struct xml_node *n, const char *ns, const char *name);
/* First child element with this name and namespace; either may be NULL for "any". */
struct xml_node *xml_child(const struct xml_node *n, const char *name, const char *ns);
/* Next sibling element after c matching name/ns (NULL for any). */
struct xml_node *xml_next(const struct xml_node *c, const char *name, const char *ns);
/* First child element of any name. */
struct xml_node *xml_first_elem(const struct xml_node *n);
/* Concatenated text of n's direct text children, as a new string (never NULL). */
char *xml_text(const struct xml_node *n);
/* Unlinks child from its parent (child becomes the caller's). */
void xml_remove(struct xml_node *child);
/* Deep copy. */
struct xml_node *xml_clone(const struct xml_node *n);
/* Frees *np and its subtree, sets *np to NULL; NULL-safe. Unlinks from a parent first. */
void xml_free(struct xml_node **np);

/* A read-only deep copy in one allocation, for trees kept long (a session's last
 * presence): one block instead of a node, strings and attribute array each.
 * xml_packed_root gives the tree to read or xml_clone; it must not be changed or
 * given to xml_free. xml_pack(NULL) is NULL. */
struct xml_packed;
struct xml_packed *xml_pack(const struct xml_node *n);
const struct xml_node *xml_packed_root(const struct xml_packed *p);
/* Frees *pp and sets it to NULL; NULL-safe. */
void xml_packed_free(struct xml_packed **pp);

/* --- serialization ------------------------------------------------------------- */
/* Appends n to out as XML with correct escaping (&lt; &gt; &amp; &quot; &apos; in
 * attributes, &lt; &gt; &amp; in text). parent_ns is the default namespace in
 * scope where n is written (XML_NS_CLIENT for a stanza on a client stream): an
 * element whose ns equals it gets no xmlns. Attributes in XML_NS_XML are
 * written as xml:name. */
void xml_serialize(const struct xml_node *n, const char *parent_ns, struct buf *out);
/* Appends s escaped for text content or attribute values. */
void xml_escape(struct buf *out, const char *s, size_t n);

/* Parses one complete XML document (no stream) into a tree; NULL with err on any
 * error. Same hostile-input rules as the stream parser. Used for stanzas that
 * travel on the bus as bytes and for tests. */
struct xml_node *xml_parse_document(const char *p, size_t n, char *err, size_t errlen);

/* Parses the bytes of one stanza as it travels on the bus or sits in the store
 * (serialized with jabber:client implied, no xmlns on it) into a tree the caller frees;
 * NULL with err unless the bytes are exactly one well-formed element. */
struct xml_node *xml_parse_stanza(const char *p, size_t n, char *err, size_t errlen);

/* --- the stream parser ----------------------------------------------------------- */
/* Not thread-safe: expat's allocation hooks carry no user pointer, so the
 * parsers share one static pointer to the memory region of the parser expat is
 * running for. A process uses them from one thread (its event loop); a callback
 * may use other parsers. Each stream parser keeps expat's memory in pages of its
 * own, unmapped when expat is freed (xml_parser_idle, xml_parser_reset,
 * xml_parser_free), and capped at 4 * max_stanza_bytes + 256 KiB: past it,
 * the stream gets XML_ERROR_POLICY_VIOLATION. */
struct xml_limits {
    size_t max_stanza_bytes;  /* bytes of one top-level child, tags included (default 65536) */
    unsigned max_depth;       /* element depth inside a stanza (default 64) */
    unsigned max_attrs;       /* attributes per element (default 64) */
};

enum xml_event_kind {
    XML_EVENT_STREAM_OPEN = 0,  /* the stream header: node is <stream:stream> with its attributes, no children */
    XML_EVENT_STANZA,           /* a complete top-level child (stanza, features, starttls, auth ...) */
    XML_EVENT_STREAM_CLOSE,     /* </stream:stream> */
    XML_EVENT_ERROR,            /* parse or limit error; the parser accepts no more input */
};

enum xml_error_kind {
    XML_ERROR_NONE = 0,
    XML_ERROR_NOT_WELL_FORMED,     /* includes invalid UTF-8 */
    XML_ERROR_RESTRICTED_XML,      /* DOCTYPE, entity declaration, PI, comment, unknown entity */
    XML_ERROR_POLICY_VIOLATION,    /* a limit was crossed: size, depth, attributes */
    XML_ERROR_INVALID_NAMESPACE,   /* stream element not in XML_NS_STREAM */
    XML_ERROR_BAD_FORMAT,          /* something other than stream:stream opens the stream */
};

/* Called for each event. For STREAM_OPEN and STANZA, *node is handed over: the
 * callback consumes it (set *node = NULL to keep it, or leave it for the parser to
 * free after the call). For ERROR, node is NULL and xml_parser_error() tells why.
 * The callback may call xml_parser_stop() (e.g. the stream is being closed or
 * restarted); it must not call xml_parser_feed() or free the parser. */
typedef void xml_event_fn(void *ud, enum xml_event_kind kind, struct xml_node **node);

struct xml_parser;

/* A new stream parser; limits is copied (NULL = defaults). */
struct xml_parser *xml_parser_new(const struct xml_limits *limits, xml_event_fn *cb, void *ud);
void xml_parser_free(struct xml_parser **pp);
/* Feeds n bytes (any split, even 1 byte). Events fire from inside. Returns 0, or -1
 * once an error event fired (then or before). Borrows data (copied when kept).
 * While expat holds a partial token of 4 KiB or more, small pieces are kept until
 * they are at least as long as that token, so that a huge tag sent in small pieces
 * costs linear time on expat before 2.6 (which rescans a partial token on every
 * call); xml_parser_deferred() then says how many bytes wait, and the caller calls
 * xml_parser_flush() when no more bytes came for a short while. */
int xml_parser_feed(struct xml_parser *p, const char *data, size_t n);
/* Gives the bytes kept back by xml_parser_feed to expat now. Same result as
 * xml_parser_feed; not from inside the callback. */
int xml_parser_flush(struct xml_parser *p);
/* Bytes kept back by xml_parser_feed, not yet parsed (0 most of the time). */
size_t xml_parser_deferred(const struct xml_parser *p);
/* Bytes expat has scanned since the parser was made, its rescans of partial tokens
 * included: what parsing has cost (tests). */
unsigned long long xml_parser_scanned(const struct xml_parser *p);
/* Starts over for a new stream on the same connection (after STARTTLS or SASL):
 * any buffered input is discarded and expat's memory released. Safe to call from inside the callback: the rest
 * of the current feed is then discarded. */
void xml_parser_reset(struct xml_parser *p);
/* Stops delivering events for the rest of the current feed (safe in the callback).
 * Later feeds are ignored (return 0) until xml_parser_reset(). */
void xml_parser_stop(struct xml_parser *p);
enum xml_error_kind xml_parser_error(const struct xml_parser *p);
/* A sentence describing the error (borrowed). */
const char *xml_parser_error_text(const struct xml_parser *p);
/* The default namespace declared on the current stream header (xmlns="..."), e.g.
 * XML_NS_CLIENT, or NULL before the header or when it declares none. Borrowed,
 * valid until the next reset. Lets the caller check it (invalid-namespace) and
 * pass it as parent_ns when serializing. */
const char *xml_parser_stream_ns(const struct xml_parser *p);
/* Bytes buffered inside the parser for a partly received stanza, deferred input
 * included (for memory accounting). */
size_t xml_parser_pending(const struct xml_parser *p);
/* Frees the expat parser while the stream sits between stanzas (no partial stanza
 * or token buffered), keeping only what is needed to resume: the stream's
 * namespace context. The next xml_parser_feed re-creates it transparently: events,
 * errors and limits behave exactly as if nothing had happened (the memory cap
 * counts expat's memory, which this releases, so a stream that would have
 * reached it may not). Returns true when it
 * released memory, false when the parser is mid-stanza, not yet in a stream, closed
 * or in error (then nothing changes). Also false when already idle, when
 * stopped, inside a CDATA section, or when called from the callback. Borrows p.
 * An idle c2s connection calls it so that it keeps a few hundred bytes here
 * instead of the ~12 KiB of an expat parser. xml_parser_feed does the same by
 * itself when expat has grown by more than max_stanza_bytes + 64 KiB since it
 * was created (after a big stanza): then this returns false, already idle. */
bool xml_parser_idle(struct xml_parser *p);
/* Stream parsers' pages freed by one parser are kept (a few) for the next one, which
 * saves a login three mmap/munmap pairs. Call this now and then: it unmaps the kept
 * pages when none was taken since the last call, so an idle process holds none. */
void xml_trim_cache(void);
/* How many chunks of pages the cache holds now (tests, metrics). */
size_t xml_cache_chunks(void);
/* The stream-error condition name for an error kind (RFC 6120 4.9.3). */
const char *xml_error_condition(enum xml_error_kind kind);
#endif

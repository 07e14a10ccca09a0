/* common/jid.h - XMPP addresses (RFC 7622): parse, prepare with stringprep, compare. */
#ifndef MK_COMMON_JID_H
#define MK_COMMON_JID_H
#include <stdbool.h>
#include <stddef.h>

#define JID_PART_MAX 1023   /* bytes per part after preparation (RFC 7622 section 3) */

/* A prepared JID. Parts are NUL-terminated, owned by the struct; local and
 * resource are NULL when absent (never ""). */
struct jid {
    char *local;
    char *domain;
    char *resource;
};

/* Parses s (UTF-8, NUL-terminated), prepares each part (nodeprep, nameprep,
 * resourceprep via libidn; domain lower-cased, a trailing dot dropped, IP
 * literals kept) and fills *out. Returns 0, or -1 with one sentence in err
 * naming the invalid form (empty part, part too long, forbidden character,
 * stringprep failure, bad IPv6 literal). *out is untouched on failure. */
int jid_parse(const char *s, struct jid *out, char *err, size_t errlen);
/* Frees the parts of j (not j itself); NULL-safe; leaves j zeroed. */
void jid_release(struct jid *j);
/* Deep copy of src into *dst. */
void jid_copy(struct jid *dst, const struct jid *src);

/* Length in bytes of the formatted form of j (bare or full), without the NUL.
 * Borrows j. */
size_t jid_len(const struct jid *j, bool bare);
/* Formats into out (at least jid_len + 1 bytes) "local@domain/resource", or the bare
 * form when bare is true. Returns the length, or -1 if outlen is too small. */
int jid_format(const struct jid *j, bool bare, char *out, size_t outlen);
/* Same, as a new string the caller frees. */
char *jid_to_string(const struct jid *j, bool bare);

/* Prepared comparisons: the full form, and the bare form (local+domain). */
bool jid_equal(const struct jid *a, const struct jid *b);
bool jid_bare_equal(const struct jid *a, const struct jid *b);

/* Prepares one part alone (for a username typed at registration, a resource
 * chosen at bind). Returns a new string or NULL with err. */
char *jid_nodeprep(const char *s, char *err, size_t errlen);
char *jid_resourceprep(const char *s, char *err, size_t errlen);
char *jid_nameprep(const char *s, char *err, size_t errlen);

/* Convenience: parses s and writes its prepared bare (or full) string form into a
 * new string; NULL on an invalid JID. */
char *jid_normalize(const char *s, bool bare);
#endif

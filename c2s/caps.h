/* c2s/caps.h - XEP-0115 entity capabilities: the verification string of a disco#info answer, and the <c/> of a presence (pure helpers, no I/O). */
#ifndef MK_C2S_CAPS_H
#define MK_C2S_CAPS_H
#include <stdbool.h>
#include <stddef.h>

#include "xml.h"

#define NS_CAPS "http://jabber.org/protocol/caps"

/* Room for a base64 SHA-1 (28 characters) and its NUL. */
#define CAPS_VER_MAX 29

/* Computes the XEP-0115 5.1 verification string (SHA-1, base64) of a disco#info
 * <query/> (borrowed) into ver (CAPS_VER_MAX bytes). Returns 0, or -1 with err when the
 * answer is ill-formed by 5.4: a duplicate identity or feature, two forms with the same
 * FORM_TYPE, a FORM_TYPE with several values (a form without a hidden FORM_TYPE is left
 * out, as 5.4 allows). Bounded: at most 4096 identities, features, fields or values in
 * all (-1 past it). */
int caps_ver(const struct xml_node *query, char *ver, size_t verlen, char *err, size_t errlen);

/* True when the disco#info answer query (borrowed) hashes to ver (the client's claim).
 * XEP-0115 5.4: a wrong or ill-formed one must be ignored. */
bool caps_verify(const struct xml_node *query, const char *ver);

/* The <c xmlns=caps/> of a presence (borrowed) when it names the SHA-1 hash with a node
 * and a ver of plausible length: *node and *ver point into the tree. Returns false
 * otherwise (legacy caps without hash, another hash, missing attributes). */
bool caps_of_presence(const struct xml_node *presence, const char **node, const char **ver);
#endif

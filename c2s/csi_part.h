/* c2s/csi_part.h - the bytes of the csi module's part of a session handed over to another c2s (XEP-0198 resumption there): "inactive" and the stanzas held, as written by one c2s and read by another. Pure functions, fuzzed (tests/fuzz/fuzz_csi_part.c). */
#ifndef MK_C2S_CSI_PART_H
#define MK_C2S_CSI_PART_H
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* The part starts with this byte (the client is inactive); a part is never written for an
 * active client (nothing is held then). */
#define CSI_PART_INACTIVE 1

/* Appends one held stanza: a 32-bit little-endian key length, the key (kl bytes, no NUL
 * inside, kl >= 1), a 32-bit length, the stanza's bytes. Borrows all. */
void csi_part_put(struct buf *out, const char *key, size_t kl, const void *xml, size_t len);

/* Reads a part from another process: -1 when it does not start with CSI_PART_INACTIVE;
 * otherwise calls each(ud, key, kl, xml, len) for every whole entry in order (the key is
 * not NUL-terminated; each returns false to stop) and returns 0 when the bytes ended
 * exactly after the last entry, 1 when they did not (truncated or garbage after what was
 * read: the caller keeps what it got). Never reads past p + n. */
int csi_part_parse(const void *p, size_t n,
                   bool (*each)(void *ud, const char *key, size_t kl, const void *xml, size_t len), void *ud);
#endif

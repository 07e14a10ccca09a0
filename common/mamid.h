/* common/mamid.h - MAM archive ids: (microseconds << 8) | generator, strictly increasing, and their text form. */
#ifndef MK_COMMON_MAMID_H
#define MK_COMMON_MAMID_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

/* An id is a uint64_t: the top 56 bits are microseconds since the epoch (enough
 * until the year 4253), the low 8 bits the generator that made it. Ids of one
 * generator are strictly increasing; ids of two generators never collide. Ordering
 * ids orders messages by time, which is what RSM paging relies on.
 *
 * Generators are unique per process across the cluster by role:
 *   c2s.N     -> N           (N < 128)
 *   router.N  -> 128 + N     (N < 64)
 *   mam.N     -> 192 + N     (N < 48)
 *   other     -> 240 + N     (N < 16)
 * Two data centers share one archive database; their ids can only collide if
 * the same (role, index) writes the same owner's archive in the same microsecond. */
#define MAMID_GEN_BITS 8u
#define MAMID_GEN_MASK 0xffu
#define MAMID_TEXT_LEN 13u          /* characters of the text form, without the NUL */

struct mamid_gen {
    uint64_t last;                  /* the last id handed out, 0 before the first */
    unsigned gen;                   /* 0-255 */
};

/* The generator number of process (role, index), or -1 when index is out of the
 * role's range (see the table above). */
int mamid_generator(enum cfg_role role, unsigned index);
/* Initialises g for generator gen (masked to 8 bits). */
void mamid_gen_init(struct mamid_gen *g, unsigned gen);
/* The next id for now_us (microseconds since the epoch): (now_us << 8) | gen, or,
 * when the clock stands still or stepped back, the smallest id of this generator
 * above the last one. Never returns the same id twice for one g. */
uint64_t mamid_next_at(struct mamid_gen *g, int64_t now_us);
/* Same with the wall clock. */
uint64_t mamid_next(struct mamid_gen *g);

/* Parts of an id. */
static inline uint64_t mamid_us(uint64_t id) { return id >> MAMID_GEN_BITS; }
static inline unsigned mamid_gen_of(uint64_t id) { return (unsigned)(id & MAMID_GEN_MASK); }
/* The smallest and largest id at microsecond us (for time-range bounds). */
static inline uint64_t mamid_min_at(uint64_t us) { return us << MAMID_GEN_BITS; }
static inline uint64_t mamid_max_at(uint64_t us) { return (us << MAMID_GEN_BITS) | MAMID_GEN_MASK; }

/* Writes the text form of id into out (at least MAMID_TEXT_LEN + 1 bytes): 13
 * characters of base 32 ("0-9a-v"), most significant first, zero-padded, so that
 * text order equals numeric order. Returns out. */
char *mamid_format(uint64_t id, char *out);
/* Parses a text form: exactly 13 characters of "0-9a-v" (lower case), the first
 * at most "f" (the top 4 bits). Returns 0 with *id set, or -1 for anything else (NULL, wrong length,
 * other characters, overflow). n is the length of s (s need not be terminated). */
int mamid_parse(const char *s, size_t n, uint64_t *id);
#endif

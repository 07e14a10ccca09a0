/* c2s/authlimit.h - failed-login and registration limits: fixed-size keyed count-min tables, no allocation per key. */
#ifndef MK_C2S_AUTHLIMIT_H
#define MK_C2S_AUTHLIMIT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a process counts, and how the counts turn into waits.
 *
 * Failed authentications are counted per (address, account) and per address
 * (an IPv4 address, or the /64 of an IPv6 one), in counters that halve every
 * halflife_sec. Nobody is ever refused for them: a login attempt waits before
 * its credentials are even looked up,
 *   - when its (address, account) has failed fail_per_account times or more:
 *     1 s, doubling with each further failure, at most 30 s (stream.c also keeps
 *     it under half the authentication timeout); the attempt itself
 *     then counts as a failure at once, so parallel attempts wait longer and
 *     longer instead of all passing together. Only the address that failed for
 *     the account waits: the right password from anywhere else is never held.
 *   - when its address has failed fail_per_ip times or more, for any account:
 *     1 s, doubling with each further fail_per_ip failures, at most 4 s. Every
 *     client behind that address (an office NAT, a carrier-grade NAT) shares the
 *     count, so this wait stays short: it slows one address trying one password
 *     on many accounts, and costs a NAT neighbour a few seconds, never a refusal.
 *
 * Registrations (XEP-0077) are limited per address to register_per_ip in any
 * register_interval_sec (a token bucket); 0 means no limit.
 *
 * The tables are count-min sketches: AUTHLIMIT_ROWS rows of cells, each row
 * indexed by its own part of a SipHash-2-4 of the key under a random key chosen
 * per process, so nobody can pick names that share a cell with a victim's. A
 * cell holds the sum of every key that lands there and a key reads the smallest
 * of its cells: a collision can only raise a count (a stricter limit), never
 * lower or clear one. */
struct authlimit_params {
    unsigned fail_per_ip;          /* failures of an address before its attempts wait; >= 1 */
    unsigned fail_per_account;     /* failures of an (address, account) before its attempts wait; >= 1 */
    unsigned halflife_sec;         /* failure counts halve in this time; >= 1 */
    unsigned register_per_ip;      /* registrations per address per interval; 0 = unlimited */
    unsigned register_interval_sec;
    unsigned preauth_per_ip;       /* connections of an address not yet authenticated; 0 = unlimited */
};

#define AUTHLIMIT_ROWS          4
#define AUTHLIMIT_PAIR_WAIT_MAX_US  (30LL * 1000000)
#define AUTHLIMIT_ADDR_WAIT_MAX_US  (4LL * 1000000)

struct authlimit;

/* A table with a fresh random hash key. Borrows p (copied). Never fails (aborts on
 * out-of-memory, like xmalloc). */
struct authlimit *authlimit_new(const struct authlimit_params *p);
/* Frees *ap and sets it to NULL; NULL-safe. */
void authlimit_free(struct authlimit **ap);

/* The address part of a key: an IPv4 address, or an IPv6 address's /64 (an IPv4-mapped
 * IPv6 address is its IPv4 address). Writes up to 16 bytes into out and returns how many,
 * or 0 when ip (borrowed text) is not an address. */
size_t authlimit_address(const char *ip, unsigned char out[16]);

/* How long (microseconds) a login attempt for account ("user@domain", borrowed) from
 * ip (borrowed text) waits before its credentials are checked, at now_us (a monotonic
 * clock). 0 for an address that has not failed for that account and is below its own
 * limit. An attempt that waits for its (address, account) is counted as a failure
 * here: *counted (may be NULL) says so, so the caller broadcasts it like a failure. */
int64_t authlimit_gate(struct authlimit *a, const char *ip, const char *account, int64_t now_us, bool *counted);

/* Counts one failed authentication of account from ip (a wrong password: nothing
 * else counts). Borrows both. Also called for the failures other processes report. */
void authlimit_failed(struct authlimit *a, const char *ip, const char *account, int64_t now_us);

/* The current (decayed) failure counts of (ip, account) and of ip: what the gate
 * reads. For tests and logs. */
double authlimit_pair_count(const struct authlimit *a, const char *ip, const char *account, int64_t now_us);
double authlimit_addr_count(const struct authlimit *a, const char *ip, int64_t now_us);

/* Starts a registration from ip: false when the address has used its allowance
 * (the caller answers <resource-constraint/>), else true and the attempt is held
 * against the allowance until authlimit_register_end, so parallel requests from one
 * address cannot all pass. */
bool authlimit_register_begin(struct authlimit *a, const char *ip, int64_t now_us);

/* A new connection from ip (borrowed text): true when the address has fewer than
 * preauth_per_ip connections that have not authenticated yet (it is then counted
 * among them until authlimit_preauth_end), false when it has that many (the caller
 * closes the new one). This bounds how many password guesses one address can have
 * waiting at once, whatever the waits: parallel connections cannot multiply them.
 * Counted in a count-min table like the failures: a collision can only refuse
 * early, and only with the counts of other addresses' open connections. */
bool authlimit_preauth_begin(struct authlimit *a, const char *ip);
/* Ends what one successful authlimit_preauth_begin counted (the connection
 * authenticated, or closed before). */
void authlimit_preauth_end(struct authlimit *a, const char *ip);
/* Ends a registration authlimit_register_begin let through: created says whether an
 * account was made (only then does it use the allowance). */
void authlimit_register_end(struct authlimit *a, const char *ip, bool created, int64_t now_us);
/* Counts an account made from ip by another process. */
void authlimit_registered(struct authlimit *a, const char *ip, int64_t now_us);
#endif

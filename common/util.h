/* common/util.h - allocation that aborts on out-of-memory, time and small string helpers. */
#ifndef MK_COMMON_UTIL_H
#define MK_COMMON_UTIL_H
#include <stddef.h>
#include <stdint.h>

#define MK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Binary search over n entries whose keys do not decrease with the index (a sorted
 * array, a ring read from its head): the first index whose key is >= target, or n.
 * key(ctx, i) is entry i's key. */
static inline size_t mk_lower_bound(size_t n, uint64_t target, uint64_t (*key)(const void *ctx, size_t i),
                                    const void *ctx)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key(ctx, mid) < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Allocators: abort the process with a message on out-of-memory, never return NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);               /* xstrdup(NULL) returns NULL */
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Frees *p and sets it to NULL; NULL-safe. */
void xfree(void *pp);

/* Writes a formatted sentence into err (at most errlen bytes, terminated); does
 * nothing when err is NULL or errlen 0. For the "char *err, size_t errlen" convention. */
void mk_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Wall clock in microseconds since the epoch, and a monotonic clock in microseconds. */
int64_t mk_now_us(void);
int64_t mk_mono_us(void);

/* Copies at most dstlen-1 bytes and always terminates; returns strlen(src). */
size_t mk_strlcpy(char *dst, const char *src, size_t dstlen);
/* Copies n bytes of s and a NUL to *at and moves *at past them; returns the copy.
 * For strings laid out one after another in a block sized beforehand. */
char *mk_put_str(char **at, const char *s, size_t n);
/* Doubles a ring buffer of count elements of elem bytes starting at *head (first_cap
 * when it has none yet), copying them to the front of the new array: *ring, *cap and
 * *head are updated; the old array is freed. */
void mk_ring_grow(void *ringp, size_t elem, size_t *cap, size_t *head, size_t count, size_t first_cap);

/* Writes into out (at least 4*n+1 bytes) a printable sample of p: bytes outside
 * 0x20-0x7e become \xNN. Used to log hostile input safely. Returns out. */
char *mk_sanitize(char *out, size_t outlen, const void *p, size_t n);

/* Sets O_NONBLOCK and FD_CLOEXEC on fd. Returns 0 or -1 with errno. */
int mk_set_nonblock(int fd);

/* 64-bit FNV-1a and a 64-bit mixer used for rendezvous hashing. */
uint64_t mk_hash64(const void *p, size_t n, uint64_t seed);

#endif

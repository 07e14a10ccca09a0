/* common/util.c - allocation that aborts on out-of-memory, time and small string helpers. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void oom(size_t n)
{
    fprintf(stderr, "level=fatal event=out_of_memory bytes=%zu\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (p == NULL)
        oom(nmemb * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void xfree(void *pp)
{
    void **p = pp;
    if (p != NULL && *p != NULL) {
        free(*p);
        *p = NULL;
    }
}

void mk_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int64_t mk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mk_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

size_t mk_strlcpy(char *dst, const char *src, size_t dstlen)
{
    size_t n = strlen(src);
    if (dstlen > 0) {
        size_t c = n < dstlen - 1 ? n : dstlen - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

char *mk_put_str(char **at, const char *s, size_t n)
{
    char *start = *at;
    memcpy(start, s, n);
    start[n] = '\0';
    *at += n + 1;
    return start;
}

char *mk_sanitize(char *out, size_t outlen, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t o = 0;
    if (outlen == 0)
        return out;
    for (size_t i = 0; i < n && o + 5 < outlen; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\' && s[i] != '"') {
            out[o++] = (char)s[i];
        } else {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", s[i]);
        }
    }
    out[o] = '\0';
    return out;
}

int mk_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl == -1)
        return -1;
    if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1)
        return -1;
    fl = fcntl(fd, F_GETFD);
    if (fl == -1)
        return -1;
    if (fcntl(fd, F_SETFD, fl | FD_CLOEXEC) == -1)
        return -1;
    return 0;
}

uint64_t mk_hash64(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    /* splitmix64 finaliser: FNV alone distributes short keys poorly. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

void mk_ring_grow(void *ringp, size_t elem, size_t *cap, size_t *head, size_t count, size_t first_cap)
{
    char **ring = ringp;
    size_t ncap = *cap ? *cap * 2 : first_cap;
    char *grown = xmalloc(ncap * elem);
    for (size_t i = 0; i < count; i++)
        memcpy(grown + i * elem, *ring + ((*head + i) % *cap) * elem, elem);
    free(*ring);
    *ring = grown;
    *cap = ncap;
    *head = 0;
}

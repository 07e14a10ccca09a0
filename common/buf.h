/* common/buf.h - growable byte buffer; aborts on out-of-memory, never fails. */
#ifndef MK_COMMON_BUF_H
#define MK_COMMON_BUF_H
#include <stdarg.h>
#include <stddef.h>

struct buf {
    char  *data;
    size_t len;   /* bytes in use */
    size_t cap;   /* bytes allocated */
};

void buf_init(struct buf *b);
void buf_release(struct buf *b);                    /* frees the storage; NULL-safe */
void buf_reserve(struct buf *b, size_t extra);      /* room for extra more bytes */
void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
void buf_consume(struct buf *b, size_t n);          /* drop n bytes from the front */
void buf_reset(struct buf *b);                      /* len = 0, keeps storage */
/* Returns data NUL-terminated (the NUL is not counted in len). */
const char *buf_cstr(struct buf *b);
#endif

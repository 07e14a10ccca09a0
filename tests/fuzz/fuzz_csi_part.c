/* tests/fuzz/fuzz_csi_part.c - libFuzzer target for c2s/csi_part.c: any bytes another c2s sends as the csi part of a handed-over session are read within bounds, and what was read, written again, reads back the same. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../c2s/csi_part.h"
#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
    const uint8_t *lo, *hi;        /* the input: every key and stanza must lie inside it */
    struct buf again;              /* what was read, written again */
    size_t n;
};

static bool each(void *ud, const char *key, size_t kl, const void *xml, size_t len)
{
    struct seen *s = ud;
    const uint8_t *k = (const uint8_t *)key, *x = xml;
    if (kl == 0 || k < s->lo || k + kl > s->hi || x < s->lo || x + len > s->hi || memchr(key, '\0', kl) != NULL)
        abort();
    csi_part_put(&s->again, key, kl, xml, len);
    s->n++;
    return true;
}

static bool count(void *ud, const char *key, size_t kl, const void *xml, size_t len)
{
    (void)key, (void)kl, (void)xml, (void)len;
    (*(size_t *)ud)++;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct seen s = {.lo = data, .hi = data + size, .n = 0};
    buf_init(&s.again);
    unsigned char b = CSI_PART_INACTIVE;
    buf_append(&s.again, &b, 1);
    int rc = csi_part_parse(data, size, each, &s);
    if (rc == -1 && s.n != 0)
        abort();   /* refused whole: nothing was handed out */
    if (rc == 0 && (s.again.len != size || memcmp(s.again.data, data, size) != 0))
        abort();   /* read exactly: written again, the same bytes */
    if (rc != -1) {
        size_t n = 0;
        if (csi_part_parse(s.again.data, s.again.len, count, &n) != 0 || n != s.n)
            abort();   /* what was kept reads back whole */
    }
    buf_release(&s.again);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

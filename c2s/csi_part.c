/* c2s/csi_part.c - the csi module's handover part: writer and bounds-checked reader (see csi_part.h). */
#include <string.h>

#include "csi_part.h"

static void put_u32(struct buf *out, size_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    buf_append(out, b, 4);
}

void csi_part_put(struct buf *out, const char *key, size_t kl, const void *xml, size_t len)
{
    put_u32(out, kl);
    buf_append(out, key, kl);
    put_u32(out, len);
    buf_append(out, xml, len);
}

static bool get_u32(const unsigned char **p, const unsigned char *end, size_t *v)
{
    if (end - *p < 4)
        return false;
    *v = (size_t)(*p)[0] | (size_t)(*p)[1] << 8 | (size_t)(*p)[2] << 16 | (size_t)(*p)[3] << 24;
    *p += 4;
    return true;
}

int csi_part_parse(const void *data, size_t n,
                   bool (*each)(void *ud, const char *key, size_t kl, const void *xml, size_t len), void *ud)
{
    const unsigned char *p = data, *end = p + n;
    if (n == 0 || *p++ != CSI_PART_INACTIVE)
        return -1;
    size_t kl, len;
    while (p < end) {
        if (!get_u32(&p, end, &kl) || kl == 0 || kl > (size_t)(end - p) || memchr(p, '\0', kl) != NULL)
            return 1;
        const unsigned char *key = p;
        p += kl;
        if (!get_u32(&p, end, &len) || len > (size_t)(end - p))
            return 1;
        if (!each(ud, (const char *)key, kl, p, len))
            return p + len == end ? 0 : 1;
        p += len;
    }
    return 0;
}

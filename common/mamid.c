/* common/mamid.c - MAM archive ids: generation (strictly increasing per generator) and the base-32 text form. */
#include "mamid.h"

#include "util.h"

static const char mamid_digits[] = "0123456789abcdefghijklmnopqrstuv";

int mamid_generator(enum cfg_role role, unsigned index)
{
    switch (role) {
    case CFG_ROLE_C2S:
        return index < 128u ? (int)index : -1;
    case CFG_ROLE_ROUTER:
        return index < 64u ? 128 + (int)index : -1;
    case CFG_ROLE_MAM:
        return index < 48u ? 192 + (int)index : -1;
    default:
        return index < 16u ? 240 + (int)index : -1;
    }
}

void mamid_gen_init(struct mamid_gen *g, unsigned gen)
{
    g->last = 0;
    g->gen = gen & MAMID_GEN_MASK;
}

uint64_t mamid_next_at(struct mamid_gen *g, int64_t now_us)
{
    uint64_t us = now_us > 0 ? (uint64_t)now_us : 0;
    /* The microseconds part must fit in 56 bits: past that the clock is nonsense. */
    if (us > (UINT64_MAX >> MAMID_GEN_BITS))
        us = UINT64_MAX >> MAMID_GEN_BITS;
    /* Compare microsecond parts, not whole ids, so the generator bits stay ours
     * even when the last id is reused as the base (clock standing still or back). */
    uint64_t last_us = mamid_us(g->last);
    if (g->last != 0 && us <= last_us)
        us = last_us + 1;
    g->last = (us << MAMID_GEN_BITS) | g->gen;
    return g->last;
}

uint64_t mamid_next(struct mamid_gen *g)
{
    return mamid_next_at(g, mk_now_us());
}

char *mamid_format(uint64_t id, char *out)
{
    for (int i = (int)MAMID_TEXT_LEN - 1; i >= 0; i--) {
        out[i] = mamid_digits[id & 31u];
        id >>= 5;
    }
    out[MAMID_TEXT_LEN] = '\0';
    return out;
}

static int digit_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'v')
        return c - 'a' + 10;
    return -1;
}

int mamid_parse(const char *s, size_t n, uint64_t *id)
{
    if (s == NULL || n != MAMID_TEXT_LEN)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = digit_value(s[i]);
        /* 13 digits hold 65 bits: the first may carry only the top 4 of 64. */
        if (d < 0 || (i == 0 && d > 15))
            return -1;
        v = (v << 5) | (uint64_t)d;
    }
    *id = v;
    return 0;
}

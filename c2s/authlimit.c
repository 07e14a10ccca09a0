/* c2s/authlimit.c - failed-login and registration limits: keyed count-min sketches with decaying counts. */
#include "authlimit.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "util.h"

#define AUTHLIMIT_WIDTH      4096u     /* cells per row of a failure table (a power of 2) */
#define AUTHLIMIT_REG_WIDTH  1024u     /* cells per row of the registration table */
#define AUTHLIMIT_WAIT_STEP_US 1000000LL
#define AUTHLIMIT_TICK_US    100000LL  /* failure cells keep their time in 0.1 s ticks */

/* A decaying count: v as it was at tick t. */
struct fail_cell {
    float v;
    uint32_t t;
};

/* A token bucket (GCRA): the allowance is used up to tat; pending requests not yet done. */
struct reg_cell {
    int64_t tat;
    uint32_t pending;
};

struct authlimit {
    struct authlimit_params p;
    uint64_t k0, k1;                                   /* SipHash key, random per process */
    int64_t epoch_us;                                  /* tick 0 */
    struct fail_cell pairs[AUTHLIMIT_ROWS][AUTHLIMIT_WIDTH];
    struct fail_cell addrs[AUTHLIMIT_ROWS][AUTHLIMIT_WIDTH];
    struct reg_cell regs[AUTHLIMIT_ROWS][AUTHLIMIT_REG_WIDTH];
    uint32_t preauth[AUTHLIMIT_ROWS][AUTHLIMIT_WIDTH];   /* open unauthenticated connections */
};

/* --- SipHash-2-4 (Aumasson and Bernstein), 64-bit output ---------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                  \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                  \
    } while (0)

static uint64_t load64_le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    const unsigned char *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8) {
        uint64_t m = load64_le(in);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* --- keys -------------------------------------------------------------------------------------- */

size_t authlimit_address(const char *ip, unsigned char out[16])
{
    struct in_addr a4;
    struct in6_addr a6;
    if (ip == NULL)
        return 0;
    if (inet_pton(AF_INET, ip, &a4) == 1) {
        memcpy(out, &a4, 4);
        return 4;
    }
    if (inet_pton(AF_INET6, ip, &a6) != 1)
        return 0;
    static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(a6.s6_addr, v4mapped, 12) == 0) {
        memcpy(out, a6.s6_addr + 12, 4);
        return 4;
    }
    /* One customer usually gets a whole /64: its addresses are one address here. */
    memcpy(out, a6.s6_addr, 8);
    memset(out + 8, 0, 8);
    return 16;
}

/* The hash of (domain tag, address, account): one 64-bit SipHash whose 16-bit quarters
 * index the rows (SipHash is a PRF, so the quarters are independent). An address that
 * does not parse is hashed as its text, so it still gets its own counters. */
static uint64_t key_hash(const struct authlimit *a, char tag, const char *ip, const char *account)
{
    unsigned char buf[1 + 16 + 1 + 1100];
    size_t n = 0;
    buf[n++] = (unsigned char)tag;
    size_t al = authlimit_address(ip, buf + n);
    if (al == 0) {
        size_t l = ip ? strnlen(ip, 64) : 0;
        memcpy(buf + n, ip ? ip : "", l);
        al = l;
    }
    n += al;
    if (account != NULL) {
        buf[n++] = 0;   /* the address's length is implied by its family; 0 separates anyway */
        size_t l = strnlen(account, sizeof buf - n);
        memcpy(buf + n, account, l);
        n += l;
    }
    return siphash24(a->k0, a->k1, buf, n);
}

static size_t row_index(uint64_t h, int row, size_t width)
{
    return (size_t)(h >> (16 * row)) & (width - 1);
}

/* --- decaying failure counts ------------------------------------------------------------------- */

static uint32_t tick_of(const struct authlimit *a, int64_t now_us)
{
    int64_t t = (now_us - a->epoch_us) / AUTHLIMIT_TICK_US;
    return t < 0 ? 0 : (uint32_t)t;
}

/* v decayed from tick t to tick now. */
static double decayed(const struct authlimit *a, const struct fail_cell *c, uint32_t now)
{
    if (c->v == 0.0f)
        return 0.0;
    if (now <= c->t)
        return c->v;
    double halflife_ticks = (double)a->p.halflife_sec * (1000000.0 / (double)AUTHLIMIT_TICK_US);
    return (double)c->v * exp2(-(double)(now - c->t) / halflife_ticks);
}

static double table_count(const struct authlimit *a, const struct fail_cell (*t)[AUTHLIMIT_WIDTH], uint64_t h,
                          int64_t now_us)
{
    uint32_t now = tick_of(a, now_us);
    double best = INFINITY;
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        double v = decayed(a, &t[r][row_index(h, r, AUTHLIMIT_WIDTH)], now);
        if (v < best)
            best = v;
    }
    return best;
}

/* Adds 1 to every row's cell: each cell stays at least the (decayed) count of every key
 * that maps to it, as decay scales all of them alike. */
static void table_add(const struct authlimit *a, struct fail_cell (*t)[AUTHLIMIT_WIDTH], uint64_t h, int64_t now_us)
{
    uint32_t now = tick_of(a, now_us);
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        struct fail_cell *c = &t[r][row_index(h, r, AUTHLIMIT_WIDTH)];
        double v = decayed(a, c, now) + 1.0;
        /* float rounds to nearest: round up instead, so a cell never reads below its keys. */
        float f = (float)v;
        if ((double)f < v)
            f = nextafterf(f, INFINITY);
        c->v = f;
        c->t = now > c->t ? now : c->t;
    }
}

/* 0 below limit, else step doubling with every `per` counts above it, capped. The count
 * is rounded: five failures a few seconds apart have decayed to 4.99, and are five. */
static int64_t wait_for(double count, unsigned limit, double per, int64_t max_us)
{
    count = floor(count + 0.5);
    if (count < (double)limit)
        return 0;
    double doublings = floor((count - (double)limit) / per);
    if (doublings >= 30)
        return max_us;
    int64_t w = AUTHLIMIT_WAIT_STEP_US << (int)doublings;
    return w < max_us ? w : max_us;
}

/* --- the interface ------------------------------------------------------------------------------- */

struct authlimit *authlimit_new(const struct authlimit_params *p)
{
    struct authlimit *a = xcalloc(1, sizeof *a);
    a->p = *p;
    if (a->p.fail_per_ip == 0)
        a->p.fail_per_ip = 1;
    if (a->p.fail_per_account == 0)
        a->p.fail_per_account = 1;
    if (a->p.halflife_sec == 0)
        a->p.halflife_sec = 1;
    unsigned char key[16];
    if (RAND_bytes(key, sizeof key) != 1)
        abort();   /* no key means guessable cells: never run without one */
    a->k0 = load64_le(key);
    a->k1 = load64_le(key + 8);
    a->epoch_us = mk_mono_us();
    return a;
}

void authlimit_free(struct authlimit **ap)
{
    if (ap == NULL || *ap == NULL)
        return;
    free(*ap);
    *ap = NULL;
}

double authlimit_pair_count(const struct authlimit *a, const char *ip, const char *account, int64_t now_us)
{
    return table_count(a, a->pairs, key_hash(a, 'p', ip, account), now_us);
}

double authlimit_addr_count(const struct authlimit *a, const char *ip, int64_t now_us)
{
    return table_count(a, a->addrs, key_hash(a, 'a', ip, NULL), now_us);
}

int64_t authlimit_gate(struct authlimit *a, const char *ip, const char *account, int64_t now_us, bool *counted)
{
    uint64_t hp = key_hash(a, 'p', ip, account);
    int64_t wp = wait_for(table_count(a, a->pairs, hp, now_us), a->p.fail_per_account, 1.0,
                          AUTHLIMIT_PAIR_WAIT_MAX_US);
    int64_t wa = wait_for(authlimit_addr_count(a, ip, now_us), a->p.fail_per_ip, (double)a->p.fail_per_ip,
                          AUTHLIMIT_ADDR_WAIT_MAX_US);
    if (counted != NULL)
        *counted = wp > 0;
    if (wp > 0) {
        /* Counted before the check: n attempts sent together wait 1, 2, 4 ... s, not all 1 s. */
        table_add(a, a->pairs, hp, now_us);
        table_add(a, a->addrs, key_hash(a, 'a', ip, NULL), now_us);
    }
    return wp > wa ? wp : wa;
}

void authlimit_failed(struct authlimit *a, const char *ip, const char *account, int64_t now_us)
{
    table_add(a, a->pairs, key_hash(a, 'p', ip, account), now_us);
    table_add(a, a->addrs, key_hash(a, 'a', ip, NULL), now_us);
}

/* --- registrations --------------------------------------------------------------------------------- */

static int64_t reg_interval_us(const struct authlimit *a)
{
    return (int64_t)a->p.register_interval_sec * 1000000 / (a->p.register_per_ip ? a->p.register_per_ip : 1);
}

bool authlimit_register_begin(struct authlimit *a, const char *ip, int64_t now_us)
{
    if (a->p.register_per_ip == 0)
        return true;
    uint64_t h = key_hash(a, 'r', ip, NULL);
    int64_t tat = INT64_MAX;
    uint32_t pending = UINT32_MAX;
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        const struct reg_cell *c = &a->regs[r][row_index(h, r, AUTHLIMIT_REG_WIDTH)];
        if (c->tat < tat)
            tat = c->tat;
        if (c->pending < pending)
            pending = c->pending;
    }
    int64_t t = reg_interval_us(a);
    int64_t burst = (int64_t)(a->p.register_per_ip - 1) * t;
    if (tat < now_us)
        tat = now_us;
    /* Requests still running count as made: the allowance holds for parallel requests. */
    if (tat + (int64_t)pending * t > now_us + burst)
        return false;
    for (int r = 0; r < AUTHLIMIT_ROWS; r++)
        a->regs[r][row_index(h, r, AUTHLIMIT_REG_WIDTH)].pending++;
    return true;
}

static void reg_use(struct authlimit *a, uint64_t h, int64_t now_us)
{
    int64_t t = reg_interval_us(a);
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        struct reg_cell *c = &a->regs[r][row_index(h, r, AUTHLIMIT_REG_WIDTH)];
        c->tat = (c->tat > now_us ? c->tat : now_us) + t;
    }
}

void authlimit_register_end(struct authlimit *a, const char *ip, bool created, int64_t now_us)
{
    if (a->p.register_per_ip == 0)
        return;
    uint64_t h = key_hash(a, 'r', ip, NULL);
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        struct reg_cell *c = &a->regs[r][row_index(h, r, AUTHLIMIT_REG_WIDTH)];
        if (c->pending > 0)
            c->pending--;
    }
    if (created)
        reg_use(a, h, now_us);
}

void authlimit_registered(struct authlimit *a, const char *ip, int64_t now_us)
{
    if (a->p.register_per_ip == 0)
        return;
    reg_use(a, key_hash(a, 'r', ip, NULL), now_us);
}

/* --- connections not yet authenticated ---------------------------------------------------------- */

bool authlimit_preauth_begin(struct authlimit *a, const char *ip)
{
    if (a->p.preauth_per_ip == 0)
        return true;
    uint64_t h = key_hash(a, 'c', ip, NULL);
    uint32_t open = UINT32_MAX;
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        uint32_t v = a->preauth[r][row_index(h, r, AUTHLIMIT_WIDTH)];
        if (v < open)
            open = v;
    }
    if (open >= a->p.preauth_per_ip)
        return false;
    for (int r = 0; r < AUTHLIMIT_ROWS; r++)
        a->preauth[r][row_index(h, r, AUTHLIMIT_WIDTH)]++;
    return true;
}

void authlimit_preauth_end(struct authlimit *a, const char *ip)
{
    if (a->p.preauth_per_ip == 0)
        return;
    uint64_t h = key_hash(a, 'c', ip, NULL);
    for (int r = 0; r < AUTHLIMIT_ROWS; r++) {
        uint32_t *v = &a->preauth[r][row_index(h, r, AUTHLIMIT_WIDTH)];
        if (*v > 0)
            (*v)--;
    }
}

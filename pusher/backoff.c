/* pusher/backoff.c - exponential backoff with full jitter for backend retries. */
#include "backoff.h"

uint64_t push_backoff_ms(unsigned base_ms, unsigned max_ms, unsigned n, long retry_after_ms, uint64_t rnd)
{
    uint64_t cap = base_ms;
    for (unsigned i = 0; i < n && cap < max_ms; i++)
        cap *= 2;
    if (cap > max_ms)
        cap = max_ms;
    uint64_t wait = rnd % (cap + 1);
    if (retry_after_ms >= 0 && (uint64_t)retry_after_ms > wait)
        wait = (uint64_t)retry_after_ms;
    return wait;
}

uint64_t push_backoff_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

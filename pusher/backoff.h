/* pusher/backoff.h - when a backend's failed attempt is tried again: exponential backoff with full jitter, Retry-After as a floor. */
#ifndef MK_PUSHER_BACKOFF_H
#define MK_PUSHER_BACKOFF_H
#include <stdint.h>

/* The wait before retry number n (0 for the first retry): a uniform draw in
 * [0, min(max_ms, base_ms x 2^n)] ("full jitter": retries of many events spread out
 * instead of arriving together), raised to retry_after_ms when that is >= 0 (the
 * server said when; it may exceed max_ms). rnd is a uniformly random 64-bit value. */
uint64_t push_backoff_ms(unsigned base_ms, unsigned max_ms, unsigned n, long retry_after_ms, uint64_t rnd);
/* A fast non-cryptographic generator (splitmix64) for rnd; *state is its state. */
uint64_t push_backoff_rand(uint64_t *state);
#endif

/* tests/fuzz/fuzz_retry_after.c - libFuzzer target for the Retry-After parser (pusher/http.c): any bytes, and dates it must read back exactly. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../pusher/pusher.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP_MS 2147483647L

static long expect_ms(int64_t delta)
{
    if (delta <= 0)
        return 0;
    if (delta > CAP_MS / 1000)
        return CAP_MS;
    return (long)(delta * 1000);
}

static void check(const char *what, const char *text, int64_t now, long want)
{
    long got = http_retry_after_ms(text, strlen(text), now);
    if (got != want) {
        fprintf(stderr, "%s: \"%s\" at %lld gave %ld, want %ld\n", what, text, (long long)now, got, want);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Bytes 0-7: "now"; the rest is the header value, parsed as is (a copy, so a read
     * past len is caught by ASan). */
    int64_t now = 0;
    if (size >= 8) {
        uint64_t u;
        memcpy(&u, data, 8);
        now = (int64_t)(u % 253402300800ull);   /* 1970 .. 9999 */
        data += 8;
        size -= 8;
    }
    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    long r = http_retry_after_ms(copy, size, now);
    free(copy);
    if (r < -1 || r > CAP_MS)
        abort();

    /* Whatever the input, a date derived from it must read back in all three forms. */
    uint64_t seed = 0;
    for (size_t i = 0; i < size && i < 8; i++)
        seed = seed << 8 | data[i];
    int64_t delta = (int64_t)(seed % (20ull * 365 * 86400)) - 10ll * 365 * 86400;   /* +-10 years */
    int64_t t = now + delta;
    if (t < 0 || t > 253402300799ll)
        return 0;
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm) == NULL)
        return 0;
    static const char *const days[7] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const long_days[7] = { "Sunday", "Monday", "Tuesday", "Wednesday",
                                              "Thursday", "Friday", "Saturday" };
    static const char *const months[12] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    char text[96];
    snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    check("IMF-fixdate", text, now, expect_ms(delta));
    snprintf(text, sizeof text, "%s %s %2d %02d:%02d:%02d %04d", days[tm.tm_wday], months[tm.tm_mon],
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
    check("asctime", text, now, expect_ms(delta));
    /* Two digits of year: exact within the +-10 years around now. */
    snprintf(text, sizeof text, "%s, %02d-%s-%02d %02d:%02d:%02d GMT", long_days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], (tm.tm_year + 1900) % 100, tm.tm_hour, tm.tm_min, tm.tm_sec);
    check("rfc850", text, now, expect_ms(delta));
    snprintf(text, sizeof text, "%lld", (long long)(delta < 0 ? -delta : delta));
    check("delay-seconds", text, now, expect_ms(delta < 0 ? -delta : delta));
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

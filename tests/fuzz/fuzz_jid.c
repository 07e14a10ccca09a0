/* tests/fuzz/fuzz_jid.c - libFuzzer target for jid_parse: a prepared JID must be a fixed point of parse and format. */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Formats j, re-parses the text and aborts unless the result formats the
 * same and compares equal: preparation must be idempotent. */
static void check_fixed_point(const struct jid *j, bool bare)
{
    char err[256];
    char *text = jid_to_string(j, bare);
    if (text == NULL)
        abort();
    size_t len = jid_len(j, bare);
    char *buf = malloc(len + 1);
    if (buf == NULL || jid_format(j, bare, buf, len + 1) != (int)len || strcmp(buf, text) != 0 ||
        jid_format(j, bare, buf, len) != -1)
        abort();
    free(buf);

    struct jid again;
    if (jid_parse(text, &again, err, sizeof err) != 0) {
        fprintf(stderr, "re-parse of \"%s\" failed: %s\n", text, err);
        abort();
    }
    char *text2 = jid_to_string(&again, bare);
    if (text2 == NULL || strcmp(text, text2) != 0) {
        fprintf(stderr, "not a fixed point: \"%s\" -> \"%s\"\n", text, text2 ? text2 : "(null)");
        abort();
    }
    if (!jid_bare_equal(j, &again) || (!bare && !jid_equal(j, &again)))
        abort();
    free(text2);
    jid_release(&again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    struct jid j;
    char err[256];
    if (jid_parse(s, &j, err, sizeof err) == 0) {
        check_fixed_point(&j, false);
        check_fixed_point(&j, true);
        jid_release(&j);
    } else if (err[0] == '\0') {
        abort();  /* every refusal says why */
    }
    free(s);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

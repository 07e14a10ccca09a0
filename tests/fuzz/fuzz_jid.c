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
/* Replays every regular file of the directory argv[1] through the target. */
int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *dir = opendir(argv[1]);
    if (dir == NULL) {
        perror(argv[1]);
        return 1;
    }
    int count = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1], de->d_name);
        FILE *f = fopen(path, "rb");
        if (f == NULL) {
            perror(path);
            closedir(dir);
            return 1;
        }
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, n;
        uint8_t chunk[4096];
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
            if (len + n > cap) {
                cap = (len + n) * 2;
                uint8_t *p = realloc(buf, cap);
                if (p == NULL)
                    abort();
                buf = p;
            }
            memcpy(buf + len, chunk, n);
            len += n;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf ? buf : (const uint8_t *)"", len);
        free(buf);
        count++;
    }
    closedir(dir);
    printf("replayed %d inputs from %s\n", count, argv[1]);
    return 0;
}
#endif

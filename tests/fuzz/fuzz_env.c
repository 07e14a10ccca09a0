/* tests/fuzz/fuzz_env.c - libFuzzer target: env_decode on hostile bytes, and whatever it accepts must re-pack and decode again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "env.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Mk__Envelope *e = env_decode(data, size);
    if (e == NULL)
        return 0;
    (void)env_payload_name(e);
    struct buf once, twice;
    buf_init(&once);
    buf_init(&twice);
    env_pack(e, &once);
    Mk__Envelope *again = env_decode(once.data, once.len);
    if (again == NULL)
        abort();    /* we accepted it, packed it, and cannot read our own output */
    /* The first pack normalises (field order, packed repeats, dropped duplicates);
     * from then on packing is a fixed point. */
    env_pack(again, &twice);
    if (twice.len != once.len || memcmp(twice.data, once.data, once.len) != 0)
        abort();
    env_free(&again);
    env_free(&e);
    buf_release(&once);
    buf_release(&twice);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include <dirent.h>
#include <stdio.h>

/* Replays every file of the directory argv[1] through the target. */
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
    size_t files = 0;
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
        struct buf in;
        buf_init(&in);
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            buf_append(&in, chunk, n);
        fclose(f);
        LLVMFuzzerTestOneInput((const uint8_t *)in.data, in.len);
        buf_release(&in);
        files++;
    }
    closedir(dir);
    printf("replayed %zu files from %s\n", files, argv[1]);
    return 0;
}
#endif

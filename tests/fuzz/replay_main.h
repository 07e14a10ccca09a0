/* tests/fuzz/replay_main.h - the main() every fuzz target gets under FUZZ_REPLAY_MAIN: replays a corpus directory through LLVMFuzzerTestOneInput, so the corpora run as ordinary tests under gcc. */
#ifndef MK_TESTS_FUZZ_REPLAY_MAIN_H
#define MK_TESTS_FUZZ_REPLAY_MAIN_H
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Replays every file of the directory argv[1] (dot files skipped); exits 1 when one cannot be read. */
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
        LLVMFuzzerTestOneInput((const uint8_t *)(in.data ? in.data : ""), in.len);
        buf_release(&in);
        files++;
    }
    closedir(dir);
    printf("replayed %zu inputs from %s\n", files, argv[1]);
    return 0;
}
#endif

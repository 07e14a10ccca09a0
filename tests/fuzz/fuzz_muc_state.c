/* tests/fuzz/fuzz_muc_state.c - libFuzzer target for router/muc_state.c: any bytes the store could hand back as a room's state are read or refused with a reason, and what is read writes back to a document that reads the same and writes the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../router/muc_state.h"
#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct muc_state st;
    char err[160] = "";
    if (muc_state_read((const char *)data, size, 64, &st, err, sizeof err) == -1) {
        if (err[0] == '\0')
            abort();   /* every refusal says why */
        muc_state_release(&st);
        return 0;
    }
    if (st.creator == NULL || st.conf.max_users == 0 || st.naffs > 64)
        abort();
    /* A fixed point: written, read again, written again: the same bytes. */
    struct buf once, twice;
    buf_init(&once);
    buf_init(&twice);
    muc_state_write(&st, &once);
    struct muc_state again;
    if (muc_state_read(once.data, once.len, 64, &again, err, sizeof err) == -1)
        abort();
    muc_state_write(&again, &twice);
    if (once.len != twice.len || memcmp(once.data, twice.data, once.len) != 0)
        abort();
    if (again.naffs != st.naffs || again.conf.max_users != st.conf.max_users ||
        again.conf.persistent != st.conf.persistent)
        abort();
    muc_state_release(&again);
    muc_state_release(&st);
    buf_release(&once);
    buf_release(&twice);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

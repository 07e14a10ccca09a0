/* tests/fuzz/fuzz_rchan.c - libFuzzer target: a reliable channel's two ends fed hostile envelopes: an Ack (selective: held and released lists) to a sender that has frames pending and held, any other frame to a receiver that holds some; malformed acks are refused and change nothing, and the counts stay within what was sent. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "bus.h"
#include "env.h"
#include "rchan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SENT 20

static struct ev_loop *loop;
static struct bus *bus;

static void on_recv(struct bus *b, Mk__Envelope **envp, void *ud)
{
    (void)b, (void)envp, (void)ud;
}

/* One bus for every input, with no peer: what the channel sends is refused (EHOSTUNREACH),
 * which it must take like a full high-water mark. */
static void setup(void)
{
    if (bus != NULL)
        return;
    char err[256];
    loop = ev_loop_new(EVFLAG_AUTO);
    bus = bus_new(loop, "s", "tcp://127.0.0.1:*", 0, on_recv, NULL, err, sizeof err);
    if (bus == NULL)
        abort();
}

static void fuzz_ack(Mk__Ack *ack)
{
    struct rchan_tx *tx = rchan_tx_new(loop, bus, "r", 64, 60000);
    for (uint64_t n = 1; n <= SENT; n++) {
        Mk__Test t = MK__TEST__INIT;
        t.n = n;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
        e.test = &t;
        if (rchan_send(tx, &e) != n)
            abort();
    }
    /* 1..10 acknowledged but 2, 4, 6 held: 13 pending, 3 of them held. */
    uint64_t held[] = {2, 4, 6};
    Mk__Ack seed = MK__ACK__INIT;
    seed.epoch = rchan_tx_epoch(tx);
    seed.upto = 10;
    seed.held = held;
    seed.n_held = 3;
    seed.holder = 5;
    const char *why = NULL;
    if (rchan_tx_on_ack(tx, &seed, &why) != 0 || rchan_tx_pending(tx) != 13 || rchan_tx_held(tx) != 3)
        abort();
    ack->epoch = rchan_tx_epoch(tx);
    const char *bad = rchan_ack_invalid(ack);
    int rc = rchan_tx_on_ack(tx, ack, &why);
    if (bad != NULL) {
        if (rc != -1 || why != bad || rchan_tx_pending(tx) != 13 || rchan_tx_held(tx) != 3)
            abort();
    } else {
        size_t pending = rchan_tx_pending(tx), nheld = rchan_tx_held(tx);
        if (rc != 0 || pending > 13 || nheld > pending || nheld > 3 + SENT - 10)
            abort();
        /* Exactly what is not acknowledged is pending. */
        size_t open = 0;
        for (uint64_t seq = 1; seq <= SENT; seq++)
            open += !rchan_tx_acked(tx, seq);
        if (open != pending)
            abort();
    }
    rchan_tx_free(&tx);
}

static void fuzz_frame(const Mk__Envelope *e)
{
    struct rchan_rx *rx = rchan_rx_new(loop, bus);
    rchan_rx_set_max_held(rx, 4);
    /* The same frame three times: whatever it is, it is applied at most once. */
    int applied = 0;
    for (int i = 0; i < 3; i++) {
        if (rchan_rx_check(rx, e) != RCHAN_NEW)
            continue;
        applied++;
        if (!rchan_rx_hold(rx, e->sender, e->rc_epoch, e->rc_seq))
            rchan_rx_done(rx, e->sender, e->rc_epoch, e->rc_seq);
    }
    if (applied > 1 || rchan_rx_held(rx) > 1)
        abort();
    if (applied == 1) {
        rchan_rx_release(rx, e->sender, e->rc_epoch, e->rc_seq);
        if (rchan_rx_held(rx) != 0)
            abort();
    }
    rchan_rx_flush(rx);
    rchan_rx_free(&rx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    Mk__Envelope *e = env_decode(data, size);
    if (e == NULL)
        return 0;
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_ACK && e->ack != NULL)
        fuzz_ack(e->ack);
    else
        fuzz_frame(e);
    env_free(&e);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif

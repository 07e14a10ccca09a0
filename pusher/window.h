/* pusher/window.h - per-sender completion windows: events finish out of order, acknowledgements are cumulative. */
#ifndef MK_PUSHER_WINDOW_H
#define MK_PUSHER_WINDOW_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The reliable channel acknowledges "everything up to seq" (rchan_rx_done), but the
 * pusher finishes events in any order (a slow backend, a retry). A window keeps, per
 * (sender, epoch), the sequence numbers taken and not yet acknowledged, in order, with
 * a done mark; an event finishing advances the acknowledgement only across the done
 * ones at the front. Pure bookkeeping: no bus, no loop. */
struct push_window;

struct push_window *push_window_new(void);
void push_window_free(struct push_window **wp);

/* An event (sender, epoch, seq) was taken. seq is above every seq taken before for the
 * sender's epoch (the channel gives them in order); a new epoch (the sender restarted)
 * forgets the old one's entries: their acknowledgements would go nowhere. Borrows sender. */
void push_window_add(struct push_window *w, const char *sender, uint64_t epoch, uint64_t seq);
/* The event is finished. Returns true with *upto set when the sender's acknowledgement
 * advances (every event up to *upto is finished); false when an earlier one is still
 * running, or the event is unknown (an old epoch). Borrows sender. */
bool push_window_done(struct push_window *w, const char *sender, uint64_t epoch, uint64_t seq, uint64_t *upto);
/* Events taken and not acknowledged, over every sender. */
size_t push_window_pending(const struct push_window *w);
#endif

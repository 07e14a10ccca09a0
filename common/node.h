/* common/node.h - what every role process does the same way: config, log, loop, bus, hello, metrics, signals. */
#ifndef MK_COMMON_NODE_H
#define MK_COMMON_NODE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "bus.h"
#include "cfg.h"
#include "meerkat.pb-c.h"
#include "metrics.h"
#include "proc.h"

struct node;

/* The role's hooks. on_envelope consumes *envp like bus_recv_fn (Hello is handled by
 * node itself and also passed on, so a role can react to a peer's restart). */
struct node_hooks {
    void (*on_envelope)(struct node *n, Mk__Envelope **envp);
    /* Graceful stop asked (SIGTERM/SIGINT): the role closes what it owns and calls
     * node_exit() when done; node forces the exit after cfg->grace_sec. NULL = exit at once. */
    void (*on_stop)(struct node *n);
    /* Readiness beyond the bus (store, Redis); NULL = ready once the bus is up. */
    bool (*ready)(struct node *n, char *why, size_t whylen);
    /* Refresh gauges before /metrics renders. */
    void (*collect)(struct node *n);
    /* A peer said hello: it (re)started. */
    void (*on_peer_hello)(struct node *n, const char *peer, const char *role, bool is_reply);
    /* A reload (SIGHUP) added processes to n->cfg: added[0..nadded) (borrowed, in n->cfg)
     * already have bus peers and were said hello to. NULL = nothing more to do. */
    void (*on_reload)(struct node *n, const struct cfg_proc *const *added, size_t nadded);
};

struct node {
    struct ev_loop *loop;
    struct proc_args args;
    struct cfg *cfg;
    const struct cfg_proc *self;
    enum cfg_role role;
    struct bus *bus;
    struct metrics *metrics;
    struct node_hooks hooks;
    void *role_data;            /* the role's process-wide struct */
    uint64_t started_us;
    bool stopping;
    ev_timer grace_timer;
    struct metric *m_bus_sent;
    struct metric *m_bus_received;
    struct metric *m_bus_dropped;
    struct metric *m_bus_peers;
    struct metric *m_hello;
    struct metric *m_loop_lag;  /* meerkat_loop_lag_seconds */
    ev_timer lag_timer;         /* fires every NODE_LAG_INTERVAL_S while the loop has work; how late it runs is the lag */
    ev_prepare lag_prepare;     /* marks when the loop goes to poll (its work done) */
    ev_check lag_check;         /* marks when the poll returned */
    int64_t lag_due_us;         /* when lag_timer should fire (monotonic) */
    int64_t lag_poll_us;        /* when the last poll began */
    int64_t lag_woke_us;        /* when it returned */
    uint64_t lag_wakes;         /* polls returned since the last sample */
    bool lag_parked;            /* an idle loop: lag_timer waits for the next wake-up */
    struct metric *m_bus_refused;
    struct metric *m_bus_disconnects;
    struct metric *m_bus_frames;
    struct metric *m_bus_envelopes;   /* received, by payload */
    struct metric *m_cfg_procs;       /* meerkat_config_processes: the list this process runs with */
    struct metric *m_reloads;         /* meerkat_config_reloads_total{result} */
    size_t peers_seen;
    char **seen_ids;            /* peers that said hello, for /readyz and the gauge */
};

/* Parses argv, loads the config (refusing a bad one with its file:line: reason on
 * stderr), checks that --id names a process of role, starts logging, the default
 * loop, the bus (inbox bound, a PUSH to every other configured process), the
 * metrics listener and signal handlers, and says hello to every peer.
 * Returns 0, or -1 after printing why (the process should exit 1; exit 2 for usage). */
int node_init(struct node *n, int argc, char **argv, enum cfg_role role, const struct node_hooks *hooks,
              void *role_data);
/* Reads the config file again (what SIGHUP does, after reopening the log): when
 * cfg_reload_check accepts it, the new processes join n->cfg, get a bus peer and a
 * hello, and hooks.on_reload runs; else the refusal is logged (reload_refused, with
 * what changed) and nothing changes. Returns the number of processes added, or -1. */
int node_reload(struct node *n);
/* Runs the loop until node_exit. */
void node_run(struct node *n);
/* Ends node_run at the end of this loop iteration. */
void node_exit(struct node *n);
/* Frees what node_init made. */
void node_fini(struct node *n);
/* Sends e to peer (bus_send_env), logging a refusal. Borrows e. Returns bus_send_env's result. */
int node_send(struct node *n, const char *peer, Mk__Envelope *e);
/* True once peer has said hello since this process started. */
bool node_peer_seen(const struct node *n, const char *peer);
#endif

/* ctl/ctl.h - the meerkat command: the local cluster's launcher/supervisor and the admin commands. */
#ifndef MK_CTL_CTL_H
#define MK_CTL_CTL_H

/* meerkat start [-c FILE] [--log-level L]: runs until SIGTERM/SIGINT. Returns the exit status. */
int ctl_start(int argc, char **argv);
/* meerkat ctl <command> ...: the admin commands. Returns the exit status. */
int ctl_admin(int argc, char **argv);
/* GET path from host:port with a timeout; returns the HTTP status (and the body in
 * out, truncated to outlen), or -1 when nothing answered. */
int ctl_http_get(const char *host, int port, const char *path, int timeout_ms, char *out, size_t outlen);
/* The same with the body appended to *body (borrowed; NULL: not kept); at most max
 * bytes of the response are read. */
struct buf;
int ctl_http_fetch(const char *host, int port, const char *path, int timeout_ms, size_t max, struct buf *body);
/* ctl/users.c: register|unregister|passwd USER@DOMAIN [PASSWORD|-]; sessions; kick JID. */
struct cfg;
int ctl_users(const struct cfg *c, const char *cmd, int argc, char **argv);
int ctl_sessions(const struct cfg *c, int argc, char **argv);
int ctl_kick(const struct cfg *c, int argc, char **argv);
/* Splits and prepares "user@domain" into *j (released by the caller on success); the
 * domain must be hosted. Prints why and returns -1 otherwise. */
struct jid;
int ctl_parse_account(const struct cfg *c, const char *arg, struct jid *j);
/* ctl_parse_account, then the configured store opened on the default loop: the store
 * (closed with store_close) and *j (released by the caller), or NULL (printed why; *j
 * released). */
struct store;
struct store *ctl_account_store(const struct cfg *c, const char *arg, struct jid *j);
/* ctl/push.c: push registrations USER@DOMAIN (the store). */
int ctl_push(const struct cfg *c, int argc, char **argv);
/* ctl/top.c: top [--once] [--interval SEC]: every process's figures from its /metrics,
 * refreshed in the terminal (or one frame). Returns 1 when a process did not answer. */
int ctl_top(const struct cfg *c, int argc, char **argv);
/* ctl/reload.c: reload: SIGHUP to the meerkat start of c's data_dir (its pid file), then
 * waits until every process of c runs with c's process list. 0 when they all do; 1 when
 * one refused (the log says why), none is running, or it took more than 30 s; 2 usage. */
int ctl_reload(const struct cfg *c, int argc, char **argv);
#endif

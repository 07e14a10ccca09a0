/* common/log.h - one line per event, key=value, level chosen at run time. */
#ifndef MK_COMMON_LOG_H
#define MK_COMMON_LOG_H

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_NONE,
};

/* Sets the process identity printed on every line (borrowed; must outlive logging),
 * the level, and the file (NULL or "-" for stderr). Returns 0 or -1 with errno. */
int log_init(const char *ident, enum log_level level, const char *path);
/* Parses "debug|info|warn|error|none"; returns 0 and sets *out, or -1. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Reopens the log file (SIGHUP, after rotation). Returns 0 or -1 with errno. */
int log_reopen(void);

/* Writes "ts=... level=... id=... event=<event> <fmt...>\n" as one write(2).
 * fmt continues the line with more key=value pairs; values holding spaces or
 * client data must be quoted by the caller (see mk_sanitize). */
void log_event(enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(ev, ...) do { if (log_get_level() <= LOG_LEVEL_DEBUG) log_event(LOG_LEVEL_DEBUG, ev, __VA_ARGS__); } while (0)
#define log_info(ev, ...)  log_event(LOG_LEVEL_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_event(LOG_LEVEL_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_LEVEL_ERROR, ev, __VA_ARGS__)
#endif

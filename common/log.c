/* common/log.c - one line per event, key=value, level chosen at run time. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "meerkat";
static enum log_level log_level_cur = LOG_LEVEL_INFO;
static int log_fd = 2;
static char log_path[1024];

static const char *const level_names[] = {"debug", "info", "warn", "error", "none"};

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i <= LOG_LEVEL_NONE; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = LOG_LEVEL_WARN;
        return 0;
    }
    return -1;
}

const char *log_level_name(enum log_level level)
{
    return level <= LOG_LEVEL_NONE ? level_names[level] : "unknown";
}

void log_set_level(enum log_level level)
{
    log_level_cur = level;
}

enum log_level log_get_level(void)
{
    return log_level_cur;
}

static int open_path(void)
{
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd == -1)
        return -1;
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    return 0;
}

int log_init(const char *ident, enum log_level level, const char *path)
{
    if (ident != NULL)
        log_ident = ident;
    log_level_cur = level;
    if (path == NULL || strcmp(path, "-") == 0) {
        log_path[0] = '\0';
        log_fd = 2;
        return 0;
    }
    snprintf(log_path, sizeof log_path, "%s", path);
    return open_path();
}

int log_reopen(void)
{
    if (log_path[0] == '\0')
        return 0;
    return open_path();
}

void log_event(enum log_level level, const char *event, const char *fmt, ...)
{
    if (level < log_level_cur || level >= LOG_LEVEL_NONE)
        return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ level=%s id=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)tv.tv_usec, level_names[level], log_ident, event);
    if (n < 0)
        return;
    if ((size_t)n < sizeof line - 2 && fmt != NULL && fmt[0] != '\0') {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
        else
            n--;   /* nothing to add: drop the separator */
    }
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    int saved = errno;
    ssize_t w = write(log_fd, line, (size_t)n);
    (void)w;
    errno = saved;
}

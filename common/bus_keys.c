/* common/bus_keys.c - the cluster's CURVE key pair for the bus: made once, read by every process and meerkat ctl. */
#include "bus_keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "util.h"

#define KEY_Z85_LEN 40
#define KEY_FILE_MAX 256   /* the key, a newline, and room for a comment line */

/* mkdir -p with mode for the directories it makes. */
static int mkdirs(const char *path, mode_t mode)
{
    char tmp[4096];
    if (mk_strlcpy(tmp, path, sizeof tmp) >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) == -1 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) == -1 && errno != EEXIST)
        return -1;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Makes path with a new secret key unless it exists. Returns 0 (made, or someone
 * else's is there) or -1 with err. */
static int create_key_file(const char *dir, const char *path, char *err, size_t errlen)
{
    if (mkdirs(dir, 0700) == -1) {
        mk_errf(err, errlen, "cannot create the bus keys directory %s: %s", dir, strerror(errno));
        return -1;
    }
    char pub[KEY_Z85_LEN + 1], sec[KEY_Z85_LEN + 1];
    if (zmq_curve_keypair(pub, sec) == -1) {
        mk_errf(err, errlen, "cannot make a CURVE key pair: %s (libzmq without CURVE?)", zmq_strerror(errno));
        return -1;
    }
    char *tmp = xasprintf("%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    int rc = -1;
    if (fd == -1) {
        mk_errf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    char text[KEY_FILE_MAX];
    int n = snprintf(text, sizeof text, "# meerkat CURVE secret key: whoever reads it speaks for its owner\n%s\n", sec);
    /* fchmod: the umask must not widen or narrow what is meant to be exactly 0600. */
    if (fchmod(fd, 0600) == -1 || write_all(fd, text, (size_t)n) == -1 || fsync(fd) == -1) {
        mk_errf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        explicit_bzero(text, sizeof text);
        goto out;
    }
    explicit_bzero(text, sizeof text);
    close(fd);
    /* link() fails with EEXIST when another process made the file first: its key wins. */
    if (link(tmp, path) == -1 && errno != EEXIST) {
        mk_errf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    unlink(tmp);
    rc = 0;
out:
    explicit_bzero(sec, sizeof sec);
    free(tmp);
    return rc;
}

static int read_key_file(const char *path, struct bus_keys *keys, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
        return -1;   /* errno for the caller */
    struct stat st;
    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        mk_errf(err, errlen, "%s is not a regular file", path);
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if ((st.st_mode & 077) != 0) {
        mk_errf(err, errlen, "%s is open to group or others (mode %03o): it must be 0600", path,
                (unsigned)(st.st_mode & 0777));
        close(fd);
        errno = EPERM;
        return -1;
    }
    char text[KEY_FILE_MAX + 1];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, text + got, sizeof text - 1 - got);
        if (r == -1 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof text - 1)
            break;
    }
    close(fd);
    text[got] = '\0';
    /* The key is the first line that is not a comment. */
    const char *key = NULL;
    size_t keylen = 0;
    for (char *line = text; *line != '\0';) {
        size_t len = strcspn(line, "\n");
        if (line[0] != '#' && len > 0) {
            key = line;
            keylen = len;
            break;
        }
        line += len + (line[len] == '\n');
    }
    int rc = -1;
    uint8_t raw[32];
    if (key == NULL || keylen != KEY_Z85_LEN) {
        mk_errf(err, errlen, "%s does not hold a CURVE secret key (40 characters of Z85)", path);
        errno = EINVAL;
        goto out;
    }
    memcpy(keys->secret_key, key, KEY_Z85_LEN);
    keys->secret_key[KEY_Z85_LEN] = '\0';
    if (zmq_z85_decode(raw, keys->secret_key) == NULL || zmq_curve_public(keys->public_key, keys->secret_key) == -1) {
        mk_errf(err, errlen, "%s does not hold a CURVE secret key (not Z85)", path);
        bus_keys_wipe(keys);
        errno = EINVAL;
        goto out;
    }
    rc = 0;
out:
    explicit_bzero(raw, sizeof raw);
    explicit_bzero(text, sizeof text);
    return rc;
}

int bus_keys_load(const char *dir, bool create, struct bus_keys *keys, char *err, size_t errlen)
{
    return bus_keys_load_file(dir, BUS_KEYS_FILE, create, keys, err, errlen);
}

int bus_keys_load_file(const char *dir, const char *file, bool create, struct bus_keys *keys, char *err,
                       size_t errlen)
{
    memset(keys, 0, sizeof *keys);
    if (!zmq_has("curve")) {
        mk_errf(err, errlen, "this libzmq has no CURVE support (set bus.curve: false to run without it)");
        return -1;
    }
    char *path = xasprintf("%s/%s", dir, file);
    char why[512] = "";
    int rc = read_key_file(path, keys, why, sizeof why);
    if (rc == -1 && errno == ENOENT && create) {
        if (create_key_file(dir, path, err, errlen) == -1) {
            free(path);
            return -1;
        }
        rc = read_key_file(path, keys, why, sizeof why);
    }
    if (rc == -1) {
        if (why[0] != '\0')
            mk_errf(err, errlen, "%s", why);
        else if (errno == ENOENT)
            mk_errf(err, errlen, "no %s key in %s (meerkat start makes it at first start)",
                    strcmp(file, BUS_KEYS_FILE) == 0 ? "bus" : "CURVE", path);
        else
            mk_errf(err, errlen, "cannot read %s: %s", path, strerror(errno));
    }
    free(path);
    return rc;
}

void bus_keys_wipe(struct bus_keys *keys)
{
    if (keys != NULL)
        explicit_bzero(keys, sizeof *keys);
}

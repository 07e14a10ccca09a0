/* common/bus_keys.h - the cluster's CURVE key pair for the bus: one secret file in the data directory. */
#ifndef MK_COMMON_BUS_KEYS_H
#define MK_COMMON_BUS_KEYS_H
#include <stdbool.h>
#include <stddef.h>

/* The file that holds the cluster's secret key, under the keys directory. */
#define BUS_KEYS_FILE "bus_curve.key"

/* One CURVE key pair as ZeroMQ's Z85 text (40 characters and a NUL). Every process
 * of a cluster and `meerkat ctl` hold the same pair: each inbox is a CURVE server
 * with it, each peer socket a CURVE client with it, and an inbox accepts only
 * clients whose public key is the cluster's. Like ejabberd's cookie: whoever can
 * read the file administers the cluster; nobody else can. */
struct bus_keys {
    char public_key[41];
    char secret_key[41];
};

/* Reads dir/BUS_KEYS_FILE (borrowed dir) into *keys. With create, a missing file
 * (and a missing dir, made 0700) is made first with a new key pair: written to a
 * temporary file of mode 0600 and linked into place, so processes starting at the
 * same moment all end up with the one pair that won the link. A file that group or
 * others can read or write, or that does not hold one Z85 secret key, is refused.
 * Returns 0, or -1 with one sentence in err (the secret never appears in it). */
int bus_keys_load(const char *dir, bool create, struct bus_keys *keys, char *err, size_t errlen);
/* bus_keys_load for another key file of the same form under dir (borrowed strings):
 * a data center's key pair for the links between data centers (gd/link.c). */
int bus_keys_load_file(const char *dir, const char *file, bool create, struct bus_keys *keys, char *err,
                       size_t errlen);
/* Overwrites *keys with zeros (the secret does not outlive its use in memory). */
void bus_keys_wipe(struct bus_keys *keys);
#endif

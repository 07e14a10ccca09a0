#!/bin/sh
# /usr/local/bin/meerkat in the image: runs /usr/lib/meerkat/meerkat, adding -c "$MEERKAT_CONFIG" to
# `start` and `ctl` when that variable is set and the command names no file itself, so that
#   docker-compose exec c2s-a meerkat ctl register alice@localhost secret
# administers the container's cluster.
REAL=/usr/lib/meerkat/meerkat
if [ -n "${MEERKAT_CONFIG:-}" ] && { [ "${1:-}" = start ] || [ "${1:-}" = ctl ]; }; then
    for a in "$@"; do
        case "$a" in
        -c|--config|--config=*) exec "$REAL" "$@" ;;
        esac
    done
    cmd="$1"
    shift
    exec "$REAL" "$cmd" -c "$MEERKAT_CONFIG" "$@"
fi
exec "$REAL" "$@"

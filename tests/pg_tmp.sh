#!/bin/sh
# tests/pg_tmp.sh - a throw-away PostgreSQL for tests: start DIR (prints the port), stop DIR, destroy DIR.
#   start DIR    first time: initdb in DIR/data (UTF8, trust), user and database "meerkat";
#                later: starts the same cluster again on the same port. Prints the port.
#   stop DIR     fast shutdown (clients are disconnected).
#   destroy DIR  stop, then remove DIR.
# As root the server runs as the postgres user (initdb refuses root). PG_BIN overrides the binaries' folder.
set -eu

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$PG_BIN/initdb" ] || PG_BIN=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)

usage() { echo "usage: $0 start|stop|destroy DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    p=$(( 20000 + $$ % 20000 ))
    while ss -Htan "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}

case $cmd in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        as_owner "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            as_owner "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
                cat "$dir/initdb.log" >&2; exit 1; }
        port=$(free_port)
        as_owner mkdir -p "$dir/sock"
        as_owner sh -c "cat >> '$dir/data/postgresql.conf'" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
CONF
        echo "$port" >"$dir/port"
        fresh=1
    else
        fresh=0
    fi
    port=$(cat "$dir/port")
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null || {
        cat "$dir/server.log" >&2; exit 1; }
    if [ "$fresh" = 1 ]; then
        as_owner "$PG_BIN/psql" -X -q -h "$dir/sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -c "CREATE ROLE meerkat LOGIN" \
            -c "CREATE DATABASE meerkat OWNER meerkat ENCODING 'UTF8' TEMPLATE template0" >/dev/null
    fi
    echo "$port"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    ;;
destroy)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    usage
    ;;
esac

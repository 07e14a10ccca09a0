#!/bin/sh
# postgres-start (the compose files' PostgreSQL container): at the first start makes the cluster and
# the meerkat role and database (password from /run/pg/password, made by init.sh); then serves
# TLS only to the network (the certificate init.sh made), SCRAM passwords, and local peer logins.
set -eu
D="$PGDATA"
if [ ! -s "$D/PG_VERSION" ]; then
    initdb -D "$D" -U postgres --auth-local=peer --auth-host=reject --encoding=UTF8 --locale=C >/dev/null
    pw=$(head -n 1 /run/pg/password)
    case "$pw" in *"'"*) echo "postgres-start: the password must not contain a quote" >&2; exit 1 ;; esac
    printf "CREATE ROLE meerkat LOGIN PASSWORD '%s';\nCREATE DATABASE meerkat OWNER meerkat;\n" "$pw" \
        | postgres --single -D "$D" -c password_encryption=scram-sha-256 postgres >/dev/null
    cat > "$D/pg_hba.conf" <<HBA
# made by postgres-start: local peer logins, TLS + SCRAM from the network, nothing else
local     all      all                    peer
hostssl   meerkat  meerkat  0.0.0.0/0     scram-sha-256
hostnossl all      all      0.0.0.0/0     reject
HBA
    echo "postgres-start: cluster made in $D"
fi
exec postgres -D "$D" -c listen_addresses='*' -c ssl=on \
    -c ssl_cert_file=/run/pg/server.crt -c ssl_key_file=/run/pg/server.key \
    -c password_encryption=scram-sha-256 -c unix_socket_directories=/var/run/postgresql \
    -c max_connections=200 -c shared_buffers=64MB

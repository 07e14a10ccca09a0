#!/bin/sh
# deploy/compose/init.sh - the compose files' one-shot `init` service (the Meerkat image, as root):
# makes every secret of the cluster once, in the volumes only their users mount, and renders each
# data center's Meerkat configuration from config/<dc>.yaml.
#
#   init.sh DC...        e.g. `init.sh dc-a dc-b` (two-dc.yml) or `init.sh dc` (docker-compose.yml)
#
# Mounted: this directory at /compose (read-only); per data center a volume at /secrets/<dc>, seen by
# that DC's Meerkat containers as /run/meerkat (read-only); /secrets/pg (the PostgreSQL container's
# /run/pg) and /secrets/redis (the Redis containers' /run/redis) when the cluster has them.
# Environment: MEERKAT_DOMAIN (default localhost), MEERKAT_NET (the first two octets of the
# networks, default 10.77).
#
# What exists is kept (a second `up` finds the same keys and passwords); only the configurations are
# rendered again. Per data center: bus_curve.key (the bus's CURVE key, 0600), gd_curve.key (the link
# between data centers), tls/ (a self-signed certificate for the domain), pg-password, pg-ca.pem,
# redis-password, meerkat.yaml. PostgreSQL: a CA made here (its key is not kept) and the server's
# certificate for its addresses on every DC network; the meerkat role's password. Redis: redis.conf
# with requirepass/masterauth. Secrets are mode 0600 and owned by the uid that reads them: meerkat
# 10001, postgres 10002, redis 10003 (the images fix those uids).
set -eu
umask 077

DOMAIN="${MEERKAT_DOMAIN:-localhost}"
NET="${MEERKAT_NET:-10.77}"
MK=10001
PG=10002
RD=10003

rand() { openssl rand -hex 24; }

# The passwords shared between the tiers: made in the first volume that holds them, copied to the rest.
shared_secret() {    # name -> prints the value
    name=$1
    for f in /secrets/*/"$name" /secrets/pg/password; do
        case "$f" in */pg/password) [ "$name" = pg-password ] || continue ;; esac
        if [ -s "$f" ]; then cat "$f"; return; fi
    done
    rand
}

PG_PASSWORD=$(shared_secret pg-password)
REDIS_PASSWORD=$(shared_secret redis-password)

if [ -d /secrets/pg ]; then
    D=/secrets/pg
    if [ ! -s "$D/server.crt" ] || [ ! -s "$D/ca.crt" ]; then
        T=$(mktemp -d)
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=meerkat compose PostgreSQL CA" -keyout "$T/ca.key" -out "$D/ca.crt" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=postgres" \
            -keyout "$D/server.key" -out "$T/server.csr" 2>/dev/null
        printf 'subjectAltName=DNS:postgres,IP:%s.1.30,IP:%s.2.30\n' "$NET" "$NET" > "$T/ext"
        openssl x509 -req -in "$T/server.csr" -CA "$D/ca.crt" -CAkey "$T/ca.key" -CAcreateserial \
            -days 3650 -extfile "$T/ext" -out "$D/server.crt" 2>/dev/null
        rm -rf "$T"
    fi
    [ -s "$D/password" ] || printf '%s\n' "$PG_PASSWORD" > "$D/password"
    chown -R "$PG:$PG" "$D"
    chmod 0700 "$D"
    chmod 0600 "$D/server.key" "$D/password"
    chmod 0644 "$D/server.crt" "$D/ca.crt"
fi

if [ -d /secrets/redis ]; then
    D=/secrets/redis
    if [ ! -s "$D/redis.conf" ]; then
        cat > "$D/redis.conf" <<CONF
# made by deploy/compose/init.sh
bind 0.0.0.0
port 6379
protected-mode yes
save ""
appendonly no
dir /var/lib/redis
requirepass $REDIS_PASSWORD
masterauth $REDIS_PASSWORD
repl-ping-replica-period 1
repl-timeout 10
CONF
    fi
    chown -R "$RD:$RD" "$D"
    chmod 0700 "$D"
    chmod 0600 "$D/redis.conf"
fi

# Keys first (every DC's gd public key goes into the others' configurations).
for dc in "$@"; do
    D=/secrets/$dc
    [ -d "$D" ] || { echo "init.sh: /secrets/$dc is not mounted" >&2; exit 1; }
    for k in bus_curve.key gd_curve.key; do
        if [ ! -s "$D/$k" ]; then
            kp=$(meerkat-curve-keypair)
            printf '# meerkat CURVE secret key: whoever reads it speaks for its owner\n%s\n' "${kp#* }" > "$D/$k"
        fi
    done
    mkdir -p "$D/tls"
    if [ ! -s "$D/tls/cert.pem" ]; then
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" \
            -keyout "$D/tls/key.pem" -out "$D/tls/cert.pem" 2>/dev/null
    fi
    [ -s "$D/pg-password" ] || printf '%s\n' "$PG_PASSWORD" > "$D/pg-password"
    [ -s "$D/redis-password" ] || printf '%s\n' "$REDIS_PASSWORD" > "$D/redis-password"
    if [ -s /secrets/pg/ca.crt ]; then cp /secrets/pg/ca.crt "$D/pg-ca.pem"; fi
done

# sed replacement text: escape what sed would read as special (Z85 has '&' and '/').
esc() { printf '%s' "$1" | sed 's/[&|\\]/\\&/g'; }

for dc in "$@"; do
    D=/secrets/$dc
    T=/compose/config/$dc.yaml
    [ -f "$T" ] || { echo "init.sh: no template $T" >&2; exit 1; }
    script="s|@DOMAIN@|$(esc "$DOMAIN")|g; s|@NET@|$(esc "$NET")|g"
    for peer in "$@"; do
        pub=$(meerkat-curve-keypair "/secrets/$peer/gd_curve.key")
        tag=$(printf '%s' "$peer" | tr 'a-z-' 'A-Z_')
        script="$script; s|@GD_PUBLIC_${tag}@|$(esc "$pub")|g"
    done
    sed "$script" "$T" > "$D/meerkat.yaml.tmp"
    if grep -nE '@(DOMAIN|NET|GD_PUBLIC_[A-Z_]+)@' "$D/meerkat.yaml.tmp" >&2; then
        echo "init.sh: $T: a placeholder above was left unfilled" >&2
        exit 1
    fi
    mv "$D/meerkat.yaml.tmp" "$D/meerkat.yaml"
    chown -R "$MK:$MK" "$D"
    chmod 0700 "$D" "$D/tls"
    chmod 0600 "$D/bus_curve.key" "$D/gd_curve.key" "$D/tls/key.pem" "$D/pg-password" "$D/redis-password"
    chmod 0644 "$D/meerkat.yaml" "$D/tls/cert.pem"
    [ ! -f "$D/pg-ca.pem" ] || chmod 0644 "$D/pg-ca.pem"
    echo "init.sh: $dc ready (domain $DOMAIN)"
done

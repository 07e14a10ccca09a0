#!/bin/sh
# deploy/install-deps.sh - installs, with apt, the Debian packages Meerkat builds and tests with that are missing.
# Idempotent: a machine that has them all runs no apt command at all.
# With --bench, also the peer servers `make bench` runs beside Meerkat (ejabberd, Prosody).
set -eu

BUILD="gcc clang make pkg-config libev-dev libssl-dev libexpat1-dev libzmq3-dev \
libhiredis-dev libpq-dev libprotobuf-c-dev protobuf-c-compiler libyaml-dev libidn-dev \
libsqlite3-dev libcurl4-openssl-dev libcmocka-dev libclang-rt-14-dev"
TEST="postgresql redis-server prometheus python3-pytest python3-slixmpp python3-botocore stunnel4 iproute2 openssl procps curl \
docker.io docker-compose mmdebstrap chromium"

PEERS=""
if [ "${1:-}" = "--bench" ]; then
    PEERS="ejabberd prosody"
fi

# The offline Kubernetes schema validator (tests/k8s: npm kubernetes-models), pinned by its
# package-lock.json, installed once with npm.
k8s_validator() {
    dir="$(cd "$(dirname "$0")/.." && pwd)/tests/k8s"
    if [ -d "$dir/node_modules/kubernetes-models" ]; then
        return 0
    fi
    echo "install-deps: npm ci in tests/k8s"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# xmpp.js for the headless Chromium WebSocket test (tests/browser: npm @xmpp/client), pinned by
# its package-lock.json, installed once with npm.
browser_lib() {
    dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
    if [ -d "$dir/node_modules/@xmpp/client" ]; then
        return 0
    fi
    echo "install-deps: npm ci in tests/browser"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

missing=""
# Node's own packages (nodesource's nodejs ships npm) are kept when npm is there.
if ! command -v npm >/dev/null 2>&1; then
    missing=" nodejs npm"
fi
for p in $BUILD $TEST $PEERS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    k8s_validator
    browser_lib
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
k8s_validator
browser_lib

#!/bin/sh
# deploy/docker/base.sh - makes the Debian bookworm base image every Meerkat image builds FROM
# (default tag local/debian:bookworm), without needing an image registry.
#
#   deploy/docker/base.sh [TAG]
#
# - The tag already in the local image store: nothing to do.
# - mmdebstrap installed: a minbase bookworm root file system, made from this machine's own
#   apt sources (same mirror, suites and keyring; /etc/apt/sources.list.d/debian.sources, else
#   /etc/apt/sources.list), without manual pages, locales and documentation, imported with
#   `docker import` (about 1 minute, 135 MB).
# - Otherwise: `docker pull debian:bookworm-slim` and tag it (needs a reachable registry).
# MEERKAT_BASE_FORCE=1 remakes it even when the tag exists.
set -eu

TAG="${1:-local/debian:bookworm}"
DOCKER="${DOCKER:-docker}"

if [ "${MEERKAT_BASE_FORCE:-0}" != "1" ] && $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
    echo "base.sh: $TAG already present"
    exit 0
fi

if command -v mmdebstrap >/dev/null 2>&1; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        SOURCES=/etc/apt/sources.list.d/debian.sources
    elif [ -f /etc/apt/sources.list ]; then
        SOURCES=/etc/apt/sources.list
    else
        echo "base.sh: no apt sources on this machine (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)" >&2
        exit 1
    fi
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    echo "base.sh: mmdebstrap bookworm (minbase) from $SOURCES"
    # The dpkg path excludes stay in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so the
    # packages the Dockerfiles install later are slim too.
    mmdebstrap --quiet --variant=minbase --include=ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --aptopt='APT::Install-Recommends "false"' \
        bookworm "$TMP/rootfs.tar" "$SOURCES"
    $DOCKER import --change 'CMD ["/bin/bash"]' "$TMP/rootfs.tar" "$TAG" >/dev/null
    echo "base.sh: imported $TAG"
    exit 0
fi

echo "base.sh: mmdebstrap not installed; pulling debian:bookworm-slim"
$DOCKER pull debian:bookworm-slim
$DOCKER tag debian:bookworm-slim "$TAG"
echo "base.sh: tagged debian:bookworm-slim as $TAG"

#!/bin/sh
# /usr/local/bin/meerkat-healthcheck in the image (its HEALTHCHECK): healthy when the container's
# Meerkat process answers GET /healthz with 200 on its metrics port (MEERKAT_METRICS_PORT, 9100 by
# default) at one of the container's IPv4 addresses (a process's metrics listener is bound to the
# address its `processes` entry names), or at 127.0.0.1 (`meerkat start` with the defaults).
port="${MEERKAT_METRICS_PORT:-9100}"
for ip in $(hostname -I 2>/dev/null) 127.0.0.1; do
    case "$ip" in *:*) continue ;; esac
    if curl -fsS -m 2 -o /dev/null "http://$ip:$port/healthz" 2>/dev/null; then
        exit 0
    fi
done
echo "no /healthz answer on port $port" >&2
exit 1

# deploy/compose/services.Dockerfile - the compose files' PostgreSQL, Redis and Prometheus, from the
# same Debian bookworm base as Meerkat (deploy/docker/base.sh; no registry needed). One stage each
# (compose builds them with `target:`); each runs as a fixed non-root uid that init.sh gives the
# secrets to: postgres 10002, redis 10003.
ARG BASE=local/debian:bookworm

FROM ${BASE} AS postgres
RUN groupadd --system --gid 10002 postgres \
 && useradd --system --uid 10002 --gid 10002 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 tini \
 && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql/15 \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
COPY postgres-start.sh /usr/local/bin/postgres-start
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD ["pg_isready", "-q", "-h", "/var/run/postgresql", "-d", "meerkat"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["postgres-start"]

FROM ${BASE} AS redis
RUN groupadd --system --gid 10003 redis \
 && useradd --system --uid 10003 --gid 10003 --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
 && apt-get update \
 && apt-get install -y --no-install-recommends redis-server tini \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis -m 0700 /var/lib/redis
USER redis
HEALTHCHECK --interval=2s --timeout=3s --retries=30 \
  CMD ["sh", "-c", "REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /run/redis/redis.conf) redis-cli ping | grep -qx PONG"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["redis-server", "/run/redis/redis.conf"]

FROM ${BASE} AS prometheus
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus tini \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus -g prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090"]

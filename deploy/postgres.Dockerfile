# PostgreSQL 15 from Debian bookworm for compose's postgres profile (no registry image needed):
# FROM the same base as Kith's image (deploy/base-image.sh). The first start creates the cluster in
# /var/lib/postgresql/data with the superuser "kith" (password: $POSTGRES_PASSWORD, required) and
# the database "kith"; it listens on the compose network with scram-sha-256 passwords.
FROM kith-base:bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-entrypoint"]

#!/bin/sh
# The postgres service's entrypoint (deploy/postgres.Dockerfile): create the cluster at the first
# start, then run the server in the foreground (SIGINT from `docker stop`: a fast shutdown).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ]; then
		echo "POSTGRES_PASSWORD is not set (put it in .env beside compose.yaml)" >&2
		exit 1
	fi
	pwfile=$(mktemp)
	printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
	initdb -D "$PGDATA" -U kith --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
	echo "CREATE DATABASE kith;" | postgres --single -D "$PGDATA" -j postgres >/dev/null
	echo "created the cluster: user kith, database kith"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'

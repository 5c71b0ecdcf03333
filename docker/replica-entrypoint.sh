#!/bin/sh
# Entrypoint of the replica containers (official postgres image).
#
# First start (empty PGDATA): wait until the primary accepts connections, clone
# it with pg_basebackup -R (which writes standby.signal and primary_conninfo),
# then run postgres as a hot standby. Later starts: PGDATA is already a
# standby, so just run postgres.
#
# Environment:
#   PRIMARY_HOST, PRIMARY_PORT           where to clone from (primary:5432)
#   REPLICATION_USER, REPLICATION_PASSWORD   the role made by primary-init.sh
#   PGDATA                               data directory (the image's default)
# Arguments are passed to postgres (e.g. -c hot_standby=on); a leading
# "postgres", as in the official image's CMD convention, is dropped.
#
# Plain POSIX sh.
set -eu

: "${PRIMARY_HOST:=primary}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "${1:-}" = postgres ]; then
    shift
fi

# The container starts as root (like the image's own entrypoint): make the data
# directory the postgres user's, with the 0700 mode PostgreSQL insists on, and
# re-run this script as postgres. PostgreSQL refuses to run as root.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    exec gosu postgres "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # pg_basebackup needs an empty directory: refuse to clobber anything else.
    if [ -n "$(ls -A "$PGDATA")" ]; then
        echo "replica-entrypoint: $PGDATA is not empty and not a data directory; refusing to overwrite it" >&2
        exit 1
    fi

    echo "replica-entrypoint: waiting for primary $PRIMARY_HOST:$PRIMARY_PORT"
    # During its first-boot initialisation the primary listens on its unix
    # socket only, so TCP readiness means the replication role already exists.
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER"; do
        sleep 1
    done

    echo "replica-entrypoint: cloning primary with pg_basebackup"
    # -R: write standby.signal and primary_conninfo (with the password, taken
    #     from PGPASSWORD) into postgresql.auto.conf.
    # -X stream: stream the WAL needed for consistency alongside the copy.
    # -c fast: ask the primary for an immediate checkpoint.
    if ! PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup \
            -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" \
            -D "$PGDATA" -R -X stream -c fast --no-password; then
        # Leave an empty directory behind so the next start retries cleanly.
        echo "replica-entrypoint: pg_basebackup failed" >&2
        find "$PGDATA" -mindepth 1 -delete
        exit 1
    fi
    chmod 0700 "$PGDATA"
    echo "replica-entrypoint: base backup done"
fi

exec postgres "$@"

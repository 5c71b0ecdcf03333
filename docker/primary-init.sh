#!/bin/sh
# Runs once, on the primary's first start, from /docker-entrypoint-initdb.d of
# the official postgres image (after initdb, while a temporary server listens
# on the unix socket only). It prepares the primary for streaming replication:
#   * a REPLICATION role that the replicas' pg_basebackup/walreceiver log in as;
#   * a pg_hba.conf rule letting that role connect for replication from the
#     compose network (samenet = any subnet this container is attached to),
#     with scram-sha-256.
# wal_level, hot_standby and the WAL sender limits are set on the command line
# in docker-compose.yml, so they survive a re-initialised postgresql.conf.
#
# Plain POSIX sh: the image may source this file from bash or run it with sh.
set -eu

: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"

# psql variables (:"name" / :'name') quote the identifier and the literal, so
# odd characters in the user name or password cannot break the statement.
# The password is hashed by the server with password_encryption (scram-sha-256).
psql -v ON_ERROR_STOP=1 --no-psqlrc \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v repl_user="$REPLICATION_USER" -v repl_password="$REPLICATION_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"repl_user" WITH LOGIN REPLICATION PASSWORD :'repl_password';
SQL

# The "all" database keyword in the image's catch-all rule does not match
# replication connections, so they need their own line.
cat >>"$PGDATA/pg_hba.conf" <<EOF_HBA

# Added by docker/primary-init.sh: streaming replication from the compose network.
host    replication     $REPLICATION_USER     samenet     scram-sha-256
EOF_HBA

echo "primary-init: replication role '$REPLICATION_USER' created; pg_hba allows replication from samenet"

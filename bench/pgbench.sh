#!/usr/bin/env bash
# bench/pgbench.sh: pgbench through Palisade and its peers, against direct.
#
# Self-contained: it creates a throwaway PostgreSQL primary (and optionally
# replicas) on free 127.0.0.1 ports, loads `pgbench -i -s $SCALE`, starts
# Palisade in front of it and, when they are installed, PgBouncer and
# pgpool-II as peers, then runs every workload x clients x target combination,
# interleaved in one run so that all targets see the same machine conditions,
# and prints a markdown table. For every Palisade run it also records how many
# transactions each node committed (pg_stat_database.xact_commit, read on each
# node directly) and prints them in a second table, to show how reads are
# spread over the replicas. Everything it starts is stopped on exit and its
# temp directory removed.
#
# Usage: bench/pgbench.sh [--replicas N] [--out FILE] [--no-palisade] [--keep-going] [--tls] [--metrics]
#   --replicas N   also start N streaming replicas (pg_basebackup -R) and give
#                  them to Palisade as nodes (default 0: a single-node comparison)
#   --out FILE     also write the result table to FILE
#   --no-palisade  bench the peers only (no Palisade build needed)
#   --keep-going   record a failed run as FAILED and go on; still exits non-zero
#   --metrics      also run target palisade-metrics: the same Palisade with its
#                  HTTP endpoint on, scraped (/metrics) every second during its
#                  runs, as Prometheus would, and print a "metrics on against
#                  off" summary (mean tps and proxy CPU per transaction of
#                  palisade and palisade-metrics over the rounds). The issue-15
#                  cell: ROUNDS=6 ONLY_TARGETS="palisade palisade-metrics"
#                  WORKLOADS=select-simple CLIENTS=8 bench/pgbench.sh --metrics
#   --tls          clients speak TLS (pgbench with sslmode=require) to every
#                  target: PostgreSQL itself (ssl = on, the `direct` row),
#                  Palisade ([tls] mode = "require") and PgBouncer
#                  (client_tls_sslmode = require), all with one self-signed
#                  certificate made here with openssl; the proxies talk to
#                  PostgreSQL in the clear. pgpool-II is skipped. E.g. the
#                  issue-13 cell: WORKLOADS=select-simple CLIENTS=8 bench/pgbench.sh --tls
#
# Environment:
#   DURATION      seconds per pgbench run (default 10)
#   CLIENTS       client counts, space or comma separated (default "1 8 32")
#   WORKLOADS     subset of: select-simple select-extended select-prepared tpcb-simple
#                 churn-simple write-read commit-read (default: all seven).
#                 write-read updates an account and reads it back at once (two
#                 autocommit statements on one connection). commit-read is not
#                 pgbench: pairs of connections (clients / 2), one committing, the
#                 other reading the row back at once (examples/commit_read.rs),
#                 and it counts stale reads. Palisade runs at its default level,
#                 read-after-commit; select-simple, select-extended, write-read
#                 and commit-read also run through a Palisade at causal (target
#                 palisade-causal), and write-read and commit-read through one at
#                 strong (palisade-strong), to price the levels in one run.
#   ROUNDS        run every cell this many times (default 1); each round runs
#                 the targets in the opposite order of the round before (A B,
#                 B A, A B, …), so that no target always runs first or last
#   ONLY_TARGETS  run only these targets (space separated; default: all)
#   SCALE         pgbench scale factor (default 10)
#   PG_BIN        PostgreSQL bin directory (default: pg_config --bindir, else the
#                 newest /usr/lib/postgresql/*/bin)
#   PALISADE_BIN  Palisade binary (default: target/release/palisade, built with
#                 `cargo build --release` when missing)
#   IDLE_CLIENTS  counts of idle clients to hold, e.g. "1000 10000" (default none):
#                 after the pgbench runs, each Palisade target and PgBouncer gets
#                 that many logged-in idle connections (examples/idle_clients),
#                 and the growth of its resident memory per client is reported
#                 (both proxies are configured for 20000 clients; pgpool-II,
#                 a process per client, is left out)
#   PALISADE_BASE_BIN  a second Palisade binary (say, the build before a change),
#                 run as target palisade-base with the same config, so that a
#                 before/after comparison shares one run
#
# Every proxy target also reports its own CPU time per transaction: utime +
# stime of its process tree (children included) over the run, divided by the
# transactions pgbench processed. On a machine where the proxy shares cores
# with PostgreSQL and pgbench this is the steadiest figure of a proxy's cost.
# Beside it, the user time alone: the system time of a relay is mostly the
# kernel's work on its four socket calls per request, much the same for
# every proxy, so the user time shows what the proxy's own code costs.
#
# Note: the benchmark server runs with fsync=off (a throwaway cluster, and the
# proxies' overhead is what is measured, not the disk). Do not compare its
# read-write numbers with a durable server's.
set -euo pipefail

# ---------------------------------------------------------------- arguments --

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

REPLICAS=0
OUT_FILE=""
WITH_PALISADE=1
KEEP_GOING=0
TLS=0
METRICS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --replicas) REPLICAS="${2:?--replicas needs a number}"; shift 2 ;;
        --replicas=*) REPLICAS="${1#*=}"; shift ;;
        --out) OUT_FILE="${2:?--out needs a file}"; shift 2 ;;
        --out=*) OUT_FILE="${1#*=}"; shift ;;
        --no-palisade) WITH_PALISADE=0; shift ;;
        --keep-going) KEEP_GOING=1; shift ;;
        --tls) TLS=1; shift ;;
        --metrics) METRICS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "pgbench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-1 8 32}"
CLIENTS="${CLIENTS//,/ }"
ALL_WORKLOADS="select-simple select-extended select-prepared tpcb-simple churn-simple write-read commit-read"
WORKLOADS="${WORKLOADS:-$ALL_WORKLOADS}"
WORKLOADS="${WORKLOADS//,/ }"
SCALE="${SCALE:-10}"

[[ "$REPLICAS" =~ ^[0-9]+$ ]] || { echo "pgbench.sh: --replicas must be a number" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "pgbench.sh: DURATION must be a positive integer" >&2; exit 2; }
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "pgbench.sh: SCALE must be a positive integer" >&2; exit 2; }
for c in $CLIENTS; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || { echo "pgbench.sh: bad CLIENTS entry: $c" >&2; exit 2; }
    # Direct clients, pgpool's cached connections (one per child) and the
    # poolers' server connections all count against max_connections = 300.
    (( c <= 100 )) || { echo "pgbench.sh: at most 100 clients per run (the server has max_connections = 300)" >&2; exit 2; }
done
for w in $WORKLOADS; do
    [[ " $ALL_WORKLOADS " == *" $w "* ]] || { echo "pgbench.sh: unknown workload $w (known: $ALL_WORKLOADS)" >&2; exit 2; }
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PASSWORD="palisade-bench"
export PGPASSWORD="$PASSWORD"   # for pgbench and psql; never on a command line
export PGCONNECT_TIMEOUT=5
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGSSLMODE 2>/dev/null || true

log() { printf '[pgbench.sh] %s\n' "$*" >&2; }
die() { printf '[pgbench.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- binaries --

find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"; return
    fi
    if command -v pg_config >/dev/null 2>&1; then
        local d; d="$(pg_config --bindir)"
        if [[ -x "$d/initdb" ]]; then echo "$d"; return; fi
    fi
    # Debian layout: newest installed major version.
    local d
    d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    if [[ -d "$d" ]]; then echo "$d"; fi
}
PG_BIN="$(find_pg_bin)"
[[ -n "$PG_BIN" ]] || die "no PostgreSQL found: install it or set PG_BIN"
for b in initdb pg_ctl pg_basebackup pgbench psql; do
    [[ -x "$PG_BIN/$b" ]] || die "$PG_BIN/$b not found (set PG_BIN)"
done

PALISADE_BIN="${PALISADE_BIN:-$REPO_ROOT/target/release/palisade}"
if (( WITH_PALISADE )) && [[ ! -x "$PALISADE_BIN" ]]; then
    log "building Palisade (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release) \
        || die "cargo build --release failed (run with --no-palisade to bench the peers only)"
    [[ -x "$PALISADE_BIN" ]] || die "$PALISADE_BIN not found after the build"
fi
COMMIT_READ_BIN="$REPO_ROOT/target/release/examples/commit_read"
if [[ " $WORKLOADS " == *" commit-read "* ]]; then
    log "building the commit-read client (cargo build --release --example commit_read)"
    (cd "$REPO_ROOT" && cargo build --release --example commit_read) \
        || die "cargo build --release --example commit_read failed"
fi

PGBOUNCER_BIN="$(command -v pgbouncer || true)"
PGPOOL_BIN="$(command -v pgpool || true)"

# PostgreSQL, PgBouncer and pgpool-II refuse to (or should not) run as root:
# as root, run them as the `postgres` OS user.
# AS_PG is a command prefix rather than a function so that a backgrounded
# `"${AS_PG[@]}" server &` leaves the server's own pid in $! (setpriv execs it).
if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user to run the servers"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    give_to_pg() { chown -R postgres: "$@"; }
else
    AS_PG=()
    give_to_pg() { :; }
fi
as_pg() { "${AS_PG[@]}" "$@"; }

# ------------------------------------------------------------- temp + trap --

WORK="$(mktemp -d "${TMPDIR:-/tmp}/palisade-bench.XXXXXX")"
chmod 0755 "$WORK"
give_to_pg "$WORK"

# write-read: change an account, then read it back at once (each statement
# its own transaction), the pattern read-your-writes exists for.
cat >"$WORK/write-read.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF

# --tls: one self-signed certificate for PostgreSQL, Palisade and PgBouncer.
if (( TLS )); then
    command -v openssl >/dev/null || die "--tls needs the openssl command"
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >"$WORK/openssl.log" 2>&1 \
        || die "openssl could not make a certificate: $(cat "$WORK/openssl.log")"
    chmod 0600 "$WORK/tls/key.pem"
    give_to_pg "$WORK/tls"
    export PGSSLMODE=require
fi

PG_DIRS=()          # data directories of servers to stop with pg_ctl
PIDS=()             # "pid:SIGNAL" of processes to stop with kill (by pid)

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local entry pid
    for entry in "${PIDS[@]}"; do
        kill -s "${entry#*:}" "${entry%%:*}" 2>/dev/null
    done
    for entry in "${PIDS[@]}"; do
        pid="${entry%%:*}"
        # Give each a few seconds, then insist.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -s KILL "$pid" 2>/dev/null
    done
    local d
    for d in "${PG_DIRS[@]}"; do
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    if (( rc != 0 )); then
        log "failed (exit $rc); logs follow from $WORK"
        local f
        for f in "$WORK"/primary.log "$WORK"/replica*.log "$WORK"/palisade.log \
                 "$WORK"/pgbouncer/pgbouncer.log "$WORK"/pgpool/pgpool.log; do
            [[ -s "$f" ]] || continue
            echo "----- $f (last 20 lines)" >&2
            tail -n 20 "$f" >&2
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- helpers --

USED_PORTS=" "
# A free TCP port on 127.0.0.1: nothing accepts a connection there and this
# script has not handed it out already.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 40000 ))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port found on 127.0.0.1"
}

# The benchmark database. Not "postgres": pgpool-II never caches connections
# to the postgres, template0/1 and regression databases.
BENCH_DB=bench
DB="$BENCH_DB"

psql_at() { # port sql...  (in $DB; set DB=postgres for the maintenance db)
    local port="$1"; shift
    "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -c "$*"
}

# Wait until `SELECT 1` succeeds on a port (a server or a proxy in front of
# one); with a pid, give up as soon as that process has exited.
wait_sql() { # port name [seconds [pid]]
    local port="$1" name="$2" secs="${3:-30}" pid="${4:-}"
    local deadline=$(( SECONDS + secs ))
    until [[ "$(psql_at "$port" 'SELECT 1' 2>/dev/null)" == 1 ]]; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited before accepting connections on 127.0.0.1:$port"
        fi
        (( SECONDS < deadline )) || die "$name on 127.0.0.1:$port did not answer SELECT 1 within ${secs}s"
        sleep 0.2
    done
}

# ------------------------------------------------------------ the primary --

PG_VERSION_STR="$("$PG_BIN/postgres" --version)"
log "PostgreSQL: $PG_VERSION_STR ($PG_BIN)"
log "note: the benchmark server runs with fsync=off; numbers are not durable-server numbers"

PRIMARY_DIR="$WORK/primary"
printf '%s\n' "$PASSWORD" >"$WORK/pwfile"
give_to_pg "$WORK/pwfile"
as_pg "$PG_BIN/initdb" -D "$PRIMARY_DIR" -U postgres --pwfile="$WORK/pwfile" \
    --auth=scram-sha-256 -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 \
    || die "initdb failed (see above)"
rm -f "$WORK/pwfile"

# Loopback TCP only; unix sockets off so that every client goes through TCP.
as_pg tee -a "$PRIMARY_DIR/postgresql.conf" >/dev/null <<EOF

# ---- bench/pgbench.sh ----
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
# Throwaway benchmark cluster: no durability.
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 10
hot_standby = on
log_min_messages = warning
EOF
if (( TLS )); then
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$WORK/tls/cert.pem" "$WORK/tls/key.pem" \
        | as_pg tee -a "$PRIMARY_DIR/postgresql.conf" >/dev/null
fi

# Start a server on a free port (appended to its postgresql.conf; the last
# setting wins) and leave the port in STARTED_PORT. Other programs on this
# machine may grab a port between free_port and the bind, so a start that
# failed to bind is retried on another port.
start_pg() { # datadir name
    local dir="$1" name="$2" port attempt
    for attempt in 1 2 3; do
        port="$(free_port)"
        printf '\n# ---- bench/pgbench.sh: %s ----\nport = %s\n' "$name" "$port" \
            | as_pg tee -a "$dir/postgresql.conf" >/dev/null
        if as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$WORK/$name.log" -w -t 60 start >/dev/null; then
            PG_DIRS+=("$dir")
            STARTED_PORT="$port"
            return
        fi
        grep -q 'could not bind' "$WORK/$name.log" 2>/dev/null || break
        log "$name: port $port was taken meanwhile; retrying on another (attempt $attempt)"
    done
    die "$name did not start (see its log below)"
}

start_pg "$PRIMARY_DIR" primary
PRIMARY_PORT="$STARTED_PORT"
DB=postgres wait_sql "$PRIMARY_PORT" primary
DB=postgres psql_at "$PRIMARY_PORT" "CREATE DATABASE $BENCH_DB" >/dev/null
log "primary on 127.0.0.1:$PRIMARY_PORT; loading pgbench -i -s $SCALE into database $DB"
"$PG_BIN/pgbench" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres "$DB" \
    >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: $(tail -n 5 "$WORK/pgbench-init.log")"

# --------------------------------------------------------------- replicas --

REPLICA_PORTS=()
for (( i = 1; i <= REPLICAS; i++ )); do
    dir="$WORK/replica$i"
    # -R writes standby.signal and primary_conninfo (password from PGPASSWORD).
    as_pg env PGPASSWORD="$PASSWORD" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" \
        -U postgres -D "$dir" -R -X stream -c fast --no-password >"$WORK/basebackup$i.log" 2>&1 \
        || die "pg_basebackup for replica$i failed: $(tail -n 5 "$WORK/basebackup$i.log")"
    start_pg "$dir" "replica$i"
    port="$STARTED_PORT"
    wait_sql "$port" "replica$i"
    REPLICA_PORTS+=("$port")
    log "replica$i on 127.0.0.1:$port"
done
if (( REPLICAS > 0 )); then
    deadline=$(( SECONDS + 60 ))
    until [[ "$(psql_at "$PRIMARY_PORT" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" == "$REPLICAS" ]]; do
        (( SECONDS < deadline )) || die "replicas are not all streaming after 60s"
        sleep 0.5
    done
fi

# Every node, primary first, for the per-node counts of the Palisade runs.
NODE_NAMES=(primary)
NODE_PORTS=("$PRIMARY_PORT")
for (( i = 1; i <= REPLICAS; i++ )); do
    NODE_NAMES+=("replica$i")
    NODE_PORTS+=("${REPLICA_PORTS[i-1]}")
done

# Server processes in the bench database on the primary now.
bench_backends() {
    psql_at "$PRIMARY_PORT" "SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND backend_type = 'client backend'"
}

# A server process adds its transactions to pg_stat_database as it exits:
# after a direct run, waits (up to 10 s) for its processes to be gone, so the
# next target's per-node count does not get the direct run's commits.
wait_backends_gone() { # backends before the run
    local deadline=$(( SECONDS + 10 ))
    while (( $(bench_backends) > $1 && SECONDS < deadline )); do
        sleep 0.1
    done
}

# Committed transactions in the bench database on every node (space
# separated, in NODE_PORTS order), asked of each node directly: each node
# counts the transactions its own sessions ran, replicas included.
node_commits() {
    local p
    for p in "${NODE_PORTS[@]}"; do
        DB=postgres psql_at "$p" "SELECT xact_commit FROM pg_stat_database WHERE datname = '$BENCH_DB'"
    done | paste -sd ' ' -
}

# The growth of node_commits since $1, formatted for the report. A server
# publishes a session's counts at most once a second and, for a session that
# stays connected (a pooled server connection), up to ~10 s late; so wait
# until the nodes together account for the $2 transactions pgbench reports.
per_node_since() { # "before counts" processed
    local -a before now
    read -r -a before <<<"$1"
    local processed="$2" deadline=$(( SECONDS + 15 )) sum i out
    while :; do
        read -r -a now <<<"$(node_commits)"
        sum=0
        for i in "${!now[@]}"; do sum=$(( sum + now[i] - before[i] )); done
        (( sum >= processed || SECONDS >= deadline )) && break
        sleep 0.5
    done
    out=""
    for i in "${!now[@]}"; do
        out+="${out:+|}$(( now[i] - before[i] ))"
    done
    (( sum >= processed )) || out+=" (incomplete after 15 s)"
    echo "$out"
}

# Targets: name and port, in the order they run within each group.
TARGETS=(direct)
declare -A TARGET_PORT=([direct]="$PRIMARY_PORT")
declare -A TARGET_PID=()   # proxies only: the process whose tree's CPU time is counted
CLK_TCK="$(getconf CLK_TCK)"

# CPU ticks of $1 and every process below it (live and reaped children
# too): "user+system user", the second the user time alone.
tree_cpu_ticks() {
    local pid="$1" total=0 user=0 child stat fields sub
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || { echo "0 0"; return; }
    # Fields after the ")" that closes the command name: utime is the 12th,
    # stime the 13th, cutime and cstime the 14th and 15th.
    read -r -a fields <<<"${stat##*) }"
    total=$(( fields[11] + fields[12] + fields[13] + fields[14] ))
    user=$(( fields[11] + fields[13] ))
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        read -r -a sub <<<"$(tree_cpu_ticks "$child")"
        total=$(( total + sub[0] ))
        user=$(( user + sub[1] ))
    done
    echo "$total $user"
}
SKIPPED=()

# --------------------------------------------------------------- Palisade --

# Writes a Palisade config listening on $1 whose reads have consistency $2.
palisade_conf() {
    cat <<EOF
# Generated by bench/pgbench.sh
[proxy]
listen = "127.0.0.1:$1"
max_client_connections = 20000

[backend]
user = "postgres"
password = "$PASSWORD"
database = "postgres"

[monitor]
probe_interval_ms = 250

[consistency]
level = "$2"

[[nodes]]
name = "primary"
host = "127.0.0.1"
port = $PRIMARY_PORT
EOF
    for (( i = 1; i <= REPLICAS; i++ )); do
        printf '\n[[nodes]]\nname = "replica%d"\nhost = "127.0.0.1"\nport = %s\n' "$i" "${REPLICA_PORTS[i-1]}"
    done
    cat <<EOF

[[users]]
name = "postgres"
auth = "scram-sha-256"
password = "$PASSWORD"
EOF
    if (( TLS )); then
        printf '\n[tls]\nmode = "require"\ncert_file = "%s"\nkey_file = "%s"\n' \
            "$WORK/tls/cert.pem" "$WORK/tls/key.pem"
    fi
    if [[ -n "${3:-}" ]]; then
        printf '\n[http]\nlisten = "127.0.0.1:%s"\n' "$3"
    fi
}

# Scrapes http://127.0.0.1:$1/metrics every second until killed.
scrape_loop() {
    while :; do
        if exec 3<>"/dev/tcp/127.0.0.1/$1"; then
            printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
            cat <&3 >/dev/null
            exec 3<&-
        fi
        sleep 1
    done
}

# Starts Palisade binary $3 (default $PALISADE_BIN) as target $1 with consistency $2.
start_palisade() {
    local port conf bin="${3:-$PALISADE_BIN}" http=""
    port="$(free_port)"
    conf="$WORK/$1.toml"
    if [[ "$1" == palisade-metrics ]]; then
        http="$(free_port)"
        HTTP_PORT="$http"
    fi
    palisade_conf "$port" "$2" "$http" >"$conf"
    "$bin" --config "$conf" >"$WORK/$1.log" 2>&1 &
    PIDS+=("$!:TERM")
    TARGET_PID[$1]="$!"
    wait_sql "$port" "$1" 30 "$!"
    TARGETS+=("$1")
    TARGET_PORT[$1]="$port"
    log "$1 (consistency $2) on 127.0.0.1:$port ($bin)"
}

# The workloads a Palisade at another level than the default also runs.
CAUSAL_WORKLOADS="select-simple select-extended write-read commit-read"
STRONG_WORKLOADS="write-read commit-read"
runs_any() { local w; for w in $1; do [[ " $WORKLOADS " == *" $w "* ]] && return 0; done; return 1; }

if (( WITH_PALISADE )); then
    start_palisade palisade read-after-commit
    if [[ -n "${PALISADE_BASE_BIN:-}" ]]; then
        [[ -x "$PALISADE_BASE_BIN" ]] || die "PALISADE_BASE_BIN=$PALISADE_BASE_BIN is not executable"
        start_palisade palisade-base read-after-commit "$PALISADE_BASE_BIN"
    fi
    # What each level costs is measured against the others, in the same run.
    if runs_any "$CAUSAL_WORKLOADS"; then
        start_palisade palisade-causal causal
    fi
    if runs_any "$STRONG_WORKLOADS"; then
        start_palisade palisade-strong strong
    fi
    if (( METRICS )); then
        start_palisade palisade-metrics read-after-commit
    fi
else
    SKIPPED+=("palisade (--no-palisade)")
fi

# -------------------------------------------------------------- PgBouncer --

if [[ -n "$PGBOUNCER_BIN" ]]; then
    port="$(free_port)"
    dir="$WORK/pgbouncer"
    mkdir -p "$dir"
    # A cleartext password in the userlist lets PgBouncer do SCRAM with both
    # the client and the server.
    printf '"postgres" "%s"\n' "$PASSWORD" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PRIMARY_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 32
max_client_conn = 20000
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    if (( TLS )); then
        # Clients over TLS; to the server in the clear, as Palisade's default.
        printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\nserver_tls_sslmode = disable\n' \
            "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >>"$dir/pgbouncer.ini"
    fi
    give_to_pg "$dir"
    # -d: daemonise; the pid file says which process to stop.
    as_pg "$PGBOUNCER_BIN" -d "$dir/pgbouncer.ini" >"$WORK/pgbouncer-start.log" 2>&1 \
        || die "pgbouncer did not start: $(cat "$WORK/pgbouncer-start.log")"
    for _ in $(seq 1 50); do [[ -s "$dir/pgbouncer.pid" ]] && break; sleep 0.1; done
    [[ -s "$dir/pgbouncer.pid" ]] || die "pgbouncer wrote no pid file"
    PIDS+=("$(cat "$dir/pgbouncer.pid"):TERM")
    TARGET_PID[pgbouncer]="$(cat "$dir/pgbouncer.pid")"
    wait_sql "$port" PgBouncer
    TARGETS+=(pgbouncer)
    TARGET_PORT[pgbouncer]="$port"
    log "PgBouncer on 127.0.0.1:$port ($("$PGBOUNCER_BIN" --version | head -n 1))"
else
    SKIPPED+=("pgbouncer (not installed)")
fi

# -------------------------------------------------------------- pgpool-II --

if (( TLS )); then
    SKIPPED+=("pgpool (--tls: not set up for TLS)")
elif [[ -n "$PGPOOL_BIN" ]]; then
    port="$(free_port)"
    pcp_port="$(free_port)"
    dir="$WORK/pgpool"
    mkdir -p "$dir"
    PGPOOL_CHILDREN=64
    for c in $CLIENTS; do (( c > PGPOOL_CHILDREN )) && PGPOOL_CHILDREN=$c; done
    # pool_passwd with a TEXT-prefixed cleartext password: pgpool verifies the
    # client with SCRAM (pool_hba.conf) and logs in to PostgreSQL with it.
    printf 'postgres:TEXT%s\n' "$PASSWORD" >"$dir/pool_passwd"
    printf 'host all all 127.0.0.1/32 scram-sha-256\n' >"$dir/pool_hba.conf"
    : >"$dir/pcp.conf"
    cat >"$dir/pgpool.conf" <<EOF
# Generated by bench/pgbench.sh: one backend, raw mode (no replication
# handling), connection cache on, no load balancing.
backend_clustering_mode = 'raw'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
pcp_listen_addresses = ''
pcp_port = $pcp_port
pcp_socket_dir = '$dir'
backend_hostname0 = '127.0.0.1'
backend_port0 = $PRIMARY_PORT
backend_weight0 = 1
backend_data_directory0 = '$PRIMARY_DIR'
backend_flag0 = 'DISALLOW_TO_FAILOVER'
# One pre-forked child per client (a client waits for a free child); each
# caches one backend connection: 64 children serve up to 64 clients with 64
# server connections, well under max_connections = 300.
num_init_children = $PGPOOL_CHILDREN
max_pool = 1
connection_cache = on
child_life_time = 0
child_max_connections = 0
load_balance_mode = off
enable_pool_hba = on
pool_passwd = 'pool_passwd'
health_check_period = 0
sr_check_period = 0
failover_on_backend_error = off
memory_cache_enabled = off
logdir = '$dir'
pid_file_name = '$dir/pgpool.pid'
log_destination = 'stderr'
logging_collector = off
log_connections = off
EOF
    give_to_pg "$dir"
    # -n: stay in the foreground, logging to pgpool.log. SIGINT is pgpool's
    # fast shutdown (SIGTERM would wait for clients).
    "${AS_PG[@]}" "$PGPOOL_BIN" -n -f "$dir/pgpool.conf" -F "$dir/pcp.conf" -a "$dir/pool_hba.conf" \
        >"$dir/pgpool.log" 2>&1 &
    PIDS+=("$!:INT")
    TARGET_PID[pgpool]="$!"
    wait_sql "$port" pgpool-II 30 "$!"
    TARGETS+=(pgpool)
    TARGET_PORT[pgpool]="$port"
    log "pgpool-II on 127.0.0.1:$port ($("$PGPOOL_BIN" --version 2>&1 | head -n 1))"
else
    SKIPPED+=("pgpool (not installed)")
fi

for s in "${SKIPPED[@]}"; do log "skipping $s"; done

# --------------------------------------------------------------- the runs --

# pgbench options of each workload.
workload_args() {
    case "$1" in
        select-simple)   echo "-S -M simple" ;;
        select-extended) echo "-S -M extended" ;;
        select-prepared) echo "-S -M prepared" ;;
        tpcb-simple)     echo "-M simple" ;;
        churn-simple)    echo "-S -C -M simple" ;;
        write-read)      echo "-M simple -f $WORK/write-read.sql" ;;
    esac
}

# Runs workload $1 with $2 clients against port $3 for DURATION seconds,
# printing pgbench's summary lines.
run_workload() {
    local j=$(( $2 < 2 ? $2 : 2 ))
    if [[ "$1" == commit-read ]]; then
        PGDATABASE="$DB" "$COMMIT_READ_BIN" "$3" "$2" "$DURATION"
        return
    fi
    # shellcheck disable=SC2046  # workload_args is a list of options
    "$PG_BIN/pgbench" -n $(workload_args "$1") -c "$2" -j "$j" -T "$DURATION" \
        -h 127.0.0.1 -p "$3" -U postgres "$DB"
}

# What pgbench's own pre-run vacuum does, done directly on the primary before
# every read-write run (the runs use -n), so each target starts from the same
# table state and no proxy has to relay VACUUM.
reset_tpcb_tables() {
    local sql
    for sql in "VACUUM pgbench_branches" "VACUUM pgbench_tellers" "TRUNCATE pgbench_history"; do
        psql_at "$PRIMARY_PORT" "$sql" >/dev/null || die "could not reset the pgbench tables ($sql)"
    done
}

RESULTS=()   # "workload|clients|target|tps|latency|ratio"
PER_NODE=()  # "workload|clients|count|count|...", one count per node, Palisade runs only
FAILED=()
n_runs=0
# palisade-causal and palisade-strong only price the levels, on some workloads
# (the peers send every commit-read read to the primary: never stale).
ROUNDS="${ROUNDS:-1}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number, not '$ROUNDS'"
ONLY_TARGETS="${ONLY_TARGETS:-}"
runs_target() {
    if [[ -n "$ONLY_TARGETS" && " $ONLY_TARGETS " != *" $1 "* ]]; then return 1; fi
    case "$1" in
        palisade-causal) [[ " $CAUSAL_WORKLOADS " == *" $2 "* ]] ;;
        palisade-strong) [[ " $STRONG_WORKLOADS " == *" $2 "* ]] ;;
        *) true ;;
    esac
}
for w in $WORKLOADS; do for c in $CLIENTS; do for t in "${TARGETS[@]}"; do
    if runs_target "$t" "$w"; then n_runs=$(( n_runs + ROUNDS )); fi
done; done; done
log "targets: ${TARGETS[*]}; workloads: $WORKLOADS; clients: $CLIENTS; ${DURATION}s each; $n_runs runs (~$(( n_runs * (DURATION + 1) / 60 + 1 )) min)"

# The targets in the order of round $1: reversed every other round.
round_targets() {
    local i
    if (( $1 % 2 )); then
        printf '%s\n' "${TARGETS[@]}"
    else
        for (( i = ${#TARGETS[@]} - 1; i >= 0; i-- )); do printf '%s\n' "${TARGETS[$i]}"; done
    fi
}

run=0
for w in $WORKLOADS; do
    for c in $CLIENTS; do
      for (( round = 1; round <= ROUNDS; round++ )); do
        direct_tps=""
        for t in $(round_targets "$round"); do
            runs_target "$t" "$w" || continue
            run=$(( run + 1 ))
            [[ "$w" == tpcb-simple || "$w" == write-read || "$w" == commit-read ]] && reset_tpcb_tables
            out="$WORK/run-$w-$c-$t.log"
            [[ "$t" == palisade* ]] && commits_before="$(node_commits)"
            [[ "$t" == direct ]] && backends_before="$(bench_backends)"
            cpu_before=""
            [[ -n "${TARGET_PID[$t]:-}" ]] && cpu_before="$(tree_cpu_ticks "${TARGET_PID[$t]}")"
            scraper=""
            if [[ "$t" == palisade-metrics ]]; then
                scrape_loop "$HTTP_PORT" &
                scraper=$!
            fi
            if run_workload "$w" "$c" "${TARGET_PORT[$t]}" >"$out" 2>&1; then
                rc=0
            else
                rc=$?
            fi
            [[ -n "$scraper" ]] && { kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true; }
            [[ "$t" == direct ]] && wait_backends_gone "$backends_before"
            # "tps = N (without initial connection time)"; with -C pgbench
            # prints "tps = N (including reconnection times)" instead.
            tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n 1)"
            lat="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -n 1)"
            failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | sort -n | tail -n 1)"
            processed="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n 1)"
            problem=""
            if (( rc != 0 )); then problem="pgbench exited with status $rc"
            elif [[ -z "$tps" || -z "$lat" ]]; then problem="no tps/latency in pgbench output"
            elif [[ -n "$failed" && "$failed" != 0 ]]; then problem="$failed failed transactions"
            elif [[ -z "$processed" || "$processed" == 0 ]]; then problem="no transactions processed"
            elif grep -qiE '^(pgbench: )?(error|fatal)|client [0-9]+ aborted' "$out"; then problem="errors in pgbench output"
            fi
            if [[ -n "$problem" ]]; then
                echo "----- pgbench $w c=$c via $t: $problem" >&2
                tail -n 25 "$out" >&2
                # What the server's sessions were doing, to tell a stall from an error.
                echo "----- server sessions after the failed run" >&2
                psql_at "$PRIMARY_PORT" "SELECT state, wait_event_type, wait_event, count(*)
                    FROM pg_stat_activity WHERE backend_type = 'client backend'
                    GROUP BY 1, 2, 3 ORDER BY 4 DESC" >&2 || true
                FAILED+=("$w c=$c $t: $problem")
                (( KEEP_GOING )) || die "pgbench run failed: $w, $c clients, via $t: $problem"
                RESULTS+=("$w|$c|$t|FAILED|-|-|-|-|-")
                continue
            fi
            if [[ "$t" == direct ]]; then direct_tps="$tps"; fi
            if [[ -n "$direct_tps" ]]; then
                ratio="$(awk -v a="$tps" -v b="$direct_tps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
            else
                ratio="-"
            fi
            tps_fmt="$(awk -v a="$tps" 'BEGIN { printf "%.0f", a }')"
            lat_fmt="$(awk -v a="$lat" 'BEGIN { printf "%.3f", a }')"
            cpu="-" user="-"
            if [[ -n "$cpu_before" ]]; then
                read -r cpu user < <(awk -v a="$(tree_cpu_ticks "${TARGET_PID[$t]}")" -v b="$cpu_before" \
                    -v hz="$CLK_TCK" -v n="$processed" 'BEGIN {
                        split(a, x, " "); split(b, y, " "); k = 1e6 / hz / n
                        printf "%.1f %.1f\n", (x[1] - y[1]) * k, (x[2] - y[2]) * k }')
            fi
            stale="$(sed -n 's/^stale reads: \([0-9]*\)$/\1/p' "$out" | head -n 1)"
            RESULTS+=("$w|$c|$t|$tps_fmt|$lat_fmt|$ratio|$cpu|${stale:--}|$user")
            log "[$run/$n_runs] $w c=$c $t: $tps_fmt tps, $lat_fmt ms, proxy CPU $cpu µs/transaction (user $user)${stale:+, $stale stale reads}"
            if [[ "$t" == palisade* ]]; then
                per_node="$(per_node_since "$commits_before" "$processed")"
                PER_NODE+=("$w|$c|$t|$per_node")
                log "[$run/$n_runs] $w c=$c $t: transactions per node (${NODE_NAMES[*]}): ${per_node//|/ }"
            fi
        done
      done
    done
done

# ------------------------------------------------------------ idle clients --

IDLE=()   # "target|clients|KiB per client"
if [[ -n "${IDLE_CLIENTS:-}" ]]; then
    IDLE_BIN="$REPO_ROOT/target/release/examples/idle_clients"
    if [[ ! -x "$IDLE_BIN" ]]; then
        log "building examples/idle_clients (release)"
        (cd "$REPO_ROOT" && cargo build --release --quiet --example idle_clients) || die "cannot build examples/idle_clients"
    fi
    for n in ${IDLE_CLIENTS//,/ }; do for t in "${TARGETS[@]}"; do
        [[ "$t" == direct || "$t" == pgpool ]] && continue
        line="$(PGPASSWORD="$PASSWORD" PGDATABASE="$BENCH_DB" "$IDLE_BIN" "${TARGET_PORT[$t]}" "$n" "${TARGET_PID[$t]}" 2>&1)" \
            || { FAILED+=("idle-$n-$t"); log "idle clients $n $t: FAILED: $line"; continue; }
        per="$(sed -n 's/.*, \([0-9.]*\) KiB per client/\1/p' <<<"$line")"
        IDLE+=("$t|$n|$per")
        log "idle clients $n $t: $line"
    done; done
fi

# ------------------------------------------------------------------ report --

report() {
    local replicas=""
    (( REPLICAS > 0 )) && replicas=", $REPLICAS replica(s)"
    local tls=""
    (( TLS )) && tls=", clients over TLS (sslmode=require; direct = PostgreSQL's own TLS)"
    echo "pgbench via proxies, $(date -u +%Y-%m-%d) on $(nproc) cores: $PG_VERSION_STR, scale $SCALE, ${DURATION}s per run, fsync=off$replicas$tls"
    echo
    echo "| workload | clients | target | tps | avg latency ms | ratio to direct | proxy CPU µs/transaction | of which user | stale reads |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    local r
    for r in "${RESULTS[@]}"; do
        IFS='|' read -r w c t tps lat ratio cpu stale user <<<"$r"
        echo "| $w | $c | $t | $tps | $lat | $ratio | $cpu | $user | $stale |"
    done
    if (( ${#PER_NODE[@]} )); then
        echo
        echo "Palisade, transactions per node (growth of pg_stat_database.xact_commit for $BENCH_DB, read on each node directly;"
        echo "the primary's count may include statistics that the peers' pooled sessions published late):"
        echo
        local name header="| workload | clients | target |" rule="|---|---:|---|"
        for name in "${NODE_NAMES[@]}"; do
            header+=" $name |"
            rule+="---:|"
        done
        echo "$header"
        echo "$rule"
        for r in "${PER_NODE[@]}"; do
            IFS='|' read -r w c t counts <<<"$r"
            echo "| $w | $c | $t | ${counts//|/ | } |"
        done
    fi
    (( METRICS )) && metrics_summary
    if (( ${#IDLE[@]} )); then
        echo
        echo "Idle clients: growth of the proxy's resident memory (VmRSS) per logged-in idle client:"
        echo
        echo "| target | idle clients | KiB per client |"
        echo "|---|---:|---:|"
        for r in "${IDLE[@]}"; do
            IFS='|' read -r t n per <<<"$r"
            echo "| $t | $n | $per |"
        done
    fi
    if (( ${#SKIPPED[@]} )); then
        echo
        echo "Skipped: ${SKIPPED[*]}."
    fi
}

# Metrics on (palisade-metrics, scraped every second) against off
# (palisade): the mean tps and proxy CPU per transaction over the rounds.
metrics_summary() {
    echo
    echo "Metrics on against off ($ROUNDS round(s), target order alternating):"
    echo
    echo "| workload | clients | off tps | on tps | tps on/off | off CPU µs/txn | on CPU µs/txn | CPU on/off |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    local w c
    for w in $WORKLOADS; do for c in $CLIENTS; do
        printf '%s\n' "${RESULTS[@]}" | awk -F'|' -v w="$w" -v c="$c" '
            $1 == w && $2 == c && $4 != "FAILED" && ($3 == "palisade" || $3 == "palisade-metrics") {
                n[$3]++; tps[$3] += $4; cpu[$3] += $7
            }
            END {
                if (!n["palisade"] || !n["palisade-metrics"]) exit
                a = tps["palisade"] / n["palisade"]; b = tps["palisade-metrics"] / n["palisade-metrics"]
                x = cpu["palisade"] / n["palisade"]; y = cpu["palisade-metrics"] / n["palisade-metrics"]
                printf "| %s | %s | %.0f | %.0f | %.3f | %.1f | %.1f | %.3f |\n", w, c, a, b, b / a, x, y, (x > 0 ? y / x : 0)
            }'
    done; done
}

report
if [[ -n "$OUT_FILE" ]]; then
    report >"$OUT_FILE"
    log "table written to $OUT_FILE"
fi
if (( ${#FAILED[@]} )); then
    die "${#FAILED[@]} run(s) failed: ${FAILED[*]}"
fi

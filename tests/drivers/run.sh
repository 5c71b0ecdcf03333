#!/usr/bin/env bash
# Palisade driver conformance suite: real Python and node drivers against a
# running Palisade (or, to check the tests themselves, straight against PostgreSQL).
#
# Environment contract (the caller starts the cluster and the proxy):
#   PALISADE_HOST          proxy host                        (default 127.0.0.1)
#   PALISADE_PORT          proxy port                        (default 6432)
#   PALISADE_USER          user                              (default postgres)
#   PALISADE_PASSWORD      password                          (default empty)
#   PALISADE_DB            database                          (default postgres)
#   PALISADE_PRIMARY_HOST  the primary, reached directly     (default PALISADE_HOST)
#   PALISADE_PRIMARY_PORT  optional: the primary's own port; ground truth for
#                          row counts after COPY, and test tables are dropped there
#   PALISADE_TEST_TIMEOUT  seconds per test before it counts as hung (default 60)
#   PALISADE_SUITE_TIMEOUT seconds for each of the two suites as a whole (default 1800)
#   PALISADE_SUITES        which suites: "python node" (default), or one of them
#   PALISADE_REPORT_DIR    optional: write junit XML there (python.xml, node.xml)
#   PALISADE_SKIP_SETUP=1  do not run setup.sh first (it is idempotent and quick)
# Extra arguments go to pytest (e.g. `run.sh -k asyncpg` or `run.sh -x`).
#
# Exit status: 0 when every selected suite passed, 1 when a test failed or hung,
# 2 when the suite could not start (setup failed, nothing listening).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

export PALISADE_HOST="${PALISADE_HOST:-127.0.0.1}"
export PALISADE_PORT="${PALISADE_PORT:-6432}"
export PALISADE_USER="${PALISADE_USER:-postgres}"
export PALISADE_PASSWORD="${PALISADE_PASSWORD:-}"
export PALISADE_DB="${PALISADE_DB:-postgres}"
export PALISADE_TEST_TIMEOUT="${PALISADE_TEST_TIMEOUT:-60}"
suite_timeout="${PALISADE_SUITE_TIMEOUT:-1800}"
suites="${PALISADE_SUITES:-python node}"

if [[ "${PALISADE_SKIP_SETUP:-}" != 1 ]]; then
  "$here/setup.sh" || { echo "drivers/run.sh: setup failed" >&2; exit 2; }
fi

# Is anything listening? (fail fast with a clear message instead of 100 connection errors)
if ! (exec 3<>"/dev/tcp/$PALISADE_HOST/$PALISADE_PORT") 2>/dev/null; then
  echo "drivers/run.sh: nothing listens on $PALISADE_HOST:$PALISADE_PORT (set PALISADE_HOST/PALISADE_PORT)" >&2
  exit 2
fi

echo "drivers/run.sh: target $PALISADE_USER@$PALISADE_HOST:$PALISADE_PORT/$PALISADE_DB" \
  "primary=${PALISADE_PRIMARY_PORT:-unset} timeout=${PALISADE_TEST_TIMEOUT}s suites=[$suites]"

rc=0
declare -A status
for s in $suites; do
  start=$(date +%s)
  case "$s" in
    python)
      junit=()
      [[ -n "${PALISADE_REPORT_DIR:-}" ]] && mkdir -p "$PALISADE_REPORT_DIR" && junit=(--junitxml "$PALISADE_REPORT_DIR/python.xml")
      (cd "$here/python" && timeout -k 10 "$suite_timeout" .venv/bin/python -m pytest \
        --timeout "$(( ${PALISADE_TEST_TIMEOUT%.*} * 3 + 60 ))" "${junit[@]}" "$@")
      r=$?
      ;;
    node)
      reporters=(--test-reporter=spec --test-reporter-destination=stdout)
      [[ -n "${PALISADE_REPORT_DIR:-}" ]] && mkdir -p "$PALISADE_REPORT_DIR" && \
        reporters+=(--test-reporter=junit --test-reporter-destination="$PALISADE_REPORT_DIR/node.xml")
      (cd "$here/node" && timeout -k 10 "$suite_timeout" node --test --test-force-exit --test-concurrency=1 \
        "${reporters[@]}" test/)
      r=$?
      ;;
    *) echo "drivers/run.sh: unknown suite '$s' (python, node)" >&2; exit 2 ;;
  esac
  [[ $r == 124 || $r == 137 ]] && echo "drivers/run.sh: $s suite killed after ${suite_timeout}s" >&2
  status[$s]="$([[ $r == 0 ]] && echo passed || echo "FAILED (exit $r)") in $(( $(date +%s) - start ))s"
  [[ $r == 0 ]] || rc=1
done

echo
echo "drivers/run.sh: summary against $PALISADE_HOST:$PALISADE_PORT"
for s in $suites; do echo "  $s: ${status[$s]}"; done
exit $rc

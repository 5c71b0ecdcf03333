#!/usr/bin/env bash
# Installs the driver suite's dependencies from the project's own pinned files:
#   python/.venv      <- pip install -r python/requirements.txt
#   node/node_modules <- npm ci (node/package-lock.json)
# Idempotent: each part is skipped when it was installed from the same file
# (a sha256 of requirements.txt / package-lock.json is kept next to it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

die() { echo "drivers/setup.sh: error: $*" >&2; exit 1; }
hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- python ---
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (need Python >= 3.9 with venv and pip)"
req="$here/python/requirements.txt"
venv="$here/python/.venv"
stamp="$venv/.requirements.sha256"
want="$(hash_of "$req")"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "drivers/setup.sh: python venv up to date ($venv)"
else
  echo "drivers/setup.sh: creating $venv from requirements.txt"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" || die "could not create a venv with $PYTHON (on Debian: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" \
    || die "pip install -r $req failed (is the package index reachable?)"
  echo "$want" > "$stamp"
fi

# --- node ---
command -v node >/dev/null || die "node not found (need node >= 18 for 'node --test')"
command -v npm >/dev/null || die "npm not found"
major="$(node -p 'process.versions.node.split(".")[0]')"
(( major >= 18 )) || die "node $(node --version) is too old: need >= 18 for 'node --test'"
lock="$here/node/package-lock.json"
mods="$here/node/node_modules"
nstamp="$mods/.package-lock.sha256"
nwant="$(hash_of "$lock")"
if [[ -d "$mods" && -f "$nstamp" && "$(cat "$nstamp")" == "$nwant" ]]; then
  echo "drivers/setup.sh: node_modules up to date ($mods)"
else
  echo "drivers/setup.sh: npm ci in $here/node"
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error) \
    || die "npm ci failed in $here/node (is the npm registry reachable?)"
  echo "$nwant" > "$nstamp"
fi
echo "drivers/setup.sh: ready"

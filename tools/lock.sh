#!/usr/bin/env bash
# Regenerates requirements.lock from pyproject.toml: resolves the dependencies (with the dev
# extra) in a scratch venv of the pinned interpreter inside the current environment, then
# freezes them. Run it after changing dependencies; the next ./cardio builds a new environment.
set -euo pipefail
source "$(dirname "$0")/environment.sh"
scratch=/tmp/cardio-lock-venv
run_in_env bash -c '
  set -e; rm -rf "$1"; python3.13 -m venv "$1"
  "$1/bin/pip" install --quiet --upgrade pip
  "$1/bin/pip" install --quiet "$2[dev]"
  "$1/bin/pip" freeze --exclude cardio > "$1.txt"' sh "$scratch" "$REPO"
{ sed -n '1,/^$/p' "$LOCK" | grep '^#'; cat "$scratch.txt"; } > "$LOCK.new"
mv "$LOCK.new" "$LOCK"
rm -rf "$scratch" "$scratch.txt"
echo "requirements.lock: $(grep -vc '^#' "$LOCK") pinned distributions"

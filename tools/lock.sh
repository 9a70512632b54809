#!/usr/bin/env bash
# Regenerates requirements.lock from pyproject.toml: resolves the dependencies (with the dev
# extra) in a scratch venv of the pinned interpreter inside the current environment, freezes
# them, and adds the sha256 of every file PyPI serves for each pin (uv pip compile
# --generate-hashes; the installers then check them). Run it after changing dependencies; the
# next ./cardio builds a new environment.
set -euo pipefail
source "$(dirname "$0")/environment.sh"
scratch=/tmp/cardio-lock-venv
run_in_env bash -c '
  set -e; rm -rf "$1"; python3.13 -m venv "$1"
  "$1/bin/pip" install --quiet "$2[dev]"
  "$1/bin/pip" freeze --exclude cardio > "$1.txt"
  "$1/bin/pip" install --quiet "uv==$3"
  "$1/bin/uv" pip compile --quiet --no-deps --generate-hashes --no-header --no-annotate \
    --python-version 3.13 --python-platform x86_64-manylinux_2_39 "$1.txt" -o "$1.hashed.txt"' \
  sh "$scratch" "$REPO" "$UV_VERSION"
{ sed -n '1,/^[^#]/p' "$LOCK" | grep '^#'; cat "$scratch.hashed.txt"; } > "$LOCK.new"
mv "$LOCK.new" "$LOCK"
rm -rf "$scratch" "$scratch.txt" "$scratch.hashed.txt"
echo "requirements.lock: $(grep -c '^[A-Za-z0-9]' "$LOCK") pinned distributions, hash-checked"

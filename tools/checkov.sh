#!/usr/bin/env bash
# Prints the path of a checkov executable, installing it on first use into its own venv under
# $CARDIO_CACHE/tools (checkov is a scanner, not a dependency of the project: it stays out of
# requirements.lock and out of the image). Exits non-zero with the reason if it cannot install.
set -euo pipefail
VERSION=3.3.30
venv="${CARDIO_CACHE:-$HOME/.cache/cardio}/tools/checkov-$VERSION"
if [ ! -e "$venv/.complete" ]; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"; flock 9
  if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$VERSION" >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv/bin/checkov"

#!/usr/bin/env bash
# The project's runtime environment: one pinned interpreter (Python 3.13) and the locked stack.
#
# ml-metadata and tensorflow-data-validation ship only manylinux_2_39 wheels, so:
#   * hosts with glibc >= 2.39 and python3.13 get a plain venv;
#   * older hosts (Debian 12: glibc 2.36) get a Debian 13 root made by debootstrap, entered with
#     `unshare --mount` + `chroot`, with the repository, ../shared, the caller's directory, /tmp
#     and the paths named on the command line bound in at the same paths.
# Both are cached outside the clone under $CARDIO_CACHE (default ~/.cache/cardio), keyed on the
# lock file: a second run reuses them, a lock change builds a new one. Each is built under a
# `.partial` name and renamed only when complete, so an interrupted build is never reused.
#
# Sourced by ./cardio; `environment.sh ensure` only builds, `environment.sh path` prints it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
LOCK="$REPO/requirements.lock"
CACHE=${CARDIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cardio}
DEBIAN_SUITE=trixie
DEBIAN_MIRROR=${CARDIO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_PACKAGES=python3-venv,python3-dev,g++,ca-certificates
VENV_IN_ROOT=/opt/cardio-venv
# Every process must see Keras 2 (TFX, TFT and TFMA 1.x need it); set before TensorFlow imports.
export TF_USE_LEGACY_KERAS=1

log() { printf '[cardio-env] %s\n' "$*" >&2; }
die() { printf '[cardio-env] error: %s\n' "$*" >&2; exit 2; }

# Bump when the way an environment is built changes, so every cached one is rebuilt.
RECIPE_VERSION=1

env_key() {
  # The lock and the recipe both shape the environment; nothing else does.
  printf '%s\n' "$RECIPE_VERSION" "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" "$VENV_IN_ROOT" | cat - "$LOCK" \
    | sha256sum | cut -c1-12
}

glibc_ok() {
  local v
  v=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n2.39\n' "$v" | sort -V | head -n1)" = "2.39" ]
}

env_mode() {
  case "${CARDIO_ENV:-auto}" in
    native|chroot) echo "$CARDIO_ENV" ;;
    auto) if glibc_ok && command -v python3.13 >/dev/null; then echo native; else echo chroot; fi ;;
    *) die "CARDIO_ENV must be auto, native or chroot (got '$CARDIO_ENV')" ;;
  esac
}

env_path() {
  if [ "$(env_mode)" = native ]; then echo "$CACHE/venv-$(env_key)"; else echo "$CACHE/root-$(env_key)"; fi
}

pip_install_locked() {  # $1: python of the venv
  local py=$1 total n=0
  total=$(grep -vc '^#' "$LOCK")
  "$py" -m pip install --upgrade --quiet pip
  log "installing the locked stack: $total distributions (a few minutes the first time)"
  # One progress line per distribution fetched; pip's own errors still reach stderr.
  "$py" -m pip install --progress-bar off --no-input -r "$LOCK" | while IFS= read -r line; do
    case "$line" in
      Collecting*) n=$((n + 1)); line=${line#Collecting }; log "  [$n/$total] ${line%% (*}" ;;
      Installing\ collected*) log "  unpacking and installing" ;;
      Successfully\ installed*) log "  installed" ;;
    esac
  done
  return "${PIPESTATUS[0]}"
}

build_native() {
  local dest=$1 tmp="$1.partial"
  rm -rf "$tmp"
  log "creating venv $dest"
  python3.13 -m venv "$tmp"
  # venv scripts embed their path: build at the final name's sibling, then fix by recreating
  # the scripts after the move (pip's console scripts use the interpreter path given here).
  pip_install_locked "$tmp/bin/python"
  mv "$tmp" "$dest"
  python3.13 -m venv --upgrade "$dest" >/dev/null
}

# Runs a command inside the root, with the bind mounts described above. Args: root, then command.
in_root() {
  local root=$1; shift
  local -a binds=("$REPO" /tmp)
  [ -d "$REPO/../shared" ] && binds+=("$(cd "$REPO/../shared" && pwd -P)")
  binds+=("$(pwd -P)")
  binds+=(${CARDIO_EXTRA_BINDS:-})
  local -a ns=(unshare --mount --propagation private)
  # Without root, a user namespace maps us to root inside (README: needs user namespaces).
  [ "$(id -u)" = 0 ] || ns=(unshare --user --map-root-user --mount --propagation private)
  "${ns[@]}" -- bash "$REPO/tools/enter-root.sh" "$root" "${binds[*]}" "$@"
}

build_root() {
  local dest=$1 tmp="$1.partial"
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || die "debootstrap is missing: install it (apt-get install debootstrap) and rerun"
    log "installing debootstrap"
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
  }
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "building a Debian 13 root in $tmp (debootstrap, about a minute)"
  debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR" \
    | while read -r line; do case "$line" in I:\ Retriev*|I:\ Valid*) ;; *) log "debootstrap: $line" ;; esac; done
  [ -x "$tmp/usr/bin/python3.13" ] || die "debootstrap did not produce python3.13 in $tmp"
  # The environment's TLS variables point at the host's bundle path: make that path exist inside.
  local bundle
  for bundle in "${SSL_CERT_FILE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
    [ -n "$bundle" ] && [ -f "$bundle" ] && mkdir -p "$tmp$(dirname "$bundle")" && cp -L "$bundle" "$tmp$bundle"
  done
  cp -L /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
  log "creating the venv inside the root"
  in_root "$tmp" python3.13 -m venv "$VENV_IN_ROOT"
  in_root "$tmp" bash -c "set -euo pipefail; $(declare -f log pip_install_locked); LOCK='$LOCK'; pip_install_locked $VENV_IN_ROOT/bin/python"
  mv "$tmp" "$dest"
}

ensure_env() {
  [ -f "$LOCK" ] || die "lock file $LOCK is missing"
  local dest; dest=$(env_path)
  [ -e "$dest" ] && return 0
  mkdir -p "$CACHE"
  local start=$SECONDS
  # One builder at a time; a second caller waits and then reuses the result.
  exec 9>"$CACHE/.lock"
  flock 9
  if [ ! -e "$dest" ]; then
    # Set-up talks on stderr only: stdout belongs to the command being run.
    if [ "$(env_mode)" = native ]; then build_native "$dest" >&2; else build_root "$dest" >&2; fi
    log "environment ready in $((SECONDS - start)) s: $dest"
  fi
  exec 9>&-
}

# Runs a command (argv) in the environment, cwd preserved, exit status passed through.
run_in_env() {
  if [ "${CARDIO_IN_ENV:-}" = 1 ]; then "$@"; return; fi  # already inside: run as is
  ensure_env
  local dest; dest=$(env_path)
  if [ "$(env_mode)" = native ]; then
    CARDIO_IN_ENV=1 PATH="$dest/bin:$PATH" PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" VIRTUAL_ENV="$dest" "$@"
  else
    in_root "$dest" env CARDIO_IN_ENV=1 PATH="$VENV_IN_ROOT/bin:/usr/local/bin:/usr/bin:/bin" VIRTUAL_ENV="$VENV_IN_ROOT" \
      PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" "$@"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    ensure) ensure_env ;;
    path) env_path ;;
    mode) env_mode ;;
    run) shift; run_in_env "$@" ;;
    *) echo "usage: tools/environment.sh ensure|path|mode|run CMD..." >&2; exit 2 ;;
  esac
fi

#!/usr/bin/env bash
# The project's runtime environment: one pinned interpreter (Python 3.13) and the locked stack.
#
# ml-metadata and tensorflow-data-validation ship only manylinux_2_39 wheels, so:
#   * hosts with glibc >= 2.39 and python3.13 get a plain venv;
#   * older hosts (Debian 12: glibc 2.36) get a Debian 13 root, made by `mmdebstrap --mode=root`
#     as root or `mmdebstrap --mode=unshare` without root, entered with `unshare --mount` + `chroot` (plus
#     `--user --map-root-user` without root), with the repository, ../shared, the caller's
#     directory, /tmp and the paths named on the command line bound in at the same paths.
# Both are cached outside the clone under $CARDIO_CACHE (default ~/.cache/cardio), keyed on the
# lock file: a second run reuses them, a lock change builds a new one. An interrupted build is
# never reused: the root is built under a `.partial` name and renamed when complete; the venv is
# built at its final path (its console scripts embed that path) and marked complete last.
# Every step from ./cardio to the command execs, so the caller's PID becomes the command's and
# signals reach it (docs/environment.md).
#
# The locked stack goes in with uv, hash-checked (install_locked). Set-up prints a few lines; the
# tools' own output goes to a log beside the environment.
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

# Set-up's own lines go to the caller's stderr (LOG_FD while a build's tools write to its log).
log() { printf '[cardio-env] %s\n' "$*" >&"${LOG_FD:-2}"; }
die() { printf '[cardio-env] error: %s\n' "$*" >&"${LOG_FD:-2}"; exit 2; }

# Written last into a native venv: a venv without it is an interrupted build.
NATIVE_COMPLETE=.cardio-complete

# Bump when the way an environment is built changes, so every cached one is rebuilt.
RECIPE_VERSION=3

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

# The installer: uv, pinned and hash-checked (its manylinux x86_64 wheel, installed by the venv's
# own pip). uv downloads in parallel and unpacks an order of magnitude faster than pip, and checks
# every distribution against the lock's hashes (--require-hashes).
UV_VERSION=0.13.9
UV_WHEEL_SHA256=d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19

install_locked() {  # $1: the venv; $2: where uv goes; $3: uv's cache. Run where the venv lives.
  local venv=$1 uv_dir=$2 uv_cache=$3 start=$SECONDS total
  total=$(grep -c '^[A-Za-z0-9]' "$LOCK")
  printf 'uv==%s --hash=sha256:%s\n' "$UV_VERSION" "$UV_WHEEL_SHA256" > "$venv/uv-requirement.txt"
  "$venv/bin/python" -m pip install --no-deps --no-input --disable-pip-version-check --target "$uv_dir" \
    --require-hashes -r "$venv/uv-requirement.txt"
  rm -f "$venv/uv-requirement.txt"
  log "  uv $UV_VERSION ready ($((SECONDS - start)) s); installing the locked stack: $total distributions"
  # uv reads its own index variables; an index set for pip (a mirror) is used by uv too.
  [ -z "${PIP_INDEX_URL:-}" ] || export UV_DEFAULT_INDEX=${UV_DEFAULT_INDEX:-$PIP_INDEX_URL}
  # Its summary lines (resolved, prepared = downloaded and unpacked, installed, bytecode
  # compiled) are the progress. --compile-bytecode: uv, unlike pip, leaves the .pyc files out, so
  # every process would compile TFX, TFMA and Beam from source again wherever it cannot write them
  # back (a read-only environment, PYTHONDONTWRITEBYTECODE): 14 s of CPU to import TFX's
  # Kubeflow entrypoint, paid by every pipeline task's pod.
  UV_CACHE_DIR=$uv_cache UV_NO_PROGRESS=1 "$uv_dir/bin/uv" pip install --python "$venv/bin/python" \
    --require-hashes --compile-bytecode -r "$LOCK" 2>&1 | while IFS= read -r line; do
      printf '%s\n' "$line"
      case "$line" in Resolved*|Prepared*|Installed*|Bytecode*) log "  ${line,}" ;; esac
    done
  return "${PIPESTATUS[0]}"
}
build_native() {
  # uv writes the venv's own path into every console script (#!DEST/bin/python), so the venv is
  # built at its final path, under the builders' lock (ensure_env), and the completion marker is
  # written last: a venv without it is an interrupted build and is built again from scratch.
  local dest=$1
  rm -rf "$dest" "$dest.partial"
  log "[1/2] creating the venv (python3.13)"
  python3.13 -m venv "$dest"
  log "[2/2] installing uv $UV_VERSION, then the locked stack"
  install_locked "$dest" "$CACHE/uv-$UV_VERSION" "$CACHE/uv-cache"
  : > "$dest/$NATIVE_COMPLETE"
}

env_complete() {  # $1: an environment path of the current mode
  if [ "$(env_mode)" = native ]; then [ -e "$1/$NATIVE_COMPLETE" ]; else [ -e "$1" ]; fi
}

# The command that runs a command inside the root, with the bind mounts described above, into the
# array ROOT_ARGV. Args: root, then command. CARDIO_EXTRA_BINDS: more directories, one per line.
root_argv() {
  local root=$1; shift
  local -a binds=("$REPO" /tmp)
  # ../shared at its real path and, when it is a symbolic link, at the link's own path too
  # (tests find it beside the repository; a link's directory is not bound otherwise).
  [ -d "$REPO/../shared" ] && binds+=("$(cd "$REPO/../shared" && pwd -P)" "$(cd "$REPO/.." && pwd -P)/shared")
  binds+=("$(pwd -P)")
  local line
  while IFS= read -r line; do [ -n "$line" ] && binds+=("$line"); done <<< "${CARDIO_EXTRA_BINDS:-}"
  local -a ns=(unshare --mount --propagation private)
  # Without root, a user namespace maps us to root inside (docs/environment.md).
  [ "$(id -u)" = 0 ] || ns=(unshare --user --map-root-user --mount --propagation private)
  # unshare without --fork execs its command, enter-root.sh execs chroot, and so on down.
  ROOT_ARGV=("${ns[@]}" -- bash "$REPO/tools/enter-root.sh" "$root" "${binds[@]}" -- "$@")
}
in_root() { root_argv "$@"; "${ROOT_ARGV[@]}"; }
exec_in_root() { root_argv "$@"; exec "${ROOT_ARGV[@]}"; }

# Without root, the root is made by mmdebstrap in a user namespace: check for everything that
# needs, and say exactly what is missing.
require_unprivileged_build() {
  local user; user=$(id -un)
  unshare --user --map-root-user true 2>/dev/null || die "building the Debian 13 root without \
root needs user namespaces, and \`unshare --user --map-root-user true\` fails here: enable them \
(sysctl user.max_user_namespaces=15000; on Ubuntu 24.04+ also \
kernel.apparmor_restrict_unprivileged_userns=0), or run ./cardio once as root"
  command -v mmdebstrap >/dev/null && command -v newuidmap >/dev/null && command -v newgidmap >/dev/null \
    || die "building the Debian 13 root without root needs mmdebstrap and newuidmap/newgidmap: \
ask an administrator for \`apt-get install mmdebstrap uidmap\` (or run ./cardio once as root)"
  grep -qE "^($user|$(id -u)):" /etc/subuid 2>/dev/null && grep -qE "^($user|$(id -g)):" /etc/subgid 2>/dev/null \
    || die "building the Debian 13 root without root needs subordinate ids for $user in /etc/subuid \
and /etc/subgid: ask an administrator for \`usermod --add-subuids 100000-165535 --add-subgids \
100000-165535 $user\` (any free range of 65536)"
}

build_root() {
  local dest=$1 tmp="$1.partial" start=$SECONDS
  if [ "$(id -u)" = 0 ]; then
    command -v mmdebstrap >/dev/null || {
      log "[0/3] installing mmdebstrap on the host (apt-get)"
      apt-get update -qq && apt-get install -y -qq mmdebstrap
    }
  else
    require_unprivileged_build
  fi
  rm -rf "$tmp"; mkdir -p "$tmp"
  # mmdebstrap: apt fetches the packages in parallel; no documentation, man pages or locales.
  local -a debian=(mmdebstrap --variant=minbase --include="$DEBIAN_PACKAGES" --dpkgopt=force-unsafe-io
                   --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
                   --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
  log "[1/3] building a Debian 13 root (mmdebstrap: python3.13, g++; about half a minute)"
  if [ "$(id -u)" = 0 ]; then
    "${debian[@]}" --mode=root "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR"
  else
    # mmdebstrap runs dpkg in a user namespace with the subordinate ids; its tarball, unpacked by
    # us, leaves every file ours, which `unshare --map-root-user` shows as root's when entering.
    "${debian[@]}" --mode=unshare "$DEBIAN_SUITE" - "$DEBIAN_MIRROR" | tar -x -C "$tmp" --exclude='./dev/*'
  fi
  [ -x "$tmp/usr/bin/python3.13" ] || die "the Debian 13 root in $tmp has no python3.13"
  log "  root ready ($((SECONDS - start)) s)"
  # The environment's TLS variables point at the host's bundle path: make that path exist inside.
  local bundle
  for bundle in "${SSL_CERT_FILE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
    [ -n "$bundle" ] && [ -f "$bundle" ] && mkdir -p "$tmp$(dirname "$bundle")" && cp -L "$bundle" "$tmp$bundle"
  done
  cp -L /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
  log "[2/3] creating the venv inside the root"
  in_root "$tmp" python3.13 -m venv "$VENV_IN_ROOT"
  log "[3/3] installing uv $UV_VERSION, then the locked stack"
  # uv's cache stays inside the root: on the venv's file system, so uv hard-links its files.
  in_root "$tmp" bash -c "set -euo pipefail; $(declare -f log install_locked); $(declare -p LOCK UV_VERSION UV_WHEEL_SHA256 LOG_FD); install_locked $VENV_IN_ROOT /opt/cardio-uv /var/cache/cardio-uv"
  mv "$tmp" "$dest"
}

ensure_env() {
  [ -f "$LOCK" ] || die "lock file $LOCK is missing"
  local dest; dest=$(env_path)
  env_complete "$dest" && return 0
  mkdir -p "$CACHE"
  local start=$SECONDS
  # One builder at a time; a second caller waits and then reuses the result. The lock's file
  # descriptor is closed again before anything is exec'd.
  exec 9>"$CACHE/.lock"
  flock 9
  if ! env_complete "$dest"; then
    # Set-up talks on stderr only (stdout belongs to the command being run): a few lines of its
    # own; what the tools print goes to a log beside the environment.
    local setup_log="$dest.setup.log"
    exec {LOG_FD}>&2
    log "setting up the environment (first run only); full log: $setup_log"
    local builder=build_native; [ "$(env_mode)" = native ] || builder=build_root
    # A subshell outside any `if` or `||`: there bash would ignore set -e inside the builder.
    local status
    set +e; ( set -e; "$builder" "$dest" ) > "$setup_log" 2>&1; status=$?; set -e
    if [ "$status" != 0 ]; then
      log "set-up failed; the last lines of $setup_log:"
      tail -n 25 "$setup_log" >&"$LOG_FD"
      exit 2
    fi
    log "environment ready in $((SECONDS - start)) s: $dest"
    exec {LOG_FD}>&-; unset LOG_FD
  fi
  exec 9>&-
}

# Replaces this shell with a command (argv) in the environment, cwd preserved: the command gets
# this process's PID, so its exit status and every signal sent to this PID are its own.
exec_in_env() {
  if [ "${CARDIO_IN_ENV:-}" = 1 ]; then exec "$@"; fi  # already inside: run as is
  ensure_env
  # The project's packages, and the start-up hook that quiets TensorFlow's loading lines
  # (tools/python-startup/sitecustomize.py; active when TF_CPP_MIN_LOG_LEVEL is 2 or 3).
  local dest STARTUP_PATH="$REPO/tools/python-startup:$REPO/src"; dest=$(env_path)
  if [ "$(env_mode)" = native ]; then
    export CARDIO_IN_ENV=1 PATH="$dest/bin:$PATH" PYTHONPATH="$STARTUP_PATH${PYTHONPATH:+:$PYTHONPATH}" \
      VIRTUAL_ENV="$dest"
    exec "$@"
  else
    exec_in_root "$dest" env CARDIO_IN_ENV=1 PATH="$VENV_IN_ROOT/bin:/usr/local/bin:/usr/bin:/bin" \
      VIRTUAL_ENV="$VENV_IN_ROOT" PYTHONPATH="$STARTUP_PATH${PYTHONPATH:+:$PYTHONPATH}" "$@"
  fi
}

# Runs a command (argv) in the environment as a child and returns its exit status.
run_in_env() { ( exec_in_env "$@" ); }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    ensure) ensure_env ;;
    path) env_path ;;
    mode) env_mode ;;
    run) shift; exec_in_env "$@" ;;
    *) echo "usage: tools/environment.sh ensure|path|mode|run CMD..." >&2; exit 2 ;;
  esac
fi

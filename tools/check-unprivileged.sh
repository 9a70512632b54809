#!/usr/bin/env bash
# Checks that the Debian 13 root can be built and entered without root privileges, the way
# ./cardio does it for a user who is not root (docs/environment.md): as a throwaway user, the
# real tools/environment.sh builds a small root (mmdebstrap --mode=unshare; minbase with
# python3-venv, and a one-package stub lock instead of the stack) and runs commands in it through
# its own entering path (exec_in_env: unshare --user --map-root-user --mount, enter-root.sh,
# chroot). About a minute with a reachable Debian mirror and PyPI.
#
# Run as root on the host (it creates and removes the user; it installs mmdebstrap and uidmap
# with apt-get when they are missing). Exit status: 0 passed, 1 failed, 77 the host cannot do it
# (the reason is printed: e.g. user namespaces disabled for unprivileged users).
set -euo pipefail
# Callers may start me with a bare environment (env -i): useradd and usermod live in sbin.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd -P)
say() { printf '[check-unprivileged] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "run me as root: I create a throwaway user"; exit 2; }

if ! command -v mmdebstrap >/dev/null || ! command -v newuidmap >/dev/null; then
  command -v apt-get >/dev/null || { say "cannot do it here: mmdebstrap/uidmap missing and no apt-get"; exit 77; }
  say "installing mmdebstrap and uidmap"
  apt-get update -qq && apt-get install -y -qq mmdebstrap uidmap >/dev/null
fi

user=cardio-check-$$
work=$(mktemp -d /var/tmp/cardio-unprivileged.XXXXXX)
cleanup() {
  userdel --remove "$user" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# useradd gives a new user subordinate ids (/etc/subuid, /etc/subgid) when the host is set up for
# them; mmdebstrap --mode=unshare needs them, as any user building without root does.
useradd --create-home --shell /bin/bash "$user"
grep -q "^$user:" /etc/subuid && grep -q "^$user:" /etc/subgid \
  || usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$user"

# A copy of the environment scripts and a stub lock, owned by the user: REPO is its directory.
mkdir -p "$work/repo/tools"
cp "$here/environment.sh" "$here/enter-root.sh" "$work/repo/tools/"
printf '%s\n' "tabulate==0.10.0 --hash=sha256:e2cfde8f79420f6deeffdeda9aaec3b6bc5abce947655d17ac662b126e48a60d" > "$work/repo/requirements.lock"
chown -R "$user:" "$work"
chmod 755 "$work"

as_user() {
  runuser -u "$user" -- env -u CARDIO_CACHE -u XDG_CACHE_HOME -u CARDIO_IN_ENV -u VIRTUAL_ENV \
    -u PIP_FIND_LINKS -C "$work" HOME="/home/$user" USER="$user" LOGNAME="$user" "$@"
}

if ! why=$(as_user unshare --user --map-root-user true 2>&1); then
  say "cannot do it here: as an unprivileged user, \`unshare --user --map-root-user true\` fails" \
      "(${why:-no message}); user namespaces must be enabled for unprivileged users" \
      "(sysctl user.max_user_namespaces > 0; on Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=0)"
  exit 77
fi

say "building a small Debian 13 root as $user (uid $(id -u "$user"))"
start=$SECONDS
out=$(as_user bash -c '
  source repo/tools/environment.sh
  CARDIO_ENV=chroot
  DEBIAN_PACKAGES=python3-venv,ca-certificates   # the real root adds python3-dev and g++
  ensure_env
  echo "built: $(env_path)"
  exec_in_env sh -c "echo \"inside: uid \$(id -u) \$(python -c \"import sys; print(sys.version.split()[0])\")\"; printf \"a 1\\n\" | tabulate"
') || { say "FAILED: building or entering the root as $user failed (output above)"; exit 1; }
say "built and entered in $((SECONDS - start)) s"
printf '%s\n' "$out" >&2
root=$(printf '%s\n' "$out" | sed -n 's/^built: //p')
owner=$(stat -c %U "$root/usr/bin/python3.13" 2>/dev/null || true)
if [ "$owner" = "$user" ] && printf '%s\n' "$out" | grep -q '^inside: uid 0 3\.13' \
   && printf '%s\n' "$out" | grep -q '^a  1$'; then
  say "passed: a user without privileges built the root (files owned by $owner) and ran python3.13 and a console script in it as mapped root"
else
  say "FAILED: unexpected result (root $root owned by '$owner')"
  exit 1
fi

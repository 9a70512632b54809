#!/usr/bin/env bash
# Runs inside a fresh mount namespace (see environment.sh): mounts the kernel file systems and the
# shared directories into the Debian 13 root at the same paths, then chroots and runs the command.
# Args: ROOT DIR... -- COMMAND...   (each DIR absolute, so none is "--"; any characters but NUL)
# Every step execs: this script becomes chroot, which becomes sh, which becomes the command.
set -euo pipefail
root=$1; shift
dirs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do dirs+=("$1"); shift; done
[ $# -gt 0 ] || { echo "usage: enter-root.sh ROOT DIR... -- COMMAND..." >&2; exit 2; }
shift

mount -t proc proc "$root/proc" 2>/dev/null || mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# The host's own name must resolve inside too: Beam's portable runner hands its SDK workers
# addresses by host name.
cp -L /etc/hosts "$root/etc/hosts" 2>/dev/null || true

# Directories the root's own system lives in are never shadowed by host directories.
is_system_path() {
  case "$1" in /|/bin|/bin/*|/boot*|/dev|/dev/*|/etc|/etc/*|/lib*|/opt/cardio-venv*|/proc*|/sbin*|/sys*|/usr|/usr/*|/var|/var/lib*|/var/cache*) return 0 ;; esac
  return 1
}
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  if is_system_path "$d"; then continue; fi
  mkdir -p "$root$d"
  mountpoint -q "$root$d" && [ "$d" != /tmp ] && continue
  mount --rbind "$d" "$root$d"
done

# GPUs: /dev is shared above; the host's driver libraries are bound in read-only beside the root's.
if ls /dev/nvidia* >/dev/null 2>&1; then
  mkdir -p "$root/run/host-nvidia"
  mount -t tmpfs tmpfs "$root/run/host-nvidia"
  while IFS= read -r lib; do
    touch "$root/run/host-nvidia/$(basename "$lib")"
    mount --bind "$lib" "$root/run/host-nvidia/$(basename "$lib")"
  done < <(ldconfig -p 2>/dev/null | awk '/libcuda\.so|libnvidia-/ {print $NF}' | sort -u)
  for bin in nvidia-smi; do
    p=$(command -v "$bin" || true)
    [ -n "$p" ] && touch "$root/run/host-nvidia/$bin" && mount --bind "$p" "$root/run/host-nvidia/$bin"
  done
  export LD_LIBRARY_PATH="/run/host-nvidia${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# Host pip settings that point at paths the root does not have would only produce warnings.
if [ -n "${PIP_FIND_LINKS:-}" ] && [ ! -e "$root$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi

cwd=$(pwd -P)
exec chroot "$root" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$cwd" "$@"

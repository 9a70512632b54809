#!/usr/bin/env bash
# Regenerates requirements-gpu.lock: the NVIDIA wheels of the locked TensorFlow's `and-cuda`
# extra with their sha256 (the Dockerfile's gpu target installs them with --require-hashes),
# resolved (pip --dry-run, nothing installed) within the ranges TensorFlow declares and
# constrained by requirements.lock. Run it after changing TensorFlow in the lock.
set -euo pipefail
source "$(dirname "$0")/environment.sh"
report=/tmp/cardio-gpu-report.json
# The lock's pins without their hashes as constraints (hashes there would switch pip to
# hash-checking mode for the NVIDIA wheels too, which the lock does not list).
constraints=/tmp/cardio-gpu-constraints.txt
sed -e 's/ *\\$//' -e '/^ *--hash=/d' "$LOCK" > "$constraints"
run_in_env bash -c "
  set -e; tf=\$(grep '^tensorflow==' '$constraints')
  python3 -m pip install --quiet --dry-run --ignore-installed --report $report \
    -c '$constraints' \"tensorflow[and-cuda]==\${tf#tensorflow==}\""
out="$REPO/requirements-gpu.lock"
{ sed -n '1,/^[^#]/p' "$out" | grep '^#'
  run_in_env python3 -c "
import json
install = json.load(open('$report'))['install']
# Each pin with the sha256 of the wheel pip chose for this platform (x86_64 Linux, the image's),
# from the index: the Dockerfile installs it with --require-hashes.
for i in sorted(install, key=lambda i: i['metadata']['name']):
    if i['metadata']['name'].startswith('nvidia-'):
        archive = i['download_info']['archive_info']
        sha = archive.get('hashes', {}).get('sha256') or archive['hash'].split('=', 1)[1]
        print(f\"{i['metadata']['name']}=={i['metadata']['version']} \\\\\n    --hash=sha256:{sha}\")"
  } > "$out.new"
mv "$out.new" "$out"
echo "requirements-gpu.lock: $(grep -c '^nvidia-' "$out") pinned distributions, $(grep -c -- '--hash=sha256:' "$out") hashes"

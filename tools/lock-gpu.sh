#!/usr/bin/env bash
# Regenerates requirements-gpu.lock: the NVIDIA wheels of the locked TensorFlow's `and-cuda`
# extra, resolved (pip --dry-run, nothing installed) within the ranges TensorFlow declares and
# constrained by requirements.lock. Run it after changing TensorFlow in the lock.
set -euo pipefail
source "$(dirname "$0")/environment.sh"
report=/tmp/cardio-gpu-report.json
run_in_env bash -c "
  set -e; tf=\$(grep '^tensorflow==' '$LOCK')
  python3 -m pip install --quiet --dry-run --ignore-installed --report $report \
    -c '$LOCK' \"tensorflow[and-cuda]==\${tf#tensorflow==}\""
out="$REPO/requirements-gpu.lock"
{ sed -n '1,/^[^#]/p' "$out" | grep '^#'
  run_in_env python3 -c "
import json
install = json.load(open('$report'))['install']
print('\n'.join(sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\" for i in install
                      if i['metadata']['name'].startswith('nvidia-'))))"; } > "$out.new"
mv "$out.new" "$out"
echo "requirements-gpu.lock: $(grep -vc '^#' "$out") pinned distributions"

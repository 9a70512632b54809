#!/usr/bin/env bash
# Builds the pipeline image for real, without a Docker daemon or a registry, and smoke-tests it:
#   1. a Debian 13 root file system from Debian's mirror (mmdebstrap, as Debian's official images
#      are made), committed as the base image localhost/debian:13-mmdebstrap;
#   2. the Dockerfile's `cpu` target on that base (buildah, --build-arg DEBIAN_IMAGE=...);
#   3. inside the image: `cardio versions`, the demo profile's compile, and `cardio serve`
#      answering a gRPC model-status call.
# Host tools (Debian: apt-get install buildah mmdebstrap), run as root. Not part of the test
# suite: it takes many minutes. The last stdout line is a JSON summary (sizes, times).
#   benchmarks/image_build.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/var/tmp/cardio-image}
bah() { buildah --storage-driver vfs "$@"; }
mkdir -p "$work"
log() { echo "[image_build] $*" >&2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image=localhost/cardio:$version
base=localhost/debian:13-mmdebstrap

t0=$(date +%s)
if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  log "Debian 13 root file system (mmdebstrap)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates trixie "$work/debian-13.tar" \
    http://deb.debian.org/debian >&2
  ctr=$(bah from scratch)
  bah add "$ctr" "$work/debian-13.tar" / >&2
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$ctr"
  bah commit --rm "$ctr" "$base" >&2
fi
t1=$(date +%s)
log "image $image (Dockerfile target cpu)"
# A TLS-intercepting proxy between this machine and PyPI: pip in the build trusts the host's CA
# bundle (mounted for the RUN steps only; nothing of it stays in the image).
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
printf '[global]\ncert = /etc/ssl/host-ca.crt\n' > "$work/pip.conf"
# The base is this script's own Debian 13 root, built above: no registry digest to pin.
bah bud --isolation chroot --build-arg DEBIAN_IMAGE="$base" --build-arg ALLOW_UNPINNED_BASE=1 \
  --target cpu -t "$image" \
  --volume "$ca:/etc/ssl/host-ca.crt:ro" --volume "$work/pip.conf:/etc/pip.conf:ro" . >&2
t2=$(date +%s)
size=$(bah inspect --type image --format '{{.ImageSize}}' "$image" 2>/dev/null || echo 0)
[ "$size" != 0 ] || size=$(bah images --noheading --format '{{.Size}}' "$image")

log "smoke test inside the image"
ctr=$(bah from "$image")
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
inside() { bah run --isolation chroot --user 10001:10001 "$ctr" -- "$@"; }
inside cardio versions >&2
inside sh -c 'cd /tmp && cardio pipeline compile --profile demo --output /tmp/demo/cardio.json \
  --image-tag '"$version"' --pipeline-root gs://b/root --data-root gs://b/data \
  --serving-root gs://b/serving --segmenter-uri gs://b/unet' | tail -1 > "$work/compile.json"
inside sh -c 'test -s /tmp/demo/cardio.yaml && grep -q "defaultPipelineRoot: gs://b/root" /tmp/demo/cardio.yaml'
# cardio serve: a server with one (still empty) model answers GetModelStatus over gRPC.
inside sh -c '
  mkdir -p /tmp/models/m && cardio serve --port=8500 --model_name=m --model_base_path=/tmp/models/m \
    > /tmp/serve.log 2>&1 & pid=$!
  python - <<PY
import time, grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel("127.0.0.1:8500"))
request = get_model_status_pb2.GetModelStatusRequest()
request.model_spec.name = "m"
for _ in range(120):
    try:
        stub.GetModelStatus(request, timeout=2)
        print("serve: GetModelStatus answered"); break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:   # up: the model has no version yet
            print("serve: GetModelStatus answered", error.code().name); break
        time.sleep(1)
else:
    raise SystemExit("cardio serve did not answer within 120 s")
PY
  status=$?; kill $pid; exit $status' >&2
# Test tools stay out of the production image.
inside sh -c '! python -c "import pytest" 2>/dev/null && ! command -v kubectl && ! command -v kubernetes-validate'
t3=$(date +%s)
echo "{\"image\": \"$image\", \"size_bytes\": \"$size\", \"base_s\": $((t1 - t0)), \"build_s\": $((t2 - t1)), \"smoke_s\": $((t3 - t2)), \"buildah\": \"$(buildah --version | cut -d' ' -f3)\"}"

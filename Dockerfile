# syntax=docker/dockerfile:1.7
# The pipeline image: every component of the compiled pipeline runs in it (TFX executors, Beam
# workers, the TFJob launcher and replicas, `cardio pipeline submit` in the retraining CronJob).
#
#   docker build --target cpu --build-arg DEBIAN_IMAGE=debian:13.2-slim@sha256:... -t REGISTRY/cardio:TAG .
#   docker build --target gpu --build-arg DEBIAN_IMAGE=... -t REGISTRY/cardio:TAG-gpu .   # the Trainers' image
#   ... --build-context weights=DIR    ImageNet weights (Keras *_notop.h5 files) into the image
#
# Debian 13: ml-metadata and TFDV 1.21 ship only manylinux_2_39 wheels (glibc >= 2.39), and its
# python3 is the project's one interpreter, 3.13. Every Python distribution comes from
# requirements.lock (the GPU target adds requirements-gpu.lock), installed with --no-deps so that
# nothing outside the locks gets in; the dev extra's test tools are removed again.
# Everything is pinned: the base by digest (a build argument, so that your registry mirror's
# digest goes in: --build-arg DEBIAN_IMAGE=debian:13.2-slim@sha256:...; the build stops if it has
# none, unless ALLOW_UNPINNED_BASE=1, as for a base built locally from a Debian 13 root file
# system: benchmarks/image_build.sh, mmdebstrap then buildah), pip by version and hash, and every
# distribution by version and hash (pip --require-hashes: requirements.lock, requirements-gpu.lock).
ARG DEBIAN_IMAGE=debian:13.2-slim

# ImageNet weights: empty unless the build names a `weights` context (see above).
FROM scratch AS weights

FROM ${DEBIAN_IMAGE} AS build
ARG DEBIAN_IMAGE
ARG ALLOW_UNPINNED_BASE=
RUN case "$DEBIAN_IMAGE" in \
      *@sha256:*) ;; \
      *) [ "$ALLOW_UNPINNED_BASE" = 1 ] || { echo "DEBIAN_IMAGE=$DEBIAN_IMAGE is not pinned by digest: build with --build-arg DEBIAN_IMAGE=debian:13.2-slim@sha256:<digest> (docker buildx imagetools inspect debian:13.2-slim)" >&2; exit 1; } ;; \
    esac
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/cardio-venv PATH=/opt/cardio-venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY requirements.lock /tmp/requirements.lock
# pip itself: the version the project's environment runs, with the sha256 of its wheel on PyPI.
RUN python3 -m venv "$VIRTUAL_ENV" \
 && echo "pip==25.1.1 --hash=sha256:2913a38a2abf4ea6b64ab507bd9e967f3b53dc1ede74b01b0931e1ce548751af" > /tmp/pip.lock \
 && pip install --no-deps --require-hashes -r /tmp/pip.lock \
 && pip install --no-deps --require-hashes -r /tmp/requirements.lock
# The project (.dockerignore admits only its packages, metadata and the filter below). The lock
# also pins the dev extra (pytest, kubectl, kubernetes-validate, ...): the production image
# drops every distribution the runtime dependencies do not need.
COPY . /src/
RUN pip install --no-deps /src \
 && python3 /src/tools/runtime_only.py --uninstall \
 && pip check

# CUDA-enabled TensorFlow for the Trainers: the locked TensorFlow's `and-cuda` extra, i.e. the
# NVIDIA CUDA/cuDNN wheels pinned in requirements-gpu.lock (tools/lock-gpu.sh).
FROM build AS build-gpu
COPY requirements-gpu.lock /tmp/requirements-gpu.lock
RUN pip install --no-deps --require-hashes -r /tmp/requirements-gpu.lock && pip check

FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cardio \
 && useradd --uid 10001 --gid 10001 --home-dir /home/cardio --create-home --shell /usr/sbin/nologin cardio \
 && mkdir /gcs /minio /s3 && chown 10001:10001 /gcs /minio /s3
# Where Kubeflow Pipelines' launcher copies each input artifact and collects each output (by the
# URI's scheme: backend/src/v2/component/launcher_v2.go, LocalPathForURI), as this image's user:
# the pod's ephemeral storage (docs/operator-guide.md, "Resources"); pipeline/kfp_entrypoint.py
# hands the executors those copies.
COPY --from=weights / /opt/cardio/weights/
# The Kubeflow V2 runner ignores container env set in the pipeline: Keras 2 must be the image's
# default (TFX, TFT and TFMA 1.x need it).
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/cardio-venv \
    PATH=/opt/cardio-venv/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/home/cardio
WORKDIR /home/cardio
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
CMD ["cardio", "--help"]

FROM runtime AS gpu
COPY --from=build-gpu /opt/cardio-venv /opt/cardio-venv
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Last, so that `docker build .` (with the base's digest) gives the CPU image.
FROM runtime AS cpu
COPY --from=build /opt/cardio-venv /opt/cardio-venv

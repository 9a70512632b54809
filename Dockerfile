# syntax=docker/dockerfile:1.7
# The pipeline image: every component of the compiled pipeline runs in it (TFX executors, Beam
# workers, the TFJob launcher and replicas, `cardio pipeline submit` in the retraining CronJob).
#
#   docker build --target cpu -t REGISTRY/cardio:TAG .
#   docker build --target gpu -t REGISTRY/cardio:TAG-gpu .        # the Trainers' image
#   ... --build-context weights=DIR    ImageNet weights (Keras *_notop.h5 files) into the image
#
# Debian 13: ml-metadata and TFDV 1.21 ship only manylinux_2_39 wheels (glibc >= 2.39), and its
# python3 is the project's one interpreter, 3.13. Every Python distribution comes from
# requirements.lock, installed with --no-deps so that nothing outside the lock gets in.
# Pin the base by digest in your registry mirror: --build-arg DEBIAN_IMAGE=debian:13.2-slim@sha256:...
ARG DEBIAN_IMAGE=debian:13.2-slim

# ImageNet weights: empty unless the build names a `weights` context (see above).
FROM scratch AS weights

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/cardio-venv PATH=/opt/cardio-venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --upgrade pip \
 && pip install --no-deps -r /tmp/requirements.lock
# The project (.dockerignore admits only its packages and metadata).
COPY . /src/
RUN pip install --no-deps /src && pip check

# CUDA-enabled TensorFlow for the Trainers: the locked TensorFlow with its `and-cuda` extra (the
# NVIDIA CUDA/cuDNN wheels, within the ranges TensorFlow declares; their freeze is kept in the
# image at /opt/cardio/gpu-freeze.txt).
FROM build AS build-gpu
RUN tf=$(grep '^tensorflow==' /tmp/requirements.lock) \
 && pip install -c /tmp/requirements.lock "tensorflow[and-cuda]==${tf#tensorflow==}" \
 && mkdir -p /opt/cardio && pip freeze | grep '^nvidia-' > /opt/cardio/gpu-freeze.txt \
 && test -s /opt/cardio/gpu-freeze.txt

FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cardio \
 && useradd --uid 10001 --gid 10001 --home-dir /home/cardio --create-home --shell /usr/sbin/nologin cardio
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
COPY --from=build-gpu /opt/cardio/gpu-freeze.txt /opt/cardio/gpu-freeze.txt
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Last, so that a plain `docker build .` gives the CPU image.
FROM runtime AS cpu
COPY --from=build /opt/cardio-venv /opt/cardio-venv

# syntax=docker/dockerfile:1
# bpm-eval: one image for every Kubeflow component, the trigger service and the `bpm` CLI.
#
#   docker build -t ghcr.io/bpm-eval/bpm-eval:0.1.0 .
#   docker build --target mlflow-server -t ghcr.io/bpm-eval/bpm-eval-mlflow:0.1.0 .
#
# CUDA: torch and torchvision come from the PyTorch CUDA wheel index. Those wheels carry the
# CUDA runtime, cuBLAS, cuDNN and NCCL as nvidia-* wheels, and the NVIDIA container runtime
# mounts the host driver, so a slim Python base is CUDA-capable; an nvidia/cuda base would ship
# the same libraries twice. Choose another CUDA build with --build-arg TORCH_INDEX_URL=….
#
# Dependencies: the package is installed with `pip install .`, so the image gets exactly the
# dependency specifiers of pyproject.toml; the only packages named here are torch/torchvision
# (same specifiers as pyproject.toml, from the CUDA index) and, in the MLflow server image,
# the PostgreSQL driver. tests/test_dockerfile.py keeps these in step with pyproject.toml.
# The versions resolved at build time are recorded in /opt/venv/requirements.lock.

# ---- base: Python 3.11, tini, the non-root user ------------------------------------------------
FROM python:3.11.14-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini runs as PID 1 where a long-lived server needs signals forwarded (see manifests/).
# Not version-pinned: the base image tag fixes the Debian release, whose tini only receives
# security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 bpm \
    && useradd --uid 10001 --gid 10001 --home-dir /home/bpm --create-home \
       --shell /usr/sbin/nologin bpm \
    && mkdir -p /var/lib/bpm /var/cache/bpm \
    && chown 10001:10001 /var/lib/bpm /var/cache/bpm

# ---- builder: the virtual environment with torch (CUDA) and the package -----------------------
FROM base AS builder

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv

# The largest layer first, so that it is cached across source and dependency changes.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch>=2.4,<2.15" \
        "torchvision>=0.19,<0.30"

WORKDIR /src

# Dependencies of pyproject.toml, installed through a stand-in package so that this layer is
# rebuilt only when pyproject.toml changes, not on every source edit.
COPY pyproject.toml README.md ./
RUN mkdir bpm_lib \
    && touch bpm_lib/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall --yes bpm-eval \
    && rm -rf bpm_lib build ./*.egg-info

# The package itself (.dockerignore admits only its sources and metadata).
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && pip freeze --exclude bpm-eval > /opt/venv/requirements.lock

# ---- mlflow-server: the MLflow tracking server (PostgreSQL + S3), no CUDA stack ---------------
FROM base AS mlflow-server

# The same mlflow and boto3 versions as the bpm-eval image (constrained by its lock), so the
# server and its clients in pipeline pods never drift apart.
COPY --from=builder /opt/venv/requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --constraint /tmp/requirements.lock \
        "mlflow>=3.1,<3.18" \
        "boto3>=1.34,<2" \
        "psycopg2-binary>=2.9,<3" \
    && /opt/venv/bin/pip check \
    && rm /tmp/requirements.lock

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/bpm

USER 10001:10001
WORKDIR /home/bpm
EXPOSE 5000
ENTRYPOINT ["tini", "--", "mlflow"]
CMD ["server"]

# ---- runtime (default target): the bpm-eval image ---------------------------------------------
FROM base AS runtime

ARG BPM_VERSION=0.1.0
LABEL org.opencontainers.image.title="bpm-eval" \
      org.opencontainers.image.description="BPM evaluation of instruction-based image-editing checkpoints" \
      org.opencontainers.image.version="${BPM_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/venv /opt/venv

# Caches live under /var/cache/bpm (a volume on Kubernetes; the root filesystem may be
# read-only). NVIDIA_VISIBLE_DEVICES is left to the device plugin, so pods without a GPU
# request see no GPU. MLflow's own HTTP retries are kept short: bpm retries a failed
# logging call itself and then spools the results (BPM_SPOOL_DIR) instead of waiting minutes.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/bpm \
    MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 \
    BPM_SPOOL_DIR=/var/cache/bpm/spool \
    BPM_CACHE_DIR=/var/cache/bpm \
    HF_HOME=/var/cache/bpm/huggingface \
    TORCH_HOME=/var/cache/bpm/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /home/bpm
ENTRYPOINT ["bpm"]
CMD ["--help"]

#!/usr/bin/env bash
# Build the PRNet image if needed, then run it on the GPU with the data mounted read-only.
#
#   ./entrypoint.sh                                      prototypes + training, configs/default.yaml
#   ./entrypoint.sh python train.py data.classes=[bottle] any command, run in the container unchanged
#   ./entrypoint.sh --rebuild [command...]               rebuild the image first
#
# Host folders: ${DATA_DIR}/mvtec_anomaly_detection (and ${DATA_DIR}/dtd) → /data (read-only);
# ./outputs and ./prototypes → /workspace/outputs, /workspace/prototypes; ${PRNET_CACHE_DIR} → /cache (weights).
# Environment:
#   PRNET_IMAGE=prnet:latest    image name          PRNET_REBUILD=1        same as --rebuild
#   DATA_DIR=/data              host data folder    PRNET_SHM_SIZE=16g     shared memory (DataLoader workers)
#   PRNET_GPUS=all              value of --gpus     PRNET_ALLOW_NO_GPU=1   no NVIDIA runtime check, no --gpus
#   PRNET_CACHE_DIR=~/.cache/prnet                  PRNET_AS_ROOT=1        run as root, not as the host user
#   PRNET_SKIP_DATA_CHECK=1     do not require ${DATA_DIR}/mvtec_anomaly_detection (e.g. configs/demo.yaml)
set -euo pipefail

die() {
    echo "entrypoint.sh: error: $*" >&2
    exit 1
}

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${PRNET_IMAGE:-prnet:latest}"
DATA_DIR="${DATA_DIR:-/data}"
SHM_SIZE="${PRNET_SHM_SIZE:-16g}"
GPUS="${PRNET_GPUS:-all}"
CACHE_DIR="${PRNET_CACHE_DIR:-${HOME:-/tmp}/.cache/prnet}"
REBUILD="${PRNET_REBUILD:-0}"

if [[ "${1:-}" == "--rebuild" ]]; then
    REBUILD=1
    shift
fi

command -v docker >/dev/null 2>&1 \
    || die "docker not found on PATH: install Docker (https://docs.docker.com/engine/install/)"

if ! docker_info="$(docker info 2>/dev/null)"; then
    die "cannot reach the Docker daemon ('docker info' failed): start it, or give this user access to it (docker group)"
fi

gpu_args=()
if [[ "${PRNET_ALLOW_NO_GPU:-0}" != "1" ]]; then
    # --gpus needs the NVIDIA Container Toolkit: a registered nvidia runtime, or its hook/CLI on the host.
    if [[ "${docker_info,,}" != *nvidia* ]] \
        && ! command -v nvidia-container-cli >/dev/null 2>&1 \
        && ! command -v nvidia-container-runtime-hook >/dev/null 2>&1 \
        && ! command -v nvidia-ctk >/dev/null 2>&1; then
        die "NVIDIA container runtime not found (no nvidia runtime in 'docker info', no nvidia-container-cli/nvidia-ctk): install the NVIDIA Container Toolkit, or set PRNET_ALLOW_NO_GPU=1 to run on the CPU"
    fi
    gpu_args=(--gpus "$GPUS")
fi

data_args=()
if [[ "${PRNET_SKIP_DATA_CHECK:-0}" != "1" ]]; then
    [[ -d "$DATA_DIR/mvtec_anomaly_detection" ]] \
        || die "no MVTec AD at $DATA_DIR/mvtec_anomaly_detection: put it there (DTD under $DATA_DIR/dtd), or set DATA_DIR to the folder that holds mvtec_anomaly_detection"
fi
if [[ -d "$DATA_DIR" ]]; then
    data_args=(-v "$(cd "$DATA_DIR" && pwd):/data:ro")
fi

if [[ "$REBUILD" == "1" ]] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "entrypoint.sh: building image $IMAGE from $REPO_DIR" >&2
    docker build -t "$IMAGE" "$REPO_DIR" || die "docker build of $IMAGE from $REPO_DIR failed (see the build log above)"
fi

mkdir -p "$REPO_DIR/outputs" "$REPO_DIR/prototypes" "$CACHE_DIR"

user_args=()
if [[ "${PRNET_AS_ROOT:-0}" != "1" ]]; then
    # Files written to the mounted folders belong to the host user, not to root.
    user_args=(--user "$(id -u):$(id -g)" -e HOME=/tmp)
fi

tty_args=()
if [[ -t 0 ]]; then
    tty_args=(-it)
fi

exec docker run --rm --init "${tty_args[@]}" "${gpu_args[@]}" \
    --shm-size "$SHM_SIZE" \
    "${user_args[@]}" \
    "${data_args[@]}" \
    -v "$REPO_DIR/outputs:/workspace/outputs" \
    -v "$REPO_DIR/prototypes:/workspace/prototypes" \
    -v "$CACHE_DIR:/cache" \
    "$IMAGE" "$@"

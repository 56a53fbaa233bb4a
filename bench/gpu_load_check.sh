#!/usr/bin/env bash
# Model load on a real NVIDIA GPU: one unattended run of about 8 minutes on a
# 16-core machine with a GPU and no network, plus a preparation step on a machine
# with the package index.
#
#   bash bench/gpu_load_check.sh prepare   # here: fill .gpu-carry/ (about 20 MB)
#   bash bench/gpu_load_check.sh           # there, .gpu-carry/ carried along
#
# The run builds a CUDA llama-server from the llama.cpp sources that the
# llama-cpp-python 0.3.36 sdist vendors (while a random-weight GGUF of SIZE_GIB,
# default 19, is written beside it), measures the disk's and the page cache's read
# bandwidth and host-to-device copy bandwidth, times llama-server loads with every
# layer on the GPU (-ngl 999) from a cold and from a warm page cache for each load
# mode (bench/model_load.py), and reads the GPU once with the project's NVML agent.
# Each step fails on its own; the summary at the end lists them all. Everything
# printed also goes to $OUT (default ./gpu-check-out).
#
# Knobs (environment): SIZE_GIB=19, ROUNDS=2, MODES=mmap,none,dio, CUDA_ARCH=native,
# BUILD_TIMEOUT=420, LOAD_TIMEOUT=330, MODEL_DIR=/tmp, CUDA_FA=OFF (ON compiles the
# flash-attention kernels too, minutes more), SKIP_CUDA=1 (no CUDA build or copy
# test, no -ngl: the CPU llama-server in LLAMA_SERVER or the project's cache; for
# trying the script on a machine without a GPU), PY=python3 (the interpreter).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY=$ROOT/.gpu-carry
LLAMA_CPP_PYTHON_VERSION=0.3.36
# Not in the GPU machine's image: gguf and pydantic, and kubernetes with its own
# needs, which the agent's server imports (through the pod template's constants).
# The versions are those of the project's .venv.
WHEELS=(gguf==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 kubernetes==37.0.2
        durationpy==0.11 requests-oauthlib==2.0.0 oauthlib==4.0.1 websocket-client==1.9.2)
# What the build does not need: conversion scripts, docs, model vocabularies, the web
# UI's sources (the build embeds prebuilt assets, which need the network, or none),
# tests, CI files. Keeps the carried archive small.
PRUNE=(docs models media benches tests examples gguf-py conversion .github .devops
       tools/ui/src tools/ui/tests pocs app skills .git)

prepare() {
    set -e
    local python=${PYTHON:-$ROOT/.venv/bin/python}
    local scratch
    scratch=$(mktemp -d /tmp/gpu-carry.XXXXXX)
    trap 'rm -rf "$scratch"' RETURN
    mkdir -p "$CARRY/wheels"
    rm -f "$CARRY"/wheels/*.whl "$CARRY"/llama.cpp.tar.xz
    "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$scratch" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar -C "$scratch" -xzf "$scratch"/llama_cpp_python-*.tar.gz
    local source
    source=$(echo "$scratch"/llama_cpp_python-*/vendor/llama.cpp)
    for path in "${PRUNE[@]}"; do rm -rf "${source:?}/$path"; done
    tar -C "$(dirname "$source")" -cJf "$CARRY/llama.cpp.tar.xz" llama.cpp
    # The GPU machine's python3 is 3.12 (see the device notes).
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest "$CARRY/wheels" "${WHEELS[@]}"
    du -sh "$CARRY"/* "$CARRY"
    echo "carry .gpu-carry to the GPU machine and run: bash bench/gpu_load_check.sh"
}

# ------------------------------------------------------------------ the run

OUT=${OUT:-$ROOT/gpu-check-out}
SIZE_GIB=${SIZE_GIB:-19}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-mmap,none,dio}
CUDA_ARCH=${CUDA_ARCH:-native}
CUDA_FA=${CUDA_FA:-OFF}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-420}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-330}
MODEL_DIR=${MODEL_DIR:-/tmp}
SKIP_CUDA=${SKIP_CUDA:-0}
WORK=${WORK:-/tmp/gpu-load-check}
MODEL=$MODEL_DIR/gpu-load-check-${SIZE_GIB}gib.gguf
SERVER=$WORK/build/bin/llama-server
PY=${PY:-python3}
declare -a SUMMARY=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# step NAME COMMAND...: runs one step, records ok/FAILED and its time, never stops the run.
step() {
    local name=$1 started status
    shift
    started=$(date +%s)
    log "=== $name"
    "$@"
    status=$?
    local took=$(( $(date +%s) - started ))
    if [ "$status" -eq 0 ]; then
        SUMMARY+=("ok      $name (${took}s)")
    elif [ "$status" -eq 77 ]; then
        SUMMARY+=("skipped $name")
    else
        SUMMARY+=("FAILED  $name (exit $status after ${took}s)")
    fi
    log "=== $name: exit $status after ${took}s"
    return 0
}

environment() {
    uname -a
    nproc
    free -g
    df -h "$MODEL_DIR" "$WORK"
    findmnt -T "$MODEL_DIR" -o SOURCE,FSTYPE,OPTIONS || true
    $PY --version
    nvidia-smi || echo "nvidia-smi: not found or failed"
    if command -v nvcc >/dev/null; then nvcc --version | tail -2; else echo "nvcc: NOT FOUND"; fi
    cmake --version | head -1 || echo "cmake: not found"
    ninja --version || echo "ninja: not found"
}

python_packages() {
    if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
        echo "no wheels in $CARRY/wheels (run 'prepare' where the package index is reachable)"
        $PY -c 'import gguf, pydantic' && return 0
        return 1
    fi
    if ! $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$CARRY"/wheels/*.whl; then
        # Wheels for another Python (a trial run here): the interpreter's own will do.
        echo "the carried wheels do not install for $($PY --version); using its own packages"
        rm -rf /tmp/site
    fi
    $PY -c 'import gguf, pydantic, numpy; print("gguf", gguf.__file__); print("pydantic", pydantic.VERSION)'
}

unpack_sources() {
    mkdir -p "$WORK"
    if [ -f "$CARRY/llama.cpp.tar.xz" ]; then
        tar -C "$WORK" -xJf "$CARRY/llama.cpp.tar.xz"
    else
        echo "no $CARRY/llama.cpp.tar.xz; trying the package index"
        $PY -m pip download --quiet --no-deps --no-binary :all: --dest "$WORK" \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" || return 1
        tar -C "$WORK" -xzf "$WORK"/llama_cpp_python-*.tar.gz &&
            mv "$WORK"/llama_cpp_python-*/vendor/llama.cpp "$WORK/llama.cpp"
    fi
}

build_cuda_server() {
    [ "$SKIP_CUDA" = 1 ] && return 77
    if ! command -v nvcc >/dev/null; then
        echo "nvcc not found: no CUDA toolkit on this machine, so no CUDA build"
        return 1
    fi
    [ -d "$WORK/llama.cpp" ] || unpack_sources || return 1
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    timeout "$BUILD_TIMEOUT" cmake -S "$WORK/llama.cpp" -B "$WORK/build" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
        -DGGML_CUDA_FA="$CUDA_FA" -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF >"$WORK/cmake.log" 2>&1 || { tail -30 "$WORK/cmake.log"; return 1; }
    timeout "$BUILD_TIMEOUT" cmake --build "$WORK/build" --target llama-server -j "$(nproc)" \
        >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; return 1; }
    "$SERVER" --version 2>&1 | tail -3
    "$SERVER" --list-devices 2>&1 | tail -5
}

write_model() {
    PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
        $PY "$ROOT/bench/random_gguf.py" --size-gib "$SIZE_GIB" --out "$MODEL"
}

host_to_device() {
    [ "$SKIP_CUDA" = 1 ] && return 77
    $PY - <<'PYTHON'
"""Host-to-device copy bandwidth of 1 GiB, from pinned and from pageable memory:
torch when it is there, else libcudart through ctypes."""
import ctypes
import ctypes.util
import glob
import time

SIZE = 1 << 30
REPEATS = 5


def report(kind, seconds):
    best = min(seconds)
    print(f"host-to-device, {kind:<8} {SIZE / best / 1e9:6.1f} GB/s (best of {REPEATS})")


def with_torch():
    import torch
    assert torch.cuda.is_available(), "torch sees no GPU"
    print("via torch", torch.__version__, torch.cuda.get_device_name(0))
    device = torch.empty(SIZE, dtype=torch.uint8, device="cuda")
    for kind, pinned in (("pinned", True), ("pageable", False)):
        host = torch.ones(SIZE, dtype=torch.uint8).pin_memory() if pinned \
            else torch.ones(SIZE, dtype=torch.uint8)
        seconds = []
        for _ in range(REPEATS):
            torch.cuda.synchronize()
            started = time.perf_counter()
            device.copy_(host, non_blocking=pinned)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        report(kind, seconds)


def with_cudart():
    names = [ctypes.util.find_library("cudart")] + sorted(
        glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
    cudart = next(ctypes.CDLL(n) for n in names if n)
    print("via", cudart._name)
    device, host = ctypes.c_void_p(), ctypes.c_void_p()
    assert cudart.cudaMalloc(ctypes.byref(device), ctypes.c_size_t(SIZE)) == 0
    assert cudart.cudaMallocHost(ctypes.byref(host), ctypes.c_size_t(SIZE)) == 0
    pageable = ctypes.create_string_buffer(SIZE)
    for kind, source in (("pinned", host), ("pageable", ctypes.cast(pageable, ctypes.c_void_p))):
        seconds = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            assert cudart.cudaMemcpy(device, source, ctypes.c_size_t(SIZE), 1) == 0
            seconds.append(time.perf_counter() - started)
        report(kind, seconds)


try:
    with_torch()
except Exception as error:  # any failure: fall back to the runtime library
    print(f"torch path failed ({error}); trying libcudart")
    with_cudart()
PYTHON
}

load_times() {
    [ -f "$MODEL" ] || { echo "no model file $MODEL"; return 1; }
    local server=$SERVER extra=(--server-arg=--n-gpu-layers=999)
    if [ "$SKIP_CUDA" = 1 ]; then
        server=${LLAMA_SERVER:-$HOME/.cache/hybrid-compute/llama-server-llama-cpp-python-v$LLAMA_CPP_PYTHON_VERSION/bin/llama-server}
        extra=()
    fi
    [ -x "$server" ] || { echo "no llama-server at $server"; return 1; }
    PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 \
        timeout "$LOAD_TIMEOUT" $PY "$ROOT/bench/model_load.py" --model "$MODEL" \
        --llama-server "$server" --modes "$MODES" --rounds "$ROUNDS" --no-warmup-axis \
        --physics-repeats 1 "${extra[@]}" | tee "$OUT/model_load.txt"
}

agent_snapshot() {
    # The reader the agent serves, once, straight against the driver.
    PYTHONPATH=$ROOT/operator:/tmp/site${PYTHONPATH:+:$PYTHONPATH} $PY - <<'PYTHON' \
        | tee "$OUT/nvml_snapshot.json"
import socket
from pathlib import Path

from hybrid_compute.agent.nvml import load_nvml
from hybrid_compute.agent.snapshot import GpuReader, proc_cgroup_reader

snapshot = GpuReader(socket.gethostname(), load_nvml, proc_cgroup_reader(Path("/proc"))).read()
print(snapshot.model_dump_json(by_alias=True, indent=2))
raise SystemExit(0 if snapshot.available else 1)
PYTHON
}

agent_server() {
    # The agent's server as `hybrid-compute agent` starts it (without the CLI, whose
    # development commands import more than the GPU machine has): its HTTP snapshot
    # and Prometheus metrics.
    local port=19400 pid status=1
    PYTHONPATH=$ROOT/operator:/tmp/site${PYTHONPATH:+:$PYTHONPATH} $PY -c '
import socket, sys
from pathlib import Path
from hybrid_compute.agent.server import run_agent
sys.exit(run_agent(socket.gethostname(), "127.0.0.1", int(sys.argv[1]), 1.0, Path("/proc")))
' "$port" >"$WORK/agent.log" 2>&1 &
    pid=$!
    for _ in $(seq 60); do
        if curl -sf "http://127.0.0.1:$port/snapshot" -o "$WORK/agent_snapshot.json"; then
            status=0
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ "$status" -eq 0 ]; then
        cat "$WORK/agent_snapshot.json"
        echo
        curl -sf "http://127.0.0.1:$port/metrics" | grep -E '^hybrid_compute_gpu' | head -20
    else
        tail -20 "$WORK/agent.log"
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return "$status"
}

run() {
    mkdir -p "$OUT" "$WORK"
    exec > >(tee "$OUT/gpu_load_check.log") 2>&1
    log "gpu_load_check: SIZE_GIB=$SIZE_GIB ROUNDS=$ROUNDS MODES=$MODES SKIP_CUDA=$SKIP_CUDA"
    step "environment" environment
    step "python packages" python_packages
    # Writing the model is disk work, the build CPU work: run them side by side.
    log "=== model file (in the background, beside the build)"
    local model_started writer
    model_started=$(date +%s)
    write_model >"$WORK/write_model.log" 2>&1 &
    writer=$!
    step "CUDA llama-server build" build_cuda_server
    wait "$writer"
    local model_status=$?
    cat "$WORK/write_model.log"
    if [ "$model_status" -eq 0 ]; then
        SUMMARY+=("ok      model file, ${SIZE_GIB} GiB ($(( $(date +%s) - model_started ))s, beside the build)")
    else
        SUMMARY+=("FAILED  model file (exit $model_status)")
    fi
    step "host-to-device bandwidth" host_to_device
    step "load times (bench/model_load.py)" load_times
    step "NVML agent snapshot" agent_snapshot
    step "NVML agent server" agent_server
    rm -f "$MODEL"
    log "=== summary"
    printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
    if [ -f "$OUT/model_load.txt" ]; then
        sed -n '/^physics/,$p' "$OUT/model_load.txt" | tee -a "$OUT/summary.txt"
    fi
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 [prepare|run]" >&2; exit 2 ;;
esac

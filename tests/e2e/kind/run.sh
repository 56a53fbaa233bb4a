#!/usr/bin/env bash
# End-to-end on kind, for machines with Docker: build the operator image, load it
# into a fresh kind cluster, install the chart, run tests/e2e, delete the cluster.
#
#   tests/e2e/kind/run.sh            # from the repository root
#   KEEP_CLUSTER=1 tests/e2e/kind/run.sh   # leave the cluster up afterwards
#
# Needs docker, kind, helm and kubectl on PATH, and the project's .venv
# (`make install`). Pulls the pinned llama.cpp CPU image (server-b<build>) for the CPU slot.
set -euo pipefail
cd "$(dirname "$0")/../../.."

for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is not installed" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e: the Docker engine is not running" >&2; exit 2; }
[ -x .venv/bin/pytest ] || { echo "e2e: run 'make install' first" >&2; exit 2; }

cluster=hybrid-compute-e2e
image=ghcr.io/hybrid-compute/hybrid-compute:e2e
work=$(mktemp -d)
kubeconfig="$work/kubeconfig"
cleanup() {
  if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== writing a tiny random-weight model"
mkdir -p "$work/models"
.venv/bin/python -c 'import sys; from pathlib import Path; from tests.serving.tiny_gguf import write_tiny_model; write_tiny_model(Path(sys.argv[1]))' "$work/models/tiny.gguf"
chmod -R a+rX "$work/models"

echo "== creating the kind cluster"
config="$work/kind-config.yaml"
cp tests/e2e/kind/kind-config.yaml "$config"
cat >> "$config" <<YAML
    extraMounts:
      - hostPath: $work/models
        containerPath: /models
        readOnly: true
YAML
kind create cluster --name "$cluster" --config "$config" --kubeconfig "$kubeconfig" --wait 120s

echo "== building and loading $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

echo "== installing the chart"
helm install hybrid-compute charts/hybrid-compute --kubeconfig "$kubeconfig" \
  --namespace hybrid-compute --create-namespace \
  --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 5m

echo "== running tests/e2e"
HYBRID_COMPUTE_E2E_KUBECONFIG="$kubeconfig" .venv/bin/pytest tests/e2e -m e2e -v

"""What makes the local cluster serve requests: ``dev up`` and ``dev endpoint``.

``dev up`` plays the GPU node with the process node agent, writes the samples'
models (small random-weight GGUFs, once, into the cache) unless ``--models``
names a folder, runs the cloud stand-in, and adds what the Helm chart would
install beside the operator: LiteLLM's Deployment and Service and the Secrets
they read. The sample RoutePolicy's cloud models are pointed at the stand-in
(as OpenAI-compatible models: no provider is ever called) and lose their
database URL (the local cluster runs no Postgres).

LiteLLM reaches the operator (``HYBRID_COMPUTE_URL``) on its loopback API port,
and users reach LiteLLM through the node's Service proxy:
``eval "$(hybrid-compute dev endpoint)"`` sets ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` for any OpenAI client.
"""

from __future__ import annotations

import argparse
import base64
import copy
import secrets
import sys
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.api.common import API_VERSION
from hybrid_compute.api.labels import CONFIG_HASH_ANNOTATION
from hybrid_compute.dev import nodes, toolchain
from hybrid_compute.dev.cluster import ClusterError, DevCluster
from hybrid_compute.render.litellm_config import CONFIG_KEY

NAMESPACE = "default"
"""Where the samples live, and so LiteLLM (the RoutePolicy's own namespace)."""
LITELLM_NAME = "litellm"
LITELLM_PORT = 4000
LITELLM_IMAGE = "ghcr.io/berriai/litellm:v1.108.7"
MASTER_KEY_SECRET = "litellm-secrets"
MASTER_KEY_KEY = "LITELLM_MASTER_KEY"
CLOUD_KEYS_SECRET = "cloud-api-keys"
CLOUD_KEY_NAMES = ("GROQ_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY")
API_TOKEN_SECRET = "hybrid-compute-api-token"
CLOUD_PROCESS = "cloud"
LITELLM_LABELS = {"app.kubernetes.io/name": "hybrid-compute",
                  "app.kubernetes.io/component": LITELLM_NAME}


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def local_samples(samples: Sequence[dict[str, Any]], cloud_url: str) -> list[dict[str, Any]]:
    """The samples as the local cluster runs them: every cloud model of a RoutePolicy
    answered by the stand-in at ``cloud_url``, no database URL."""
    adapted = []
    for manifest in samples:
        manifest = copy.deepcopy(manifest)
        if manifest.get("kind") == "RoutePolicy":
            spec = manifest["spec"]
            for model in spec.get("cloudModels") or []:
                model["model"] = "openai/" + model["model"].split("/", 1)[-1]
                model["apiBase"] = cloud_url
            (spec.get("litellm") or {}).pop("databaseUrlSecretRef", None)
        adapted.append(manifest)
    return adapted


@dataclass(frozen=True)
class LiteLLMExtras:
    """What the chart's ``litellm.extraEnv``, ``extraVolumes`` and
    ``extraVolumeMounts`` add to LiteLLM's pod."""

    env: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    volume_mounts: tuple[dict[str, Any], ...] = ()


def litellm_objects(operator_url: str, api_token: str, master_key: str,
                    node: str, extras: LiteLLMExtras = LiteLLMExtras()) -> list[dict[str, Any]]:
    """LiteLLM's Deployment and Service as the chart makes them (pinned to the
    process node, whose agent runs the proxy), and the Secrets they read."""
    labels = LITELLM_LABELS
    container = {
        "name": LITELLM_NAME, "image": LITELLM_IMAGE,
        "args": ["--config", "/etc/litellm/config.yaml", "--port", str(LITELLM_PORT)],
        "env": [
            {"name": "HYBRID_COMPUTE_URL", "value": operator_url},
            {"name": "HYBRID_COMPUTE_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": API_TOKEN_SECRET, "key": "token"}}},
            {"name": "LITELLM_LOCAL_MODEL_COST_MAP", "value": "True"},
            *extras.env,
        ],
        "ports": [{"name": "http", "containerPort": LITELLM_PORT}],
        # The chart probes every 10 s; here a restart is noticed sooner.
        "readinessProbe": {"httpGet": {"path": "/health/liveliness", "port": "http"},
                           "periodSeconds": 2},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/litellm", "readOnly": True},
                         *extras.volume_mounts],
    }
    return [
        _secret(MASTER_KEY_SECRET, {MASTER_KEY_KEY: master_key}),
        _secret(CLOUD_KEYS_SECRET, {key: "stand-in" for key in CLOUD_KEY_NAMES}),
        _secret(API_TOKEN_SECRET, {"token": api_token}),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": LITELLM_NAME, "namespace": NAMESPACE, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": LITELLM_PORT,
                                                 "targetPort": "http"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": LITELLM_NAME, "namespace": NAMESPACE, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"automountServiceAccountToken": False,
                      "nodeSelector": {"kubernetes.io/hostname": node},
                      "containers": [container],
                      "volumes": [{"name": "config",
                                   "configMap": {"name": "litellm-config"}},
                                  *extras.volumes]}}}},
    ]


def start_litellm_once_configured(cluster: DevCluster, namespace: str = NAMESPACE,
                                  timeout: float = 60) -> None:
    """Scales a new LiteLLM Deployment to its one pod once the operator has stamped
    the template with a rendered config that names every ModelSlot of the namespace.
    Started earlier, its first pod would be replaced by that rollout a moment later,
    and two LiteLLMs would boot side by side, each taking twice as long on a small
    machine; or, while the slots are still arriving, the first pod would answer
    for a config without them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _configured(cluster, namespace):
        time.sleep(0.2)
    cluster.kubectl("scale", "deployment", LITELLM_NAME, "-n", namespace, "--replicas=1")


def _configured(cluster: DevCluster, namespace: str) -> bool:
    """The LiteLLM template carries the digest of a ConfigMap that names every
    ModelSlot alias of ``namespace``."""
    template = cluster.api_get(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{LITELLM_NAME}")["spec"]["template"]
    digest = (template["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION)
    config_maps = [volume["configMap"]["name"]
                   for volume in template["spec"].get("volumes") or [] if "configMap" in volume]
    if not digest or not config_maps:
        return False
    try:
        config_map = cluster.api_get(
            f"/api/v1/namespaces/{namespace}/configmaps/{config_maps[0]}")
    except urllib.error.HTTPError:
        return False
    if (config_map["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) != digest:
        return False
    slots = cluster.api_get(
        f"/apis/{API_VERSION}/namespaces/{namespace}/modelslots")["items"]
    config = yaml.safe_load((config_map.get("data") or {}).get(CONFIG_KEY) or "{}") or {}
    served = {entry.get("model_name") for entry in config.get("model_list") or []}
    return all(slot["spec"]["alias"] in served for slot in slots
               if (slot.get("spec") or {}).get("alias"))


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str

    def lines(self) -> str:
        return f"OPENAI_BASE_URL={self.base_url}\nOPENAI_API_KEY={self.api_key}\n"


def _master_key_file(cluster: DevCluster) -> Path:
    return cluster.folder / "litellm-master-key"


def endpoint(cluster: DevCluster) -> Endpoint:
    """LiteLLM's OpenAI-compatible address (through the Service proxy) and key."""
    port = cluster.service_proxy_port
    key_file = _master_key_file(cluster)
    if port is None or not key_file.exists():
        raise ClusterError(f"cluster {cluster.name!r} serves no LiteLLM: start it with "
                           "`hybrid-compute dev up` (with the samples and the operator)")
    return Endpoint(f"http://127.0.0.1:{port}/{NAMESPACE}/{LITELLM_NAME}/{LITELLM_PORT}/v1",
                    key_file.read_text().strip())


def up(cluster: DevCluster, repository_root: Path | None,
       extra_nodes: Sequence[tuple[str, str]] = (), samples: bool = True,
       operator: bool = True, models: Path | None = None, log: bool = True) -> float:
    """``dev up``: the cluster with its GPU node played by processes, the operator,
    and with the samples, LiteLLM and the cloud stand-in. Returns the seconds taken."""
    # Imported here: the models need numpy, the CRDs the API models; other
    # commands of the CLI need neither.
    from hybrid_compute.dev.bootstrap import bootstrap_manifests, sample_manifests
    from hybrid_compute.dev.tiny_models import ensure_sample_models

    started = time.monotonic()
    toolchain.ensure_toolchain(log=log)  # first: what is missing is said before any work
    serving = samples and operator and repository_root is not None
    if models is None and serving:
        models = ensure_sample_models(log=log)
    cluster.up(extra_nodes=extra_nodes, manifests=bootstrap_manifests(repository_root, False),
               log=log, gpu_node_backend="process", models=models)
    if operator:
        cluster.start_operator()
    if serving:
        assert repository_root is not None
        cloud_port = cluster.ensure_port(CLOUD_PROCESS)
        cluster.ensure_process(CLOUD_PROCESS, [
            sys.executable, "-m", "hybrid_compute.dev.cloud_stand_in", f"--port={cloud_port}"])
        key_file = _master_key_file(cluster)
        if not key_file.exists():
            key_file.write_text(f"sk-local-{secrets.token_urlsafe(24)}")
            key_file.chmod(0o600)
        operator_url = f"http://127.0.0.1:{cluster.operator_api_port}"
        litellm = litellm_objects(operator_url, cluster.api_token_file.read_text().strip(),
                                  key_file.read_text().strip(), nodes.DEFAULT_NODE_NAME)
        fresh = cluster.kubectl("get", "deployment", LITELLM_NAME, "-n", NAMESPACE,
                                check=False).returncode != 0
        if fresh:
            litellm[-1]["spec"]["replicas"] = 0
        cluster.apply([*litellm, *local_samples(sample_manifests(repository_root),
                                                f"http://127.0.0.1:{cloud_port}/v1")])
        if fresh:
            start_litellm_once_configured(cluster)
    elif samples and repository_root is not None:
        cluster.apply(sample_manifests(repository_root))
    return time.monotonic() - started


def print_usage(cluster: DevCluster, name_flag: str) -> None:
    """How to send requests, when this cluster serves them."""
    try:
        endpoint(cluster)
    except ClusterError:
        return
    print(f'  requests:   eval "$(hybrid-compute dev endpoint{name_flag})"   '
          "# OPENAI_BASE_URL and OPENAI_API_KEY")
    print('              curl -s "$OPENAI_BASE_URL/chat/completions" '
          '-H "Authorization: Bearer $OPENAI_API_KEY" -H "Content-Type: application/json" '
          "-d '{\"model\": \"hybrid/auto\", \"messages\": [{\"role\": \"user\", "
          "\"content\": \"hello\"}]}'")
    print("              (LiteLLM takes a minute to start; `kubectl get pods -w` shows it "
          "Ready)")
    print(f"  tour:       hybrid-compute dev tour{name_flag}   "
          "# the seed's story in about a minute: swaps, bridging, privacy")


def endpoint_command(args: argparse.Namespace) -> int:
    """``dev endpoint``: two lines a shell can eval."""
    try:
        found = endpoint(DevCluster(args.name))
    except ClusterError as error:
        print(error, file=sys.stderr)
        return 1
    sys.stdout.write(found.lines())
    return 0

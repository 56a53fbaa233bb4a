"""The process node's pure parts: which program plays an image, the command line
and environment it gets, probe thresholds, addresses (and the block each cluster
takes) and the local samples."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.dev import containers, local_serving
from hybrid_compute.dev.cluster import _free_address_block
from hybrid_compute.dev.containers import ContainerConfigError, Program
from hybrid_compute.dev.pod_worker import go_duration
from hybrid_compute.dev.probes import ProbeSpec, ProbeTracker
from hybrid_compute.dev.process_node import ADDRESSES_PER_BLOCK, loopback_address
from hybrid_compute.dev.service_proxy import endpoint_template
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children
from hybrid_compute.upstream import LITELLM_IMAGE, LLAMA_CPP


@pytest.mark.parametrize(("image", "program"), [
    ("ghcr.io/ggml-org/llama.cpp:server-cuda", Program.LLAMA_SERVER),
    ("ghcr.io/ggml-org/llama.cpp:server", Program.LLAMA_SERVER),
    (LLAMA_CPP.gpu_image, Program.LLAMA_SERVER),
    (LLAMA_CPP.cpu_image, Program.LLAMA_SERVER),
    ("ghcr.io/berriai/litellm:v1.108.7", Program.LITELLM),
    (LITELLM_IMAGE, Program.LITELLM),
    ("rhasspy/wyoming-piper:latest", Program.SIMULATED),
    ("ghcr.io/ggml-org/llama.cpp:full", Program.SIMULATED),
])
def test_program_for_image(image: str, program: Program) -> None:
    assert containers.program_for(image) is program


def _slot_pod(volume: dict[str, Any]) -> dict[str, Any]:
    container = {
        "name": "llama-server", "image": "ghcr.io/ggml-org/llama.cpp:server-cuda",
        "args": ["--model", "/models/fast.gguf", "--host", "0.0.0.0", "--port", "8080",
                 "--threads", "8", "--embedding"],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }
    return {"metadata": {"name": "fast-1", "namespace": "default", "uid": "u"},
            "spec": {"nodeName": "dreamteam", "containers": [container],
                     "volumes": [{"name": "models", **volume}]}}


@pytest.mark.parametrize("volume", [
    {"hostPath": {"path": "/models", "type": "Directory"}},
    {"persistentVolumeClaim": {"claimName": "models"}},
])
def test_llama_server_runs_the_slot_model_from_the_node_folder_on_the_pod_address(
        volume: dict[str, Any], tmp_path: Path) -> None:
    pod = _slot_pod(volume)
    models = tmp_path / "models"
    volumes = containers.pod_volumes(pod, tmp_path / "pod", models, {},
                                     host_folder=tmp_path / "host")
    container = pod["spec"]["containers"][0]
    mounts = containers.mount_paths(container, volumes)
    argv = containers.llama_server_command(Path("/bin/llama-server"), container, "127.1.0.7",
                                           mounts, threads=1)
    assert argv == ["/bin/llama-server", "--model", str(models / "fast.gguf"),
                    "--host", "127.1.0.7", "--port", "8080", "--threads", "1", "--embedding",
                    "--pooling", "mean"]


def test_a_prompt_cache_folder_is_the_nodes_own_and_outlives_the_pod(tmp_path: Path) -> None:
    spec = ModelSlotSpec.model_validate({
        "alias": "local/fast", "model": {"path": "fast.gguf"},
        "server": {"promptCache": {"enabled": True, "hostPath": "/var/cache/prompts"}}})
    template = children.pod_template("fast", spec, 1 << 30, PlanSettings())
    pod = {"metadata": {"name": "fast-1", "namespace": "default", "uid": "u"},
           "spec": template["spec"]}
    volumes = containers.pod_volumes(pod, tmp_path / "pod-1", tmp_path / "models", {},
                                     host_folder=tmp_path / "host")
    assert volumes["models"].path == tmp_path / "models"
    assert volumes["prompt-cache"].path == tmp_path / "host/var/cache/prompts"
    container = template["spec"]["containers"][0]
    argv = containers.llama_server_command(Path("s"), container, "127.1.0.2",
                                           containers.mount_paths(container, volumes), 1)
    assert argv[argv.index("--slot-save-path") + 1] == str(tmp_path / "host/var/cache/prompts")


def test_rendered_slot_args_keep_their_shape() -> None:
    """What the operator renders (flags a CPU build accepts) passes through."""
    args = ["--model", "/models/x.gguf", "--alias", "x", "--host", "0.0.0.0", "--port", "8080",
            "--n-gpu-layers", "99", "--flash-attn", "on", "--threads", "1", "--metrics"]
    argv = containers.llama_server_command(Path("s"), {"args": args}, "127.1.0.2",
                                           {"/models": Path("/m")}, threads=2)
    assert argv[1:] == ["--model", "/m/x.gguf", "--alias", "x", "--host", "127.1.0.2",
                        "--port", "8080", "--n-gpu-layers", "99", "--flash-attn", "on",
                        "--threads", "1", "--metrics"]


def test_litellm_reads_its_config_map_folder_and_binds_the_pod_address(tmp_path: Path) -> None:
    container = {"name": "litellm", "image": "ghcr.io/berriai/litellm:v1",
                 "args": ["--config", "/etc/litellm/config.yaml", "--port", "4000"],
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/litellm"}]}
    pod = {"metadata": {"name": "l", "namespace": "default"},
           "spec": {"containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": "litellm-config"}}]}}
    assert containers.referenced_objects(pod) == {("ConfigMap", "litellm-config")}
    with pytest.raises(ContainerConfigError) as missing:
        containers.pod_volumes(pod, tmp_path, tmp_path / "models", {},
                               host_folder=tmp_path / "host")
    assert missing.value.reason == "ContainerCreating"
    volumes = containers.pod_volumes(pod, tmp_path, tmp_path / "models",
                                     {("ConfigMap", "litellm-config"): {"config.yaml": "x: 1"}},
                                     host_folder=tmp_path / "host")
    assert volumes["config"].files == {"config.yaml": "x: 1"}
    argv = containers.litellm_command(Path("litellm"), container, "127.1.0.3",
                                      containers.mount_paths(container, volumes))
    assert argv == ["litellm", "--config", str(tmp_path / "volumes/config/config.yaml"),
                    "--port", "4000", "--host", "127.1.0.3"]


def test_environment_resolves_references_as_the_kubelet_does() -> None:
    container = {"env": [
        {"name": "PLAIN", "value": "v"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope",
                                                            "optional": True}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "mode"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ], "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "C_"}]}
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [container]}}
    objects: dict[tuple[str, str], dict[str, str] | None] = {
        ("Secret", "s"): {"token": "t"}, ("ConfigMap", "c"): {"mode": "m"}}
    env = containers.environment(container, pod, "127.1.0.4", objects,
                                 {"PATH": "/bin", "SECRET_OF_THE_AGENT": "x"})
    assert env == {"PATH": "/bin", "PLAIN": "v", "TOKEN": "t", "MODE": "m",
                   "IP": "127.1.0.4", "C_mode": "m"}
    with pytest.raises(ContainerConfigError, match="has no key 'token'"):
        containers.environment(container, pod, "ip", {**objects, ("Secret", "s"): {}}, {})


def test_environment_paths_under_a_mount_point_are_its_local_folder() -> None:
    """PYTHONPATH naming a mounted module's folder, as a LiteLLM custom auth module is
    found; other values, and paths outside the mounts, stay as written."""
    container = {"env": [
        {"name": "PYTHONPATH", "value": "/etc/litellm-auth:/opt/lib"},
        {"name": "CONFIG", "value": "/etc/litellm/config.yaml"},
        {"name": "URL", "value": "http://127.0.0.1:8081/etc/litellm"},
        {"name": "FROM_MAP", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "dir"}}},
    ], "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "C_"}]}
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [container]}}
    mounts = {"/etc/litellm": Path("/node/pod/config"),
              "/etc/litellm-auth": Path("/node/pod/auth")}
    env = containers.environment(container, pod, "127.1.0.4",
                                 {("ConfigMap", "c"): {"dir": "/etc/litellm-auth"}},
                                 {"PATH": "/etc/litellm-auth"}, mounts)
    assert env == {"PATH": "/etc/litellm-auth",
                   "PYTHONPATH": "/node/pod/auth:/opt/lib",
                   "CONFIG": "/node/pod/config/config.yaml",
                   "URL": "http://127.0.0.1:8081/etc/litellm",
                   "FROM_MAP": "/node/pod/auth", "C_dir": "/node/pod/auth"}


def test_probe_thresholds() -> None:
    container = {"ports": [{"name": "http", "containerPort": 8080}]}
    spec = ProbeSpec.from_spec({"httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 2, "failureThreshold": 2}, container)
    assert (spec.port, spec.path, spec.period, spec.timeout) == (8080, "/health", 2.0, 1.0)
    tracker = ProbeTracker(spec, started_at=10.0)
    assert tracker.due(10.0) and tracker.passing is None
    tracker.record(True, 10.0)
    assert tracker.passing is True and not tracker.due(11.9) and tracker.due(12.0)
    tracker.record(False, 12.0)
    assert tracker.passing is True, "one failure is below the threshold"
    tracker.record(False, 14.0)
    assert tracker.passing is False


def test_go_durations() -> None:
    assert go_duration("1.5s") == 1.5
    assert go_duration("500ms") == 0.5
    assert go_duration("1m30s") == 90
    assert go_duration("soon") is None
    assert go_duration(None) is None


def test_pod_addresses_are_distinct_loopback_addresses_within_their_block() -> None:
    addresses = [loopback_address(7, i) for i in range(ADDRESSES_PER_BLOCK)]
    assert addresses[0] == "127.7.0.1"
    assert len(set(addresses)) == len(addresses)
    assert all(a.startswith("127.7.") for a in addresses)
    assert all(0 <= int(a.split(".")[2]) < 250 for a in addresses)
    assert all(0 < int(a.split(".")[3]) < 255 for a in addresses)


def test_two_blocks_share_no_address_and_block_zero_is_refused() -> None:
    first = {loopback_address(1, i) for i in range(ADDRESSES_PER_BLOCK)}
    second = {loopback_address(2, i) for i in range(ADDRESSES_PER_BLOCK)}
    assert not first & second
    with pytest.raises(ValueError, match="between 1 and 254"):
        loopback_address(0, 0)


def test_slot_endpoints_and_drain_probe_go_through_the_service_proxy() -> None:
    from hybrid_compute.control.drain_probe import slots_url

    url = children.endpoint("default", "fast", 8080, endpoint_template(4321))
    assert url == "http://127.0.0.1:4321/default/fast/8080/v1"
    assert slots_url(url) == "http://127.0.0.1:4321/default/fast/8080/slots"


def test_local_samples_send_cloud_models_to_the_stand_in() -> None:
    policy = {"kind": "RoutePolicy", "spec": {
        "cloudModels": [{"alias": "cloud/mid", "model": "gemini/gemini-2.5-flash"}],
        "litellm": {"databaseUrlSecretRef": {"name": "x", "key": "y"}}}}
    slot = {"kind": "ModelSlot", "spec": {"alias": "local/fast"}}
    adapted = local_serving.local_samples([policy, slot], "http://127.0.0.1:9/v1")
    assert adapted[0]["spec"]["cloudModels"] == [{
        "alias": "cloud/mid", "model": "openai/gemini-2.5-flash",
        "apiBase": "http://127.0.0.1:9/v1"}]
    assert adapted[0]["spec"]["litellm"] == {}
    assert adapted[1] == slot
    assert policy["spec"]["cloudModels"][0]["model"] == "gemini/gemini-2.5-flash"


def test_a_cluster_takes_a_block_no_running_cluster_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_COMPUTE_CACHE", str(tmp_path))

    def cluster(name: str, pid: int, blocks: dict[str, int]) -> Path:
        folder = tmp_path / "clusters" / name
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps(
            {"name": name, "ports": {}, "pids": {"etcd": pid}, "address_blocks": blocks}))
        return folder

    stopped = subprocess.Popen(["true"])
    stopped.wait()
    own = cluster("own", os.getpid(), {})
    preferred = _free_address_block(own)
    assert 1 <= preferred <= 254
    cluster("stopped", stopped.pid, {"dreamteam": preferred})
    assert _free_address_block(own) == preferred, "a stopped cluster's block is free"
    cluster("running", os.getpid(), {"dreamteam": preferred})
    after = 1 + preferred % 254
    assert _free_address_block(own) == after, "a running cluster's block is held"
    assert _free_address_block(own, also_taken={after}) == 1 + after % 254, \
        "and so are its own other nodes' blocks"
    cluster("legacy", os.getpid(), {}).joinpath("state.json").write_text(json.dumps(
        {"name": "legacy", "ports": {}, "pids": {"etcd": os.getpid()},
         "node_backends": {"dreamteam": "process"}}))
    only_one_and_after_left = set(range(2, 255)) - {after}
    assert _free_address_block(own, also_taken=only_one_and_after_left) == after, \
        "a running cluster of an older version holds 127.1.x.y"

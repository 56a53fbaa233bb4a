"""The admission webhook on the real API server: the operator runs with
``--webhook-port``, kopf registers the ValidatingWebhookConfiguration, and
``kubectl apply`` of something that can never fit the simulated RTX 3090 is
refused with the numbers, as is a slot claiming an alias another slot holds,
while what fits goes through. Without the webhook the
plan reports the same as Unschedulable (tests/cluster/test_slots.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hybrid_compute.server.admission_webhook import CONFIGURATION_NAME
from tests.cluster.support import alias, slot, wait
from tests.conftest import OPERATOR_ARGS, OperatorHandle, TestCluster, operator_env

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _webhook_urls(k8s: TestCluster) -> list[str]:
    result = k8s.kubectl("get", "validatingwebhookconfiguration", CONFIGURATION_NAME,
                         "-o", "json", check=False)
    if result.returncode != 0:
        return []
    return [hook["clientConfig"].get("url", "")
            for hook in json.loads(result.stdout).get("webhooks") or []]


def _registered(k8s: TestCluster, port: int) -> bool:
    urls = _webhook_urls(k8s)
    return len(urls) == 3 and all(f"127.0.0.1:{port}/" in url for url in urls)


@pytest.fixture(scope="module")
def webhook(k8s: TestCluster, operator: OperatorHandle) -> Iterator[int]:
    """The shared operator restarted with the webhook on; restored afterwards."""
    state = k8s.cluster.state()
    assert state is not None
    port = _free_port()
    k8s.cluster.stop_operator()
    k8s.cluster.start_operator(extra_args=(*OPERATOR_ARGS, f"--webhook-port={port}"),
                               ports=state.ports, extra_env=operator_env(k8s.cluster))
    try:
        wait(lambda: _registered(k8s, port), 60, f"kopf to register its three webhooks at {port}")
        yield port
    finally:
        k8s.cluster.stop_operator()
        k8s.kubectl("delete", "validatingwebhookconfiguration", CONFIGURATION_NAME,
                    "--ignore-not-found", check=False)
        k8s.cluster.start_operator(extra_args=OPERATOR_ARGS, ports=state.ports,
                                   extra_env=operator_env(k8s.cluster))


def _apply(k8s: TestCluster, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
    body["metadata"]["namespace"] = namespace
    result = k8s.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(body), check=False)
    return result.returncode, result.stdout + result.stderr


def _on_demand(namespace: str, name: str, vram: str) -> dict[str, Any]:
    # OnDemand and never asked for: admitted objects stay in Standby and leave the
    # GPU to other tests.
    return slot(name, alias(namespace, name), vram, activation="OnDemand", idleTimeout="5m")


def test_an_oversized_slot_is_refused_with_the_numbers(
        k8s: TestCluster, webhook: int, namespace: str) -> None:
    code, output = _apply(k8s, namespace, _on_demand(namespace, "huge", "26Gi"))
    assert code != 0, f"expected a refusal, got: {output}"
    assert "denied the request" in output, output
    assert (f"ModelSlot {namespace}/huge can never fit a GPU: needs 26.0 GiB, "
            f"dreamteam/0 offers 23.0 GiB") in output, output
    missing = k8s.kubectl("get", "modelslot", "huge", "-n", namespace, check=False)
    assert missing.returncode != 0, "a refused slot must not exist"


def test_a_fitting_slot_passes(k8s: TestCluster, webhook: int, namespace: str) -> None:
    code, output = _apply(k8s, namespace, _on_demand(namespace, "quality", "20Gi"))
    assert code == 0, output
    assert k8s.kubectl("get", "modelslot", "quality", "-n", namespace).returncode == 0


def test_growing_a_slot_beyond_the_card_is_refused_but_other_updates_pass(
        k8s: TestCluster, webhook: int, namespace: str) -> None:
    code, output = _apply(k8s, namespace, _on_demand(namespace, "grows", "7Gi"))
    assert code == 0, output
    code, output = _apply(k8s, namespace, _on_demand(namespace, "grows", "30Gi"))
    assert code != 0 and "needs 30.0 GiB, dreamteam/0 offers 23.0 GiB" in output, output
    stored = json.loads(k8s.kubectl("get", "modelslot", "grows", "-n", namespace,
                                    "-o", "json").stdout)
    assert stored["spec"]["model"]["vram"] == "7Gi"
    labelled = k8s.kubectl("label", "modelslot", "grows", "-n", namespace, "team=a",
                           check=False)
    assert labelled.returncode == 0, labelled.stderr


def test_an_oversized_workload_is_refused(k8s: TestCluster, webhook: int,
                                          namespace: str) -> None:
    workload = {
        "apiVersion": "hybridcompute.io/v1alpha1",
        "kind": "GpuWorkload",
        "metadata": {"name": "train"},
        "spec": {"class": "FineTuning", "vram": "30Gi",
                 "template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "train", "image": "trainer:latest"}]}}},
    }
    code, output = _apply(k8s, namespace, workload)
    assert code != 0, output
    assert (f"GpuWorkload {namespace}/train can never fit a GPU: needs 30.0 GiB, "
            f"dreamteam/0 offers 23.0 GiB") in output, output


def test_a_slot_claiming_an_alias_another_slot_holds_is_refused_naming_both(
        k8s: TestCluster, webhook: int, namespace: str) -> None:
    shared = alias(namespace, "shared")
    holder = slot("holder", shared, "1Gi", activation="OnDemand", idleTimeout="5m")
    code, output = _apply(k8s, namespace, holder)
    assert code == 0, output
    code, output = _apply(k8s, namespace, slot("claimer", shared, "1Gi",
                                               activation="OnDemand", idleTimeout="5m"))
    assert code != 0, f"expected a refusal, got: {output}"
    assert "denied the request" in output, output
    assert (f"ModelSlot {namespace}/claimer is refused (AliasConflict): alias {shared} "
            f"is already served by ModelSlot {namespace}/holder") in output, output
    missing = k8s.kubectl("get", "modelslot", "claimer", "-n", namespace, check=False)
    assert missing.returncode != 0, "a refused slot must not exist"
    # The holder's own spec changes are judged without the holder itself.
    code, output = _apply(k8s, namespace, slot("holder", shared, "1Gi",
                                               activation="OnDemand", idleTimeout="6m"))
    assert code == 0, output

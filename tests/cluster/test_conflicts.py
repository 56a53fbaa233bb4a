"""Conflicting ModelSlots on the real control plane, with the admission webhook
off: the later of two slots that claim one alias is refused at reconcile time
(Accepted=False, phase Failed, no pod, left out of the state API and of the
LiteLLM config) while the earlier keeps serving; once the earlier is gone the later is accepted."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hybrid_compute.render.litellm_config import CONFIG_KEY
from tests.cluster.support import (
    alias,
    apply,
    deployment_replicas,
    phase,
    read,
    slot,
    slot_pods,
    wait,
    wait_phases,
)
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster


def _condition(k8s: TestCluster, namespace: str, name: str, kind: str) -> dict[str, Any]:
    conditions = (read(k8s, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def _listed(operator: OperatorHandle, namespace: str) -> dict[str, dict[str, Any]]:
    status, state = operator.call("GET", "/v1/state")
    assert status == 200, state
    return {s["name"]: s for s in state["slots"] if s["namespace"] == namespace}


def _served(k8s: TestCluster, namespace: str, model_alias: str) -> list[str] | None:
    """The local models the namespace's LiteLLM config serves under ``model_alias``."""
    maps = k8s.core.list_namespaced_config_map(namespace).items
    data = next((m.data for m in maps if m.metadata.name == "litellm-config"), None)
    if not data:
        return None
    config = yaml.safe_load(data[CONFIG_KEY])
    return [m["litellm_params"]["model"] for m in config["model_list"]
            if m["model_name"] == model_alias]


def test_the_later_of_two_slots_with_one_alias_is_refused_until_the_earlier_goes(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    shared = alias(namespace, "shared")
    policy = {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "RoutePolicy",
              "metadata": {"name": "default"}, "spec": {}}
    apply(k8s, namespace, [policy, slot("first", shared, "1Gi")])
    wait_phases(k8s, namespace, {"first": "Ready"})
    apply(k8s, namespace, [slot("second", shared, "1Gi")])

    wait(lambda: _condition(k8s, namespace, "second", "Accepted").get("status") == "False",
         30, "the second slot to be refused")
    accepted = _condition(k8s, namespace, "second", "Accepted")
    assert accepted["reason"] == "AliasConflict", accepted
    assert f"ModelSlot {namespace}/first" in accepted["message"], accepted
    assert shared in accepted["message"], accepted
    wait_phases(k8s, namespace, {"second": "Failed"}, timeout=30)
    assert not [p for p in slot_pods(k8s, namespace, "second")
                if p.status.phase == "Running"], "a refused slot must not run"
    second_deployments = k8s.apps.list_namespaced_deployment(
        namespace, field_selector="metadata.name=second").items
    assert not second_deployments or deployment_replicas(k8s, namespace, "second") == 0
    assert phase(k8s, namespace, "first") == "Ready"
    assert _condition(k8s, namespace, "first", "Accepted").get("status") == "True"
    assert [p.status.phase for p in slot_pods(k8s, namespace, "first")] == ["Running"]
    listed = wait(lambda: (mine := _listed(operator, namespace)).get("first") and mine,
                  30, "the state API to list the first slot")
    assert "second" not in listed, listed
    served = wait(lambda: _served(k8s, namespace, shared), 30, "the LiteLLM config")
    assert len(served) == 1 and "first" in served[0], served

    k8s.kubectl("delete", "modelslot", "first", "-n", namespace)
    wait(lambda: _condition(k8s, namespace, "second", "Accepted").get("status") == "True",
         30, "the second slot to be accepted once the first is gone")
    wait_phases(k8s, namespace, {"second": "Ready"}, timeout=30)
    assert [p.status.phase for p in slot_pods(k8s, namespace, "second")] == ["Running"]
    wait(lambda: (models := _served(k8s, namespace, shared)) and "second" in models[0]
         and len(models) == 1, 30, "the LiteLLM config to serve the second slot")

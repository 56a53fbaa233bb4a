"""Each kind's condition types are a fixed list: the CRD documents it (the
``conditions`` field's description) and the plan writes no other type."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from hybrid_compute.api.gpuworkload import WORKLOAD_CONDITION_TYPES, GpuWorkloadStatus
from hybrid_compute.api.modelslot import SLOT_CONDITION_TYPES, ModelSlotStatus
from hybrid_compute.api.routepolicy import (
    ROUTE_POLICY_CONDITION_TYPES,
    RoutePolicySpec,
    RoutePolicyStatus,
)
from hybrid_compute.plan import plan
from hybrid_compute.plan.view import PolicyInfo
from tests.simworld import SEED_SLOTS, World, slot, workload


@pytest.mark.parametrize("status_model, types", [
    (ModelSlotStatus, SLOT_CONDITION_TYPES),
    (GpuWorkloadStatus, WORKLOAD_CONDITION_TYPES),
    (RoutePolicyStatus, ROUTE_POLICY_CONDITION_TYPES),
])
def test_the_crd_lists_the_condition_types(status_model: type[BaseModel],
                                           types: tuple[str, ...]) -> None:
    description = status_model.model_fields["conditions"].description
    assert description == f"{', '.join(types[:-1])} and {types[-1]}."


def _types(status: dict[str, Any]) -> set[str]:
    return {condition["type"] for condition in status.get("conditions", [])}


def test_every_condition_type_the_plan_writes_is_in_the_documented_list() -> None:
    world = World(
        [slot(name, spec) for name, spec in SEED_SLOTS.items()]
        + [slot("huge", {"alias": "local/huge", "model": {"path": "h.gguf", "vram": "200Gi"}})],
        workloads=[workload("speech", {"class": "TTS", "vram": "4Gi"}),
                   workload("tune", {"class": "FineTuning", "vram": "22Gi"}),
                   workload("too-large", {"class": "Other", "vram": "200Gi"})])
    policies = (PolicyInfo("lab", "hybrid", "uid-hybrid", 1, RoutePolicySpec()),
                PolicyInfo("lab", "broken", "uid-broken", 1, None, invalid_reason="bad spec"))
    written: dict[str, set[str]] = {"slots": set(), "workloads": set(), "policies": set()}
    for step in range(60):
        if step in (10, 40):
            world.demand("local/quality")
        if step == 25:
            world.demand("local/quality-alt")
        result = world.step()
        written["slots"] |= {t for d in result.slots for t in _types(d.status)}
        written["workloads"] |= {t for d in result.workloads for t in _types(d.status)}
        routed = plan(replace(world.view(), policies=policies), world.now)
        written["policies"] |= {t for d in routed.policies for t in _types(d.status)}

    assert {"Accepted", "Fits", "Resident", "Swapping", "Ready"} <= written["slots"]
    assert written["slots"] <= set(SLOT_CONDITION_TYPES)
    assert {"Accepted", "Fits", "Admitted"} <= written["workloads"]
    assert written["workloads"] <= set(WORKLOAD_CONDITION_TYPES)
    assert {"Accepted", "Ready"} <= written["policies"]
    assert written["policies"] <= set(ROUTE_POLICY_CONDITION_TYPES)

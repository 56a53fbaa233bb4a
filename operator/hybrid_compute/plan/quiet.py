"""Quiet slots: the OnDemand slots that nothing keeps wanted and that hold nothing,
most of a large install, whose part in a plan is known without planning them again.

Such a slot is no candidate for a GPU, and its decision is the kept one of a settled
slot (:func:`.slots.settled_inputs`). Both stay what they were while the slot record,
its Deployment record and the router's demand for its alias are the objects they
were, nothing evaluates it or restores its prompt caches, and the settings, the GPU
nodes and the model headers are unchanged. The clock cannot wake it: without pods
its last request's idle time ran out at a moment that does not move, and a clock
set back plans every slot again. A plan then costs a look-up per quiet slot rather
than the demand and decision passes, which on a large install read every slot on
every pass while almost none of them changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from hybrid_compute.plan.holdings import Holdings, Key, Owned
from hybrid_compute.plan.model_vram import VramChoice
from hybrid_compute.plan.view import DeploymentInfo, SlotInfo, View

if TYPE_CHECKING:
    from hybrid_compute.plan.outputs import EventIntent, SlotDecision


class _Decided(Protocol):
    @property
    def slot(self) -> SlotInfo: ...


class QuietSlot(NamedTuple):
    """What a quiet slot's part in the previous plan was made from, and its VRAM
    figure and last request, which later passes read."""

    slot: SlotInfo
    deployment: DeploymentInfo | None
    demand: datetime.datetime | None
    """The router's demand for its alias then (none, or one long idle)."""
    choice: VramChoice
    requested: datetime.datetime | None
    decision: SlotDecision | None = None
    """The decision a plan handed out for it, made from its kept one, while its status
    reads no clock: the next plans hand out the same object. It keeps the moment it
    was made, which nothing but a status that reads the clock would show."""
    events: tuple[EventIntent, ...] = ()


class QuietSlots:
    """The quiet slots of the previous plan, and what they were quiet under."""

    __slots__ = ("_at", "_context", "_entries")

    def __init__(self) -> None:
        self._entries: dict[Key, QuietSlot] = {}
        self._context: tuple[object, ...] | None = None
        self._at: datetime.datetime | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def hands_out_again(self, decision: _Decided) -> bool:
        """Whether ``decision`` is the one the next plan hands out again for its slot."""
        entry = self._entries.get(decision.slot.key)
        return entry is not None and entry.decision is decision

    def find(self, view: View, owned: Owned, now: datetime.datetime) -> dict[Key, QuietSlot]:
        """The slots of ``view`` still quiet as they were in the previous plan."""
        context = self._context
        if (context is None or self._at is None or now < self._at
                or context[0] is not view.settings or context[1] != view.nodes
                or context[2] != view.model_headers):
            self._entries = {}
            return {}
        entries = self._entries
        deployments, pods, demands = owned.deployments, owned.slot_pods, view.demands
        evaluations, prompt_caches = view.evaluations, view.prompt_caches
        found: dict[Key, QuietSlot] = {}
        for slot in view.slots:
            key = slot.key
            entry = entries.get(key)
            if entry is None or entry.slot is not slot or key in pods:
                continue
            assert slot.spec is not None  # only valid specs are kept
            if (demands.get(slot.spec.alias) != entry.demand or key in evaluations
                    or key in prompt_caches):
                continue
            deployment = deployments.get(key)
            if deployment is not entry.deployment:
                if deployment != entry.deployment:
                    continue
                # Stored anew but equal (after a status event of the Deployment): held
                # as observed now, to be found by identity from the next plan on.
                entry = entry._replace(deployment=deployment)
            found[key] = entry
        return found

    def remember(self, view: View, owned: Owned, holdings: Holdings, idle: Iterable[Key],
                 still_quiet: dict[Key, QuietSlot], vram: dict[Key, VramChoice],
                 requests: dict[Key, datetime.datetime | None],
                 settled: Callable[[SlotInfo], bool],
                 made: Mapping[Key, tuple[SlotDecision, list[EventIntent]]],
                 timeless: Callable[[SlotDecision], bool], now: datetime.datetime) -> None:
        """The quiet slots for the next plan: those still quiet, and the ``idle`` ones
        of this plan (no candidate, no pods) whose decision was kept as settled; with
        the decisions ``made`` for them in this plan from their kept ones, to hand out
        again when their status reads no clock (``timeless``)."""
        slots = {slot.key: slot for slot in view.slots} if idle else {}
        entries = dict(still_quiet)
        for key, (decision, events) in made.items():
            entry = entries.get(key)
            if entry is not None:
                entries[key] = entry._replace(
                    decision=decision if timeless(decision) else None, events=tuple(events))
        for key in idle:
            slot = slots[key]
            deployment = owned.deployments.get(key)
            spec = slot.spec
            if (spec is None or key in holdings.slots or key in view.evaluations
                    or key in view.prompt_caches or not settled(slot)
                    or (deployment is not None and deployment.replicas > 0)):
                continue
            handed = made.get(key)
            entries[key] = QuietSlot(slot, deployment, view.demands.get(spec.alias),
                                     vram[key], requests.get(key),
                                     handed[0] if handed and timeless(handed[0]) else None,
                                     tuple(handed[1]) if handed else ())
        self._entries = entries
        self._context = (view.settings, view.nodes, view.model_headers)
        self._at = now

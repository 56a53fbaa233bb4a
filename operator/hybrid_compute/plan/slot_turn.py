"""One slot's decision in the making: what the branches of the slot state machine
(:mod:`.slots`, :mod:`.drain`) share, and the one way they build a decision."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from hybrid_compute.api.modelslot import ModelFetchProgress, PromptCacheStatus, SwapPhases
from hybrid_compute.plan.evaluation import Gate
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.model_vram import VramChoice
from hybrid_compute.plan.outputs import (
    CompletedSwap,
    ConditionUpdate,
    EventIntent,
    EventType,
    Phase,
    SlotDecision,
)
from hybrid_compute.plan.view import SlotInfo, View


@dataclass(slots=True)
class SlotTurn:
    """The slot, what this pass found about it so far, and the Events it posts."""

    slot: SlotInfo
    view: View
    now: datetime.datetime
    memo: PlanMemo
    gate: Gate | None
    pinned_node: str | None
    events: list[EventIntent] = field(default_factory=list)
    updates: dict[str, Any] = field(default_factory=dict)
    """Status fields this pass writes."""
    choice: VramChoice | None = None
    """The VRAM figure of a GPU slot."""
    template_vram: int | None = None
    fetch: ModelFetchProgress | None = None
    prompt_cache: PromptCacheStatus | None = None
    """The slot's prompt caches, with the outcomes no status holds yet."""

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(EventIntent(self.slot.namespace, self.slot.name, type_, reason,
                                       message))

    def decide(self, phase: Phase, reason: str, replicas: int,
               conditions: list[ConditionUpdate], *, gpu: str | None = None,
               node: str | None = None, vram: int | None = None,
               waiting_on: tuple[str, ...] = (), cut_requests: int = 0,
               started_waiting: bool = False, completed_swap: CompletedSwap | None = None,
               phases_recorded: SwapPhases | None = None) -> SlotDecision:
        """The decision, with what the evaluation gate adds to every one."""
        choice = self.choice
        if choice is not None and choice.bytes is not None and choice.source != "Spec":
            # A figure the user did not give is named, so a surprising one is traced.
            reason = f"{reason}; VRAM {choice.detail}"
        updates = self.updates
        if self.slot.status.phase == "Ready" and phase != "Ready":
            updates["served_until"] = self.now
        gate = self.gate
        decision = SlotDecision(
            self.slot, self.view.settings, self.now, phase, reason, replicas, self.memo,
            gpu=gpu, node=node, vram=vram, template_vram=self.template_vram,
            pinned_node=self.pinned_node, status_updates=updates,
            condition_updates=conditions, waiting_on=waiting_on, cut_requests=cut_requests,
            fetch=self.fetch, completed_swap=completed_swap,
            phases_recorded=phases_recorded, started_waiting=started_waiting)
        if gate is not None:
            # The gate's fields first, overridden by this pass's, as {**gate, **updates}.
            merged = gate.status_updates()
            merged.update(updates)
            decision.status_updates = merged
            evaluated = gate.conditions(phase)
            if evaluated:
                decision.condition_updates = [*conditions, *evaluated]
            decision.served = gate.served
            decision.evaluate = gate.request
            self.events.extend(gate.events)
        return decision

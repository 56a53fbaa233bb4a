"""Pure decisions: the View (the snapshot ``plan`` reads), ``plan(view, now)`` and
the rules it is made of. Nothing here does I/O."""

from hybrid_compute.plan.planner import Plan, SlotDecision, plan

__all__ = ["Plan", "SlotDecision", "plan"]

"""Pure decisions: the View (the snapshot ``plan`` reads), ``plan(view, now)`` and
the rules it is made of. Nothing here does I/O.

``plan`` (:mod:`.planner`) runs its steps in order, each in a module of its own:

1. :mod:`.holdings`: what exists and what each GPU holds now (the :mod:`.ledger`).
2. :mod:`.evaluation`: the gate picks the model each slot's pods run.
3. :mod:`.demand` and :mod:`.workloads`: who wants a GPU, at what rank.
4. :mod:`.placement`: each in rank order takes a place where it fits, or waits.
5. :mod:`.placement`: who gives way to whom.
6. :mod:`.slots` (with :mod:`.drain` and :mod:`.swaps`): each slot's decision.
7. :mod:`.workloads`: each GpuWorkload's decision.
8. :mod:`.routing`: each RoutePolicy's decision.

The results are :mod:`.outputs`; :mod:`.memo` carries rendered templates from one
plan to the next.
"""

from hybrid_compute.plan.planner import Plan, SlotDecision, plan

__all__ = ["Plan", "SlotDecision", "plan"]

"""What a plan remembers from one pass to the next: results computed from parsed
objects that the caller keeps between passes, keyed by the identity of those objects.

Rendering and hashing a pod template dominates the cost of planning an unchanged
slot, and the control loop keeps the parsed specs of unchanged objects from one
pass to the next, so a result computed from the same spec object is reused. Small
results that many objects share (the conditions a reason makes) are kept by value:
a decision then holds the same condition objects as the plan before, which leaves
the garbage collector fewer new objects to go through. The caller owns the memo (the
loop keeps one; ``plan`` without one starts afresh), which keeps the decision code
free of module state.
"""

from __future__ import annotations

import dataclasses
import datetime
import operator
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, cast

from hybrid_compute.plan import conditions, evaluation, model_vram, warm_standby
from hybrid_compute.plan.quiet import QuietSlots
from hybrid_compute.render import children

if TYPE_CHECKING:
    from pydantic import BaseModel

    from hybrid_compute.api.gpuworkload import GpuWorkloadSpec
    from hybrid_compute.api.modelslot import ModelHistoryEntry, ModelSlotSpec, ModelSource
    from hybrid_compute.plan.evaluation import EvaluationResult
    from hybrid_compute.plan.model_vram import ModelFileKey, VramChoice
    from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent, SlotDecision
    from hybrid_compute.plan.settings import PlanSettings
    from hybrid_compute.plan.view import SlotInfo, View
    from hybrid_compute.plan.vram import ModelShape
    from hybrid_compute.plan.warm_standby import RankedSlot, SlotOutcome, WarmFile, WarmPart

KeyT = TypeVar("KeyT", bound=Hashable)
ValueT = TypeVar("ValueT")
ArgsT = TypeVarTuple("ArgsT")


class IdentityCache(Generic[ValueT]):
    """One result per key object, for one variant of the other inputs.

    The entry keeps a reference to its key object, so the object outlives the entry
    and its id cannot be reused by another object while the entry exists. Entries
    are filed under ``home(key)``, the key's id unless told otherwise: a cache keyed
    by the records of objects files them under the object's name, so a record stored
    anew replaces its predecessor's entry rather than leaving it behind until the
    cache is full. Bounded: when ``limit`` entries are held, the cache starts over."""

    __slots__ = ("_entries", "_home", "_limit")

    def __init__(self, limit: int, home: Callable[[Any], Hashable] = id) -> None:
        self._entries: dict[Hashable, tuple[object, object, ValueT]] = {}
        self._limit = limit
        self._home = home

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: object, variant: Hashable, compute: Callable[[*ArgsT], ValueT],
            *args: *ArgsT) -> ValueT:
        """The result for ``key`` and ``variant``, ``compute(*args)`` on the first ask
        (arguments rather than a closure: a hit then allocates nothing)."""
        entry = self._entries.get(self._home(key))
        if entry is not None and entry[0] is key and (entry[1] is variant
                                                      or entry[1] == variant):
            return entry[2]
        value = compute(*args)
        if len(self._entries) > self._limit:
            self._entries.clear()
        self._entries[self._home(key)] = (key, variant, value)
        return value


class ValueCache(Generic[KeyT, ValueT]):
    """One result per key value (a small one: strings, tuples of them); bounded as
    :class:`IdentityCache` is."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int) -> None:
        self._entries: dict[KeyT, ValueT] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: KeyT, compute: Callable[[*ArgsT], ValueT], *args: *ArgsT) -> ValueT:
        """The result for ``key``, ``compute(*args)`` on the first ask."""
        found = self._entries.get(key, _MISSING)
        if found is not _MISSING:
            return cast("ValueT", found)
        value = compute(*args)
        if len(self._entries) > self._limit:
            self._entries.clear()
        self._entries[key] = value
        return value


_MISSING = object()


def _again(kept: SlotDecision, events: tuple[EventIntent, ...], now: datetime.datetime
           ) -> tuple[SlotDecision, list[EventIntent]]:
    """A kept decision made again at ``now``, and its Events."""
    again = kept.at(now)
    again.kept = kept
    return again, list(events)
_slot_key = operator.attrgetter("key")
"""Where the caches keyed by slot records file them: one entry per slot."""


def _same_objects(inputs: tuple[object, ...], before: tuple[object, ...]) -> bool:
    """Every input is the object it was before; a tuple input counts as the same when
    it holds the same objects (the caller may build a new tuple of kept records)."""
    if len(inputs) != len(before):
        return False
    for now, then in zip(inputs, before, strict=True):
        if now is then:
            continue
        if not (isinstance(now, tuple) and isinstance(then, tuple) and len(now) == len(then)
                and all(a is b for a, b in zip(now, then, strict=True))):
            return False
    return True


def _same_specs(slots: tuple[SlotInfo, ...], before: tuple[SlotInfo, ...]) -> bool:
    """Each slot is the record it was before, or a record of the same object (uid,
    name, creation) holding the same spec object: only its status changed."""
    return slots is before or (len(slots) == len(before) and all(
        slot is held or (slot.spec is held.spec and slot.uid == held.uid
                         and slot.key == held.key and slot.created == held.created)
        for slot, held in zip(slots, before, strict=True)))


class PlanMemo:
    """The results one plan hands to the next."""

    __slots__ = ("_conditions", "_endpoints", "_file_keys", "_fingerprints", "_fits",
                 "_gate_served", "_last", "_served", "_settings", "_settled",
                 "_slot_templates", "_statuses", "_vram_choices", "_warm_entries",
                 "_warm_file_keys", "_warm_lists", "_warm_order", "_warm_parts",
                 "_warm_parts_before", "_workload_templates", "quiet")

    def __init__(self) -> None:
        self._slot_templates: IdentityCache[dict[str, Any]] = IdentityCache(8192)
        self._workload_templates: IdentityCache[dict[str, Any]] = IdentityCache(4096)
        self._fingerprints: IdentityCache[str] = IdentityCache(8192)
        self._served: IdentityCache[ModelSlotSpec] = IdentityCache(1024)
        self._gate_served: IdentityCache[ModelSlotSpec] = IdentityCache(16384, _slot_key)
        self._file_keys: IdentityCache[ModelFileKey | None] = IdentityCache(16384)
        self._vram_choices: IdentityCache[VramChoice] = IdentityCache(16384, _slot_key)
        self._fits: IdentityCache[ConditionUpdate] = IdentityCache(16384)
        self._conditions: ValueCache[Hashable, tuple[ConditionUpdate, ...]] = ValueCache(16384)
        self._warm_file_keys: IdentityCache[ModelFileKey | None] = IdentityCache(16384)
        self._warm_entries: IdentityCache[RankedSlot] = IdentityCache(16384, _slot_key)
        self._warm_lists: dict[Hashable, tuple[list[ModelFileKey],
                                               tuple[WarmFile, ...]]] = {}
        self._warm_order: list[RankedSlot] | None = None
        self._warm_parts: dict[int, tuple[SlotOutcome, WarmPart | None, datetime.datetime,
                                          datetime.datetime | None]] = {}
        self._warm_parts_before = self._warm_parts
        self._settings: PlanSettings | None = None
        self._last: dict[str, tuple[tuple[object, ...], object]] = {}
        self._settled: dict[tuple[str, str], tuple[SlotInfo, tuple[object, ...],
                                                   SlotDecision, tuple[EventIntent, ...]]] = {}
        self._statuses: dict[Hashable, tuple[BaseModel, object, dict[str, Any]]] = {}
        self._endpoints: IdentityCache[str] = IdentityCache(16384, _slot_key)
        self.quiet = QuietSlots()
        """The quiet slots of the previous plan (:mod:`.quiet`)."""

    def known_settings(self, view: View) -> View:
        """``view`` with the previous plan's settings object when the two are equal.
        The results here are keyed by the settings too, and a key found by identity
        is not compared field by field again for every object."""
        previous = self._settings
        if previous is view.settings:
            return view
        if previous is not None and previous == view.settings:
            return dataclasses.replace(view, settings=previous)
        self._settings = view.settings
        return view

    def while_unchanged(self, name: str, inputs: tuple[object, ...],
                        compute: Callable[[*ArgsT], ValueT], *args: *ArgsT) -> ValueT:
        """``compute(*args)``, a pure function of ``inputs``; the previous plan's result
        for ``name`` while every input is the same object (or a tuple of the same
        objects) as then. One result per name is kept."""
        last = self._last.get(name)
        if last is not None and _same_objects(inputs, last[0]):
            return cast("ValueT", last[1])
        value = compute(*args)
        self._last[name] = (inputs, value)
        return value

    def while_specs_unchanged(self, name: str, slots: tuple[SlotInfo, ...],
                              others: tuple[object, ...],
                              compute: Callable[[*ArgsT], ValueT], *args: *ArgsT) -> ValueT:
        """``compute(*args)``, a pure function of ``others`` and of each slot's spec,
        name, uid and creation (not its status); the previous plan's result for
        ``name`` while ``others`` are the same objects and each slot is the same
        record, or a record of the same object holding the same spec object."""
        last = self._last.get(name)
        if last is not None and _same_objects(others, cast("tuple[object, ...]", last[0][1])) \
                and _same_specs(slots, cast("tuple[SlotInfo, ...]", last[0][0])):
            return cast("ValueT", last[1])
        value = compute(*args)
        self._last[name] = ((slots, others), value)
        return value

    def settled_slot(self, slot: SlotInfo, inputs: tuple[object, ...],
                     now: datetime.datetime,
                     decide: Callable[[*ArgsT], tuple[SlotDecision, list[EventIntent]]],
                     *args: *ArgsT) -> tuple[SlotDecision, list[EventIntent]]:
        """``decide(*args)``, the decision of a settled slot and its Events
        (:func:`hybrid_compute.plan.slots.settled_inputs` says what it reads besides
        the slot record): the previous plan's, made again at ``now``, while ``slot``
        is the same object and ``inputs`` are equal. Kept as it was decided, before
        the plan adds to it."""
        entry = self._settled.get(slot.key)
        if entry is not None and entry[0] is slot and entry[1] == inputs:
            if not all(map(operator.is_, inputs, entry[1])):
                # An input stored anew but equal (a Deployment record after a status
                # event) is held as observed now, to be found by identity on the next
                # plan rather than compared field by field on every plan.
                self._settled[slot.key] = (slot, inputs, entry[2], entry[3])
            return _again(entry[2], entry[3], now)
        decision, events = decide(*args)
        if len(self._settled) > 16384:
            self._settled.clear()
        self._settled[slot.key] = (slot, inputs, decision.at(decision.now), tuple(events))
        return decision, events

    def is_settled(self, slot: SlotInfo) -> bool:
        """Whether ``slot``'s decision is kept as a settled one (:meth:`settled_slot`)."""
        entry = self._settled.get(slot.key)
        return entry is not None and entry[0] is slot

    def kept_settled(self, slot: SlotInfo, now: datetime.datetime
                     ) -> tuple[SlotDecision, list[EventIntent]] | None:
        """The kept decision of settled ``slot``, made again at ``now``, without
        looking at its inputs: for a slot whose inputs are known to be the same
        (:mod:`.quiet`). None when none is kept for this record."""
        entry = self._settled.get(slot.key)
        if entry is None or entry[0] is not slot:
            return None
        return _again(entry[2], entry[3], now)

    def status(self, owner: Hashable, previous: BaseModel, updates: Sequence[ConditionUpdate],
               generation: int, now: datetime.datetime, fields: dict[str, Any]
               ) -> dict[str, Any]:
        """:func:`hybrid_compute.plan.conditions.render_status` of ``owner``'s status,
        the same dict as the previous plan's while the stored status is the same
        object and the updates and fields are equal. Only a render that no condition
        changed is kept: that one reads no clock. Most statuses are unchanged on most
        passes, and the diff then compares a status with itself rather than a fresh
        render."""
        variant = (tuple(updates), generation, fields)
        entry = self._statuses.get(owner)
        if entry is not None and entry[0] is previous and entry[1] == variant:
            return entry[2]
        rendered, timeless = conditions.render_status_once(previous, updates, generation,
                                                           now, fields)
        if timeless:
            if len(self._statuses) > 16384:
                self._statuses.clear()
            self._statuses[owner] = (previous, variant, rendered)
        return rendered

    def renders_timeless(self, decision: SlotDecision) -> bool:
        """Whether ``decision``'s status reads no clock (no condition changes against
        the stored status): one :meth:`status` keeps. Known only once a status of the
        stored one was rendered timeless (the diff renders what it writes or
        compares): a status never rendered is not rendered here to find out."""
        entry = self._statuses.get(("ModelSlot", *decision.slot.key))
        if entry is None or entry[0] is not decision.slot.status:
            return False
        return decision.status is entry[2]

    def endpoint(self, slot: SlotInfo, port: int, template: str) -> str:
        """:func:`hybrid_compute.render.children.endpoint` of a slot."""
        return self._endpoints.get(slot, (port, template), children.endpoint, slot.namespace,
                                   slot.name, port, template)

    def slot_template(self, name: str, spec: ModelSlotSpec, vram: int,
                      settings: PlanSettings) -> dict[str, Any]:
        """A slot's pod template (:func:`hybrid_compute.render.children.pod_template`)."""
        return self._slot_templates.get(spec, (vram, settings, name), children.pod_template,
                                        name, spec, vram, settings)

    def workload_template(self, name: str, spec: GpuWorkloadSpec, settings: PlanSettings
                          ) -> dict[str, Any]:
        """A workload's pod template (:func:`hybrid_compute.render.children.workload_template`)."""
        runtime_class = settings.gpu_runtime_class
        return self._workload_templates.get(spec, (name, runtime_class),
                                            children.workload_template, name, spec,
                                            runtime_class)

    def model_fingerprint(self, model: ModelSource) -> str:
        """:func:`hybrid_compute.plan.evaluation.model_fingerprint`."""
        return self._fingerprints.get(model, None, evaluation.model_fingerprint, model)

    def served_spec(self, spec: ModelSlotSpec, entry: ModelHistoryEntry) -> ModelSlotSpec:
        """``spec`` running an earlier model (:func:`.evaluation.with_model`); the same
        object for the same inputs, so the template memo keeps working for it."""
        return self._served.get(spec, entry.fingerprint, evaluation.with_model, spec, entry)

    def gate_served(self, slot: SlotInfo, result: EvaluationResult | None,
                    now: datetime.datetime) -> ModelSlotSpec:
        """:func:`hybrid_compute.plan.evaluation.served_spec`, once per slot object and
        evaluation result (the clock plays no part in it)."""
        return self._gate_served.get(slot, result, evaluation.served_spec, slot, result, now,
                                     self)

    def model_file_key(self, spec: ModelSlotSpec, settings: PlanSettings
                       ) -> ModelFileKey | None:
        """:func:`hybrid_compute.plan.model_vram.model_file_key`."""
        return self._file_keys.get(spec, settings, model_vram.model_file_key, spec, settings)

    def vram_choice(self, slot: SlotInfo, spec: ModelSlotSpec, settings: PlanSettings,
                    header: ModelShape | str | None, running: int | None) -> VramChoice:
        """:func:`hybrid_compute.plan.model_vram.choose` for the slot's stored status."""
        return self._vram_choices.get(slot, (spec, settings, header, running),
                                      model_vram.choose, spec, slot.status, settings, header,
                                      running)

    def fits_condition(self, choice: VramChoice) -> ConditionUpdate:
        """The Fits condition of a GPU slot sized by ``choice`` (one from
        :meth:`vram_choice`, which hands out the same object while nothing changes)."""
        return self._fits.get(choice, None, model_vram.fits_condition, choice)

    def conditions(self, key: Hashable,
                   compute: Callable[[*ArgsT], tuple[ConditionUpdate, ...]], *args: *ArgsT
                   ) -> tuple[ConditionUpdate, ...]:
        """Conditions that ``key`` (what ``args`` hold) says all of, made once: while a
        slot's reason stays the same, its decisions share them rather than each plan
        holding new ones (fewer objects for the garbage collector to go through)."""
        return self._conditions.get(key, compute, *args)

    def warm_file_key(self, spec: ModelSlotSpec, settings: PlanSettings
                      ) -> ModelFileKey | None:
        """:func:`hybrid_compute.plan.warm_standby.warm_file_key`."""
        return self._warm_file_keys.get(spec, settings, warm_standby.warm_file_key, spec,
                                        settings)

    def warm_entry(self, slot: SlotInfo, key: ModelFileKey, phase: str,
                   requested: datetime.datetime | None, template_vram: int | None,
                   now: datetime.datetime) -> RankedSlot:
        """:func:`hybrid_compute.plan.warm_standby.ranked_entry`, the previous plan's
        while the slot, its phase, last request and size are the same and its request
        is as recent as it was (the rest of the rank reads nothing else)."""
        recent = requested is not None and now - requested < warm_standby.RECENT_DEMAND
        return self._warm_entries.get(slot, (key, phase, requested, template_vram, recent),
                                      warm_standby.ranked_entry, slot, key, phase, requested,
                                      template_vram, now)

    def warm_parts_start(self) -> None:
        """A new plan's warm lists: the parts of the last one are what it reads."""
        self._warm_parts_before, self._warm_parts = self._warm_parts, {}

    def warm_part(self, outcome: SlotOutcome, now: datetime.datetime,
                  compute: Callable[[*ArgsT], tuple[WarmPart | None,
                                                    datetime.datetime | None]],
                  *args: *ArgsT) -> WarmPart | None:
        """A slot's part in the warm lists (``compute(*args)``, with until when it
        holds); the last plan's for the very decision it was worked out for, a quiet
        slot's handed out again, while the moment it holds until has not come (and
        the clock did not go back). Only such decisions are kept: the others are new
        objects on every plan."""
        if not self.quiet.hands_out_again(outcome):
            return compute(*args)[0]
        held = self._warm_parts_before.get(id(outcome))
        if (held is not None and held[0] is outcome and held[2] <= now
                and (held[3] is None or now < held[3])):
            self._warm_parts[id(outcome)] = held
            return held[1]
        part, until = compute(*args)
        self._warm_parts[id(outcome)] = (outcome, part, now, until)
        return part

    def warm_order(self, ranked: list[RankedSlot]) -> list[RankedSlot]:
        """:func:`hybrid_compute.plan.warm_standby.in_rank_order` from the previous
        plan's order; the same list while no entry changed."""
        order = warm_standby.in_rank_order(ranked, self._warm_order)
        self._warm_order = order
        return order

    def warm_files(self, owner: Hashable, keys: list[ModelFileKey]
                   ) -> tuple[WarmFile, ...]:
        """A warm list (:func:`hybrid_compute.plan.warm_standby.warm_files`); the
        previous plan's list for the same ``owner`` (a node, or a shape of node) when
        it names the same files, so an unchanged list is not built again."""
        previous = self._warm_lists.get(owner)
        if previous is not None and previous[0] == keys:
            return previous[1]
        files = warm_standby.warm_files(keys)
        if len(self._warm_lists) > 4096:
            self._warm_lists.clear()
        self._warm_lists[owner] = (keys, files)
        return files

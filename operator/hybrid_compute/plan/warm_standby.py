"""Which model files each GPU node's agent keeps warm in its page cache, and how
warm a slot's file is. Pure: ``plan`` calls it, the GPU telemetry sends the lists.

A slot that is not loaded (Standby, Pending, Unloading) starts its next load by
mapping its GGUF file. When the node's page cache already holds the file, that
load reads memory instead of disk, which is most of a swap's time for a large
model on a slow disk. The agent on each node holds what its RAM budget allows
(``hybrid-compute agent --page-cache-budget``), first to last in the order given
here: the order is the bet on which model is asked for next.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import math
import operator
import posixpath
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from hybrid_compute.api.modelslot import ModelPageCache, ModelSlotSpec
from hybrid_compute.plan.model_vram import ModelFileKey, model_file_key
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import GpuNode, SlotInfo, View

if TYPE_CHECKING:
    from hybrid_compute.plan.memo import PlanMemo

WARM_PHASES = frozenset({"Standby", "Pending", "Unloading"})
"""Phases of a slot whose model is not loaded (Unloading: not for long)."""
RECENT_DEMAND = datetime.timedelta(hours=1)
"""Agents work in sessions: a model asked for within the hour is likely asked for
again soon, while an older request says little more than the slot's priority."""


class WarmFile(NamedTuple):
    """One entry of a node's warm list, as ``PUT /warm`` names it (a named tuple: a
    large install's lists hold thousands, made again whenever their order changes)."""

    host_path: str
    """The node folder (the slot's ``spec.model.hostPath``)."""
    path: str
    """The file, relative to that folder."""
    priority: float
    """Higher first; the list is already in this order."""


_new_warm_file = functools.partial(tuple.__new__, WarmFile)


class SlotOutcome(Protocol):
    """What the ordering reads of a slot's decision (``plan.SlotDecision``)."""

    @property
    def slot(self) -> SlotInfo: ...

    @property
    def phase(self) -> str: ...

    @property
    def node(self) -> str | None: ...

    @property
    def template_vram(self) -> int | None: ...


def warm_file_key(spec: ModelSlotSpec, settings: PlanSettings) -> ModelFileKey | None:
    """The file the agent is asked to keep warm for a slot; None for a CPU slot, a
    model on a PersistentVolumeClaim (the agent does not mount it) or a path that
    leaves the model folder."""
    if spec.device != "gpu":
        return None
    key = model_file_key(spec, settings)
    if key is None:
        return None
    # Two spellings of one file would be one entry to the agent and two to us.
    path = posixpath.normpath(key[1])
    if path == ".." or path.startswith("../"):
        # Outside the folder: the agent would refuse the whole list for it.
        return None
    return key[0].rstrip("/") or "/", path


_Rank = tuple[int, int, int, float, int, float]
RankedSlot = tuple[_Rank, tuple[str, str], ModelFileKey, ModelSlotSpec, int | None]
"""A not-loaded slot's demand rank, key, file, spec and template VRAM."""
_by_rank = operator.itemgetter(0, 1)
"""Sorts :data:`RankedSlot` entries by rank, then by slot: the two are unique per slot."""


def demand_rank(spec: ModelSlotSpec, phase: str, requested: datetime.datetime | None,
                now: datetime.datetime) -> _Rank:
    """Sorts a not-loaded slot by how soon it is likely to load (lowest first):

    1. Pending: the plan already wants it and waits for room, so it is the next load.
    2. The default slot: the GPU returns to it whenever the slot that took it goes
       idle, which makes it the surest load after that.
    3. Slots asked for within :data:`RECENT_DEMAND`, the most recent first.
    4. The rest by ``spec.priority`` (a slow load hurts most where the user said the
       model matters most), then by their last request.
    """
    recent = requested is not None and now - requested < RECENT_DEMAND
    stamp = requested.timestamp() if requested is not None else -math.inf
    return (0 if phase == "Pending" else 1,
            0 if spec.default else 1,
            0 if recent else 1,
            -stamp if recent else 0.0,
            -spec.priority,
            -stamp)


def ranked_entry(slot: SlotInfo, key: ModelFileKey, phase: str,
                 requested: datetime.datetime | None, template_vram: int | None,
                 now: datetime.datetime) -> RankedSlot:
    """A not-loaded slot's entry in the order of its :func:`demand_rank`."""
    assert slot.spec is not None
    return (demand_rank(slot.spec, phase, requested, now), slot.key, key, slot.spec,
            template_vram)


class WarmPart(NamedTuple):
    """A slot's part in the warm lists: its ranked entry while not loaded, else the
    node whose page cache already holds its file (``ranked`` None)."""

    ranked: RankedSlot | None
    node: str | None
    key: ModelFileKey


def _part(outcome: SlotOutcome, settings: PlanSettings,
          file_key: Callable[[ModelSlotSpec, PlanSettings], ModelFileKey | None],
          entry_for: Callable[[SlotInfo, ModelFileKey, str, datetime.datetime | None,
                               int | None, datetime.datetime], RankedSlot],
          requested: Callable[[SlotInfo], datetime.datetime | None],
          now: datetime.datetime) -> tuple[WarmPart | None, datetime.datetime | None]:
    """A slot's :class:`WarmPart` (None without a file to keep warm), and until when it
    holds: the moment its request stops being recent, or None."""
    slot = outcome.slot
    spec = slot.spec
    key = file_key(spec, settings) if spec is not None else None
    if spec is None or key is None:
        return None, None
    phase = outcome.phase
    if phase not in WARM_PHASES:
        return WarmPart(None, outcome.node, key), None
    when = requested(slot)
    until = when + RECENT_DEMAND if when is not None and now - when < RECENT_DEMAND else None
    return WarmPart(entry_for(slot, key, phase, when, outcome.template_vram, now),
                    None, key), until


def warm_lists(view: View, outcomes: Iterable[SlotOutcome],
               requested: Callable[[SlotInfo], datetime.datetime | None],
               now: datetime.datetime, memo: PlanMemo | None = None
               ) -> dict[str, tuple[WarmFile, ...]]:
    """Per GPU node, the model files of its not-loaded GPU slots, most likely first.

    A slot's file is listed on every node it could load on, except where a loaded
    slot serves the same file (llama-server's mapping keeps it resident there).
    Every GPU node gets a list, an empty one included, so an agent lets go of
    files no longer wanted. ``requested`` gives a slot's last request; ``memo``
    keeps the lists of the previous plan, which an unchanged list is taken from.
    """
    settings = view.settings
    file_key = memo.warm_file_key if memo is not None else warm_file_key
    entry_for = memo.warm_entry if memo is not None else ranked_entry
    loaded: dict[str, set[ModelFileKey]] = {}
    ranked: list[RankedSlot] = []
    if memo is not None:
        memo.warm_parts_start()
    for outcome in outcomes:
        part = (memo.warm_part(outcome, now, _part, outcome, settings, file_key, entry_for,
                               requested, now)
                if memo is not None
                else _part(outcome, settings, file_key, entry_for, requested, now)[0])
        if part is None:
            continue
        if part.ranked is not None:
            ranked.append(part.ranked)
        elif part.node is not None:
            loaded.setdefault(part.node, set()).add(part.key)
    # The memo hands out the same entry while a slot's rank holds, so on most plans
    # the order, and each shape's files, are the previous plan's.
    in_order = memo.warm_order(ranked) if memo is not None else in_rank_order(ranked)
    # Nodes of one shape (devices and their memory) take the same files: each
    # shape's list is worked out once, and a node leaves out what it has loaded.
    files_for = memo.warm_files if memo is not None else _unmemoized_files
    by_shape: dict[tuple[int, int], tuple[list[ModelFileKey], set[ModelFileKey],
                                          tuple[WarmFile, ...]]] = {}
    lists: dict[str, tuple[WarmFile, ...]] = {}
    for node in sorted(view.nodes, key=lambda n: n.name):
        shape = (node.gpu_count, node.gpu_memory_bytes)
        if shape not in by_shape:
            keys, listed = (
                memo.while_unchanged(f"warm files {shape}", (in_order, settings),
                                     _loadable_files, node, in_order, settings)
                if memo is not None else _loadable_files(node, in_order, settings))
            by_shape[shape] = keys, listed, files_for(shape, keys)
        keys, listed, files = by_shape[shape]
        skipped = loaded.get(node.name)
        if skipped and not skipped.isdisjoint(listed):
            files = files_for(node.name, [key for key in keys if key not in skipped])
        lists[node.name] = files
    return lists


def in_rank_order(ranked: list[RankedSlot], previous: list[RankedSlot] | None = None
                  ) -> list[RankedSlot]:
    """``ranked`` sorted by rank. With the ``previous`` order, the entries that are
    still there keep their order (rank and slot are unique per slot) and the new
    ones are put in their place: a plan changes a few entries of thousands, and a
    sort costs most of this pass on a large install."""
    if previous is None:
        return _sorted_by_rank(ranked)
    current = {id(entry) for entry in ranked}
    order = [entry for entry in previous if id(entry) in current]
    if len(order) == len(ranked):
        return previous if len(order) == len(previous) else order
    if len(ranked) - len(order) > len(ranked) // 4:
        return _sorted_by_rank(ranked)
    held = {id(entry) for entry in order}
    for entry in ranked:
        if id(entry) not in held:
            bisect.insort(order, entry, key=_by_rank)
    return order


def _sorted_by_rank(ranked: list[RankedSlot]) -> list[RankedSlot]:
    return sorted(ranked, key=_by_rank)


def _loadable_files(node: GpuNode, in_order: list[RankedSlot], settings: PlanSettings
                    ) -> tuple[list[ModelFileKey], set[ModelFileKey]]:
    """The files of the slots that could load on ``node``, each once, in rank order."""
    keys: list[ModelFileKey] = []
    listed: set[ModelFileKey] = set()
    room = node.gpu_memory_bytes - settings.headroom_bytes
    devices = node.gpu_count
    for _rank, _slot, key, spec, vram in in_order:
        # The node has the devices the slot needs and, when its VRAM is known, room for it.
        if (key not in listed and devices >= spec.gpus
                and (not vram or vram // spec.gpus <= room)):
            keys.append(key)
            listed.add(key)
    return keys, listed


def warm_files(keys: Sequence[ModelFileKey]) -> tuple[WarmFile, ...]:
    """A node's warm list for its files in order: the priority falls along the list."""
    count = len(keys)
    # Made by tuple.__new__ through map, without a Python call per entry: a large
    # install's lists hold thousands and are made again whenever their order changes.
    return tuple(map(_new_warm_file, [(host, path, float(count - index))
                                      for index, (host, path) in enumerate(keys)]))


def _unmemoized_files(_owner: Hashable, keys: Sequence[ModelFileKey]
                      ) -> tuple[WarmFile, ...]:
    return warm_files(keys)


def page_cache_status(view: View, slot: SlotInfo, node: str | None,
                      memo: PlanMemo | None = None) -> ModelPageCache | None:
    """How much of the slot's model file a node's page cache holds, for its status.

    ``node`` is where the slot runs or its Deployment points; without one, the node
    that holds most of the file (where a load would be fastest). None when no agent
    reports the file there. ``memo`` keeps the slot's file from one plan to the next.
    """
    spec = slot.spec
    if spec is None or not view.page_cache:
        return None
    key = (memo.warm_file_key if memo is not None else warm_file_key)(spec, view.settings)
    reports = view.page_cache.get(key) if key is not None else None
    if not reports:
        return None
    if node is None:
        node = min(reports, key=lambda name: (-(reports[name].resident_bytes or 0), name))
    residency = reports.get(node)
    if residency is None:
        return None
    return ModelPageCache(node=node, resident_percent=residency.resident_percent,
                          size_bytes=residency.size_bytes, state=residency.state)

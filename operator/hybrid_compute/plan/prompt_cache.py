"""Prompt caches kept across swaps (``spec.server.promptCache``): which caches a slot
saves before it is unloaded, which it restores once it is loaded again, which files
its folder keeps within the slot's budget, and how the outcome is recorded.

llama-server saves and restores the KV cache of one of its parallel sequences
(``POST /slots/{id}?action=save|restore`` with a file name in its
``--slot-save-path``); :mod:`hybrid_compute.control.prompt_cache` makes those calls
and hands back what came of them (:class:`SaveOutcome`, :class:`RestoreOutcome`),
which the next plan records in the slot's status.

A cache is only right for the model and the flags it was computed with. Each file
carries a key of those (:func:`cache_key`) and the model as llama-server described
it when saving (:func:`model_fingerprint`); a slot restores only files with its own
key, saved on the node it runs on, into a server describing the same model.

Pure: specs, statuses and outcomes in; requests, records and Events out.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.modelslot import (
    ModelSlotSpec,
    ModelSlotStatus,
    PromptCacheFile,
    PromptCacheRestore,
    PromptCacheSave,
    PromptCacheStatus,
)
from hybrid_compute.plan.outputs import EventIntent
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children

MODEL_FIELDS = ("vocab_type", "n_vocab", "n_ctx", "n_ctx_train", "n_embd", "n_params",
                "size", "ftype")
"""What llama-server's ``/v1/models`` says about its model (``meta``) that tells one
model file, and one context size, from another."""
MAX_FAILURES = 16
MAX_RECORDED = 64
"""Files one slot's status lists (its schema's limit)."""


def cache_key(spec: ModelSlotSpec, settings: PlanSettings) -> str:
    """Fingerprint of what a cache is computed from: the llama-server image (its file
    format), the model file, and the flags that shape the cache. extraArgs count
    whole: some of them (cache types, RoPE scaling) change what a cache holds."""
    server, model = spec.server, spec.model
    image = server.image or (settings.gpu_image if spec.device == "gpu"
                             else settings.cpu_image)
    source = model.source.model_dump(mode="json") if model.source else None
    text = json.dumps([image, children.model_file(spec, settings), model.host_path,
                       model.persistent_volume_claim, source, server.ctx_size,
                       server.parallel, server.flash_attn, server.extra_args])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(meta: Mapping[str, Any]) -> str:
    """Fingerprint of a loaded model from llama-server's description of it."""
    text = json.dumps({name: meta.get(name) for name in MODEL_FIELDS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_name(namespace: str, slot: str, key: str, sequence: int) -> str:
    """One file per slot, key and sequence: a newer save of the same cache replaces
    the older one. Slots sharing the node's folder never share a name."""
    return f"{namespace}.{slot}.{key}.{sequence}.bin"


@dataclass(frozen=True)
class SaveRequest:
    """Save the caches of a drained slot's server before it is unloaded."""

    namespace: str
    name: str
    endpoint: str
    """The slot's OpenAI-compatible base URL."""
    node: str | None
    """Where the server runs: the folder that gets the files."""
    key: str
    files: tuple[tuple[int, str], ...]
    """(sequence, file name) to save."""
    recorded: tuple[PromptCacheFile, ...]
    """What the folder held for the slot before this save."""
    budget_bytes: int


@dataclass(frozen=True)
class RestoreRequest:
    """Restore the caches saved for the slot's key into its freshly loaded server."""

    namespace: str
    name: str
    endpoint: str
    files: tuple[PromptCacheFile, ...]


@dataclass(frozen=True)
class SaveOutcome:
    request: SaveRequest
    at: datetime.datetime
    seconds: float
    saved: tuple[PromptCacheFile, ...]
    """Caches written in this save (empty sequences are not kept)."""
    kept: tuple[PromptCacheFile, ...]
    """What the folder holds for the slot now, oldest first."""
    evicted: tuple[str, ...]
    """Files given up for the budget (emptied: llama-server cannot delete)."""
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreOutcome:
    request: RestoreRequest
    at: datetime.datetime
    seconds: float
    restored: tuple[tuple[PromptCacheFile, int], ...]
    """Each cache restored and the tokens it brought back."""
    failures: tuple[tuple[PromptCacheFile, str], ...] = ()
    """Each cache that failed or was refused, and why."""


@dataclass(frozen=True)
class PromptCacheOutcomes:
    """The last save and restore of one slot that its status may not hold yet."""

    save: SaveOutcome | None = None
    restore: RestoreOutcome | None = None

    def recorded_in(self, status: ModelSlotStatus) -> bool:
        record = status.prompt_cache
        last_save = record.last_save if record else None
        last_restore = record.last_restore if record else None
        return ((self.save is None or (last_save is not None
                                       and last_save.at == self.save.at))
                and (self.restore is None or (last_restore is not None
                                              and last_restore.at == self.restore.at)))


# ------------------------------------------------------------------ decisions


def save_request(namespace: str, name: str, spec: ModelSlotSpec,
                 record: PromptCacheStatus | None, settings: PlanSettings, node: str | None
                 ) -> SaveRequest | None:
    """What a drained slot saves before its server on ``node`` stops; None when its
    prompt cache is off. ``record`` is what the slot's status holds."""
    wanted = spec.server.prompt_cache
    if not wanted.enabled:
        return None
    key = cache_key(spec, settings)
    # Files on another node are out of reach: the record starts again on this one.
    recorded = tuple(record.files) if record is not None and record.node == node else ()
    files = tuple((sequence, file_name(namespace, name, key, sequence))
                  for sequence in range(spec.server.parallel))
    return SaveRequest(namespace, name, children.endpoint(
        namespace, name, spec.server.port, settings.endpoint_template), node, key, files,
        recorded, parse_bytes(wanted.max_size))


def restore_request(namespace: str, name: str, spec: ModelSlotSpec,
                    record: PromptCacheStatus | None, settings: PlanSettings,
                    node: str | None) -> RestoreRequest | None:
    """What a slot that just became Ready on ``node`` restores before traffic reaches
    it: the caches saved there for its key, one per sequence; None when there are
    none or its prompt cache is off."""
    if not spec.server.prompt_cache.enabled or record is None or record.node != node:
        return None
    key = cache_key(spec, settings)
    files = tuple(f for f in record.files
                  if f.key == key and f.sequence < spec.server.parallel and f.tokens > 0)
    if not files:
        return None
    return RestoreRequest(namespace, name, children.endpoint(
        namespace, name, spec.server.port, settings.endpoint_template), files)


def refusal(file: PromptCacheFile, model: str) -> str | None:
    """Why a cache may not be restored into a server whose model fingerprint is
    ``model``; None when it may."""
    if file.model != model:
        return "the model file differs from the one the cache was saved with"
    return None


def within_budget(files: Sequence[PromptCacheFile], budget_bytes: int
                  ) -> tuple[tuple[PromptCacheFile, ...], tuple[PromptCacheFile, ...]]:
    """(kept, evicted), both oldest first: the newest files while they fit the
    budget; a file larger than the whole budget is never kept."""
    kept: list[PromptCacheFile] = []
    used = 0
    for file in sorted(files, key=lambda f: f.saved_at, reverse=True):
        if used + file.bytes <= budget_bytes and len(kept) < MAX_RECORDED:
            kept.append(file)
            used += file.bytes
    kept_names = {f.name for f in kept}
    evicted = [f for f in files if f.name not in kept_names]
    return (tuple(sorted(kept, key=lambda f: f.saved_at)),
            tuple(sorted(evicted, key=lambda f: f.saved_at)))


def merged(recorded: Sequence[PromptCacheFile], saved: Sequence[PromptCacheFile]
           ) -> list[PromptCacheFile]:
    """The record after a save: a file saved again replaces its older entry."""
    names = {f.name for f in saved}
    return [*(f for f in recorded if f.name not in names), *saved]


# ------------------------------------------------------------------ records


def record(namespace: str, name: str, alias: str, previous: PromptCacheStatus | None,
           outcomes: PromptCacheOutcomes) -> tuple[PromptCacheStatus | None,
                                                   list[EventIntent]]:
    """The status after the outcomes the slot's status does not hold yet, and the
    Warning Events for what failed."""
    status = previous
    events: list[EventIntent] = []
    save, restore = outcomes.save, outcomes.restore
    if save is not None and (status is None or status.last_save is None
                             or status.last_save.at != save.at):
        status = _with_save(status, save)
        if save.failures:
            events.append(EventIntent(namespace, name, "Warning", "PromptCacheSaveFailed",
                                      f"Saving the prompt caches of {alias} failed: "
                                      + "; ".join(save.failures)))
    if restore is not None and (status is None or status.last_restore is None
                                or status.last_restore.at != restore.at):
        status = _with_restore(status, restore)
        if restore.failures:
            events.append(EventIntent(
                namespace, name, "Warning", "PromptCacheRestoreFailed",
                f"Skipped {len(restore.failures)} prompt cache(s) of {alias}, which serves "
                "without them: " + "; ".join(_failure(f, why) for f, why in restore.failures)))
    return status, events


def _with_save(status: PromptCacheStatus | None, save: SaveOutcome) -> PromptCacheStatus:
    summary = PromptCacheSave(
        at=save.at, seconds=round(save.seconds, 3), files=len(save.saved),
        bytes=sum(f.bytes for f in save.saved), evicted=len(save.evicted),
        failed=list(save.failures[:MAX_FAILURES]) or None)
    base = status or PromptCacheStatus()
    return base.model_copy(update={"node": save.request.node, "files": list(save.kept),
                                   "last_save": summary})


def _with_restore(status: PromptCacheStatus | None, restore: RestoreOutcome
                  ) -> PromptCacheStatus:
    failed = {f.name for f, _ in restore.failures}
    summary = PromptCacheRestore(
        at=restore.at, seconds=round(restore.seconds, 3), files=len(restore.restored),
        tokens=sum(tokens for _, tokens in restore.restored),
        failed=[_failure(f, why) for f, why in restore.failures][:MAX_FAILURES] or None)
    base = status or PromptCacheStatus()
    # A cache that failed once is dropped: the next save replaces its file.
    return base.model_copy(update={"files": [f for f in base.files if f.name not in failed],
                                   "last_restore": summary})


def _failure(file: PromptCacheFile, why: str) -> str:
    return f"sequence {file.sequence} ({file.name}): {why}"

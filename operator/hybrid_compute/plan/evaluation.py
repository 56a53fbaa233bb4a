"""The evaluation gate: a new model answers ``spec.evaluation``'s prompts before the
router sends it traffic, and a model that fails is rolled back to the previous one.

Pure parts, which ``plan`` uses: fingerprints of a model and of the criteria, the
checks of one answer (server error, latency, valid JSON, generation speed), the
verdict over all prompts with the pass ratio, and :class:`Gate`, which decides per
slot which model the pod template runs (the spec's, or the previous one while the
spec's is rejected), the slot's model history and its phase once the pod is Ready.
The operator never changes a spec (Argo CD owns it): a rejection lives in the status.

The I/O part, sending the prompts to a slot's endpoint, is
:mod:`hybrid_compute.control.evaluator`'s.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hybrid_compute.api.common import parse_duration
from hybrid_compute.api.modelslot import (
    HISTORY_LENGTH,
    EvaluationOutcome,
    EvaluationPrompt,
    EvaluationRecord,
    ModelEvaluation,
    ModelHistoryEntry,
    ModelSlotSpec,
    ModelSource,
    SlotPhase,
)
from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent
from hybrid_compute.plan.view import SlotInfo, View
from hybrid_compute.render import children

if TYPE_CHECKING:
    from hybrid_compute.plan.memo import PlanMemo

CheckName = Literal["serverError", "latency", "json", "tokensPerSecond"]
MAX_FAILED_CHECKS = 16
_MODEL_IDENTITY = ("path", "served_name", "host_path", "persistent_volume_claim", "source")


# ------------------------------------------------------------------ fingerprints


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(model: ModelSource) -> str:
    """Identifies the model a slot serves: file, where it comes from, served name. Its
    VRAM figure and quantisation label do not make it another model."""
    return _digest(model.model_dump(mode="json", include=set(_MODEL_IDENTITY),
                                    exclude_none=True))


def criteria_fingerprint(evaluation: ModelEvaluation) -> str:
    """Identifies spec.evaluation: a model rejected under other criteria is tried again."""
    return _digest(evaluation.model_dump(mode="json", by_alias=True))


# ------------------------------------------------------------------ checks


@dataclass(frozen=True)
class Reply:
    """What one evaluation request got."""

    status: int | None
    """The HTTP status; None when no answer came."""
    seconds: float
    """From sending the request to the end of the answer (or giving up)."""
    body: Mapping[str, Any] | None = None
    error: str = ""
    """Why there is no usable answer: the connection error or the server's message."""
    timed_out: bool = False


@dataclass(frozen=True)
class Check:
    name: CheckName
    passed: bool
    detail: str


@dataclass(frozen=True)
class PromptVerdict:
    label: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{self.label}: {c.name} {c.detail}" for c in self.checks if not c.passed]


def seconds_text(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _completion(body: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    choices = (body or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice: Mapping[str, Any] = choices[0]
    return choice if isinstance(choice.get("message"), dict) else None


def check_server_error(reply: Reply) -> Check:
    """The server answered 2xx with a chat completion."""
    if reply.status is None:
        return Check("serverError", False, f"no answer: {reply.error or 'connection failed'}")
    if reply.status >= 400:
        return Check("serverError", False, f"HTTP {reply.status}: {reply.error or 'error'}"
                     [:200])
    if _completion(reply.body) is None:
        return Check("serverError", False, f"HTTP {reply.status} without a chat completion")
    return Check("serverError", True, f"HTTP {reply.status}")


def check_latency(reply: Reply, bound: float) -> Check:
    """The whole answer arrived within ``bound`` seconds."""
    if reply.timed_out:
        return Check("latency", False, f"no answer within {seconds_text(reply.seconds)} "
                                       f"(bound {seconds_text(bound)})")
    passed = reply.seconds <= bound
    return Check("latency", passed, f"{seconds_text(reply.seconds)} "
                                    f"{'<=' if passed else '>'} {seconds_text(bound)}")


def check_json(reply: Reply) -> Check:
    """The answer's text parses as JSON."""
    choice = _completion(reply.body) or {}
    content = choice.get("message", {}).get("content")
    if not isinstance(content, str) or not content.strip():
        return Check("json", False, "empty answer where JSON was asked for")
    try:
        json.loads(content)
    except json.JSONDecodeError as error:
        cut = " (cut off at maxTokens)" if choice.get("finish_reason") == "length" else ""
        return Check("json", False, f"not valid JSON{cut}: {error.msg} at {error.pos}")
    return Check("json", True, "valid JSON")


def tokens_per_second(reply: Reply) -> float | None:
    """Generation speed: llama-server's own timing when the answer has it (it leaves
    out the prompt's processing), else completion tokens over the request's time."""
    body = reply.body or {}
    timings = body.get("timings")
    if isinstance(timings, dict):
        rate = timings.get("predicted_per_second")
        if isinstance(rate, int | float) and rate > 0 and math.isfinite(rate):
            return float(rate)
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or tokens <= 0 or reply.seconds <= 0:
        return None
    return tokens / reply.seconds


def check_tokens_per_second(reply: Reply, floor: float) -> Check:
    rate = tokens_per_second(reply)
    if rate is None:
        return Check("tokensPerSecond", False, "no tokens generated")
    passed = rate >= floor
    return Check("tokensPerSecond", passed,
                 f"{rate:.1f} tokens/s {'>=' if passed else '<'} {floor:g}")


def prompt_label(prompt: EvaluationPrompt, index: int) -> str:
    return prompt.name or f"prompt {index + 1}"


def latency_bound(prompt: EvaluationPrompt, evaluation: ModelEvaluation) -> float:
    return parse_duration(prompt.max_latency or evaluation.max_latency).total_seconds()


def judge(prompt: EvaluationPrompt, index: int, evaluation: ModelEvaluation,
          reply: Reply) -> PromptVerdict:
    """The checks of one answer. An answer that did not come only fails its latency;
    a server error leaves nothing else to check."""
    label = prompt_label(prompt, index)
    bound = latency_bound(prompt, evaluation)
    if reply.timed_out:
        return PromptVerdict(label, (check_latency(reply, bound),))
    server = check_server_error(reply)
    if not server.passed:
        return PromptVerdict(label, (server,))
    checks = [server, check_latency(reply, bound)]
    if prompt.expect_json:
        checks.append(check_json(reply))
    floor = prompt.min_tokens_per_second or evaluation.min_tokens_per_second
    if floor:
        checks.append(check_tokens_per_second(reply, floor))
    return PromptVerdict(label, tuple(checks))


def required_prompts(total: int, pass_ratio: float) -> int:
    """Prompts that must pass: the pass ratio of them, rounded up."""
    return max(1, math.ceil(total * pass_ratio - 1e-9))


@dataclass(frozen=True)
class EvaluationResult:
    """One evaluation of one model under one set of criteria."""

    model: str
    criteria: str
    served_name: str
    prompts: tuple[PromptVerdict, ...]
    required: int
    finished: datetime.datetime
    seconds: float = 0.0

    @property
    def passed_prompts(self) -> int:
        return sum(1 for p in self.prompts if p.passed)

    @property
    def passed(self) -> bool:
        return self.passed_prompts >= self.required

    def failed_checks(self) -> list[str]:
        failures = [f for p in self.prompts for f in p.failures()]
        if len(failures) > MAX_FAILED_CHECKS:
            left = len(failures) - MAX_FAILED_CHECKS + 1
            failures = [*failures[:MAX_FAILED_CHECKS - 1], f"and {left} more"]
        return failures

    def summary(self) -> str:
        return (f"{self.passed_prompts} of {len(self.prompts)} prompts passed, "
                f"{self.required} needed")


def verdict(evaluation: ModelEvaluation, replies: Sequence[Reply], model: str,
            served_name: str, finished: datetime.datetime, seconds: float = 0.0
            ) -> EvaluationResult:
    """Every prompt's checks and whether enough prompts passed."""
    prompts = tuple(judge(p, i, evaluation, r)
                    for i, (p, r) in enumerate(zip(evaluation.prompts, replies, strict=True)))
    return EvaluationResult(model, criteria_fingerprint(evaluation), served_name, prompts,
                            required_prompts(len(prompts), evaluation.pass_ratio), finished,
                            seconds)


def report(result: EvaluationResult) -> str:
    """Each prompt's checks and the verdict, for ``hybrid-compute eval``."""
    lines = []
    for prompt in result.prompts:
        lines.append(f"{prompt.label}: {'PASS' if prompt.passed else 'FAIL'}")
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<16} {c.detail}"
                  for c in prompt.checks]
    lines.append(f"verdict: {'PASSED' if result.passed else 'FAILED'} ({result.summary()})")
    return "\n".join(lines)


# ------------------------------------------------------------------ the gate


@dataclass(frozen=True)
class EvaluationRequest:
    """A plan's wish: evaluate this model of this slot under these criteria."""

    namespace: str
    name: str
    alias: str
    served_name: str
    model: str
    criteria: str
    evaluation: ModelEvaluation


def model_label(model: ModelSource) -> str:
    """How reasons and Events name a model: its served name, with the file when the
    name does not say which file it is."""
    stem = model.path.rsplit("/", 1)[-1].removesuffix(".gguf")
    name = model.served_name
    return stem if name is None or name == stem else f"{name} ({model.path})"


def with_model(spec: ModelSlotSpec, entry: ModelHistoryEntry) -> ModelSlotSpec:
    """``spec`` running an earlier model."""
    return spec.model_copy(update={"model": entry.model})


def rollback_target(history: Sequence[ModelHistoryEntry], rejected: str
                    ) -> ModelHistoryEntry | None:
    """The newest other model that passed, or ran without an evaluation."""
    return next((e for e in reversed(history) if e.fingerprint != rejected
                 and e.evaluation in ("Passed", "NotEvaluated")), None)


@dataclass(slots=True)
class Gate:
    """What the evaluation gate decides for one slot in one plan.

    Built before the slot's pods are looked at (it says which model the pod template
    runs); :meth:`live` then turns a Ready pod into Evaluating, Failed or Ready."""

    slot: SlotInfo
    spec: ModelSlotSpec
    wanted: str
    """Fingerprint of spec.model."""
    criteria: str | None
    """Fingerprint of spec.evaluation; None without one."""
    history: tuple[ModelHistoryEntry, ...]
    """The status's history with this pass's changes; a tuple, replaced on change,
    so a slot without history costs no list of its own."""
    record: EvaluationRecord | None
    served: ModelSlotSpec = field(init=False)
    """The spec the pod template is rendered from."""
    rejected: bool = False
    rollback: ModelHistoryEntry | None = None
    """The earlier model served while spec.model is rejected."""
    events: tuple[EventIntent, ...] = ()
    request: EvaluationRequest | None = None

    def __post_init__(self) -> None:
        self.served = self.spec

    @classmethod
    def build(cls, slot: SlotInfo, result: EvaluationResult | None,
              now: datetime.datetime, memo: PlanMemo) -> Gate:
        spec = slot.spec
        assert spec is not None
        status = slot.status
        gate = cls(slot, spec, memo.model_fingerprint(spec.model),
                   criteria_fingerprint(spec.evaluation) if spec.evaluation else None,
                   tuple(status.history or ()), status.evaluation)
        if result is not None:
            gate._take(result, now)
        record = gate.record
        gate.rejected = (record is not None and record.result == "Failed"
                         and gate.criteria is not None
                         and (record.model, record.criteria) == (gate.wanted, gate.criteria))
        if gate.rejected:
            gate.rollback = rollback_target(gate.history, gate.wanted)
            if gate.rollback is not None:
                gate.served = memo.served_spec(spec, gate.rollback)
        return gate

    @property
    def alias(self) -> str:
        return self.spec.alias

    @property
    def wanted_name(self) -> str:
        return model_label(self.spec.model)

    @property
    def served_fingerprint(self) -> str:
        return self.rollback.fingerprint if self.rollback is not None else self.wanted

    def _event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events += (EventIntent(self.slot.namespace, self.slot.name, type_, reason,
                                    message),)

    def _replace_top(self, entry: ModelHistoryEntry) -> None:
        self.history = (*self.history[:-1], entry)

    def _take(self, result: EvaluationResult, now: datetime.datetime) -> None:
        """Records a finished evaluation of the model the slot is evaluating."""
        top = self.history[-1] if self.history else None
        if (self.criteria is None or (result.model, result.criteria) != (
                self.wanted, self.criteria) or top is None or top.fingerprint != self.wanted
                or top.evaluation != "Evaluating"):
            return
        failed = result.failed_checks()
        self.record = EvaluationRecord(
            model=result.model, served_name=result.served_name, criteria=result.criteria,
            result="Passed" if result.passed else "Failed",
            passed_prompts=result.passed_prompts, prompts=len(result.prompts),
            failed_checks=failed or None, finished=result.finished)
        name = self.wanted_name
        if result.passed:
            self._replace_top(top.model_copy(update={"evaluation": "Passed",
                                                     "failed_checks": None}))
            self._event("Normal", "EvaluationPassed",
                        f"Model {name} of {self.alias} passed evaluation ({result.summary()})")
            return
        target = rollback_target(self.history[:-1], self.wanted)
        self._replace_top(top.model_copy(update={
            "evaluation": "Failed", "failed_checks": failed,
            "until": now if target is not None else None}))
        then = (f"rolling back to {model_label(target.model)}" if target is not None
                else "no earlier model to roll back to: the slot stays not Ready")
        self._event("Warning", "EvaluationFailed",
                    f"Model {name} of {self.alias} failed evaluation ({result.summary()}): "
                    f"{'; '.join(failed)}; {then}")

    def _append(self, now: datetime.datetime) -> None:
        """The served model answers for the first time since another one did."""
        fingerprint = self.served_fingerprint
        earlier = next((e for e in reversed(self.history) if e.fingerprint == fingerprint
                        and e.evaluation in ("Passed", "NotEvaluated")), None)
        outcome: EvaluationOutcome
        if earlier is not None:
            outcome = earlier.evaluation
        else:
            outcome = "NotEvaluated" if self.criteria is None else "Evaluating"
        if self.history and self.history[-1].until is None:
            self._replace_top(self.history[-1].model_copy(update={"until": now}))
        self.history = (*self.history, ModelHistoryEntry(
            model=self.served.model, served_name=children.served_name(self.served),
            fingerprint=fingerprint, since=now, evaluation=outcome))[-HISTORY_LENGTH:]

    def live(self, phase: SlotPhase, reason: str, now: datetime.datetime,
             previous_phase: SlotPhase | None) -> tuple[SlotPhase, str]:
        """The phase and reason of the slot, given the phase its pods show."""
        if phase == "Loading" and self.rollback is not None:
            return phase, (f"rolling back to {model_label(self.rollback.model)} "
                           f"({self.wanted_name} failed evaluation): {reason}")
        if phase != "Ready":
            return phase, reason
        top = self.history[-1] if self.history else None
        if top is None or top.fingerprint != self.served_fingerprint or top.until is not None:
            self._append(now)
            top = self.history[-1]
        if self.rollback is not None:
            return "Ready", (f"serving the previous model {model_label(self.rollback.model)}: "
                             f"{self.wanted_name} failed evaluation")
        if self.criteria is None:
            if top.evaluation == "Evaluating":
                self._replace_top(top.model_copy(update={"evaluation": "NotEvaluated"}))
            return phase, reason
        if self.rejected:
            return "Failed", (f"{self.wanted_name} failed evaluation and there is no earlier "
                              "model to roll back to")
        if top.evaluation in ("Passed", "NotEvaluated"):
            return phase, reason
        if top.evaluation != "Evaluating":
            self._replace_top(top.model_copy(update={"evaluation": "Evaluating",
                                                     "failed_checks": None}))
        assert self.spec.evaluation is not None
        self.request = EvaluationRequest(
            self.slot.namespace, self.slot.name, self.alias,
            children.served_name(self.spec), self.wanted,
            self.criteria, self.spec.evaluation)
        if previous_phase != "Evaluating":
            self._event("Normal", "Evaluating",
                        f"Evaluating model {self.wanted_name} of {self.alias} before routing "
                        "to it")
        return "Evaluating", f"evaluating {self.wanted_name} before routing to it"

    def status_updates(self) -> dict[str, Any]:
        return {"history": list(self.history) or None, "evaluation": self.record,
                "rejected_model": self.wanted if self.rejected else None}

    def conditions(self, phase: str) -> list[ConditionUpdate]:
        """The Evaluated condition; none for a slot that never had spec.evaluation."""
        if self.criteria is None:
            had = any(c.type == "Evaluated" for c in self.slot.status.conditions)
            return [ConditionUpdate("Evaluated", True, "NotRequired",
                                    "spec.evaluation is not set")] if had else []
        name = self.wanted_name
        record = self.record
        if self.rejected and record is not None:
            then = (f"serving the previous model {model_label(self.rollback.model)}"
                    if self.rollback is not None else "there is no earlier model to roll back to")
            checks = "; ".join(record.failed_checks or [])
            return [ConditionUpdate("Evaluated", False, "EvaluationFailed",
                     f"{name} failed evaluation ({record.passed_prompts} of {record.prompts} "
                     f"prompts passed): {checks}; {then}")]
        if phase == "Evaluating":
            return [ConditionUpdate("Evaluated", None, "Evaluating", f"evaluating {name}")]
        top = self.history[-1] if self.history else None
        if top is not None and top.fingerprint == self.wanted and top.until is None:
            if top.evaluation == "Passed":
                detail = (f"{record.passed_prompts} of {record.prompts} prompts passed"
                          if record is not None and record.model == self.wanted
                          else "passed an earlier evaluation")
                return [ConditionUpdate("Evaluated", True, "EvaluationPassed", f"{name}: {detail}")]
            if top.evaluation == "NotEvaluated":
                return [ConditionUpdate("Evaluated", True, "NotEvaluated",
                         f"{name} ran before spec.evaluation was set")]
        return [ConditionUpdate("Evaluated", None, "Pending",
                                f"{name} is evaluated once it is loaded")]


def gate(slot: SlotInfo, view: View, now: datetime.datetime, memo: PlanMemo) -> Gate:
    """The gate of a slot with a valid spec in this plan."""
    return Gate.build(slot, view.evaluations.get(slot.key), now, memo)


def served_spec(slot: SlotInfo, result: EvaluationResult | None, now: datetime.datetime,
                memo: PlanMemo) -> ModelSlotSpec:
    """The spec the pod template of a slot with a valid spec is rendered from
    (:attr:`Gate.served`); the clock plays no part in it."""
    return Gate.build(slot, result, now, memo).served

"""hybrid-compute's routing decision for the LiteLLM proxy.

This file is copied into the LiteLLM ConfigMap next to ``config.yaml`` and runs
inside the stock LiteLLM image, so it uses the standard library only. The rules
come from ``hybrid_router.json`` beside it (rendered by the operator from the
RoutePolicy); the live state (which slots are Ready, their fallbacks, whether the
GPU is busy, what budget is left) comes from the operator's ``/v1/state``.

:func:`decide` is pure: given a request, the rules and the state it says which
alias serves the request and why, whether the request must wait for a local
model, or whether it is refused. Privacy-tagged requests are never given a
cloud alias, whatever else fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULES_FILE = Path(__file__).with_name("hybrid_router.json")
CHARS_PER_TOKEN = 4
SHORT_CONTEXT_TOKENS = 2000
EMBEDDING_CALLS = ("embedding", "aembedding")


@dataclass(frozen=True)
class Decision:
    """Where one request goes."""

    model: str
    """The alias that serves the request (unchanged when refused)."""
    route: str
    """local, cloud, bridged (a local alias sent to its fallback), hold (wait for a
    local model) or refused."""
    reason: str
    private: bool = False
    status: int = 200
    """The HTTP status of a refusal."""


def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    rules: dict[str, Any] = json.loads(path.read_text())
    return rules


def estimate_tokens(data: dict[str, Any]) -> int:
    """A cheap size estimate: characters of the prompt over four."""
    chars = 0
    for message in data.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
    prompt = data.get("prompt") or data.get("input")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(item) for item in prompt if isinstance(item, str))
    return chars // CHARS_PER_TOKEN


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    metadata = data.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def is_private(data: dict[str, Any], rules: dict[str, Any]) -> bool:
    """Tagged with one of the privacy tags, or ``metadata.privacy`` set."""
    metadata = _metadata(data)
    tags = metadata.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    marked = {str(tag).lower() for tag in tags}
    if marked & {tag.lower() for tag in rules["privacy"]["tags"]}:
        return True
    flag = metadata.get("privacy")
    return flag is True or (isinstance(flag, str) and flag.lower() in (
        "private", "sensitive", "local", "true", "yes"))


def local_aliases(rules: dict[str, Any], state: dict[str, Any]) -> set[str]:
    return set(rules.get("localAliases", [])) | {
        slot["alias"] for slot in state.get("slots", []) if slot.get("alias")}


def budget_left(rules: dict[str, Any], state: dict[str, Any]) -> bool:
    remaining = (state.get("budget") or {}).get("remaining")
    return remaining is None or remaining > 0 or rules.get("budget") is None


def resolve_auto(data: dict[str, Any], rules: dict[str, Any], state: dict[str, Any],
                 private: bool, call_type: str) -> tuple[str, str]:
    """The seed's routing matrix: the alias for ``hybrid/auto`` and why."""
    routes = rules["routes"]
    metadata = _metadata(data)
    task = str(metadata.get("task") or "").lower()
    complexity = str(metadata.get("complexity") or "").lower()
    if call_type in EMBEDDING_CALLS or task in ("embedding", "embeddings"):
        return routes["embedding"], "embedding request"
    if state.get("gpuBusy") and not private:
        return routes["gpuBusy"], "GPU busy: overflow to cloud"
    if task and task in rules.get("tasks", {}):
        return rules["tasks"][task], f"task {task}"
    tokens = estimate_tokens(data)
    if complexity not in ("simple", "medium", "complex"):
        complexity = "simple" if tokens < SHORT_CONTEXT_TOKENS else "medium"
        guessed = f"{complexity} (estimated from ~{tokens} tokens)"
    else:
        guessed = complexity
    if complexity == "simple":
        return routes["simple"], guessed
    if complexity == "medium":
        if tokens < rules["longContextTokens"]:
            return routes["medium"], f"{guessed}, context under {rules['longContextTokens']}"
        return routes["longContext"], f"{guessed}, long context (~{tokens} tokens)"
    if budget_left(rules, state):
        return routes["complex"], "complex"
    return routes["budgetExhausted"], "complex, cloud budget exhausted"


def _slot(state: dict[str, Any], alias: str) -> dict[str, Any] | None:
    ready = [s for s in state.get("slots", []) if s.get("alias") == alias]
    return next((s for s in ready if s.get("ready")), ready[0] if ready else None)


def _private_target(alias: str, rules: dict[str, Any], locals_: set[str]) -> str | None:
    """The local alias a privacy-tagged request goes to instead of a cloud one."""
    for candidate in (rules["routes"]["medium"], rules["routes"]["simple"],
                      rules["routes"]["budgetExhausted"]):
        if candidate in locals_:
            return str(candidate)
    return None


def decide(data: dict[str, Any], rules: dict[str, Any], state: dict[str, Any],
           call_type: str = "acompletion") -> Decision:
    requested = str(data.get("model") or "")
    private = is_private(data, rules)
    locals_ = local_aliases(rules, state)
    if requested == rules["autoModel"]:
        alias, why = resolve_auto(data, rules, state, private, call_type)
    else:
        alias, why = requested, "requested"

    if private and alias not in locals_:
        target = _private_target(alias, rules, locals_) if requested == rules["autoModel"] \
            else None
        if target is None:
            return Decision(requested, "refused",
                            f"privacy-tagged requests stay local; {alias} is a cloud model",
                            private=True, status=403)
        alias, why = target, f"{why}; kept local for privacy"

    if alias not in locals_ and not budget_left(rules, state):
        action = (rules.get("budget") or {}).get("whenExhausted", "RouteLocal")
        if action == "Refuse":
            return Decision(requested, "refused", "cloud budget exhausted", private, 429)
        if action == "RouteLocal":
            alias, why = rules["routes"]["budgetExhausted"], "cloud budget exhausted"

    if alias in locals_:
        slot = _slot(state, alias)
        if slot is not None and not slot.get("ready"):
            if private:
                return Decision(alias, "hold", f"{why}; waiting for {alias} "
                                f"({slot.get('phase', 'not ready')})", private=True)
            fallback = slot.get("fallback") or next(
                iter(rules.get("fallbacks", {}).get(alias, [])), None)
            if fallback:
                return Decision(fallback, "bridged",
                                f"{why}; {alias} is {slot.get('phase', 'not ready')}, "
                                f"bridged to {fallback}")
        return Decision(alias, "local", why, private)
    return Decision(alias, "cloud", why, private)

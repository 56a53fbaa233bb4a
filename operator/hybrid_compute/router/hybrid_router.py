"""hybrid-compute's routing decision for the LiteLLM proxy.

This file is copied into the LiteLLM ConfigMap next to ``config.yaml`` and runs
inside the stock LiteLLM image, so it uses the standard library only. The rules
come from ``hybrid_router.json`` beside it (rendered by the operator from the
RoutePolicy); the live state (which slots are Ready, their fallbacks, whether the
GPU is busy, what budget is left) comes from the operator's ``/v1/state``.

:func:`decide` is pure: given a request, the rules and the state it says which
alias serves the request and why, whether the request must wait for a local
model, or whether it is refused. Privacy-tagged requests are never given a
cloud alias, whatever else fails. Any other request for a local alias whose slot
is not Ready waits for it when the operator predicts it Ready within the
request's patience (``x-hybrid-patience``, ``metadata.patience`` or the policy's
``routing.patience``), and goes to the alias's fallback otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

try:  # only inside the LiteLLM image
    from fastapi import HTTPException
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # the operator imports this file for decide() alone
    CustomLogger = object
    HTTPException = None

RULES_FILE = Path(__file__).with_name("hybrid_router.json")
CHARS_PER_TOKEN = 4
SHORT_CONTEXT_TOKENS = 2000
EMBEDDING_CALLS = ("embedding", "aembedding")
PATIENCE_HEADER = "x-hybrid-patience"


class Decision(NamedTuple):
    """Where one request goes. (A NamedTuple, not a dataclass: LiteLLM loads this
    file without registering it in sys.modules, which dataclasses need.)"""

    model: str
    """The alias that serves the request (unchanged when refused)."""
    route: str
    """local, cloud, bridged (a local alias sent to its fallback), hold (wait for a
    local model: a privacy-tagged request, or one whose patience covers the predicted
    swap) or refused."""
    reason: str
    private: bool = False
    status: int = 200
    """The HTTP status of a refusal."""
    wanted: str | None = None
    """The local alias the request asked for, loaded or not: the operator hears a
    demand for it, so a bridged request brings its model in."""


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


TAGS_HEADER = "x-litellm-tags"
PRIVACY_WORDS = ("private", "sensitive", "local", "true", "yes")


def _tag_set(value: Any) -> set[str]:
    """Tags as a list, or as LiteLLM's header spells them: one comma-separated string."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return set()
    return {str(tag).strip().lower() for tag in value if str(tag).strip()}


def _privacy_flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in PRIVACY_WORDS)


def _marks_private(holder: Any, privacy_tags: set[str]) -> bool:
    """A metadata dict (the request's, a key's or a team's) with a privacy tag or
    ``privacy`` set."""
    if not isinstance(holder, Mapping):
        return False
    return bool(_tag_set(holder.get("tags")) & privacy_tags) or _privacy_flag(
        holder.get("privacy"))


def caller_of(user_api_key_dict: Any) -> dict[str, Any]:
    """What LiteLLM knows of the virtual key a request came with (its
    ``UserAPIKeyAuth``, or a dict of the same fields): metadata, team metadata and
    the names a policy's ``localOnlyKeys`` may use."""
    def field(name: str) -> Any:
        if isinstance(user_api_key_dict, Mapping):
            return user_api_key_dict.get(name)
        return getattr(user_api_key_dict, name, None)
    return {name: field(name) for name in ("metadata", "team_metadata", "key_alias",
                                           "key_name", "team_alias", "team_id")}


def privacy_channel(data: dict[str, Any], rules: dict[str, Any],
                    caller: Mapping[str, Any] | None = None) -> str | None:
    """Which channel marks the request private, or None: ``metadata.tags`` or
    ``metadata.privacy`` (also in ``litellm_metadata``), the top-level ``tags``, the
    ``x-litellm-tags`` header, the virtual key's or its team's metadata (on the key
    LiteLLM hands the hook, or as it copies them into the request's metadata), or
    the policy's ``localOnlyKeys`` naming the key or its team."""
    privacy = rules["privacy"]
    tags = {tag.lower() for tag in privacy["tags"]}
    for name in ("metadata", "litellm_metadata"):
        holder = data.get(name)
        if _marks_private(holder, tags):
            return name
        if isinstance(holder, Mapping):
            for copied in ("user_api_key_metadata", "user_api_key_team_metadata"):
                if _marks_private(holder.get(copied), tags):
                    return f"{name}.{copied}"
    if _tag_set(data.get("tags")) & tags:
        return "tags"
    if any(str(header).lower() == TAGS_HEADER and _tag_set(value) & tags
           for header, value in _request_headers(data).items()):
        return TAGS_HEADER
    caller = caller or {}
    if _marks_private(caller.get("metadata"), tags):
        return "key metadata"
    if _marks_private(caller.get("team_metadata"), tags):
        return "team metadata"
    names = {caller.get(n) for n in ("key_alias", "key_name", "team_alias", "team_id")}
    if names & set(privacy.get("localOnlyKeys", [])) - {None}:
        return "localOnlyKeys"
    return None


def is_private(data: dict[str, Any], rules: dict[str, Any],
               caller: Mapping[str, Any] | None = None) -> bool:
    """Marked private on any channel LiteLLM carries (:func:`privacy_channel`)."""
    return privacy_channel(data, rules, caller) is not None


def parse_patience(value: Any) -> float | None:
    """Seconds from a number or a duration (``10``, ``"10"``, ``"1.5s"``, ``"2m"``);
    None when the value is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            seconds = float(value.strip())
        except ValueError:
            try:
                seconds = _duration_seconds(value.strip())
            except (KeyError, ValueError):
                return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _request_headers(data: dict[str, Any]) -> Mapping[str, Any]:
    """The client's request headers: LiteLLM's proxy puts them in
    ``proxy_server_request`` (and in the metadata) before the hook runs."""
    for holder in (data.get("proxy_server_request"), _metadata(data)):
        headers = holder.get("headers") if isinstance(holder, dict) else None
        if isinstance(headers, Mapping):
            return headers
    return {}


def request_patience(data: dict[str, Any], rules: dict[str, Any]) -> float:
    """Seconds this request may wait for a local swap: the header
    ``x-hybrid-patience``, else ``metadata.patience``, else the policy's
    ``routing.patience``. What a request asks for is capped at ``maxPatience``."""
    asked = next((parse_patience(value) for name, value in _request_headers(data).items()
                  if str(name).lower() == PATIENCE_HEADER), None)
    if asked is None:
        asked = parse_patience(_metadata(data).get("patience"))
    if asked is None:
        return float(rules.get("patienceSeconds", 0.0))
    return min(asked, float(rules.get("maxPatienceSeconds", asked)))


def local_aliases(rules: dict[str, Any], state: dict[str, Any]) -> set[str]:
    return set(rules.get("localAliases", [])) | {
        slot["alias"] for slot in state.get("slots", []) if slot.get("alias")}


def own_policy_state(state: dict[str, Any], policy: str | None) -> dict[str, Any]:
    """The operator's state as this router sees it: the slots of its policy's
    namespace (the ones its config routes to), and its policy's entry (budget, GPU
    busy) lifted to the top, where :func:`decide` reads it."""
    if not policy:
        return state
    namespace = policy.split("/", 1)[0]
    own = (state.get("policies") or {}).get(policy) or {}
    slots = [s for s in state.get("slots", []) if s.get("namespace", namespace) == namespace]
    return {**state, "slots": slots,
            **{key: own[key] for key in ("budget", "gpuBusy") if key in own}}


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


def predicted_wait(state: dict[str, Any], alias: str) -> float | None:
    """The operator's prediction of how soon a slot of ``alias`` serves, or None
    when it cannot say (the slot waits for room, is unloading for another, or the
    operator publishes no prediction)."""
    waits = [s["predictedWaitSeconds"] for s in state.get("slots", [])
             if s.get("alias") == alias
             and isinstance(s.get("predictedWaitSeconds"), int | float)]
    return float(min(waits)) if waits else None


def _seconds_text(seconds: float) -> str:
    return f"{round(seconds, 1):g} s"


def _private_target(alias: str, rules: dict[str, Any], locals_: set[str]) -> str | None:
    """The local alias a privacy-tagged request goes to instead of a cloud one."""
    for candidate in (rules["routes"]["medium"], rules["routes"]["simple"],
                      rules["routes"]["budgetExhausted"]):
        if candidate in locals_:
            return str(candidate)
    return None


def decide(data: dict[str, Any], rules: dict[str, Any], state: dict[str, Any],
           call_type: str = "acompletion", patience: float | None = None,
           caller: Mapping[str, Any] | None = None) -> Decision:
    """``patience``: seconds the request may still wait for a swap; by default
    :func:`request_patience`. ``caller``: the virtual key (:func:`caller_of`)."""
    requested = str(data.get("model") or "")
    private = is_private(data, rules, caller)
    local_only = set(rules["privacy"].get("localOnlyAliases", []))
    private = private or requested in local_only
    locals_ = local_aliases(rules, state)
    if requested == rules["autoModel"]:
        alias, why = resolve_auto(data, rules, state, private, call_type)
    else:
        alias, why = requested, "requested"
    private = private or alias in local_only

    if private and alias not in locals_:
        target = _private_target(alias, rules, locals_) if requested == rules["autoModel"] \
            else None
        if target is None:
            return Decision(requested, "refused",
                            f"privacy-tagged requests stay local; {alias} is a cloud model",
                            private=True, status=403)
        alias, why = target, f"{why}; kept local for privacy"

    # Only known cloud aliases count against the budget: an unknown name is LiteLLM's
    # to refuse, not ours to reroute.
    cloud = alias in rules.get("cloudAliases", [alias])
    if cloud and alias not in locals_ and not budget_left(rules, state):
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
                                f"({slot.get('phase', 'not ready')})", private=True,
                                wanted=alias)
            fallback = slot.get("fallback") or next(
                iter(rules.get("fallbacks", {}).get(alias, [])), None)
            if fallback:
                phase = slot.get("phase", "not ready")
                wait = predicted_wait(state, alias)
                if patience is None:
                    patience = request_patience(data, rules)
                if wait is not None and patience > 0 and wait <= patience:
                    return Decision(alias, "hold", f"{why}; waiting for {alias} ({phase}): "
                                    f"predicted {_seconds_text(wait)} <= "
                                    f"patience {_seconds_text(patience)}", wanted=alias)
                because = (f"predicted {_seconds_text(wait)} > patience {_seconds_text(patience)}"
                           if wait is not None else "its load time cannot be predicted")
                return Decision(fallback, "bridged", f"{why}; {alias} is {phase}, "
                                f"bridged to {fallback}: {because}", wanted=alias)
        return Decision(alias, "local", why, private, wanted=alias)
    return Decision(alias, "cloud", why, private)


# --------------------------------------------------------------- LiteLLM glue
#
# Below runs inside the LiteLLM proxy. The state comes from the operator's API
# (HYBRID_COMPUTE_URL, HYBRID_COMPUTE_TOKEN), refreshed in the background and
# kept when the operator is away, or from a JSON file (HYBRID_ROUTER_STATE_FILE)
# for a proxy without an operator.

STATE_REFRESH_SECONDS = 2.0
"""A request never decides on a state older than this: it waits for a fresh one."""
EARLY_REFRESH_SECONDS = 1.5
"""A request that finds the state older than this starts its refresh and decides on
the state held: under steady traffic the refresh lands before any request has to
wait for it. (A request waiting for the refresh yields to every other request in
the proxy's queue, and the waiters are released together.)"""
# The operator's metric outcomes for each route a decision takes.
ROUTE_OUTCOMES = {"local": "served", "cloud": "served", "bridged": "bridged",
                  "hold": "held", "refused": "refused"}
DEMAND_INTERVAL_SECONDS = 1.0
HOLD_POLL_SECONDS = 0.5
"""A held request decides again at least this often; the operator's next plan
(the end of the swap) wakes it sooner."""
ROUTE_HEADER = "x-hybrid-route"
REASON_HEADER = "x-hybrid-reason"
MODEL_HEADER = "x-hybrid-model"
ROUTER_ID_HEADER = "X-Hybrid-Router"


class OperatorClient:
    """The operator's state, cached; demand signals, rate-limited per alias; cloud
    spend, summed until the operator has taken it."""

    def __init__(self, policy: str | None = None) -> None:
        self.url = os.environ.get("HYBRID_COMPUTE_URL", "").rstrip("/")
        self.token = os.environ.get("HYBRID_COMPUTE_TOKEN", "")
        self.state_file = os.environ.get("HYBRID_ROUTER_STATE_FILE", "")
        self.policy = policy
        self.router_id = uuid.uuid4().hex[:12]
        """Sent with state fetches: the operator ends a drain once every router it
        hears from has fetched a state that shows the draining slot not Ready."""
        self.state: dict[str, Any] = {"slots": []}
        self.fetched_at = 0.0
        self.refreshing: asyncio.Future[None] | None = None
        """The refresh of a stale state under way: requests that find the state stale
        meanwhile wait for it instead of each queueing a fetch of its own in the
        thread pool the proxy runs its own calls in."""
        self.version: int | None = None
        """The operator's plan version the state comes from."""
        self.last_demand: dict[str, float] = {}
        self.unsent_spend = 0.0
        self.sending = False
        self.spend_lock = threading.Lock()  # the sender runs in a worker thread
        self.route_counts: dict[tuple[str, str, str], int] = {}
        """(alias asked, target, outcome) -> requests not yet reported."""

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float = 2.0) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json", ROUTER_ID_HEADER: self.router_id})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer

    def record_route(self, asked: str, decision: Decision) -> None:
        outcome = ROUTE_OUTCOMES.get(decision.route, "served")
        key = (asked, decision.model, outcome)
        with self.spend_lock:
            self.route_counts[key] = self.route_counts.get(key, 0) + 1

    def _send_route_counts(self) -> None:
        """Reported with each state refresh: counts, not a call per request."""
        with self.spend_lock:
            counts, self.route_counts = self.route_counts, {}
        if not counts or not self.url:
            return
        try:
            self._request("POST", "/v1/routes", {"counts": [
                {"alias": alias, "target": target, "outcome": outcome, "count": count}
                for (alias, target, outcome), count in counts.items()]})
        except (OSError, ValueError, urllib.error.URLError):
            with self.spend_lock:  # kept for the next refresh
                for key, count in counts.items():
                    self.route_counts[key] = self.route_counts.get(key, 0) + count

    def _fetch(self, wait: float = 0.0) -> None:
        """The operator's state; with ``wait``, the operator answers once it has a
        newer plan than the one held, or after ``wait`` seconds."""
        self._send_route_counts()
        try:
            if self.state_file:
                state = json.loads(Path(self.state_file).read_text())
            elif self.url:
                newer = (f"?after={self.version}&wait={wait:.3f}"
                         if wait > 0 and self.version is not None else "")
                state = self._request("GET", f"/v1/state{newer}", timeout=2.0 + wait)
            else:
                return
        except (OSError, ValueError, urllib.error.URLError):
            return  # keep the last state: a request never waits on the operator
        self.version = state.get("version")
        self.state = own_policy_state(state, self.policy)
        self.fetched_at = time.monotonic()

    async def next_state(self, wait: float) -> dict[str, Any]:
        """The first state newer than the one held, waiting up to ``wait`` seconds
        for the operator to plan again; the held one when none comes in that time
        (the operator may be away: the wait is kept either way)."""
        started = time.monotonic()
        before = self.version
        await asyncio.to_thread(self._fetch, wait)
        left = wait - (time.monotonic() - started)
        if self.version == before and left > 0:
            await asyncio.sleep(left)
        return self.with_unsent_spend()

    def with_unsent_spend(self) -> dict[str, Any]:
        """The cached state, counting spend the operator has not heard of yet."""
        budget = self.state.get("budget")
        if not self.unsent_spend or not budget or budget.get("remaining") is None:
            return self.state
        remaining = budget["remaining"] - self.unsent_spend
        return {**self.state, "budget": {**budget, "remaining": remaining,
                                         "exhausted": remaining <= 0}}

    async def current(self, fresh: bool = False) -> dict[str, Any]:
        age = time.monotonic() - self.fetched_at
        if fresh:
            await asyncio.to_thread(self._fetch)
            self._retry_spend()
        elif age > STATE_REFRESH_SECONDS:
            # Shielded: a waiter cancelled (its client went away) leaves the fetch to
            # the others.
            await asyncio.shield(self._refreshing())
        elif age > EARLY_REFRESH_SECONDS:
            self._refreshing()
        return self.with_unsent_spend()

    def _refreshing(self) -> asyncio.Future[None]:
        """The refresh under way, started now if none is: one fetch for all the
        requests that find the state old while it runs."""
        if self.refreshing is None or self.refreshing.done():
            self.refreshing = asyncio.ensure_future(asyncio.to_thread(self._fetch))
            self._retry_spend()
        return self.refreshing

    def _retry_spend(self) -> None:
        """Sends again, with each refresh, what an earlier report could not send."""
        if self.unsent_spend and not self.sending:
            self.report_spend(0.0)

    def report_spend(self, amount: float) -> None:
        """Adds cloud spend and sends the sum; on failure it is kept and sent with the
        next report, so the budget survives an operator restart."""
        with self.spend_lock:
            self.unsent_spend += amount
            if not self.url or not self.policy or self.sending or self.unsent_spend <= 0:
                return
            self.sending = True
            sending = self.unsent_spend

        def send() -> None:
            sent = 0.0
            try:
                self._request("POST", "/v1/spend", {"policy": self.policy,
                                                    "amount": sending})
                sent = sending
            except (OSError, ValueError, urllib.error.URLError):
                pass  # kept for the next report
            with self.spend_lock:
                self.unsent_spend -= sent
                self.sending = False

        asyncio.get_running_loop().run_in_executor(None, send)

    def demand(self, alias: str) -> None:
        now = time.monotonic()
        if not self.url or now - self.last_demand.get(alias, 0.0) < DEMAND_INTERVAL_SECONDS:
            return
        self.last_demand[alias] = now

        def send() -> None:
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                self._request("POST", "/v1/demand", {"alias": alias})

        asyncio.get_running_loop().run_in_executor(None, send)


class HybridRouter(CustomLogger):  # type: ignore[misc]
    """LiteLLM callback: rewrites the model before the call, adds route headers."""

    def __init__(self) -> None:
        super().__init__()
        self.rules = load_rules() if RULES_FILE.exists() else None
        self.operator = OperatorClient((self.rules or {}).get("policy"))

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any,
                                  data: dict[str, Any], call_type: str) -> dict[str, Any]:
        if self.rules is None:
            return data
        state = await self.operator.current()
        asked = str(data.get("model") or "")
        caller = caller_of(user_api_key_dict)
        decision = decide(data, self.rules, state, call_type, caller=caller)
        if decision.route == "hold":
            self.operator.record_route(asked, decision)
            decision = await self._hold(data, call_type, decision, caller)
        self.operator.record_route(asked, decision)
        if decision.route == "refused":
            raise HTTPException(status_code=decision.status, detail=decision.reason)
        data["model"] = decision.model
        if decision.private:
            # Never let LiteLLM's own fallbacks carry it to a cloud model.
            data["disable_fallbacks"] = True
        metadata = data.setdefault("metadata", {})
        metadata["hybrid_route"] = {"route": decision.route, "reason": decision.reason,
                                    "model": decision.model}
        if decision.wanted:
            self.operator.demand(decision.wanted)
        return data

    async def _hold(self, data: dict[str, Any], call_type: str, decision: Decision,
                    caller: Mapping[str, Any] | None = None) -> Decision:
        """Waits for the local model: a privacy-tagged request up to
        ``privacy.holdTimeoutSeconds``, then refused (it never leaves the box); any other up
        to its patience, then bridged. A request whose slot turns out slower than
        the patience left is bridged as soon as the operator predicts so."""
        assert self.rules is not None
        self.operator.demand(decision.model)
        started = time.monotonic()
        if decision.private:
            action = self.rules["privacy"]["action"]
            limit = float(self.rules["privacy"]["holdTimeoutSeconds"]) if action == "Hold" else 0.0
        else:
            limit = request_patience(data, self.rules)
        deadline = started + limit
        while (now := time.monotonic()) < deadline:
            state = await self.operator.next_state(min(HOLD_POLL_SECONDS, deadline - now))
            again = decide(data, self.rules, state, call_type,
                           patience=max(deadline - time.monotonic(), 0.0), caller=caller)
            if again.route != "hold":
                return _after_hold(again, decision.model, started)
        if not decision.private:
            again = decide(data, self.rules, self.operator.with_unsent_spend(), call_type,
                           patience=0.0, caller=caller)
            return _after_hold(again, decision.model, started)
        return Decision(decision.model, "refused",
                        f"{decision.model} is not ready and privacy-tagged requests never "
                        f"leave the box; retry later", private=True, status=503)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        cost = kwargs.get("response_cost")
        # Local models are priced at zero, so any cost is cloud spend.
        if isinstance(cost, int | float) and cost > 0:
            self.operator.report_spend(float(cost))

    async def async_post_call_response_headers_hook(
            self, data: dict[str, Any], user_api_key_dict: Any, response: object,
            request_headers: dict[str, str] | None = None,
            litellm_call_info: dict[str, object] | None = None) -> dict[str, str] | None:
        route = (data.get("metadata") or {}).get("hybrid_route")
        if not route:
            return None
        return {ROUTE_HEADER: route["route"], MODEL_HEADER: route["model"],
                REASON_HEADER: route["reason"][:200]}


def _after_hold(decision: Decision, alias: str, started: float) -> Decision:
    held = _seconds_text(time.monotonic() - started)
    return decision._replace(reason=f"held {held} for the swap of {alias}; {decision.reason}")


def _duration_seconds(duration: str) -> float:
    """Seconds from a duration a client wrote (``1.5s``, ``2m``, ``1h30m``, ``250ms``);
    the rules carry numbers of seconds already."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number = 0.0, ""
    index = 0
    while index < len(duration):
        char = duration[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if duration.startswith("ms", index) else char
        total += float(number) * units[unit]
        number = ""
        index += len(unit)
    return total


proxy_handler_instance = HybridRouter()

"""The control loop: observe, plan, diff, act; woken by what the watch caches see
change (:mod:`hybrid_compute.control.informer`), demands and the plan's own next
deadline (an idle timeout, the end of a minimum residency).

Evaluations of new models (:mod:`hybrid_compute.plan.evaluation`) run beside the loop:
a plan asks for one, the loop starts it in the background after acting, and its
result reaches the next plan through the View until a status holds it.

Prompt caches (:mod:`hybrid_compute.plan.prompt_cache`) are saved and restored
between plan and act: a save before the write that scales its slot down, a restore
before the plan that shows its slot Ready is published to routers. Their outcomes
reach the next plan the same way as evaluations'."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import logging
import threading
import time

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.control import clock, evaluator, health_probe, prompt_cache
from hybrid_compute.control.act import act
from hybrid_compute.control.diff import DiffMemo, diff
from hybrid_compute.control.informer import ClusterCache, Written
from hybrid_compute.control.lease_elector import LeaseElector
from hybrid_compute.control.observe import Signals, observe
from hybrid_compute.control.telemetry import GpuTelemetry
from hybrid_compute.plan import evaluation, plan
from hybrid_compute.plan.drain import PREVIOUS_OPERATOR, ROUTER_ACTIVE_WINDOW
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import Plan, SlotDecision
from hybrid_compute.plan.prompt_cache import PromptCacheOutcomes, RestoreOutcome, SaveOutcome
from hybrid_compute.plan.routing import PolicyDecision
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import RouterFetch, SlotInfo, View
from hybrid_compute.server.metrics import METRICS, OperatorMetrics, PassStage

logger = logging.getLogger("hybrid_compute.control.loop")

DEBOUNCE_SECONDS = 0.02
RETRY_SECONDS = 5.0
FOLLOW_UP_SECONDS = 0.5
FULL_COLLECTION_SECONDS = 3600.0
FREEZE_SLACK_RECORDS = 100
"""A small install's caches may grow by this many records before they are frozen again."""
ROUTER_FORGET_AFTER = 2 * ROUTER_ACTIVE_WINDOW
"""Fetches older than this are dropped: such a router no longer counts as active."""


class Runtime:
    """Holds the loop's state: demands heard, the last view and plan."""

    def __init__(self, api: client.ApiClient, settings: PlanSettings,
                 metrics: OperatorMetrics = METRICS,
                 telemetry: GpuTelemetry | None = None,
                 leadership: LeaseElector | None = None) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.telemetry = telemetry
        """The GPU agents' figures; None plans without them."""
        self.leadership = leadership
        """The leader election; None acts without one (a single replica)."""
        self.cache: ClusterCache | None = None
        """The watch caches a pass reads; made and started by :meth:`run`."""
        self.demands: dict[str, datetime.datetime] = {}
        self.last_plan: Plan | None = None
        self.last_view: View | None = None
        self.memo = PlanMemo()
        """Templates rendered by one plan, reused by the next."""
        self.diff_memo = DiffMemo()
        """What one diff hands to the next (:class:`~.diff.DiffMemo`)."""
        self.freezer = Freezer()
        # A router may have fetched the state from the previous operator just before
        # this one started: count the start as a fetch that acknowledged nothing, so
        # drains give routers time.
        started = clock.now()
        self.router_fetched_at: datetime.datetime | None = started
        self.router_fetches: dict[str, RouterFetch] = {
            PREVIOUS_OPERATOR: RouterFetch(started)}
        self._wake = asyncio.Event()
        self.plan_version = 0
        """Counts the plans published (``last_plan``): routers wait for a newer one."""
        self._published = asyncio.Event()
        """Set, and replaced, when a plan is published."""
        # Cloud spend the router reported that no RoutePolicy status holds yet. The
        # API adds to it on the event loop; act subtracts in its thread.
        self._spend: dict[tuple[str, str], float] = {}
        self._spend_lock = threading.Lock()
        self.evaluations: dict[tuple[str, str], evaluation.EvaluationResult] = {}
        """Finished evaluations, per slot, until its status holds the verdict."""
        self._evaluating: dict[tuple[str, str], tuple[tuple[str, str], asyncio.Task[None]]] = {}
        """The evaluation running per slot, with the (model, criteria) it checks."""
        self.foreign_announced: frozenset[tuple[str, str, str]] = frozenset()
        """The foreign processes the last plan posted Events for."""
        self.prompt_caches: dict[tuple[str, str], PromptCacheOutcomes] = {}
        """The last prompt cache save and restore per slot, until its status holds them."""
        self.answering: frozenset[str] = frozenset()
        """UIDs of the slot pods not Ready by the kubelet whose server answered /health
        at the last ask (:mod:`hybrid_compute.control.health_probe`)."""

    def state_fetched(self, router: str = "",
                      not_ready: frozenset[tuple[str, str]] = frozenset()) -> None:
        """A router (by the id it sends, "" when it sends none) fetched /v1/state,
        which showed the ``not_ready`` slots as not Ready."""
        now = clock.now()
        self.router_fetched_at = now
        fetches = {name: fetch for name, fetch in self.router_fetches.items()
                   if now - fetch.at <= ROUTER_FORGET_AFTER}
        fetches[router] = RouterFetch(now, not_ready)
        self.router_fetches = fetches  # replaced whole: a pass may be reading it
        if self.last_plan is not None and any(
                d.phase == "Draining" and d.slot.key in not_ready for d in self.last_plan.slots):
            # This router has seen a draining slot leave: its drain may be over now.
            self.poke()

    async def plan_after(self, version: int, timeout: float) -> None:
        """Returns once a plan newer than ``version`` is published, or after
        ``timeout`` seconds."""
        if self.plan_version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._published.wait(), timeout)

    def _publish(self, view: View, result: Plan) -> None:
        """What the API serves routers from now on, and wakes those waiting for it."""
        self.last_view, self.last_plan = view, result
        self.plan_version += 1
        published, self._published = self._published, asyncio.Event()
        published.set()

    def poke(self) -> None:
        """Something changed: plan again soon."""
        self._wake.set()

    def demand(self, alias: str, when: datetime.datetime) -> None:
        previous = self.demands.get(alias)
        if previous is None or when > previous:
            self.demands[alias] = when
        self.poke()

    def report_spend(self, policy: tuple[str, str], amount: float) -> None:
        with self._spend_lock:
            self._spend[policy] = self._spend.get(policy, 0.0) + amount
        self.poke()

    def unsaved_spend(self, policy: tuple[str, str]) -> float:
        with self._spend_lock:
            return self._spend.get(policy, 0.0)

    def _spend_saved(self, decision: PolicyDecision) -> None:
        with self._spend_lock:
            left = self._spend.get(decision.key, 0.0) - decision.spend_included
            if left > 1e-12:
                self._spend[decision.key] = left
            else:
                self._spend.pop(decision.key, None)

    def policies(self) -> set[tuple[str, str]]:
        if self.last_view is None:
            return set()
        return {p.key for p in self.last_view.policies}

    def gpu_nodes(self) -> list[str]:
        return [n.name for n in self.last_view.nodes] if self.last_view else []

    def known_aliases(self) -> set[str]:
        """Every alias a slot or a policy's cloud model serves."""
        if self.last_view is None:
            return set()
        return self.aliases() | {m.alias for p in self.last_view.policies if p.spec
                                 for m in p.spec.cloud_models}

    def aliases(self) -> set[str]:
        if self.last_view is None:
            return set()
        return {s.spec.alias for s in self.last_view.slots if s.spec}

    async def reconcile_once(self) -> datetime.datetime:
        """One observe → plan → diff → act pass; returns when the plan wants to run
        again."""
        cache = self.cache
        assert cache is not None, "run() starts the watch caches"
        stages: dict[PassStage, float] = {}
        started = time.perf_counter()
        if not await cache.caught_up():
            logger.info("planning before the watches returned the last pass's writes")
        now = clock.now()
        view = await observe(cache, self.api, self.settings, self._signals(), now)
        started = _stage(stages, "observe", started)
        result = plan(view, now, self.memo)
        started = _stage(stages, "plan", started)
        await self._keep_prompt_caches(result)
        # Routers follow the plan, not the statuses: they learn of a slot that stops
        # or starts serving before its writes land.
        self._publish(view, result)
        changes = await asyncio.to_thread(diff, result, view, self.diff_memo)
        started = _stage(stages, "diff", started)
        written: list[Written] = []
        writes = await asyncio.to_thread(act, self.api, changes, now, self._spend_saved,
                                         written=written)
        started = _stage(stages, "act", started)
        cache.expect(written)
        self.foreign_announced = frozenset((use.gpu, use.process.key, use.process.label)
                                           for use in result.foreign)
        for decision in result.slots:
            self._start_evaluation(decision)
        if self.telemetry is not None:
            self.telemetry.want_warm(result.warm)
        self.metrics.record_plan(view, result, stages["plan"])
        for line in writes:
            logger.info("applied %s", line)
        self.freezer.after_pass(cache.size(), quiet=not writes)
        _stage(stages, "after", started)
        self.metrics.record_pass_stages(stages)
        wakeup = result.next_wakeup or now + self.settings.idle_check_interval
        if writes:
            wakeup = min(wakeup, now + datetime.timedelta(seconds=FOLLOW_UP_SECONDS))
        return wakeup

    def _signals(self) -> Signals:
        with self._spend_lock:
            spend = dict(self._spend)
        return Signals(demands=self.demands, spend_reports=spend,
                       router_fetched_at=lambda: self.router_fetched_at,
                       router_fetches=lambda: self.router_fetches,
                       unrecorded_evaluations=self._unrecorded_evaluations,
                       unrecorded_prompt_caches=self._unrecorded_prompt_caches,
                       telemetry=self.telemetry, foreign_announced=self.foreign_announced,
                       answering=lambda: self.answering)

    async def watch_loading_pods(self) -> None:
        """Asks the servers of the slot pods the last view shows running but not
        Ready whether their model is loaded, every health_probe.INTERVAL_SECONDS;
        the first answer wakes the loop, which then routes to the slot without
        waiting for the kubelet's next probe."""
        async with aiohttp.ClientSession() as session:
            looked_at: View | None = None
            asked: dict[str, str] = {}
            while True:
                if self.last_view is not looked_at:  # once per pass, not per ask
                    looked_at = self.last_view
                    asked = health_probe.loading_pods(looked_at) if looked_at else {}
                answered = (await health_probe.answering(session, asked)) if asked \
                    else frozenset()
                if answered - self.answering:
                    self.poke()
                self.answering = answered
                await asyncio.sleep(health_probe.INTERVAL_SECONDS)

    async def _keep_prompt_caches(self, result: Plan) -> None:
        """The saves and restores ``result`` asks for, all at once (each server is
        asked in order)."""
        saves = [d.cache_save for d in result.slots if d.cache_save is not None]
        restores = [d.cache_restore for d in result.slots if d.cache_restore is not None]
        if not saves and not restores:
            return
        saved, restored = await asyncio.gather(
            asyncio.gather(*(asyncio.to_thread(prompt_cache.save, request, clock.now)
                             for request in saves)),
            asyncio.gather(*(asyncio.to_thread(prompt_cache.restore, request, clock.now)
                             for request in restores)))
        for save in saved:
            self._saved(save)
        for restore in restored:
            self._restored(restore)

    def _saved(self, outcome: SaveOutcome) -> None:
        key = (outcome.request.namespace, outcome.request.name)
        held = self.prompt_caches.get(key, PromptCacheOutcomes())
        self.prompt_caches[key] = PromptCacheOutcomes(outcome, held.restore)
        self.metrics.record_prompt_cache_save(*key, len(outcome.saved), len(outcome.failures),
                                              len(outcome.evicted))
        logger.info("saved %d prompt cache(s) of %s/%s (%d bytes) in %.2fs", len(outcome.saved),
                    *key, sum(f.bytes for f in outcome.saved), outcome.seconds)
        for failure in outcome.failures:
            logger.warning("saving the prompt caches of %s/%s: %s", *key, failure)

    def _restored(self, outcome: RestoreOutcome) -> None:
        key = (outcome.request.namespace, outcome.request.name)
        held = self.prompt_caches.get(key, PromptCacheOutcomes())
        self.prompt_caches[key] = PromptCacheOutcomes(held.save, outcome)
        self.metrics.record_prompt_cache_restore(*key, len(outcome.restored),
                                                 len(outcome.failures))
        logger.info("restored %d prompt cache(s) of %s/%s (%d tokens) in %.2fs",
                    len(outcome.restored), *key,
                    sum(tokens for _, tokens in outcome.restored), outcome.seconds)
        for file, why in outcome.failures:
            logger.warning("skipped prompt cache %s of %s/%s: %s", file.name, *key, why)

    def _unrecorded_prompt_caches(self, slots: tuple[SlotInfo, ...]
                                  ) -> dict[tuple[str, str], PromptCacheOutcomes]:
        """Drops outcomes a slot's status holds, or whose slot is gone."""
        if not self.prompt_caches:
            return {}
        statuses = {slot.key: slot.status for slot in slots}
        for key, outcomes in list(self.prompt_caches.items()):
            status = statuses.get(key)
            if status is None or outcomes.recorded_in(status):
                del self.prompt_caches[key]
        return dict(self.prompt_caches)

    def _unrecorded_evaluations(self, slots: tuple[SlotInfo, ...]
                                ) -> dict[tuple[str, str], evaluation.EvaluationResult]:
        """Drops results whose verdict a slot's status holds, or whose slot is gone."""
        if not self.evaluations:
            return {}
        statuses = {slot.key: slot.status for slot in slots}
        for key, result in list(self.evaluations.items()):
            status = statuses.get(key)
            record = status.evaluation if status is not None else None
            if status is None or (record is not None and (record.model, record.finished) == (
                    result.model, result.finished)):
                del self.evaluations[key]
        return dict(self.evaluations)

    def _start_evaluation(self, decision: SlotDecision) -> None:
        """Starts the evaluation a plan asks for, unless it runs or has a result."""
        request = decision.evaluate
        endpoint = decision.endpoint if request is not None else None
        if request is None or endpoint is None:
            return
        key, wanted = (request.namespace, request.name), (request.model, request.criteria)
        running = self._evaluating.get(key)
        if running is not None and running[0] == wanted and not running[1].done():
            return
        held = self.evaluations.get(key)
        if held is not None and (held.model, held.criteria) == wanted:
            return
        logger.info("evaluating model %s of %s/%s at %s", request.served_name, *key, endpoint)
        task = asyncio.create_task(self._evaluate(request, endpoint),
                                   name=f"hybrid-compute-evaluate-{key[0]}-{key[1]}")
        self._evaluating[key] = (wanted, task)

    async def _evaluate(self, request: evaluation.EvaluationRequest, endpoint: str) -> None:
        key = (request.namespace, request.name)
        try:
            result = await asyncio.to_thread(
                evaluator.run, request.evaluation, endpoint, request.served_name,
                request.model, clock.now)
        except Exception:
            # The next plan asks again; a broken evaluation must not reject a model.
            logger.exception("evaluating %s/%s failed", *key)
            return
        self.evaluations[key] = result
        self.metrics.record_evaluation(request.namespace, request.name, request.alias,
                                       result.passed)
        logger.info("evaluation of %s (%s/%s): %s (%s)%s", request.served_name, *key,
                    "passed" if result.passed else "FAILED", result.summary(),
                    "" if result.passed else ": " + "; ".join(result.failed_checks()))
        self.poke()

    def standing_by(self) -> bool:
        """True on a replica that does not hold the leader Lease: it must not act."""
        return self.leadership is not None and not self.leadership.is_leader()

    async def _reconcile_while_leading(self) -> datetime.datetime | None:
        """One pass, abandoned the moment leadership is lost; None when it was."""
        if self.leadership is None:
            return await self.reconcile_once()
        reconciling = asyncio.ensure_future(self.reconcile_once())
        stepped_down = asyncio.ensure_future(self.leadership.standby.wait())
        try:
            await asyncio.wait({reconciling, stepped_down},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stepped_down.cancel()
        if not reconciling.done():
            # A write already handed to the API client's thread still completes; no
            # further one starts.
            reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciling
            logger.warning("leadership lost: the pass in progress was abandoned")
            return None
        return reconciling.result()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def changed() -> None:  # from the watch threads
            loop.call_soon_threadsafe(self.poke)

        self.cache = ClusterCache(self.api, changed)
        self.cache.start()
        watcher = asyncio.create_task(self.watch_loading_pods(),
                                      name="hybrid-compute-loading-pods")
        try:
            await self.cache.synced()
            self.freezer.freeze(self.cache.size())
            await self._loop()
        finally:
            watcher.cancel()
            self.cache.stop()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if self.leadership is not None and not self.leadership.leading.is_set():
                logger.info("standing by: the leader is %s",
                            self.leadership.describe_leader())
                if self.telemetry is not None:
                    # The leader tells the agents what to keep warm; two would flap.
                    self.telemetry.want_warm(None)
                await self.leadership.leading.wait()
                continue
            try:
                wakeup = await self._reconcile_while_leading()
                if wakeup is None:
                    continue
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                self.metrics.record_reconcile_error(
                    "crd_missing" if error.status == 404 else "api")
                if error.status == 404:
                    logger.warning("the ModelSlot CRD is not installed; install crds/ "
                                   "(kubectl apply -f crds/) and the operator picks it up")
                else:
                    logger.warning("reconcile failed: API %s %s; retrying in %.0fs",
                                   error.status, error.reason, RETRY_SECONDS)
                wakeup = clock.now() + datetime.timedelta(seconds=RETRY_SECONDS)
            except Exception:
                self.metrics.record_reconcile_error("internal")
                logger.exception("reconcile failed; retrying in %.0fs", RETRY_SECONDS)
                wakeup = clock.now() + datetime.timedelta(seconds=RETRY_SECONDS)
            timeout = max((wakeup - clock.now()).total_seconds(), DEBOUNCE_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            await asyncio.sleep(DEBOUNCE_SECONDS)


def _stage(stages: dict[PassStage, float], stage: PassStage, started: float) -> float:
    """Records the seconds since ``started`` as ``stage``; returns the moment now."""
    now = time.perf_counter()
    stages[stage] = now - started
    return now


class Freezer:
    """Keeps what lives as long as the process out of the collector's full passes.

    What the loop holds (the modules, the caches' records, the plan's memo) would be
    scanned again by every full collection, every few plans, at a cost that grows with
    the number of objects the cluster has. It is frozen (``gc.freeze``) once the
    caches are filled; again after the first quiet pass, which has filled the plan's
    memo; and again after a quiet pass once the caches have grown by a quarter (a
    burst of new objects has settled). Each freeze follows a collection, so that no
    garbage is frozen. Frozen objects that become garbage through reference cycles
    are kept until the next full collection, which runs every
    ``FULL_COLLECTION_SECONDS``."""

    def __init__(self) -> None:
        self._frozen_records = 0
        self._memo_frozen = False
        self._last_full = time.monotonic()

    def freeze(self, records: int) -> None:
        gc.collect()
        gc.freeze()
        self._frozen_records = records

    def after_pass(self, records: int, quiet: bool) -> None:
        if time.monotonic() - self._last_full > FULL_COLLECTION_SECONDS:
            gc.unfreeze()
            self._last_full = time.monotonic()
            self.freeze(records)
        elif quiet and (not self._memo_frozen
                        or records > self._frozen_records * 5 // 4 + FREEZE_SLACK_RECORDS):
            self._memo_frozen = True
            self.freeze(records)

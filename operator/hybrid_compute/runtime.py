"""The control loop: observe, plan, act; woken by watch events, demands and the
plan's own next deadline (an idle timeout, the end of a minimum residency)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute import clock
from hybrid_compute.act import act
from hybrid_compute.observe import observe
from hybrid_compute.plan import Plan, plan
from hybrid_compute.view import PlanSettings, View

logger = logging.getLogger("hybrid_compute.loop")

DEBOUNCE_SECONDS = 0.02
RETRY_SECONDS = 5.0
FOLLOW_UP_SECONDS = 0.5


class Runtime:
    """Holds the loop's state: demands heard, the last view and plan."""

    def __init__(self, api: client.ApiClient, settings: PlanSettings) -> None:
        self.api = api
        self.settings = settings
        self.demands: dict[str, datetime.datetime] = {}
        self.last_plan: Plan | None = None
        self.last_view: View | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Something changed: plan again soon."""
        self._wake.set()

    def demand(self, alias: str, when: datetime.datetime) -> None:
        previous = self.demands.get(alias)
        if previous is None or when > previous:
            self.demands[alias] = when
        self.poke()

    def aliases(self) -> set[str]:
        if self.last_view is None:
            return set()
        return {s.spec.alias for s in self.last_view.slots if s.spec}

    async def reconcile_once(self) -> datetime.datetime:
        """One observe → plan → act pass; returns when the plan wants to run again."""
        now = clock.now()
        view = await asyncio.to_thread(observe, self.api, self.demands, self.settings)
        result = plan(view, now)
        writes = await asyncio.to_thread(act, self.api, result, view, now)
        self.last_view, self.last_plan = view, result
        for line in writes:
            logger.info("applied %s", line)
        wakeup = result.next_wakeup or now + self.settings.idle_check_interval
        if writes:
            wakeup = min(wakeup, now + datetime.timedelta(seconds=FOLLOW_UP_SECONDS))
        return wakeup

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wakeup = await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 404:
                    logger.warning("the ModelSlot CRD is not installed; install crds/ "
                                   "(kubectl apply -f crds/) and the operator picks it up")
                else:
                    logger.warning("reconcile failed: API %s %s; retrying in %.0fs",
                                   error.status, error.reason, RETRY_SECONDS)
                wakeup = clock.now() + datetime.timedelta(seconds=RETRY_SECONDS)
            except Exception:
                logger.exception("reconcile failed; retrying in %.0fs", RETRY_SECONDS)
                wakeup = clock.now() + datetime.timedelta(seconds=RETRY_SECONDS)
            timeout = max((wakeup - clock.now()).total_seconds(), DEBOUNCE_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            await asyncio.sleep(DEBOUNCE_SECONDS)

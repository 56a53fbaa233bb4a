"""``hybrid-compute dev tour``: the seed's story, told by the running local cluster.

Against a cluster started with ``dev up`` (the samples, LiteLLM and the cloud
stand-in), the tour sends real requests through LiteLLM and prints, step by step,
the route headers the router set, how long each answer took and what the process
node did meanwhile (which llama-server exited, which one started, when its pod
turned Ready):

1. a simple ``hybrid/auto`` request, served by fast's llama-server;
2. a ``local/quality`` request while fast holds the GPU: bridged to the cloud
   stand-in at once, while the real swap runs (fast's llama-server stops, then
   quality's loads its model);
3. the same request again, now served by quality's llama-server;
4. the GPU returning to fast once quality idles out, and ``hybrid/auto`` served by
   fast again;
5. a privacy-tagged request for ``local/quality``: never bridged, it is held
   through the swap and answered by quality's llama-server; the stand-in's record
   shows it never reached the cloud. The tour then waits for the GPU to return to
   fast once more.

So that the tour takes a minute rather than ten, it patches the samples' GPU slots
for its duration: quality and quality-alt idle out after
:data:`TOUR_IDLE_TIMEOUT` (``spec.idleTimeout``, 5 min in the sample) and every GPU
slot's ``spec.minResidency`` is :data:`TOUR_MIN_RESIDENCY` (the operator's 30 s by
default); the fields get their earlier values back at the end, also when the tour
fails or is interrupted. The exit status is 0 when every step went as told.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from hybrid_compute.api.labels import SLOT_LABEL
from hybrid_compute.dev import local_serving
from hybrid_compute.dev.cluster import ClusterError, DevCluster
from hybrid_compute.dev.openai_call import Reply, post_json
from hybrid_compute.dev.process_node import RECORDS_FILE

NAMESPACE = local_serving.NAMESPACE
FAST, QUALITY, QUALITY_ALT = "fast", "quality", "quality-alt"
"""The sample GPU slots: the default one, the one the story asks for, and the other
OnDemand one, which the tour only waits to see in Standby."""
ON_DEMAND = (QUALITY, QUALITY_ALT)
TOUR_IDLE_TIMEOUT = "10s"
TOUR_MIN_RESIDENCY = "2s"
PATCHED_FIELDS = ("idleTimeout", "minResidency")
ROUTER_REFRESH_SECONDS = 2.5
"""The router reads the operator's state every 2 s."""
SWAP_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 180.0
"""LiteLLM takes a minute or so to start on a small machine."""
PRIVATE_TAGS = ["private"]
ROUTE_HEADERS = ("x-hybrid-route", "x-hybrid-model", "x-hybrid-reason")


class TourError(RuntimeError):
    """A step did not go as the story tells; the message says what happened."""


@dataclass(frozen=True)
class ProcessEvent:
    """A start or exit of a program on the process node, from its records."""

    event: str
    pid: int
    pod: str
    at: float


class Tour:
    def __init__(self, cluster: DevCluster, out: TextIO = sys.stdout) -> None:
        self.cluster = cluster
        self.out = out
        self.endpoint = local_serving.endpoint(cluster)
        state = cluster.state()
        if state is None or local_serving.CLOUD_PROCESS not in state.ports:
            raise ClusterError(f"cluster {cluster.name!r} runs no cloud stand-in: start it "
                               "with `hybrid-compute dev up`")
        self.cloud_url = f"http://127.0.0.1:{state.ports[local_serving.CLOUD_PROCESS]}"
        self.started = time.monotonic()
        self.alias = {name: self._alias(name) for name in (FAST, *ON_DEMAND)}

    def _alias(self, name: str) -> str:
        try:
            alias: str = self.slot(name)["spec"]["alias"]
        except urllib.error.HTTPError as error:
            raise ClusterError(f"cluster {self.cluster.name!r} has no ModelSlot "
                               f"{NAMESPACE}/{name} of the samples ({error})") from None
        return alias

    # ------------------------------------------------------------------ output

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    def show(self, reply: Reply) -> None:
        self.say(f"      -> {reply.status} in {reply.seconds:.1f}s")
        for name in ROUTE_HEADERS:
            self.say(f"         {name}: {reply.headers.get(name, '(none)')}")
        text = " ".join(reply.text.split())
        tokens = (reply.body.get("usage") or {}).get("completion_tokens")
        if text.isprintable():
            self.say(f"         answer: {text[:90]!r}")
        else:  # the local models have random weights: their text is noise
            self.say(f"         answer: {tokens} tokens of random-weight text")

    # ------------------------------------------------------------------- reads

    def chat(self, model: str, content: str, **metadata: Any) -> Reply:
        body: dict[str, Any] = {"model": model, "max_tokens": 16,
                                "messages": [{"role": "user", "content": content}]}
        if metadata:
            body["metadata"] = metadata
        return post_json(f"{self.endpoint.base_url}/chat/completions", body,
                         self.endpoint.api_key, timeout=180)

    def slot(self, name: str) -> dict[str, Any]:
        return self.cluster.api_get(
            f"/apis/hybridcompute.io/v1alpha1/namespaces/{NAMESPACE}/modelslots/{name}")

    def phase(self, name: str) -> str | None:
        phase: str | None = (self.slot(name).get("status") or {}).get("phase")
        return phase

    def pid(self, slot: str) -> int | None:
        """The process id of the slot's llama-server, when one runs."""
        selector = urllib.parse.quote(f"{SLOT_LABEL}={slot}")
        pods = self.cluster.api_get(
            f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
        for pod in pods:
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                container_id = status.get("containerID") or ""
                if container_id.startswith("process://") and "running" in status.get(
                        "state", {}):
                    return int(container_id.removeprefix("process://"))
        return None

    def process_events(self) -> list[ProcessEvent]:
        path = self.cluster.process_node_folder() / RECORDS_FILE
        events = []
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            if entry["event"] in ("started", "exited") and entry.get("pid"):
                events.append(ProcessEvent(entry["event"], entry["pid"],
                                           entry.get("pod", ""), entry["at"]))
        return events

    def cloud_calls(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.cloud_url}/calls", timeout=10) as response:
            calls: list[dict[str, Any]] = json.loads(response.read())
        return calls

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Polls ``condition``; returns the seconds it took."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TourError(f"waited {timeout:.0f}s for {what}")
            time.sleep(0.2)
        return time.monotonic() - started

    def gpu_on_fast(self) -> bool:
        return (self.phase(FAST) == "Ready"
                and all(self.phase(name) == "Standby" for name in ON_DEMAND))

    # ----------------------------------------------------------------- patches

    @contextmanager
    def short_timeouts(self) -> Iterator[None]:
        """The tour's idle timeouts and minimum residency, restored afterwards."""
        patches = {name: {"minResidency": TOUR_MIN_RESIDENCY} for name in (FAST, *ON_DEMAND)}
        for name in ON_DEMAND:
            patches[name]["idleTimeout"] = TOUR_IDLE_TIMEOUT
        earlier = {name: {key: self.slot(name)["spec"].get(key) for key in PATCHED_FIELDS}
                   for name in patches}
        described = ", ".join(f"{key} {value or 'unset'}"
                              for key, value in earlier[QUALITY].items())
        self.say(f"  for the tour: {QUALITY} and {QUALITY_ALT} idle out after "
                 f"{TOUR_IDLE_TIMEOUT} and every GPU slot's minResidency is "
                 f"{TOUR_MIN_RESIDENCY} ({QUALITY} had {described}); restored at the end")
        try:
            for name, spec in patches.items():
                self._patch(name, spec)
            yield
        finally:
            for name, spec in earlier.items():
                self._patch(name, {key: spec[key] for key in patches[name]})

    def _patch(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "modelslot", name, "-n", NAMESPACE, "--type=merge",
                             "-p", json.dumps({"spec": spec}))

    # ------------------------------------------------------------------- story

    def at(self) -> str:
        return f"[{time.monotonic() - self.started:5.1f}s]"

    def step(self, number: int, title: str) -> None:
        self.say()
        self.say(f"{self.at()} step {number}/5: {title}")

    def expect(self, holds: bool, what: str) -> None:
        if not holds:
            raise TourError(what)

    def run(self) -> None:
        self.say(f"hybrid-compute dev tour on cluster {self.cluster.name!r}: LiteLLM at "
                 f"{self.endpoint.base_url}")
        with self.short_timeouts():
            self._ready()
            self._simple_request()
            swap_started = self._bridged_during_swap()
            self._served_locally(swap_started)
            self._back_to_fast()
            self._private_request_held()
        self.say()
        self.say(f"{self.at()} tour done; the slots' idleTimeout and minResidency are "
                 "restored")

    def _ready(self) -> None:
        health = (self.endpoint.base_url.removesuffix("/v1") + "/health/liveliness")

        def litellm_up() -> bool:
            try:
                with urllib.request.urlopen(health, timeout=5) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        if not (litellm_up() and self.gpu_on_fast()):
            self.say(f"{self.at()} waiting for LiteLLM and for the GPU to be on {FAST} ...")
        self.wait_for(litellm_up, START_TIMEOUT_SECONDS, "LiteLLM to answer")
        self.wait_for(self.gpu_on_fast, START_TIMEOUT_SECONDS,
                      f"{FAST} Ready and {', '.join(ON_DEMAND)} Standby")

    def _request(self, model: str, content: str, **metadata: Any) -> Reply:
        shown = f" metadata={json.dumps(metadata)}" if metadata else ""
        self.say(f'      POST {model} "{content}"{shown}')
        reply = self.chat(model, content, **metadata)
        self.show(reply)
        return reply

    def _expect_local(self, reply: Reply, slot: str, what: str) -> None:
        self.expect(reply.status == 200 and (reply.route, reply.served_by) == (
            "local", self.alias[slot]), f"{what} was not served by {self.alias[slot]}")

    def _simple_request(self) -> None:
        self.step(1, f"a simple hybrid/auto request, served locally by {FAST}'s llama-server")
        self.say('      POST hybrid/auto "Say hello."  (a short prompt: simple)')
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        reply = self.chat("hybrid/auto", "Say hello.")
        while reply.status != 200 and time.monotonic() < deadline:
            time.sleep(2)  # LiteLLM may still be rolling out its first config
            reply = self.chat("hybrid/auto", "Say hello.")
        self.show(reply)
        self.say(f"         {FAST}'s llama-server: pid {self.pid(FAST)}")
        self._expect_local(reply, FAST, "hybrid/auto")

    def _bridged_during_swap(self) -> float:
        quality = self.alias[QUALITY]
        self.step(2, f"{quality} while {FAST} holds the GPU: bridged to the cloud stand-in "
                     "while the real swap runs")
        fast_pid = self.pid(FAST)
        asked = time.time()
        reply = self._request(quality, "Explain the plan.")
        self.expect(reply.status == 200 and reply.route == "bridged",
                    f"{quality} was not bridged while {QUALITY} was not Ready")
        self.say(f"{self.at()} the swap the bridged request asked the operator for:")
        self.wait_for(lambda: self.phase(QUALITY) == "Ready", SWAP_TIMEOUT_SECONDS,
                      f"{QUALITY} Ready")
        self._say_swap(asked, fast_pid, FAST, self.pid(QUALITY), QUALITY)
        self.say(f"         {QUALITY} Ready {time.time() - asked:5.1f}s after the request "
                 "(its pod turns Ready when llama-server's /health answers 200)")
        return asked

    def _say_swap(self, since: float, old_pid: int | None, old: str, new_pid: int | None,
                  new: str, since_what: str = "the request") -> None:
        """Every start and exit of a slot's llama-server since ``since``, and that
        ``old``'s process exited before ``new``'s started."""
        events = [e for e in self.process_events() if e.at >= since]
        for event in events:
            slot = event.pod.rsplit("-", 2)[0]
            if slot in (FAST, *ON_DEMAND):
                what = ("started, loading its model" if event.event == "started"
                        else "exited")
                self.say(f"         {event.at - since:5.1f}s after {since_what}: {slot}'s "
                         f"llama-server (pid {event.pid}) {what}")
        exited = next((e for e in events if e.event == "exited" and e.pid == old_pid), None)
        started = next((e for e in events if e.event == "started" and e.pid == new_pid),
                       None)
        self.expect(exited is not None and started is not None and exited.at < started.at,
                    f"{old}'s llama-server did not exit before {new}'s started")

    def _served_locally(self, swap_started: float) -> None:
        quality = self.alias[QUALITY]
        self.step(3, f"the same {quality} request, now served by {QUALITY}'s llama-server")
        time.sleep(ROUTER_REFRESH_SECONDS)  # the router's next look at the operator's state
        reply = self._request(quality, "Explain the plan.")
        self.say(f"         {QUALITY}'s llama-server: pid {self.pid(QUALITY)}; "
                 f"{time.time() - swap_started:.1f}s since the first {quality} request")
        self._expect_local(reply, QUALITY, quality)

    def _back_to_fast(self) -> None:
        self.step(4, f"the GPU returns to {FAST} once {QUALITY} idles out "
                     f"({TOUR_IDLE_TIMEOUT} after its last request here)")
        quality_pid = self.pid(QUALITY)
        since = time.time()
        self.wait_for(self.gpu_on_fast, SWAP_TIMEOUT_SECONDS, f"{FAST} Ready again")
        self._say_swap(since, quality_pid, QUALITY, self.pid(FAST), FAST, "the last answer")
        self.say(f"         {FAST} Ready {time.time() - since:5.1f}s after the last answer")
        time.sleep(ROUTER_REFRESH_SECONDS)
        reply = self._request("hybrid/auto", "Say hello.")
        self._expect_local(reply, FAST, "hybrid/auto")

    def _private_request_held(self) -> None:
        quality = self.alias[QUALITY]
        self.step(5, f"a privacy-tagged request for {quality}: held for its swap and served "
                     "locally, never sent to the cloud")
        calls_before = len(self.cloud_calls())
        fast_pid = self.pid(FAST)
        asked = time.time()
        reply = self._request(quality, "Review my private notes.", tags=PRIVATE_TAGS)
        self._say_swap(asked, fast_pid, FAST, self.pid(QUALITY), QUALITY)
        reached = len(self.cloud_calls()) - calls_before
        self.say(f"         the cloud stand-in got {reached} calls meanwhile (its record: "
                 f"{self.cloud_url}/calls)")
        self._expect_local(reply, QUALITY, "the private request")
        self.expect(reached == 0, "a call reached the cloud stand-in during the private "
                                  "request")
        self.say(f"{self.at()} leaving the GPU to {FAST} again: {QUALITY} idles out "
                 f"{TOUR_IDLE_TIMEOUT} after the private answer")
        seconds = self.wait_for(self.gpu_on_fast, SWAP_TIMEOUT_SECONDS, f"{FAST} Ready again")
        self.say(f"         {FAST} Ready {seconds:5.1f}s after the private answer")


def tour_command(args: argparse.Namespace) -> int:
    """``dev tour``: 0 when every step went as told."""
    cluster = DevCluster(args.name)
    try:
        tour = Tour(cluster)
        tour.run()
    except (ClusterError, TourError) as error:
        print(f"tour stopped: {error}", file=sys.stderr)
        return 1
    return 0

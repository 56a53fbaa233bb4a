"""The local cluster as ``make dev`` runs it, serving real requests: the process
node plays dreamteam's kubelet with real llama-server and LiteLLM processes, the
samples' random-weight models load for real and the cloud stand-in answers the
cloud aliases.

The module starts a cluster of its own (``test-pnode``, after the suite's cluster
name; :mod:`tests.node.local_stack`), never the suite's, and stops it at the end;
tests run in file order on that one cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.dev.cloud_stand_in import STAND_IN_NOTE
from hybrid_compute.dev.cluster import _pid_alive, _pids_mentioning
from hybrid_compute.dev.openai_call import post_json
from hybrid_compute.dev.process_node import RECORDS_FILE
from tests.cluster.support import phase, wait
from tests.conftest import TEST_CLUSTER_NAME
from tests.node.local_stack import NAMESPACE, LocalStack, local_stack

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

CLUSTER_NAME = f"{TEST_CLUSTER_NAME}-pnode"
ROUTER_REFRESH_SECONDS = 2.5
PRIVATE_TEXT = "Review my private medical notes."
SECOND_NODE = "dreamteam-two"


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def _pid(pod: dict[str, Any]) -> int | None:
    container_id = _container(pod).get("containerID") or ""
    return int(container_id.removeprefix("process://")) if container_id else None


def _health(pod: dict[str, Any]) -> int:
    url = f"http://{pod['status']['podIP']}:8080/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack(CLUSTER_NAME) as running:
        yield running


def test_hybrid_auto_is_answered_by_the_fast_slots_llama_server(stack: LocalStack) -> None:
    started = time.monotonic()
    answer = stack.first_local_answer()
    print(f"first local answer {time.monotonic() - started:.1f}s after the fixture")
    assert answer.status == 200, answer.body
    assert answer.served_by == "local/fast"
    assert answer.body["usage"]["completion_tokens"] >= 1
    assert STAND_IN_NOTE not in answer.text
    fast = stack.pods("fast")
    assert len(fast) == 1 and _ready(fast[0])
    started_records = [r for r in stack.records()
                       if r["event"] == "started" and r["pod"] == fast[0]["metadata"]["name"]]
    assert started_records and started_records[-1]["pid"] == _pid(fast[0])
    assert _pid_alive(started_records[-1]["pid"])


class ReadinessSampler(threading.Thread):
    """Samples quality's pod every 100 ms: whenever the API says Ready, its
    llama-server's /health must answer 200."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.stop = threading.Event()
        self.ready_samples: list[int] = []
        self.not_ready_samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for pod in self.stack.pods("quality"):
                if (pod.get("status") or {}).get("podIP"):
                    if _ready(pod):
                        self.ready_samples.append(_health(pod))
                    else:
                        self.not_ready_samples += 1
            time.sleep(0.1)


class BusyAnswer(threading.Thread):
    """A long answer straight from a llama-server (at ``url``, its pod's address)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.started = threading.Event()
        self.status: int | None = None

    def run(self) -> None:
        body = json.dumps({"messages": [{"role": "user", "content": "Write a long story."}],
                           "max_tokens": 400, "ignore_eos": True, "stream": True}).encode()
        request = urllib.request.Request(f"{self.url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            self.status = answer.status
            for _ in answer:  # streamed: the first chunk says it runs
                self.started.set()


def test_a_swap_bridges_to_the_stand_in_then_quality_serves(stack: LocalStack) -> None:
    assert phase(stack.k8s, NAMESPACE, "quality") == "Standby"
    fast_pid = _pid(stack.pods("fast")[0])
    sampler = ReadinessSampler(stack)
    sampler.start()
    requested = time.monotonic()
    try:
        bridged = stack.chat("local/quality", "Explain the plan.")
        assert bridged.status == 200, bridged.body
        assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid"), bridged.headers
        assert "bridged to cloud/mid" in bridged.headers["x-hybrid-reason"]
        assert STAND_IN_NOTE in bridged.text
        assert [c["model"] for c in stack.cloud_calls()][-1] == "gemini-2.5-flash"

        wait(lambda: phase(stack.k8s, NAMESPACE, "quality") == "Ready", 120,
             "quality swapped in")
        swap = time.monotonic() - requested
        # The slot turns Ready a pass after its pod: the sampler may not have seen it yet.
        wait(lambda: sampler.ready_samples, 10, "a sample of quality's pod Ready")
    finally:
        sampler.stop.set()
        sampler.join()
    records = stack.records()
    fast_exit = next(r for r in records if r["event"] == "exited" and r["pid"] == fast_pid)
    quality_pod = stack.pods("quality")[0]
    quality_pid = _pid(quality_pod)
    quality_start = next(r for r in records if r["event"] == "started"
                         and r["pid"] == quality_pid)
    assert fast_exit["at"] < quality_start["at"], "quality started while fast still ran"
    assert not _pid_alive(fast_pid)
    load = next(r["at"] for r in records if r["event"] == "started" and r["pid"] == quality_pid)
    print(f"swap: request to quality Ready {swap:.1f}s (fast's min residency included); "
          f"fast exited -> quality started {quality_start['at'] - fast_exit['at']:.2f}s; "
          f"quality started -> Ready seen {time.time() - load:.1f}s")
    assert sampler.ready_samples, "quality was never seen Ready"
    assert set(sampler.ready_samples) == {200}, sampler.ready_samples
    assert sampler.not_ready_samples > 0, "quality's pod was Ready from its first sample"

    time.sleep(ROUTER_REFRESH_SECONDS)
    calls_before = len(stack.cloud_calls())
    local = stack.chat("local/quality", "Explain the plan.")
    assert (local.status, local.route, local.served_by) == (200, "local", "local/quality"), (
        local.headers, local.body)
    assert STAND_IN_NOTE not in local.text
    assert len(stack.cloud_calls()) == calls_before


def test_a_killed_server_is_restarted_and_a_deleted_pod_stops_its_process(
        stack: LocalStack) -> None:
    pod = stack.pods("quality")[0]
    assert _ready(pod)
    pid = _pid(pod)
    assert pid is not None
    restarts = _container(pod)["restartCount"]
    os.kill(pid, 9)
    seen_not_ready = wait(lambda: not _ready(stack.pods("quality")[0]), 10,
                          "quality not Ready after the kill")
    assert seen_not_ready
    wait(lambda: _ready(stack.pods("quality")[0]), 60, "quality Ready again")
    again = stack.pods("quality")[0]
    status = _container(again)
    assert status["restartCount"] == restarts + 1
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert again["metadata"]["uid"] == pod["metadata"]["uid"], "the pod was restarted in place"
    new_pid = _pid(again)
    assert new_pid is not None and new_pid != pid and _pid_alive(new_pid)

    grace = again["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    stack.cluster.kubectl("delete", "pod", again["metadata"]["name"], "-n", NAMESPACE,
                          "--wait=false")
    wait(lambda: not _pid_alive(new_pid), grace, "the deleted pod's llama-server gone")
    stopped = time.monotonic() - started
    print(f"deleted pod's process ended {stopped:.1f}s after the delete (grace {grace}s)")
    wait(lambda: all(p["metadata"]["uid"] != again["metadata"]["uid"]
                     for p in stack.pods("quality")), 30, "the pod object removed")


def test_a_private_request_during_a_swap_waits_and_never_reaches_the_cloud(
        stack: LocalStack) -> None:
    """quality holds the GPU (the tests above); quality-alt is asked for, and while
    quality drains for it a privacy-tagged request for quality-alt comes. The router
    may not bridge it: it is held through the drain and quality-alt's real load and
    answered by quality-alt's llama-server; the stand-in's record shows that no
    request reached the cloud meanwhile. quality idles out after 2 s here (5 min in
    the sample), so the swap starts at once."""
    # The test above replaced quality's pod; the slot's status can still say Ready from
    # before the delete while the new pod's llama-server loads, and the answer below goes
    # to the pod itself: wait for that pod, alone and Ready, too.
    wait(lambda: stack.phase("quality") == "Ready"
         and [_ready(p) for p in stack.pods("quality")] == [True], 60,
         "quality's new pod Ready")
    assert stack.phase("quality-alt") == "Standby"
    calls_before = stack.cloud_calls()
    # An answer in flight keeps quality draining for seconds: idle, its drain ends
    # a pass after it starts, too soon to be seen.
    busy = BusyAnswer(f"http://{stack.pods('quality')[0]['status']['podIP']}:8080")
    busy.start()
    wait(lambda: busy.started.is_set(), 30, "quality busy answering")
    # Asked for first, quality-alt is the one that takes the GPU when quality
    # idles out (fast, the default slot, ranks below it).
    stack.demand("local/quality-alt")
    stack.patch_slot("quality", {"idleTimeout": "2s", "minResidency": "1s"})
    try:
        # The drain ends as soon as the routers have seen it: watch for quality
        # leaving, not for one phase a poll could miss.
        wait(lambda: stack.phase("quality") != "Ready", 60, "quality leaving the GPU")
        assert stack.phase("quality-alt") != "Ready"
        sent = time.time()
        answer = stack.chat("local/quality-alt", PRIVATE_TEXT, tags=["private"])
        answered = time.time()
    finally:
        stack.patch_slot("quality", {"idleTimeout": "5m", "minResidency": None})
        busy.join(120)
    assert busy.status == 200, "the drain cut quality's answer"
    assert answer.status == 200, answer.body
    assert (answer.route, answer.served_by) == ("local", "local/quality-alt"), answer.headers
    assert answer.headers["x-hybrid-reason"].startswith("held "), answer.headers
    assert STAND_IN_NOTE not in answer.text
    calls = stack.cloud_calls()
    assert calls == calls_before, "a request reached the cloud during the private swap"
    assert all(PRIVATE_TEXT not in json.dumps(call) for call in calls)

    alt = stack.pods("quality-alt")
    assert len(alt) == 1 and _ready(alt[0])
    alt_pid = _pid(alt[0])
    records = stack.records()
    alt_start = next(r for r in records if r["event"] == "started" and r["pid"] == alt_pid)
    quality_exits = [r for r in records if r["event"] == "exited"
                     and r.get("pod", "").startswith("quality-")
                     and not r["pod"].startswith("quality-alt-")]
    assert sent < alt_start["at"] < answered, "quality-alt was not loaded for the request"
    assert quality_exits and quality_exits[-1]["at"] < alt_start["at"], \
        "quality-alt started while quality still ran"
    print(f"private request held {answered - sent:.1f}s: quality drained and exited, "
          f"quality-alt loaded {answered - alt_start['at']:.1f}s before the answer")


def test_the_tour_tells_the_seeds_story_on_the_running_cluster(stack: LocalStack) -> None:
    """``hybrid-compute dev tour --name test-pnode`` as a user runs it: every step of the
    story goes as told (the tour checks the route headers and the process records
    itself and exits 1 otherwise), and the slots it patched are as before."""
    before = {name: stack.slot_spec(name) for name in ("fast", "quality", "quality-alt")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hybrid_compute", "dev", "tour",
                             "--name", CLUSTER_NAME],
                            capture_output=True, text=True, timeout=400)
    seconds = time.monotonic() - started
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for title in ("step 1/5: a simple hybrid/auto request, served locally",
                  "step 2/5: local/quality while fast holds the GPU: bridged to the cloud "
                  "stand-in while the real swap runs",
                  "step 3/5: the same local/quality request, now served by quality's",
                  "step 4/5: the GPU returns to fast once quality idles out",
                  "step 5/5: a privacy-tagged request for local/quality: held for its swap "
                  "and served locally, never sent to the cloud"):
        assert title in out, title
    assert out.count("x-hybrid-route: local") == 4 and "x-hybrid-route: bridged" in out
    assert "the cloud stand-in got 0 calls meanwhile" in out
    assert "tour done" in out
    assert {name: stack.slot_spec(name) for name in before} == before
    print(f"tour: {seconds:.1f}s")


def test_a_second_process_node_runs_its_pods_reached_through_the_service_proxy(
        stack: LocalStack) -> None:
    """``dev add-node`` plays the new node with an agent of its own, whose pods get
    addresses from a block of their own. fast's own pod template, pinned to that node,
    runs a real llama-server there, and the Service proxy the operator's endpoints go
    through (the first node's) reaches it. Last before ``dev down``: the new node
    changes where the plan puts slots."""
    added = subprocess.run(
        [sys.executable, "-m", "hybrid_compute", "dev", "add-node", SECOND_NODE,
         "--profile", "rtx3090", "--name", CLUSTER_NAME],
        capture_output=True, text=True, timeout=120, check=False)
    assert added.returncode == 0, added.stderr
    assert "process" in added.stdout, added.stdout
    template = stack.k8s.apps.read_namespaced_deployment("fast", NAMESPACE).spec.template
    pod_template = stack.k8s.api.sanitize_for_serialization(template)
    labels = {"app.kubernetes.io/name": "pinned-copy"}
    pod_template["metadata"] = {"labels": labels}
    pod_template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": SECOND_NODE}
    pod_template["spec"]["containers"][0].get("resources", {}).pop("limits", None)
    stack.cluster.apply([
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "pinned-copy", "namespace": NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": pod_template}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "pinned-copy", "namespace": NAMESPACE},
         "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]}}])
    try:
        def ready_copy() -> dict[str, Any] | None:
            pods = stack.k8s.core.list_namespaced_pod(
                NAMESPACE, label_selector="app.kubernetes.io/name=pinned-copy",
                _preload_content=False)
            found = [p for p in json.loads(pods.data)["items"] if _ready(p)]
            return found[0] if found else None

        pod = wait(ready_copy, 120, "fast's pod template Ready on the second node")
        assert pod["spec"]["nodeName"] == SECOND_NODE
        first_address = stack.pods("embed")[0]["status"]["podIP"]
        assert pod["status"]["podIP"].split(".")[1] != first_address.split(".")[1], (
            "the two nodes hand out addresses from the same block")
        records = (stack.cluster.process_node_folder(SECOND_NODE) / RECORDS_FILE).read_text()
        started = [json.loads(line) for line in records.splitlines() if line]
        assert any(r["event"] == "started" and r["pid"] == _pid(pod) for r in started), \
            "its llama-server was not started by the second node's agent"
        proxy = stack.cluster.service_proxy_port
        assert proxy is not None
        served_name = stack.slot_spec("fast")["model"]["servedName"]
        answer = post_json(
            f"http://127.0.0.1:{proxy}/{NAMESPACE}/pinned-copy/8080/v1/chat/completions",
            {"model": served_name, "max_tokens": 4,
             "messages": [{"role": "user", "content": "Say hello."}]}, "unused", 60)
        assert answer.status == 200, answer.body
        assert answer.body["model"] == served_name
    finally:
        stack.cluster.kubectl("delete", "deployment,service", "pinned-copy", "-n", NAMESPACE,
                              "--wait=false", check=False)


def test_dev_down_leaves_no_process(stack: LocalStack) -> None:
    pids = {r["pid"] for r in stack.records() if r.get("pid")}
    folder: Path = stack.cluster.folder
    assert any(_pid_alive(pid) for pid in pids), "nothing ran before dev down"
    stack.cluster.down(quiet=True)
    assert not [pid for pid in pids if _pid_alive(pid)]
    assert _pids_mentioning(str(folder)) == []
    assert not folder.exists()

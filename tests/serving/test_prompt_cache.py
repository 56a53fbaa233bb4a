"""Prompt caches kept across swaps (spec.server.promptCache), with real llama-servers.

Runs on the process node (``node_cluster``): slot ``long`` serves a model on which
a prompt of a few thousand tokens takes seconds to prefill, and holds the GPU by
default; ``partner`` evicts it on demand and idles out a few seconds later, so
``long`` comes back. Before ``long``'s pod goes, its llama-server saves its prompt
cache into the node's folder (a ``DirectoryOrCreate`` hostPath, which the process
node keeps under its own folder); once it is loaded again the operator restores
it before the slot is Ready. Each test starts with ``long`` serving.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.dev.tiny_models import TinyShape, write_tiny_model
from tests.cluster.support import apply, phase, read, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.serving.conftest import NodeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

PORT = 8080
PROMPT_SHAPE = TinyShape(layers=4, embedding=512, heads=8, kv_heads=4, feed_forward=1536,
                         context=8192)
"""About 13M parameters: a 2k-token prompt takes a couple of seconds on one thread."""
OTHER_SHAPE = TinyShape(layers=3, embedding=512, heads=8, kv_heads=4, feed_forward=1536,
                        context=8192)
PREFIX = "".join(f"Step {n}: read the file, check the plan, write the patch. "
                 for n in range(25))
"""An agent's long system prompt: about 2k tokens with the byte tokenizer."""
CTX_SIZE = 4096
SWAP_TIMEOUT = 180


@dataclass
class Slots:
    k8s: TestCluster
    node: NodeCluster
    operator: OperatorHandle
    namespace: str

    @property
    def alias(self) -> str:
        return f"local/long-{self.namespace}"

    @property
    def cache_folder(self) -> Path:
        return self.node.cluster.process_node_folder() / "host" / self.host_path.lstrip("/")

    @property
    def host_path(self) -> str:
        return f"/var/lib/hybrid-compute-test/{self.namespace}"

    def status(self) -> dict[str, Any]:
        return dict(read(self.k8s, self.namespace, "long").get("status") or {})

    def url(self) -> str:
        [pod] = [p for p in self.node.pods(self.namespace, "long")
                 if not p["metadata"].get("deletionTimestamp")]
        return f"http://{pod['status']['podIP']}:{PORT}"

    def prompt(self, question: str) -> tuple[float, dict[str, Any]]:
        """The long prompt with ``question`` at its end, straight to ``long``'s
        llama-server: seconds to its first token, and llama-server's timings."""
        body = {"max_tokens": 1, "messages": [{"role": "system", "content": PREFIX},
                                              {"role": "user", "content": question}]}
        request = urllib.request.Request(f"{self.url()}/v1/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as answer:
            payload = json.loads(answer.read())
        return time.monotonic() - started, dict(payload["timings"])

    def patch(self, spec: dict[str, Any]) -> None:
        self.k8s.kubectl("patch", "modelslot", "long", "-n", self.namespace, "--type=merge",
                         "-p", json.dumps({"spec": spec}))

    def swap_out_and_back(self, while_out: Callable[[], None] = lambda: None) -> None:
        """``partner`` takes the GPU; ``while_out`` runs while ``long`` stands by; then
        ``partner`` idles out and ``long`` is Ready again."""
        self.operator.demand(f"local/partner-{self.namespace}")
        wait(lambda: phase(self.k8s, self.namespace, "partner") == "Ready"
             and phase(self.k8s, self.namespace, "long") == "Standby", SWAP_TIMEOUT,
             "partner swapped in")
        while_out()
        wait(lambda: phase(self.k8s, self.namespace, "long") == "Ready", SWAP_TIMEOUT,
             "long back")

    def restore_recorded_after(self, moment: datetime.datetime) -> dict[str, Any]:
        def recorded() -> dict[str, Any] | None:
            last = (self.status().get("promptCache") or {}).get("lastRestore")
            return last if last and _moment(last["at"]) > moment else None
        found: dict[str, Any] = wait(recorded, 30, "the restore recorded")
        return found

    def last_restore_at(self) -> datetime.datetime | None:
        found = ((self.status().get("promptCache") or {}).get("lastRestore") or {}).get("at")
        return _moment(found) if found else None

    def events(self, reason: str) -> list[str]:
        listed = json.loads(self.k8s.kubectl("get", "events", "-n", self.namespace,
                                             "-o", "json").stdout)["items"]
        return [e["message"] for e in listed if e.get("reason") == reason]

    def restores_counted(self, outcome: str) -> float:
        wanted = {f'namespace="{self.namespace}"', 'slot="long"', f'outcome="{outcome}"'}
        for line in self.operator.scrape().splitlines():
            name, _, rest = line.partition("{")
            if name == "hybrid_compute_prompt_cache_restores_total":
                labels, _, value = rest.rpartition("} ")
                if set(labels.split(",")) == wanted:
                    return float(value)
        return 0.0


@pytest.fixture(scope="module")
def operator(node_cluster: NodeCluster) -> Iterator[OperatorHandle]:
    yield node_cluster.start_operator()
    node_cluster.stop_operator()


@pytest.fixture(scope="module")
def slots(k8s: TestCluster, node_cluster: NodeCluster,
          operator: OperatorHandle) -> Iterator[Slots]:
    models = node_cluster.models
    write_tiny_model(models / "prompt.gguf", PROMPT_SHAPE, seed=1, name="prompt")
    write_tiny_model(models / "prompt-twin.gguf", PROMPT_SHAPE, seed=2, name="prompt")
    write_tiny_model(models / "tiny.gguf")
    namespace = f"cache-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", namespace)
    found = Slots(k8s, node_cluster, operator, namespace)
    try:
        apply(k8s, namespace, [
            _slot("long", f"local/long-{namespace}", default=True,
                  model={"path": f"{namespace}.gguf", "vram": "12Gi"},
                  server={"port": PORT, "ctxSize": CTX_SIZE, "promptCache": {
                      "enabled": True, "hostPath": found.host_path}}),
            _slot("partner", f"local/partner-{namespace}", activation="OnDemand",
                  idleTimeout="4s", priority=300,
                  model={"path": "tiny.gguf", "vram": "16Gi"}, server={"port": PORT}),
        ])
        # The slot's own copy: the last test replaces it.
        shutil.copyfile(models / "prompt.gguf", models / f"{namespace}.gguf")
        wait(lambda: phase(k8s, namespace, "long") == "Ready", SWAP_TIMEOUT, "long Ready")
        yield found
    finally:
        k8s.kubectl("delete", "modelslots,deployments", "--all", "-n", namespace,
                    "--wait=false", check=False)
        k8s.kubectl("wait", "--for=delete", "pods", "--all", "-n", namespace,
                    "--timeout=60s", check=False)
        k8s.kubectl("delete", "namespace", namespace, "--wait=false")


def _moment(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _slot(name: str, alias: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
            "metadata": {"name": name},
            "spec": {"alias": alias, "minResidency": "1s", **spec}}


def test_a_saved_cache_is_restored_after_a_swap_back_and_the_long_prompt_answers_sooner(
        slots: Slots) -> None:
    cold_seconds, cold = slots.prompt("What is step 3?")
    assert cold["cache_n"] == 0 and cold["prompt_n"] > 1500, cold
    swapped = _now()
    slots.swap_out_and_back()

    record = slots.status()["promptCache"]
    assert record["lastSave"]["files"] == 1, record
    [saved] = record["files"]
    assert saved["tokens"] >= cold["prompt_n"], saved
    assert (slots.cache_folder / saved["name"]).stat().st_size == saved["bytes"]
    restored = slots.restore_recorded_after(swapped)
    assert (restored["files"], restored["tokens"]) == (1, saved["tokens"]), restored
    assert not restored.get("failed"), restored

    warm_seconds, warm = slots.prompt("What is step 9?")
    assert warm["cache_n"] >= len(PREFIX) * 0.9, (
        f"expected the shared prefix from the restored cache, got {warm}")
    assert warm["prompt_n"] < cold["prompt_n"] / 10, warm
    assert warm_seconds < cold_seconds / 2, (
        f"the long prompt took {warm_seconds:.2f}s after the restore, "
        f"{cold_seconds:.2f}s before the swap")
    assert slots.restores_counted("restored") >= 1


@pytest.mark.parametrize("change", ["another model file", "another ctx-size"])
def test_a_cache_for_another_model_file_or_context_size_is_not_restored(
        slots: Slots, change: str) -> None:
    slots.prompt("What is step 5?")
    swapped = _now()
    spec_change = ({"model": {"path": "prompt-twin.gguf"}} if change == "another model file"
                   else {"server": {"ctxSize": CTX_SIZE * 2}})
    undo = ({"model": {"path": f"{slots.namespace}.gguf"}} if change == "another model file"
            else {"server": {"ctxSize": CTX_SIZE}})
    try:
        slots.swap_out_and_back(lambda: slots.patch(spec_change))
        # The pass after Ready would have recorded a restore; give it time to.
        time.sleep(2)
        last = slots.last_restore_at()
        assert last is None or last < swapped, slots.status().get("promptCache")
        _, timings = slots.prompt("What is step 5?")
        assert timings["cache_n"] == 0, f"a cache reached the new server: {timings}"
    finally:
        slots.patch(undo)
        wait(lambda: _serving_its_spec(read(slots.k8s, slots.namespace, "long")), SWAP_TIMEOUT,
             "long serving its own model again")


def _serving_its_spec(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return (status.get("phase") == "Ready"
            and status.get("observedGeneration") == body["metadata"]["generation"])


def test_a_corrupt_cache_file_is_skipped_with_a_warning_and_the_slot_still_serves(
        slots: Slots) -> None:
    # A save first (the test before may have emptied the record), then the corruption.
    slots.prompt("What is step 7?")
    slots.swap_out_and_back()
    slots.prompt("What is step 7?")
    failed_before = slots.restores_counted("failed")
    swapped = _now()

    def corrupt() -> None:
        [saved] = slots.status()["promptCache"]["files"]
        (slots.cache_folder / saved["name"]).write_bytes(b"not a llama.cpp state" * 64)

    slots.swap_out_and_back(corrupt)
    restored = slots.restore_recorded_after(swapped)
    assert restored["files"] == 0 and restored["failed"], restored
    assert any("serves without them" in m for m in slots.events("PromptCacheRestoreFailed"))
    assert slots.restores_counted("failed") == failed_before + 1
    assert phase(slots.k8s, slots.namespace, "long") == "Ready"
    _, timings = slots.prompt("What is step 8?")
    assert timings["cache_n"] == 0 and timings["prompt_n"] > 1500, timings
    assert slots.status()["promptCache"]["files"] == [], "the corrupt cache stayed on record"


def test_a_cache_of_a_model_file_replaced_at_its_path_is_refused(slots: Slots,
                                                              node_cluster: NodeCluster
                                                              ) -> None:
    slots.prompt("What is step 6?")
    swapped = _now()
    own = node_cluster.models / f"{slots.namespace}.gguf"
    write_tiny_model(node_cluster.models / "other-shape.gguf", OTHER_SHAPE, name="prompt")
    slots.swap_out_and_back(lambda: _replace(node_cluster.models / "other-shape.gguf", own))
    restored = slots.restore_recorded_after(swapped)
    assert restored["files"] == 0
    assert "model file differs" in restored["failed"][0], restored
    assert any("serves without them" in m for m in slots.events("PromptCacheRestoreFailed"))
    assert phase(slots.k8s, slots.namespace, "long") == "Ready"


def _replace(source: Path, target: Path) -> None:
    """A new file at ``target``'s path, as a download would leave it: a server still
    mapping the old one keeps it."""
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)

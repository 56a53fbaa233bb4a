"""Swaps at the floor: one swap measured three ways in one run, side by side.

1. floor: a bare llama-server serving model A is stopped and one for model B is
   started, as a script would; timed from the stop until B's first token.
2. router mode: llama-server's own router (``--models-dir``, ``--models-max 1``)
   serving A gets a request for B; it stops A's child, starts B's and answers;
   timed from the request until B's first token.
3. this project: a request for ``local/b`` through the real LiteLLM proxy, held
   for the swap (``x-hybrid-patience``), while slot ``a`` holds the GPU, on the
   local cluster's process node (a real llama-server per pod); timed from the
   request until the first token.

Every contender serves the same two random-weight model files with the same
llama-server flags (the ones the operator renders for a slot, with the process
node's thread cap). Rounds alternate between the contenders, the order rotating,
so drift on a shared machine spreads over all three. A round runs with B's file
warm in the page cache; with ``--cold`` another runs with it evicted first
(``POSIX_FADV_DONTNEED`` through ``agent.page_cache.evict_file``, checked with
``mincore`` to be under 2 % resident).

The report gives medians, the ratios project/floor and project/router measured
in the same run, the operator's phases of the project's swaps
(``status.lastSwapPhases``), and where each contender's time went, from the
process starts and exits the node recorded and llama-server's own log (when the
model was loaded). Then, with ``spec.server.promptCache`` on and off in
alternate rounds, the time to first token of a long prompt (over 4k tokens,
sharing its prefix with the prompt answered before the slot was swapped out)
once the slot is back.

The last line is ``swap/floor=R1 swap/router=R2 restore/no-restore=R3``.

    .venv/bin/python bench/swap_floor.py [--quick] [--rounds 5] [--cold]

``--quick`` uses small models (0.1 and 0.2 GiB) and fewer rounds. The models
are written once into the cache. The local cluster is ``swap-floor`` (stopped
at the end). Timings on a shared machine are noisy: nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from bench.model_load import free_port, log_seconds  # noqa: E402
from bench.random_gguf import write_random_model  # noqa: E402

from hybrid_compute.agent.page_cache import evict_file, measure_residency, warm_file  # noqa: E402
from hybrid_compute.api.modelslot import ModelSlotSpec  # noqa: E402
from hybrid_compute.dev import llmtools, local_serving  # noqa: E402
from hybrid_compute.dev.bootstrap import bootstrap_manifests  # noqa: E402
from hybrid_compute.dev.cloud_stand_in import CloudStandIn  # noqa: E402
from hybrid_compute.dev.cluster import DevCluster  # noqa: E402
from hybrid_compute.dev.containers import llama_server_command, thread_cap  # noqa: E402
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME  # noqa: E402
from hybrid_compute.dev.openai_call import Reply, post_json  # noqa: E402
from hybrid_compute.dev.process_node import RECORDS_FILE  # noqa: E402
from hybrid_compute.dev.service_proxy import proxy_prefix  # noqa: E402
from hybrid_compute.dev.tiny_models import TinyShape, write_tiny_model  # noqa: E402
from hybrid_compute.dev.toolchain import cache_home  # noqa: E402
from hybrid_compute.plan.settings import PlanSettings  # noqa: E402
from hybrid_compute.render import children  # noqa: E402

GROUP, VERSION = "hybridcompute.io", "v1alpha1"
NAMESPACE = "swap-floor"
PORT = 8080
PATIENCE_SECONDS = 60
"""The policy's maxPatience: every held request waits for its swap."""
SERVER = {"port": PORT, "ctxSize": 8192, "parallel": 1}
"""llama-server settings of every slot, and so of the floor and the router."""
PROMPT_SHAPE = TinyShape(layers=4, embedding=512, heads=8, kv_heads=4, feed_forward=1536,
                         context=8192)
"""The long-prompt model: 4k tokens take seconds to prefill on one core, so a kept
prompt cache shows, and a swap of it takes a moment."""
LONG_PREFIX = "".join(f"Step {n}: read the file, check the plan, write the patch. "
                      for n in range(52))
"""A long shared prefix (about 4.2k tokens with the byte tokenizer), as an agent's
system prompt and history are."""
COLD_MAX_RESIDENT = 0.02
OPERATOR_READINESS = "project, readiness Operator"
"""The project with ``spec.server.readiness: Operator`` (the slot serves once the
operator sees /health answer, not at the kubelet's next probe)."""
REQUEST_TIMEOUT = 900.0
SETTLE_TIMEOUT = 600.0
LOAD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Sizes:
    a_gib: float
    b_gib: float


def model_files(folder: Path, sizes: Sizes) -> dict[str, Path]:
    """A, B (random F16 weights of the sizes asked) and the long-prompt model P,
    written once."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"a": folder / f"floor-a-{sizes.a_gib:g}g.gguf",
             "b": folder / f"floor-b-{sizes.b_gib:g}g.gguf",
             "p": folder / "floor-prompt.gguf"}
    for seed, (name, gib) in enumerate((("a", sizes.a_gib), ("b", sizes.b_gib))):
        if not files[name].exists():
            partial = folder / f".{files[name].name}.partial"
            write_random_model(partial, int(gib * (1 << 30)), seed=seed)
            os.replace(partial, files[name])
    if not files["p"].exists():
        partial = folder / ".floor-prompt.partial"
        write_tiny_model(partial, PROMPT_SHAPE, seed=7, name="floor-prompt")
        os.replace(partial, files["p"])
    return files


def slot_spec(path: Path) -> ModelSlotSpec:
    return ModelSlotSpec.model_validate({"alias": "local/x", "model": {"path": path.name},
                                         "server": SERVER})


def bare_command(binary: Path, path: Path, port: int) -> list[str]:
    """The command line the process node runs for a slot serving ``path``, on ``port``."""
    spec = slot_spec(path)
    args = children.server_args(spec.model_copy(update={"server": spec.server.model_copy(
        update={"port": port})}), PlanSettings())
    return llama_server_command(binary, {"args": args}, "127.0.0.1",
                                {PlanSettings().model_root: path.parent}, thread_cap())


def router_command(binary: Path, models_dir: Path, port: int) -> list[str]:
    """Router mode with the slots' flags: its children inherit them."""
    args = bare_command(binary, models_dir / "x.gguf", port)[1:]
    for flag in ("--model", "--alias"):
        index = args.index(flag)
        del args[index:index + 2]
    return [str(binary), *args, "--models-dir", str(models_dir), "--models-max", "1"]


# ------------------------------------------------------------------ requests


def chat(url: str, model: str, content: str = "Say hello.", *, system: str | None = None,
         headers: dict[str, str] | None = None, key: str = "none") -> Reply:
    """One chat completion of one token: its time is the time to the first token."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return post_json(f"{url}/v1/chat/completions",
                     {"model": model, "max_tokens": 1, "messages": messages},
                     key, REQUEST_TIMEOUT, headers)


def expect_answer(reply: Reply, what: str) -> Reply:
    if reply.status != 200:
        raise RuntimeError(f"{what}: HTTP {reply.status}: {json.dumps(reply.body)[:300]}")
    return reply


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def loaded_at(log: Path, started_wall: float) -> float | None:
    """When llama-server's last run in ``log`` had loaded its model (wall clock):
    its log stamps lines with the time since the process started."""
    text = log.read_text(errors="replace") if log.exists() else ""
    run = text.rsplit("=== start", 1)[-1]
    for line in run.splitlines():
        if "model loaded" in line and (seconds := log_seconds(line)) is not None:
            return started_wall + seconds
    return None


# ------------------------------------------------------------------ results


@dataclass
class Sample:
    seconds: float
    """Until the first token."""
    marks: dict[str, float] = field(default_factory=dict)
    """Where the time went: step -> seconds, in order."""
    phases: dict[str, float] = field(default_factory=dict)
    """The operator's swap phases (the project only)."""


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, label: str, sample: Sample) -> None:
        self.samples.setdefault(label, []).append(sample)

    def median(self, label: str) -> float | None:
        found = self.samples.get(label)
        return statistics.median(s.seconds for s in found) if found else None


def spans(marks: Sequence[tuple[str, float | None]]) -> dict[str, float]:
    """Step durations from named wall-clock moments; a moment not seen merges its
    step into the next."""
    known = [(name, at) for name, at in marks if at is not None]
    return {name: round(at - previous, 3)
            for (_, previous), (name, at) in itertools.pairwise(known)}


# ------------------------------------------------------------------ floor


class BareServer:
    """A llama-server started as a script starts it; stopped with SIGTERM."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            out.write(f"\n=== start {time.time()}\n".encode())
            out.flush()
            self.started_wall = time.time()
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, port: int, what: str) -> None:
        def answered() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server for {what} exited with "
                                   f"{self.process.returncode}; see {self.log}")
            return healthy(port)
        wait_until(answered, LOAD_TIMEOUT, f"llama-server for {what}")

    def stop(self) -> float:
        """Stops the server; returns when it had exited (wall clock)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return time.time()


class Floor:
    """Model A served by a bare llama-server, ready for a timed swap to B."""

    def __init__(self, binary: Path, files: dict[str, Path], folder: Path) -> None:
        self.binary, self.files, self.folder = binary, files, folder
        self.port = free_port()
        self.server = self._serve("a")

    def _serve(self, name: str) -> BareServer:
        server = BareServer(bare_command(self.binary, self.files[name], self.port),
                            self.folder / f"floor-{name}.log")
        server.wait_healthy(self.port, name)
        return server

    def swap(self) -> Sample:
        started = time.monotonic()
        stop_wall = time.time()
        exited = self.server.stop()
        server = BareServer(bare_command(self.binary, self.files["b"], self.port),
                            self.folder / "floor-b.log")
        server.wait_healthy(self.port, "b")
        health = time.time()
        expect_answer(chat(f"http://127.0.0.1:{self.port}", "b"), "floor b")
        seconds = time.monotonic() - started
        done = time.time()
        marks = spans([("", stop_wall), ("old server exited", exited),
                       ("new server started", server.started_wall),
                       ("model loaded", loaded_at(server.log, server.started_wall)),
                       ("ready seen", health), ("first token", done)])
        server.stop()
        self.server = self._serve("a")
        expect_answer(chat(f"http://127.0.0.1:{self.port}", "a"), "floor a")
        return Sample(seconds, marks)

    def close(self) -> None:
        self.server.stop()


class RouterMode:
    """llama-server's router with at most one model loaded, serving A."""

    def __init__(self, binary: Path, files: dict[str, Path], folder: Path) -> None:
        self.models = folder / "router-models"
        self.models.mkdir(parents=True, exist_ok=True)
        for name in ("a", "b"):
            link = self.models / f"{name}.gguf"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(files[name])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = BareServer(router_command(binary, self.models, self.port),
                                 folder / "router.log")
        self.server.wait_healthy(self.port, "the router")
        expect_answer(chat(self.url, "a"), "router a")

    def swap(self) -> Sample:
        started = time.monotonic()
        sent = time.time()
        expect_answer(chat(self.url, "b"), "router b")
        seconds = time.monotonic() - started
        marks = spans([("", sent), ("first token", time.time())])
        expect_answer(chat(self.url, "a"), "router a")
        return Sample(seconds, marks)

    def close(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------ project


def _slot(name: str, path: Path, vram: str, server: dict[str, Any] | None = None,
          **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelSlot",
            "metadata": {"name": name},
            "spec": {"alias": f"local/{name}", "fallback": "cloud/mid", "minResidency": "0s",
                     "model": {"path": path.name, "servedName": name, "vram": vram},
                     "server": {**SERVER, **(server or {})}, **spec}}


def _policy(cloud_url: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RoutePolicy",
            "metadata": {"name": "hybrid"},
            "spec": {"cloudModels": [{"alias": "cloud/mid", "model": "openai/cloud-mid",
                                      "apiBase": cloud_url, "inputCostPerMillion": 0,
                                      "outputCostPerMillion": 0}],
                     "routing": {"maxPatience": f"{PATIENCE_SECONDS}s"},
                     "router": {"numRetries": 0, "timeout": f"{REQUEST_TIMEOUT:.0f}s"},
                     "litellm": {"masterKeySecretRef": {
                         "name": local_serving.MASTER_KEY_SECRET,
                         "key": local_serving.MASTER_KEY_KEY}}}}


class Project:
    """The local cluster with the process node, the operator, LiteLLM and slots
    ``a`` (the default, holding the GPU), ``b`` and ``p`` (on demand), and ``c``,
    which serves B's file as ``b`` does but with ``readiness: Operator``; any two
    of them are more than the GPU holds, so each load evicts the other."""

    def __init__(self, cluster_name: str, files: dict[str, Path], cloud: CloudStandIn) -> None:
        self.cluster = DevCluster(cluster_name)
        self.cluster.down(quiet=True)
        self.cluster.up(manifests=bootstrap_manifests(ROOT, samples=False),
                        gpu_node_backend="process", models=files["a"].parent, log=True)
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        self.cluster.start_operator(extra_args=["--min-residency=0s"])
        state = self.cluster.state()
        assert state is not None
        self.api_port = state.ports["operator-api"]
        self.token = self.cluster.api_token_file.read_text().strip()
        proxy = self.cluster.service_proxy_port
        assert proxy is not None
        self.proxy = proxy_prefix(proxy)
        self.master_key = f"sk-bench-{uuid.uuid4().hex}"
        litellm = local_serving.litellm_objects(f"http://127.0.0.1:{self.api_port}",
                                                self.token, self.master_key,
                                                DEFAULT_NODE_NAME)
        litellm[-1]["spec"]["replicas"] = 0
        self.apply([*litellm, _policy(cloud.url),
                    _slot("a", files["a"], "12Gi", default=True),
                    _slot("b", files["b"], "16Gi", activation="OnDemand", idleTimeout="2s",
                          priority=200),
                    _slot("c", files["b"], "16Gi", {"readiness": "Operator"},
                          activation="OnDemand", idleTimeout="2s", priority=200),
                    _slot("p", files["p"], "12Gi", activation="OnDemand",
                          idleTimeout="3s", priority=200)])
        self.url = f"{self.proxy}/{NAMESPACE}/{local_serving.LITELLM_NAME}/" \
                   f"{local_serving.LITELLM_PORT}"
        local_serving.start_litellm_once_configured(self.cluster, NAMESPACE)
        wait_until(self._litellm_ready, SETTLE_TIMEOUT, "LiteLLM serving", interval=1)
        self.settle()
        expect_answer(chat(self.url, "local/a", key=self.master_key), "project a")

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        for manifest in manifests:
            manifest["metadata"]["namespace"] = NAMESPACE
        self.cluster.apply(manifests)

    def _litellm_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=5) as answer:
                return bool(answer.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    def slot(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.api_get(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/modelslots/{name}")
        return found

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.slot(name).get("status") or {})

    def phases(self) -> dict[str, str | None]:
        return {name: self.status(name).get("phase") for name in ("a", "b", "c", "p")}

    def settle(self) -> None:
        """Until ``a`` serves and the others stand by (after an idle timeout)."""
        wanted = {"a": "Ready", "b": "Standby", "c": "Standby", "p": "Standby"}
        try:
            wait_until(lambda: self.phases() == wanted, SETTLE_TIMEOUT, f"phases {wanted}",
                       interval=0.2)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; saw {self.phases()}") from None

    def demand(self, alias: str) -> None:
        post_json(f"http://127.0.0.1:{self.api_port}/v1/demand", {"alias": alias},
                  self.token, 10)

    def records(self) -> list[dict[str, Any]]:
        path = self.cluster.process_node_folder() / RECORDS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def swap(self, name: str) -> Sample:
        """A held request for ``local/{name}`` (B's file) while ``a`` serves."""
        known = len(self.records())
        started = time.monotonic()
        sent = time.time()
        reply = chat(self.url, f"local/{name}", key=self.master_key,
                     headers={"x-hybrid-patience": str(PATIENCE_SECONDS)})
        seconds = time.monotonic() - started
        done = time.time()
        expect_answer(reply, f"project {name}")
        if (reply.route, reply.served_by) != ("local", f"local/{name}"):
            raise RuntimeError(f"the request for local/{name} was not held for the swap: "
                               f"{reply.headers.get('x-hybrid-reason')}")
        records = self.records()[known:]
        a_exit = next((r["at"] for r in records if r["event"] == "exited"
                       and str(r.get("pod", "")).startswith("a-")), None)
        b_start = next((r for r in records if r["event"] == "started"
                        and str(r.get("pod", "")).startswith(f"{name}-")), None)
        loaded = None
        if b_start is not None:
            logs = self.cluster.process_node_folder() / "pods"
            log = next(iter(logs.glob(f"{NAMESPACE}_{b_start['pod']}_*/llama-server.log")),
                       None)
            loaded = loaded_at(log, b_start["at"]) if log else None
        status = self.status(name)
        ready = _wall(status.get("readySince"))
        marks = spans([("", sent), ("old server exited", a_exit),
                       ("new server started", b_start["at"] if b_start else None),
                       ("model loaded", loaded), ("slot Ready", ready),
                       ("first token", done)])
        self.settle()
        phases = {k: float(v) for k, v in (self.status(name).get("lastSwapPhases")
                                           or {}).items()}
        return Sample(seconds, marks, phases)

    def long_prompt_after_swap_back(self, prompt_cache: bool) -> tuple[Sample, Sample]:
        """With ``p``'s prompt cache on or off: ``p`` loaded, a long prompt answered,
        ``p`` swapped out (idle) and back in; then a prompt sharing its prefix.
        Returns (the second prompt's sample, the first's)."""
        self.settle()
        body = {"spec": {"server": {"promptCache": {"enabled": prompt_cache}}}}
        self.cluster.kubectl("patch", "modelslot", "p", "-n", NAMESPACE, "--type=merge",
                             "-p", json.dumps(body))
        direct = f"{self.proxy}/{NAMESPACE}/p/{PORT}"
        self.demand("local/p")
        wait_until(lambda: self.status("p").get("phase") == "Ready", SETTLE_TIMEOUT,
                   "p Ready", interval=0.05)
        first = timed_prompt(direct, "What is step 3?")
        self.settle()
        self.demand("local/p")
        wait_until(lambda: self.status("p").get("phase") == "Ready", SETTLE_TIMEOUT,
                   "p Ready again", interval=0.05)
        second = timed_prompt(direct, "What is step 9?")
        return second, first

    def close(self) -> None:
        self.cluster.down(quiet=True)


def timed_prompt(url: str, question: str) -> Sample:
    started = time.monotonic()
    reply = expect_answer(chat(url, "p", question, system=LONG_PREFIX), "long prompt")
    seconds = time.monotonic() - started
    timings = reply.body.get("timings") or {}
    return Sample(seconds, {"prompt tokens computed": float(timings.get("prompt_n", -1)),
                            "prompt tokens from cache": float(timings.get("cache_n", -1))})


def _wall(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cool(path: Path) -> float:
    """Evicts ``path`` from the page cache; fails when the kernel kept it."""
    evict_file(path)
    resident = measure_residency(path).ratio
    if resident > COLD_MAX_RESIDENT:
        raise RuntimeError(f"{path.name} stays {resident:.0%} resident after eviction")
    return resident


# ------------------------------------------------------------------ the run


def rotations(labels: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """Each round starts one contender later than the one before; odd rounds run
    backwards, so no contender always follows the same one."""
    for index in range(rounds):
        shift = index % len(labels)
        order = [*labels[shift:], *labels[:shift]]
        if index % 2:
            order.reverse()
        for label in order:
            yield index, label


def report(results: Results, labels: Sequence[str]) -> None:
    for label in labels:
        found = results.samples.get(label)
        if not found:
            continue
        values = sorted(s.seconds for s in found)
        print(f"  {label:<26} median {statistics.median(values):6.2f} s  "
              f"(min {values[0]:.2f}, max {values[-1]:.2f}, {len(values)} runs)")
        steps: dict[str, list[float]] = {}
        for sample in found:
            for name, seconds in sample.marks.items():
                steps.setdefault(name, []).append(seconds)
        if steps:
            print("      " + ", ".join(f"{name} {statistics.median(v):.2f}"
                                       for name, v in steps.items()))


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def text(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small models (0.1 and 0.2 GiB) and 2 rounds")
    parser.add_argument("--rounds", type=int, help="warm rounds (default 5, quick 2)")
    parser.add_argument("--restore-rounds", type=int,
                        help="rounds of the prompt cache part (default 3, quick 1)")
    parser.add_argument("--cold", action="store_true",
                        help="also rounds with B evicted from the page cache")
    parser.add_argument("--size-a-gib", type=float, help="model A (default 1, quick 0.1)")
    parser.add_argument("--size-b-gib", type=float, help="model B (default 2, quick 0.2)")
    parser.add_argument("--cluster", default="swap-floor", help="the local cluster's name")
    args = parser.parse_args()
    sizes = Sizes(args.size_a_gib or (0.1 if args.quick else 1.0),
                  args.size_b_gib or (0.2 if args.quick else 2.0))
    rounds = args.rounds or (2 if args.quick else 5)
    restore_rounds = args.restore_rounds if args.restore_rounds is not None else (
        1 if args.quick else 3)
    tools = llmtools.installed()
    if tools is None:
        print("llama-server and LiteLLM are not built: run `make serving`", file=sys.stderr)
        return 1
    files = model_files(cache_home() / "bench-swap-floor", sizes)
    for path in files.values():
        warm_file(path)
    print(f"models: A {files['a'].stat().st_size / 1e9:.2f} GB, "
          f"B {files['b'].stat().st_size / 1e9:.2f} GB, long-prompt model "
          f"{files['p'].stat().st_size / 1e6:.0f} MB; llama-server threads {thread_cap()}",
          flush=True)
    if args.cold:
        print("cold rounds: B's file evicted before each with POSIX_FADV_DONTNEED "
              "(agent.page_cache.evict_file), checked with mincore to be under "
              f"{COLD_MAX_RESIDENT:.0%} resident", flush=True)
    results = Results()
    restore: dict[str, list[Sample]] = {"restore": [], "no restore": []}
    with tempfile.TemporaryDirectory(prefix="swap-floor-") as scratch, \
            CloudStandIn() as cloud:
        folder = Path(scratch)
        project = Project(args.cluster, files, cloud)
        floor = router = None
        try:
            floor = Floor(tools.llama_server, files, folder)
            router = RouterMode(tools.llama_server, files, folder)
            contenders: dict[str, Callable[[], Sample]] = {
                "floor": floor.swap, "router mode": router.swap,
                "project": lambda: project.swap("b"),
                OPERATOR_READINESS: lambda: project.swap("c")}
            caches = ["warm", "cold"] if args.cold else ["warm"]
            for cache in caches:
                for index, label in rotations(list(contenders), rounds):
                    if cache == "cold":
                        cool(files["b"])
                    else:
                        warm_file(files["b"])
                    sample = contenders[label]()
                    results.add(f"{label} ({cache})", sample)
                    print(f"  round {index + 1} {cache} {label:<12} {sample.seconds:6.2f} s  "
                          + ", ".join(f"{k} {v:.2f}" for k, v in sample.marks.items()),
                          flush=True)
            for index, label in rotations(list(restore), restore_rounds):
                second, first = project.long_prompt_after_swap_back(label == "restore")
                restore[label].append(second)
                print(f"  round {index + 1} long prompt, {label:<10}: before the swap "
                      f"{first.seconds:.2f} s, after it {second.seconds:.2f} s "
                      f"({int(second.marks['prompt tokens from cache'])} tokens from cache, "
                      f"{int(second.marks['prompt tokens computed'])} computed)", flush=True)
        finally:
            for contender in (floor, router):
                if contender is not None:
                    contender.close()
            project.close()
    summarize(results, caches, restore)
    return 0


def summarize(results: Results, caches: Sequence[str],
              restore: dict[str, list[Sample]]) -> None:
    labels = ("floor", "router mode", "project", OPERATOR_READINESS)
    print("\ntime to B's first token (where the time went: median seconds per step)")
    report(results, [f"{label} ({cache})" for cache in caches for label in labels])
    for label in ("project", OPERATOR_READINESS):
        phases: dict[str, list[float]] = {}
        for sample in results.samples.get(f"{label} (warm)", []):
            for name, seconds in sample.phases.items():
                phases.setdefault(name, []).append(seconds)
        if phases:
            print(f"  the operator's phases of the warm swaps, {label} (lastSwapPhases, "
                  "median s):")
            print("      " + ", ".join(f"{name} {statistics.median(v):.2f}"
                                       for name, v in phases.items()))
    floor, router, project = (results.median(f"{label} (warm)")
                              for label in ("floor", "router mode", "project"))
    for cache in caches:
        medians = {label: results.median(f"{label} ({cache})") for label in labels}
        for label in ("project", OPERATOR_READINESS):
            print(f"  {cache}: {label}/floor {text(ratio(medians[label], medians['floor']))}, "
                  f"{label}/router {text(ratio(medians[label], medians['router mode']))}")
    for label in ("project", OPERATOR_READINESS):
        swapped = results.median(f"{label} (warm)")
        found = results.samples.get(f"{label} (warm)", [])
        if not swapped or not floor or not found:
            continue
        loads = [s.phases["modelLoad"] for s in found if "modelLoad" in s.phases]
        line = (f"  control-plane share, {label}: {(swapped - floor) / swapped:.0%} over the "
                f"floor ({swapped - floor:.2f} s of {swapped:.2f} s)")
        if loads:
            line += (f"; everything but the operator's model-load phase: "
                     f"{1 - statistics.median(loads) / swapped:.0%}")
        print(line)
    with_cache = [s.seconds for s in restore["restore"]]
    without = [s.seconds for s in restore["no restore"]]
    restore_ratio = (statistics.median(with_cache) / statistics.median(without)
                     if with_cache and without else None)
    if with_cache and without:
        print(f"\nlong prompt right after a swap back: with the prompt cache restored "
              f"{statistics.median(with_cache):.2f} s, without {statistics.median(without):.2f} s")
    print(f"swap/floor={text(ratio(project, floor))} swap/router={text(ratio(project, router))} "
          f"restore/no-restore={text(restore_ratio)}")


if __name__ == "__main__":
    raise SystemExit(main())

"""A local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and the GPU nodes: each one played either by the kwok controller
(pods only simulated: enough where a test needs scheduling) or by the project's
process node agent (``process_node``: real llama-server and LiteLLM processes).

Every process runs from the cached toolchain, listens on loopback only and keeps
its files in the cluster's own folder, including its kubeconfig; nothing reads or
writes ``~/.kube/config``. A cluster that is already up is reused.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hybrid_compute.dev import nodes, toolchain
from hybrid_compute.dev.service_proxy import endpoint_template

if TYPE_CHECKING:
    from hybrid_compute.dev import pki

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
_CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_BACKENDS = ("kwok", "process")


class ClusterError(RuntimeError):
    """The control plane could not be started or reached; the message says why."""


@dataclass
class ClusterState:
    """What ``dev up`` wrote down so ``status``, ``down`` and reuse can find it."""

    name: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    node_backends: dict[str, str] = field(default_factory=dict)
    """Nodes played by the process node agent ("process"); absent means kwok."""
    address_blocks: dict[str, int] = field(default_factory=dict)
    """Per process node, N of the pod addresses 127.N.x.y it hands out."""


def clusters_home() -> Path:
    return toolchain.cache_home() / "clusters"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]:
            return False
    return True


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (the cluster folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class DevCluster:
    """One named local cluster; ``dev`` for users, ``test`` for the test suite."""

    def __init__(self, name: str = "dev", root: Path | None = None) -> None:
        self.name = name
        self.folder = (root or clusters_home()) / name

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @property
    def context_name(self) -> str:
        return f"hybrid-compute-{self.name}"

    @property
    def _state_file(self) -> Path:
        return self.folder / "state.json"

    def state(self) -> ClusterState | None:
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None
        return ClusterState(**data)

    def _save(self, state: ClusterState) -> None:
        self._state_file.write_text(json.dumps(asdict(state), indent=2))

    @property
    def server(self) -> str | None:
        state = self.state()
        return f"https://127.0.0.1:{state.ports['apiserver']}" if state else None

    # ---------------------------------------------------------------- lifecycle

    def is_running(self) -> bool:
        state = self.state()
        if state is None:
            return False
        if not all(_pid_alive(state.pids.get(name, -1)) for name in _CONTROL_PLANE):
            return False
        return self._readyz(state)

    def up(
        self,
        extra_nodes: Sequence[tuple[str, str]] = (),
        manifests: Sequence[dict[str, Any]] = (),
        operator: bool = False,
        log: bool = True,
        gpu_node_backend: str = "kwok",
        models: Path | None = None,
    ) -> float:
        """Starts the cluster (or reuses a running one); returns seconds taken.
        ``gpu_node_backend`` plays the default GPU node (extra nodes are kwok's);
        ``models`` is what a process node's pods mount as their model folder."""
        started = time.monotonic()
        tools = toolchain.ensure_toolchain(log=log)
        if not self.is_running():
            self.down(quiet=True)
            self._start_control_plane(tools)
        state = self.state()
        assert state is not None
        wanted = [(nodes.DEFAULT_NODE_NAME, nodes.DEFAULT_PROFILE, gpu_node_backend),
                  *((name, profile, "kwok") for name, profile in extra_nodes)]
        for node_name, profile, backend in wanted:
            agent_gone = (state.node_backends.get(node_name) == "process"
                          and not _pid_alive(state.pids.get(_agent(node_name), -1)))
            if node_name not in state.nodes or agent_gone:
                self.add_node(node_name, profile, backend, models)
        self.wait_nodes_ready(timeout=60)
        if manifests:
            self.apply(manifests)
        if operator:
            self.start_operator()
        return time.monotonic() - started

    def _start_control_plane(self, tools: toolchain.Toolchain) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        from hybrid_compute.dev import pki  # cryptography: not loaded by the operator's CLI

        keys = pki.create_pki(self.folder / "pki", SERVICE_IP)
        state = ClusterState(
            name=self.name,
            ports={name: free_port() for name in
                   ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler",
                    "kwok")},
        )
        self._write_kubeconfig(keys, state.ports["apiserver"])
        self._save(state)

        etcd_url = f"http://127.0.0.1:{state.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{state.ports['etcd-peer']}"
        self._spawn(state, "etcd", [
            str(tools.binary("etcd")),
            f"--name={self.name}",
            f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), 30, "etcd", state)

        self._spawn(state, "kube-apiserver", [
            str(tools.binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={state.ports['apiserver']}",
            f"--tls-cert-file={keys.serving_cert}",
            f"--tls-private-key-file={keys.serving_key}",
            f"--client-ca-file={keys.ca_cert}",
            f"--service-account-key-file={keys.service_account_pub}",
            f"--service-account-signing-key-file={keys.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.folder / 'pki'}",
        ])
        self._wait(lambda: self._readyz(state), 90, "kube-apiserver", state)

        kubeconfig = str(self.kubeconfig)
        self._spawn(state, "kube-controller-manager", [
            str(tools.binary("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['controller-manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={keys.service_account_key}",
            f"--root-ca-file={keys.ca_cert}",
            f"--cluster-signing-cert-file={keys.ca_cert}",
            f"--cluster-signing-key-file={keys.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            "--profiling=false",
        ])
        self._spawn(state, "kube-scheduler", [
            str(tools.binary("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ])
        stages = self.folder / "kwok-stages.yaml"
        stages.write_text(
            resources.files("hybrid_compute.dev").joinpath("kwok-stages.yaml").read_text()
        )
        self._spawn(state, "kwok", [
            str(tools.binary("kwok")),
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector="
            f"{nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{state.ports['kwok']}",
            "--cidr=10.244.0.1/16",
            "--node-ip=10.240.0.1",
        ])
        self._wait(lambda: self._default_service_account_exists(), 60,
                   "kube-controller-manager", state)

    def down(self, quiet: bool = False) -> list[int]:
        """Stops every process of this cluster and removes its data: the operator,
        the node agents (which stop their pods' processes), then the control plane."""
        state = self.state()
        stopped: list[int] = []
        if state:
            others = [name for name in state.pids if name not in _CONTROL_PLANE]
            for name in [*sorted(others, key=lambda n: n != "operator"),
                         *reversed(_CONTROL_PLANE)]:
                pid = state.pids.get(name)
                if pid and _pid_alive(pid):
                    self._terminate(pid)
                    stopped.append(pid)
        for pid in _pids_mentioning(str(self.folder)):
            self._terminate(pid)
            stopped.append(pid)
        if self.folder.exists():
            subprocess.run(["rm", "-rf", str(self.folder)], check=False)
        if not quiet and stopped:
            print(f"stopped {len(stopped)} processes of cluster {self.name}", file=sys.stderr)
        return stopped

    @staticmethod
    def _terminate(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(
                pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)

    def _spawn(self, state: ClusterState, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> None:
        log = (self.folder / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.folder, env=env,
        )
        log.close()
        state.pids[name] = process.pid
        self._save(state)

    def _wait(self, ready: Any, timeout: float, what: str, state: ClusterState) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            pid = state.pids.get(what)
            if pid and not _pid_alive(pid):
                break
            time.sleep(0.2)
        log = self.folder / "logs" / f"{what}.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
        self.down(quiet=True) if what != "operator" else None
        raise ClusterError(f"{what} did not become ready within {timeout:.0f}s; last log lines:"
                           f"\n{tail}")

    # ------------------------------------------------------------------ access

    def _ssl_context(self) -> ssl.SSLContext:
        from hybrid_compute.dev import pki  # cryptography: not loaded by the operator's CLI

        keys = pki.Pki(self.folder / "pki")
        context = ssl.create_default_context(cafile=str(keys.ca_cert))
        context.load_cert_chain(str(keys.admin_cert), str(keys.admin_key))
        return context

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def api_get(self, path: str) -> dict[str, Any]:
        """GETs ``path`` from this cluster's API server as its admin (an HTTPError
        when the answer is not 2xx)."""
        with urllib.request.urlopen(f"{self.server}{path}", timeout=10,
                                    context=self._ssl_context()) as response:
            found: dict[str, Any] = json.loads(response.read())
        return found

    def _readyz(self, state: ClusterState) -> bool:
        try:
            context = self._ssl_context()
        except OSError:
            return False
        return self._http_ok(f"https://127.0.0.1:{state.ports['apiserver']}/readyz", context)

    def _write_kubeconfig(self, keys: pki.Pki, port: int) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.context_name, "cluster": {
                "server": f"https://127.0.0.1:{port}",
                "certificate-authority-data": b64(keys.ca_cert)}}],
            "users": [{"name": f"{self.context_name}-admin", "user": {
                "client-certificate-data": b64(keys.admin_cert),
                "client-key-data": b64(keys.admin_key)}}],
            "contexts": [{"name": self.context_name, "context": {
                "cluster": self.context_name, "user": f"{self.context_name}-admin"}}],
            "current-context": self.context_name,
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def kubectl(self, *args: str, input_text: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs the cached kubectl against this cluster only."""
        tools = toolchain.default_toolchain()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([str(tools.binary("kubectl")), *args], input=input_text,
                                capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _default_service_account_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0

    def apply(self, manifests: Sequence[dict[str, Any]]) -> None:
        """Server-side applies objects; CRDs first, established before the rest."""
        crds = [m for m in manifests if m.get("kind") == "CustomResourceDefinition"]
        others = [m for m in manifests if m.get("kind") != "CustomResourceDefinition"]
        for batch in (crds, others):
            if batch:
                self.kubectl("apply", "--server-side", "--force-conflicts",
                             "--field-manager=hybrid-compute-dev", "-f", "-",
                             input_text=yaml.safe_dump_all(batch))
            if batch is crds and crds:
                self._wait_established([m["metadata"]["name"] for m in crds])

    def _wait_established(self, names: list[str], timeout: float = 60) -> None:
        # A CRD just created may have no conditions yet, which kubectl wait reports
        # as an error rather than waiting on.
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("wait", "--for=condition=Established",
                                  f"--timeout={timeout:.0f}s",
                                  *(f"crd/{name}" for name in names), check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"CRDs {', '.join(names)} not established: "
                                   f"{result.stderr.strip()}")
            time.sleep(0.5)

    def add_node(self, name: str, profile_name: str, backend: str = "kwok",
                 models: Path | None = None) -> None:
        """Registers a GPU node with one of :data:`nodes.PROFILES`, played by kwok
        or by a process node agent (whose pods mount ``models``)."""
        profile = nodes.PROFILES.get(profile_name)
        if profile is None:
            raise ClusterError(f"unknown node profile {profile_name!r}; known: "
                               f"{', '.join(sorted(nodes.PROFILES))}")
        if backend not in NODE_BACKENDS:
            raise ClusterError(f"unknown node backend {backend!r}; known: "
                               f"{', '.join(NODE_BACKENDS)}")
        state = self.state()
        assert state is not None
        if backend == "process":
            self._start_process_node(state, name, profile_name, models)
        else:
            manifest = yaml.safe_dump(nodes.node_manifest(name, profile))
            existing = self.kubectl("get", "node", name, "-o", "name", check=False)
            if existing.returncode != 0:
                self.kubectl("create", "-f", "-", input_text=manifest)
        state.nodes[name] = profile_name
        if backend == "process":
            state.node_backends[name] = backend
        self._save(state)

    def _start_process_node(self, state: ClusterState, name: str, profile_name: str,
                            models: Path | None) -> None:
        """Starts the node agent, which registers the Node itself as a kubelet does."""
        folder = self.folder / "nodes" / name
        models = models or folder / "empty-models"
        models.mkdir(parents=True, exist_ok=True)
        port_name = f"proxy-{name}"
        state.ports[port_name] = state.ports.get(port_name) or free_port()
        with _address_blocks_locked():
            if name not in state.address_blocks:
                state.address_blocks[name] = _free_address_block(
                    self.folder, also_taken=set(state.address_blocks.values()))
                self._save(state)
        self._spawn(state, _agent(name), [
            sys.executable, "-m", "hybrid_compute.dev.process_node",
            f"--kubeconfig={self.kubeconfig}", f"--node={name}", f"--profile={profile_name}",
            f"--folder={folder}", f"--models={models}",
            f"--proxy-port={state.ports[port_name]}",
            f"--address-block={state.address_blocks[name]}",
        ])

    def process_node_folder(self, name: str = nodes.DEFAULT_NODE_NAME) -> Path:
        return self.folder / "nodes" / name

    @property
    def service_proxy_port(self) -> int | None:
        """The Service proxy of the first process node (see ``service_proxy``)."""
        state = self.state()
        if state is None:
            return None
        for name, backend in state.node_backends.items():
            if backend == "process":
                return state.ports.get(f"proxy-{name}")
        return None

    def wait_nodes_ready(self, timeout: float) -> None:
        state = self.state()
        assert state is not None
        deadline = time.monotonic() + timeout
        for node_name in state.nodes:
            # A process node's agent registers its Node itself, a moment after it starts.
            while (self.kubectl("get", "node", node_name, "-o", "name", check=False).returncode
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            result = self.kubectl("wait", "--for=condition=Ready", f"node/{node_name}",
                                  f"--timeout={int(timeout)}s", check=False)
            if result.returncode != 0:
                raise ClusterError(f"node {node_name} did not become Ready: "
                                   f"{result.stderr.strip()}")

    def ensure_port(self, name: str) -> int:
        """A loopback port of this cluster, chosen once and kept in its state."""
        state = self.state()
        assert state is not None
        if name not in state.ports:
            state.ports[name] = free_port()
            self._save(state)
        return state.ports[name]

    def ensure_process(self, name: str, argv: list[str],
                       env: dict[str, str] | None = None) -> None:
        """Runs a helper process of this cluster unless it runs already; ``down``
        stops it with the rest."""
        state = self.state()
        assert state is not None
        pid = state.pids.get(name)
        if not (pid and _pid_alive(pid)):
            self._spawn(state, name, argv, env)

    @property
    def operator_api_port(self) -> int | None:
        state = self.state()
        return state.ports.get("operator-api") if state else None

    @property
    def api_token_file(self) -> Path:
        return self.folder / "operator-api-token"

    def start_operator(self, extra_args: Sequence[str] = (),
                       extra_env: dict[str, str] | None = None,
                       ports: dict[str, int] | None = None) -> None:
        """Runs the operator against this cluster as a background process."""
        state = self.state()
        assert state is not None
        pid = state.pids.get("operator")
        if pid and _pid_alive(pid):
            return
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        for name in ("operator-health", "operator-api", "operator-metrics"):
            state.ports[name] = (ports or {}).get(name) or free_port()
        if not self.api_token_file.exists():
            self.api_token_file.write_text(secrets.token_urlsafe(32))
            self.api_token_file.chmod(0o600)
        proxy_port = self.service_proxy_port
        if proxy_port and not any(a.startswith("--endpoint-template") for a in extra_args):
            # Services of a process node are reached through its agent's proxy.
            extra_args = [*extra_args, f"--endpoint-template={endpoint_template(proxy_port)}"]
        self._spawn(state, "operator", [
            sys.executable, "-m", "hybrid_compute", "run",
            f"--kubeconfig={self.kubeconfig}", f"--dev-cluster={self.folder}",
            f"--health-port={state.ports['operator-health']}",
            f"--api-port={state.ports['operator-api']}",
            f"--metrics-port={state.ports['operator-metrics']}",
            f"--api-token-file={self.api_token_file}",
            *extra_args,
        ], env={**env, **(extra_env or {})})
        health = f"http://127.0.0.1:{state.ports['operator-health']}/healthz"
        self._wait(lambda: self._http_ok(health), 60, "operator", state)

    def stop_operator(self) -> None:
        state = self.state()
        if state and (pid := state.pids.pop("operator", None)):
            if _pid_alive(pid):
                self._terminate(pid)
            self._save(state)

    def describe(self) -> dict[str, Any]:
        state = self.state()
        if state is None:
            return {"name": self.name, "running": False}
        return {
            "name": self.name,
            "running": self.is_running(),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": {name: {"pid": pid, "alive": _pid_alive(pid)}
                          for name, pid in state.pids.items()},
            "nodes": {name: {"profile": profile,
                             "backend": state.node_backends.get(name, "kwok")}
                      for name, profile in state.nodes.items()},
            "logs": str(self.folder / "logs"),
        }


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


@contextlib.contextmanager
def _address_blocks_locked() -> Iterator[None]:
    """Serialises the choice of address blocks between clusters started at once."""
    home = clusters_home()
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".address-blocks.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_address_block(own_folder: Path, also_taken: Collection[int] = ()) -> int:
    """A pod-address block that no other cluster on this host holds
    while any of its processes runs (a stopped cluster's block is free again), nor
    ``also_taken`` (the blocks of this cluster's other process nodes)."""
    taken: set[int] = set(also_taken)
    for state_file in clusters_home().glob("*/state.json"):
        if state_file.parent == own_folder:
            continue
        try:
            other = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if any(_pid_alive(pid) for pid in (other.get("pids") or {}).values()):
            taken.update((other.get("address_blocks") or {}).values())
            if "process" in (other.get("node_backends") or {}).values() and not other.get(
                    "address_blocks"):
                taken.add(1)  # started by a version that always used 127.1.x.y
    # Each name starts its search at a block of its own, so clusters started at the
    # same moment (each not yet seeing the other's state) rarely pick the same one.
    preferred = 1 + zlib.crc32(own_folder.name.encode()) % 254
    for step in range(254):
        block = 1 + (preferred - 1 + step) % 254
        if block not in taken:
            return block
    raise ClusterError("every pod-address block 127.1-254.x.y is held by a running "
                       "cluster: stop one with `hybrid-compute dev down --name NAME`")


def _agent(node: str) -> str:
    """The process name of a node's agent in the cluster's state."""
    return f"node-{node}"

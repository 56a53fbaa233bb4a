"""Runs the real LiteLLM proxy for a LiteLLM Deployment on the local control plane.

The kwok node runs no containers, so this plays the kubelet for that one
Deployment: it starts ``litellm`` with the files of the ConfigMap the pod mounts
and the env the container declares (``secretKeyRef`` entries read from their
Secrets, as the kubelet does), and restarts it whenever the pod template changes,
as a rollout would. Everything else (the rendering, the hash annotation, the env
the operator adds) comes from the operator through the API server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

CONFIG_FOLDER = "/etc/litellm"
START_TIMEOUT = 180.0


class LiteLLMRunner:
    def __init__(self, api: client.ApiClient, namespace: str, deployment: str,
                 litellm: Path, port: int, workdir: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.deployment = deployment
        self.litellm = litellm
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.log_path = workdir / "litellm.log"
        self.starts = 0
        self.running_template: str | None = None
        self.running_config_hash: str | None = None
        self.error: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._forced = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    # ------------------------------------------------------------ the kubelet part

    def _template(self) -> dict[str, Any] | None:
        try:
            body = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        template: dict[str, Any] = self.apps.api_client.sanitize_for_serialization(
            body.spec.template)
        return template

    def _secret_value(self, ref: dict[str, Any]) -> str:
        secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
        return base64.b64decode(secret.data[ref["key"]]).decode()

    def _environment(self, container: dict[str, Any]) -> dict[str, str]:
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif "secretKeyRef" in (entry.get("valueFrom") or {}):
                env[entry["name"]] = self._secret_value(entry["valueFrom"]["secretKeyRef"])
        return env

    def _config_files(self, template: dict[str, Any]) -> dict[str, str] | None:
        volumes = template["spec"].get("volumes") or []
        name = next((v["configMap"]["name"] for v in volumes if "configMap" in v), None)
        if name is None:
            return None
        try:
            config_map = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None  # the pod would wait in ContainerCreating
            raise
        return dict(config_map.data or {})

    def _start(self, template: dict[str, Any], files: dict[str, str]) -> None:
        self._kill()
        self.starts += 1
        folder = self.workdir / f"config-{self.starts}"
        folder.mkdir(parents=True)
        for key, text in files.items():
            (folder / key).write_text(text)
        container = next(c for c in template["spec"]["containers"] if c["name"] == "litellm")
        args = [str(folder / "config.yaml") if a == f"{CONFIG_FOLDER}/config.yaml" else a
                for a in container.get("args") or []]
        args = [str(self.port) if previous == "--port" else a
                for previous, a in zip(["", *args[:-1]], args, strict=True)]
        log = self.log_path.open("ab")
        log.write(f"\n=== start {self.starts} ===\n".encode())
        log.flush()
        self._process = subprocess.Popen([str(self.litellm), *args],
                                         env=self._environment(container), cwd=folder,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        log.close()
        self._wait_healthy()
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        self.running_config_hash = annotations.get("hybridcompute.io/config-hash")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"litellm exited with {self._process.returncode}; "
                                   f"see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise RuntimeError(f"litellm not healthy after {START_TIMEOUT:.0f}s; "
                           f"see {self.log_path}")

    def _kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                template = self._template()
                if template is not None:
                    digest = hashlib.sha256(json.dumps(template, sort_keys=True)
                                            .encode()).hexdigest()
                    forced = self._forced.is_set()
                    if digest != self.running_template or forced:
                        files = self._config_files(template)
                        if files is not None:
                            with self._lock:
                                self._start(template, files)
                                self.running_template = digest
                                self._forced.clear()
            except Exception as error:  # shown by wait_serving, not lost in a thread
                self.error = f"{type(error).__name__}: {error}"
            self._stop.wait(0.3)

    # ------------------------------------------------------------ for tests

    def wait_serving(self, config_hash: str | None = None, timeout: float = 240) -> None:
        """Until LiteLLM is healthy (running ``config_hash`` when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise RuntimeError(self.error)
            with self._lock:
                up = self._process is not None and self._process.poll() is None
                matches = config_hash is None or self.running_config_hash == config_hash
            if up and matches and self.running_template and not self._forced.is_set():
                return
            time.sleep(0.2)
        raise TimeoutError(f"LiteLLM did not serve config {config_hash} in {timeout:.0f}s "
                           f"(running {self.running_config_hash}); see {self.log_path}")

    def restart(self) -> None:
        """A pod restart: same template, new process."""
        self._forced.set()
        self.wait_serving()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LiteLLMRunner:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            self._kill()

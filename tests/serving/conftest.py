"""Fixtures for the serving tests: the real LiteLLM proxy and real llama-server
processes (both built once into the cache by ``make serving``), tiny GGUF models
written here, and the stand-in cloud."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid_compute.dev import llmtools
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.tiny_models import write_tiny_model


@pytest.fixture(scope="session")
def serving_tools() -> llmtools.ServingTools:
    tools = llmtools.installed()
    if tools is None:
        pytest.fail("the LiteLLM proxy and llama-server are not built: run `make serving` "
                    "(`make test` does it first)")
    return tools


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def cloud() -> Iterator[CloudStandIn]:
    with CloudStandIn() as stand_in:
        yield stand_in


class LlamaServer:
    """One llama-server process on a loopback port."""

    def __init__(self, binary: Path, model: Path, port: int, log: Path,
                 embedding: bool = False) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        args = [str(binary), "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", "2048", "--parallel", "2",
                "--threads", "1", "--metrics"]
        if embedding:
            args += ["--embeddings", "--pooling", "mean"]
        self.log = log
        self.process = subprocess.Popen(args, stdout=log.open("ab"),
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama-server on {self.port} not healthy: {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

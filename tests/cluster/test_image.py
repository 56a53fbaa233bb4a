"""The container image built from this checkout (``make image``), checked from its
own root filesystem: its user and entry point, its commands running with the root
read-only, and its operator reconciling slots on the test cluster.

Where no Docker engine answers, podman builds the image but cannot run it, so each
command runs by chroot into the mounted image, as its user, with its environment,
a read-only root and a scratch folder at /tmp, as the chart runs the pod."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid_compute.dev import image
from hybrid_compute.dev.cluster import free_port
from hybrid_compute.dev.image import BuiltImage, ImageConfig
from hybrid_compute.dev.toolchain import ToolchainError
from tests.cluster.support import apply, operator_healthy, read, seed_slots, wait, wait_phases
from tests.conftest import OPERATOR_ARGS, REPOSITORY_ROOT, SimulatedGpuAgent, TestCluster

pytestmark = [pytest.mark.cluster, pytest.mark.image]

IMAGE_USER = "65532:65532"


@pytest.fixture(scope="module")
def built() -> BuiltImage:
    reason = image.unusable_reason()
    if reason is not None:
        pytest.skip(f"the container image cannot be built and run here: {reason}")
    try:
        return image.ensure_image(REPOSITORY_ROOT)
    except ToolchainError as error:
        pytest.fail(f"the container image could not be built (`make image` builds it):\n"
                    f"{error}", pytrace=False)


@pytest.fixture(scope="module")
def config(built: BuiltImage) -> ImageConfig:
    return image.image_config(built)


@pytest.fixture(scope="module")
def root(built: BuiltImage) -> Iterator[Path]:
    with image.mounted_root(built) as folder:
        yield folder


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The pod's /tmp (an emptyDir in the chart): writable by anyone, like /tmp."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def in_image(root: Path, config: ImageConfig, args: list[str], scratch: Path,
             user: str | None = None, entrypoint: tuple[str, ...] | None = None
             ) -> subprocess.CompletedProcess[str]:
    command = image.root_command(root, config, args, scratch, user=user,
                                 entrypoint=entrypoint)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_image_runs_hybrid_compute_as_the_nonroot_user(config: ImageConfig) -> None:
    assert config.user == IMAGE_USER
    assert config.entrypoint == ("hybrid-compute",)
    assert config.cmd == ("run",)


def test_its_commands_run_from_a_read_only_root(root: Path, config: ImageConfig,
                                                scratch: Path) -> None:
    for args, usage in ((["--help"], "usage: hybrid-compute "),
                        (["agent", "--help"], "usage: hybrid-compute agent ")):
        result = in_image(root, config, args, scratch)
        assert result.returncode == 0, f"hybrid-compute {' '.join(args)}:\n{result.stderr}"
        assert result.stdout.startswith(usage), result.stdout[:300]
    # Even root cannot write to the root filesystem the commands ran from; /tmp works.
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('probe')"
    refused = in_image(root, config, ["-c", write, "/opt/hybrid-compute/probe"], scratch,
                       user="0:0", entrypoint=("python3",))
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
    written = in_image(root, config, ["-c", write, "/tmp/probe"], scratch,
                       entrypoint=("python3",))
    assert written.returncode == 0, written.stderr
    assert (scratch / "probe").read_text() == "probe"
    assert not (root / "opt" / "hybrid-compute" / "probe").exists()


@pytest.fixture
def operator_from_image(k8s: TestCluster, namespace: str, sole_operator: None,
                        gpu_agent: SimulatedGpuAgent, root: Path, config: ImageConfig,
                        scratch: Path, tmp_path: Path) -> Iterator[None]:
    """The image's ``hybrid-compute run`` against the test cluster, alone, its
    kubeconfig in its /tmp readable only by the image's user."""
    kubeconfig = scratch / "kubeconfig"
    shutil.copyfile(k8s.kubeconfig, kubeconfig)
    uid, gid = (int(part) for part in config.user.split(":"))
    os.chown(kubeconfig, uid, gid)
    kubeconfig.chmod(0o600)
    health_port = free_port()
    log = tmp_path / "operator.log"
    command = image.root_command(
        root, config, ["run", "--kubeconfig=/tmp/kubeconfig", f"--health-port={health_port}",
                       f"--api-port={free_port()}", "--metrics-port=0", *OPERATOR_ARGS],
        scratch, env={"HYBRID_COMPUTE_API_TOKEN": "image-check"})
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait(lambda: operator_healthy(health_port) or process.poll() is not None, 60,
             "the image's operator to answer /healthz")
        assert process.poll() is None, f"the image's operator exited:\n{log.read_text()[-3000:]}"
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        print(f"the image's operator log:\n{log.read_text()[-2000:]}")


def test_the_operator_from_the_image_reconciles_slots(
        k8s: TestCluster, namespace: str, operator_from_image: None) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby", "embed": "Ready"},
                timeout=90)
    status = read(k8s, namespace, "fast")["status"]
    assert status["endpoint"] == "http://127.0.0.1:8080/v1"  # the tests' --endpoint-template
    k8s.apps.read_namespaced_deployment("fast", namespace)
    k8s.core.read_namespaced_service("fast", namespace)

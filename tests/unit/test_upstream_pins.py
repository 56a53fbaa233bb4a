"""The pinned upstream builds (:mod:`hybrid_compute.upstream`) and everything that
names them: the operator's defaults, the serving build, the chart, the generated
manifests and the README. The serving test ``tests/serving/test_llama_build.py``
checks the built llama-server itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.cli import build_parser
from hybrid_compute.dev import llmtools
from hybrid_compute.dev.toolchain import ToolchainError
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children
from hybrid_compute.upstream import (
    LITELLM_IMAGE,
    LITELLM_IMAGE_REPOSITORY,
    LITELLM_VERSION,
    LLAMA_CPP,
)

ROOT = Path(__file__).resolve().parents[2]
CHART_VALUES = ROOT / "charts" / "hybrid-compute" / "values.yaml"

VERIFIED_LLAMA_CPP_BUILDS = {
    "0.3.36": ("0c1e57098bba43ac29e6e3b677cdceebdd22334f", 11312),
}
"""llama-cpp-python release -> (the llama.cpp commit its source distribution vendors,
the build number llama.cpp tagged that commit with). Each row was checked by hand:
the commit is the HEAD of ``vendor/llama.cpp`` in the sdist (the serving build checks
it again), the number is llama.cpp's release tag ``b<N>`` of that commit (its
release workflow tags ``b$(git rev-list --count HEAD)``). Moving to another
llama-cpp-python means adding its row, so no field of the pin moves alone."""


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(CHART_VALUES.read_text())
    return values


def _base_manifest(name: str) -> list[dict[str, Any]]:
    text = (ROOT / "manifests" / "base" / name).read_text()
    return [document for document in yaml.safe_load_all(text) if document]


def _containers(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for document in documents
            if document["kind"] == "Deployment"
            for container in document["spec"]["template"]["spec"]["containers"]}


def test_the_llama_cpp_pin_is_a_verified_row() -> None:
    assert LLAMA_CPP.llama_cpp_python in VERIFIED_LLAMA_CPP_BUILDS, (
        f"llama-cpp-python {LLAMA_CPP.llama_cpp_python} has no verified llama.cpp build")
    assert (LLAMA_CPP.commit, LLAMA_CPP.build) == \
        VERIFIED_LLAMA_CPP_BUILDS[LLAMA_CPP.llama_cpp_python]


def test_the_default_images_are_llama_cpps_images_of_that_build() -> None:
    assert LLAMA_CPP.gpu_image == f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMA_CPP.build}"
    assert LLAMA_CPP.cpu_image == f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMA_CPP.build}"


def test_the_serving_build_compiles_the_pinned_llama_cpp_python() -> None:
    assert LLAMA_CPP.llama_cpp_python == llmtools.LLAMA_CPP_PYTHON_VERSION
    script = (ROOT / "bench" / "gpu_load_check.sh").read_text()
    assert f"LLAMA_CPP_PYTHON_VERSION={LLAMA_CPP.llama_cpp_python}\n" in script


def test_operator_defaults_are_the_pinned_images() -> None:
    settings = PlanSettings()
    assert (settings.gpu_image, settings.cpu_image) == (LLAMA_CPP.gpu_image,
                                                        LLAMA_CPP.cpu_image)
    args = build_parser().parse_args(["run"])
    assert (args.gpu_image, args.cpu_image) == (LLAMA_CPP.gpu_image, LLAMA_CPP.cpu_image)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_a_slot_without_an_image_runs_the_pinned_image(device: str) -> None:
    spec = ModelSlotSpec.model_validate({"alias": "local/x", "device": device,
                                         "model": {"path": "x.gguf", "vram": "1Gi"}})
    [container] = children.pod_template("x", spec, 1 << 30, PlanSettings())["spec"][
        "containers"]
    assert container["image"] == (LLAMA_CPP.gpu_image if device == "gpu"
                                  else LLAMA_CPP.cpu_image)


def test_the_chart_and_the_manifests_run_the_pinned_llama_cpp_images() -> None:
    assert _values()["operator"]["slotImages"] == {"gpu": LLAMA_CPP.gpu_image,
                                                   "cpu": LLAMA_CPP.cpu_image}
    args = _containers(_base_manifest("operator.yaml"))["operator"]["args"]
    assert f"--gpu-image={LLAMA_CPP.gpu_image}" in args
    assert f"--cpu-image={LLAMA_CPP.cpu_image}" in args


def test_the_chart_and_the_manifests_run_the_tested_litellm() -> None:
    assert f"litellm[proxy]=={LITELLM_VERSION}" in llmtools.LITELLM_REQUIREMENTS
    image = _values()["litellm"]["image"]
    assert (image["repository"], image["tag"]) == (LITELLM_IMAGE_REPOSITORY,
                                                   f"v{LITELLM_VERSION}")
    assert _containers(_base_manifest("litellm.yaml"))["litellm"]["image"] == LITELLM_IMAGE


def every_server_flag() -> set[str]:
    """Every flag the operator can put on llama-server's command line."""
    spec = ModelSlotSpec.model_validate({
        "alias": "local/x", "embedding": True, "gpus": 2,
        "model": {"path": "x.gguf", "vram": "1Gi"},
        "server": {"flashAttn": True, "threads": 4, "loadMode": "none", "warmup": False,
                   "contBatching": True}})
    return {arg for arg in children.server_args(spec, PlanSettings())
            if arg.startswith("--")}


def test_the_readme_names_the_pinned_images_and_every_flag_another_image_must_know() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("#### llama-server images", 1)[1].split("\n#", 1)[0]
    assert LLAMA_CPP.gpu_image in section and LLAMA_CPP.cpu_image in section
    assert LLAMA_CPP.commit[:7] in section
    assert f"llama-cpp-python {LLAMA_CPP.llama_cpp_python}" in section
    listed = set(re.findall(r"`(--[a-z-]+)", section))
    assert every_server_flag() <= listed, sorted(every_server_flag() - listed)


def _sdist_tree(root: Path, head: str, *, pointer: bool = True) -> Path:
    """The layout of llama-cpp-python's source distribution: the vendored llama.cpp
    with a ``.git`` file naming the submodule's git folder, or a plain git folder."""
    source = root / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    if pointer:
        git = root / ".git" / "modules" / "vendor" / "llama.cpp"
        git.mkdir(parents=True)
        (source / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")
    else:
        git = source / ".git"
        git.mkdir()
    (git / "HEAD").write_text(head + "\n")
    return source


@pytest.mark.parametrize("pointer", [True, False])
def test_the_vendored_commit_is_read_from_the_sources_git_metadata(tmp_path: Path,
                                                                   pointer: bool) -> None:
    source = _sdist_tree(tmp_path, LLAMA_CPP.commit, pointer=pointer)
    assert llmtools.vendored_commit(source) == LLAMA_CPP.commit
    llmtools.check_vendored_commit(source)


def test_sources_of_another_commit_are_refused_with_both_commits(tmp_path: Path) -> None:
    other = "1" * 40
    with pytest.raises(ToolchainError) as refused:
        llmtools.check_vendored_commit(_sdist_tree(tmp_path, other))
    message = str(refused.value)
    assert other in message and LLAMA_CPP.commit in message
    assert f"b{LLAMA_CPP.build}" in message


@pytest.mark.parametrize("head", ["ref: refs/heads/master", ""])
def test_sources_at_no_fixed_commit_are_refused(tmp_path: Path, head: str) -> None:
    with pytest.raises(ToolchainError, match=r"not at a fixed llama\.cpp commit"):
        llmtools.vendored_commit(_sdist_tree(tmp_path, head))


def test_sources_without_git_metadata_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    with pytest.raises(ToolchainError, match=r"cannot tell which llama\.cpp commit"):
        llmtools.vendored_commit(source)

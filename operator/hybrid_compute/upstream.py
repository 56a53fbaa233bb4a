"""The upstream builds a release of the operator is tested with: the llama.cpp build
its slots run and the LiteLLM release its proxy runs.

The operator passes llama-server flags (``--load-mode``, ``--metrics``, ``--alias``,
...) that only some llama.cpp builds know. The serving tests check them against a
llama-server compiled from the llama.cpp sources that one llama-cpp-python source
distribution vendors, so the default slot images are llama.cpp's own images of that
very commit, named by its build number, never a floating tag. Everything else
derives from here: the operator's defaults, the serving build in ``dev/llmtools``,
and (checked by the unit tests) the chart's values and the generated manifests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaCppBuild:
    """One llama.cpp build, as the tests compile it and as llama.cpp publishes it."""

    llama_cpp_python: str
    """The llama-cpp-python release whose source distribution the tests compile."""
    commit: str
    """The llama.cpp commit that source distribution vendors (``vendor/llama.cpp``)."""
    build: int
    """llama.cpp's build number of that commit: its release tag is ``b<build>``, and
    its images are tagged ``server-b<build>`` (CPU) and ``server-cuda-b<build>``."""
    repository: str = "ghcr.io/ggml-org/llama.cpp"
    """Where llama.cpp publishes its images."""

    @property
    def gpu_image(self) -> str:
        return f"{self.repository}:server-cuda-b{self.build}"

    @property
    def cpu_image(self) -> str:
        return f"{self.repository}:server-b{self.build}"


LLAMA_CPP = LlamaCppBuild(
    llama_cpp_python="0.3.36",
    commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
    build=11312,
)
"""The llama.cpp build of this release."""

LITELLM_VERSION = "1.108.7"
"""The LiteLLM release the router hook is tested with: the serving tests install this
``litellm[proxy]``, and the chart runs LiteLLM's image of the same release."""
LITELLM_IMAGE_REPOSITORY = "ghcr.io/berriai/litellm"
LITELLM_IMAGE = f"{LITELLM_IMAGE_REPOSITORY}:v{LITELLM_VERSION}"

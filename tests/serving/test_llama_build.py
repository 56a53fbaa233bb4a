"""The llama-server the serving tests run is the pinned llama.cpp build, and it
knows every flag the operator can pass, so the default images (that build's) do."""

from __future__ import annotations

import re
import subprocess

import pytest

from hybrid_compute.dev import llmtools
from hybrid_compute.upstream import LLAMA_CPP
from tests.unit.test_upstream_pins import every_server_flag

pytestmark = pytest.mark.serving


def _output(tools: llmtools.ServingTools, flag: str) -> str:
    result = subprocess.run([str(tools.llama_server), flag], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_the_built_llama_server_is_the_pinned_commit(
        serving_tools: llmtools.ServingTools) -> None:
    assert f"commit {LLAMA_CPP.commit[:7]}" in _output(serving_tools, "--version")


def test_the_built_llama_server_knows_every_flag_the_operator_passes(
        serving_tools: llmtools.ServingTools) -> None:
    known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", _output(serving_tools, "--help")))
    assert sorted(every_server_flag() - known) == []

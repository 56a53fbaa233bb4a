"""The release: the check that a tag may be published, and the workflows that
publish it (actionlint, in ``make lint``, checks their syntax and scripts)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.dev.release import main, mismatches, tag_version

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
IMAGE = "ghcr.io/hybrid-compute/hybrid-compute"


def _version() -> str:
    chart = yaml.safe_load((ROOT / "charts" / "hybrid-compute" / "Chart.yaml").read_text())
    return str(chart["version"])


def _workflow(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


@pytest.mark.parametrize(("tag", "version"), [("v0.1.0", "0.1.0"), ("v1.2.3-rc.1", "1.2.3-rc.1")])
def test_a_release_tag_names_its_version(tag: str, version: str) -> None:
    assert tag_version(tag) == version


@pytest.mark.parametrize("tag", ["0.1.0", "v0.1", "version-0.1.0", "v0.1.0/x"])
def test_other_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="is not v<major>"):
        tag_version(tag)


def test_the_repository_may_release_its_own_version() -> None:
    assert mismatches(ROOT, f"v{_version()}", IMAGE) == []


def test_a_tag_of_another_version_is_refused_naming_each_file(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              ) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["check", "v9.9.9", "--image-repository", IMAGE]) == 1
    errors = capsys.readouterr().err
    assert "Chart.yaml version" in errors and "Chart.yaml appVersion" in errors
    assert "pyproject.toml version" in errors


def test_the_chart_must_name_the_image_the_workflow_pushes() -> None:
    problems = mismatches(ROOT, f"v{_version()}", "ghcr.io/someone-else/hybrid-compute")
    assert len(problems) == 2, problems
    assert all("ghcr.io/someone-else/hybrid-compute" in problem for problem in problems)


def test_an_edited_chart_version_alone_is_refused(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "charts"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy(source, tmp_path / name)
    chart = tmp_path / "charts" / "hybrid-compute" / "Chart.yaml"
    chart.write_text(re.sub(r"(?m)^version: .*$", "version: 9.9.9", chart.read_text()))
    assert [problem.split(" is ")[0] for problem in mismatches(tmp_path, "v9.9.9", IMAGE)] == [
        "charts/hybrid-compute/Chart.yaml appVersion (the image tag the chart runs)",
        "pyproject.toml version (the package in the image)",
    ]


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_actions_are_pinned_by_commit(name: str) -> None:
    uses = [step["uses"] for step in _steps(_workflow(name)) if "uses" in step]
    assert uses
    assert [use for use in uses if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", use)] == []


def test_pull_requests_run_make_test_with_read_only_permissions() -> None:
    ci = _workflow("ci.yml")
    assert "pull_request" in ci[True]  # YAML 1.1 reads the key `on` as true
    assert ci["permissions"] == {"contents": "read"}
    runs = [step.get("run", "") for step in _steps(ci)]
    assert "bash .ci/run" in runs
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


def test_a_tag_publishes_both_platforms_attested_with_job_permissions_only() -> None:
    release = _workflow("release.yml")
    assert release[True] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    jobs = release["jobs"]
    assert jobs["check"]["permissions"] == {"contents": "read"}
    for publishing in ("image", "chart"):
        assert jobs[publishing]["permissions"] == {
            "contents": "read", "packages": "write", "id-token": "write",
            "attestations": "write"}
        assert "check" in jobs[publishing]["needs"]
    build = next(step["with"] for step in jobs["image"]["steps"]
                 if step.get("uses", "").startswith("docker/build-push-action@"))
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert (build["provenance"], build["sbom"]) == ("mode=max", True)
    assert "image" in jobs["chart"]["needs"]


def test_the_readme_installs_the_published_chart_of_this_version() -> None:
    readme = (ROOT / "README.md").read_text()
    assert ("helm install hybrid-compute oci://ghcr.io/hybrid-compute/charts/hybrid-compute "
            f"--version {_version()}") in readme
    assert "helm install hybrid-compute charts/hybrid-compute" in readme

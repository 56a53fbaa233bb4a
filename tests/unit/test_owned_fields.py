"""What a spec may not set: llama-server flags the spec owns or the operator
accounts for, a model path leaving the model folder, pod annotations under the
operator's prefix; and the fetch step's own check of its destination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hybrid_compute import cli
from hybrid_compute.api.modelslot import OWNED_FLAGS, ModelSlotSpec, owned_flag
from hybrid_compute.fetch.download import ExitCode, destination_problem
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render.children import server_args

BASE: dict[str, Any] = {"alias": "local/fast", "model": {"path": "f.gguf", "vram": "4Gi"}}


@pytest.mark.parametrize("args,field", [
    (["--port", "9999"], "spec.server.port"),
    (["-m", "/models/other.gguf"], "spec.model.path"),
    (["--ctx-size=65536"], "spec.server.ctxSize"),
    (["-ngl", "10"], "spec.server.nGpuLayers"),
    (["--alias", "x"], "spec.model.servedName"),
    (["-np", "4"], "spec.server.parallel"),
    (["--embeddings"], "spec.embedding"),
])
def test_extra_args_may_not_set_owned_flags(args: list[str], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        ModelSlotSpec.model_validate({**BASE, "server": {"extraArgs": args}})


def test_every_flag_the_operator_passes_is_owned_except_the_tunable_ones() -> None:
    spec = ModelSlotSpec.model_validate({**BASE, "embedding": True})
    rendered = [a for a in server_args(spec, PlanSettings()) if a.startswith("-")]
    tunable = {"--cont-batching", "--flash-attn", "--threads", "--load-mode", "--no-warmup",
               "--split-mode"}
    assert {a for a in rendered if owned_flag(a) is None} <= tunable, rendered
    assert all(flags for flags, _ in OWNED_FLAGS)


def test_flags_that_only_look_alike_and_tuning_flags_stay_allowed() -> None:
    spec = ModelSlotSpec.model_validate({**BASE, "server": {"extraArgs": [
        "--port-range", "-cb", "--cache-type-k", "q8_0", "-fa", "on", "--load-mode", "dio",
        "-ub", "256", "--model-draft", "d.gguf"]}})
    assert spec.server.extra_args[0] == "--port-range"


@pytest.mark.parametrize("path", ["../x.gguf", "a/../../x.gguf", "/models/../etc/x.gguf"])
def test_model_paths_may_not_leave_the_model_folder(path: str) -> None:
    with pytest.raises(ValidationError, match="path"):
        ModelSlotSpec.model_validate({**BASE, "model": {"path": path, "vram": "4Gi"}})


@pytest.mark.parametrize("path", ["a.gguf", "sub/a.gguf", "/models/sub/./a.gguf", "a..b.gguf"])
def test_model_paths_inside_the_folder_are_accepted(path: str) -> None:
    ModelSlotSpec.model_validate({**BASE, "model": {"path": path, "vram": "4Gi"}})


def test_pod_annotations_under_the_operator_prefix_are_refused() -> None:
    with pytest.raises(ValidationError, match="podAnnotations"):
        ModelSlotSpec.model_validate({**BASE, "podAnnotations": {"hybridcompute.io/vram": "1"}})
    ModelSlotSpec.model_validate({**BASE, "podAnnotations": {"example.com/team": "a"}})


def test_the_fetch_destination_stays_inside_its_folder() -> None:
    assert destination_problem("/models/a.gguf", "/models") is None
    assert destination_problem("/models/sub/a.gguf") is None
    assert "'..'" in str(destination_problem("/models/../../root/evil.gguf"))
    assert "outside" in str(destination_problem("/root/evil.gguf", "/models"))
    assert "outside" in str(destination_problem("/models2/a.gguf", "/models"))
    assert "outside" in str(destination_problem("/models", "/models"))


def test_the_fetch_command_refuses_a_destination_outside_its_folder_by_hand(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "elsewhere" / "evil.gguf"
    code = cli.main(["fetch", "--url", "http://127.0.0.1:9/x.gguf", "--dest", str(outside),
                     "--root", str(tmp_path / "models")])
    assert code == ExitCode.USAGE
    assert "outside the models folder" in capsys.readouterr().err
    code = cli.main(["fetch", "--url", "http://127.0.0.1:9/x.gguf",
                     "--dest", str(tmp_path / "models" / ".." / "evil.gguf")])
    assert code == ExitCode.USAGE
    assert not outside.exists() and not (tmp_path / "evil.gguf").exists()

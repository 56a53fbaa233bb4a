"""How spec.server's load settings become llama-server flags in the slot's pod."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children

SETTINGS = PlanSettings()
SLOT: dict[str, Any] = {"alias": "local/fast", "model": {"path": "fast.gguf", "vram": "7Gi"}}


def _args(**server: Any) -> list[str]:
    spec = ModelSlotSpec.model_validate({**SLOT, "server": server})
    [container] = children.pod_template("fast", spec, 7 << 30, SETTINGS)["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def _flag_values(args: list[str], flag: str) -> list[str]:
    return [args[index + 1] for index, arg in enumerate(args) if arg == flag]


def test_default_load_settings_add_no_flag_so_existing_pods_keep_their_template() -> None:
    args = _args()
    assert "--load-mode" not in args, args
    assert "--no-warmup" not in args, args
    explicit = ModelSlotSpec.model_validate(
        {**SLOT, "server": {"loadMode": "auto", "warmup": True}})
    implicit = ModelSlotSpec.model_validate(SLOT)
    assert (children.template_hash(children.pod_template("fast", explicit, 7 << 30, SETTINGS))
            == children.template_hash(children.pod_template("fast", implicit, 7 << 30,
                                                             SETTINGS)))


@pytest.mark.parametrize("mode", ["mmap", "none", "dio", "mlock", "mmap+mlock"])
def test_a_load_mode_other_than_auto_is_passed_as_given(mode: str) -> None:
    args = _args(loadMode=mode)
    assert _flag_values(args, "--load-mode") == [mode], args


def test_warmup_false_passes_no_warmup() -> None:
    args = _args(warmup=False)
    assert args.count("--no-warmup") == 1, args


def test_extra_args_come_after_the_load_flags_so_they_win() -> None:
    args = _args(loadMode="none", extraArgs=["--load-mode", "dio"])
    assert _flag_values(args, "--load-mode") == ["none", "dio"], args


def test_an_unknown_load_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="loadMode"):
        ModelSlotSpec.model_validate({**SLOT, "server": {"loadMode": "direct"}})

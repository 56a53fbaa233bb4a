"""The router hook against the installed LiteLLM's ``CustomLogger``: the callbacks it
overrides are the ones it needs, each exists in LiteLLM with the parameters LiteLLM
passes, and of the per-request paths LiteLLM switches on by what a callback
overrides, the hook turns on only the pre-call hook and the response headers."""

from __future__ import annotations

import json
import subprocess

from hybrid_compute.dev import llmtools
from hybrid_compute.router import hybrid_router
from tests.unit.test_router_decisions import NEEDED_CALLBACKS

PROBE = """
import dataclasses, importlib.util, inspect, json, sys

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy.utils import ProxyLogging

spec = importlib.util.spec_from_file_location("hybrid_router_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
hook = module.HybridRouter
logger_methods = {name for name in dir(CustomLogger)
                  if not name.startswith("__") and callable(getattr(CustomLogger, name))}
overridden = sorted(name for name in vars(hook) if name in logger_methods)
def parameters(owner, name):
    return list(inspect.signature(getattr(owner, name)).parameters)
litellm.callbacks = [module.proxy_handler_instance]
capabilities = ProxyLogging.callback_capabilities()
print(json.dumps({
    "subclass": issubclass(hook, CustomLogger),
    "overridden": overridden,
    "parameters": {name: {"litellm": parameters(CustomLogger, name),
                          "hook": parameters(hook, name)} for name in overridden},
    "switched_on": sorted(flag.name for flag in dataclasses.fields(capabilities)
                          if getattr(capabilities, flag.name) is True),
}))
"""


def probe(tools: llmtools.ServingTools) -> dict[str, object]:
    result = subprocess.run([str(tools.litellm_python), "-c", PROBE, hybrid_router.__file__],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_hook_overrides_only_the_litellm_callbacks_it_needs(
        serving_tools: llmtools.ServingTools) -> None:
    answer = probe(serving_tools)
    assert answer["subclass"] is True
    assert set(answer["overridden"]) == set(NEEDED_CALLBACKS)  # type: ignore[arg-type]
    parameters = answer["parameters"]
    assert isinstance(parameters, dict)
    for name, signatures in parameters.items():
        # LiteLLM passes these by keyword: the hook takes every one LiteLLM's takes.
        assert signatures["hook"] == signatures["litellm"], name
    # What LiteLLM does per request because of what a callback overrides: the
    # pre-call loop (LiteLLM's own hooks turn it on too) and the headers loop.
    # Streaming iterators, chunk hooks, guardrails, moderation, content enforcement
    # and model-list filters stay off.
    assert answer["switched_on"] == ["has_post_call_response_headers",
                                     "has_pre_call_override"]

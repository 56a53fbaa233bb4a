"""``hybrid-compute plan -f DIR`` on the samples, without a cluster."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPOSITORY_ROOT

SAMPLES = str(REPOSITORY_ROOT / "manifests" / "samples")
MIDDAY = "2026-12-01T12:00:00Z"
"""01:00 in Auckland: outside the samples' 02:00-08:00 workload windows, so the plans
below do not depend on the time of day they run at."""


def plan_cli(*args: str, at: str = MIDDAY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid_compute", "plan", "--at", at, *args],
                          capture_output=True, text=True, timeout=60)


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines()
            if line.startswith("default/")}


def test_samples_put_fast_on_the_gpu_and_embed_on_cpu() -> None:
    result = plan_cli("-f", SAMPLES)
    assert result.returncode == 0, result.stderr
    # The samples' TTS workload runs beside fast while no OnDemand model is in use.
    assert "GPU dreamteam/0: 23.0 GiB usable, 11.0 GiB planned, 12.0 GiB free - tts-local, " \
        "local/fast" in result.stdout
    table = rows(result.stdout)
    assert table["default/fast"][5:8] == ["load", "on", "dreamteam/0"]
    assert table["default/embed"][3:6] == ["-", "run", "on"]
    assert table["default/quality"][5] == "standby"


def test_a_demand_swaps_quality_in_and_fast_out() -> None:
    result = plan_cli("-f", SAMPLES, "--demand", "local/quality")
    table = rows(result.stdout)
    assert table["default/quality"][5:8] == ["load", "on", "dreamteam/0"]
    assert "standby: the GPU is taken by local/quality" in result.stdout


def test_two_gpu_node_holds_both_large_models() -> None:
    result = plan_cli("-f", SAMPLES, "--node", "big=dual-rtx3090", "--demand",
                      "local/quality", "--demand", "local/quality-alt")
    assert "GPU big/0" in result.stdout and "GPU big/1" in result.stdout
    table = rows(result.stdout)
    assert {table["default/quality"][7], table["default/quality-alt"][7]} == {"big/0", "big/1"}


def test_invalid_objects_fail_with_the_field_named() -> None:
    result = plan_cli("-f", str(REPOSITORY_ROOT / "tests/data/invalid/"
                                "modelslot-self-fallback.yaml"))
    assert result.returncode == 1
    assert "failed" in result.stdout and "fallback" in result.stdout


def test_unreadable_input_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unterminated")
    result = plan_cli("-f", str(broken))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr


HOUSEHOLD = """\
apiVersion: hybridcompute.io/v1alpha1
kind: ModelSlot
metadata: {name: fast}
spec:
  alias: local/fast
  model: {path: fast.gguf, vram: 7Gi}
  default: true
  sleepSchedule:
    timeZone: Europe/Berlin
    windows: [{start: "01:00", end: "07:00"}]
  sleepAfter: 30m
---
apiVersion: hybridcompute.io/v1alpha1
kind: ModelSlot
metadata: {name: quality}
spec:
  alias: local/quality
  model: {path: quality.gguf, vram: 20Gi}
  activation: OnDemand
  idleTimeout: Auto
  idleTimeoutBounds: {min: 1m, max: 30m}
---
apiVersion: hybridcompute.io/v1alpha1
kind: GpuWorkload
metadata: {name: game-night}
spec:
  kind: Reservation
  wholeGpu: true
  schedule:
    timeZone: Europe/Berlin
    windows: [{start: "19:00", end: "23:00"}]
"""


def test_at_shows_the_workload_windows_of_the_samples() -> None:
    night = plan_cli("-f", SAMPLES, at="2026-12-02T03:00+13:00")
    assert night.stdout.splitlines()[0] == "Plan at 2026-12-01 14:00:00 UTC"
    table = rows(night.stdout)
    assert table["default/image-generation"][3:6] == ["run", "on", "dreamteam/0"]
    assert " ".join(table["default/fine-tuning"][3:]).startswith(
        "queued waiting for room: 22.0 GiB needed")
    day = rows(plan_cli("-f", SAMPLES).stdout)
    assert " ".join(day["default/fine-tuning"][3:]) == (
        "queued outside its window 02:00-08:00 Pacific/Auckland; opens 2026-12-02 02:00 NZDT")


def household(tmp_path) -> str:  # type: ignore[no-untyped-def]
    (tmp_path / "house.yaml").write_text(HOUSEHOLD)
    return str(tmp_path)


def test_at_shows_sleep_windows_sleep_after_and_a_scheduled_reservation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = household(tmp_path)
    night = plan_cli("-f", folder, at="2026-12-02T03:00+01:00")
    assert "GPU dreamteam/0: 23.0 GiB usable, 0.0 GiB planned, 23.0 GiB free - idle" \
        in night.stdout
    assert " ".join(rows(night.stdout)["default/fast"][5:]) == (
        "standby asleep: inside its sleep window 01:00-07:00 Europe/Berlin until 2026-12-02 "
        "07:00 CET; loads on the next request")
    woken = rows(plan_cli("-f", folder, "--demand", "local/fast",
                          at="2026-12-02T03:00+01:00").stdout)
    assert woken["default/fast"][5:8] == ["load", "on", "dreamteam/0"]
    noon = rows(plan_cli("-f", folder, at="2026-12-02T12:00+01:00").stdout)
    assert " ".join(noon["default/fast"][5:]) == (
        "standby asleep: no request for 30m (sleepAfter); loads on the next request")
    evening = plan_cli("-f", folder, at="2026-12-02T20:00+01:00").stdout
    assert " ".join(rows(evening)["default/game-night"][1:]) == (
        "Reservation the whole GPU (23.0 GiB) hold on dreamteam/0 holding the whole GPU "
        "(23.0 GiB) on dreamteam/0 until its window closes at 2026-12-02 23:00 CET")
    assert "idle timeout of local/quality (Auto): a swap takes 30.0s, worth 5m of holding; " \
           "no idle period on record yet: 5m (bounds 1m-30m)" in evening


def test_foreign_shows_a_process_outside_the_cluster_as_a_reservation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = plan_cli("-f", household(tmp_path), "--demand", "local/quality", "--foreign",
                      "steam=18Gi", at="2026-12-02T12:00+01:00")
    assert "  outside hybrid-compute: steam (18.0 GiB), planned as a reservation" \
        in result.stdout
    assert " ".join(rows(result.stdout)["default/quality"][5:]) == (
        "pending waiting for room: 20.0 GiB needed, held by steam outside hybrid-compute "
        "(18.0 GiB)")


def test_a_bad_moment_or_foreign_process_is_a_clear_error() -> None:
    result = plan_cli("-f", SAMPLES, at="tomorrow")
    assert result.returncode == 2 and "--at takes an ISO 8601 time" in result.stderr
    result = plan_cli("-f", SAMPLES, "--foreign", "steam")
    assert result.returncode == 2 and "--foreign takes NAME=SIZE" in result.stderr

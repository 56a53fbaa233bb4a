"""Warm-standby model files on real files in the page cache: residency measured with
``mincore`` before and after warming, evicting and locking; the warmer's budget
and its release under memory pressure; the pure plan; the ``PUT /warm`` endpoint.

The files live on a disk-backed folder (``/var/tmp``, or ``$HYBRID_COMPUTE_DISK_TMP``):
on tmpfs every page is always resident and eviction cannot be observed, so the
fixture fails, saying so, rather than letting these tests prove nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from hybrid_compute.agent.models import ModelFileRefused, ModelHeaders
from hybrid_compute.agent.page_cache import (
    NO_PRESSURE,
    LockedFile,
    MemoryPressure,
    ReleaseReason,
    WantedFile,
    cgroup_memory_limit,
    evict_file,
    measure_residency,
    memory_pressure,
    plan_warming,
    warm_file,
)
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import CacheState, GpuReader, PageCacheReport
from hybrid_compute.agent.warmer import Warmer, WarmFileRequest, WarmRequest, node_warmer
from hybrid_compute.cli import build_parser
from tests.fake_nvml import FakeNvml

MIB = 1024 * 1024
FILE_BYTES = 16 * MIB
NEAR_EMPTY = 0.02
NEAR_FULL = 0.98
HIGH_PSI = MemoryPressure(True, "tasks stalled on memory 40.0% of the last 10 s")


def write_model(folder: Path, name: str, size: int = FILE_BYTES) -> Path:
    """A file of random bytes, flushed to disk so its pages are clean and can be dropped."""
    path = folder / name
    with path.open("wb") as file:
        for _ in range(size // MIB):
            file.write(os.urandom(MIB))
        file.write(os.urandom(size % MIB))
        file.flush()
        os.fsync(file.fileno())
    return path


@pytest.fixture(scope="module")
def disk_folder() -> Iterator[Path]:
    parent = os.environ.get("HYBRID_COMPUTE_DISK_TMP", "/var/tmp")
    folder = Path(tempfile.mkdtemp(prefix="hybrid-compute-page-cache-", dir=parent))
    try:
        probe = write_model(folder, "probe.bin", 4 * MIB)
        evict_file(probe)
        left = measure_residency(probe).ratio
        if left > NEAR_EMPTY:
            pytest.fail(f"{parent} keeps {left:.0%} of a file resident after "
                        "POSIX_FADV_DONTNEED: it is not disk-backed (tmpfs?), so eviction "
                        "cannot be observed; set HYBRID_COMPUTE_DISK_TMP to a folder on a disk")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def models(disk_folder: Path, request: pytest.FixtureRequest) -> Path:
    """A model folder of its own per test, under the disk-backed folder."""
    folder = disk_folder / request.node.name.replace("[", "_").replace("]", "_")
    folder.mkdir()
    return folder


def ratio(path: Path) -> float:
    return measure_residency(path).ratio


# The page-cache primitives on real files


def test_an_evicted_file_is_not_resident_and_a_warmed_one_is(models: Path) -> None:
    model = write_model(models, "fast.gguf")
    evict_file(model)
    before = measure_residency(model)
    assert before.size_bytes == FILE_BYTES
    assert before.ratio < NEAR_EMPTY, f"expected an evicted file near 0%, got {before}"
    read = warm_file(model)
    after = measure_residency(model)
    assert after.ratio > NEAR_FULL, f"expected a warmed file near 100%, got {after}"
    assert read == FILE_BYTES, "a cold file is read whole"


def test_warming_reads_only_what_is_missing(models: Path) -> None:
    # Large beside the disk's read-ahead (often several MiB), so a part stays cold.
    model = write_model(models, "part.gguf", 64 * MIB)
    evict_file(model)
    with model.open("rb") as file:
        file.read(16 * MIB)
    before = measure_residency(model)
    assert 0.2 < before.ratio < 0.75, f"reading a quarter made {before.ratio:.0%} resident"
    read = warm_file(model, block_bytes=MIB)
    cold = before.size_bytes - before.resident_bytes
    assert read <= cold + MIB, f"read {read} bytes where {cold} were cold"
    assert ratio(model) > NEAR_FULL


def test_a_file_of_odd_size_counts_its_last_partial_page(models: Path) -> None:
    model = write_model(models, "odd.gguf", 3 * MIB + 100)
    warm_file(model)
    assert measure_residency(model).resident_bytes == 3 * MIB + 100


def test_a_warm_read_stops_when_asked_between_blocks(models: Path) -> None:
    model = write_model(models, "stopped.gguf", 64 * MIB)
    evict_file(model)
    blocks = iter([False, False, True])
    read = warm_file(model, stop=lambda: next(blocks), block_bytes=MIB)
    assert read == 2 * MIB, f"expected two 1 MiB blocks before the stop, read {read}"
    # The first WILLNEED may have started read-ahead of more; never all of it.
    assert ratio(model) < NEAR_FULL


def test_a_locked_file_stays_resident_until_released(models: Path) -> None:
    model = write_model(models, "locked.gguf", 2 * MIB)
    evict_file(model)
    locked = LockedFile(model)
    try:
        assert ratio(model) > NEAR_FULL, "mlock reads the pages it pins"
        evict_file(model)
        assert ratio(model) > NEAR_FULL, "DONTNEED cannot drop locked pages"
    finally:
        locked.release()
    evict_file(model)
    assert ratio(model) < NEAR_EMPTY, "released, the file can be evicted"


def test_a_lock_beyond_the_memlock_limit_is_refused_with_the_reason(models: Path) -> None:
    model = write_model(models, "too-big.gguf", 4 * MIB)
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))\n"
              "from hybrid_compute.agent.page_cache import LockedFile, LockRefused\n"
              "try:\n"
              "    LockedFile(sys.argv[1])\n"
              "except LockRefused as refused:\n"
              "    print(refused)\n"
              "else:\n"
              "    print('locked')\n")
    command = [sys.executable, "-c", script, str(model)]
    if os.geteuid() == 0:
        # Root has CAP_IPC_LOCK, which ignores the limit: drop it for the child.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_IPC_LOCK")
        command = [setpriv, "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    assert "RLIMIT_MEMLOCK is 1048576 bytes" in result.stdout, result.stdout + result.stderr
    assert "CAP_IPC_LOCK" in result.stdout


# The warmer on real files


def pressure_switch() -> tuple[Callable[[], MemoryPressure], list[MemoryPressure]]:
    """A pressure reading the test sets: ``current[0]``."""
    current = [NO_PRESSURE]
    return (lambda: current[0]), current


def three_models(models: Path) -> list[Path]:
    paths = [write_model(models, f"{name}.gguf") for name in ("coder", "chat", "vision")]
    for path in paths:
        evict_file(path)
        assert ratio(path) < NEAR_EMPTY, f"{path.name} should start cold"
    return paths


def ask(warmer: Warmer, *files: tuple[str, float], budget: int | None = None) -> None:
    warmer.want(WarmRequest(files=[WarmFileRequest(path=p, priority=q) for p, q in files],
                            budget_bytes=budget))


def states(report: PageCacheReport) -> dict[str, CacheState]:
    return {entry.path: entry.state for entry in report.files}


def test_the_warmer_fills_the_budget_with_the_highest_priorities_only(models: Path) -> None:
    coder, chat, vision = three_models(models)
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 2 * FILE_BYTES + MIB, pressure)
    ask(warmer, ("vision.gguf", 10), ("coder.gguf", 30), ("chat.gguf", 20))
    report = warmer.step()
    assert ratio(coder) > NEAR_FULL and ratio(chat) > NEAR_FULL, \
        f"the two highest priorities should be warm: {ratio(coder):.0%}, {ratio(chat):.0%}"
    assert ratio(vision) < NEAR_EMPTY, f"the third is over budget, yet {ratio(vision):.0%}"
    assert states(report) == {"coder.gguf": CacheState.HELD, "chat.gguf": CacheState.HELD,
                              "vision.gguf": CacheState.OVER_BUDGET}
    assert report.held_bytes == 2 * FILE_BYTES <= report.budget_bytes
    by_path = {entry.path: entry for entry in report.files}
    assert by_path["coder.gguf"].resident_bytes == FILE_BYTES
    assert by_path["vision.gguf"].resident_bytes is not None
    assert by_path["vision.gguf"].resident_bytes < NEAR_EMPTY * FILE_BYTES


def test_a_lower_requested_budget_lets_the_lowest_priority_go(models: Path) -> None:
    coder, chat, _vision = three_models(models)
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 3 * FILE_BYTES, pressure)
    ask(warmer, ("coder.gguf", 30), ("chat.gguf", 20))
    warmer.step()
    assert ratio(chat) > NEAR_FULL
    ask(warmer, ("coder.gguf", 30), ("chat.gguf", 20), budget=FILE_BYTES)
    report = warmer.step()
    assert ratio(chat) < NEAR_EMPTY, "a file that no longer fits is evicted"
    assert ratio(coder) > NEAR_FULL
    assert report.released == {"budget": 1}
    assert report.budget_bytes == FILE_BYTES


def test_pressure_releases_the_lowest_priority_and_warming_waits_for_calm(
        models: Path) -> None:
    coder, chat, vision = three_models(models)
    pressure, current = pressure_switch()
    now = [1000.0]
    warmer = Warmer(ModelHeaders(models), 3 * FILE_BYTES, pressure, cooldown_seconds=60,
                    clock=lambda: now[0])
    ask(warmer, ("coder.gguf", 30), ("chat.gguf", 20), ("vision.gguf", 10))
    warmer.step()
    assert min(ratio(coder), ratio(chat), ratio(vision)) > NEAR_FULL

    current[0] = HIGH_PSI
    report = warmer.step()
    assert ratio(vision) < NEAR_EMPTY, \
        f"the lowest priority should be released under pressure, still {ratio(vision):.0%}"
    assert ratio(coder) > NEAR_FULL and ratio(chat) > NEAR_FULL, "one file per round"
    assert states(report)["vision.gguf"] is CacheState.PAUSED
    assert report.memory_pressure and report.released == {"pressure": 1}

    report = warmer.step()
    assert ratio(chat) < NEAR_EMPTY, "still under pressure: the next lowest goes"
    assert ratio(coder) > NEAR_FULL
    assert report.held_bytes == FILE_BYTES

    current[0] = NO_PRESSURE
    now[0] += 30
    report = warmer.step()
    assert ratio(chat) < NEAR_EMPTY and ratio(vision) < NEAR_EMPTY, \
        "right after the pressure the warmer reads nothing back"
    assert states(report)["coder.gguf"] is CacheState.HELD

    now[0] += 60
    report = warmer.step()
    assert min(ratio(coder), ratio(chat), ratio(vision)) > NEAR_FULL, "calm again: refilled"
    assert set(states(report).values()) == {CacheState.HELD}


def test_a_known_shortfall_releases_enough_files_at_once(models: Path) -> None:
    coder, chat, vision = three_models(models)
    pressure, current = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 3 * FILE_BYTES, pressure)
    ask(warmer, ("coder.gguf", 30), ("chat.gguf", 20), ("vision.gguf", 10))
    warmer.step()
    current[0] = MemoryPressure(True, "MemAvailable below the floor",
                                shortfall_bytes=FILE_BYTES + MIB)
    warmer.step()
    assert ratio(vision) < NEAR_EMPTY and ratio(chat) < NEAR_EMPTY, \
        "two files are needed to cover 17 MiB"
    assert ratio(coder) > NEAR_FULL


def test_pressure_during_a_read_stops_it_and_the_next_round_releases_it(
        models: Path) -> None:
    coder = write_model(models, "coder.gguf", 128 * MIB)
    evict_file(coder)
    readings = iter([NO_PRESSURE, NO_PRESSURE, NO_PRESSURE, HIGH_PSI])
    warmer = Warmer(ModelHeaders(models), 256 * MIB, lambda: next(readings, HIGH_PSI))
    ask(warmer, ("coder.gguf", 30))
    warmer.step()
    assert ratio(coder) < NEAR_FULL, "the read stopped when the pressure came"
    report = warmer.step()
    assert ratio(coder) < NEAR_EMPTY, "and the part read was given back"
    assert report.released == {"pressure": 1}


def test_a_file_no_longer_wanted_is_unlocked_but_left_in_the_cache(models: Path) -> None:
    coder = write_model(models, "coder.gguf", 2 * MIB)
    evict_file(coder)
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 8 * MIB, pressure, lock=True)
    ask(warmer, ("coder.gguf", 30))
    report = warmer.step()
    assert states(report) == {"coder.gguf": CacheState.LOCKED}
    evict_file(coder)
    assert ratio(coder) > NEAR_FULL, "locked pages survive DONTNEED"
    ask(warmer)
    report = warmer.step()
    assert report.files == [] and report.held_bytes == 0
    assert ratio(coder) > NEAR_FULL, "the slot leaving Standby is about to read it"
    evict_file(coder)
    assert ratio(coder) < NEAR_EMPTY, "no longer locked"


def test_a_missing_file_is_reported_and_the_others_are_warmed(models: Path) -> None:
    coder = write_model(models, "coder.gguf", 2 * MIB)
    evict_file(coder)
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 8 * MIB, pressure)
    ask(warmer, ("gone.gguf", 50), ("coder.gguf", 30))
    report = warmer.step()
    assert states(report) == {"gone.gguf": CacheState.MISSING, "coder.gguf": CacheState.HELD}
    assert ratio(coder) > NEAR_FULL


def test_a_path_outside_the_model_folder_is_refused(models: Path) -> None:
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 8 * MIB, pressure)
    with pytest.raises(ModelFileRefused) as refused:
        ask(warmer, ("../../etc/passwd", 1))
    assert refused.value.status == 400


def test_the_budget_is_kept_inside_the_agents_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{512 * MIB}\n")
    warmer = node_warmer(ModelHeaders(tmp_path), 32 * 1024 * MIB, False, 10.0, MIB,
                         cgroup_root=tmp_path)
    assert warmer.budget_bytes == 320 * MIB, "512 MiB limit less the agent's own 192 MiB"


@pytest.mark.parametrize(("files", "expected"), [
    ({"memory.max": "max\n"}, None),
    ({"memory.max": "1073741824\n"}, 1 << 30),
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),
    ({"memory/memory.limit_in_bytes": "268435456\n"}, 256 * MIB),
    ({}, None),
])
def test_the_cgroup_memory_limit_is_read_from_v2_or_v1(
        tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_memory_limit(tmp_path) == expected


# Memory pressure readings

PSI_CALM = ("some avg10=0.31 avg60=0.10 avg300=0.02 total=123\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=45\n")
PSI_STALLED = PSI_CALM.replace("some avg10=0.31", "some avg10=27.50")
MEMINFO = "MemTotal:       24684092 kB\nMemFree: 100 kB\nMemAvailable:    {} kB\n"


def test_stall_time_above_the_threshold_is_pressure_of_unknown_size() -> None:
    reading = memory_pressure(PSI_STALLED, MEMINFO.format(8 * 1024 * 1024), 10.0, 1 << 30)
    assert reading.high and reading.shortfall_bytes is None
    assert "27.5%" in reading.reason


def test_available_memory_below_the_floor_is_pressure_with_its_shortfall() -> None:
    reading = memory_pressure(PSI_CALM, MEMINFO.format(512 * 1024), 10.0, 1 << 30)
    assert reading.high and reading.shortfall_bytes == 512 * MIB


def test_without_psi_the_floor_alone_decides() -> None:
    assert not memory_pressure(None, MEMINFO.format(4 * 1024 * 1024), 10.0, 1 << 30).high
    assert memory_pressure(None, MEMINFO.format(1024), 10.0, 1 << 30).high


def test_calm_readings_say_what_was_read() -> None:
    reading = memory_pressure(PSI_CALM, MEMINFO.format(4 * 1024 * 1024), 10.0, 1 << 30)
    assert not reading.high
    assert reading.reason == "memory stall 0.3%, MemAvailable 4294967296 bytes"
    assert memory_pressure(None, None, 10.0, 1).reason == "nothing to read"


# The pure plan

GIB = 1024 * MIB


def wanted(*entries: tuple[str, int, float]) -> list[WantedFile]:
    return [WantedFile(path, size * GIB, priority) for path, size, priority in entries]


def test_the_plan_takes_priorities_in_order_and_lets_smaller_files_use_the_rest() -> None:
    files = wanted(("small", 4, 1), ("big", 20, 50), ("medium", 10, 40), ("mid2", 10, 40))
    plan = plan_warming(files, 26 * GIB, NO_PRESSURE, held=set())
    assert plan.warm == ("big", "small"), "medium does not fit beside big, small does"
    assert plan.over_budget == ("medium", "mid2")


def test_equal_priorities_keep_the_order_they_were_given() -> None:
    files = wanted(("recent", 10, 50), ("older", 10, 50))
    assert plan_warming(files, 10 * GIB, NO_PRESSURE, held=set()).warm == ("recent",)


def test_a_held_file_pushed_out_of_the_budget_is_released_for_budget() -> None:
    files = wanted(("new", 10, 90), ("old", 10, 10))
    plan = plan_warming(files, 15 * GIB, NO_PRESSURE, held={"old"})
    assert plan.warm == ("new",)
    assert plan.release == {"old": ReleaseReason.BUDGET}


def test_a_held_file_no_longer_wanted_is_forgotten_not_evicted() -> None:
    plan = plan_warming(wanted(("a", 1, 1)), 10 * GIB, NO_PRESSURE, held={"a", "loading"})
    assert plan.forget == ("loading",) and plan.release == {}


def test_under_pressure_nothing_new_is_read_and_the_lowest_held_goes() -> None:
    files = wanted(("a", 4, 30), ("b", 4, 20), ("c", 4, 10), ("d", 4, 5))
    plan = plan_warming(files, 16 * GIB, HIGH_PSI, held={"a", "b", "c"})
    assert plan.warm == ()
    assert plan.keep == ("a", "b")
    assert plan.release == {"c": ReleaseReason.PRESSURE}


def test_a_known_shortfall_is_covered_lowest_priority_first() -> None:
    files = wanted(("a", 4, 30), ("b", 4, 20), ("c", 4, 10))
    plan = plan_warming(files, 16 * GIB, MemoryPressure(True, "low", shortfall_bytes=5 * GIB),
                        held={"a", "b", "c"})
    assert plan.keep == ("a",)
    assert set(plan.release) == {"b", "c"}


def test_while_paused_held_files_stay_and_nothing_is_read() -> None:
    files = wanted(("a", 4, 30), ("b", 4, 20))
    plan = plan_warming(files, 16 * GIB, NO_PRESSURE, held={"a"}, warming_paused=True)
    assert (plan.warm, plan.keep, plan.release) == ((), ("a",), {})


@given(sizes=st.lists(st.integers(min_value=0, max_value=64), max_size=12),
       priorities=st.lists(st.integers(min_value=0, max_value=3), min_size=12, max_size=12),
       budget=st.integers(min_value=0, max_value=200),
       held_mask=st.lists(st.booleans(), min_size=12, max_size=12))
def test_the_plan_never_holds_more_than_the_budget(sizes: list[int], priorities: list[int],
                                                   budget: int, held_mask: list[bool]) -> None:
    files = [WantedFile(f"f{i}", size, priorities[i]) for i, size in enumerate(sizes)]
    held = {f.path for f, is_held in zip(files, held_mask, strict=False) if is_held}
    plan = plan_warming(files, budget, NO_PRESSURE, held)
    size_of = {f.path: f.size_bytes for f in files}
    assert sum(size_of[path] for path in plan.held) <= budget
    assert set(plan.held) | set(plan.over_budget) == set(size_of)
    assert set(plan.release) == held & set(plan.over_budget)


# The agent's endpoint, snapshot, metrics and command


def agent_with_warmer(models: Path, warmer: Warmer | None) -> AgentService:
    return AgentService(GpuReader("dreamteam", lambda: FakeNvml([])), models=ModelHeaders(models),
                        warmer=warmer)


def test_put_warm_validates_and_the_snapshot_and_metrics_report_residency(
        models: Path) -> None:
    coder = write_model(models, "coder.gguf", 2 * MIB)
    evict_file(coder)
    pressure, _ = pressure_switch()
    warmer = Warmer(ModelHeaders(models), 8 * MIB, pressure)
    service = agent_with_warmer(models, warmer)

    async def exercise() -> None:
        async with TestClient(TestServer(build_app(service))) as http:
            outside = await http.put("/warm", json={"files": [{"path": "../secrets.gguf"}]})
            assert outside.status == 400
            assert "outside the model folder" in (await outside.json())["error"]
            malformed = await http.put("/warm", json={"files": [{"priority": 3}]})
            assert malformed.status == 400
            assert "files.0.path" in (await malformed.json())["error"]
            assert (await http.put("/warm", data=b"{not json")).status == 400
            negative = await http.put("/warm", json={"files": [], "budgetBytes": -1})
            assert negative.status == 400

            accepted = await http.put("/warm", json={
                "files": [{"path": "coder.gguf", "priority": 100, "hostPath": "/models"}]})
            assert accepted.status == 200
            assert (await accepted.json())["files"][0]["state"] == "Pending"
            await asyncio.to_thread(warmer.step)

            snapshot = await (await http.get("/snapshot")).json()
            (entry,) = snapshot["pageCache"]["files"]
            assert entry == {"path": "coder.gguf", "priority": 100.0, "state": "Held",
                             "sizeBytes": 2 * MIB, "residentBytes": 2 * MIB,
                             "message": None}
            assert snapshot["pageCache"]["budgetBytes"] == 8 * MIB
            metrics = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                       for family in text_string_to_metric_families(
                           await (await http.get("/metrics")).text())
                       for sample in family.samples}
            node = ("node", "dreamteam")
            assert metrics[("hybrid_compute_page_cache_resident_bytes",
                            (("file", "coder.gguf"), node))] == 2 * MIB
            assert metrics[("hybrid_compute_page_cache_held",
                            (("file", "coder.gguf"), node))] == 1
            assert metrics[("hybrid_compute_page_cache_budget_bytes", (node,))] == 8 * MIB
            assert metrics[("hybrid_compute_page_cache_released_total",
                            (node, ("reason", "pressure")))] == 0

    asyncio.run(exercise())


def test_put_warm_without_a_budget_is_not_found(models: Path) -> None:
    service = agent_with_warmer(models, None)

    async def exercise() -> None:
        async with TestClient(TestServer(build_app(service))) as http:
            response = await http.put("/warm", json={"files": []})
            assert response.status == 404
            assert "--page-cache-budget" in (await response.json())["error"]
            snapshot = await (await http.get("/snapshot")).json()
            assert snapshot["pageCache"] is None
            assert "page_cache" not in await (await http.get("/metrics")).text()

    asyncio.run(exercise())


def test_agent_command_takes_the_page_cache_budget_and_lock() -> None:
    args = build_parser().parse_args(["agent", "--model-root", "/models",
                                      "--page-cache-budget", "32Gi", "--lock"])
    assert (args.page_cache_budget, args.lock, args.memory_pressure_threshold,
            args.memory_floor) == ("32Gi", True, 10.0, "1Gi")
    defaults = build_parser().parse_args(["agent"])
    assert (defaults.page_cache_budget, defaults.lock) == (None, False)


def test_a_budget_without_a_model_folder_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_compute.cli import main

    assert main(["agent", "--page-cache-budget", "1Gi"]) == 2
    assert "--model-root" in capsys.readouterr().err

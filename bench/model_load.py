"""How llama-server's load mode and warmup change the time a model takes to load,
from a cold page cache and from a warm one, beside what the disk and the page
cache can deliver.

It writes a random-weight GGUF (``--size-gib``, default 1.5; use 19 on a machine
with the disk and memory for it), measures the disk's read bandwidth (buffered
and O_DIRECT, file evicted first) and the page cache's, then starts llama-server
for every load mode, cache state and warmup on/off, several rounds, the order
rotating each round so drift on a shared machine spreads over all of them.

* cold: the file evicted (``POSIX_FADV_DONTNEED``) and checked with ``mincore``
  to be out of the page cache;
* warm: the file read into the page cache and checked to be fully resident.

Each start is timed from the process start to ``/health`` answering 200 (what the
pod's readiness probe waits for) and to the first token of a one-token
completion (``--no-warmup`` only moves work from the load to the first request).
The phases come from llama-server's own log. The report prints medians and
ratios; it asserts no timing: a shared machine's timings are not pass/fail.

    .venv/bin/python bench/model_load.py [--size-gib 1.5] [--rounds 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import mmap
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from bench.random_gguf import write_random_model  # noqa: E402

from hybrid_compute.agent.page_cache import (  # noqa: E402
    evict_file,
    measure_residency,
    warm_file,
)

MODES = ("mmap", "none", "dio", "mmap+mlock")
"""llama-server's --load-mode values measured; auto is mmap on a CPU build."""
CACHE_STATES = ("cold", "warm")
BASELINE_MODE = "mmap"
READ_BLOCK = 16 * 1024 * 1024
COLD_MAX_RESIDENT = 0.02
"""A cold start allows this share of the file in the cache (its header, read back
by the check itself, and pages another process maps)."""
LOAD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Config:
    mode: str
    cache: str
    warmup: bool

    @property
    def label(self) -> str:
        return f"{self.mode:<10} {self.cache:<5} {'on' if self.warmup else 'off':<6}"


@dataclass
class Sample:
    health_s: float
    first_token_s: float
    residency: float
    """Share of the file resident just before the start."""
    tensors_s: float | None = None
    warmup_s: float | None = None


@dataclass
class Results:
    samples: dict[Config, list[Sample]] = field(default_factory=dict)
    failures: dict[Config, list[str]] = field(default_factory=dict)
    notes: dict[str, set[str]] = field(default_factory=dict)
    """Load-mode related lines of llama-server's log, by mode."""


# Physics: what the disk and the page cache deliver


def _timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _read_all(path: Path, flags: int = 0) -> int:
    """Reads the whole file in 16 MiB blocks into one page-aligned buffer."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    buffer = mmap.mmap(-1, READ_BLOCK)
    try:
        offset = 0
        while read := os.preadv(fd, [buffer], offset):
            offset += read
        return offset
    finally:
        buffer.close()
        os.close(fd)


def _cold(path: Path) -> float:
    evict_file(path)
    return measure_residency(path).ratio


def measure_bandwidths(path: Path, repeats: int = 3) -> dict[str, float]:
    """Bytes per second: disk buffered (readahead into the page cache, as mmap and
    none see it), disk O_DIRECT (as dio sees it), page cache to a user buffer."""
    size = path.stat().st_size
    buffered, direct, cached = [], [], []
    for _ in range(repeats):
        _cold(path)
        buffered.append(size / _timed(lambda: warm_file(path)))
        cached.append(size / _timed(lambda: _read_all(path)))
        _cold(path)
        with contextlib.suppress(OSError):
            direct.append(size / _timed(lambda: _read_all(path, os.O_DIRECT)))
    figures = {"disk_buffered": statistics.median(buffered),
               "page_cache": statistics.median(cached)}
    if direct:
        figures["disk_direct"] = statistics.median(direct)
    return figures


# One start of llama-server


def prepare(path: Path, cache: str) -> float:
    """Puts the file in the cache state asked for; returns the resident share."""
    if cache == "cold":
        return _cold(path)
    warm_file(path)
    return measure_residency(path).ratio


_TIMESTAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")


def log_seconds(line: str) -> float | None:
    """llama-server's log stamps lines with minutes.seconds.milliseconds.microseconds
    since its start."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None
    minutes, seconds, millis, micros = (int(part) for part in match.groups())
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def _phase_times(log: str) -> tuple[float | None, float | None]:
    """(tensor loading, warmup) seconds from the log's milestones."""
    marks: dict[str, float] = {}
    for line in log.splitlines():
        stamp = log_seconds(line)
        if stamp is None:
            continue
        for key, text in (("tensors", "loading model tensors"),
                          ("warmup", "warming up the model"),
                          ("ready", "load_model: initializing")):
            if text in line and key not in marks:
                marks[key] = stamp
    if "tensors" not in marks or "ready" not in marks:
        return None, None
    if "warmup" in marks:
        return marks["warmup"] - marks["tensors"], marks["ready"] - marks["warmup"]
    return marks["ready"] - marks["tensors"], None


def _mode_notes(log: str) -> set[str]:
    """Warnings about the load mode (mlock refused, direct I/O unavailable, ...)."""
    return {re.sub(r"^\S+ \S+ ", "", line).strip() for line in log.splitlines()
            if re.search(r"mlock|direct ?i/?o|O_DIRECT|falling back", line, re.I)
            and not re.search(r"load_mode = ", line)}


def _get(port: int, path: str, body: dict[str, object] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body),
                               {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(server: Path, model: Path, port: int, config: Config,
                   extra: Sequence[str] = ()) -> list[str]:
    command = [str(server), "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--ctx-size", "512", "--parallel", "1",
               "--load-mode", config.mode, "--log-verbosity", "4", *extra]
    if not config.warmup:
        command.append("--no-warmup")
    return command


def load_once(server: Path, model: Path, config: Config, log_dir: Path,
              extra: Sequence[str] = ()) -> tuple[Sample, str]:
    residency = prepare(model, config.cache)
    port = free_port()
    log_path = log_dir / "llama-server.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(server_command(server, model, port, config, extra),
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            health_s = _wait_healthy(process, port, started)
            _get(port, "/completion", {"prompt": "a", "n_predict": 1, "cache_prompt": False})
            first_token_s = time.monotonic() - started
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    text = log_path.read_text(errors="replace")
    tensors_s, warmup_s = _phase_times(text)
    return Sample(health_s, first_token_s, residency, tensors_s, warmup_s), text


def _wait_healthy(process: subprocess.Popen[bytes], port: int, started: float) -> float:
    while time.monotonic() - started < LOAD_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode} while loading")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if _get(port, "/health") == 200:
                return time.monotonic() - started
        time.sleep(0.005)
    raise RuntimeError(f"llama-server not healthy after {LOAD_TIMEOUT_S:.0f}s")


def run_matrix(server: Path, model: Path, configs: Sequence[Config], rounds: int,
               log_dir: Path, extra: Sequence[str] = (),
               progress: Callable[[str], None] = print) -> Results:
    """Every config once per round; each round starts one config later than the one
    before and odd rounds run backwards, so no config always follows the same one."""
    results = Results()
    for round_index in range(rounds):
        shift = round_index % len(configs)
        order = [*configs[shift:], *configs[:shift]]
        if round_index % 2:
            order.reverse()
        for config in order:
            try:
                sample, log = load_once(server, model, config, log_dir, extra)
            except (RuntimeError, OSError) as error:
                results.failures.setdefault(config, []).append(str(error))
                progress(f"  round {round_index + 1} {config.label} FAILED: {error}")
                continue
            results.samples.setdefault(config, []).append(sample)
            results.notes.setdefault(config.mode, set()).update(_mode_notes(log))
            progress(f"  round {round_index + 1} {config.label} health "
                     f"{sample.health_s:6.2f}s  first token {sample.first_token_s:6.2f}s  "
                     f"resident {sample.residency:4.0%}")
    return results


# The report


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _seconds(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else "      -"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:6.2f}x" if value is not None and base else "      -"


def report(results: Results, configs: Sequence[Config], size: int,
           bandwidths: dict[str, float]) -> list[str]:
    lines: list[str] = []
    disk = bandwidths["disk_buffered"]
    cached = bandwidths["page_cache"]
    lines.append("physics (medians):")
    lines.append(f"  disk read, buffered    {disk / 1e9:6.2f} GB/s -> the file in "
                 f"{size / disk:6.2f}s")
    if "disk_direct" in bandwidths:
        direct = bandwidths["disk_direct"]
        lines.append(f"  disk read, O_DIRECT    {direct / 1e9:6.2f} GB/s -> the file in "
                     f"{size / direct:6.2f}s")
    lines.append(f"  page cache read        {cached / 1e9:6.2f} GB/s -> the file in "
                 f"{size / cached:6.2f}s")
    lines.append("")
    lines.append("medians; 'vs mmap' compares with --load-mode mmap at the same cache state "
                 "and warmup; 'vs read' divides by the time the file takes to read "
                 "(disk for cold, page cache for warm)")
    lines.append(f"{'mode':<10} {'cache':<5} {'warmup':<6} {'n':>2} {'health':>7} "
                 f"{'first':>7} {'tensors':>7} {'warmup':>7} {'vs mmap':>7} "
                 f"{'1st vs':>7} {'vs read':>7} {'resid.':>6}")
    medians: dict[Config, tuple[float | None, float | None]] = {}
    for config in configs:
        samples = results.samples.get(config, [])
        medians[config] = (_median([s.health_s for s in samples]),
                           _median([s.first_token_s for s in samples]))
    for config in configs:
        samples = results.samples.get(config, [])
        health, first = medians[config]
        base_health, base_first = medians.get(
            Config(BASELINE_MODE, config.cache, config.warmup), (None, None))
        read_time = size / (disk if config.cache == "cold" else cached)
        residency = _median([s.residency for s in samples])
        lines.append(
            f"{config.label} {len(samples):>2} {_seconds(health)} {_seconds(first)} "
            f"{_seconds(_median([s.tensors_s for s in samples]))} "
            f"{_seconds(_median([s.warmup_s for s in samples]))} "
            f"{_ratio(health, base_health)} {_ratio(first, base_first)} "
            f"{_ratio(health, read_time)} "
            + (f"{residency:6.0%}" if residency is not None else "     -"))
    lines.append("")
    lines.append("cold / warm (health, first token):")
    for mode, warmup in itertools.product(dict.fromkeys(c.mode for c in configs),
                                          (True, False)):
        cold = medians.get(Config(mode, "cold", warmup))
        warm = medians.get(Config(mode, "warm", warmup))
        if cold and warm:
            lines.append(f"  {mode:<10} warmup {'on ' if warmup else 'off'}  "
                         f"{_ratio(cold[0], warm[0])} {_ratio(cold[1], warm[1])}")
    for config, errors in results.failures.items():
        lines.append(f"FAILED {config.label}: {len(errors)}x, last: {errors[-1]}")
    for mode, notes in sorted(results.notes.items()):
        for note in sorted(notes):
            lines.append(f"note ({mode}): {note}")
    return lines


def find_server(given: Path | None) -> Path:
    if given:
        return given
    from hybrid_compute.dev import llmtools
    return llmtools.installed_llama_server() or llmtools.ensure_llama_server()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the model file is written (its disk is measured)")
    parser.add_argument("--model", type=Path,
                        help="use this GGUF instead of writing one (it is not deleted)")
    parser.add_argument("--keep-model", action="store_true",
                        help="leave the written model file behind")
    parser.add_argument("--llama-server", type=Path,
                        help="the binary; default: the cached CPU build (built if missing)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated --load-mode values")
    parser.add_argument("--no-warmup-axis", action="store_true",
                        help="measure with warmup on only")
    parser.add_argument("--physics-repeats", type=int, default=3,
                        help="reads of the whole file per bandwidth figure")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="one more llama-server argument, e.g. --server-arg=-ngl=999")
    args = parser.parse_args()

    server = find_server(args.llama_server)
    written = args.model is None
    model = args.model or args.dir / f"hc-bench-model-{args.size_gib:g}gib.gguf"
    try:
        if written:
            started = time.monotonic()
            shape = write_random_model(model, int(args.size_gib * (1 << 30)))
            print(f"wrote {model}: {shape.layers} blocks of {shape.embedding} wide, "
                  f"F16, in {time.monotonic() - started:.1f}s")
        size = model.stat().st_size
        print(f"model {model}: {size / 1e9:.2f} GB; llama-server {server}; "
              f"{os.cpu_count()} CPUs; {args.rounds} rounds")
        bandwidths = measure_bandwidths(model, args.physics_repeats)
        configs = [Config(mode, cache, warmup)
                   for mode in args.modes.split(",") for cache in CACHE_STATES
                   for warmup in ((True,) if args.no_warmup_axis else (True, False))]
        extra = [part for arg in args.server_arg for part in arg.split("=", 1)]
        with tempfile.TemporaryDirectory(prefix="model-load-") as logs:
            results = run_matrix(server, model, configs, args.rounds, Path(logs), extra)
        print()
        print("\n".join(report(results, configs, size, bandwidths)))
    finally:
        if written and not args.keep_model:
            model.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The model fetch step against a local server laid out like Hugging Face's resolve
URLs (``/{repo}/resolve/{revision}/{file}``): no hub can be reached here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hybrid_compute import cli
from hybrid_compute.fetch import download
from hybrid_compute.fetch.download import (
    ExitCode,
    Fetcher,
    FetchError,
    FetchRequest,
    hugging_face_url,
    parse_progress,
    run_fetch,
)
from tests.http_stub import StubHandler, StubServer

REPO = "acme/tiny-llm-GGUF"
FILE = "tiny-q4_k_m.gguf"
CONTENT = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: several chunks
CONTENT_SHA256 = hashlib.sha256(CONTENT).hexdigest()
TOKEN = "hf_secret_token"


@dataclass
class ModelHub:
    """A stand-in for the hub: serves CONTENT at the resolve URL and records every
    request. ``mode`` picks a misbehaviour."""

    mode: str = "normal"
    """normal, drop-once (closes the connection halfway through the first body),
    ignore-range (always answers 200 with the whole file), wrong-content, slow."""
    require_token: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    drops_left: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def file_url(self, file: str = FILE, revision: str = "main") -> str:
        return hugging_face_url(REPO, file, revision, endpoint=self.base_url)

    def body(self) -> bytes:
        if self.mode == "wrong-content":
            return bytes(reversed(CONTENT))
        return CONTENT


def _handler(hub: ModelHub) -> type[StubHandler]:
    class Handler(StubHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with hub.lock:
                hub.requests.append({"path": self.path,
                                     "range": self.headers.get("Range", ""),
                                     "authorization": self.headers.get("Authorization", "")})
            if self.path != f"/{REPO}/resolve/main/{FILE}":
                self.send_body(404, b"not found", content_type=None)
                return
            if hub.require_token and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_body(401, b"gated repository", content_type=None)
                return
            body = hub.body()
            start = 0
            requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if requested and hub.mode != "ignore-range":
                start = int(requested.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            remaining = body[start:]
            with hub.lock:
                drop = hub.mode == "drop-once" and hub.drops_left > 0
                if drop:
                    hub.drops_left -= 1
            if drop:
                self.wfile.write(remaining[: len(remaining) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(remaining)

    return Handler


@pytest.fixture
def hub() -> Iterator[ModelHub]:
    state = ModelHub()
    # A client that stops reading (the disk-full refusal) is expected here.
    with StubServer(_handler(state), expect_disconnects=True) as server:
        state.base_url = server.url
        yield state


def _fetcher(hub: ModelHub, dest: Path, sha256: str | None = CONTENT_SHA256,
             token: str | None = None, attempts: int = 3) -> Fetcher:
    return Fetcher(FetchRequest(hub.file_url(), dest, sha256=sha256, token=token,
                                attempts=attempts, retry_delay=0.0, timeout=10),
                   sleep=lambda _seconds: None)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if not p.name.endswith((download.LOCK_SUFFIX, download.PROGRESS_SUFFIX)))


def test_hugging_face_url_follows_the_resolve_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(download.HF_ENDPOINT_ENV, raising=False)
    assert hugging_face_url("org/model", "sub dir/m.gguf", "v1.0") == (
        "https://huggingface.co/org/model/resolve/v1.0/sub%20dir/m.gguf")
    monkeypatch.setenv(download.HF_ENDPOINT_ENV, "http://mirror.local:8080/")
    assert hugging_face_url("org/model", "m.gguf") == (
        "http://mirror.local:8080/org/model/resolve/main/m.gguf")


def test_fresh_fetch_writes_the_verified_file(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / "models" / FILE
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT
    assert _leftovers(dest.parent) == [FILE], "no .part file may stay behind"
    assert [r["range"] for r in hub.requests] == [""]


def test_present_file_with_the_right_checksum_is_not_fetched(hub: ModelHub,
                                                            tmp_path: Path) -> None:
    dest = tmp_path / FILE
    dest.write_bytes(CONTENT)
    assert _fetcher(hub, dest).run() == "Present"
    assert hub.requests == [], "a verified file must not cause a request"


def test_present_file_without_a_checksum_is_trusted(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / FILE
    dest.write_bytes(b"whatever the user put there")
    assert _fetcher(hub, dest, sha256=None).run() == "Present"
    assert hub.requests == []


def test_mismatching_file_is_fetched_again(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / FILE
    dest.write_bytes(b"an older upload of the model")
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT
    assert len(hub.requests) == 1


def test_dropped_connection_resumes_from_the_partial_size(hub: ModelHub,
                                                          tmp_path: Path) -> None:
    hub.mode = "drop-once"
    dest = tmp_path / FILE
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT
    assert len(hub.requests) == 2, f"expected a second, resuming request: {hub.requests}"
    half = len(CONTENT) // 2
    assert hub.requests[1]["range"] == f"bytes={half}-"
    assert _leftovers(tmp_path) == [FILE]


def test_partial_file_from_an_earlier_run_is_resumed(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / FILE
    (tmp_path / (FILE + download.PART_SUFFIX)).write_bytes(CONTENT[:1000])
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT
    assert [r["range"] for r in hub.requests] == ["bytes=1000-"]


def test_complete_partial_file_is_only_verified(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / FILE
    (tmp_path / (FILE + download.PART_SUFFIX)).write_bytes(CONTENT)
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT
    assert [r["range"] for r in hub.requests] == [f"bytes={len(CONTENT)}-"]


def test_server_ignoring_range_restarts_from_zero(hub: ModelHub, tmp_path: Path) -> None:
    hub.mode = "ignore-range"
    dest = tmp_path / FILE
    (tmp_path / (FILE + download.PART_SUFFIX)).write_bytes(b"x" * 5000)
    assert _fetcher(hub, dest).run() == "Downloaded"
    assert dest.read_bytes() == CONTENT, "the stale prefix must not stay in the file"
    assert hub.requests[0]["range"] == "bytes=5000-"


def test_disk_full_refuses_before_downloading(hub: ModelHub, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / FILE
    (tmp_path / (FILE + download.PART_SUFFIX)).write_bytes(CONTENT[:48576])
    needed = len(CONTENT) - 48576
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _path: real._replace(free=needed - 1))
    with pytest.raises(FetchError) as refused:
        _fetcher(hub, dest).run()
    assert refused.value.code == ExitCode.NO_ROOM
    message = str(refused.value)
    assert f"{needed} bytes" in message and f"{needed - 1} bytes" in message, message
    assert not dest.exists()
    assert (tmp_path / (FILE + download.PART_SUFFIX)).stat().st_size == 48576, (
        "the refusal must not touch the partial file")


def test_bad_checksum_leaves_no_file_under_the_final_name(hub: ModelHub,
                                                          tmp_path: Path) -> None:
    hub.mode = "wrong-content"
    dest = tmp_path / FILE
    stream = io.StringIO()
    code = run_fetch(FetchRequest(hub.file_url(), dest, sha256=CONTENT_SHA256,
                                  retry_delay=0.0), stream=stream)
    assert code == ExitCode.CHECKSUM_MISMATCH
    assert not dest.exists()
    assert _leftovers(tmp_path) == [], "the bad bytes must not stay as a .part either"
    last = parse_progress(stream.getvalue().splitlines()[-1])
    assert last is not None and last.state == "Failed"
    assert CONTENT_SHA256 in last.message


def test_token_is_sent_as_a_bearer_authorization(hub: ModelHub, tmp_path: Path) -> None:
    hub.require_token = True
    dest = tmp_path / FILE
    assert _fetcher(hub, dest, token=TOKEN).run() == "Downloaded"
    assert hub.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_gated_repository_without_a_token_says_so(hub: ModelHub, tmp_path: Path) -> None:
    hub.require_token = True
    with pytest.raises(FetchError) as refused:
        _fetcher(hub, tmp_path / FILE).run()
    assert refused.value.code == ExitCode.UNAUTHORIZED
    assert "tokenSecretRef" in str(refused.value)


def test_missing_file_is_not_found(hub: ModelHub, tmp_path: Path) -> None:
    request = FetchRequest(hub.file_url("nope.gguf"), tmp_path / "nope.gguf", retry_delay=0.0)
    with pytest.raises(FetchError) as refused:
        Fetcher(request).run()
    assert refused.value.code == ExitCode.NOT_FOUND


def test_unreachable_server_gives_up_after_the_attempts(tmp_path: Path) -> None:
    request = FetchRequest("http://127.0.0.1:9/m.gguf", tmp_path / "m.gguf", attempts=2,
                           retry_delay=0.0, timeout=2)
    with pytest.raises(FetchError) as failed:
        Fetcher(request, sleep=lambda _s: None).run()
    assert failed.value.code == ExitCode.DOWNLOAD_FAILED
    assert "after 2 tries" in str(failed.value)


def test_two_fetches_of_the_same_file_download_it_once(hub: ModelHub, tmp_path: Path) -> None:
    dest = tmp_path / FILE
    outcomes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def one_slot() -> None:
        try:
            start.wait()
            outcomes.append(_fetcher(hub, dest).run())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one_slot) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(outcomes) == ["Downloaded", "Present"]
    assert len(hub.requests) == 1, f"the file was downloaded more than once: {hub.requests}"
    assert dest.read_bytes() == CONTENT


def test_progress_lines_and_file_report_bytes_and_percent(hub: ModelHub,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / FILE
    stream = io.StringIO()
    assert run_fetch(FetchRequest(hub.file_url(), dest, sha256=CONTENT_SHA256),
                     stream=stream) == ExitCode.OK
    lines = [parse_progress(line) for line in stream.getvalue().splitlines()]
    assert all(lines), stream.getvalue()
    states = [p.state for p in lines if p]
    assert states[0] == "Downloading" and states[-1] == "Downloaded", states
    final = json.loads((tmp_path / (FILE + download.PROGRESS_SUFFIX)).read_text())
    assert final == {"state": "Downloaded", "file": FILE, "bytes": len(CONTENT),
                     "totalBytes": len(CONTENT), "percent": 100.0}


def test_cli_fetches_from_a_hugging_face_layout(hub: ModelHub, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(download.HF_ENDPOINT_ENV, hub.base_url)
    monkeypatch.setenv(download.TOKEN_ENV, TOKEN)
    dest = tmp_path / FILE
    code = cli.main(["fetch", "--hf-repo", REPO, "--hf-file", FILE, "--dest", str(dest),
                     "--sha256", CONTENT_SHA256])
    assert code == 0, capsys.readouterr()
    assert dest.read_bytes() == CONTENT
    assert hub.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "Downloaded"


@pytest.mark.parametrize("argv", [
    ["--dest", "x.gguf"],
    ["--url", "http://h/x", "--hf-repo", "a/b", "--hf-file", "x", "--dest", "x.gguf"],
    ["--hf-repo", "a/b", "--dest", "x.gguf"],
    ["--url", "http://h/x", "--dest", "x.gguf", "--sha256", "abc"],
])
def test_cli_refuses_incomplete_arguments(argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fetch", *argv]) == ExitCode.USAGE
    assert "error:" in capsys.readouterr().err


def test_exit_codes_are_distinct() -> None:
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    assert os.EX_OK == ExitCode.OK

"""Downloads a slot's model file onto the node: the ``hybrid-compute fetch`` step.

It runs as the init container of a slot's pod, so the file is in the model folder
before llama-server starts. The rules it keeps:

- nothing is downloaded when the file is already there (and matches its SHA-256,
  when one is given);
- the bytes go to ``<file>.part`` and reach the final name only once complete and
  verified, with ``os.replace``, so llama-server never sees half a model;
- a dropped connection resumes from the partial file with an HTTP Range request
  (and starts over when the server ignores Range);
- it refuses to start when the disk lacks room, saying how much is needed and free;
- two slots naming the same file on a node take turns on a lock file, and the
  second finds the file present;
- progress goes to stdout as JSON lines (the operator reads the last one) and to a
  small JSON file beside the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

HF_ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
PROGRESS_SUFFIX = ".fetch.json"
CHUNK_BYTES = 1024 * 1024
USER_AGENT = "hybrid-compute-fetch"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


class ExitCode(enum.IntEnum):
    """What ``hybrid-compute fetch`` exits with; the pod's init container status
    shows it, so each failure that needs a different fix has its own code."""

    OK = 0
    DOWNLOAD_FAILED = 1
    USAGE = 2
    CHECKSUM_MISMATCH = 3
    NO_ROOM = 4
    UNAUTHORIZED = 5
    NOT_FOUND = 6


class FetchError(Exception):
    """A fetch that cannot succeed; the message says why, with the numbers."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Interrupted(Exception):
    """The connection ended before the whole file arrived; the next try resumes."""


FetchState = Literal["Checking", "Waiting", "Downloading", "Verifying", "Present",
                     "Downloaded", "Failed"]


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report: a JSON line on stdout and the progress file's content."""

    state: FetchState
    file: str
    bytes: int = 0
    total_bytes: int | None = None
    message: str = ""

    @property
    def percent(self) -> float | None:
        if not self.total_bytes:
            return None
        return round(100.0 * self.bytes / self.total_bytes, 1)

    def to_json(self) -> str:
        record: dict[str, Any] = {"state": self.state, "file": self.file, "bytes": self.bytes}
        if self.total_bytes is not None:
            record["totalBytes"] = self.total_bytes
            record["percent"] = self.percent
        if self.message:
            record["message"] = self.message
        return json.dumps(record, sort_keys=True)


def parse_progress(line: str) -> Progress | None:
    """A progress line as written by :meth:`Progress.to_json`; None for anything else
    (the operator reads it from the init container's log)."""
    try:
        record = json.loads(line)
        return Progress(state=record["state"], file=str(record.get("file", "")),
                        bytes=int(record.get("bytes", 0)),
                        total_bytes=(int(record["totalBytes"])
                                     if record.get("totalBytes") is not None else None),
                        message=str(record.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return None


class ProgressReporter:
    """Writes progress to a stream and a file, at most every ``interval`` seconds
    while downloading (state changes and messages are always written)."""

    def __init__(self, stream: IO[str] | None, progress_file: Path | None,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.progress_file = progress_file
        self.interval = interval
        self.clock = clock
        self.last: Progress | None = None
        self._last_written = float("-inf")

    def report(self, progress: Progress) -> None:
        now = self.clock()
        routine = (self.last is not None and self.last.state == progress.state
                   and not progress.message)
        self.last = progress
        if routine and now - self._last_written < self.interval:
            return
        self._last_written = now
        line = progress.to_json()
        if self.stream is not None:
            self.stream.write(line + "\n")
            self.stream.flush()
        if self.progress_file is not None:
            # Replaced whole, so a reader never sees half a record.
            scratch = self.progress_file.with_name(self.progress_file.name + ".tmp")
            with contextlib.suppress(OSError):
                scratch.write_text(line + "\n")
                os.replace(scratch, self.progress_file)


@dataclasses.dataclass(frozen=True)
class FetchRequest:
    """What to fetch and where to put it."""

    url: str
    dest: Path
    sha256: str | None = None
    token: str | None = None
    """Sent as a bearer token (Hugging Face gated or private repositories)."""
    attempts: int = 5
    """Connections tried in all; each after the first resumes the partial file."""
    retry_delay: float = 2.0
    """Seconds before the second try, doubling after each failure."""
    timeout: float = 60.0
    """Seconds a connection may stay silent."""


def hugging_face_url(repo: str, file: str, revision: str = "main",
                     endpoint: str | None = None) -> str:
    """The resolve URL of a file in a Hugging Face repository (the endpoint comes from
    ``$HF_ENDPOINT``, as in Hugging Face's own tools, so a mirror can stand in)."""
    base = (endpoint or os.environ.get(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")
    quoted_repo = "/".join(urllib.parse.quote(part, safe="") for part in repo.split("/"))
    quoted_file = "/".join(urllib.parse.quote(part, safe="") for part in file.split("/"))
    return (f"{base}/{quoted_repo}/resolve/{urllib.parse.quote(revision, safe='')}/"
            f"{quoted_file}")


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Holds an exclusive flock on ``lock_path``; calls ``on_wait`` once if another
    fetch of the same file holds it."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _SameHostAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects but sends the token only to the host it was meant for:
    Hugging Face redirects downloads to a CDN with a signed URL."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: http.client.HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and (urllib.parse.urlsplit(newurl).netloc
                                       != urllib.parse.urlsplit(req.full_url).netloc):
            redirected.remove_header("Authorization")
        return redirected


_OPENER = urllib.request.build_opener(_SameHostAuthRedirects())


class Fetcher:
    """Fetches one file; :meth:`run` is the whole step."""

    def __init__(self, request: FetchRequest, reporter: ProgressReporter | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if request.attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.request = request
        self.dest = request.dest
        self.part = request.dest.with_name(request.dest.name + PART_SUFFIX)
        self.reporter = reporter or ProgressReporter(None, None)
        self.sleep = sleep
        self.expected = request.sha256.lower() if request.sha256 else None

    def _report(self, state: FetchState, done: int = 0, total: int | None = None,
                message: str = "") -> None:
        self.reporter.report(Progress(state, self.dest.name, done, total, message))

    def run(self) -> Literal["Present", "Downloaded"]:
        """Makes sure the verified file is at ``dest``; raises :class:`FetchError`."""
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FetchError(ExitCode.DOWNLOAD_FAILED,
                             f"cannot create {self.dest.parent}: {error}") from None
        lock = self.dest.with_name(self.dest.name + LOCK_SUFFIX)
        with _exclusive(lock, lambda: self._report(
                "Waiting", message="another fetch of this file is running on the node")):
            if self._present():
                size = self.dest.stat().st_size
                self._report("Present", size, size, "already on the node")
                return "Present"
            self._download_with_retries()
            size = self.dest.stat().st_size
            self._report("Downloaded", size, size)
            return "Downloaded"

    def _present(self) -> bool:
        if not self.dest.is_file():
            return False
        if self.expected is None:
            return True
        self._report("Checking", message="checking the SHA-256 of the file on the node")
        actual = file_sha256(self.dest)
        if actual == self.expected:
            return True
        self._report("Checking", message=f"the file on the node has SHA-256 {actual}, "
                                         f"not {self.expected}: fetching it again")
        return False

    def _download_with_retries(self) -> None:
        delay = self.request.retry_delay
        for attempt in range(1, self.request.attempts + 1):
            try:
                digest = self._download_once()
                break
            except _Interrupted as error:
                if attempt == self.request.attempts:
                    raise FetchError(ExitCode.DOWNLOAD_FAILED,
                                     f"download of {self.dest.name} failed after {attempt} "
                                     f"tries: {error}") from None
                have = self.part.stat().st_size if self.part.exists() else 0
                self._report("Downloading", have, None,
                             f"connection lost ({error}); resuming from {have} bytes")
                self.sleep(delay)
                delay *= 2
        self._report("Verifying", self.part.stat().st_size, None)
        if self.expected is not None and digest != self.expected:
            # Wrong bytes cannot be resumed from: start clean next time.
            self.part.unlink(missing_ok=True)
            raise FetchError(ExitCode.CHECKSUM_MISMATCH,
                             f"{self.dest.name}: downloaded SHA-256 is {digest}, expected "
                             f"{self.expected}; the file was removed")
        os.replace(self.part, self.dest)
        _sync_folder(self.dest.parent)

    def _open(self, have: int) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.request.url, headers={"User-Agent": USER_AGENT})
        if self.request.token:
            request.add_header("Authorization", f"Bearer {self.request.token}")
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response: http.client.HTTPResponse = _OPENER.open(
                request, timeout=self.request.timeout)
            return response
        except urllib.error.HTTPError as error:
            error.close()
            if error.code in (401, 403):
                raise FetchError(ExitCode.UNAUTHORIZED,
                                 f"{self.request.url} answered {error.code}: the repository "
                                 "is gated or private; name a Secret with a token that may "
                                 "read it (tokenSecretRef)") from None
            if error.code == 404:
                raise FetchError(ExitCode.NOT_FOUND,
                                 f"{self.request.url} answered 404: check the repository, "
                                 "file and revision") from None
            if error.code == 416 and have:
                raise _RangeNotSatisfiable(error.headers.get("Content-Range", "")) from None
            if error.code >= 500 or error.code == 429:
                raise _Interrupted(f"server answered {error.code}") from None
            raise FetchError(ExitCode.DOWNLOAD_FAILED,
                             f"{self.request.url} answered {error.code} {error.reason}"
                             ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Interrupted(str(getattr(error, "reason", error))) from None

    def _download_once(self) -> str:
        """One connection: appends to the partial file; returns its SHA-256 when the
        whole file is there, raises :class:`_Interrupted` when the connection ends
        early."""
        have = self.part.stat().st_size if self.part.exists() else 0
        try:
            response = self._open(have)
        except _RangeNotSatisfiable as unsatisfied:
            # The partial file is as long as the file: it only needs checking.
            total = unsatisfied.total
            if total == have:
                return file_sha256(self.part)
            self.part.unlink()
            return self._download_once()
        with response:
            total, have = self._resume_point(response, have)
            if total is not None:
                self._check_room(total - have)
            digest = hashlib.sha256()
            mode = "ab" if have else "wb"
            if have:
                _hash_prefix(self.part, have, digest)
            done = have
            self._report("Downloading", done, total)
            with self.part.open(mode) as out:
                out.truncate(have)
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:
                        out.flush()
                        raise _Interrupted(str(error) or type(error).__name__) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    self._report("Downloading", done, total)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and done < total:
                raise _Interrupted(f"connection closed after {done} of {total} bytes")
            return digest.hexdigest()

    def _resume_point(self, response: http.client.HTTPResponse, have: int
                      ) -> tuple[int | None, int]:
        """(total size, bytes kept from the partial file) for this response."""
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == have:
                total = match.group(3)
                return (int(total) if total != "*" else None), have
            raise _Interrupted("the server answered a different range than asked; "
                               "starting over")
        length = response.headers.get("Content-Length")
        if have:
            self._report("Downloading", 0, None,
                         "the server ignored the Range request: starting from zero")
        return (int(length) if length and length.isdigit() else None), 0

    def _check_room(self, needed: int) -> None:
        free = shutil.disk_usage(self.dest.parent).free
        if needed > free:
            raise FetchError(
                ExitCode.NO_ROOM,
                f"not enough disk space in {self.dest.parent} for {self.dest.name}: "
                f"{needed} bytes ({human_bytes(needed)}) still to download, {free} bytes "
                f"({human_bytes(free)}) free")


class _RangeNotSatisfiable(Exception):
    """HTTP 416: the partial file already reaches (or passes) the end."""

    def __init__(self, content_range: str) -> None:
        super().__init__(content_range)
        match = _UNSATISFIED_RANGE.match(content_range)
        self.total = int(match.group(1)) if match else None


def _hash_prefix(path: Path, length: int, digest: Any) -> None:
    with path.open("rb") as handle:
        remaining = length
        while remaining:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)


def _sync_folder(folder: Path) -> None:
    """Makes the rename durable, so a node crash cannot bring back the .part name."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def destination_problem(dest: str, root: str | None = None) -> str | None:
    """Why the fetch step may not write ``dest``: a ``..`` segment (the way out of
    any folder), or, with ``root``, a place outside that models folder."""
    if ".." in PurePosixPath(dest).parts:
        return f"--dest {dest} may not contain '..' segments"
    if root is not None:
        folder = posixpath.normpath(posixpath.abspath(root))
        target = posixpath.normpath(posixpath.abspath(dest))
        if posixpath.commonpath([folder, target]) != folder or target == folder:
            return f"--dest {dest} is outside the models folder {root}"
    return None


def run_fetch(request: FetchRequest, stream: IO[str] | None = None,
              progress_file: Path | None = None, sleep: Callable[[float], None] = time.sleep
              ) -> int:
    """The CLI step: fetches, reports, and returns the exit code."""
    stream = stream if stream is not None else sys.stdout
    if progress_file is None:
        progress_file = request.dest.with_name(request.dest.name + PROGRESS_SUFFIX)
    reporter = ProgressReporter(stream, progress_file)
    try:
        Fetcher(request, reporter, sleep).run()
    except FetchError as error:
        last = reporter.last
        reporter.report(Progress("Failed", request.dest.name, last.bytes if last else 0,
                                 last.total_bytes if last else None, str(error)))
        return int(error.code)
    return int(ExitCode.OK)

"""Builds the real serving parts the integration tests run: the LiteLLM proxy in a
virtual environment of its own, and llama-server from the llama.cpp sources that
the llama-cpp-python source distribution vendors (the versions of both are those of
:mod:`hybrid_compute.upstream`, which the chart's images follow).

Both land in the cache folder beside the control plane binaries, once per
version, so a warm run installs nothing. LiteLLM's proxy pulls in hundreds of
megabytes of dependencies that the operator must never import, hence the
separate environment.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hybrid_compute.dev.toolchain import ToolchainError, cache_home, run_step
from hybrid_compute.upstream import LITELLM_VERSION, LLAMA_CPP

# The stock LiteLLM image also carries prometheus_client, which its "prometheus"
# callback needs; the proxy extra does not pull it in.
LITELLM_REQUIREMENTS = (f"litellm[proxy]=={LITELLM_VERSION}", "prometheus-client==0.26.0")
LLAMA_CPP_PYTHON_VERSION = LLAMA_CPP.llama_cpp_python

_LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    # A portable binary: the cache may be shared between machines of one kind.
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


@dataclass(frozen=True)
class ServingTools:
    litellm: Path
    """The ``litellm`` proxy command."""
    litellm_python: Path
    """The interpreter of LiteLLM's environment (for the router module's imports)."""
    llama_server: Path


def litellm_root() -> Path:
    return cache_home() / f"litellm-v{LITELLM_VERSION}"


def llama_root() -> Path:
    return cache_home() / f"llama-server-llama-cpp-python-v{LLAMA_CPP_PYTHON_VERSION}"


def _litellm_stamp() -> str:
    return "\n".join(LITELLM_REQUIREMENTS) + "\n"


def installed_litellm() -> Path | None:
    """The cached ``litellm`` command, None until it is installed."""
    command = litellm_root() / "venv" / "bin" / "litellm"
    stamp = litellm_root() / "complete"
    current = stamp.exists() and stamp.read_text() == _litellm_stamp()
    return command if current and command.exists() else None


def installed_llama_server() -> Path | None:
    binary = llama_root() / "bin" / "llama-server"
    return binary if (llama_root() / "complete").exists() and binary.exists() else None


def installed() -> ServingTools | None:
    """The cached tools when both are complete, else None."""
    litellm, llama_server = installed_litellm(), installed_llama_server()
    if litellm is None or llama_server is None:
        return None
    return ServingTools(litellm, litellm.parent / "python", llama_server)


def ensure_litellm(log: bool = True) -> Path:
    root = litellm_root()
    litellm = root / "venv" / "bin" / "litellm"
    if installed_litellm():
        return litellm
    started = time.monotonic()
    if log:
        print(f"installing {' '.join(LITELLM_REQUIREMENTS)} (once) ...", file=sys.stderr)
    pip = str(root / "venv" / "bin" / "pip")
    if not Path(pip).exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        run_step([sys.executable, "-m", "venv", str(root / "venv")], "creating LiteLLM's venv")
        run_step([pip, "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
    run_step([pip, "install", "--quiet", *LITELLM_REQUIREMENTS],
         f"installing {' '.join(LITELLM_REQUIREMENTS)} from the package index")
    (root / "complete").write_text(_litellm_stamp())
    if log:
        print(f"  LiteLLM ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return litellm


def vendored_commit(llama_cpp: Path) -> str:
    """The llama.cpp commit of a vendored source tree, from its git metadata: the
    source distribution keeps the submodule's ``.git``, a file naming its git folder."""
    git = llama_cpp / ".git"
    try:
        if git.is_file():
            pointer = git.read_text().strip()
            if not pointer.startswith("gitdir:"):
                raise ToolchainError(f"{git} names no git folder: {pointer[:80]!r}")
            git = llama_cpp / pointer.removeprefix("gitdir:").strip()
        commit = (git / "HEAD").read_text().strip()
    except OSError as error:
        raise ToolchainError(f"cannot tell which llama.cpp commit {llama_cpp} holds: "
                             f"{error}") from None
    if re.fullmatch(r"[0-9a-f]{40}", commit) is None:
        raise ToolchainError(f"{llama_cpp} is not at a fixed llama.cpp commit (HEAD: "
                             f"{commit[:80]!r})")
    return commit


def check_vendored_commit(llama_cpp: Path) -> None:
    """Refuses sources other than the llama.cpp build the images are pinned to, so the
    tests never pass on a llama-server that the default images do not run."""
    commit = vendored_commit(llama_cpp)
    if commit != LLAMA_CPP.commit:
        raise ToolchainError(
            f"llama-cpp-python {LLAMA_CPP.llama_cpp_python} vendors llama.cpp {commit}, "
            f"but hybrid_compute.upstream records {LLAMA_CPP.commit} (build "
            f"b{LLAMA_CPP.build}): record the vendored commit together with its build "
            "number, the b<N> release tag llama.cpp made for it")


def _missing_build_tools() -> list[str]:
    return [tool for tool in ("cmake", "ninja", "c++") if shutil.which(tool) is None]


def ensure_llama_server(log: bool = True) -> Path:
    root = llama_root()
    binary = root / "bin" / "llama-server"
    if installed_llama_server():
        return binary
    missing = _missing_build_tools()
    if missing:
        raise ToolchainError(
            f"building llama-server needs {', '.join(missing)}: install them "
            "(Debian/Ubuntu: apt-get install cmake ninja-build g++)")
    started = time.monotonic()
    if log:
        print("building llama-server from the llama.cpp sources in llama-cpp-python "
              f"{LLAMA_CPP_PYTHON_VERSION} (once, a few minutes) ...", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-") as scratch:
        work = Path(scratch)
        run_step([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
              "--no-binary", ":all:", "--dest", str(work),
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
             "downloading the llama-cpp-python source distribution")
        archive = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        check_vendored_commit(source)
        build = work / "build"
        run_step(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja",
              *_LLAMA_CMAKE_FLAGS], "configuring llama.cpp")
        jobs = str(max(os.cpu_count() or 1, 1))
        run_step(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
             "building llama-server")
        (root / "bin").mkdir(exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
    (root / "complete").write_text(LLAMA_CPP_PYTHON_VERSION + "\n")
    if log:
        print(f"  llama-server built in {time.monotonic() - started:.0f}s: {binary}",
              file=sys.stderr)
    return binary


def ensure_serving_tools(log: bool = True) -> ServingTools:
    litellm = ensure_litellm(log)
    llama_server = ensure_llama_server(log)
    return ServingTools(litellm, litellm.parent / "python", llama_server)

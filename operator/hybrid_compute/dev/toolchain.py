"""Builds the local control plane's binaries from Go modules and caches them.

The Kubernetes, etcd and kwok commands are compiled once per version set into a
folder outside the repository, so a warm start never touches the network.
``k8s.io/kubernetes`` and etcd's server module both carry relative ``replace``
directives, which make ``go install pkg@version`` fail; each is therefore built
from a small wrapper module that requires it and pins the replaced modules to
their published tags.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "1.36.3"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.7.0"
MINIMUM_GO = (1, 26)

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBERNETES_COMMANDS, "etcd", "kwok")

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9_.-]+)\s+=>\s+\./staging/", re.MULTILINE)


class ToolchainError(RuntimeError):
    """A build prerequisite is missing or a build failed; the message says what to do."""


@dataclass(frozen=True)
class Toolchain:
    """Where the binaries of one version set live."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def is_complete(self) -> bool:
        return (self.root / "complete").exists() and all(
            self.binary(name).exists() for name in ALL_BINARIES
        )


def cache_home() -> Path:
    """The cache folder: ``$HYBRID_COMPUTE_CACHE``, else the XDG cache folder."""
    explicit = os.environ.get("HYBRID_COMPUTE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hybrid-compute"


def version_key() -> str:
    return f"k8s-v{KUBERNETES_VERSION}_etcd-v{ETCD_VERSION}_kwok-v{KWOK_VERSION}"


def default_toolchain() -> Toolchain:
    return Toolchain(cache_home() / version_key())


def ensure_toolchain(log: bool = True) -> Toolchain:
    """Returns the cached toolchain, building whatever is missing first."""
    toolchain = default_toolchain()
    if toolchain.is_complete():
        return toolchain
    go = _find_go()
    toolchain.bin_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for name, builder in (
        ("kubernetes", _build_kubernetes),
        ("etcd", _build_etcd),
        ("kwok", _build_kwok),
    ):
        step_started = time.monotonic()
        if log:
            print(f"building {name} from Go modules (once per version) ...", file=sys.stderr)
        builder(go, toolchain)
        if log:
            print(f"  {name} built in {time.monotonic() - step_started:.0f}s", file=sys.stderr)
    (toolchain.root / "complete").write_text(version_key() + "\n")
    if log:
        print(
            f"control plane binaries ready in {time.monotonic() - started:.0f}s: "
            f"{toolchain.bin_dir}",
            file=sys.stderr,
        )
    return toolchain


def _find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolchainError(
            "Go is not installed, and the local control plane is built from Go modules. "
            f"Install Go {MINIMUM_GO[0]}.{MINIMUM_GO[1]} or newer (Debian/Ubuntu: "
            "`apt-get install golang-go` if new enough, otherwise the release from go.dev) "
            "and make sure `go` is on PATH."
        )
    output = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    match = re.match(r"go(\d+)\.(\d+)", output.strip())
    if match is None or (int(match.group(1)), int(match.group(2))) < MINIMUM_GO:
        raise ToolchainError(
            f"Go {output.strip() or 'of unknown version'} is too old: building Kubernetes "
            f"v{KUBERNETES_VERSION} needs Go {MINIMUM_GO[0]}.{MINIMUM_GO[1]} or newer "
            "(or set GOTOOLCHAIN to a newer toolchain the module proxy serves)."
        )
    return go


def _run_go(go: str, args: list[str], cwd: Path, what: str,
            go_toolchain: str | None = None) -> str:
    """Runs one go command; ``go_toolchain`` (e.g. ``go1.27.4``) makes go fetch and
    use that toolchain from the module proxy, for a module that needs a newer Go."""
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    if go_toolchain:
        env["GOTOOLCHAIN"] = go_toolchain
    result = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        hint = ""
        if any(word in tail for word in ("dial tcp", "no such host", "connection refused",
                                          "i/o timeout", "TLS handshake")):
            proxy = os.environ.get("GOPROXY", "the default Go module proxy")
            hint = (
                f"\nThe Go module proxy ({proxy}) could not be reached. Building the control "
                "plane needs it once; afterwards the cached binaries are reused offline."
            )
        raise ToolchainError(f"{what} failed (go {' '.join(args[:2])} ...):\n{tail}{hint}")
    return result.stdout


def run_step(command: list[str], what: str, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> str:
    """Runs one build step and returns its output; a failure raises a
    :class:`ToolchainError` with ``what`` and the end of the step's own output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise ToolchainError(f"{what} failed ({' '.join(command[:3])} ...):\n{tail}")
    return result.stdout


def install_with_apt(packages: list[str], why: str, log: bool) -> None:
    """Installs Debian packages a local build or test needs, as root with apt-get;
    elsewhere raises a :class:`ToolchainError` that says what to install and ``why``."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise ToolchainError(
            f"{' and '.join(packages)} cannot be installed here "
            f"({'not root' if apt else 'no apt-get'}), and {why}: install them with the "
            "system's package manager")
    if log:
        print(f"installing {' and '.join(packages)} with apt-get ({why}) ...",
              file=sys.stderr)
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "--yes", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh machine may not have package lists yet.
        run_step([apt, "update"], "apt-get update", env=env)
        run_step(install, f"installing {' and '.join(packages)} with apt-get", env=env)
    if log:
        print(f"  installed in {time.monotonic() - started:.0f}s", file=sys.stderr)


def _wrapper_module(toolchain: Toolchain, name: str) -> Path:
    folder = toolchain.root / "src" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_go_mod(folder: Path, module: str, lines: list[str]) -> None:
    go_line = f"go {MINIMUM_GO[0]}.{MINIMUM_GO[1]}.0"
    body = [f"module hybrid-compute.local/{module}", "", go_line, ""]
    (folder / "go.mod").write_text("\n".join(body + lines) + "\n")


def staging_modules(go: str, workdir: Path) -> list[str]:
    """The ``k8s.io/*`` modules that ``k8s.io/kubernetes`` replaces with local paths."""
    info = json.loads(
        _run_go(go, ["mod", "download", "-json", f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"],
                workdir, "downloading k8s.io/kubernetes")
    )
    return parse_staging_modules(Path(info["GoMod"]).read_text())


def parse_staging_modules(go_mod: str) -> list[str]:
    return sorted(set(_STAGING_REPLACE.findall(go_mod)))


def _kubernetes_ldflags() -> str:
    major, minor, _ = KUBERNETES_VERSION.split(".")
    version = f"v{KUBERNETES_VERSION}"
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def _build_kubernetes(go: str, toolchain: Toolchain) -> None:
    folder = _wrapper_module(toolchain, "kubernetes")
    _write_go_mod(folder, "kubernetes", [])
    staging_minor = "0." + KUBERNETES_VERSION.split(".", 1)[1]
    replaces = [f"replace {module} => {module} v{staging_minor}"
                for module in staging_modules(go, folder)]
    _write_go_mod(folder, "kubernetes", [f"require k8s.io/kubernetes v{KUBERNETES_VERSION}",
                                         "", *replaces])
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_COMMANDS]
    _run_go(go, ["get", *(f"{p}@v{KUBERNETES_VERSION}" for p in packages)], folder,
            "resolving Kubernetes modules")
    _run_go(go, ["build", "-ldflags", _kubernetes_ldflags(), "-o",
                 str(toolchain.bin_dir) + "/", *packages], folder, "building Kubernetes")


def _build_etcd(go: str, toolchain: Toolchain) -> None:
    folder = _wrapper_module(toolchain, "etcd")
    _write_go_mod(folder, "etcd", [])
    _run_go(go, ["get", f"go.etcd.io/etcd/server/v3@v{ETCD_VERSION}"], folder,
            "resolving etcd modules")
    _run_go(go, ["build", "-ldflags", "-s -w", "-o",
                 str(toolchain.binary("etcd")), "go.etcd.io/etcd/server/v3"], folder,
            "building etcd")


def _build_kwok(go: str, toolchain: Toolchain) -> None:
    folder = _wrapper_module(toolchain, "kwok")
    _write_go_mod(folder, "kwok", [])
    package = "sigs.k8s.io/kwok/cmd/kwok"
    _run_go(go, ["get", f"{package}@v{KWOK_VERSION}"], folder, "resolving kwok modules")
    ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v{KWOK_VERSION}"
    _run_go(go, ["build", "-ldflags", ldflags, "-o",
                 str(toolchain.binary("kwok")), package], folder, "building kwok")

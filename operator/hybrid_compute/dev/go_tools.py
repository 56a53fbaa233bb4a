"""Single commands built from one Go module at a fixed version (helm for the chart's
tests, actionlint for ``make lint``) and cached beside the control plane.

Like the control plane, each is compiled once per version from the Go module proxy
into ``<cache>/<name>-v<version>``, so neither CI nor a developer needs a package
manager or a download site, and a warm run builds nothing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hybrid_compute.dev.toolchain import _find_go, _run_go, _write_go_mod, cache_home


@dataclass(frozen=True)
class GoCommand:
    """One command of a Go module, at one version."""

    name: str
    module: str
    """The module that holds the command, e.g. ``helm.sh/helm/v4``."""
    package: str
    """The command's main package inside that module."""
    version: str
    """The module's version, without the leading ``v``."""
    ldflags: str = "-s -w"

    @property
    def folder(self) -> Path:
        return cache_home() / f"{self.name}-v{self.version}"

    @property
    def binary(self) -> Path:
        return self.folder / "bin" / self.name

    def is_built(self) -> bool:
        return (self.folder / "complete").exists() and self.binary.exists()

    def ensure(self, log: bool = True) -> Path:
        """The cached binary, built first when it is missing."""
        if self.is_built():
            return self.binary
        go = _find_go()
        source = self.folder / "src"
        source.mkdir(parents=True, exist_ok=True)
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if log:
            print(f"building {self.name} v{self.version} from Go modules (once per "
                  "version) ...", file=sys.stderr)
        _write_go_mod(source, self.name, [f"require {self.module} v{self.version}"])
        _run_go(go, ["get", f"{self.package}@v{self.version}"], source,
                f"resolving {self.name} modules")
        _run_go(go, ["build", "-trimpath", "-ldflags", self.ldflags, "-o",
                     str(self.binary), self.package], source, f"building {self.name}")
        (self.folder / "complete").write_text(f"{self.name} v{self.version}\n")
        if log:
            print(f"  {self.name} built in {time.monotonic() - started:.0f}s: {self.binary}",
                  file=sys.stderr)
        return self.binary

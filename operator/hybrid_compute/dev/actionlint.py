"""``actionlint``, the linter of the GitHub Actions workflows in ``.github/workflows``,
built from its Go module and cached like helm, so ``make lint`` runs it on any
machine with Go, CI's included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hybrid_compute.dev.go_tools import GoCommand
from hybrid_compute.dev.toolchain import ToolchainError

ACTIONLINT_VERSION = "1.7.12"
ACTIONLINT_MODULE = "github.com/rhysd/actionlint"

ACTIONLINT = GoCommand(
    "actionlint", ACTIONLINT_MODULE, f"{ACTIONLINT_MODULE}/cmd/actionlint",
    ACTIONLINT_VERSION,
    # As actionlint's release builds set it, so `actionlint -version` names the version.
    f"-s -w -X {ACTIONLINT_MODULE}.version={ACTIONLINT_VERSION}")


def lint_workflows(root: Path) -> int:
    """Runs actionlint on the repository's workflows; its exit status."""
    workflows = sorted((root / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        print(f"no workflows under {root / '.github' / 'workflows'}", file=sys.stderr)
        return 1
    command = [str(ACTIONLINT.ensure()), *(str(path.relative_to(root)) for path in workflows)]
    return subprocess.run(command, cwd=root).returncode


def main() -> int:
    try:
        return lint_workflows(Path.cwd())
    except ToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

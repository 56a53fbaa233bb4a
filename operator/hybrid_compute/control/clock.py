"""The operator's single source of time.

Tests move the operator's clock (to 02:00 in Auckland, past an idle timeout)
without touching the machine's: ``HYBRID_COMPUTE_CLOCK_OFFSET_FILE`` names a file
holding an offset in seconds, read on every call.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

OFFSET_FILE_ENV = "HYBRID_COMPUTE_CLOCK_OFFSET_FILE"


def now() -> datetime.datetime:
    current = datetime.datetime.now(datetime.UTC)
    offset_file = os.environ.get(OFFSET_FILE_ENV)
    if offset_file:
        with contextlib.suppress(OSError, ValueError):
            current += datetime.timedelta(seconds=float(Path(offset_file).read_text().strip()))
    return current

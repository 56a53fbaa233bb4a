"""``python -m hybrid_compute`` is the ``hybrid-compute`` command."""

import sys

from hybrid_compute.cli import main

sys.exit(main())

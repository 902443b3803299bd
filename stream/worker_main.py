"""``python -m stream.worker_main``: the worker without the CLI (containers, tests)."""

from __future__ import annotations

import sys

from stream.worker import main

if __name__ == "__main__":
    sys.exit(main())

"""The fault suite runs the worker as the integration tests do: the same fixtures (unique topics,
worker subprocess, fast policy), plus helpers for producing large messages and running replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import (  # noqa: F401 - fixtures
    COMMAND_KEY,
    REPO,
    Topics,
    fast_policy,
    topics,
    worker,
    worker_env,
)


def replay(log: Path, policy: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """``rollout-gate replay`` in a subprocess, as a user runs it."""
    r = subprocess.run([sys.executable, "-c", "from stream.cli import main; main()", "replay", str(log),
                        "--policy", str(policy), *extra], capture_output=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()
    return r

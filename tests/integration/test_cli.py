from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def test_kafka_status_runs_the_repository_script(kafka_bootstrap: str) -> None:
    port = kafka_bootstrap.split(",")[0].rpartition(":")[2]
    r = subprocess.run([sys.executable, "-c", "from stream.cli import main; main()", "kafka", "status"],
                       env={**os.environ, "KAFKA_PORT": port}, capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "kafka-local: running (pid" in r.stdout and f"127.0.0.1:{port}" in r.stdout

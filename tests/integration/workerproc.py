"""The worker as a subprocess (``python -m stream.worker_main``), for tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """``python -m stream.worker_main`` with the settings in its environment."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, *, cpus: set[int] | None = None) -> None:
        self.env = env
        self.workdir = workdir
        self.name = name
        self.cpus = cpus  # run the worker on these CPUs only (all of its threads), or anywhere
        self.port = int(env["ROLLOUT_GATE_METRICS_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, *, ready_timeout: float = 60.0, ready_poll: float = 0.2) -> Worker:
        self.runs += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"\n===== start #{self.runs} =====\n".encode())
        log.flush()
        cpus = self.cpus
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.worker_main", "--log-level", "info"],
                                     env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)  # fmt: skip
        log.close()
        self.wait_ready(ready_timeout, poll=ready_poll)
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float, *, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(poll)
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        code, body = self.get("/metrics")
        assert code == 200
        return body

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

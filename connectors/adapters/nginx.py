"""nginx: a weighted ``upstream`` block in its own include file, swapped atomically, then reloaded.

nginx weights must be >= 1, so an arm at 0% is kept in the file but marked ``down``: the shape of
the config stays the same at every step, and a halt is one visible word in a diff."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from connectors.adapters import canary_share
from connectors.adapters.kube import Runner, run_command
from gates.decision import Decision


def _server(addr: str, weight: int) -> str:
    return f"    server {addr} down;" if weight == 0 else f"    server {addr} weight={weight};"


def write_atomic(path: Path, text: str) -> None:
    """A reader (nginx -t, a reload) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NginxAdapter:
    def __init__(
        self,
        *,
        rollout_id: str,
        path: str | Path,
        upstream: str,
        baseline: str,
        canary: str,
        reload_command: Sequence[str] | None = ("nginx", "-s", "reload"),
        runner: Runner = run_command,
    ) -> None:
        self.rollout_id = rollout_id
        self.path = Path(path)
        self.upstream, self.baseline, self.canary = upstream, baseline, canary
        self.reload_command = list(reload_command) if reload_command else None
        self._run = runner

    def render(self, decision: Decision) -> str:
        base_w, canary_w = canary_share(decision, 10_000)
        g = math.gcd(base_w, canary_w) or 1
        return (
            f"# managed by rollout-gate: rollout {decision.rollout_id} seq {decision.seq} "
            f"stage {decision.stage} action {decision.action}\n"
            f"upstream {self.upstream} {{\n"
            f"{_server(self.baseline, base_w // g)}\n"
            f"{_server(self.canary, canary_w // g)}\n"
            "}\n"
        )

    def apply(self, decision: Decision) -> None:
        text = self.render(decision)
        if self._body(self._current()) == self._body(text):
            return  # same weights (e.g. a hold): no reload, no dropped keep-alive connections
        write_atomic(self.path, text)
        if self.reload_command:
            self._run(self.reload_command, None)

    def _current(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    @staticmethod
    def _body(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

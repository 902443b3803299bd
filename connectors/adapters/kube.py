"""How adapters reach a cluster: ``kubectl apply -f -`` in production, a recorder in tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, Protocol

Runner = Callable[[Sequence[str], bytes | None], None]


def run_command(argv: Sequence[str], stdin: bytes | None) -> None:
    """Run and raise with the command's stderr on failure (a silent kubectl failure would leave the
    old weight serving while we believe the new one is live)."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")


class KubeClient(Protocol):
    def apply(self, manifest: dict[str, Any]) -> None: ...


class KubectlClient:
    def __init__(
        self,
        *,
        kubectl: str = "kubectl",
        context: str | None = None,
        field_manager: str = "rollout-gate",
        runner: Runner = run_command,
    ) -> None:
        self.argv = [
            kubectl,
            *(["--context", context] if context else []),
            "apply",
            f"--field-manager={field_manager}",
            "-f",
            "-",
        ]
        self._run = runner

    def apply(self, manifest: dict[str, Any]) -> None:
        self._run(self.argv, json.dumps(manifest).encode())  # kubectl reads JSON as well as YAML


class FakeKubeClient:
    """Keeps the last applied object per (kind, namespace, name), like the API server would."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def apply(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace", "default"), meta["name"])
        self.applied.append(manifest)
        self.objects[key] = manifest

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

"""Registers every CLI command on the typer app (imported by stream.cli.main)."""

from __future__ import annotations

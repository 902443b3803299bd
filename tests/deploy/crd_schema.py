"""Validate a manifest the way the API server checks a custom resource: apply the schema's defaults,
check the structural schema (jsonschema), then evaluate every ``x-kubernetes-validations`` CEL rule
(cel-python) against the defaulted object. The schemas are vendored in ``crds/`` with their source."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / name).read_text())
    assert doc["source"].startswith("https://github.com/"), "a vendored file names where it came from"
    return doc  # type: ignore[no-any-return]


def with_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: a missing property with a ``default`` gets it (recursively)."""
    obj = copy.deepcopy(obj)
    _default(schema, obj)
    return obj


def _default(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default(sub, obj[key])
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default(schema["items"], item)


def cel_errors(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        ok = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(obj)})
        if not isinstance(ok, celpy.celtypes.BoolType) or not bool(ok):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                errors += cel_errors(sub, obj[key], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def errors(doc: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Every reason the API server would reject ``manifest`` under ``doc``'s schema (empty: accepted)."""
    schema = doc["openAPIV3Schema"]
    out: list[str] = []
    api_version = f"{doc['group']}/{doc['version']}"
    if manifest.get("apiVersion") != api_version or manifest.get("kind") != doc["kind"]:
        out.append(f"not a {doc['kind']} {api_version}: {manifest.get('apiVersion')} {manifest.get('kind')}")
    obj = with_defaults(schema, manifest)
    validator = jsonschema.Draft7Validator(schema)
    out += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    if not out:  # CEL runs on a structurally valid object, as in the API server
        out += cel_errors(schema, obj)
    return out

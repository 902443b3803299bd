"""Validate a manifest the way the API server checks a custom resource: apply the schema's defaults,
reject fields the schema does not declare (kubectl's default strict field validation), check the
structural schema (jsonschema), then evaluate every ``x-kubernetes-validations`` CEL rule (cel-python)
against the defaulted object.

The CRDs are not kept in this repository: they are the published release manifests, downloaded at
test time from the Go module proxy (`go mod download`) into the Go module cache, outside the tree.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

# Pinned releases. The Go module proxy serves each project's tagged source, CRD manifests included;
# bump a version here (and check the tests still pass) to validate against a newer release.
INFERENCE_EXTENSION = ("sigs.k8s.io/gateway-api-inference-extension", "v1.6.2")
INFERENCE_POOL_CRD = "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.6.3")
HTTPROUTE_CRD = "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"


class Unavailable(Exception):
    """The CRD could not be fetched (no Go toolchain, no network, no such module or file)."""


def module_dir(module: str, version: str) -> Path:
    """The module's source tree in the Go module cache, downloaded first if it is not there."""
    try:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir(),
        )
    except FileNotFoundError as exc:
        raise Unavailable("go is not installed (needed to download the CRDs from the Go module proxy)") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"go mod download {module}@{version} timed out") from exc
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Error" in info or "Dir" not in info:
        reason = info.get("Error") or proc.stderr.strip() or f"exit status {proc.returncode}"
        raise Unavailable(f"go mod download {module}@{version} failed: {reason}")
    return Path(info["Dir"])


def fetch(module: tuple[str, str], path: str, version: str) -> dict[str, Any]:
    """The API ``version`` of the CRD at ``path`` in the pinned ``module`` release, as
    ``{group, kind, version, source, openAPIV3Schema}``."""
    file = module_dir(*module) / path
    if not file.is_file():
        raise Unavailable(f"{module[0]}@{module[1]} has no {path}")
    crd = yaml.safe_load(file.read_text(encoding="utf-8"))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return {
                "group": crd["spec"]["group"],
                "kind": crd["spec"]["names"]["kind"],
                "version": version,
                "source": f"{module[0]}@{module[1]}/{path}",
                "openAPIV3Schema": v["schema"]["openAPIV3Schema"],
            }
    raise Unavailable(f"{module[0]}@{module[1]}/{path} has no version {version}")


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


def unknown_fields(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Fields the schema does not declare: the API server drops them, and rejects the object under
    strict field validation (kubectl's default). ``metadata`` is checked by the server, not the CRD."""
    out: list[str] = []
    if isinstance(obj, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema["properties"]
        for key, value in obj.items():
            if key not in props:
                if "additionalProperties" not in schema:
                    out.append(f"{path}.{key}: unknown field")
            elif key != "metadata" or path:
                out += unknown_fields(props[key], value, f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += unknown_fields(schema["items"], item, f"{path}[{i}]")
    return out


# Kubernetes CEL exposes a property whose name is a CEL keyword, or holds characters an identifier
# cannot, under an escaped name (k8s.io/apiserver/pkg/cel/escaping.go).
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}


def _escape(name: str) -> str:
    if name in _CEL_RESERVED:
        return f"__{name}__"
    out = name.replace("__", "__underscores__")
    for ch, word in ((".", "dot"), ("-", "dash"), ("/", "slash")):
        out = out.replace(ch, f"__{word}__")
    return out if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", out) else name


def _cel_value(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_escape(k): _cel_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cel_value(v) for v in obj]
    return obj


def cel_errors(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: it compares with the stored object; there is none on create
        program = env.program(env.compile(rule["rule"]))
        ok = program.evaluate({"self": celpy.json_to_cel(_cel_value(obj))})
        if not isinstance(ok, celpy.celtypes.BoolType) or not bool(ok):
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
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
    out += unknown_fields(schema, manifest)
    obj = with_defaults(schema, manifest)
    validator = jsonschema.Draft7Validator(schema)
    out += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    if not out:  # CEL runs on a structurally valid object, as in the API server
        out += cel_errors(schema, obj)
    return out

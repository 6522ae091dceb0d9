"""Load the published CRDs' openAPIV3Schema as strict JSON Schemas (see shared/crds/README.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SchemaIndex = dict[tuple[str, str], dict[str, Any]]


def strict(schema: dict[str, Any], root: bool = True) -> dict[str, Any]:
    """Reject unknown fields the way kubectl's strict validation does.

    Adds additionalProperties: false to every object schema with properties, except the root
    (where apiVersion, kind and metadata live); turns int-or-string into oneOf.
    """
    out = copy.deepcopy(schema)

    def visit(node: Any, is_root: bool) -> None:
        if isinstance(node, dict):
            if node.get("format") == "int-or-string":
                node.pop("format")
                node.pop("type", None)
                node["oneOf"] = [{"type": "string"}, {"type": "integer"}]
            if not is_root and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for prop in value.values():
                        visit(prop, False)
                elif key != "enum":
                    visit(value, False)
        elif isinstance(node, list):
            for item in node:
                visit(item, False)

    visit(out, root)
    return out


def load_crd_schemas(crd_dir: Path) -> SchemaIndex:
    """Index (apiVersion, kind) -> strict schema, for v1 and v1beta1 CRDs."""
    index: SchemaIndex = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            shared = spec.get("validation", {}).get("openAPIV3Schema")
            versions = spec.get("versions") or [{"name": spec.get("version")}]
            for version in versions:
                schema = version.get("schema", {}).get("openAPIV3Schema", shared)
                if schema is not None:
                    index[(f"{group}/{version['name']}", kind)] = strict(schema)
    return index

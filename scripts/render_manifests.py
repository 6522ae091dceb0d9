#!/usr/bin/env python3
"""Render the Kubernetes manifests under k8s/templates from the values in k8s/values.yaml.

Every environment-specific value (account, region, role ARNs, bucket, image URIs, instance
types, names) lives in k8s/values.yaml; templates refer to them as ``${name}`` (``$${`` is a
literal ``${``). A value may itself refer to other values. A template line that ends in
``# when: name ...`` is kept (without that comment) only when one of the named values is not
empty, so that optional fields (the async endpoint's SNS topics) are left out rather than sent
empty.

    scripts/render_manifests.py --flavor ack --component serve --out rendered/
    scripts/render_manifests.py --flavor ack --component ic                  # to stdout
    scripts/render_manifests.py --flavor ack --component async \
        --set async_error_topic_arn=arn:aws:sns:us-west-2:111122223333:maskserve-errors
    scripts/render_manifests.py --flavor plain --set region=eu-west-1        # to stdout
    scripts/render_manifests.py --get serving_image_gpu --set region=eu-west-1

Flavors: ``operator`` (SageMaker Operator for Kubernetes, sagemaker.aws.amazon.com/v1),
``ack`` (ACK SageMaker controller, sagemaker.services.k8s.aws/v1alpha1) and ``plain``
(Deployment, Service, HorizontalPodAutoscaler). Components: ``train``, ``serve``, ``batch``,
and three other kinds of endpoint: ``mme`` (a multi-model endpoint; operator and ack), ``ic``
(an endpoint with inference components; ack only) and ``async`` (an asynchronous endpoint for
large images; ack only). Each template names its components in a ``# component:`` header line.
``all``, the default, is train, serve and batch: the one-model path; mme, ic and async are
alternatives to serve and are rendered only when named. The Namespace in templates/common is
rendered with every flavor.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "k8s"
DEFAULT_VALUES = K8S_DIR / "values.yaml"
TEMPLATES_DIR = K8S_DIR / "templates"
FLAVORS = ("operator", "ack", "plain")
COMPONENTS = ("train", "serve", "batch", "mme", "ic", "async")
# What "all" (and no --component) selects: the one-model path. mme, ic and async are other
# endpoints.
DEFAULT_COMPONENTS = ("train", "serve", "batch")
COMMON_COMPONENT = "common"

PLACEHOLDER = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
COMPONENT_HEADER = re.compile(r"^#\s*component:\s*(.+)$", re.MULTILINE)
# A line kept only when one of the named values is not empty: "<line>  # when: a b".
CONDITION = re.compile(r"^(?P<line>.*?)\s*#\s*when:(?P<keys>(?:\s+[A-Za-z_][A-Za-z0-9_]*)+)\s*$")


class RenderError(Exception):
    """A values or template problem that makes rendering impossible."""


@dataclass(frozen=True)
class Rendered:
    """One rendered template: where it came from, its text and its parsed documents."""

    template: Path
    name: str
    text: str
    documents: list[dict[str, Any]]


def _substitute(text: str, values: Mapping[str, str], where: str) -> str:
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        escaped, key = match.group(1), match.group(2)
        if escaped:
            return "${" + key + "}"
        if key not in values:
            missing.append(key)
            return match.group(0)
        return values[key]

    out = PLACEHOLDER.sub(replace, text)
    if missing:
        raise RenderError(f"{where}: unknown value(s) {sorted(set(missing))}")
    return out


def _conditional_lines(text: str, values: Mapping[str, str], where: str) -> str:
    """Drop each ``# when: name ...`` line whose named values are all empty; strip the comment
    from the others."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        match = CONDITION.match(line.rstrip("\r\n"))
        if not match:
            out.append(line)
            continue
        keys = match.group("keys").split()
        unknown = sorted(set(keys) - set(values))
        if unknown:
            raise RenderError(f"{where}: '# when:' names unknown value(s) {unknown}")
        if any(values[key].strip() for key in keys):
            out.append(match.group("line") + "\n")
    return "".join(out)


def _scalar(key: str, value: object, source: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise RenderError(f"{source}: value {key!r} must be a scalar, not {type(value).__name__}")


def load_values(
    files: Iterable[Path] = (), overrides: Iterable[str] = (), base: Path = DEFAULT_VALUES
) -> dict[str, str]:
    """Load base values, then each extra file, then KEY=VALUE overrides, and resolve references.

    Extra files and overrides may only set keys that the base file defines, so a typo fails
    instead of being ignored.
    """
    raw = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise RenderError(f"{base}: expected a mapping")
    values = {str(k): _scalar(str(k), v, str(base)) for k, v in raw.items()}
    for path in files:
        extra = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(extra, dict):
            raise RenderError(f"{path}: expected a mapping")
        for key, value in extra.items():
            if str(key) not in values:
                raise RenderError(f"{path}: unknown value {key!r} (not in {base.name})")
            values[str(key)] = _scalar(str(key), value, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RenderError(f"--set {item!r}: expected KEY=VALUE")
        if key not in values:
            raise RenderError(f"--set {key}: unknown value (not in {base.name})")
        values[key] = value
    return resolve(values)


def resolve(values: Mapping[str, str]) -> dict[str, str]:
    """Replace ``${name}`` references between values; fail on unknown names and cycles."""
    resolved: dict[str, str] = {}

    def visit(key: str, stack: tuple[str, ...]) -> str:
        if key in resolved:
            return resolved[key]
        if key in stack:
            raise RenderError(f"values: circular reference {' -> '.join((*stack, key))}")
        if key not in values:
            raise RenderError(f"values: {stack[-1]!r} refers to unknown value {key!r}")

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return match.group(0)
            return visit(match.group(2), (*stack, key))

        resolved[key] = PLACEHOLDER.sub(replace, values[key])
        return resolved[key]

    for name in values:
        visit(name, ())
    return resolved


def template_components(text: str) -> set[str]:
    """The components a template belongs to, from its ``# component:`` header."""
    match = COMPONENT_HEADER.search(text)
    if not match:
        return set()
    return set(match.group(1).split())


def select_templates(flavor: str, components: Iterable[str]) -> list[Path]:
    """Templates of one flavor (plus common ones) that belong to any of the components."""
    if flavor not in FLAVORS:
        raise RenderError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    wanted = set(components)
    unknown = wanted - set(COMPONENTS)
    if unknown:
        raise RenderError(f"unknown component(s) {sorted(unknown)}; expected {COMPONENTS}")
    chosen: list[Path] = []
    for directory in ("common", flavor):
        for path in sorted((TEMPLATES_DIR / directory).glob("*.yaml")):
            declared = template_components(path.read_text(encoding="utf-8"))
            if not declared:
                raise RenderError(f"{path}: no '# component:' header")
            if COMMON_COMPONENT in declared or declared & wanted:
                chosen.append(path)
    return chosen


def render_template(path: Path, values: Mapping[str, str]) -> Rendered:
    """Substitute values into one template and parse the result."""
    rel = path.relative_to(TEMPLATES_DIR)
    raw = _conditional_lines(path.read_text(encoding="utf-8"), values, str(rel))
    text = _substitute(raw, values, str(rel))
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{rel}: rendered YAML does not parse: {exc}") from exc
    for doc in documents:
        if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind")):
            raise RenderError(f"{rel}: each document needs apiVersion and kind")
        if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
            raise RenderError(f"{rel}: each document needs metadata.name")
    name = f"{rel.parent.name}-{rel.name}" if rel.parent.name == "common" else rel.name
    return Rendered(template=path, name=name, text=text, documents=documents)


def render(
    flavor: str,
    components: Iterable[str] = DEFAULT_COMPONENTS,
    values: Mapping[str, str] | None = None,
) -> list[Rendered]:
    """Render the selected templates of a flavor with the given (or default) values."""
    vals = dict(values) if values is not None else load_values()
    return [render_template(p, vals) for p in select_templates(flavor, components)]


def write_out(rendered: Iterable[Rendered], out_dir: Path) -> list[Path]:
    """Write each rendered template as its own file (in apply order) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for item in rendered:
        target = out_dir / item.name
        header = f"# Rendered from k8s/templates/{item.template.relative_to(TEMPLATES_DIR)}"
        target.write_text(f"{header} by scripts/render_manifests.py\n{item.text}", "utf-8")
        written.append(target)
    return written


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--flavor", choices=FLAVORS, help="which manifests to render")
    parser.add_argument(
        "--component",
        action="append",
        choices=(*COMPONENTS, "all"),
        help=(
            "train, serve, batch, mme, ic, async or all (= train serve batch; repeatable; "
            "default all)"
        ),
    )
    parser.add_argument(
        "--values", action="append", type=Path, default=[], help="extra values file (repeatable)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="write one file per template into this directory")
    parser.add_argument("--get", action="append", metavar="KEY", help="print a resolved value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        values = load_values(args.values, args.overrides)
        if args.get:
            for key in args.get:
                if key not in values:
                    raise RenderError(f"--get {key}: unknown value")
                print(values[key])
            return 0
        if not args.flavor:
            raise RenderError("--flavor is required (operator, ack or plain)")
        components = args.component or ["all"]
        named = [c for c in components if c != "all"]
        selected = (*DEFAULT_COMPONENTS, *named) if "all" in components else tuple(named)
        rendered = render(args.flavor, selected, values)
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"render_manifests: {exc}", file=sys.stderr)
        return 1
    if args.out:
        for path in write_out(rendered, args.out):
            print(path)
    else:
        sys.stdout.write("\n---\n".join(item.text.strip("\n") for item in rendered) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

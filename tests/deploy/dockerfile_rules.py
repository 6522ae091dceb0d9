"""A small Dockerfile parser and the project's Dockerfile rules (hadolint's that matter to us,
plus SageMaker's container contract and this repository's layout)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    line: int
    cmd: str
    args: str


@dataclass
class Stage:
    image: str
    alias: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(text: str) -> Dockerfile:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(p for p in buf if p)
        buf = []
        cmd, _, args = joined.partition(" ")
        instructions.append(Instruction(start, cmd.upper(), args.strip()))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            image = expand(words[0], global_args)
            stages.append(Stage(image, alias, ins.line))
        elif not stages:
            if ins.cmd == "ARG":
                name, _, default = ins.args.partition("=")
                global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value
    )


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words: list[str] = []
    for word in shlex.split(args):
        if word.startswith("--") and not words:
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            words.append(word)
    return flags, words


class DockerIgnore:
    """.dockerignore matching: last matching pattern wins, `!` re-includes, `**` spans dirs."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:].strip() if negate else line
            pattern = pattern.strip("/")
            self.rules.append((negate, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return f"^{out}$"

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(c) for c in candidates):
                result = not negate
        return result


def _copy_sources(repo: Path, ignore: DockerIgnore, ins: Instruction) -> list[str]:
    errors: list[str] = []
    flags, words = _flags_and_words(ins.args)
    if "from" in flags:
        return errors
    sources = words[:-1]
    if not sources:
        return [f"line {ins.line}: {ins.cmd} needs a source and a destination"]
    matched_any = False
    for src in sources:
        is_glob = any(ch in src for ch in "*?[")
        paths = sorted(repo.glob(src)) if is_glob else [repo / src]
        paths = [p for p in paths if p.exists()]
        if not paths and not is_glob:
            errors.append(f"line {ins.line}: {ins.cmd} source {src} does not exist in the repo")
        for p in paths:
            rel = p.relative_to(repo).as_posix()
            if ignore.excluded(rel):
                errors.append(
                    f"line {ins.line}: {ins.cmd} source {rel} is excluded by .dockerignore"
                )
            else:
                matched_any = True
    if not matched_any and not errors:
        errors.append(f"line {ins.line}: {ins.cmd} sources {sources} match nothing")
    return errors


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return False
    tag = name.split(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag


def lint(text: str, repo: Path, ignore: DockerIgnore) -> list[str]:
    """Generic rules for every Dockerfile of the project."""
    df = parse(text)
    errors: list[str] = []
    # A compiler belongs in a build stage, never in the image that ships.
    final_runs = " ".join(i.args for i in df.final.instructions if i.cmd == "RUN")
    if re.search(r"\b(cargo|rustc|gcc|g\+\+|build-essential|make)\b", final_runs):
        errors.append("the final stage builds with a compiler: use a build stage")
    aliases: set[str] = set()
    for stage in df.stages:
        if stage.image not in aliases and not _pinned(stage.image):
            errors.append(f"line {stage.line}: base image {stage.image!r} is not pinned to a tag")
        stage_env = " ".join(i.args for i in stage.instructions if i.cmd == "ENV")
        for ins in stage.instructions:
            if ins.cmd in ("ENTRYPOINT", "CMD") and exec_form(ins.args) is None:
                errors.append(f"line {ins.line}: {ins.cmd} must use the exec (JSON array) form")
            if ins.cmd == "ADD":
                errors.append(f"line {ins.line}: use COPY, not ADD")
            if ins.cmd in ("COPY", "ADD"):
                flags, _ = _flags_and_words(ins.args)
                if "from" in flags and flags["from"] not in aliases:
                    errors.append(
                        f"line {ins.line}: COPY --from={flags['from']} is no earlier stage"
                    )
                errors += _copy_sources(repo, ignore, ins)
            if ins.cmd == "WORKDIR" and not ins.args.startswith("/"):
                errors.append(f"line {ins.line}: WORKDIR {ins.args} is not absolute")
            if ins.cmd == "RUN":
                errors += _run_rules(ins, stage_env)
        if stage.alias:
            aliases.add(stage.alias)
    final_user = [i for i in df.final.instructions if i.cmd == "USER"]
    if final_user and final_user[-1].args.split(":")[0] not in ("root", "0"):
        errors.append("SageMaker runs containers as root: the final stage must not switch USER")
    return errors


def _run_rules(ins: Instruction, stage_env: str) -> list[str]:
    errors: list[str] = []
    run = ins.args
    where = f"line {ins.line}"
    if re.search(r"(^|&&|;|\|\|)\s*cd\s", run):
        errors.append(f"{where}: use WORKDIR instead of `cd`")
    if re.search(r"\bsudo\b", run):
        errors.append(f"{where}: no sudo in a Dockerfile")
    if re.search(r"\bapt\s+(install|update|upgrade)", run):
        errors.append(f"{where}: use apt-get, not apt")
    if re.search(r"\bapt-get\s+(dist-)?upgrade\b", run):
        errors.append(f"{where}: no apt-get upgrade; pin a newer base image instead")
    if re.search(r"\bapt-get\s+update\b", run) and "apt-get install" not in run:
        errors.append(f"{where}: apt-get update must share its RUN with apt-get install")
    if re.search(r"\bapt-get\s+install\b", run):
        if "--no-install-recommends" not in run:
            errors.append(f"{where}: apt-get install without --no-install-recommends")
        if not re.search(r"apt-get\s+install\s+(.*\s)?(-y|--yes|-qy|-yq)\b", run):
            errors.append(f"{where}: apt-get install without -y")
        if "rm -rf /var/lib/apt/lists" not in run:
            errors.append(f"{where}: apt-get install without removing /var/lib/apt/lists")
    pip_install = re.search(r"\bpip3?\s+install\b", run)
    if pip_install and "--no-cache-dir" not in run and "PIP_NO_CACHE_DIR" not in stage_env:
        errors.append(f"{where}: pip install without --no-cache-dir")
    if re.search(r"\b(curl|wget)\b.*\|\s*(ba)?sh\b", run):
        errors.append(f"{where}: do not pipe downloads into a shell")
    return errors


# What the serving images tell SageMaker they can do (docs: sagemaker-contract §1.2, §1.7):
# listen on SAGEMAKER_BIND_TO_PORT, and serve a multi-model endpoint (POST /models, ...).
SERVING_LABELS = {
    "com.amazonaws.sagemaker.capabilities.accept-bind-to-port": "true",
    "com.amazonaws.sagemaker.capabilities.multi-models": "true",
}


def labels(stage: Stage) -> dict[str, str]:
    """The stage's LABEL key=value pairs, quotes removed (a later LABEL wins)."""
    found: dict[str, str] = {}
    for ins in stage.instructions:
        if ins.cmd == "LABEL":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                if sep:
                    found[key] = value
    return found


def serving_label_errors(text: str) -> list[str]:
    """The SageMaker capability labels the image that ships (the final stage) must carry."""
    found = labels(parse(text).final)
    return [
        f"the final stage lacks LABEL {key}={value} (has {found.get(key)!r})"
        for key, value in SERVING_LABELS.items()
        if found.get(key) != value
    ]

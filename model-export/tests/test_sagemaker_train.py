"""The SageMaker training entry point as SageMaker runs it: real processes, real (short) training.

One host, and two "hosts" on this machine (resourceconfig names 127.0.0.1 and 127.0.0.2, both
loopback; hosts[0] is the master address as on SageMaker). The TrainingJob manifests' metric
regexes are applied to the real log, as SageMaker applies them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maskexport import hyperparameters, metrics_log
from maskexport.model import ARCHITECTURES
from maskexport.shapes import write_dataset

EXPORT = Path(__file__).resolve().parents[1]
REPO = EXPORT.parent
HOSTS = ["127.0.0.1", "127.0.0.2"]
TIMEOUT_S = 15  # collective_timeout_s of the failure tests
FAST = {"batch_size": "1", "threads": "1", "samples": "1", "log_every": "1"}


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("channels")
    write_dataset(base / "train", seed=1, count=6)
    write_dataset(base / "val", seed=2, count=3)
    return {"train": base / "train", "val": base / "val"}


@dataclass
class Host:
    root: Path
    proc: subprocess.Popen
    started: float

    @property
    def stdout(self) -> str:
        return (self.root.parent / f"{self.root.name}.stdout").read_text(errors="replace")

    def failure(self) -> str:
        return (self.root / "output/failure").read_text()

    def wait(self, timeout: float) -> float:
        """Seconds until the process ended (fails the test if it outlives ``timeout``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{self.root.name} still running after {timeout:.0f}s (a hang)\n{self.stdout[-3000:]}"
            )
        return time.monotonic() - self.started


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc); torchrun puts workers in sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _signal_tree(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(p)
    return alive


@pytest.fixture()
def launch(tmp_path: Path, channels: dict[str, Path]) -> Iterator[Any]:
    """launch(name, hyperparameters, hosts=None, current=None) -> Host, started in a new session."""
    started: list[Host] = []
    port = _free_port()

    def start(
        name: str, hyper: dict[str, str], hosts: list[str] | None = None, current: str | None = None
    ) -> Host:
        root = tmp_path / name
        config = root / "input/config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyper))
        if hosts is not None:
            resource = {"current_host": current, "hosts": hosts, "network_interface_name": "lo"}
            (config / "resourceconfig.json").write_text(json.dumps(resource))
        for channel, src in channels.items():
            (root / "input/data").mkdir(parents=True, exist_ok=True)
            (root / "input/data" / channel).symlink_to(src)
        env = dict(os.environ, MASKSERVE_OPT_ML=str(root), MASKSERVE_MASTER_PORT=str(port))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXPORT), env.get("PYTHONPATH")]))
        out = (tmp_path / f"{name}.stdout").open("w")
        err = (tmp_path / f"{name}.stderr").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "maskexport.sagemaker_train"],
            cwd=EXPORT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        host = Host(root, proc, time.monotonic())
        started.append(host)
        return host

    yield start
    for host in started:
        pids = _tree(host.proc.pid)
        _signal_tree(pids, signal.SIGKILL)
        host.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest_metric_definitions() -> dict[str, list[dict[str, str]]]:
    """metricDefinitions of both rendered TrainingJob manifests (scripts/render_manifests.py)."""
    rm = sys.modules.get("render_manifests")
    if rm is None:
        spec = importlib.util.spec_from_file_location(
            "render_manifests", REPO / "scripts/render_manifests.py"
        )
        assert spec and spec.loader
        rm = importlib.util.module_from_spec(spec)
        sys.modules["render_manifests"] = rm  # its dataclasses look their module up
        spec.loader.exec_module(rm)
    out = {}
    for flavor in ("operator", "ack"):
        docs = [d for item in rm.render(flavor, ["train"]) for d in item.documents]
        job = next(d for d in docs if d["kind"] == "TrainingJob")
        out[flavor] = job["spec"]["algorithmSpecification"]["metricDefinitions"]
    return out


def _scrape(log: str, definitions: list[dict[str, str]]) -> dict[str, list[float]]:
    """What SageMaker charts: each regex over each line, the first group as the value."""
    return {
        d["name"]: [float(m.group(1)) for line in log.splitlines() if (m := re.search(d["regex"], line))]
        for d in definitions
    }


def test_single_host_log_gives_every_manifest_metric(launch: Any) -> None:
    host = launch("algo-1", {**FAST, "iterations": "6", "batch_size": "2", "log_every": "2", "lr": "0.01"})
    assert host.proc.wait(timeout=240) == 0, (host.root / "output/failure").read_text()
    log = host.stdout
    metrics = json.loads((host.root / "output/data/metrics.json").read_text())
    assert (host.root / "model/model.json").exists()
    definitions = _manifest_metric_definitions()
    assert definitions["operator"] == definitions["ack"] == metrics_log.metric_definitions()
    got = _scrape(log, definitions["ack"])
    # Lines at iterations 1, 2, 4, 6.
    assert len(got["train:loss"]) == 4 and all(0 < v < 50 for v in got["train:loss"]), got
    assert len(got["train:lr"]) == 4 and all(0 < v <= 0.01 for v in got["train:lr"]), got
    assert len(got["train:images_per_second"]) == 4, got
    assert all(0.01 < v < 1000 for v in got["train:images_per_second"]), got
    for key in metrics_log.VAL_KEYS:
        assert got[f"val:{key}"] == [pytest.approx(metrics[key], abs=5e-5)], (key, got, metrics)
        assert -1 <= metrics[key] <= 1


def test_two_hosts_train_together_and_only_the_first_writes_the_model(launch: Any) -> None:
    hyper = {**FAST, "iterations": "4", "collective_timeout_s": "120"}
    first = launch("host-1", hyper, HOSTS, HOSTS[0])
    second = launch("host-2", hyper, HOSTS, HOSTS[1])
    assert second.proc.wait(timeout=240) == 0, second.failure()
    assert first.proc.wait(timeout=240) == 0, first.failure()
    assert (first.root / "model/model.json").exists()
    assert not (second.root / "model").exists() or not any((second.root / "model").iterdir())
    assert not (second.root / "output/failure").exists()
    assert not (second.root / "output/data/metrics.json").exists()
    metrics = json.loads((first.root / "output/data/metrics.json").read_text())
    got = _scrape(first.stdout, metrics_log.metric_definitions())
    assert len(got["train:loss"]) == 4 and len(got["train:images_per_second"]) == 4
    for key in metrics_log.VAL_KEYS:
        assert got[f"val:{key}"] == [pytest.approx(metrics[key], abs=5e-5)]
    assert "[train] it=4/4 " in first.stdout
    assert "[train]" not in second.stdout  # rank 0 alone logs


def _start_long_pair(launch: Any) -> tuple[Host, Host]:
    hyper = {**FAST, "iterations": "100000", "collective_timeout_s": str(TIMEOUT_S)}
    first = launch("host-1", hyper, HOSTS, HOSTS[0])
    second = launch("host-2", hyper, HOSTS, HOSTS[1])
    deadline = time.monotonic() + 180
    while "[train] it=3/" not in first.stdout:
        assert first.proc.poll() is None and second.proc.poll() is None, first.stdout + second.stdout
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    return first, second


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")
def test_killing_the_master_host_fails_the_other_promptly(launch: Any) -> None:
    first, second = _start_long_pair(launch)
    victim = _tree(first.proc.pid)
    os.killpg(first.proc.pid, signal.SIGKILL)  # the host's process group: parent and torchrun agent
    t0 = time.monotonic()
    second.wait(TIMEOUT_S + 60)
    took = time.monotonic() - t0
    print(f"\nsurvivor failed {took:.1f}s after the master host was killed")
    assert took < TIMEOUT_S + 20
    assert second.proc.returncode != 0
    failure = second.failure()
    head = failure.splitlines()[0]
    assert f"distributed training failed on host {HOSTS[1]} (node 1 of 2" in head, failure
    assert "rank 1 of 2" in failure and "lost contact with a peer" in failure, failure
    # The killed host's worker (in a session of its own) died with its agent, not trained on.
    time.sleep(2)
    assert not _alive(victim), "worker outlived its killed agent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")
def test_a_frozen_host_fails_the_other_within_the_timeout(launch: Any) -> None:
    """A host that stops answering (as when its network is cut): no socket closes, the timeout acts."""
    first, second = _start_long_pair(launch)
    frozen = _tree(second.proc.pid)
    _signal_tree(frozen, signal.SIGSTOP)
    t0 = time.monotonic()
    first.wait(TIMEOUT_S + 60)
    took = time.monotonic() - t0
    print(f"\nmaster failed {took:.1f}s after the other host froze (collective_timeout_s={TIMEOUT_S})")
    _signal_tree(frozen, signal.SIGKILL)
    assert TIMEOUT_S * 0.5 < took < TIMEOUT_S + 20
    assert first.proc.returncode != 0
    failure = first.failure()
    assert f"distributed training failed on host {HOSTS[0]} (node 0 of 2" in failure.splitlines()[0]
    assert f"rank 0 of 2 on host {socket.gethostname()} failed" in failure, failure
    assert f"timed out after collective_timeout_s={TIMEOUT_S}" in failure, failure
    assert not (first.root / "model").exists()


@pytest.mark.parametrize(
    ("hyper", "key"),
    [
        ({"iterations": "-5"}, "iterations"),
        ({"lr": "fast"}, "lr"),
        ({"epochs": "1"}, "epochs"),
        ({"collective_timeout_s": "0"}, "collective_timeout_s"),
    ],
)
def test_a_bad_hyperparameter_fails_every_host_at_once(launch: Any, hyper: dict[str, str], key: str) -> None:
    # As the second host: each host reports its own failure, not only hosts[0].
    host = launch("host-2", hyper, HOSTS, HOSTS[1])
    took = host.wait(60)
    assert host.proc.returncode != 0
    head = host.failure().splitlines()[0]
    assert head.startswith("HyperparameterError: ") and repr(key) in head, head
    assert took < 15, took
    assert not (host.root / "output/data").exists(), "work started before the check"


def test_hyperparameters_parse_strings_and_name_the_bad_key() -> None:
    p = hyperparameters.parse_hyperparameters(
        {"iterations": "10", "batch-size": "2", "lr": "1e-3", "collective_timeout_s": "30", "name": "m.v1"}
    )
    assert (p["iterations"], p["batch_size"], p["lr"], p["collective_timeout_s"]) == (10, 2, 1e-3, 30.0)
    assert p["arch"] == "tiny-fpn" and p["name"] == "m.v1"
    assert hyperparameters.parse_hyperparameters({"_tuning_objective_metric": "val:segm_AP"})
    bad = {
        "iterations": "2.5",
        "batch_size": "0",
        "lr": "nan",
        "seed": "-1",
        "threads": "x",
        "arch": "resnet18",
        "name": "../m",
        "log_every": "0",
        "collective_timeout_s": "inf",
    }
    for key, value in bad.items():
        with pytest.raises(hyperparameters.HyperparameterError, match=re.escape(repr(key))):
            hyperparameters.parse_hyperparameters({key: value})
    with pytest.raises(hyperparameters.HyperparameterError, match="given twice"):
        hyperparameters.parse_hyperparameters({"batch_size": "1", "batch-size": "2"})
    assert hyperparameters.ARCHITECTURES == ARCHITECTURES
    assert math.isfinite(hyperparameters.DEFAULTS["collective_timeout_s"])

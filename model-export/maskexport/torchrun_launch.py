"""Launch maskexport.train on every host of a SageMaker training job with torchrun, bounded in time.

Each host runs one torchrun agent (``--nnodes`` = hosts, ``--node_rank`` = this host's index, one
worker per GPU, or one on CPU) with the static rendezvous at ``hosts[0]``. Nothing waits for ever:

- rendezvous: ``--rdzv_conf timeout=T``; the agent on hosts[0] hosts the TCPStore and waits at
  most T for the other agents to join; the others wait at most T to reach it;
- the workers' process group: ``init_process_group(timeout=T)`` bounds joining and every gloo
  collective (NCCL: its watchdog tears the process down, TORCH_NCCL_ASYNC_ERROR_HANDLING);
- ``--max_restarts 0``: one failed worker fails this host's agent at once (it polls every 0.1 s)
  and it stops the rest of its workers.

A peer that dies closes its sockets, so the others fail at their next collective; a peer that is
cut off (or hangs) makes them fail after T. The one exception is torchrun's exit barrier on
success (300 s, not configurable), which only delays a host whose work is done.

Each worker writes ``rank<N>.txt`` to a failure directory when it fails; this module turns those,
and the tail of torchrun's stderr, into one message naming the host, the ranks and the cause.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Tests put several "hosts" on one machine and choose a free port; SageMaker hosts use the default.
MASTER_PORT_ENV = "MASKSERVE_MASTER_PORT"
DEFAULT_MASTER_PORT = 29500
STDERR_TAIL_LINES = 40
# The last line of a Python traceback, e.g. "torch.distributed.DistStoreError: Timed out after ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\w*: ")


class DistributedTrainingError(RuntimeError):
    """torchrun on this host ended with a non-zero status; the message says where and why."""


@dataclass(frozen=True)
class Cluster:
    """This host's place in the job (from resourceconfig.json)."""

    hosts: tuple[str, ...]
    current: str
    procs_per_host: int
    network_interface: str | None = None

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current)

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.procs_per_host

    def master_port(self) -> int:
        return int(os.environ.get(MASTER_PORT_ENV, DEFAULT_MASTER_PORT))

    def describe(self) -> str:
        return (
            f"host {self.current} (node {self.node_rank} of {len(self.hosts)}, "
            f"master {self.hosts[0]}:{self.master_port()})"
        )


def torchrun_command(cluster: Cluster, timeout_s: float, train_args: Sequence[str]) -> list[str]:
    """The torchrun command line for this host; ``train_args`` go to ``maskexport.train``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(cluster.hosts)}",
        f"--node_rank={cluster.node_rank}",
        f"--nproc_per_node={cluster.procs_per_host}",
        f"--master_addr={cluster.hosts[0]}",
        f"--master_port={cluster.master_port()}",
        f"--rdzv_conf=timeout={max(1, math.ceil(timeout_s))}",
        "--max_restarts=0",
        "-m",
        "maskexport.train",
        *train_args,
        f"--collective-timeout-s={timeout_s:g}",
    ]


def torchrun_env(cluster: Cluster) -> dict[str, str]:
    env = dict(os.environ)
    if cluster.network_interface:
        # SageMaker names the interface the hosts reach each other on; gloo and NCCL otherwise
        # pick one from the host name, which need not be it.
        env.setdefault("GLOO_SOCKET_IFNAME", cluster.network_interface)
        env.setdefault("NCCL_SOCKET_IFNAME", cluster.network_interface)
    # A timed-out NCCL collective takes the process down rather than blocking (torch's default).
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    return env


def _tee(stream: IO[str], tail: deque[str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))


def run_torchrun(cmd: list[str], env: dict[str, str], cluster: Cluster, failure_dir: Path) -> None:
    """Run torchrun (its stdout, the training log, passes straight through); raise on failure."""
    for stale in failure_dir.glob("rank*.txt"):
        stale.unlink()
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    reader = threading.Thread(target=_tee, args=(proc.stderr, tail), daemon=True)
    reader.start()
    try:
        rc = proc.wait()
    except BaseException:
        # Stopped (SIGTERM reached only us, PID 1): torchrun stops its workers on SIGTERM.
        proc.terminate()
        proc.wait(timeout=60)
        raise
    # A worker that outlived its agent could hold the pipe open; do not wait on it for long.
    reader.join(timeout=5)
    if rc != 0:
        raise DistributedTrainingError(
            failure_message(cluster, rc, time.monotonic() - start, failure_dir, tail)
        )


def failure_message(
    cluster: Cluster, rc: int, elapsed_s: float, failure_dir: Path, stderr_tail: Sequence[str]
) -> str:
    status = f"signal {-rc}" if rc < 0 else f"status {rc}"
    ended = f"torchrun exited with {status} after {elapsed_s:.0f}s"
    lines = [f"distributed training failed on {cluster.describe()}: {ended}"]
    reports = sorted(failure_dir.glob("rank*.txt"), key=lambda p: (len(p.name), p.name))
    if reports:
        lines += [(p.read_text().splitlines() or [f"{p.name} is empty"])[0] for p in reports]
    else:
        causes = [t for t in stderr_tail if EXCEPTION_LINE.match(t) and "ChildFailedError" not in t]
        lines.append(
            "no worker on this host reported an error: a worker was killed, or torchrun itself "
            f"failed (rendezvous: a peer that never joined?): {causes[-1] if causes else 'see below'}"
        )
    lines += ["", f"--- torchrun stderr, last {len(stderr_tail)} lines ---", *stderr_tail]
    return "\n".join(lines)


class ModelWritten:
    """After training, hosts other than hosts[0] wait until hosts[0] has written /opt/ml/model.

    torchrun ends on every host when the workers end, but hosts[0] exports the model after that;
    a host that exited first would end the job early (SageMaker local mode stops the others when
    one container exits). A small TCP store on hosts[0], one port above torchrun's, carries the
    signal; hosts[0] failing or vanishing fails the waiting hosts instead of hanging them.
    """

    def __init__(self, cluster: Cluster, timeout_s: float) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        self.cluster = cluster
        self.store = dist.TCPStore(
            cluster.hosts[0],
            cluster.master_port() + 1,
            cluster.world_size,
            is_master=cluster.node_rank == 0,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )

    def wait(self) -> None:
        """On hosts other than hosts[0]: block until the model is written (or raise)."""
        try:
            self.store.wait(["model_written"])
        except Exception as e:  # noqa: BLE001 - reworded with where and why
            raise DistributedTrainingError(
                f"{self.cluster.describe()}: hosts[0] did not report the model written: {e}"
            ) from e
        self.store.add("acknowledged", 1)

    def announce(self, ack_timeout_s: float = 60) -> None:
        """On hosts[0]: tell the others, and stay until they have heard it (or give up)."""
        self.store.set("model_written", "1")
        others = self.cluster.world_size - 1
        deadline = time.monotonic() + ack_timeout_s
        while self.store.add("acknowledged", 0) < others and time.monotonic() < deadline:
            time.sleep(0.2)

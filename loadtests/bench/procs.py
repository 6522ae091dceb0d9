"""Server processes: start, wait until ready (/ping, or a server's own test), CPU time and peak RSS
of a process tree, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's workers; TorchServe's java and python workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def children(pid: int) -> list[int]:
    """Children of every thread of `pid` (java starts its workers from other threads than its main one)."""
    kids: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in f.read_text().split()]
        except OSError:
            continue
    return kids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree so far, with those of descendants that have
    exited and been waited for (TorchServe's java runs a metrics collector every minute)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])
    return total / TICKS


def peak_rss_mib(pid: int) -> float:
    """Sum over the tree of each process's peak RSS (VmHWM), MiB."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=30) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    # Where the inference requests go (maskserve and the reference: SageMaker's /invocations).
    invoke_path: str = "/invocations"
    # Ready when this returns True (default: GET /ping is 200).
    ready: Callable[[], bool] | None = None
    # Started in its own process group, stopped by signalling the group (TorchServe: its launcher
    # does not pass SIGTERM on to java, whose python workers would otherwise be left running).
    group: bool = False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            if self.ready() if self.ready else ping(self.url):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def stop(self) -> None:
        if self.group:
            stop_group(self.proc)
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies, which only wait for a reaper, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the process group led by `proc`, SIGKILL to what is left after `timeout`."""
    pgid = proc.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (_group_alive(pgid) or proc.poll() is None):
        time.sleep(0.2)
        proc.poll()
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def start(
    name: str,
    cmd: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    group: bool = False,
) -> Server:
    full_env = {**os.environ, **(env or {})}
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=group)
    return Server(name, proc, f"http://127.0.0.1:{port}", group=group)

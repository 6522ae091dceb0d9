"""SageMaker's multi-model container API on the release binary over real HTTP, with two
different model directories: the bundled fixture and a second export (random weights, other
classes) made here by maskexport."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from release_binary import binary, free_port

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "models/shapes"
SAMPLE = (FIXTURE / "samples/00000.png").read_bytes()
FIXTURE_CLASSES = {"circle", "square", "triangle"}
OTHER_CLASSES = {f"class{i}" for i in range(1, 6)}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Server:
    def __init__(self, *args: str, multi_model: bool = True) -> None:
        self.port = free_port()
        mode = "true" if multi_model else "false"
        env = {**os.environ, "SAGEMAKER_MULTI_MODEL": mode, "MASKSERVE_LOG": "warn"}
        self.proc = subprocess.Popen(
            [str(binary()), "serve", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.request("GET", "/ping").status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        raise RuntimeError(f"the server did not answer /ping: {err.decode()[-2000:]}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def load(self, name: str, url: Path | str) -> Reply:
        body = json.dumps({"model_name": name, "url": str(url)}).encode()
        return self.request(
            "POST", "/models", body, {"Content-Type": "application/json"}
        )

    def invoke(self, name: str, attributes: str = "") -> Reply:
        headers = {"Content-Type": "image/png"}
        if attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        return self.request("POST", f"/models/{name}/invoke", SAMPLE, headers)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err.decode(errors="replace")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other") / "model"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maskexport.export",
            "--random",
            "tiny-fpn",
            "--num-classes",
            "6",
        ]
        + ["--name", "other", "--no-single", "--out", str(out)],
        cwd=REPO / "model-export",
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    err = s.stop()
    assert s.proc.returncode == 0, err[-3000:]
    assert "panicked" not in err, err[-3000:]


def _classes(reply: Reply) -> set[str]:
    assert reply.status == 200, reply.body[:500]
    return {d["class_name"] for d in reply.json()["detections"]}


def test_two_models_each_answer_with_their_own_classes(
    server: Server, other_model: Path
) -> None:
    assert server.request("GET", "/models").json() == {"models": []}
    loaded = server.load("fixture", FIXTURE)
    assert loaded.status == 200, loaded.body
    memory = loaded.json()["memory"]
    # On CPU, ONNX Runtime's arenas (read from its allocators) are part of the resident set.
    assert 0 < memory["arenaBytes"] <= memory["hostBytes"]
    assert "gpuBytes" not in memory
    assert server.load("other", other_model).status == 200
    # Every class of a random 6-class model scores about 1/6: a threshold of 0 keeps them.
    everything = "score_threshold=0,max_detections=50"
    fixture = _classes(server.invoke("fixture", everything))
    other = _classes(server.invoke("other", everything))
    assert fixture and fixture <= FIXTURE_CLASSES
    assert other and other <= OTHER_CLASSES
    # /invocations with the target-model header reaches the same model, byte for byte.
    via_header = server.request(
        "POST",
        "/invocations",
        SAMPLE,
        {"Content-Type": "image/png", "X-Amzn-SageMaker-Target-Model": "other"},
    )
    assert via_header.status == 200
    assert via_header.body == server.invoke("other").body
    # Every request format of /invocations works on /models/{name}/invoke.
    b64 = base64.b64encode(SAMPLE).decode()
    tfs = server.request(
        "POST",
        "/models/fixture/invoke",
        json.dumps({"instances": [{"b64": b64}, {"b64": b64}]}).encode(),
        {"Content-Type": "application/json"},
    )
    assert tfs.status == 200 and len(tfs.json()["predictions"]) == 2
    lines = server.request(
        "POST",
        "/models/fixture/invoke",
        (json.dumps({"b64": b64}) + "\n").encode() * 2,
        {"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"},
    )
    assert lines.status == 200 and len(lines.body.strip().splitlines()) == 2
    # The custom-attributes reply says what was applied and what was not.
    r = server.invoke("fixture", "Trace ID: 1, score_threshold=0.9, max_dets=lots")
    assert r.headers["x-amzn-sagemaker-custom-attributes"] == (
        "score_threshold=0.9,invalid=max_detections"
    )
    assert all(d["score"] >= 0.9 for d in r.json()["detections"])
    assert "x-amzn-sagemaker-custom-attributes" not in server.invoke("fixture").headers
    metrics = server.request("GET", "/metrics").body.decode()
    for name in ("fixture", "other"):
        assert (
            f'maskserve_model_memory_bytes{{memory="host",model="{name}"}}' in metrics
        )
        assert f'maskserve_batch_size_count{{model="{name}"}}' in metrics
    assert metrics.count("# TYPE maskserve_batch_size histogram") == 1


def test_paging_conflicts_and_errors(server: Server, other_model: Path) -> None:
    for name in ("c", "a", "b"):
        assert server.load(name, FIXTURE).status == 200
    dup = server.load("a", other_model)
    assert dup.status == 409 and "already loaded" in dup.json()["error"]
    first = server.request("GET", "/models?limit=2").json()
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    assert all(m["modelUrl"] == str(FIXTURE) for m in first["models"])
    token = first["nextPageToken"]
    second = server.request("GET", f"/models?limit=2&next_page_token={token}").json()
    assert [m["modelName"] for m in second["models"]] == ["c"]
    assert "nextPageToken" not in second
    described = server.request("GET", "/models/b").json()
    assert described["modelName"] == "b" and described["modelUrl"] == str(FIXTURE)
    bad = {
        ("POST", "/models", b"not json"): 400,
        ("POST", "/models", b'{"model_name": "x"}'): 400,
        ("POST", "/models", b'{"model_name": "", "url": "/tmp"}'): 400,
        ("POST", "/models", b'{"model_name": "x", "url": "/no/such/dir"}'): 400,
        (
            "POST",
            "/models",
            json.dumps({"model_name": "x", "url": str(REPO)}).encode(),
        ): 400,
        ("GET", "/models?limit=0", None): 400,
        ("GET", "/models?next_page_token=zz", None): 400,
        ("GET", "/models/nope", None): 404,
        ("DELETE", "/models/nope", None): 404,
        ("POST", "/models/nope/invoke", SAMPLE): 404,
        ("POST", "/invocations", SAMPLE): 400,
        ("PUT", "/models/a", None): 405,
    }
    for (method, path, body), status in bad.items():
        r = server.request(method, path, body, {"Content-Type": "application/json"})
        assert r.status == status, (method, path, r.status, r.body)
        assert r.json()["error"], (method, path)
    # A model directory that is no model leaves the name free.
    assert server.request("GET", "/models/x").status == 404
    # Invoke keeps /invocations' errors and limits; unknown SageMaker headers are ignored.
    garbage = server.request(
        "POST",
        "/models/a/invoke",
        b"\x89PNG not really",
        {"Content-Type": "image/png", "X-Amzn-SageMaker-Something-New": "1"},
    )
    assert garbage.status == 400
    unsupported = server.request(
        "POST", "/models/a/invoke", b"x", {"Content-Type": "text/csv"}
    )
    assert unsupported.status == 415
    target = {"Content-Type": "image/png", "X-Amzn-SageMaker-Target-Model": "nope"}
    assert server.request("POST", "/invocations", SAMPLE, target).status == 404
    assert server.invoke("a").status == 200


def test_unload_under_load_frees_memory_and_reloads(
    server: Server, other_model: Path
) -> None:
    assert server.load("steady", FIXTURE).status == 200
    assert server.load("other", other_model).status == 200
    stop = threading.Event()
    outcomes: dict[str, list[int]] = {"steady": [], "other": []}

    def hammer(name: str) -> None:
        while not stop.is_set():
            r = server.invoke(name)
            if r.status != 200:
                assert r.json()["error"]
            outcomes[name].append(r.status)

    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(hammer, n) for n in ("steady", "other", "other", "steady")
        ]
        time.sleep(1.0)
        unloaded = server.request("DELETE", "/models/other")
        time.sleep(0.5)
        stop.set()
        for f in futures:
            f.result()
    assert unloaded.status == 200, unloaded.body
    assert unloaded.json()["status"] == "unloaded"
    # The other model kept serving; the unloaded one answered 200 before, then 503 (being
    # unloaded) or 404 (gone) — never a dropped connection or a 500.
    assert set(outcomes["steady"]) == {200}
    assert 200 in outcomes["other"]
    assert set(outcomes["other"]) <= {200, 503, 404}
    assert outcomes["other"][-1] == 404
    assert server.request("GET", "/models/other").status == 404
    loaded = server.load("other", other_model)
    assert loaded.status == 200
    assert _classes(server.invoke("other", "score_threshold=0")) <= OTHER_CLASSES
    # Quiet, the unload's effect on the resident set is visible: most of what the model
    # took is handed back before DELETE answers.
    held = loaded.json()["memory"]["hostBytes"]
    before = server.rss()
    freed = server.request("DELETE", "/models/other").json()["freedHostBytes"]
    after = server.rss()
    assert before - after >= held // 2, (before, after, held, freed)
    assert freed >= held // 2


def test_loading_does_not_stall_other_models(server: Server, other_model: Path) -> None:
    assert server.load("steady", FIXTURE).status == 200
    finished: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            assert server.invoke("steady").status == 200
            finished.append(time.monotonic())

    with ThreadPoolExecutor(8) as pool:
        f = pool.submit(hammer)
        time.sleep(0.5)
        t0 = time.monotonic()
        # Two new models and a duplicate at once: loads queue behind each other, the
        # duplicate is refused, and the steady model answers meanwhile.
        loads = [pool.submit(server.load, n, other_model) for n in ("n1", "n2", "n1")]
        statuses = sorted(x.result().status for x in loads)
        t1 = time.monotonic()
        stop.set()
        f.result()
    assert statuses == [200, 200, 409], statuses
    assert sum(t0 <= t <= t1 for t in finished) >= 1, (t1 - t0, len(finished))
    names = [m["modelName"] for m in server.request("GET", "/models").json()["models"]]
    assert names == ["n1", "n2", "steady"]


def test_memory_budget_answers_507(other_model: Path) -> None:
    # A budget below the fixture's graph files: refused before anything is loaded.
    tiny = Server("--models-memory-mb", "4")
    try:
        r = tiny.load("fixture", FIXTURE)
        assert r.status == 507, r.body
        assert "not enough host memory" in r.json()["error"]
        assert tiny.request("GET", "/models").json() == {"models": []}
    finally:
        tiny.stop()
    # Measure what one model takes, then give a server room for one and a half.
    probe = Server()
    try:
        held = probe.load("m", FIXTURE).json()["memory"]["hostBytes"]
    finally:
        probe.stop()
    budget_mb = str(int(held * 1.5) >> 20)
    s = Server("--models-memory-mb", budget_mb)
    try:
        assert s.load("first", FIXTURE).status == 200
        second = s.load("second", FIXTURE)
        assert second.status == 507, second.body
        assert s.request("GET", "/models/second").status == 404
        assert s.invoke("first").status == 200
        # SageMaker's answer to 507: unload one, load again.
        assert s.request("DELETE", "/models/first").status == 200
        assert s.load("second", FIXTURE).status == 200
        assert s.invoke("second").status == 200
    finally:
        s.stop()


def test_single_model_mode_has_no_model_api() -> None:
    s = Server("--model", str(FIXTURE), multi_model=False)
    try:
        r = s.request("GET", "/models")
        assert r.status == 404
        assert "SAGEMAKER_MULTI_MODEL" in r.json()["error"]
    finally:
        s.stop()

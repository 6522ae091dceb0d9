"""The images driven by the real SageMaker Python SDK v2 in local mode, as SageMaker users test
their containers: `Model(...).deploy(instance_type="local")` + `predict`, and
`Estimator(instance_type="local", instance_count=1 or 2).fit(...)`, with no AWS account.

What local mode does (sagemaker 2.257.7, sagemaker/local/image.py, as read and as observed here):

- Every job or endpoint gets a fresh directory (``tempfile.mkdtemp`` under the session config's
  ``local.container_root``; here under pytest's tmp_path) holding a ``docker-compose.yaml``
  (compose file version 2.3), run with ``docker compose`` (v2) when ``docker compose version``
  says v2, else the ``docker-compose`` v1 CLI, as ``up --build --abort-on-container-exit``.
  There is one service per host, named ``algo-<i>-<5 random chars>``, each with
  ``container_name: <10 random chars>-<host>``, ``tty`` and ``stdin_open``, on the external-named
  network ``sagemaker-local`` with its host name as alias; the command is ``train`` or ``serve``.
  The environment carries the boto session's credentials (AWS_ACCESS_KEY_ID/SECRET), and for
  training AWS_REGION, TRAINING_JOB_NAME and AWS_ENDPOINT_URL_S3.
- Training: per host, ``<root>/<host>/input`` -> /opt/ml/input (config/hyperparameters.json,
  resourceconfig.json with ``current_host``/``hosts``/``network_interface_name: eth0``,
  inputdataconfig.json), ``<root>/<host>/output`` -> /opt/ml/output,
  ``<root>/<host>/output/data`` -> /opt/ml/output/data, one ``<root>/model`` shared by all hosts
  -> /opt/ml/model, and each ``file://`` channel's directory bind-mounted directly (read-write)
  at /opt/ml/input/data/<channel>. Compose's output is streamed to ``sys.stdout``.
  ``--abort-on-container-exit`` stops all hosts as soon as the first one exits (SIGTERM, SIGKILL
  10 s later), so with instance_count=2 a host that finishes early cuts the others short.
  Afterwards every host's /opt/ml/model and /opt/ml/output are copied with ``shutil.copytree``
  (following symlinks: a symlink to a container path makes ``fit`` raise ``shutil.Error``) and
  merged into ``model.tar.gz`` and
  ``output.tar.gz``, which for a ``file://`` output_path are copied straight into that directory
  (no job-name sub-directory: a second fit to the same output_path overwrites the first), also
  when the job failed. A failed job raises ``RuntimeError("Failed to run: [compose command].
  Process exited with code: N")``; the container's reason (/opt/ml/output/failure) is only in
  the streamed log and in output.tar.gz. ``fit`` has no timeout of its own.
- Serving: a ``file://`` model_data is a directory or a file; every tar file in it (or the
  model.tar.gz itself) is extracted *in place, next to it on the host*, and that directory is
  bind-mounted read-write at /opt/ml/model. The one service publishes ``<local.serving_port
  (default 8080)>:8080`` on all interfaces; ``deploy`` polls GET /ping every 5 s and gives up
  after about 2 minutes, then (with ``wait=True``) sleeps the SDK's 30 s endpoint poll before
  its first DescribeEndpoint, hence ``wait=False`` here; ``predict`` POSTs to
  ``http://localhost:<port>/invocations``.
  ``delete_endpoint`` sends SIGTERM to the compose process, which stops the container but does
  not remove it (these tests remove what is left).

Each test picks a free host port through ``local.serving_port`` instead of 8080 (shared
machines), opts out of the SDK's telemetry (which otherwise calls STS and GETs an S3 URL), and
fails if the SDK sends any AWS API request at all.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from containers import MODEL_DIR, REPO_ROOT, ImageBuilder, docker

sagemaker = pytest.importorskip(
    "sagemaker", reason="pip install -r tests/containers/requirements.txt"
)
import boto3
from sagemaker.deserializers import JSONDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.local.image import _SageMakerContainer
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import IdentitySerializer, JSONSerializer

ROLE = "arn:aws:iam::111111111111:role/local"
REGION = "us-east-1"
SHAPES = ("circle", "square", "triangle")
# Tiny training runs: 8 images, 10 iterations of 2 images, 2 sample images in the export.
HYPERPARAMETERS = {"iterations": 10, "batch_size": 2, "samples": 2, "log_every": 5}
FIT_TIMEOUT_S = 420
T = TypeVar("T")


# --- the environment -------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_aws_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy credentials and region; no AWS config, profile or SDK config file is read."""
    home = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_ACCESS_KEY_ID", "dummy")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(home / "admin.yaml"))
        mp.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(home / "user.yaml"))
        yield


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The compose command local mode will use (its own detection), or skip."""
    try:
        return _SageMakerContainer._get_compose_cmd_prefix()
    except ImportError as e:
        pytest.skip(f"SageMaker local mode needs docker compose: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Local:
    """A LocalSession whose compose projects live under ``root`` and whose AWS calls are caught."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.aws_requests: list[str] = []
        boto = boto3.Session(region_name=REGION)
        boto.events.register("before-send", self._no_aws)
        self.session = LocalSession(
            boto_session=boto,
            sagemaker_config={
                "SchemaVersion": "1.0",
                "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
            },
        )
        root.mkdir(parents=True, exist_ok=True)
        self.session.config = {
            "local": {
                "local_code": True,
                "serving_port": self.port,
                "container_root": str(root),
            }
        }

    def _no_aws(self, request: Any, **_: Any) -> Any:
        """Record the request and answer 403 locally: nothing reaches AWS."""
        from botocore.awsrequest import AWSResponse

        self.aws_requests.append(f"{request.method} {request.url}")
        return AWSResponse(request.url, 403, {}, None)

    def containers(self, running_only: bool = False) -> list[str]:
        """Names of the compose containers of this session's projects (none of anyone else's)."""
        out = docker(
            "ps",
            *([] if running_only else ["-a"]),
            "--filter",
            "label=com.docker.compose.project.working_dir",
            "--format",
            '{{.Names}}\t{{.Label "com.docker.compose.project.working_dir"}}',
        ).stdout
        return [
            name
            for name, _, wd in (line.partition("\t") for line in out.splitlines())
            if wd.startswith(str(self.root))
        ]

    def remove_containers(self) -> list[str]:
        names = self.containers()
        if names:
            docker("rm", "-f", "-v", *names, check=False)
        return names

    def bounded(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """fn() in a thread; past ``timeout`` this session's containers are removed (compose then
        returns and the SDK call ends) and the test fails: nothing here can hang."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                box["error"] = e

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            removed = self.remove_containers()
            t.join(60)
            pytest.fail(f"{what} did not return in {timeout:.0f} s (removed {removed})")
        if "error" in box:
            raise box["error"]
        return box["value"]


@pytest.fixture
def local(tmp_path: Path, compose: list[str]) -> Iterator[Local]:
    loc = Local(tmp_path / "sm")
    yield loc
    left = loc.remove_containers()
    if left:
        print(f"removed compose containers the SDK left behind: {left}")
    assert loc.aws_requests == [], f"the SDK called AWS: {loc.aws_requests}"


def timed(label: str, start: float) -> float:
    secs = time.monotonic() - start
    print(f"[sdk] {label}: {secs:.1f} s", flush=True)
    return secs


# --- serving ---------------------------------------------------------------------------------


def model_tarball(model_dir: Path, dest: Path) -> Path:
    """model.tar.gz with the model directory's files at the top level, as SageMaker expects."""
    dest.mkdir(parents=True)
    out = dest / "model.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(model_dir.iterdir()):
            tar.add(f, arcname=f.name)
    return out


def deploy(local: Local, image: str, model_data: Path) -> Predictor:
    model = Model(
        image_uri=image,
        model_data=f"file://{model_data}",
        role=ROLE,
        sagemaker_session=local.session,
        predictor_cls=Predictor,
    )
    predictor = local.bounded(
        lambda: model.deploy(
            initial_instance_count=1,
            instance_type="local",
            serializer=IdentitySerializer("image/png"),
            deserializer=JSONDeserializer(),
            # Local create_endpoint returns once /ping answers 200; wait=True would then sleep
            # the SDK's 30 s endpoint poll before its first (local) DescribeEndpoint.
            wait=False,
        ),
        240,
        "Model.deploy",
    )
    assert isinstance(predictor, Predictor)
    status = local.session.sagemaker_client.describe_endpoint(
        EndpointName=predictor.endpoint_name
    )["EndpointStatus"]
    assert status == "InService"
    assert local.containers(running_only=True), (
        "deploy returned without a running container"
    )
    return predictor


def delete(local: Local, predictor: Predictor) -> None:
    local.bounded(predictor.delete_endpoint, 90, "delete_endpoint")
    assert local.containers(running_only=True) == [], (
        "a compose container still runs after delete_endpoint"
    )


def box_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_matches_reference(got: list[dict], want: list[dict]) -> None:
    """Every confident PyTorch reference detection is served: same class, box IoU > 0.9, score
    within 0.02 (ONNX Runtime against PyTorch eager)."""
    confident = [w for w in want if w["score"] >= 0.5]
    assert confident, (
        "the reference has no confident detection: the check proves nothing"
    )
    for w in confident:
        assert any(
            g["class_name"] == w["class_name"]
            and box_iou(g["box"], w["box"]) > 0.9
            and abs(g["score"] - w["score"]) < 0.02
            for g in got
        ), f"reference {w['class_name']} {w['score']:.3f} {w['box']} not in {got}"


def test_deploy_bundled_model_and_predict(
    images: ImageBuilder, local: Local, tmp_path: Path
) -> None:
    """Model(model_data=file://.../model.tar.gz).deploy(instance_type="local"), then predict PNG
    bytes (IdentitySerializer) and a TF-Serving JSON body; detections match reference.json."""
    image = images.get("cpu")
    tarball = model_tarball(MODEL_DIR, tmp_path / "artifact")
    reference = json.loads((MODEL_DIR / "reference.json").read_text())["images"]
    start = time.monotonic()
    predictor = deploy(local, image, tarball)
    timed("deploy (bundled model)", start)
    try:
        # The SDK extracted the tarball next to it and mounted that directory.
        assert (tarball.parent / "model.json").is_file()
        for ref in reference[:2]:
            png = (MODEL_DIR / ref["file"]).read_bytes()
            t = time.monotonic()
            out = predictor.predict(png)
            timed(f"predict image/png {ref['file']}", t)
            assert_matches_reference(out["detections"], ref["detections"])

        ref = reference[2]
        b64 = base64.b64encode((MODEL_DIR / ref["file"]).read_bytes()).decode()
        body = json.dumps({"instances": [{"b64": b64}, b64]}).encode()
        out = predictor.predict(body, initial_args={"ContentType": "application/json"})
        assert len(out["predictions"]) == 2
        for pred in out["predictions"]:
            assert_matches_reference(pred["detections"], ref["detections"])
        classes = {d["class_name"] for d in out["predictions"][0]["detections"]}
        assert classes <= set(SHAPES), classes

        # Per-request options through the SDK's CustomAttributes header.
        few = predictor.predict(
            (MODEL_DIR / reference[0]["file"]).read_bytes(),
            custom_attributes="score_threshold=0.9,max_detections=1",
        )
        assert len(few["detections"]) == 1 and few["detections"][0]["score"] >= 0.9

        # A JSON serializer on the predictor, as SDK users configure it.
        predictor.serializer = JSONSerializer()
        out = predictor.predict({"instances": [b64]})
        assert_matches_reference(out["predictions"][0]["detections"], ref["detections"])
    finally:
        t = time.monotonic()
        delete(local, predictor)
        timed("delete_endpoint", t)


# --- training --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 shapes images (COCO: images/ + annotations.json), the `train` channel."""
    out = tmp_path_factory.mktemp("channel") / "train"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maskexport.shapes",
            "--seed",
            "7",
            "--count",
            "8",
            str(out),
        ],
        cwd=REPO_ROOT / "model-export",
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (out / "annotations.json").is_file()
    return out


def estimator(
    local: Local, image: str, output: Path, count: int, hyperparameters: dict
) -> Estimator:
    output.mkdir(parents=True, exist_ok=True)
    return Estimator(
        image_uri=image,
        role=ROLE,
        instance_count=count,
        instance_type="local",
        hyperparameters=hyperparameters,
        output_path=f"file://{output}",
        sagemaker_session=local.session,
    )


def fit(local: Local, est: Estimator, channel: Path, timeout: float) -> None:
    """``est.fit({"train": file://channel})``, bounded; a failure to collect the artifacts is
    told apart from a failed job."""
    try:
        local.bounded(lambda: est.fit({"train": f"file://{channel}"}), timeout, "fit")
        return
    except shutil.Error as e:
        problem = str(e)[:1500]
    pytest.fail(
        "the job ran, but local mode could not collect its artifacts (it copies each host's "
        "/opt/ml/model and /opt/ml/output with shutil.copytree, following symlinks; a symlink "
        f"to a container path dangles on the host): {problem}"
    )


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def assert_model_artifact(output: Path, est: Estimator) -> dict[str, bytes]:
    artifact = output / "model.tar.gz"
    assert est.model_data == f"file://{artifact}"
    assert artifact.is_file()
    files = tar_members(artifact)
    manifest = json.loads(files["model.json"])
    assert manifest["classes"] == ["__background__", *SHAPES]
    graphs = manifest["graphs"]
    for key in ("backbone_rpn", "box_roi_align", "box_head", "mask_roi_align", "mask_head", "single"):
        assert graphs[key] in files and len(files[graphs[key]]) > 1000, key
    return files


def test_fit_one_instance_then_serve_the_artifact_as_is(
    images: ImageBuilder, local: Local, train_channel: Path, tmp_path: Path
) -> None:
    """Estimator(instance_count=1).fit({"train": file://...}) -> model.tar.gz with model.json and
    the graphs; that tarball deployed unchanged with the serving image answers detections."""
    train_image, serve_image = images.get("train"), images.get("cpu")
    output = tmp_path / "output"
    est = estimator(local, train_image, output, 1, HYPERPARAMETERS)
    start = time.monotonic()
    fit(local, est, train_channel, FIT_TIMEOUT_S)
    timed("fit, 1 instance", start)
    assert_model_artifact(output, est)
    # The training job's output.tar.gz: no failure file on success.
    assert "failure" not in tar_members(output / "output.tar.gz")
    assert local.containers(running_only=True) == []

    start = time.monotonic()
    predictor = deploy(local, serve_image, output / "model.tar.gz")
    timed("deploy (trained model.tar.gz)", start)
    try:
        png = next(iter(sorted((train_channel / "images").glob("*.png")))).read_bytes()
        # Ten iterations do not make a confident model: every detection, however unsure.
        out = predictor.predict(png, custom_attributes="score_threshold=0")
        dets = out["detections"]
        assert dets, out
        assert {d["class_name"] for d in dets} <= set(SHAPES)
        for d in dets:
            assert 0.0 <= d["score"] <= 1.0 and len(d["box"]) == 4 and "mask" in d
    finally:
        delete(local, predictor)


def test_fit_two_instances(
    images: ImageBuilder, local: Local, train_channel: Path, tmp_path: Path
) -> None:
    """instance_count=2: two containers algo-1-xxxxx and algo-2-xxxxx on the compose network
    train together (gloo); the job succeeds and the model artifact is complete."""
    image = images.get("train")
    output = tmp_path / "output"
    est = estimator(local, image, output, 2, {**HYPERPARAMETERS, "threads": 1})
    since = int(time.time()) - 1
    start = time.monotonic()
    fit(local, est, train_channel, FIT_TIMEOUT_S)
    timed("fit, 2 instances", start)
    names = sorted(local.containers(), key=lambda n: n.split("-", 1)[1])
    hosts = [n.split("-", 1)[1].rsplit("-", 1)[0] for n in names]
    assert hosts == ["algo-1", "algo-2"], names
    assert local.containers(running_only=True) == []
    # `up --abort-on-container-exit` stops every container as soon as one exits. Each host's part
    # must therefore be over before any exits: hosts[0] has written the model and the others have
    # heard so. A SIGTERM after that is a clean exit (0); one before it, or a SIGKILL, is not.
    signalled = kill_events(names, since)
    done = {
        names[0]: "model directory written to /opt/ml/model",
        names[1]: "hosts[0] wrote the model",
    }
    for name in names:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0 and not state["OOMKilled"], (name, state)
        logs = docker("logs", name)
        assert done[name] in logs.stdout + logs.stderr, (name, logs.stdout[-1500:])
        assert "9" not in signalled.get(name, []), f"{name} was killed: {signalled}"
    print(f"signals compose sent after the hosts finished: {signalled}")
    assert "model directory written to /opt/ml/model" in docker("logs", names[0]).stdout
    assert_model_artifact(output, est)
    assert "failure" not in tar_members(output / "output.tar.gz")


def kill_events(names: list[str], since: int) -> dict[str, list[str]]:
    """Signals the engine delivered to these containers since ``since`` (docker events)."""
    out = docker(
        "events",
        "--since",
        str(since),
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        "event=kill",
        "--format",
        "{{.Actor.Attributes.name}} {{.Actor.Attributes.signal}}",
    ).stdout
    got: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, _, signal = line.partition(" ")
        if name in names:
            got.setdefault(name, []).append(signal)
    return got


def test_bad_hyperparameter_fails_fit_with_the_reason(
    images: ImageBuilder,
    local: Local,
    train_channel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """{"iterations": "many"}: fit raises (the SDK reports the compose exit code), quickly; the
    reason the container wrote to /opt/ml/output/failure is in the streamed log and in
    output.tar.gz."""
    image = images.get("train")
    output = tmp_path / "output"
    est = estimator(local, image, output, 1, {**HYPERPARAMETERS, "iterations": "many"})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"Process exited with code: [1-9]"):
        local.bounded(
            lambda: est.fit({"train": f"file://{train_channel}"}),
            180,
            "fit",
        )
    secs = time.monotonic() - start
    log = capsys.readouterr().out
    reason = "hyperparameter 'iterations': 'many' is not an integer"
    assert reason in log, log[-4000:]
    failure = tar_members(output / "output.tar.gz")["failure"].decode()
    assert failure.startswith("HyperparameterError: " + reason), failure
    assert secs < 120
    assert local.containers(running_only=True) == []
    with capsys.disabled():
        print(f"[sdk] fit with a bad hyperparameter raised after {secs:.1f} s")
        print(f"[sdk] /opt/ml/output/failure: {failure.splitlines()[0]}")

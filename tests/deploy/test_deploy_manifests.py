"""The project's own checks of the rendered manifests (always run; no CRDs needed)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import deploy_checks as dc
import pytest
import render_manifests as rm


def test_rendered_manifests_pass_project_checks(rendered_docs: list[dict[str, Any]]) -> None:
    assert dc.check_all(rendered_docs) == []


def test_hosting_deployment_cross_references() -> None:
    docs = [d for i in rm.render("operator") for d in i.documents]
    hd = next(d for d in docs if d["kind"] == "HostingDeployment")
    names = {m["name"] for m in hd["spec"]["models"]}
    assert {v["modelName"] for v in hd["spec"]["productionVariants"]} <= names
    for model in hd["spec"]["models"]:
        assert all(c.get("containerHostname") for c in model["containers"])


def test_ack_chain_references() -> None:
    docs = {d["kind"]: d for i in rm.render("ack") for d in i.documents}
    assert (
        docs["Endpoint"]["spec"]["endpointConfigName"]
        == (docs["EndpointConfig"]["spec"]["endpointConfigName"])
    )
    variant = docs["EndpointConfig"]["spec"]["productionVariants"][0]
    assert variant["modelName"] == docs["Model"]["spec"]["modelName"]
    assert docs["TransformJob"]["spec"]["modelName"] == docs["Model"]["spec"]["modelName"]
    training = docs["TrainingJob"]["spec"]
    assert docs["Model"]["spec"]["primaryContainer"]["modelDataURL"] == (
        f"{training['outputDataConfig']['s3OutputPath']}{training['trainingJobName']}"
        "/output/model.tar.gz"
    )
    assert {c["channelName"] for c in training["inputDataConfig"]} == {"train", "val"}


def test_plain_probes_and_service() -> None:
    docs = {d["kind"]: d for i in rm.render("plain") for d in i.documents}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "maskserve")
    port = {p["name"]: p["containerPort"] for p in server["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/ping"
        assert port[server[probe]["httpGet"]["port"]] == 8080
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] in port
    assert (
        docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == (docs["Deployment"]["metadata"]["name"])
    )
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert server["resources"]["limits"]["nvidia.com/gpu"] >= 1


Mutation = Callable[[dict[str, dict[str, Any]]], None]


def _variant_names_missing_model(d: dict[str, dict[str, Any]]) -> None:
    d["HostingDeployment"]["spec"]["productionVariants"][0]["modelName"] = "no-such-model"


def _container_without_hostname(d: dict[str, dict[str, Any]]) -> None:
    d["HostingDeployment"]["spec"]["models"][0]["containers"][0].pop("containerHostname")


def _duplicate_model(d: dict[str, dict[str, Any]]) -> None:
    models = d["HostingDeployment"]["spec"]["models"]
    models.append(copy.deepcopy(models[0]))


def _bad_role(d: dict[str, dict[str, Any]]) -> None:
    d["TrainingJob"]["spec"]["roleArn"] = "<YOUR ROLE ARN>"


def _env_typo(d: dict[str, dict[str, Any]]) -> None:
    env = d["HostingDeployment"]["spec"]["models"][0]["containers"][0]["environment"]
    env[0]["name"] = "SAGEMAKER_MODEL_SERVER_WORKER"


def _model_not_training_output(d: dict[str, dict[str, Any]]) -> None:
    container = d["HostingDeployment"]["spec"]["models"][0]["containers"][0]
    container["modelDataUrl"] = "s3://some-bucket/elsewhere/model.tar.gz"


def _endpoint_names_missing_config(d: dict[str, dict[str, Any]]) -> None:
    d["Endpoint"]["spec"]["endpointConfigName"] = "missing-config"


def _config_names_missing_model(d: dict[str, dict[str, Any]]) -> None:
    d["EndpointConfig"]["spec"]["productionVariants"][0]["modelName"] = "missing-model"


def _ack_no_region(d: dict[str, dict[str, Any]]) -> None:
    d["Model"]["metadata"]["annotations"].clear()


def _not_ecr(d: dict[str, dict[str, Any]]) -> None:
    d["Model"]["spec"]["primaryContainer"]["image"] = "maskserve:latest"


def _probe_port(d: dict[str, dict[str, Any]]) -> None:
    pod = d["Deployment"]["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbe"]["httpGet"]["port"] = 9090


def _service_selector(d: dict[str, dict[str, Any]]) -> None:
    d["Service"]["spec"]["selector"] = {"app": "other"}


def _hpa_target(d: dict[str, dict[str, Any]]) -> None:
    d["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"


def _short_grace(d: dict[str, dict[str, Any]]) -> None:
    d["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15


def _no_gpu(d: dict[str, dict[str, Any]]) -> None:
    d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop(
        "nvidia.com/gpu"
    )


def _no_prestop(d: dict[str, dict[str, Any]]) -> None:
    d["Deployment"]["spec"]["template"]["spec"]["containers"][0].pop("lifecycle")


def _replicas_with_hpa(d: dict[str, dict[str, Any]]) -> None:
    d["Deployment"]["spec"]["replicas"] = 2


def _no_model_fetch(d: dict[str, dict[str, Any]]) -> None:
    d["Deployment"]["spec"]["template"]["spec"]["initContainers"] = []


NEGATIVE: list[tuple[str, str, Mutation]] = [
    ("operator", "variant names a missing model", _variant_names_missing_model),
    ("operator", "container without hostname", _container_without_hostname),
    ("operator", "duplicate model names", _duplicate_model),
    ("operator", "placeholder role ARN", _bad_role),
    ("operator", "misspelled SageMaker env var", _env_typo),
    ("operator", "model is not the training output", _model_not_training_output),
    ("ack", "Endpoint names a missing EndpointConfig", _endpoint_names_missing_config),
    ("ack", "EndpointConfig names a missing Model", _config_names_missing_model),
    ("ack", "no region annotation", _ack_no_region),
    ("ack", "image not in ECR", _not_ecr),
    ("plain", "probe on another port", _probe_port),
    ("plain", "Service selects nothing", _service_selector),
    ("plain", "HPA targets another kind", _hpa_target),
    ("plain", "grace period too short to drain", _short_grace),
    ("plain", "no GPU limit", _no_gpu),
    ("plain", "no preStop", _no_prestop),
    ("plain", "replicas fight the HPA", _replicas_with_hpa),
    ("plain", "nothing fills /opt/ml/model", _no_model_fetch),
]


@pytest.mark.parametrize(("flavor", "what", "mutate"), NEGATIVE, ids=[n[1] for n in NEGATIVE])
def test_project_checks_reject(flavor: str, what: str, mutate: Mutation) -> None:
    docs = [copy.deepcopy(d) for i in rm.render(flavor) for d in i.documents]
    by_kind = {d["kind"]: d for d in docs}
    assert dc.check_all(docs) == []
    mutate(by_kind)
    assert dc.check_all(docs), f"{flavor}: {what} was accepted"


def test_required_fields_are_checked_without_crds() -> None:
    for flavor in ("operator", "ack"):
        for doc in (d for i in rm.render(flavor) for d in i.documents):
            rules = dc.RULES.get((doc["apiVersion"], doc["kind"]))
            if doc["kind"] == "Namespace":
                continue
            assert rules, f"no project rules for {doc['apiVersion']} {doc['kind']}"
            for path in rules:
                broken = copy.deepcopy(doc)
                *parents, leaf = dc._split(path)
                node: Any = broken
                for part in parents:
                    node = node[part.removesuffix("[]")]
                    if part.endswith("[]"):
                        node = node[0]
                node.pop(leaf.removesuffix("[]"))
                assert dc.check_document(broken), f"{doc['kind']} without {path} passed"


def test_builtin_kinds_validate_against_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for doc in (d for i in rm.render("plain") for d in i.documents):
        # strict: unknown fields are errors; 1.30 is the oldest release the manifests target.
        for version in ("1.30.0", "1.34.0"):
            kv.validate(doc, version, strict=True)


def test_kubernetes_validate_rejects_a_broken_deployment() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    dep = copy.deepcopy(
        next(d for i in rm.render("plain") for d in i.documents if d["kind"] == "Deployment")
    )
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpget"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, "1.34.0", strict=True)

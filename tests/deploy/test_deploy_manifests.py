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


def _env(container: dict[str, Any]) -> dict[str, str]:
    env = container["environment"]
    return env if isinstance(env, dict) else {e["name"]: e["value"] for e in env}


def test_multi_model_endpoints() -> None:
    """MultiModel container, an S3 prefix, SAGEMAKER_MULTI_MODEL=true and otherwise the same
    maskserve settings as the single-model endpoint, with the operator and with ACK."""
    values = rm.load_values()
    prefix = values["mme_model_data_prefix"]
    assert prefix.startswith("s3://") and prefix.endswith("/")
    operator = {
        d["metadata"]["name"]: d
        for i in rm.render("operator", ["serve", "mme"])
        for d in i.documents
    }
    single = operator[values["endpoint_name"]]["spec"]["models"][0]["containers"][0]
    multi_hd = operator[values["mme_endpoint_name"]]["spec"]
    multi = multi_hd["models"][0]["containers"][0]
    assert (multi["mode"], multi["modelDataUrl"]) == ("MultiModel", prefix)
    assert _env(multi) == {**_env(single), "SAGEMAKER_MULTI_MODEL": "true"}
    assert multi_hd["productionVariants"][0]["modelName"] == multi_hd["models"][0]["name"]
    ack = {
        (d["kind"], d["metadata"]["name"]): d
        for i in rm.render("ack", ["serve", "mme"])
        for d in i.documents
    }
    single = ack[("Model", values["model_name"])]["spec"]["primaryContainer"]
    multi = ack[("Model", values["mme_model_name"])]["spec"]["primaryContainer"]
    assert (multi["mode"], multi["modelDataURL"]) == ("MultiModel", prefix)
    assert _env(multi) == {**_env(single), "SAGEMAKER_MULTI_MODEL": "true"}
    assert "mode" not in single and "SAGEMAKER_MULTI_MODEL" not in _env(single)
    endpoint = ack[("Endpoint", values["mme_endpoint_name"])]["spec"]
    cfg = ack[("EndpointConfig", endpoint["endpointConfigName"])]["spec"]
    assert cfg["productionVariants"][0]["modelName"] == values["mme_model_name"]
    # Custom multi-model containers run on CPU instances only (GPU ones need Triton).
    assert values["mme_image"] == values["serving_image_cpu"]
    assert not values["mme_instance_type"].startswith(("ml.g", "ml.p", "ml.inf", "ml.trn"))


def test_inference_component_chain() -> None:
    values = rm.load_values()
    docs = {d["kind"]: d for i in rm.render("ack", ["ic"]) for d in i.documents}
    ic = docs["InferenceComponent"]["spec"]
    assert ic["endpointName"] == docs["Endpoint"]["spec"]["endpointName"]
    cfg = docs["EndpointConfig"]["spec"]
    assert docs["Endpoint"]["spec"]["endpointConfigName"] == cfg["endpointConfigName"]
    variant = cfg["productionVariants"][0]
    assert ic["variantName"] == variant["variantName"]
    assert "modelName" not in variant and cfg["executionRoleARN"] == values["sagemaker_role_arn"]
    assert ic["specification"]["modelName"] == docs["Model"]["spec"]["modelName"]
    # The single-model container and the trained archive, under a Model of its own.
    container = docs["Model"]["spec"]["primaryContainer"]
    assert "mode" not in container and container["modelDataURL"] == values["model_data_url"]
    assert docs["Model"]["spec"]["modelName"] != values["model_name"]
    scaling = variant["managedInstanceScaling"]
    assert (
        scaling["minInstanceCount"]
        <= variant["initialInstanceCount"]
        <= scaling["maxInstanceCount"]
    )
    assert ic["runtimeConfig"]["copyCount"] >= 0
    # Scale to zero is two values away, and both pass the project's checks.
    zero = rm.load_values(overrides=["ic_min_instance_count=0", "ic_copy_count=0"])
    zero_docs = [d for i in rm.render("ack", ["ic"], zero) for d in i.documents]
    assert dc.check_all(zero_docs) == []


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


# The multi-model and inference-component manifests, rendered with everything else of the
# flavor: each mutation gets the documents keyed by (kind, name value), e.g.
# ("InferenceComponent", "ic_inference_component_name"), and the whole list (to drop one).
Docs = dict[tuple[str, str], dict[str, Any]]
OtherMutation = Callable[[Docs, list[dict[str, Any]]], None]


def _mme_hd_container(d: Docs) -> dict[str, Any]:
    return d["HostingDeployment", "mme_endpoint_name"]["spec"]["models"][0]["containers"][0]


def _mme_model(d: Docs) -> dict[str, Any]:
    return d["Model", "mme_model_name"]["spec"]["primaryContainer"]


def _ic(d: Docs) -> dict[str, Any]:
    return d["InferenceComponent", "ic_inference_component_name"]["spec"]


def _ic_variant(d: Docs) -> dict[str, Any]:
    return d["EndpointConfig", "ic_endpoint_config_name"]["spec"]["productionVariants"][0]


def _drop_env(container: dict[str, Any], name: str) -> None:
    env = container["environment"]
    if isinstance(env, dict):
        env.pop(name)
    else:
        env[:] = [e for e in env if e["name"] != name]


def _drop_ic(d: Docs, docs: list[dict[str, Any]]) -> None:
    docs.remove(d["InferenceComponent", "ic_inference_component_name"])


NEGATIVE_OTHER: list[tuple[str, str, str, OtherMutation]] = [
    (
        "operator",
        "MME prefix without the trailing '/'",
        "prefix ending in '/'",
        lambda d, _: _mme_hd_container(d).update(
            modelDataUrl=_mme_hd_container(d)["modelDataUrl"].rstrip("/")
        ),
    ),
    (
        "operator",
        "MME given a model archive",
        "prefix ending in '/'",
        lambda d, _: _mme_hd_container(d).update(modelDataUrl="s3://a-bucket/models/m.tar.gz"),
    ),
    (
        "operator",
        "MME without SAGEMAKER_MULTI_MODEL",
        "needs SAGEMAKER_MULTI_MODEL=true",
        lambda d, _: _drop_env(_mme_hd_container(d), "SAGEMAKER_MULTI_MODEL"),
    ),
    (
        "operator",
        "prefix without mode MultiModel",
        ".tar.gz archive",
        lambda d, _: _mme_hd_container(d).pop("mode"),
    ),
    (
        "ack",
        "MME Model given a model archive",
        "prefix ending in '/'",
        lambda d, _: _mme_model(d).update(modelDataURL="s3://a-bucket/models/m.tar.gz"),
    ),
    (
        "ack",
        "MME Model with SAGEMAKER_MULTI_MODEL=false",
        "needs SAGEMAKER_MULTI_MODEL=true",
        lambda d, _: _mme_model(d)["environment"].update(SAGEMAKER_MULTI_MODEL="false"),
    ),
    (
        "ack",
        "mode misspelled",
        "not in ('SingleModel', 'MultiModel')",
        lambda d, _: _mme_model(d).update(mode="Multimodel"),
    ),
    (
        "ack",
        "single-model Model with SAGEMAKER_MULTI_MODEL=true",
        "in a single-model container",
        lambda d, _: d["Model", "model_name"]["spec"]["primaryContainer"]["environment"].update(
            SAGEMAKER_MULTI_MODEL="true"
        ),
    ),
    (
        "ack",
        "multiModelConfig on a single-model Model",
        "multiModelConfig needs mode: MultiModel",
        lambda d, _: d["Model", "ic_model_name"]["spec"]["primaryContainer"].update(
            multiModelConfig={"modelCacheSetting": "Enabled"}
        ),
    ),
    (
        "ack",
        "InferenceComponent on a missing endpoint",
        "names no Endpoint",
        lambda d, _: _ic(d).update(endpointName="no-such-endpoint"),
    ),
    (
        "ack",
        "InferenceComponent on a missing variant",
        "is no variant of Endpoint",
        lambda d, _: _ic(d).update(variantName="NoSuchVariant"),
    ),
    (
        "ack",
        "InferenceComponent deploys a missing Model",
        "names no Model",
        lambda d, _: _ic(d)["specification"].update(modelName="no-such-model"),
    ),
    (
        "ack",
        "InferenceComponent on the single-model endpoint",
        "need a variant without one",
        lambda d, _: _ic(d).update(
            endpointName=d["Endpoint", "endpoint_name"]["spec"]["endpointName"]
        ),
    ),
    (
        "ack",
        "InferenceComponent deploys the multi-model Model",
        "is a MultiModel one",
        lambda d, _: _ic(d)["specification"].update(
            modelName=d["Model", "mme_model_name"]["spec"]["modelName"]
        ),
    ),
    (
        "ack",
        "InferenceComponent without variantName",
        "spec.variantName is required",
        lambda d, _: _ic(d).pop("variantName"),
    ),
    (
        "ack",
        "negative copy count",
        "must be an integer >= 0",
        lambda d, _: _ic(d)["runtimeConfig"].update(copyCount=-1),
    ),
    ("ack", "inference-component variant with nothing on it", "would serve nothing", _drop_ic),
    (
        "ack",
        "model-less variant without executionRoleARN",
        "needs executionRoleARN",
        lambda d, _: d["EndpointConfig", "ic_endpoint_config_name"]["spec"].pop("executionRoleARN"),
    ),
    (
        "ack",
        "minInstanceCount above maxInstanceCount",
        "<= maxInstanceCount",
        lambda d, _: _ic_variant(d)["managedInstanceScaling"].update(minInstanceCount=3),
    ),
    (
        "ack",
        "unknown routing strategy",
        "LEAST_OUTSTANDING_REQUESTS",
        lambda d, _: _ic_variant(d)["routingConfig"].update(routingStrategy="ROUND_ROBIN"),
    ),
    (
        "ack",
        "two Endpoints with one SageMaker name",
        "is used twice",
        lambda d, _: d["Endpoint", "ic_endpoint_name"]["spec"].update(
            endpointName=d["Endpoint", "endpoint_name"]["spec"]["endpointName"]
        ),
    ),
]


@pytest.mark.parametrize(
    ("flavor", "what", "expected", "mutate"), NEGATIVE_OTHER, ids=[n[1] for n in NEGATIVE_OTHER]
)
def test_project_checks_reject_other_endpoints(
    flavor: str, what: str, expected: str, mutate: OtherMutation
) -> None:
    names = {k: v for k, v in rm.load_values().items() if k.endswith("_name")}
    docs = [copy.deepcopy(d) for i in rm.render(flavor, rm.COMPONENTS) for d in i.documents]
    named: Docs = {
        (doc["kind"], key): doc
        for doc in docs
        for key, name in names.items()
        if doc["metadata"]["name"] == name
    }
    assert dc.check_all(docs) == []
    mutate(named, docs)
    errors = dc.check_all(docs)
    assert any(expected in e for e in errors), f"{flavor}: {what}: {errors}"


def test_required_fields_are_checked_without_crds() -> None:
    for flavor in ("operator", "ack"):
        for doc in (d for i in rm.render(flavor, rm.COMPONENTS) for d in i.documents):
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

"""The project's own checks of the rendered manifests (always run; no CRDs needed)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import deploy_checks as dc
import pytest
import render_manifests as rm
from deploy_support import REPO_ROOT


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


def test_async_endpoint_chain() -> None:
    """Model -> EndpointConfig -> Endpoint by name, results and failures under the values'
    bucket, the trained archive in a Model of its own."""
    values = rm.load_values()
    docs = {d["kind"]: d for i in rm.render("ack", ["async"]) for d in i.documents}
    model, cfg, endpoint = (docs[k]["spec"] for k in ("Model", "EndpointConfig", "Endpoint"))
    assert endpoint["endpointName"] == values["async_endpoint_name"]
    assert endpoint["endpointConfigName"] == cfg["endpointConfigName"]
    assert cfg["endpointConfigName"] == values["async_endpoint_config_name"]
    (variant,) = cfg["productionVariants"]
    assert variant["variantName"] == values["async_variant_name"]
    assert variant["modelName"] == model["modelName"] == values["async_model_name"]
    assert model["modelName"] != values["model_name"]
    container = model["primaryContainer"]
    assert "mode" not in container and container["modelDataURL"] == values["model_data_url"]
    assert container["image"] == values["async_image"]
    async_config = cfg["asyncInferenceConfig"]
    output = async_config["outputConfig"]
    bucket = f"s3://{values['bucket']}/"
    assert output["s3OutputPath"] == values["async_output_s3_uri"]
    assert output["s3FailurePath"] == values["async_failure_s3_uri"]
    assert values["async_input_s3_uri"].startswith(bucket)
    for path in (output["s3OutputPath"], output["s3FailurePath"]):
        assert path.startswith(bucket) and path.endswith("/")
    assert output["s3OutputPath"] != output["s3FailurePath"]
    assert async_config["clientConfig"] == {
        "maxConcurrentInvocationsPerInstance": int(values["async_max_concurrent_invocations"])
    }
    # One bucket for everything, also with another bucket and region.
    for overrides in ([], ["bucket=another-bucket-name", "region=eu-central-1"]):
        vals = rm.load_values(overrides=overrides)
        for flavor in ("operator", "ack"):
            rendered = [d for i in rm.render(flavor, rm.COMPONENTS, vals) for d in i.documents]
            assert dc.check_s3_under_bucket(rendered, vals["bucket"]) == [], flavor


def test_async_container_settings() -> None:
    """The async Model's container takes the requests async exists for: a body of up to 1 GiB,
    an hour to answer, a slow body, a 10,000 x 10,000 image; the real-time Model keeps its
    defaults. Each value is what src/config.rs parses."""
    values = rm.load_values()
    ack = {
        (d["kind"], d["metadata"]["name"]): d
        for i in rm.render("ack", ["serve", "async"])
        for d in i.documents
    }
    env = _env(ack[("Model", values["async_model_name"])]["spec"]["primaryContainer"])
    single = _env(ack[("Model", values["model_name"])]["spec"]["primaryContainer"])
    payload = int(env["MASKSERVE_MAX_PAYLOAD_BYTES"])
    timeout = float(env["SAGEMAKER_MODEL_SERVER_TIMEOUT"])
    body = float(env["MASKSERVE_BODY_TIMEOUT"])
    pixels = int(env["MASKSERVE_MAX_PIXELS"])
    assert payload == 1073741824 <= dc.ASYNC_MAX_PAYLOAD_BYTES
    assert timeout == 3600 <= dc.ASYNC_MAX_TIMEOUT_S
    assert 15 < body <= timeout  # 15 s is the server's default
    assert pixels >= 10_000 * 10_000
    # Otherwise the real-time settings; the real-time Model keeps the server's defaults.
    assert {k: v for k, v in env.items() if k not in dc.ASYNC_ENV} == {
        k: v for k, v in single.items() if k not in dc.ASYNC_ENV
    }
    assert set(single) & set(dc.ASYNC_ENV) == {"SAGEMAKER_MODEL_SERVER_TIMEOUT"}
    assert float(single["SAGEMAKER_MODEL_SERVER_TIMEOUT"]) <= 60
    # Every variable is one the server reads.
    assert dc.check_async_environment("async", env) == []


def _config_rs_variables() -> set[str]:
    source = (REPO_ROOT / "src" / "config.rs").read_text(encoding="utf-8")
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', source))


def test_known_maskserve_variables_exist_in_the_server() -> None:
    """deploy_checks accepts only variables that src/config.rs reads (clap `env`), and every
    maskserve variable a manifest sets is one of them."""
    variables = _config_rs_variables()
    assert "MASKSERVE_MAX_PAYLOAD_BYTES" in variables
    assert dc.KNOWN_MASKSERVE_ENV <= variables, dc.KNOWN_MASKSERVE_ENV - variables
    for flavor in rm.FLAVORS:
        for doc in (d for i in rm.render(flavor, rm.COMPONENTS) for d in i.documents):
            names = {n for n in dc.sagemaker_env_names(doc) if n.startswith("MASKSERVE_")}
            assert names <= dc.KNOWN_MASKSERVE_ENV, (doc["kind"], names)


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


def _async_env(d: Docs) -> dict[str, str]:
    return d["Model", "async_model_name"]["spec"]["primaryContainer"]["environment"]


def _async_cfg(d: Docs) -> dict[str, Any]:
    return d["EndpointConfig", "async_endpoint_config_name"]["spec"]


def _async_output(d: Docs) -> dict[str, Any]:
    return _async_cfg(d)["asyncInferenceConfig"]["outputConfig"]


def _async_variant(d: Docs) -> dict[str, Any]:
    return _async_cfg(d)["productionVariants"][0]


def _drop_async_env(name: str) -> OtherMutation:
    return lambda d, _: _async_env(d).pop(name)


def _set_async_env(name: str, value: str) -> OtherMutation:
    return lambda d, _: _async_env(d).update({name: value})


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
        "async Endpoint names a missing EndpointConfig",
        "names no EndpointConfig",
        lambda d, _: d["Endpoint", "async_endpoint_name"]["spec"].update(
            endpointConfigName="no-such-config"
        ),
    ),
    (
        "ack",
        "async Endpoint runs the real-time EndpointConfig",
        "is used by no Endpoint",
        lambda d, _: d["Endpoint", "async_endpoint_name"]["spec"].update(
            endpointConfigName=d["EndpointConfig", "endpoint_config_name"]["spec"][
                "endpointConfigName"
            ]
        ),
    ),
    (
        "ack",
        "async variant names a missing Model",
        "names Model 'no-such-model'",
        lambda d, _: _async_variant(d).update(modelName="no-such-model"),
    ),
    (
        "ack",
        "async variant runs the real-time Model",
        "needs MASKSERVE_MAX_PAYLOAD_BYTES",
        lambda d, _: _async_variant(d).update(
            modelName=d["Model", "model_name"]["spec"]["modelName"]
        ),
    ),
    *(
        ("ack", f"async Model without {name}", f"needs {name}", _drop_async_env(name))
        for name in dc.ASYNC_ENV
    ),
    (
        "ack",
        "async payload above 1 GiB",
        "must be at most 1073741824",
        _set_async_env("MASKSERVE_MAX_PAYLOAD_BYTES", "1073741825"),
    ),
    (
        "ack",
        "async payload with a unit",
        "is not a whole number",
        _set_async_env("MASKSERVE_MAX_PAYLOAD_BYTES", "1GiB"),
    ),
    (
        "ack",
        "async timeout above an hour",
        "at most 3600",
        _set_async_env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "3601"),
    ),
    (
        "ack",
        "async timeout with a unit",
        "is not a number",
        _set_async_env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1h"),
    ),
    (
        "ack",
        "async body timeout above the invocation timeout",
        "longer than SAGEMAKER_MODEL_SERVER_TIMEOUT",
        lambda d, _: _async_env(d).update(
            SAGEMAKER_MODEL_SERVER_TIMEOUT="600", MASKSERVE_BODY_TIMEOUT="900"
        ),
    ),
    (
        "ack",
        "async pixel limit in scientific notation",
        "is not a whole number",
        _set_async_env("MASKSERVE_MAX_PIXELS", "1.5e8"),
    ),
    (
        "ack",
        "misspelt maskserve variable",
        "unknown maskserve environment variable 'MASKSERVE_MAX_PAYLOAD'",
        lambda d, _: _async_env(d).update(
            MASKSERVE_MAX_PAYLOAD=_async_env(d).pop("MASKSERVE_MAX_PAYLOAD_BYTES")
        ),
    ),
    (
        "ack",
        "async config without s3OutputPath",
        "needs outputConfig.s3OutputPath",
        lambda d, _: _async_output(d).pop("s3OutputPath"),
    ),
    (
        "ack",
        "async output path without the trailing '/'",
        "prefix ending in '/'",
        lambda d, _: _async_output(d).update(
            s3OutputPath=_async_output(d)["s3OutputPath"].rstrip("/")
        ),
    ),
    (
        "ack",
        "async failure path is the output path",
        "must differ",
        lambda d, _: _async_output(d).update(s3FailurePath=_async_output(d)["s3OutputPath"]),
    ),
    (
        "ack",
        "async failure path inside the output path",
        "lie one inside the other",
        lambda d, _: _async_output(d).update(
            s3FailurePath=_async_output(d)["s3OutputPath"] + "failures/"
        ),
    ),
    (
        "ack",
        "async failure path not on S3",
        "must be an s3:// prefix",
        lambda d, _: _async_output(d).update(s3FailurePath="https://example.com/failures/"),
    ),
    (
        "ack",
        "async SNS topic not an ARN",
        "is not an SNS topic ARN",
        lambda d, _: _async_output(d).update(notificationConfig={"errorTopic": "maskserve-errors"}),
    ),
    (
        "ack",
        "async concurrency of 0",
        "must be an integer >= 1",
        lambda d, _: _async_cfg(d)["asyncInferenceConfig"]["clientConfig"].update(
            maxConcurrentInvocationsPerInstance=0
        ),
    ),
    (
        "ack",
        "async Endpoint with the real-time SageMaker name",
        "is used twice",
        lambda d, _: d["Endpoint", "async_endpoint_name"]["spec"].update(
            endpointName=d["Endpoint", "endpoint_name"]["spec"]["endpointName"]
        ),
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


def test_async_paths_outside_the_bucket_are_rejected() -> None:
    """check_s3_under_bucket can fail: an async output or failure path, or a model archive, in
    a bucket the execution role is not given."""
    values = rm.load_values()
    for key in ("async_output_s3_uri", "async_failure_s3_uri", "model_data_url"):
        vals = rm.load_values(overrides=[f"{key}=s3://someone-elses-bucket/x/"])
        docs = [d for i in rm.render("ack", ["async"], vals) for d in i.documents]
        errors = dc.check_s3_under_bucket(docs, values["bucket"])
        assert any("someone-elses-bucket" in e for e in errors), key


def test_async_environment_check_accepts_what_the_server_parses() -> None:
    env = {
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "9.005e2",
        "MASKSERVE_MAX_PAYLOAD_BYTES": "104857600",
        "MASKSERVE_BODY_TIMEOUT": "60",
        "MASKSERVE_MAX_PIXELS": "100000000",
    }
    assert dc.check_async_environment("m", env) == []
    for name, bad in (
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "0"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "nan"),
        ("MASKSERVE_MAX_PAYLOAD_BYTES", "-1"),
        ("MASKSERVE_MAX_PAYLOAD_BYTES", "1e9"),
        ("MASKSERVE_MAX_PAYLOAD_BYTES", "1_000_000"),
        ("MASKSERVE_MAX_PAYLOAD_BYTES", " 1000000"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "inf"),
        ("MASKSERVE_BODY_TIMEOUT", ""),
        ("MASKSERVE_MAX_PIXELS", "0"),
    ):
        assert dc.check_async_environment("m", {**env, name: bad}), (name, bad)


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

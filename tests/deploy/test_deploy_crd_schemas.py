"""Rendered SageMaker CRs validate against the published CRD schemas in ../shared/crds."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import render_manifests
from crd_schemas import SchemaIndex, load_crd_schemas
from deploy_support import CRD_DIR

SAGEMAKER_GROUPS = ("sagemaker.aws.amazon.com/", "sagemaker.services.k8s.aws/")


@pytest.fixture(scope="module")
def schemas() -> SchemaIndex:
    if not CRD_DIR.is_dir():
        pytest.skip(f"published CRDs not present at {CRD_DIR.name} (../shared/crds)")
    index = load_crd_schemas(CRD_DIR)
    if not index:
        pytest.skip("no CRDs found under ../shared/crds")
    return index


def errors_for(doc: dict[str, Any], schemas: SchemaIndex) -> list[str]:
    schema = schemas[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def sagemaker_docs(flavor: str) -> list[dict[str, Any]]:
    """Every SageMaker CR of a flavor, the multi-model and inference-component ones too."""
    return [
        doc
        for item in render_manifests.render(flavor, render_manifests.COMPONENTS)
        for doc in item.documents
        if doc["apiVersion"].startswith(SAGEMAKER_GROUPS)
    ]


@pytest.mark.parametrize("flavor", ["operator", "ack"])
def test_every_sagemaker_manifest_validates_against_its_crd(
    flavor: str, schemas: SchemaIndex
) -> None:
    docs = sagemaker_docs(flavor)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"no published CRD for {key}"
        assert errors_for(doc, schemas) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_all_expected_kinds_are_covered(schemas: SchemaIndex) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for f in ("operator", "ack") for d in sagemaker_docs(f)}
    assert kinds == {
        ("sagemaker.aws.amazon.com/v1", "TrainingJob"),
        ("sagemaker.aws.amazon.com/v1", "HostingDeployment"),
        ("sagemaker.aws.amazon.com/v1", "BatchTransformJob"),
        ("sagemaker.services.k8s.aws/v1alpha1", "TrainingJob"),
        ("sagemaker.services.k8s.aws/v1alpha1", "Model"),
        ("sagemaker.services.k8s.aws/v1alpha1", "EndpointConfig"),
        ("sagemaker.services.k8s.aws/v1alpha1", "Endpoint"),
        ("sagemaker.services.k8s.aws/v1alpha1", "TransformJob"),
        ("sagemaker.services.k8s.aws/v1alpha1", "InferenceComponent"),
    }


def test_other_endpoints_use_the_crd_fields() -> None:
    """The fields the multi-model and inference-component manifests rely on are the ones the
    published schemas define (and validate, above)."""
    values = render_manifests.load_values()
    hd = _named("operator", "HostingDeployment", "mme_endpoint_name")
    container = hd["spec"]["models"][0]["containers"][0]
    assert container["mode"] == "MultiModel"
    assert container["modelDataUrl"] == values["mme_model_data_prefix"]
    model = _named("ack", "Model", "mme_model_name")["spec"]["primaryContainer"]
    assert (model["mode"], model["modelDataURL"]) == ("MultiModel", values["mme_model_data_prefix"])
    assert model["multiModelConfig"] == {"modelCacheSetting": "Enabled"}
    variant = _named("ack", "EndpointConfig", "ic_endpoint_config_name")["spec"][
        "productionVariants"
    ][0]
    assert "modelName" not in variant
    assert variant["managedInstanceScaling"]["status"] == "ENABLED"
    assert variant["routingConfig"] == {"routingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    ic = _named("ack", "InferenceComponent", "ic_inference_component_name")["spec"]
    assert set(ic["specification"]["computeResourceRequirements"]) == {
        "numberOfCPUCoresRequired",
        "minMemoryRequiredInMb",
        "numberOfAcceleratorDevicesRequired",
    }
    assert ic["runtimeConfig"] == {"copyCount": int(values["ic_copy_count"])}


def test_async_endpoint_uses_the_crd_fields(schemas: SchemaIndex) -> None:
    """asyncInferenceConfig as ACK's EndpointConfig CRD spells it (not the API's PascalCase),
    with and without the optional SNS topics, and nothing of it in the operator's CRD."""
    values = render_manifests.load_values()
    cfg = _named("ack", "EndpointConfig", "async_endpoint_config_name")["spec"]
    assert cfg["asyncInferenceConfig"] == {
        "clientConfig": {
            "maxConcurrentInvocationsPerInstance": int(values["async_max_concurrent_invocations"])
        },
        "outputConfig": {
            "s3OutputPath": values["async_output_s3_uri"],
            "s3FailurePath": values["async_failure_s3_uri"],
        },
    }
    topics = {
        "successTopic": "arn:aws:sns:us-west-2:111122223333:maskserve-async-done",
        "errorTopic": "arn:aws:sns:us-west-2:111122223333:maskserve-async-failed",
    }
    with_topics = render_manifests.load_values(
        overrides=[
            f"async_success_topic_arn={topics['successTopic']}",
            f"async_error_topic_arn={topics['errorTopic']}",
        ]
    )
    docs = [d for i in render_manifests.render("ack", ["async"], with_topics) for d in i.documents]
    for doc in docs:
        if doc["apiVersion"].startswith(SAGEMAKER_GROUPS):
            assert errors_for(doc, schemas) == [], doc["kind"]
    cfg = next(d for d in docs if d["kind"] == "EndpointConfig")["spec"]
    assert cfg["asyncInferenceConfig"]["outputConfig"]["notificationConfig"] == topics
    # The old operator's HostingDeployment cannot express asynchronous inference at all, which
    # is why there is no operator template for it (and deploy.sh refuses operator async).
    hosting = schemas[("sagemaker.aws.amazon.com/v1", "HostingDeployment")]
    assert not [p for p in _property_names(hosting) if "async" in p.lower()]
    ack_config = schemas[("sagemaker.services.k8s.aws/v1alpha1", "EndpointConfig")]
    assert "asyncInferenceConfig" in ack_config["properties"]["spec"]["properties"]


def _property_names(schema: Any) -> list[str]:
    names: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names += list(value)
            names += _property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names += _property_names(value)
    return names


def _doc(flavor: str, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in sagemaker_docs(flavor) if d["kind"] == kind))


def _named(flavor: str, kind: str, name_key: str) -> dict[str, Any]:
    """A copy of the document of that kind whose name is the value name_key."""
    name = render_manifests.load_values()[name_key]
    docs = [d for d in sagemaker_docs(flavor) if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    assert len(docs) == 1, (kind, name)
    return copy.deepcopy(docs[0])


def _rename(container: dict[str, Any], old: str, new: str) -> None:
    container[new] = container.pop(old)


Mutation = Callable[[dict[str, Any]], None]

# Each of these is a real mistake when moving manifests between the operator and ACK; the
# schema must reject every one (so the positive test above proves something).
NEGATIVE: list[tuple[str, str, str, Mutation]] = [
    ("operator", "HostingDeployment", "no region", lambda d: d["spec"].pop("region")),
    (
        "operator",
        "HostingDeployment",
        "modelDataURL (ACK spelling)",
        lambda d: _rename(d["spec"]["models"][0]["containers"][0], "modelDataUrl", "modelDataURL"),
    ),
    (
        "operator",
        "HostingDeployment",
        "environment as a map",
        lambda d: d["spec"]["models"][0]["containers"][0].update(environment={"A": "1"}),
    ),
    (
        "operator",
        "HostingDeployment",
        "float variant weight",
        lambda d: d["spec"]["productionVariants"][0].update(initialVariantWeight=0.5),
    ),
    (
        "operator",
        "HostingDeployment",
        "instance count as a string",
        lambda d: d["spec"]["productionVariants"][0].update(initialInstanceCount="1"),
    ),
    (
        "operator",
        "TrainingJob",
        "roleARN (ACK spelling)",
        lambda d: _rename(d["spec"], "roleArn", "roleARN"),
    ),
    (
        "operator",
        "TrainingJob",
        "hyperParameters as a map",
        lambda d: d["spec"].update(hyperParameters={"epochs": "1"}),
    ),
    ("operator", "BatchTransformJob", "no modelName", lambda d: d["spec"].pop("modelName")),
    (
        "ack",
        "TrainingJob",
        "roleArn (operator spelling)",
        lambda d: _rename(d["spec"], "roleARN", "roleArn"),
    ),
    (
        "ack",
        "TrainingJob",
        "hyperParameters as a list",
        lambda d: d["spec"].update(hyperParameters=[{"name": "epochs", "value": "1"}]),
    ),
    ("ack", "TrainingJob", "no trainingJobName", lambda d: d["spec"].pop("trainingJobName")),
    (
        "ack",
        "Model",
        "environment as a list",
        lambda d: d["spec"]["primaryContainer"].update(environment=[{"name": "A", "value": "1"}]),
    ),
    ("ack", "Model", "region in spec", lambda d: d["spec"].update(region="us-west-2")),
    ("ack", "Endpoint", "no endpointConfigName", lambda d: d["spec"].pop("endpointConfigName")),
    (
        "ack",
        "EndpointConfig",
        "variant without modelName typo",
        lambda d: _rename(d["spec"]["productionVariants"][0], "modelName", "model"),
    ),
]


@pytest.mark.parametrize(
    ("flavor", "kind", "what", "mutate"), NEGATIVE, ids=[f"{n[0]}-{n[1]}-{n[2]}" for n in NEGATIVE]
)
def test_schema_rejects_broken_manifest(
    flavor: str, kind: str, what: str, mutate: Mutation, schemas: SchemaIndex
) -> None:
    doc = _doc(flavor, kind)
    mutate(doc)
    assert errors_for(doc, schemas), f"{flavor} {kind} with {what} was accepted"


def _ic_resources(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["specification"]["computeResourceRequirements"]


def _ic_variant(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["productionVariants"][0]


def _async(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["asyncInferenceConfig"]


# Mistakes in the multi-model and inference-component manifests, most of them the SageMaker
# API's spelling or fields that this CRD version does not have.
NEGATIVE_OTHER: list[tuple[str, str, str, str, Mutation]] = [
    (
        "operator",
        "HostingDeployment",
        "mme_endpoint_name",
        "mode not in the enum",
        lambda d: d["spec"]["models"][0]["containers"][0].update(mode="MultiModels"),
    ),
    (
        "operator",
        "HostingDeployment",
        "mme_endpoint_name",
        "multiModelConfig (ACK only)",
        lambda d: d["spec"]["models"][0]["containers"][0].update(
            multiModelConfig={"modelCacheSetting": "Enabled"}
        ),
    ),
    (
        "ack",
        "Model",
        "mme_model_name",
        "multiModelConfig with the API's capital M",
        lambda d: d["spec"]["primaryContainer"].update(
            multiModelConfig={"ModelCacheSetting": "Enabled"}
        ),
    ),
    (
        "ack",
        "EndpointConfig",
        "ic_endpoint_config_name",
        "managedInstanceScaling.scaleInPolicy (API, not in this CRD)",
        lambda d: _ic_variant(d)["managedInstanceScaling"].update(
            scaleInPolicy={"strategy": "IDLE_RELEASE"}
        ),
    ),
    (
        "ack",
        "EndpointConfig",
        "ic_endpoint_config_name",
        "executionRoleArn (API spelling)",
        lambda d: _rename(d["spec"], "executionRoleARN", "executionRoleArn"),
    ),
    (
        "ack",
        "InferenceComponent",
        "ic_inference_component_name",
        "numberOfCpuCoresRequired (API spelling)",
        lambda d: _rename(_ic_resources(d), "numberOfCPUCoresRequired", "numberOfCpuCoresRequired"),
    ),
    (
        "ack",
        "InferenceComponent",
        "ic_inference_component_name",
        "memory as a string",
        lambda d: _ic_resources(d).update(minMemoryRequiredInMb="8192"),
    ),
    (
        "ack",
        "InferenceComponent",
        "ic_inference_component_name",
        "copyCount in the specification",
        lambda d: d["spec"]["specification"].update(copyCount=1),
    ),
    (
        "ack",
        "InferenceComponent",
        "ic_inference_component_name",
        "desiredCopyCount (Describe's field)",
        lambda d: d["spec"]["runtimeConfig"].update(desiredCopyCount=1),
    ),
    (
        "ack",
        "InferenceComponent",
        "ic_inference_component_name",
        "no endpointName",
        lambda d: d["spec"].pop("endpointName"),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "S3OutputPath (API spelling)",
        lambda d: _rename(_async(d)["outputConfig"], "s3OutputPath", "S3OutputPath"),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "s3FailurePath as s3FailureURI",
        lambda d: _rename(_async(d)["outputConfig"], "s3FailurePath", "s3FailureURI"),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "outputConfig.kmsKeyId (API spelling)",
        lambda d: _async(d)["outputConfig"].update(kmsKeyId="alias/maskserve"),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "maxConcurrentInvocationsPerInstance as a string",
        lambda d: _async(d)["clientConfig"].update(maxConcurrentInvocationsPerInstance="2"),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "invocationTimeoutSeconds in clientConfig (a request parameter)",
        lambda d: _async(d)["clientConfig"].update(invocationTimeoutSeconds=3600),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "notificationConfig beside outputConfig",
        lambda d: _async(d).update(notificationConfig={"errorTopic": "arn:aws:sns:x"}),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "asyncInferenceConfig on the variant",
        lambda d: _ic_variant(d).update(asyncInferenceConfig=d["spec"].pop("asyncInferenceConfig")),
    ),
    (
        "ack",
        "EndpointConfig",
        "async_endpoint_config_name",
        "SNS topics as a list",
        lambda d: _async(d)["outputConfig"].update(
            notificationConfig={"errorTopic": ["arn:aws:sns:us-west-2:111122223333:t"]}
        ),
    ),
]


@pytest.mark.parametrize(
    ("flavor", "kind", "name_key", "what", "mutate"),
    NEGATIVE_OTHER,
    ids=[f"{n[0]}-{n[1]}-{n[3]}" for n in NEGATIVE_OTHER],
)
def test_schema_rejects_broken_other_endpoint(
    flavor: str, kind: str, name_key: str, what: str, mutate: Mutation, schemas: SchemaIndex
) -> None:
    doc = _named(flavor, kind, name_key)
    assert errors_for(doc, schemas) == []
    mutate(doc)
    assert errors_for(doc, schemas), f"{flavor} {kind} with {what} was accepted"

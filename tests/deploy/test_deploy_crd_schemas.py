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
    return [
        doc
        for item in render_manifests.render(flavor)
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
    }


def _doc(flavor: str, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in sagemaker_docs(flavor) if d["kind"] == kind))


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

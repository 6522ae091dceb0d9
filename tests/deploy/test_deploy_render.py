"""Every manifest renders from k8s/values.yaml and parses; values live in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import render_manifests as rm
import yaml

EXPECTED_KINDS = {
    "operator": ["Namespace", "TrainingJob", "HostingDeployment", "BatchTransformJob"],
    "ack": ["Namespace", "TrainingJob", "Model", "EndpointConfig", "Endpoint", "TransformJob"],
    "plain": [
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ],
}


# The other endpoints, rendered only when named: (kind, name value) in apply order.
OTHER_ENDPOINTS = {
    ("operator", "mme"): [("HostingDeployment", "mme_endpoint_name")],
    ("ack", "mme"): [
        ("Model", "mme_model_name"),
        ("EndpointConfig", "mme_endpoint_config_name"),
        ("Endpoint", "mme_endpoint_name"),
    ],
    ("ack", "ic"): [
        ("Model", "ic_model_name"),
        ("EndpointConfig", "ic_endpoint_config_name"),
        ("Endpoint", "ic_endpoint_name"),
        ("InferenceComponent", "ic_inference_component_name"),
    ],
    ("ack", "async"): [
        ("Model", "async_model_name"),
        ("EndpointConfig", "async_endpoint_config_name"),
        ("Endpoint", "async_endpoint_name"),
    ],
}


def test_flavor_renders_and_parses(flavor: str) -> None:
    rendered = rm.render(flavor)
    kinds = [doc["kind"] for item in rendered for doc in item.documents]
    assert kinds == EXPECTED_KINDS[flavor]
    for item in rendered:
        assert "${" not in item.text, item.name
        assert list(yaml.safe_load_all(item.text)) == item.documents


def test_every_component_renders_and_parses(flavor: str) -> None:
    values = rm.load_values()
    rendered = rm.render(flavor, rm.COMPONENTS)
    docs = [(d["kind"], d["metadata"]["name"]) for item in rendered for d in item.documents]
    # The default rendering first (file names sort in apply order), then the other endpoints.
    expected = [(d["kind"], d["metadata"]["name"]) for i in rm.render(flavor) for d in i.documents]
    for component in ("mme", "ic", "async"):
        expected += [
            (kind, values[key]) for kind, key in OTHER_ENDPOINTS.get((flavor, component), [])
        ]
    assert docs == expected
    for item in rendered:
        assert "${" not in item.text, item.name
        assert list(yaml.safe_load_all(item.text)) == item.documents


def test_templates_declare_known_components() -> None:
    declared: dict[str, set[str]] = {}
    for path in sorted(rm.TEMPLATES_DIR.rglob("*.yaml")):
        components = rm.template_components(path.read_text(encoding="utf-8"))
        assert components, f"{path.name}: no '# component:' header"
        assert components <= {*rm.COMPONENTS, rm.COMMON_COMPONENT}, path.name
        declared.setdefault(path.parent.name, set()).update(components)
    assert declared["ack"] == set(rm.COMPONENTS)
    # The operator has no inference components and no asyncInferenceConfig.
    assert declared["operator"] == {"train", "serve", "batch", "mme"}
    assert declared["plain"] == {"serve"}
    assert set(rm.DEFAULT_COMPONENTS) < set(rm.COMPONENTS)


def test_other_endpoints_have_their_own_names() -> None:
    """The multi-model, inference-component and async objects never overwrite the single-model
    ones."""
    values = rm.load_values()
    for group in (
        ("model_name", "mme_model_name", "ic_model_name", "async_model_name"),
        (
            "endpoint_config_name",
            "mme_endpoint_config_name",
            "ic_endpoint_config_name",
            "async_endpoint_config_name",
        ),
        ("endpoint_name", "mme_endpoint_name", "ic_endpoint_name", "async_endpoint_name"),
    ):
        assert len({values[key] for key in group}) == len(group), group


@pytest.mark.parametrize(
    ("flavor", "components", "kinds"),
    [
        ("operator", ["train"], ["Namespace", "TrainingJob"]),
        ("operator", ["serve"], ["Namespace", "HostingDeployment"]),
        ("ack", ["serve"], ["Namespace", "Model", "EndpointConfig", "Endpoint"]),
        ("ack", ["batch"], ["Namespace", "Model", "TransformJob"]),
        ("plain", ["train"], ["Namespace"]),
        ("operator", ["mme"], ["Namespace", "HostingDeployment"]),
        ("operator", ["ic"], ["Namespace"]),
        ("ack", ["mme"], ["Namespace", "Model", "EndpointConfig", "Endpoint"]),
        ("ack", ["ic"], ["Namespace", "Model", "EndpointConfig", "Endpoint", "InferenceComponent"]),
        ("plain", ["mme", "ic"], ["Namespace"]),
        ("operator", ["async"], ["Namespace"]),
        ("ack", ["async"], ["Namespace", "Model", "EndpointConfig", "Endpoint"]),
        ("plain", ["async"], ["Namespace"]),
    ],
)
def test_component_selection(flavor: str, components: list[str], kinds: list[str]) -> None:
    assert [d["kind"] for i in rm.render(flavor, components) for d in i.documents] == kinds


def test_one_edit_changes_region_everywhere() -> None:
    default = rm.load_values()
    values = rm.load_values(overrides=["region=eu-central-1"])
    for flavor in rm.FLAVORS:
        text = "".join(item.text for item in rm.render(flavor, rm.COMPONENTS, values))
        assert default["region"] not in text, flavor
        assert "eu-central-1" in text
    operator = [d for i in rm.render("operator", rm.COMPONENTS, values) for d in i.documents]
    assert {d["spec"]["region"] for d in operator if "region" in d.get("spec", {})} == {
        "eu-central-1"
    }
    hd = next(d for d in operator if d["kind"] == "HostingDeployment")
    image = hd["spec"]["models"][0]["containers"][0]["image"]
    assert image.startswith(f"{default['aws_account_id']}.dkr.ecr.eu-central-1.")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("aws_account_id", "444455556666"),
        ("bucket", "another-bucket-name"),
        ("image_tag", "9.9.9"),
        ("sagemaker_role_arn", "arn:aws:iam::444455556666:role/other"),
    ],
)
def test_one_edit_reaches_every_use(key: str, value: str) -> None:
    default = rm.load_values()
    values = rm.load_values(overrides=[f"{key}={value}"])
    for flavor in rm.FLAVORS:
        before = "".join(i.text for i in rm.render(flavor, rm.COMPONENTS, default))
        after = "".join(i.text for i in rm.render(flavor, rm.COMPONENTS, values))
        if default[key] in before:
            assert default[key] not in after, f"{flavor}: {key} still hard-coded somewhere"


def test_templates_hard_code_no_environment_values() -> None:
    for path in sorted(rm.TEMPLATES_DIR.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b\d{12}\b", text), f"{path.name}: account id"
        assert not re.search(r"\b[a-z]{2}-(east|west|north|south|central)\w*-\d\b", text), path.name
        assert not re.search(r"s3://[a-z0-9]", text), f"{path.name}: literal bucket"
        assert not re.search(r"arn:aws", text), f"{path.name}: literal ARN"
        assert not re.search(r"\bml\.[a-z0-9]+\.[a-z0-9]+\b", text), f"{path.name}: instance type"


def test_values_file_override_and_typos(tmp_path: Path) -> None:
    extra = tmp_path / "prod.yaml"
    extra.write_text("region: ap-southeast-2\nhosting_instance_count: 2\n", "utf-8")
    values = rm.load_values([extra])
    assert values["region"] == "ap-southeast-2"
    assert values["hosting_instance_count"] == "2"
    ack = [d for i in rm.render("ack", ["serve"], values) for d in i.documents]
    cfg = next(d for d in ack if d["kind"] == "EndpointConfig")
    assert cfg["spec"]["productionVariants"][0]["initialInstanceCount"] == 2
    typo = tmp_path / "typo.yaml"
    typo.write_text("regoin: eu-west-1\n", "utf-8")
    with pytest.raises(rm.RenderError, match="unknown value"):
        rm.load_values([typo])
    with pytest.raises(rm.RenderError, match="unknown value"):
        rm.load_values(overrides=["bukcet=x"])
    with pytest.raises(rm.RenderError, match="KEY=VALUE"):
        rm.load_values(overrides=["region"])


def test_reference_errors() -> None:
    with pytest.raises(rm.RenderError, match="circular"):
        rm.resolve({"a": "${b}", "b": "${a}"})
    with pytest.raises(rm.RenderError, match="unknown value 'c'"):
        rm.resolve({"a": "${c}"})
    assert rm.resolve({"a": "x", "b": "${a}-$${a}"}) == {"a": "x", "b": "x-$${a}"}


def _async_outputs(values: dict[str, str]) -> dict[str, object]:
    docs = [d for i in rm.render("ack", ["async"], values) for d in i.documents]
    cfg = next(d for d in docs if d["kind"] == "EndpointConfig")
    return cfg["spec"]["asyncInferenceConfig"]["outputConfig"]


def test_optional_lines_render_only_when_set() -> None:
    """`# when:` leaves the SNS topics out while their values are empty (SageMaker would get
    empty ARNs otherwise), and renders each one that is set, without the directive."""
    success = "arn:aws:sns:us-west-2:111122223333:maskserve-async-done"
    error = "arn:aws:sns:us-west-2:111122223333:maskserve-async-failed"
    values = rm.load_values()
    assert (values["async_success_topic_arn"], values["async_error_topic_arn"]) == ("", "")
    assert "notificationConfig" not in _async_outputs(values)
    only_error = rm.load_values(overrides=[f"async_error_topic_arn={error}"])
    assert _async_outputs(only_error)["notificationConfig"] == {"errorTopic": error}
    both = rm.load_values(
        overrides=[f"async_success_topic_arn={success}", f"async_error_topic_arn={error}"]
    )
    assert _async_outputs(both)["notificationConfig"] == {
        "successTopic": success,
        "errorTopic": error,
    }
    for flavor in rm.FLAVORS:
        for item in rm.render(flavor, rm.COMPONENTS, both):
            assert "when:" not in item.text, item.name


def test_optional_line_directive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "common" / "00-ns.yaml").write_text(
        "# component: common\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", "utf-8"
    )
    template = tmp_path / "plain" / "10-cm.yaml"
    template.write_text(
        "# component: serve\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata:\n"
        "  a: '${a}'  # when: a\n  b: '${b}'  # when: a b\n  c: c\n",
        "utf-8",
    )
    monkeypatch.setattr(rm, "TEMPLATES_DIR", tmp_path)

    def data(**values: str) -> dict[str, str]:
        docs = [d for i in rm.render("plain", ["serve"], values) for d in i.documents]
        return next(d for d in docs if d["kind"] == "ConfigMap")["data"]

    assert data(a="", b="") == {"c": "c"}
    assert data(a=" ", b="2") == {"b": "2", "c": "c"}
    assert data(a="1", b="") == {"a": "1", "b": "", "c": "c"}
    template.write_text(template.read_text("utf-8").replace("when: a b", "when: a nope"), "utf-8")
    with pytest.raises(rm.RenderError, match="nope"):
        data(a="1", b="2")


def test_unknown_placeholder_in_template_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "common" / "00-ns.yaml").write_text(
        "# component: common\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", "utf-8"
    )
    (tmp_path / "plain" / "10-cm.yaml").write_text(
        "# component: serve\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ${nope}}\n", "utf-8"
    )
    monkeypatch.setattr(rm, "TEMPLATES_DIR", tmp_path)
    with pytest.raises(rm.RenderError, match="nope"):
        rm.render("plain")


def test_cli_out_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert rm.main(["--flavor", "ack", "--component", "serve", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "20-model.yaml",
        "30-endpointconfig.yaml",
        "40-endpoint.yaml",
        "common-00-namespace.yaml",
    ]
    capsys.readouterr()
    assert rm.main(["--get", "serving_image_cpu", "--set", "image_tag=1.2.3"]) == 0
    assert capsys.readouterr().out.strip().endswith("/maskserve:1.2.3-cpu")
    assert rm.main(["--flavor", "plain"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == EXPECTED_KINDS["plain"]
    assert rm.main(["--flavor", "plain", "--set", "nope=1"]) == 1


def test_cli_other_endpoints_only_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["--flavor", "ack", "--out", str(out)]
    args += ["--component", "mme", "--component", "ic", "--component", "async"]
    assert rm.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "60-mme-model.yaml",
        "61-mme-endpointconfig.yaml",
        "62-mme-endpoint.yaml",
        "70-ic-model.yaml",
        "71-ic-endpointconfig.yaml",
        "72-ic-endpoint.yaml",
        "73-inferencecomponent.yaml",
        "80-async-model.yaml",
        "81-async-endpointconfig.yaml",
        "82-async-endpoint.yaml",
        "common-00-namespace.yaml",
    ]
    capsys.readouterr()
    assert rm.main(["--flavor", "ack"]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == EXPECTED_KINDS["ack"]  # all = train serve batch
    assert rm.main(["--flavor", "ack", "--component", "all", "--component", "ic"]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == [
        *EXPECTED_KINDS["ack"],
        "Model",
        "EndpointConfig",
        "Endpoint",
        "InferenceComponent",
    ]

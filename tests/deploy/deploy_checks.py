"""The project's own checks of the rendered manifests.

These run whether or not the published CRDs are available: required fields and value formats
per kind (mirroring the CRDs' `required` lists, plus the controllers' own rules that no schema
expresses), and cross-references between objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

OPERATOR = "sagemaker.aws.amazon.com/v1"
ACK = "sagemaker.services.k8s.aws/v1alpha1"

# The release CRDs of the old operator carry this roleArn pattern; the bare ones do not.
ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
ECR_IMAGE = re.compile(
    r"^\d{12}\.dkr\.ecr\.[a-z0-9\-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/\-]+:[A-Za-z0-9._\-]+$"
)
ML_INSTANCE = re.compile(r"^ml\.[a-z0-9\-]+\.[a-z0-9]+$")
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

# Environment variables the server or the platform define (docs: sagemaker-contract §1.2).
KNOWN_SAGEMAKER_ENV = {
    "SAGEMAKER_BIND_TO_PORT",
    "SAGEMAKER_SAFE_PORT_RANGE",
    "SAGEMAKER_MULTI_MODEL",
    "SAGEMAKER_BATCH",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "SAGEMAKER_BATCH_STRATEGY",
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    "SAGEMAKER_PROGRAM",
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
    "SAGEMAKER_STARTUP_TIMEOUT",
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
    "SAGEMAKER_CONTAINER_LOG_LEVEL",
}

MISSING = object()
Check = Callable[[Any], str | None]


def _is_str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _pattern(rx: re.Pattern[str], what: str) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not rx.match(v):
            return f"{v!r} is not {what}"
        return None

    return check


def _positive_int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return f"{v!r} must be an integer >= 1"
    return None


def _int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) else f"{v!r} must be an integer"


def _number(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return None if ok else f"{v!r} must be a number"


def _model_archive(v: Any) -> str | None:
    if not isinstance(v, str) or not S3_URI.match(v) or not v.endswith(".tar.gz"):
        return f"{v!r} must be an s3:// URI of a .tar.gz archive"
    return None


def _s3_prefix(v: Any) -> str | None:
    if not isinstance(v, str) or not S3_URI.match(v) or not v.endswith("/"):
        return f"{v!r} must be an s3:// prefix ending in '/'"
    return None


def _name_value_list(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of {name, value} (old operator)"
    for item in v:
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            return f"item {item!r} must have exactly name and value"
        if not isinstance(item["name"], str) or not isinstance(item["value"], str):
            return f"item {item!r}: name and value must be strings"
    return None


def _string_map(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be a map of string to string (ACK)"
    for key, value in v.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"entry {key!r}: {value!r} must map a string to a string"
    return None


is_role = _pattern(ROLE_ARN, "an IAM role ARN")
is_s3 = _pattern(S3_URI, "an s3:// URI")
is_image = _pattern(ECR_IMAGE, "an ECR image URI with a tag")
is_instance = _pattern(ML_INSTANCE, "an ml.* instance type")
is_sm_name = _pattern(SAGEMAKER_NAME, "a SageMaker name (alphanumerics and '-', <= 63)")
is_region = _pattern(REGION, "an AWS region")


def _in(*allowed: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"{v!r} not in {allowed}"

    return check


# (apiVersion, kind) -> {path: check}. Every listed path is required. `[]` walks a list.
RULES: dict[tuple[str, str], dict[str, Check]] = {
    (OPERATOR, "TrainingJob"): {
        "spec.region": is_region,
        "spec.roleArn": is_role,
        "spec.trainingJobName": is_sm_name,
        "spec.algorithmSpecification.trainingImage": is_image,
        "spec.algorithmSpecification.trainingInputMode": _in("File", "Pipe"),
        "spec.hyperParameters": _name_value_list,
        "spec.inputDataConfig[].channelName": _is_str,
        "spec.inputDataConfig[].dataSource.s3DataSource.s3DataType": _in(
            "S3Prefix", "ManifestFile", "AugmentedManifestFile"
        ),
        "spec.inputDataConfig[].dataSource.s3DataSource.s3Uri": _s3_prefix,
        "spec.outputDataConfig.s3OutputPath": _s3_prefix,
        "spec.checkpointConfig.s3Uri": _s3_prefix,
        "spec.resourceConfig.instanceCount": _positive_int,
        "spec.resourceConfig.instanceType": is_instance,
        "spec.resourceConfig.volumeSizeInGB": _positive_int,
        "spec.stoppingCondition.maxRuntimeInSeconds": _positive_int,
    },
    (OPERATOR, "HostingDeployment"): {
        "spec.region": is_region,
        "spec.endpointName": is_sm_name,
        "spec.productionVariants[].variantName": is_sm_name,
        "spec.productionVariants[].modelName": is_sm_name,
        "spec.productionVariants[].initialInstanceCount": _positive_int,
        "spec.productionVariants[].instanceType": is_instance,
        "spec.productionVariants[].initialVariantWeight": _int,
        "spec.models[].name": is_sm_name,
        "spec.models[].executionRoleArn": is_role,
        "spec.models[].containers[].containerHostname": _is_str,
        "spec.models[].containers[].image": is_image,
        "spec.models[].containers[].modelDataUrl": _model_archive,
        "spec.models[].containers[].environment": _name_value_list,
    },
    (OPERATOR, "BatchTransformJob"): {
        "spec.region": is_region,
        "spec.transformJobName": is_sm_name,
        "spec.modelName": is_sm_name,
        "spec.environment": _name_value_list,
        "spec.transformInput.dataSource.s3DataSource.s3DataType": _in("S3Prefix", "ManifestFile"),
        "spec.transformInput.dataSource.s3DataSource.s3Uri": _s3_prefix,
        "spec.transformOutput.s3OutputPath": _s3_prefix,
        "spec.transformResources.instanceCount": _positive_int,
        "spec.transformResources.instanceType": is_instance,
    },
    (ACK, "TrainingJob"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.trainingJobName": is_sm_name,
        "spec.roleARN": is_role,
        "spec.algorithmSpecification.trainingImage": is_image,
        "spec.algorithmSpecification.trainingInputMode": _in("File", "Pipe", "FastFile"),
        "spec.hyperParameters": _string_map,
        "spec.inputDataConfig[].channelName": _is_str,
        "spec.inputDataConfig[].dataSource.s3DataSource.s3DataType": _in(
            "S3Prefix", "ManifestFile", "AugmentedManifestFile"
        ),
        "spec.inputDataConfig[].dataSource.s3DataSource.s3URI": _s3_prefix,
        "spec.outputDataConfig.s3OutputPath": _s3_prefix,
        "spec.checkpointConfig.s3URI": _s3_prefix,
        "spec.resourceConfig.instanceCount": _positive_int,
        "spec.resourceConfig.instanceType": is_instance,
        "spec.resourceConfig.volumeSizeInGB": _positive_int,
        "spec.stoppingCondition.maxRuntimeInSeconds": _positive_int,
    },
    (ACK, "Model"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.modelName": is_sm_name,
        "spec.executionRoleARN": is_role,
        "spec.primaryContainer.containerHostname": _is_str,
        "spec.primaryContainer.image": is_image,
        "spec.primaryContainer.modelDataURL": _model_archive,
        "spec.primaryContainer.environment": _string_map,
    },
    (ACK, "EndpointConfig"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.endpointConfigName": is_sm_name,
        "spec.productionVariants[].variantName": is_sm_name,
        "spec.productionVariants[].modelName": is_sm_name,
        "spec.productionVariants[].initialInstanceCount": _positive_int,
        "spec.productionVariants[].instanceType": is_instance,
        "spec.productionVariants[].initialVariantWeight": _number,
    },
    (ACK, "Endpoint"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.endpointName": is_sm_name,
        "spec.endpointConfigName": is_sm_name,
    },
    (ACK, "TransformJob"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.transformJobName": is_sm_name,
        "spec.modelName": is_sm_name,
        "spec.environment": _string_map,
        "spec.transformInput.dataSource.s3DataSource.s3DataType": _in("S3Prefix", "ManifestFile"),
        "spec.transformInput.dataSource.s3DataSource.s3URI": _s3_prefix,
        "spec.transformOutput.s3OutputPath": _s3_prefix,
        "spec.transformResources.instanceCount": _positive_int,
        "spec.transformResources.instanceType": is_instance,
    },
}


def _split(path: str) -> list[str]:
    parts = re.split(r"(?<!\\)\.", path)
    return [p.replace("\\.", ".") for p in parts]


def walk(doc: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (concrete path, value or MISSING) for a dotted path with `[]` list steps."""

    def go(node: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
        if not parts:
            yield where, node
            return
        head, rest = parts[0], parts[1:]
        is_list = head.endswith("[]")
        key = head[:-2] if is_list else head
        here = f"{where}.{key}" if where else key
        if not isinstance(node, dict) or key not in node:
            yield here, MISSING
            return
        child = node[key]
        if not is_list:
            yield from go(child, rest, here)
            return
        if not isinstance(child, list) or not child:
            yield here, MISSING
            return
        for i, item in enumerate(child):
            yield from go(item, rest, f"{here}[{i}]")

    yield from go(doc, _split(path), "")


def _ident(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def sagemaker_env_names(doc: dict[str, Any]) -> Iterator[str]:
    """Names of the environment variables a SageMaker CR or a pod spec sets."""
    spec = doc.get("spec", {})
    envs: list[Any] = [spec.get("environment")]
    envs += [c.get("environment") for m in spec.get("models", []) for c in m.get("containers", [])]
    envs.append(spec.get("primaryContainer", {}).get("environment"))
    pod = spec.get("template", {}).get("spec", {})
    envs += [c.get("env") for c in pod.get("containers", []) + pod.get("initContainers", [])]
    for env in envs:
        if isinstance(env, dict):
            yield from (str(k) for k in env)
        elif isinstance(env, list):
            yield from (str(e.get("name")) for e in env if isinstance(e, dict))


def check_document(doc: dict[str, Any]) -> list[str]:
    """Required fields, formats and naming for one manifest."""
    errors: list[str] = []
    ident = _ident(doc)
    name = doc.get("metadata", {}).get("name")
    if not isinstance(name, str) or not K8S_NAME.match(name):
        errors.append(f"{ident}: metadata.name {name!r} is not a valid Kubernetes name")
    if doc.get("kind") != "Namespace" and not doc.get("metadata", {}).get("namespace"):
        errors.append(f"{ident}: metadata.namespace is not set")
    for path, check in RULES.get((doc.get("apiVersion", ""), doc.get("kind", "")), {}).items():
        for where, value in walk(doc, path):
            if value is MISSING:
                errors.append(f"{ident}: {where} is required")
                continue
            problem = check(value)
            if problem:
                errors.append(f"{ident}: {where}: {problem}")
    for env in sagemaker_env_names(doc):
        if env.startswith("SAGEMAKER_") and env not in KNOWN_SAGEMAKER_ENV:
            errors.append(f"{ident}: unknown SageMaker environment variable {env!r}")
    return errors


def _by_kind(docs: Iterable[dict[str, Any]], api: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("apiVersion") == api and d.get("kind") == kind]


def check_sagemaker_references(docs: list[dict[str, Any]]) -> list[str]:
    """Cross-references between SageMaker CRs that neither CRD schema can express."""
    errors: list[str] = []
    for hd in _by_kind(docs, OPERATOR, "HostingDeployment"):
        ident = _ident(hd)
        spec = hd.get("spec", {})
        names = [m.get("name") for m in spec.get("models", [])]
        if len(names) != len(set(names)):
            errors.append(f"{ident}: model names are not unique: {names}")
        for m in spec.get("models", []):
            hosts = [c.get("containerHostname") for c in m.get("containers", [])]
            if not m.get("containers"):
                errors.append(f"{ident}: model {m.get('name')!r} has no containers")
            if any(not h for h in hosts):
                errors.append(f"{ident}: model {m.get('name')!r}: every container needs a hostname")
            if len(hosts) != len(set(hosts)):
                errors.append(f"{ident}: model {m.get('name')!r}: hostnames not unique: {hosts}")
        variants = [v.get("variantName") for v in spec.get("productionVariants", [])]
        if len(variants) != len(set(variants)):
            errors.append(f"{ident}: variant names are not unique: {variants}")
        for v in spec.get("productionVariants", []):
            if v.get("modelName") not in names:
                errors.append(
                    f"{ident}: variant {v.get('variantName')!r} names model "
                    f"{v.get('modelName')!r}, not one of {names}"
                )

    models = {m["spec"].get("modelName") for m in _by_kind(docs, ACK, "Model") if "spec" in m}
    configs = {
        c["spec"].get("endpointConfigName")
        for c in _by_kind(docs, ACK, "EndpointConfig")
        if "spec" in c
    }
    for cfg in _by_kind(docs, ACK, "EndpointConfig"):
        for v in cfg.get("spec", {}).get("productionVariants", []):
            if v.get("modelName") not in models:
                errors.append(
                    f"{_ident(cfg)}: variant {v.get('variantName')!r} names Model "
                    f"{v.get('modelName')!r}, not one of {sorted(map(str, models))}"
                )
    for ep in _by_kind(docs, ACK, "Endpoint"):
        if ep.get("spec", {}).get("endpointConfigName") not in configs:
            errors.append(
                f"{_ident(ep)}: endpointConfigName {ep.get('spec', {}).get('endpointConfigName')!r}"
                f" names no EndpointConfig in {sorted(map(str, configs))}"
            )
    for tj in _by_kind(docs, ACK, "TransformJob"):
        if models and tj.get("spec", {}).get("modelName") not in models:
            errors.append(f"{_ident(tj)}: modelName names no Model in {sorted(map(str, models))}")
    for m in _by_kind(docs, ACK, "Model"):
        containers = [m.get("spec", {}).get("primaryContainer")]
        containers += m.get("spec", {}).get("containers", [])
        for c in filter(None, containers):
            if not c.get("containerHostname"):
                errors.append(f"{_ident(m)}: every container needs a containerHostname")

    # The model archive served is the one the training job writes.
    outputs: set[str] = set()
    for api in (OPERATOR, ACK):
        for tj in _by_kind(docs, api, "TrainingJob"):
            spec = tj.get("spec", {})
            base = spec.get("outputDataConfig", {}).get("s3OutputPath", "")
            outputs.add(f"{base.rstrip('/')}/{spec.get('trainingJobName')}/output/model.tar.gz")
    if outputs:
        urls = [
            c.get("modelDataUrl")
            for hd in _by_kind(docs, OPERATOR, "HostingDeployment")
            for m in hd.get("spec", {}).get("models", [])
            for c in m.get("containers", [])
        ]
        urls += [
            m.get("spec", {}).get("primaryContainer", {}).get("modelDataURL")
            for m in _by_kind(docs, ACK, "Model")
        ]
        for url in urls:
            if url not in outputs:
                errors.append(f"model data {url!r} is not a training job's output {outputs}")
    return errors


def _container_port(container: dict[str, Any], port: Any) -> int | None:
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return int(p["containerPort"])
    return None


def _matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_plain_references(docs: list[dict[str, Any]]) -> list[str]:
    """Deployment / Service / HPA / PDB / ServiceAccount consistency."""
    errors: list[str] = []
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if not deployments:
        return ["no Deployment"]
    for dep in deployments:
        ident = _ident(dep)
        spec = dep.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if not _matches(spec.get("selector", {}).get("matchLabels", {}), labels):
            errors.append(f"{ident}: selector does not match the pod template labels")
        containers = pod.get("containers", [])
        server = next((c for c in containers if c.get("name") == "maskserve"), None)
        if server is None:
            errors.append(f"{ident}: no container named maskserve")
            continue
        if server.get("args", ["serve"])[:1] != ["serve"]:
            errors.append(f"{ident}: maskserve must be started with `serve`")
        if _container_port(server, 8080) != 8080:
            errors.append(f"{ident}: maskserve must expose containerPort 8080")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = server.get(probe, {}).get("httpGet")
            if not get:
                errors.append(f"{ident}: {probe} must be an httpGet probe")
                continue
            if get.get("path") != "/ping":
                errors.append(f"{ident}: {probe} path {get.get('path')!r} is not /ping")
            if _container_port(server, get.get("port")) != 8080:
                errors.append(f"{ident}: {probe} port {get.get('port')!r} is not container 8080")
            if server[probe].get("timeoutSeconds", 1) > 2:
                errors.append(f"{ident}: {probe} timeout above SageMaker's 2 s for /ping")
        limits = server.get("resources", {}).get("limits", {})
        requests = server.get("resources", {}).get("requests", {})
        if int(limits.get("nvidia.com/gpu", 0)) < 1:
            errors.append(f"{ident}: limits need nvidia.com/gpu >= 1")
        if "cpu" not in requests:
            errors.append(f"{ident}: requests.cpu is needed for CPU-utilization autoscaling")
        if not pod.get("nodeSelector"):
            errors.append(f"{ident}: no GPU nodeSelector")
        command = server.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        sleep_s = int(command[1]) if command and command[0] == "sleep" else None
        if sleep_s is None:
            errors.append(f"{ident}: preStop must sleep so endpoints drain before SIGTERM")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < 30 or (sleep_s is not None and grace < sleep_s + 25):
            errors.append(
                f"{ident}: terminationGracePeriodSeconds {grace} leaves no time to drain "
                f"(preStop {sleep_s} s + 25 s shutdown)"
            )
        volumes = {v.get("name") for v in pod.get("volumes", [])}
        mounts: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for c in containers + pod.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                if m.get("name") not in volumes:
                    errors.append(f"{ident}: {c.get('name')} mounts unknown volume {m.get('name')}")
                mounts.setdefault(m.get("mountPath"), []).append((c.get("name"), m))
        model_mounts = mounts.get("/opt/ml/model", [])
        if not any(name == "maskserve" for name, _ in model_mounts):
            errors.append(f"{ident}: maskserve does not mount /opt/ml/model")
        writers = [n for n, m in model_mounts if n != "maskserve" and not m.get("readOnly")]
        uses_pvc = any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
        if not writers and not uses_pvc:
            errors.append(f"{ident}: nothing fills /opt/ml/model (init container or PVC)")
        sa = pod.get("serviceAccountName")
        if sa and not any(
            d.get("kind") == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs
        ):
            errors.append(f"{ident}: serviceAccountName {sa!r} names no ServiceAccount")

        hpas = [
            h
            for h in docs
            if h.get("kind") == "HorizontalPodAutoscaler"
            and h.get("spec", {}).get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"]
        ]
        for hpa in hpas:
            ref = hpa["spec"]["scaleTargetRef"]
            if (ref.get("apiVersion"), ref.get("kind")) != ("apps/v1", "Deployment"):
                errors.append(f"{_ident(hpa)}: scaleTargetRef must be apps/v1 Deployment")
            if not 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"].get("maxReplicas", 0):
                errors.append(f"{_ident(hpa)}: need 1 <= minReplicas <= maxReplicas")
            if "replicas" in spec:
                errors.append(f"{ident}: spec.replicas would fight the HPA on every apply")
        for svc in (d for d in docs if d.get("kind") == "Service"):
            if not _matches(svc.get("spec", {}).get("selector", {}), labels):
                errors.append(f"{_ident(svc)}: selector does not select {ident}'s pods")
            for port in svc.get("spec", {}).get("ports", []):
                if _container_port(server, port.get("targetPort")) != 8080:
                    errors.append(f"{_ident(svc)}: targetPort {port.get('targetPort')!r} != 8080")
        for pdb in (d for d in docs if d.get("kind") == "PodDisruptionBudget"):
            if not _matches(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels):
                errors.append(f"{_ident(pdb)}: selector does not select {ident}'s pods")
    if not any(d.get("kind") == "HorizontalPodAutoscaler" for d in docs):
        errors.append("no HorizontalPodAutoscaler")
    if not any(d.get("kind") == "Service" for d in docs):
        errors.append("no Service")
    return errors


def check_namespaces(docs: list[dict[str, Any]]) -> list[str]:
    """Every namespaced object lives in the rendered Namespace."""
    names = {d["metadata"]["name"] for d in docs if d.get("kind") == "Namespace"}
    return [
        f"{_ident(d)}: namespace {d['metadata'].get('namespace')!r} is not in {sorted(names)}"
        for d in docs
        if d.get("kind") != "Namespace" and d["metadata"].get("namespace") not in names
    ]


def check_all(docs: list[dict[str, Any]]) -> list[str]:
    """Every check that applies to a set of rendered manifests of one flavor."""
    errors = [e for d in docs for e in check_document(d)]
    errors += check_namespaces(docs)
    errors += check_sagemaker_references(docs)
    if any(d.get("kind") == "Deployment" for d in docs):
        errors += check_plain_references(docs)
    return errors

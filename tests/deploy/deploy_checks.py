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
# CreateInferenceComponent's pattern (at most 63 characters).
INFERENCE_COMPONENT_NAME = re.compile(r"^(?=.{1,63}$)[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
SNS_TOPIC = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z]{2}(-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_\-]{1,256}$")
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

# maskserve's own variables that a manifest may set: each is a clap `env` of src/config.rs
# (test_deploy_manifests checks that it still is), so a misspelt one fails here rather than
# being ignored by the server.
KNOWN_MASKSERVE_ENV = {
    "MASKSERVE_LOG",
    "MASKSERVE_LOG_JSON",
    "MASKSERVE_MODEL_DIR",
    "MASKSERVE_DEVICE",
    "MASKSERVE_THREADS",
    "MASKSERVE_SESSIONS",
    "MASKSERVE_CPU_THREADS",
    "MASKSERVE_MAX_BATCH_SIZE",
    "MASKSERVE_MAX_BATCH_DELAY_MS",
    "MASKSERVE_MAX_PIXELS",
    "MASKSERVE_LAYOUT",
    "MASKSERVE_ROI_ALIGN",
    "MASKSERVE_BIND_HOST",
    "MASKSERVE_BODY_TIMEOUT",
    "MASKSERVE_MAX_PAYLOAD_BYTES",
    "MASKSERVE_MAX_HEADER_BYTES",
    "MASKSERVE_MAX_INSTANCES",
    "MASKSERVE_QUEUE_SIZE",
    "MASKSERVE_HTTP_WORKERS",
    "MASKSERVE_METRICS_PORT",
    "MASKSERVE_SHUTDOWN_TIMEOUT",
    "MASKSERVE_MODELS_MEMORY_MB",
    "MASKSERVE_MODELS_GPU_MEMORY_MB",
}

# Asynchronous inference: SageMaker takes payloads of up to 1 GB and allows an invocation up
# to 3600 s. The Model behind an async variant sets each of these (the real-time defaults,
# 6 MiB, 60 s, 15 s and 40 megapixels, would refuse the requests async exists for).
ASYNC_MAX_PAYLOAD_BYTES = 1 << 30
ASYNC_MAX_TIMEOUT_S = 3600
ASYNC_ENV = (
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "MASKSERVE_MAX_PAYLOAD_BYTES",
    "MASKSERVE_BODY_TIMEOUT",
    "MASKSERVE_MAX_PIXELS",
)
ASYNC_OUTPUT = "spec.asyncInferenceConfig.outputConfig"

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


def _non_negative_int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return f"{v!r} must be an integer >= 0"
    return None


def _positive_number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        return f"{v!r} must be a number > 0"
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
is_ic_name = _pattern(INFERENCE_COMPONENT_NAME, "an inference component name (<= 63)")
is_sns_topic = _pattern(SNS_TOPIC, "an SNS topic ARN")


def _in(*allowed: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"{v!r} not in {allowed}"

    return check


IC_RESOURCES = "spec.specification.computeResourceRequirements"
IC_STARTUP = "spec.specification.startupParameters"
MODES = ("SingleModel", "MultiModel")

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
        # An archive, or a prefix in MultiModel mode: see check_model_containers.
        "spec.models[].containers[].modelDataUrl": is_s3,
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
        # An archive, or a prefix in MultiModel mode: see check_model_containers.
        "spec.primaryContainer.modelDataURL": is_s3,
        "spec.primaryContainer.environment": _string_map,
    },
    (ACK, "EndpointConfig"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.endpointConfigName": is_sm_name,
        "spec.productionVariants[].variantName": is_sm_name,
        # No modelName here: a variant for inference components names none (see OPTIONAL).
        "spec.productionVariants[].initialInstanceCount": _positive_int,
        "spec.productionVariants[].instanceType": is_instance,
    },
    (ACK, "Endpoint"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.endpointName": is_sm_name,
        "spec.endpointConfigName": is_sm_name,
    },
    (ACK, "InferenceComponent"): {
        "metadata.annotations.services\\.k8s\\.aws/region": is_region,
        "spec.inferenceComponentName": is_ic_name,
        "spec.endpointName": is_sm_name,
        # Optional in the CRD and the API; required here, so that it names its variant.
        "spec.variantName": is_sm_name,
        "spec.specification.modelName": is_sm_name,
        f"{IC_RESOURCES}.numberOfCPUCoresRequired": _positive_number,
        f"{IC_RESOURCES}.minMemoryRequiredInMb": _positive_int,
        # 0 is allowed (scale to zero).
        "spec.runtimeConfig.copyCount": _non_negative_int,
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


# The same, for paths that are checked only where present.
OPTIONAL: dict[tuple[str, str], dict[str, Check]] = {
    (OPERATOR, "HostingDeployment"): {
        "spec.models[].containers[].mode": _in(*MODES),
    },
    (ACK, "Model"): {
        "spec.primaryContainer.mode": _in(*MODES),
        "spec.primaryContainer.multiModelConfig.modelCacheSetting": _in("Enabled", "Disabled"),
        "spec.containers[].mode": _in(*MODES),
    },
    (ACK, "EndpointConfig"): {
        "spec.executionRoleARN": is_role,
        "spec.productionVariants[].modelName": is_sm_name,
        "spec.productionVariants[].initialVariantWeight": _number,
        "spec.productionVariants[].managedInstanceScaling.status": _in("ENABLED", "DISABLED"),
        "spec.productionVariants[].managedInstanceScaling.minInstanceCount": _non_negative_int,
        "spec.productionVariants[].managedInstanceScaling.maxInstanceCount": _positive_int,
        "spec.productionVariants[].routingConfig.routingStrategy": _in(
            "LEAST_OUTSTANDING_REQUESTS", "RANDOM"
        ),
        f"{ASYNC_OUTPUT}.s3OutputPath": _s3_prefix,
        f"{ASYNC_OUTPUT}.s3FailurePath": _s3_prefix,
        f"{ASYNC_OUTPUT}.notificationConfig.successTopic": is_sns_topic,
        f"{ASYNC_OUTPUT}.notificationConfig.errorTopic": is_sns_topic,
        "spec.asyncInferenceConfig.clientConfig.maxConcurrentInvocationsPerInstance": (
            _positive_int
        ),
    },
    (ACK, "InferenceComponent"): {
        f"{IC_RESOURCES}.numberOfAcceleratorDevicesRequired": _positive_number,
        f"{IC_RESOURCES}.maxMemoryRequiredInMb": _positive_int,
        f"{IC_STARTUP}.containerStartupHealthCheckTimeoutInSeconds": _positive_int,
        f"{IC_STARTUP}.modelDataDownloadTimeoutInSeconds": _positive_int,
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
    envs += [c.get("environment") for c in spec.get("containers", []) if isinstance(c, dict)]
    envs.append(spec.get("specification", {}).get("container", {}).get("environment"))
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
    for path, check in OPTIONAL.get((doc.get("apiVersion", ""), doc.get("kind", "")), {}).items():
        for where, value in walk(doc, path):
            problem = None if value is MISSING else check(value)
            if problem:
                errors.append(f"{ident}: {where}: {problem}")
    for env in sagemaker_env_names(doc):
        if env.startswith("SAGEMAKER_") and env not in KNOWN_SAGEMAKER_ENV:
            errors.append(f"{ident}: unknown SageMaker environment variable {env!r}")
        if env.startswith("MASKSERVE_") and env not in KNOWN_MASKSERVE_ENV:
            errors.append(f"{ident}: unknown maskserve environment variable {env!r}")
    errors += check_model_containers(doc)
    errors += _check_variants(doc)
    return errors


def model_containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str, Any]]:
    """(where, container, its model data field, its environment as a map) for each container of
    a HostingDeployment's models (old operator) or of an ACK Model."""
    spec = doc.get("spec", {})
    if (doc.get("apiVersion"), doc.get("kind")) == (OPERATOR, "HostingDeployment"):
        for i, model in enumerate(spec.get("models", [])):
            for j, c in enumerate(model.get("containers", [])):
                env = c.get("environment")
                if isinstance(env, list):
                    env = {e.get("name"): e.get("value") for e in env if isinstance(e, dict)}
                yield f"spec.models[{i}].containers[{j}]", c, "modelDataUrl", env or {}
    elif (doc.get("apiVersion"), doc.get("kind")) == (ACK, "Model"):
        found = [("spec.primaryContainer", spec.get("primaryContainer"))]
        found += [(f"spec.containers[{j}]", c) for j, c in enumerate(spec.get("containers", []))]
        for where, c in found:
            if isinstance(c, dict):
                env = c.get("environment")
                yield where, c, "modelDataURL", env if isinstance(env, dict) else {}


def is_multi_model(container: dict[str, Any]) -> bool:
    return container.get("mode") == "MultiModel"


def check_model_containers(doc: dict[str, Any]) -> list[str]:
    """A single-model container gets a .tar.gz and no SAGEMAKER_MULTI_MODEL=true; a MultiModel
    one an S3 prefix ending in '/' and SAGEMAKER_MULTI_MODEL=true (the server's mode switch)."""
    errors: list[str] = []
    ident = _ident(doc)
    for where, c, url_key, env in model_containers(doc):
        url = c.get(url_key)
        flag = env.get("SAGEMAKER_MULTI_MODEL")
        if is_multi_model(c):
            problem = _s3_prefix(url)
            if problem:
                errors.append(f"{ident}: {where}.{url_key} (MultiModel): {problem}")
            if flag != "true":
                errors.append(
                    f"{ident}: {where}: a MultiModel container needs SAGEMAKER_MULTI_MODEL=true, "
                    f"not {flag!r}"
                )
            continue
        problem = None if url is None else _model_archive(url)
        if problem:
            errors.append(f"{ident}: {where}.{url_key}: {problem}")
        if flag is not None and flag != "false":
            errors.append(
                f"{ident}: {where}: SAGEMAKER_MULTI_MODEL={flag!r} in a single-model container "
                "(set mode: MultiModel, or drop the variable)"
            )
        if "multiModelConfig" in c:
            errors.append(f"{ident}: {where}: multiModelConfig needs mode: MultiModel")
    return errors


def _check_variants(doc: dict[str, Any]) -> list[str]:
    """ACK EndpointConfig variants: each names a model, or none (inference components, which
    need the config's executionRoleARN); managed instance scaling bounds in order."""
    if (doc.get("apiVersion"), doc.get("kind")) != (ACK, "EndpointConfig"):
        return []
    errors: list[str] = []
    spec = doc.get("spec", {})
    for i, v in enumerate(spec.get("productionVariants", [])):
        where = f"{_ident(doc)}: spec.productionVariants[{i}]"
        if "modelName" not in v and not spec.get("executionRoleARN"):
            errors.append(
                f"{where} names no model (inference components), so the EndpointConfig needs "
                "executionRoleARN"
            )
        scaling = v.get("managedInstanceScaling") or {}
        bounds = (
            scaling.get("minInstanceCount", 0),
            v.get("initialInstanceCount"),
            scaling.get("maxInstanceCount"),
        )
        low, initial, high = bounds
        if all(isinstance(b, int) for b in bounds) and not low <= initial <= high:
            errors.append(
                f"{where}: need minInstanceCount {low} <= initialInstanceCount {initial} "
                f"<= maxInstanceCount {high}"
            )
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
            # A variant without a model hosts inference components (check_inference_components).
            if "modelName" in v and v.get("modelName") not in models:
                errors.append(
                    f"{_ident(cfg)}: variant {v.get('variantName')!r} names Model "
                    f"{v.get('modelName')!r}, not one of {sorted(map(str, models))}"
                )
    used: set[Any] = set()
    for ep in _by_kind(docs, ACK, "Endpoint"):
        used.add(ep.get("spec", {}).get("endpointConfigName"))
        if ep.get("spec", {}).get("endpointConfigName") not in configs:
            errors.append(
                f"{_ident(ep)}: endpointConfigName {ep.get('spec', {}).get('endpointConfigName')!r}"
                f" names no EndpointConfig in {sorted(map(str, configs))}"
            )
    for cfg in _by_kind(docs, ACK, "EndpointConfig"):
        if cfg.get("spec", {}).get("endpointConfigName") not in used:
            errors.append(f"{_ident(cfg)}: is used by no Endpoint (another one's config?)")
    for tj in _by_kind(docs, ACK, "TransformJob"):
        if models and tj.get("spec", {}).get("modelName") not in models:
            errors.append(f"{_ident(tj)}: modelName names no Model in {sorted(map(str, models))}")
    for m in _by_kind(docs, ACK, "Model"):
        containers = [m.get("spec", {}).get("primaryContainer")]
        containers += m.get("spec", {}).get("containers", [])
        for c in filter(None, containers):
            if not c.get("containerHostname"):
                errors.append(f"{_ident(m)}: every container needs a containerHostname")

    errors += check_inference_components(docs)
    errors += check_async_endpoints(docs)

    # The model archive served is the one the training job writes (a multi-model endpoint's
    # prefix holds the archives copied there, any number of them).
    outputs: set[str] = set()
    for api in (OPERATOR, ACK):
        for tj in _by_kind(docs, api, "TrainingJob"):
            spec = tj.get("spec", {})
            base = spec.get("outputDataConfig", {}).get("s3OutputPath", "")
            outputs.add(f"{base.rstrip('/')}/{spec.get('trainingJobName')}/output/model.tar.gz")
    if outputs:
        urls = [
            c.get(url_key)
            for doc in docs
            for _, c, url_key, _ in model_containers(doc)
            if not is_multi_model(c)
        ]
        for url in urls:
            if url not in outputs:
                errors.append(f"model data {url!r} is not a training job's output {outputs}")
    return errors


def check_inference_components(docs: list[dict[str, Any]]) -> list[str]:
    """Each InferenceComponent lands on a rendered Endpoint, on a variant of its EndpointConfig
    that names no model, and deploys a rendered single-model Model; and every model-less variant
    of a rendered Endpoint gets an InferenceComponent."""
    errors: list[str] = []
    models = {m.get("spec", {}).get("modelName"): m for m in _by_kind(docs, ACK, "Model")}
    configs = {
        c.get("spec", {}).get("endpointConfigName"): c
        for c in _by_kind(docs, ACK, "EndpointConfig")
    }
    endpoints = {e.get("spec", {}).get("endpointName"): e for e in _by_kind(docs, ACK, "Endpoint")}

    def variants(endpoint_name: Any) -> dict[Any, dict[str, Any]]:
        endpoint = endpoints.get(endpoint_name, {})
        cfg = configs.get(endpoint.get("spec", {}).get("endpointConfigName"), {})
        return {v.get("variantName"): v for v in cfg.get("spec", {}).get("productionVariants", [])}

    placed: set[tuple[Any, Any]] = set()
    for ic in _by_kind(docs, ACK, "InferenceComponent"):
        ident = _ident(ic)
        spec = ic.get("spec", {})
        endpoint, variant = spec.get("endpointName"), spec.get("variantName")
        placed.add((endpoint, variant))
        on = variants(endpoint)
        if endpoint not in endpoints:
            errors.append(
                f"{ident}: endpointName {endpoint!r} names no Endpoint in "
                f"{sorted(map(str, endpoints))}"
            )
        elif variant not in on:
            errors.append(
                f"{ident}: variantName {variant!r} is no variant of Endpoint {endpoint!r} "
                f"({sorted(map(str, on))})"
            )
        elif "modelName" in on[variant]:
            errors.append(
                f"{ident}: variant {variant!r} of Endpoint {endpoint!r} runs Model "
                f"{on[variant]['modelName']!r}; inference components need a variant without one"
            )
        model_name = spec.get("specification", {}).get("modelName")
        if model_name is None:
            continue
        if model_name not in models:
            errors.append(
                f"{ident}: specification.modelName {model_name!r} names no Model in "
                f"{sorted(map(str, models))}"
            )
        elif any(is_multi_model(c) for _, c, _, _ in model_containers(models[model_name])):
            errors.append(f"{ident}: Model {model_name!r} is a MultiModel one")
    for name in endpoints:
        for variant, v in variants(name).items():
            if "modelName" not in v and (name, variant) not in placed:
                errors.append(
                    f"Endpoint/{name}: variant {variant!r} names no model and no "
                    "InferenceComponent is placed on it, so it would serve nothing"
                )
    return errors


# What Rust's `str::parse` takes for the server's usize/u64 and f64 settings (no spaces, no
# `_`, which Python's int() and float() would let through).
WHOLE_NUMBER = re.compile(r"^\+?[0-9]+$")
DECIMAL_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _number_in(value: Any, what: str, high: float, whole: bool) -> tuple[float | None, str | None]:
    """A container variable's value as the server parses it (a whole or a decimal number),
    within (0, high]."""
    syntax = WHOLE_NUMBER if whole else DECIMAL_NUMBER
    if not isinstance(value, str) or not syntax.match(value):
        kind = "a whole number" if whole else "a number"
        return None, f"{what} {value!r} is not {kind}"
    number = float(value)
    if not number > 0:
        return None, f"{what} {value!r} must be above 0"
    if number > high:
        return None, f"{what} {value!r} must be at most {high:.0f}"
    return number, None


def check_async_environment(ident: str, env: dict[str, Any]) -> list[str]:
    """The async settings of a Model's container: present, parseable and within SageMaker's
    async limits (payload 1 GiB, invocation 3600 s); the body timeout within the server's."""
    errors = [
        f"{ident}: a Model behind an async variant needs {name} (docs/deploy.md)"
        for name in ASYNC_ENV
        if name not in env
    ]
    if errors:
        return errors
    timeout, problem = _number_in(
        env["SAGEMAKER_MODEL_SERVER_TIMEOUT"],
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        ASYNC_MAX_TIMEOUT_S,
        whole=False,
    )
    problems = [problem]
    problems.append(
        _number_in(
            env["MASKSERVE_MAX_PAYLOAD_BYTES"],
            "MASKSERVE_MAX_PAYLOAD_BYTES",
            ASYNC_MAX_PAYLOAD_BYTES,
            whole=True,
        )[1]
    )
    body, problem = _number_in(
        env["MASKSERVE_BODY_TIMEOUT"], "MASKSERVE_BODY_TIMEOUT", ASYNC_MAX_TIMEOUT_S, whole=False
    )
    problems.append(problem)
    if timeout is not None and body is not None and body > timeout:
        problems.append(
            f"MASKSERVE_BODY_TIMEOUT {body:g} s is longer than SAGEMAKER_MODEL_SERVER_TIMEOUT "
            f"{timeout:g} s, which bounds the whole invocation"
        )
    problems.append(
        _number_in(env["MASKSERVE_MAX_PIXELS"], "MASKSERVE_MAX_PIXELS", float("inf"), True)[1]
    )
    return [f"{ident}: {p}" for p in problems if p]


def check_async_endpoints(docs: list[dict[str, Any]]) -> list[str]:
    """An EndpointConfig with asyncInferenceConfig writes its results to an S3 prefix, and its
    failures to another one outside it; the Model each of its variants runs has the async
    settings in its container (check_async_environment)."""
    errors: list[str] = []
    models = {m.get("spec", {}).get("modelName"): m for m in _by_kind(docs, ACK, "Model")}
    for cfg in _by_kind(docs, ACK, "EndpointConfig"):
        spec = cfg.get("spec", {})
        if "asyncInferenceConfig" not in spec:
            continue
        ident = _ident(cfg)
        output = (spec.get("asyncInferenceConfig") or {}).get("outputConfig") or {}
        results, failures = output.get("s3OutputPath"), output.get("s3FailurePath")
        if not results:
            errors.append(f"{ident}: asyncInferenceConfig needs outputConfig.s3OutputPath")
        elif isinstance(failures, str) and isinstance(results, str):
            if failures == results:
                errors.append(f"{ident}: s3FailurePath and s3OutputPath must differ ({results!r})")
            elif failures.startswith(results) or results.startswith(failures):
                errors.append(
                    f"{ident}: s3FailurePath {failures!r} and s3OutputPath {results!r} lie one "
                    "inside the other, so results and failures mix"
                )
        for v in spec.get("productionVariants", []):
            where = f"{ident}: variant {v.get('variantName')!r}"
            model = models.get(v.get("modelName"))
            if model is None:
                continue  # a missing Model is check_sagemaker_references' error
            for _, _, _, env in model_containers(model):
                errors += check_async_environment(f"{where}: Model {v.get('modelName')!r}", env)
    return errors


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def check_s3_under_bucket(docs: list[dict[str, Any]], bucket: str) -> list[str]:
    """Every S3 URI of a SageMaker CR is in the values' bucket: the one the execution role may
    read and write (docs/deploy.md, IAM)."""
    return [
        f"{_ident(d)}: {uri!r} is not under s3://{bucket}/"
        for d in docs
        if d.get("apiVersion") in (OPERATOR, ACK)
        for uri in _strings(d.get("spec", {}))
        if uri.startswith("s3://") and not uri.startswith(f"s3://{bucket}/")
    ]


# The SageMaker name of each kind (unique per account and region).
SAGEMAKER_NAME_FIELD = {
    "Model": "modelName",
    "EndpointConfig": "endpointConfigName",
    "Endpoint": "endpointName",
    "InferenceComponent": "inferenceComponentName",
    "HostingDeployment": "endpointName",
    "TrainingJob": "trainingJobName",
    "TransformJob": "transformJobName",
    "BatchTransformJob": "transformJobName",
}


def check_unique_names(docs: list[dict[str, Any]]) -> list[str]:
    """No two rendered objects share a Kubernetes identity, or a SageMaker name within a kind
    (the second apply would overwrite the first)."""
    errors: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for d in docs:
        meta = d.get("metadata", {})
        keys = [
            ("object", d.get("apiVersion"), d.get("kind"), meta.get("namespace"), meta.get("name"))
        ]
        field = SAGEMAKER_NAME_FIELD.get(str(d.get("kind")))
        if field and d.get("spec", {}).get(field):
            keys.append(("SageMaker", d.get("kind"), d["spec"][field]))
        for key in keys:
            if key in seen:
                errors.append(f"{_ident(d)}: {key[0]} name {key[-1]!r} is used twice")
            seen.add(key)
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
    errors += check_unique_names(docs)
    errors += check_sagemaker_references(docs)
    if any(d.get("kind") == "Deployment" for d in docs):
        errors += check_plain_references(docs)
    return errors

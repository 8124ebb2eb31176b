"""The KubeRay manifests use only fields KubeRay's CRDs define for the stated minimum operator (1.3), spelled
as the API server expects them: a misspelt or too-new field is pruned silently by the API server (`kubectl
apply` succeeds, the setting is lost), so a dry run on a cluster would not catch it either.

KubeRay's own fields are those of its v1 Go types (ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go) as
they stood before 1.3: KubeRay only adds fields within ray.io/v1, so a manifest within these works on >= 1.3.
Pod templates, services and resource requirements are Kubernetes' core types, checked field by field against
the models of the official Kubernetes Python client (generated from the Kubernetes OpenAPI spec)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "infra" / "kuberay").glob("*.yaml"))

# Each KubeRay type: its fields, the Kubernetes or KubeRay type of each (None: a scalar or a string map), and
# which fields the CRD requires.
KUBERAY_TYPES: dict[str, tuple[dict[str, str | None], set[str]]] = {
    "RayCluster": (
        {"apiVersion": None, "kind": None, "metadata": "V1ObjectMeta", "spec": "RayClusterSpec"},
        set(),
    ),
    "RayJob": ({"apiVersion": None, "kind": None, "metadata": "V1ObjectMeta", "spec": "RayJobSpec"}, set()),
    "RayClusterSpec": (
        {
            "headGroupSpec": "HeadGroupSpec",
            "workerGroupSpecs": "list[WorkerGroupSpec]",
            "rayVersion": None,
            "enableInTreeAutoscaling": None,
            "autoscalerOptions": "AutoscalerOptions",
            "headServiceAnnotations": None,
            "suspend": None,
        },
        {"headGroupSpec"},
    ),
    "HeadGroupSpec": (
        {
            "serviceType": None,
            "headService": "V1Service",
            "enableIngress": None,
            "rayStartParams": None,
            "template": "V1PodTemplateSpec",
        },
        {"rayStartParams", "template"},
    ),
    "WorkerGroupSpec": (
        {
            "groupName": None,
            "replicas": None,
            "minReplicas": None,
            "maxReplicas": None,
            "numOfHosts": None,
            "rayStartParams": None,
            "template": "V1PodTemplateSpec",
            "scaleStrategy": "ScaleStrategy",
        },
        {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"},
    ),
    "ScaleStrategy": ({"workersToDelete": None, "multihostReplicasToDelete": None}, set()),
    "AutoscalerOptions": (
        {
            "resources": "V1ResourceRequirements",
            "image": None,
            "imagePullPolicy": None,
            "env": "list[V1EnvVar]",
            "envFrom": "list[V1EnvFromSource]",
            "volumeMounts": "list[V1VolumeMount]",
            "securityContext": "V1SecurityContext",
            "idleTimeoutSeconds": None,
            "upscalingMode": None,
        },
        set(),
    ),
    "RayJobSpec": (
        {
            "activeDeadlineSeconds": None,
            "backoffLimit": None,
            "rayClusterSpec": "RayClusterSpec",
            "submitterPodTemplate": "V1PodTemplateSpec",
            "metadata": None,
            "clusterSelector": None,
            "submitterConfig": "SubmitterConfig",
            "entrypoint": None,
            "runtimeEnvYAML": None,
            "jobId": None,
            "submissionMode": None,
            "entrypointResources": None,
            "entrypointNumCpus": None,
            "entrypointNumGpus": None,
            "ttlSecondsAfterFinished": None,
            "shutdownAfterJobFinishes": None,
            "suspend": None,
        },
        set(),
    ),
    "SubmitterConfig": ({"backoffLimit": None}, set()),
}
ENUMS = {
    ("RayJobSpec", "submissionMode"): {"K8sJobMode", "HTTPMode"},
    ("AutoscalerOptions", "upscalingMode"): {"Default", "Aggressive", "Conservative"},
}


def unknown_fields(value: Any, type_name: str | None, where: str) -> list[str]:
    """Every field of `value` that its type does not define (and every missing required or bad enum value)."""
    if type_name is None or value is None:
        return []
    listed = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if listed:
        return [
            err for i, item in enumerate(value) for err in unknown_fields(item, listed[1], f"{where}[{i}]")
        ]
    mapped = re.fullmatch(r"Dict\[str, (.+)\]", type_name)
    if mapped:
        return [
            err for key, item in value.items() for err in unknown_fields(item, mapped[1], f"{where}.{key}")
        ]
    if type_name in KUBERAY_TYPES:
        fields, required = KUBERAY_TYPES[type_name]
        errors = [f"{where}: {type_name} requires {name}" for name in sorted(required - set(value))]
        for key, item in value.items():
            if key not in fields:
                errors.append(
                    f"{where}.{key}: not a field of {type_name} (fields: {', '.join(sorted(fields))})"
                )
            elif (type_name, key) in ENUMS and item not in ENUMS[type_name, key]:
                errors.append(f"{where}.{key}: {item!r} (allowed: {sorted(ENUMS[type_name, key])})")
            else:
                errors += unknown_fields(item, fields[key], f"{where}.{key}")
        return errors
    return kubernetes_unknown_fields(value, type_name, where)


def kubernetes_unknown_fields(value: Any, type_name: str, where: str) -> list[str]:
    import kubernetes.client

    model = getattr(kubernetes.client, type_name, None)
    if model is None:  # a scalar ('str', 'int', 'object', ...), which Kubernetes checks by type alone
        return []
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json_name:
            errors.append(f"{where}.{key}: not a field of Kubernetes' {type_name}")
        else:
            errors += unknown_fields(item, model.openapi_types[by_json_name[key]], f"{where}.{key}")
    return errors


CORE_API_VERSIONS = {"v1", "apps/v1"}  # ServiceAccount, ConfigMap, Service; Deployment (mlflow.yaml)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_uses_only_fields_its_crd_defines(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kind = document["kind"]
        if document["apiVersion"] == "ray.io/v1":
            assert unknown_fields(document, kind, kind) == []
        else:
            assert document["apiVersion"] in CORE_API_VERSIONS, path
            assert kubernetes_unknown_fields(document, f"V1{kind}", kind) == []


def test_a_misspelt_or_misplaced_field_is_caught() -> None:
    """The checker itself, on faults the API server would drop silently."""
    cluster = yaml.safe_load((REPO / "infra" / "kuberay" / "raycluster.yaml").read_text())
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    cluster["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    del cluster["spec"]["workerGroupSpecs"][0]["groupName"]
    errors = unknown_fields(cluster, "RayCluster", "RayCluster")
    assert any(
        e.startswith("RayCluster.spec.workerGroupSpecs[0].maxReplica: not a field of WorkerGroupSpec")
        for e in errors
    )
    assert "RayCluster.spec.workerGroupSpecs[0]: WorkerGroupSpec requires groupName" in errors
    container = "RayCluster.spec.headGroupSpec.template.spec.containers[0]"
    assert f"{container}.resource: not a field of Kubernetes' V1Container" in errors
    assert any(e.startswith("RayCluster.spec.autoscalerOptions.upscalingMode: 'Fast'") for e in errors)
    assert len(errors) == 4, errors


def test_a_misspelt_field_of_a_core_kind_is_caught() -> None:
    documents = list(yaml.safe_load_all((REPO / "infra" / "kuberay" / "mlflow.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    deployment["spec"]["template"]["spec"]["serviceAccount_name"] = "x"
    assert sorted(kubernetes_unknown_fields(deployment, "V1Deployment", "Deployment")) == [
        "Deployment.spec.template.spec.containers[0].readynessProbe: not a field of Kubernetes' V1Container",
        "Deployment.spec.template.spec.serviceAccount_name: not a field of Kubernetes' V1PodSpec",
    ]

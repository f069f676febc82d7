"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object is valid
against the Kubernetes API schema (offline, tests/fixtures/k8s_schemas.py), and the
deployment policies hold: resources, probes, pod security, least-privilege RBAC, network
isolation, placeholder-only secrets, consistent configuration and image versions."""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from kubernetes.utils.quantity import parse_quantity

from bpm_lib.errors import ConfigError
from tests.fixtures.k8s_schemas import (
    INT_OR_STRING_FIELDS,
    SUPPORTED_KINDS,
    object_fields,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("dev", "prod")
NAMESPACE = "bpm-eval"
PLACEHOLDER = "REPLACE_ME"
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
TRIGGER = ("Deployment", "bpm-trigger")
MLFLOW = ("Deployment", "mlflow")


def pyproject_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    pod: dict[str, Any]
    spec: dict[str, Any]
    init: bool

    @property
    def where(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    by_key: dict[tuple[str, str], dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        keys = {(o["kind"], o["metadata"]["name"]): o for o in self.objects}
        object.__setattr__(self, "by_key", keys)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        if (kind, name) not in self.by_key:
            raise KeyError(f"{kind}/{name} not rendered; have {sorted(self.by_key)}")
        return self.by_key[(kind, name)]

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self.by_key

    def generated(self, kind: str, base_name: str) -> dict[str, Any]:
        """A ConfigMap/Secret from a generator, whose name may carry a hash suffix."""
        matches = [
            o
            for o in self.kind(kind)
            if re.fullmatch(rf"{re.escape(base_name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
        ]
        if len(matches) != 1:
            raise KeyError(f"expected one {kind} generated as {base_name!r}, found {len(matches)}")
        return matches[0]

    def pod_templates(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod template) for every workload."""
        for o in self.objects:
            if o["kind"] in ("Deployment", "StatefulSet", "Job"):
                yield o, o["spec"]["template"]
            elif o["kind"] == "CronJob":
                yield o, o["spec"]["jobTemplate"]["spec"]["template"]

    def containers(self) -> Iterator[Container]:
        for workload, template in self.pod_templates():
            pod = template["spec"]
            for c in pod.get("initContainers") or []:
                yield Container(workload, pod, c, True)
            for c in pod["containers"]:
                yield Container(workload, pod, c, False)

    def container(self, kind: str, name: str, container: str) -> Container:
        for c in self.containers():
            if (c.workload["kind"], c.workload["metadata"]["name"], c.spec["name"]) == (
                kind,
                name,
                container,
            ):
                return c
        raise KeyError(f"{kind}/{name}/{container}")


def _ignore_real_secrets(directory: str, names: list[str]) -> set[str]:
    """Never copy git-ignored secret files (a developer's real values) into the test tree."""
    return {n for n in names if Path(directory).name == "secrets" and n.endswith(".env")}


def materialize_secret_examples(root: Path) -> None:
    """secrets/X.env from secrets/X.env.example, as the overlay README tells users to do."""
    for example in root.rglob("secrets/*.env.example"):
        example.with_suffix("").write_text(example.read_text())


@pytest.fixture(scope="module")
def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed, so the kustomize overlays cannot be rendered")
    probe = subprocess.run([exe, "kustomize", "--help"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"`kubectl kustomize` does not work here: {probe.stderr.strip()[:300]}")
    return exe


@pytest.fixture(scope="module")
def manifests_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("k8s") / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=_ignore_real_secrets)
    materialize_secret_examples(root)
    return root


def render(kubectl: str, directory: Path) -> Rendered:
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return Rendered([doc for doc in yaml.safe_load_all(proc.stdout) if doc])


@pytest.fixture(scope="module")
def rendered(kubectl: str, manifests_copy: Path) -> dict[str, Rendered]:
    return {
        "base": render(kubectl, manifests_copy / "base"),
        "dev": render(kubectl, manifests_copy / "overlays" / "dev"),
        "prod": render(kubectl, manifests_copy / "overlays" / "prod"),
    }


# ---------------------------------------------------------------------------------------------
# Schema validation (and the validator itself)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_object_is_valid_against_the_kubernetes_schema(
    rendered: dict[str, Rendered], name: str
) -> None:
    errors = [error for obj in rendered[name].objects for error in validate(obj)]
    assert errors == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_object_names_are_unique_per_kind(rendered: dict[str, Rendered], overlay: str) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered[overlay].objects]
    assert len(keys) == len(set(keys))


def test_object_typed_fields_of_supported_kinds_are_int_or_string() -> None:
    # The validator treats "object" fields as IntOrString; that holds for every kind it accepts
    # except server-populated managedFields, which manifests never contain.
    found = set()
    for class_name in SUPPORTED_KINDS.values():
        found |= object_fields(class_name)
    assert found - INT_OR_STRING_FIELDS == {("V1ManagedFieldsEntry", "fields_v1")}


def _trigger_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bpm-trigger", "labels": {"app.kubernetes.io/name": "bpm-trigger"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "bpm-trigger"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "bpm-trigger"}},
                "spec": {
                    "containers": [
                        {
                            "name": "trigger",
                            "image": "ghcr.io/bpm-eval/bpm-eval:0.1.0",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of obj with the dotted path (list indices as numbers) set; None deletes."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


C0 = "spec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{C0}.imagePullPolicyy", "Always", "unknown field"),
        ("spec.replicas", "1", "expected an integer"),
        (f"{C0}.name", None, "name: required field is missing"),
        (f"{C0}.resources.limits.memory", "1 GB", "is not a quantity"),
        (f"{C0}.resources.limits.cpu", 1, "expected a string"),
        (f"{C0}.imagePullPolicy", "Sometimes", "is not one of"),
        (f"{C0}.ports.0.name", "a-very-long-port-name", "not a valid port name"),
        (f"{C0}.ports.0.containerPort", 70000, "out of range"),
        (f"{C0}.volumeMounts.0.name", "state", "volume 'state' not found"),
        ("metadata.name", "Bpm_Trigger", "not a valid Deployment name"),
        ("metadata.labels.app.kubernetes.io/name", "bpm trigger", "not a valid label value"),
        ("spec.selector.matchLabels", {"app": "other"}, "does not match template labels"),
        ("spec.strategy", {"type": "BlueGreen"}, "is not one of"),
        ("spec.template.spec.volumes.0.emptyDir", {"sizeLimit": "lots"}, "is not a quantity"),
    ],
)
def test_validator_reports_what_the_api_server_would_reject(
    path: str, value: Any, expected: str
) -> None:
    assert validate(_trigger_deployment()) == []
    if path.startswith("metadata.labels."):
        broken = copy.deepcopy(_trigger_deployment())
        broken["metadata"]["labels"][path.removeprefix("metadata.labels.")] = value
    else:
        broken = _set(_trigger_deployment(), path, value)
    errors = validate(broken)
    assert any(expected in e for e in errors), errors


def test_validator_rejects_unsupported_kinds_and_bad_secret_data() -> None:
    assert validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}) != []
    assert (
        validate({"apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": {"name": "d"}})
        != []
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"K": "not base64!"},
    }
    assert any("not base64" in e for e in validate(secret))


# ---------------------------------------------------------------------------------------------
# Inventory, namespace, labels, images
# ---------------------------------------------------------------------------------------------

EXPECTED_COMMON = {
    ("Namespace", "bpm-eval"),
    ("Deployment", "mlflow"),
    ("Service", "mlflow"),
    ("Deployment", "bpm-trigger"),
    ("Service", "bpm-trigger"),
    ("PersistentVolumeClaim", "bpm-trigger-state"),
    ("ServiceAccount", "bpm-trigger"),
    ("ServiceAccount", "bpm-pipeline-runner"),
    ("Role", "bpm-pipeline-runner"),
    ("RoleBinding", "bpm-pipeline-runner"),
    ("NetworkPolicy", "default-deny-ingress"),
    ("NetworkPolicy", "bpm-trigger"),
    ("NetworkPolicy", "mlflow"),
    ("Job", "bpm-pipeline-setup"),
    ("ConfigMap", "bpm-env"),
    ("ConfigMap", "bpm-audit-policy"),
    ("Secret", "bpm-s3-credentials"),
    ("Secret", "bpm-openai"),
}
DEV_ONLY = {
    ("StatefulSet", "postgres"),
    ("Service", "postgres"),
    ("StatefulSet", "minio"),
    ("Service", "minio"),
}
PROD_ONLY = {
    ("PodDisruptionBudget", "mlflow"),
    ("NetworkPolicy", "mlflow-external-egress"),
    ("NetworkPolicy", "bpm-trigger-external-egress"),
}


def test_dev_renders_in_cluster_storage_and_prod_does_not(rendered: dict[str, Rendered]) -> None:
    dev, prod = set(rendered["dev"].by_key), set(rendered["prod"].by_key)
    assert EXPECTED_COMMON <= dev and EXPECTED_COMMON <= prod
    assert DEV_ONLY <= dev and not (DEV_ONLY & prod)
    assert PROD_ONLY <= prod and not (PROD_ONLY & dev)
    for name in ("bpm-webhook", "bpm-mlflow-server"):
        rendered["dev"].generated("Secret", name)
        rendered["prod"].generated("Secret", name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_bpm_eval_namespace(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    for obj in rendered[overlay].objects:
        if obj["kind"] in CLUSTER_SCOPED:
            assert obj["kind"] == "Namespace", f"{obj['kind']} is cluster-wide: use namespaced RBAC"
            continue
        assert obj["metadata"].get("namespace") == NAMESPACE, (
            f"{obj['kind']}/{obj['metadata']['name']}"
        )
    for binding in rendered[overlay].kind("RoleBinding"):
        assert all(s.get("namespace") == NAMESPACE for s in binding["subjects"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_recommended_labels_on_every_object_and_pod(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    version = pyproject_version()
    for obj in rendered[overlay].objects:
        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in COMMON_LABELS if not labels.get(k)]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "bpm-eval"
        assert labels["app.kubernetes.io/version"] == version
        assert labels["app.kubernetes.io/instance"] == f"bpm-eval-{overlay}"
    for workload, template in rendered[overlay].pod_templates():
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) for k in COMMON_LABELS), workload["metadata"]["name"]


def _image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = name.rsplit(":", 1)
        return repository, tag, digest or None
    return name, None, digest or None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_ours_carry_the_package_version(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    version = pyproject_version()
    ours = set()
    for c in rendered[overlay].containers():
        repository, tag, digest = _image_parts(c.spec["image"])
        assert "/" in repository and "." in repository.split("/")[0], (
            f"{c.where}: use a full registry path"
        )
        assert tag or digest, f"{c.where}: image {c.spec['image']} is not pinned"
        assert tag != "latest", f"{c.where}: image {c.spec['image']} uses :latest"
        if repository.startswith("ghcr.io/bpm-eval/"):
            ours.add(repository)
            assert tag == version, f"{c.where}: {c.spec['image']} != package version {version}"
    assert ours == {"ghcr.io/bpm-eval/bpm-eval", "ghcr.io/bpm-eval/bpm-eval-mlflow"}


def test_release_component_tags_images_and_labels_with_the_package_version() -> None:
    common = yaml.safe_load(
        (MANIFESTS / "components" / "common" / "kustomization.yaml").read_text()
    )
    assert {i["newTag"] for i in common["images"]} == {pyproject_version()}
    assert common["labels"][0]["pairs"]["app.kubernetes.io/version"] == pyproject_version()


# ---------------------------------------------------------------------------------------------
# Containers: resources, probes, pod security
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    for c in rendered[overlay].containers():
        resources = c.spec.get("resources") or {}
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert (resources.get(bound) or {}).get(resource), (
                    f"{c.where}: no {bound}.{resource}"
                )
        for resource in ("cpu", "memory"):
            request = parse_quantity(resources["requests"][resource])
            limit = parse_quantity(resources["limits"][resource])
            assert request <= limit, f"{c.where}: {resource} request above its limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes_on_declared_ports(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    for c in rendered[overlay].containers():
        if c.workload["kind"] not in ("Deployment", "StatefulSet") or c.init:
            continue
        port_names = {p.get("name") for p in c.spec.get("ports") or []}
        port_numbers = {p["containerPort"] for p in c.spec.get("ports") or []}
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = c.spec.get(probe_name)
            assert probe, f"{c.where}: no {probe_name}"
            if "httpGet" in probe:
                port = probe["httpGet"]["port"]
                assert port in port_names | port_numbers, f"{c.where}: {probe_name} port {port!r}"


def _pod_and_container_security(c: Container) -> tuple[dict[str, Any], dict[str, Any]]:
    return c.pod.get("securityContext") or {}, c.spec.get("securityContext") or {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_restricted(rendered: dict[str, Rendered], overlay: str) -> None:
    for c in rendered[overlay].containers():
        pod_sc, sc = _pod_and_container_security(c)
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, c.where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, c.where
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", c.where
        assert sc.get("allowPrivilegeEscalation") is False, c.where
        assert sc.get("privileged", False) is False, c.where
        assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], c.where
        assert not (sc.get("capabilities") or {}).get("add"), c.where
        assert sc.get("readOnlyRootFilesystem") is True, c.where
        assert not c.pod.get("hostNetwork") and not c.pod.get("hostPID"), c.where
        # Service links would put MLFLOW_PORT=tcp://<ip>:5000 (from the "mlflow" Service) into
        # every pod: the variable `mlflow server` reads as its --port.
        assert c.pod.get("enableServiceLinks") is False, c.where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_images_get_a_writable_tmp(rendered: dict[str, Rendered], overlay: str) -> None:
    for c in rendered[overlay].containers():
        if not c.spec["image"].startswith("ghcr.io/bpm-eval/"):
            continue
        volumes = {v["name"]: v for v in c.pod.get("volumes") or []}
        tmp = [m for m in c.spec.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{c.where}: /tmp is not an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trigger_pod_hardening_and_state_volume(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    deployment = r.get(*TRIGGER)
    c = r.container(*TRIGGER, "trigger")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert c.pod["automountServiceAccountToken"] is False
    assert c.spec["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c.spec["volumeMounts"]}
    volumes = {v["name"]: v for v in c.pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    state = volumes[mounts["/var/lib/bpm"]]["persistentVolumeClaim"]["claimName"]
    assert r.get("PersistentVolumeClaim", state)["spec"]["accessModes"] == ["ReadWriteOnce"]
    cache = volumes[mounts["/var/cache/bpm"]]["emptyDir"]  # checkpoints hashed here
    assert _env_value(r, c, "BPM_CACHE_DIR") == "/var/cache/bpm"
    assert parse_quantity(cache["sizeLimit"]) <= parse_quantity(
        c.spec["resources"]["limits"]["ephemeral-storage"]
    )
    config = volumes[mounts["/etc/bpm"]]["configMap"]["name"]
    assert "trigger.yaml" in r.get("ConfigMap", config)["data"]
    assert c.spec["args"] == ["trigger", "serve", "--config", "/etc/bpm/trigger.yaml"]
    token = volumes[mounts["/var/run/secrets/kubeflow/pipelines"]]["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_an_api_token_unless_it_runs_pipelines(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    for workload, template in r.pod_templates():
        pod = template["spec"]
        account = pod.get("serviceAccountName", "default")
        if account != "default":
            assert r.has("ServiceAccount", account), (
                f"{workload['metadata']['name']}: no SA {account}"
            )
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
    for sa in r.kind("ServiceAccount"):
        expected = sa["metadata"]["name"] == "bpm-pipeline-runner"
        assert sa.get("automountServiceAccountToken") is expected, sa["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# RBAC
# ---------------------------------------------------------------------------------------------

FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_roles_grant_named_verbs_on_named_resources_only(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    assert not r.kind("ClusterRole") and not r.kind("ClusterRoleBinding")
    for role in r.kind("Role"):
        for rule in role["rules"]:
            where = f"Role/{role['metadata']['name']}"
            assert "*" not in rule.get("apiGroups", []), where
            assert not any("*" in res for res in rule.get("resources", [])), where
            assert not set(rule["verbs"]) & FORBIDDEN_VERBS, where
            if "secrets" in rule.get("resources", []):
                assert rule.get("resourceNames"), f"{where}: secrets without resourceNames"
                assert set(rule["verbs"]) == {"get"}, f"{where}: secrets verbs {rule['verbs']}"


def test_pipeline_runner_can_read_only_the_named_kfp_objects(rendered: dict[str, Rendered]) -> None:
    rules = rendered["prod"].get("Role", "bpm-pipeline-runner")["rules"]
    core = {
        (res, name, verb)
        for rule in rules
        if rule["apiGroups"] == [""]
        for res in rule["resources"]
        for name in rule["resourceNames"]
        for verb in rule["verbs"]
    }
    assert core == {
        ("secrets", "mlpipeline-minio-artifact", "get"),
        ("configmaps", "kfp-launcher", "get"),
    }
    other = [rule for rule in rules if rule["apiGroups"] != [""]]
    assert other == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtaskresults"],
            "verbs": ["create", "patch"],
        }
    ]


def test_trigger_and_setup_get_no_kubernetes_api_access(rendered: dict[str, Rendered]) -> None:
    # They only hold pipelines.kubeflow.org permissions (checked by the multi-user KFP API).
    r = rendered["prod"]
    for binding in r.kind("RoleBinding"):
        role = r.get("Role", binding["roleRef"]["name"])
        subjects = {s["name"] for s in binding["subjects"]}
        assert all(r.has("ServiceAccount", s) for s in subjects)
        if subjects & {"bpm-trigger", "bpm-pipeline-setup"}:
            assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {
                "pipelines.kubeflow.org"
            }
    trigger_rules = r.get("Role", "bpm-trigger-kfp")["rules"]
    writable = {
        res
        for rule in trigger_rules
        if set(rule["verbs"]) - {"get", "list"}
        for res in rule["resources"]
    }
    assert writable == {"runs"}


# ---------------------------------------------------------------------------------------------
# References and configuration
# ---------------------------------------------------------------------------------------------


def _data_keys(r: Rendered, kind: str, name: str) -> set[str]:
    obj = r.get(kind, name)
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def _env_from_names(r: Rendered, c: Container) -> list[str]:
    """Variables a container gets through envFrom (defined before its `env` entries)."""
    names: list[str] = []
    for source in c.spec.get("envFrom") or []:
        if "configMapRef" in source:
            names += sorted(_data_keys(r, "ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            names += sorted(_data_keys(r, "Secret", source["secretRef"]["name"]))
    return names


def _defined_env(r: Rendered, c: Container) -> list[str]:
    """Every variable name a container defines, in Kubernetes order (envFrom, then env)."""
    return _env_from_names(r, c) + [e["name"] for e in c.spec.get("env") or []]


def _env_value(r: Rendered, c: Container, name: str) -> str:
    """The literal value a container sees for a variable from a ConfigMap or `value`."""
    for e in reversed(c.spec.get("env") or []):
        if e["name"] == name and "value" in e:
            return str(e["value"])
    for source in reversed(c.spec.get("envFrom") or []):
        if "configMapRef" in source:
            data = r.get("ConfigMap", source["configMapRef"]["name"]).get("data") or {}
            if name in data:
                return str(data[name])
    raise KeyError(f"{c.where}: {name} has no literal value")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_to_a_rendered_object_and_key(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    for c in r.containers():
        for source in c.spec.get("envFrom") or []:
            for ref_field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if ref_field in source:
                    assert r.has(kind, source[ref_field]["name"]), f"{c.where}: {source}"
        for env in c.spec.get("env") or []:
            ref = env.get("valueFrom") or {}
            for ref_field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if ref_field in ref:
                    name, key = ref[ref_field]["name"], ref[ref_field]["key"]
                    assert key in _data_keys(r, kind, name), f"{c.where}: {kind}/{name} lacks {key}"
        for volume in c.pod.get("volumes") or []:
            if "configMap" in volume:
                assert r.has("ConfigMap", volume["configMap"]["name"]), c.where
            if "secret" in volume:
                assert r.has("Secret", volume["secret"]["secretName"]), c.where
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "configMap" in source:
                    assert r.has("ConfigMap", source["configMap"]["name"]), c.where
            if "persistentVolumeClaim" in volume:
                assert r.has(
                    "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
                ), c.where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_variable_references_are_defined_before_use(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    for c in r.containers():
        defined = set(_env_from_names(r, c))
        for env in c.spec.get("env") or []:
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(env.get("value", ""))):
                assert ref in defined, (
                    f"{c.where}: {env['name']} uses $({ref}) before it is defined"
                )
            defined.add(env["name"])
        for arg in (c.spec.get("command") or []) + (c.spec.get("args") or []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                assert ref in defined, f"{c.where}: argument uses undefined $({ref})"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_target_declared_ports(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    for service in r.kind("Service"):
        selector = service["spec"]["selector"]
        targets = [
            c
            for c in r.containers()
            if not c.init and _matches({"matchLabels": selector}, _template_labels(c.workload))
        ]
        assert targets, f"Service/{service['metadata']['name']} selects no pod"
        names = {p.get("name") for c in targets for p in c.spec.get("ports") or []}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service/{service['metadata']['name']}: {port}"


def _template_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trigger_config_agrees_with_the_manifests(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    c = r.container(*TRIGGER, "trigger")
    config_map = next(v["configMap"]["name"] for v in c.pod["volumes"] if v["name"] == "config")
    config = yaml.safe_load(r.get("ConfigMap", config_map)["data"]["trigger.yaml"])
    port = config["port"]
    assert config["host"] == "0.0.0.0"  # reachable through the Service, not only on loopback
    assert [p["containerPort"] for p in c.spec["ports"]] == [port]
    assert r.get("Service", "bpm-trigger")["spec"]["ports"][0]["port"] == port
    assert Path(config["state"]).is_relative_to("/var/lib/bpm")
    assert config["secret_env"] in _defined_env(r, c)
    assert config["events"] == ["model_version.created"]
    tracking = _env_value(r, c, "MLFLOW_TRACKING_URI")
    assert tracking == f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert config["campaign"]["tracking"]["uri"] == tracking
    assert config["submit"]["mode"] == "kfp"
    assert config["submit"]["kfp_host"] == _env_value(r, c, "KFP_HOST")
    assert config["submit"]["kfp_host"] == "http://ml-pipeline.kubeflow.svc:8888"
    assert config["submit"]["namespace"] == NAMESPACE
    # MLflow registers the webhook at this URL; the service answers POST /webhook.
    webhook_url = _env_value(r, c, "BPM_TRIGGER_WEBHOOK_URL")
    assert webhook_url == f"http://bpm-trigger.{NAMESPACE}.svc.cluster.local:{port}/webhook"


def test_trigger_config_is_accepted_by_the_trigger_service() -> None:
    service = pytest.importorskip("bpm_lib.trigger.service")
    text = (MANIFESTS / "base" / "trigger" / "trigger.yaml").read_text()
    config = service.parse_trigger_config(yaml.safe_load(text))  # strict keys
    assert (config.host, config.port, config.submit.mode) == ("0.0.0.0", 8080, "kfp")
    with pytest.raises(ConfigError):
        service.parse_trigger_config({**yaml.safe_load(text), "webhook_path": "/x"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_configuration(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    c = r.container(*MLFLOW, "mlflow")
    assert c.spec["args"] == ["server"]
    env = {name: _env_value(r, c, name) for name in _defined_env(r, c) if _has_literal(r, c, name)}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert env["MLFLOW_HOST"] == "0.0.0.0"
    assert int(env["MLFLOW_PORT"]) == c.spec["ports"][0]["containerPort"] == 5000
    assert set(env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",")) == {"http", "https"}
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    allowed_hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "*" not in allowed_hosts
    assert f"mlflow.{NAMESPACE}.svc.cluster.local:5000" in allowed_hosts
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in c.spec["env"] if "valueFrom" in e}
    assert secret_keys == {
        "MLFLOW_DB_PASSWORD",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c.spec[probe]["httpGet"]["path"] == "/health"
    if overlay == "dev":
        assert env["MLFLOW_DB_HOST"] == f"postgres.{NAMESPACE}.svc.cluster.local"
        assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://minio.{NAMESPACE}.svc.cluster.local:9000"
    else:
        assert env["MLFLOW_DB_SSLMODE"] == "require"
        assert "MLFLOW_S3_ENDPOINT_URL" not in env  # AWS S3 itself


def _mounted_files(r: Rendered, c: Container, mount_path: str) -> dict[str, str]:
    """File name → content of the ConfigMap(s) a container mounts at mount_path."""
    mount = next(m for m in c.spec["volumeMounts"] if m["mountPath"] == mount_path)
    volume = next(v for v in c.pod["volumes"] if v["name"] == mount["name"])
    sources = (
        [s["configMap"] for s in volume["projected"]["sources"] if "configMap" in s]
        if "projected" in volume
        else [volume["configMap"]]
    )
    files: dict[str, str] = {}
    for source in sources:
        files.update(r.get("ConfigMap", source["name"])["data"])
    return files


def _setup_args(r: Rendered, container: str, tmp_path: Path) -> list[str]:
    """A setup step's arguments with its in-pod paths mapped to this checkout / tmp_path."""
    c = r.container("Job", "bpm-pipeline-setup", container)
    mapping = {
        "/etc/bpm/campaign.yaml": str(MANIFESTS / "base" / "setup" / "campaign.yaml"),
        "/etc/bpm/policy.yaml": str(MANIFESTS / "base" / "setup" / "policy.yaml"),
    }
    args = []
    for arg in c.spec["args"]:
        if arg in mapping:
            arg = mapping[arg]  # a file of this checkout (which may itself live under /tmp)
        elif arg.startswith("/tmp/"):
            arg = str(tmp_path / arg.removeprefix("/tmp/"))
        args.append(arg.replace("$(KFP_HOST)", _env_value(r, c, "KFP_HOST")))
    return args


def test_setup_compile_step_runs_with_the_bpm_cli(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    cli = pytest.importorskip("bpm_lib.cli")
    args = _setup_args(rendered["prod"], "compile-pipeline", tmp_path)
    assert cli.main(args) == 0
    compiled = next(yaml.safe_load_all(Path(args[-1]).read_text()))  # the pipeline spec
    assert "checkpoint-eval" in compiled["pipelineInfo"]["name"]


def test_setup_schedule_step_matches_the_bpm_audit_cli(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    pytest.importorskip(
        "bpm_lib.cli.audit", reason="the `bpm audit` verb is not in this checkout yet"
    )
    from bpm_lib.cli import build_parser

    args = build_parser().parse_args(_setup_args(rendered["prod"], "schedule-audit", tmp_path))
    assert args.cron == "0 3 * * 1" and callable(args.func)


def test_audit_policy_is_accepted_by_the_audit_policy_parser() -> None:
    policy_module = pytest.importorskip("bpm_lib.audit.policy")
    text = (MANIFESTS / "base" / "setup" / "policy.yaml").read_text()
    policy = policy_module.policy_from_text(text)  # strict keys
    assert policy.aliases == ("champion", "challenger") and policy.rules.min_samples
    assert policy.calibration.path.startswith("s3://")
    with pytest.raises(ConfigError):
        policy_module.policy_from_text(text.replace("min_samples:", "min_sample:"))


def test_setup_campaign_is_a_valid_run_config() -> None:
    config = pytest.importorskip("bpm_lib.config")
    text = (MANIFESTS / "base" / "setup" / "campaign.yaml").read_text()
    campaign = config.parse_config(yaml.safe_load(text))
    assert campaign.pipeline == "checkpoint_eval" and len(campaign.candidates) == 1


def _has_literal(r: Rendered, c: Container, name: str) -> bool:
    try:
        _env_value(r, c, name)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_setup_job_compiles_the_pipeline_then_schedules_the_weekly_audit(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    compile_step = r.container("Job", "bpm-pipeline-setup", "compile-pipeline")
    schedule = r.container("Job", "bpm-pipeline-setup", "schedule-audit")
    assert compile_step.init and not schedule.init
    assert _env_value(r, schedule, "KFP_HOST") == "http://ml-pipeline.kubeflow.svc:8888"
    assert compile_step.spec["args"][:2] == ["submit", "/etc/bpm/campaign.yaml"]
    assert compile_step.spec["args"][2] == "--compile-only"
    assert Path(compile_step.spec["args"][3]).is_relative_to("/tmp")  # the writable emptyDir
    assert schedule.spec["args"] == [
        "audit",
        "schedule",
        "--cron",
        "0 3 * * 1",
        "--policy",
        "/etc/bpm/policy.yaml",
        "--host",
        "$(KFP_HOST)",
        "--namespace",
        NAMESPACE,
    ]
    for step in (compile_step, schedule):
        assert "command" not in step.spec  # the image ENTRYPOINT is `bpm`
    files = _mounted_files(r, schedule, "/etc/bpm")
    assert set(files) == {"policy.yaml", "campaign.yaml"}
    assert _mounted_files(r, compile_step, "/etc/bpm") == files
    policy = yaml.safe_load(files["policy.yaml"])
    assert set(policy["aliases"]) == {"champion", "challenger"}
    assert policy["tracking"]["uri"] == f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert "AWS_SECRET_ACCESS_KEY" in _defined_env(r, schedule)  # reads the calibration
    campaign = yaml.safe_load(files["campaign.yaml"])
    assert campaign["pipeline"] == "checkpoint_eval"  # what the trigger submits
    assert campaign["tracking"]["uri"] == f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
    job = r.get("Job", "bpm-pipeline-setup")["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert (
        job["backoffLimit"] <= 5
        and job["activeDeadlineSeconds"] > 0
        and job["ttlSecondsAfterFinished"] > 0
    )


# ---------------------------------------------------------------------------------------------
# Secrets: placeholders only, real values git-ignored
# ---------------------------------------------------------------------------------------------

REAL_SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"sk-[A-Za-z0-9_-]{20,}"),  # OpenAI key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub token
    re.compile(r"[A-Za-z0-9_-]{43}="),  # Fernet key
]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout with git installed")
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _tracked_or_unignored_manifest_files() -> list[Path]:
    """Files under manifests/ that git would commit (tracked or not ignored)."""
    proc = _git("ls-files", "--cached", "--others", "--exclude-standard", "manifests")
    assert proc.returncode == 0, proc.stderr
    return [REPO / line for line in proc.stdout.splitlines() if line]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_secrets_hold_placeholders_only(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    secrets = rendered[overlay].kind("Secret")
    assert len(secrets) == 4
    for secret in secrets:
        assert "stringData" not in secret
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            assert value.startswith(PLACEHOLDER), f"Secret/{secret['metadata']['name']}.{key}"


def test_secret_examples_exist_for_every_generator_and_hold_placeholders() -> None:
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load(
            (MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text()
        )
        for generator in kustomization["secretGenerator"]:
            assert "literals" not in generator and "files" not in generator
            for env_file in generator["envs"]:
                example = MANIFESTS / "overlays" / overlay / f"{env_file}.example"
                assert example.is_file(), example
                entries = [
                    line
                    for line in example.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")
                ]
                assert entries and all(line.split("=", 1)[1] == PLACEHOLDER for line in entries)


def test_real_secret_files_are_git_ignored_and_absent_from_git() -> None:
    for overlay in OVERLAYS:
        for example in (MANIFESTS / "overlays" / overlay / "secrets").glob("*.env.example"):
            real = example.with_suffix("").relative_to(REPO)
            assert _git("check-ignore", "-q", str(real)).returncode == 0, f"{real} is not ignored"
    committable = _tracked_or_unignored_manifest_files()
    assert not [p for p in committable if p.parent.name == "secrets" and p.suffix == ".env"]


def test_no_real_looking_secret_in_committable_files() -> None:
    files = [*_tracked_or_unignored_manifest_files(), REPO / "Dockerfile", REPO / ".dockerignore"]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for pattern in REAL_SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"


def test_secret_pattern_check_can_fail() -> None:
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert any(p.search(f"AWS_ACCESS_KEY_ID={key}") for p in REAL_SECRET_PATTERNS)


# ---------------------------------------------------------------------------------------------
# Network policies: evaluated, not just inspected
# ---------------------------------------------------------------------------------------------


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics ({} selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None = None  # None: outside the cluster
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None or other.namespace is not None:
            return False  # simplification: ipBlocks only address endpoints outside the cluster
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return _matches(peer.get("podSelector"), other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if not isinstance(p["port"], int):
            raise ValueError(f"named policy ports are not modelled: {p}")
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _direction_allows(
    policies: list[dict[str, Any]],
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    direction: str,
) -> bool:
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and _matches(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
            )
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(r: Rendered, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether the NetworkPolicies of the rendered namespace let src open port on dst."""
    policies = r.kind("NetworkPolicy")
    egress_ok = src.namespace is None or _direction_allows(
        policies, src, dst, port, protocol, "Egress"
    )
    ingress_ok = dst.namespace is None or _direction_allows(
        policies, dst, src, port, protocol, "Ingress"
    )
    return egress_ok and ingress_ok


def _pod(r: Rendered, kind: str, name: str) -> Endpoint:
    return Endpoint(name, NAMESPACE, _template_labels(r.get(kind, name)))


KFP_API = Endpoint("ml-pipeline", "kubeflow", {"app": "ml-pipeline"})
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
PIPELINE_POD = Endpoint("pipeline-pod", NAMESPACE, {"pipelines.kubeflow.org/v2_component": "true"})
KFP_NS_PIPELINE_POD = Endpoint(
    "kfp-pipeline-pod", "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}
)
STRANGER = Endpoint("stranger", NAMESPACE, {"app": "stranger"})
OTHER_NS = Endpoint("other-namespace", "default", {"app.kubernetes.io/name": "bpm-trigger"})
INTERNET = Endpoint("s3.amazonaws.com", ip="52.216.0.1")
METADATA = Endpoint("cloud-metadata", ip="169.254.169.254")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_designed_flows(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    trigger, mlflow = _pod(r, *TRIGGER), _pod(r, *MLFLOW)
    setup = _pod(r, "Job", "bpm-pipeline-setup")
    expected = [
        (mlflow, trigger, 8080, "TCP", True),  # webhooks
        (trigger, mlflow, 5000, "TCP", True),
        (trigger, KFP_API, 8888, "TCP", True),
        (trigger, KUBE_DNS, 53, "UDP", True),
        (mlflow, KUBE_DNS, 53, "UDP", True),
        (PIPELINE_POD, mlflow, 5000, "TCP", True),
        (KFP_NS_PIPELINE_POD, mlflow, 5000, "TCP", True),
        (setup, KFP_API, 8888, "TCP", True),
        (STRANGER, trigger, 8080, "TCP", False),  # default deny
        (STRANGER, mlflow, 5000, "TCP", False),
        (PIPELINE_POD, trigger, 8080, "TCP", False),
        (OTHER_NS, mlflow, 5000, "TCP", False),
        (STRANGER, setup, 8080, "TCP", False),
        (trigger, INTERNET, 443, "TCP", overlay == "prod"),  # checkpoints on S3
        (trigger, INTERNET, 80, "TCP", False),
        (trigger, METADATA, 80, "TCP", False),
        (trigger, STRANGER, 8080, "TCP", False),
        (trigger, mlflow, 8080, "TCP", False),
        (mlflow, STRANGER, 8080, "TCP", False),  # webhook URLs cannot reach arbitrary pods
        (mlflow, METADATA, 80, "TCP", False),
        (mlflow, METADATA, 443, "TCP", False),
        (mlflow, INTERNET, 443, "TCP", overlay == "prod"),  # S3 outside the cluster
    ]
    if overlay == "dev":
        postgres, minio = _pod(r, "StatefulSet", "postgres"), _pod(r, "StatefulSet", "minio")
        buckets = _pod(r, "Job", "minio-create-buckets")
        expected += [
            (mlflow, postgres, 5432, "TCP", True),
            (mlflow, minio, 9000, "TCP", True),
            (trigger, minio, 9000, "TCP", True),
            (PIPELINE_POD, minio, 9000, "TCP", True),
            (setup, minio, 9000, "TCP", True),
            (buckets, minio, 9000, "TCP", True),
            (trigger, postgres, 5432, "TCP", False),
            (PIPELINE_POD, postgres, 5432, "TCP", False),
            (STRANGER, minio, 9000, "TCP", False),
        ]
    wrong = [
        f"{src.name} -> {dst.name}:{port}/{proto} should be {'allowed' if want else 'denied'}"
        for src, dst, port, proto, want in expected
        if allowed(r, src, dst, port, proto) != want
    ]
    assert wrong == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_ingress_covers_every_pod(rendered: dict[str, Rendered], overlay: str) -> None:
    deny = rendered[overlay].get("NetworkPolicy", "default-deny-ingress")["spec"]
    assert (
        deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    )


def test_network_policy_selectors_name_pods_that_exist(rendered: dict[str, Rendered]) -> None:
    # A typo in a label would silently isolate (or fail to isolate) a pod: every same-namespace
    # selector must match a pod of the dev install or a Kubeflow pipeline pod.
    r = rendered["dev"]
    pods = [_template_labels(w) for w, _ in r.pod_templates()] + [dict(PIPELINE_POD.labels)]
    for policy in r.kind("NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"]]
        for rule in (policy["spec"].get("ingress") or []) + (policy["spec"].get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    selectors.append(peer["podSelector"])
        for selector in selectors:
            assert any(_matches(selector, labels) for labels in pods), (
                policy["metadata"]["name"],
                selector,
            )


def test_network_policy_evaluator_can_fail(rendered: dict[str, Rendered]) -> None:
    r = rendered["dev"]
    open_policy = copy.deepcopy(r.get("NetworkPolicy", "bpm-trigger"))
    open_policy["spec"]["ingress"] = [{}]  # allow everyone
    widened = Rendered(
        [o for o in r.objects if o is not r.get("NetworkPolicy", "bpm-trigger")] + [open_policy]
    )
    assert allowed(widened, STRANGER, _pod(r, *TRIGGER), 8080)
    assert not allowed(r, STRANGER, _pod(r, *TRIGGER), 8080)


# ---------------------------------------------------------------------------------------------
# Overlay differences
# ---------------------------------------------------------------------------------------------


def test_dev_is_small_single_replica_and_uses_local_images(rendered: dict[str, Rendered]) -> None:
    r = rendered["dev"]
    for c in r.containers():
        assert c.spec["imagePullPolicy"] == "IfNotPresent", c.where
    for kind in ("Deployment", "StatefulSet"):
        for workload in r.kind(kind):
            assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    env = r.get("ConfigMap", "bpm-env")["data"]
    assert env["AWS_ENDPOINT_URL_S3"] == f"http://minio.{NAMESPACE}.svc.cluster.local:9000"
    postgres = r.container("StatefulSet", "postgres", "postgres")
    mlflow_env = r.generated("ConfigMap", "mlflow-server-env")["data"]
    pg_env = {e["name"]: e for e in postgres.spec["env"]}
    assert pg_env["POSTGRES_USER"]["value"] == mlflow_env["MLFLOW_DB_USER"]
    assert pg_env["POSTGRES_DB"]["value"] == mlflow_env["MLFLOW_DB_NAME"]
    mlflow_password = next(
        e for e in r.container(*MLFLOW, "mlflow").spec["env"] if e["name"] == "MLFLOW_DB_PASSWORD"
    )
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"] == mlflow_password["valueFrom"]


def test_prod_keeps_one_trigger_and_protects_mlflow(rendered: dict[str, Rendered]) -> None:
    prod, dev = rendered["prod"], rendered["dev"]
    assert prod.get(*TRIGGER)["spec"]["replicas"] == 1  # SQLite ledger: exactly-once submission
    assert prod.get(*TRIGGER)["spec"]["strategy"]["type"] == "Recreate"
    assert not prod.kind("HorizontalPodAutoscaler")
    replicas = prod.get(*MLFLOW)["spec"]["replicas"]
    pdb = prod.get("PodDisruptionBudget", "mlflow")["spec"]
    assert replicas >= 2 and 1 <= pdb["minAvailable"] < replicas
    assert _matches(pdb["selector"], _template_labels(prod.get(*MLFLOW)))
    for workload in (TRIGGER, MLFLOW):
        name = workload[1]
        container = "trigger" if name == "bpm-trigger" else "mlflow"
        big = prod.container(*workload, container).spec["resources"]
        small = dev.container(*workload, container).spec["resources"]
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert parse_quantity(big[bound][resource]) > parse_quantity(small[bound][resource])
    mlflow_env = prod.generated("ConfigMap", "mlflow-server-env")["data"]
    assert PLACEHOLDER in mlflow_env["MLFLOW_DB_HOST"]  # must be set per environment
    assert PLACEHOLDER in mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"]


# ---------------------------------------------------------------------------------------------
# Runnable pieces: the MinIO bucket script and the MLflow server settings
# ---------------------------------------------------------------------------------------------


def test_bucket_job_creates_the_artifact_bucket_idempotently(
    rendered: dict[str, Rendered], s3_env: Any
) -> None:
    r = rendered["dev"]
    c = r.container("Job", "minio-create-buckets", "create-buckets")
    assert c.spec["command"] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in c.spec["env"] if "value" in e}
    artifacts = r.generated("ConfigMap", "mlflow-server-env")["data"][
        "MLFLOW_ARTIFACTS_DESTINATION"
    ]
    assert artifacts.removeprefix("s3://").split("/")[0] in env["BUCKETS"].split(",")
    run_env = {**s3_env.env, "BUCKETS": env["BUCKETS"], "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # the second run finds the buckets and succeeds
        proc = subprocess.run(
            [sys.executable, "-c", c.spec["args"][0]],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    names = {b["Name"] for b in s3_env.client().list_buckets()["Buckets"]}
    assert set(env["BUCKETS"].split(",")) <= names


class _WebhookReceiver:
    """A one-route HTTP server on 127.0.0.1 that records the deliveries it gets."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _get(url: str, host: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.slow
def test_mlflow_with_the_cluster_settings_serves_service_names_and_signs_webhooks_to_the_trigger(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """Start a real MLflow server with the dev overlay's mlflow-server-env (the fixture only
    swaps PostgreSQL/S3 for SQLite/local files and binds 127.0.0.1): it must accept the
    in-cluster Host names, refuse others, and deliver an HMAC-signed model_version.created
    webhook to a plain-HTTP private address, as it does to the trigger Service."""
    import hashlib
    import hmac
    import time

    from cryptography.fernet import Fernet
    from mlflow import MlflowClient

    from tests.fixtures.servers import mlflow_server

    env = dict(rendered["dev"].generated("ConfigMap", "mlflow-server-env")["data"])
    # The fixture presets these; pin MLflow's own defaults where the cluster leaves them unset,
    # so the server behaves exactly as it would in the cluster.
    env.setdefault("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "https")
    env.setdefault("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "false")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    secret = "webhook-test-secret"
    with (
        _WebhookReceiver() as receiver,
        mlflow_server(tmp_path / "mlflow", extra_env=env) as server,
    ):
        api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api, f"mlflow.{NAMESPACE}.svc.cluster.local:5000") == 200
        assert _get(api, f"mlflow.{NAMESPACE}:5000") == 200
        assert _get(api, "attacker.example.com") == 403

        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        client.create_webhook(
            name="bpm-trigger",
            url=f"http://127.0.0.1:{receiver.port}/webhook",
            events=["model_version.created"],
            secret=secret,
        )
        client.create_registered_model("bpm-editor")
        client.create_model_version("bpm-editor", source="s3://bpm-eval-data/checkpoints/step-1000")
        deadline = time.monotonic() + 60
        while not receiver.deliveries and time.monotonic() < deadline:
            time.sleep(0.2)

    assert len(receiver.deliveries) == 1
    headers, body = receiver.deliveries[0]
    signed = f"{headers['x-mlflow-delivery-id']}.{headers['x-mlflow-timestamp']}.{body.decode()}"
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    assert headers["x-mlflow-signature"] == "v1," + base64.b64encode(digest).decode()
    payload = yaml.safe_load(body)  # JSON is YAML
    assert (payload["entity"], payload["action"]) == ("model_version", "created")
    assert payload["data"]["name"] == "bpm-editor"

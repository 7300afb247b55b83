"""deploy/: every Kubernetes manifest valid against the 1.30 schemas, the invariants the
operations guide relies on (the forwarder reads /var/log read-only and outlives its
shutdown deadline, each aggregator owns a volume and a headless Service finds them all...),
kustomizations that list exactly what exists, daemon configs that the real config models
accept, the compose file, the dashboard and the alerts (only metrics the code exports).

Hardening: two namespaces (the forwarder alone at Pod Security "privileged", every other
pod in one enforced at "restricted" and meeting it), NetworkPolicies that let only the
forwarders and Prometheus reach an aggregator (checked by evaluating them for pods in and
out of the cluster's namespaces), and authentication on: both sides read the same shared
key from a Secret, in the manifests and in compose.

The kustomize tree is rendered from the Helm chart (deploy/helm/logferry,
test_helm_manifests.py keeps the two equal), so the invariants are checked on three
renderings (the `manifests` fixture): the committed kustomize files, the chart with the
example production values, and the chart released into another namespace with another
cluster domain. File-level checks (kustomizations, the overlay, compose) read the files."""

from __future__ import annotations

import copy
import functools
import importlib.resources
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from devtools import helm
from logferry.aggregator.config import AggregatorConfig
from logferry.common.config import load_config, parse_config
from logferry.forwarder.config import ForwarderConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30"
COMPOSE = DEPLOY / "compose.yaml"
HELM = DEPLOY / "helm"  # the chart the kustomize tree is rendered from (test_helm_*)
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ENV = {
    "NODE_NAME": "node-1",
    "LOGFERRY_STORE_URL": "https://opensearch.example:9200",
    "LOGFERRY_STORE_USERNAME": "logferry",
}
# The kustomize tree's namespaces (the chart's defaults in release namespace logferry).
NAMESPACE = "logferry"  # aggregators, operator: Pod Security "restricted"
FORWARDER_NAMESPACE = "logferry-forwarder"  # the forwarder alone: "privileged"
EXAMPLE_VALUES = HELM / "logferry" / "examples" / "production.yaml"
KUSTOMIZE_VALUES = HELM / "kustomize-values.yaml"
# Keys of the Secrets that are mounted whole (no items).
SECRET_KEYS = {"logferry-tls": ("tls.crt", "tls.key", "ca.crt")}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "CustomResourceDefinition",
}
WORKLOADS = {"DaemonSet", "StatefulSet", "Deployment", "Job", "CronJob", "Pod", "ReplicaSet"}


# -- loading ---------------------------------------------------------------------------


def _is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


def _manifest_files() -> list[Path]:
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if not _is_kustomization(p)
        and p != COMPOSE
        and (DEPLOY / "compose") not in p.parents
        and HELM not in p.parents
    )


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def _file_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    # Parsed once per file; every caller gets its own copy to change as it likes.
    for path in _manifest_files():
        for document in _parsed(path):
            yield path, copy.deepcopy(document)


def _kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, d)
        for p, d in _file_documents()
        if not d["apiVersion"].startswith("monitoring.coreos.com/")
    ]


@dataclass(frozen=True)
class _Pod:
    """Someone who opens or accepts a connection: a pod (namespace and labels) or, without
    a namespace, an address outside the pod network (the API server, an external store)."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Manifests:
    """One rendering of logferry's manifests: its documents (each with where it came from:
    a file under deploy/ or a chart template), the namespaces it was rendered for, where its
    store is (what the aggregators' egress policy must admit) and its Grafana dashboard."""

    name: str
    sourced: tuple[tuple[str, dict[str, Any]], ...]
    namespace: str
    forwarder_namespace: str
    cluster_domain: str
    store: _Pod
    dashboard: dict[str, Any]


def _kustomize_tree() -> Manifests:
    return Manifests(
        name="kustomize",
        sourced=tuple((str(p.relative_to(DEPLOY)), d) for p, d in _file_documents()),
        namespace=NAMESPACE,
        forwarder_namespace=FORWARDER_NAMESPACE,
        cluster_domain="cluster.local",
        store=_Pod("store", "logging", {"app": "opensearch"}, "10.1.1.9"),
        dashboard=json.loads(DASHBOARD.read_text()),
    )


def _helm_release(
    name: str,
    *,
    namespace: str,
    values: Path,
    store: _Pod,
    settings: dict[str, str | int | bool] | None = None,
) -> Manifests:
    rendered = helm.split(helm.template(namespace=namespace, values=[values], settings=settings))
    sourced = tuple(
        (r.source, d) for r in rendered for d in yaml.safe_load_all(r.text) if d is not None
    )
    (dashboard,) = [
        d["data"]["grafana-dashboard.json"]
        for _, d in sourced
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "logferry-grafana-dashboard"
    ]
    return Manifests(
        name=name,
        sourced=sourced,
        namespace=namespace,
        forwarder_namespace=str(
            (settings or {}).get("namespaces.forwarder", f"{namespace}-forwarder")
        ),
        cluster_domain=str((settings or {}).get("clusterDomain", "cluster.local")),
        store=store,
        dashboard=json.loads(dashboard),
    )


RENDERINGS = ("kustomize", "helm-example-values", "helm-other-namespace")


@functools.cache
def _rendering(name: str) -> Manifests:
    if name == "kustomize":
        return _kustomize_tree()
    if name == "helm-example-values":
        # An external store, reached by the ipBlock the example values give (192.0.2.0/24).
        return _helm_release(
            name, namespace=NAMESPACE, values=EXAMPLE_VALUES, store=_Pod("store", ip="192.0.2.10")
        )
    assert name == "helm-other-namespace"
    return _helm_release(
        name,
        namespace="observability",
        values=KUSTOMIZE_VALUES,
        store=_Pod("store", "logging", {"app": "opensearch"}, "10.1.1.9"),
        settings={"clusterDomain": "k8s.example"},
    )


@pytest.fixture(params=RENDERINGS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    """Each rendering in turn; helm is the pinned one (devtools.helm), and a missing helm
    is an error here, never a skip."""
    return _rendering(str(request.param))


KUSTOMIZE = _rendering("kustomize")  # what the file-level checks (overlay, kustomizations) read


def _documents(manifests: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    # Every caller gets its own copy to change as it likes.
    for source, document in manifests.sourced:
        yield source, copy.deepcopy(document)


def _one(
    manifests: Manifests, kind: str, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    found = [
        d
        for _, d in _documents(manifests)
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _workloads(manifests: Manifests) -> list[dict[str, Any]]:
    return [d for _, d in _documents(manifests) if d["kind"] in WORKLOADS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    template = workload["spec"]["template"]
    if workload["kind"] == "CronJob":
        template = workload["spec"]["jobTemplate"]["spec"]["template"]
    return dict(template["spec"])


def _daemonset(manifests: Manifests) -> dict[str, Any]:
    return _one(manifests, "DaemonSet", "logferry-forwarder")


def _statefulset(manifests: Manifests) -> dict[str, Any]:
    return _one(manifests, "StatefulSet", "logferry-aggregator")


def _audit(manifests: Manifests) -> dict[str, Any]:
    return _one(manifests, "Deployment", "logferry-audit")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _config_text(manifests: Manifests, configmap: str, key: str) -> str:
    return str(_one(manifests, "ConfigMap", configmap)["data"][key])


def _secrets(manifests: Manifests) -> set[tuple[str, str]]:
    """(namespace, Secret): what the workloads reference and docs/operations.md creates."""
    return {
        (manifests.namespace, "logferry-shared-key"),
        (manifests.namespace, "logferry-tls"),
        (manifests.namespace, "logferry-store-credentials"),
        (manifests.namespace, "logferry-audit-store-credentials"),
        (manifests.forwarder_namespace, "logferry-shared-key"),
        (manifests.forwarder_namespace, "logferry-aggregator-ca"),
    }


@pytest.fixture
def mounted_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, manifests: Manifests
) -> dict[Path, Path]:
    """The Secret files kubelet mounts into the forwarder and aggregator pods, with stand-in
    content: the configs read their shared key file while they are validated, and these
    paths exist only inside the pods. Opening one of them opens its stand-in instead."""
    redirects: dict[Path, Path] = {}
    for workload in (_daemonset(manifests), _statefulset(manifests)):
        volumes = _volumes(workload)
        for mount in _container(workload)["volumeMounts"]:
            secret = volumes.get(mount["name"], {}).get("secret")  # claims: no volume
            if secret is None:
                continue
            items = secret.get("items")
            files = [i["path"] for i in items] if items else SECRET_KEYS[secret["secretName"]]
            for name in files:
                inside = Path(mount["mountPath"]) / name
                stand_in = tmp_path / inside.relative_to("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text(f"stand-in for {secret['secretName']}/{name}\n")
                redirects[inside] = stand_in
    original = Path.open

    def open_mounted(self: Path, *args: Any, **kwargs: Any) -> Any:
        return original(redirects.get(self, self), *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_mounted)
    return redirects


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The daemons' env vars."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


@pytest.fixture
def env(environment: dict[str, str], mounted_secrets: dict[Path, Path]) -> dict[str, str]:
    """The pods' environment: their env vars and their mounted Secrets."""
    return environment


def _forwarder_config(manifests: Manifests) -> ForwarderConfig:
    return parse_config(
        _config_text(manifests, "logferry-forwarder-config", "forwarder.yaml"), ForwarderConfig
    )


def _aggregator_config(manifests: Manifests) -> AggregatorConfig:
    return parse_config(
        _config_text(manifests, "logferry-aggregator-config", "aggregator.yaml"), AggregatorConfig
    )


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def _volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}


def _quantity(value: str) -> int:
    """A Kubernetes binary quantity (``256Mi``, ``20Gi``) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", value)
    assert match, value
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) * 1024**power


def _under(path: Path | str, mount: str) -> bool:
    return Path(path) == Path(mount) or Path(mount) in Path(path).parents


# -- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "document"),
    _kubernetes_documents(),
    ids=lambda v: str(v.relative_to(DEPLOY)) if isinstance(v, Path) else v["kind"],
)
def test_every_manifest_is_valid_against_the_kubernetes_schema(
    path: Path, document: dict[str, Any]
) -> None:
    assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_rendered_manifest_is_valid_against_the_kubernetes_schema(
    manifests: Manifests,
) -> None:
    # The files are checked one by one above; the chart's renderings here, all at once.
    invalid = {}
    for source, document in _documents(manifests):
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            invalid[f"{source}: {document['kind']}/{document['metadata']['name']}"] = str(error)
    assert invalid == {}
    assert sum(1 for _ in _documents(manifests)) >= 30


def test_prometheus_operator_objects_have_the_expected_shape(manifests: Manifests) -> None:
    # kubernetes_validate does not know monitoring.coreos.com: check the structure by hand.
    monitor = _one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == manifests.namespace
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"metrics"}
    selected = [
        d
        for _, d in _documents(manifests)
        if d["kind"] == "Service" and _selects(selector, d["metadata"]["labels"])
    ]
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in selected}
    assert components == {"forwarder", "aggregator", "audit"}
    # The Services are in two namespaces; the monitor looks in both.
    namespaces = {d["metadata"]["namespace"] for d in selected}
    assert namespaces == {manifests.namespace, manifests.forwarder_namespace}
    assert set(monitor["spec"]["namespaceSelector"]["matchNames"]) == namespaces
    # Each on its port named metrics: the daemons' 2020, the auditor's 2022.
    expected_port = {"forwarder": 2020, "aggregator": 2020, "audit": 2022}
    for service in selected:
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert ports["metrics"] == expected_port[component], service["metadata"]["name"]
    rule = _one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"]
        assert group["rules"]
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"Logferry[A-Za-z]+", alert["alert"])
            assert alert["labels"]["severity"] in {"info", "warning", "critical"}
            assert alert["annotations"]["summary"]
            assert alert["annotations"]["runbook_url"].startswith("docs/operations.md#")
            if "for" in alert:
                assert re.fullmatch(r"\d+[smh]", alert["for"])


# -- kustomize -------------------------------------------------------------------------


def _kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", _kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_references_exist(path: Path) -> None:
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization.get("resources", []):
        target = (path.parent / resource).resolve()
        assert target.exists(), resource
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), resource
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator.get("files", []):
            assert (path.parent / file).exists(), file


def test_every_manifest_file_is_listed_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for path in _kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        for resource in kustomization.get("resources", []):
            listed.add((path.parent / resource).resolve())
        for generator in kustomization.get("configMapGenerator", []):
            listed.update((path.parent / f).resolve() for f in generator.get("files", []))
    assert {p.resolve() for p in _manifest_files()} - listed == set()
    assert DASHBOARD.resolve() in listed


def test_the_example_overlay_builds_on_everything() -> None:
    def reachable(directory: Path) -> set[Path]:
        seen = {directory.resolve()}
        for resource in yaml.safe_load((directory / "kustomization.yaml").read_text()).get(
            "resources", []
        ):
            target = (directory / resource).resolve()
            if target.is_dir():
                seen |= reachable(target)
        return seen

    dirs = reachable(DEPLOY / "overlays" / "example")
    for name in ("base", "base/forwarder", "base/aggregator", "crd", "operator"):
        assert (DEPLOY / name).resolve() in dirs, name


def _json_pointer(document: Any, pointer: str) -> tuple[Any, str | int]:
    *parents, last = pointer.lstrip("/").split("/")
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, (int(last) if isinstance(node, list) else last)


def _apply_json6902(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    patched = copy.deepcopy(document)
    for op in operations:
        parent, key = _json_pointer(patched, op["path"])
        if op["op"] == "test":
            assert parent[key] == op["value"], op
        elif op["op"] == "replace":
            assert (key in parent) if isinstance(parent, dict) else key < len(parent), op
            parent[key] = op["value"]
        elif op["op"] == "add":
            parent[key] = op["value"]
        else:
            raise AssertionError(f"unsupported op in test: {op}")
    return patched


def _overlay() -> dict[str, Any]:
    return dict(
        yaml.safe_load((DEPLOY / "overlays" / "example" / "kustomization.yaml").read_text())
    )


def _overlay_patched(kind: str, name: str) -> dict[str, Any]:
    (patch,) = [
        p
        for p in _overlay()["patches"]
        if (p["target"]["kind"], p["target"]["name"]) == (kind, name)
    ]
    target = patch["target"]
    document = _one(KUSTOMIZE, kind, name, target.get("namespace"))
    return _apply_json6902(document, yaml.safe_load(patch["patch"]))


def _store_url(statefulset: dict[str, Any]) -> str:
    env = {e["name"]: e for e in _container(statefulset)["env"]}
    return str(env["LOGFERRY_STORE_URL"]["value"])


def test_example_overlay_patches_images_and_replicas_apply_to_the_base() -> None:
    manifests = KUSTOMIZE
    overlay = _overlay()
    # A namespace transformer would fold the forwarder's namespace into the others'.
    assert "namespace" not in overlay
    for patch in overlay["patches"]:
        target = patch["target"]
        patched = _overlay_patched(target["kind"], target["name"])
        assert kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)
        if target["kind"] == "StatefulSet":
            assert _store_url(patched).startswith("https://")
    images_in_use = {
        c["image"].split(":")[0]
        for _, d in _documents(manifests)
        if d["kind"] in {"DaemonSet", "StatefulSet", "Deployment"}
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert {i["name"] for i in overlay["images"]} == images_in_use
    (replicas,) = overlay["replicas"]
    assert replicas["name"] == _statefulset(manifests)["metadata"]["name"]
    assert replicas["count"] >= 2
    # The operator runs from the aggregator image (it carries the operator extra).
    images = {i["name"]: i for i in overlay["images"]}
    assert images["logferry"] == {**images["logferry-aggregator"], "name": "logferry"}


# -- secrets ---------------------------------------------------------------------------


def _daemon_config_texts(manifests: Manifests) -> dict[str, str]:
    texts = {
        "forwarder configmap": _config_text(
            manifests, "logferry-forwarder-config", "forwarder.yaml"
        ),
        "aggregator configmap": _config_text(
            manifests, "logferry-aggregator-config", "aggregator.yaml"
        ),
    }
    for path in sorted((DEPLOY / "compose").glob("*.yaml")):
        texts[f"compose {path.name}"] = path.read_text()
    return texts


def test_no_secret_is_inlined(manifests: Manifests) -> None:
    for _, document in _documents(manifests):
        if document["kind"] == "Secret":
            assert not document.get("data")
            assert not document.get("stringData")
    for _, document in _documents(manifests):
        if document["kind"] == "ConfigMap":
            text = json.dumps(document["data"]).lower()
            assert "begin" not in text
            assert "private key" not in text
    # The shared key reaches the daemons as a file only: an env var would show in the pod
    # spec and in /proc/<pid>/environ.
    for workload in _workloads(manifests):
        for container in _pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef") or {}
                assert ref.get("name") != "logferry-shared-key", env["name"]


def test_authentication_is_on_in_every_shipped_config(manifests: Manifests) -> None:
    # The aggregator refuses to start without a shared key or client certificates unless
    # allow_unauthenticated is set; nothing shipped sets it, and keys come from files.
    for where, text in _daemon_config_texts(manifests).items():
        config = yaml.safe_load(text)
        side = config.get("input") or config.get("sender")
        assert side is not None, where
        assert "shared_key" not in side, f"{where}: an inline key; use shared_key_file"
        assert side.get("shared_key_file"), where
        assert "allow_unauthenticated" not in side, where


def _secret_file(workload: dict[str, Any], path: Path) -> tuple[str, str]:
    """(Secret name, key) behind a file of a Secret volume mounted in the workload."""
    volumes = _volumes(workload)
    for mount in _container(workload)["volumeMounts"]:
        if path.parent != Path(mount["mountPath"]):
            continue
        secret = volumes[mount["name"]]["secret"]
        keys = {i["path"]: i["key"] for i in secret.get("items", [])}
        if not secret.get("items"):
            keys = {k: k for k in SECRET_KEYS[secret["secretName"]]}
        return str(secret["secretName"]), keys[path.name]
    raise AssertionError(f"{path} is not in a mounted Secret of {workload['metadata']['name']}")


def test_forwarders_and_aggregators_read_the_same_shared_key(
    manifests: Manifests, env: dict[str, str]
) -> None:
    forwarder_key = _forwarder_config(manifests).sender.shared_key_file
    aggregator_key = _aggregator_config(manifests).input.shared_key_file
    assert forwarder_key is not None
    assert aggregator_key is not None
    source = _secret_file(_daemonset(manifests), Path(forwarder_key))
    assert source == _secret_file(_statefulset(manifests), Path(aggregator_key))
    assert source == ("logferry-shared-key", "shared-key")
    # Two namespaces, one value: the guide creates both Secrets from the same key file.
    guide = OPERATIONS.read_text()
    commands = re.findall(
        r"kubectl -n (\S+) create secret generic logferry-shared-key\s+\\?\s*"
        r"--from-file=shared-key=(\S+)",
        guide,
    )
    assert {ns for ns, _ in commands} >= {NAMESPACE, FORWARDER_NAMESPACE}
    assert len({file for _, file in commands}) == 1, commands
    assert "rotat" in guide.lower()


def test_secrets_are_referenced_by_name(manifests: Manifests) -> None:
    referenced: set[tuple[str, str]] = set()
    for workload in _workloads(manifests):
        namespace = workload["metadata"]["namespace"]
        spec = _pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add((namespace, volume["secret"]["secretName"]))
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((namespace, ref["name"]))
    assert referenced == _secrets(manifests)
    # The guide creates each one (for the namespaces of the kustomize tree and the chart's
    # defaults).
    guide = OPERATIONS.read_text()
    for namespace, name in _secrets(KUSTOMIZE):
        assert f"kubectl -n {namespace} create secret generic {name}" in guide, name


# -- forwarder -------------------------------------------------------------------------


def test_forwarder_reads_var_log_read_only_and_keeps_state_on_the_host(
    manifests: Manifests, env: dict[str, str]
) -> None:
    ds = _daemonset(manifests)
    mounts = _mounts(_container(ds))
    volumes = _volumes(ds)
    varlog = mounts["/var/log"]
    assert varlog["readOnly"] is True
    assert volumes[varlog["name"]]["hostPath"]["path"] == "/var/log"
    state = mounts["/var/lib/logferry"]
    assert not state.get("readOnly")
    host = volumes[state["name"]]["hostPath"]
    assert host == {"path": "/var/lib/logferry", "type": "DirectoryOrCreate"}
    config = _forwarder_config(manifests)
    assert _under(config.spool.directory, "/var/lib/logferry")
    assert config.positions_file is not None
    assert _under(config.positions_file, "/var/lib/logferry")
    assert _under(config.source.path_glob, "/var/log")


def test_forwarder_runs_on_every_node_with_its_priority_class(manifests: Manifests) -> None:
    pod = _daemonset(manifests)["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    priority = _one(manifests, "PriorityClass")
    assert pod["priorityClassName"] == priority["metadata"]["name"]
    assert 0 < priority["value"] < 1_000_000_000  # below the system-* classes
    assert priority.get("globalDefault") is False


def test_forwarder_probes_resources_and_node_name(
    manifests: Manifests, env: dict[str, str]
) -> None:
    container = _container(_daemonset(manifests))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _forwarder_config(manifests)
    assert config.http.listen_port == 2020
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports[http["port"]] == config.http.listen_port
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert config.node_name == env["NODE_NAME"]
    resources = container["resources"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert _quantity(resources["limits"]["memory"]) >= 2 * 52 * 10**6


def test_forwarder_grace_period_outlasts_its_shutdown_deadline(
    manifests: Manifests, env: dict[str, str]
) -> None:
    grace = _daemonset(manifests)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > _forwarder_config(manifests).sender.shutdown_deadline_s + 5


def test_forwarder_security_context(manifests: Manifests) -> None:
    ds = _daemonset(manifests)
    security = _container(ds)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"].get("add", [])) <= {"DAC_READ_SEARCH"}
    assert security.get("privileged") is False
    # The only writable places: its host state directory and an in-memory /tmp.
    writable = {m["mountPath"] for m in _container(ds)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/logferry", "/tmp"}
    pod = ds["spec"]["template"]["spec"]
    assert (
        pod["serviceAccountName"]
        == _one(manifests, "ServiceAccount", "logferry-forwarder")["metadata"]["name"]
    )
    assert pod["automountServiceAccountToken"] is False
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "2020"


def test_forwarder_sends_to_the_headless_service(manifests: Manifests, env: dict[str, str]) -> None:
    config = _forwarder_config(manifests)
    headless = _one(manifests, "Service", "logferry-aggregator-headless")
    namespace = headless["metadata"]["namespace"]
    assert config.sender.dns_name == (
        f"logferry-aggregator-headless.{namespace}.svc.{manifests.cluster_domain}"
    )
    forward = {p["name"]: p for p in headless["spec"]["ports"]}["forward"]
    assert (
        config.sender.dns_port == forward["port"] == _aggregator_config(manifests).input.listen_port
    )
    # Across namespaces: the forwarder names the Service by its FQDN.
    assert namespace == manifests.namespace != _daemonset(manifests)["metadata"]["namespace"]
    assert config.sender.tls is True
    assert config.sender.tls_server_name == config.sender.dns_name
    assert config.sender.tls_ca_file is not None
    # Only the CA, from a Secret in the forwarder's own namespace.
    ca = _secret_file(_daemonset(manifests), Path(config.sender.tls_ca_file))
    assert ca == ("logferry-aggregator-ca", "ca.crt")


# -- aggregator ------------------------------------------------------------------------


def test_aggregator_spool_is_on_its_volume_claim(manifests: Manifests, env: dict[str, str]) -> None:
    sts = _statefulset(manifests)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(
        m for m in _container(sts)["volumeMounts"] if m["name"] == claim["metadata"]["name"]
    )
    config = _aggregator_config(manifests)
    assert _under(config.spool.directory, mount["mountPath"])
    assert _under(config.dlq.directory, mount["mountPath"])
    storage = _quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert config.spool.max_bytes + config.dlq.max_bytes <= storage
    retention = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_headless_service_selects_the_aggregators(manifests: Manifests) -> None:
    sts = _statefulset(manifests)
    headless = _one(manifests, "Service", "logferry-aggregator-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert _selects(headless["spec"]["selector"], pod_labels)
    assert _selects(sts["spec"]["selector"]["matchLabels"], pod_labels)
    # Draining (docs/operations.md) removes logferry.io/receive from one pod: that takes it
    # out of the headless Service only, never out of the set, its PDB or its metrics.
    assert headless["spec"]["selector"]["logferry.io/receive"] == "true"
    assert "logferry.io/receive" not in sts["spec"]["selector"]["matchLabels"]
    assert (
        "logferry.io/receive"
        not in _one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    )
    metrics = _one(manifests, "Service", "logferry-aggregator-metrics")
    assert "logferry.io/receive" not in metrics["spec"]["selector"]
    assert "logferry.io/receive-" in OPERATIONS.read_text()
    # ... and nothing else: the forwarder pods do not match.
    assert not _selects(
        headless["spec"]["selector"],
        _daemonset(manifests)["spec"]["template"]["metadata"]["labels"],
    )


def test_pdb_keeps_all_but_one_aggregator(manifests: Manifests) -> None:
    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = _statefulset(manifests)["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_aggregators_are_spread_over_nodes(manifests: Manifests) -> None:
    pod = _statefulset(manifests)["spec"]["template"]["spec"]
    labels = _statefulset(manifests)["spec"]["template"]["metadata"]["labels"]
    spread = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
        and c["whenUnsatisfiable"] == "DoNotSchedule"
    ]
    anti = [
        term
        for term in pod.get("affinity", {})
        .get("podAntiAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", [])
        if term["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert spread or anti
    for rule in spread + anti:
        assert _selects(rule["labelSelector"]["matchLabels"], labels)


def test_aggregator_stops_gracefully(manifests: Manifests, env: dict[str, str]) -> None:
    pod = _statefulset(manifests)["spec"]["template"]["spec"]
    container = _container(_statefulset(manifests))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    deadline = _aggregator_config(manifests).shutdown_deadline_s
    assert pod["terminationGracePeriodSeconds"] > pause + deadline


def test_aggregator_probes_security_and_mounts(manifests: Manifests, env: dict[str, str]) -> None:
    sts = _statefulset(manifests)
    container = _container(sts)
    config = _aggregator_config(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["forward"] == config.input.listen_port == 24224
    assert ports["metrics"] == config.http.listen_port == 2020
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == "logferry-aggregator"
    _one(manifests, "ServiceAccount", "logferry-aggregator")
    # Every file the config names comes from a mount.
    mounts = _mounts(container)
    assert config.pipelines is not None
    files = [
        config.input.shared_key_file,
        config.input.tls_cert_file,
        config.input.tls_key_file,
        config.pipelines.directory,
    ]
    output = config.output
    assert output.type == "opensearch"
    files.append(output.password_file)
    for file in files:
        assert file is not None
        assert any(_under(file, m) for m in mounts), file
    pipelines = _volumes(sts)[mounts["/etc/logferry/pipelines"]["name"]]["configMap"]
    assert pipelines == {"name": "logferry-pipelines", "optional": True}
    operator_env = {
        e["name"]: e for e in _container(_one(manifests, "Deployment", "logferry-operator"))["env"]
    }
    assert operator_env["LOGFERRY_CONFIGMAP_NAME"]["value"] == "logferry-pipelines"
    assert output.urls == [env["LOGFERRY_STORE_URL"]]
    assert output.username == env["LOGFERRY_STORE_USERNAME"]


@pytest.mark.parametrize(
    ("workload", "configmap", "key"),
    [
        ("DaemonSet", "logferry-forwarder-config", "forwarder.yaml"),
        ("StatefulSet", "logferry-aggregator-config", "aggregator.yaml"),
    ],
)
def test_config_is_mounted_where_the_command_reads_it(
    manifests: Manifests, workload: str, configmap: str, key: str
) -> None:
    document = _one(manifests, workload)
    container = _container(document)
    assert container["args"] == ["--config", f"/etc/logferry/config/{key}"]
    # A folder, never subPath: a running pod sees the ConfigMap change and reloads it.
    mount = _mounts(container)["/etc/logferry/config"]
    assert "subPath" not in mount
    assert _volumes(document)[mount["name"]]["configMap"]["name"] == configmap
    assert key in _one(manifests, "ConfigMap", configmap)["data"]


def test_every_env_var_a_config_uses_is_set_by_its_workload(manifests: Manifests) -> None:
    for workload, configmap, key in (
        (_daemonset(manifests), "logferry-forwarder-config", "forwarder.yaml"),
        (_statefulset(manifests), "logferry-aggregator-config", "aggregator.yaml"),
    ):
        used = set(
            re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", _config_text(manifests, configmap, key))
        )
        assert used <= {e["name"] for e in _container(workload)["env"]}, key


def test_configs_are_refused_without_their_environment(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch, mounted_secrets: dict[Path, Path]
) -> None:
    # An unset ${VAR} is an error, never an empty string: a pod without its Secret fails loudly.
    from logferry.common.errors import ConfigError

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError):
        _forwarder_config(manifests)
    with pytest.raises(ConfigError):
        _aggregator_config(manifests)


# -- auditor ---------------------------------------------------------------------------

AUDIT_PORT = 2022  # logferry audit's default --listen-port


def _audit_args(manifests: Manifests) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The auditor's arguments with the kubelet's $(VAR) expansion of its plain env values
    done (a Secret's value stays $(VAR)), and its env by name."""
    container = _container(_audit(manifests))
    env = {e["name"]: e for e in container["env"]}

    def expand(match: re.Match[str]) -> str:
        value = env[match.group(1)].get("value")
        return match.group(0) if value is None else str(value)

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, a) for a in container["args"]], env


def test_auditor_runs_logferry_audit_as_the_cli_reads_it(manifests: Manifests) -> None:
    from logferry.common.commands import standalone_parser
    from logferry.tools.audit import options_from_args, register

    audit = _audit(manifests)
    assert audit["metadata"]["namespace"] == manifests.namespace
    # One is enough: a proof depends on the store alone, several would agree.
    assert audit["spec"]["replicas"] == 1
    container = _container(audit)
    # The aggregator image carries logferry; its entrypoint is the aggregator's.
    assert container["image"] == _container(_statefulset(manifests))["image"]
    assert container["command"] == ["logferry", "audit"]
    args, env = _audit_args(manifests)
    parsed = standalone_parser(register, "audit").parse_args(args)
    options = options_from_args(parsed)  # what `logferry audit` itself refuses, refused here
    assert not parsed.once
    # The store the aggregators write to, with credentials of its own.
    assert options.store.urls == [_store_url(_statefulset(manifests))]
    assert options.store.username == "$(LOGFERRY_STORE_USERNAME)"
    username = env["LOGFERRY_STORE_USERNAME"]["valueFrom"]["secretKeyRef"]
    assert username == {"name": "logferry-audit-store-credentials", "key": "username"}
    assert options.store.password_file is not None
    assert _secret_file(audit, options.store.password_file) == (
        "logferry-audit-store-credentials",
        "password",
    )
    assert options.store.api_key_file is None
    assert options.store.tls_verify is True
    # The chart's defaults (the example values and kustomize-values.yaml keep them).
    assert options.index == "logs-*"
    assert (options.window_s, options.grace_s, options.span_s) == (300, 120, 3600)
    assert options.interval_s == 60
    assert parsed.listen_port == AUDIT_PORT
    assert parsed.listen_host == "0.0.0.0"


def test_auditor_probes_metrics_service_and_security(manifests: Manifests) -> None:
    audit = _audit(manifests)
    container = _container(audit)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": AUDIT_PORT}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    # The metrics Service selects it on that port (the ServiceMonitor scrapes the Service).
    service = _one(manifests, "Service", "logferry-audit-metrics")
    pod_labels = audit["spec"]["template"]["metadata"]["labels"]
    assert _selects(service["spec"]["selector"], pod_labels)
    assert _selects(audit["spec"]["selector"]["matchLabels"], pod_labels)
    assert service["metadata"]["labels"]["logferry.io/metrics"] == "true"
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "audit"
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", AUDIT_PORT, "metrics")
    # Locked down like the operator: no token, no RBAC, read-only root, nothing writable
    # but /tmp.
    pod = _pod_spec(audit)
    assert pod["automountServiceAccountToken"] is False
    account = _one(manifests, "ServiceAccount", pod["serviceAccountName"], manifests.namespace)
    assert account["automountServiceAccountToken"] is False
    for _, binding in _documents(manifests):
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert pod["serviceAccountName"] not in {s["name"] for s in binding["subjects"]}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}
    # Secrets as files only: the one env var from a Secret is the user name.
    secret_env = [e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret_env == ["LOGFERRY_STORE_USERNAME"]


# -- namespaces and Pod Security -----------------------------------------------------------

POD_SECURITY = "pod-security.kubernetes.io/enforce"
# The restricted profile (Pod Security Standards, Kubernetes 1.30), as the admission
# controller checks it; baseline's rules are part of it. Left out: AppArmor annotations and
# Windows host processes, which nothing here could set by accident in a Linux pod spec.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the "restricted" Pod Security level (empty: it meets it)."""
    problems: list[str] = []
    pod_security = pod.get("securityContext") or {}
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} not allowed")
    for sysctl in pod_security.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not a safe one")
    if pod_security.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    if pod_security.get("seLinuxOptions", {}).get("type") not in (
        None,
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
    ):
        problems.append("the pod sets an SELinux type")
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    for container in containers:
        name = container["name"]
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser") == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (security.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault")
        if security.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount is not Default")
        if security.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t"):
            problems.append(f"{name}: sets an SELinux type")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


def _namespaces(manifests: Manifests) -> dict[str, dict[str, Any]]:
    return _namespaces_of(manifests.name)


@functools.cache
def _namespaces_of(rendering: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for _, d in _documents(_rendering(rendering))
        if d["kind"] == "Namespace"
    }


# The labels `helm install` expects the release namespace to have already (the chart leaves
# it out by default, Helm keeps its release record there): docs/operations.md labels it so
# before installing, checked in test_helm_chart.py.
RELEASE_NAMESPACE_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


def _namespace_labels_of(manifests: Manifests, namespace: str) -> dict[str, str]:
    if namespace in _namespaces(manifests):
        return dict(_namespaces(manifests)[namespace]["metadata"]["labels"])
    assert namespace == manifests.namespace, f"namespace {namespace} is not rendered"
    return {**RELEASE_NAMESPACE_LABELS, "kubernetes.io/metadata.name": namespace}


def _level(manifests: Manifests, namespace: str) -> str:
    return _namespace_labels_of(manifests, namespace)[POD_SECURITY]


def test_two_namespaces_one_per_pod_security_level(manifests: Manifests) -> None:
    namespaces = _namespaces(manifests)
    # The chart renders the release namespace only where it is asked to (the kustomize
    # tree); `helm install` finds it created and labelled (RELEASE_NAMESPACE_LABELS).
    expected = {manifests.namespace, manifests.forwarder_namespace}
    if manifests.name == "helm-example-values":
        expected.remove(manifests.namespace)
    assert set(namespaces) == expected
    assert _level(manifests, manifests.namespace) == "restricted"
    assert _level(manifests, manifests.forwarder_namespace) == "privileged"
    for name, namespace in namespaces.items():
        labels = namespace["metadata"]["labels"]
        # Audit and warnings at restricted everywhere: anything else landing in the
        # privileged namespace is reported.
        assert labels["pod-security.kubernetes.io/audit"] == "restricted", name
        assert labels["pod-security.kubernetes.io/warn"] == "restricted", name
        # What the API server sets, and the NetworkPolicies select on.
        assert labels["kubernetes.io/metadata.name"] == name


def test_every_object_is_in_one_of_the_two_namespaces(manifests: Manifests) -> None:
    for path, document in _documents(manifests):
        namespace = document["metadata"].get("namespace")
        if document["kind"] in CLUSTER_SCOPED:
            assert namespace is None, path
        else:
            assert namespace in {manifests.namespace, manifests.forwarder_namespace}, (
                path,
                document["kind"],
            )
    bindings = [
        d for _, d in _documents(manifests) if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
    ]
    for binding in bindings:
        for subject in binding["subjects"]:
            _one(manifests, subject["kind"], subject["name"], subject["namespace"])


def test_the_operator_may_write_only_its_pipelines_copy_in_the_forwarder_namespace(
    manifests: Manifests,
) -> None:
    roles = [
        d
        for _, d in _documents(manifests)
        if d["kind"] in ("Role", "RoleBinding")
        and d["metadata"]["namespace"] == manifests.forwarder_namespace
    ]
    role = next(d for d in roles if d["kind"] == "Role")
    binding = next(d for d in roles if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "logferry-operator", "namespace": manifests.namespace}
    ]
    for rule in role["rules"]:
        assert rule["resources"] == ["configmaps"]
        if rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == ["logferry-pipelines"]
    volumes = {v["name"]: v for v in _pod_spec(_daemonset(manifests))["volumes"]}
    assert volumes["pipelines"]["configMap"] == {"name": "logferry-pipelines", "optional": True}
    operator = next(
        w for w in _workloads(manifests) if w["metadata"]["name"] == "logferry-operator"
    )
    (container,) = _pod_spec(operator)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOGFERRY_CONFIGMAP_MIRROR_NAMESPACES"] == manifests.forwarder_namespace


def test_the_forwarder_may_only_read_pods_with_an_expiring_token(manifests: Manifests) -> None:
    roles = [
        d
        for _, d in _documents(manifests)
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "logferry-forwarder-pods"
    ]
    (role,) = roles
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = [
        d
        for _, d in _documents(manifests)
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "logferry-forwarder-pods"
    ]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "logferry-forwarder",
            "namespace": manifests.forwarder_namespace,
        }
    ]
    spec = _pod_spec(_daemonset(manifests))
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = volumes["kube-api"]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["kube-api"]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mounts["kube-api"]["readOnly"] is True


def test_only_the_forwarder_runs_in_the_privileged_namespace(manifests: Manifests) -> None:
    assert _daemonset(manifests)["metadata"]["namespace"] == manifests.forwarder_namespace
    privileged = [
        w["metadata"]["name"]
        for w in _workloads(manifests)
        if _level(manifests, w["metadata"]["namespace"]) != "restricted"
    ]
    assert privileged == [_daemonset(manifests)["metadata"]["name"]]
    # Everything in that namespace belongs to the forwarder (or is a namespace-wide policy).
    for _, document in _documents(manifests):
        if document["metadata"].get("namespace") == manifests.forwarder_namespace:
            labels = document["metadata"]["labels"]
            component = labels.get("app.kubernetes.io/component")
            assert component == "forwarder" or document["kind"] == "NetworkPolicy", document


def test_every_pod_outside_the_forwarder_namespace_meets_restricted(
    manifests: Manifests,
) -> None:
    checked = {}
    for workload in _workloads(manifests):
        if workload["kind"] == "DaemonSet":
            continue
        key = f"{workload['kind']}/{workload['metadata']['name']}"
        assert _level(manifests, workload["metadata"]["namespace"]) == "restricted", key
        checked[key] = _restricted_violations(_pod_spec(workload))
    assert checked == {
        "StatefulSet/logferry-aggregator": [],
        "Deployment/logferry-operator": [],
        "Deployment/logferry-audit": [],
    }


def test_the_forwarder_needs_its_privileged_namespace(manifests: Manifests) -> None:
    # What restricted (and baseline) would refuse, and why the forwarder lives apart.
    problems = " ".join(_restricted_violations(_pod_spec(_daemonset(manifests))))
    assert "hostPath" in problems
    assert "uid 0" in problems
    assert "DAC_READ_SEARCH" in problems


def _mutated(change: str) -> dict[str, Any]:
    manifests = KUSTOMIZE
    pod = copy.deepcopy(_pod_spec(_statefulset(manifests)))
    container = pod["containers"][0]
    security = container["securityContext"]
    if change == "hostPath":
        pod["volumes"].append({"name": "h", "hostPath": {"path": "/var"}})
    elif change == "nfs volume":
        pod["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}})
    elif change == "root user":
        security["runAsUser"] = 0
    elif change == "runAsNonRoot false":
        security["runAsNonRoot"] = False
    elif change == "runAsNonRoot unset":
        del security["runAsNonRoot"]
        del pod["securityContext"]["runAsNonRoot"]
    elif change == "seccomp unset":
        del pod["securityContext"]["seccompProfile"]
    elif change == "seccomp unconfined":
        security["seccompProfile"] = {"type": "Unconfined"}
    elif change == "privilege escalation":
        del security["allowPrivilegeEscalation"]
    elif change == "capabilities kept":
        del security["capabilities"]
    elif change == "capability added":
        security["capabilities"]["add"] = ["NET_ADMIN"]
    elif change == "privileged":
        security["privileged"] = True
    elif change == "host network":
        pod["hostNetwork"] = True
    elif change == "host port":
        container["ports"][0]["hostPort"] = 24224
    elif change == "unsafe sysctl":
        pod["securityContext"]["sysctls"] = [{"name": "kernel.msgmax", "value": "1"}]
    elif change == "init container":
        pod["initContainers"] = [{"name": "init", "image": "busybox"}]
    return pod


@pytest.mark.parametrize(
    "change",
    [
        "hostPath",
        "nfs volume",
        "root user",
        "runAsNonRoot false",
        "runAsNonRoot unset",
        "seccomp unset",
        "seccomp unconfined",
        "privilege escalation",
        "capabilities kept",
        "capability added",
        "privileged",
        "host network",
        "host port",
        "unsafe sysctl",
        "init container",
    ],
)
def test_the_restricted_check_catches_each_rule(change: str) -> None:
    manifests = KUSTOMIZE
    assert _restricted_violations(_pod_spec(_statefulset(manifests))) == []
    assert _restricted_violations(_mutated(change)), change


# -- network policies ------------------------------------------------------------------------


def _namespace_labels(manifests: Manifests, pod: _Pod) -> dict[str, str]:
    assert pod.namespace is not None
    if pod.namespace in {manifests.namespace, manifests.forwarder_namespace}:
        return _namespace_labels_of(manifests, pod.namespace)
    return {"kubernetes.io/metadata.name": pod.namespace}


def _template_pod(workload: dict[str, Any], ip: str) -> _Pod:
    labels = dict(workload["spec"]["template"]["metadata"]["labels"])
    ports = tuple(
        p["containerPort"] for c in _pod_spec(workload)["containers"] for p in c.get("ports", [])
    )
    return _Pod(workload["metadata"]["name"], workload["metadata"]["namespace"], labels, ip, ports)


def _forwarder_pod(manifests: Manifests) -> _Pod:
    return _template_pod(_daemonset(manifests), "10.1.0.10")


def _aggregator_pod(manifests: Manifests) -> _Pod:
    return _template_pod(_statefulset(manifests), "10.1.0.20")


def _operator_pod(manifests: Manifests) -> _Pod:
    return _template_pod(_one(manifests, "Deployment", "logferry-operator"), "10.1.0.30")


def _audit_pod(manifests: Manifests) -> _Pod:
    return _template_pod(_audit(manifests), "10.1.0.40")


PROMETHEUS = _Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.1.1.1")
KUBE_DNS = _Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, "10.1.1.2")
OTHER_KUBE_SYSTEM = _Pod("metrics-server", "kube-system", {"k8s-app": "metrics-server"})
STORE_IN_CLUSTER = _Pod("opensearch", "logging", {"app": "opensearch"}, "10.1.1.3")
API_SERVER = _Pod("apiserver", ip="172.18.0.2")
OUTSIDE = _Pod("somewhere", ip="203.0.113.7")
TENANT = _Pod("tenant-app", "team-a", {"app": "web"}, "10.1.2.1")
# Pods that copy our labels from where they have no business: a tenant namespace, or a
# stray pod in the forwarder's namespace.
IMPOSTOR_FORWARDER = _Pod(
    "fake-forwarder",
    "team-a",
    {"app.kubernetes.io/name": "logferry", "app.kubernetes.io/component": "forwarder"},
    "10.1.2.2",
)
IMPOSTOR_PROMETHEUS = _Pod(
    "fake-prometheus", "team-a", {"app.kubernetes.io/name": "prometheus"}, "10.1.2.3"
)


def _stray_in_forwarder_namespace(manifests: Manifests) -> _Pod:
    return _Pod(
        "debug", manifests.forwarder_namespace, {"app.kubernetes.io/name": "logferry"}, "10.1.0.11"
    )


def _policies(manifests: Manifests) -> tuple[dict[str, Any], ...]:
    return _policies_of(manifests.name)


@functools.cache
def _policies_of(rendering: str) -> tuple[dict[str, Any], ...]:
    # Read-only here, evaluated thousands of times: copied once.
    return tuple(d for _, d in _documents(_rendering(rendering)) if d["kind"] == "NetworkPolicy")


def _selects_labels(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    # Only matchLabels is used here (the evaluator below knows nothing else).
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, selector
    return _selects(selector.get("matchLabels", {}), labels)


def _peer_admits(
    manifests: Manifests, peer: dict[str, Any], policy_namespace: str, other: _Pod
) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if other.namespace is None:
        return False  # pod selectors never match an address outside the pod network
    if "namespaceSelector" in peer:
        if not _selects_labels(peer["namespaceSelector"], _namespace_labels(manifests, other)):
            return False
    elif other.namespace != policy_namespace:
        return False
    return _selects_labels(peer.get("podSelector"), other.labels)


def _port_admits(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for rule in ports:
        assert isinstance(rule["port"], int), "numbered ports only (checked against containers)"
        if rule.get("protocol", "TCP") == protocol and rule["port"] <= port <= rule.get(
            "endPort", rule["port"]
        ):
            return True
    return False


def _side_admits(
    manifests: Manifests, pod: _Pod, other: _Pod, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies selecting ``pod`` let it accept (``ingress``) a connection from
    ``other``, or open one (``egress``) to it. Pods no policy of ours covers (outside our
    namespaces) are unrestricted here."""
    policy_type = "Ingress" if direction == "ingress" else "Egress"
    peer_key = "from" if direction == "ingress" else "to"
    selecting = [
        p
        for p in _policies(manifests)
        if p["metadata"]["namespace"] == pod.namespace
        and policy_type in p["spec"]["policyTypes"]
        and _selects_labels(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get(peer_key)
            if (
                not peers
                or any(
                    _peer_admits(manifests, peer, policy["metadata"]["namespace"], other)
                    for peer in peers
                )
            ) and _port_admits(rule.get("ports"), port, protocol):
                return True
    return False


def _connects(
    manifests: Manifests, source: _Pod, target: _Pod, port: int, protocol: str = "TCP"
) -> bool:
    egress = source.namespace is None or _side_admits(
        manifests, source, target, port, protocol, "egress"
    )
    ingress = target.namespace is None or _side_admits(
        manifests, target, source, port, protocol, "ingress"
    )
    return egress and ingress


def test_both_namespaces_deny_by_default(manifests: Manifests) -> None:
    for namespace in (manifests.namespace, manifests.forwarder_namespace):
        floors = [
            p
            for p in _policies(manifests)
            if p["metadata"]["namespace"] == namespace
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert len(floors) == 1, namespace


def test_only_forwarders_prometheus_and_the_operator_reach_an_aggregator(
    manifests: Manifests, env: dict[str, str]
) -> None:
    aggregator = _aggregator_pod(manifests)
    operator = _operator_pod(manifests)
    config = _aggregator_config(manifests)
    forward, metrics = config.input.listen_port, config.http.listen_port
    assert {forward, metrics} == set(aggregator.ports)
    assert _connects(manifests, _forwarder_pod(manifests), aggregator, forward)
    assert _connects(manifests, PROMETHEUS, aggregator, metrics)
    # The operator reads which pipelines each aggregator loaded from its /metrics.
    assert _connects(manifests, operator, aggregator, metrics)
    # Each only on its own port.
    assert not _connects(manifests, _forwarder_pod(manifests), aggregator, metrics)
    assert not _connects(manifests, PROMETHEUS, aggregator, forward)
    assert not _connects(manifests, operator, aggregator, forward)
    # Nobody else, on any port: not the other logferry pods, not a tenant (even one that
    # copies the forwarder's, Prometheus's or the operator's labels), not the outside.
    impostor_operator = _Pod("fake-operator", "team-a", dict(operator.labels), "10.1.2.4")
    others = [
        aggregator,
        _audit_pod(manifests),
        TENANT,
        IMPOSTOR_FORWARDER,
        IMPOSTOR_PROMETHEUS,
        impostor_operator,
        _stray_in_forwarder_namespace(manifests),
        OTHER_KUBE_SYSTEM,
        OUTSIDE,
        API_SERVER,
    ]
    for other in others:
        for port in (forward, metrics, 80, 443, 8080):
            assert not _connects(manifests, other, aggregator, port), (other.name, port)
    # The drain label (logferry.io/receive) does not change who may connect.
    drained = _Pod(
        aggregator.name,
        aggregator.namespace,
        {k: v for k, v in aggregator.labels.items() if k != "logferry.io/receive"},
        aggregator.ip,
    )
    assert _connects(manifests, _forwarder_pod(manifests), drained, forward)
    assert _connects(manifests, PROMETHEUS, drained, metrics)
    assert _connects(manifests, operator, drained, metrics)
    for port in (forward, 80, 443, 8080):
        assert not _connects(manifests, operator, aggregator, port), port


def test_aggregator_ingress_rules_name_their_peers_exactly(manifests: Manifests) -> None:
    aggregator = _aggregator_pod(manifests)
    for policy in _policies(manifests):
        if policy["metadata"]["namespace"] != aggregator.namespace or not _selects_labels(
            policy["spec"]["podSelector"], aggregator.labels
        ):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("ports"), policy["metadata"]["name"]
            assert rule.get("from"), policy["metadata"]["name"]
            for peer in rule["from"]:
                # A namespace and pods in it, both by label: no address ranges, no "any".
                assert set(peer) == {"namespaceSelector", "podSelector"}, peer
                assert peer["namespaceSelector"]["matchLabels"]
                assert peer["podSelector"]["matchLabels"]


def test_aggregator_egress_is_the_store_and_dns_only(
    manifests: Manifests, env: dict[str, str]
) -> None:
    aggregator = _aggregator_pod(manifests)
    store = urlsplit(_store_url(_statefulset(manifests)))
    assert store.port is not None
    assert store.hostname is not None
    # The default store is a Service, <name>.<namespace>.svc..., and the policy names that
    # namespace; the example's is outside the cluster, at the addresses its values give. The
    # policy admits the URL's port, and only that.
    store_pod = manifests.store
    if store_pod.namespace is not None:
        assert store.hostname.split(".")[1] == store_pod.namespace
    assert _connects(manifests, aggregator, store_pod, store.port)
    assert not _connects(manifests, aggregator, store_pod, store.port + 1)
    assert _connects(manifests, aggregator, KUBE_DNS, 53, "UDP")
    assert _connects(manifests, aggregator, KUBE_DNS, 53, "TCP")
    for target, port in (
        (_forwarder_pod(manifests), 2020),
        (_operator_pod(manifests), 8080),
        (_audit_pod(manifests), 2022),
        (OTHER_KUBE_SYSTEM, 53),
        (TENANT, store.port),
        (API_SERVER, 443),
        (API_SERVER, 6443),
        (OUTSIDE, store.port),
        (OUTSIDE, 443),
    ):
        assert not _connects(manifests, aggregator, target, port), (target.name, port)


def test_the_example_overlay_lets_the_aggregators_reach_its_store_only() -> None:
    url = urlsplit(_store_url(_overlay_patched("StatefulSet", "logferry-aggregator")))
    policy = _overlay_patched("NetworkPolicy", "logferry-aggregator")
    (store_rule,) = [r for r in policy["spec"]["egress"] if r["ports"][0]["port"] != 53]
    assert [p["port"] for p in store_rule["ports"]] == [url.port]
    (peer,) = store_rule["to"]
    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
    # A placeholder from the documentation range until the environment puts its own.
    assert network.subnet_of(ipaddress.ip_network("192.0.2.0/24"))


def test_the_example_overlay_points_the_auditor_at_the_aggregators_store() -> None:
    aggregators = _overlay_patched("StatefulSet", "logferry-aggregator")
    audit = _overlay_patched("Deployment", "logferry-audit")
    assert _store_url(audit) == _store_url(aggregators)
    # The same rule as the aggregators' (their egress to the store is the first rule of both).
    egress = _overlay_patched("NetworkPolicy", "logferry-audit")["spec"]["egress"]
    aggregator_egress = _overlay_patched("NetworkPolicy", "logferry-aggregator")["spec"]["egress"]
    assert egress == aggregator_egress[:1]


def test_forwarder_reaches_the_aggregators_the_api_server_and_dns_only(
    manifests: Manifests, env: dict[str, str]
) -> None:
    forwarder = _forwarder_pod(manifests)
    config = _forwarder_config(manifests)
    assert _connects(manifests, forwarder, _aggregator_pod(manifests), config.sender.dns_port)
    assert _connects(manifests, forwarder, KUBE_DNS, 53, "UDP")
    # Its node's pods (labels, annotations): the API server's ports only.
    assert config.kubernetes.enabled
    for port in (443, 6443):
        assert _connects(manifests, forwarder, API_SERVER, port)
    for target, port in (
        (_aggregator_pod(manifests), 2020),
        (_operator_pod(manifests), 8080),
        (_audit_pod(manifests), 2022),
        (STORE_IN_CLUSTER, 9200),
        (API_SERVER, 80),
        (OUTSIDE, 24224),
        (TENANT, 24224),
        (IMPOSTOR_FORWARDER, 2020),
    ):
        assert not _connects(manifests, forwarder, target, port), (target.name, port)
    # In: Prometheus on the metrics port, nobody else.
    assert _connects(manifests, PROMETHEUS, forwarder, config.http.listen_port)
    assert config.http.listen_port in forwarder.ports
    for source in (
        TENANT,
        IMPOSTOR_PROMETHEUS,
        _aggregator_pod(manifests),
        _operator_pod(manifests),
        _audit_pod(manifests),
        OUTSIDE,
    ):
        assert not _connects(manifests, source, forwarder, config.http.listen_port), source.name


def test_operator_reaches_the_api_server_the_aggregators_metrics_and_dns_only(
    manifests: Manifests,
) -> None:
    operator = _operator_pod(manifests)
    for port in (443, 6443):
        assert _connects(manifests, operator, API_SERVER, port)
    assert _connects(manifests, operator, KUBE_DNS, 53, "UDP")
    # The aggregators' metrics port (LOGFERRY_AGGREGATORS), and nothing else of theirs.
    assert _connects(manifests, operator, _aggregator_pod(manifests), 2020)
    for target, port in (
        (_aggregator_pod(manifests), 24224),
        (_forwarder_pod(manifests), 2020),
        (_audit_pod(manifests), 2022),
        (STORE_IN_CLUSTER, 9200),
        (OUTSIDE, 80),
        (OUTSIDE, 2020),
        (TENANT, 2020),
    ):
        assert not _connects(manifests, operator, target, port), (target.name, port)
    # Nothing comes in (kubelet's probe comes from the node, which policies never block).
    for source in (
        _aggregator_pod(manifests),
        _forwarder_pod(manifests),
        _audit_pod(manifests),
        PROMETHEUS,
        TENANT,
    ):
        assert not _connects(manifests, source, operator, 8080), source.name


def test_operator_finds_every_receiving_aggregator_and_may_reach_its_metrics(
    manifests: Manifests, env: dict[str, str]
) -> None:
    (container,) = _pod_spec(_one(manifests, "Deployment", "logferry-operator"))["containers"]
    value = {e["name"]: e.get("value") for e in container["env"]}["LOGFERRY_AGGREGATORS"]
    host, _, port = value.rpartition(":")
    service, namespace, svc, domain = host.split(".", 3)
    assert (svc, domain) == ("svc", manifests.cluster_domain)
    # The headless Service the forwarders resolve: every ready, receiving aggregator pod.
    headless = _one(manifests, "Service", service, namespace)
    assert headless["spec"]["clusterIP"] == "None"
    assert namespace == manifests.namespace == _statefulset(manifests)["metadata"]["namespace"]
    assert _selects(
        headless["spec"]["selector"],
        _statefulset(manifests)["spec"]["template"]["metadata"]["labels"],
    )
    # The port is the aggregators' metrics port, where they serve /metrics.
    ports = {p["name"]: p["containerPort"] for p in _container(_statefulset(manifests))["ports"]}
    assert int(port) == ports["metrics"] == _aggregator_config(manifests).http.listen_port
    assert _connects(manifests, _operator_pod(manifests), _aggregator_pod(manifests), int(port))


def test_only_prometheus_reaches_the_auditor_and_it_reaches_only_the_store(
    manifests: Manifests,
) -> None:
    audit = _audit_pod(manifests)
    assert audit.ports == (AUDIT_PORT,)
    # In: Prometheus on the metrics port, nobody else (kubelet's probes come from the node).
    assert _connects(manifests, PROMETHEUS, audit, AUDIT_PORT)
    for port in (2020, 80, 443, 8080):
        assert not _connects(manifests, PROMETHEUS, audit, port), port
    impostor = _Pod("fake-audit", "team-a", dict(audit.labels), "10.1.2.5")
    for other in (
        _aggregator_pod(manifests),
        _forwarder_pod(manifests),
        _operator_pod(manifests),
        TENANT,
        IMPOSTOR_PROMETHEUS,
        impostor,
        _stray_in_forwarder_namespace(manifests),
        OTHER_KUBE_SYSTEM,
        OUTSIDE,
        API_SERVER,
    ):
        for port in (AUDIT_PORT, 2020, 80, 443):
            assert not _connects(manifests, other, audit, port), (other.name, port)
    # Out: the store the aggregators reach (at its URL's port only) and DNS, nothing else.
    store = urlsplit(_store_url(_audit(manifests)))
    assert store.port is not None
    assert _connects(manifests, audit, manifests.store, store.port)
    assert not _connects(manifests, audit, manifests.store, store.port + 1)
    assert _connects(manifests, audit, KUBE_DNS, 53, "UDP")
    assert _connects(manifests, audit, KUBE_DNS, 53, "TCP")
    for target, port in (
        (_aggregator_pod(manifests), 2020),
        (_aggregator_pod(manifests), 24224),
        (_forwarder_pod(manifests), 2020),
        (_operator_pod(manifests), 8080),
        (OTHER_KUBE_SYSTEM, 53),
        (TENANT, store.port),
        (API_SERVER, 443),
        (API_SERVER, 6443),
        (OUTSIDE, store.port),
        (OUTSIDE, 443),
    ):
        assert not _connects(manifests, audit, target, port), (target.name, port)


def test_policy_selectors_and_ports_match_the_pods(manifests: Manifests) -> None:
    # Every policy that names pods names pods that exist, in the namespace it says, and
    # every port it opens is one their containers listen on.
    ours = [
        _forwarder_pod(manifests),
        _aggregator_pod(manifests),
        _operator_pod(manifests),
        _audit_pod(manifests),
    ]
    for policy in _policies(manifests):
        namespace = policy["metadata"]["namespace"]
        selected = [
            p
            for p in ours
            if p.namespace == namespace and _selects_labels(policy["spec"]["podSelector"], p.labels)
        ]
        assert selected, policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                for pod in selected:
                    assert port["port"] in pod.ports, (policy["metadata"]["name"], pod.name)
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
                target_namespace = labels.get("kubernetes.io/metadata.name")
                if target_namespace not in {manifests.namespace, manifests.forwarder_namespace}:
                    continue
                targets = [
                    p
                    for p in ours
                    if p.namespace == target_namespace
                    and _selects_labels(peer.get("podSelector"), p.labels)
                ]
                assert targets, (policy["metadata"]["name"], peer)
                for port in rule["ports"]:
                    for pod in targets:
                        assert port["port"] in pod.ports, (policy["metadata"]["name"], pod.name)


def test_the_guide_says_how_to_adapt_the_policies() -> None:
    guide = OPERATIONS.read_text()
    assert "## Network policies" in guide
    for needle in ("app.kubernetes.io/name: prometheus", "kubernetes.io/metadata.name", "6443"):
        assert needle in guide, needle


# -- the rendered overlay --------------------------------------------------------------------


def test_kustomize_renders_the_overlay_into_both_namespaces() -> None:
    # The real kustomize (kubectl's) on the example overlay: the layout survives it.
    manifests = KUSTOMIZE
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the file-level tests above still ran)")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / "example")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == len(list(_documents(manifests))) - len(
        [
            d
            for _, d in _documents(manifests)
            if d["apiVersion"].startswith("monitoring.coreos.com/")
        ]
    )
    placed: dict[tuple[str, str], str | None] = {}
    for document in rendered:
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        metadata = document["metadata"]
        placed[(document["kind"], metadata["name"])] = metadata.get("namespace")
    assert placed[("DaemonSet", "logferry-forwarder")] == FORWARDER_NAMESPACE
    assert placed[("ConfigMap", "logferry-forwarder-config")] == FORWARDER_NAMESPACE
    assert placed[("StatefulSet", "logferry-aggregator")] == NAMESPACE
    assert placed[("Deployment", "logferry-operator")] == NAMESPACE
    for _, document in _documents(manifests):
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        key = (document["kind"], document["metadata"]["name"])
        assert key in placed, key
        if document["kind"] not in {"NetworkPolicy"}:
            assert placed[key] == document["metadata"].get("namespace"), key
    namespaces = {
        d["metadata"]["name"]: d["metadata"]["labels"][POD_SECURITY]
        for d in rendered
        if d["kind"] == "Namespace"
    }
    assert namespaces == {NAMESPACE: "restricted", FORWARDER_NAMESPACE: "privileged"}


# -- compose ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_is_valid_against_the_compose_spec() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / (
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(_compose())


def test_compose_services_reference_what_exists() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"opensearch", "forwarder", "loadgen"} <= services.keys()
    assert (
        sum(1 for s in services.values() if s.get("image", "").startswith("logferry-aggregator"))
        == 2
    )
    assert services["opensearch"]["image"] == "opensearchproject/opensearch:2.19.1"
    assert services["opensearch"]["environment"]["DISABLE_SECURITY_PLUGIN"] == "true"
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, (name, target)
            assert condition["condition"] in {"service_started", "service_healthy"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], target
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    assert services["loadgen"]["entrypoint"] == ["logferry", "loadgen"]


def _compose_secret_file(name: str) -> Path:
    """The host file behind a compose secret, with its ${VAR:-default} left at the default
    (what `docker compose up` uses without the variable)."""
    source = _compose()["secrets"][name]["file"]
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", source)
    return DEPLOY / (match.group(1) if match else source)


@pytest.fixture
def compose_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[Path, Path]:
    """Compose bind-mounts each secret's file at /run/secrets/<name> in the containers that
    list it: opening that path opens the file in the repository instead."""
    redirects = {
        Path("/run/secrets") / name: _compose_secret_file(name) for name in _compose()["secrets"]
    }
    original = Path.open

    def open_mounted(self: Path, *args: Any, **kwargs: Any) -> Any:
        return original(redirects.get(self, self), *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_mounted)
    return redirects


def test_compose_mounts_one_shared_key_into_both_sides(
    environment: dict[str, str], compose_secrets: dict[Path, Path]
) -> None:
    services = _compose()["services"]
    forwarder = load_config(DEPLOY / "compose" / "forwarder.yaml", ForwarderConfig)
    aggregator = load_config(DEPLOY / "compose" / "aggregator.yaml", AggregatorConfig)
    assert forwarder.sender.shared_key_file == aggregator.input.shared_key_file
    key_file = Path(aggregator.input.shared_key_file or "")
    assert key_file.parent == Path("/run/secrets")
    daemons = [n for n, s in services.items() if s.get("entrypoint") is None and "build" in s]
    assert sorted(daemons) == ["aggregator-0", "aggregator-1", "forwarder"]
    for name in daemons:
        assert key_file.name in services[name]["secrets"], name
    # The placeholder is readable by the images' user (uid 65532) once bind-mounted, and
    # says what it is.
    source = compose_secrets[key_file]
    assert source.stat().st_mode & 0o004
    assert "placeholder" in source.read_text()
    assert "\n" not in source.read_text()


def test_compose_daemon_configs_load(
    environment: dict[str, str], compose_secrets: dict[Path, Path]
) -> None:
    forwarder = load_config(DEPLOY / "compose" / "forwarder.yaml", ForwarderConfig)
    aggregator = load_config(DEPLOY / "compose" / "aggregator.yaml", AggregatorConfig)
    services = _compose()["services"]
    # The forwarder tails the volume the load generator writes.
    loadgen = services["loadgen"]
    root = loadgen["command"][loadgen["command"].index("--dir") + 1]
    assert forwarder.source.path_glob == f"{root}/containers/*.log"
    shared = {v.split(":")[0] for v in loadgen["volumes"]} & {
        v.split(":")[0] for v in services["forwarder"]["volumes"]
    }
    assert shared
    for server in forwarder.sender.servers:
        host, port = server.rsplit(":", 1)
        assert host in services
        assert int(port) == aggregator.input.listen_port
    output = aggregator.output
    assert output.type == "opensearch"
    assert output.urls == ["http://opensearch:9200"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if source.endswith(".yaml"):
                assert target == f"/etc/logferry/{Path(source).name}", name
        if name.startswith("aggregator"):
            grace = int(service["stop_grace_period"].rstrip("s"))
            assert grace > aggregator.shutdown_deadline_s
        if name == "forwarder":
            grace = int(service["stop_grace_period"].rstrip("s"))
            assert grace > forwarder.sender.shutdown_deadline_s
            assert service["environment"]["NODE_NAME"] == "compose-node"


# -- metrics in the dashboard and the alerts --------------------------------------------


def _exported_metric_names() -> set[str]:
    """Every series name the code exports: counters get _total, histograms their parts."""
    names: set[str] = set()
    for path in (ROOT / "logferry").rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"\bcounter\(\s*(?:\w+,\s*)?\"(\w+)\"", text):
            names.add(f"logferry_{match.group(1)}_total")
        for match in re.finditer(r"\bgauge\(\s*(?:\w+,\s*)?\"(\w+)\"", text):
            names.add(f"logferry_{match.group(1)}")
        for match in re.finditer(r"\b(Histogram|Gauge|Counter)\(\s*\"(logferry_\w+)\"", text):
            kind, name = match.groups()
            if kind == "Histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "Counter":
                names.add(f"{name}_total")
            else:
                names.add(name)
    return names


def test_metric_scan_sees_every_aggregator_and_forwarder_metric() -> None:
    from prometheus_client import CollectorRegistry

    from logferry.aggregator.metrics import AggregatorMetrics
    from logferry.forwarder.metrics import ForwarderMetrics

    registry = CollectorRegistry()
    ForwarderMetrics(registry)
    families = list(AggregatorMetrics().registry.collect()) + list(registry.collect())
    expected = set()
    for family in families:
        suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
        if family.name.startswith("logferry_"):  # process_*, python_*: the client's own
            expected.add(family.name + suffix)
    assert expected <= _exported_metric_names()


def _metrics_in(expression: str) -> set[str]:
    return set(re.findall(r"\blogferry_[a-z_]+\b", expression))


def _dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[str]:
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exported = _exported_metric_names()
    used = set().union(*(_metrics_in(e) for e in _dashboard_expressions()))
    assert used
    assert used <= exported, sorted(used - exported)


def test_dashboard_has_the_key_panels() -> None:
    expressions = " ".join(_dashboard_expressions())
    for needle in (
        "sum by (tenant) (rate(logferry_records_in_total",
        "logferry_spool_bytes",
        "logferry_ack_latency_seconds_bucket",
        "logferry_sender_ack_latency_seconds_bucket",
        "logferry_sender_chunks_retried_total",
        "logferry_dlq_records_total",
        "logferry_lag_bytes",
        "logferry_pipeline_rejections_total",
    ):
        assert needle in expressions, needle
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _series_of(registry: Any) -> set[str]:
    names = set()
    for family in registry.collect():
        suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_dashboard_queries_each_daemon_in_its_own_namespace(manifests: Manifests) -> None:
    from prometheus_client import CollectorRegistry

    from logferry.aggregator.metrics import AggregatorMetrics
    from logferry.forwarder.metrics import ForwarderMetrics

    registry = CollectorRegistry()
    ForwarderMetrics(registry)  # every forwarder metric, the sender's included
    forwarder = _series_of(registry)
    aggregator = _series_of(AggregatorMetrics().registry)
    dashboard = manifests.dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["namespace"]["current"]["value"] == manifests.namespace
    assert variables["forwarder_namespace"]["current"]["value"] == manifests.forwarder_namespace
    assert _metrics_in(variables["forwarder_namespace"]["definition"]) <= forwarder - aggregator
    assert _metrics_in(variables["namespace"]["definition"]) <= aggregator - forwarder
    for expression in _dashboard_expressions(dashboard):
        used = _metrics_in(expression)
        component = re.search(r'component="(\w+)"', expression)
        if used <= forwarder - aggregator or (component and component.group(1) == "forwarder"):
            assert 'namespace="$forwarder_namespace"' in expression, expression
        else:
            assert used <= aggregator, expression
            assert 'namespace="$namespace"' in expression, expression


def _alerts(manifests: Manifests) -> list[dict[str, Any]]:
    return [r for g in _one(manifests, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_alerts_use_only_exported_metrics(manifests: Manifests) -> None:
    exported = _exported_metric_names()
    for alert in _alerts(manifests):
        used = _metrics_in(alert["expr"])
        assert used <= exported, (alert["alert"], sorted(used - exported))


def test_every_alert_has_a_section_in_the_operations_guide(manifests: Manifests) -> None:
    guide = OPERATIONS.read_text()
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in guide.splitlines()
        if line.startswith("#")
    }
    for alert in _alerts(manifests):
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == alert["alert"].lower()
        assert anchor in headings, alert["alert"]


AUDIT_ALERTS = {
    "LogferryAuditMissingRecords": "critical",
    "LogferryAuditDuplicateRecords": "warning",
    "LogferryAuditBehind": "warning",
}


def test_the_audit_alerts_watch_the_auditor(manifests: Manifests) -> None:
    # How they fire is tested with promtool in test_alert_rules.py; here, that they are
    # there, on the auditor's series, as the ServiceMonitor labels them (component="audit").
    (group,) = [
        g
        for g in _one(manifests, "PrometheusRule")["spec"]["groups"]
        if g["name"] == "logferry.audit"
    ]
    rules = {r["alert"]: r for r in group["rules"]}
    assert {name: r["labels"]["severity"] for name, r in rules.items()} == AUDIT_ALERTS
    for rule in rules.values():
        used = _metrics_in(rule["expr"])
        assert used
        assert all(m.startswith("logferry_audit_") for m in used), used
        assert 'component="audit"' in rule["expr"]
        assert "{{ $labels" not in rule["annotations"]["runbook_url"]
    assert (
        "absent(logferry_audit_proven_until_timestamp_seconds"
        in rules["LogferryAuditBehind"]["expr"]
    )
    for name in ("LogferryAuditMissingRecords", "LogferryAuditDuplicateRecords"):
        assert "{{ $labels.tenant }}" in rules[name]["annotations"]["summary"]


def test_forwarder_spool_alert_threshold_follows_the_configured_size(
    manifests: Manifests, env: dict[str, str]
) -> None:
    # A fill ratio against the size the forwarder reports, never a size written in the rule.
    (alert,) = [a for a in _alerts(manifests) if a["alert"] == "LogferryForwarderSpoolFilling"]
    used, threshold = (side.strip() for side in alert["expr"].split(">", 1))
    assert used.startswith("logferry_node_spool_bytes{")
    assert re.fullmatch(r"0\.75 \* logferry_node_spool_capacity_bytes\{[^}]*\}", threshold)
    assert _forwarder_config(manifests).spool.max_bytes > 0

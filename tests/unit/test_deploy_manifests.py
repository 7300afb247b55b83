"""deploy/: every Kubernetes manifest valid against the 1.30 schemas, the invariants the
operations guide relies on (the forwarder reads /var/log read-only and outlives its
shutdown deadline, each aggregator owns a volume and a headless Service finds them all...),
kustomizations that list exactly what exists, daemon configs that the real config models
accept, the compose file, the dashboard and the alerts (only metrics the code exports).

Hardening: two namespaces (the forwarder alone at Pod Security "privileged", every other
pod in one enforced at "restricted" and meeting it), NetworkPolicies that let only the
forwarders and Prometheus reach an aggregator (checked by evaluating them for pods in and
out of the cluster's namespaces), and authentication on: both sides read the same shared
key from a Secret, in the manifests and in compose."""

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

from logferry.aggregator.config import AggregatorConfig
from logferry.common.config import load_config, parse_config
from logferry.forwarder.config import ForwarderConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ENV = {
    "NODE_NAME": "node-1",
    "LOGFERRY_STORE_URL": "https://opensearch.example:9200",
    "LOGFERRY_STORE_USERNAME": "logferry",
}
NAMESPACE = "logferry"  # aggregators, operator: Pod Security "restricted"
FORWARDER_NAMESPACE = "logferry-forwarder"  # the forwarder alone: "privileged"
# (namespace, Secret): what the workloads reference and docs/operations.md creates.
SECRETS = {
    (NAMESPACE, "logferry-shared-key"),
    (NAMESPACE, "logferry-tls"),
    (NAMESPACE, "logferry-store-credentials"),
    (FORWARDER_NAMESPACE, "logferry-shared-key"),
    (FORWARDER_NAMESPACE, "logferry-aggregator-ca"),
}
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
        if not _is_kustomization(p) and p != COMPOSE and (DEPLOY / "compose") not in p.parents
    )


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    # Parsed once per file; every caller gets its own copy to change as it likes.
    for path in _manifest_files():
        for document in _parsed(path):
            yield path, copy.deepcopy(document)


def _kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, d) for p, d in _documents() if not d["apiVersion"].startswith("monitoring.coreos.com/")
    ]


def _one(kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in _documents()
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _workloads() -> list[dict[str, Any]]:
    return [d for _, d in _documents() if d["kind"] in WORKLOADS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    template = workload["spec"]["template"]
    if workload["kind"] == "CronJob":
        template = workload["spec"]["jobTemplate"]["spec"]["template"]
    return dict(template["spec"])


def _daemonset() -> dict[str, Any]:
    return _one("DaemonSet", "logferry-forwarder")


def _statefulset() -> dict[str, Any]:
    return _one("StatefulSet", "logferry-aggregator")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _config_text(configmap: str, key: str) -> str:
    return str(_one("ConfigMap", configmap)["data"][key])


@pytest.fixture
def mounted_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[Path, Path]:
    """The Secret files kubelet mounts into the forwarder and aggregator pods, with stand-in
    content: the configs read their shared key file while they are validated, and these
    paths exist only inside the pods. Opening one of them opens its stand-in instead."""
    redirects: dict[Path, Path] = {}
    for workload in (_daemonset(), _statefulset()):
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
def env(monkeypatch: pytest.MonkeyPatch, mounted_secrets: dict[Path, Path]) -> dict[str, str]:
    """The pods' environment: their env vars and their mounted Secrets."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


def _forwarder_config() -> ForwarderConfig:
    return parse_config(
        _config_text("logferry-forwarder-config", "forwarder.yaml"), ForwarderConfig
    )


def _aggregator_config() -> AggregatorConfig:
    return parse_config(
        _config_text("logferry-aggregator-config", "aggregator.yaml"), AggregatorConfig
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


def test_prometheus_operator_objects_have_the_expected_shape() -> None:
    # kubernetes_validate does not know monitoring.coreos.com: check the structure by hand.
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "logferry"
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"metrics"}
    selected = [
        d
        for _, d in _documents()
        if d["kind"] == "Service" and _selects(selector, d["metadata"]["labels"])
    ]
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in selected}
    assert components == {"forwarder", "aggregator"}
    # The two Services are in different namespaces; the monitor looks in both.
    namespaces = {d["metadata"]["namespace"] for d in selected}
    assert namespaces == {NAMESPACE, FORWARDER_NAMESPACE}
    assert set(monitor["spec"]["namespaceSelector"]["matchNames"]) == namespaces
    for service in selected:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
        assert 2020 in {p["port"] for p in service["spec"]["ports"]}
    rule = _one("PrometheusRule")
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
    document = _one(kind, name, target.get("namespace"))
    return _apply_json6902(document, yaml.safe_load(patch["patch"]))


def _store_url(statefulset: dict[str, Any]) -> str:
    env = {e["name"]: e for e in _container(statefulset)["env"]}
    return str(env["LOGFERRY_STORE_URL"]["value"])


def test_example_overlay_patches_images_and_replicas_apply_to_the_base() -> None:
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
        for _, d in _documents()
        if d["kind"] in {"DaemonSet", "StatefulSet", "Deployment"}
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert {i["name"] for i in overlay["images"]} == images_in_use
    (replicas,) = overlay["replicas"]
    assert replicas["name"] == _statefulset()["metadata"]["name"]
    assert replicas["count"] >= 2
    # The operator runs from the aggregator image (it carries the operator extra).
    images = {i["name"]: i for i in overlay["images"]}
    assert images["logferry"] == {**images["logferry-aggregator"], "name": "logferry"}


# -- secrets ---------------------------------------------------------------------------


def _daemon_config_texts() -> dict[str, str]:
    texts = {
        "forwarder configmap": _config_text("logferry-forwarder-config", "forwarder.yaml"),
        "aggregator configmap": _config_text("logferry-aggregator-config", "aggregator.yaml"),
    }
    for path in sorted((DEPLOY / "compose").glob("*.yaml")):
        texts[f"compose {path.name}"] = path.read_text()
    return texts


def test_no_secret_is_inlined() -> None:
    for _, document in _documents():
        if document["kind"] == "Secret":
            assert not document.get("data")
            assert not document.get("stringData")
    for _, document in _documents():
        if document["kind"] == "ConfigMap":
            text = json.dumps(document["data"]).lower()
            assert "begin" not in text
            assert "private key" not in text
    # The shared key reaches the daemons as a file only: an env var would show in the pod
    # spec and in /proc/<pid>/environ.
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef") or {}
                assert ref.get("name") != "logferry-shared-key", env["name"]


def test_authentication_is_on_in_every_shipped_config() -> None:
    # The aggregator refuses to start without a shared key or client certificates unless
    # allow_unauthenticated is set; nothing shipped sets it, and keys come from files.
    for where, text in _daemon_config_texts().items():
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


def test_forwarders_and_aggregators_read_the_same_shared_key(env: dict[str, str]) -> None:
    forwarder_key = _forwarder_config().sender.shared_key_file
    aggregator_key = _aggregator_config().input.shared_key_file
    assert forwarder_key is not None
    assert aggregator_key is not None
    source = _secret_file(_daemonset(), Path(forwarder_key))
    assert source == _secret_file(_statefulset(), Path(aggregator_key))
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


def test_secrets_are_referenced_by_name() -> None:
    referenced: set[tuple[str, str]] = set()
    for workload in _workloads():
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
    assert referenced == SECRETS
    guide = OPERATIONS.read_text()
    for namespace, name in SECRETS:
        assert f"kubectl -n {namespace} create secret generic {name}" in guide, name


# -- forwarder -------------------------------------------------------------------------


def test_forwarder_reads_var_log_read_only_and_keeps_state_on_the_host(env: dict[str, str]) -> None:
    ds = _daemonset()
    mounts = _mounts(_container(ds))
    volumes = _volumes(ds)
    varlog = mounts["/var/log"]
    assert varlog["readOnly"] is True
    assert volumes[varlog["name"]]["hostPath"]["path"] == "/var/log"
    state = mounts["/var/lib/logferry"]
    assert not state.get("readOnly")
    host = volumes[state["name"]]["hostPath"]
    assert host == {"path": "/var/lib/logferry", "type": "DirectoryOrCreate"}
    config = _forwarder_config()
    assert _under(config.spool.directory, "/var/lib/logferry")
    assert config.positions_file is not None
    assert _under(config.positions_file, "/var/lib/logferry")
    assert _under(config.source.path_glob, "/var/log")


def test_forwarder_runs_on_every_node_with_its_priority_class() -> None:
    pod = _daemonset()["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    priority = _one("PriorityClass")
    assert pod["priorityClassName"] == priority["metadata"]["name"]
    assert 0 < priority["value"] < 1_000_000_000  # below the system-* classes
    assert priority.get("globalDefault") is False


def test_forwarder_probes_resources_and_node_name(env: dict[str, str]) -> None:
    container = _container(_daemonset())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _forwarder_config()
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


def test_forwarder_grace_period_outlasts_its_shutdown_deadline(env: dict[str, str]) -> None:
    grace = _daemonset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > _forwarder_config().sender.shutdown_deadline_s + 5


def test_forwarder_security_context() -> None:
    ds = _daemonset()
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
        == _one("ServiceAccount", "logferry-forwarder")["metadata"]["name"]
    )
    assert pod["automountServiceAccountToken"] is False
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "2020"


def test_forwarder_sends_to_the_headless_service(env: dict[str, str]) -> None:
    config = _forwarder_config()
    headless = _one("Service", "logferry-aggregator-headless")
    namespace = headless["metadata"]["namespace"]
    assert config.sender.dns_name == f"logferry-aggregator-headless.{namespace}.svc.cluster.local"
    forward = {p["name"]: p for p in headless["spec"]["ports"]}["forward"]
    assert config.sender.dns_port == forward["port"] == _aggregator_config().input.listen_port
    # Across namespaces: the forwarder names the Service by its FQDN.
    assert namespace == NAMESPACE != _daemonset()["metadata"]["namespace"]
    assert config.sender.tls is True
    assert config.sender.tls_server_name == config.sender.dns_name
    assert config.sender.tls_ca_file is not None
    # Only the CA, from a Secret in the forwarder's own namespace.
    ca = _secret_file(_daemonset(), Path(config.sender.tls_ca_file))
    assert ca == ("logferry-aggregator-ca", "ca.crt")


# -- aggregator ------------------------------------------------------------------------


def test_aggregator_spool_is_on_its_volume_claim(env: dict[str, str]) -> None:
    sts = _statefulset()
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(
        m for m in _container(sts)["volumeMounts"] if m["name"] == claim["metadata"]["name"]
    )
    config = _aggregator_config()
    assert _under(config.spool.directory, mount["mountPath"])
    assert _under(config.dlq.directory, mount["mountPath"])
    storage = _quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert config.spool.max_bytes + config.dlq.max_bytes <= storage
    retention = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_headless_service_selects_the_aggregators() -> None:
    sts = _statefulset()
    headless = _one("Service", "logferry-aggregator-headless")
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
        "logferry.io/receive" not in _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    )
    metrics = _one("Service", "logferry-aggregator-metrics")
    assert "logferry.io/receive" not in metrics["spec"]["selector"]
    assert "logferry.io/receive-" in OPERATIONS.read_text()
    # ... and nothing else: the forwarder pods do not match.
    assert not _selects(
        headless["spec"]["selector"], _daemonset()["spec"]["template"]["metadata"]["labels"]
    )


def test_pdb_keeps_all_but_one_aggregator() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_aggregators_are_spread_over_nodes() -> None:
    pod = _statefulset()["spec"]["template"]["spec"]
    labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
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


def test_aggregator_stops_gracefully(env: dict[str, str]) -> None:
    pod = _statefulset()["spec"]["template"]["spec"]
    container = _container(_statefulset())
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    deadline = _aggregator_config().shutdown_deadline_s
    assert pod["terminationGracePeriodSeconds"] > pause + deadline


def test_aggregator_probes_security_and_mounts(env: dict[str, str]) -> None:
    sts = _statefulset()
    container = _container(sts)
    config = _aggregator_config()
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
    _one("ServiceAccount", "logferry-aggregator")
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
    operator_env = {e["name"]: e for e in _container(_one("Deployment"))["env"]}
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
    workload: str, configmap: str, key: str
) -> None:
    document = _one(workload)
    container = _container(document)
    assert container["args"] == ["--config", f"/etc/logferry/{key}"]
    mount = _mounts(container)[f"/etc/logferry/{key}"]
    assert mount["subPath"] == key
    assert _volumes(document)[mount["name"]]["configMap"]["name"] == configmap
    assert key in _one("ConfigMap", configmap)["data"]


def test_every_env_var_a_config_uses_is_set_by_its_workload() -> None:
    for workload, configmap, key in (
        (_daemonset(), "logferry-forwarder-config", "forwarder.yaml"),
        (_statefulset(), "logferry-aggregator-config", "aggregator.yaml"),
    ):
        used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", _config_text(configmap, key)))
        assert used <= {e["name"] for e in _container(workload)["env"]}, key


def test_configs_are_refused_without_their_environment(
    monkeypatch: pytest.MonkeyPatch, mounted_secrets: dict[Path, Path]
) -> None:
    # An unset ${VAR} is an error, never an empty string: a pod without its Secret fails loudly.
    from logferry.common.errors import ConfigError

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError):
        _forwarder_config()
    with pytest.raises(ConfigError):
        _aggregator_config()


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


@functools.cache
def _namespaces() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _documents() if d["kind"] == "Namespace"}


def _level(namespace: str) -> str:
    return str(_namespaces()[namespace]["metadata"]["labels"][POD_SECURITY])


def test_two_namespaces_one_per_pod_security_level() -> None:
    namespaces = _namespaces()
    assert set(namespaces) == {NAMESPACE, FORWARDER_NAMESPACE}
    assert _level(NAMESPACE) == "restricted"
    assert _level(FORWARDER_NAMESPACE) == "privileged"
    for name, namespace in namespaces.items():
        labels = namespace["metadata"]["labels"]
        # Audit and warnings at restricted everywhere: anything else landing in the
        # privileged namespace is reported.
        assert labels["pod-security.kubernetes.io/audit"] == "restricted", name
        assert labels["pod-security.kubernetes.io/warn"] == "restricted", name
        # What the API server sets, and the NetworkPolicies select on.
        assert labels["kubernetes.io/metadata.name"] == name


def test_every_object_is_in_one_of_the_two_namespaces() -> None:
    for path, document in _documents():
        namespace = document["metadata"].get("namespace")
        if document["kind"] in CLUSTER_SCOPED:
            assert namespace is None, path
        else:
            assert namespace in {NAMESPACE, FORWARDER_NAMESPACE}, (path, document["kind"])
    bindings = [d for _, d in _documents() if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    for binding in bindings:
        for subject in binding["subjects"]:
            _one(subject["kind"], subject["name"], subject["namespace"])


def test_the_operator_may_write_only_its_pipelines_copy_in_the_forwarder_namespace() -> None:
    roles = [
        d
        for _, d in _documents()
        if d["kind"] in ("Role", "RoleBinding")
        and d["metadata"]["namespace"] == FORWARDER_NAMESPACE
    ]
    role = next(d for d in roles if d["kind"] == "Role")
    binding = next(d for d in roles if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "logferry-operator", "namespace": NAMESPACE}
    ]
    for rule in role["rules"]:
        assert rule["resources"] == ["configmaps"]
        if rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == ["logferry-pipelines"]
    volumes = {v["name"]: v for v in _pod_spec(_daemonset())["volumes"]}
    assert volumes["pipelines"]["configMap"] == {"name": "logferry-pipelines", "optional": True}
    operator = next(w for w in _workloads() if w["metadata"]["name"] == "logferry-operator")
    (container,) = _pod_spec(operator)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOGFERRY_CONFIGMAP_MIRROR_NAMESPACES"] == FORWARDER_NAMESPACE


def test_the_forwarder_may_only_read_pods_with_an_expiring_token() -> None:
    roles = [
        d
        for _, d in _documents()
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "logferry-forwarder-pods"
    ]
    (role,) = roles
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = [
        d
        for _, d in _documents()
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "logferry-forwarder-pods"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "logferry-forwarder", "namespace": FORWARDER_NAMESPACE}
    ]
    spec = _pod_spec(_daemonset())
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = volumes["kube-api"]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["kube-api"]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mounts["kube-api"]["readOnly"] is True


def test_only_the_forwarder_runs_in_the_privileged_namespace() -> None:
    assert _daemonset()["metadata"]["namespace"] == FORWARDER_NAMESPACE
    privileged = [
        w["metadata"]["name"]
        for w in _workloads()
        if _level(w["metadata"]["namespace"]) != "restricted"
    ]
    assert privileged == [_daemonset()["metadata"]["name"]]
    # Everything in that namespace belongs to the forwarder (or is a namespace-wide policy).
    for _, document in _documents():
        if document["metadata"].get("namespace") == FORWARDER_NAMESPACE:
            labels = document["metadata"]["labels"]
            component = labels.get("app.kubernetes.io/component")
            assert component == "forwarder" or document["kind"] == "NetworkPolicy", document


@pytest.mark.parametrize(
    "workload",
    [w for w in _workloads() if w["kind"] != "DaemonSet"],
    ids=lambda w: f"{w['kind']}/{w['metadata']['name']}",
)
def test_every_pod_outside_the_forwarder_namespace_meets_restricted(
    workload: dict[str, Any],
) -> None:
    assert _level(workload["metadata"]["namespace"]) == "restricted"
    assert _restricted_violations(_pod_spec(workload)) == []


def test_the_forwarder_needs_its_privileged_namespace() -> None:
    # What restricted (and baseline) would refuse, and why the forwarder lives apart.
    problems = " ".join(_restricted_violations(_pod_spec(_daemonset())))
    assert "hostPath" in problems
    assert "uid 0" in problems
    assert "DAC_READ_SEARCH" in problems


def _mutated(change: str) -> dict[str, Any]:
    pod = copy.deepcopy(_pod_spec(_statefulset()))
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
    assert _restricted_violations(_pod_spec(_statefulset())) == []
    assert _restricted_violations(_mutated(change)), change


# -- network policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pod:
    """Someone who opens or accepts a connection: a pod (namespace and labels) or, without
    a namespace, an address outside the pod network (the API server, an external store)."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"
    ports: tuple[int, ...] = ()

    def namespace_labels(self) -> dict[str, str]:
        assert self.namespace is not None
        if self.namespace in _namespaces():
            return dict(_namespaces()[self.namespace]["metadata"]["labels"])
        return {"kubernetes.io/metadata.name": self.namespace}


def _template_pod(workload: dict[str, Any], ip: str) -> _Pod:
    labels = dict(workload["spec"]["template"]["metadata"]["labels"])
    ports = tuple(
        p["containerPort"] for c in _pod_spec(workload)["containers"] for p in c.get("ports", [])
    )
    return _Pod(workload["metadata"]["name"], workload["metadata"]["namespace"], labels, ip, ports)


def _forwarder_pod() -> _Pod:
    return _template_pod(_daemonset(), "10.1.0.10")


def _aggregator_pod() -> _Pod:
    return _template_pod(_statefulset(), "10.1.0.20")


def _operator_pod() -> _Pod:
    return _template_pod(_one("Deployment", "logferry-operator"), "10.1.0.30")


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
STRAY_IN_FORWARDER_NAMESPACE = _Pod(
    "debug", FORWARDER_NAMESPACE, {"app.kubernetes.io/name": "logferry"}, "10.1.0.11"
)


@functools.cache
def _policies() -> tuple[dict[str, Any], ...]:
    # Read-only here, evaluated thousands of times: parsed once.
    return tuple(d for _, d in _documents() if d["kind"] == "NetworkPolicy")


def _selects_labels(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    # Only matchLabels is used here (the evaluator below knows nothing else).
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, selector
    return _selects(selector.get("matchLabels", {}), labels)


def _peer_admits(peer: dict[str, Any], policy_namespace: str, other: _Pod) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if other.namespace is None:
        return False  # pod selectors never match an address outside the pod network
    if "namespaceSelector" in peer:
        if not _selects_labels(peer["namespaceSelector"], other.namespace_labels()):
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


def _side_admits(pod: _Pod, other: _Pod, port: int, protocol: str, direction: str) -> bool:
    """Whether the policies selecting ``pod`` let it accept (``ingress``) a connection from
    ``other``, or open one (``egress``) to it. Pods no policy of ours covers (outside our
    namespaces) are unrestricted here."""
    policy_type = "Ingress" if direction == "ingress" else "Egress"
    peer_key = "from" if direction == "ingress" else "to"
    selecting = [
        p
        for p in _policies()
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
                or any(_peer_admits(peer, policy["metadata"]["namespace"], other) for peer in peers)
            ) and _port_admits(rule.get("ports"), port, protocol):
                return True
    return False


def _connects(source: _Pod, target: _Pod, port: int, protocol: str = "TCP") -> bool:
    egress = source.namespace is None or _side_admits(source, target, port, protocol, "egress")
    ingress = target.namespace is None or _side_admits(target, source, port, protocol, "ingress")
    return egress and ingress


def test_both_namespaces_deny_by_default() -> None:
    for namespace in (NAMESPACE, FORWARDER_NAMESPACE):
        floors = [
            p
            for p in _policies()
            if p["metadata"]["namespace"] == namespace
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert len(floors) == 1, namespace


def test_only_forwarders_and_prometheus_reach_an_aggregator(env: dict[str, str]) -> None:
    aggregator = _aggregator_pod()
    config = _aggregator_config()
    forward, metrics = config.input.listen_port, config.http.listen_port
    assert {forward, metrics} == set(aggregator.ports)
    assert _connects(_forwarder_pod(), aggregator, forward)
    assert _connects(PROMETHEUS, aggregator, metrics)
    # Each only on its own port.
    assert not _connects(_forwarder_pod(), aggregator, metrics)
    assert not _connects(PROMETHEUS, aggregator, forward)
    # Nobody else, on any port: not the other logferry pods, not a tenant (even one that
    # copies the forwarder's or Prometheus's labels), not the outside.
    others = [
        _operator_pod(),
        aggregator,
        TENANT,
        IMPOSTOR_FORWARDER,
        IMPOSTOR_PROMETHEUS,
        STRAY_IN_FORWARDER_NAMESPACE,
        OTHER_KUBE_SYSTEM,
        OUTSIDE,
        API_SERVER,
    ]
    for other in others:
        for port in (forward, metrics, 80, 443, 8080):
            assert not _connects(other, aggregator, port), (other.name, port)
    # The drain label (logferry.io/receive) does not change who may connect.
    drained = _Pod(
        aggregator.name,
        aggregator.namespace,
        {k: v for k, v in aggregator.labels.items() if k != "logferry.io/receive"},
        aggregator.ip,
    )
    assert _connects(_forwarder_pod(), drained, forward)
    assert _connects(PROMETHEUS, drained, metrics)


def test_aggregator_ingress_rules_name_their_peers_exactly() -> None:
    aggregator = _aggregator_pod()
    for policy in _policies():
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


def test_aggregator_egress_is_the_store_and_dns_only(env: dict[str, str]) -> None:
    aggregator = _aggregator_pod()
    store = urlsplit(_store_url(_statefulset()))
    assert store.port is not None
    assert store.hostname is not None
    # The base's store is a Service: <name>.<namespace>.svc...; the policy names that
    # namespace and the URL's port.
    store_namespace = store.hostname.split(".")[1]
    store_pod = _Pod("store", store_namespace, {"app": "opensearch"}, "10.1.1.9")
    assert _connects(aggregator, store_pod, store.port)
    assert not _connects(aggregator, store_pod, store.port + 1)
    assert _connects(aggregator, KUBE_DNS, 53, "UDP")
    assert _connects(aggregator, KUBE_DNS, 53, "TCP")
    for target, port in (
        (_forwarder_pod(), 2020),
        (_operator_pod(), 8080),
        (OTHER_KUBE_SYSTEM, 53),
        (TENANT, store.port),
        (API_SERVER, 443),
        (API_SERVER, 6443),
        (OUTSIDE, store.port),
        (OUTSIDE, 443),
    ):
        assert not _connects(aggregator, target, port), (target.name, port)


def test_the_example_overlay_lets_the_aggregators_reach_its_store_only() -> None:
    url = urlsplit(_store_url(_overlay_patched("StatefulSet", "logferry-aggregator")))
    policy = _overlay_patched("NetworkPolicy", "logferry-aggregator")
    (store_rule,) = [r for r in policy["spec"]["egress"] if r["ports"][0]["port"] != 53]
    assert [p["port"] for p in store_rule["ports"]] == [url.port]
    (peer,) = store_rule["to"]
    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
    # A placeholder from the documentation range until the environment puts its own.
    assert network.subnet_of(ipaddress.ip_network("192.0.2.0/24"))


def test_forwarder_reaches_the_aggregators_the_api_server_and_dns_only(
    env: dict[str, str],
) -> None:
    forwarder = _forwarder_pod()
    config = _forwarder_config()
    assert _connects(forwarder, _aggregator_pod(), config.sender.dns_port)
    assert _connects(forwarder, KUBE_DNS, 53, "UDP")
    # Its node's pods (labels, annotations): the API server's ports only.
    assert config.kubernetes.enabled
    for port in (443, 6443):
        assert _connects(forwarder, API_SERVER, port)
    for target, port in (
        (_aggregator_pod(), 2020),
        (_operator_pod(), 8080),
        (STORE_IN_CLUSTER, 9200),
        (API_SERVER, 80),
        (OUTSIDE, 24224),
        (TENANT, 24224),
        (IMPOSTOR_FORWARDER, 2020),
    ):
        assert not _connects(forwarder, target, port), (target.name, port)
    # In: Prometheus on the metrics port, nobody else.
    assert _connects(PROMETHEUS, forwarder, config.http.listen_port)
    assert config.http.listen_port in forwarder.ports
    for source in (TENANT, IMPOSTOR_PROMETHEUS, _aggregator_pod(), _operator_pod(), OUTSIDE):
        assert not _connects(source, forwarder, config.http.listen_port), source.name


def test_operator_reaches_the_api_server_and_dns_only() -> None:
    operator = _operator_pod()
    for port in (443, 6443):
        assert _connects(operator, API_SERVER, port)
    assert _connects(operator, KUBE_DNS, 53, "UDP")
    for target, port in (
        (_aggregator_pod(), 24224),
        (_aggregator_pod(), 2020),
        (_forwarder_pod(), 2020),
        (STORE_IN_CLUSTER, 9200),
        (OUTSIDE, 80),
    ):
        assert not _connects(operator, target, port), (target.name, port)
    # Nothing comes in (kubelet's probe comes from the node, which policies never block).
    for source in (_aggregator_pod(), _forwarder_pod(), PROMETHEUS, TENANT):
        assert not _connects(source, operator, 8080), source.name


def test_policy_selectors_and_ports_match_the_pods() -> None:
    # Every policy that names pods names pods that exist, in the namespace it says, and
    # every port it opens is one their containers listen on.
    ours = [_forwarder_pod(), _aggregator_pod(), _operator_pod()]
    for policy in _policies():
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
                if target_namespace not in {NAMESPACE, FORWARDER_NAMESPACE}:
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
    assert len(rendered) == len(list(_documents())) - len(
        [d for _, d in _documents() if d["apiVersion"].startswith("monitoring.coreos.com/")]
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
    for _, document in _documents():
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
    env: dict[str, str], compose_secrets: dict[Path, Path]
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
    env: dict[str, str], compose_secrets: dict[Path, Path]
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


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
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


def test_dashboard_queries_each_daemon_in_its_own_namespace() -> None:
    from prometheus_client import CollectorRegistry

    from logferry.aggregator.metrics import AggregatorMetrics
    from logferry.forwarder.metrics import ForwarderMetrics

    registry = CollectorRegistry()
    ForwarderMetrics(registry)  # every forwarder metric, the sender's included
    forwarder = _series_of(registry)
    aggregator = _series_of(AggregatorMetrics().registry)
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["namespace"]["current"]["value"] == NAMESPACE
    assert variables["forwarder_namespace"]["current"]["value"] == FORWARDER_NAMESPACE
    assert _metrics_in(variables["forwarder_namespace"]["definition"]) <= forwarder - aggregator
    assert _metrics_in(variables["namespace"]["definition"]) <= aggregator - forwarder
    for expression in _dashboard_expressions():
        used = _metrics_in(expression)
        component = re.search(r'component="(\w+)"', expression)
        if used <= forwarder - aggregator or (component and component.group(1) == "forwarder"):
            assert 'namespace="$forwarder_namespace"' in expression, expression
        else:
            assert used <= aggregator, expression
            assert 'namespace="$namespace"' in expression, expression


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_alerts_use_only_exported_metrics() -> None:
    exported = _exported_metric_names()
    for alert in _alerts():
        used = _metrics_in(alert["expr"])
        assert used <= exported, (alert["alert"], sorted(used - exported))


def test_every_alert_has_a_section_in_the_operations_guide() -> None:
    guide = OPERATIONS.read_text()
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in guide.splitlines()
        if line.startswith("#")
    }
    for alert in _alerts():
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == alert["alert"].lower()
        assert anchor in headings, alert["alert"]


def test_forwarder_spool_alert_threshold_follows_the_configured_size(env: dict[str, str]) -> None:
    # A fill ratio against the size the forwarder reports, never a size written in the rule.
    (alert,) = [a for a in _alerts() if a["alert"] == "LogferryForwarderSpoolFilling"]
    used, threshold = (side.strip() for side in alert["expr"].split(">", 1))
    assert used.startswith("logferry_node_spool_bytes{")
    assert re.fullmatch(r"0\.75 \* logferry_node_spool_capacity_bytes\{[^}]*\}", threshold)
    assert _forwarder_config().spool.max_bytes > 0

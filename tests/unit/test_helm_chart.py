"""The Helm chart (deploy/helm/logferry) with the pinned helm: it lints, renders valid
Kubernetes 1.30 objects with the default and the example values, rolls exactly the pods whose
config changed, keeps no trace of the `logferry` namespace when released into another one,
and refuses values that would break the pods. (The manifests' invariants are checked on its
renderings by test_deploy_manifests.py and test_deploy_operator.py.)"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools import helm

ROOT = helm.ROOT
CHART = helm.CHART
EXAMPLE = CHART / "examples" / "production.yaml"
KUSTOMIZE_VALUES = ROOT / "deploy" / "helm" / "kustomize-values.yaml"
HELM_VERSION = "v3.16.4"
KUBERNETES_VERSION = "1.30"
MONITORING_ON = {
    "monitoring.serviceMonitor.enabled": True,
    "monitoring.prometheusRule.enabled": True,
    "monitoring.grafanaDashboard.enabled": True,
}
CONFIG_TEMPLATES = {
    "DaemonSet/logferry-forwarder": "templates/forwarder/configmap.yaml",
    "StatefulSet/logferry-aggregator": "templates/aggregator/configmap.yaml",
}


def _parts(**kwargs: Any) -> list[helm.Rendered]:
    return helm.split(helm.template(**kwargs))


def _objects(parts: list[helm.Rendered]) -> list[dict[str, Any]]:
    return [d for p in parts for d in yaml.safe_load_all(p.text) if d is not None]


def _pod_annotations(parts: list[helm.Rendered]) -> dict[str, dict[str, str]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": dict(
            d["spec"]["template"]["metadata"].get("annotations") or {}
        )
        for d in _objects(parts)
        if d["kind"] in {"DaemonSet", "StatefulSet", "Deployment"}
    }


def _checksums(**kwargs: Any) -> dict[str, str | None]:
    return {k: a.get("checksum/config") for k, a in _pod_annotations(_parts(**kwargs)).items()}


# -- the binary ---------------------------------------------------------------------------


def test_helm_is_the_pinned_build_from_the_cache_outside_the_repository() -> None:
    binary = Path(helm.helm_binary())
    assert binary.name == "helm"
    assert binary.parent.name == f"helm-{HELM_VERSION}"
    assert binary.parent.parent.name == "logferry"
    assert ROOT not in binary.resolve().parents
    assert helm.run("version", "--template", "{{.Version}}").strip() == HELM_VERSION


def test_ensure_helm_prints_the_cached_binary_without_building_it_again() -> None:
    result = subprocess.run(
        [str(helm.ENSURE_HELM)], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == helm.helm_binary()
    assert "building" not in result.stderr  # cached: nothing to build


def test_make_test_runs_with_the_pinned_helm() -> None:
    makefile = (ROOT / "Makefile").read_text()
    prerequisites = re.search(r"^test:(.*)$", makefile, re.M)
    assert prerequisites is not None
    assert "helm" in prerequisites.group(1).split()
    assert re.search(r"^helm: go\n\t@scripts/ensure-helm", makefile, re.M)
    assert 'HELM_ENV = LOGFERRY_HELM="$$(scripts/ensure-helm)"' in makefile
    assert re.search(r"^test:.*\n\t\$\(HELM_ENV\) \$\(BIN\)/pytest$", makefile, re.M)
    script = helm.ENSURE_HELM.read_text()
    assert "helm.sh/helm/v3/cmd/helm@$version" in script
    assert f"version={HELM_VERSION}" in script
    assert "${XDG_CACHE_HOME:-$HOME/.cache}/logferry/helm-$version" in script


def test_a_missing_helm_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_HELM", "/nonexistent/helm")
    with pytest.raises(helm.HelmError, match="not an executable"):
        helm.helm_binary()


# -- lint and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [EXAMPLE]], ids=["default", "example"])
def test_helm_lint_strict_passes(values: list[Path]) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["--values", str(path)]
    output = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"values": [EXAMPLE]}, {"settings": MONITORING_ON, "namespace": "other"}],
    ids=["default", "example", "monitoring-other-namespace"],
)
def test_every_rendered_object_is_valid_kubernetes_1_30(kwargs: dict[str, Any]) -> None:
    objects = _objects(_parts(**kwargs))
    checked = 0
    for document in objects:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a Kubernetes schema; test_deploy_manifests checks their shape
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 30


def test_the_example_values_are_what_they_say() -> None:
    objects = {
        f"{d['kind']}/{d['metadata']['name']}": d for d in _objects(_parts(values=[EXAMPLE]))
    }
    statefulset = objects["StatefulSet/logferry-aggregator"]
    assert statefulset["spec"]["replicas"] == 3
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    images = {
        name: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for name, d in objects.items()
        if d["kind"] in {"DaemonSet", "StatefulSet", "Deployment"}
    }
    assert images == {
        "DaemonSet/logferry-forwarder": "registry.example.com/logferry/forwarder:0.1.0",
        "StatefulSet/logferry-aggregator": "registry.example.com/logferry/aggregator:0.1.0",
        "Deployment/logferry-operator": "registry.example.com/logferry/aggregator:0.1.0",
        "Deployment/logferry-audit": "registry.example.com/logferry/aggregator:0.1.0",
    }
    forwarder = yaml.safe_load(
        objects["ConfigMap/logferry-forwarder-config"]["data"]["forwarder.yaml"]
    )
    assert forwarder["sender"]["tls"] is True
    assert {"ServiceMonitor/logferry", "PrometheusRule/logferry"} <= objects.keys()
    assert "ConfigMap/logferry-grafana-dashboard" in objects


def test_the_values_schema_refuses_typos_and_wrong_types() -> None:
    for settings, message in (
        ({"aggregator.replica": 3}, "Additional property replica is not allowed"),
        ({"aggregator.replicas": 1}, "aggregator.replicas"),
        ({"monitoring.serviceMonitor.enabled": "yes"}, "monitoring.serviceMonitor.enabled"),
        ({"clusterDomain": "Not A Domain"}, "clusterDomain"),
        ({"audit.window": "5 minutes"}, "audit.window"),
        ({"audit.interval": "0"}, "audit.interval"),
    ):
        with pytest.raises(helm.HelmError, match=re.escape(message)):
            helm.template(settings=settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"namespaces.forwarder": "logferry"}, "must differ from the release namespace"),
        ({"forwarder.terminationGracePeriodSeconds": 25}, "forwarder.terminationGracePeriod"),
        ({"aggregator.terminationGracePeriodSeconds": 40}, "aggregator.terminationGracePeriod"),
        ({"forwarder.config.spool.directory": "/tmp/x"}, "forwarder.config.spool.directory"),
        ({"aggregator.extraConfig.input.listen_port": 1}, "aggregator.extraConfig.input"),
        ({"forwarder.config.sender.tls": False}, "forwarder.config.sender.tls"),
        ({"audit.span": "1m"}, "audit.span must be at least one audit.window"),
    ],
)
def test_values_that_would_break_the_pods_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        helm.template(settings=settings)


# -- checksum/config ------------------------------------------------------------------------


def test_each_pod_template_carries_the_hash_of_its_rendered_configmap() -> None:
    parts = _parts()
    annotations = _pod_annotations(parts)
    for workload, template in CONFIG_TEMPLATES.items():
        (configmap,) = [p for p in parts if p.source == template]
        expected = hashlib.sha256(configmap.text.encode()).hexdigest()
        assert annotations[workload]["checksum/config"] == expected, workload
    # The operator's and the auditor's settings are their own pod templates' env and
    # arguments: no ConfigMap to follow.
    assert "checksum/config" not in annotations["Deployment/logferry-operator"]
    assert "checksum/config" not in annotations["Deployment/logferry-audit"]


@pytest.mark.parametrize(
    ("settings", "rolled"),
    [
        ({"forwarder.config.log.level": "debug"}, {"DaemonSet/logferry-forwarder"}),
        ({"forwarder.config.spool.max_bytes": "4GiB"}, {"DaemonSet/logferry-forwarder"}),
        ({"aggregator.config.indices.retention_days": 7}, {"StatefulSet/logferry-aggregator"}),
        ({"aggregator.config.workers": 4}, {"StatefulSet/logferry-aggregator"}),
        # Both configs name the aggregators' Service by its FQDN or the shared key's Secret.
        (
            {"clusterDomain": "k8s.example"},
            {"DaemonSet/logferry-forwarder"},
        ),
        (
            {"sharedKeySecret": "other-key"},
            {"DaemonSet/logferry-forwarder", "StatefulSet/logferry-aggregator"},
        ),
        # Not a config: no checksum moves (the pod specs change by themselves).
        ({"aggregator.replicas": 5}, set()),
        ({"forwarder.image.tag": "0.2.0"}, set()),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_a_config_change_rolls_exactly_the_pods_that_read_it(
    settings: dict[str, Any], rolled: set[str]
) -> None:
    before = _checksums()
    after = _checksums(settings=settings)
    assert (
        set(before)
        == set(after)
        == {
            *CONFIG_TEMPLATES,
            "Deployment/logferry-operator",
            "Deployment/logferry-audit",
        }
    )
    for workload in CONFIG_TEMPLATES:
        assert re.fullmatch(r"[0-9a-f]{64}", str(after[workload])), workload
    changed = {workload for workload in before if before[workload] != after[workload]}
    assert changed == rolled
    # The same values render the same hashes: nothing else (time, randomness) moves them.
    assert _checksums(settings=settings) == after


# -- namespaces -------------------------------------------------------------------------------

NAMES = {"logferry", "logferry-forwarder"}
# Where "logferry" or "logferry-forwarder" is an object's name, a label value or a category,
# never a namespace.
NOT_NAMESPACES = {
    "app.kubernetes.io/name",
    "name",
    "serviceAccountName",
    "title",
    "categories",
    "tags",
    "command",  # the executable: `logferry audit`
}
DNS_LABEL = re.compile(r"(?:^|\.)(logferry(?:-forwarder)?)\.svc\b")


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) of every string in a document, config files and JSON read as what
    they hold (a ConfigMap's forwarder.yaml, the dashboard)."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _strings(child, str(child_key))
    elif isinstance(node, list):
        for child in node:
            yield from _strings(child, key)
    elif isinstance(node, str):
        if key.endswith(".yaml") and "\n" in node:
            yield from _strings(yaml.safe_load(node), key)
        elif key.endswith(".json"):
            yield from _strings(json.loads(node), key)
        else:
            yield key, node


def _namespace_traces(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Every place that names the namespace logferry or logferry-forwarder."""
    found = []
    for document in objects:
        where = f"{document['kind']}/{document['metadata']['name']}"
        for key, text in _strings(document):
            items = {item.strip() for item in text.split(",")}
            if (items & NAMES and key not in NOT_NAMESPACES) or DNS_LABEL.search(text):
                found.append((where, key, text))
    return found


def test_another_release_namespace_leaves_no_trace_of_logferry() -> None:
    objects = _objects(_parts(namespace="other", settings=MONITORING_ON))
    assert _namespace_traces(objects) == []
    namespaces = {d["metadata"].get("namespace") for d in objects} - {None}
    assert namespaces == {"other", "other-forwarder"}
    dashboard = next(d for d in objects if d["metadata"]["name"] == "logferry-grafana-dashboard")
    assert '"value": "other-forwarder"' in dashboard["data"]["grafana-dashboard.json"]


def test_the_trace_finder_finds_the_default_namespace_everywhere_it_is_named() -> None:
    # The same check on the release namespace logferry: it must see every kind of place a
    # namespace is named, or the test above proves nothing.
    traces = _namespace_traces(_objects(_parts(settings=MONITORING_ON)))
    keys = {key for _, key, _ in traces}
    assert {
        "namespace",  # metadata, binding subjects
        "kubernetes.io/metadata.name",  # NetworkPolicy namespace selectors
        "matchNames",  # the ServiceMonitor
        "dns_name",  # forwarder.yaml's sender
        "tls_server_name",
        "value",  # the operator's env, the dashboard's variables
    } <= keys
    where = {w for w, _, _ in traces}
    assert {"Deployment/logferry-operator", "ConfigMap/logferry-forwarder-config"} <= where


def test_the_forwarder_namespace_and_cluster_domain_are_values() -> None:
    objects = _objects(
        _parts(
            namespace="obs",
            settings={"namespaces.forwarder": "node-logs", "clusterDomain": "c.example"},
        )
    )
    placed = {
        f"{d['kind']}/{d['metadata']['name']}": d["metadata"].get("namespace") for d in objects
    }
    assert placed["DaemonSet/logferry-forwarder"] == "node-logs"
    assert placed["StatefulSet/logferry-aggregator"] == "obs"
    configmap = next(d for d in objects if d["metadata"]["name"] == "logferry-forwarder-config")
    sender = yaml.safe_load(configmap["data"]["forwarder.yaml"])["sender"]
    assert sender["dns_name"] == "logferry-aggregator-headless.obs.svc.c.example"
    assert sender["tls_server_name"] == sender["dns_name"]
    operator = _document(objects, "Deployment", "logferry-operator")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LOGFERRY_AGGREGATORS"] == "logferry-aggregator-headless.obs.svc.c.example:2020"
    assert env["LOGFERRY_CONFIGMAP_MIRROR_NAMESPACES"] == "node-logs"


def test_namespace_toggles() -> None:
    def namespaces(**settings: Any) -> set[str]:
        objects = _objects(_parts(namespace="obs", settings=settings))
        return {d["metadata"]["name"] for d in objects if d["kind"] == "Namespace"}

    # helm install: the release namespace exists before the chart, the forwarder's is created.
    assert namespaces() == {"obs-forwarder"}
    assert namespaces(**{"namespaces.createRelease": True}) == {"obs", "obs-forwarder"}
    assert namespaces(**{"namespaces.createForwarder": False}) == set()


def test_the_install_steps_label_the_release_namespace_restricted() -> None:
    # test_deploy_manifests assumes these labels where the chart leaves the namespace out.
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("## Install with Helm", 1)[1].split("\n## ", 1)[0]
    label = re.search(r"kubectl label namespace logferry \\?\s*((?:\S+=\S+\s*\\?\s*)+)", section)
    assert label is not None
    labels = dict(item.split("=", 1) for item in label.group(1).replace("\\", " ").split())
    assert labels == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }


def test_tls_off_renders_consistent_configs_and_pods() -> None:
    objects = _objects(_parts(settings={"tls.enabled": False}))
    by_name = {
        d["metadata"]["name"]: d
        for d in objects
        if d["kind"] in {"ConfigMap", "DaemonSet", "StatefulSet"}
    }
    forwarder = yaml.safe_load(by_name["logferry-forwarder-config"]["data"]["forwarder.yaml"])
    aggregator = yaml.safe_load(by_name["logferry-aggregator-config"]["data"]["aggregator.yaml"])
    assert not {"tls", "tls_ca_file", "tls_server_name"} & forwarder["sender"].keys()
    assert not {"tls_cert_file", "tls_key_file"} & aggregator["input"].keys()
    assert forwarder["sender"]["shared_key_file"]  # authentication stays on
    for workload in ("logferry-forwarder", "logferry-aggregator"):
        volumes = {v["name"] for v in by_name[workload]["spec"]["template"]["spec"]["volumes"]}
        assert "tls" not in volumes, workload


def _document(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in objects if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_crd_is_kept_on_uninstall_and_can_be_left_out() -> None:
    crd = _document(_objects(_parts()), "CustomResourceDefinition", "logpipelines.logferry.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kinds = {d["kind"] for d in _objects(_parts(settings={"installCRDs": False}))}
    assert "CustomResourceDefinition" not in kinds


# -- the auditor ------------------------------------------------------------------------------


def _audit_objects(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in _objects(_parts(**kwargs))
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "audit"
    }


def _alert_names(**kwargs: Any) -> set[str]:
    (rule,) = [d for d in _objects(_parts(**kwargs)) if d["kind"] == "PrometheusRule"]
    return {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_the_auditor_is_on_by_default_and_can_be_left_out() -> None:
    assert set(_audit_objects()) == {
        "Deployment/logferry-audit",
        "Service/logferry-audit-metrics",
        "ServiceAccount/logferry-audit",
        "NetworkPolicy/logferry-audit",
    }
    assert _audit_objects(settings={"audit.enabled": False}) == {}
    audit_alerts = {"LogferryAuditMissingRecords", "LogferryAuditDuplicateRecords"}
    audit_alerts.add("LogferryAuditBehind")
    assert audit_alerts <= _alert_names(settings=MONITORING_ON)
    # Without the auditor its alerts would only say it is absent.
    off = _alert_names(settings={**MONITORING_ON, "audit.enabled": False})
    assert not audit_alerts & off
    assert "LogferryAggregatorDown" in off


def test_the_auditor_settings_are_values() -> None:
    settings: dict[str, str | int | bool] = {
        "audit.window": "10m",
        "audit.grace": "5m",
        "audit.span": "6h",
        "audit.interval": "2m",
        "audit.index": "k8s-*",
        "audit.credentialsSecret": "audit-reader",
        "aggregator.store.url": "https://es.example:9243",
        **MONITORING_ON,
    }
    objects = _audit_objects(settings=settings)
    (container,) = objects["Deployment/logferry-audit"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    for flag in ("--window=10m", "--grace=5m", "--span=6h", "--interval=2m", "--index=k8s-*"):
        assert flag in args, flag
    env = {e["name"]: e for e in container["env"]}
    assert env["LOGFERRY_STORE_URL"]["value"] == "https://es.example:9243"
    assert env["LOGFERRY_STORE_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "audit-reader"
    volumes = objects["Deployment/logferry-audit"]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "store-credentials",
        "secret": {
            "secretName": "audit-reader",
            "items": [{"key": "password", "path": "password"}],
        },
    } in volumes
    # LogferryAuditBehind follows them: window + grace + 8 x interval seconds.
    (rule,) = [d for d in _objects(_parts(settings=settings)) if d["kind"] == "PrometheusRule"]
    (behind,) = [
        r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "LogferryAuditBehind"
    ]
    assert re.search(rf"\) > {600 + 300 + 8 * 120}\b", behind["expr"]), behind["expr"]

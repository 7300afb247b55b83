"""deploy/: every Kubernetes manifest valid against the 1.30 schemas, the invariants the
operations guide relies on (the forwarder reads /var/log read-only and outlives its
shutdown deadline, each aggregator owns a volume and a headless Service finds them all...),
kustomizations that list exactly what exists, daemon configs that the real config models
accept, the compose file, the dashboard and the alerts (only metrics the code exports)."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    "LOGFERRY_SHARED_KEY": "test-key",
    "LOGFERRY_STORE_URL": "https://opensearch.example:9200",
    "LOGFERRY_STORE_USERNAME": "logferry",
}
SECRETS = {"logferry-shared-key", "logferry-tls", "logferry-store-credentials"}


# -- loading ---------------------------------------------------------------------------


def _is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


def _manifest_files() -> list[Path]:
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if not _is_kustomization(p) and p != COMPOSE and (DEPLOY / "compose") not in p.parents
    )


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path, document


def _kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, d) for p, d in _documents() if not d["apiVersion"].startswith("monitoring.coreos.com/")
    ]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in _documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


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
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
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


def test_example_overlay_patches_images_and_replicas_apply_to_the_base() -> None:
    overlay = yaml.safe_load((DEPLOY / "overlays" / "example" / "kustomization.yaml").read_text())
    assert overlay["namespace"] == "logferry"
    for patch in overlay["patches"]:
        target = patch["target"]
        document = _one(target["kind"], target["name"])
        patched = _apply_json6902(document, yaml.safe_load(patch["patch"]))
        assert kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)
        if target["kind"] == "StatefulSet":
            env = {e["name"]: e for e in _container(patched)["env"]}
            assert env["LOGFERRY_STORE_URL"]["value"].startswith("https://")
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


def test_secrets_are_referenced_by_name() -> None:
    referenced: set[str] = set()
    for workload in (_daemonset(), _statefulset()):
        for volume in _volumes(workload).values():
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for env in _container(workload).get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add(ref["name"])
    assert referenced == SECRETS
    guide = OPERATIONS.read_text()
    for name in SECRETS:
        assert f"kubectl -n logferry create secret generic {name}" in guide, name


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
    assert config.sender.shared_key == env["LOGFERRY_SHARED_KEY"]
    assert config.sender.tls is True
    assert config.sender.tls_ca_file is not None
    assert _under(config.sender.tls_ca_file, "/etc/logferry/tls")
    assert "/etc/logferry/tls" in _mounts(_container(_daemonset()))


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


def test_configs_are_refused_without_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # An unset ${VAR} is an error, never an empty string: a pod without its Secret fails loudly.
    from logferry.common.errors import ConfigError

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError):
        _forwarder_config()
    with pytest.raises(ConfigError):
        _aggregator_config()


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


def test_compose_daemon_configs_load(env: dict[str, str]) -> None:
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
    from logferry.forwarder.app import ForwarderMetrics

    registry = CollectorRegistry()
    ForwarderMetrics(registry)
    families = list(AggregatorMetrics().registry.collect()) + list(registry.collect())
    expected = set()
    for family in families:
        suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
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
    (alert,) = [a for a in _alerts() if a["alert"] == "LogferryForwarderSpoolFilling"]
    threshold = alert["expr"].split(">", 1)[1]
    assert re.fullmatch(r"[\d.\s*]+", threshold)
    value = eval(threshold)  # digits, dots and '*' only, checked above
    assert value == pytest.approx(0.75 * _forwarder_config().spool.max_bytes)

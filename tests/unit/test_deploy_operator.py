"""The LogPipeline CRD and the operator's manifests: valid against the Kubernetes schemas,
minimal RBAC, a locked-down Deployment, and a CRD schema that accepts good pipelines and
refuses bad shapes. The Helm chart's renderings (the example values, another release
namespace) are held to the same checks as the kustomize files generated from it."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from devtools import helm
from tests.support.log_pipelines import log_pipeline

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crd"
OPERATOR_DIR = ROOT / "deploy" / "operator"
KUBERNETES_VERSION = "1.30"
CONFIGMAP_NAME = "logferry-pipelines"
HELM_VALUES = ROOT / "deploy" / "helm"
# name: (release namespace, values file); the templates the kustomize folders come from.
RENDERINGS = {
    "helm-example-values": ("logferry", HELM_VALUES / "logferry" / "examples" / "production.yaml"),
    "helm-other-namespace": ("observability", HELM_VALUES / "kustomize-values.yaml"),
}
TEMPLATES = ("templates/crd/", "templates/operator/")


def _documents(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path, document


def _resources() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for directory in (CRD_DIR, OPERATOR_DIR)
        for path, doc in _documents(directory)
        if doc["kind"] != "Kustomization"
    ]


@functools.cache
def _rendered(rendering: str) -> tuple[dict[str, Any], ...]:
    """The CRD's and the operator's documents as the chart renders them."""
    if rendering == "kustomize":
        return tuple(doc for _, doc in _resources())
    namespace, values = RENDERINGS[rendering]
    output = helm.template(namespace=namespace, values=[values])
    return tuple(
        doc
        for part in helm.split(output)
        if part.source.startswith(TEMPLATES)
        for doc in yaml.safe_load_all(part.text)
        if doc is not None
    )


@pytest.fixture(params=["kustomize", *RENDERINGS])
def resources(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    """The committed files, then each rendering of the chart (its pinned helm)."""
    return copy.deepcopy(_rendered(str(request.param)))


def _one(resources: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [doc for doc in resources if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _crd() -> dict[str, Any]:
    return _one(_rendered("kustomize"), "CustomResourceDefinition")


def _openapi_schema() -> dict[str, Any]:
    (version,) = _crd()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def _strip_kubernetes_extensions(node: Any) -> Any:
    # x-kubernetes-* keys are for the API server (CEL, list types, pruning); plain JSON
    # Schema has no meaning for them.
    if isinstance(node, dict):
        return {
            k: _strip_kubernetes_extensions(v)
            for k, v in node.items()
            if not k.startswith("x-kubernetes-")
        }
    if isinstance(node, list):
        return [_strip_kubernetes_extensions(v) for v in node]
    return node


def _schema_validator() -> jsonschema.Draft7Validator:
    schema = _strip_kubernetes_extensions(_openapi_schema())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _pipeline(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "order": 10,
        "selector": {"pods": ["web-*"], "containers": ["app"], "labels": {"tier": "web"}},
        "filters": [
            {"type": "grep", "field": "log", "regex": "healthz", "mode": "exclude"},
            {"type": "parse_json", "field": "log", "target": "json", "keep_original": False},
            {"type": "parse_regex", "field": "log", "regex": r"^(?P<level>\w+) (?P<msg>.*)$"},
            {"type": "rename", "fields": {"msg": "message"}},
            {"type": "remove", "fields": ["json.password"]},
            {"type": "add", "fields": {"team": "a", "cost_center": 42}},
            {"type": "drop_level", "field": "level", "levels": ["debug", "trace"]},
            {"type": "sample", "rate": 10},
            {"type": "multiline", "field": "log", "start": r"^\d{4}-", "max_lines": 200},
        ],
        "destination": {"indexSuffix": "web-app", "audit": False},
    }
    base.update(spec)
    return {**log_pipeline("web"), "spec": base}


def _example_pipelines() -> list[dict[str, Any]]:
    examples = [_pipeline(), _pipeline(filters=[], selector={}, destination={"indexSuffix": "a"})]
    # The valid LogPipelines shipped as examples must pass the CRD too.
    for path in sorted((ROOT / "examples" / "pipelines").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "LogPipeline":
                examples.append(document)
    return examples


@pytest.mark.parametrize(
    ("path", "document"),
    _resources(),
    ids=lambda v: v.name if isinstance(v, Path) else v["kind"],
)
def test_every_manifest_is_valid_against_the_kubernetes_schema(
    path: Path, document: dict[str, Any]
) -> None:
    assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", [CRD_DIR, OPERATOR_DIR], ids=lambda p: p.name)
def test_kustomization_lists_exactly_the_manifests_of_its_folder(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    manifests = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_crd_names_and_version_match_what_the_operator_watches() -> None:
    from logferry.operator import main

    crd = _crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{main.PLURAL}.{main.GROUP}"
    assert spec["group"] == main.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == main.PLURAL
    assert spec["names"]["kind"] == "LogPipeline"
    assert "lp" in spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["name"] == main.VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Accepted", "Applied", "Hash", "Age"} <= columns.keys()
    assert columns["Hash"] == ".status.appliedHash"


def test_crd_status_schema_holds_what_reconcile_writes() -> None:
    status = _openapi_schema()["properties"]["status"]["properties"]
    assert {"observedGeneration", "appliedHash", "conditions"} <= status.keys()
    condition = status["conditions"]["items"]["properties"]
    assert {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    } <= condition.keys()


def test_crd_schema_is_structural_every_node_is_typed() -> None:
    # A structural schema (required by apiextensions/v1) types every node except the ones
    # explicitly left open; value validations (oneOf...) must not declare types.
    def walk(node: dict[str, Any], where: str) -> Iterator[str]:
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            yield where
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{where}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{where}{{}}")
        for branch in node.get("oneOf", []):
            assert "type" not in branch, where
            for prop in branch.get("properties", {}).values():
                assert "type" not in prop, where
        assert node.get("additionalProperties") is not False, where

    assert list(walk(_openapi_schema(), "")) == []


@pytest.mark.parametrize("document", _example_pipelines(), ids=lambda d: d["metadata"]["name"])
def test_crd_schema_accepts_valid_pipelines(document: dict[str, Any]) -> None:
    _schema_validator().validate(document)


def _mutate(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(_pipeline())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = document
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return document


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.filters.0.type", "exec"),
        ("spec.filters.0.mode", "maybe"),
        ("spec.filters.0.regex", _DELETE),
        ("spec.filters.2.regex", _DELETE),
        ("spec.filters.3.fields", _DELETE),
        ("spec.filters.6.levels", _DELETE),
        ("spec.filters.6.levels", "debug"),
        ("spec.filters.7.rate", 0),
        ("spec.filters.7.rate", "10"),
        ("spec.filters.8.start", _DELETE),
        ("spec.filters.8.max_lines", 1),
        ("spec.filters.1.keep_original", "no"),
        ("spec.order", -1),
        ("spec.order", 1_000_001),
        ("spec.selector.pods", "web-*"),
        ("spec.selector.pods", []),
        ("spec.selector.labels", {"tier": 3}),
        ("spec.destination.indexSuffix", "Web_App"),
        ("spec.destination.indexSuffix", "-web"),
        ("spec.destination.indexSuffix", "a" * 33),
        ("spec.destination.audit", "yes"),
        ("metadata.name", "a" * 64),
        ("spec", _DELETE),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v)[:20],
)
def test_crd_schema_rejects_invalid_shapes(path: str, value: Any) -> None:
    document = _mutate(path, value)
    with pytest.raises(jsonschema.ValidationError):
        _schema_validator().validate(document)


def test_crd_filter_types_and_fields_match_the_pipeline_model() -> None:
    # The CRD is a copy of the model's shape; this catches the two drifting apart.
    from typing import get_args

    from logferry.pipelines.whitelist import AnyFilter

    item = _openapi_schema()["properties"]["spec"]["properties"]["filters"]["items"]
    model_types: dict[str, set[str]] = {}
    model_required: dict[str, set[str]] = {}
    for model in get_args(AnyFilter):
        (type_name,) = get_args(model.model_fields["type"].annotation)
        fields = model.model_fields
        model_types[type_name] = {field.alias or name for name, field in fields.items()}
        model_required[type_name] = {
            field.alias or name for name, field in fields.items() if field.is_required()
        } - {"type"}
    assert set(item["properties"]["type"]["enum"]) == model_types.keys()
    branches = {
        branch["properties"]["type"]["enum"][0]: set(branch.get("required", []))
        for branch in item["oneOf"]
    }
    assert branches == model_required
    for type_name, fields in model_types.items():
        assert fields <= item["properties"].keys(), type_name


def test_crd_index_suffix_and_name_rules_are_the_validators() -> None:
    from logferry.common.naming import SUFFIX

    properties = _openapi_schema()["properties"]
    suffix = properties["spec"]["properties"]["destination"]["properties"]["indexSuffix"]
    # The API server checks the CRD's pattern with Go's RE2, where a final `$` is the end of
    # the text: Python spells that `\Z` (its `$` also matches before a final newline), and
    # RE2 has no `\Z` at all.
    assert "\\Z" not in suffix["pattern"]
    as_python = re.sub(r"\$$", lambda _: "\\Z", suffix["pattern"])
    assert SUFFIX.pattern in (suffix["pattern"], as_python)
    assert properties["metadata"]["properties"]["name"]["maxLength"] == 63


# -- RBAC ----------------------------------------------------------------------------------

_WRITE_VERBS_NEVER_GRANTED = {"delete", "deletecollection", "escalate", "bind", "impersonate"}


def test_cluster_role_is_minimal(resources: tuple[dict[str, Any], ...]) -> None:
    rules = _one(resources, "ClusterRole")["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("logferry.io", "logpipelines", "get"),
        ("logferry.io", "logpipelines", "list"),
        ("logferry.io", "logpipelines", "watch"),
        ("logferry.io", "logpipelines", "patch"),
        ("logferry.io", "logpipelines/status", "patch"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert "nonResourceURLs" not in rule
        assert not {"secrets", "configmaps"} & set(rule["resources"])
        assert not _WRITE_VERBS_NEVER_GRANTED & set(rule["verbs"])


def test_configmap_access_is_one_named_configmap_in_one_namespace(
    resources: tuple[dict[str, Any], ...],
) -> None:
    role = _one(resources, "Role")
    deployment = _one(resources, "Deployment")
    assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        assert rule["resources"] == ["configmaps"]
        assert "*" not in rule["verbs"]
        if rule["verbs"] != ["create"]:
            # create cannot be narrowed by name; every other verb is.
            assert rule["resourceNames"] == [CONFIGMAP_NAME]
            assert set(rule["verbs"]) <= {"get", "update", "patch"}
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert {"get", "update", "create"} <= verbs
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LOGFERRY_CONFIGMAP_NAME"]["value"] == CONFIGMAP_NAME
    assert env["LOGFERRY_CONFIGMAP_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )


def test_no_role_other_than_the_configmap_role_is_namespaced(
    resources: tuple[dict[str, Any], ...],
) -> None:
    kinds = [doc["kind"] for doc in resources]
    assert kinds.count("Role") == 1
    assert kinds.count("ClusterRole") == 1


def test_bindings_grant_the_roles_to_the_operators_service_account_only(
    resources: tuple[dict[str, Any], ...],
) -> None:
    account = _one(resources, "ServiceAccount")
    deployment = _one(resources, "Deployment")
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = _one(resources, kind)
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["roleRef"]["name"] == _one(resources, role_kind)["metadata"]["name"]
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": account["metadata"]["namespace"],
            }
        ]
    assert (
        _one(resources, "RoleBinding")["metadata"]["namespace"]
        == _one(resources, "Role")["metadata"]["namespace"]
    )


# -- Deployment ----------------------------------------------------------------------------


def test_deployment_runs_the_operator_non_root_with_a_read_only_root(
    resources: tuple[dict[str, Any], ...],
) -> None:
    deployment = _one(resources, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in security
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    # A tagged image (which one is the rendering's: the example runs the aggregator image's).
    assert ":" in container["image"].rsplit("/", 1)[-1]


def test_the_kustomize_tree_runs_the_operator_image() -> None:
    # The image name the example kustomize overlay maps to the aggregator image.
    (container,) = _one(_rendered("kustomize"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == "logferry:latest"


def test_deployment_runs_kopf_with_the_liveness_endpoint_it_probes(
    resources: tuple[dict[str, Any], ...],
) -> None:
    (container,) = _one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:5] == ["kopf", "run", "-m", "logferry.operator.main", "--all-namespaces"]
    liveness = [arg for arg in command if arg.startswith("--liveness=")]
    assert liveness == ["--liveness=http://0.0.0.0:8080/healthz"]
    match = re.fullmatch(r"--liveness=http://[^:]+:(\d+)(/.*)", liveness[0])
    assert match is not None
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
    assert port == int(match.group(1))
    assert probe["path"] == match.group(2)

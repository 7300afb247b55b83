"""Reconcile decisions of the LogPipeline operator, with the real validation code."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from logferry.operator import reconcile as rc
from logferry.pipelines import validate
from logferry.pipelines.validate import TenantLimits, validate_document
from tests.support.log_pipelines import (
    SCHEMA_INVALID,
    VALID_SPEC,
    api_object,
    log_pipeline,
    with_filter,
)

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 26, 13, 0, 0, tzinfo=UTC)


def _conditions(result: rc.ReconcileResult) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in result.status["conditions"]}


CATASTROPHIC = with_filter({"type": "grep", "field": "log", "regex": "(a+)+$"})


def test_valid_pipeline_is_accepted_applied_and_written_to_the_configmap() -> None:
    result = rc.reconcile(api_object(generation=3), {}, now=NOW)

    assert result.verdict.ok
    conditions = _conditions(result)
    assert conditions["Accepted"]["status"] == "True"
    assert conditions["Accepted"]["reason"] == "Valid"
    assert conditions["Applied"]["status"] == "True"
    assert conditions["Applied"]["reason"] == "Applied"
    assert conditions["Accepted"]["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    assert result.status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in conditions.values())
    assert result.status["appliedHash"] == result.verdict.spec_hash

    assert list(result.configmap_data) == ["team-a.web.yaml"]
    assert result.configmap_changed
    document = yaml.safe_load(result.configmap_data["team-a.web.yaml"])
    annotations = document["metadata"]["annotations"]
    assert annotations["logferry.io/spec-hash"] == result.verdict.spec_hash
    assert document["metadata"]["generation"] == 3
    assert document["spec"]["destination"]["indexSuffix"] == "web"
    assert set(result.accepted) == {"team-a/web"}

    assert [(e.type, e.reason) for e in result.events] == [("Normal", "Applied")]
    assert result.verdict.spec_hash in result.events[0].message


def test_the_configmap_document_passes_the_offline_validation_with_the_same_hash() -> None:
    # The aggregators load these files with the same validator: what the operator writes
    # must be valid there, and its hash must not change on the way.
    result = rc.reconcile(api_object(), {}, now=NOW)
    document = yaml.safe_load(result.configmap_data["team-a.web.yaml"])
    verdict = validate_document(document, namespace="team-a")
    assert verdict.ok, verdict.issues
    assert verdict.spec_hash == result.verdict.spec_hash


def test_server_fields_and_kopf_annotations_do_not_change_the_hash() -> None:
    plain = {**log_pipeline("web"), "spec": copy.deepcopy(VALID_SPEC)}
    offline = validate_document(plain, namespace="team-a")
    assert rc.reconcile(api_object(), {}, now=NOW).verdict.spec_hash == offline.spec_hash


@pytest.mark.parametrize(
    ("spec", "reason", "path"),
    [
        (SCHEMA_INVALID, "SchemaError", "spec.filters[3].mode"),
        (with_filter({"type": "exec", "command": "rm"}), "SchemaError", "spec.filters[3]"),
        (CATASTROPHIC, "SchemaError", "spec.filters[3].regex"),
        (
            {**VALID_SPEC, "destination": {"indexSuffix": "web", "namespace": "team-b"}},
            "PolicyError",
            "spec.destination.namespace",
        ),
        (
            {**VALID_SPEC, "destination": {"indexSuffix": "web", "index": "logs-team-b"}},
            "PolicyError",
            "spec.destination.index",
        ),
        (
            {**VALID_SPEC, "selector": {"namespaces": ["team-b"]}},
            "PolicyError",
            "spec.selector.namespaces",
        ),
        (
            {**VALID_SPEC, "destination": {"indexSuffix": "x.team-b"}},
            "PolicyError",
            "spec.destination.indexSuffix",
        ),
        (
            {**VALID_SPEC, "destination": {"indexSuffix": "audit", "audit": True}},
            "PolicyError",
            "spec.filters[0].type",
        ),
    ],
    ids=[
        "bad-enum",
        "unknown-filter",
        "catastrophic-regex",
        "other-namespace-destination",
        "other-tenants-index",
        "other-namespace-selector",
        "index-suffix-escaping-the-prefix",
        "dropping-filter-in-audit-stream",
    ],
)
def test_invalid_pipeline_is_rejected_with_the_layer_and_field_path(
    spec: dict[str, Any], reason: str, path: str
) -> None:
    result = rc.reconcile(api_object(spec=spec, generation=2), {}, now=NOW)

    assert not result.verdict.ok
    conditions = _conditions(result)
    assert conditions["Accepted"]["status"] == "False"
    assert conditions["Accepted"]["reason"] == reason
    assert path in conditions["Accepted"]["message"]
    assert conditions["Accepted"]["message"].startswith("generation 2 rejected: ")
    assert conditions["Applied"]["status"] == "False"
    assert conditions["Applied"]["reason"] == "NotApplied"
    assert result.status["appliedHash"] is None
    assert result.status["observedGeneration"] == 2
    assert result.configmap_data == {}
    assert not result.configmap_changed
    assert result.accepted == {}
    assert [(e.type, e.reason) for e in result.events] == [("Warning", reason)]
    assert path in result.events[0].message


def test_a_filter_over_the_dry_run_budget_is_a_dry_run_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A budget already spent: the real dry run reports the pipeline as too slow.
    monkeypatch.setattr(validate, "DRY_RUN_BUDGET_S", -1.0)
    result = rc.reconcile(api_object(), {}, now=NOW)
    accepted = _conditions(result)["Accepted"]
    assert accepted["status"] == "False"
    assert accepted["reason"] == "DryRunError"
    assert "spec.filters" in accepted["message"]
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "DryRunError")]
    assert result.configmap_data == {}


def test_a_filter_failing_on_the_tenants_sample_records_is_a_dry_run_error() -> None:
    # sample hashes the record's content when it has no id; an integer beyond 64 bits
    # cannot be serialized, so the filter raises on this record during the dry run.
    spec = with_filter({"type": "sample", "rate": 10})
    samples = [{"log": "x", "counter": 2**70, "kubernetes": {"namespace_name": "team-a"}}]
    result = rc.reconcile(api_object(spec=spec), {}, samples=samples, now=NOW)
    accepted = _conditions(result)["Accepted"]
    assert accepted["reason"] == "DryRunError"
    assert "spec.filters[3]" in accepted["message"]
    assert result.configmap_data == {}


def test_a_tenant_over_its_pipeline_limit_has_the_newcomer_refused() -> None:
    limits = TenantLimits(max_pipelines=2)
    state: rc.Accepted = {}
    for name in ("a", "b"):
        state = rc.reconcile(api_object(name=name), state, limits=limits, now=NOW).accepted
    other_tenant = rc.reconcile(api_object(name="c", namespace="team-b"), state, limits=limits)
    assert other_tenant.verdict.ok
    assert "team-b/c" in other_tenant.accepted

    third = rc.reconcile(api_object(name="c"), state, limits=limits, now=NOW)
    accepted = _conditions(third)["Accepted"]
    assert accepted["reason"] == "PolicyError"
    assert "metadata.namespace" in accepted["message"]
    assert set(third.accepted) == {"team-a/a", "team-a/b"}
    # An update of an already accepted pipeline is not a newcomer.
    update = rc.reconcile(api_object(name="a", generation=2), state, limits=limits, now=NOW)
    assert _conditions(update)["Accepted"]["reason"] == "Valid"


def test_rejection_reason_names_the_earliest_failing_layer() -> None:
    from logferry.pipelines.validate import Issue

    def issue(layer: str) -> Issue:
        return Issue(pipeline="team-a/web", path="spec", reason="x", layer=layer)

    assert rc.rejection_reason((issue("dry_run"), issue("policy"))) == "PolicyError"
    assert rc.rejection_reason((issue("dry_run"),)) == "DryRunError"
    assert rc.rejection_reason((issue("policy"), issue("schema"))) == "SchemaError"


def test_invalid_update_of_an_accepted_pipeline_keeps_the_last_known_good() -> None:
    first = rc.reconcile(api_object(generation=1), {}, now=NOW)
    good_hash = first.status["appliedHash"]
    good_data = first.configmap_data

    second = rc.reconcile(
        api_object(generation=2, spec=SCHEMA_INVALID, status=first.status),
        first.accepted,
        now=LATER,
    )

    conditions = _conditions(second)
    assert conditions["Accepted"]["status"] == "False"
    assert conditions["Accepted"]["reason"] == "SchemaError"
    assert conditions["Accepted"]["observedGeneration"] == 2
    assert conditions["Applied"]["status"] == "True"
    assert conditions["Applied"]["reason"] == "KeptLastKnownGood"
    assert "generation 1" in conditions["Applied"]["message"]
    assert good_hash in conditions["Applied"]["message"]
    assert second.status["appliedHash"] == good_hash
    assert second.status["observedGeneration"] == 2
    assert second.configmap_data == good_data
    assert not second.configmap_changed
    assert second.accepted == first.accepted
    assert [(e.type, e.reason) for e in second.events] == [
        ("Warning", "SchemaError"),
        ("Warning", "KeptLastKnownGood"),
    ]
    # Applied stayed True: its transition time is the first one's.
    assert conditions["Applied"]["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    assert conditions["Accepted"]["lastTransitionTime"] == "2026-11-26T13:00:00Z"


def test_a_fixed_pipeline_replaces_the_last_known_good() -> None:
    first = rc.reconcile(api_object(generation=1), {}, now=NOW)
    bad = rc.reconcile(api_object(generation=2, spec=CATASTROPHIC), first.accepted, now=NOW)
    fixed_spec = {**VALID_SPEC, "destination": {"indexSuffix": "web-v2"}}
    fixed = rc.reconcile(api_object(generation=3, spec=fixed_spec), bad.accepted, now=LATER)

    assert _conditions(fixed)["Accepted"]["reason"] == "Valid"
    assert fixed.status["appliedHash"] == fixed.verdict.spec_hash != first.status["appliedHash"]
    assert fixed.configmap_changed
    document = yaml.safe_load(fixed.configmap_data["team-a.web.yaml"])
    assert document["spec"]["destination"]["indexSuffix"] == "web-v2"
    assert document["metadata"]["generation"] == 3


def test_one_tenants_invalid_pipeline_leaves_other_pipelines_untouched() -> None:
    a = rc.reconcile(api_object(name="web", namespace="team-a"), {}, now=NOW)
    b = rc.reconcile(api_object(name="api", namespace="team-b"), a.accepted, now=NOW)
    broken = rc.reconcile(
        api_object(name="api", namespace="team-b", generation=2, spec=SCHEMA_INVALID),
        b.accepted,
        now=NOW,
    )
    assert broken.configmap_data == b.configmap_data
    assert sorted(broken.configmap_data) == ["team-a.web.yaml", "team-b.api.yaml"]


def test_observed_generation_follows_metadata_generation() -> None:
    accepted: rc.Accepted = {}
    status: dict[str, Any] | None = None
    for generation in (1, 2, 5):
        result = rc.reconcile(api_object(generation=generation, status=status), accepted, now=NOW)
        assert result.status["observedGeneration"] == generation
        assert {c["observedGeneration"] for c in result.status["conditions"]} == {generation}
        accepted, status = result.accepted, result.status


def test_reconciling_the_same_generation_again_posts_no_event_and_writes_nothing() -> None:
    # What happens for every pipeline when the operator restarts (kopf's resume).
    first = rc.reconcile(api_object(), {}, now=NOW)
    again = rc.reconcile(api_object(status=first.status), first.accepted, now=LATER)
    assert again.events == ()
    assert not again.configmap_changed
    assert again.status == first.status

    bad = rc.reconcile(api_object(generation=2, spec=SCHEMA_INVALID), first.accepted, now=NOW)
    bad_again = rc.reconcile(
        api_object(generation=2, spec=SCHEMA_INVALID, status=bad.status), bad.accepted, now=LATER
    )
    assert bad_again.events == ()


def test_delete_removes_the_key_and_only_that_key() -> None:
    a = rc.reconcile(api_object(name="web"), {}, now=NOW)
    b = rc.reconcile(api_object(name="api"), a.accepted, now=NOW)

    deleted = rc.forget("team-a", "web", b.accepted)

    assert deleted.configmap_changed
    assert list(deleted.configmap_data) == ["team-a.api.yaml"]
    assert set(deleted.accepted) == {"team-a/api"}
    assert deleted.configmap_data["team-a.api.yaml"] == b.configmap_data["team-a.api.yaml"]


def test_deleting_a_never_accepted_pipeline_changes_nothing() -> None:
    a = rc.reconcile(api_object(name="web"), {}, now=NOW)
    deleted = rc.forget("team-a", "never-valid", a.accepted)
    assert not deleted.configmap_changed
    assert deleted.configmap_data == a.configmap_data


def test_render_configmap_is_deterministic() -> None:
    state: dict[str, dict[str, Any]] = {}
    for namespace, name in [("team-b", "x"), ("team-a", "web"), ("team-a", "api"), ("c", "z")]:
        state = rc.reconcile(api_object(name=name, namespace=namespace), state, now=NOW).accepted
    rendered = rc.render_configmap(state)

    items = list(state.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        shuffled = {k: copy.deepcopy(v) for k, v in items}
        again = rc.render_configmap(shuffled)
        assert again == rendered
        assert list(again) == sorted(rendered)
        assert [v.encode() for v in again.values()] == [v.encode() for v in rendered.values()]


def test_render_configmap_keys_are_namespace_dot_name() -> None:
    state = rc.reconcile(api_object(name="web.v2", namespace="team-a"), {}, now=NOW).accepted
    assert list(rc.render_configmap(state)) == ["team-a.web.v2.yaml"]


def test_state_is_rebuilt_from_the_configmap_after_a_restart() -> None:
    first = rc.reconcile(api_object(generation=4), {}, now=NOW)
    data = {**first.configmap_data, "stray.key": "not: [a pipeline", "team-x.y.yaml": "a: 1\n"}

    accepted, unreadable = rc.accepted_from_configmap(data)

    assert accepted == first.accepted
    assert unreadable == ["stray.key", "team-x.y.yaml"]
    # The restarted operator still keeps the last good version of a now-invalid pipeline.
    bad = rc.reconcile(api_object(generation=5, spec=SCHEMA_INVALID), accepted, now=NOW)
    assert _conditions(bad)["Applied"]["reason"] == "KeptLastKnownGood"
    assert "generation 4" in _conditions(bad)["Applied"]["message"]
    assert bad.configmap_data == first.configmap_data


def test_a_pipeline_that_would_overflow_the_configmap_is_refused() -> None:
    first = rc.reconcile(api_object(name="web"), {}, now=NOW)
    size = rc.configmap_size(first.configmap_data)
    budget = rc.ConfigMapBudget(total_bytes=size + 10, tenant_bytes=size + 10)

    # Another tenant, so the tenant share is not what refuses it.
    second = rc.reconcile(api_object(name="api", namespace="team-b"), first.accepted, budget=budget)

    conditions = _conditions(second)
    assert conditions["Accepted"]["status"] == "False"
    assert conditions["Accepted"]["reason"] == "ConfigMapBudgetExceeded"
    assert "ConfigMap budget" in conditions["Accepted"]["message"]
    assert second.configmap_data == first.configmap_data
    assert not second.configmap_changed


# -- each tenant's share of the ConfigMap ----------------------------------------------------


def _size_of_one(name: str = "p", namespace: str = "team-a") -> int:
    """ConfigMap bytes of one VALID_SPEC pipeline under this name."""
    return rc.configmap_size(
        rc.reconcile(api_object(name=name, namespace=namespace), {}).configmap_data
    )


def _grown_spec(extra_bytes: int) -> dict[str, Any]:
    return with_filter({"type": "add", "fields": {"note": "x" * extra_bytes}})


def test_a_tenant_past_its_share_has_its_newest_pipeline_refused_and_others_still_apply() -> None:
    one = _size_of_one()
    # Room for two pipelines of a tenant (names of one letter, as below), not three.
    budget = rc.ConfigMapBudget(total_bytes=100 * one, tenant_bytes=2 * one + one // 2)
    state: rc.Accepted = {}
    for name in ("a", "b"):
        result = rc.reconcile(api_object(name=name), state, budget=budget, now=NOW)
        assert _conditions(result)["Accepted"]["reason"] == "Valid"
        state = result.accepted
    used = rc.configmap_size(rc.render_configmap(state), "team-a")

    third = rc.reconcile(api_object(name="c", generation=4), state, budget=budget, now=NOW)

    accepted = _conditions(third)["Accepted"]
    assert accepted["status"] == "False"
    assert accepted["reason"] == "TenantBudgetExceeded"
    assert accepted["observedGeneration"] == 4
    # The message says whose share, how big it is and how much is in use.
    assert "tenant team-a" in accepted["message"]
    assert f"share of {budget.tenant_bytes} bytes" in accepted["message"]
    assert f"take {used} bytes now" in accepted["message"]
    applied = _conditions(third)["Applied"]
    assert (applied["status"], applied["reason"]) == ("False", "NotApplied")
    assert third.status["appliedHash"] is None
    assert [(e.type, e.reason) for e in third.events] == [("Warning", "TenantBudgetExceeded")]
    assert set(third.accepted) == {"team-a/a", "team-a/b"}
    assert not third.configmap_changed

    # Another tenant still gets its pipelines applied, next to the first tenant's.
    other = rc.reconcile(api_object(name="c", namespace="team-b"), third.accepted, budget=budget)
    assert _conditions(other)["Accepted"]["reason"] == "Valid"
    assert sorted(other.configmap_data) == ["team-a.a.yaml", "team-a.b.yaml", "team-b.c.yaml"]


def test_one_tenant_cannot_fill_the_configmap_for_the_others() -> None:
    # A ConfigMap with room for four pipelines; each tenant may take two. The first tenant
    # creates as many as it may have (the pipeline count limit is no help here): it gets
    # its two, and the second tenant still finds room for its own two.
    one = _size_of_one()
    budget = rc.ConfigMapBudget(total_bytes=4 * one + one // 2, tenant_bytes=2 * one + one // 2)
    state: rc.Accepted = {}
    reasons = []
    for index in range(TenantLimits().max_pipelines):
        result = rc.reconcile(api_object(name=f"{index:x}"), state, budget=budget, now=NOW)
        reasons.append(_conditions(result)["Accepted"]["reason"])
        state = result.accepted
    assert reasons[:2] == ["Valid", "Valid"]
    assert set(reasons[2:]) == {"TenantBudgetExceeded"}
    for name in ("x", "y"):
        result = rc.reconcile(api_object(name=name, namespace="team-b"), state, budget=budget)
        assert _conditions(result)["Accepted"]["reason"] == "Valid", result.status
        state = result.accepted
    assert rc.configmap_size(rc.render_configmap(state)) <= budget.total_bytes
    assert {k.split("/")[0] for k in state} == {"team-a", "team-b"}


def test_an_update_growing_past_the_share_keeps_the_last_known_good() -> None:
    one = _size_of_one("web")
    budget = rc.ConfigMapBudget(total_bytes=100 * one, tenant_bytes=3 * one)
    first = rc.reconcile(api_object(generation=1), {}, budget=budget, now=NOW)

    grown = rc.reconcile(
        api_object(generation=2, spec=_grown_spec(4 * one)), first.accepted, budget=budget, now=NOW
    )

    conditions = _conditions(grown)
    assert conditions["Accepted"]["reason"] == "TenantBudgetExceeded"
    assert conditions["Applied"]["reason"] == "KeptLastKnownGood"
    assert grown.status["appliedHash"] == first.status["appliedHash"]
    assert grown.configmap_data == first.configmap_data
    assert not grown.configmap_changed


def test_a_tenant_over_its_share_may_keep_fix_and_shrink_but_not_grow() -> None:
    # Accepted under a bigger share (the operator restarts with a smaller one): nothing is
    # evicted, what the tenant has is re-applied as it is, and shrinking is allowed.
    big = rc.reconcile(api_object(generation=1, spec=_grown_spec(3000)), {}, now=NOW)
    small = rc.ConfigMapBudget(tenant_bytes=_size_of_one("web") + 100)
    assert rc.configmap_size(big.configmap_data, "team-a") > small.tenant_bytes

    resumed = rc.reconcile(
        api_object(generation=1, spec=_grown_spec(3000), status=big.status),
        big.accepted,
        budget=small,
        now=LATER,
    )
    assert _conditions(resumed)["Accepted"]["reason"] == "Valid"
    assert not resumed.configmap_changed
    assert resumed.events == ()

    still_over = rc.reconcile(
        api_object(generation=2, spec=_grown_spec(2000)), big.accepted, budget=small, now=NOW
    )
    assert _conditions(still_over)["Accepted"]["reason"] == "Valid"
    assert still_over.configmap_changed

    growing = rc.reconcile(
        api_object(generation=3, spec=_grown_spec(2500)), still_over.accepted, budget=small, now=NOW
    )
    assert _conditions(growing)["Accepted"]["reason"] == "TenantBudgetExceeded"
    assert _conditions(growing)["Applied"]["reason"] == "KeptLastKnownGood"
    assert growing.configmap_data == still_over.configmap_data


def test_deleting_a_pipeline_makes_room_in_the_tenants_share() -> None:
    one = _size_of_one()
    budget = rc.ConfigMapBudget(total_bytes=100 * one, tenant_bytes=one + one // 2)
    first = rc.reconcile(api_object(name="a"), {}, budget=budget, now=NOW)
    refused = rc.reconcile(api_object(name="b"), first.accepted, budget=budget, now=NOW)
    assert _conditions(refused)["Accepted"]["reason"] == "TenantBudgetExceeded"

    deleted = rc.forget("team-a", "a", refused.accepted)
    retried = rc.reconcile(
        api_object(name="b", status=refused.status), deleted.accepted, budget=budget, now=LATER
    )
    assert _conditions(retried)["Accepted"]["reason"] == "Valid"
    assert list(retried.configmap_data) == ["team-a.b.yaml"]


def test_configmap_size_counts_one_tenant_by_its_key_prefix() -> None:
    data = {"team-a.web.yaml": "ab", "team-a.api.yaml": "é", "team-ab.x.yaml": "zzzz"}
    assert rc.configmap_size(data, "team-a") == len("team-a.web.yaml") + 2 + len(
        "team-a.api.yaml"
    ) + len("é".encode())
    assert rc.configmap_size(data) == sum(len(k) + len(v.encode()) for k, v in data.items())


def test_the_default_share_holds_a_full_tenant_of_typical_pipelines() -> None:
    budget = rc.ConfigMapBudget()
    state: rc.Accepted = {}
    for index in range(TenantLimits().max_pipelines):
        result = rc.reconcile(api_object(name=f"pipeline-{index:02d}"), state, now=NOW)
        assert _conditions(result)["Accepted"]["reason"] == "Valid"
        state = result.accepted
    assert rc.configmap_size(rc.render_configmap(state), "team-a") < budget.tenant_bytes
    # ... and many tenants fit at their full share.
    assert budget.total_bytes // budget.tenant_bytes >= 8


@pytest.mark.parametrize(("total", "tenant"), [(0, 1), (100, 0), (100, -1), (100, 101)], ids=str)
def test_an_impossible_budget_is_refused(total: int, tenant: int) -> None:
    with pytest.raises(ValueError, match=r"budget|positive"):
        rc.ConfigMapBudget(total_bytes=total, tenant_bytes=tenant)


def test_long_issue_lists_are_truncated_to_the_kubernetes_limits() -> None:
    spec = copy.deepcopy(VALID_SPEC)
    spec["filters"] = [{"type": "grep", "regex": "x", "mode": f"m{i}"} for i in range(200)]
    result = rc.reconcile(api_object(spec=spec), {}, now=NOW)
    assert len(result.events[0].message) <= rc.EVENT_MESSAGE_MAX_CHARS
    assert len(_conditions(result)["Accepted"]["message"]) <= rc.CONDITION_MESSAGE_MAX_CHARS

"""LogPipeline validation: schema, policy and dry-run layers, with exact paths and reasons."""

from __future__ import annotations

import time
from typing import Any

import pytest

from logferry.pipelines import steps
from logferry.pipelines import validate as validate_module
from logferry.pipelines.regexes import check_pattern
from logferry.pipelines.spec import spec_hash
from logferry.pipelines.validate import (
    Issue,
    TenantLimits,
    validate_document,
    validate_documents,
)
from tests.support.log_pipelines import log_pipeline


def only_issue(document: dict[str, Any], **kwargs: Any) -> Issue:
    verdict = validate_document(document, **kwargs)
    assert not verdict.ok
    assert len(verdict.issues) == 1, verdict.issues
    return verdict.issues[0]


def test_a_valid_pipeline_is_accepted_with_a_stable_hash() -> None:
    document = log_pipeline(
        filters=[
            {"type": "grep", "regex": "ERROR|WARN"},
            {"type": "parse_json"},
            {"type": "parse_regex", "regex": r"^(?P<ip>\S+) (?P<method>[A-Z]+)", "target": "http"},
            {"type": "rename", "fields": {"msg": "message"}},
            {"type": "remove", "fields": ["password"]},
            {"type": "add", "fields": {"team": "a"}},
            {"type": "drop_level", "levels": ["debug", "trace"]},
            {"type": "sample", "rate": 10},
            {"type": "multiline", "start": r"^\d{4}-\d\d-\d\d"},
        ],
        order=10,
        selector={"pods": ["web-*"], "labels": {"app": "web"}},
        destination={"indexSuffix": "errors"},
    )
    document["metadata"].update(generation=3, resourceVersion="123")
    verdict = validate_document(document, source="a.yaml:0", namespace="team-a")
    assert verdict.ok, verdict.issues
    assert verdict.pipeline == "team-a/web"
    assert verdict.source == "a.yaml:0"
    assert verdict.spec is not None
    assert verdict.spec.spec.destination.index_suffix == "errors"
    assert verdict.spec_hash is not None
    assert len(verdict.spec_hash) == 16
    assert verdict.spec_hash == spec_hash(verdict.spec.spec)


def test_spec_hash_ignores_explicit_defaults_and_metadata_but_not_behaviour() -> None:
    plain = validate_document(log_pipeline(filters=[{"type": "grep", "regex": "x"}]))
    explicit = log_pipeline(
        filters=[{"type": "grep", "regex": "x", "mode": "include", "field": "log"}]
    )
    explicit["metadata"]["generation"] = 7
    changed = validate_document(log_pipeline(filters=[{"type": "grep", "regex": "y"}]))
    assert plain.spec_hash == validate_document(explicit).spec_hash
    assert plain.spec_hash != changed.spec_hash


# --- schema ---------------------------------------------------------------------------------


def test_unknown_key_is_refused_with_its_path() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "grep", "regex": "x", "regexp": "y"}]))
    assert (issue.path, issue.reason, issue.layer) == (
        "spec.filters[0].regexp",
        "unknown key",
        "schema",
    )


def test_wrong_type_is_refused_without_coercion() -> None:
    issue = only_issue(log_pipeline(order="10"))
    assert issue.path == "spec.order"
    assert issue.layer == "schema"
    assert "integer" in issue.reason


def test_out_of_range_values_are_refused() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "sample", "rate": 0}]))
    assert issue.path == "spec.filters[0].rate"
    assert "greater than or equal to 1" in issue.reason


def test_an_unknown_filter_type_is_refused() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "exec", "command": "rm -rf /"}]))
    assert issue.path == "spec.filters[0]"
    assert "exec" in issue.reason


def test_a_regex_that_does_not_compile_is_refused() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "parse_regex", "regex": "(?P<a>x"}]))
    assert issue.path == "spec.filters[0].regex"
    assert issue.reason.startswith("invalid regular expression")
    assert issue.layer == "schema"


def test_parse_regex_needs_named_groups() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "parse_regex", "regex": "(x)"}]))
    assert issue.path == "spec.filters[0].regex"
    assert "named groups" in issue.reason


def test_filters_may_not_write_reserved_fields() -> None:
    issue = only_issue(
        log_pipeline(filters=[{"type": "add", "fields": {"kubernetes.namespace_name": "b"}}])
    )
    assert issue.path == "spec.filters[0].fields"
    assert "reserved" in issue.reason
    issue = only_issue(log_pipeline(filters=[{"type": "parse_regex", "regex": "(?P<_lf>x)"}]))
    assert "reserved" in issue.reason


def test_missing_metadata_is_refused() -> None:
    document = log_pipeline()
    del document["metadata"]["namespace"]
    issue = only_issue(document)
    assert (issue.path, issue.reason) == ("metadata.namespace", "required key is missing")
    assert issue.pipeline == "?/web"


@pytest.mark.parametrize("pattern", ["(a+)+$", "(x+x+)+y", "(a|aa)+$", r"^(\d+)*$", r"(\w+\s?)+$"])
def test_catastrophic_regexes_are_refused_quickly(pattern: str) -> None:
    started = time.monotonic()
    issue = only_issue(log_pipeline(filters=[{"type": "grep", "regex": pattern}]))
    assert time.monotonic() - started < 5  # bounded, not a benchmark
    assert issue.path == "spec.filters[0].regex"
    assert "catastrophic" in issue.reason
    assert issue.layer == "schema"


def test_catastrophic_multiline_start_is_refused() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "multiline", "start": "(x+x+)+y"}]))
    assert issue.path == "spec.filters[0].start"
    assert "catastrophic" in issue.reason


@pytest.mark.parametrize(
    "pattern",
    [
        "ERROR|WARN",
        r"^(?P<ip>\S+) (?P<method>[A-Z]+) (?P<path>\S+)",
        r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d",
        r"\s*$",
        r"a*b",
        r"(?i)timeout after \d+ ?ms",
    ],
)
def test_normal_regexes_are_accepted(pattern: str) -> None:
    started = time.monotonic()
    assert check_pattern(pattern) == pattern
    assert time.monotonic() - started < 5


def test_an_oversized_regex_is_refused_before_compiling() -> None:
    issue = only_issue(log_pipeline(filters=[{"type": "grep", "regex": "a" * 20_000}]))
    assert "at most 10000" in issue.reason


# --- policy ---------------------------------------------------------------------------------


def test_a_pipeline_of_another_namespace_is_refused() -> None:
    issue = only_issue(log_pipeline(namespace="team-b"), namespace="team-a")
    assert issue.path == "metadata.namespace"
    assert issue.layer == "policy"
    assert "'team-b'" in issue.reason
    assert "'team-a'" in issue.reason


@pytest.mark.parametrize(
    "suffix",
    ["team-b", "x.team-b", "../team-b", "UPPER", "a" * 40, "-x", "x-2026.01.01,logs-team-b"],
)
def test_index_suffix_can_only_extend_the_own_index(suffix: str) -> None:
    verdict = validate_document(log_pipeline(destination={"indexSuffix": suffix}))
    if suffix == "team-b":
        # logs-team-a.team-b-YYYY.MM.DD is still team-a's index: allowed.
        assert verdict.ok, verdict.issues
        return
    assert not verdict.ok
    (issue,) = verdict.issues
    assert (issue.path, issue.layer) == ("spec.destination.indexSuffix", "policy")
    assert "tenant's own index" in issue.reason


def test_naming_a_full_index_or_namespace_is_refused_as_cross_tenant() -> None:
    verdict = validate_document(
        log_pipeline(destination={"index": "logs-team-b"}, selector={"namespaces": ["team-b"]})
    )
    assert not verdict.ok
    found = {(i.path, i.layer) for i in verdict.issues}
    assert found == {
        ("spec.destination.index", "policy"),
        ("spec.selector.namespaces", "policy"),
    }
    assert all("unknown key" not in i.reason for i in verdict.issues)


def test_audit_pipeline_with_a_grep_is_refused() -> None:
    issue = only_issue(
        log_pipeline(
            filters=[{"type": "parse_json"}, {"type": "grep", "regex": "x"}],
            destination={"audit": True},
        )
    )
    assert (issue.path, issue.layer) == ("spec.filters[1].type", "policy")
    assert "audit" in issue.reason
    assert "'grep'" in issue.reason


def test_audit_pipeline_that_only_parses_is_accepted() -> None:
    verdict = validate_document(
        log_pipeline(
            filters=[{"type": "parse_json"}, {"type": "multiline", "start": "^x"}],
            destination={"audit": True},
        )
    )
    assert verdict.ok, verdict.issues


def test_filter_and_regex_limits_per_pipeline() -> None:
    limits = TenantLimits(max_filters=2, max_regex_chars=5)
    issue = only_issue(log_pipeline(filters=[{"type": "parse_json"}] * 3), limits=limits)
    assert (issue.path, issue.layer) == ("spec.filters", "policy")
    assert issue.reason == "3 filters; the limit is 2 per pipeline"
    issue = only_issue(log_pipeline(filters=[{"type": "grep", "regex": "abcdef"}]), limits=limits)
    assert issue.path == "spec.filters[0].regex"
    assert issue.reason == "regular expression is 6 characters; the limit is 5"


def test_pipelines_over_the_tenant_limit_are_refused_last_in_run_order() -> None:
    docs = [
        ("a.yaml:0", log_pipeline("p-late", order=50)),
        ("a.yaml:1", log_pipeline("p-first", order=1)),
        ("a.yaml:2", log_pipeline("p-second", order=2)),
        ("b.yaml:0", log_pipeline("other", namespace="team-b")),
    ]
    verdicts = validate_documents(docs, limits=TenantLimits(max_pipelines=2))
    assert [v.ok for v in verdicts] == [False, True, True, True]
    (issue,) = verdicts[0].issues
    assert issue.path == "metadata.namespace"
    assert "team-a has 3 pipelines; the limit is 2" in issue.reason


def test_a_pipeline_defined_twice_is_refused_in_both_places() -> None:
    verdicts = validate_documents(
        [
            ("a.yaml:0", log_pipeline()),
            ("b.yaml:0", log_pipeline()),
            ("c.yaml:0", log_pipeline("x")),
        ]
    )
    assert [v.ok for v in verdicts] == [False, False, True]
    assert "also in b.yaml:0" in verdicts[0].issues[0].reason
    assert "also in a.yaml:0" in verdicts[1].issues[0].reason


def test_limits_have_both_spellings() -> None:
    limits = TenantLimits(max_pipelines=3, max_filters=4)
    assert limits.max_pipelines_per_tenant == 3
    assert limits.max_filters_per_pipeline == 4


# --- dry run --------------------------------------------------------------------------------


def test_a_filter_that_raises_on_a_sample_fails_the_dry_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(self: steps.Step, record: dict[str, Any], ctx: steps.RunContext) -> bool:
        raise KeyError("level")

    monkeypatch.setattr(steps.DropLevelStep, "apply", boom)
    issue = only_issue(
        log_pipeline(filters=[{"type": "parse_json"}, {"type": "drop_level", "levels": ["x"]}])
    )
    assert (issue.path, issue.layer) == ("spec.filters[1]", "dry_run")
    assert issue.reason == "failed on a sample record: KeyError: 'level'"


def test_a_pipeline_over_the_dry_run_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_module, "DRY_RUN_BUDGET_S", -1.0)
    issue = only_issue(log_pipeline(filters=[{"type": "parse_json"}]))
    assert (issue.path, issue.layer) == ("spec.filters", "dry_run")
    assert "sample records" in issue.reason


def test_dry_run_uses_given_samples_and_leaves_them_unchanged() -> None:
    samples = [{"log": '{"a": 1}', "_lf": {"id": "x", "src": "s", "seq": 0}}]
    verdict = validate_document(log_pipeline(filters=[{"type": "parse_json"}]), samples=samples)
    assert verdict.ok
    assert samples == [{"log": '{"a": 1}', "_lf": {"id": "x", "src": "s", "seq": 0}}]


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    verdict = validate_document(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert not verdict.ok
    assert verdict.issues[0].layer == "schema"

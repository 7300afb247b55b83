"""Compiled pipelines over batches: each filter kind, first-match routing, budget, errors."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from logferry.aggregator.ingest import Ingest
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.pipeline_watch import PipelineRegistry
from logferry.aggregator.render import Receipt
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage, EventTime, Mode
from logferry.pipelines import steps
from logferry.pipelines.compiled import TenantPipelines, compile_tenants
from logferry.pipelines.validate import accepted, validate_documents
from logferry.pipelines.whitelist import Grep
from tests.support.log_pipelines import log_pipeline


def compile_one(*docs: dict[str, Any]) -> TenantPipelines:
    verdicts = validate_documents([(f"t:{n}", d) for n, d in enumerate(docs)])
    assert all(v.ok for v in verdicts), [v.issues for v in verdicts]
    (tenant,) = compile_tenants(accepted(verdicts)).values()
    return tenant


def record(
    log: str,
    pod: str = "web-1",
    container: str = "web",
    seq: int = 0,
    src: str = "s1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "log": log,
        "stream": "stdout",
        "kubernetes": {
            "namespace_name": "team-a",
            "pod_name": pod,
            "container_name": container,
            "container_id": "c",
            "host": "n",
        },
        "_lf": {"id": f"{src}:{seq}", "src": src, "seq": seq},
        **extra,
    }


def run(tenant: TenantPipelines, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r, _suffix in tenant.process(records).kept]


def test_grep_include_and_exclude() -> None:
    keep = compile_one(log_pipeline("p", [{"type": "grep", "regex": "ERROR"}]))
    assert [r["log"] for r in run(keep, [record("ERROR x"), record("ok")])] == ["ERROR x"]
    drop = compile_one(log_pipeline("p", [{"type": "grep", "regex": "ERROR", "mode": "exclude"}]))
    processed = drop.process([record("ERROR x"), record("ok")])
    assert [r["log"] for r, _ in processed.kept] == ["ok"]
    assert processed.dropped == 1
    assert processed.dropped_by_pipeline == {"p": 1}


def test_parse_json_rename_remove_add() -> None:
    tenant = compile_one(
        log_pipeline(
            "p",
            [
                {"type": "parse_json"},
                {"type": "rename", "fields": {"msg": "message"}},
                {"type": "remove", "fields": ["password"]},
                {"type": "add", "fields": {"team": "a", "meta.env": "prod"}},
            ],
        )
    )
    (out,) = run(tenant, [record('{"msg": "hi", "password": "p", "_lf": "forged"}')])
    assert out["message"] == "hi"
    assert "msg" not in out
    assert "password" not in out
    assert out["team"] == "a"
    assert out["meta"] == {"env": "prod"}
    assert out["_lf"] == {"id": "s1:0", "src": "s1", "seq": 0}  # reserved: never overwritten


def test_parse_json_deeper_than_its_cap_fails_that_record_alone() -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "parse_json"}]))
    cap = steps.PARSE_JSON_MAX_DEPTH
    deep = "{" + '"a":{' * cap + "}" * cap + "}"  # cap + 1 levels
    shallow = "{" + '"a":{' * (cap - 1) + "}" * (cap - 1) + "}"  # exactly cap
    processed = tenant.process([record(deep), record(shallow)])
    (first, _), (second, _) = processed.kept
    assert first["log"] == deep  # kept unchanged, counted
    assert "a" not in first
    assert processed.errors == 1
    assert "a" in second


def test_parse_regex_into_a_target() -> None:
    tenant = compile_one(
        log_pipeline(
            "p",
            [
                {
                    "type": "parse_regex",
                    "regex": r"^(?P<ip>\S+) (?P<method>[A-Z]+) (?P<path>\S+)",
                    "target": "http",
                }
            ],
        )
    )
    matched, unmatched = run(tenant, [record("10.0.0.1 GET /x"), record("nope")])
    assert matched["http"] == {"ip": "10.0.0.1", "method": "GET", "path": "/x"}
    assert matched["log"] == "10.0.0.1 GET /x"
    assert unmatched == record("nope")


def test_drop_level_is_case_insensitive_and_keeps_records_without_a_level() -> None:
    tenant = compile_one(
        log_pipeline("p", [{"type": "parse_json"}, {"type": "drop_level", "levels": ["debug"]}])
    )
    logs = ['{"level": "DEBUG"}', '{"level": "info"}', "plain", '{"level": 3}']
    assert [r["log"] for r in run(tenant, [record(x) for x in logs])] == logs[1:]


def test_sample_is_deterministic_and_keeps_about_one_in_rate() -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "sample", "rate": 10}]))
    batch = [record(f"line {n}", seq=n) for n in range(2000)]
    first = {r["_lf"]["id"] for r in run(tenant, copy.deepcopy(batch))}
    again = {r["_lf"]["id"] for r in run(tenant, copy.deepcopy(batch))}
    assert first == again  # the same record always gets the same decision
    assert 120 < len(first) < 280
    # A resend of a single record gets the decision it got inside the batch.
    for item in batch[:50]:
        alone = run(tenant, [copy.deepcopy(item)])
        assert bool(alone) == (item["_lf"]["id"] in first)


def test_sample_without_an_id_hashes_the_content() -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "sample", "rate": 3}]))
    batch = [
        {"log": f"x{n}", "kubernetes": {"pod_name": "a", "container_name": "b"}} for n in range(300)
    ]
    first = [r["log"] for r in run(tenant, copy.deepcopy(batch))]
    assert first == [r["log"] for r in run(tenant, copy.deepcopy(batch))]
    assert 0 < len(first) < 300


def test_first_matching_pipeline_wins_by_order_then_name() -> None:
    tenant = compile_one(
        log_pipeline(
            "z-web",
            [{"type": "add", "fields": {"by": "z-web"}}],
            order=5,
            selector={"pods": ["web-*"]},
        ),
        log_pipeline(
            "a-web",
            [{"type": "add", "fields": {"by": "a-web"}}],
            order=5,
            selector={"pods": ["web-*"]},
        ),
        log_pipeline(
            "early-api",
            [{"type": "add", "fields": {"by": "api"}}],
            order=1,
            selector={"pods": ["api-*"], "containers": ["app"]},
            destination={"indexSuffix": "api"},
        ),
        log_pipeline(
            "late", [{"type": "add", "fields": {"by": "late"}}], order=9, selector={"pods": ["*"]}
        ),
    )
    assert [p.name for p in tenant.pipelines] == ["early-api", "a-web", "z-web", "late"]
    batch = [
        record("1", pod="web-1"),
        record("2", pod="api-1", container="app"),
        record("3", pod="api-1", container="sidecar"),
        record("4", pod="db-0"),
    ]
    processed = tenant.process(batch)
    assert [(r["log"], r["by"], s) for r, s in processed.kept] == [
        ("1", "a-web", None),
        ("2", "api", "api"),
        ("3", "late", None),
        ("4", "late", None),
    ]
    assert processed.by_pipeline == {"early-api": 1, "a-web": 1, "late": 2}


def test_records_matching_no_pipeline_pass_unchanged_to_the_main_index() -> None:
    tenant = compile_one(
        log_pipeline("p", [{"type": "grep", "regex": "x"}], selector={"pods": ["web-*"]})
    )
    item = record("no match here", pod="db-0")
    processed = tenant.process([copy.deepcopy(item)])
    assert processed.kept == [(item, None)]
    assert processed.by_pipeline == {}


def test_label_selector_needs_the_labels_on_the_record() -> None:
    tenant = compile_one(
        log_pipeline(
            "p", [{"type": "add", "fields": {"hit": True}}], selector={"labels": {"app": "web"}}
        )
    )
    with_labels = record("a")
    with_labels["kubernetes"]["labels"] = {"app": "web", "tier": "front"}
    other = record("b")
    other["kubernetes"]["labels"] = {"app": "db"}
    out = run(tenant, [with_labels, other, record("c")])
    assert [r.get("hit") for r in out] == [True, None, None]


@pytest.fixture
def fake_clock() -> list[float]:
    return [0.0]


def test_budget_overrun_passes_the_group_through_unfiltered(
    monkeypatch: pytest.MonkeyPatch, fake_clock: list[float]
) -> None:
    tenant = compile_one(
        log_pipeline(
            "slow",
            [
                {"type": "grep", "regex": "keep"},
                {"type": "add", "fields": {"filtered": True}},
                {"type": "parse_json"},
            ],
            destination={"indexSuffix": "slow"},
        )
    )
    tenant.clock = lambda: fake_clock[0]
    original_apply = steps.AddStep.apply

    def slow_add(self: steps.AddStep, rec: dict[str, Any], ctx: steps.RunContext) -> bool:
        fake_clock[0] += 0.3  # each record "takes" 300 ms of the batch's 500
        return original_apply(self, rec, ctx)

    monkeypatch.setattr(steps.AddStep, "apply", slow_add)
    batch = [record("keep 1"), record("drop me"), record("keep 2"), record("keep 3")]
    expected = copy.deepcopy(batch)
    processed = tenant.process(batch, budget_s=0.5)
    assert processed.over_budget
    assert processed.over_budget_pipelines == ["slow"]
    assert processed.dropped == 0
    # Every record, including the one grep had discarded, exactly as it came, to its destination.
    assert processed.kept == [(r, "slow") for r in expected]


def test_pipelines_starting_after_the_budget_pass_through(fake_clock: list[float]) -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "grep", "regex": "x"}]))
    tenant.clock = lambda: fake_clock[0]
    processed = tenant.process([record("a"), record("x")], budget_s=-1.0)
    assert processed.over_budget
    assert [r["log"] for r, _ in processed.kept] == ["a", "x"]


def test_a_raising_filter_leaves_that_record_unchanged_and_counts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = compile_one(
        log_pipeline(
            "p",
            [
                {"type": "add", "fields": {"meta.stage": "added"}},
                {"type": "parse_regex", "regex": r"(?P<word>\w+)"},
                {"type": "remove", "fields": ["stream"]},
            ],
        )
    )
    original_apply = steps.ParseRegexStep.apply

    def flaky(self: steps.ParseRegexStep, rec: dict[str, Any], ctx: steps.RunContext) -> bool:
        result = original_apply(self, rec, ctx)  # changes the record, then fails
        if rec["log"] == "bad":
            raise ValueError("boom")
        return result

    monkeypatch.setattr(steps.ParseRegexStep, "apply", flaky)
    bad = record("bad", meta={"kept": 1})
    expected_bad = copy.deepcopy(bad)
    processed = tenant.process([record("good"), bad])
    assert processed.errors == 1
    assert processed.dropped == 0
    good_out, bad_out = (r for r, _ in processed.kept)
    assert good_out["word"] == "good"
    assert "stream" not in good_out
    assert good_out["meta"] == {"stage": "added"}
    assert bad_out == expected_bad  # nested dicts included: changes are copy-on-write
    # The aggregator running this tenant's pipelines over a message counts the error.
    metrics = AggregatorMetrics()
    in_force = PipelineRegistry()
    in_force.swap({"team-a": tenant})
    ingest = Ingest(
        None,  # type: ignore[arg-type]  # rendering never touches the spools
        metrics,
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-0/1/x",
        pipelines=in_force,
    )
    now = EventTime.from_float(time.time())
    entries: list[tuple[EventTime | int, dict[str, Any]]] = [
        (now, record("good")),
        (now, record("bad", meta={"kept": 1})),
    ]
    ingest.render(EventMessage("tag", Mode.FORWARD, entries, {}, "c1", 0), Receipt("i", 1, 1))
    labels = {"tenant": "team-a"}
    assert metrics.registry.get_sample_value("logferry_pipeline_errors_total", labels) == 1


def test_processing_leaves_no_trace_without_a_filter_that_adds_one() -> None:
    tenant = compile_one(
        log_pipeline("p", [{"type": "grep", "regex": "."}, {"type": "parse_json"}])
    )
    item = record("plain text")
    assert run(tenant, [copy.deepcopy(item)]) == [item]


def test_compile_tenants_groups_by_namespace_and_versions_the_set() -> None:
    docs = [
        log_pipeline("a", [], namespace="team-a"),
        log_pipeline("b", [], namespace="team-b"),
        log_pipeline("bad", [{"type": "grep", "regex": "(a+)+$"}], namespace="team-b"),
    ]
    verdicts = validate_documents([(f"t:{n}", d) for n, d in enumerate(docs)])
    tenants = compile_tenants(accepted(verdicts))
    assert sorted(tenants) == ["team-a", "team-b"]
    assert [p.name for p in tenants["team-b"].pipelines] == ["b"]
    assert tenants["team-a"].version != tenants["team-b"].version
    again = compile_tenants(
        accepted(validate_documents([(f"t:{n}", d) for n, d in enumerate(docs)]))
    )
    assert again["team-a"].version == tenants["team-a"].version


def _catastrophic_grep() -> steps.GrepStep:
    # Built around validation on purpose: the run-time timeout is the last line of defence.
    config = Grep.model_construct(type="grep", field="log", regex="(a+)+$", mode="include")
    return steps.GrepStep(0, config)


def test_a_regex_search_cannot_outlive_the_batch_budget() -> None:
    ctx = steps.RunContext(deadline=time.perf_counter() + 0.05, clock=time.perf_counter)
    started = time.monotonic()
    with pytest.raises(steps.BudgetExceeded):
        _catastrophic_grep().run([record("a" * 5000 + "!")], ctx)
    assert time.monotonic() - started < 5


def test_a_regex_timing_out_on_one_record_fails_only_that_record() -> None:
    ctx = steps.RunContext(deadline=time.perf_counter() + 30, clock=time.perf_counter)
    slow, fine = record("a" * 5000 + "!"), record("aaa")
    assert _catastrophic_grep().run([slow, fine], ctx) == [fine]
    assert list(ctx.failed) == [id(slow)]
    assert "timed out" in ctx.failed[id(slow)][2]


def test_multiline_runs_at_the_forwarder_so_the_aggregator_passes_records_on() -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "multiline", "start": "^S"}]))
    batch = [record("S start", seq=0), record("  cont", seq=1), record("  more", seq=2)]
    expected = copy.deepcopy(batch)
    processed = tenant.process(batch, account=True)
    assert [r for r, _ in processed.kept] == expected
    assert (processed.dropped, processed.errors, processed.accounting) == (0, 0, [])

"""Forwarder checkpoints at ingest: past the tenant's pipelines, into its accounting index
under their own ids, routed like records, counted apart; no other ``_lf.kind`` taken from a
peer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from logferry.aggregator.documents import fragment_ndjson, split_fragment
from logferry.aggregator.ingest import Ingest
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.pipeline_watch import PipelineRegistry
from logferry.aggregator.render import Receipt
from logferry.aggregator.routing import TenantResolver
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage, EventTime, Mode
from logferry.pipelines.compiled import compile_tenants
from logferry.pipelines.validate import accepted, validate_documents
from tests.support.log_pipelines import log_pipeline
from tests.support.records import wire_checkpoint

T0 = 1764115199  # 2025-11-25T23:59:59Z
DAY, NEXT_DAY = "2025.11.25", "2025.11.26"
SRC = "a1b2c3d4e5f6a7b8c9d0"

Doc = tuple[dict[str, Any], dict[str, Any]]


def make_ingest(
    metrics: AggregatorMetrics,
    *,
    drop_all_in: str | None = None,
    resolver: TenantResolver | None = None,
) -> Ingest:
    """An ingest without spools; ``drop_all_in``: that tenant's one pipeline keeps nothing."""
    registry = None
    if drop_all_in is not None:
        grep = {"type": "grep", "field": "log", "regex": "^never matches$", "mode": "include"}
        docs = [log_pipeline("drop-all", [grep], namespace=drop_all_in)]
        verdicts = validate_documents([(f"t:{n}", d) for n, d in enumerate(docs)])
        assert all(v.ok for v in verdicts), [v.issues for v in verdicts]
        registry = PipelineRegistry()
        registry.swap(compile_tenants(accepted(verdicts)))
    return Ingest(
        None,  # type: ignore[arg-type]  # rendering never touches the spools
        metrics,
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-0/1/x",
        pipelines=registry,
        resolver=resolver,
        clock=lambda: T0 + 60,
    )


def log_entry(ns: str, seq: int, when: Any = T0) -> tuple[Any, dict[str, Any]]:
    lf = {"id": f"{SRC}-{seq * 100:x}", "src": SRC, "seq": seq}
    kubernetes = {"namespace_name": ns, "pod_name": "app-0", "container_name": "main"}
    return when, {"log": f"line {seq}", "kubernetes": kubernetes, "_lf": lf}


def render(ingest: Ingest, entries: list[Any], chunk: str = "c1") -> dict[str, list[Doc]]:
    rendered = ingest.render(
        EventMessage("tag", Mode.FORWARD, entries, {}, chunk, 0), Receipt("i", 1, 1)
    )
    assert rendered.letters == []
    return {
        tenant: [
            (json.loads(d.action), json.loads(d.source))
            for part in parts
            for d in split_fragment(fragment_ndjson(part))
        ]
        for tenant, (parts, _count) in rendered.fragments.items()
    }


def where(docs: list[Doc]) -> list[tuple[str, str]]:
    return [(a["create"]["_index"], a["create"]["_id"]) for a, _s in docs]


def metric(metrics: AggregatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_pipeline_that_drops_everything_leaves_the_checkpoints_alone() -> None:
    metrics = AggregatorMetrics()
    ingest = make_ingest(metrics, drop_all_in="team-a")
    # The next day by its own time, so its index is dated by it, not by the records around it.
    first = wire_checkpoint("team-a", SRC, 2, when=EventTime(T0 + 1, 5))
    last = wire_checkpoint(
        "team-a", SRC, 4, state="lost", when=EventTime(T0, 9), lost_lines=-1, reason="deleted"
    )
    entries = [first, log_entry("team-a", 0), log_entry("team-a", 1)]
    entries += [log_entry("team-a", 2), log_entry("team-a", 3), last]
    out = render(ingest, entries)
    assert list(out) == ["team-a"]
    accounting, *checkpoints = out["team-a"]
    assert accounting[1]["_lf"]["kind"] == "accounting"  # the four lines, accounted as today
    assert accounting[1]["_lf"]["lines"] == 4
    assert where(checkpoints) == [
        (f"logs-team-a.lf-accounting-{NEXT_DAY}", first[1]["_lf"]["id"]),
        (f"logs-team-a.lf-accounting-{DAY}", last[1]["_lf"]["id"]),
    ]
    stored = [source for _a, source in checkpoints]
    assert stored[0]["_lf"] == first[1]["_lf"]  # as sent: no filter touched it
    assert stored[1]["_lf"] == {**last[1]["_lf"], "lost_lines": -1, "reason": "deleted"}
    assert stored[0]["@timestamp"] == "2025-11-26T00:00:00.000000005Z"
    assert stored[0]["kubernetes"]["namespace_name"] == "team-a"
    assert "rerouted" not in stored[0]
    assert metric(metrics, "logferry_records_in_total", tenant="team-a") == 4
    assert metric(metrics, "logferry_records_filtered_total", tenant="team-a") == 4
    assert metric(metrics, "logferry_accounting_records_total", tenant="team-a") == 1
    assert metric(metrics, "logferry_checkpoints_received_total", tenant="team-a") == 2


def test_checkpoints_are_never_kept_as_samples_for_dry_runs() -> None:
    ingest = make_ingest(AggregatorMetrics(), drop_all_in="team-a")
    # Every 50th message leaves its tenant's first record as a sample: one a checkpoint leads.
    for n in range(100):
        render(ingest, [wire_checkpoint("team-a", SRC, n), log_entry("team-a", n)])
    samples = ingest.recent_records("team-a")
    assert samples
    assert all("kind" not in sample["_lf"] for sample in samples)


def test_checkpoints_of_a_refused_namespace_go_to_default_as_its_records_do() -> None:
    metrics = AggregatorMetrics()
    ingest = make_ingest(metrics, resolver=TenantResolver("_default", allowed=frozenset({"a"})))
    refused = wire_checkpoint("b", SRC, 7, when=T0)
    allowed = wire_checkpoint("a", "0" * 20, 3, when=T0)
    out = render(ingest, [log_entry("b", 6), refused, allowed])
    assert sorted(out) == ["_default", "a"]
    assert where(out["_default"]) == [
        (f"logs-_default-{DAY}", f"{SRC}-258"),
        (f"logs-_default.lf-accounting-{DAY}", refused[1]["_lf"]["id"]),
    ]
    mark = {"from": "b", "reason": "not_allowed"}
    assert [source["rerouted"] for _a, source in out["_default"]] == [mark, mark]
    # Only a checkpoint for tenant a in this message: it is rendered all the same.
    assert where(out["a"]) == [(f"logs-a.lf-accounting-{DAY}", allowed[1]["_lf"]["id"])]
    assert metric(metrics, "logferry_records_rerouted_total", reason="not_allowed") == 1
    assert metric(metrics, "logferry_records_in_total", tenant="_default") == 1
    assert metric(metrics, "logferry_records_in_total", tenant="a") is None
    assert metric(metrics, "logferry_checkpoints_received_total", tenant="_default") == 1
    assert metric(metrics, "logferry_checkpoints_received_total", tenant="a") == 1


def test_a_resent_message_gives_its_checkpoints_the_same_ids() -> None:
    ingest = make_ingest(AggregatorMetrics())
    entries = [log_entry("a", 0), wire_checkpoint("a", SRC, 1, when=T0)]
    first = render(ingest, [(t, json.loads(json.dumps(r))) for t, r in entries], chunk="c1")
    again = render(ingest, [(t, json.loads(json.dumps(r))) for t, r in entries], chunk="c9")
    assert where(first["a"]) == where(again["a"])


def broken(**change: Any) -> tuple[Any, dict[str, Any]]:
    when, record = wire_checkpoint("a", SRC, 5, when=T0)
    record["_lf"].update(change)
    return when, record


def with_top_level(**keys: Any) -> tuple[Any, dict[str, Any]]:
    when, record = wire_checkpoint("a", SRC, 5, when=T0)
    record.update(keys)
    return when, record


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        # Accounting is the aggregator's own: one from a peer could hide a loss from verify.
        (broken(kind="accounting", discarded=[{"first": 0, "last": 99}], lines=100), "reserved"),
        (broken(kind="heartbeat"), "reserved"),
        (broken(kind={"not": "text"}), "reserved"),
        # Could take a real accounting record's id in the index they share.
        (broken(id="acct-0123456789abcdef01234567"), "malformed"),
        (broken(id=None), "malformed"),
        (broken(id="ckpt-" + "f" * 600), "malformed"),
        (broken(src=""), "malformed"),
        (broken(next_seq="12"), "malformed"),
        (broken(next_seq=True), "malformed"),
        (broken(next_seq=-1), "malformed"),
        (broken(next_seq=2**64 - 1), "malformed"),
        (broken(next_seq=1.5), "malformed"),
        (broken(state="done"), "malformed"),
        (broken(state=["open"]), "malformed"),
        (broken(lost_lines=-2), "malformed"),
        (broken(reason=7), "malformed"),
        (broken(node=None), "malformed"),
        # The store would index this key as _lf.next_seq too: the checkpoint would say 2**40.
        (with_top_level(**{"_lf.next_seq": 2**40}), "malformed"),
        (with_top_level(log="a checkpoint has no line"), "malformed"),
    ],
)
def test_any_other_kind_from_a_peer_is_stored_as_a_log_record(
    entry: tuple[Any, dict[str, Any]], reason: str
) -> None:
    metrics = AggregatorMetrics()
    ingest = make_ingest(metrics)
    sent = json.loads(json.dumps(entry[1]["_lf"]))
    out = render(ingest, [log_entry("a", 0), entry])
    (_, record), (action, stored) = out["a"]
    assert action["create"]["_index"] == f"logs-a-{DAY}"  # the tenant's own, not accounting
    assert "kind" not in stored["_lf"]
    assert "kind" not in record["_lf"]
    kind = sent.pop("kind")
    assert stored["_lf"] == {**sent, "wire_kind": kind if isinstance(kind, str) else repr(kind)}
    full = {"reserved": "reserved_kind", "malformed": "malformed_checkpoint"}[reason]
    labels = {"tenant": "a", "reason": full}
    assert metric(metrics, "logferry_records_kind_refused_total", **labels) == 1
    assert metric(metrics, "logferry_records_in_total", tenant="a") == 2
    assert metric(metrics, "logferry_checkpoints_received_total", tenant="a") is None


def test_a_well_formed_checkpoint_with_every_field_is_taken() -> None:
    metrics = AggregatorMetrics()
    entry = wire_checkpoint("a", SRC, 0, state="finished", when=T0, reason="rotated")
    out = render(make_ingest(metrics), [entry])
    assert where(out["a"]) == [(f"logs-a.lf-accounting-{DAY}", entry[1]["_lf"]["id"])]
    assert metric(metrics, "logferry_records_kind_refused_total", tenant="a", reason="x") is None


def test_records_without_lf_or_without_a_kind_are_untouched() -> None:
    ingest = make_ingest(AggregatorMetrics())
    fluent_bit = {"log": "x", "kubernetes": {"namespace_name": "a"}}
    odd = {"log": "y", "kubernetes": {"namespace_name": "a"}, "_lf": "not a map"}
    plain = log_entry("a", 0)[1]
    out = render(
        ingest, [(T0, dict(fluent_bit)), (T0, dict(odd)), (T0, json.loads(json.dumps(plain)))]
    )
    stored = [source for _a, source in out["a"]]
    assert [s.get("_lf") for s in stored] == [None, "not a map", plain["_lf"]]
    assert {a["create"]["_index"] for a, _s in out["a"]} == {f"logs-a-{DAY}"}

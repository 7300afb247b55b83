"""Applied means loaded: the operator's decision from what the aggregators report (pure), the
reports read from their /metrics, and the controller that times each written hash."""

from __future__ import annotations

import copy
import socket
from collections.abc import Mapping
from typing import Any

import pytest

from logferry.common.scrape import Scrape, dns_endpoints, parse_samples
from logferry.operator import main
from logferry.operator import reconcile as rc
from logferry.operator.aggregators import AggregatorWatch, report_from_scrape
from tests.support.log_pipelines import SCHEMA_INVALID, VALID_SPEC, api_object

KEY = "team-a/web"
SOURCE = "logferry-aggregator-metrics.logferry.svc:2020"


def pod(name: str, *workers: Mapping[str, rc.LoadedPipeline]) -> rc.AggregatorReport:
    """An aggregator pod whose workers 0..n-1 report these pipelines."""
    return rc.AggregatorReport(
        name,
        workers={str(i): dict(w) for i, w in enumerate(workers)},
        expected_workers=len(workers),
    )


def has(spec_hash: str) -> dict[str, rc.LoadedPipeline]:
    return {KEY: rc.LoadedPipeline(spec_hash, spec_hash, "Accepted")}


def fleet(*aggregators: rc.AggregatorReport, error: str | None = None) -> rc.FleetReport:
    return rc.FleetReport(SOURCE, tuple(aggregators), error)


def conditions(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def with_status(obj: dict[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["status"] = copy.deepcopy(dict(status))
    return out


def written(generation: int = 1, spec: dict[str, Any] | None = None) -> rc.ReconcileResult:
    """A generation reconciled with aggregators that report nothing yet (just written)."""
    return rc.reconcile(
        api_object(generation=generation, spec=spec), {}, check=rc.ApplyCheck(fleet())
    )


def test_a_written_generation_is_pending_until_every_worker_of_every_pod_has_it() -> None:
    first = written()
    h = first.verdict.spec_hash
    assert h is not None
    applied = conditions(first.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("False", "Pending")
    assert f"generation 1 (hash {h}) written; waiting for the aggregators" in applied["message"]
    # Not confirmed: appliedHash says what the aggregators run, and they run nothing yet.
    assert first.status["appliedHash"] is None
    assert [(e.type, e.reason) for e in first.events] == [("Normal", "Pending")]

    obj = with_status(api_object(), first.status)
    half = fleet(pod("10.0.0.5", has(h), has(h)), pod("10.0.0.6", has(h), {}))
    assert rc.refresh_applied(obj, first.accepted, rc.ApplyCheck(half)) is None  # still Pending

    every = fleet(pod("10.0.0.5", has(h), has(h)), pod("10.0.0.6", has(h), has(h)))
    refreshed = rc.refresh_applied(obj, first.accepted, rc.ApplyCheck(every))
    assert refreshed is not None
    applied = conditions(refreshed.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert "loaded by 2 aggregator pods (4 workers)" in applied["message"]
    assert refreshed.status["appliedHash"] == h
    assert conditions(refreshed.status)["Accepted"] == conditions(first.status)["Accepted"]
    assert [(e.type, e.reason) for e in refreshed.events] == [("Normal", "Applied")]
    # Settled: the timer leaves it alone from now on.
    settled = with_status(obj, refreshed.status)
    assert not rc.awaits_aggregators(settled)
    assert rc.awaits_aggregators(obj)
    assert rc.refresh_applied(settled, first.accepted, rc.ApplyCheck(every)) is None


def test_a_hash_the_aggregators_already_run_is_applied_at_once() -> None:
    h = written().verdict.spec_hash
    assert h is not None
    check = rc.ApplyCheck(fleet(pod("10.0.0.5", has(h))))
    result = rc.reconcile(api_object(), {}, check=check)
    applied = conditions(result.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert "loaded by 1 aggregator pod (1 worker)" in applied["message"]


def not_loaded(
    reports: rc.FleetReport, *, waited_s: float = 181.0
) -> tuple[dict[str, Any], rc.AppliedRefresh]:
    first = written()
    h = first.verdict.spec_hash
    assert h is not None
    obj = with_status(api_object(), first.status)
    refreshed = rc.refresh_applied(
        obj, first.accepted, rc.ApplyCheck(reports, 180.0, {h: waited_s})
    )
    assert refreshed is not None
    return conditions(refreshed.status)["Applied"], refreshed


def test_past_the_timeout_not_loaded_says_which_aggregator_is_still_at_which_hash() -> None:
    h = written().verdict.spec_hash
    assert h is not None
    reports = fleet(
        pod("10.0.0.5", has(h), has(h)),
        pod("10.0.0.6", has("old1"), has("old1")),
        pod("10.0.0.7", has(h), has("old1")),
    )
    first = written()
    obj = with_status(api_object(), first.status)
    before = rc.ApplyCheck(reports, 180.0, {h: 179.0})
    assert rc.refresh_applied(obj, first.accepted, before) is None  # still Pending
    applied, refreshed = not_loaded(reports)
    assert (applied["status"], applied["reason"]) == ("False", "NotLoaded")
    assert (
        f"generation 1 (hash {h}) not loaded by the aggregators within 180 s"
        in (applied["message"])
    )
    assert "10.0.0.6: workers 0,1 still at hash old1" in applied["message"]
    assert "10.0.0.7: worker 1 still at hash old1" in applied["message"]
    assert "10.0.0.5" not in applied["message"]
    assert [(e.type, e.reason) for e in refreshed.events] == [("Warning", "NotLoaded")]


def test_not_loaded_names_a_rejection_and_its_reason() -> None:
    h = written().verdict.spec_hash
    refused = rc.LoadedPipeline(
        "old1", h, "Rejected", "spec.filters[0]: failed on a sample record: boom (dry_run)"
    )
    applied, _ = not_loaded(fleet(pod("10.0.0.5", {KEY: refused})))
    assert applied["reason"] == "NotLoaded"
    assert (
        "10.0.0.5: worker 0 rejected it (spec.filters[0]: failed on a sample record: "
        in (applied["message"])
    )
    assert "keeps hash old1" in applied["message"]


def test_not_loaded_names_unreachable_aggregators_and_missing_workers() -> None:
    applied, _ = not_loaded(fleet(rc.AggregatorReport("10.0.0.5", error="ConnectionRefused")))
    assert "10.0.0.5 unreachable (ConnectionRefused)" in applied["message"]

    h = written().verdict.spec_hash
    assert h is not None
    one_of_two = rc.AggregatorReport("10.0.0.6", workers={"0": has(h)}, expected_workers=2)
    applied, _ = not_loaded(fleet(one_of_two))
    assert "10.0.0.6: 1 of its 2 workers did not answer" in applied["message"]

    single = rc.AggregatorReport("10.0.0.7", workers={"": {}})
    applied, _ = not_loaded(fleet(single))
    assert "10.0.0.7: has no version of it" in applied["message"]


def test_not_loaded_when_no_aggregator_resolves() -> None:
    applied, _ = not_loaded(fleet(error="gaierror: Name or service not known"))
    assert f"no aggregators resolved from {SOURCE}: gaierror" in applied["message"]
    applied, _ = not_loaded(fleet())
    assert f"no aggregators resolved from {SOURCE}" in applied["message"]


def test_an_unreachable_pod_does_not_hold_up_the_others_but_is_named() -> None:
    h = written().verdict.spec_hash
    assert h is not None
    reports = fleet(pod("10.0.0.5", has(h)), rc.AggregatorReport("10.0.0.6", error="timeout"))
    applied, _ = not_loaded(reports, waited_s=1.0)
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert "not asked: 10.0.0.6 unreachable (timeout)" in applied["message"]


def test_not_loaded_turns_applied_when_the_aggregators_catch_up() -> None:
    first = written()
    h = first.verdict.spec_hash
    assert h is not None
    obj = with_status(api_object(), first.status)
    late = rc.refresh_applied(
        obj, first.accepted, rc.ApplyCheck(fleet(pod("a", has("old"))), 180.0, {h: 600.0})
    )
    assert late is not None
    assert conditions(late.status)["Applied"]["reason"] == "NotLoaded"
    obj = with_status(obj, late.status)
    assert rc.awaits_aggregators(obj)
    caught_up = rc.refresh_applied(
        obj, first.accepted, rc.ApplyCheck(fleet(pod("a", has(h))), 180.0, {h: 900.0})
    )
    assert caught_up is not None
    applied = conditions(caught_up.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert [(e.type, e.reason) for e in caught_up.events] == [("Normal", "Applied")]


def test_last_known_good_is_applied_only_once_the_aggregators_confirm_the_old_hash() -> None:
    good = rc.reconcile(api_object(generation=1), {})  # gen 1 in the ConfigMap
    h1 = good.verdict.spec_hash
    assert h1 is not None
    bad = api_object(generation=2, spec=SCHEMA_INVALID, status=good.status)

    lagging = rc.ApplyCheck(fleet(pod("10.0.0.5", has("older"))), 180.0, {h1: 10.0})
    pending = rc.reconcile(bad, good.accepted, check=lagging)
    applied = conditions(pending.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("False", "Pending")
    assert f"generation 2 was rejected; generation 1 (hash {h1}) written" in applied["message"]
    assert pending.configmap_data == good.configmap_data

    timed_out = rc.ApplyCheck(lagging.fleet, 180.0, {h1: 200.0})
    applied = conditions(rc.reconcile(bad, good.accepted, check=timed_out).status)["Applied"]
    assert applied["reason"] == "NotLoaded"
    assert "10.0.0.5: worker 0 still at hash older" in applied["message"]

    confirmed = rc.ApplyCheck(fleet(pod("10.0.0.5", has(h1), has(h1))), 180.0, {h1: 200.0})
    kept = rc.reconcile(bad, good.accepted, check=confirmed)
    applied = conditions(kept.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("True", "KeptLastKnownGood")
    assert (
        f"the aggregators keep generation 1 (hash {h1}): loaded by 1 aggregator pod"
        in (applied["message"])
    )
    assert kept.status["appliedHash"] == h1

    # The timer decides the same from the object as its reconcile left it.
    obj = with_status(bad, pending.status)
    refreshed = rc.refresh_applied(obj, good.accepted, confirmed)
    assert refreshed is not None
    assert conditions(refreshed.status)["Applied"]["reason"] == "KeptLastKnownGood"


def test_without_aggregators_applied_means_written_and_says_so() -> None:
    result = rc.reconcile(api_object(), {})
    applied = conditions(result.status)["Applied"]
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert (
        "not confirmed by the aggregators (LOGFERRY_AGGREGATORS is not set)" in (applied["message"])
    )


def test_refresh_waits_for_the_reconcile_of_a_new_generation() -> None:
    first = written()
    h = first.verdict.spec_hash
    assert h is not None
    # Generation 2 arrived, its reconcile has not run: the status is about generation 1.
    newer = api_object(generation=2, spec={**VALID_SPEC, "order": 20}, status=first.status)
    assert rc.refresh_applied(newer, first.accepted, rc.ApplyCheck(fleet(pod("a", has(h))))) is None


def sample(name: str, value: float = 1.0, /, **labels: str) -> str:
    """One line of Prometheus text."""
    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{shown}}} {value}\n" if labels else f"{name} {value}\n"


def pod_metrics(h: str) -> str:
    """A two-worker pod's merged /metrics (a third worker is not answering): worker 0 runs
    ``h``, worker 1 refused it and keeps ``old``."""
    web = {"tenant": "team-a", "pipeline": "web"}
    return "".join(
        [
            sample("logferry_build_info", kind="supervisor", version="0.1.0"),
            sample("logferry_build_info", kind="aggregator", version="0.1.0", worker="0"),
            sample("logferry_build_info", kind="aggregator", version="0.1.0", worker="1"),
            sample("logferry_aggregator_workers", 3.0),
            sample("logferry_pipeline_applied_info", hash=h, worker="0", **web),
            sample(
                "logferry_pipeline_observed_info",
                hash=h,
                status="Accepted",
                reason="",
                worker="0",
                **web,
            ),
            sample("logferry_pipeline_applied_info", hash="old", worker="1", **web),
            sample(
                "logferry_pipeline_observed_info",
                hash=h,
                status="Rejected",
                reason="spec: no (policy)",
                worker="1",
                **web,
            ),
        ]
    )


def test_a_pods_report_is_read_from_its_merged_metrics() -> None:
    text = pod_metrics("abc")
    report = report_from_scrape(Scrape("http://10.0.0.5:2021", 0.0, parse_samples(text)))
    assert report.error is None
    assert report.expected_workers == 3
    assert report.workers["0"][KEY] == rc.LoadedPipeline("abc", "abc", "Accepted", "")
    assert report.workers["1"][KEY] == rc.LoadedPipeline(
        "old", "abc", "Rejected", "spec: no (policy)"
    )
    confirmation = rc.confirm(KEY, "abc", fleet(report))
    assert not confirmation.confirmed
    assert confirmation.problems == (
        "http://10.0.0.5:2021: 1 of its 3 workers did not answer; "
        "worker 1 rejected it (spec: no (policy)), keeps hash old",
    )

    single = 'logferry_build_info{kind="aggregator",version="0.1.0"} 1.0\n'
    alone = report_from_scrape(Scrape("u", 0.0, parse_samples(single)))
    assert (alone.workers, alone.expected_workers) == ({"": {}}, 1)

    forwarder = 'logferry_build_info{kind="forwarder",version="0.1.0"} 1.0\n'
    assert "no aggregator" in (
        report_from_scrape(Scrape("u", 0.0, parse_samples(forwarder))).error or ""
    )
    assert report_from_scrape(Scrape("u", 0.0, {}, "refused")).error == "refused"


def test_the_aggregators_are_every_address_of_a_name() -> None:
    assert "http://127.0.0.1:2021" in dns_endpoints("localhost:2021")
    with pytest.raises(ValueError, match="NAME:PORT"):
        AggregatorWatch("no-port")
    with pytest.raises(ValueError, match="NAME:PORT"):
        dns_endpoints("host:99999")
    with pytest.raises(socket.gaierror):
        dns_endpoints("no-such-name.invalid:2021")


async def test_the_watch_resolves_and_scrapes_once_per_round() -> None:
    import aiohttp

    calls: list[str] = []

    def resolve(source: str) -> list[str]:
        calls.append(source)
        if len(calls) == 1:
            raise OSError("Name or service not known")
        return []

    watch = AggregatorWatch(SOURCE, resolve=resolve)
    assert watch.latest.error == "not scraped yet"
    async with aiohttp.ClientSession() as session:
        failed = await watch.observe(session)
        empty = await watch.observe(session)
    assert failed.aggregators == ()
    assert "Name or service not known" in (failed.error or "")
    assert empty.aggregators == ()
    assert empty.error == "no address"
    assert calls == [SOURCE, SOURCE]


def test_env_settings() -> None:
    assert main.apply_timeout_from_env({}) == rc.APPLY_TIMEOUT_S
    assert main.apply_timeout_from_env({main.APPLY_TIMEOUT_ENV: "30"}) == 30.0
    for bad in ("0", "-5", "soon", "nan"):
        with pytest.raises(ValueError, match=main.APPLY_TIMEOUT_ENV):
            main.apply_timeout_from_env({main.APPLY_TIMEOUT_ENV: bad})
    assert main.aggregators_from_env({}) is None
    watch = main.aggregators_from_env({main.AGGREGATORS_ENV: SOURCE})
    assert watch is not None
    assert watch.source == SOURCE
    with pytest.raises(ValueError, match=main.AGGREGATORS_ENV):
        main.aggregators_from_env({main.AGGREGATORS_ENV: "aggregators"})


class FixedFleet:
    def __init__(self) -> None:
        self.latest = fleet()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, str] | None = None

    async def read(self) -> dict[str, str] | None:
        return self.data

    async def write(self, data: Mapping[str, str]) -> None:
        self.data = dict(data)


async def test_the_controller_times_each_written_hash_from_its_write() -> None:
    reports, clock = FixedFleet(), Clock()
    events: list[rc.Event] = []
    controller = main.Controller(
        MemoryStore(),
        lambda _body, event: events.append(event),
        aggregators=reports,
        apply_timeout_s=60.0,
        clock=clock,
    )
    status: dict[str, Any] = {}
    result = await controller.apply(api_object(generation=1), status)
    h1 = result.verdict.spec_hash
    obj = with_status(api_object(generation=1), status)
    clock.now += 59
    assert controller.refresh(obj, {}) is None  # still Pending, nothing to patch
    clock.now += 2
    patch: dict[str, Any] = {}
    refreshed = controller.refresh(obj, patch)
    assert refreshed is not None
    assert refreshed.condition["reason"] == "NotLoaded"
    obj = with_status(obj, patch)

    # A new generation starts its own wait: Pending again, not NotLoaded.
    spec = {**VALID_SPEC, "order": 20}
    status = {}
    second = await controller.apply(
        api_object(generation=2, spec=spec, status=obj["status"]), status
    )
    assert second.verdict.spec_hash != h1
    assert conditions(status)["Applied"]["reason"] == "Pending"
    assert status["appliedHash"] is None  # nothing confirmed yet

    reports.latest = fleet(pod("10.0.0.5", has(second.verdict.spec_hash or "")))
    obj = with_status(api_object(generation=2, spec=spec), status)
    patch = {}
    assert controller.refresh(obj, patch) is not None
    assert conditions(patch)["Applied"]["reason"] == "Applied"
    assert patch["appliedHash"] == second.verdict.spec_hash
    assert [e.reason for e in events] == ["Pending", "NotLoaded", "Pending", "Applied"]

    await controller.delete("team-a", "web")
    assert controller.refresh(obj, {}) is None

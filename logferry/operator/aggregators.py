"""What the aggregators say they loaded: their /metrics, scraped for every pipeline at once.

``LOGFERRY_AGGREGATORS=NAME:PORT`` names the aggregators' headless Service and their metrics
port; every address the name resolves to is one pod. :class:`AggregatorWatch` resolves the
name and scrapes each pod once per interval (all pipelines together: the cost does not grow
with the number of LogPipelines), and keeps the last round as a
:class:`~logferry.operator.reconcile.FleetReport`. The handlers and timers only read it, so a
slow or dead aggregator never holds them up. A pod's /metrics is its supervisor's merged view:
each worker's ``logferry_pipeline_applied_info`` and ``..._observed_info`` carry ``worker``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import aiohttp

from logferry.aggregator.pipeline_watch import APPLIED_INFO, OBSERVED_INFO
from logferry.common.events import first_set
from logferry.common.scrape import Scrape, dns_endpoints, scrape, split_host_port
from logferry.operator import reconcile as rc

POLL_INTERVAL_S: Final = 5.0
SCRAPE_TIMEOUT_S: Final = 5.0
NOT_SCRAPED_YET: Final = "not scraped yet"

log = logging.getLogger("logferry.operator")

Resolver = Callable[[str], list[str]]
"""``NAME:PORT`` -> the URLs of the pods behind it (blocking: it runs in a thread)."""


def report_from_scrape(result: Scrape) -> rc.AggregatorReport:
    """One pod's report from one scrape of its /metrics."""
    if result.error is not None:
        return rc.AggregatorReport(result.url, error=result.error)
    workers: dict[str, dict[str, rc.LoadedPipeline]] = {}
    expected: int | None = None
    for (name, labels), value in result.samples.items():
        named = dict(labels)
        if name == "logferry_build_info" and named.get("kind") == "aggregator":
            workers.setdefault(named.get("worker", ""), {})
        elif name == "logferry_aggregator_workers":
            expected = int(value)
    if not workers:
        return rc.AggregatorReport(
            result.url,
            error='answers, but is no aggregator (no logferry_build_info{kind="aggregator"})',
        )
    for (name, labels), value in result.samples.items():
        if name not in (APPLIED_INFO, OBSERVED_INFO) or value <= 0:
            continue
        named = dict(labels)
        pipelines = workers.get(named.get("worker", ""))
        if pipelines is None:  # a worker whose build_info is missing: not one we count
            continue
        key = rc.pipeline_key(named.get("tenant", ""), named.get("pipeline", ""))
        loaded = pipelines.get(key, rc.LoadedPipeline())
        if name == APPLIED_INFO:
            loaded = rc.LoadedPipeline(
                named.get("hash"), loaded.observed_hash, loaded.state, loaded.reason
            )
        else:
            loaded = rc.LoadedPipeline(
                loaded.applied_hash,
                named.get("hash") or None,
                named.get("status"),
                named.get("reason", ""),
            )
        pipelines[key] = loaded
    return rc.AggregatorReport(
        result.url,
        workers=workers,
        expected_workers=expected if expected is not None else 1,
    )


class AggregatorWatch:
    """Scrapes the aggregators behind ``source`` every ``interval_s``; :attr:`latest` is the
    last round."""

    def __init__(
        self,
        source: str,
        *,
        interval_s: float = POLL_INTERVAL_S,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
        resolve: Resolver = dns_endpoints,
    ) -> None:
        split_host_port(source)  # a bad value stops the operator at start, not at each round
        self.source = source
        self.interval_s = interval_s
        self.scrape_timeout_s = scrape_timeout_s
        self._resolve = resolve
        self.latest = rc.FleetReport(source, error=NOT_SCRAPED_YET)
        self.rounds = 0
        # What was last logged of each pod ("" fine) and of the name, so a pod that stays
        # down is one warning, not one per round.
        self._said: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Observe until ``stop`` is set."""
        timeout = aiohttp.ClientTimeout(total=self.scrape_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    self.latest = await self.observe(session)
                except Exception as exc:  # a round must never end the watch
                    log.error("event=aggregators_round_failed error=%r", exc)
                self.rounds += 1
                await first_set((stop,), self.interval_s)

    async def observe(self, session: aiohttp.ClientSession) -> rc.FleetReport:
        """One round: resolve, scrape every pod at once, report."""
        try:
            urls = await asyncio.to_thread(self._resolve, self.source)
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._note(self.source, f"does not resolve: {error}")
            return rc.FleetReport(self.source, error=error)
        self._note(self.source, "" if urls else "resolves to no address")
        scrapes = await asyncio.gather(*(scrape(session, url) for url in urls))
        reports = tuple(report_from_scrape(result) for result in scrapes)
        for report in reports:
            self._note(report.name, f"unreachable: {report.error}" if report.error else "")
        for gone in set(self._said) - {self.source, *urls}:
            del self._said[gone]
        return rc.FleetReport(self.source, reports, None if urls else "no address")

    def _note(self, what: str, problem: str) -> None:
        before = self._said.get(what, "")
        self._said[what] = problem
        if problem and problem != before:
            log.warning(
                "event=aggregator_unavailable aggregators=%s what=%s problem=%s",
                self.source,
                what,
                problem,
            )
        elif before and not problem:
            log.info("event=aggregator_available aggregators=%s what=%s", self.source, what)

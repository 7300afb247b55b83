"""The pages stay true: links resolve, every exported metric is documented, nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from logferry.aggregator.metrics import AggregatorMetrics, SupervisorMetrics
from logferry.aggregator.pipeline_watch import in_force_families
from logferry.common.disk_full import DiskStalls
from logferry.common.reload import ReloadMetrics
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.tools.audit import AuditMetrics

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_stand_on_their_own(page: Path) -> None:
    assert "../shared" not in page.read_text()


def test_readme_is_a_front_page() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 250


def _exported(*metrics: type) -> set[str]:
    names = set()
    for cls in metrics:
        registry = CollectorRegistry()
        cls(registry)
        for family in registry.collect():
            suffix = "_total" if family.type == "counter" else ""
            if family.name.startswith("logferry_"):  # process_*, python_*: the client's own
                names.add(family.name + suffix)
    return names


def test_metrics_page_lists_exactly_the_exported_metrics() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(logferry_\w+)` \|", text, re.M))
    exported = _exported(
        ForwarderMetrics,
        AggregatorMetrics,
        SupervisorMetrics,
        DiskStalls,
        ReloadMetrics,
        AuditMetrics,
    ) | {family.name for family in in_force_families([])}
    assert sorted(exported - documented) == [], "exported but not in docs/metrics.md"
    assert sorted(documented - exported) == [], "in docs/metrics.md but not exported"

"""``logferry status``'s view: rates between two scrapes, workers summed, tenants merged."""

from __future__ import annotations

from logferry.tools.status_view import Scrape, parse_samples, status_view

AGGREGATOR = """
logferry_build_info{{kind="supervisor",version="0.1.0"}} 1.0
logferry_build_info{{kind="aggregator",version="0.1.0",worker="0"}} 1.0
logferry_build_info{{kind="aggregator",version="0.1.0",worker="1"}} 1.0
logferry_aggregator_workers_running 2.0
logferry_records_in_total{{tenant="a",worker="0"}} {a0}
logferry_records_in_total{{tenant="a",worker="1"}} {a1}
logferry_records_out_total{{tenant="a",worker="0"}} {a0}
logferry_spool_fragments{{tenant="a",worker="0"}} {frag}
logferry_spool_bytes{{tenant="a",worker="1"}} 4096.0
logferry_spool_capacity_bytes{{kind="volume",worker="0"}} 100.0
logferry_spool_capacity_bytes{{kind="volume",worker="1"}} 100.0
logferry_spool_capacity_bytes{{kind="tenant",worker="1"}} 50.0
logferry_spool_oldest_record_age_seconds{{tenant="a",worker="0"}} 3.0
logferry_spool_oldest_record_age_seconds{{tenant="a",worker="1"}} 7.0
logferry_pipelines{{status="Accepted",tenant="a",worker="0"}} 2.0
logferry_pipeline_bypassed{{tenant="a",worker="1"}} 1.0
"""

FORWARDER = """
logferry_build_info{{kind="forwarder",version="0.1.0"}} 1.0
logferry_lines_read_total{{tenant="a"}} {lines}
logferry_sender_records_acked_total {lines}
logferry_node_spool_blocks 0.0
logferry_node_spool_capacity_bytes 2048.0
"""


GONE = "http://gone:2020"


def scrape(url: str, at_s: float, text: str) -> Scrape:
    return Scrape(url, at_s, parse_samples(text))


def test_rates_come_from_two_scrapes_and_a_pod_of_workers_reads_as_one() -> None:
    agg = "http://agg:2020"
    fwd = "http://fwd:2020"
    pairs = [
        (
            scrape(agg, 10.0, AGGREGATOR.format(a0=100, a1=50, frag=5)),
            scrape(agg, 12.0, AGGREGATOR.format(a0=300, a1=250, frag=0)),
        ),
        (
            scrape(fwd, 10.0, FORWARDER.format(lines=1000)),
            scrape(fwd, 12.0, FORWARDER.format(lines=3000)),
        ),
        (
            Scrape("http://gone:2020", 10.0, {}, "refused"),
            Scrape("http://gone:2020", 12.0, {}, "refused"),
        ),
    ]
    view = status_view(pairs)
    aggregator, forwarder, gone = view.daemons
    assert (aggregator.kind, forwarder.kind, gone.up, gone.error) == (
        "aggregator", "forwarder", False, "refused"
    )  # fmt: skip
    assert aggregator.figures["records_in_per_s"] == 200.0  # (300+250 - 100-50) / 2 s
    assert aggregator.figures["records_out_per_s"] == 100.0
    assert aggregator.figures["spool_capacity_bytes"] == 200.0  # both workers' volume shares
    assert aggregator.figures["workers"] == 2.0
    assert aggregator.figures["backlog_chunks"] == 0.0
    assert forwarder.figures["lines_read_per_s"] == 1000.0
    (tenant,) = view.tenants
    assert (tenant.tenant, tenant.records_in_per_s, tenant.spool_bytes) == ("a", 200.0, 4096.0)
    assert (tenant.oldest_age_s, tenant.pipelines, tenant.bypassed) == (7.0, "Accepted", True)
    assert view.as_json()["tenants"][0]["tenant"] == "a"

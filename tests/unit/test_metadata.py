"""File names to Kubernetes metadata; records as the aggregator expects them."""

from __future__ import annotations

import msgpack

from logferry.common.protocol import EventTime, decode_entries
from logferry.forwarder.metadata import excluded, pack_record, parse_file_name
from logferry.forwarder.partials import MergedRecord

CID = "a" * 64


def test_kubelet_file_names_split_into_metadata() -> None:
    meta = parse_file_name(
        f"/var/log/containers/web-7d9f-x2k4_payments_nginx-proxy-{CID}.log", "n1"
    )
    assert meta is not None
    assert meta.as_record() == {
        "namespace_name": "payments",
        "pod_name": "web-7d9f-x2k4",
        "container_name": "nginx-proxy",
        "container_id": CID,
        "host": "n1",
    }


def test_other_names_are_not_container_logs() -> None:
    for name in ("syslog", f"a_b_c-{'z' * 64}.log", f"a_b-{CID}.log", f"A_b_c-{CID}.log"):
        assert parse_file_name(f"/var/log/containers/{name}", "n1") is None


def test_exclusion_globs() -> None:
    meta = parse_file_name(f"/x/coredns-1_kube-system_coredns-{CID}.log", "n1")
    assert meta is not None
    assert excluded(meta, ["kube-*"], [], [])
    assert excluded(meta, [], ["coredns-*"], [])
    assert not excluded(meta, ["default"], ["web-*"], ["nginx"])


def test_packed_record_is_a_forward_entry_with_identity() -> None:
    record = MergedRecord(4096, 4200, 1764100231_123456789, "stderr", "boom", True, False, False, 3)
    packed = pack_record(record, 17, "src0", {"namespace_name": "ns"})
    ((when, body),) = decode_entries(packed)
    assert when == EventTime(1764100231, 123456789)
    assert body["_lf"] == {"id": "src0-1000", "src": "src0", "seq": 17, "truncated": True}
    assert body["log"] == "boom"
    assert body["stream"] == "stderr"
    assert msgpack.unpackb(packed, raw=False, strict_map_key=False, ext_hook=lambda c, d: d)[1][
        "kubernetes"
    ] == {"namespace_name": "ns"}

"""File names to Kubernetes metadata, and exclusions."""

from __future__ import annotations

from logferry.forwarder.metadata import excluded, parse_file_name

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

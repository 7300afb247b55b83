"""Pod metadata from the API server on records, through a real forwarder, aggregator and
OpenSearch node. No real API server runs on these machines: a local server speaking the
pods list/watch protocol stands in (tests/support/fake_kube_api.py)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.aggregator import MakeAggregator, input_port
from tests.support.daemon import DaemonProcess
from tests.support.fake_kube_api import FakeKubeApi, pod
from tests.support.kubelet import container_log, cri_lines
from tests.support.net import free_port, wait_until
from tests.support.opensearch_client import StoreReader, wait_count

pytestmark = pytest.mark.integration

NODE = "node-k8s"


def uid_of(namespace: str, name: str) -> str:
    # As tests/support/kubelet.py names the pod directory.
    return hashlib.sha256(f"uid/{namespace}/{name}".encode()).hexdigest()[:32]


def forwarder(
    tmp_path: Path,
    node: Path,
    agg_port: int,
    api_url: str | None,
    namespace_labels: bool = False,
    **source: Any,
) -> DaemonProcess:
    """The node's forwarder; ``api_url`` None: without pod metadata; ``source``: more keys
    of its ``source`` section."""
    workdir = tmp_path / "fwd"
    return DaemonProcess(
        "forwarder",
        workdir,
        {
            "node_name": NODE,
            "spool": {
                "directory": str(workdir / "spool"),
                "max_bytes": "64MiB",
                "segment_max_bytes": "4MiB",
            },
            "source": {
                "path_glob": str(node / "containers" / "*.log"),
                "rescan_interval_s": 1,
                "poll_interval_s": 0.05,
                **source,
            },
            "sender": {"servers": [f"127.0.0.1:{agg_port}"], "ack_timeout_s": 10},
            "kubernetes": {
                "enabled": api_url is not None,
                "api_url": api_url,
                "token_file": None,
                "ca_file": None,
                "wait_for_metadata_s": 0.5,
                "namespace_labels": namespace_labels,
            },
        },
    )


async def test_labels_reach_the_store_and_the_exclude_annotation_is_honoured(
    opensearch: Any, make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ns = f"k8s-{uuid.uuid4().hex[:8]}"
    api = FakeKubeApi()
    await api.start()
    api.upsert(
        pod(
            ns, "web-1", uid_of(ns, "web-1"), NODE,
            labels={"app": "web", "team": "alpha"},
            annotations={"logferry.io/owner": "alpha", "kubectl.io/last-applied": "{...}"},
            containers={"app": "registry.local/web:1.4"},
        )
    )  # fmt: skip
    api.upsert(
        pod(ns, "noisy-1", uid_of(ns, "noisy-1"), NODE, {"app": "noisy"},
            annotations={"logferry.io/exclude": "true"})
    )  # fmt: skip
    api.upsert(
        pod(ns, "java-1", uid_of(ns, "java-1"), NODE, {"app": "java"},
            annotations={"logferry.io/multiline": "java"})
    )  # fmt: skip
    api.upsert_namespace(ns, {"owner": "team-alpha"})
    agg = make_aggregator(opensearch.url)
    await agg.start()
    node = tmp_path / "node"
    container_log(node, ns, "web-1", body=cri_lines(0, 200, "web"))
    container_log(node, ns, "noisy-1", body=cri_lines(0, 300, "noisy"))
    trace = ["ERROR failed", "java.lang.IllegalStateException: x", "\tat a.B.c(B.java:1)"]
    stamp = "2026-11-25T19:50:31.000000001Z"
    container_log(
        node, ns, "java-1", body="".join(f"{stamp} stderr F {t}\n" for t in trace).encode()
    )
    fwd = forwarder(tmp_path, node, input_port(agg), api.url, namespace_labels=True)
    daemons.append(fwd)
    try:
        await fwd.start()
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns}-*", 201)

        async def excluded() -> bool:
            return await fwd.metric("logferry_records_excluded_total", tenant=ns) == 300

        await wait_until(excluded, timeout_s=30, what="the excluded pod's lines counted")
        every = [h["_source"] for h in await store.search(f"logs-{ns}-*", size=1000)]
        # The annotated pod's trace is one record (its annotation named the java preset).
        (joined,) = [h for h in every if h["kubernetes"]["pod_name"] == "java-1"]
        assert joined["log"] == "\n".join(trace)
        assert (joined["_lf"]["seq"], joined["_lf"]["seq_end"]) == (0, 2)
        hits = [h for h in every if h["kubernetes"]["pod_name"] == "web-1"]
        assert len(every) == 201  # the excluded pod's 300 lines were not shipped
        k8s = hits[0]["kubernetes"]
        assert k8s["labels"] == {"app": "web", "team": "alpha"}
        assert k8s["annotations"] == {"logferry.io/owner": "alpha"}  # only logferry's own
        assert k8s["pod_id"] == uid_of(ns, "web-1")
        assert k8s["container_image"] == "registry.local/web:1.4"
        assert k8s["container_hash"].startswith("registry.local/web:1.4@sha256:")
        assert "metadata_incomplete" not in k8s
        assert k8s["namespace_labels"] == {"owner": "team-alpha"}
        assert await fwd.metric("logferry_records_metadata_incomplete_total") == 0
        assert await fwd.stop() == 0
    finally:
        await api.stop()


async def test_api_server_down_at_start_then_up(
    opensearch: Any, make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ns = f"k8sdown-{uuid.uuid4().hex[:8]}"
    port = free_port()
    agg = make_aggregator(opensearch.url)
    await agg.start()
    node = tmp_path / "node"
    log = container_log(node, ns, "api-1", body=cri_lines(0, 100, "before")).path
    fwd = forwarder(tmp_path, node, input_port(agg), f"http://127.0.0.1:{port}")
    daemons.append(fwd)
    api = FakeKubeApi()
    try:
        await fwd.start()
        store = StoreReader(opensearch.url)
        # Never blocked: after the short wait the lines go on, flagged incomplete.
        await wait_count(store, f"logs-{ns}-*", 100)
        assert await fwd.metric("logferry_records_metadata_incomplete_total", tenant=ns) == 100
        hits = [h["_source"] for h in await store.search(f"logs-{ns}-*")]
        assert all(h["kubernetes"]["metadata_incomplete"] is True for h in hits)
        assert {h["kubernetes"]["namespace_name"] for h in hits} == {ns}  # routing unchanged
        api.upsert(pod(ns, "api-1", uid_of(ns, "api-1"), NODE, {"app": "api"}))
        await api.start(port)

        async def listed() -> bool:
            return any(e["resource"] == "pods" for e in fwd.events("kubernetes.listed"))

        await wait_until(listed, timeout_s=30, what="the forwarder to list the pods")
        with log.open("ab") as f:
            f.write(cri_lines(100, 50, "after"))
        await wait_count(store, f"logs-{ns}-*", 150)
        later = [
            h["_source"]
            for h in await store.search(f"logs-{ns}-*")
            if h["_source"]["_lf"]["seq"] >= 100
        ]
        assert len(later) == 50
        assert all(h["kubernetes"]["labels"] == {"app": "api"} for h in later)
        assert await fwd.stop() == 0
    finally:
        await api.stop()


async def test_selector_labels_select_by_the_pods_labels_and_a_deleted_pod_keeps_them(
    opensearch: Any, make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    import yaml

    from tests.support.log_pipelines import log_pipeline

    ns = f"k8ssel-{uuid.uuid4().hex[:8]}"
    api = FakeKubeApi()
    await api.start()
    api.upsert(pod(ns, "web-1", uid_of(ns, "web-1"), NODE, {"app": "web"}))
    api.upsert(pod(ns, "api-1", uid_of(ns, "api-1"), NODE, {"app": "api"}))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    document = log_pipeline(
        "web-only",
        [{"type": "add", "fields": {"picked": "by-label"}}],
        namespace=ns,
        selector={"labels": {"app": "web"}},
    )
    (pipelines / "p.yaml").write_text(yaml.safe_dump(document))
    agg = make_aggregator(opensearch.url, pipelines={"directory": str(pipelines)})
    await agg.start()
    node = tmp_path / "node"
    web = container_log(node, ns, "web-1", body=cri_lines(0, 50, "web")).path
    container_log(node, ns, "api-1", body=cri_lines(0, 50, "api"))
    fwd = forwarder(tmp_path, node, input_port(agg), api.url)
    daemons.append(fwd)
    try:
        await fwd.start()
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns}-*", 100)
        # The watch is cut mid-stream (the forwarder watches again from where it was), then
        # the pod is deleted while its file still has lines to drain: they keep its labels.
        api.cut_watches()
        await wait_until(
            lambda: api.watches >= 2 and len(api.watchers) == 1,
            timeout_s=30,
            what="the forwarder to watch again",
        )
        assert api.lists == 1  # resumed from its resource version, not listed again
        api.delete(uid_of(ns, "web-1"))
        with web.open("ab") as f:
            f.write(cri_lines(50, 25, "web-late"))
        await wait_count(store, f"logs-{ns}-*", 125)
        hits = [h["_source"] for h in await store.search(f"logs-{ns}-*", size=1000)]
        by_pod: dict[str, list[dict[str, Any]]] = {}
        for hit in hits:
            by_pod.setdefault(hit["kubernetes"]["pod_name"], []).append(hit)
        assert len(by_pod["web-1"]) == 75
        assert all(h.get("picked") == "by-label" for h in by_pod["web-1"])
        assert all(h["kubernetes"]["labels"] == {"app": "web"} for h in by_pod["web-1"])
        assert all("picked" not in h for h in by_pod["api-1"])
        assert await fwd.stop() == 0
    finally:
        await api.stop()


async def test_plain_files_outside_kubernetes_go_to_their_configured_tenant(
    opensearch: Any, make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    tenant = f"node-{uuid.uuid4().hex[:8]}"
    agg = make_aggregator(opensearch.url)
    await agg.start()
    node = tmp_path / "node"
    (node / "containers").mkdir(parents=True)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "agent.log").write_bytes(
        b"".join(f"agent line {n}\n".encode() for n in range(120)) + b"crlf line\r\n"
    )
    files = [{"glob": str(agent / "*.log"), "tenant": tenant, "name": "agent"}]
    fwd = forwarder(tmp_path, node, input_port(agg), None, files=files)
    daemons.append(fwd)
    await fwd.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{tenant}-*", 121)
    hits = sorted(
        (h["_source"] for h in await store.search(f"logs-{tenant}-*")),
        key=lambda h: h["_lf"]["seq"],
    )
    assert [h["log"] for h in hits] == [f"agent line {n}" for n in range(120)] + ["crlf line"]
    assert [h["_lf"]["seq"] for h in hits] == list(range(121))
    assert all("malformed" not in h["_lf"] for h in hits)
    k8s = hits[0]["kubernetes"]
    assert (k8s["namespace_name"], k8s["pod_name"], k8s["container_name"]) == (
        tenant,
        "agent.log",
        "agent",
    )
    assert await fwd.stop() == 0

"""The 3-node OpenSearch cluster the store-failover tests run against, proven over HTTP.

Three JVMs form one cluster; an index with one replica survives losing the node that holds
its primary, stopped cleanly or SIGKILLed: every document written before stays readable on
the survivors (yellow), writes go on, and the same node (same id, its own data directory)
comes back, catches up and the cluster is green again with every document on both copies.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

from devtools.opensearch_node import OpenSearchCluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

BEFORE = 500  # documents written while all three nodes run
WHILE_DOWN = 200  # documents written while the primary's node is down
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    if isinstance(body, bytes):
        kwargs: dict[str, Any] = {
            "data": body,
            "headers": {"Content-Type": "application/x-ndjson"},
        }
    else:
        kwargs = {"json": body} if body is not None else {}
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def _doc_id(seq: int) -> str:
    return f"src-cluster:{seq * 80:012d}"


async def _bulk_create(http: aiohttp.ClientSession, url: str, index: str, seqs: range) -> None:
    lines: list[str] = []
    for seq in seqs:
        lines.append(json.dumps({"create": {"_index": index, "_id": _doc_id(seq)}}))
        lines.append(json.dumps({"log": f"line {seq}", "stream": "stdout", "_lf_seq": seq}))
    body = ("\n".join(lines) + "\n").encode()
    status, result = await _call(http, "POST", f"{url}/_bulk?refresh=wait_for", body)
    assert status == 200
    assert [item["create"]["status"] for item in result["items"]] == [201] * len(seqs)


async def _ids(http: aiohttp.ClientSession, url: str, index: str) -> set[str]:
    query = {"size": 10_000, "_source": False, "query": {"match_all": {}}}
    status, found = await _call(http, "POST", f"{url}/{index}/_search", query)
    assert status == 200
    assert found["_shards"]["failed"] == 0
    return {hit["_id"] for hit in found["hits"]["hits"]}


async def _count(http: aiohttp.ClientSession, url: str, index: str, preference: str = "") -> int:
    query = f"?preference={preference}" if preference else ""
    status, counted = await _call(http, "GET", f"{url}/{index}/_count{query}")
    assert status == 200
    assert counted["_shards"] == {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
    return int(counted["count"])


async def _shard_nodes(http: aiohttp.ClientSession, url: str, index: str) -> dict[str, str]:
    """{"p": node name, "r": node name} for a 1-shard index (only the assigned copies)."""
    status, shards = await _call(
        http, "GET", f"{url}/_cat/shards/{index}?format=json&h=prirep,node,state"
    )
    assert status == 200
    return {shard["prirep"]: shard["node"] for shard in shards if shard["state"] == "STARTED"}


def test_three_nodes_form_one_green_cluster(opensearch_cluster: OpenSearchCluster) -> None:
    cluster = opensearch_cluster
    nodes = cluster.nodes()
    assert sorted(node["name"] for node in nodes) == ["node-0", "node-1", "node-2"]
    assert [node["cluster_manager"] for node in nodes].count("*") == 1
    http_addresses = {node["http_address"] for node in nodes}
    assert http_addresses == {url.removeprefix("http://") for url in cluster.urls}
    for i in range(cluster.size):  # one cluster, whichever node is asked
        health = cluster.health(i)
        assert health is not None, cluster.urls[i]
        assert (health["status"], health["number_of_nodes"], health["number_of_data_nodes"]) == (
            "green",
            3,
            3,
        )
    data_dirs = [cluster.data_dir(i) for i in range(cluster.size)]
    assert all(data_dir.is_dir() for data_dir in data_dirs)
    assert len(set(data_dirs)) == 3


@pytest.mark.parametrize("take_down", ["stop_node", "kill_node"])
async def test_a_replica_serves_every_document_while_the_primary_node_is_down(
    opensearch_cluster: OpenSearchCluster, take_down: str
) -> None:
    cluster = opensearch_cluster
    index = f"cluster-{take_down.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    settings = {
        "number_of_shards": 1,
        "number_of_replicas": 1,
        # The replica waits for its node rather than being rebuilt on the third node, so
        # the restarted node must bring its own copy back: what this test is about.
        "unassigned.node_left.delayed_timeout": "10m",
    }
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        status, _ = await _call(http, "PUT", f"{cluster.urls[0]}/{index}", {"settings": settings})
        assert status == 200
        await asyncio.to_thread(cluster.wait_status, "green")
        await _bulk_create(http, cluster.urls[1], index, range(BEFORE))

        placed = await _shard_nodes(http, cluster.urls[0], index)
        assert set(placed) == {"p", "r"}
        down = cluster.index_of(placed["p"])
        node_ids = {node["name"]: node["id"] for node in cluster.nodes()}
        survivors = [url for i, url in enumerate(cluster.urls) if i != down]

        # Returns once both survivors count two nodes: the replica is promoted by then.
        await asyncio.to_thread(getattr(cluster, take_down), down)
        assert not cluster.is_running(down)
        health = await asyncio.to_thread(cluster.wait_status, "yellow")
        assert (health["status"], health["number_of_nodes"]) == ("yellow", 2)
        assert health["unassigned_shards"] == 1
        expected = {_doc_id(seq) for seq in range(BEFORE)}
        for url in survivors:
            assert await _ids(http, url, index) == expected, url
        assert (await _shard_nodes(http, survivors[0], index))["p"] == placed["r"]

        await _bulk_create(http, survivors[1], index, range(BEFORE, BEFORE + WHILE_DOWN))

        await asyncio.to_thread(cluster.start_node, down)
        # The same node came back: its id lives in its data directory, which it kept.
        assert {node["name"]: node["id"] for node in cluster.nodes()} == node_ids
        health = await asyncio.to_thread(cluster.wait_status, "green")
        assert (health["status"], health["number_of_nodes"]) == ("green", 3)

        # Its copy went back to it (not to the third node) and caught up on the writes it
        # missed; asked of that copy alone, it has every document.
        after = await _shard_nodes(http, cluster.urls[0], index)
        assert sorted(after.values()) == sorted(placed.values())
        status, _ = await _call(http, "POST", f"{cluster.urls[0]}/{index}/_refresh")
        assert status == 200
        total = BEFORE + WHILE_DOWN
        restarted_id = node_ids[cluster.names[down]]
        assert await _count(http, cluster.urls[0], index, f"_only_nodes:{restarted_id}") == total
        for url in cluster.urls:
            assert await _count(http, url, index) == total, url

        status, _ = await _call(http, "DELETE", f"{cluster.urls[0]}/{index}")
        assert status == 200

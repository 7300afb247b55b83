"""The ``opensearch_cluster`` fixture: a real 3-node OpenSearch cluster, one JVM per node.

The JVMs start the first time a test asks for the fixture (about 20 s on two cores) and stop
when the session ends; tests that don't ask never start them. The cluster's methods block
(subprocesses, HTTP): an async test that has other work running calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.opensearch_node import OpenSearchCluster

CLUSTER_NODES = 3
START_TIMEOUT_S = 300.0
HEAL_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def _opensearch_cluster_session() -> Iterator[OpenSearchCluster]:
    cluster = OpenSearchCluster(nodes=CLUSTER_NODES, cluster_name="logferry-test-cluster")
    cluster.start(timeout_s=START_TIMEOUT_S)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def opensearch_cluster(_opensearch_cluster_session: OpenSearchCluster) -> OpenSearchCluster:
    """A green 3-node OpenSearch cluster on 127.0.0.1, shared by the whole session.

    ``.urls`` has one HTTP URL per node; ``stop_node(i)`` / ``kill_node(i)`` and
    ``start_node(i)`` take node ``i`` down and bring the same node back (same ports, same
    data directory, same node id, its shard copies).

    Contract: a test may stop, kill and restart nodes, but must leave the cluster as it found
    it: all 3 nodes running and the cluster green (wait with ``wait_status("green")``), and
    no index that can't be green with 3 nodes (more than 2 replicas). The next test relies
    on it. As a safety net, so that one failing test does not fail every later one, each
    test starts by restarting any node left down and waiting for green; a test that passes
    must never need it.
    """
    cluster = _opensearch_cluster_session
    for i in range(cluster.size):
        if not cluster.is_running(i):
            cluster.start_node(i, timeout_s=HEAL_TIMEOUT_S)
    cluster.wait_status("green", timeout_s=HEAL_TIMEOUT_S)
    return cluster

"""Fixtures shared by the whole test suite.

The `opensearch` fixture starts one real OpenSearch node (a child JVM) for the session, the
first time a test asks for it; tests that don't ask never start a JVM. Fixtures that live
with their helpers in tests/support/ are registered below, so tests never import one from
another test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.opensearch_node import OpenSearchNode

pytest_plugins = [
    "tests.support.daemon",  # daemons
    "tests.support.aggregator",  # make_aggregator
    "tests.support.opensearch_cluster",  # opensearch_cluster
    "tests.support.seeded_store",  # store
]


@pytest.fixture(scope="session")
def opensearch() -> Iterator[OpenSearchNode]:
    """A healthy single-node OpenSearch cluster on 127.0.0.1; use `.url`.

    Stopped when the session ends, whatever the tests did; should pytest itself be killed,
    the JVM sees its stdin close and shuts down on its own.
    """
    node = OpenSearchNode(cluster_name="logferry-test")
    node.start(timeout_s=180.0)
    try:
        yield node
    finally:
        node.stop()

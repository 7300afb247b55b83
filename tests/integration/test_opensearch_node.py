"""The real OpenSearch node the integration tests run against, exercised over aiohttp.

Checks the two things the bulk output relies on (`create` with an explicit `_id` stores a
document once; a resend of the same `_id` is a per-item 409) and that the node's lifecycle
leaves no JVM behind, whether it is stopped or its owner is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.opensearch_node import OpenSearchNode, pid_alive
from tests.support.net import wait_until

pytestmark = pytest.mark.integration

DOC_COUNT = 300
REPO = Path(__file__).resolve().parents[2]
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


def _doc_id(seq: int) -> str:
    return f"src-test:{seq * 80:012d}"  # shaped like a record id: source + byte offset


def _bulk_create_body(index: str, seqs: range) -> bytes:
    lines: list[str] = []
    for seq in seqs:
        lines.append(json.dumps({"create": {"_index": index, "_id": _doc_id(seq)}}))
        lines.append(
            json.dumps(
                {
                    "log": f"line {seq}",
                    "stream": "stdout",
                    "kubernetes": {"namespace_name": "team-a", "pod_name": "api-0"},
                    "_lf_seq": seq,
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()  # NDJSON: the last line needs its newline too


async def _request(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    if isinstance(body, bytes):
        kwargs: dict[str, Any] = {
            "data": body,
            "headers": {"Content-Type": "application/x-ndjson"},
        }
    else:
        kwargs = {"json": body} if body is not None else {}
    async with http.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_bulk_create_is_found_once_and_a_resend_is_a_409_per_item(
    opensearch: OpenSearchNode,
) -> None:
    index = f"logs-team-a-{uuid.uuid4().hex[:8]}"
    body = _bulk_create_body(index, range(DOC_COUNT))
    async with aiohttp.ClientSession(base_url=opensearch.url, timeout=HTTP_TIMEOUT) as http:
        status, first = await _request(http, "POST", "/_bulk", body)
        assert status == 200
        assert first["errors"] is False
        assert [item["create"]["status"] for item in first["items"]] == [201] * DOC_COUNT

        status, _ = await _request(http, "POST", f"/{index}/_refresh")
        assert status == 200
        status, counted = await _request(http, "GET", f"/{index}/_count")
        assert (status, counted["count"]) == (200, DOC_COUNT)

        query = {"query": {"term": {"_lf_seq": 42}}}
        status, found = await _request(http, "POST", f"/{index}/_search", query)
        assert status == 200
        hits = found["hits"]["hits"]
        assert [(hit["_id"], hit["_source"]["log"]) for hit in hits] == [(_doc_id(42), "line 42")]

        # A resend after a lost ack: the whole batch again, every item must be a 409.
        status, again = await _request(http, "POST", "/_bulk", body)
        assert status == 200
        assert again["errors"] is True
        assert [item["create"]["status"] for item in again["items"]] == [409] * DOC_COUNT
        error_types = {item["create"]["error"]["type"] for item in again["items"]}
        assert error_types == {"version_conflict_engine_exception"}

        await _request(http, "POST", f"/{index}/_refresh")
        status, counted = await _request(http, "GET", f"/{index}/_count")
        assert (status, counted["count"]) == (200, DOC_COUNT)


def test_stop_leaves_no_jvm_and_no_data_behind() -> None:
    with OpenSearchNode(cluster_name="logferry-stop-test") as node:
        pid = node.pid
        data_dir = node.data_dir
        assert pid is not None
        assert pid_alive(pid)
        assert data_dir is not None
        assert data_dir.is_dir()
        assert node.is_healthy()
    assert not pid_alive(pid)
    assert not data_dir.exists()
    assert not node.is_healthy()
    node.stop()  # a second stop is a no-op


# Started in a child Python that is then SIGKILLed: only the stdin watch can end the JVM.
_OWNER_SCRIPT = """
import json, sys, threading
from devtools.opensearch_node import OpenSearchNode
node = OpenSearchNode(cluster_name="logferry-orphan-test").start()
print(json.dumps({"pid": node.pid, "data_dir": str(node.data_dir)}), flush=True)
threading.Event().wait()
"""


def start_an_owner_and_kill_it() -> str:
    """Run the owner script until its node is up, then SIGKILL it; its one line of output
    (empty if the node did not start)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    try:
        return owner.stdout.readline()  # one line once the node is up, or EOF if start failed
    finally:
        owner.send_signal(signal.SIGKILL)  # no atexit, no finalizer: a hard crash
        owner.communicate()


async def test_jvm_exits_when_its_owner_is_killed() -> None:
    line = await asyncio.to_thread(start_an_owner_and_kill_it)
    assert line, "the owner process could not start a node (see its stderr)"
    started = json.loads(line)
    jvm_pid = int(started["pid"])
    try:
        # Not our child: polling its pid is the only way to watch it.
        await wait_until(
            lambda: not pid_alive(jvm_pid),
            timeout_s=60,
            what="the JVM to exit after its owner was killed",
            poll_s=0.1,
        )
    finally:
        if pid_alive(jvm_pid):
            os.kill(jvm_pid, signal.SIGKILL)
        # Its owner died before it could clean up: that part is ours.
        shutil.rmtree(started["data_dir"], ignore_errors=True)

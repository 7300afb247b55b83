"""Hostile tenants against a real forwarder (root, reading any file it is pointed at): links
to a node secret, into another tenant's pod folder, a tenant's own 0.log swapped for a
symlink while tailed. Nothing but the honest files is shipped; every refusal is counted by
reason and warned once, however many rescans see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.aggregator import MakeAggregator, input_address
from tests.support.daemon import DaemonProcess
from tests.support.file_store import assert_exactly_once, documents
from tests.support.kubelet import container_log, cri_lines, glob_of, link_name
from tests.support.net import wait_until

pytestmark = pytest.mark.integration
SECRET = "root:$6$SECRET-HASH-THAT-MUST-NOT-LEAVE-THE-NODE"


async def test_links_to_node_files_and_other_tenants_logs_are_never_shipped(
    tmp_path: Path, daemons: list[DaemonProcess], make_aggregator: MakeAggregator
) -> None:
    node = tmp_path / "node"
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    shop = container_log(node, "shop", "web-1", body=cri_lines(0, 300, "shop"))
    blog = container_log(node, "blog", "www-0", body=cri_lines(0, 200, "blog"))
    bank = container_log(node, "bank", "vault-0", body=cri_lines(0, 100, "bank"))
    # Tenant "evil" owns its pod folder: its 0.log is a symlink to the node's secret ...
    evil = container_log(node, "evil", "x-1")
    evil.path.unlink()
    evil.path.symlink_to(secret)
    # ... and a link named for evil's second pod points into the bank's folder.
    thief = node / "containers" / link_name("evil", "x-2")
    thief.symlink_to(bank.path)

    key_file = tmp_path / "shared-key"
    key_file.write_text("fwd-key-from-a-secret\n")
    out = tmp_path / "out"
    agg = make_aggregator(
        None,
        input={"shared_key": "fwd-key-from-a-secret"},
        output={"type": "file", "directory": str(out)},
    )
    await agg.start()
    fwd_dir = tmp_path / "fwd"
    fwd = DaemonProcess(
        "forwarder",
        fwd_dir,
        {
            "node_name": "node-adv",
            "spool": {
                "directory": str(fwd_dir / "spool"),
                "max_bytes": "64MiB",
                "segment_max_bytes": "4MiB",
            },
            "source": {
                "path_glob": glob_of(node),  # pods root: node/pods, beside it
                "rescan_interval_s": 0.2,
                "poll_interval_s": 0.05,
            },
            "sender": {
                "servers": [input_address(agg)],
                "shared_key_file": str(key_file),  # the handshake works with the file's key
                "ack_timeout_s": 10,
            },
            "log": {"level": "debug", "format": "json"},
        },
    )
    daemons.append(fwd)
    await fwd.start()

    async def honest_delivered() -> bool:
        return len(documents(out)) >= 600

    await wait_until(honest_delivered, timeout_s=60, what="the honest tenants' 600 lines")

    async def rescanned_often() -> bool:
        return len(fwd.events("discovery.scanned")) >= 10

    await wait_until(rescanned_often, timeout_s=60, what="ten rescans")
    skipped = {
        reason: await fwd.metric("logferry_files_skipped_total", reason=reason)
        for reason in ("outside_pods_root", "wrong_owner")
    }
    assert skipped == {"outside_pods_root": 1, "wrong_owner": 1}
    refused = fwd.events("discovery.file_refused")
    assert sorted((e["reason"], e["namespace"], e["level"]) for e in refused) == [
        ("outside_pods_root", "evil", "warning"),
        ("wrong_owner", "evil", "warning"),
    ]  # once each, not once per rescan

    # A tenant already being tailed swaps its 0.log for a symlink to the secret: the open
    # descriptor is drained and released, the secret is not followed.
    with shop.path.open("ab") as f:
        f.write(cri_lines(300, 50, "shop"))
    shop.path.unlink()
    shop.path.symlink_to(secret)

    async def shop_refused() -> bool:
        return await fwd.metric("logferry_files_skipped_total", reason="outside_pods_root") == 2

    await wait_until(shop_refused, timeout_s=30, what="the swapped 0.log to be refused")
    with blog.path.open("ab") as f:
        f.write(cri_lines(200, 100, "blog"))

    async def all_delivered() -> bool:
        return len(documents(out)) >= 750

    await wait_until(all_delivered, timeout_s=60, what="the last honest lines")
    docs = documents(out)
    assert not any(SECRET in json.dumps(doc) for doc in docs)
    namespaces = sorted({doc["kubernetes"]["namespace_name"] for doc in docs})
    assert namespaces == ["bank", "blog", "shop"]  # nothing shipped as "evil"
    by_ns = {ns: sum(d["kubernetes"]["namespace_name"] == ns for d in docs) for ns in namespaces}
    assert by_ns == {"shop": 350, "blog": 300, "bank": 100}  # the bank's log once, as the bank's
    assert_exactly_once(out, [350, 300, 100])
    assert await fwd.metric("logferry_files_skipped_total") == 3
    assert len(fwd.events("discovery.file_refused")) == 3
    assert await fwd.stop() == 0
    assert await agg.stop() == 0

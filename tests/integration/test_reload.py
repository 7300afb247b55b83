"""Config reloads of real daemons: a certificate rotated on disk under a running aggregator
of two workers, with a connected forwarder that keeps delivering (both sides pick up the new
files without a restart); SIGHUP with a bad file keeps the config in force and says why; a
key only a restart can apply is refused by name while the rest applies; the forwarder moves
to the endpoints a reload names."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from logferry.common.errors import HandshakeError
from tests.support.aggregator import MakeAggregator, input_address, input_port
from tests.support.certs import Authority
from tests.support.daemon import DaemonProcess, process_tree
from tests.support.file_store import ids
from tests.support.forward_client import ForwardClient
from tests.support.forwarder_daemon import forwarder_config
from tests.support.kubelet import container_log, cri_lines, glob_of
from tests.support.net import free_port, wait_until
from tests.support.records import compressed_chunk, container_entries
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

WATCH_S = 0.2


def replace(target: Path, source: Path) -> None:
    """Swap ``source``'s content in under ``target``'s name in one step, as Kubernetes
    updates a mounted Secret."""
    fresh = target.with_name(target.name + ".new")
    shutil.copyfile(source, fresh)
    os.replace(fresh, target)


def forwarder(workdir: Path, logs: Path, sender: dict[str, Any]) -> DaemonProcess:
    return DaemonProcess(
        "forwarder",
        workdir,
        forwarder_config(
            workdir,
            glob_of(logs),
            sender.pop("servers"),
            node_name="node-reload",
            source={"rescan_interval_s": 0.5},
            sender={"ack_timeout_s": 5, "backoff_initial_s": 0.05, "backoff_max_s": 0.5, **sender},
            reload={"watch_interval_s": WATCH_S},
        ),
    )


def delivered(output: Path) -> int:
    return len(ids(output))


async def serves(port: int, ca: Path) -> bool:
    """Whether a fresh TLS connection to ``port`` verifies against ``ca`` alone."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
    except ssl.SSLCertVerificationError:
        return False
    writer.close()
    return True


async def test_a_certificate_rotated_on_disk_is_served_and_trusted_without_a_restart(
    make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    old_ca = await asyncio.to_thread(Authority.create, tmp_path / "old", "old-ca")
    new_ca = await asyncio.to_thread(Authority.create, tmp_path / "new", "new-ca")
    old_leaf = await asyncio.to_thread(old_ca.issue, "aggregator", server=True)
    new_leaf = await asyncio.to_thread(new_ca.issue, "aggregator", server=True)
    # The mounted Secrets, as cert-manager keeps them: tls.crt, tls.key and ca.crt.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    crt, key, ca = mounted / "tls.crt", mounted / "tls.key", mounted / "ca.crt"
    for target, source in ((crt, old_leaf.cert), (key, old_leaf.key), (ca, old_ca.cert)):
        replace(target, source)
    shared_key = mounted / "shared-key"
    shared_key.write_text("reload-test-key\n")
    output = tmp_path / "output"
    agg = make_aggregator(
        None,
        workers=2,
        input={
            "tls_cert_file": str(crt),
            "tls_key_file": str(key),
            "shared_key_file": str(shared_key),
            "allow_unauthenticated": False,
        },
        output={"type": "file", "directory": str(output)},
        reload={"watch_interval_s": WATCH_S},
    )
    await agg.start()
    # Between them, a proxy that can cut the forwarder's connections: after the rotation
    # it must connect again, and that handshake needs the new certificate and the new trust.
    proxy = TcpProxy("127.0.0.1", input_port(agg))
    await proxy.start()
    logs = tmp_path / "logs"
    log = container_log(logs, "team-tls", "pod-1", body=cri_lines(0, 300, "before"))
    fwd = forwarder(
        tmp_path / "fwd",
        logs,
        {
            "servers": [f"127.0.0.1:{proxy.port}"],
            "tls": True,
            "tls_ca_file": str(ca),
            "tls_server_name": "127.0.0.1",
            "shared_key_file": str(shared_key),
        },
    )
    daemons.append(fwd)
    try:
        await fwd.start()
        await wait_until(lambda: delivered(output) == 300, timeout_s=60, what="300 before")
        assert await serves(input_port(agg), old_ca.cert)
        pids = (process_tree(agg.proc.pid), fwd.proc.pid)  # type: ignore[union-attr]
        reloaded_before = len(agg.events("config.reloaded")) + len(fwd.events("config.reloaded"))
        assert reloaded_before == 0

        for target, source in ((crt, new_leaf.cert), (key, new_leaf.key), (ca, new_ca.cert)):
            replace(target, source)

        # The supervisor and both workers, and the forwarder, each apply the new files.
        await wait_until(
            lambda: len(agg.events("config.reloaded")) >= 3 and fwd.events("config.reloaded"),
            timeout_s=30,
            what="both daemons to reload",
            detail=agg.tail,
        )

        async def new_certificate_served() -> bool:
            return await serves(input_port(agg), new_ca.cert)

        await wait_until(new_certificate_served, timeout_s=30, what="the new certificate")
        assert not await serves(input_port(agg), old_ca.cert)
        connected = len(fwd.events("sender.connected"))
        proxy.set_down()
        proxy.set_up()
        with log.path.open("ab") as out:
            out.write(cri_lines(300, 300, "after"))
        await wait_until(
            lambda: delivered(output) == 600, timeout_s=60, what="600 after", detail=fwd.tail
        )
        assert len(fwd.events("sender.connected")) > connected  # a new, verified connection
        assert (process_tree(agg.proc.pid), fwd.proc.pid) == pids  # type: ignore[union-attr]
        assert not agg.events("config.reload_refused")
        assert not fwd.events("config.reload_refused")
        assert await fwd.stop() == 0
        assert await agg.stop() == 0
    finally:
        await proxy.stop()


def rewrite(daemon: DaemonProcess, text: str) -> None:
    daemon.config_path.write_text(text)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)


async def acked(port: int, key: str, chunk: str) -> None:
    async with ForwardClient("127.0.0.1", port, shared_key=key) as client:
        await client.send(compressed_chunk(container_entries("hup", 20), chunk))
        await client.wait_ack(chunk)


async def test_sighup_keeps_the_old_config_on_a_bad_file_and_refuses_restart_only_keys(
    make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    first, second = tmp_path / "key-1", tmp_path / "key-2"
    first.write_text("first-key")
    second.write_text("second-key")
    agg = make_aggregator(
        None,
        input={"shared_key_file": str(first), "allow_unauthenticated": False},
        reload={"watch_interval_s": 0},  # SIGHUP only
    )
    await agg.start()
    port = input_port(agg)
    await acked(port, "first-key", "c-1")

    # A typo: the whole file is refused, with where and why; the daemon goes on as it was.
    bad = agg.config | {"input": agg.config["input"] | {"max_entries": "lots"}}
    rewrite(agg, yaml.safe_dump(bad))
    await wait_until(lambda: agg.events("config.reload_refused"), timeout_s=20, what="refusal")
    [refused] = agg.events("config.reload_refused")
    assert refused["level"] == "warning"
    line = next(n for n, text in enumerate(yaml.safe_dump(bad).splitlines(), 1) if "lots" in text)
    assert f"aggregator.yaml:{line}: input.max_entries" in refused["reason"], refused
    assert await agg.metric("logferry_config_last_reload_successful") == 0
    await acked(port, "first-key", "c-2")

    # A new key (live) and a new port (restart only): the key applies, the port is named.
    changed = agg.config | {
        "input": agg.config["input"] | {"shared_key_file": str(second), "listen_port": free_port()}
    }
    rewrite(agg, yaml.safe_dump(changed))
    await wait_until(lambda: agg.events("config.reloaded"), timeout_s=20, what="the reload")
    [required] = agg.events("config.restart_required")
    assert required["level"] == "warning"
    assert required["keys"] == ["input.listen_port"]
    assert await agg.metric("logferry_config_restart_pending") == 1
    assert await agg.metric("logferry_config_last_reload_successful") == 1
    await acked(port, "second-key", "c-3")  # the port it started with, the new key
    with pytest.raises(HandshakeError):
        await acked(port, "first-key", "c-4")
    assert await agg.stop() == 0


async def test_the_forwarder_moves_to_the_endpoints_a_reload_names(
    make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    outputs = {name: tmp_path / f"out-{name}" for name in ("a", "b")}
    aggs = {
        name: make_aggregator(
            None, name=f"agg-{name}", output={"type": "file", "directory": str(out)}
        )
        for name, out in outputs.items()
    }
    for agg in aggs.values():
        await agg.start()
    logs = tmp_path / "logs"
    log = container_log(logs, "team-move", "pod-1", body=cri_lines(0, 200, "to-a"))
    fwd = forwarder(tmp_path / "fwd", logs, {"servers": [input_address(aggs["a"])]})
    fwd.config["reload"] = {"watch_interval_s": 0}
    daemons.append(fwd)
    await fwd.start()
    await wait_until(lambda: delivered(outputs["a"]) == 200, timeout_s=60, what="200 to a")

    fwd.config["sender"]["servers"] = [input_address(aggs["b"])]
    rewrite(fwd, yaml.safe_dump(fwd.config))
    await wait_until(lambda: fwd.events("config.reloaded"), timeout_s=20, what="the reload")
    assert fwd.events("config.reloaded")[0]["changed"] == ["sender.servers"]
    with log.path.open("ab") as out:
        out.write(cri_lines(200, 200, "to-b"))
    await wait_until(lambda: delivered(outputs["b"]) == 200, timeout_s=60, what="200 to b")
    assert delivered(outputs["a"]) == 200
    assert await fwd.stop() == 0
    for agg in aggs.values():
        assert await agg.stop() == 0

"""Authentication is on by default: no key or client certificate, no start; TLS client
certificates signed by the configured CA are the only way in without a shared key."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.aggregator import input_port
from tests.support.certs import Authority, Leaf
from tests.support.daemon import DaemonProcess
from tests.support.forward_client import ForwardClient
from tests.support.net import free_port
from tests.support.records import compressed_chunk, container_entries

pytestmark = pytest.mark.integration


def config(tmp_path: Path, **input_settings: Any) -> dict[str, Any]:
    return {
        "input": {"listen_host": "127.0.0.1", "listen_port": free_port(), **input_settings},
        "spool": {"directory": str(tmp_path / "spool")},
        "output": {"type": "null"},
    }


def refused_start(tmp_path: Path, settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.run(
        [sys.executable, "-m", "logferry", "aggregator", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_key_or_client_certificates_the_aggregator_refuses_to_start(
    tmp_path: Path,
) -> None:
    result = refused_start(tmp_path, config(tmp_path))
    assert result.returncode == 2
    assert "no authentication configured" in result.stderr
    assert "allow_unauthenticated: true" in result.stderr


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_key_file_is_refused_at_start(tmp_path: Path, content: str) -> None:
    key = tmp_path / "key"
    key.write_text(content)
    result = refused_start(tmp_path, config(tmp_path, shared_key_file=str(key)))
    assert result.returncode == 2
    assert "is empty" in result.stderr


def test_an_empty_password_file_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    settings = config(tmp_path, shared_key="k", users={"alice": str(tmp_path / "pw")})
    result = refused_start(tmp_path, settings)
    assert result.returncode == 2
    assert "password of user 'alice'" in result.stderr


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[tuple[DaemonProcess, Authority, Leaf]]:
    ca = await asyncio.to_thread(Authority.create, tmp_path / "pki")
    server = await asyncio.to_thread(ca.issue, "aggregator", server=True)
    settings = config(
        tmp_path,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_client_ca_file=str(ca.cert),
        handshake_timeout_s=2,
    )
    daemon = DaemonProcess("aggregator", tmp_path / "agg", settings)
    await daemon.start()
    yield daemon, ca, server
    daemon.ensure_dead()


def client_context(ca: Authority, leaf: Leaf | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if leaf is not None:
        context.load_cert_chain(str(leaf.cert), str(leaf.key))
    return context


async def test_client_certificates_signed_by_the_ca_are_the_way_in(
    mtls: tuple[DaemonProcess, Authority, Leaf], tmp_path: Path
) -> None:
    daemon, ca, _server = mtls
    port = input_port(daemon)
    node = await asyncio.to_thread(ca.issue, "node-1", server=False)
    async with ForwardClient("127.0.0.1", port, ssl_context=client_context(ca, node)) as ok:
        await ok.send(compressed_chunk(container_entries("mtls", 20), "m-1"))
        await ok.wait_ack("m-1")
    # No client certificate, or one from another CA: the TLS handshake fails.
    stranger_ca = await asyncio.to_thread(Authority.create, tmp_path / "other", "other")
    stranger = await asyncio.to_thread(stranger_ca.issue, "intruder", server=False)
    for leaf in (None, stranger):
        client = ForwardClient("127.0.0.1", port, ssl_context=client_context(ca, leaf))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await send_one(client)
        await client.close()
    assert await daemon.metric("logferry_acks_total") == 1


async def send_one(client: ForwardClient) -> None:
    await client.connect()
    await client.send(compressed_chunk(container_entries("mtls", 5), "x"))
    await client.wait_ack("x", timeout_s=5)


async def test_a_peer_that_never_finishes_the_tls_handshake_is_cut(
    mtls: tuple[DaemonProcess, Authority, Leaf],
) -> None:
    daemon, _ca, _server = mtls
    port = input_port(daemon)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Silent after connecting: cut at handshake_timeout_s (2 s), not at the idle timeout.
        assert await asyncio.wait_for(reader.read(1024), 10) == b""
    finally:
        writer.close()

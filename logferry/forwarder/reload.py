"""What of the forwarder's config applies live (see :mod:`logferry.common.reload`).

Live: its log, the reload watch, and how it reaches the aggregators (servers, DNS name,
shared key, TLS trust, timeouts, batch sizes, parking). Everything about what it reads and
where it keeps state (sources, spool, positions, Kubernetes, multiline) needs a restart.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from logferry.common.logs import setup_logging
from logferry.common.reload import Commit, LivePolicy
from logferry.forwarder.config import ForwarderConfig, SenderSettings, parse_host_port
from logferry.forwarder.sender import client_ssl_context

__all__ = ["LIVE_KEYS", "forwarder_policy"]

LIVE_KEYS = (
    "log",
    "reload",
    "sender.servers",
    "sender.dns_name",
    "sender.dns_port",
    "sender.dns_refresh_interval_s",
    "sender.ack_timeout_s",
    "sender.connect_timeout_s",
    "sender.shared_key",
    "sender.shared_key_file",
    "sender.tls",
    "sender.tls_ca_file",
    "sender.tls_verify",
    "sender.tls_server_name",
    "sender.batch_max_records",
    "sender.batch_max_bytes",
    "sender.max_chunks_in_hand",
    "sender.park_after_refusals",
)


def _files(config: ForwarderConfig) -> Iterable[Path | None]:
    return (config.sender.shared_key_file, config.sender.tls_ca_file)


def forwarder_policy(
    apply: Callable[[ForwarderConfig, str | None, ssl.SSLContext | None], None],
) -> LivePolicy[ForwarderConfig]:
    """The forwarder's policy; ``apply(config, shared_key, tls_context)`` puts a checked
    config in force."""

    def prepare(config: ForwarderConfig) -> Commit:
        sender: SenderSettings = config.sender
        key = sender.read_shared_key()
        context = client_ssl_context(sender)  # a CA bundle that does not load is refused
        for server in sender.servers:
            parse_host_port(server)

        def commit() -> None:
            setup_logging(config.log.level, config.log.format)
            apply(config, key, context)

        return commit

    return LivePolicy(live_keys=LIVE_KEYS, files=_files, prepare=prepare)

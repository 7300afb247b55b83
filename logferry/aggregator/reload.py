"""What of the aggregator's config applies live (see :mod:`logferry.common.reload`).

Live: its log, the reload watch, the input's credentials (shared key, users, TLS certificate,
key and client CA) and its limits per message and per connection, and the store's access
(nodes, user, password, API key, CA). Everything else needs a restart: ports, spools,
routing, the output's kind and batching, pipelines' location, workers; so does turning TLS
or client certificates on or off, which the listener was started with or without.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from logferry.aggregator.config import AggregatorConfig, ForwardInputSettings
from logferry.aggregator.outputs import BulkOutputSettings
from logferry.aggregator.server import InputCredentials
from logferry.aggregator.workers import WorkerSlot, worker_input_settings
from logferry.common.logs import setup_logging
from logferry.common.reload import Commit, LivePolicy

__all__ = ["LIVE_KEYS", "Prepared", "aggregator_policy"]

_INPUT = "input"
_OUTPUT = "output"
LIVE_KEYS = (
    "log",
    "reload",
    *(
        f"{_INPUT}.{key}"
        for key in (
            "shared_key",
            "shared_key_file",
            "users",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "handshake_timeout_s",
            "max_decompressed_bytes",
            "max_record_bytes",
            "max_entries",
            "message_timeout_s",
            "max_connections",
            "max_connections_per_source",
            "read_timeout_s",
        )
    ),
    *(
        f"{_OUTPUT}.{key}"
        for key in (
            "urls",
            "username",
            "password_file",
            "api_key_file",
            "tls_ca_file",
            "tls_verify",
        )
    ),
)


@dataclass(frozen=True)
class Prepared:
    """A reloaded config with everything read from its files, ready to be put in force."""

    config: AggregatorConfig
    input: ForwardInputSettings
    """This process's share of the input settings."""
    credentials: InputCredentials
    store: tuple[BulkOutputSettings, dict[str, str], ssl.SSLContext | bool] | None
    """The bulk output's settings, auth headers and TLS option (None: another output)."""


def _files(config: AggregatorConfig) -> Iterable[Path | None]:
    settings = config.input
    yield settings.shared_key_file
    yield from settings.users.values()
    yield settings.tls_cert_file
    yield settings.tls_key_file
    yield settings.tls_client_ca_file
    if isinstance(config.output, BulkOutputSettings):
        yield config.output.password_file
        yield config.output.api_key_file
        yield config.output.tls_ca_file


def _restart_only(old: AggregatorConfig, new: AggregatorConfig) -> Iterable[str]:
    if (old.input.tls_cert_file is None) != (new.input.tls_cert_file is None):
        yield f"{_INPUT}.tls_cert_file"
        yield f"{_INPUT}.tls_key_file"
    if (old.input.tls_client_ca_file is None) != (new.input.tls_client_ca_file is None):
        yield f"{_INPUT}.tls_client_ca_file"
    if old.output.type != new.output.type:
        yield _OUTPUT


def aggregator_policy(
    slot: WorkerSlot | None, apply: Callable[[Prepared], None] | None
) -> LivePolicy[AggregatorConfig]:
    """The policy of worker ``slot`` (None: the only process); ``apply`` puts a prepared
    config in force (None for the supervisor, which checks it and sets its log)."""

    def prepare(config: AggregatorConfig) -> Commit:
        inputs = config.input if slot is None else worker_input_settings(config.input, slot)
        output = config.output
        prepared = Prepared(
            config,
            inputs,
            InputCredentials.load(inputs),
            (output, output.headers(), output.ssl_option())
            if isinstance(output, BulkOutputSettings)
            else None,
        )

        def commit() -> None:
            setup_logging(config.log.level, config.log.format)
            if apply is not None:
                apply(prepared)

        return commit

    return LivePolicy(
        live_keys=LIVE_KEYS, files=_files, prepare=prepare, restart_only=_restart_only
    )

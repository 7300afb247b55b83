"""The config reloader (logferry.common.reload) on a small model: what changes live, what is
refused for a restart, last known good on a bad file or a failed prepare, and the watch of
the files a config names; plus the daemons' policies on their real models."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import ssl
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from logferry.aggregator.config import AggregatorConfig
from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import BulkOutput, BulkOutputSettings
from logferry.aggregator.reload import Prepared, aggregator_policy
from logferry.common.config import ConfigModel, parse_config
from logferry.common.errors import ConfigError
from logferry.common.reload import Commit, ConfigReloader, LivePolicy, changed_paths, merged
from logferry.forwarder.config import ForwarderConfig
from logferry.forwarder.endpoints import Backoff, EndpointSet
from logferry.forwarder.reload import forwarder_policy
from tests.support.fake_bulk_store import all_created, fake_store
from tests.support.net import wait_until
from tests.support.output_drain import drain_until, fill, make_docs, open_spool


class Inner(ConfigModel):
    port: int = 1
    key_file: Path | None = None
    limit: int = 10


class Small(ConfigModel):
    level: str = "info"
    inner: Inner = Inner()
    directory: str = "/spool"


class Applied:
    """What the policy committed, in order."""

    def __init__(self) -> None:
        self.configs: list[Small] = []
        self.keys: list[str | None] = []


def small_policy(applied: Applied) -> LivePolicy[Small]:
    def prepare(config: Small) -> Commit:
        key = None
        if config.inner.key_file is not None:
            key = config.inner.key_file.read_text()  # OSError: refused
            if not key:
                raise ConfigError("empty key", path="inner.key_file")

        def commit() -> None:
            applied.configs.append(config)
            applied.keys.append(key)

        return commit

    return LivePolicy(
        live_keys=("level", "inner.key_file", "inner.limit"),
        files=lambda c: (c.inner.key_file,),
        prepare=prepare,
    )


def write(path: Path, data: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(data))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Applied, CollectorRegistry, ConfigReloader[Small]]:
    path = tmp_path / "small.yaml"
    write(path, {})
    applied = Applied()
    registry = CollectorRegistry()
    reloader = ConfigReloader(
        path, Small, Small(), small_policy(applied), registry, watch_interval_s=lambda _c: 0.05
    )
    return path, applied, registry, reloader


def test_changed_paths_and_merged() -> None:
    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": {"x": 1}}
    new = {"a": 1, "b": {"c": 3, "d": [1]}, "e": {"y": 2}}
    assert changed_paths(old, new) == ["b.c", "b.d", "e.x", "e.y"]
    assert merged(old, new, ["b.c", "e.x", "e.y"]) == {
        "a": 1,
        "b": {"c": 3, "d": [1, 2]},
        "e": {"y": 2},
    }
    assert old["b"] == {"c": 2, "d": [1, 2]}  # not mutated


async def test_a_live_change_is_applied(setup: tuple) -> None:  # type: ignore[type-arg]
    path, applied, registry, reloader = setup
    write(path, {"level": "debug", "inner": {"limit": 20}})
    assert await reloader.reload("signal")
    assert reloader.current.level == "debug"
    assert applied.configs[-1].inner.limit == 20
    assert sample(registry, "logferry_config_reloads_total", outcome="applied") == 1
    assert sample(registry, "logferry_config_restart_pending") == 0
    assert sample(registry, "logferry_config_last_reload_successful") == 1


async def test_a_restart_only_key_is_refused_and_the_live_ones_still_apply(
    setup: tuple,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, applied, registry, reloader = setup
    write(path, {"directory": "/elsewhere", "inner": {"port": 2, "limit": 30}})
    assert await reloader.reload("signal")
    current = reloader.current
    assert (current.directory, current.inner.port, current.inner.limit) == ("/spool", 1, 30)
    assert applied.configs[-1] is current
    assert sample(registry, "logferry_config_restart_pending") == 1
    warning = next(r for r in caplog.records if r.getMessage() == "config.restart_required")
    assert warning.levelname == "WARNING"
    assert warning.logferry_fields["keys"] == ["directory", "inner.port"]  # type: ignore[attr-defined]
    # Back to the values it runs with: nothing pending any more.
    write(path, {"inner": {"limit": 30}})
    assert await reloader.reload("signal")
    assert sample(registry, "logferry_config_restart_pending") == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("level: [unclosed", "invalid YAML"),
        ("inner:\n  limit: lots\n", "small.yaml:2: inner.limit"),
        ("inner:\n  key_file: /nonexistent/key\n", "/nonexistent/key"),
    ],
)
async def test_a_bad_file_keeps_the_config_in_force(
    setup: tuple,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
    text: str,
    reason: str,
) -> None:
    path, applied, registry, reloader = setup
    before = reloader.current
    path.write_text(text)
    assert not await reloader.reload("signal")
    assert reloader.current is before
    assert applied.configs == []
    assert sample(registry, "logferry_config_reloads_total", outcome="refused") == 1
    assert sample(registry, "logferry_config_last_reload_successful") == 0
    refused = next(r for r in caplog.records if r.getMessage() == "config.reload_refused")
    assert refused.levelname == "WARNING"
    assert reason in refused.logferry_fields["reason"]  # type: ignore[attr-defined]


async def test_the_watch_applies_a_changed_file_the_config_names(
    setup: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    path, applied, _registry, reloader = setup
    key = tmp_path / "key"
    key.write_text("one")
    write(path, {"inner": {"key_file": str(key)}})
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    try:
        await wait_until(lambda: applied.keys[-1:] == ["one"], timeout_s=10, what="first key")
        # Rotated as Kubernetes does it: a new file swapped in under the same name.
        fresh = tmp_path / "key.new"
        fresh.write_text("two")
        os.replace(fresh, key)
        await wait_until(lambda: applied.keys[-1:] == ["two"], timeout_s=10, what="rotated key")
        # SIGHUP reloads even when nothing changed.
        count = len(applied.keys)
        reloader.request()
        await wait_until(lambda: len(applied.keys) > count, timeout_s=10, what="SIGHUP reload")
    finally:
        stop.set()
        await task


def _forwarder(**sender: object) -> ForwarderConfig:
    data = {"node_name": "n", "spool": {"directory": "/s"}, "sender": {"servers": ["a:1"]}}
    data["sender"].update(sender)  # type: ignore[attr-defined]
    return parse_config(yaml.safe_dump(data), ForwarderConfig)


def test_forwarder_policy_separates_endpoints_from_sources() -> None:
    policy = forwarder_policy(lambda *_: None)
    old, new = _forwarder(), _forwarder(servers=["b:1"])
    assert policy.is_live("sender.servers", old, new)
    assert policy.is_live("sender.tls_ca_file", old, new)
    assert policy.is_live("log.level", old, new)
    for key in ("spool.directory", "source.path_glob", "http.listen_port", "node_name"):
        assert not policy.is_live(key, old, new), key


def test_forwarder_policy_refuses_a_ca_file_that_does_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        forwarder_policy(lambda *_: None).prepare(_forwarder(tls=True, tls_ca_file=str(bad)))


def test_aggregator_policy_refuses_turning_tls_on_live(tmp_path: Path) -> None:
    def config(**inputs: object) -> AggregatorConfig:
        data = {
            "input": {"allow_unauthenticated": True, **inputs},
            "spool": {"directory": str(tmp_path / "spool")},
            "output": {"type": "null"},
        }
        return parse_config(yaml.safe_dump(data), AggregatorConfig)

    policy = aggregator_policy(None, None)
    plain = config()
    tls = config(tls_cert_file="/c", tls_key_file="/k")
    rotated = config(tls_cert_file="/c2", tls_key_file="/k2")
    assert not policy.is_live("input.tls_cert_file", plain, tls)
    assert policy.is_live("input.tls_cert_file", tls, rotated)
    assert policy.is_live("input.max_entries", plain, plain)
    for key in ("input.listen_port", "spool.directory", "workers", "input.buffer_budget_bytes"):
        assert not policy.is_live(key, plain, plain), key


def test_endpoints_set_static_keeps_the_state_of_members_still_listed() -> None:
    removed: list[str] = []
    endpoints = EndpointSet(
        [("a", 1), ("b", 1)], window=4, backoff=Backoff(0.1, 1.0, random.Random(1))
    )
    endpoints.on_removed = lambda e: removed.append(e.name)
    endpoints.set_dns_addresses([("d", 1)])
    kept = endpoints.endpoints[1]
    endpoints.mark_down(kept)
    endpoints.set_static([("b", 1), ("c", 1)])
    names = [e.name for e in endpoints.endpoints]
    assert names == ["b:1", "c:1", "d:1"]
    assert endpoints.endpoints[0] is kept
    assert not kept.up
    assert removed == ["a:1"]


async def test_a_rotated_store_password_goes_out_with_the_next_request(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("first\n")
    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    async with fake_store(all_created) as store:
        data = {
            "input": {"allow_unauthenticated": True},
            "spool": {"directory": str(tmp_path / "spool")},
            "output": {
                "type": "opensearch",
                "urls": [store.url],
                "username": "logferry",
                "password_file": str(password),
                "manage_templates": False,
            },
        }
        config = parse_config(yaml.safe_dump(data), AggregatorConfig)
        assert isinstance(config.output, BulkOutputSettings)
        output = BulkOutput(config.output, metrics, DeadLetterQueue(tmp_path / "dlq"))
        await output.start()

        def apply(prepared: Prepared) -> None:
            assert prepared.store is not None
            output.use_access(*prepared.store)

        try:
            await fill(spool, make_docs("logs-a", 5), per_fragment=5)
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
            password.write_text("second\n")  # the Secret rotated
            aggregator_policy(None, apply).prepare(config)()
            await fill(spool, make_docs("logs-b", 5), per_fragment=5)
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    basic = [base64.b64decode(a.split()[1]).decode() for a in store.authorizations if a]
    assert basic == ["logferry:first", "logferry:second"]
    await spool.close()

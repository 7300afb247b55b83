"""The kopf wiring of the operator: it imports, registers its handlers, and its controller
writes the ConfigMap before it reports status, once per change."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from logferry.operator import main
from logferry.operator import reconcile as rc
from logferry.operator.kubeapi import KubeApiError
from tests.support.log_pipelines import SCHEMA_INVALID, api_object


class FakeStore:
    """The ConfigMap, in memory."""

    def __init__(self, data: dict[str, str] | None = None) -> None:
        self.data = data
        self.writes: list[dict[str, str]] = []
        self.fail_with: Exception | None = None

    async def read(self) -> dict[str, str] | None:
        return None if self.data is None else dict(self.data)

    async def write(self, data: Mapping[str, str]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.data = dict(data)
        self.writes.append(dict(data))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, rc.Event]] = []

    def __call__(self, body: Mapping[str, Any], event: rc.Event) -> None:
        self.events.append((body["metadata"]["name"], event))


def _controller(store: FakeStore) -> tuple[main.Controller, Recorder]:
    recorder = Recorder()
    return main.Controller(store, recorder), recorder


def test_operator_module_imports_and_registers_its_handlers() -> None:
    registry = kopf.get_default_registry()
    handlers = registry._changing.get_all_handlers()
    ids = {str(h.id) for h in handlers}
    assert any(i.startswith("reconcile_pipeline") for i in ids)
    assert any(i.startswith("delete_pipeline") for i in ids)
    assert main.GROUP == "logferry.io"
    assert main.VERSION == "v1alpha1"
    assert main.PLURAL == "logpipelines"


async def test_apply_writes_the_configmap_then_fills_status_and_posts_events() -> None:
    store = FakeStore()
    controller, recorder = _controller(store)
    status: dict[str, Any] = {}

    result = await controller.apply(api_object(), status)

    assert store.writes == [result.configmap_data]
    assert status["appliedHash"] == result.verdict.spec_hash
    assert [(n, e.type) for n, e in recorder.events] == [("web", "Normal")]
    assert set(controller.accepted) == {"team-a/web"}


async def test_an_unchanged_configmap_is_not_written_again() -> None:
    store = FakeStore()
    controller, _ = _controller(store)
    status: dict[str, Any] = {}
    await controller.apply(api_object(), status)
    await controller.apply(api_object(status=copy.deepcopy(status)), {})
    await controller.apply(api_object(generation=2, spec=SCHEMA_INVALID), {})
    assert len(store.writes) == 1


async def test_a_failed_configmap_write_reports_nothing_and_keeps_the_state() -> None:
    store = FakeStore()
    controller, recorder = _controller(store)
    store.fail_with = KubeApiError("HTTP 409", status=409, retriable=True)
    status: dict[str, Any] = {}

    with pytest.raises(KubeApiError):
        await controller.apply(api_object(), status)

    assert status == {}
    assert recorder.events == []
    assert controller.accepted == {}
    store.fail_with = None
    await controller.apply(api_object(), status)
    assert status["conditions"][1]["reason"] == "Applied"


async def test_a_restarted_controller_keeps_the_last_known_good_from_the_configmap() -> None:
    store = FakeStore()
    controller, _ = _controller(store)
    await controller.apply(api_object(generation=1), {})

    restarted, _ = _controller(FakeStore(store.data))
    status: dict[str, Any] = {}
    await restarted.apply(api_object(generation=2, spec=SCHEMA_INVALID), status)

    assert status["conditions"][1]["reason"] == "KeptLastKnownGood"
    assert set(restarted.accepted) == {"team-a/web"}


async def test_delete_removes_the_pipeline_from_the_configmap() -> None:
    store = FakeStore()
    controller, _ = _controller(store)
    await controller.apply(api_object(name="web"), {})
    await controller.apply(api_object(name="api"), {})

    await controller.delete("team-a", "web")

    assert store.data is not None
    assert sorted(store.data) == ["team-a.api.yaml"]
    await controller.delete("team-a", "web")
    assert len(store.writes) == 3


async def test_handlers_turn_api_errors_into_kopf_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = rc.reconcile(api_object(name="web"), {})
    store = FakeStore(seeded.configmap_data)
    controller, recorder = _controller(store)
    monkeypatch.setattr(main, "_controller", controller)
    # 403 (RBAC) is not retriable as such, but is retried slowly: the fix is an RBAC change.
    store.fail_with = KubeApiError("HTTP 403", status=403, retriable=False)

    with pytest.raises(kopf.TemporaryError) as raised:
        await main.delete_pipeline(namespace="team-a", name="web")
    assert raised.value.delay == main.RETRY_DELAY_PERMANENT_S

    store.fail_with = KubeApiError("HTTP 503", status=503, retriable=True)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as raised:
        await main.reconcile_pipeline(body=kopf.Body(api_object(name="api")), patch=patch)
    assert raised.value.delay == main.RETRY_DELAY_S
    assert not patch.status
    assert recorder.events == []


async def test_handlers_before_startup_ask_kopf_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "_controller", None)
    with pytest.raises(kopf.TemporaryError):
        await main.reconcile_pipeline(body=kopf.Body(api_object()), patch=kopf.Patch())


def test_budget_from_env_reads_the_tenant_share() -> None:
    assert main.budget_from_env({}) == rc.ConfigMapBudget()
    assert main.budget_from_env({main.TENANT_BUDGET_ENV: " "}) == rc.ConfigMapBudget()
    budget = main.budget_from_env({main.TENANT_BUDGET_ENV: "32KiB"})
    assert budget.tenant_bytes == 32 * 1024
    assert budget.total_bytes == rc.CONFIGMAP_BUDGET_BYTES
    assert main.budget_from_env({main.TENANT_BUDGET_ENV: "4096"}).tenant_bytes == 4096


@pytest.mark.parametrize("value", ["lots", "-1", "0", "2MiB", "64 apples"])
def test_a_bad_tenant_share_stops_the_operator_at_start(value: str) -> None:
    with pytest.raises(ValueError, match=main.TENANT_BUDGET_ENV):
        main.budget_from_env({main.TENANT_BUDGET_ENV: value})


async def test_the_controller_holds_each_tenant_to_its_share() -> None:
    one = rc.configmap_size(rc.reconcile(api_object(name="a"), {}).configmap_data)
    budget = rc.ConfigMapBudget(tenant_bytes=one + one // 2)
    store = FakeStore()
    controller = main.Controller(store, Recorder(), budget)
    status: dict[str, Any] = {}
    await controller.apply(api_object(name="a"), {})
    await controller.apply(api_object(name="b"), status)
    await controller.apply(api_object(name="c", namespace="team-b"), {})

    assert status["conditions"][0]["reason"] == "TenantBudgetExceeded"
    assert store.data is not None
    assert sorted(store.data) == ["team-a.a.yaml", "team-b.c.yaml"]
    assert len(store.writes) == 2

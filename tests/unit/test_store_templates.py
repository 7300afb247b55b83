"""logferry's index template (patterns, priority, explicit mappings, the sealed hash) and the
ISM/ILM lifecycle policies and templates rendered from the ``indices`` settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from logferry.store.lifecycle import Policy, ilm_templates, policies, policy_name, templates_for
from logferry.store.settings import IndexSettings
from logferry.store.templates import (
    TEMPLATE_VERSION,
    ensure_template,
    sealed,
    template_body,
    template_name,
)


def settings(**values: Any) -> IndexSettings:
    return IndexSettings.model_validate(values)


def index_settings(body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = body["template"]["settings"]["index"]
    return found


def properties(body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = body["template"]["mappings"]["properties"]
    return found


# template_body


def test_template_name() -> None:
    assert template_name("logs") == "logferry-logs"


def test_template_pattern_is_the_prefix() -> None:
    assert template_body("app", IndexSettings())["index_patterns"] == ["app-*"]


def test_template_priority_and_version() -> None:
    body = template_body("logs", settings(template_priority=777))
    assert body["priority"] == 777
    assert body["version"] == TEMPLATE_VERSION


def test_default_priority_is_above_the_builtin_logs_template() -> None:
    assert template_body("logs", IndexSettings())["priority"] > 100


def test_template_index_settings() -> None:
    body = template_body("logs", settings(shards=3, replicas=0, total_fields_limit=2500))
    assert index_settings(body) == {
        "number_of_shards": 3,
        "number_of_replicas": 0,
        "mapping": {"total_fields": {"limit": 2500}},
    }


@pytest.mark.parametrize(
    ("path", "mapping"),
    [
        (("@timestamp",), {"type": "date_nanos"}),
        (("@timestamp_original",), {"type": "keyword"}),
        (("log",), {"type": "text"}),
        (("stream",), {"type": "keyword"}),
        (("_lf", "src"), {"type": "keyword"}),
        (("_lf", "id"), {"type": "keyword"}),
        (("_lf", "seq"), {"type": "long"}),
        (("_lf", "seq_end"), {"type": "long"}),
        (("_lf", "truncated"), {"type": "boolean"}),
        (("_lf", "kind"), {"type": "keyword"}),
        (("_lf", "wire_kind"), {"type": "keyword"}),
        # Checkpoints, which the auditor aggregates on.
        (("_lf", "next_seq"), {"type": "long"}),
        (("_lf", "state"), {"type": "keyword"}),
        (("_lf", "lost_lines"), {"type": "long"}),
        (("_lf", "reason"), {"type": "keyword", "ignore_above": 1024}),
        (("_lf", "node"), {"type": "keyword"}),
        (("kubernetes", "namespace_name"), {"type": "keyword"}),
        (("kubernetes", "pod_name"), {"type": "keyword"}),
        (("rerouted", "reason"), {"type": "keyword"}),
        (("fluent_metadata",), {"type": "object", "enabled": False}),
        (("fluent_metadata_wire",), {"type": "object", "enabled": False}),
        (("unrenderable",), {"type": "object", "enabled": False}),
    ],
)
def test_explicit_mappings(path: tuple[str, ...], mapping: dict[str, Any]) -> None:
    found: Any = properties(template_body("logs", IndexSettings()))
    for name in path[:-1]:
        found = found[name]["properties"]
    assert found[path[-1]] == mapping


def test_lf_strings_are_keywords_by_dynamic_template() -> None:
    mappings = template_body("logs", IndexSettings())["template"]["mappings"]
    lf = next(t["lf"] for t in mappings["dynamic_templates"] if "lf" in t)
    assert lf == {
        "path_match": "_lf.*",
        "match_mapping_type": "string",
        "mapping": {"type": "keyword"},
    }


def test_other_strings_are_text_with_a_keyword() -> None:
    mappings = template_body("logs", IndexSettings())["template"]["mappings"]
    names = [next(iter(t)) for t in mappings["dynamic_templates"]]
    assert names[-1] == "strings"  # the catch-all comes after the specific ones
    strings = mappings["dynamic_templates"][-1]["strings"]["mapping"]
    assert strings["type"] == "text"
    assert strings["fields"]["keyword"] == {"type": "keyword", "ignore_above": 256}


class FakeTemplates:
    """The one template endpoint of a store, holding what was last PUT."""

    def __init__(self, stored: dict[str, Any] | None) -> None:
        self.stored = stored
        self.puts = 0

    async def call(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[int, Any]:
        assert (method, path) == ("GET", "/_index_template/logferry-logs")
        if self.stored is None:
            return 404, {}
        found = {"name": "logferry-logs", "index_template": self.stored}
        return 200, {"index_templates": [found]}

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        assert (method, path) == ("PUT", "/_index_template/logferry-logs")
        self.stored, self.puts = body, self.puts + 1
        return {"acknowledged": True}


def _as_version(body: dict[str, Any], version: int) -> dict[str, Any]:
    """``body`` as another logferry version would have sealed it (its mappings differ)."""
    older = copy.deepcopy(body)
    older["version"] = version
    del older["template"]["mappings"]["properties"]["_lf"]["properties"]["next_seq"]
    return sealed(older)


def test_the_checkpoint_mappings_came_with_a_new_version() -> None:
    # Version 2 had no checkpoint fields: a store holding it must get them.
    assert TEMPLATE_VERSION >= 3


async def test_ensure_template_replaces_an_older_version_so_a_store_gets_new_mappings() -> None:
    body = template_body("logs", IndexSettings())
    store = FakeTemplates(_as_version(body, TEMPLATE_VERSION - 1))
    assert await ensure_template(store, "logferry-logs", body) == "installed"  # type: ignore[arg-type]
    assert store.stored == body
    assert await ensure_template(store, "logferry-logs", body) == "current"  # type: ignore[arg-type]
    assert store.puts == 1


async def test_ensure_template_keeps_a_newer_version() -> None:
    body = template_body("logs", IndexSettings())
    newer = _as_version(body, TEMPLATE_VERSION + 1)
    store = FakeTemplates(newer)
    assert await ensure_template(store, "logferry-logs", body) == "newer_kept"  # type: ignore[arg-type]
    assert store.stored == newer
    assert store.puts == 0


def test_template_meta() -> None:
    meta = template_body("logs", IndexSettings())["_meta"]
    assert meta["managed_by"] == "logferry"
    assert len(meta["hash"]) == 16
    int(meta["hash"], 16)


# sealed


def test_template_hash_stable_across_calls() -> None:
    assert template_body("logs", IndexSettings()) == template_body("logs", IndexSettings())


@pytest.mark.parametrize(
    "values",
    [
        {"shards": 2},
        {"replicas": 0},
        {"total_fields_limit": 2000},
        {"template_priority": 501},
    ],
)
def test_template_hash_changes_with_settings(values: dict[str, Any]) -> None:
    base = template_body("logs", IndexSettings())["_meta"]["hash"]
    assert template_body("logs", settings(**values))["_meta"]["hash"] != base


def test_template_hash_changes_with_prefix() -> None:
    a = template_body("logs", IndexSettings())["_meta"]["hash"]
    assert template_body("app", IndexSettings())["_meta"]["hash"] != a


def test_template_hash_ignores_settings_outside_the_template() -> None:
    base = template_body("logs", IndexSettings())
    other = template_body(
        "logs", settings(retention_days=30, period="week", tenants={"t": {"period": "month"}})
    )
    assert other == base


def test_sealed_ignores_an_existing_meta_and_key_order() -> None:
    one = sealed({"a": 1, "b": {"x": 1, "y": 2}})
    two = sealed({"b": {"y": 2, "x": 1}, "a": 1, "_meta": {"hash": "stale", "other": 1}})
    assert one == two
    assert one["_meta"]["managed_by"] == "logferry"


def test_sealed_is_idempotent_and_leaves_its_argument_alone() -> None:
    body = {"a": [1, 2]}
    first = sealed(body)
    assert body == {"a": [1, 2]}
    assert sealed(first) == first


def test_sealed_hash_follows_the_body() -> None:
    assert sealed({"a": 1})["_meta"]["hash"] != sealed({"a": 2})["_meta"]["hash"]


# policies


def test_no_policies_when_kept_for_ever() -> None:
    assert policies("logs", IndexSettings()) == []


def test_default_policy_covers_the_prefix() -> None:
    assert policies("logs", settings(retention_days=30)) == [
        Policy("logferry-logs-30d", 30, 31, ("logs-*",), 100)
    ]


@pytest.mark.parametrize(("period", "after"), [("day", 31), ("week", 37), ("month", 61)])
def test_delete_after_is_retention_plus_one_period(period: str, after: int) -> None:
    [policy] = policies("logs", settings(retention_days=30, period=period))
    assert policy.delete_after_days == after


def test_policy_name() -> None:
    assert policy_name("app", 7) == "logferry-app-7d"


def test_tenant_policies() -> None:
    s = settings(
        retention_days=30,
        tenants={
            "team": {"retention_days": 7},
            "team-2x": {"retention_days": 90, "period": "week"},
        },
    )
    assert policies("logs", s) == [
        Policy("logferry-logs-30d", 30, 31, ("logs-*",), 100),
        Policy("logferry-logs-7d-team", 7, 8, ("logs-team-2*", "logs-team.*"), 104, "team"),
        Policy(
            "logferry-logs-90d-team-2x",
            90,
            97,
            ("logs-team-2x-2*", "logs-team-2x.*"),
            107,
            "team-2x",
        ),
    ]


def test_longer_tenant_name_wins() -> None:
    s = settings(tenants={"team": {"retention_days": 7}, "team-2x": {"retention_days": 90}})
    by_tenant = {p.tenant: p for p in policies("logs", s)}
    assert set(by_tenant) == {"team", "team-2x"}  # no default policy: kept for ever
    assert by_tenant["team-2x"].priority > by_tenant["team"].priority
    assert by_tenant["team"].priority > 100


def test_tenant_with_only_another_period_gets_its_own_delete_age() -> None:
    s = settings(retention_days=30, tenants={"slow": {"period": "month"}})
    [_, slow] = policies("logs", s)
    assert (slow.tenant, slow.retention_days, slow.delete_after_days) == ("slow", 30, 61)


def test_tenant_without_settings_of_its_own_gets_no_policy() -> None:
    s = settings(retention_days=30, tenants={"plain": {}})
    assert [p.tenant for p in policies("logs", s)] == [None]


def test_tenant_period_under_a_default_kept_for_ever_gets_no_policy() -> None:
    s = settings(tenants={"slow": {"period": "month"}, "gone": {"retention_days": 0}})
    assert policies("logs", s) == []


def test_tenant_kept_for_ever_under_a_default_that_deletes() -> None:
    s = settings(retention_days=30, tenants={"audit": {"retention_days": 0}})
    [default, audit] = policies("logs", s)
    assert default.tenant is None
    assert audit == Policy(
        "logferry-logs-0d-audit", 0, 0, ("logs-audit-2*", "logs-audit.*"), 105, "audit"
    )
    assert audit.priority > default.priority


def test_tenant_policies_sorted_by_name() -> None:
    s = settings(tenants={n: {"retention_days": 1} for n in ["c", "a", "b"]})
    assert [p.tenant for p in policies("logs", s)] == ["a", "b", "c"]


# Policy.ism / Policy.ilm


def test_ism_deletes_after_retention_plus_one_period() -> None:
    [policy] = policies("logs", settings(retention_days=30))
    assert policy.ism() == {
        "policy": {
            "description": "logferry: delete 30 days after the period an index covers",
            "default_state": "keep",
            "states": [
                {
                    "name": "keep",
                    "actions": [],
                    "transitions": [
                        {"state_name": "delete", "conditions": {"min_index_age": "31d"}}
                    ],
                },
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
            "ism_template": [{"index_patterns": ["logs-*"], "priority": 100}],
        }
    }


def test_ism_of_a_tenant_lists_its_patterns() -> None:
    s = settings(tenants={"team": {"retention_days": 7, "period": "week"}})
    [policy] = policies("logs", s)
    ism = policy.ism()["policy"]
    assert ism["ism_template"] == [
        {"index_patterns": ["logs-team-2*", "logs-team.*"], "priority": 104}
    ]
    assert ism["states"][0]["transitions"][0]["conditions"] == {"min_index_age": "14d"}


def test_ism_kept_for_ever_has_no_delete_state() -> None:
    s = settings(retention_days=30, tenants={"audit": {"retention_days": 0}})
    ism = policies("logs", s)[1].ism()["policy"]
    assert [state["name"] for state in ism["states"]] == ["keep"]
    assert ism["states"][0]["transitions"] == []
    assert ism["description"] == "logferry: keep the period an index covers"


def test_ilm_deletes_after_retention_plus_one_period() -> None:
    [policy] = policies("logs", settings(retention_days=30))
    assert policy.ilm() == {
        "policy": {
            "_meta": {"managed_by": "logferry", "retention_days": 30},
            "phases": {
                "hot": {"min_age": "0ms", "actions": {}},
                "delete": {"min_age": "31d", "actions": {"delete": {}}},
            },
        }
    }


def test_ilm_month_period() -> None:
    [policy] = policies("logs", settings(retention_days=365, period="month"))
    assert policy.ilm()["policy"]["phases"]["delete"]["min_age"] == "396d"


def test_ilm_kept_for_ever_has_no_delete_phase() -> None:
    s = settings(retention_days=30, tenants={"audit": {"retention_days": 0}})
    ilm = policies("logs", s)[1].ilm()["policy"]
    assert list(ilm["phases"]) == ["hot"]
    assert ilm["_meta"]["retention_days"] == 0


# ilm_templates / templates_for


def test_templates_for_without_ilm_is_the_one_template() -> None:
    for lifecycle in ("janitor", "ism", "none"):
        s = settings(retention_days=30, lifecycle=lifecycle, tenants={"t": {"retention_days": 1}})
        assert templates_for("logs", s) == {"logferry-logs": template_body("logs", s)}


def test_templates_for_ilm_attaches_the_default_policy() -> None:
    s = settings(retention_days=30, lifecycle="ilm")
    templates = templates_for("logs", s)
    assert list(templates) == ["logferry-logs"]
    base = templates["logferry-logs"]
    assert index_settings(base)["lifecycle"] == {"name": "logferry-logs-30d"}
    assert base["index_patterns"] == ["logs-*"]
    assert base["priority"] == 500


def test_templates_for_ilm_tenant_templates() -> None:
    s = settings(
        retention_days=30,
        lifecycle="ilm",
        template_priority=600,
        tenants={"team": {"retention_days": 7}, "audit": {"retention_days": 0}},
    )
    templates = templates_for("logs", s)
    assert sorted(templates) == ["logferry-logs", "logferry-logs-audit", "logferry-logs-team"]
    base = templates["logferry-logs"]
    team = templates["logferry-logs-team"]
    audit = templates["logferry-logs-audit"]
    assert team["index_patterns"] == ["logs-team-2*", "logs-team.*"]
    assert index_settings(team)["lifecycle"] == {"name": "logferry-logs-7d-team"}
    assert index_settings(audit)["lifecycle"] == {"name": "logferry-logs-0d-audit"}
    assert team["priority"] == 600 + 104
    assert base["priority"] == 600
    assert audit["priority"] > team["priority"] > base["priority"]


def test_ilm_tenant_template_keeps_the_mappings_and_index_settings() -> None:
    s = settings(lifecycle="ilm", shards=4, tenants={"team": {"retention_days": 7}})
    plain = template_body("logs", s)
    team = templates_for("logs", s)["logferry-logs-team"]
    assert team["template"]["mappings"] == plain["template"]["mappings"]
    assert index_settings(team)["number_of_shards"] == 4


def test_ilm_without_a_default_retention_leaves_the_base_template_plain() -> None:
    s = settings(lifecycle="ilm", tenants={"team": {"retention_days": 7}})
    templates = templates_for("logs", s)
    assert "lifecycle" not in index_settings(templates["logferry-logs"])
    assert index_settings(templates["logferry-logs-team"])["lifecycle"] == {
        "name": "logferry-logs-7d-team"
    }


def test_ilm_templates_are_sealed_over_their_own_body() -> None:
    s = settings(retention_days=30, lifecycle="ilm", tenants={"team": {"retention_days": 7}})
    templates = ilm_templates("logs", s)
    for body in templates.values():
        assert sealed(copy.deepcopy(body)) == body
        assert body["_meta"]["managed_by"] == "logferry"
    hashes = {body["_meta"]["hash"] for body in templates.values()}
    hashes.add(template_body("logs", s)["_meta"]["hash"])
    assert len(hashes) == 3


def test_ilm_templates_leave_the_plain_template_unchanged() -> None:
    s = settings(retention_days=30, lifecycle="ilm", tenants={"team": {"retention_days": 7}})
    before = template_body("logs", s)
    ilm_templates("logs", s)
    assert template_body("logs", s) == before
    assert "lifecycle" not in index_settings(before)


def test_ilm_templates_none_when_kept_for_ever() -> None:
    assert ilm_templates("logs", settings(lifecycle="ilm")) == {}

"""Routing: a record lands in its own tenant's index, and no name can reach another's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logferry.aggregator.routing import TenantResolver, tenant_of
from logferry.common.naming import DEFAULT_TENANT, NAMESPACE, PREFIX, SUFFIX, IndexNamer

namespaces = st.from_regex(NAMESPACE, fullmatch=True)
suffixes = st.none() | st.from_regex(SUFFIX, fullmatch=True)


def test_tenant_is_the_namespace() -> None:
    assert tenant_of({"kubernetes": {"namespace_name": "payments"}}, "_default") == "payments"


def test_records_without_a_valid_namespace_go_to_the_default_tenant() -> None:
    for record in (
        {},
        {"kubernetes": "x"},
        {"kubernetes": {}},
        {"kubernetes": {"namespace_name": 5}},
        {"kubernetes": {"namespace_name": "../other"}},
        {"kubernetes": {"namespace_name": "Upper"}},
        {"kubernetes": {"namespace_name": "a.b"}},
        {"kubernetes": {"namespace_name": "team-a\n"}},  # '$' would match before a newline
        {"kubernetes": {"namespace_name": "team-a\nteam-b"}},
    ):
        assert tenant_of(record, "_default") == "_default"


def test_every_name_pattern_is_a_full_match() -> None:
    for pattern in (NAMESPACE, SUFFIX, PREFIX, DEFAULT_TENANT):
        assert pattern.match("a\n") is None
    assert IndexNamer("logs").tenant_of_index("logs-team-a-2026.11.29") == "team-a"


def test_index_name_uses_utc_day() -> None:
    namer = IndexNamer("logs")
    assert namer.index("payments", 1764115199.9) == "logs-payments-2025.11.25"
    assert namer.index("payments", 1764115200.0) == "logs-payments-2025.11.26"
    assert namer.index("payments", 0, "audit") == "logs-payments.audit-1970.01.01"


@given(namespaces, suffixes, st.floats(0, 4e9), namespaces, suffixes, st.floats(0, 4e9))
def test_two_tenants_never_share_an_index(
    a: str, sa: str | None, ta: float, b: str, sb: str | None, tb: float
) -> None:
    namer = IndexNamer("logs")
    ia, ib = namer.index(a, ta, sa), namer.index(b, tb, sb)
    assert namer.tenant_of_index(ia) == a
    assert namer.tenant_of_index(ib) == b
    if a != b:
        assert ia != ib


def test_the_cached_resolver_agrees_with_tenant_of_and_survives_odd_values() -> None:
    resolve = TenantResolver("_default")
    records = [
        {"kubernetes": {"namespace_name": "payments"}},
        {"kubernetes": {"namespace_name": "payments"}},  # the cached path
        {"kubernetes": {"namespace_name": {"not": "hashable"}}},
        {"kubernetes": {"namespace_name": ["x"]}},
        {"kubernetes": {"namespace_name": "Bad_Name"}},
        {},
    ]
    for record in records:
        assert resolve(record) == tenant_of(record, "_default")

"""Tenant routing: which tenant a record belongs to (its Kubernetes namespace), within the
aggregator's tenant policy. Names and index names: :mod:`logferry.common.naming`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from logferry.common.naming import NAMESPACE


def tenant_of(record: dict[str, Any], default_tenant: str) -> str:
    """The record's namespace when it is a valid one, else the default tenant."""
    k8s = record.get("kubernetes")
    if isinstance(k8s, dict):
        namespace = k8s.get("namespace_name")
        if isinstance(namespace, str) and NAMESPACE.match(namespace):
            return namespace
    return default_tenant


class TenantResolver:
    """:func:`tenant_of` for the hot path, and the aggregator's tenant policy.

    Namespaces already admitted are remembered, so most records cost one dict lookup and one
    set lookup. A new namespace is admitted unless an allow-list leaves it out
    (``not_allowed``) or the aggregator already has ``max_tenants`` tenants (``tenant_cap``):
    then its records go to the default tenant and :meth:`refusal` says why.
    """

    __slots__ = ("_allowed", "_known", "_max_tenants", "_refused", "default_tenant")

    def __init__(
        self,
        default_tenant: str,
        *,
        max_tenants: int = 100_000,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self.default_tenant = default_tenant
        self._max_tenants = max_tenants
        self._allowed = allowed
        self._known: set[str] = set()
        self._refused: dict[str, str] = {}

    def __call__(self, record: dict[str, Any]) -> str:
        k8s = record.get("kubernetes")
        if k8s.__class__ is dict:
            namespace = k8s.get("namespace_name")
            if namespace.__class__ is str and namespace in self._known:
                return namespace
        tenant = tenant_of(record, self.default_tenant)
        if tenant == self.default_tenant or tenant in self._refused:
            return self.default_tenant
        if self._allowed is not None and tenant not in self._allowed:
            self._refuse(tenant, "not_allowed")
            return self.default_tenant
        if len(self._known) >= self._max_tenants:
            self._refuse(tenant, "tenant_cap")
            return self.default_tenant
        self._known.add(tenant)
        return tenant

    def admit_existing(self, tenants: Iterable[str]) -> None:
        """Count tenants that already exist (spools found at start) as admitted."""
        for tenant in tenants:
            if tenant != self.default_tenant and NAMESPACE.match(tenant):
                self._known.add(tenant)

    def _refuse(self, namespace: str, reason: str) -> None:
        if len(self._refused) < 100_000:  # bounded: past it, refusals are not remembered
            self._refused[namespace] = reason

    def refusal(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """For a record routed to the default tenant: (namespace, reason) if its namespace
        was refused by the policy, None if it simply has no valid namespace."""
        k8s = record.get("kubernetes")
        if k8s.__class__ is not dict:
            return None
        namespace = k8s.get("namespace_name")
        if namespace.__class__ is not str:
            return None
        if namespace in self._refused:
            return namespace, self._refused[namespace]
        if NAMESPACE.match(namespace) and namespace not in self._known:
            return namespace, "tenant_cap"  # refused but no longer remembered
        return None

    @property
    def tenants(self) -> int:
        """Tenants admitted so far."""
        return len(self._known)

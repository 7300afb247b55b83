"""Tenant routing: which tenant a record belongs to, and the index it may be written to.

The tenant is the Kubernetes namespace (``kubernetes.namespace_name``). Index names are built
here and only here, always as ``<prefix>-<tenant>[.<suffix>]-YYYY.MM.DD`` (UTC): a namespace is
a DNS label (no dots) and the date has a fixed width, so the tenant can be read back from any
index name unambiguously and no tenant's name or suffix can produce another tenant's index.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A Kubernetes namespace name (RFC 1123 DNS label)."""
DEFAULT_TENANT = re.compile(r"^_[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""The tenant for unroutable records starts with '_' so it can never be a real namespace."""
SUFFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")


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


class IndexNamer:
    """Builds index names, caching the date part per UTC day (the hot path calls it per record)."""

    __slots__ = ("_days", "prefix")

    def __init__(self, prefix: str = "logs") -> None:
        if not PREFIX.match(prefix):
            raise ValueError(f"index prefix {prefix!r} must be lowercase letters, digits and '-'")
        self.prefix = prefix
        self._days: dict[int, str] = {}

    def day(self, epoch_s: float) -> str:
        """``YYYY.MM.DD`` of a UTC time."""
        day = int(epoch_s // 86400)
        text = self._days.get(day)
        if text is None:
            if len(self._days) > 64:
                self._days.clear()
            text = time.strftime("%Y.%m.%d", time.gmtime(day * 86400))
            self._days[day] = text
        return text

    def index(self, tenant: str, epoch_s: float, suffix: str | None = None) -> str:
        """The index for ``tenant`` at ``epoch_s``, inside the tenant's own prefix."""
        middle = f"{tenant}.{suffix}" if suffix else tenant
        return f"{self.prefix}-{middle}-{self.day(epoch_s)}"

    def tenant_of_index(self, index: str) -> str | None:
        """The tenant an index name belongs to, or None if it is not one of ours."""
        head = f"{self.prefix}-"
        if not index.startswith(head) or len(index) < len(head) + 12 or index[-11] != "-":
            return None
        return index[len(head) : -11].split(".", 1)[0] or None

"""Tenant and index names: the patterns every name is checked against, and the one place
index names are built.

Index names are always ``<prefix>-<tenant>[.<suffix>]-YYYY.MM.DD`` (UTC): a namespace is a DNS
label (no dots) and the date has a fixed width, so the tenant can be read back from any index
name unambiguously and no tenant's name or suffix can produce another tenant's index. Every
pattern matches a whole name: anchored at the very end of the text, never with ``$``, which
also matches before a final newline.
"""

from __future__ import annotations

import re
import time

NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A Kubernetes namespace name (RFC 1123 DNS label)."""
DEFAULT_TENANT = re.compile(r"^_[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""The tenant for unroutable records starts with '_' so it can never be a real namespace."""
SUFFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")


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

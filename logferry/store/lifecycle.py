"""Retention left to the store: OpenSearch ISM and Elasticsearch ILM policies.

For teams that would rather have the store delete old indices than the aggregators' janitor
(``indices.lifecycle: ism`` or ``ilm``; ``logferry store setup`` installs what is rendered
here). One policy per distinct retention, named ``logferry-<prefix>-<days>d``; the default
retention's policy covers ``<prefix>-*``, a tenant with a retention of its own gets its
patterns ``<prefix>-<tenant>-2*`` (its dated indices) and ``<prefix>-<tenant>.*`` (its
pipelines' suffixed ones).

Both plugins count an index's age from its creation, not from the end of the period it
covers, so the age in a policy is the retention plus one period: an index is deleted no
earlier than the janitor would delete it, and at most one period later.

A wildcard cannot say "a date follows", so ``logs-team-2*`` also matches the indices of a
namespace called ``team-2x``: that namespace then gets ``team``'s retention unless it has its
own entry (a longer tenant name gets a higher priority and wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from logferry.store.settings import IndexSettings
from logferry.store.shards import PERIOD_DAYS
from logferry.store.templates import sealed, template_body, template_name

__all__ = ["Policy", "ilm_templates", "policies", "policy_name", "templates_for"]

_BASE_PRIORITY = 100


@dataclass(frozen=True, slots=True)
class Policy:
    """One retention's policy: its name, the age at which an index is deleted, and the index
    patterns it covers with the priority each pattern group gets."""

    name: str
    retention_days: int
    delete_after_days: int
    patterns: tuple[str, ...]
    priority: int
    tenant: str | None = None
    """The tenant it was made for; None for the default retention's."""

    def ism(self) -> dict[str, Any]:
        """The OpenSearch ISM policy body (``PUT _plugins/_ism/policies/<name>``)."""
        keep: dict[str, Any] = {"name": "keep", "actions": [], "transitions": []}
        states = [keep]
        if self.retention_days:
            age = f"{self.delete_after_days}d"
            keep["transitions"] = [{"state_name": "delete", "conditions": {"min_index_age": age}}]
            states.append({"name": "delete", "actions": [{"delete": {}}], "transitions": []})
        what = f"delete {self.retention_days} days after" if self.retention_days else "keep"
        return {
            "policy": {
                "description": f"logferry: {what} the period an index covers",
                "default_state": "keep",
                "states": states,
                "ism_template": [
                    {"index_patterns": list(self.patterns), "priority": self.priority}
                ],
            }
        }

    def ilm(self) -> dict[str, Any]:
        """The Elasticsearch ILM policy body (``PUT _ilm/policy/<name>``)."""
        phases: dict[str, Any] = {"hot": {"min_age": "0ms", "actions": {}}}
        if self.retention_days:
            age = f"{self.delete_after_days}d"
            phases["delete"] = {"min_age": age, "actions": {"delete": {}}}
        meta = {"managed_by": "logferry", "retention_days": self.retention_days}
        return {"policy": {"_meta": meta, "phases": phases}}


def policy_name(prefix: str, retention_days: int) -> str:
    """The policy for indices under ``prefix`` kept ``retention_days`` after their period."""
    return f"logferry-{prefix}-{retention_days}d"


def _delete_after(settings: IndexSettings, tenant: str) -> int:
    days = settings.retention_of(tenant)
    return days + math.ceil(PERIOD_DAYS[settings.period_of(tenant)]) if days else 0


def _tenant_patterns(prefix: str, tenant: str) -> tuple[str, str]:
    return (f"{prefix}-{tenant}-2*", f"{prefix}-{tenant}.*")


def policies(prefix: str, settings: IndexSettings) -> list[Policy]:
    """The ISM/ILM policies of ``settings``: the default retention's for every index under
    ``prefix``, then one per tenant with a retention of its own. Kept-for-ever retentions
    (0) get no policy, unless a tenant is an exception kept for ever under a default that
    deletes: its policy then never deletes."""
    found = []
    if settings.retention_days:
        found.append(
            Policy(
                policy_name(prefix, settings.retention_days),
                settings.retention_days,
                _delete_after(settings, ""),
                (f"{prefix}-*",),
                _BASE_PRIORITY,
            )
        )
    for tenant in sorted(settings.tenants):
        own = settings.tenants[tenant]
        if own.retention_days is None and own.period is None:
            continue
        days = settings.retention_of(tenant)
        if days == 0 and not settings.retention_days:
            continue
        found.append(
            Policy(
                f"{policy_name(prefix, days)}-{tenant}",
                days,
                _delete_after(settings, tenant),
                _tenant_patterns(prefix, tenant),
                _BASE_PRIORITY + len(tenant),
                tenant,
            )
        )
    return found


def ilm_templates(prefix: str, settings: IndexSettings) -> dict[str, dict[str, Any]]:
    """The index templates that attach ILM policies: Elasticsearch takes the policy from an
    index setting, and only one template applies to an index, so a tenant with its own
    policy needs its own copy of logferry's template (higher priority, its own patterns)."""
    templates: dict[str, dict[str, Any]] = {}
    for policy in policies(prefix, settings):
        body = template_body(prefix, settings)
        body["template"]["settings"]["index"]["lifecycle"] = {"name": policy.name}
        if policy.tenant is None:
            templates[template_name(prefix)] = sealed(body)
            continue
        body["index_patterns"] = list(policy.patterns)
        body["priority"] = settings.template_priority + policy.priority
        templates[f"{template_name(prefix)}-{policy.tenant}"] = sealed(body)
    return templates


def templates_for(prefix: str, settings: IndexSettings) -> dict[str, dict[str, Any]]:
    """Every index template logferry installs for ``prefix`` (name: body): its one template,
    or with ``lifecycle: ilm`` the ones that attach the ILM policies."""
    templates = {template_name(prefix): template_body(prefix, settings)}
    if settings.lifecycle == "ilm":
        templates.update(ilm_templates(prefix, settings))
    return templates

"""``logferry store setup|retention|status``: the store side, by hand.

::

    logferry store setup     [--lifecycle janitor|ism|ilm|none] [--print]
    logferry store retention [--dry-run] [--json]
    logferry store status    [--json]

``setup`` installs logferry's index templates (what the aggregator does at start unless
``output.manage_templates`` is off) and, with ``ism`` or ``ilm``, the store's own retention
policies; ``--print`` shows the requests without sending them. ``retention`` deletes the
indices past their tenant's retention, exactly as the janitor would (``--dry-run`` lists
them). ``status`` shows each tenant's indices and shards, the steady-state estimate against
the budget, and how full the cluster's shard limit is.

The index prefix, the ``indices`` section and the store come from ``--config aggregator.yaml``;
the store flags (``--url`` ... as ``logferry verify`` takes them) override its ``output``.
Exit status: 0 done, 1 the store refused or could not be reached (or ``status`` found the
budget exceeded), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from logferry.aggregator.config import RoutingSettings
from logferry.aggregator.outputs import OutputSettings
from logferry.aggregator.outputs.bulk_client import BulkOutputSettings
from logferry.common.commands import Subcommands, run_standalone
from logferry.common.config import load_config
from logferry.common.errors import ConfigError, OutputError
from logferry.common.naming import IndexNamer
from logferry.common.store_access import (
    StoreAccess,
    add_store_arguments,
    store_access_from_args,
)
from logferry.store.client import StoreClient, open_store
from logferry.store.lifecycle import policies, templates_for
from logferry.store.retention import delete_expired, describe, expired_indices, list_indices
from logferry.store.settings import IndexSettings, Lifecycle
from logferry.store.shards import budget_check, tenant_shards
from logferry.store.templates import ensure_templates

__all__ = ["register", "store_main"]

_DEFAULT_MAX_SHARDS_PER_NODE = 1000


class _StoreSections(BaseModel):
    """The parts of aggregator.yaml this command needs (the daemon validates the rest)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    routing: RoutingSettings = RoutingSettings()
    indices: IndexSettings = IndexSettings()
    output: OutputSettings | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    prefix: str
    indices: IndexSettings
    access: StoreAccess | None


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``store setup|retention|status`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description="Index templates, retention and the shard budget of logferry's indices.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("setup", "install the index templates (and ISM/ILM policies with --lifecycle)"),
        ("retention", "delete the indices past their tenant's retention (--dry-run: list them)"),
        ("status", "indices and shards per tenant, the estimate, the cluster's shard limit"),
    ):
        command = sub.add_parser(action, help=text, description=text)
        command.add_argument("--config", "-c", type=Path, help="aggregator.yaml to read")
        command.add_argument("--prefix", help="index prefix (default: the config's, or 'logs')")
        if action == "setup":
            command.add_argument(
                "--lifecycle",
                choices=["janitor", "ism", "ilm", "none"],
                help="who deletes old indices (default: the config's indices.lifecycle)",
            )
            command.add_argument(
                "--print", action="store_true", help="print the requests, send nothing"
            )
        if action == "retention":
            command.add_argument("--dry-run", action="store_true", help="list, delete nothing")
        if action in ("retention", "status"):
            command.add_argument("--json", action="store_true", help="print JSON")
        add_store_arguments(command, required=False)
    parser.set_defaults(handler=run)
    return parser


def store_main(argv: Sequence[str]) -> int:
    """``logferry store`` with ``argv``; the exit status."""
    return run_standalone(register, "store", argv)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``store`` command; the exit status."""
    try:
        target = _target(args)
    except ConfigError as exc:
        print(f"logferry store: {exc}", file=sys.stderr)
        return 2
    if args.action == "setup" and args.print:
        _print_setup(target, args.lifecycle)
        return 0
    if target.access is None:
        print(
            "logferry store: no store: give --url, or --config whose output is a store",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_run_async(args, target, target.access))
    except OutputError as exc:
        print(f"logferry store {args.action}: {exc}", file=sys.stderr)
        return 1


def _target(args: argparse.Namespace) -> _Target:
    sections = load_config(args.config, _StoreSections) if args.config else _StoreSections()
    prefix = args.prefix or sections.routing.index_prefix
    if args.url:
        access: StoreAccess | None = store_access_from_args(args)
    elif isinstance(sections.output, BulkOutputSettings):
        access = sections.output
    else:
        access = None
    return _Target(prefix, sections.indices, access)


async def _run_async(args: argparse.Namespace, target: _Target, access: StoreAccess) -> int:
    async with open_store(access) as client:
        if args.action == "setup":
            return await _setup(client, target, args.lifecycle)
        if args.action == "retention":
            return await _retention(client, target, dry_run=args.dry_run, as_json=args.json)
        return await _status(client, target, as_json=args.json)


def _with_lifecycle(indices: IndexSettings, lifecycle: Lifecycle | None) -> IndexSettings:
    return indices if lifecycle is None else indices.model_copy(update={"lifecycle": lifecycle})


def _setup_requests(target: _Target, lifecycle: Lifecycle | None) -> list[tuple[str, str, Any]]:
    """(method, path, body) of everything ``setup`` installs."""
    indices = _with_lifecycle(target.indices, lifecycle)
    requests: list[tuple[str, str, Any]] = [
        ("PUT", f"/_index_template/{name}", body)
        for name, body in templates_for(target.prefix, indices).items()
    ]
    for policy in policies(target.prefix, indices) if indices.lifecycle in ("ism", "ilm") else []:
        if indices.lifecycle == "ism":
            requests.append(("PUT", f"/_plugins/_ism/policies/{policy.name}", policy.ism()))
        else:
            requests.append(("PUT", f"/_ilm/policy/{policy.name}", policy.ilm()))
    return requests


def _print_setup(target: _Target, lifecycle: Lifecycle | None) -> None:
    for method, path, body in _setup_requests(target, lifecycle):
        print(f"{method} {path}")
        print(json.dumps(body, indent=2, sort_keys=True))


async def _setup(client: StoreClient, target: _Target, lifecycle: Lifecycle | None) -> int:
    indices = _with_lifecycle(target.indices, lifecycle)
    outcomes = await ensure_templates(client, templates_for(target.prefix, indices))
    for name, outcome in outcomes.items():
        print(f"template {name}: {outcome}")
    for method, path, body in _setup_requests(target, lifecycle):
        if path.startswith("/_index_template/"):
            continue
        if path.startswith("/_plugins/_ism/"):
            await _put_ism_policy(client, path, body)
        else:
            await client.request(method, path, body)
        print(f"policy {path.rsplit('/', 1)[1]}: installed")
    if indices.lifecycle == "janitor":
        print("retention: the aggregators' janitor deletes indices past retention")
    elif indices.lifecycle == "none":
        print("retention: nothing deletes indices (indices.lifecycle: none)")
    return 0


async def _put_ism_policy(client: StoreClient, path: str, body: Any) -> None:
    """ISM refuses to overwrite a policy unless told which version it replaces."""
    status, found = await client.call("GET", path, accept=(404,))
    if status == 404:
        await client.request("PUT", path, body)
        return
    seq, term = found["_seq_no"], found["_primary_term"]
    await client.request("PUT", f"{path}?if_seq_no={seq}&if_primary_term={term}", body)


def _namer(target: _Target) -> IndexNamer:
    return IndexNamer(target.prefix, target.indices.period, target.indices.periods())


async def _retention(client: StoreClient, target: _Target, *, dry_run: bool, as_json: bool) -> int:
    names = await list_indices(client, target.prefix)
    expired = expired_indices(names, _namer(target), target.indices, time.time())
    deleted = [] if dry_run else await delete_expired(client, expired)
    rows = describe(expired)
    if as_json:
        print(json.dumps({"dry_run": dry_run, "expired": rows, "deleted": deleted}, indent=2))
        return 0
    verb = "would delete" if dry_run else "deleted"
    for row in rows:
        print(
            f"{verb} {row['index']} (tenant {row['tenant']}, kept {row['retention_days']} days, "
            f"past by {row['past_retention_days']} days)"
        )
    print(f"{len(rows)} of {len(names)} indices under {target.prefix}-* are past retention")
    return 0


async def _status(client: StoreClient, target: _Target, *, as_json: bool) -> int:
    report = await _status_report(client, target)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 1 if report["budget"]["over"] else 0


async def _status_report(client: StoreClient, target: _Target) -> dict[str, Any]:
    namer = _namer(target)
    path = (
        f"/_cat/indices/{quote(target.prefix)}-*?format=json&expand_wildcards=all"
        "&h=index,pri,rep,docs.count,status"
    )
    rows = await client.request("GET", path, accept=(404,)) or []
    tenants: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = namer.parse(str(row.get("index", "")))
        if name is None:
            continue
        shards = int(row.get("pri") or 0) * (1 + int(row.get("rep") or 0))
        entry = tenants.setdefault(
            name.tenant,
            {
                "indices": 0,
                "shards": 0,
                "docs": 0,
                "period": target.indices.period_of(name.tenant),
                "retention_days": target.indices.retention_of(name.tenant),
                "estimate": tenant_shards(target.indices, name.tenant),
            },
        )
        entry["indices"] += 1
        entry["shards"] += shards
        entry["docs"] += int(row.get("docs.count") or 0)
    check = budget_check(target.indices, tenants)
    return {
        "prefix": target.prefix,
        "tenants": dict(sorted(tenants.items())),
        "shards": sum(entry["shards"] for entry in tenants.values()),
        "budget": {
            "estimate": check.shards,
            "max_shards": check.budget,
            "tenants": check.tenants,
            "over": check.over,
            "message": check.message(),
        },
        "cluster": await _cluster_shards(client),
    }


async def _cluster_shards(client: StoreClient) -> dict[str, Any]:
    """Shards in the cluster against its limit (``cluster.max_shards_per_node`` times the
    data nodes; new indices are refused past it)."""
    health = await client.request("GET", "/_cluster/health")
    settings = await client.request(
        "GET", "/_cluster/settings?include_defaults=true&flat_settings=true"
    )
    per_node = _DEFAULT_MAX_SHARDS_PER_NODE
    for scope in ("defaults", "persistent", "transient"):  # later ones win, as in the store
        value = (settings.get(scope) or {}).get("cluster.max_shards_per_node")
        if value is not None:
            per_node = int(value)
    data_nodes = int(health.get("number_of_data_nodes") or 0)
    used = int(health.get("active_shards") or 0) + int(health.get("unassigned_shards") or 0)
    return {
        "status": health.get("status"),
        "data_nodes": data_nodes,
        "max_shards_per_node": per_node,
        "limit": per_node * data_nodes,
        "used": used,
    }


def _print_status(report: dict[str, Any]) -> None:
    print(f"indices {report['prefix']}-*: {report['shards']} shards")
    print(f"{'TENANT':<32} {'PERIOD':<6} {'KEEP':>5} {'INDICES':>7} {'SHARDS':>6} {'STEADY':>6}")
    for tenant, entry in report["tenants"].items():
        keep = entry["retention_days"] or "ever"
        steady = entry["estimate"] if entry["estimate"] is not None else "-"
        print(
            f"{tenant:<32} {entry['period']:<6} {keep:>5} {entry['indices']:>7} "
            f"{entry['shards']:>6} {steady:>6}"
        )
    print(f"estimate: {report['budget']['message']}")
    cluster = report["cluster"]
    print(
        f"cluster ({cluster['status']}): {cluster['used']} of {cluster['limit']} shards "
        f"({cluster['max_shards_per_node']} per node x {cluster['data_nodes']} data nodes)"
    )


if __name__ == "__main__":
    sys.exit(store_main(sys.argv[1:]))

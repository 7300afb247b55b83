"""logferry's alert rules, run by Prometheus's own promtool: every group of the PrometheusRule
the chart renders passes `promtool check rules`, and `promtool test rules` feeds the audit
alerts series under which each must fire (for the right tenant, only after its `for`) and
series under which none may (the figures at 0, the last window proven advancing).

promtool is the pinned build of scripts/ensure-promtool (Prometheus v3, cached outside the
repository), found through ``LOGFERRY_PROMTOOL`` (set by `make test` and `make unit`) or by
running that script, never on PATH; without it these tests fail, they are not skipped."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import helm
from devtools.pinned_tools import pinned_binary

ROOT = helm.ROOT
ENSURE_PROMTOOL = ROOT / "scripts" / "ensure-promtool"
PROMTOOL_VERSION = "v0.316.0"  # the Go module version of Prometheus v3 the script builds
KUSTOMIZE_VALUES = ROOT / "deploy" / "helm" / "kustomize-values.yaml"
GENERATED_RULE = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"
NAMESPACE = "logferry"

# The chart's audit defaults (values.yaml): windows of 5 minutes proven 2 minutes after their
# end, a pass a minute; LogferryAuditBehind at window + grace + 8 x interval.
WINDOW_S, GRACE_S, INTERVAL_S = 300, 120, 60
BEHIND_S = WINDOW_S + GRACE_S + 8 * INTERVAL_S
MINUTES = 90  # every input series runs this long, one sample a minute


class PromtoolError(RuntimeError):
    """promtool could not be found or built."""


def promtool_binary() -> str:
    """The pinned promtool: ``LOGFERRY_PROMTOOL``, else what scripts/ensure-promtool prints."""
    return pinned_binary("LOGFERRY_PROMTOOL", ENSURE_PROMTOOL, PromtoolError)


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_binary(), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@functools.cache
def _rendered_groups() -> tuple[dict[str, Any], ...]:
    """spec.groups of the PrometheusRule the chart renders (as `make manifests` does)."""
    output = helm.template(namespace=NAMESPACE, values=[KUSTOMIZE_VALUES])
    (rule,) = [
        d
        for part in helm.split(output)
        for d in yaml.safe_load_all(part.text)
        if d is not None and d["kind"] == "PrometheusRule"
    ]
    return tuple(rule["spec"]["groups"])


def _groups() -> list[dict[str, Any]]:
    return [dict(g) for g in _rendered_groups()]


def _rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"]}


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rules file."""
    path = tmp_path / "logferry-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _groups()}, sort_keys=False))
    return path


# -- the binary ----------------------------------------------------------------------------


def test_promtool_is_the_pinned_build_from_the_cache_outside_the_repository() -> None:
    binary = Path(promtool_binary())
    assert binary.name == "promtool"
    assert binary.parent.name == f"promtool-{PROMTOOL_VERSION}"
    assert binary.parent.parent.name == "logferry"
    assert ROOT not in binary.resolve().parents
    assert _promtool("--version").returncode == 0
    script = ENSURE_PROMTOOL.read_text()
    assert f"version={PROMTOOL_VERSION}" in script
    assert "github.com/prometheus/prometheus/cmd/promtool@$version" in script


def test_make_passes_the_pinned_promtool_to_the_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert 'LOGFERRY_PROMTOOL="$$(scripts/ensure-promtool)"' in makefile
    for target in ("test", "unit"):
        prerequisites = re.search(rf"^{target}:(.*)$", makefile, re.M)
        assert prerequisites is not None, target
        assert "promtool" in prerequisites.group(1).split(), target


def test_a_missing_promtool_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_PROMTOOL", "/nonexistent/promtool")
    with pytest.raises(PromtoolError, match="not an executable"):
        promtool_binary()


# -- promtool check rules -------------------------------------------------------------------


def test_the_committed_rule_is_the_chart_rendering() -> None:
    # What `kubectl apply -k deploy/monitoring` installs is what is tested here.
    committed = yaml.safe_load(GENERATED_RULE.read_text())
    assert committed["spec"]["groups"] == _groups()


def test_promtool_checks_every_group(rules_file: Path) -> None:
    groups = _groups()
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    assert {
        "logferry.availability",
        "logferry.backlog",
        "logferry.delivery",
        "logferry.audit",
    } <= set(names)
    result = _promtool("check", "rules", "--lint=all", "--lint-fatal", rules_file)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in result.stdout + result.stderr


def test_promtool_check_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    # The check above means something: promtool refuses a bad expression and a bad template.
    for broken in (
        {"alert": "LogferryBroken", "expr": "max by (tenant (logferry_audit_missing_records)"},
        {
            "alert": "LogferryBroken",
            "expr": "vector(1)",
            "annotations": {"summary": "{{ $labels.tenant "},
        },
    ):
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [broken]}]}))
        assert _promtool("check", "rules", path).returncode != 0, broken


# -- promtool test rules: the audit alerts --------------------------------------------------


def _series(labels: dict[str, str], values: list[float | None]) -> dict[str, str]:
    """An input series: one value a minute from time 0; None leaves a minute without one."""
    name = labels["__name__"]
    selector = ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
    text = " ".join("_" if v is None else f"{v:g}" for v in values)
    return {"series": f"{name}{{{selector}}}", "values": text}


# What the ServiceMonitor puts on the auditor's series (component from its Service's label).
TARGET = {
    "component": "audit",
    "namespace": NAMESPACE,
    "pod": "logferry-audit-7d9f8-abcde",
    "job": "logferry-audit-metrics",
    "instance": "10.1.0.40:2022",
}


def _per_tenant(metric: str, tenant: str, values: list[float | None]) -> dict[str, str]:
    return _series({"__name__": metric, **TARGET, "tenant": tenant}, values)


def _proven_until(values: list[float | None]) -> dict[str, str]:
    return _series({"__name__": "logferry_audit_proven_until_timestamp_seconds", **TARGET}, values)


def _advancing(minutes: int = MINUTES) -> list[float | None]:
    """The end of the last window a healthy auditor has proven, minute by minute: the last
    window that ended at least `grace` ago (lagging 2 to 7 minutes behind)."""
    return [float((t * 60 - GRACE_S) // WINDOW_S * WINDOW_S) for t in range(minutes + 1)]


def _constant(value: float, minutes: int = MINUTES) -> list[float | None]:
    return [value] * (minutes + 1)


def _step(before: float, after: float, start: int, end: int) -> list[float | None]:
    """``after`` from minute ``start`` to before minute ``end``, ``before`` otherwise."""
    return [after if start <= t < end else before for t in range(MINUTES + 1)]


def _healthy_tenants() -> list[dict[str, str]]:
    return [
        _per_tenant(metric, tenant, _constant(0))
        for metric in ("logferry_audit_missing_records", "logferry_audit_duplicate_records")
        for tenant in ("team-a", "team-b")
    ]


def _annotations(rule: dict[str, Any], summary: str) -> dict[str, str]:
    """A rule's annotations as its alert carries them, with the summary as rendered."""
    annotations = dict(rule["annotations"])
    for key, text in annotations.items():
        if key != "summary":
            assert "{{" not in text, (rule["alert"], key)
    annotations["summary"] = summary
    return annotations


def _quiet(eval_time: str, *alerts: str) -> list[dict[str, Any]]:
    return [{"eval_time": eval_time, "alertname": a, "exp_alerts": []} for a in alerts]


AUDIT_ALERTS = (
    "LogferryAuditMissingRecords",
    "LogferryAuditDuplicateRecords",
    "LogferryAuditBehind",
)


def _tests(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    missing, duplicates, behind = (rules[a] for a in AUDIT_ALERTS)
    # The rules' `for`s and LogferryAuditBehind's threshold, as the times below assume them.
    assert missing["for"] == duplicates["for"] == behind["for"] == "10m"
    assert re.search(rf"\) > {BEHIND_S}\b", behind["expr"]), behind["expr"]
    behind_alert = {
        "exp_labels": {"severity": "warning"},
        "exp_annotations": _annotations(behind, behind["annotations"]["summary"]),
    }
    assert "{{" not in behind["annotations"]["summary"]
    tests: list[dict[str, Any]] = []

    # 1. All well: nothing missing or doubled, the proof advancing. No audit alert, ever.
    tests.append(
        {
            "name": "healthy",
            "interval": "1m",
            "input_series": [*_healthy_tenants(), _proven_until(_advancing())],
            "alert_rule_test": [
                check
                for minute in (1, 5, 14, 16, 30, 60, 89)
                for check in _quiet(f"{minute}m", *AUDIT_ALERTS)
            ],
        }
    )

    # 2. team-b misses 3 records from minute 10 to 50: critical once the 10 minutes pass, for
    # team-b alone, and resolved when they are found.
    tests.append(
        {
            "name": "missing records",
            "interval": "1m",
            "input_series": [
                _per_tenant("logferry_audit_missing_records", "team-a", _constant(0)),
                _per_tenant("logferry_audit_missing_records", "team-b", _step(0, 3, 10, 50)),
                _per_tenant("logferry_audit_duplicate_records", "team-b", _constant(0)),
                _proven_until(_advancing()),
            ],
            "alert_rule_test": [
                *_quiet("9m", *AUDIT_ALERTS),
                *_quiet("15m", *AUDIT_ALERTS),  # pending, not firing
                {
                    "eval_time": "25m",
                    "alertname": "LogferryAuditMissingRecords",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "namespace": NAMESPACE,
                                "tenant": "team-b",
                            },
                            "exp_annotations": _annotations(
                                missing,
                                "Tenant team-b: 3 records checkpointed by its forwarders are "
                                "missing from the store",
                            ),
                        }
                    ],
                },
                *_quiet("25m", "LogferryAuditDuplicateRecords", "LogferryAuditBehind"),
                *_quiet("55m", *AUDIT_ALERTS),
            ],
        }
    )

    # 3. team-c has 2 records stored twice from minute 0: a warning after 10 minutes.
    tests.append(
        {
            "name": "duplicate records",
            "interval": "1m",
            "input_series": [
                *_healthy_tenants(),
                _per_tenant("logferry_audit_missing_records", "team-c", _constant(0)),
                _per_tenant("logferry_audit_duplicate_records", "team-c", _constant(2)),
                _proven_until(_advancing()),
            ],
            "alert_rule_test": [
                *_quiet("5m", *AUDIT_ALERTS),
                {
                    "eval_time": "15m",
                    "alertname": "LogferryAuditDuplicateRecords",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "namespace": NAMESPACE,
                                "tenant": "team-c",
                            },
                            "exp_annotations": _annotations(
                                duplicates, "Tenant team-c: 2 records are stored more than once"
                            ),
                        }
                    ],
                },
                *_quiet("15m", "LogferryAuditMissingRecords", "LogferryAuditBehind"),
            ],
        }
    )

    # 4. The auditor keeps running but proves nothing new after minute 20 (its passes fail:
    # the store cannot be read, its last figures stay). The last window proven ended at
    # 15:00; 15 minutes later (30:00) it is too old, 10 minutes after that the alert fires.
    stuck = _advancing()
    stuck[21:] = [stuck[20]] * (MINUTES - 20)
    assert stuck[20] == 15 * 60
    tests.append(
        {
            "name": "proof stops advancing",
            "interval": "1m",
            "input_series": [*_healthy_tenants(), _proven_until(stuck)],
            "alert_rule_test": [
                *_quiet("20m", *AUDIT_ALERTS),
                *_quiet("30m", *AUDIT_ALERTS),
                *_quiet("38m", *AUDIT_ALERTS),  # pending since 31m
                {
                    "eval_time": "45m",
                    "alertname": "LogferryAuditBehind",
                    "exp_alerts": [behind_alert],
                },
                *_quiet("45m", "LogferryAuditMissingRecords", "LogferryAuditDuplicateRecords"),
            ],
        }
    )

    # 5. A fresh auditor that never completes a pass exports 0 (the epoch): too old at once.
    tests.append(
        {
            "name": "no pass ever completes",
            "interval": "1m",
            # promtool's clock starts at the epoch, so 0 is "too old" once BEHIND_S has passed.
            "input_series": [_proven_until(_constant(0))],
            "alert_rule_test": [
                *_quiet("20m", "LogferryAuditBehind"),
                {
                    "eval_time": "30m",
                    "alertname": "LogferryAuditBehind",
                    "exp_alerts": [behind_alert],
                },
            ],
        }
    )

    # 6. The auditor stops exporting at minute 20 (gone, or no longer scraped): absent once
    # the last sample is 5 minutes old, firing 10 minutes after.
    gone = _advancing()
    gone[21:] = [None] * (MINUTES - 20)
    tests.append(
        {
            "name": "auditor gone",
            "interval": "1m",
            "input_series": [_proven_until(gone)],
            "alert_rule_test": [
                *_quiet("22m", "LogferryAuditBehind"),
                *_quiet("32m", "LogferryAuditBehind"),  # pending since 26m
                {
                    "eval_time": "40m",
                    "alertname": "LogferryAuditBehind",
                    "exp_alerts": [
                        {
                            **behind_alert,
                            "exp_labels": {"severity": "warning", "component": "audit"},
                        }
                    ],
                },
            ],
        }
    )
    return tests


def test_promtool_fires_the_audit_alerts_when_and_only_when_they_should(
    rules_file: Path, tmp_path: Path
) -> None:
    tests = _tests(_rules(_groups()))
    test_file = tmp_path / "audit-alerts.test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules_file.name],
                "evaluation_interval": "1m",
                "tests": tests,
            },
            sort_keys=False,
        )
    )
    result = _promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_test_rules_would_catch_a_wrong_expectation(
    rules_file: Path, tmp_path: Path
) -> None:
    # The test above proves something: the same series with the wrong tenant expected fail.
    tests = _tests(_rules(_groups()))
    (missing,) = [t for t in tests if t["name"] == "missing records"]
    (firing,) = [c for c in missing["alert_rule_test"] if c["exp_alerts"]]
    firing["exp_alerts"][0]["exp_labels"]["tenant"] = "team-a"
    test_file = tmp_path / "wrong.test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [missing]}
        )
    )
    result = _promtool("test", "rules", test_file)
    assert result.returncode != 0
    assert "LogferryAuditMissingRecords" in result.stdout + result.stderr

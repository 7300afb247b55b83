"""Loading pipeline documents (ConfigMap layout, broken files) and the offline command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from logferry.pipelines.cli import pipelines_main
from logferry.pipelines.loading import LoadFailure, load_directory
from logferry.pipelines.validate import validate_documents

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
apiVersion: logferry.io/v1alpha1
kind: LogPipeline
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  order: {order}
  filters:
    - {{type: grep, regex: "ERROR"}}
"""


def good(name: str, namespace: str = "team-a", order: int = 10) -> str:
    return GOOD.format(name=name, namespace=namespace, order=order)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logferry.pipelines.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_load_directory_follows_a_configmap_mount(tmp_path: Path) -> None:
    version = tmp_path / "..2026_11_25_10_15_42.123456789"
    version.mkdir()
    (version / "a.yaml").write_text(good("a"))
    (version / "b.yml").write_text(good("b") + "---\n" + good("c"))
    (tmp_path / "..data").symlink_to(version.name)
    for name in ("a.yaml", "b.yml"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    (tmp_path / ".a.yaml.swp").write_text("junk")
    (tmp_path / "README.txt").write_text("not a pipeline")
    docs = load_directory(tmp_path)
    assert [src for src, _ in docs] == ["a.yaml:0", "b.yml:0", "b.yml:1"]
    assert [d["metadata"]["name"] for _, d in docs] == ["a", "b", "c"]


def test_a_file_that_is_not_yaml_gives_one_refused_verdict(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(good("a"))
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n  - {\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.json").write_text("{nope")
    docs = load_directory(tmp_path)
    verdicts = validate_documents(docs)
    by_source = {v.source: v for v in verdicts}
    assert by_source["a.yaml:0"].ok
    for source in ("broken.yaml:0", "list.yaml:0", "bad.json:0"):
        verdict = by_source[source]
        assert not verdict.ok
        (issue,) = verdict.issues
        assert issue.layer == "schema"
    assert "invalid YAML at line" in by_source["broken.yaml:0"].issues[0].reason
    assert "must be a mapping" in by_source["list.yaml:0"].issues[0].reason
    assert "invalid JSON" in by_source["bad.json:0"].issues[0].reason


def test_aliases_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "alias.yaml").write_text("a: &x [1, 2]\nb: *x\n")
    (tmp_path / "dup.yaml").write_text("kind: LogPipeline\nkind: Other\n")
    docs = dict(load_directory(tmp_path))
    assert isinstance(docs["alias.yaml:0"], LoadFailure)
    assert "aliases" in docs["alias.yaml:0"].reason
    assert isinstance(docs["dup.yaml:0"], LoadFailure)
    assert "duplicate key 'kind'" in docs["dup.yaml:0"].reason


def test_json_documents_are_read(tmp_path: Path) -> None:
    document = yaml.safe_load(good("j"))
    (tmp_path / "p.json").write_text(json.dumps(document))
    (verdict,) = validate_documents(load_directory(tmp_path))
    assert verdict.ok
    assert verdict.pipeline == "team-a/j"


def test_validate_accepts_the_examples() -> None:
    result = cli("validate", "examples/pipelines")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("ACCEPTED ") for line in lines)
    assert any(line.startswith("ACCEPTED team-b/ledger-audit ") for line in lines)


def test_validate_refuses_the_invalid_examples() -> None:
    result = cli("validate", "examples/pipelines-invalid")
    assert result.returncode == 1
    out = result.stdout
    assert "REJECTED team-a/steal-team-b" in out
    assert "team-a-bad.yaml:0: spec.destination.indexSuffix: " in out
    assert "REJECTED team-a/slow-grep" in out
    assert "catastrophic" in out
    assert "(schema)" in out
    assert "(policy)" in out


def test_validate_refuses_another_namespace_and_reports_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(good("a", namespace="team-b"))
    result = cli("validate", tmp_path, "--namespace", "team-a", "--json")
    assert result.returncode == 1
    (verdict,) = json.loads(result.stdout)
    assert verdict["pipeline"] == "team-b/a"
    assert not verdict["ok"]
    assert verdict["issues"][0]["path"] == "metadata.namespace"
    assert verdict["issues"][0]["layer"] == "policy"


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pipelines_main([]) == 2
    assert pipelines_main(["validate"]) == 2
    assert pipelines_main(["validate", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_render_writes_accepted_pipelines_sorted_and_reports_the_refused(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "1.yaml").write_text(good("z", order=1) + "---\n" + good("b", namespace="team-b"))
    (source / "2.yaml").write_text(good("a", order=5) + "---\n" + good("y", order=1))
    (source / "3.yaml").write_text(good("bad").replace('"ERROR"', '"(a+)+$"'))
    out = tmp_path / "rendered.yaml"
    result = cli("render", source, "--out", out)
    assert result.returncode == 1
    assert "REJECTED team-a/bad" in result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs] == [
        ("team-a", "y"),
        ("team-a", "z"),
        ("team-a", "a"),
        ("team-b", "b"),
    ]
    for document in docs:
        assert len(document["metadata"]["annotations"]["logferry.io/spec-hash"]) == 16
        assert document["spec"]["filters"][0] == {
            "type": "grep",
            "field": "log",
            "regex": "ERROR",
            "mode": "include",
        }
    # The rendered stream is itself valid and hashes the same (what the aggregators load).
    again = cli("validate", out)
    assert again.returncode == 0, again.stdout
    rendered_hashes = sorted(line.split()[2] for line in again.stdout.splitlines())
    original = cli("validate", source)
    original_hashes = sorted(
        line.split()[2] for line in original.stdout.splitlines() if line.startswith("ACCEPTED")
    )
    assert rendered_hashes == original_hashes


def test_render_to_stdout_exits_0_when_all_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(good("a"))
    assert pipelines_main(["render", str(tmp_path)]) == 0
    (document,) = yaml.safe_load_all(capsys.readouterr().out)
    assert document["kind"] == "LogPipeline"
    assert not os.listdir(tmp_path).count("rendered.yaml")


def test_selector_labels_are_warned_about_when_the_forwarders_do_not_ship_them(
    tmp_path: Path,
) -> None:
    labelled = good("by-label").replace("  order:", "  selector: {labels: {app: web}}\n  order:")
    (tmp_path / "a.yaml").write_text(labelled)
    (tmp_path / "b.yaml").write_text(good("plain"))
    quiet = cli("validate", tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "WARNING" not in quiet.stderr
    warned = cli("validate", tmp_path, "--labels-not-shipped")
    assert warned.returncode == 0  # a warning, not a refusal
    (line,) = [x for x in warned.stderr.splitlines() if x.startswith("WARNING")]
    assert line.startswith("WARNING team-a/by-label: spec.selector.labels")

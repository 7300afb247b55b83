"""Rendering the Helm chart in deploy/helm/logferry with the pinned helm binary.

The binary is the one `scripts/ensure-helm` builds (a fixed version, cached outside the
repository); `make` passes its path in ``LOGFERRY_HELM``, and without it the script is run
here. Nothing looks for a helm on PATH: the committed manifests are checked by the version
that rendered them.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.pinned_tools import pinned_binary

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "logferry"
ENSURE_HELM = ROOT / "scripts" / "ensure-helm"
KUBE_VERSION = "1.30"
RELEASE = "logferry"
_SOURCE = re.compile(r"^---\n# Source: [^/\n]+/(?P<path>[^\n]+)\n", re.M)


class HelmError(RuntimeError):
    """helm exited with an error; its message is the exception's."""


def helm_binary() -> str:
    """The path of the pinned helm: ``LOGFERRY_HELM``, else what scripts/ensure-helm prints."""
    return pinned_binary("LOGFERRY_HELM", ENSURE_HELM, HelmError)


def run(*args: str) -> str:
    """helm's stdout for ``helm args...``; HelmError with its stderr when it fails."""
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=300
    )
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)}:\n{result.stderr}")
    return result.stdout


def template(
    *,
    namespace: str = RELEASE,
    values: Sequence[Path] = (),
    settings: Mapping[str, str | int | bool] | None = None,
) -> str:
    """``helm template`` of the chart: one release in ``namespace``, for Kubernetes 1.30."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (settings or {}).items():
        # Strings stay strings ("2020" too); numbers and booleans keep their types.
        if isinstance(value, bool):
            args += ["--set", f"{key}={str(value).lower()}"]
        elif isinstance(value, int):
            args += ["--set", f"{key}={value}"]
        else:
            args += ["--set-string", f"{key}={value}"]
    return run(*args)


@dataclass(frozen=True)
class Rendered:
    """One document of helm's output: the template it came from (``templates/...``) and its
    text as rendered, comments included."""

    source: str
    text: str


def split(output: str) -> list[Rendered]:
    """helm template's output, document by document, in helm's order."""
    matches = list(_SOURCE.finditer(output))
    documents = []
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(output)
        text = output[match.end() : end].strip("\n") + "\n"
        documents.append(Rendered(match.group("path"), text))
    return documents

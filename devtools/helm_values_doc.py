"""Regenerate the table of the Helm chart's values in docs/helm.md (make docs).

Each documented value is a key of deploy/helm/logferry/values.yaml preceded by a comment that
starts with ``# --`` (continued by the ``#`` lines under it, up to the key), as helm-docs
reads them: its path, type, default (from the parsed file) and that description. Every value
must be documented, itself or through a documented parent, or this refuses to write the
table. The table sits between ``<!-- helm-values -->`` and ``<!-- /helm-values -->``;
``tests/unit/test_helm_values_doc.py`` checks that the page is current.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "deploy" / "helm" / "logferry" / "values.yaml"
PAGE = ROOT / "docs" / "helm.md"
BLOCK = re.compile(r"(<!-- helm-values -->\n).*?(<!-- /helm-values -->)", re.S)
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
_DOC_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


class UndocumentedValue(ValueError):
    """A value of values.yaml that no ``# --`` comment describes."""


@dataclass(frozen=True)
class Value:
    path: str
    kind: str
    default: Any
    description: str


def _documented(text: str) -> Iterator[tuple[str, str]]:
    """(dotted path, description) of every key with a ``# --`` comment."""
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        if pending is None and (start := _DOC_START.match(line)):
            pending = [start.group("text")]
            continue
        if pending is not None and (more := _DOC_MORE.match(line)):
            pending.append((more.group("text") or "").strip())
            continue
        key = _KEY.match(line)
        if key is None:
            pending = None if not line.strip() else pending
            continue
        indent = len(key.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group("key")))
        if pending is not None:
            yield ".".join(k for _, k in stack), " ".join(p for p in pending if p).strip()
        pending = None


def _at(values: Any, path: str) -> Any:
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaves(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def _kind(value: Any) -> str:
    for python, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, python):
            return name
    return "list" if isinstance(value, list) else "object"


def values(text: str) -> list[Value]:
    """Every documented value of a values.yaml text, in the file's order."""
    parsed = yaml.safe_load(text)
    found = []
    for path, description in _documented(text):
        try:
            default = _at(parsed, path)
        except KeyError:
            continue  # a key inside a list item's example, not a value of its own
        found.append(Value(path, _kind(default), default, description))
    documented = {v.path for v in found}
    for leaf in _leaves(parsed):
        parts = leaf.split(".")
        if not any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1)):
            raise UndocumentedValue(f"{leaf}: no `# --` comment describes it in {VALUES.name}")
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(text: str) -> str:
    """The Markdown table of a values.yaml text."""
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for value in values(text):
        default = json.dumps(value.default, separators=(", ", ": "))
        rows.append(
            f"| `{value.path}` | {value.kind} | `{_cell(default)}` | {_cell(value.description)} |"
        )
    return "\n".join(rows) + "\n"


def render(page: str, values_text: str) -> str:
    """``page`` with its values table regenerated from ``values_text``."""
    if not BLOCK.search(page):
        raise ValueError("docs/helm.md has no <!-- helm-values --> block")
    generated = table(values_text)
    return BLOCK.sub(lambda m: m.group(1) + generated + m.group(2), page)


def main() -> int:
    PAGE.write_text(render(PAGE.read_text(), VALUES.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

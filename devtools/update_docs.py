"""Regenerate the configuration reference tables in docs/configuration.md (make docs).

Each daemon's table sits between ``<!-- config-reference:<daemon> -->`` and
``<!-- /config-reference:<daemon> -->`` and is what ``logferry config-reference <daemon>``
prints, so the reference cannot drift from the config models. Optional sections that the
command lists as one row (a section that is absent unless configured, such as the
aggregator's ``pipelines``) get their keys listed right after that row, from the same models.
``tests/unit/test_cli.py`` checks that the file is current.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel

from logferry.cli import DAEMONS, config_model, main
from logferry.common.config import iter_reference

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _row(path: str, default: str, doc: str) -> str:
    """One table row, formatted as ``logferry config-reference`` formats it."""
    text = " ".join(doc.split()).replace("|", "\\|")
    return f"| `{path}` | {f'`{default}`' if default else ''} | {text} |"


def _optional_section(annotation: object) -> type[BaseModel] | None:
    """The model of an ``X | None`` section, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    models = [
        a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)
    ]
    others = [a for a in typing.get_args(annotation) if a is not type(None) and a not in models]
    return models[0] if len(models) == 1 and not others else None


def _section_rows(daemon: str) -> dict[str, list[str]]:
    """Rows of each optional top-level section's keys, by the section's key."""
    rows: dict[str, list[str]] = {}
    for name, field in config_model(daemon).model_fields.items():
        model = _optional_section(field.annotation)
        if model is not None:
            rows[name] = [_row(*item) for item in iter_reference(model, f"{name}.")]
    return rows


def _with_sections(table: str, sections: dict[str, list[str]]) -> Iterator[str]:
    lines = table.splitlines()
    keys = [line.split("`")[1] if line.startswith("| `") else "" for line in lines]
    for i, line in enumerate(lines):
        yield line
        rows = sections.get(keys[i])
        following = keys[i + 1] if i + 1 < len(keys) else ""
        if rows and not following.startswith(f"{keys[i]}."):  # not listed by the command
            yield from rows


def reference(daemon: str) -> str:
    """The Markdown table of every config key of ``daemon``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["config-reference", daemon])
    return "\n".join(_with_sections(out.getvalue(), _section_rows(daemon))) + "\n"


def _replacement(table: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + table + m.group(2)


def render(text: str) -> str:
    """``text`` with every config-reference block regenerated."""
    for daemon in DAEMONS:
        pattern = re.compile(
            rf"(<!-- config-reference:{daemon} -->\n).*?(<!-- /config-reference:{daemon} -->)",
            re.S,
        )
        text = pattern.sub(_replacement(reference(daemon)), text)
    return text


if __name__ == "__main__":
    DOCS.write_text(render(DOCS.read_text()))
    sys.exit(0)

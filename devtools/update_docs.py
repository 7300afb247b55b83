"""Regenerate the configuration reference tables in docs/configuration.md (make docs).

Each daemon's table sits between ``<!-- config-reference:<daemon> -->`` and
``<!-- /config-reference:<daemon> -->`` and is what ``logferry config-reference <daemon>``
prints, so the reference cannot drift from the config models. ``tests/unit/test_cli.py``
checks that the file is current.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

from logferry.cli import DAEMONS, main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def reference(daemon: str) -> str:
    """The Markdown table of every config key of ``daemon``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["config-reference", daemon])
    return out.getvalue()


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

"""Regenerate the config reference tables in README.md from the code (make docs)."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

from logferry.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def reference(daemon: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["config-reference", daemon])
    return out.getvalue()


def render(text: str) -> str:
    for daemon in ("aggregator", "forwarder"):
        pattern = re.compile(
            rf"(<!-- config-reference:{daemon} -->\n).*?(<!-- /config-reference:{daemon} -->)",
            re.S,
        )
        text = pattern.sub(lambda m, d=daemon: m.group(1) + reference(d) + m.group(2), text)
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    sys.exit(0)

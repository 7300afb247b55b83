"""The Go tools the tests pin (helm, promtool): the binary a ``scripts/ensure-*`` script
builds once into a per-user cache. ``make`` passes its path in an environment variable;
without it the script is run here. Nothing looks on PATH: the version that checks the repo
is the one it was written against."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def pinned_binary(env: str, script: Path, error: type[RuntimeError]) -> str:
    """The path in ``env``, else the last line ``script`` prints; ``error`` when the path is
    not an executable or the script fails."""
    configured = os.environ.get(env)
    if configured:
        if not os.access(configured, os.X_OK):
            raise error(f"{env}={configured} is not an executable")
        return configured
    result = subprocess.run(
        [str(script)], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        raise error(f"scripts/{script.name} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]

"""Byte sizes: the KiB/MiB/GiB constants, and config sizes written as ``64MiB`` or ``1.5GB``
(durations are plain seconds, keys ending in ``_s``)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_byte_size(value: object) -> int:
    """``1048576``, ``"1MiB"``, ``"1.5GB"`` -> bytes. Refuses negatives and unknown units."""
    if isinstance(value, bool):
        raise ValueError("expected a byte size such as 1048576 or '64MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a byte size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = match.group(2).lower()
            if unit in _BYTE_UNITS:
                return int(float(match.group(1)) * _BYTE_UNITS[unit])
    raise ValueError(
        "expected a byte size such as 1048576 or '64MiB' (units: KB MB GB KiB MiB GiB)"
    )


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""An int of bytes that the config may write with a unit."""

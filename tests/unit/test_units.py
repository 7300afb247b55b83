"""Byte sizes in config files."""

from __future__ import annotations

import pytest

from logferry.common.units import parse_byte_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("64MiB", 64 << 20),
        ("1.5GiB", 3 << 29),
        (" 2 GB ", 2_000_000_000),
        ("3TiB", 3 << 40),
    ],
)
def test_byte_sizes_parse(text: object, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("bad", [-1, "-1MiB", "12 parsecs", "MiB", "", True, 1.5, None])
def test_bad_byte_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="byte size"):
        parse_byte_size(bad)

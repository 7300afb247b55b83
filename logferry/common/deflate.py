"""CRC-32 and gzip through ISA-L when it is installed (the ``isal`` wheel), zlib otherwise.

ISA-L's deflate at its fastest level runs 5-7x faster than zlib's level 1 and its CRC-32
about 6x faster; both produce the same formats (a standard gzip member, the same CRC-32), so
peers and files on disk cannot tell which library wrote them. Decompression of untrusted
input stays on zlib (``protocol.entries``), whose limits and error paths are the tested ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["ACCELERATED", "crc32", "gzip_parts"]

_impl: Any
try:
    from isal import isal_zlib as _impl

    ACCELERATED = True
    _FAST_LEVEL = 1
except ImportError:  # pragma: no cover - a platform without the isal wheel
    _impl = zlib
    ACCELERATED = False
    _FAST_LEVEL = 1


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 of ``data`` continuing from ``value`` (the zlib/gzip polynomial)."""
    result: int = _impl.crc32(data, value)
    return result


def gzip_parts(parts: Iterable[bytes | memoryview]) -> bytes:
    """One gzip member over the concatenation of ``parts``, at the fastest level."""
    compressor = _impl.compressobj(_FAST_LEVEL, zlib.DEFLATED, 31)  # 16 + 15: gzip container
    out = [compressor.compress(part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)

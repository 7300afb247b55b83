"""CRC-32 and gzip through ISA-L when it is installed (the ``isal`` wheel), zlib otherwise.

ISA-L's deflate at its fastest level runs 5-7x faster than zlib's level 1 and its CRC-32
about 6x faster; both produce the same formats (a standard gzip member, the same CRC-32), so
peers and files on disk cannot tell which library wrote them. Untrusted input is inflated
by ISA-L too (``protocol.entries.gunzip``), always with a bound on the output of each call,
so the adversarial suite's gzip bombs are refused the same way as with zlib.

Flushed pieces (:func:`deflate_flushed`) are raw deflate streams that end on a byte boundary
without a final block, so pieces compressed apart concatenate into one valid stream: a gzip
member is then a header, the pieces in order, an empty final block and a trailer whose CRC
is combined from the pieces' own (:func:`gzip_from_pieces`), and nothing is compressed twice.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCELERATED",
    "DeflatePiece",
    "crc32",
    "crc32_combine",
    "deflate_flushed",
    "gzip_from_pieces",
    "gzip_parts",
    "gzip_trailer",
    "inflate_flushed",
]

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


# --------------------------------------------------------------- flushed raw deflate pieces

_RAW = -15  # raw deflate: no zlib or gzip wrapper, a 32 KiB window
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""A gzip member header: deflate, no flags, no mtime, unknown OS."""
FINAL_EMPTY_BLOCK = b"\x03\x00"
"""An empty fixed-Huffman block with BFINAL set: ends a stream of flushed pieces."""
_TRAILER = struct.Struct("<II")
_CRC_POLY = 0xEDB88320  # reflected CRC-32 polynomial
_impl_combine = getattr(_impl, "crc32_combine", None)  # ISA-L has one, zlib's module not


@dataclass(frozen=True, slots=True)
class DeflatePiece:
    """Raw deflate data ended by a full flush, with the CRC-32 and length of what it holds."""

    data: bytes | memoryview
    crc: int
    size: int


def deflate_flushed(data: bytes | memoryview) -> bytes:
    """Raw deflate of ``data`` at the fastest level, ended by a full flush and no final
    block: it can be followed by any other such piece (it refers to nothing before it)."""
    compressor = _impl.compressobj(_FAST_LEVEL, zlib.DEFLATED, _RAW)
    return bytes(compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH))


def inflate_flushed(data: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes a flushed piece holds; ``ValueError`` if it holds anything else."""
    inflater = _impl.decompressobj(_RAW)
    try:
        # One byte past the expected size is enough to tell a longer piece, never more.
        out: bytes = inflater.decompress(data, size + 1)
        # A final block after a whole piece ends the stream exactly: trailing bytes would not.
        tail: bytes = inflater.decompress(FINAL_EMPTY_BLOCK)
    except (zlib.error, _impl.error) as exc:
        raise ValueError(f"damaged deflate data: {exc}") from exc
    if len(out) != size or inflater.unconsumed_tail:
        raise ValueError(f"deflate data holds more or less than its {size} bytes")
    if tail or not inflater.eof or inflater.unused_data:
        raise ValueError("deflate data that does not end where its piece should")
    return out


def gzip_trailer(crc: int, size: int) -> bytes:
    """A gzip member's trailer: CRC-32 and ISIZE (the length modulo 2**32), little-endian."""
    return _TRAILER.pack(crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def gzip_from_pieces(pieces: Iterable[DeflatePiece]) -> bytes:
    """One gzip member holding the concatenation of what ``pieces`` hold, without
    compressing anything again."""
    out = [GZIP_HEADER]
    crc = size = 0
    for piece in pieces:
        out.append(piece.data)  # type: ignore[arg-type]  # join takes memoryviews too
        crc = crc32_combine(crc, piece.crc, piece.size)
        size += piece.size
    out.append(FINAL_EMPTY_BLOCK)
    out.append(gzip_trailer(crc, size))
    return b"".join(out)


def crc32_combine(crc1: int, crc2: int, size2: int) -> int:
    """The CRC-32 of A + B from ``crc1`` (of A), ``crc2`` (of B) and ``size2`` (B's length)."""
    if _impl_combine is not None:
        return int(_impl_combine(crc1, crc2, size2))
    return crc32_combine_py(crc1, crc2, size2)


def crc32_combine_py(crc1: int, crc2: int, size2: int) -> int:
    """:func:`crc32_combine` in pure Python (zlib 1.2.12's method; Python's zlib module does
    not expose it): shift ``crc1`` over ``size2`` zero bytes by multiplying it by
    x^(8 * size2) modulo the polynomial, then add ``crc2``. Lengths past 2**32 are fine."""
    if size2 < 0:
        raise ValueError("a length cannot be negative")
    return _multmodp(_x2nmodp(size2, 3), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected: x^0 is the top bit)."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    power = 1 << 30  # x^1
    table = [power]
    for _ in range(31):
        power = _multmodp(power, power)
        table.append(power)
    return tuple(table)


_X2N = _x2n_table()
"""x^(2^k) modulo the polynomial for k in 0..31; indexed modulo 32 as zlib does, since
x^(2^32) = x^(2^0) modulo this polynomial."""


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial."""
    power = 1 << 31  # x^0
    while n:
        if n & 1:
            power = _multmodp(_X2N[k & 31], power)
        n >>= 1
        k += 1
    return power

"""Tenant regexes that cannot hang a worker: size-bounded, probed for catastrophic
backtracking when a pipeline is validated, and run with a timeout.

Tenants write these patterns, so a pattern is untrusted input. Three defences, in order:

1. a hard size bound before compiling (a pattern is never a megabyte of text);
2. at validation, the compiled pattern is run against adversarial probes (long runs of the
   characters the pattern itself uses, each followed by a character that makes the match fail,
   which is what drives exponential backtracking in ``(a+)+$`` or ``(x+x+)+y``); a probe that
   does not finish within :data:`PROBE_TIMEOUT_S`, or all probes together over
   :data:`PROBE_TOTAL_S`, refuses the pattern;
3. at run time every search carries a timeout (the third-party ``regex`` module supports one;
   the standard ``re`` does not), so a pattern that slipped through still cannot take a worker.
"""

from __future__ import annotations

import itertools
import time
from functools import lru_cache
from typing import Any

import regex

MAX_PATTERN_CHARS = 10_000
"""Hard bound, checked before compiling; tenant limits (policy) are usually much lower."""
PROBE_LENGTH = 5_000
"""Length of the adversarial runs: exponential patterns blow up long before that, while
linear and mildly quadratic ones stay in the low milliseconds."""
PROBE_TIMEOUT_S = 0.05
"""A single probe taking longer than this refuses the pattern as catastrophic."""
PROBE_TOTAL_S = 0.5
"""All probes of one pattern together; bounds validation time for a merely slow pattern."""
MATCH_TIMEOUT_S = 0.1
"""Run-time cap of one search on one record (a budget left over may lower it further)."""

Pattern = Any
"""A compiled ``regex`` pattern (the module ships no type information)."""

# Representatives of the common classes: a pattern built from \w, \d, \s or '.' is probed
# with runs of these even when it names no literal character.
_CLASS_REPRESENTATIVES = "a1 x.-"
_FAILING_TAILS = ("!", "\x00", "")
_MAX_PROBE_CHARS = 12


class UnsafePatternError(ValueError):
    """A pattern refused by :func:`check_pattern`; the message is the user-facing reason."""


def _probe_chars(pattern: str) -> list[str]:
    chars: list[str] = []
    escaped = False
    for char in pattern + _CLASS_REPRESENTATIVES:
        if escaped:
            escaped = False
            continue  # \d, \s...: a class, covered by the representatives
        if char == "\\":
            escaped = True
            continue
        if (char.isalnum() or char in " .-_:/") and char not in chars:
            chars.append(char)
    # Literal characters of the pattern first: they are what its loops consume.
    return chars[:_MAX_PROBE_CHARS]


def adversarial_probes(pattern: str) -> list[str]:
    """The strings a pattern is tried on at validation."""
    chars = _probe_chars(pattern)
    probes = [char * PROBE_LENGTH + tail for char in chars for tail in _FAILING_TAILS]
    for first, second in itertools.pairwise(chars):
        # Alternations like (ab|a)+ need two-character runs to backtrack.
        probes.append((first + second) * (PROBE_LENGTH // 2) + "!")
    return probes


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> Pattern:
    return regex.compile(pattern)


def compile_pattern(pattern: str) -> Pattern:
    """Compile (cached) without the safety probes; raises UnsafePatternError if invalid."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePatternError(
            f"regular expression is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}"
        )
    try:
        return _compile(pattern)
    except regex.error as exc:
        raise UnsafePatternError(f"invalid regular expression: {exc}") from exc


@lru_cache(maxsize=1024)
def _probe(pattern: str) -> str | None:
    compiled = _compile(pattern)
    spent = 0.0
    for probe in adversarial_probes(pattern):
        started = time.perf_counter()
        try:
            compiled.search(probe, timeout=PROBE_TIMEOUT_S)
        except TimeoutError:
            return (
                "regular expression is catastrophic (exponential backtracking): "
                f"one probe of {len(probe)} characters took over {PROBE_TIMEOUT_S * 1000:.0f} ms"
            )
        spent += time.perf_counter() - started
        if spent > PROBE_TOTAL_S:
            return (
                "regular expression is too slow on adversarial input: "
                f"its probes took over {PROBE_TOTAL_S * 1000:.0f} ms"
            )
    return None


def check_pattern(pattern: str) -> str:
    """Validate a tenant pattern: size, syntax, and the adversarial probes.

    Returns the pattern; raises UnsafePatternError with the reason. Results are cached, so a
    directory re-validated on every change probes each distinct pattern once.
    """
    compile_pattern(pattern)
    reason = _probe(pattern)
    if reason is not None:
        raise UnsafePatternError(reason)
    return pattern


def search(pattern: Pattern, text: str, timeout_s: float) -> Any:
    """``pattern.search`` with a timeout (raises TimeoutError when it runs out)."""
    return pattern.search(text, timeout=max(timeout_s, 0.0001))

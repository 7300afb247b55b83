"""Record fields as filters see them: dotted paths, reading, the reserved roots.

Filters never change the reserved fields: ``_lf`` carries the proof of delivery,
``kubernetes`` the routing to the tenant's own index, ``@timestamp`` the index's day.
"""

from __future__ import annotations

import re
from typing import Any

Record = dict[str, Any]
RESERVED_ROOTS = frozenset({"_lf", "kubernetes", "@timestamp"})
_PATH = re.compile(r"^[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*(\.[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*)*\Z")


def field_path(value: str, *, writable: bool) -> str:
    """``value`` if it is a dotted field path (not a reserved one, if ``writable``)."""
    if not _PATH.match(value):
        raise ValueError(
            f"{value!r} is not a field path (dotted names, e.g. 'log' or 'http.status')"
        )
    if writable and value.split(".", 1)[0] in RESERVED_ROOTS:
        raise ValueError(
            f"{value!r} is reserved: filters may read but not change {sorted(RESERVED_ROOTS)}"
        )
    return value


def get_field(record: Record, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``record``, or None."""
    node: Any = record
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def field_text(value: Any) -> str | None:
    """A field value as the text filters match on (None for maps, lists and nil)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)

"""Reading pipeline documents from a directory (a local folder or a ConfigMap mount).

A Kubernetes ConfigMap volume looks like this::

    ..2026_11_25_10_15_42.123456789/a.yaml   the real files, one directory per version
    ..data -> ..2026_11_25_10_15_42.123456789   swapped atomically on update
    a.yaml -> ..data/a.yaml

Names starting with ``..`` (and hidden files such as editor swap files) are skipped, and the
top-level symlinks are followed, so each document is read once, from the current version.

Failures to read or parse never raise: they become :class:`LoadFailure` documents, which
validation turns into refused verdicts, so one broken file cannot hide the others. Tenant
documents are untrusted: no ``${VAR}`` expansion (that would read the aggregator's
environment), no YAML anchors/aliases (billion-laughs), duplicate keys refused, sizes bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from logferry.common.units import MiB

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = MiB
MAX_NODES_PER_DOCUMENT = 20_000

Document = tuple[str, Mapping[str, Any]]


@dataclass(frozen=True, eq=False)
class LoadFailure(Mapping[str, Any]):
    """A document that could not be read; an empty mapping that carries the reason."""

    reason: str
    """Why, e.g. ``invalid YAML at line 3: ...``."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def load_directory(path: Path) -> list[Document]:
    """Every document of every ``*.yaml``, ``*.yml`` and ``*.json`` file under ``path``
    (subdirectories included, names starting with '.' skipped), as ``(source, document)``
    with source ``file:N`` (N counts documents in the file from 0). ``path`` may also be a
    single file."""
    path = Path(path)
    if path.is_file():
        return load_file(path, path.name)
    documents: list[Document] = []
    for file, relative in _walk(path, path):
        documents.extend(load_file(file, relative))
    return documents


def _walk(root: Path, directory: Path) -> Iterator[tuple[Path, str]]:
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError:
        return
    for entry in entries:
        # ".." covers the ConfigMap internals; "." covers editor and VCS droppings.
        if entry.name.startswith("."):
            continue
        relative = entry.relative_to(root).as_posix()
        if entry.is_dir():
            # A symlinked directory could loop; a ConfigMap's only one is ..data.
            if not entry.is_symlink():
                yield from _walk(root, entry)
        elif entry.suffix in SUFFIXES and entry.is_file():
            yield entry, relative


def load_file(file: Path, label: str) -> list[Document]:
    """The documents of one file; a read or parse failure gives a LoadFailure document."""
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return [(f"{label}:0", LoadFailure(f"cannot read: {exc.strerror or exc}"))]
    if len(data) > MAX_FILE_BYTES:
        return [(f"{label}:0", LoadFailure(f"file is over {MAX_FILE_BYTES} bytes"))]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [(f"{label}:0", LoadFailure(f"not UTF-8 text: {exc}"))]
    if file.suffix == ".json":
        return _json_documents(text, label)
    return _yaml_documents(text, label)


def _json_documents(text: str, label: str) -> list[Document]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [(f"{label}:0", LoadFailure(f"invalid JSON at line {exc.lineno}: {exc.msg}"))]
    items = data if isinstance(data, list) else [data]
    return [(f"{label}:{n}", _as_document(item)) for n, item in enumerate(items)]


def _yaml_documents(text: str, label: str) -> list[Document]:
    documents: list[Document] = []
    loader = yaml.SafeLoader(text)
    number = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            source = f"{label}:{number}"
            number += 1
            if node is None:
                continue
            problem = _unsafe_node(node)
            if problem is not None:
                documents.append((source, LoadFailure(problem)))
                continue
            data = loader.construct_document(node)
            if data is None:
                continue  # an empty document (a trailing ---)
            documents.append((source, _as_document(data)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = f"invalid YAML{where}: {exc.problem or exc}"
        documents.append((f"{label}:{number}", LoadFailure(reason)))
    except yaml.YAMLError as exc:
        documents.append((f"{label}:{number}", LoadFailure(f"invalid YAML: {exc}")))
    finally:
        loader.dispose()
    return documents


def _as_document(data: Any) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    return LoadFailure(f"a document must be a mapping (a LogPipeline), not {type(data).__name__}")


def _unsafe_node(root: yaml.Node) -> str | None:
    """Why a composed document is refused before construction, or None."""
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return "YAML anchors and aliases are not allowed in pipeline documents"
        seen.add(id(node))
        if len(seen) > MAX_NODES_PER_DOCUMENT:
            return f"document has over {MAX_NODES_PER_DOCUMENT} nodes"
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in keys:
                    return f"duplicate key {key!r} at line {key_node.start_mark.line + 1}"
                keys.add(key)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None

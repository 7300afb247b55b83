"""Configuration loading: YAML in, a frozen, validated model out, or a ConfigError that names
the file, the line, the key path and the reason.

Everything is checked at start: a daemon never fails later because of a value that could
have been refused when the file was read.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from logferry.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every config section: immutable, unknown keys refused, field docstrings kept
    as descriptions so the reference documentation is generated from the code."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, validate_default=True
    )


def load_config(path: str | Path, model: type[M]) -> M:
    """Read a YAML file and validate it against ``model``.

    Raises ConfigError listing every problem, each as ``file:line: key.path: reason``.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from exc
    return parse_config(text, model, file=file)


def parse_config(text: str, model: type[M], *, file: str = "<config>") -> M:
    """Validate YAML ``text`` against ``model``; see load_config."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    if root is None:
        data: Any = {}
    else:
        _refuse_duplicate_keys(root, file)
        _expand_env(root, file)
        loader = yaml.SafeLoader("")
        try:
            data = loader.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError(f"invalid value: {exc.problem}", file=file, line=line) from exc
        finally:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", file=file, line=1)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, root, file) from exc


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: yaml.Node, file: str) -> None:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string scalars (the node name comes from
    the downward API as an environment variable on Kubernetes). An unset variable without a
    default is refused, not silently replaced by an empty string."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:str" and "${" in node.value:

            def substitute(match: re.Match[str]) -> str:
                value = os.environ.get(match.group(1), match.group(2))
                if value is None:
                    raise ConfigError(
                        f"environment variable {match.group(1)} is not set",
                        file=file,
                        line=node.start_mark.line + 1,
                    )
                return value

            node.value = _ENV_REF.sub(substitute, node.value)
    elif isinstance(node, yaml.MappingNode):
        for _key, value in node.value:
            _expand_env(value, file)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _expand_env(item, file)


def _refuse_duplicate_keys(node: yaml.Node, file: str, path: str = "") -> None:
    # PyYAML keeps the last of two equal keys without a word; in a config that hides a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                raise ConfigError(
                    "duplicate key", file=file, line=key_node.start_mark.line + 1, path=child
                )
            seen.add(key)
            _refuse_duplicate_keys(value_node, file, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, file, f"{path}[{index}]")


def _translate(exc: ValidationError, root: yaml.Node | None, file: str) -> ConfigError:
    problems = []
    first_line: int | None = None
    first_path = ""
    for error in exc.errors(include_url=False):
        loc = _strip_union_tags(root, [p for p in error["loc"] if not _is_union_tag(p)])
        path = format_path(loc)
        line = _line_of(root, loc)
        reason = error_reason(error)
        problems.append((line, path, reason))
        if first_line is None:
            first_line, first_path = line, path
    if len(problems) == 1:
        line, path, reason = problems[0]
        return ConfigError(reason, file=file, line=line, path=path)
    lines = [
        f"{file}:{line if line is not None else '?'}: {path}: {reason}"
        for line, path, reason in problems
    ]
    refused = ConfigError(f"{len(problems)} problems:\n  " + "\n  ".join(lines), file=file)
    refused.line, refused.path = first_line, first_path
    return refused


def _is_union_tag(part: int | str) -> bool:
    # pydantic adds the chosen union member ("function-after[...]", a model name) to locations.
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def _strip_union_tags(root: yaml.Node | None, loc: list[int | str]) -> list[int | str]:
    """Drop the discriminator value pydantic inserts for a tagged union (``filters[0].grep.regex``
    -> ``filters[0].regex``): a part that is not a key of its mapping but is its ``type``."""
    out: list[int | str] = []
    node = root
    for part in loc:
        child = _child(node, part) if node is not None else None
        if child is None and isinstance(node, yaml.MappingNode):
            type_child = _child(node, "type")
            if type_child is not None and str(type_child[1].value) == str(part):
                continue
        out.append(part)
        node = child[1] if child is not None else None
    return out


def error_reason(error: Any) -> str:
    """One pydantic error as a reader would say it ("unknown key", "... (got 'x')")."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    value = error.get("input")
    if kind not in ("model_type", "dict_type") and isinstance(value, str | int | float | bool):
        return f"{message} (got {value!r})"
    return message


def format_path(loc: list[int | str]) -> str:
    """A location as a key path: ``spool.max_bytes``, ``filters[2].match``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(root: yaml.Node | None, loc: list[int | str]) -> int | None:
    """The 1-based line of the deepest YAML node on ``loc`` that exists in the file."""
    if root is None:
        return None
    node = root
    line: int = node.start_mark.line + 1
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        key_node, node = child
        line = int((key_node or node).start_mark.line) + 1
    return line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if str(key_node.value) == str(part):
                return key_node, value_node
    elif (
        isinstance(node, yaml.SequenceNode)
        and isinstance(part, int)
        and 0 <= part < len(node.value)
    ):
        return None, node.value[part]
    return None


def iter_reference(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """Yield ``(key path, default, description)`` for every field, nested sections included.

    A section that is one of several models (chosen by ``type``) lists each choice's keys as
    ``section(type=x).key``; an optional section (``Model | None``) lists its keys too.
    docs/configuration.md is generated from this, so it cannot drift from the code.
    """
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        choices = _model_choices(field.annotation)
        if choices:
            yield path, _default_text(field), field.description or ""
            for choice in choices:
                kind = choice.model_fields.get("type")
                label = _type_label(kind.annotation) if kind is not None else choice.__name__
                yield from iter_reference(choice, f"{path}(type={label}).")
            continue
        # A section that is always there has its defaults on its keys, not on itself.
        section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        yield path, "" if section else _default_text(field), field.description or ""
        single = _model_choices_single(field.annotation)
        if single is not None:
            yield from iter_reference(single, f"{path}.")


def _default_text(field: Any) -> str:
    if field.is_required():
        return "(required)"
    if field.default_factory is not None:
        return repr(field.default_factory())
    return repr(field.default)


def _model_choices_single(annotation: Any) -> type[BaseModel] | None:
    """The model of a section annotated ``Model`` or ``Model | None`` (a section that is
    absent unless configured), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0]
    return None


def _model_choices(annotation: Any) -> list[type[BaseModel]]:
    """The models of a union-of-models annotation (``Annotated[A | B, ...]``), else []."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _model_choices(args[0])
    if len(args) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
        return list(args)
    return []


def _type_label(annotation: Any) -> str:
    return "|".join(str(v) for v in typing.get_args(annotation)) or str(annotation)

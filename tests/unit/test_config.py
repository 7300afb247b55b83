"""Config files are refused at start with the file, line, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from logferry.aggregator.config import AggregatorConfig
from logferry.common.config import iter_reference, load_config, parse_config
from logferry.common.errors import ConfigError
from logferry.forwarder.config import ForwarderConfig

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
node_name: n1
spool:
  directory: /tmp/spool
  max_bytes: 64MiB
  segment_max_bytes: 8MiB
sender:
  servers: ["10.0.0.1:24224"]
"""


def test_valid_config_loads_with_units_and_defaults() -> None:
    config = parse_config(GOOD, ForwarderConfig)
    assert config.spool.max_bytes == 64 * 1024 * 1024
    assert config.spool.segment_max_bytes == 8 * 1024 * 1024
    assert config.sender.servers == ["10.0.0.1:24224"]
    assert config.source.path_glob == "/var/log/containers/*.log"


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")))
def test_example_configs_are_valid(path: Path) -> None:
    model = ForwarderConfig if "forwarder" in path.name else AggregatorConfig
    load_config(path, model)


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    file = tmp_path / "f.yaml"
    file.write_text(GOOD + "source:\n  path_glob: /x/*.log\n  pathglob: typo\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, ForwarderConfig)
    err = info.value
    assert (err.file, err.line, err.path, err.reason) == (
        str(file),
        10,
        "source.pathglob",
        "unknown key",
    )
    assert str(err) == f"{file}:10: source.pathglob: unknown key"


def test_wrong_type_and_bad_value_are_each_reported_with_their_line() -> None:
    text = GOOD.replace("max_bytes: 64MiB", "max_bytes: lots") + "source:\n  rescan_interval_s: 0\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, ForwarderConfig, file="f.yaml")
    message = str(info.value)
    assert "2 problems" in message
    assert "f.yaml:4: spool.max_bytes: expected a byte size" in message
    assert "f.yaml:9: source.rescan_interval_s: Input should be greater than 0 (got 0)" in message


def test_missing_required_key_points_at_its_parent() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("node_name: n1\n", ForwarderConfig, file="f.yaml")
    assert info.value.path == "spool"
    assert info.value.reason == "required key is missing"


def test_cross_field_rule_is_enforced() -> None:
    text = GOOD.replace("max_bytes: 64MiB", "max_bytes: 10MiB")
    with pytest.raises(ConfigError, match="at least two segments"):
        parse_config(text, ForwarderConfig)


def test_duplicate_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + "node_name: n2\n", ForwarderConfig, file="f.yaml")
    assert (info.value.line, info.value.path, info.value.reason) == (
        8,
        "node_name",
        "duplicate key",
    )


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("node_name: n1\nspool: {directory: [\n", ForwarderConfig, file="f.yaml")
    assert info.value.line == 3
    assert "invalid YAML" in info.value.reason


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- a\n- b\n", ForwarderConfig)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", ForwarderConfig)


def test_environment_variables_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    config = parse_config(GOOD.replace("node_name: n1", "node_name: ${NODE_NAME}"), ForwarderConfig)
    assert config.node_name == "worker-7"
    monkeypatch.delenv("NODE_NAME")
    fallback = GOOD.replace("node_name: n1", "node_name: ${NODE_NAME:-here}")
    assert parse_config(fallback, ForwarderConfig).node_name == "here"


def test_unset_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGFERRY_UNSET_VAR", raising=False)
    text = GOOD.replace("node_name: n1", "node_name: ${LOGFERRY_UNSET_VAR}")
    with pytest.raises(ConfigError) as info:
        parse_config(text, ForwarderConfig, file="f.yaml")
    assert info.value.line == 1
    assert "LOGFERRY_UNSET_VAR is not set" in info.value.reason


def test_config_models_are_frozen() -> None:
    config = parse_config(GOOD, ForwarderConfig)
    with pytest.raises(ValueError, match="frozen"):
        config.node_name = "other"  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    for model in (ForwarderConfig, AggregatorConfig):
        undocumented = [path for path, _default, doc in iter_reference(model) if not doc.strip()]
        assert undocumented == []

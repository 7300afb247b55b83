"""Forwarder config keys of the hostile-tenants work: the shared key from a file, the pods
root, parking."""

from __future__ import annotations

from pathlib import Path

import pytest

from logferry.common.config import parse_config
from logferry.common.errors import ConfigError
from logferry.forwarder.app import Forwarder
from logferry.forwarder.config import ForwarderConfig, SourceSettings
from logferry.forwarder.sender import Sender


def config(tmp_path: Path, sender: str) -> ForwarderConfig:
    return parse_config(
        f"""
node_name: n1
spool: {{directory: {tmp_path / "spool"}}}
sender:
  servers: ["127.0.0.1:24224"]
{sender}
""",
        ForwarderConfig,
        file="forwarder.yaml",
    )


def test_the_shared_key_is_read_from_its_file_with_the_trailing_newline_stripped(
    tmp_path: Path,
) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")  # as `kubectl create secret --from-file` leaves it
    cfg = config(tmp_path, f"  shared_key_file: {key}")
    assert cfg.sender.shared_key is None
    assert cfg.sender.read_shared_key() == "s3cret-key"
    assert Forwarder(cfg)._shared_key == "s3cret-key"


def test_shared_key_and_shared_key_file_are_exclusive(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("a")
    with pytest.raises(ConfigError, match="set shared_key or shared_key_file, not both") as err:
        config(tmp_path, f"  shared_key: b\n  shared_key_file: {key}")
    assert err.value.file == "forwarder.yaml"
    assert err.value.line == 4  # the sender section


@pytest.mark.parametrize("content", ["", "\n", "  \n\n"])
def test_an_empty_key_file_refuses_the_start(tmp_path: Path, content: str) -> None:
    key = tmp_path / "key"
    key.write_text(content)
    cfg = config(tmp_path, f"  shared_key_file: {key}")  # loads: the file is read at start
    with pytest.raises(ConfigError, match=r"shared_key_file: .*key is empty: no shared key"):
        Forwarder(cfg)
    with pytest.raises(ConfigError, match="empty"):
        Sender(cfg.sender, object(), node_name="n1")  # type: ignore[arg-type]


def test_a_missing_key_file_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"  shared_key_file: {tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match=r"cannot read the shared key from .*absent"):
        Forwarder(cfg)


def test_an_empty_inline_key_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"shared_key: a secret may not be blank"):
        config(tmp_path, '  shared_key: "  "')


def test_the_pods_root_defaults_beside_the_glob_folder() -> None:
    assert SourceSettings().pods_root_path == Path("/var/log/pods")
    assert SourceSettings(path_glob="/node/logs/containers/*.log").pods_root_path == Path(
        "/node/logs/pods"
    )
    explicit = SourceSettings(path_glob="/x/containers/*.log", pods_root=Path("/y/pods"))
    assert explicit.pods_root_path == Path("/y/pods")


def test_parking_defaults(tmp_path: Path) -> None:
    cfg = config(tmp_path, "")
    assert cfg.sender.park_after_refusals == 5
    assert cfg.parked_path == tmp_path / "parked"
    with pytest.raises(ConfigError, match="park_after_refusals"):
        config(tmp_path, "  park_after_refusals: -1")

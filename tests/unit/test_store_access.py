"""Store access shared by the bulk output, ``verify`` and ``dlq replay``: the Authorization
header from secret files, the TLS option, and the same store flags on both commands."""

from __future__ import annotations

import argparse
import base64
import io
import ssl
from pathlib import Path

import pytest

from logferry.aggregator.dlq_cli import dlq_main
from logferry.common.errors import ConfigError, OutputError
from logferry.common.store_access import (
    StoreAccess,
    add_store_arguments,
    store_access_from_args,
)
from logferry.tools.verify import build_parser, options_from_args
from logferry.tools.verify_options import VerifyError

URL = "https://es-0:9200"


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")  # as a mounted Secret often ends: the newline is not part of it
    return path


def test_basic_auth_reads_the_password_from_its_file(tmp_path: Path) -> None:
    access = StoreAccess(
        urls=[URL], username="logferry", password_file=secret(tmp_path, "pw", "s3cret")
    )
    token = base64.b64encode(b"logferry:s3cret").decode()
    assert access.headers() == {"Authorization": f"Basic {token}"}


def test_an_api_key_is_sent_encoded_whether_given_as_id_key_or_already_encoded(
    tmp_path: Path,
) -> None:
    encoded = base64.b64encode(b"id:key").decode()
    for text in ("id:key", encoded):
        access = StoreAccess(urls=[URL], api_key_file=secret(tmp_path, "key", text))
        assert access.headers() == {"Authorization": f"ApiKey {encoded}"}


def test_no_credentials_no_header_and_an_unreadable_file_is_not_retriable(tmp_path: Path) -> None:
    assert StoreAccess(urls=[URL]).headers() == {}
    missing = StoreAccess(urls=[URL], api_key_file=tmp_path / "absent")
    with pytest.raises(OutputError, match="credentials file") as caught:
        missing.headers()
    assert not caught.value.retriable


def test_tls_option_verifies_by_default_loads_a_ca_and_can_be_turned_off(tmp_path: Path) -> None:
    assert StoreAccess(urls=[URL]).ssl_option() is True
    assert StoreAccess(urls=[URL], tls_verify=False).ssl_option() is False
    ca = Path(ssl.get_default_verify_paths().cafile or "")
    if ca.is_file():
        assert isinstance(StoreAccess(urls=[URL], tls_ca_file=ca).ssl_option(), ssl.SSLContext)
    bad = StoreAccess(urls=[URL], tls_ca_file=secret(tmp_path, "ca.crt", "not a certificate"))
    with pytest.raises(OutputError, match="tls_ca_file"):
        bad.ssl_option()


def test_access_refuses_bad_urls_and_mixed_or_incomplete_credentials(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        StoreAccess(urls=["es:9200"])
    with pytest.raises(ValueError, match="either"):
        StoreAccess(urls=[URL], username="u", api_key_file=tmp_path / "k")
    with pytest.raises(ValueError, match="needs username"):
        StoreAccess(urls=[URL], password_file=tmp_path / "pw")


def parse(argv: list[str], *, required: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_store_arguments(parser, required=required)
    return parser.parse_args(argv)


def test_flags_describe_the_access(tmp_path: Path) -> None:
    argv = ["--url", URL, "--url", "https://es-1:9200", "--username", "u"]
    argv += ["--password-file", str(tmp_path / "pw"), "--tls-ca-file", str(tmp_path / "ca")]
    assert store_access_from_args(parse([*argv, "--insecure"])) == StoreAccess(
        urls=[URL, "https://es-1:9200"],
        username="u",
        password_file=tmp_path / "pw",
        tls_ca_file=tmp_path / "ca",
        tls_verify=False,
    )
    with pytest.raises(ConfigError, match="give at least one --url"):
        store_access_from_args(parse([]))
    with pytest.raises(ConfigError, match="either"):
        store_access_from_args(parse(["--url", URL, "--username", "u", "--api-key-file", "k"]))


def test_verify_and_dlq_replay_take_the_same_store_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", URL, "--api-key-file", str(tmp_path / "absent"), "--insecure"]
    options = options_from_args(build_parser().parse_args(argv))
    assert options.store == StoreAccess(
        urls=[URL], api_key_file=tmp_path / "absent", tls_verify=False
    )
    # dlq replay reads the key file when it connects: the missing file is a usage error (2).
    replay = ["replay", "--dlq-dir", str(tmp_path / "dlq"), *argv]
    assert dlq_main(replay, out=io.StringIO()) == 2
    assert "credentials file" in capsys.readouterr().err


def test_verify_takes_no_secret_on_the_command_line() -> None:
    parser = build_parser()
    for flag in ("--password", "--api-key"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--url", URL, flag, "s3cret"])
    with pytest.raises(VerifyError, match="needs username"):
        options_from_args(parser.parse_args(["--url", URL, "--password-file", "pw"]))

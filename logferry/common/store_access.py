"""How to reach an Elasticsearch/OpenSearch store: its nodes, credentials and TLS.

:class:`StoreAccess` is shared by everything that talks to the store: the aggregator's bulk
output (its ``output:`` keys), ``logferry verify`` and ``logferry aggregator dlq replay``.
The two commands take it from the same flags (:func:`add_store_arguments`): ``--url``
(repeatable), ``--username``, ``--password-file``, ``--api-key-file``, ``--tls-ca-file`` and
``--insecure``. Secrets only ever come from files, never from the command line, where every
user of the machine could read them.
"""

from __future__ import annotations

import argparse
import base64
import ssl
from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from logferry.common.config import ConfigModel
from logferry.common.errors import ConfigError, OutputError


class StoreAccess(ConfigModel):
    """The store's nodes, credentials and TLS."""

    urls: list[str] = Field(min_length=1)
    """Base URLs of the store's nodes (``https://es-0:9200``); requests rotate across them."""
    username: str | None = None
    """Basic auth user."""
    password_file: Path | None = None
    """File holding the basic auth password (a mounted Secret), read at start."""
    api_key_file: Path | None = None
    """File holding an API key (``id:key`` or its base64), sent as ``Authorization: ApiKey``."""
    tls_ca_file: Path | None = None
    """CA bundle to verify the store's certificate."""
    tls_verify: bool = True
    """Verify the store's certificate (turn off only for a throwaway test cluster)."""

    @model_validator(mode="after")
    def _consistent_access(self) -> StoreAccess:
        if self.password_file and not self.username:
            raise ValueError("password_file needs username")
        if self.api_key_file and self.username:
            raise ValueError("use either username/password_file or api_key_file, not both")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"url {url!r} must start with http:// or https://")
        return self

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header from the secret files (read now), or none.

        Raises OutputError (not retriable) when a file cannot be read.
        """
        try:
            if self.api_key_file is not None:
                key = self.api_key_file.read_text().strip()
                if ":" in key:
                    key = base64.b64encode(key.encode()).decode()
                return {"Authorization": f"ApiKey {key}"}
            if self.username is not None:
                password = self.password_file.read_text().strip() if self.password_file else ""
                token = base64.b64encode(f"{self.username}:{password}".encode()).decode()
                return {"Authorization": f"Basic {token}"}
        except OSError as exc:
            raise OutputError(f"cannot read a credentials file: {exc}", retriable=False) from exc
        return {}

    def ssl_option(self) -> ssl.SSLContext | bool:
        """aiohttp's ``ssl=`` argument: a context holding the CA bundle, True for aiohttp's
        own verifying context, False not to verify.

        Raises OutputError (not retriable) when the CA bundle cannot be loaded.
        """
        if not self.tls_verify:
            return False
        if self.tls_ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.tls_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise OutputError(f"cannot load tls_ca_file: {exc}", retriable=False) from exc


def add_store_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The store flags of every command that talks to the store (read back with
    :func:`store_access_from_args`)."""
    group = parser.add_argument_group("store")
    group.add_argument(
        "--url",
        action="append",
        required=required,
        metavar="URL",
        help="base URL of a store node, e.g. https://es-0:9200 (repeatable)",
    )
    group.add_argument("--username", metavar="USER", help="basic auth user")
    group.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file holding the basic auth password"
    )
    group.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="file holding an API key (id:key or base64)",
    )
    group.add_argument("--tls-ca-file", type=Path, metavar="FILE", help="CA bundle for https")
    group.add_argument("--insecure", action="store_true", help="do not verify the certificate")


def store_access_from_args(args: argparse.Namespace) -> StoreAccess:
    """The :class:`StoreAccess` that :func:`add_store_arguments`' flags describe.

    Raises ConfigError when they are incomplete or inconsistent.
    """
    try:
        return StoreAccess(
            urls=args.url or [],
            username=args.username,
            password_file=args.password_file,
            api_key_file=args.api_key_file,
            tls_ca_file=args.tls_ca_file,
            tls_verify=not args.insecure,
        )
    except ValidationError as exc:
        reasons = "; ".join(_flag_reason(error) for error in exc.errors())
        raise ConfigError(f"store options: {reasons}") from exc


def _flag_reason(error: ErrorDetails) -> str:
    """One validation error of :func:`store_access_from_args`, in the flags' words."""
    if error["loc"] == ("urls",):
        return "give at least one --url"
    return error["msg"].removeprefix("Value error, ")

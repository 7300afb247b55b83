"""The aggregators' pipeline ConfigMap, read and written over the Kubernetes API.

The operator owns this one object and nothing else it writes (statuses and events go
through kopf). It speaks the REST API with aiohttp, already a logferry dependency, using
the credentials kopf logged in with, rather than pulling in the full ``kubernetes`` client.
Writes replace ``data`` with ``resourceVersion`` set, so a concurrent writer is a conflict
(retried), never a lost update.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import kopf

from logferry.common.errors import LogferryError

REQUEST_TIMEOUT_S: Final = 30.0
MANAGED_BY_LABEL: Final = {"app.kubernetes.io/managed-by": "logferry-operator"}


class KubeApiError(LogferryError):
    """A request to the API server failed; ``retriable`` says if it is worth retrying."""

    def __init__(self, message: str, *, status: int | None = None, retriable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable


class ConfigMapStore:
    """Reads and replaces the ``data`` of one ConfigMap (created if missing)."""

    def __init__(
        self,
        namespace: str,
        name: str,
        credentials: Callable[[], kopf.ConnectionInfo | None],
    ) -> None:
        self.namespace = namespace
        self.name = name
        # Called per request: in-cluster service-account tokens rotate, so a token read at
        # start would expire under a long-running operator.
        self._credentials = credentials

    async def read(self) -> dict[str, str] | None:
        """The current ``data``, or None when the ConfigMap does not exist."""
        status, body = await self._request("GET", self._url())
        if status == 404:
            return None
        self._check(status, body, "read")
        data = body.get("data") or {}
        return {str(k): str(v) for k, v in data.items()}

    async def write(self, data: Mapping[str, str]) -> None:
        """Replace ``data`` (other fields of the object are kept)."""
        status, current = await self._request("GET", self._url())
        if status == 404:
            created = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": dict(MANAGED_BY_LABEL),
                },
                "data": dict(data),
            }
            status, body = await self._request("POST", self._url(collection=True), created)
            self._check(status, body, "create")
            return
        self._check(status, current, "read")
        replaced = dict(current)
        replaced["data"] = dict(data)
        status, body = await self._request("PUT", self._url(), replaced)
        self._check(status, body, "replace")

    def _url(self, *, collection: bool = False) -> str:
        base = f"/api/v1/namespaces/{self.namespace}/configmaps"
        return base if collection else f"{base}/{self.name}"

    def _check(self, status: int, body: Mapping[str, Any], action: str) -> None:
        if 200 <= status < 300:
            return
        # 409: someone else wrote in between; 429/5xx: the API server is busy or restarting.
        retriable = status in (401, 409, 429) or status >= 500
        message = body.get("message") if isinstance(body, Mapping) else None
        raise KubeApiError(
            f"{action} ConfigMap {self.namespace}/{self.name}: HTTP {status}: {message}",
            status=status,
            retriable=retriable,
        )

    async def _request(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        info = self._credentials()
        if info is None:
            raise KubeApiError("no Kubernetes credentials", retriable=True)
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = (
            aiohttp.BasicAuth(info.username, info.password or "")
            if info.username and not info.token
            else None
        )
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method,
                    info.server.rstrip("/") + path,
                    json=payload,
                    headers=headers,
                    auth=auth,
                    ssl=_ssl_context(info),
                ) as response,
            ):
                body = await response.json(content_type=None)
                return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(f"{method} {path}: {exc!r}", retriable=True) from exc


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=info.ca_path or None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    elif info.certificate_data or info.private_key_data:
        # Embedded client certificates (kubeconfig of a dev cluster) would need temp files;
        # the operator runs in-cluster with a service-account token.
        raise KubeApiError("embedded client certificates are not supported", retriable=False)
    return context


class MirroredStore:
    """A :class:`ConfigMapStore` whose writes are copied to the same ConfigMap in other
    namespaces (the forwarders', which read the tenants' multiline rules from it): read from
    the primary, written to every copy, the primary last, so the primary never claims a
    version a copy does not have yet. A failed copy fails the write (kopf retries it)."""

    def __init__(self, primary: ConfigMapStore, mirrors: list[ConfigMapStore]) -> None:
        self.primary = primary
        self.mirrors = mirrors
        self.namespace = primary.namespace
        self.name = primary.name

    async def read(self) -> dict[str, str] | None:
        return await self.primary.read()

    async def write(self, data: Mapping[str, str]) -> None:
        for mirror in self.mirrors:
            await mirror.write(data)
        await self.primary.write(data)

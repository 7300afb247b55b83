"""An HTTP proxy for chaos tests that fails chosen ``_bulk`` items in front of a real store.

Every request goes to the OpenSearch/Elasticsearch node behind it unchanged, except ``_bulk``:
the proxy decides per item whether it passes or fails with a synthetic per-item error (429
to exercise retries, 400 ``mapper_parsing_exception`` to exercise the dead-letter queue),
sends only the passing items to the store in one request, and answers with one response in
the original item order, shaped like the store's own. Failed items never reach the store, so
a test knows exactly which documents must be in the index and which in the DLQ.
"""

from __future__ import annotations

import gzip
import io
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.net import free_port

BULK_ACTIONS = frozenset({"create", "index", "update", "delete"})
# Hop-by-hop headers and the ones that describe a body we may have rewritten: aiohttp sets
# them again for the body it actually sends.
_DROP_REQUEST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# The client session decompresses responses, so their encoding and length no longer hold.
_DROP_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}
)
_MAX_BODY_BYTES = 512 * 1024 * 1024


@dataclass
class BulkItem:
    """One action of a ``_bulk`` body: its raw lines and what the proxy needs to judge it."""

    action: str
    meta: dict[str, Any]
    lines: list[bytes]  # the action line and, except for delete, the source line, verbatim

    @property
    def doc_id(self) -> str:
        value = self.meta.get("_id")
        return "" if value is None else str(value)

    def source(self) -> dict[str, Any]:
        """The source line as a dict; {} when absent or not an object (the store judges it)."""
        if len(self.lines) < 2:
            return {}
        try:
            parsed = orjson.loads(self.lines[1])
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


def parse_bulk(body: bytes) -> list[BulkItem] | None:
    """The items of an NDJSON ``_bulk`` body, or None when it is not one we can take apart.

    None makes the proxy relay the request untouched, so the store answers malformed input
    with its own error rather than the proxy inventing one.
    """
    lines = [line for line in body.split(b"\n") if line.strip()]
    items: list[BulkItem] = []
    position = 0
    while position < len(lines):
        try:
            header = orjson.loads(lines[position])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(header, dict) or len(header) != 1:
            return None
        ((action, meta),) = header.items()
        if action not in BULK_ACTIONS or not isinstance(meta, dict):
            return None
        size = 1 if action == "delete" else 2
        if position + size > len(lines):
            return None
        items.append(BulkItem(action, meta, lines[position : position + size]))
        position += size
    return items


def render_bulk(items: Sequence[BulkItem]) -> bytes:
    return b"".join(line + b"\n" for item in items for line in item.lines)


def is_bulk_path(path: str) -> bool:
    """``/_bulk`` or ``/<index>/_bulk`` (a trailing slash allowed)."""
    return path.rstrip("/").rsplit("/", 1)[-1] == "_bulk"


def _path_index(path: str) -> str | None:
    parts = [part for part in path.split("/") if part]
    return parts[0] if len(parts) == 2 else None


def filter_path(document: Any, spec: str) -> Any:
    """Apply an Elasticsearch/OpenSearch ``filter_path`` to a response body.

    Same rules as the store: comma-separated dotted paths, ``*`` within a name, ``**`` for any
    depth, arrays are transparent, objects and array elements left empty disappear, and a
    leading ``-`` excludes. The proxy builds merged ``_bulk`` responses itself, so it must
    shape them the way the store would have.
    """
    includes = [_split(part) for part in spec.split(",") if part and not part.startswith("-")]
    excludes = [_split(part[1:]) for part in spec.split(",") if part.startswith("-")]
    if includes:
        document = _include(document, includes)
        if document is _MISSING:
            document = {}
    if excludes:
        document = _exclude(document, excludes)
    return document


_MISSING: Any = object()


def _split(path: str) -> list[str]:
    return [segment for segment in path.strip().split(".") if segment]


def _name_matches(pattern: str, name: str) -> bool:
    if "*" not in pattern:
        return pattern == name
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, name) is not None


def _descend(patterns: list[list[str]], name: str) -> list[list[str]]:
    """What is left of each pattern below the field ``name``; [] means 'all of it'."""
    rest: list[list[str]] = []
    for pattern in patterns:
        if not pattern:
            rest.append(pattern)
        elif pattern[0] == "**":
            rest.append(pattern)  # ** takes this level and may take more
            if len(pattern) == 1:
                rest.append([])
            elif _name_matches(pattern[1], name):
                rest.append(pattern[2:])  # ** took zero levels
        elif _name_matches(pattern[0], name):
            rest.append(pattern[1:])
    return rest


def _include(value: Any, patterns: list[list[str]]) -> Any:
    if any(not pattern for pattern in patterns):
        return value
    if isinstance(value, dict):
        kept = {}
        for name, child in value.items():
            rest = _descend(patterns, name)
            if rest and (picked := _include(child, rest)) is not _MISSING:
                kept[name] = picked
        return kept or _MISSING
    if isinstance(value, list):
        items = [picked for child in value if (picked := _include(child, patterns)) is not _MISSING]
        return items or _MISSING
    return _MISSING  # a scalar where the path wanted more levels


def _exclude(value: Any, patterns: list[list[str]]) -> Any:
    if isinstance(value, dict):
        kept = {}
        for name, child in value.items():
            rest = _descend(patterns, name)
            if any(not pattern for pattern in rest):
                continue
            kept[name] = _exclude(child, rest) if rest else child
        return kept
    if isinstance(value, list):
        return [_exclude(child, patterns) for child in value]
    return value


def error_429(index: str, error_type: str) -> dict[str, Any]:
    """A write queue rejection, as the store reports it per item."""
    return {
        "type": error_type,
        "reason": f"rejected execution of primary operation [shard_detail=[{index}][0]]: "
        "write thread pool queue is full",
    }


def error_400(doc_id: str) -> dict[str, Any]:
    """A mapping conflict, as OpenSearch 2 reports it per item (with its ``caused_by``)."""
    return {
        "type": "mapper_parsing_exception",
        "reason": f"failed to parse field [x] of type [long] in document with id '{doc_id}'. "
        "Preview of field's value: 'not a number'",
        "caused_by": {
            "type": "illegal_argument_exception",
            "reason": 'For input string: "not a number"',
        },
    }


class BulkFaultProxy:
    """Proxies ``http://127.0.0.1:<port>`` to ``target_url`` and fails ``_bulk`` items by policy.

    Policy, read for every item so a test can change it at any time:

    - ``fail_429_every``: when > 0, every n-th item seen (over all requests) gets a 429;
    - ``fail_429_index``: a predicate on the item's index: matching items always get a 429 (a
      destination that keeps refusing, e.g. one tenant's overloaded or blocked index);
    - ``fail_400_ids``: items with these ``_id`` get a 400 ``mapper_parsing_exception``;
    - ``fail_400``: a predicate on (``_id``, source dict) with the same effect;
    - ``down``: every request is answered 503, as by a load balancer with no backend.

    A 429 is decided first, as the store does (the write queue rejects before parsing), so an
    item due for a 400 may first be rejected with 429 and get its 400 on the retry.

    Counters: ``bulk_requests``, ``items_seen``, ``items_429``, ``items_400``, and
    ``failed_ids_400``: the ids that got a synthetic 400, i.e. what belongs in the DLQ.
    A whole-request failure of the store after the decision does not undo the counts: the
    client resends those items and they are judged again.
    """

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.port = free_port()
        self.down = False
        self.fail_429_every = 0
        self.fail_400_ids: set[str] = set()
        self.fail_400: Callable[[str, dict[str, Any]], bool] | None = None
        self.fail_429_index: Callable[[str], bool] | None = None
        # OpenSearch 2 names it rejected_execution_exception, Elasticsearch
        # es_rejected_execution_exception; status 429 is what clients act on.
        self.error_429_type = "es_rejected_execution_exception"
        self.bulk_requests = 0
        self.items_seen = 0
        self.items_429 = 0
        self.items_400 = 0
        self.failed_ids_400: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Bulk bodies are routinely bigger than aiohttp's 1 MiB default.
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        # auto_decompress off: the proxy sees request bodies as sent, so it relays them byte
        # for byte with their Content-Encoding and decompresses _bulk bodies itself.
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return _json_response(503, {"error": "store unreachable (BulkFaultProxy down)"})
        body = await request.read()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _DROP_REQUEST_HEADERS
        )
        if request.method in ("POST", "PUT") and is_bulk_path(request.path):
            response = await self._bulk(request, headers, body)
            if response is not None:
                return response
        return await self._relay(request.method, request.rel_url, headers, body)

    async def _send(
        self, method: str, rel_url: URL, headers: CIMultiDict[str], body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes]:
        assert self._session is not None, "start() first"
        url = URL(self.target_url + str(rel_url), encoded=True)
        async with self._session.request(
            method,
            url,
            headers=headers,
            # A file-like body: aiohttp warns (an error under pytest) on large raw bytes.
            data=io.BytesIO(body) if body else None,
            allow_redirects=False,
        ) as response:
            payload = await response.read()
            kept = CIMultiDict(
                (name, value)
                for name, value in response.headers.items()
                if name.lower() not in _DROP_RESPONSE_HEADERS
            )
            return response.status, kept, payload

    async def _relay(
        self, method: str, rel_url: URL, headers: CIMultiDict[str], body: bytes
    ) -> web.Response:
        try:
            status, response_headers, payload = await self._send(method, rel_url, headers, body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _json_response(502, {"error": f"BulkFaultProxy: {type(exc).__name__}: {exc}"})
        return web.Response(status=status, headers=response_headers, body=payload)

    async def _bulk(
        self, request: web.Request, headers: CIMultiDict[str], body: bytes
    ) -> web.Response | None:
        """Judge, forward the passing items, merge; None relays the request untouched."""
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return None  # let the store say what it makes of a broken body
        elif encoding != "identity":
            return None
        items = parse_bulk(body)
        if items is None:
            return None
        self.bulk_requests += 1
        started = time.monotonic()
        default_index = _path_index(request.path)
        # Decide every item before the first await: concurrent requests then count in a
        # well-defined order and a policy change mid-request cannot split one request.
        verdicts = [self._judge(item, default_index) for item in items]
        passing = [item for item, verdict in zip(items, verdicts, strict=True) if verdict is None]
        real: list[Any] = []
        took: Any = None
        if passing:
            # The store answers in full: the merge needs every item, and filter_path is
            # applied below to the merged response, exactly as the store would apply it.
            headers.popall("Content-Encoding", None)
            rel_url = request.rel_url.without_query_params("filter_path")
            try:
                status, response_headers, payload = await self._send(
                    request.method, rel_url, headers, render_bulk(passing)
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return _json_response(
                    502, {"error": f"BulkFaultProxy: {type(exc).__name__}: {exc}"}
                )
            if status != 200:
                # Failed as a whole: the client must see exactly that, and resend everything.
                return web.Response(status=status, headers=response_headers, body=payload)
            try:
                answer = orjson.loads(payload)
                real = list(answer["items"])
                took = answer.get("took")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                real = []
            if len(real) != len(passing):
                return _json_response(
                    502, {"error": "BulkFaultProxy: store answer does not match the request"}
                )
        merged: list[Any] = []
        answers = iter(real)
        for verdict in verdicts:
            merged.append(next(answers) if verdict is None else verdict)
        if took is None:
            took = int((time.monotonic() - started) * 1000)
        result: dict[str, Any] = {"took": took, "errors": any(map(_failed, merged))}
        result["items"] = merged
        spec = request.rel_url.query.get("filter_path")
        return _json_response(200, filter_path(result, spec) if spec else result)

    def _judge(self, item: BulkItem, default_index: str | None) -> dict[str, Any] | None:
        """The synthetic result for an item the proxy fails, or None to let it through."""
        self.items_seen += 1
        index = str(item.meta.get("_index", default_index or ""))
        doc_id = item.doc_id
        if (self.fail_429_every > 0 and self.items_seen % self.fail_429_every == 0) or (
            self.fail_429_index is not None and self.fail_429_index(index)
        ):
            self.items_429 += 1
            return _item_result(
                item.action, index, doc_id, 429, error_429(index, self.error_429_type)
            )
        if doc_id in self.fail_400_ids or (
            self.fail_400 is not None and self.fail_400(doc_id, item.source())
        ):
            self.items_400 += 1
            self.failed_ids_400.add(doc_id)
            return _item_result(item.action, index, doc_id, 400, error_400(doc_id))
        return None


def _item_result(
    action: str, index: str, doc_id: str, status: int, error: dict[str, Any]
) -> dict[str, Any]:
    # The store's shape for a failed item: no _version/_shards/result, just status and error.
    result: dict[str, Any] = {"_index": index}
    if doc_id:
        result["_id"] = doc_id
    result["status"] = status
    result["error"] = error
    return {action: result}


def _failed(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return True
    return any(isinstance(outcome, dict) and "error" in outcome for outcome in entry.values())


def _json_response(status: int, document: Any) -> web.Response:
    # The store's own content type, charset included.
    return web.Response(
        status=status, body=orjson.dumps(document), content_type="application/json", charset="UTF-8"
    )

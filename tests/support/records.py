"""Container-style records as the forwarder makes them, for feeding aggregators in tests."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from logferry.common import protocol
from logferry.common.protocol import EventTime
from logferry.common.records import record_id, source_id

Entry = tuple[EventTime, dict[str, Any]]


def container_entries(
    namespace: str, count: int, *, pod: str = "app-0", start_seq: int = 0, src: str | None = None
) -> list[Entry]:
    """``count`` records of one source, with contiguous ``_lf.seq`` and offset-based ids."""
    src = src or source_id("node-t", 1, abs(hash((namespace, pod))) % 10**9, 0)
    now = time.time()
    out = []
    for seq in range(start_seq, start_seq + count):
        out.append(
            (
                EventTime.from_float(now + seq / 1e6),
                {
                    "log": f"line {seq} of {pod} " + "x" * 120,
                    "stream": "stdout",
                    "kubernetes": {
                        "namespace_name": namespace,
                        "pod_name": pod,
                        "container_name": "main",
                        "container_id": "containerd://abc",
                        "host": "node-t",
                    },
                    "_lf": {"id": record_id(src, seq * 200), "src": src, "seq": seq},
                },
            )
        )
    return out


def wire_checkpoint(
    namespace: str,
    src: str,
    next_seq: int,
    *,
    state: str = "open",
    when: EventTime | None = None,
    pod: str = "app-0",
    **more: Any,
) -> Entry:
    """A forwarder checkpoint as issue 19 specifies it: every seq of ``src`` below
    ``next_seq`` is durable (``more``: ``lost_lines``, ``reason``, or fields to break it).
    Its id follows from what it says, so the same checkpoint sent again has the same id."""
    digest = hashlib.blake2b(f"{src}|{next_seq}|{state}".encode(), digest_size=12).hexdigest()
    lf: dict[str, Any] = {
        "kind": "checkpoint",
        "id": f"ckpt-{digest}",
        "src": src,
        "next_seq": next_seq,
        "state": state,
        "node": "node-t",
        **more,
    }
    kubernetes = {
        "namespace_name": namespace,
        "pod_name": pod,
        "container_name": "main",
        "container_id": "containerd://abc",
        "host": "node-t",
    }
    return (when or EventTime.from_float(time.time()), {"kubernetes": kubernetes, "_lf": lf})


def compressed_chunk(entries: list[Entry], chunk: str, tag: str = "kube.test") -> bytes:
    """A CompressedPackedForward message asking for an ack."""
    return protocol.encode_compressed_packed_forward(
        tag, protocol.pack_entries(entries), len(entries), chunk=chunk
    )

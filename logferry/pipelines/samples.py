"""Built-in sample records for the dry run: what container records look like on the wire
(docs/architecture.md, "Record format"), with the shapes filters meet in practice: plain
text, JSON with a level, an access log line, a Java stack trace split over several lines,
stderr, and an empty line."""

from __future__ import annotations

from typing import Any

_LINES: list[tuple[str, str, str, str]] = [
    # (pod, container, stream, log)
    ("web-7d9f8b6c5-x2x4q", "web", "stdout", "server started on :8080"),
    (
        "web-7d9f8b6c5-x2x4q",
        "web",
        "stdout",
        '{"level":"info","msg":"request done","status":200,"duration_ms":12.5}',
    ),
    (
        "web-7d9f8b6c5-x2x4q",
        "web",
        "stdout",
        '{"level":"debug","msg":"cache miss","key":"user:42","password":"hunter2"}',
    ),
    (
        "web-7d9f8b6c5-x2x4q",
        "web",
        "stdout",
        '10.0.0.7 GET /api/orders?id=42 HTTP/1.1 200 512 "curl/8.5.0"',
    ),
    ("web-7d9f8b6c5-x2x4q", "web", "stderr", "WARN slow query took 1532 ms"),
    ("api-5c6d7-abcde", "app", "stdout", "2026-11-25 10:15:42,117 ERROR [main] request failed"),
    ("api-5c6d7-abcde", "app", "stdout", "java.lang.IllegalStateException: boom"),
    ("api-5c6d7-abcde", "app", "stdout", "\tat com.example.Orders.place(Orders.java:42)"),
    ("api-5c6d7-abcde", "app", "stdout", "\tat com.example.Api.handle(Api.java:7)"),
    ("api-5c6d7-abcde", "app", "stdout", "2026-11-25 10:15:43,002 INFO [main] recovered"),
    ("worker-0", "worker", "stdout", ""),
    ("worker-0", "worker", "stderr", 'level=error msg="retrying" attempt=3 ü ✓'),
]


def builtin_samples(namespace: str) -> list[dict[str, Any]]:
    """Fresh sample records of ``namespace`` (the caller may change them)."""
    records: list[dict[str, Any]] = []
    seqs: dict[str, int] = {}
    for number, (pod, container, stream, log) in enumerate(_LINES):
        src = f"sample-{pod}-{container}"
        seq = seqs.get(src, 0)
        seqs[src] = seq + 1
        records.append(
            {
                "log": log,
                "stream": stream,
                "kubernetes": {
                    "namespace_name": namespace,
                    "pod_name": pod,
                    "container_name": container,
                    "container_id": f"containerd://{number:064x}",
                    "host": "node-1",
                    "labels": {"app": pod.split("-", 1)[0]},
                },
                "_lf": {"id": f"{src}:{seq * 100}", "src": src, "seq": seq},
                "@timestamp": f"2026-11-25T10:15:{number:02d}.000000000Z",
            }
        )
    return records

"""What loadgen's containers say: the content tables and the per-container message streams.

Three kinds of application log, all deterministic from a seed and numbered with ``seq=``:
web access lines (nginx-like, errors on stderr), JSON application logs, and Java/Spring lines
whose exceptions continue as stack-frame messages; about one message in ``long_every`` is a
2-40 KB response body dump, so the runtimes split it into parts.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass
from typing import Literal

import orjson

from logferry.tools.loadgen_formats import Stream

Kind = Literal["access", "json", "java"]

_PATHS = (
    "/",
    "/healthz",
    "/api/v1/orders",
    "/api/v1/orders/{n}",
    "/api/v1/users/{n}/cart",
    "/static/js/app.{h}.js",
    "/search?q={w}&page={p}",
    "/login",
    "/metrics",
)
_METHODS = ("GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE")
_STATUSES = (200,) * 14 + (201, 204, 301, 304, 400, 401, 403, 404, 404, 499, 500, 502, 503)
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 "
    "Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "kube-probe/1.29",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
)
_WORDS = ("order", "refund", "cart", "shoes", "invoice", "gift", "caf%C3%A9", "t-shirt")
_CUSTOMERS = ("Alice Martin", "Zoë Müller", "Bjørn Ødegård", "李雷", "José Núñez", "Sam Lee")
_LEVELS = ("debug",) * 10 + ("info",) * 70 + ("warn",) * 12 + ("error",) * 5
_EVENTS = (
    ("order placed", "orders.service"),
    ("payment authorised", "payments.client"),
    ("cache miss", "cache"),
    ("request completed", "http.server"),
    ("token refreshed", "auth.session"),
    ("retrying upstream call", "http.client"),
)
_JAVA_LINES = (
    ("INFO ", "c.e.payments.PaymentService", "Charged card ending {d4} amount={amt} EUR"),
    ("INFO ", "o.s.web.servlet.DispatcherServlet", "Completed initialization in {ms} ms"),
    ("DEBUG", "c.e.orders.OrderRepository", "Loaded order {n} with {p} items in {ms} ms"),
    ("WARN ", "c.z.hikari.pool.HikariPool", "HikariPool-1 - Connection is not available"),
    ("INFO ", "c.e.auth.TokenFilter", "Authenticated user {n} via bearer token"),
)
_FRAMES = (
    "com.example.payments.PaymentService.charge(PaymentService.java:{l})",
    "com.example.payments.api.PaymentController.create(PaymentController.java:{l})",
    "org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:{l})",
    "jakarta.servlet.http.HttpServlet.service(HttpServlet.java:{l})",
    "org.apache.catalina.core.ApplicationFilterChain.doFilter(ApplicationFilterChain.java:{l})",
    "org.apache.tomcat.util.threads.ThreadPoolExecutor.runWorker(ThreadPoolExecutor.java:{l})",
    "java.base/java.lang.Thread.run(Thread.java:{l})",
)


@dataclass(frozen=True)
class Clock:
    """The wall time of one tick in the shapes the log lines embed (all fixed width)."""

    clf: str
    iso_ms: str
    java: str

    @classmethod
    def at(cls, time_ns: int) -> Clock:
        """The shapes of ``time_ns`` (nanoseconds since the epoch), in UTC."""
        seconds, rest = divmod(time_ns, 1_000_000_000)
        tm = time.gmtime(seconds)
        ms = rest // 1_000_000
        return cls(
            time.strftime("%d/%b/%Y:%H:%M:%S +0000", tm),
            time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{ms:03d}Z",
            time.strftime("%Y-%m-%d %H:%M:%S", tm) + f".{ms:03d}",
        )


class Messages:
    """One container's message stream: deterministic from its seed, numbered with ``seq``."""

    def __init__(self, kind: Kind, seed: int, long_every: int) -> None:
        self.kind = kind
        self.rng = random.Random(seed)
        self.long_every = long_every
        self.seq = 0
        self._frames: list[str] = []  # the rest of a stack trace being written

    def next(self, clock: Clock) -> tuple[Stream, str]:
        """The next message (one line, no newline) and the stream it is written to."""
        seq = self.seq
        self.seq += 1
        if self._frames:
            return "stderr", f"{self._frames.pop(0)} seq={seq}"
        if self.long_every and self.rng.random() * self.long_every < 1:
            return "stdout", self._long(clock, seq)
        if self.kind == "access":
            return self._access(clock, seq)
        if self.kind == "json":
            return self._json(clock, seq)
        return self._java(clock, seq)

    def _access(self, clock: Clock, seq: int) -> tuple[Stream, str]:
        rng = self.rng
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if rng.random() < 0.02:
            return "stderr", (
                f"{clock.java[:19].replace('-', '/')} [error] 29#29: *{seq} upstream timed out "
                f"(110: Connection timed out) while reading response header from upstream, "
                f'client: {ip}, server: _, request: "GET /api/v1/orders HTTP/1.1", '
                f'upstream: "http://10.0.{rng.randrange(256)}.7:8080/api/v1/orders" seq={seq}'
            )
        path = rng.choice(_PATHS).format(
            n=rng.randrange(1, 10**6), h=f"{rng.getrandbits(32):08x}",
            w=rng.choice(_WORDS), p=rng.randrange(1, 20),
        )  # fmt: skip
        status, size = rng.choice(_STATUSES), rng.randrange(0, 60000)
        return "stdout", (
            f'{ip} - - [{clock.clf}] "{rng.choice(_METHODS)} {path} HTTP/1.1" {status} {size} '
            f'"-" "{rng.choice(_AGENTS)}" rt={rng.random() * 0.8:.3f} seq={seq}'
        )

    def _json(self, clock: Clock, seq: int) -> tuple[Stream, str]:
        rng = self.rng
        level = rng.choice(_LEVELS)
        msg, logger = rng.choice(_EVENTS)
        record: dict[str, object] = {"ts": clock.iso_ms, "level": level, "logger": logger}
        record["msg"] = msg
        record["trace_id"] = f"{rng.getrandbits(128):032x}"
        if rng.random() < 0.5:
            record["customer"] = rng.choice(_CUSTOMERS)
        record["duration_ms"] = round(rng.expovariate(1 / 40), 2)
        if level == "error":
            record["error"] = "context deadline exceeded"
        record["seq"] = seq
        return ("stderr" if level == "error" else "stdout"), orjson.dumps(record).decode()

    def _java(self, clock: Clock, seq: int) -> tuple[Stream, str]:
        rng = self.rng
        thread = f"nio-8080-exec-{rng.randrange(1, 11)}"
        if rng.random() < 0.015:
            # An exception: the header line now, its frames as the next messages (stderr).
            count = rng.randrange(4, 20)
            self._frames = [
                f"\tat {rng.choice(_FRAMES).format(l=rng.randrange(20, 900))}" for _ in range(count)
            ]
            self._frames.append(f"\t... {rng.randrange(10, 80)} more")
            return "stderr", (
                f"{clock.java} ERROR 1 --- [{thread}] c.e.payments.PaymentService : "
                f"java.lang.IllegalStateException: card processor returned 502 seq={seq}"
            )
        level, logger, template = rng.choice(_JAVA_LINES)
        text = template.format(
            d4=rng.randrange(10000), amt=f"{rng.randrange(1, 50000) / 100:.2f}",
            ms=rng.randrange(1, 3000), n=rng.randrange(1, 10**6), p=rng.randrange(1, 30),
        )  # fmt: skip
        return "stdout", f"{clock.java} {level} 1 --- [{thread}] {logger} : {text} seq={seq}"

    def _long(self, clock: Clock, seq: int) -> str:
        """A 2-40 KB message: a response body dump, ASCII only."""
        rng = self.rng
        size = rng.randrange(2048, 40961)
        blob = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        return (
            f'{{"ts":"{clock.iso_ms}","level":"debug","logger":"http.client",'
            f'"msg":"response body","body":"{blob}","seq":{seq}}}'
        )

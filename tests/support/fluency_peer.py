"""Fluency (org.komamitsu:fluency-fluentd), a third-party Java Forward client, as a test peer.

Stdlib only. `tests/peers/fluency/pom.xml` exists only so Maven resolves Fluency's classpath
from Maven Central into ~/.m2; `FluencySend.java` is compiled with javac against it. Both
results live in `.cache/peers/fluency/` (git-ignored): the classpath keyed by a hash of the
pom, the classes by a hash of the pom and the source, so an edit to either rebuilds, and a
run with a warm cache starts no Maven and no javac at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devtools.opensearch_node import OpenSearchNodeError
from devtools.opensearch_node import find_tool as find_jdk_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = REPO_ROOT / "tests" / "peers" / "fluency"
POM_PATH = PEER_DIR / "pom.xml"
SOURCE_PATH = PEER_DIR / "FluencySend.java"
MAIN_CLASS = "FluencySend"
CACHE_DIR = REPO_ROOT / ".cache" / "peers" / "fluency"
OUTPUT_TAIL_LINES = 40


class FluencyPeerError(RuntimeError):
    """The Fluency peer could not be built; the message says what is missing or failed."""


def find_tool(name: str) -> str:
    """Path of `java`, `javac` or `mvn`, or FluencyPeerError saying how to install it."""
    try:
        return find_jdk_tool(name, "the Fluency interoperability test (a Java client)")
    except OpenSearchNodeError as exc:
        raise FluencyPeerError(str(exc)) from None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())  # hash of hashes: no ambiguity between parts
    return h.hexdigest()[:16]


def tail(text: str, count: int = OUTPUT_TAIL_LINES) -> str:
    """The last `count` lines of a Java program's output, without its stack frames."""
    lines = [line for line in text.splitlines() if not line.startswith("\tat ")]
    return "\n".join(lines[-count:])


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialises builds, so two test processes never run Maven or javac for the same cache."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _resolve_classpath() -> str:
    """Fluency's classpath, from the cache or (first time, after a pom change) from Maven."""
    cached = CACHE_DIR / f"classpath-{_digest(POM_PATH.read_bytes())}.txt"
    if cached.is_file():
        classpath = cached.read_text().strip()
        # ~/.m2 may have been cleaned since: a classpath naming missing jars is resolved again.
        if classpath and all(Path(p).is_file() for p in classpath.split(os.pathsep)):
            return classpath
    mvn = find_tool("mvn")
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    cmd = [mvn, "-q", "-B", "-f", str(POM_PATH), "dependency:build-classpath",
           f"-Dmdep.outputFile={tmp}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not tmp.is_file():
        raise FluencyPeerError(
            f"Maven could not resolve {POM_PATH.relative_to(REPO_ROOT)} (exit "
            f"{result.returncode}); it needs Maven Central or a filled ~/.m2.\n"
            f"command: {' '.join(cmd)}\n{tail(result.stdout + result.stderr)}"
        )
    os.replace(tmp, cached)
    return cached.read_text().strip()


def _compile(classpath: str) -> Path:
    """Directory holding the compiled FluencySend classes, compiled on first use."""
    key = _digest(POM_PATH.read_bytes(), SOURCE_PATH.read_bytes(), classpath.encode())
    out_dir = CACHE_DIR / f"classes-{key}"
    if (out_dir / f"{MAIN_CLASS}.class").is_file():
        return out_dir
    javac = find_tool("javac")
    # Compiled aside and renamed into place: an interrupted javac never leaves a cache entry.
    tmp_dir = Path(tempfile.mkdtemp(prefix="classes-build-", dir=CACHE_DIR))
    cmd = [javac, "-nowarn", "-cp", classpath, "-d", str(tmp_dir), str(SOURCE_PATH)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise FluencyPeerError(f"javac failed on {SOURCE_PATH}:\n{result.stdout}{result.stderr}")
    tmp_dir.rename(out_dir)
    return out_dir


def build_fluency_client() -> list[str]:
    """The command prefix that runs FluencySend (arguments follow), building it if needed."""
    java = find_tool("java")
    with _build_lock():
        classpath = _resolve_classpath()
        classes = _compile(classpath)
    return [java, "-cp", os.pathsep.join([str(classes), classpath]), MAIN_CLASS]


def run_fluency(
    host: str,
    port: int,
    count: int,
    *,
    namespace: str,
    tag: str = "kube.fluency",
    ack: bool = True,
    chunk_bytes: int | None = None,
    timeout_s: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send `count` records to host:port with Fluency and return the finished process.

    Blocking (run it in a thread from async code). Exit code 0 means Fluency flushed every
    buffer and reported no error (in ack mode: every message was acknowledged); otherwise
    stderr says why. `chunk_bytes` is Fluency's buffer chunk retention size, roughly the
    size of each message it sends (FluencySend's default: 64 KiB).
    """
    cmd = [*build_fluency_client(), host, str(port), str(count), tag, namespace]
    if not ack:
        cmd.append("--no-ack")
    if chunk_bytes is not None:
        cmd += ["--chunk-bytes", str(chunk_bytes)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)

"""`make run`: the whole pipeline on this machine, then proof that nothing was lost.

Starts, on 127.0.0.1 and under ./run:

1. the local OpenSearch node (``scripts/opensearch start``; without Java, the aggregators
   write NDJSON files instead);
2. two aggregators and one forwarder (real ``logferry`` processes, configs in ./run/*/);
3. ``logferry loadgen``, writing container log files laid out like a node's
   ``/var/log/containers`` (docker and CRI, three namespaces, rotation, multi-KB lines).

A status line shows lines written, read, acked, indexed and the spool backlog. Ctrl-C (or
``--duration``) stops the load, lets the pipeline drain, stops every process cleanly, prints
where the logs are and runs ``logferry verify``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "run"
NODE = "local-node"
PREFIX = "demo"
INDEX = f"logs-{PREFIX}-*"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_opensearch() -> str | None:
    """The local node's URL, or None when it cannot run here (no Java)."""
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "opensearch"), "start"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        print(f"OpenSearch not available ({exc}); the aggregators write files instead.")
        return None
    return out.stdout.strip().splitlines()[-1]


class Process:
    """A child in its own session, so Ctrl-C reaches only this script, which stops the
    children in the right order."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=out, cwd=workdir, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self, timeout_s: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return int(await asyncio.to_thread(self.proc.wait, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return int(self.proc.wait())


class Daemon(Process):
    """``logferry <kind> --config <file>`` with its metrics port."""

    def __init__(self, name: str, kind: str, config: dict[str, Any]) -> None:
        workdir = RUN / name
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        config["http"] = {"listen_host": "127.0.0.1", "listen_port": self.http_port}
        config["log"] = {"level": "info", "format": "logfmt"}
        self.config_path = workdir / f"{kind}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = config
        args = [sys.executable, "-m", "logferry", kind, "--config", str(self.config_path)]
        super().__init__(name, args, workdir)

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Each metric summed over its labels ({} while the daemon is not answering)."""
        try:
            async with session.get(f"http://127.0.0.1:{self.http_port}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, OSError):
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{self.http_port}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError):
            return False


def aggregator_config(name: str, store: str | None) -> dict[str, Any]:
    workdir = RUN / name
    output: dict[str, Any] = (
        {"type": "opensearch", "urls": [store]}
        if store
        else {"type": "file", "directory": str(workdir / "out")}
    )
    return {
        "input": {
            "listen_host": "127.0.0.1",
            "listen_port": free_port(),
            "shared_key_file": str(shared_key_file()),
        },
        "spool": {"directory": str(workdir / "spool"), "max_bytes": "2GiB"},
        "dlq": {"directory": str(workdir / "dlq")},
        "output": output,
        # The local store is one node: a replica could never be assigned.
        "indices": {"replicas": 0},
    }


def forwarder_config(servers: list[str]) -> dict[str, Any]:
    workdir = RUN / "forwarder"
    return {
        "node_name": NODE,
        "spool": {"directory": str(workdir / "spool"), "max_bytes": "1GiB"},
        "source": {"path_glob": str(RUN / "node" / "containers" / "*.log")},
        "sender": {"servers": servers, "shared_key": shared_key_file().read_text().strip()},
    }


def shared_key_file() -> Path:
    """The run's shared key (authentication is on, as in a cluster), made once, 0600."""
    path = RUN / "shared-key"
    if not path.exists():
        RUN.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32) + "\n")
    return path


async def store_count(session: aiohttp.ClientSession, store: str | None) -> int | None:
    if store is None:
        return None
    # Log records only: the pattern also matches the accounting indices, whose accounting
    # records and checkpoints are logferry's own documents, not lines the loadgen wrote.
    records = {"query": {"bool": {"must_not": [{"exists": {"field": "_lf.kind"}}]}}}
    try:
        async with session.post(
            f"{store}/{INDEX}/_count?ignore_unavailable=true", json=records
        ) as response:
            body = await response.json()
            return int(body.get("count", 0))
    except (aiohttp.ClientError, OSError, ValueError):
        return None


def written(manifest: Path) -> int:
    try:
        return int(json.loads(manifest.read_text()).get("messages_total", 0))
    except (OSError, ValueError):
        return 0


class Status:
    """The live status line."""

    def __init__(self, store: str | None, fwd: Daemon, aggs: list[Daemon], manifest: Path):
        self.store, self.fwd, self.aggs, self.manifest = store, fwd, aggs, manifest
        self.tty = sys.stdout.isatty()
        self._last_print = 0.0

    async def sample(self, session: aiohttp.ClientSession) -> dict[str, int | None]:
        fwd = await self.fwd.metrics(session)
        aggs = [await agg.metrics(session) for agg in self.aggs]
        return {
            "written": written(self.manifest),
            "read": int(fwd.get("logferry_records_spooled_total", 0)),
            "acked": int(fwd.get("logferry_sender_records_acked_total", 0)),
            "indexed": await store_count(session, self.store),
            "spool": int(
                fwd.get("logferry_node_spool_bytes", 0)
                + sum(a.get("logferry_spool_bytes", 0) for a in aggs)
            ),
            # Spool bytes include delivered records until their segment file is recycled; what
            # is still owed is the pending count.
            "pending": int(
                fwd.get("logferry_node_spool_blocks", 0)
                + sum(a.get("logferry_spool_fragments", 0) for a in aggs)
            ),
        }

    def show(self, values: dict[str, int | None], *, final: bool = False) -> None:
        indexed = values["indexed"]
        line = (
            f"written {values['written']:>9,}  read {values['read']:>9,}  "
            f"acked {values['acked']:>9,}  "
            f"indexed {'-' if indexed is None else f'{indexed:,}':>9}  "
            f"backlog {values['pending'] or 0:>6,} chunks ({(values['spool'] or 0) / 1e6:.1f} MB "
            "of spool files)"
        )
        if self.tty:
            print("\r" + line, end="\n" if final else "", flush=True)
        elif final or time.monotonic() - self._last_print >= 5:
            print(line, flush=True)
            self._last_print = time.monotonic()


async def wait_for(condition: Any, timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(poll_s)
    return False


async def run(duration_s: float | None, rate: int, store_arg: str | None) -> int:
    if RUN.exists():
        shutil.rmtree(RUN)
    RUN.mkdir(parents=True)
    store = None if store_arg == "none" else (store_arg or start_opensearch())
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if store:
            # The demo's own indices from an earlier run go, so verify covers exactly this one.
            async with session.delete(f"{store}/{INDEX}?ignore_unavailable=true"):
                pass
        aggs = [
            Daemon(name, "aggregator", aggregator_config(name, store)) for name in ("agg0", "agg1")
        ]
        servers = [f"127.0.0.1:{a.config['input']['listen_port']}" for a in aggs]
        fwd = Daemon("forwarder", "forwarder", forwarder_config(servers))
        children: list[Process] = [*aggs, fwd]
        manifest = RUN / "node" / "manifest.json"
        try:
            for daemon in [*aggs, fwd]:

                async def is_ready(d: Daemon = daemon) -> bool:
                    if not d.alive():
                        raise SystemExit(f"{d.name} exited; see {d.log}")
                    return await d.ready(session)

                if not await wait_for(is_ready, 60):
                    raise SystemExit(f"{daemon.name} did not become ready; see {daemon.log}")
            loadgen = Process(
                "loadgen",
                [
                    sys.executable, "-m", "logferry", "loadgen",
                    "--dir", str(RUN / "node"),
                    "--manifest", str(manifest),
                    "--namespace-prefix", PREFIX,
                    "--rate", str(rate),
                    "--rotate-bytes", "8MiB",
                    "--quiet",
                ],
                RUN / "loadgen",
            )  # fmt: skip
            children.append(loadgen)
            print(f"logferry is running: {len(aggs)} aggregators, 1 forwarder, loadgen at "
                  f"{rate:,} lines/s into {RUN / 'node' / 'containers'}")  # fmt: skip
            print("Ctrl-C stops the load, drains the pipeline and verifies it.\n")
            status = Status(store, fwd, aggs, manifest)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            started = time.monotonic()
            while not stop.is_set():
                status.show(await status.sample(session))
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    break
                if not all(child.alive() for child in children):
                    gone = [c.name for c in children if not c.alive()]
                    print(f"\n{', '.join(gone)} exited; see {RUN}/*/*.log")
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            # Second Ctrl-C from here on: default behaviour (the children are in their own
            # sessions and get stopped by the finally below).
            loop.remove_signal_handler(signal.SIGINT)
            print("\nstopping the load; waiting for the pipeline to drain...")
            await loadgen.stop()

            async def drained() -> bool:
                values = await status.sample(session)
                status.show(values)
                written_all = values["written"] or 0
                done = (values["acked"] or 0) >= written_all and values["pending"] == 0
                indexed = values["indexed"]
                return done and (store is None or (indexed or 0) >= written_all)

            await wait_for(drained, 120, poll_s=1.0)
            status.show(await status.sample(session), final=True)
            await snapshot([fwd, *aggs])
        finally:
            for child in reversed(children):  # loadgen, forwarder, then the aggregators
                await child.stop()
    print()
    print_where(store, aggs, fwd)
    return verify(store, aggs)


async def snapshot(daemons: list[Daemon]) -> None:
    """``logferry status --once --json`` of the drained pipeline, kept in the run's folder:
    what a script (or the test of this command) reads."""
    urls = [arg for d in daemons for arg in ("--url", f"http://127.0.0.1:{d.http_port}")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "logferry", "status", "--once", "--json", *urls,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    path = RUN / "status.json"
    path.write_bytes(out)
    try:
        view = json.loads(out)
    except ValueError:
        print(f"logferry status gave no view (exit {proc.returncode})")
        return
    backlog = sum(
        d["figures"].get("backlog_chunks", 0) + d["figures"].get("backlog_blocks", 0)
        for d in view["daemons"]
        if d["up"]
    )
    print(f"logferry status: {len(view['tenants'])} tenants, backlog {backlog:g} ({path})")


def print_where(store: str | None, aggs: list[Daemon], fwd: Daemon) -> None:
    print("Where the logs went:")
    print(f"  container log files   {RUN / 'node' / 'containers'} (-> {RUN / 'node' / 'pods'})")
    if store:
        print(f"  OpenSearch            {store}  indices {INDEX}")
        print(f"    curl -s '{store}/_cat/indices/{INDEX}?v'")
        print(f"    curl -s '{store}/{INDEX}/_search?size=3&pretty' \\")
        query = '{"query":{"match":{"stream":"stderr"}}}'
        print(f"      -H 'Content-Type: application/json' -d '{query}'")
    else:
        for agg in aggs:
            print(f"  NDJSON files          {agg.config['output']['directory']}")
    print(f"  daemon logs, configs  {RUN}/agg0, {RUN}/agg1, {RUN}/forwarder")
    print(f"  metrics               http://127.0.0.1:{fwd.http_port}/metrics (while running)")
    urls = " ".join(f"--url http://127.0.0.1:{d.http_port}" for d in [fwd, *aggs])
    print(f"    .venv/bin/logferry status {urls}")
    print()


def verify(store: str | None, aggs: list[Daemon]) -> int:
    if store is None:
        print("verify needs the store; skipped (no OpenSearch here).")
        return 0
    args = [
        sys.executable, "-m", "logferry", "verify",
        "--url", store,
        "--index", INDEX,
        "--positions", str(RUN / "forwarder" / "positions"),
        "--manifest", str(RUN / "node" / "manifest.json"),
        "--files", str(RUN / "node" / "pods" / "*" / "*" / "*.log*"),
        "--node", NODE,
    ]  # fmt: skip
    for agg in aggs:
        if Path(agg.config["dlq"]["directory"]).is_dir():  # made at the first dead letter
            args += ["--dlq", agg.config["dlq"]["directory"]]
    print("$ logferry verify --url", store, "--index", f"'{INDEX}'", "...")
    return subprocess.run(args, check=False).returncode


def main() -> int:
    global RUN
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None, help="stop after this many s")
    parser.add_argument("--rate", type=int, default=2000, help="lines per second (loadgen)")
    parser.add_argument(
        "--store",
        default=None,
        help="an OpenSearch URL to use instead of starting the local node; 'none' for files",
    )
    parser.add_argument("--workdir", type=Path, default=RUN, help="where everything goes")
    args = parser.parse_args()
    RUN = args.workdir.resolve()
    os.chdir(REPO)
    return asyncio.run(run(args.duration, args.rate, args.store))


if __name__ == "__main__":
    sys.exit(main())

"""What pod metadata from the API server costs the forwarder, on realistic content.

``logferry loadgen`` writes one node's container logs; a local server speaking the pods
list/watch protocol (tests/support/fake_kube_api.py: no real API server runs here) serves
those pods with eight labels, two annotations and two containers each. The same files are
shipped twice by a real forwarder to a real aggregator (null output): with
``kubernetes.enabled`` off, then on. Prints the forwarder's CPU seconds per million lines
and peak RSS for each, and their ratio measured back to back.

Run: ``.venv/bin/python bench/bench_enrichment.py [--lines 400000]``. Asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_multiline import ship, write_logs  # noqa: E402
from process_stats import report  # noqa: E402

from tests.support.fake_kube_api import FakeKubeApi, pod  # noqa: E402

NODE = "bench"


def serve_pods(api: FakeKubeApi, logs: Path) -> int:
    """A pod object for every pod folder loadgen wrote (``<ns>_<pod>_<uid>``)."""
    count = 0
    for folder in sorted((logs / "pods").iterdir()):
        namespace, name, uid = folder.name.split("_")
        labels = {
            "app.kubernetes.io/name": name.rsplit("-", 2)[0],
            "app.kubernetes.io/instance": f"{name.rsplit('-', 2)[0]}-prod",
            "app.kubernetes.io/version": "1.42.7",
            "pod-template-hash": "5d9c7b8f4d",
            "team": namespace,
            "tier": "backend",
            "zone": "eu-west-1a",
            "release": "stable",
        }
        containers = {c.name: f"registry.example.com/{c.name}:1.42.7" for c in folder.iterdir()}
        annotations = {"logferry.io/owner": namespace, "prometheus.io/scrape": "true"}
        api.upsert(pod(namespace, name, uid, NODE, labels, annotations, containers))
        count += 1
    return count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=400_000)
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-k8s-", dir=str(REPO / ".cache")))
    api = FakeKubeApi()
    try:
        logs = work / "node"
        started = time.perf_counter()
        write_logs(logs, args.lines)
        await api.start()
        pods = serve_pods(api, logs)
        print(
            f"loadgen: {args.lines:,} lines in {time.perf_counter() - started:.1f} s; {pods} pods"
        )
        off = await ship(work, logs, args.lines, {"node_name": NODE})
        on = await ship(
            work,
            logs,
            args.lines,
            {
                "node_name": NODE,
                "kubernetes": {
                    "enabled": True,
                    "api_url": api.url,
                    "token_file": None,
                    "ca_file": None,
                },
            },
        )
        for name, run in (("metadata off", off), ("metadata on (labels etc.)", on)):
            print(
                f"{name:28s}: forwarder {run['cpu_s'] / args.lines * 1e6:.2f} CPU s per million "
                f"lines, peak RSS {run['rss_mb']:.0f} MB"
            )
        print(f"ratio on/off: {on['cpu_s'] / off['cpu_s']:.2f}")
    finally:
        await api.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()

"""loadgen writes what a Kubernetes node holds, and its manifest matches what the forwarder's
reader makes of the files: one record per logical message, split lines merged back intact."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from logferry.forwarder.entries import Entry
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.reader import Checkpoint, SourceReader
from logferry.tools.loadgen import (
    PART_BYTES,
    LoadgenError,
    LoadgenOptions,
    Manifest,
    Pacer,
    build_parser,
    loadgen_main,
    options_from_args,
    render_message,
    run_loadgen,
    split_message,
)
from tests.support.net import wait_until

REPO = Path(__file__).resolve().parents[2]
KUBELET_NAME = re.compile(
    r"^(?P<pod>[a-z0-9][-a-z0-9.]*)_(?P<namespace>[a-z0-9][-a-z0-9]*)_"
    r"(?P<container>[a-z0-9][-a-z0-9]*)-(?P<id>[0-9a-f]{64})\.log$"
)
ROTATED_NAME = re.compile(r"^0\.log\.\d{8}-\d{6}(\.\d{6})?$")
RUN_FOREVER = ("--rate", "5000", "--seed", "3")  # no --lines: until SIGTERM
SEQ = re.compile(r"seq[=\":]+(\d+)")


def read_records(path: str | Path) -> list[Entry]:
    reader = SourceReader(Checkpoint(0, 0), max_line_bytes=1 << 20)
    data = Path(path).read_bytes()
    records = reader.feed(data).records
    return records + reader.finish().records


def raw_messages(path: str | Path, fmt: str) -> list[str]:
    """The file's logical messages, parts joined by a reference parser of the test's own."""
    messages, open_parts = [], ""
    for line in Path(path).read_bytes().splitlines():
        if fmt == "docker":
            text = json.loads(line)["log"]
            final = text.endswith("\n")
            text = text.removesuffix("\n")
        else:
            _ts, _stream, tag, text = line.decode().split(" ", 3)
            final = tag == "F"
        open_parts += text
        if final:
            messages.append(open_parts)
            open_parts = ""
    assert open_parts == ""
    return messages


def logs(root: Path) -> list[Path]:
    return list((root / "pods").glob("*/*/0.log"))


def options(root: Path, **overrides: object) -> LoadgenOptions:
    base: dict[str, object] = {"root": root, "rate_per_s": 0.0, "lines": 600, "seed": 7}
    base.update(overrides)
    return LoadgenOptions(**base)  # type: ignore[arg-type]


def test_files_are_laid_out_like_a_kubelet_node_and_names_parse(tmp_path: Path) -> None:
    manifest = run_loadgen(options(tmp_path, namespaces=2, pods=3, containers=2))

    links = sorted((tmp_path / "containers").iterdir())
    assert len(links) == 2 * 3 * 2
    by_link = {entry.link: entry for entry in manifest.files}
    assert set(by_link) == {str(link) for link in links}
    for link in links:
        match = KUBELET_NAME.match(link.name)
        assert match is not None, link.name
        target = os.readlink(link)
        assert os.path.isabs(target)
        assert Path(target).parents[2] == tmp_path / "pods"
        pod_dir, container, file_name = Path(target).parts[-3:]
        namespace, pod, uid = pod_dir.split("_")
        assert file_name == "0.log"
        assert (namespace, pod, container) == (match["namespace"], match["pod"], match["container"])
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uid
        )
        meta = parse_file_name(str(link), "node-1")
        entry = by_link[str(link)]
        assert meta is not None
        assert (meta.namespace_name, meta.pod_name) == (entry.namespace, entry.pod)
        assert (meta.container_name, meta.container_id) == (entry.container, entry.container_id)
        st = os.stat(link)
        assert (st.st_dev, st.st_ino) == (entry.device, entry.inode)
    assert {entry.namespace for entry in manifest.files} == {"team-a", "team-b"}
    assert {entry.format for entry in manifest.files} == {"docker", "cri"}


def test_every_file_generation_reads_back_as_its_manifest_messages(tmp_path: Path) -> None:
    manifest = run_loadgen(
        options(tmp_path, lines=3000, long_every=15, rotate_bytes=256 * 1024, seed=11)
    )
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["finished"] is not None
    assert on_disk["messages_total"] == 3000 == sum(f["messages"] for f in on_disk["files"])
    assert any(entry.rotated for entry in manifest.files)
    split = 0
    seqs: dict[str, list[int]] = defaultdict(list)
    for entry in manifest.files:
        records = read_records(entry.path)
        assert len(records) == entry.messages, entry.path
        assert os.path.getsize(entry.path) == entry.bytes
        assert Path(entry.path).read_bytes().count(b"\n") == entry.lines
        assert not any(r.record.lf.malformed or r.record.lf.truncated for r in records)
        logs = [r.record.log for r in records]
        # Split messages come back byte-identical to the parts the file holds, joined.
        assert logs == raw_messages(entry.path, entry.format)
        split += sum(len(log.encode()) > PART_BYTES for log in logs)
        for log in logs:
            match = SEQ.search(log)
            assert match is not None, log[:200]
            seqs[entry.link].append(int(match[1]))
    assert split >= 3
    # Per container, the counters run on without a gap across rotations.
    for numbers in seqs.values():
        assert numbers == list(range(len(numbers)))


def test_long_messages_are_split_like_the_runtimes_and_merge_back_identically(
    tmp_path: Path,
) -> None:
    text = ("x" * (PART_BYTES - 1) + "é" + "y" * 30000).encode()  # a 2-byte char on the cut
    for fmt in ("docker", "cri"):
        data, lines = render_message(fmt, "stderr", text, "2026-11-25T19:50:31.123456789Z")
        physical = data.splitlines()
        assert lines == len(physical) == 3
        if fmt == "docker":
            parts = [json.loads(line)["log"] for line in physical]
            assert [p.endswith("\n") for p in parts] == [False, False, True]
            assert all(len(p.encode()) <= PART_BYTES for p in parts)
        else:
            assert [line.split(b" ")[2] for line in physical] == [b"P", b"P", b"F"]
        path = tmp_path / f"{fmt}.log"
        path.write_bytes(data)
        [record] = read_records(path)
        assert record.record.log.encode() == text
        assert record.record.stream == "stderr"


def test_split_message_ends_with_an_empty_part_on_an_exact_multiple() -> None:
    assert split_message(b"") == [b""]
    assert split_message(b"a" * PART_BYTES) == [b"a" * PART_BYTES, b""]
    assert split_message(b"a" * (PART_BYTES + 1)) == [b"a" * PART_BYTES, b"a"]


def test_docker_lines_escape_html_characters_like_docker() -> None:
    data, _ = render_message("docker", "stdout", b"<a href=x>&</a>", "2026-11-25T19:50:31.1Z")
    assert b"<" not in data
    assert b"&" not in data
    assert json.loads(data)["log"] == "<a href=x>&</a>\n"


def test_rotation_renames_the_file_and_keep_rotated_deletes_only_the_oldest(
    tmp_path: Path,
) -> None:
    manifest = run_loadgen(
        options(tmp_path, namespaces=1, pods=1, lines=4000, rotate_bytes=64 * 1024, keep_rotated=2)
    )
    files = manifest.files  # per container, in the order the generations were written
    rotated = [entry for entry in files if entry.rotated]
    assert len(rotated) >= 5
    assert [entry.deleted for entry in rotated] == [True] * (len(rotated) - 2) + [False, False]
    for entry in rotated:
        assert ROTATED_NAME.match(Path(entry.path).name), entry.path
        assert os.path.exists(entry.path) != entry.deleted
        assert entry.bytes >= 64 * 1024
    names = [Path(entry.path).name for entry in rotated]
    assert names == sorted(set(names))  # unique, and they sort in rotation order
    kept_names = names[-2:]
    directory = Path(files[-1].path).parent
    assert sorted(p.name for p in directory.iterdir()) == sorted(["0.log", *kept_names])
    live = files[-1]
    assert not live.rotated
    assert Path(live.path).name == "0.log"
    assert os.stat(live.link).st_ino == live.inode == os.stat(live.path).st_ino
    assert len({entry.inode for entry in files if not entry.deleted}) == 3


def test_the_same_seed_writes_the_same_files(tmp_path: Path) -> None:
    def shape(manifest: Manifest) -> list[tuple[str, int, int, int]]:
        return [
            (Path(f.link).name, f.messages, f.lines, f.bytes) for f in manifest.files
        ]  # timestamps differ between runs, but have a fixed width

    first = run_loadgen(options(tmp_path / "a", lines=1500, rotate_bytes=100_000))
    second = run_loadgen(options(tmp_path / "b", lines=1500, rotate_bytes=100_000))
    other = run_loadgen(options(tmp_path / "c", lines=1500, seed=8))
    assert shape(first) == shape(second)
    assert {Path(f.link).name for f in other.files}.isdisjoint(
        {Path(f.link).name for f in first.files}
    )


def test_duration_writes_exactly_the_rate_times_the_duration(tmp_path: Path) -> None:
    manifest = run_loadgen(options(tmp_path, lines=None, rate_per_s=1000.0, duration_s=0.2))
    assert manifest.messages_total == 200
    assert manifest.finished is not None


def test_pacer_releases_messages_by_the_rate_and_stops_at_the_limits() -> None:
    pacer = Pacer(rate_per_s=1000.0, lines=120)
    assert pacer.due(0.05) == 50
    pacer.sent = 50
    assert pacer.due(0.05) == 0
    assert pacer.due(0.2) == 70  # capped by lines
    pacer.sent = 120
    assert pacer.finished(0.2)
    unpaced = Pacer(rate_per_s=0.0, duration_s=1.0, burst=10)
    assert unpaced.due(0.0) == 10
    assert not unpaced.finished(0.5)
    assert unpaced.finished(1.0)
    behind = Pacer(rate_per_s=1000.0, duration_s=1.0, burst=100)
    assert behind.due(5.0) == 100  # catches up a burst at a time, up to the duration's worth
    assert not behind.finished(5.0)


def test_an_existing_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    run_loadgen(options(tmp_path, lines=10))
    with pytest.raises(LoadgenError, match="already exists"):
        run_loadgen(options(tmp_path, lines=10))
    with pytest.raises(LoadgenError, match="namespace-prefix"):
        run_loadgen(options(tmp_path, namespace_prefix="Team_A"))


def test_command_line_parses_units_and_formats(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--dir", str(tmp_path), "--rotate-bytes", "2MiB", "--formats", "cri", "--lines", "5"]
    )
    parsed = options_from_args(args)
    assert parsed.rotate_bytes == 2 * 1024 * 1024
    assert parsed.formats == ("cri",)
    assert parsed.manifest_path == tmp_path / "manifest.json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--dir", str(tmp_path), "--formats", "xml"])
    assert loadgen_main(["--dir", str(tmp_path), "--lines", "5", "--rate", "0", "--quiet"]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["messages_total"] == 5


async def test_sigterm_finishes_the_batch_and_writes_a_complete_manifest(tmp_path: Path) -> None:
    manifest_path = tmp_path / "manifest.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logferry.tools.loadgen",
        "--dir",
        str(tmp_path),
        *RUN_FOREVER,
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Until the manifest exists and messages are being written (or loadgen gave up).
        await wait_until(
            lambda: (
                proc.returncode is not None
                or (manifest_path.exists() and any(p.stat().st_size for p in logs(tmp_path)))
            ),
            timeout_s=10,
            what="a manifest and messages being written",
        )
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        stderr = err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert "messages" in stderr
    assert "rotations" in stderr
    assert_complete_manifest(manifest_path)


def assert_complete_manifest(manifest_path: Path) -> None:
    """The manifest says the run finished, and every file's size and messages are on disk."""
    manifest = json.loads(manifest_path.read_text())
    assert manifest["finished"] is not None
    assert manifest["messages_total"] > 0
    assert manifest["messages_total"] == sum(f["messages"] for f in manifest["files"])
    for entry in manifest["files"]:
        assert os.path.getsize(entry["path"]) == entry["bytes"]
        assert len(read_records(entry["path"])) == entry["messages"]

"""A tenant that controls its own pod log folder cannot make the forwarder read anything else:
links out of the pods root, into another tenant's folder, symlinks swapped in before the open,
FIFOs. Each refusal is counted by reason and logged once, not at every rescan."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from logferry.forwarder.config import SourceSettings
from logferry.forwarder.discovery import Discovery
from logferry.forwarder.metadata import ContainerMeta, parse_file_name
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.pathguard import RefusedFileError, check_target, open_pod_log
from tests.support.forwarder_app import forwarder_in
from tests.support.kubelet import container_log, glob_of, link_name

ROOT = "/var/log/pods"


def meta(ns: str = "shop", pod: str = "web-1", container: str = "app") -> ContainerMeta:
    found = parse_file_name(f"/var/log/containers/{link_name(ns, pod, container)}", "n1")
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (f"{ROOT}/shop_web-1_0f1e/app/0.log", None),
        (f"{ROOT}/shop_web-1_0f1e/app/0.log.20261125-195031", None),  # rotated by kubelet
        (f"{ROOT}/shop_web-1_0f1e/app/12.log", None),  # after 12 container restarts
        ("/etc/shadow", "outside_pods_root"),
        ("/proc/self/environ", "outside_pods_root"),
        ("/var/log/podsX/shop_web-1_0f1e/app/0.log", "outside_pods_root"),
        (ROOT, "outside_pods_root"),
        (f"{ROOT}/bank_vault-0_77aa/app/0.log", "wrong_owner"),  # another tenant's log
        (f"{ROOT}/shop_web-2_0f1e/app/0.log", "wrong_owner"),  # another pod of the same one
        (f"{ROOT}/shop_web-1_0f1e/sidecar/0.log", "wrong_owner"),  # another container
        (f"{ROOT}/shop_web-1_0f1e/app/secret.txt", "not_pod_layout"),
        (f"{ROOT}/shop_web-1_0f1e/app/sub/0.log", "not_pod_layout"),
        (f"{ROOT}/shop_web-1_0f1e/0.log", "not_pod_layout"),
        (f"{ROOT}/0.log", "not_pod_layout"),
    ],
)
def test_only_the_linked_containers_own_log_under_the_pods_root_may_be_read(
    target: str, reason: str | None
) -> None:
    assert check_target(target, ROOT, meta()) == reason


def test_open_refuses_symlinks_anywhere_below_the_root_and_non_regular_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pods"
    own = container_log(tmp_path, "shop", "web-1", body=b"mine\n")
    other = container_log(tmp_path, "bank", "vault-0", body=b"not yours\n")
    fd, st = open_pod_log(str(own.path), str(root))
    assert os.pread(fd, 100, 0) == b"mine\n"
    assert (st.st_dev, st.st_ino) == (os.stat(own.path).st_dev, os.stat(own.path).st_ino)
    os.close(fd)
    # The file itself swapped for a symlink after the check:
    own.path.unlink()
    own.path.symlink_to(other.path)
    with pytest.raises(RefusedFileError) as refused:
        open_pod_log(str(own.path), str(root))
    assert refused.value.reason == "symlink"
    # A folder on the way swapped for a symlink to another tenant's folder (same file name):
    container_dir = own.path.parent
    own.path.unlink()
    container_dir.rmdir()
    container_dir.symlink_to(other.path.parent)
    with pytest.raises(RefusedFileError) as refused:
        open_pod_log(str(own.path), str(root))
    assert refused.value.reason == "symlink"
    # A FIFO cannot hang the open (O_NONBLOCK), and is not read:
    container_dir.unlink()
    container_dir.mkdir()
    os.mkfifo(own.path)
    with pytest.raises(RefusedFileError) as refused:
        open_pod_log(str(own.path), str(root))
    assert refused.value.reason == "not_regular"
    with pytest.raises(RefusedFileError) as refused:
        open_pod_log("/etc/hostname", str(root))
    assert refused.value.reason == "outside_pods_root"


def refusal_warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        r.__dict__["logferry_fields"]
        for r in caplog.records
        if r.getMessage() == "discovery.file_refused" and r.levelno == logging.WARNING
    ]


def test_links_out_of_the_pods_root_or_into_another_tenant_are_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "node-secret"
    secret.write_text("root:$6$hash\n")
    honest = container_log(tmp_path, "shop", "web-1")
    victim = container_log(tmp_path, "bank", "vault-0", body=b"bank data\n")
    # tenant "evil" replaced its own 0.log with a link to a node file ...
    evil = container_log(tmp_path, "evil", "x-1")
    evil.path.unlink()
    evil.path.symlink_to(secret)
    # ... and a link in containers/ named for "evil" points into the bank's folder.
    thief = tmp_path / "containers" / link_name("evil", "x-2")
    thief.symlink_to(victim.path)
    registry = CollectorRegistry()
    discovery = Discovery(
        SourceSettings(path_glob=glob_of(tmp_path)), "n1", metrics=ForwarderMetrics(registry)
    )
    for _ in range(3):  # rescans do not repeat the warnings or the counts
        found = discovery.scan()
        assert sorted(found) == sorted([str(honest.link), str(victim.link)])
    assert discovery.stats.skipped == {"outside_pods_root": 1, "wrong_owner": 1}

    def skipped(reason: str) -> float:
        value = registry.get_sample_value("logferry_files_skipped_total", {"reason": reason})
        return value or 0.0

    assert skipped("outside_pods_root") == 1
    assert skipped("wrong_owner") == 1
    warned = refusal_warnings(caplog)
    assert sorted((w["reason"], w["target"]) for w in warned) == sorted(
        [
            ("outside_pods_root", str(secret.resolve())),
            ("wrong_owner", str(victim.path.resolve())),
        ]
    )
    # Gone, then back: a new incident, warned again.
    thief.unlink()
    discovery.scan()
    thief.symlink_to(victim.path)
    discovery.scan()
    assert skipped("wrong_owner") == 2
    assert len(refusal_warnings(caplog)) == 3


def test_a_symlink_swapped_in_between_the_scan_and_the_open_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    log = container_log(tmp_path, "shop", "web-1", body=b"x\n")
    fwd = forwarder_in(tmp_path)
    found = fwd.discovery.scan()
    log.path.unlink()
    log.path.symlink_to(secret)  # after the scan resolved and checked it
    assert not fwd._open(found[str(log.link)])
    assert fwd._tails == {}
    sample = fwd.registry.get_sample_value("logferry_files_skipped_total", {"reason": "symlink"})
    assert sample == 1
    assert [w["reason"] for w in refusal_warnings(caplog)] == ["symlink"]


def test_a_file_replaced_between_the_scan_and_the_open_is_not_opened_under_the_old_identity(
    tmp_path: Path,
) -> None:
    log = container_log(tmp_path, "shop", "web-1", body=b"old\n")
    fwd = forwarder_in(tmp_path)
    found = fwd.discovery.scan()
    replacement = log.path.with_name("new")
    replacement.write_bytes(b"new\n")
    os.replace(replacement, log.path)  # a rotation: same name, another inode
    assert not fwd._open(found[str(log.link)])  # the next scan sees it as it is now
    assert fwd._tails == {}
    assert not fwd.registry.get_sample_value("logferry_files_skipped_total", {"reason": "symlink"})
    assert fwd._open(fwd.discovery.scan()[str(log.link)])
    assert len(fwd._tails) == 1
    for tail in fwd._tails.values():
        tail.close()


def test_a_fifo_planted_as_a_log_cannot_hang_the_forwarder(tmp_path: Path) -> None:
    log = container_log(tmp_path, "shop", "web-1", body=b"x\n")
    fwd = forwarder_in(tmp_path)
    found = fwd.discovery.scan()
    log.path.unlink()
    os.mkfifo(log.path)  # no writer ever opens it: a blocking open would never return
    opened = threading.Event()

    def try_open() -> None:
        fwd._open(found[str(log.link)])
        opened.set()

    worker = threading.Thread(target=try_open, daemon=True)
    worker.start()
    assert opened.wait(5), "opening a FIFO blocked"
    assert fwd._tails == {}
    assert (
        fwd.registry.get_sample_value("logferry_files_skipped_total", {"reason": "not_regular"})
        == 1
    )


def docker_layout(tmp_path: Path, ns: str, pod: str, cid: str, owner_id: str) -> Path:
    """cri-dockerd's layout: the containers/ link named with ``owner_id`` -> pods/.../0.log
    -> docker's ``<cid>/<cid>-json.log``."""
    docker = tmp_path / "docker" / cid / f"{cid}-json.log"
    docker.parent.mkdir(parents=True, exist_ok=True)
    docker.write_bytes(b'{"log":"hi\\n","stream":"stdout","time":"2026-11-25T19:50:31Z"}\n')
    hop = tmp_path / "pods" / f"{ns}_{pod}_uid-{pod}" / "app" / "0.log"
    hop.parent.mkdir(parents=True, exist_ok=True)
    hop.symlink_to(docker)
    link = tmp_path / "containers" / f"{pod}_{ns}_app-{owner_id}.log"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(hop)
    return link


def test_docker_json_file_logs_are_read_only_for_their_own_container(tmp_path: Path) -> None:
    own, other = "a" * 64, "b" * 64
    mine = docker_layout(tmp_path, "shop", "web-1", own, own)
    # A link named for container "b..." whose chain ends in container "c..."'s log.
    stolen = docker_layout(tmp_path, "evil", "x-1", "c" * 64, other)
    settings = SourceSettings(path_glob=glob_of(tmp_path), docker_root=tmp_path / "docker")
    discovery = Discovery(settings, "n1")
    found = discovery.scan()
    assert list(found) == [str(mine)]
    assert found[str(mine)].real_path == str(tmp_path / "docker" / own / f"{own}-json.log")
    assert discovery.stats.skipped == {"wrong_owner": 1}
    fd, _st = open_pod_log(found[str(mine)].real_path, str(discovery.docker_root))
    os.close(fd)
    assert stolen.exists()
    # Without a docker root, nothing outside the pods root is read.
    plain = Discovery(SourceSettings(path_glob=glob_of(tmp_path), docker_root=None), "n1")
    assert plain.scan() == {}
    assert plain.stats.skipped == {"outside_pods_root": 2}

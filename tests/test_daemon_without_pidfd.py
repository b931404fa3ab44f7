"""A daemon on a kernel without ``pidfd_open(2)``: the TX2's (L4T R32, Linux 4.9).

The daemon used to end at its start there ("cannot start: Function not implemented"): its worker
processes, the live-fidelity shadow worker among them, were watched through pidfds, and a
region's owner too. The daemon runs here under a seccomp filter that has the real kernel refuse
``pidfd_open`` with ``ENOSYS`` (tests/without_pidfd/sitecustomize.py), for it and its workers;
its code is unchanged. It must start, serve, see a worker's death and restart it, and see a
region owner's exit, all without a pidfd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess

from .conftest import wait_until
from .test_daemon_shm import CRASHING_CLIENT, SHM

WITHOUT_PIDFD = Path(__file__).resolve().parent / "without_pidfd"


def _fd_links(pid: int) -> list[str]:
    links = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except FileNotFoundError:
            pass
    return links


def test_a_daemon_serves_watches_its_workers_and_region_owners_without_pidfds(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    env = {"ADAPTD_TEST_NO_PIDFD": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(WITHOUT_PIDFD), os.environ.get("PYTHONPATH")) if p)}
    d = DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off", "isolation": "process"}},
                            env=env)
    try:
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        assert "Seccomp:\t2" in status, "the filter is in place"
        x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
        with Client(d.endpoint, timeout_ms=30_000) as c:
            placements = [p for p in c.placements()["placements"] if p["runtime"] == "litert"]
            name = placements[0]["name"]
            assert c.infer(model, x, variant="float32", placement=name).header["placement"] == name
            assert not [link for link in _fd_links(d.proc.pid) if "pidfd" in link]

            # a worker's death is seen, its placement restarted, and it serves again
            dead = placements[0]["worker_pid"]
            os.kill(dead, signal.SIGKILL)
            wait_until(lambda: next(p for p in c.placements()["placements"] if p["name"] == name)["restarts"] == 1,
                       "the worker's restart")
            again = next(p for p in c.placements()["placements"] if p["name"] == name)
            assert again["worker_pid"] != dead
            assert c.infer(model, x, variant="float32", placement=name).header["placement"] == name

        # a region's owner that dies: its region is ended
        owner = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, d.endpoint], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            region = owner.stdout.readline().strip()
            with Client(d.admin_endpoint) as admin:
                assert any(r["region"] == region and r["owner_pid"] == owner.pid for r in admin.shm_regions())
                owner.kill()
                owner.wait()
                assert all(r["region"] != region for r in admin.shm_regions())   # (settled before answering)
            assert not (SHM / region).exists()
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log()
    assert "Function not implemented" not in d.log()

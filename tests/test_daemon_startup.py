"""Start-up and exposure: one daemon per socket and store, every start-up failure one line and no
leftovers, the runtime directory's owner, the admin endpoint, tcp beyond loopback only with
CurveZMQ, and CurveZMQ itself end to end (real keys, real sockets, real daemons)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from adaptd.clients.client import Client
from adaptd.clients.errors import RequestTimeout
from adaptd.tools.launch import DaemonProcess, to_toml

from .conftest import taken_port
from adaptd.wire.auth import CurveKeys, new_keypair


def serve(config_path: Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptd", "serve", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout_s)


def write_config(tmp_path: Path, repo: Path, **tables) -> tuple[Path, Path]:
    runtime = Path(f"/tmp/adaptd-t-{uuid.uuid4().hex[:10]}")
    config = {"repository": str(repo), "state_dir": str(tmp_path / "state"), "runtime_dir": str(runtime),
              "power": {"source": "estimated", "idle_window_s": 0.05},
              "placements": {"tensorflow": "off"}, **tables}
    path = tmp_path / "adaptd.toml"
    path.write_text(to_toml(config))
    return path, runtime


LOG_LINE = ("DEBUG ", "INFO ", "WARNING ")   # the daemon's own log records (level, logger: message)


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """The one line that says why the daemon did not start (log records aside: a start-up may
    well log what it did before it failed)."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(LOG_LINE)]
    assert len(lines) == 1 and lines[0].startswith("adaptd: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_second_daemon_on_the_same_socket_and_store_exits_naming_the_first(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off"}})
    try:
        sock_path = Path(d.endpoint[len("ipc://"):])
        inode = sock_path.stat().st_ino
        second = serve(d.config_path)
        line = one_line_failure(second)
        assert f"pid {d.proc.pid}" in line, line
        assert sock_path.stat().st_ino == inode, "the second daemon replaced the first one's socket"
        with Client(d.endpoint, timeout_ms=30_000) as c:
            assert c.infer(model, np.zeros((1, 8, 8, 1), np.float32)).outputs[0].shape == (1, 10)
    finally:
        assert d.stop() == 0
    assert not Path(d.endpoint[len("ipc://"):]).exists()


def test_ipc_is_served_by_a_libzmq_router_when_the_configuration_says_so(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path, config={"server": {"ipc_engine": "zeromq"}})
    try:
        with Client(d.endpoint, timeout_ms=30_000) as c:
            assert c.infer(model, np.zeros((1, 8, 8, 1), np.float32)).outputs[0].shape == (1, 10)
            assert c.health()["ipc"] == {"engine": "zeromq", "connections": 0}
    finally:
        assert d.stop() == 0


def test_a_port_in_use_is_one_line_and_leaves_nothing_behind(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    with taken_port() as port:
        path, runtime = write_config(tmp_path, repo, server={"endpoints": [f"tcp://127.0.0.1:{port}"]})
        result = serve(path)
    line = one_line_failure(result)
    assert str(port) in line, line
    leftovers = list(runtime.iterdir()) if runtime.exists() else []
    assert leftovers == [], leftovers
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.parametrize("table,what", [
    ({"selector": {"no_such_key": 1}}, "no_such_key"),
    ({"selector": {"policy": "fastest"}}, "selector.policy"),
    ({"auth": {"curve": True}}, "server_key"),
    ({"server": {"ipc_engine": "libzmq"}}, "ipc_engine"),
    ({"server": {"endpoints": ["tcp://0.0.0.0:5999"]}}, "loopback"),
    ({"server": {"endpoints": ["tcp://*:5999"]}}, "loopback"),
    ({"server": {"admin_endpoints": ["tcp://127.0.0.1:5999"]}}, "admin_endpoints"),
])
def test_a_bad_config_stops_before_any_worker_starts(tiny_repository, tmp_path, table, what):
    repo, _, _ = tiny_repository
    path, runtime = write_config(tmp_path, repo, **table)
    result = serve(path)
    line = one_line_failure(result)
    assert what in line, line
    assert "worker" not in result.stderr
    assert not runtime.exists()


def test_a_store_path_that_is_a_directory_is_one_line(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    (tmp_path / "state" / "db").mkdir(parents=True)
    path, runtime = write_config(tmp_path, repo, store={"path": "db"})
    line = one_line_failure(serve(path))
    assert "directory" in line and "store" in line, line


def test_a_runtime_directory_others_may_write_is_refused(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    path, runtime = write_config(tmp_path, repo)
    runtime.mkdir(mode=0o777)
    os.chmod(runtime, 0o777)
    try:
        line = one_line_failure(serve(path))
        assert "writable by others" in line and str(runtime) in line, line
        if os.geteuid() == 0:   # another user's directory (root can make one; others cannot)
            os.chmod(runtime, 0o750)
            os.chown(runtime, 65534, 65534)
            line = one_line_failure(serve(path))
            assert "belongs to uid 65534" in line, line
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_client_refuses_a_tmp_runtime_directory_of_another_user(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("making a directory that another user owns needs root")
    from adaptd.wire.rundir import RuntimeDirError, check_client_dir

    fake = Path(f"/tmp/adaptd-{os.getuid()}")
    made = not fake.exists()
    if made:
        fake.mkdir(mode=0o750)
    try:
        st = fake.stat()
        os.chown(fake, 65534, 65534)
        with pytest.raises(RuntimeDirError, match="belongs to uid 65534"):
            check_client_dir(fake)
        os.chown(fake, st.st_uid, st.st_gid)
        check_client_dir(fake)
    finally:
        if made:
            fake.rmdir()


def test_reload_is_refused_on_the_request_endpoint_and_accepted_on_the_admin_one(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off"}})
    try:
        reply, _ = d.request({"type": "reload", "id": "r"})
        assert reply["code"] == "FORBIDDEN", reply
        reply, _ = d.request({"type": "reload", "id": "r"}, admin=True)
        assert reply["type"] == "ok" and reply["body"]["generation"] == 2, reply
        assert os.stat(d.admin_endpoint[len("ipc://"):]).st_mode & 0o777 == 0o600
        with Client(d.admin_endpoint) as admin:
            assert admin.reload()["generation"] == 3
    finally:
        assert d.stop() == 0


# --- CurveZMQ ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    allowed = root / "allowed"
    allowed.mkdir()
    _, server_secret = new_keypair(root, "server")
    client_public, client_secret = new_keypair(root, "client")
    _, stranger_secret = new_keypair(root, "stranger")
    shutil.copy(client_public, allowed)
    return {"server_secret": server_secret, "server_public": root / "server.key", "allowed": allowed,
            "client": CurveKeys.from_files(client_secret, root / "server.key"),
            "stranger": CurveKeys.from_files(stranger_secret, root / "server.key")}


def test_curve_lets_allowed_keys_in_and_nobody_else_even_beyond_loopback(tiny_repository, tmp_path, keys):
    repo, model, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path, tcp=True, tcp_host="0.0.0.0", curve=keys["client"], config={
        "placements": {"tensorflow": "off"},
        "auth": {"curve": True, "server_key": str(keys["server_secret"]), "client_keys": str(keys["allowed"])},
    })
    x = np.zeros((1, 8, 8, 1), np.float32)
    endpoint = d.tcp_endpoint
    try:
        with Client(endpoint, timeout_ms=30_000, curve=keys["client"]) as c:
            first = c.infer(model, x, request_id="curve-1")
            assert first.outputs[0].shape == (1, 10)
            health = c.health()
            assert health["authentication"] == "curve" and health["ipc"]["engine"] == "zeromq"   # CurveZMQ is libzmq's
        # the same key on a new connection is the same client: its stored reply is replayed
        with Client(endpoint, timeout_ms=30_000, curve=keys["client"]) as again:
            assert again.infer(model, x, request_id="curve-1").selection.replayed
        for curve in (None, keys["stranger"]):
            with Client(endpoint, timeout_ms=1500, retries=0, curve=curve) as outsider:
                with pytest.raises(RequestTimeout):
                    outsider.health()
    finally:
        assert d.stop() == 0

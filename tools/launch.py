"""Start a real daemon as a child process: for the README's demo, the tests and the benchmarks.

Contract
--------
* :meth:`DaemonProcess.start` writes a TOML config under ``workdir`` (the selection store in it;
  the sockets in a short directory of their own under /tmp, ``runtime_dir``), starts ``python -m adaptd serve --config ...`` (behind the
  command ``wrapper`` names, if any: a profiler that runs the interpreter) and returns once the
  daemon answers a ``health`` request, so callers never sleep to synchronise. It raises
  ``RuntimeError`` with the daemon's own error output when the daemon exits or does not answer
  within ``ready_timeout_s``.
* :meth:`DaemonProcess.stop` sends SIGTERM and waits (the daemon drains); :meth:`kill` sends
  SIGKILL. The context manager stops the daemon on exit and never leaves it running. Either
  removes ``runtime_dir`` once the daemon is gone: a daemon that exits removes its own sockets,
  and for one a signal killed (by :meth:`kill` or from outside) the launcher removes the sockets
  it named for it.
* Not thread-safe: one owner per instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from adaptd.daemon.frontend import socket_path
from adaptd.wire import protocol as proto


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: Mapping[str, Any]) -> str:
    """A small TOML writer for config mappings (scalars, lists, one level of tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, Mapping)]
    for key, table in config.items():
        if isinstance(table, Mapping):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    def __init__(self, proc: subprocess.Popen, config_path: Path, endpoint: str, tcp_endpoint: str | None,
                 pub_endpoint: str, store_path: Path, log_path: Path, admin_endpoint: str | None = None,
                 curve: Any = None, local_endpoint: str | None = None) -> None:
        self.proc = proc
        self.local_endpoint = local_endpoint   # the local stream (unix://), where configured
        self.admin_endpoint = admin_endpoint
        self.curve = curve   # adaptd.wire.auth.CurveKeys for a daemon with [auth] curve
        self.config_path = config_path
        self.endpoint = endpoint
        self.tcp_endpoint = tcp_endpoint
        self.pub_endpoint = pub_endpoint
        self.store_path = store_path
        self.log_path = log_path
        self.runtime_dir = socket_path(endpoint).parent   # (made for this daemon: removed after it)

    @classmethod
    def start(cls, repository: Path, workdir: Path, *, config: Mapping[str, Any] | None = None,
              tcp: bool = False, ready_timeout_s: float = 60.0, env: Mapping[str, str] | None = None,
              tcp_host: str = "127.0.0.1", curve: Any = None, wrapper: tuple[str, ...] = ()) -> DaemonProcess:
        """``tcp``: also a tcp endpoint on ``tcp_host`` (clients connect on 127.0.0.1); ``curve``:
        the client keys this object's own requests use (a config with ``[auth] curve``);
        ``wrapper``: a command the interpreter's command line is appended to (``valgrind ...``)."""
        workdir = Path(workdir).resolve()   # the config resolves relative paths against its own directory
        workdir.mkdir(parents=True, exist_ok=True)
        # ipc paths must stay short (108 bytes on Linux): keep them in a short runtime dir.
        runtime_dir = Path(f"/tmp/adaptd-t-{uuid.uuid4().hex[:10]}")
        endpoint = f"ipc://{runtime_dir}/adaptd.sock"
        pub_endpoint = f"ipc://{runtime_dir}/adaptd-selections.sock"
        admin_endpoint = f"ipc://{runtime_dir}/adaptd-admin.sock"
        local_endpoint = f"unix://{runtime_dir}/adaptd-local.sock"
        endpoints = [endpoint, local_endpoint]
        tcp_endpoint = None
        if tcp:
            port = _free_tcp_port()
            tcp_endpoint = f"tcp://127.0.0.1:{port}"
            endpoints.append(f"tcp://{tcp_host}:{port}")
        base: dict[str, Any] = {
            "repository": str(Path(repository).resolve()),
            "state_dir": str(workdir),
            "runtime_dir": str(runtime_dir),
            "server": {"endpoints": endpoints, "pub_endpoints": [pub_endpoint], "admin_endpoints": [admin_endpoint]},
            "store": {"path": "selections.sqlite3"},
            "power": {"source": "estimated", "idle_window_s": 0.05},
        }
        merged = _merge(base, config or {})
        if merged.get("auth", {}).get("curve"):   # a local stream has no keys: not with CurveZMQ
            merged["server"]["endpoints"] = [e for e in merged["server"]["endpoints"] if e != local_endpoint]
        if local_endpoint not in merged["server"]["endpoints"]:
            local_endpoint = None
        config_path = workdir / "adaptd.toml"
        config_path.write_text(to_toml(merged))
        store_path = Path(merged["store"]["path"])
        if not store_path.is_absolute():
            store_path = workdir / store_path
        log_path = workdir / "daemon.log"
        child_env = dict(os.environ)
        child_env.pop("NOTIFY_SOCKET", None)   # only a test that asks for it gets one
        child_env.update(env or {})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([*wrapper, sys.executable, "-m", "adaptd", "serve", "--config", str(config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
        daemon = cls(proc, config_path, endpoint, tcp_endpoint, pub_endpoint, store_path, log_path, admin_endpoint,
                     curve, local_endpoint)
        try:
            daemon.wait_ready(ready_timeout_s)
        except BaseException:
            daemon.kill()
            raise
        return daemon

    def request(self, header: Mapping[str, Any], bodies=(), timeout_s: float = 30.0,
                admin: bool = False) -> tuple[dict, list[bytes]]:
        """One request on a fresh DEALER socket (tests and tooling; the client library is faster);
        ``admin``: on the admin endpoint (``reload``)."""
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.admin_endpoint if admin else self.endpoint)
        try:
            sock.send_multipart(proto.encode(header, bodies))
            if not sock.poll(timeout_s * 1e3):
                raise TimeoutError(f"no reply to {header.get('type')} within {timeout_s} s")
            frames = sock.recv_multipart()
        finally:
            sock.close()
        reply, bodies_out = proto.decode(frames)
        return reply, [bytes(b) for b in bodies_out]

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        ipc_path = Path(self.endpoint[len("ipc://"):])
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with code {self.proc.returncode}:\n{self.log()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the daemon did not answer within {timeout_s} s:\n{self.log()}")
            if ipc_path.exists():
                try:
                    reply, _ = self.request({"type": "health", "id": f"ready-{uuid.uuid4().hex}"},
                                            timeout_s=min(left, 1.0))
                    if reply.get("type") == "ok":
                        return
                except TimeoutError:
                    continue
            else:
                # The socket file appears when the daemon binds; wait for the process a little.
                try:
                    self.proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._remove_runtime_dir()
        return code

    def _remove_runtime_dir(self) -> None:
        """The runtime directory made for this daemon, once the daemon is gone. A daemon that
        exits removes its own sockets; one a signal killed cannot, so the launcher removes those
        it named for it (sockets only: anything else keeps the directory)."""
        if self.proc.returncode is not None and self.proc.returncode < 0:
            for endpoint in (self.endpoint, self.pub_endpoint, self.admin_endpoint, self.local_endpoint):
                path = socket_path(endpoint) if endpoint else None
                if path is not None and path.parent == self.runtime_dir and path.is_socket():
                    path.unlink(missing_ok=True)
        try:
            self.runtime_dir.rmdir()
        except OSError:
            pass

    def renice(self, nice: int) -> None:
        """Every thread of the daemon and of its workers to ``nice`` (Linux nice is per thread; a
        systemd unit's ``Nice=`` does this for the whole service), for benchmarks that measure
        what a priority above its clients' buys."""
        import psutil

        root = psutil.Process(self.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            for thread in proc.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, nice)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._remove_runtime_dir()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

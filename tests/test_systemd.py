"""systemd integration: the unit file passes ``systemd-analyze verify`` and a security review, and
the notify protocol is spoken correctly to a real AF_UNIX datagram socket.

The daemon-level notifications (READY at start, WATCHDOG, RELOADING/READY on SIGHUP, STOPPING on
SIGTERM) are checked against a running daemon in tests/test_daemon_lifecycle.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from adaptd.daemon.config import load_config
from adaptd.daemon.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "adaptd.service"
SAMPLE = ROOT / "systemd" / "adaptd.toml"
EXPOSURE_LIMIT = 5.0     # systemd-analyze security: "OK" is below 5.0 on its 0..10 scale

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's ``adaptd`` (verify checks it exists)."""
    adaptd = Path(sys.executable).parent / "adaptd"
    assert adaptd.exists(), adaptd
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/adaptd " in text
    path = tmp_path / "adaptd.service"
    path.write_text(text.replace("ExecStart=/usr/bin/adaptd ", f"ExecStart={adaptd} "))
    return path


# --- the unit file -------------------------------------------------------------------------

def test_the_unit_has_the_required_settings():
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure"
    assert one["DynamicUser"] == "yes" or "User" in one
    assert one["RuntimeDirectory"] == "adaptd" and one["StateDirectory"] == "adaptd"
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillMode"] == "mixed"
    for key in ("ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "RestrictNamespaces", "LockPersonality", "RestrictSUIDSGID"):
        assert one[key] == "yes", key
    assert one["CapabilityBoundingSet"] == "" and one["SystemCallArchitectures"] == "native"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["ExecStart"].split()[1:] == ["serve", "--config", "/etc/adaptd/adaptd.toml"]
    assert one["ConfigurationDirectory"] == "adaptd"   # /etc/adaptd, as ExecStart names it


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min|ms)?", value)
    assert m, value
    return float(m.group(1)) * {"s": 1, None: 1, "min": 60, "ms": 1e-3}[m.group(2)]


def test_the_unit_and_the_sample_config_agree():
    one = {k: v[-1] for k, v in unit_settings().items()}
    cfg = load_config(SAMPLE)
    # systemd must not kill a drain the daemon is allowed to finish.
    assert _seconds(one["TimeoutStopSec"]) > cfg.server.drain_timeout_s
    # The daemon pings every WatchdogSec/2 from a loop that wakes at least every second.
    assert _seconds(one["WatchdogSec"]) >= 2.0 and cfg.server.watchdog
    assert _seconds(one["TimeoutStartSec"]) > cfg.placements.worker_start_timeout_s
    assert str(cfg.repository).startswith("/var/lib/adaptd/")      # inside StateDirectory=
    text = SAMPLE.read_text()
    assert '# runtime_dir = "/run/adaptd"' in text and '# state_dir = "/var/lib/adaptd"' in text


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = local_unit(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown or misspelled directives are only warnings ("Unknown key ..., ignoring"): none allowed.
    assert not re.search(r"unknown|ignoring|invalid|failed|not found", output, re.IGNORECASE), output


@needs_analyze
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path):
    # The check above is not vacuous: a misspelled directive is reported.
    unit = local_unit(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert "NoNewPrivilege" in proc.stdout + proc.stderr


@needs_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path):
    unit = local_unit(tmp_path)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    if proc.returncode != 0 and m is None:
        pytest.skip(f"systemd-analyze security --offline is not usable here: {output.strip()[:200]}")
    assert m, output
    exposure = float(m.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure < EXPOSURE_LIMIT, output


# --- the notify protocol against a real socket ---------------------------------------------

@pytest.fixture
def notify_socket():
    path = f"/tmp/adaptd-n-{uuid.uuid4().hex[:8]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()
    os.unlink(path)


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n") if line)


def test_notifier_sends_each_state_as_one_datagram(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving tiny:1")
    f = fields(sock.recv(4096))
    assert f == {"READY": "1", "STATUS": "serving tiny:1", "MAINPID": str(os.getpid())}
    assert n.reloading() and fields(sock.recv(4096))["RELOADING"] == "1"
    assert n.watchdog() and fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    assert n.status("busy") and fields(sock.recv(4096)) == {"STATUS": "busy"}
    assert n.stopping() and fields(sock.recv(4096))["STOPPING"] == "1"
    n.close()


def test_notifier_reaches_an_abstract_socket():
    name = f"adaptd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert fields(sock.recv(4096))["READY"] == "1"
        n.close()
    finally:
        sock.close()


def test_notifier_is_a_no_op_outside_systemd_and_never_raises(tmp_path):
    n = Notifier({})
    assert not n.enabled and n.ready() is False and n.watchdog_interval_s() is None
    # A socket that went away: the notification is lost, the service is not.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert gone.ready() is False and gone.watchdog() is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid():
    assert Notifier({"WATCHDOG_USEC": "200000"}).watchdog_interval_s() == pytest.approx(0.1)
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s() == \
        pytest.approx(0.1)
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).watchdog_interval_s() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_s() is None


def _syscall_set(entry: str) -> set[str]:
    """The system calls one SystemCallFilter= item names (a @group expanded by systemd-analyze)."""
    if not entry.startswith("@"):
        return {entry}
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", entry], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"systemd-analyze syscall-filter {entry}: {out.stderr.strip()[:200]}")
    names = set()
    for line in out.stdout.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            names |= _syscall_set(line)
        elif line and not line.startswith("#"):
            names.add(line)
    return names


@needs_analyze
def test_the_units_system_call_filter_allows_what_the_daemon_calls():
    """The unit's SystemCallFilter= lines, applied in order as systemd does (the first an
    allow-list: later plain lines add to it, ``~`` lines take away), allow the scheduling calls
    the daemon and its workers make: pinning a placement's threads, the scheduler slice (on by
    default), SCHED_IDLE for the shadow worker and ``[server] rt_priority``. Under the denied
    @resources group the daemon could not start its placements."""
    allowed: set[str] | None = None
    for value in unit_settings()["SystemCallFilter"]:
        deny = value.startswith("~")
        names = set().union(*(_syscall_set(e) for e in value.lstrip("~").split()))
        if allowed is None:
            assert not deny, "the filter is expected to start as an allow-list"
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    assert allowed is not None
    needed = {"sched_setaffinity", "sched_getaffinity", "sched_setattr", "sched_getattr", "sched_setscheduler",
              "sched_getscheduler", "sched_getparam", "setpriority", "getpriority"}
    assert needed <= allowed, sorted(needed - allowed)
    assert "reboot" not in allowed and "mount" not in allowed   # the deny list still holds

"""systemd's service notification protocol (sd_notify), without libsystemd.

Contract
--------
* :class:`Notifier` reads ``$NOTIFY_SOCKET`` once; when it is unset (not under systemd) every
  call is a no-op. Messages are single datagrams on an AF_UNIX SOCK_DGRAM socket; an
  ``@``-prefixed path is an abstract socket. Sending never blocks and never raises: a lost
  notification must not take the service down (systemd's own sd_notify behaves the same way).
* :meth:`Notifier.watchdog_interval_s` is half of ``$WATCHDOG_USEC`` when the watchdog is
  enabled for this process (``$WATCHDOG_PID`` unset or ours), else None.
* Used from the daemon's main thread only.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | None = env.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self._watchdog_s = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        return self._watchdog_s

    def notify(self, *fields: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "serving") -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", "STATUS=reloading the model repository")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=draining in-flight requests")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

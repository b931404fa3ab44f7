"""The daemon's configuration: TOML -> validated, immutable dataclasses with documented defaults.

Contract
--------
* ``load_config(path)`` reads a TOML file; ``Config.from_dict`` validates a mapping. Both raise
  :class:`ConfigError` (a ``ValueError``) naming the offending key, for unknown keys too, so a
  typo never silently falls back to a default. Every setting and its default is documented in
  ``systemd/adaptd.toml``; ``tests/test_config.py`` checks that file loads and names every key.
* Objects are frozen and hold no resources: safe to share between threads.
* Every table is a typed dataclass, validated when the file is loaded (the ``[selector]`` and
  ``[store]`` tables too), so a bad value stops ``adaptd serve`` before it binds a socket or
  starts a worker.
* Paths: relative paths in the file are resolved against the file's directory; the state
  directory defaults to ``$STATE_DIRECTORY`` (systemd), else ``$XDG_STATE_HOME/adaptd`` (by
  default ``~/.local/state/adaptd``); the runtime directory follows
  :mod:`adaptd.wire.rundir` (``$RUNTIME_DIRECTORY``, ``$XDG_RUNTIME_DIR/adaptd`` or
  ``/tmp/adaptd-<uid>``).
* Exposure: a ``tcp://`` endpoint on anything but the loopback interface is refused unless
  ``[auth] curve`` is on; the ``[metrics]`` HTTP endpoint (no authentication) on anything but
  loopback unless ``[metrics] allow_remote`` is set.
* Units are in the names: ``*_s`` seconds, ``*_bytes`` bytes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from adaptd.wire.board import BoardIdError, validate_board_id
from adaptd.daemon.power.config import PowerConfig
from adaptd.daemon.sched import MAX_SLICE_US, MIN_SLICE_US
from adaptd.daemon.store_config import StoreConfig
from adaptd.selector import SelectorConfig
from adaptd.wire.rundir import LOCAL_SOCKET_NAME, SOCKET_NAME, daemon_runtime_dir

POLICIES = ("adaptive", "static", "most_accurate")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "adaptd"


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {name}, got {value!r}")
    return value


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _scalars(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every int/float/bool/str field of the dataclass ``cls`` from table ``d``, type-checked,
    each absent one at the dataclass's own default (the one place a default is written)."""
    return {f.name: _typed(d, f.name, _SCALARS[f.type], f.default, where)
            for f in fields(cls) if f.type in _SCALARS}


def _positive(value: float | int, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value}")


def _core_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                               for x in value):
        raise ConfigError(f"{key}: expected a list of core numbers, got {value!r}")
    return tuple(sorted(set(value)))


def _endpoint_list(value: Any, key: str, ipc_only: bool = False, unix: bool = False) -> tuple[str, ...]:
    """ZeroMQ endpoints (ipc:// or tcp://; ``ipc_only``), and with ``unix`` local streams (unix://)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of endpoint strings")
    kinds = ("ipc://",) if ipc_only else ("ipc://", "tcp://", "unix://") if unix else ("ipc://", "tcp://")
    for v in value:
        if not v.startswith(kinds) or v in kinds:
            raise ConfigError(f"{key}: {v!r} is not an endpoint of the kinds {', '.join(k + '...' for k in kinds)}")
    return tuple(value)


def is_loopback(endpoint: str) -> bool:
    """An ipc or unix endpoint, or a tcp one bound to the loopback interface only."""
    if endpoint.startswith(("ipc://", "unix://")):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass(frozen=True)
class ServerConfig:
    endpoints: tuple[str, ...] = ()          # empty: the default ipc endpoint and local stream
    pub_endpoints: tuple[str, ...] = ()      # empty: the default ipc stream endpoint
    admin_endpoints: tuple[str, ...] = ()    # empty: the default ipc admin endpoint (mode 0600)
    ipc_mode: int = 0o660
    ipc_engine: str = "adaptd"                # adaptd (the daemon speaks ZMTP itself) | zeromq (a ROUTER)
    max_message_bytes: int = 64 * 1024 * 1024
    max_batch: int = 64                       # an input's leading dimension, at most
    reject_nonfinite: bool = True             # NaN/inf in a float input: BAD_INPUT
    dedup_window_s: float = 60.0
    dedup_entries: int = 1024
    dedup_max_bytes: int = 64 * 1024 * 1024   # replies kept for replay, bodies included
    send_hwm: int = 1000                      # replies queued per client that is not reading them
    shm_regions_per_client: int = 16
    shm_bytes_per_client: int = 1 << 30
    drain_timeout_s: float = 30.0
    watchdog: bool = True
    spin_us: int = 0                          # poll without sleeping this long after a dispatch
    cores: tuple[int, ...] = ()               # CPU cores for the daemon's own threads; empty: any
    sched_slice_us: int = 100                 # fair-scheduler slice for daemon and workers; 0: kernel's
    rt_priority: int = 0                      # SCHED_RR priority of the main and ZeroMQ I/O threads; 0: off

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerConfig:
        w = "server"
        _check_keys(d, {f.name for f in fields(cls)}, w)
        out = cls(
            **_scalars(cls, d, w),
            endpoints=_endpoint_list(d.get("endpoints", []), f"{w}.endpoints", unix=True),
            pub_endpoints=_endpoint_list(d.get("pub_endpoints", []), f"{w}.pub_endpoints"),
            admin_endpoints=_endpoint_list(d.get("admin_endpoints", []), f"{w}.admin_endpoints", ipc_only=True),
            cores=_core_list(d.get("cores", []), f"{w}.cores"),
        )
        if out.sched_slice_us and not MIN_SLICE_US <= out.sched_slice_us <= MAX_SLICE_US:
            raise ConfigError(f"{w}.sched_slice_us: must be 0 (the kernel's default) or in "
                              f"{MIN_SLICE_US}..{MAX_SLICE_US} (us), got {out.sched_slice_us}")
        if not 0 <= out.rt_priority <= 99:
            raise ConfigError(f"{w}.rt_priority: must be 0 (off) or a real-time priority in 1..99, "
                              f"got {out.rt_priority}")
        if out.rt_priority and out.spin_us:
            raise ConfigError(f"{w}.spin_us and {w}.rt_priority: not both (a real-time thread's spin would keep the "
                              "worker it waits for off a shared core: sched_yield yields only to real-time threads)")
        if not 0 <= out.spin_us <= 100_000:
            raise ConfigError(f"{w}.spin_us: must be in 0..100000 (us), got {out.spin_us}")
        for key in ("max_message_bytes", "drain_timeout_s", "max_batch", "send_hwm", "shm_regions_per_client",
                    "shm_bytes_per_client"):
            _positive(getattr(out, key), f"{w}.{key}")
        if out.dedup_entries < 0 or out.dedup_window_s < 0 or out.dedup_max_bytes < 0:
            raise ConfigError(f"{w}.dedup_*: must not be negative")
        if out.ipc_engine not in ("adaptd", "zeromq"):
            raise ConfigError(f"{w}.ipc_engine: 'adaptd' or 'zeromq', got {out.ipc_engine!r}")
        if not 0 <= out.ipc_mode <= 0o777:
            raise ConfigError(f"{w}.ipc_mode: not a file mode: {out.ipc_mode}")
        return out


@dataclass(frozen=True)
class CustomPlacement:
    name: str
    cores: tuple[int, ...]
    threads: int
    description: str = ""


@dataclass(frozen=True)
class PlacementsConfig:
    include: tuple[str, ...] = ()            # empty: every discovered placement
    exclude: tuple[str, ...] = ()
    tensorflow: str = "auto"                 # auto | on | off
    queue_limit: int = 32
    load: str = "auto"                       # auto | lazy | eager
    eager_memory_bytes: int = 1 << 30        # auto: eager when the repository's variants fit in this
    isolation: str = "thread"                # thread | process: where LiteRT placements run
    inline_max_ms: float = 2.0               # predicted latency up to which a job runs on the receiving thread
    inline_sole_caller_max_ms: float = 20.0  # the same for a sole caller's job (daemon.inline_rule)
    custom: tuple[CustomPlacement, ...] = ()
    worker_start_timeout_s: float = 60.0
    job_timeout_s: float = 120.0             # a worker process running one job this long is killed; 0: never

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlacementsConfig:
        w = "placements"
        _check_keys(d, {f.name for f in fields(cls)}, w)
        custom = []
        for i, c in enumerate(d.get("custom", [])):
            cw = f"{w}.custom[{i}]"
            if not isinstance(c, dict):
                raise ConfigError(f"{cw}: expected a table")
            _check_keys(c, {"name", "cores", "threads", "description"}, cw)
            cores = c.get("cores")
            if not isinstance(cores, list) or not cores or not all(isinstance(x, int) and x >= 0 for x in cores):
                raise ConfigError(f"{cw}.cores: expected a non-empty list of core numbers")
            name = _typed(c, "name", str, None, cw)
            if not name:
                raise ConfigError(f"{cw}.name: required")
            threads = _typed(c, "threads", int, len(set(cores)), cw)
            _positive(threads, f"{cw}.threads")
            custom.append(CustomPlacement(name, tuple(sorted(set(cores))), threads,
                                          _typed(c, "description", str, "", cw)))
        out = cls(
            **_scalars(cls, d, w),
            include=_name_list(d, "include", w),
            exclude=_name_list(d, "exclude", w),
            custom=tuple(custom),
        )
        if out.tensorflow not in ("auto", "on", "off"):
            raise ConfigError(f"{w}.tensorflow: expected auto, on or off, got {out.tensorflow!r}")
        if out.load not in ("auto", "lazy", "eager"):
            raise ConfigError(f"{w}.load: expected auto, lazy or eager, got {out.load!r}")
        if out.eager_memory_bytes < 0:
            raise ConfigError(f"{w}.eager_memory_bytes: must not be negative, got {out.eager_memory_bytes}")
        if out.isolation not in ("thread", "process"):
            raise ConfigError(f"{w}.isolation: expected thread or process, got {out.isolation!r}")
        for key in ("inline_max_ms", "inline_sole_caller_max_ms"):
            if not 0.0 <= getattr(out, key) <= 1000.0:
                raise ConfigError(f"{w}.{key}: must be in 0..1000 (ms), got {getattr(out, key)}")
        _positive(out.queue_limit, f"{w}.queue_limit")
        _positive(out.worker_start_timeout_s, f"{w}.worker_start_timeout_s")
        if not out.job_timeout_s >= 0:   # (nan too)
            raise ConfigError(f"{w}.job_timeout_s: must not be negative (0: no limit), got {out.job_timeout_s}")
        return out


def _name_list(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = _typed(d, key, list, [], where)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of placement names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class StatsConfig:
    window: int = 256           # executions kept per arm for percentiles
    ewma_alpha: float = 0.2     # weight of the newest execution in the EWMA

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatsConfig:
        w = "stats"
        _check_keys(d, {f.name for f in fields(cls)}, w)
        out = cls(**_scalars(cls, d, w))
        if out.window < 8:
            raise ConfigError(f"{w}.window: must be at least 8, got {out.window}")
        if not 0 < out.ewma_alpha <= 1:
            raise ConfigError(f"{w}.ewma_alpha: must be in (0, 1], got {out.ewma_alpha}")
        return out


@dataclass(frozen=True)
class SelectorSettings:
    """``[selector]``: which policy, the calibration file, and the selector's hyper-parameters."""

    policy: str = "adaptive"           # adaptive | static | most_accurate
    calibration: Path | None = None    # None: the repository's calibration.json
    params: SelectorConfig = field(default_factory=SelectorConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path) -> SelectorSettings:
        table = dict(d)
        policy = table.pop("policy", "adaptive")
        if policy not in POLICIES:
            raise ConfigError(f"selector.policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
        calibration = table.pop("calibration", None)
        if calibration is not None and (not isinstance(calibration, str) or not calibration):
            raise ConfigError(f"selector.calibration: expected a path, got {calibration!r}")
        allowed = {f.name for f in fields(SelectorConfig)}
        unknown = set(table) - allowed
        if unknown:
            raise ConfigError(f"selector: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"allowed: policy, calibration, {', '.join(sorted(allowed))}")
        try:
            params = SelectorConfig(**table)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"selector: {exc}") from None
        path = None
        if calibration is not None:
            path = Path(os.path.expandvars(calibration)).expanduser()
            path = path if path.is_absolute() else base / path
        return cls(policy, path, params)


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: CurveZMQ on every request, stream and admin socket, with an allow-list."""

    curve: bool = False
    server_key: Path | None = None     # the daemon's secret certificate (zmq.auth format)
    client_keys: Path | None = None    # a directory of allowed clients' public certificates

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path) -> AuthConfig:
        w = "auth"
        _check_keys(d, {f.name for f in fields(cls)}, w)

        def path(key: str) -> Path | None:
            value = _typed(d, key, str, None, w)
            if value is None:
                return None
            p = Path(os.path.expandvars(value)).expanduser()
            return p if p.is_absolute() else base / p

        out = cls(_typed(d, "curve", bool, cls.curve, w), path("server_key"), path("client_keys"))
        if out.curve and (out.server_key is None or out.client_keys is None):
            raise ConfigError(f"{w}: curve = true needs server_key (the daemon's secret certificate) and "
                              "client_keys (a directory of allowed client certificates); `adaptd keys new` makes them")
        return out


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus/OpenMetrics endpoint (:mod:`adaptd.daemon.metrics`), off by default."""

    enabled: bool = False
    address: str = "127.0.0.1"      # the HTTP listener's address; beyond loopback only with allow_remote
    port: int = 9470
    allow_remote: bool = False      # a non-loopback address exposes model names and request rates

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricsConfig:
        w = "metrics"
        _check_keys(d, {f.name for f in fields(cls)}, w)
        out = cls(**_scalars(cls, d, w))
        if not 1 <= out.port <= 65535:
            raise ConfigError(f"{w}.port: must be in 1..65535, got {out.port}")
        if not out.address:
            raise ConfigError(f"{w}.address: required (e.g. 127.0.0.1)")
        host = out.address.strip("[]")
        if not (host in LOOPBACK_HOSTS or host.startswith("127.")) and not out.allow_remote:
            raise ConfigError(f"{w}.address: {out.address} is beyond the loopback interface and the endpoint "
                              "has no authentication (it shows model names and request rates); set "
                              "allow_remote = true to serve it there, or bind to 127.0.0.1")
        return out


@dataclass(frozen=True)
class Config:
    repository: Path
    state_dir: Path
    runtime_dir: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    placements: PlacementsConfig = field(default_factory=PlacementsConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    selector: SelectorSettings = field(default_factory=SelectorSettings)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fidelity: Any = field(default_factory=lambda: _fidelity_config({}))   # FidelityConfig ([fidelity])
    log_level: str = "info"
    board_id: str | None = None   # None: derived from the machine id (adaptd.wire.board)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The request endpoints: as configured, else the default ipc socket and, unless CurveZMQ
        guards the endpoints (a local stream has no keys), the default local stream."""
        if self.server.endpoints:
            return self.server.endpoints
        ipc = f"ipc://{self.runtime_dir / SOCKET_NAME}"
        return (ipc,) if self.auth.curve else (ipc, f"unix://{self.runtime_dir / LOCAL_SOCKET_NAME}")

    @property
    def pub_endpoints(self) -> tuple[str, ...]:
        return self.server.pub_endpoints or (f"ipc://{self.runtime_dir / 'adaptd-selections.sock'}",)

    @property
    def admin_endpoints(self) -> tuple[str, ...]:
        return self.server.admin_endpoints or (f"ipc://{self.runtime_dir / 'adaptd-admin.sock'}",)

    @property
    def store_path(self) -> Path:
        path = Path(self.store.path)
        return path if path.is_absolute() else self.state_dir / path

    @property
    def calibration_path(self) -> Path:
        return self.selector.calibration or Path(self.repository) / "calibration.json"

    def check_exposure(self) -> None:
        """Refuse tcp endpoints beyond the loopback interface without authentication, and local
        streams with it (they carry no keys: the socket file's mode is their only guard)."""
        if self.auth.curve:
            streams = [e for e in self.endpoints if e.startswith("unix://")]
            if streams:
                raise ConfigError(f"server.endpoints: {streams[0]} is a local stream, which [auth] curve cannot "
                                  "guard; use an ipc:// endpoint with authentication")
            return
        for key, endpoints in (("server.endpoints", self.endpoints), ("server.pub_endpoints", self.pub_endpoints)):
            for endpoint in endpoints:
                if not is_loopback(endpoint):
                    raise ConfigError(f"{key}: {endpoint} listens beyond the loopback interface; turn on "
                                      "[auth] curve (clients then need a key) or bind to 127.0.0.1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path | None = None) -> Config:
        base = base_dir or Path.cwd()
        top = {"repository", "state_dir", "runtime_dir", "log_level", "board_id",
               "server", "placements", "stats", "power", "selector", "store", "auth", "metrics", "fidelity"}
        _check_keys(d, top, "config")

        def path(key: str, default: Path) -> Path:
            value = _typed(d, key, str, None, "config")
            if value is None:
                return default
            p = Path(os.path.expandvars(value)).expanduser()
            return p if p.is_absolute() else (base / p)

        repo = d.get("repository")
        if repo is None:
            raise ConfigError("config.repository: required (the model repository's path)")
        state_dir = path("state_dir", default_state_dir())
        log_level = _typed(d, "log_level", str, "info", "config")
        if log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"config.log_level: expected debug, info, warning or error, got {log_level!r}")
        board_id = d.get("board_id")
        if board_id is not None:
            try:
                validate_board_id(board_id, "config.board_id")
            except BoardIdError as exc:
                raise ConfigError(str(exc)) from None
        for key in ("server", "placements", "stats", "power", "selector", "store", "auth", "metrics", "fidelity"):
            if not isinstance(d.get(key, {}), dict):
                raise ConfigError(f"config.{key}: expected a table")
        try:
            power = PowerConfig.from_dict(d.get("power", {}))
        except ValueError as exc:
            raise ConfigError(f"power: {exc}") from None
        try:
            store = StoreConfig.from_dict(d.get("store", {}))
        except ValueError as exc:
            raise ConfigError(f"store: {exc}") from None
        config = cls(
            repository=path("repository", Path()),
            state_dir=state_dir,
            runtime_dir=path("runtime_dir", daemon_runtime_dir()),
            server=ServerConfig.from_dict(d.get("server", {})),
            placements=PlacementsConfig.from_dict(d.get("placements", {})),
            stats=StatsConfig.from_dict(d.get("stats", {})),
            power=power,
            selector=SelectorSettings.from_dict(d.get("selector", {}), base),
            store=store,
            auth=AuthConfig.from_dict(d.get("auth", {}), base),
            metrics=MetricsConfig.from_dict(d.get("metrics", {})),
            fidelity=_fidelity_config(d.get("fidelity", {})),
            log_level=log_level,
            board_id=board_id,
        )
        config.check_exposure()
        if config.store_path.exists() and config.store_path.is_dir():
            raise ConfigError(f"store.path: {config.store_path} is a directory; give the store's file name")
        return config


def _fidelity_config(table: Mapping[str, Any]) -> Any:
    """The ``[fidelity]`` table (:mod:`adaptd.daemon.fidelity_config`, which builds on this
    module's helpers, hence imported here)."""
    from adaptd.daemon.fidelity_config import FidelityConfig

    return FidelityConfig.from_dict(table)


def load_config(path: Path) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return Config.from_dict(data, base_dir=Path(path).resolve().parent)

"""The daemon's TOML configuration: the sample in systemd/ documents every setting with its true
default, and every mistake is a ConfigError that names the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from adaptd.daemon.config import (
    AuthConfig,
    Config,
    ConfigError,
    CustomPlacement,
    MetricsConfig,
    PlacementsConfig,
    ServerConfig,
    StatsConfig,
    load_config,
)
from adaptd.tools.launch import to_toml
from adaptd.daemon.power.config import PowerConfig
from adaptd.daemon.store import StoreConfig

SAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "adaptd.toml"

TABLES = {"server": ServerConfig, "placements": PlacementsConfig, "stats": StatsConfig,
          "power": PowerConfig, "store": StoreConfig, "auth": AuthConfig, "metrics": MetricsConfig}
TOP_LEVEL = {"repository", "state_dir", "runtime_dir", "log_level", "board_id"}


def documented_keys(text: str) -> dict[str, set[str]]:
    """``table -> keys`` named in the file, set or shown commented out (``# key = ...``)."""
    keys: dict[str, set[str]] = {"": set()}
    table = ""
    for line in text.splitlines():
        m = re.match(r"^\s*#?\s*\[\[?([A-Za-z_.]+)\]\]?\s*$", line)
        if m:
            table = m.group(1)
            keys.setdefault(table, set())
            continue
        m = re.match(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m:
            keys.setdefault(table, set()).add(m.group(1))
    return keys


def test_the_sample_names_every_setting_of_every_table():
    keys = documented_keys(SAMPLE.read_text())
    assert TOP_LEVEL <= keys[""], TOP_LEVEL - keys[""]
    for table, cls in TABLES.items():
        missing = {f.name for f in dataclasses.fields(cls)} - keys.get(table, set())
        assert not missing, f"[{table}] does not document {sorted(missing)}"
    # The custom placement example names every key a custom placement takes.
    assert {f.name for f in dataclasses.fields(CustomPlacement)} <= keys["placements.custom"]
    assert "selector" in keys, "a [selector] placeholder"


def test_every_setting_has_a_comment():
    lines = SAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"line {i + 1} ({line!r}) has no comment above it"


def test_the_sample_loads_and_its_values_are_the_defaults():
    cfg = load_config(SAMPLE)
    assert cfg.repository == Path("/var/lib/adaptd/models")
    assert cfg.server == ServerConfig()
    assert cfg.placements == PlacementsConfig()
    assert cfg.stats == StatsConfig()
    assert cfg.power == PowerConfig()
    assert cfg.store == StoreConfig()
    assert cfg.auth == AuthConfig()
    assert cfg.metrics == MetricsConfig()
    assert cfg.log_level == "info"
    assert cfg.board_id is None   # derived from the machine id (tests/test_board.py)
    from adaptd.daemon.selection import SelectorPolicy
    from adaptd.selector import SelectorConfig

    assert cfg.selector.params == SelectorConfig()
    assert SelectorPolicy.from_config(cfg).selector_config == SelectorConfig()
    # Commented-out settings show the values systemd's directories give them.
    text = SAMPLE.read_text()
    assert '# state_dir = "/var/lib/adaptd"' in text and '# runtime_dir = "/run/adaptd"' in text


def test_systemd_directories_become_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/adaptd")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/adaptd")
    cfg = load_config(SAMPLE)
    assert cfg.state_dir == Path("/var/lib/adaptd") and cfg.runtime_dir == Path("/run/adaptd")
    assert cfg.endpoints == ("ipc:///run/adaptd/adaptd.sock", "unix:///run/adaptd/adaptd-local.sock")
    assert cfg.pub_endpoints == ("ipc:///run/adaptd/adaptd-selections.sock",)


def test_relative_paths_resolve_against_the_file(tmp_path):
    path = tmp_path / "etc" / "adaptd.toml"
    path.parent.mkdir()
    path.write_text(to_toml({"repository": "models", "state_dir": "state", "runtime_dir": "/run/x",
                             "server": {"endpoints": ["ipc:///run/x/a.sock", "tcp://127.0.0.1:5555"]}}))
    cfg = load_config(path)
    assert cfg.repository == path.parent / "models"
    assert cfg.state_dir == path.parent / "state"
    assert cfg.endpoints == ("ipc:///run/x/a.sock", "tcp://127.0.0.1:5555")


def test_a_minimal_file_gets_the_documented_defaults(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('repository = "/srv/models"\n')
    cfg = load_config(path)
    assert cfg.server == ServerConfig() and cfg.placements == PlacementsConfig()
    assert cfg.server.max_message_bytes == 64 * 1024 * 1024 and cfg.placements.queue_limit == 32


def test_a_board_id_is_read(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('repository = "/m"\nboard_id = "tx2-lab_03.b"\n')
    assert load_config(path).board_id == "tx2-lab_03.b"


def test_custom_placements_are_parsed(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('repository = "/m"\n[[placements.custom]]\nname = "cpu:pair"\ncores = [1, 0, 1]\n')
    [c] = load_config(path).placements.custom
    assert c == CustomPlacement("cpu:pair", (0, 1), 2, "")


BAD = [
    # (TOML text after `repository = "/m"`, text the error must contain)
    ("colour = 1", "colour"),
    ("[server]\nendpoint = []", "endpoint"),
    ("[server]\nendpoints = [\"http://x\"]", "server.endpoints"),
    ("[server]\nendpoints = \"ipc:///x\"", "server.endpoints"),
    ("[server]\nmax_message_bytes = 0", "server.max_message_bytes"),
    ("[server]\nmax_message_bytes = \"64M\"", "server.max_message_bytes"),
    ("[server]\ndrain_timeout_s = -1", "server.drain_timeout_s"),
    ("[server]\ndedup_entries = -1", "server.dedup"),
    ("[server]\nipc_mode = 0o7777", "server.ipc_mode"),
    ("[server]\nwatchdog = 1", "server.watchdog"),
    ("[placements]\nqueue_limit = 0", "placements.queue_limit"),
    ("[placements]\nqueue_limit = 2.5", "placements.queue_limit"),
    ("[placements]\nqueue_limit = true", "placements.queue_limit"),
    ("[placements]\ntensorflow = \"yes\"", "placements.tensorflow"),
    ("[placements]\nload = \"sometimes\"", "placements.load"),
    ("[placements]\ninclude = \"cpu:0\"", "placements.include"),
    ("[placements]\nexclude = [0]", "placements.exclude"),
    ("[placements]\nworker_start_timeout_s = 0", "placements.worker_start_timeout_s"),
    ("[placements]\njob_timeout_s = -1", "placements.job_timeout_s"),
    ("[placements]\njob_timeout_s = nan", "placements.job_timeout_s"),
    ("[placements]\nqueue_limits = 3", "queue_limits"),
    ("[[placements.custom]]\nname = \"cpu:x\"\ncores = []", "placements.custom[0].cores"),
    ("[[placements.custom]]\ncores = [0]", "placements.custom[0].name"),
    ("[[placements.custom]]\nname = \"cpu:x\"\ncores = [0]\nthreads = 0", "placements.custom[0].threads"),
    ("[[placements.custom]]\nname = \"cpu:x\"\ncores = [0]\nspeed = 1", "speed"),
    ("[server]\nspin_us = -1", "server.spin_us"),
    ("[server]\nendpoints = [\"unix://\"]", "server.endpoints"),
    ("[server]\nendpoints = [\"http://127.0.0.1:80\"]", "server.endpoints"),
    ("[server]\nadmin_endpoints = [\"unix:///run/a.sock\"]", "server.admin_endpoints"),
    ("[server]\ncores = [-1]", "server.cores"),
    ("[server]\ncores = 0", "server.cores"),
    ("[server]\nspin_us = 1e3", "spin_us"),
    ("[server]\nrt_priority = 100", "server.rt_priority"),
    ("[server]\nrt_priority = -1", "server.rt_priority"),
    ("[server]\nrt_priority = true", "server.rt_priority"),
    ("[server]\nrt_priority = 1\nspin_us = 200", "server.spin_us and server.rt_priority"),
    ("[stats]\nwindow = 4", "stats.window"),
    ("[stats]\newma_alpha = 0", "stats.ewma_alpha"),
    ("[stats]\newma_alpha = 1.5", "stats.ewma_alpha"),
    ("[power]\nsource = \"magic\"", "power.source"),
    ("[power]\nsample_hz = 0", "power.sample_hz"),
    ("[power]\nvolts = 5", "volts"),
    ("[store]\nflush_interval_s = 0", "flush_interval_s"),
    ("[store]\nsynchronous = \"SOMETIMES\"", "synchronous"),
    ("[store]\nretention_max_rows = -5", "retention_max_rows"),
    ("[store]\nlocation = \"x.db\"", "location"),
    ("[metrics]\nport = 0", "metrics.port"),
    ("[metrics]\nport = 65536", "metrics.port"),
    ("[metrics]\nenabled = \"yes\"", "metrics.enabled"),
    ("[metrics]\naddress = \"0.0.0.0\"", "metrics.address"),
    ("[metrics]\naddress = \"\"", "metrics.address"),
    ("[metrics]\npath = \"/m\"", "path"),
    ("log_level = \"loud\"", "log_level"),
    ("board_id = \"lab/3\"", "config.board_id"),
    ("board_id = \"\"", "config.board_id"),
    ("board_id = 3", "config.board_id"),
    ("state_dir = 5", "state_dir"),
    ("server = 5", "server"),
]


@pytest.mark.parametrize("text, key", BAD, ids=[k for _, k in BAD])
def test_a_bad_setting_is_a_config_error_naming_the_key(tmp_path, text, key):
    path = tmp_path / "a.toml"
    body = 'repository = "/m"\n' + (text if text.startswith("[") else text + "\n")
    path.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(path)


def test_local_streams_are_served_by_default_but_not_beside_curve_keys(tmp_path):
    path = tmp_path / "a.toml"
    curve = '[auth]\ncurve = true\nserver_key = "server.key_secret"\nclient_keys = "clients"\n'
    path.write_text('repository = "/m"\nruntime_dir = "/run/x"\n')
    assert load_config(path).endpoints == ("ipc:///run/x/adaptd.sock", "unix:///run/x/adaptd-local.sock")
    path.write_text('repository = "/m"\nruntime_dir = "/run/x"\n' + curve)
    assert load_config(path).endpoints == ("ipc:///run/x/adaptd.sock",)   # a stream carries no keys
    path.write_text('repository = "/m"\n[server]\nendpoints = ["unix:///run/x/l.sock"]\n' + curve)
    with pytest.raises(ConfigError, match="local stream"):
        load_config(path)


def test_metrics_beyond_loopback_need_allow_remote(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('repository = "/m"\n[metrics]\nenabled = true\naddress = "[::1]"\nport = 9100\n')
    assert load_config(path).metrics == MetricsConfig(enabled=True, address="[::1]", port=9100)
    path.write_text('repository = "/m"\n[metrics]\naddress = "0.0.0.0"\nallow_remote = true\n')
    assert load_config(path).metrics.address == "0.0.0.0"


def test_the_repository_is_required(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("log_level = \"info\"\n")
    with pytest.raises(ConfigError, match="repository"):
        load_config(path)


def test_missing_and_unparsable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
    path = tmp_path / "a.toml"
    path.write_text("repository = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_objects_are_frozen():
    cfg = Config.from_dict({"repository": "/m"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.queue_limit = 3  # type: ignore[attr-defined]


def test_the_static_policy_never_probes_and_the_adaptive_one_keeps_its_probe_share(tmp_path):
    """A probe refreshes an estimate; a policy that never learns would only run a worse arm."""
    from adaptd.daemon.selection import SelectorPolicy

    for policy, share in (("static", 0.0), ("adaptive", 0.05)):
        path = tmp_path / f"{policy}.toml"
        path.write_text(to_toml({"repository": str(tmp_path), "selector": {"policy": policy, "probe_share": 0.05}}))
        sp = SelectorPolicy.from_config(load_config(path))
        assert sp.selector_config.probe_share == share
        assert sp.online == (policy == "adaptive")

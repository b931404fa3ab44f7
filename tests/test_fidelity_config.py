"""The [fidelity] table: defaults, the commented section of the sample config, and every mistake
a ConfigError that names the key."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from adaptd.daemon.config import ConfigError
from adaptd.daemon.fidelity_config import FidelityConfig
from adaptd.selector.fidelity import FidelityParams
from adaptd.selector.shadow import ShadowParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "adaptd.toml"


def commented_section() -> dict:
    """The `# [fidelity]` section of the sample, uncommented and parsed as TOML."""
    lines = SAMPLE.read_text().splitlines()
    start = lines.index("# [fidelity]")
    body = [m.group(1) for line in lines[start + 1:]
            if (m := re.match(r"^# ([a-z_]+ = .+)$", line))]
    return tomllib.loads("\n".join(body))


def test_the_sample_documents_every_setting_with_its_default():
    table = commented_section()
    assert set(table) == {f.name for f in dataclasses.fields(FidelityConfig)}
    assert FidelityConfig.from_dict(table) == FidelityConfig()


def test_the_defaults_make_the_selector_side_parameters():
    cfg = FidelityConfig.from_dict({})
    p = cfg.fidelity_params()
    assert p == FidelityParams(window=200, window_max_age_s=600.0, min_samples=30, confidence=0.95,
                               alarm_agreement=0.9, alarm_hysteresis=0.01, rel_error_tolerance=0.05)
    s = cfg.shadow_params(seed=3)
    assert (s.share, s.cpu_budget_ms_per_s, s.warmup_samples, s.seed) == (0.05, 20.0, 30, 3) and s.enabled
    assert cfg.reservoir is False
    off = FidelityConfig.from_dict({"enabled": False, "window_max_age_s": 0})
    assert not off.shadow_params().enabled and off.fidelity_params().window_max_age_s is None
    assert ShadowParams().share == cfg.share and FidelityParams().window == cfg.window


BAD = [
    ({"shar": 0.1}, "shar"),
    ({"share": 1.5}, "fidelity.share"),
    ({"share": "5%"}, "fidelity.share"),
    ({"share": float("nan")}, "fidelity.share"),
    ({"cpu_budget_ms_per_s": -1}, "fidelity.cpu_budget_ms_per_s"),
    ({"cpu_budget_ms_per_s": 2000}, "fidelity.cpu_budget_ms_per_s"),
    ({"window": 0}, "fidelity.window"),
    ({"window": 2.5}, "fidelity.window"),
    ({"window_max_age_s": -1}, "fidelity.window_max_age_s"),
    ({"window_max_age_s": float("inf")}, "fidelity.window_max_age_s"),
    ({"min_samples": 0}, "fidelity.min_samples"),
    ({"min_samples": 300}, "fidelity.min_samples"),
    ({"confidence": 1.0}, "fidelity.confidence"),
    ({"confidence": 0.4}, "fidelity.confidence"),
    ({"alarm_agreement": 0}, "fidelity.alarm_agreement"),
    ({"alarm_hysteresis": -0.1}, "fidelity.alarm_hysteresis"),
    ({"alarm_agreement": 0.99, "alarm_hysteresis": 0.02}, "fidelity.alarm_hysteresis"),
    ({"rel_error_tolerance": -1}, "fidelity.rel_error_tolerance"),
    ({"live_bound": "sometimes"}, "fidelity.live_bound"),
    ({"reservoir": 1}, "fidelity.reservoir"),
    ({"reservoir_items": 0}, "fidelity.reservoir_items"),
    ({"reservoir_bytes": 0}, "fidelity.reservoir_bytes"),
    ({"reference": ""}, "fidelity.reference"),
    ({"enabled": "yes"}, "fidelity.enabled"),
]


@pytest.mark.parametrize("table, key", BAD, ids=[k for _, k in BAD])
def test_a_bad_setting_is_a_config_error_naming_the_key(table, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        FidelityConfig.from_dict(table)


def test_the_table_must_be_a_table():
    with pytest.raises(ConfigError, match="fidelity"):
        FidelityConfig.from_dict(5)  # type: ignore[arg-type]

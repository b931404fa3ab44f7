"""The board id: configured, or derived from the machine id (real files under tmp_path stand in
for /etc/machine-id, with the same one-line format)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import pytest

from adaptd.wire.board import (
    MACHINE_ID_PATHS,
    BoardIdError,
    daemon_board_id,
    derive_board_id,
    machine_board_id,
    resolve_board_id,
    validate_board_id,
)

MID_A = "3d1219c7c4c5404aaa1f6d2a48adfda4"
MID_B = "0123456789abcdef0123456789abcdef"


def machine_id_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")   # systemd writes the id and a newline
    return path


@pytest.mark.parametrize("value", ["tx2-lab-03", "a", "board_7.b", "X" * 64])
def test_valid_board_ids(value):
    assert validate_board_id(value) == value


@pytest.mark.parametrize("value", ["", "-lead", ".hidden", "a/b", "a=b", "a b", "é", "X" * 65, 7, None])
def test_invalid_board_ids_name_the_setting(value):
    with pytest.raises(BoardIdError, match="config.board_id"):
        validate_board_id(value, "config.board_id")


def test_the_derived_id_is_the_documented_hmac_and_hides_the_machine_id():
    # systemd/adaptd.toml: the first 16 hex digits of HMAC-SHA256 keyed with the machine id over
    # "adaptd-board-id".
    expected = hmac.new(bytes.fromhex(MID_A), b"adaptd-board-id", hashlib.sha256).hexdigest()[:16]
    assert derive_board_id(MID_A) == expected
    assert derive_board_id(MID_A) != derive_board_id(MID_B)
    assert expected not in MID_A and len(expected) == 16
    validate_board_id(expected)
    with pytest.raises(BoardIdError):
        derive_board_id("not-a-machine-id")


def test_the_machine_id_files_are_tried_in_order(tmp_path: Path):
    missing = tmp_path / "etc-machine-id"
    dbus = machine_id_file(tmp_path / "dbus-machine-id", MID_B)
    assert machine_board_id((missing, dbus)) == derive_board_id(MID_B)
    etc = machine_id_file(missing, MID_A)
    assert machine_board_id((etc, dbus)) == derive_board_id(MID_A)
    empty = machine_id_file(tmp_path / "empty", "")   # an image not yet booted: no id yet
    assert machine_board_id((empty, dbus)) == derive_board_id(MID_B)
    with pytest.raises(BoardIdError, match="set board_id"):
        machine_board_id((empty, tmp_path / "nothing"))


def test_the_configured_id_wins(tmp_path: Path):
    etc = machine_id_file(tmp_path / "machine-id", MID_A)
    assert resolve_board_id("tx2-lab-03", (etc,)) == "tx2-lab-03"
    assert resolve_board_id(None, (etc,)) == derive_board_id(MID_A)
    with pytest.raises(BoardIdError):
        resolve_board_id("bad/id", (etc,))


def test_a_daemon_without_any_id_serves_and_says_so(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="adaptd.board"):
        assert daemon_board_id(None, (tmp_path / "none",)) is None
    assert any("--board-id" in r.getMessage() for r in caplog.records)
    assert daemon_board_id("b1", (tmp_path / "none",)) == "b1"


def test_this_machine_has_a_stable_id_when_it_has_a_machine_id():
    if not any(p.exists() for p in MACHINE_ID_PATHS):
        pytest.skip("this machine has no machine id")
    assert machine_board_id() == machine_board_id()

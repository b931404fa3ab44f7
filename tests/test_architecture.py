"""The house's shape: its layers (import-linter's contracts in pyproject.toml) and small rooms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("cli", "tools", "clients", "daemon", "wire", "selector", "variants")


def test_the_layers_hold():
    """cli -> tools -> clients | daemon -> variants -> selector | wire; no arrow runs back up, not
    even from inside a function, and the daemon never imports the build pipeline or TensorFlow."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_outside_the_tests_is_over_500_lines():
    big = {str(p.relative_to(ROOT)): n for folder in CODE for p in (ROOT / folder).rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not big, big


def test_every_module_opens_with_a_docstring():
    bare = [str(p.relative_to(ROOT)) for folder in CODE for p in (ROOT / folder).rglob("*.py")
            if not p.read_text(encoding="utf-8").lstrip().startswith(('"""', "'''", "#"))
            and p.stat().st_size > 0]
    assert not bare, bare

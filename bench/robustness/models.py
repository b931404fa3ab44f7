"""Model repositories the harnesses need that the project's CLI does not build.

Contract
--------
* :func:`slow_repository` returns a repository holding ``slow``, the model of the test suite's
  ``slow_repository`` fixture (tests/conftest.py: a stack of 3x3 convolutions on 32x32x8 inputs,
  about 10 ms per image on one core, float32 only), built once under ``directory`` through the
  real variant pipeline in a child process by that fixture's own build script, so the benchmark
  and the tests time the same model. A repository already there is reused. Needs the ``build``
  extra (TensorFlow, Keras). About a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def slow_repository(directory: Path) -> Path:
    directory = Path(directory)
    repo = directory / "repo"
    if (repo / "slow" / "1" / "manifest.json").exists():
        return repo
    spec = importlib.util.spec_from_file_location("adaptd_tests_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", conftest._SLOW_BUILD, str(directory)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the slow model failed:\n{proc.stderr[-3000:]}")
    return repo

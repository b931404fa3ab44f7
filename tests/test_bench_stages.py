"""``bench/bench_stages.py`` stamps a live daemon's stages through ``bench/stage_trace``: a real
daemon on the tiny model (its jobs run on the receiving thread) and on the slow one (handed to
the placement's thread), real requests over the local stream. A stamp that stopped firing (a
wrapped function renamed, a path no longer taken) would leave a stage out of the benchmark's
table without an error; these tests name the stamps each path must pass, in order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from adaptd.daemon.config import PlacementsConfig
from adaptd.daemon.placements import discover
from .conftest import SLOW_MODEL, SLOW_SHAPE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_stages import STAMPS, TRACER, paths_of, trace_requests, usual  # noqa: E402

REQUESTS = 30


def _placement() -> tuple[str, tuple[int, ...]]:
    single = [p for p in discover(PlacementsConfig()) if len(p.cores) == 1]
    return single[-1].name, single[-1].cores


def test_an_inline_job_passes_every_stamp_of_the_receiving_thread(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    placement, cores = _placement()
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    marks, sent, received, _ = trace_requests(repo, tmp_path, model, "float32", placement, cores, x, REQUESTS)
    names = {name for name, _ in marks}
    for stamp in ("handler", "admit_in", "admit_out", "screen_in", "screen_out", "inline_in", "inline_out",
                  "dispatched", "t0", "t1", "finished", "outcome", "header_in", "header_out", "encoded",
                  "send_in", "send_out"):
        assert stamp in names, stamp
    # A job this short runs inline whenever its prediction is under inline_max_ms: on a loaded
    # host a slow run can lift the prediction over it for a few requests, which are handed off.
    # The order below is the inline path's, most of the requests.
    paths = paths_of(marks, sent, received, range(5, REQUESTS))
    inline = [path for path in paths if "submit_in" not in {name for name, _ in path}]
    assert len(inline) * 2 > len(paths)
    stages, _ = usual(inline)
    order = [name.split(" -> ")[1] for name in stages if name != "round trip"]
    expected = ["poll", "handler", "admit_in", "admit_out", "screen_in", "screen_out", "inline_in", "dispatched",
                "t0", "t1", "finished", "inline_out", "outcome", "header_in", "header_out", "encoded", "send_in",
                "send_out", "client_recv"]
    assert order == expected
    assert set(order) <= set(STAMPS)


def test_a_handed_off_job_passes_the_placement_threads_stamps(slow_repository, tmp_path):
    placement, cores = _placement()
    x = np.random.default_rng(0).random((1, *SLOW_SHAPE), dtype=np.float32)
    marks, sent, received, _ = trace_requests(slow_repository, tmp_path, SLOW_MODEL, "float32", placement, cores, x,
                                              12, shm=True)   # (a new caller: not the sole one for its first seconds)
    stages, _ = usual(paths_of(marks, sent, received, range(2, 12)))
    order = [name.split(" -> ")[1] for name in stages if name != "round trip"]
    # A region's input is screened by the placement's thread, after it takes the job.
    assert order.index("submit_out") < order.index("dispatched") < order.index("screen_in") < order.index("t0")
    assert order.index("t1") < order.index("finished") < order.index("poll_after") < order.index("outcome")
    assert "inline_in" not in order
    # t0 -> t1 is the run the daemon reports: the slow model takes milliseconds, every other stage less.
    run = np.median(stages["t0 -> t1"])
    assert run > 1000
    assert all(np.median(v) < run for name, v in stages.items() if name not in ("round trip", "t0 -> t1"))


def _wrapped_in_a_process(env: dict[str, str]) -> list[bool]:
    """Whether each function the tracer wraps (its ``WRAPPED``) is wrapped in a new process with
    ``env`` (the wrapper keeps the wrapped function as ``__wrapped__``)."""
    probe = ("import importlib, sitecustomize as t\n"
             "def get(module, path):\n"
             "    owner = importlib.import_module(module)\n"
             "    for part in path.split('.'):\n"
             "        owner = getattr(owner, part)\n"
             "    return owner\n"
             "print(' '.join(str(hasattr(get(m, p), '__wrapped__')) for m, p in t.WRAPPED))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return [word == "True" for word in out.stdout.split()]


def test_every_target_is_wrapped_with_the_variable_and_none_without(tmp_path):
    """The tracer folder on the path is not enough: without ``ADAPTD_STAGE_TRACE`` nothing is
    wrapped. With it, every target is, and nothing reports a failure: a target renamed in the
    daemon fails this test, not the benchmark's table quietly."""
    env = {k: v for k, v in os.environ.items() if k != "ADAPTD_STAGE_TRACE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TRACER), env.get("PYTHONPATH")) if p)
    plain = _wrapped_in_a_process(env)
    assert len(plain) >= 12 and not any(plain)
    env["ADAPTD_STAGE_TRACE"] = str(tmp_path / "stages.json")
    assert all(_wrapped_in_a_process(env))
    assert not (tmp_path / "stages.json.error").exists()

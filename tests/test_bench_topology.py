"""The topology benchmark's local-stream skeletons serve what they claim (bench/topology_stream.py):
each answers a request with the variant's own outputs for its input, or for the input it holds
when asked to run on that (``--resident``), and counts every reply it sent, whichever thread sent
it. A floor measured on a skeleton that skipped the run, or replied from the wrong thread's
count, would be no floor.

Real server processes (spawned, as the benchmark starts them) running LiteRT on the tiny model,
a real client connection over a Unix stream socket."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_overhead import latest_version  # noqa: E402
from dealers import connect  # noqa: E402
from topology_stream import RESIDENT, STREAM_KINDS, load  # noqa: E402

SHAPE = (1, 8, 8, 1)
HEADER = b"\x81\xa2id\xa1x"


@pytest.mark.parametrize("kind", [k for k in STREAM_KINDS if not k.startswith("echo")])
def test_a_stream_skeleton_replies_with_the_run_of_its_input_and_counts_its_replies(kind, tiny_repository, tmp_path):
    from topology_stream import serve_stream

    repo, model, _ = tiny_repository
    version_dir = str(latest_version(repo / model))
    x = np.random.default_rng(7).random(SHAPE, dtype=np.float32)
    resident = np.random.default_rng(0).random(SHAPE, dtype=np.float32)   # what the server holds
    reference = load(version_dir, 1)
    want_x, want_resident = (np.asarray(reference.run([a])[0], np.float32) for a in (x, resident))

    ctx = mp.get_context("spawn")
    ready, stats = ctx.Event(), ctx.Queue()
    path = str(tmp_path / "skeleton.sock")
    core = max(os.sched_getaffinity(0))
    server = ctx.Process(target=serve_stream, args=(kind, path, ready, stats, version_dir, 1, SHAPE, (core,)),
                         daemon=True)
    server.start()
    try:
        assert ready.wait(60), "the skeleton did not start"
        conn = connect(f"unix://{path}")
        replies = []
        for body in (x, RESIDENT, x):
            conn.send([b"", b"ADPT01", HEADER, body])
            replies.append(conn.recv())
        conn.send([b"", b"ADPT01", HEADER, b""])   # its counts
        served, _cpu_s, invoke_s = stats.get(timeout=60)
        conn.close()
    finally:
        server.kill()
        server.join()
    for reply, want in zip(replies, (want_x, want_resident, want_x)):
        assert [bytes(f) for f in reply[:3]] == [b"", b"ADPT01", HEADER]
        np.testing.assert_allclose(np.frombuffer(reply[3], np.float32).reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    assert served == 3 and invoke_s > 0

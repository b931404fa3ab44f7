"""Stage timestamps inside a daemon process, for ``bench/bench_stages.py``; imported at start-up.

Python imports a module named ``sitecustomize`` from its path when it starts. The benchmark puts
this folder first on the daemon's ``PYTHONPATH`` and names a file in ``ADAPTD_STAGE_TRACE``; then,
and only then, this module wraps a dozen functions of the daemon's request path so that each
records ``(stage, time.monotonic_ns())`` as it is entered or left, and writes the records to
``<ADAPTD_STAGE_TRACE>.<pid>`` (JSON) when the process exits. The daemon's own code is unchanged,
and a daemon started without the variable runs none of this.

A wrapped function that no longer exists fails the start (``AttributeError``): a renamed stage
must be renamed here too, not silently missing from the table.

Stages (``bench_stages.STAGES`` gives each its label): ``poll`` (the loop's poll returned events),
``handler`` (a request's handler entered), ``admit_in``/``admit_out``, ``screen_in``/``screen_out``
(the NaN screen, on the main thread or the executor's), ``submit_in``/``submit_out`` (the hand-off
to a placement), ``inline_in``/``inline_out`` (a job run on the receiving thread), ``outcome``
(the outcome handler entered; the outcome's own ``dispatched``, ``t0``, ``t1`` and ``finished``
times are recorded with it), ``header_in``/``header_out`` (the reply's header made), ``encoded``
and ``send_in``/``send_out`` (the frontend's send).
"""

from __future__ import annotations

import os

_PATH = os.environ.get("ADAPTD_STAGE_TRACE")


def _install(path: str) -> None:
    import atexit
    import functools
    import json
    import time

    import zmq

    from adaptd.daemon import admission, dispatch, execution, frontend, request_path
    from adaptd.wire import protocol, replies

    marks: list[tuple[str, int]] = []
    clock = time.monotonic_ns

    def around(owner, name: str, before: str | None, after: str | None) -> None:
        inner = getattr(owner, name)   # (AttributeError: the stage moved; see the module's docstring)

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            if before:
                marks.append((before, clock()))
            out = inner(*args, **kwargs)
            if after:
                marks.append((after, clock()))
            return out

        setattr(owner, name, wrapper)

    def poll_wrapper(inner):
        @functools.wraps(inner)
        def poll(self, *args, **kwargs):
            events = inner(self, *args, **kwargs)
            if events:
                marks.append(("poll", clock()))
            return events
        return poll

    def outcome_wrapper(inner):
        @functools.wraps(inner)
        def on_outcome(self, outcome):
            marks.append(("outcome", clock()))
            header, job = outcome.header, outcome.job
            if "t0_ns" in header:
                marks.extend((("dispatched", job.dispatched_ns), ("t0", header["t0_ns"]), ("t1", header["t1_ns"]),
                              ("finished", outcome.finished_ns)))
            return inner(self, outcome)
        return on_outcome

    zmq.Poller.poll = poll_wrapper(zmq.Poller.poll)
    around(request_path.RequestPath, "on_request", "handler", None)
    around(request_path.RequestPath, "on_stream_request", "handler", None)
    around(admission.Admission, "admit", "admit_in", "admit_out")
    around(request_path, "nonfinite_inline", "screen_in", "screen_out")
    around(execution, "nonfinite_input", "screen_in", "screen_out")
    around(dispatch.Dispatcher, "submit", "submit_in", "submit_out")
    around(dispatch.Dispatcher, "run_inline", "inline_in", "inline_out")
    request_path.RequestPath.on_outcome = outcome_wrapper(request_path.RequestPath.on_outcome)
    around(replies, "result_header", "header_in", "header_out")
    around(protocol, "encode", None, "encoded")
    around(frontend.Frontend, "send", "send_in", "send_out")

    def dump() -> None:
        with open(f"{path}.{os.getpid()}", "w") as fh:
            json.dump(marks, fh)

    atexit.register(dump)


if _PATH:
    _install(_PATH)

"""Stage timestamps inside a daemon process, for ``bench/bench_stages.py``; imported at start-up.

Python imports a module named ``sitecustomize`` from its path when it starts. The benchmark puts
this folder first on the daemon's ``PYTHONPATH`` and names a file in ``ADAPTD_STAGE_TRACE``; then,
and only then, this module wraps the functions in ``TARGETS`` (and the loop's poll, and the
outcome handler) so that each records ``(stamp, time.monotonic_ns())`` as it is entered or left,
and writes the records to ``<ADAPTD_STAGE_TRACE>.<pid>`` (JSON) when the process exits. The
daemon's own code is unchanged, and a process started without the variable runs none of this.
The variable is taken out of the environment once read, so the daemon's own child processes
(workers, the power sampler) import this module and do nothing.

Python reports an error raised here on stderr and starts anyway; so a target that cannot be
wrapped (a function renamed) is written to ``<ADAPTD_STAGE_TRACE>.error``, which the benchmark
raises, rather than a stage silently missing from its table.

Stamps (``bench_stages.STAMPS`` says what each marks): ``poll`` (the loop's poll returned events),
``handler``, ``admit_in``/``admit_out``, ``screen_in``/``screen_out`` (the NaN screen, the main
thread's or the executor's; the main thread's may call the executor's, nested), ``submit_in``/
``submit_out``, ``inline_in``/``inline_out``, ``outcome`` (with the outcome's own ``dispatched``,
``t0``, ``t1`` and ``finished`` times), ``header_in``/``header_out``, ``encoded``,
``send_in``/``send_out``.
"""

from __future__ import annotations

import os

# (module, attribute path within it, stamp on entry, stamp on return)
TARGETS = (
    ("adaptd.daemon.request_path", "RequestPath.on_request", "handler", None),
    ("adaptd.daemon.request_path", "RequestPath.on_stream_request", "handler", None),
    ("adaptd.daemon.admission", "Admission.admit", "admit_in", "admit_out"),
    ("adaptd.daemon.request_path", "nonfinite_inline", "screen_in", "screen_out"),
    ("adaptd.daemon.execution", "nonfinite_input", "screen_in", "screen_out"),
    ("adaptd.daemon.dispatch", "Dispatcher.submit", "submit_in", "submit_out"),
    ("adaptd.daemon.dispatch", "Dispatcher.run_inline", "inline_in", "inline_out"),
    ("adaptd.wire.replies", "result_header", "header_in", "header_out"),
    ("adaptd.wire.protocol", "encode", None, "encoded"),
    ("adaptd.daemon.frontend", "Frontend.send", "send_in", "send_out"),
)
WRAPPED = (*((module, path) for module, path, _, _ in TARGETS),
           ("zmq", "Poller.poll"), ("adaptd.daemon.request_path", "RequestPath.on_outcome"))


def _install(path: str) -> None:
    import atexit
    import functools
    import importlib
    import json
    import time

    marks: list[tuple[str, int]] = []
    clock = time.monotonic_ns

    def owner_of(module: str, attribute: str):
        owner = importlib.import_module(module)
        *outer, name = attribute.split(".")
        for part in outer:
            owner = getattr(owner, part)
        return owner, name

    def around(inner, before: str | None, after: str | None):
        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            if before:
                marks.append((before, clock()))
            out = inner(*args, **kwargs)
            if after:
                marks.append((after, clock()))
            return out
        return wrapper

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

    wrappers = {("zmq", "Poller.poll"): poll_wrapper,
                ("adaptd.daemon.request_path", "RequestPath.on_outcome"): outcome_wrapper}
    for module, attribute, before, after in TARGETS:
        wrappers[(module, attribute)] = functools.partial(around, before=before, after=after)
    for (module, attribute), wrap in wrappers.items():
        owner, name = owner_of(module, attribute)
        setattr(owner, name, wrap(getattr(owner, name)))

    def dump() -> None:
        with open(f"{path}.{os.getpid()}", "w") as fh:
            json.dump(marks, fh)

    atexit.register(dump)


_PATH = os.environ.pop("ADAPTD_STAGE_TRACE", None)
if _PATH:
    try:
        _install(_PATH)
    except Exception as exc:
        with open(f"{_PATH}.error", "w") as fh:
            fh.write(f"{type(exc).__name__}: {exc}")
        raise

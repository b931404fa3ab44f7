"""A census of a daemon's Python calls, for ``bench/call_census.py``; imported at start-up.

Python imports a module named ``sitecustomize`` from its path when it starts. The benchmark puts
this folder first on the daemon's ``PYTHONPATH`` and names a file in ``ADAPTD_CALL_CENSUS``; then,
and only then, this module installs a handler of ``SIGUSR1`` (which the daemon leaves alone): the
first signal starts counting, on the daemon's main thread (where a signal's handler runs), every
Python function entered (``call`` events of ``sys.setprofile``: comprehensions and generators
resumed count, as each is a frame) and every C function called from Python; the next one stops
and writes the counts to that file, tab-separated (``count, kind, where``). The daemon's own code
is unchanged, and a process started without the variable runs none of this. The variable is
taken out of the environment once read, so the daemon's child processes do nothing.
"""

from __future__ import annotations

import os

_OUT = os.environ.pop("ADAPTD_CALL_CENSUS", None)

if _OUT:
    import collections
    import signal
    import sys

    _calls: collections.Counter = collections.Counter()
    _state = {"on": False}

    def _profile(frame, event, arg) -> None:
        if event == "call":   # (by module: the same for an installed copy and a checkout)
            _calls["py", f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}"] += 1
        elif event == "c_call":
            _calls["c", f"{frame.f_code.co_name} -> {getattr(arg, '__qualname__', arg)}"] += 1

    def _toggle(signum, frame) -> None:
        if not _state["on"]:
            _calls.clear()
            _state["on"] = True
            sys.setprofile(_profile)
            return
        sys.setprofile(None)
        _state["on"] = False
        with open(_OUT + ".part", "w") as fh:   # (renamed when whole: the benchmark waits for the name)
            for (kind, where), n in _calls.most_common():
                fh.write(f"{n}\t{kind}\t{where}\n")
        os.replace(_OUT + ".part", _OUT)

    signal.signal(signal.SIGUSR1, _toggle)

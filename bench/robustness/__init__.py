"""Harnesses that attack a real daemon through its public interfaces and count what comes back.

Used by ``bench/chaos_workers.py``, ``bench/fuzz_wire.py``, ``bench/bench_overload.py`` and the
fast versions of those in ``tests/``. Everything here talks to the daemon only as a client would
(the wire protocol of PROTOCOL.md, the client library, the daemon's log file and ``/proc``), so
the harnesses keep working across rewrites of the daemon's internals.

* :mod:`.ledger`: per-request reply accounting (answered once, lost, duplicated, misrouted).
* :mod:`.watch`: the daemon from outside: its workers' pids, RSS samples, tracebacks in its log.
* :mod:`.wire`: message generators: Hypothesis strategies over ADPT01 and random frames.
* :mod:`.fuzz`: sends generated messages on many sockets and checks every reply.
* :mod:`.expected`: inputs whose outputs are known (a local LiteRT run of each variant).
* :mod:`.chaos`: client processes checking every reply while workers are killed.
* :mod:`.overload`: closed- and open-loop load for the goodput figure.
"""

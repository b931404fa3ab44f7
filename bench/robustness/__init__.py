"""Harnesses that attack a real daemon through its public interfaces and count what comes back.

Used by ``bench/chaos_workers.py``, ``bench/fuzz_wire.py``, ``bench/bench_overload.py`` and the
fast versions of those in ``tests/``. Everything here talks to the daemon only as a client would
(the wire protocol of PROTOCOL.md through the codec in ``adaptd.wire.protocol``, the selection
stream), or reads what anyone on the machine may (the daemon's log file, ``/proc``), so the
harnesses keep working across rewrites of the daemon's internals.

* :mod:`.ledger`: per-request reply accounting (answered once, lost, duplicated, misrouted).
* :mod:`.watch`: the daemon from outside: its workers' pids, RSS samples, tracebacks in its log.
* :mod:`.values`, :mod:`.wire`, :mod:`.stream`: fuzz messages: Hypothesis strategies for msgpack
  values and ADPT01 requests, composed into a fast seeded stream with random frames and mutations.
* :mod:`.fuzz`, :mod:`.fuzzrun`: send the stream on many sockets, check every reply, judge a run.
* :mod:`.models`: the slow test model, built for the benchmarks.
* :mod:`.expected`: inputs whose outputs are known (a local LiteRT run of each variant).
* :mod:`.chaos`: client processes checking every reply while workers are killed.
* :mod:`.overload`: closed- and open-loop load for the goodput figure.
"""

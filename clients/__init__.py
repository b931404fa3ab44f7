"""adaptd.clients: talking to a running daemon.

``core`` is the protocol without I/O (it builds requests, matches replies, decides retries);
``client`` (blocking) and ``aio`` (asyncio) are its two socket shells, with ``results``,
``regions`` (shared-memory inputs), ``settings``, ``endpoints`` and ``errors``; ``subscriber``
reads the selection stream and ``loadgen`` drives a daemon with a request mix. Built on
:mod:`adaptd.wire`; imports nothing of the daemon.
"""

"""adaptd.daemon: the service that serves requests and records what it chose.

Where a request goes, in order: ``frontend`` (the ZeroMQ sockets: request ROUTERs, the admin
socket, the selection stream; ``streams``, the local stream sockets) hands each message to
``request_path``, which decodes it (:mod:`adaptd.wire.protocol`; a repeated header is kept from
its second sight, then not parsed again: ``request_memo``), answers retries from ``replay``,
checks it with ``admission`` (candidates, inputs, shared-memory ``shm`` regions, ``peers``),
asks ``selection`` (the adapter over :mod:`adaptd.selector`) for an arm, and runs it through
``dispatch``: inline or on a placement's thread (``placement_threads``, ``execution``), or in a worker process (``pool``,
``worker_process``, ``channel``). The outcome becomes the reply, then, at the next idle moment,
``bookkeeping``: statistics (``stats``), the selector's update (a steady client's in batches),
and the selection record for ``store`` (SQLite and the stream) and ``metrics``. ``control`` answers the other verbs.

Around it: ``server`` (lifecycle, the loop, signals, reload; ``startup`` builds the parts from
``config``), ``placements`` (discovered from the CPU topology), ``registry`` (the model
repository's servable versions), ``arms`` and ``quarantine`` (arms set aside after failures),
``power`` (meters and the estimated power model), ``auth`` (CurveZMQ), ``instance`` (one daemon
per state directory), ``sched`` and ``sdnotify`` (the kernel's and systemd's interfaces).
"""

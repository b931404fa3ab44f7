"""adaptd.tools: what people run beside the client library, built on it and on the wire format.

``report`` (HTML and PNG plots of a selection store), ``export`` (CSV, Parquet, hive-partitioned
datasets for a fleet), ``demo`` (the first look: build, serve, ask), ``launch`` (a real daemon as a
child process, for the demo, the tests and the benchmarks). Tools read the store through
:mod:`adaptd.wire.records` and reach the daemon through :mod:`adaptd.clients`; they never import
the daemon's code.
"""

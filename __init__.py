"""adaptd: an on-device adaptive inference runtime.

The repository root is this package; its subpackages are

- ``adaptd.variants``: builds and describes precompressed model variants;
- ``adaptd.daemon``: the resident service (sockets, workers, power meters, store);
- ``adaptd.selector``: the cost model and per-request policy (pure, no I/O);
- ``adaptd.clients``: client library, command line, load generator and reports.
"""

__version__ = "0.1.0"

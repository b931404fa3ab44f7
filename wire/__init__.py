"""adaptd.wire: what the daemon and its clients share, and nothing else of either.

The ADPT/1 protocol (PROTOCOL.md) lives here, with the rules both sides must agree on (where the
daemon's sockets are, how a client authenticates). Of the rest of adaptd it imports only the
selector's request terms (:mod:`adaptd.selector.request`), so that one set of rules validates them.
"""

"""Moved: the request path's policy interface and its decision view live in
:mod:`adaptd.daemon.selection`; this name is kept only until ``daemon/server.py`` imports them
from there, then it goes."""

from adaptd.daemon.selection import Choice, Policy  # noqa: F401

"""adaptd.cli: the command line, at the top of the house.

``adaptd`` (``adaptd.cli.main:main``) parses the arguments and calls one entry function per verb:
``adaptd.cli.commands`` (the client verbs: infer, explain, models, stats, health, reload, log,
keys), ``adaptd.cli.tools`` (report, load, demo), ``adaptd.cli.serve`` (the daemon),
``adaptd.cli.variants`` (building variants) and ``adaptd.cli.calibrate`` (calibration, on the
daemon's placements). The entry functions turn what the layers below raise into
:class:`UserError`: one line on stderr, exit status 1. Nothing below this package imports it.
"""


class UserError(Exception):
    """A problem the user can fix (bad file, bad option): printed as one line, exit 1."""

"""``python -m adaptd``: the same command line as the ``adaptd`` script."""

from adaptd.clients.cli import main

raise SystemExit(main())

"""``python -m adaptd``: the same command line as the ``adaptd`` script."""

from adaptd.cli.main import main

raise SystemExit(main())

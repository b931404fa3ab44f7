"""``adaptd serve``: the daemon, from a config file or a repository, in the foreground.

Maps the command line onto a :class:`~adaptd.daemon.config.Config` (the file, then
``--repository`` and ``--endpoint`` over it), starts the :class:`~adaptd.daemon.server.Daemon`
and runs it until SIGTERM. A bad config or a failed start-up is one line (UserError).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from adaptd.cli import UserError
from adaptd.daemon.config import Config, ConfigError, load_config
from adaptd.daemon.sched import name_thread
from adaptd.daemon.server import Daemon, StartupError


def run_serve(args) -> int:
    """``adaptd serve``: the CLI entry."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.config is not None:
            config = load_config(args.config)
        else:
            if args.repository is None:
                raise UserError("give --config FILE or --repository DIR")
            config = Config.from_dict({"repository": str(args.repository)})
        overrides: dict[str, Any] = {}
        if args.repository is not None:
            overrides["repository"] = Path(args.repository).resolve()
        if args.endpoint:
            overrides["server"] = dataclasses.replace(config.server, endpoints=tuple(args.endpoint))
        if overrides:
            config = dataclasses.replace(config, **overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    logging.getLogger().setLevel(config.log_level.upper())
    daemon = Daemon(config)
    try:
        daemon.start()
    except StartupError as exc:
        raise UserError(f"cannot start: {exc}") from None
    name_thread("adaptd")   # the main thread and the process, as ps shows them (earlier threads keep theirs)
    return daemon.run()

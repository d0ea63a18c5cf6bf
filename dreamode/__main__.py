"""``python -m dreamode``: the ``dreamode`` command line (see :mod:`dreamode.cli`)."""

from .cli import main

raise SystemExit(main())

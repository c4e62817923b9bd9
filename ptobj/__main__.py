"""``python -m ptobj``: the command line (:mod:`ptobj.cli`)."""

from ptobj.cli import main

raise SystemExit(main())

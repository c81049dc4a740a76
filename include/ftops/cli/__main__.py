"""``python -m ftops.cli``: the same as the ``ftops`` command."""

from ftops.cli import main

raise SystemExit(main())

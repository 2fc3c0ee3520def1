"""``python -m keepstore`` runs the ``keep`` command line."""

from .cli import main

raise SystemExit(main())

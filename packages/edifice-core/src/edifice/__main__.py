"""``python -m edifice`` runs the CLI."""

from edifice.cli.main import main

raise SystemExit(main())

"""`python -m coordinator` is the same as the `labelweave` command."""

from coordinator.cli import main

raise SystemExit(main())

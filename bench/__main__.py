"""`python -m bench` is `python -m bench.embedded`."""

from bench.embedded import main

raise SystemExit(main())

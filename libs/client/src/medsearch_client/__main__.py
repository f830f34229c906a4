"""`python -m medsearch_client`: the same as the `medsearch` command."""

from medsearch_client.cli import main

raise SystemExit(main())

"""`python -m col775` (what `torchrun -m col775` runs) is the same as the `col775` command."""

from col775.cli import main

raise SystemExit(main())

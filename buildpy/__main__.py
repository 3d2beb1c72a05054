"""`python -m buildpy` runs the command line."""

from buildpy.cli import main

raise SystemExit(main())

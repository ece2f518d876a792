"""``python -m flows.cli``: the ``dsqnet`` command without its installed entry point."""

import sys

from flows.cli.main import main

sys.exit(main())

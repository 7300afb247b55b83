"""``python -m logferry`` is the ``logferry`` command."""

import sys

from logferry.cli import main

sys.exit(main())

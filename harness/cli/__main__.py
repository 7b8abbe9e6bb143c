"""``python -m harness.cli ARGS`` is ``hilprune ARGS``."""

import sys

from harness.cli.main import main

sys.exit(main())

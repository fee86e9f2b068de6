"""`python -m wrenn.cli` is the same as `wrenn`."""

import sys

from wrenn.cli import main

sys.exit(main())

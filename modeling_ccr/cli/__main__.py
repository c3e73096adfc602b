"""`python -m modeling_ccr.cli ...`: the `ccr` command without the console script."""

import sys

from . import main

sys.exit(main())

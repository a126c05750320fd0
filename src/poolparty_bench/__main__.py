"""`python -m poolparty_bench` is `poolparty-bench`."""

import sys

from .cli import main

sys.exit(main())

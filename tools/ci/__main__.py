"""`python -m tools.ci`: the CLI the workflows call (see tools/ci/__init__.py)."""

import sys

from tools.ci import main

sys.exit(main())

"""`python -m tools.wake --stack NAME` (what `make wake` runs)."""

import sys

from tools.wake import main

sys.exit(main())

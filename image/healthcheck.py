"""Docker HEALTHCHECK: exit 0 when the server's /health answers 200 (stdlib only, no curl in the image)."""

import os
import sys
import urllib.request

port = os.environ.get("SDXL_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:  # noqa: S310
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)

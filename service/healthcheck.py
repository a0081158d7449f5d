"""Container healthcheck: exit 0 if this node's /healthz answers 200, 1 otherwise.

Python rather than curl because the base images carry no curl.
"""

import os
import sys
import urllib.request

TIMEOUT_S = 2.0


def main() -> int:
    port = os.environ.get("KV_HTTP_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

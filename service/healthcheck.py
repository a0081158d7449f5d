"""Container HEALTHCHECK: exit 0 if this node's /readyz answers 200 (it can coordinate requests), 1
otherwise, printing why.

Readiness, not /healthz: a node whose store is full still coordinates (its share of each write
goes to other nodes as hints) and serves reads, and restarting it would not free its disk, so
the container stays healthy while /healthz reports the degraded state; ``docker inspect`` shows it.
Python rather than curl because the base images carry no curl. With ``KV_TLS_MODE=required`` the
port speaks only HTTPS; the probe asks this very node on 127.0.0.1, so it does not check the
certificate (which names the node's host, not 127.0.0.1).
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.0


def main() -> int:
    port = os.environ.get("KV_HTTP_PORT", "8000")
    https = os.environ.get("KV_TLS_MODE", "off").strip().lower() == "required"
    base = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this node, on loopback: nothing between to impersonate it
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"{base}/readyz", timeout=TIMEOUT_S) as response:
            ready = response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"not ready: {exc.read().decode('utf-8', errors='replace').strip()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    try:
        with opener.open(f"{base}/healthz", timeout=TIMEOUT_S):
            pass
    except urllib.error.HTTPError as exc:  # ready but degraded: say so, stay healthy
        print(f"degraded: {exc.read().decode('utf-8', errors='replace').strip()}")
    except OSError:
        pass
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m client.bench``: the same as ``kv bench``."""

import sys

from client.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

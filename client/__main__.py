"""``python -m client``: the ``kv`` command line."""

import sys

from client.cli import main

sys.exit(main())

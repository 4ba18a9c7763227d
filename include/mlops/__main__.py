"""``python -m include.mlops <step> ...``: see :mod:`include.mlops.cli`."""

from __future__ import annotations

import sys

from include.mlops.cli import main

if __name__ == "__main__":
    sys.exit(main())

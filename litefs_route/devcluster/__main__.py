"""``python -m litefs_route.devcluster``: see :mod:`litefs_route.devcluster.cli`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

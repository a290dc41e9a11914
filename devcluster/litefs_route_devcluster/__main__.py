"""``python -m litefs_route_devcluster``: see :mod:`litefs_route_devcluster.cli`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m litefs_route``: the ``litefs-route`` command."""

import sys

from ._cli import main

sys.exit(main())

"""``python -m litefs_route``: the ``litefs-route`` command."""

import sys

from .cli import main

sys.exit(main())

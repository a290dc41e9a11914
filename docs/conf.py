"""Sphinx configuration of litefs-route's documentation.

Build: ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``
(``.ci/run`` does, so a broken link, a missing anchor or a stale reference fails CI).

Why Sphinx with Furo (and MyST for Markdown) rather than MkDocs with Material:

- The pages stay Markdown (MyST), so they read the same on GitHub as on the site.
- ``-W`` (warnings as errors) with MyST catches what matters here: a link to a
  page or a heading anchor that does not exist, a page left out of the
  navigation; and the local extension adds a file or a private module a page
  names that was renamed or removed (``stale_references``).
- The options reference is generated at build time from the middleware's
  docstring by a small local directive (``_ext/litefs_options.py``), with the
  defaults taken from the signature: no copy to keep in step, and no plugin.
- Sphinx, Furo and MyST are actively maintained; MkDocs has had no release
  since 1.6.1 (2024) and Material for MkDocs is in maintenance mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the package itself, also when it is not installed

project = "litefs-route"
author = "litefs-route contributors"
copyright = "litefs-route contributors"

extensions = ["myst_parser", "litefs_options"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings up to ### get anchors, so [text](page.md#a-heading) is checked.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

nitpicky = True

html_theme = "furo"
html_title = "litefs-route"
html_static_path: list[str] = []

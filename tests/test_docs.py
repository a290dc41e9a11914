"""The README stays short, names what exists, and its two commands are the ones CI runs (``.ci/run``)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()


def _commands() -> list[str]:
    return re.findall(r"^```sh\n(.*?)\n```", README, re.MULTILINE | re.DOTALL)


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 200


def test_readme_test_command_is_what_ci_runs() -> None:
    command = next(c for c in _commands() if c.endswith("python -m pytest"))
    assert "\n" not in command  # one command
    # .ci/run does the same steps, in the same order (quietly, in a fresh venv).
    steps = [
        "python -m pip install --quiet --upgrade pip",
        "python -m pip install --quiet -e . -e ./devcluster --group dev",
        "bash .ci/install-litefs",
        "python -m pytest",
    ]
    assert command == (
        "python -m pip install -U pip && python -m pip install -e . -e ./devcluster --group dev"
        " && bash .ci/install-litefs && python -m pytest"
    )
    positions = [CI_RUN.index(step) for step in steps]
    assert positions == sorted(positions)


def test_readme_demo_installs_both_distributions() -> None:
    assert "python -m pip install . ./devcluster && litefs-route dev" in _commands()


def test_ci_builds_the_docs_with_warnings_as_errors() -> None:
    assert "python -m sphinx -W --keep-going -n" in CI_RUN


def _docs_extension() -> Any:
    spec = importlib.util.spec_from_file_location("litefs_options", ROOT / "docs" / "_ext" / "litefs_options.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_names_only_files_and_modules_that_exist() -> None:
    """The docs build checks its pages so (docs/_ext/litefs_options.py); the README is not one of them."""
    assert _docs_extension().stale_references(README) == []


def test_the_stale_reference_check_catches_renames() -> None:
    stale = _docs_extension().stale_references(
        "`litefs_route._nope`, `litefs_route.django._gone`, `tests/test_nope.py`, `litefs_route_devcluster.nope`\n"
        "`litefs_route._decision`, `litefs_route.promote()`, `litefs_route.lag`, `tests/test_litefs_*.py`"
    )
    assert [line for line, _ in stale] == [1, 1, 1, 1]

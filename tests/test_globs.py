"""Path globs: LiteFS's meaning, and work linear in the path's length whatever the pattern.

The reference is the regex the globs used to compile to (``*`` became ``.*``,
anchored, DOTALL): the meaning the docs give. It backtracks, so it is only
run here on short inputs; the matcher must agree with it everywhere.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_route._globs import PathGlobs


def reference(patterns: list[str], path: str) -> bool:
    """The old implementation: one backtracking regex (correct, but super-linear with several stars)."""
    if not patterns:
        return False
    alternatives = (
        "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", p)) for p in patterns
    )
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL).fullmatch(path) is not None


# A small alphabet, so stars, slashes and literal segments collide often.
ALPHABET = "/ab.*\n"
patterns_st = st.lists(
    st.builds(lambda first, rest: first + rest, st.sampled_from(["/", "*"]), st.text(alphabet=ALPHABET, max_size=10)),
    max_size=4,
)
paths_st = st.text(alphabet=ALPHABET, max_size=24)


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(patterns=patterns_st, path=paths_st)
def test_globs_mean_what_the_regex_meant(patterns: list[str], path: str) -> None:
    assert bool(PathGlobs(patterns).match(path)) == reference(patterns, path)


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["/static/*"], "/static/", True),
        (["/static/*"], "/static", False),
        (["*.png"], "/a/b.png", True),
        (["*.png"], ".png", True),
        (["/a*a"], "/a", False),  # head and tail may not overlap
        (["/a*a"], "/aa", True),
        (["/api/*/items/*/edit"], "/api/1/items/2/edit", True),
        (["/api/*/items/*/edit"], "/api/items/edit", False),
        (["/api/*/items/*/edit"], "/api//items//edit", True),
        (["/*/*/*/edit"], "/a/b/c/d/edit", True),  # * matches / too
        (["/x**y"], "/xy", True),
        (["*"], "", True),
        (["/login", "/auth/*"], "/login", True),
        (["/login", "/auth/*"], "/login/", False),
        (["/a*b*c", "*.png", "/s/*"], "/s/x.png", True),
    ],
)
def test_glob_rows(patterns: list[str], path: str, expected: bool) -> None:
    assert bool(PathGlobs(patterns).match(path)) is expected
    assert reference(patterns, path) is expected


class CountingPath(str):
    """A path that counts what matching it examines: the characters each search covers, and every test.

    The matcher only looks at a path through these methods (and ``len``),
    so their spans bound its work.
    """

    scanned: int
    tests: int

    def __new__(cls, value: str) -> CountingPath:
        path = super().__new__(cls, value)
        path.scanned = path.tests = 0
        return path

    def find(self, sub: str, start: object = None, end: object = None) -> int:
        assert isinstance(start, int)
        assert isinstance(end, int)
        found = super().find(sub, start, end)
        self.tests += 1
        self.scanned += (found + len(sub) if found >= 0 else end) - start
        return found

    def startswith(self, prefix: str | tuple[str, ...], *args: object) -> bool:
        self.tests += 1
        self.scanned += max(map(len, prefix)) if isinstance(prefix, tuple) and prefix else len(prefix)
        return super().startswith(prefix)

    def endswith(self, suffix: str | tuple[str, ...], *args: object) -> bool:
        self.tests += 1
        self.scanned += max(map(len, suffix)) if isinstance(suffix, tuple) and suffix else len(suffix)
        return super().endswith(suffix)


HOSTILE_PATTERNS = [
    ["/*/*/*/edit"],
    ["/api/*/items/*/*/edit"],
    ["*/*/*/*/*/*/*/*/*/*/x"],
    ["*a*a*a*a*a*a*a*a*b"],
    ["/static/*", "*.png", "/login", "/*/*/*/edit", "*a*a*a*a*b"],
]
HOSTILE_PATHS = ["/" * 4096, "/" + "a/" * 2048, "a" * 8192, "/api/" + "items/" * 700]


@pytest.mark.parametrize("patterns", HOSTILE_PATTERNS, ids=lambda p: ",".join(p))
@pytest.mark.parametrize("text", HOSTILE_PATHS, ids=["slashes", "a-slash", "a", "items"])
def test_hostile_paths_cost_work_linear_in_their_length(patterns: list[str], text: str) -> None:
    """A path of slashes against many stars took seconds with the regex: now each character is examined O(1) times."""
    globs = PathGlobs(patterns)
    path = CountingPath(text)
    result = bool(globs.match(path))
    assert path.tests > 0  # it was matched through the counted operations
    pattern_chars = sum(map(len, patterns))
    # Each glob: its head and tail tested once, its middles found left to right, never rescanned.
    assert path.scanned <= len(patterns) * (len(text) + pattern_chars)
    assert path.tests <= sum(p.count("*") + 2 for p in patterns) + 1
    assert result == bool(globs.match(text))  # counting changed nothing

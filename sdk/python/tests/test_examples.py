"""The README's examples run as they are shown."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path):
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip()


def test_readme_shows_each_example():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    for p in EXAMPLES:
        body = p.read_text().split('"""', 2)[2].strip()
        assert body in readme, f"README.md does not show examples/{p.name} as it is"

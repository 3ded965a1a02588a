"""The README's CLI help is the real `--help`; `python -m tests.test_readme` regenerates it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- help:start[^>]*-->\n```\n)(.*?)(```\n<!-- help:end -->)", re.S)


def current_help() -> str:
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-m", "runtime", "--help"], capture_output=True, text=True, env=env,
                         check=True, cwd=README.parent)
    return out.stdout


def test_readme_help_is_current():
    match = BLOCK.search(README.read_text())
    assert match, "README lost its help block markers"
    assert match.group(2) == current_help(), "README help is stale: run `python -m tests.test_readme`"


if __name__ == "__main__":
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda m: m.group(1) + current_help() + m.group(3), text))
    print("README help block regenerated")

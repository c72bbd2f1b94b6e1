"""The packages import one way (queuechat > api | webui | workers > batch > serving > broker, see pyproject's
``[tool.importlinter]``): import-linter's ``lint-imports`` over the source tree, the same command anyone runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_package_imports_a_layer_above_it_or_a_sibling() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The check can fail: a copy of the tree where the serving layer imports the API is refused."""
    import shutil

    pytest.importorskip("importlinter")
    for name in ("broker", "serving", "batch", "workers", "api", "webui", "queuechat"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "serving" / "models.py").open("a") as f:
        f.write("\nfrom api import errors  # noqa: E402\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "serving is not allowed to import api" in done.stdout

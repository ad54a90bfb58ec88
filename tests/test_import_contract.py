"""The import contract (pyproject.toml [tool.importlinter], run by `make lint`): it holds on the package,
and one reverse import added to a copy of the package breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed (dev extra)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # analyse this copy, not an installed dinotracker
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "dinotracker", tmp_path / "dinotracker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(module: Path, statement: str) -> None:
    # inside a function, like the local imports that used to hide the inference -> training cycle
    module.write_text(module.read_text() + f"\n\ndef _reverse_import():\n    {statement}  # noqa\n")


def test_contract_holds_on_the_package(package_copy):
    r = _lint(package_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(("module", "statement", "expected"), [
    ("data/sources.py", "from dinotracker.training import module", "dinotracker.data is not allowed to import "
                                                                    "dinotracker.training"),
    ("inference/api.py", "from dinotracker.training.module import DinoTrackerModule",
     "dinotracker.inference is not allowed to import dinotracker.training"),
    ("training/losses.py", "from dinotracker.jobs import fit", "dinotracker.training is not allowed to import "
                                                              "dinotracker.jobs"),
    ("models/checkpoint.py", "import lightning", "is not allowed to import lightning"),
])
def test_a_reverse_import_breaks_it(package_copy, module, statement, expected):
    _add_import(package_copy / "dinotracker" / module, statement)
    r = _lint(package_copy)
    assert r.returncode != 0, r.stdout
    assert expected in " ".join(r.stdout.split()), r.stdout


ENTRY_POINTS = {"fit.py": "fit", "preprocess.py": "preprocess", "track.py": "track", "benchmark.py": "benchmark",
                "demo.py": "demo", "segtrack/__main__.py": "segtrack"}


@pytest.mark.parametrize("path", sorted(ENTRY_POINTS))
def test_entry_points_are_thin(path):
    """``python -m dinotracker.<verb>`` modules only import ``main`` from ``jobs/<verb>.py`` and call it."""
    import ast

    tree = ast.parse((REPO / "dinotracker" / path).read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    imports = [n for n in body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(f"dinotracker.jobs.{ENTRY_POINTS[path]}",
                                                                          ["main"])]
    assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.If)) for n in body), "an entry point defines nothing"


def test_fit_reaches_lightning_in_three_hops():
    """fit.py -> jobs/fit.py -> lightning (DESIGN.md): the fit job itself (``fit_video`` and the body it runs
    under the run-folder lock, ``_fit_locked``, both in jobs/fit.py) builds the Trainer and calls fit."""
    import ast

    tree = ast.parse((REPO / "dinotracker" / "jobs" / "fit.py").read_text())
    names = ("fit_video", "_fit_locked")
    job = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names], [])
    assert len(job.body) == 2
    imported = {a.name for n in ast.walk(job) if isinstance(n, ast.Import) for a in n.names}
    calls = {n.func.attr for n in ast.walk(job) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "lightning" in imported and "fit" in calls
    main = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "main")
    assert ast.unparse(main.value) == "hydra_entry(run, 'fit')"

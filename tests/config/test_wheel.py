"""The configs ship in the wheel: build it, install it (no deps) into a clean virtual environment
that borrows this environment's dependencies, and run the entry point from outside the checkout."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "dist").glob("dinotracker-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    target = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # dependencies come from this environment's site-packages, added as a plain path (so that an
    # editable install of the checkout there is not activated)
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (target / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    return py, tmp


def test_wheel_contains_configs_and_runs(wheel_env):
    py, tmp = wheel_env
    where = subprocess.run([str(py), "-c", "import dinotracker; print(dinotracker.__file__, "
                            "dinotracker.config_dir())"], cwd=tmp, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    module_file, conf = where.stdout.split()
    assert str(REPO) not in module_file and Path(conf).parent == Path(module_file).parent
    r = subprocess.run([str(py), "-m", "dinotracker.fit", "--help"], cwd=tmp, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(py), "-m", "dinotracker.fit", "+video=synthetic", "experiment=quick_cpu", "--cfg",
                        "job"], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "short_side: 168" in r.stdout

#!/usr/bin/env bash
# `make wheel-check`: build the wheel, install it (no deps) into a clean virtual environment outside the
# checkout, and run the commands from there: the configs must ship inside the wheel and every console
# script must resolve. Offline: the new environment borrows this environment's dependencies (its
# site-packages added as a plain path, so an editable install of the checkout there is not activated).
#   PY=<python of the dev environment> bash experiments/wheel_check.sh [work folder]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
if [ $# -ge 1 ]; then
  WORK=$1
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/dinotracker-wheel.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
echo "[wheel-check] building with $PY in $WORK"

"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/dinotracker-*.whl)
"$PY" -m venv --without-pip "$WORK/venv"
VPY="$WORK/venv/bin/python"
TARGET=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" -m pip install --no-deps -q --target "$TARGET" "$WHEEL"
"$PY" - "$TARGET/zz_deps.pth" <<'EOF'
import site, sys, sysconfig
from pathlib import Path
deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
Path(sys.argv[1]).write_text("\n".join(sorted(deps)) + "\n")
EOF

cd "$WORK"  # outside the checkout: nothing may come from it
"$VPY" - "$REPO" <<'EOF'
import sys
from importlib.metadata import entry_points
from pathlib import Path

import dinotracker

repo, here = Path(sys.argv[1]).resolve(), Path(dinotracker.__file__).resolve().parent
assert repo not in here.parents, f"dinotracker imported from the checkout ({here}), not the wheel"
conf = dinotracker.config_dir()
assert conf.parent == here, f"configs at {conf}, not inside the installed package {here}"
scripts = [e for e in entry_points(group="console_scripts") if e.value.startswith("dinotracker.")]
assert scripts, "the wheel declares no dinotracker console scripts"
for e in scripts:
    e.load()  # the module and its main() exist in the wheel
print(f"[wheel-check] package {here}, configs {conf}, console scripts: {', '.join(e.name for e in scripts)}")
EOF
"$VPY" -m dinotracker.fit --help > help.txt
grep -q "Configuration groups" help.txt
"$VPY" -m dinotracker.fit +video=synthetic experiment=quick_cpu --cfg job > cfg_job.yaml
grep -q "short_side: 168" cfg_job.yaml
if "$VPY" -m dinotracker.fit 2> no_video.txt; then echo "[wheel-check] fit without a video did not fail"; exit 1; fi
grep -q "no video given" no_video.txt
echo "[wheel-check] OK: $WHEEL runs python -m dinotracker.fit (--help, --cfg job, missing-video error) from a clean venv"

#!/bin/bash
# Break one formula at a time in a scratch copy of the tracked files and run tests/test_reference_parity.py:
# each break must make a parity test fail. Nothing here edits the checkout. PYTHON=<venv python> to choose.
set -u
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
run() {  # name file python-replacement(old) (new)
  local name=$1 file=$2 old=$3 new=$4
  rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
  (cd $SRC && git ls-files -z | xargs -0 -I{} cp --parents {} "$SCRATCH"/)
  cd "$SCRATCH"
  python3 - "$file" "$old" "$new" <<'PY'
import sys
f, old, new = sys.argv[1:]
s = open(f).read()
assert s.count(old) == 1, (f, old, s.count(old))
open(f, "w").write(s.replace(old, new))
PY
  echo "=== $name: $file: '$old' -> '$new'"
  timeout 900 "$PY" -m pytest -q -p no:randomly tests/test_reference_parity.py 2>&1 | grep -E "^FAILED|passed|failed" | sed 's/ - .*//' 
}
run "InfoNCE temperature" dinotracker/training/losses.py "logits = _pair_cosines(query_features, maps, idx) / temperature" "logits = _pair_cosines(query_features, maps, idx) / (1.05 * temperature)"
run "cycle weight 0.8^e" dinotracker/training/losses.py "torch.pow(torch.as_tensor(decay, dtype=err.dtype), err)" "torch.pow(torch.as_tensor(decay, dtype=err.dtype), 0.9 * err)"
run "BlurPool filter [1,3,3,1]" dinotracker/models/blurpool.py "4: [1.0, 3.0, 3.0, 1.0]" "4: [1.0, 2.0, 2.0, 1.0]"
run "NMS IoU (box union)" dinotracker/preprocessing/best_buddies.py "return ov / (2 * side * side - ov)" "return ov / (2 * side * side)"

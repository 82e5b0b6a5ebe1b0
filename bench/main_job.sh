#!/usr/bin/env bash
# The main job: `python -m detr_nb train` with no arguments (synthetic data, CPU, time budget),
# then the wall time and the final AP / AP50 read back from its eval.json.
# Usage: bench/main_job.sh [extra train options...]   (run from anywhere; outputs under runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log=$(mktemp)
start=$(date +%s.%N)
python -m detr_nb train "$@" 2>&1 | tee "$log"
end=$(date +%s.%N)
out=$(sed -n 's/^output directory: //p' "$log" | tail -1)
rm -f "$log"
python - "$out" "$start" "$end" <<'PY'
import json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ev = json.load(open(f"{out}/eval.json"))
steps = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
rates = sorted(r["images_per_s"] for r in steps if r.get("kind") == "step")
rate = rates[len(rates) // 2] if rates else float("nan")
print(f"main job: wall {end - start:.0f} s, AP {ev['AP']:.4f}, AP50 {ev['AP50']:.4f}, "
      f"{ev['step']} steps, training {rate:.1f} images/s (median), outputs {out}")
PY
